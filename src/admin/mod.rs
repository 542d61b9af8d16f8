//! The admin side: the operator's pages (`/metrics`, the status page at `/`
//! and the `/status.json` it reads), rendered on threads of their own from
//! the counters the shards and the feed publish, never on a shard's loop.
//!
//! A shard that receives such a request sends it here and goes on fanning
//! out; the page comes back through its inbox. Requests that arrive while a
//! page is being rendered are answered with the same rendering, so any
//! number of scrapes at once costs one.
//!
//! With `--metrics-listen ADDR` the pages are served on that address instead
//! (`serve_on`), for a private address only operators and the monitoring
//! system reach.

pub mod status;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::AdminPage;
use crate::core::shared::Shared;
use crate::driver::{AdminDesk, AdminRequest, Io, ShardMsg};
use crate::feed::FeedStats;
use crate::feed::envelope::FeedError;
use crate::metrics::{self, Counter, Gauge};
use crate::protocol::handshake::{head_only, http_response};
use status::{ChannelTables, RateHistory, Totals};

/// Channels listed one by one in `/metrics` (the busiest); more would make
/// the page, and the monitoring system's series count, unbounded.
const METRICS_CHANNELS: usize = 100;

/// The status page: one self-contained file, nothing loaded from elsewhere.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the status page may do: its own inline style and script, and
/// requests to its own origin (for `/status.json`); nothing else, from
/// nowhere else.
const STATUS_PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Everything the pages are made of.
pub struct AdminSource {
    pub shared: Arc<Shared>,
    pub feed: Arc<FeedStats>,
    /// Inode of the UDP feed socket, to read its kernel drop counter (0: none).
    pub udp_inode: Arc<AtomicU64>,
    pub started: Instant,
    pub io: Io,
    /// The server's connection limit (all shards).
    pub max_connections: u64,
    /// The busiest-channels section, the one part whose cost grows with the
    /// channel count: recomputed at most once per [`BUSIEST_REFRESH`].
    pub busiest: Mutex<Option<(Instant, String)>>,
    pub status: Mutex<StatusState>,
    /// In a fleet: its figures, and the Redis it uses (password left out).
    pub fleet: Option<(Arc<crate::fleet::FleetStats>, String)>,
}

/// The status page's samples, and its last rendering.
#[derive(Default)]
pub struct StatusState {
    rates: RateHistory,
    tables: ChannelTables,
    /// Until when (server clock, ms) someone is looking: the channel tables
    /// are sampled only meanwhile.
    watched_until: u64,
    rendered: Option<(u64, Arc<Vec<u8>>)>,
}

/// How stale the busiest-channels lines may be (a scrape every few seconds
/// sees them fresh; a flood of scrapes does not redo them each time).
const BUSIEST_REFRESH: Duration = Duration::from_secs(1);

/// How often the status figures are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts the renderer and the status sampler; shards send their requests
/// to the desk.
pub fn start(source: Arc<AdminSource>) -> std::io::Result<AdminDesk> {
    let (tx, rx) = std::sync::mpsc::channel::<AdminRequest>();
    let desk_source = source.clone();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let mut rendered: Vec<((AdminPage, bool), Vec<u8>)> = Vec::new();
                for request in waiting {
                    let which = (request.page, request.head);
                    let response = match rendered.iter().find(|(w, _)| *w == which) {
                        Some((_, r)) => r.clone(),
                        None => {
                            let r = desk_source.page(request.page, request.head);
                            rendered.push((which, r.clone()));
                            r
                        }
                    };
                    request.reply.send(ShardMsg::Response {
                        key: request.key,
                        response,
                    });
                }
            }
        })?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            loop {
                source.sample_status();
                std::thread::sleep(SAMPLE_EVERY);
            }
        })?;
    Ok(AdminDesk { requests: tx })
}

/// Longest a client of the metrics listener may take to send its request
/// or read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests the metrics listener answers at once; more wait in the kernel's
/// accept queue.
const LISTENER_WORKERS: usize = 8;

/// Serves the operator's pages on `addr`; returns the bound address (port 0
/// picks one). A few worker threads, so a slow client (or a browser's idle
/// keep-alive connection) does not hold up a scrape.
pub fn serve_on(
    addr: std::net::SocketAddr,
    source: Arc<AdminSource>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = Arc::new(std::net::TcpListener::bind(addr)?);
    let bound = listener.local_addr()?;
    let busy = Arc::new(AtomicUsize::new(0));
    for worker in 0..LISTENER_WORKERS {
        let (listener, source, busy) = (listener.clone(), source.clone(), busy.clone());
        std::thread::Builder::new()
            .name(format!("admin-listen-{worker}"))
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    busy.fetch_add(1, Relaxed);
                    let _ = answer(stream, &source);
                    busy.fetch_sub(1, Relaxed);
                }
            })?;
    }
    Ok(bound)
}

/// Reads one request (bounded in size and time) and answers it.
fn answer(mut stream: std::net::TcpStream, source: &AdminSource) -> std::io::Result<()> {
    use crate::protocol::handshake::parse_request_head;
    use std::io::{Read, Write};
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        // The whole request within the deadline, however it trickles in.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            Ok(None) => continue,
            Err(e) => break e.response(),
            Ok(Some((head, _))) => {
                let is_head = head.method == "HEAD";
                break match AdminPage::at(&head.path) {
                    Some(page) if head.method == "GET" || is_head => source.page(page, is_head),
                    Some(_) => http_response(
                        405,
                        "text/plain",
                        b"only GET is supported\n",
                        &[("Allow", "GET")],
                    ),
                    None => http_response(
                        404,
                        "text/plain",
                        b"not found; here: GET / (status page), /status.json, /metrics\n",
                        &[],
                    ),
                };
            }
        }
    };
    stream.write_all(&response)
}

impl AdminSource {
    /// The full HTTP response for `page` (`head`: without the body).
    pub fn page(&self, page: AdminPage, head: bool) -> Vec<u8> {
        let response = match page {
            AdminPage::Metrics => http_response(
                200,
                "text/plain; version=0.0.4",
                self.render().as_bytes(),
                &[],
            ),
            AdminPage::Status => http_response(
                200,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes(),
                &[
                    ("Content-Security-Policy", STATUS_PAGE_POLICY),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            ),
            AdminPage::StatusJson => http_response(
                200,
                "application/json",
                &self.status_json(),
                &[("X-Content-Type-Options", "nosniff")],
            ),
        };
        if head { head_only(response) } else { response }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Once a second: the rates always; the channel tables and a fresh
    /// rendering only while someone looks.
    fn sample_status(&self) {
        let now = self.now_ms();
        let totals = Totals {
            published: self.feed.published.load(Relaxed),
            delivered: self
                .shared
                .shard_stats
                .iter()
                .map(|s| s.snapshot().counters[Counter::FramesDelivered as usize])
                .collect(),
        };
        let mut state = lock(&self.status);
        state.rates.record(now, totals);
        if now < state.watched_until {
            let body = self.render_status(&mut state, now);
            state.rendered = Some((now, body));
        }
    }

    /// `/status.json`: the last rendering when it is fresh, else one now.
    fn status_json(&self) -> Arc<Vec<u8>> {
        let now = self.now_ms();
        let mut state = lock(&self.status);
        state.watched_until = now + status::WATCH_FOR_MS;
        if let Some((at, body)) = &state.rendered
            && now.saturating_sub(*at) <= SAMPLE_EVERY.as_millis() as u64
        {
            return body.clone();
        }
        let body = self.render_status(&mut state, now);
        state.rendered = Some((now, body.clone()));
        body
    }

    fn render_status(&self, state: &mut StatusState, now: u64) -> Arc<Vec<u8>> {
        use status::*;
        let shards: Vec<_> = self
            .shared
            .shard_stats
            .iter()
            .map(|s| s.snapshot())
            .collect();
        let sum = |g: Gauge| shards.iter().map(|s| s.gauge(g)).sum::<u64>();
        let counted = |c: Counter| shards.iter().map(|s| s.counters[c as usize]).sum::<u64>();
        let (published_rate, delivered_rate) = state.rates.current();
        let figures = self.shared.registry.figures();
        let doc = Status {
            version: env!("CARGO_PKG_VERSION"),
            driver: self.io.label(),
            uptime_seconds: self.started.elapsed().as_secs(),
            epoch: self.shared.epoch().to_string(),
            fleet: match &self.fleet {
                None => Fleet {
                    mode: "single-node",
                    redis: None,
                    link: None,
                    problem: None,
                    rtt_ms: None,
                    channels_subscribed: None,
                },
                Some((fleet, url)) => {
                    let up = self.shared.upstream.is_up();
                    Fleet {
                        mode: "redis",
                        redis: Some(url.clone()),
                        link: Some(if up { "up" } else { "down" }),
                        problem: (!up).then(|| self.shared.upstream.problem()),
                        rtt_ms: Some(round1(fleet.rtt_us.load(Relaxed) as f64 / 1000.0)),
                        channels_subscribed: Some(fleet.channels_subscribed.load(Relaxed)),
                    }
                }
            },
            connections: Connections {
                open: sum(Gauge::ConnectionsOpen),
                websockets: sum(Gauge::WebSocketsOpen),
                sse_streams: sum(Gauge::SseStreamsOpen),
                max: self.max_connections,
            },
            rates: Rates {
                published_per_second: round1(published_rate),
                delivered_per_second: round1(delivered_rate),
            },
            totals: TotalsOut {
                published: self.feed.published.load(Relaxed),
                delivered: counted(Counter::FramesDelivered),
                slow_client_cuts: SlowCuts {
                    websocket: counted(Counter::SlowClientCuts),
                    sse: counted(Counter::SlowSseCuts),
                },
                udp_drops: self.udp_drops(),
            },
            feed_errors: FeedError::ALL
                .iter()
                .map(|&kind| Kind {
                    kind: kind.label(),
                    count: self.feed.errors(kind),
                })
                .collect(),
            queued_bytes: sum(Gauge::QueuedBytes),
            shards: shards
                .iter()
                .enumerate()
                .map(|(i, s)| Shard {
                    shard: i,
                    connections: s.gauge(Gauge::ConnectionsOpen),
                    websockets: s.gauge(Gauge::WebSocketsOpen),
                    sse_streams: s.gauge(Gauge::SseStreamsOpen),
                    subscriptions: s.gauge(Gauge::Subscriptions),
                    queued_bytes: s.gauge(Gauge::QueuedBytes),
                    delivered_per_second: round1(state.rates.delivered_by_shard(i)),
                    slow_client_cuts: s.counters[Counter::SlowClientCuts as usize]
                        + s.counters[Counter::SlowSseCuts as usize],
                })
                .collect(),
            history: state.rates.sparklines(),
            channels: Some(state.tables.sample(now, figures)),
        };
        Arc::new(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// The whole `/metrics` page.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        metrics::write_single(
            &mut out,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            "gauge",
            self.started.elapsed().as_secs(),
        );
        let name = "ringcast_io_driver";
        metrics::write_header(
            &mut out,
            name,
            "The I/O driver the shards run on (1 for the one in use).",
            "gauge",
        );
        let _ = writeln!(out, "{name}{{driver=\"{}\"}} 1", self.io.label());
        metrics::write_single(
            &mut out,
            "ringcast_max_connections",
            "Connections the server accepts at most (--max-connections, or what the open-files limit allows).",
            "gauge",
            self.max_connections,
        );
        let snapshots: Vec<_> = self
            .shared
            .shard_stats
            .iter()
            .map(|s| s.snapshot())
            .collect();
        metrics::render_shards(&mut out, &snapshots);
        self.render_feed(&mut out);
        if let Some((fleet, _)) = &self.fleet {
            self.render_fleet(&mut out, fleet);
        }
        out
    }

    /// The fleet's figures (only on a fleet node: a single node has no
    /// link to report down).
    fn render_fleet(&self, out: &mut String, fleet: &crate::fleet::FleetStats) {
        let up = u64::from(self.shared.upstream.is_up());
        let single = [
            (
                "ringcast_fleet_link_up",
                "1 while Redis answers and this node's pub/sub connection delivers (its probe comes back); 0 otherwise.",
                "gauge",
                up,
            ),
            (
                "ringcast_fleet_publishes_total",
                "Messages fed to this node and published into the fleet.",
                "counter",
                fleet.publishes.load(Relaxed),
            ),
            (
                "ringcast_fleet_publish_duplicates_total",
                "Publishes a retry found already applied (not applied twice).",
                "counter",
                fleet.duplicates.load(Relaxed),
            ),
            (
                "ringcast_fleet_publish_retries_total",
                "Publish batches sent again after a failure (timeout, lost connection).",
                "counter",
                fleet.publish_retries.load(Relaxed),
            ),
            (
                "ringcast_fleet_catchup_reads_total",
                "Reads from channels' logs in Redis: holes filled, catch-up after a reconnect.",
                "counter",
                fleet.catchup_reads.load(Relaxed),
            ),
            (
                "ringcast_fleet_catchup_messages_total",
                "Messages those reads brought back.",
                "counter",
                fleet.catchup_messages.load(Relaxed),
            ),
            (
                "ringcast_fleet_syncs_total",
                "Channels synced from Redis (seq and log) for their first subscriber on this node.",
                "counter",
                fleet.syncs.load(Relaxed),
            ),
            (
                "ringcast_fleet_rebuilds_total",
                "Pub/sub connections rebuilt because the liveness probe stopped coming back.",
                "counter",
                fleet.rebuilds.load(Relaxed),
            ),
            (
                "ringcast_fleet_channels_subscribed",
                "Channels this node listens to in Redis (those it has subscribers for).",
                "gauge",
                fleet.channels_subscribed.load(Relaxed),
            ),
            (
                "ringcast_fleet_epoch_changes_total",
                "Times the fleet's epoch changed under this node (its Redis lost its data).",
                "counter",
                fleet.epoch_changes.load(Relaxed),
            ),
            (
                "ringcast_fleet_malformed_total",
                "Live messages from Redis that were not ringcast's.",
                "counter",
                fleet.malformed.load(Relaxed),
            ),
        ];
        metrics::write_singles(out, &single);
        let name = "ringcast_fleet_redis_rtt_seconds";
        metrics::write_header(
            out,
            name,
            "Round trip of the last probe (or publish batch) to Redis.",
            "gauge",
        );
        let _ = writeln!(out, "{name} {:.6}", fleet.rtt_us.load(Relaxed) as f64 / 1e6);
        let name = "ringcast_fleet_refused_total";
        metrics::write_header(
            out,
            name,
            "Messages fed to this node and refused because Redis could not be reached, by feed (Unix publishers wait instead).",
            "counter",
        );
        let _ = writeln!(
            out,
            "{name}{{feed=\"udp\"}} {}",
            self.feed.fleet_refused_udp.load(Relaxed)
        );
    }

    fn render_feed(&self, out: &mut String) {
        let feed = &self.feed;
        let single = [
            (
                "ringcast_messages_published_total",
                "Feed messages accepted and fanned out (all channels).",
                "counter",
                feed.published.load(Relaxed),
            ),
            (
                "ringcast_feed_udp_drops_total",
                "UDP feed datagrams the kernel dropped because the socket buffer was full.",
                "counter",
                self.udp_drops(),
            ),
            (
                "ringcast_feed_unix_publishers",
                "Publishers connected to the Unix feed socket.",
                "gauge",
                feed.unix_publishers.load(Relaxed),
            ),
            (
                "ringcast_limited_ips",
                "Client IPs tracked by the per-IP limits.",
                "gauge",
                self.shared.peers.tracked() as u64,
            ),
            (
                "ringcast_channels",
                "Channels known to the server.",
                "gauge",
                self.shared.registry.len() as u64,
            ),
            (
                "ringcast_history_bytes",
                "Bytes held in channel histories (all channels).",
                "gauge",
                feed.history_bytes.load(Relaxed),
            ),
            (
                "ringcast_history_frames",
                "Frames held in channel histories (all channels).",
                "gauge",
                feed.history_frames.load(Relaxed),
            ),
            (
                "ringcast_history_evicted_by_total_cap_total",
                "History frames evicted early because all channels together reached --history-total.",
                "counter",
                feed.history_evicted_by_total_cap.load(Relaxed),
            ),
            (
                "ringcast_compressed_clients",
                "Subscribers that take broadcast messages compressed (permessage-deflate).",
                "gauge",
                self.shared.deflate_clients.load(Relaxed),
            ),
            (
                "ringcast_compressed_messages_total",
                "Broadcast messages compressed: once each, for every subscriber that negotiated permessage-deflate.",
                "counter",
                feed.compressed_messages.load(Relaxed),
            ),
            (
                "ringcast_compression_input_bytes_total",
                "Payload bytes of the messages compressed, before compression.",
                "counter",
                feed.compression_in_bytes.load(Relaxed),
            ),
            (
                "ringcast_compression_output_bytes_total",
                "Payload bytes of the messages compressed, after compression.",
                "counter",
                feed.compression_out_bytes.load(Relaxed),
            ),
        ];
        metrics::write_singles(out, &single);
        let name = "ringcast_compression_seconds_total";
        metrics::write_header(
            out,
            name,
            "Time the feed spent compressing messages.",
            "counter",
        );
        let seconds = feed.compression_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name} {seconds:.6}");
        let name = "ringcast_feed_messages_total";
        metrics::write_header(out, name, "Feed messages received, by socket.", "counter");
        let _ = writeln!(
            out,
            "{name}{{source=\"udp\"}} {}",
            feed.udp_messages.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{source=\"unix\"}} {}",
            feed.unix_messages.load(Relaxed)
        );
        let name = "ringcast_feed_errors_total";
        metrics::write_header(out, name, "Feed messages refused, by kind.", "counter");
        for kind in FeedError::ALL {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{}\"}} {}",
                kind.label(),
                feed.errors(kind)
            );
        }
        let name = "ringcast_channel_messages_published_total";
        metrics::write_header(
            out,
            name,
            "Messages published per channel (the 100 busiest channels only).",
            "counter",
        );
        let mut cache = lock(&self.busiest);
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < BUSIEST_REFRESH);
        if !fresh {
            let mut lines = String::new();
            for (channel, count) in self.shared.registry.busiest(METRICS_CHANNELS) {
                let _ = writeln!(lines, "{name}{{channel=\"{channel}\"}} {count}");
            }
            *cache = Some((Instant::now(), lines));
        }
        if let Some((_, lines)) = cache.as_ref() {
            out.push_str(lines);
        }
    }

    /// The kernel's drop counter of the UDP feed socket, from this process's
    /// own view of its network namespace: `/proc/self/net/udp*` is there
    /// under systemd's `ProcSubset=pid`, which hides `/proc/net`.
    fn udp_drops(&self) -> u64 {
        let inode = self.udp_inode.load(Relaxed);
        if inode == 0 {
            return 0;
        }
        let inode = inode.to_string();
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            // Columns: ... inode (9), ref, pointer, drops (12).
            .find(|cols| cols.get(9) == Some(&inode))
            .and_then(|cols| cols.get(12)?.parse().ok())
            .unwrap_or(0)
    }
}

/// A lock that a panicked holder did not poison for good: the figures are
/// counters, still worth showing.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
