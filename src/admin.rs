//! The admin side: the `/metrics` page, rendered on its own thread from the
//! counters the shards and the feed publish, never on a shard's event loop.
//!
//! A shard that receives `GET /metrics` sends the request here and goes on
//! fanning out; the page comes back through its inbox. Requests that arrive
//! while a page is being rendered are answered with the next one, so any
//! number of scrapes at once costs one render.
//!
//! With `--metrics-listen ADDR` the page is served on that address instead
//! (`serve_on`): a plain blocking listener on a thread of its own, for a
//! private address that only the monitoring system reaches.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::core::shared::Shared;
use crate::driver::{Io, MetricsDesk, MetricsRequest, ShardMsg};
use crate::feed::FeedStats;
use crate::feed::envelope::FeedError;
use crate::metrics;

/// Channels listed one by one in `/metrics` (the busiest); more would make
/// the page, and the monitoring system's series count, unbounded.
const METRICS_CHANNELS: usize = 100;

/// Everything the page is made of.
pub struct MetricsSource {
    pub shared: Arc<Shared>,
    pub feed: Arc<FeedStats>,
    /// Inode of the UDP feed socket, to read its kernel drop counter (0: none).
    pub udp_inode: Arc<AtomicU64>,
    pub started: Instant,
    pub io: Io,
    /// The busiest-channels section, the one part whose cost grows with the
    /// channel count: recomputed at most once per [`BUSIEST_REFRESH`].
    pub busiest: std::sync::Mutex<Option<(Instant, String)>>,
}

/// How stale the busiest-channels lines may be (a scrape every few seconds
/// sees them fresh; a flood of scrapes does not redo them each time).
const BUSIEST_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the renderer thread; shards send their requests to the desk.
pub fn start(source: Arc<MetricsSource>) -> std::io::Result<MetricsDesk> {
    let (tx, rx) = std::sync::mpsc::channel::<MetricsRequest>();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let body = source.render();
                let response = crate::protocol::handshake::http_response(
                    200,
                    "text/plain; version=0.0.4",
                    body.as_bytes(),
                    &[],
                );
                for request in waiting {
                    request.reply.send(ShardMsg::Response {
                        key: request.key,
                        response: response.clone(),
                    });
                }
            }
        })?;
    Ok(MetricsDesk { requests: tx })
}

/// Longest a metrics client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/metrics` on `addr` from a thread of its own; returns the bound
/// address (port 0 picks one).
pub fn serve_on(
    addr: std::net::SocketAddr,
    source: Arc<MetricsSource>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-listen".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One at a time: a private address, scraped every few seconds.
                let _ = answer(stream, &source);
            }
        })?;
    Ok(bound)
}

/// Reads one request (bounded in size and time) and answers it.
fn answer(mut stream: std::net::TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    use crate::protocol::handshake::{http_response, parse_request_head};
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            Ok(None) => continue,
            Err(e) => break e.response(),
            Ok(Some((head, _))) => {
                break match (head.method.as_str(), head.path.as_str()) {
                    ("GET", "/metrics") => http_response(
                        200,
                        "text/plain; version=0.0.4",
                        source.render().as_bytes(),
                        &[],
                    ),
                    (_, "/metrics") => {
                        http_response(405, "text/plain", b"only GET\n", &[("Allow", "GET")])
                    }
                    _ => http_response(404, "text/plain", b"not found: GET /metrics\n", &[]),
                };
            }
        }
    };
    stream.write_all(&response)
}

impl MetricsSource {
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
        let snapshots: Vec<_> = self
            .shared
            .shard_stats
            .iter()
            .map(|s| s.snapshot())
            .collect();
        metrics::render_shards(&mut out, &snapshots);
        self.render_feed(&mut out);
        out
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
        for (name, help, kind, value) in single {
            metrics::write_single(out, name, help, kind, value);
        }
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
        let mut cache = self.busiest.lock().unwrap_or_else(|e| e.into_inner());
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
