//! The shard core: everything a shard decides, and nothing it does.
//!
//! One `ShardCore` holds a shard's connections (handshake, WebSocket session,
//! close handshake), its channels and subscribers, every connection's
//! out-queue and high-water mark, resume cursors, drain, and the timer wheel
//! behind heartbeats and deadlines. It is a deterministic state machine: a
//! driver feeds it events (a connection accepted, bytes received, a send
//! completed, the peer closed, a delivery from the feed, the time) and carries
//! out the [`Action`]s it asks for (send these bytes, shut down the write
//! side, close). It reads no clock (time comes in with [`ShardCore::tick`]),
//! makes no syscall and knows nothing of io_uring or epoll, so it is tested in
//! memory with simulated time (`tests.rs`), and the same core runs on either
//! driver (`crate::driver`).
//!
//! A socket is known here only by the number the driver gave it (`fd`), which
//! the core hands back in actions and never uses itself.

#[doc(hidden)]
pub mod bench_support;
mod budget;
mod channels;
mod conn;
mod connections;
mod fanout;
mod heartbeat;
pub mod history;
mod http;
mod outqueue;
pub mod registry;
mod send;
mod session;
pub mod shared;
mod slab;
#[cfg(test)]
mod tests;
mod timer;
pub mod upstream;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::{CloseReason, Counter, Gauge, LocalStats};
use crate::protocol::frame::{OpCode, encode_close_frame, encode_server_frame};

use budget::BudgetRates;
use channels::Channels;
use conn::{AuthState, Conn, Endpoint, Input, Phase};
use connections::Connections;
use heartbeat::Beat;
use outqueue::FrameRef;
use shared::Shared;

pub use conn::ConnKey;
pub use outqueue::{IoSlicePtr, MAX_SEND_PIECES};

/// The WebSocket and HTTP settings a shard's core applies.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub high_water: u64,
    pub max_message: usize,
    pub echo_max_message: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub handshake_timeout: Duration,
    pub echo: bool,
    pub max_subscriptions: usize,
    /// Messages per second a `/ws` client may send.
    pub client_rate: u32,
    /// Connections the whole server accepts (see `Shared::connections`).
    pub max_connections: usize,
    /// Connections this shard accepts.
    pub max_connections_per_shard: usize,
    /// Peers whose `X-Forwarded-For` is believed (see `limits::client_ip`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Token verification, when authentication is on.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    pub auth_timeout: Duration,
    /// Lower-case origin patterns; empty: any origin.
    pub allowed_origins: Vec<String>,
    pub max_request_header: usize,
    /// Bytes per second a `/ws` client may send.
    pub client_bytes_rate: u32,
    /// The status page and `/metrics` are served on this listener (not
    /// when they have one of their own).
    pub serve_admin: bool,
    /// permessage-deflate is negotiated with clients that offer it.
    pub compression: bool,
    /// Messages shorter than this are not compressed (on `/echo`; the feed
    /// applies it to broadcasts).
    pub compression_min_size: usize,
    /// Messages each channel's history keeps (`--history`; 0: no resume).
    pub history: usize,
}

impl Default for CoreConfig {
    /// The server's defaults (see `config::ServeConfig`), for tests and benches.
    fn default() -> Self {
        CoreConfig {
            high_water: 4 << 20,
            max_message: 64 << 10,
            echo_max_message: 16 << 20,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            echo: false,
            max_subscriptions: 100,
            client_rate: 50,
            max_connections: usize::MAX,
            max_connections_per_shard: usize::MAX,
            trusted_proxies: Vec::new(),
            auth: None,
            auth_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_request_header: 8192,
            client_bytes_rate: 65536,
            serve_admin: true,
            compression: true,
            compression_min_size: 256,
            history: 1000,
        }
    }
}

/// A channel message for a shard, encoded once by the feed and shared (one
/// reference per shard, one atomic increment per shard).
#[derive(Debug)]
pub struct Delivery {
    pub channel: u64,
    pub seq: u64,
    pub message: Encoded,
}

/// A channel message as it goes out: its WebSocket frame and, when some
/// client negotiated permessage-deflate and it is worth it, the same message
/// as one compressed frame, made once for every such client. History keeps
/// both, so replays reuse them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub frame: Bytes,
    pub deflated: Option<Bytes>,
    /// The server-sent event form (`data:` lines; each stream adds its id),
    /// made by the feed while some event stream is open.
    pub sse: Option<Bytes>,
}

impl Encoded {
    pub fn plain(frame: Bytes) -> Encoded {
        Encoded {
            frame,
            deflated: None,
            sse: None,
        }
    }

    /// The event-stream form, made from the frame when the feed did not.
    pub fn sse_form(&self) -> Bytes {
        self.sse.clone().unwrap_or_else(|| {
            let json = crate::protocol::frame::server_frame_payload(&self.frame);
            Bytes::from(crate::protocol::sse::message_data(json))
        })
    }

    /// Bytes held (both forms).
    pub fn len(&self) -> usize {
        self.frame.len()
            + self.deflated.as_ref().map_or(0, Bytes::len)
            + self.sse.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The form for a client that takes compressed frames or not.
    pub fn for_client(&self, deflate: bool) -> &Bytes {
        match (&self.deflated, deflate) {
            (Some(deflated), true) => deflated,
            _ => &self.frame,
        }
    }
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the bytes [`ShardCore::poll_action`] just described (in order,
    /// as one operation) to `fd`, then report [`ShardCore::on_sent`]. The
    /// bytes stay valid, unchanged, until that report.
    Send { key: ConnKey, fd: RawFd },
    /// Everything queued was written: shut down the write side of `fd` and
    /// keep reading until the peer closes.
    ShutdownWrite { fd: RawFd },
    /// The connection is over: stop every operation on `fd`, close it (with a
    /// reset when `abort`), then report [`ShardCore::on_released`]. Until
    /// then the connection keeps its slot and whatever a send in flight reads.
    Close {
        key: ConnKey,
        fd: RawFd,
        abort: bool,
    },
    /// A `Close` has not been reported done within the grace period: force
    /// the socket's pending operations to end (shut it down both ways).
    ForceShutdown { fd: RawFd },
    /// Have the admin side answer `key` with `page` (rendered off the
    /// shard), then call [`ShardCore::on_response`]; `head`: a HEAD request,
    /// answered without the body.
    AdminPage {
        key: ConnKey,
        page: AdminPage,
        head: bool,
    },
}

/// The operator's pages. The shard only routes them: the admin side renders
/// them from counters the shards already publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPage {
    /// `/metrics`, in the Prometheus text format.
    Metrics,
    /// `/`, the HTML status page.
    Status,
    /// `/status.json`, what the status page reads.
    StatusJson,
}

impl AdminPage {
    /// The page served at `path`, if any.
    pub fn at(path: &str) -> Option<AdminPage> {
        match path {
            "/metrics" => Some(AdminPage::Metrics),
            "/" => Some(AdminPage::Status),
            "/status.json" => Some(AdminPage::StatusJson),
            _ => None,
        }
    }
}

/// How a send ended, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// `n` bytes were written (possibly fewer than asked).
    Wrote(usize),
    /// The peer is gone (reset, broken pipe).
    PeerGone,
    /// Any other failure.
    Failed,
}

/// Time for a close frame / final response to be written and the peer to
/// close its side, before the connection is reset.
const CLOSE_GRACE_MS: u64 = 2000;
/// Time for a driver to report a `Close` done before it is forced.
const RELEASE_GRACE_MS: u64 = 5000;

/// One shard's state; see the module documentation.
pub struct ShardCore {
    index: usize,
    config: Arc<CoreConfig>,
    shared: Arc<Shared>,
    conns: Connections,
    actions: VecDeque<Action>,
    channels: Channels,
    /// What every client may send, worked out once from the config.
    budget_rates: BudgetRates,
    slow: Vec<u32>,
    /// The server clock: ms since start, as last given by `tick`.
    now_ms: u64,
    stats: LocalStats,
    ping_frame: FrameRef,
    stopping: bool,
    /// Compressors for `/echo` replies (permessage-deflate).
    echo_deflaters: crate::protocol::deflate::DeflaterCache,
    /// The epoch clients' positions belong to (a copy of the shared one,
    /// taken again when it changes: `epoch_seen`).
    epoch: Arc<str>,
    epoch_seen: u64,
    /// In a fleet: connections waiting for their channels to be synced (by
    /// slot, with the connection's generation), and the sync count when
    /// they were last looked at. Kept here, not in every connection.
    parked: std::collections::HashMap<u32, (u32, upstream::Waiting)>,
    /// While a parked connection is retried: the end of the wait it had.
    park_until: Option<u64>,
    synced_seen: u64,
}

impl ShardCore {
    pub fn new(
        index: usize,
        config: Arc<CoreConfig>,
        shared: Arc<Shared>,
        now_ms: u64,
    ) -> ShardCore {
        let (epoch, epoch_seen) = (shared.epoch(), shared.epoch_changes());
        let synced_seen = shared.upstream.synced();
        ShardCore {
            index,
            shared,
            conns: Connections::new(now_ms),
            actions: VecDeque::new(),
            channels: Channels::default(),
            budget_rates: BudgetRates::new(
                config.client_rate,
                config.client_bytes_rate,
                config.max_message,
                config.max_subscriptions,
            ),
            slow: Vec::new(),
            now_ms,
            stats: LocalStats::default(),
            ping_frame: Rc::new(encode_server_frame(OpCode::Ping, b"")),
            epoch,
            epoch_seen,
            parked: std::collections::HashMap::new(),
            park_until: None,
            synced_seen,
            stopping: false,
            echo_deflaters: Default::default(),
            config,
        }
    }

    /// How often the driver should call [`ShardCore::tick`] when idle.
    pub const TICK: Duration = Duration::from_millis(Connections::TICK_MS);

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Connections the core holds (including those being released).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Shut down and every connection released: the driver may exit.
    pub fn is_finished(&self) -> bool {
        self.stopping && self.conns.is_empty()
    }

    /// Shutting down: accept nothing more.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The socket of a live connection.
    pub fn fd(&self, key: ConnKey) -> Option<RawFd> {
        self.conn(key).map(|c| c.fd)
    }

    /// Whether bytes from this connection still matter (false once it is
    /// being released: the driver may stop reading).
    pub fn wants_input(&self, key: ConnKey) -> bool {
        self.conn(key).is_some_and(|c| c.phase != Phase::Releasing)
    }

    fn conn(&self, key: ConnKey) -> Option<&Conn> {
        self.conns.live(key)
    }

    /// The key of the connection in `slot`, if one lives there.
    pub fn key_of(&self, slot: u32) -> Option<ConnKey> {
        self.conns.key_of(slot)
    }

    fn live_slot(&self, key: ConnKey) -> Option<u32> {
        self.conn(key).map(|_| key.slot)
    }

    // ----- events -----

    /// Advances the clock to `now_ms` and fires every deadline due.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.fire_timers();
    }

    /// A connection was accepted on `fd` from `peer`. Returns its key; the
    /// driver starts reading from it. A connection over a limit is answered
    /// (503, 429) and closed through the usual actions.
    pub fn on_accepted(&mut self, fd: RawFd, peer: Option<IpAddr>) -> ConnKey {
        let total = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let over = total > self.config.max_connections
            || self.conns.len() >= self.config.max_connections_per_shard;
        let mut peer_slot = crate::limits::UNTRACKED;
        let mut peer_refused = None;
        let mut proxy = None;
        if !over
            && self.shared.peers.enabled()
            && let Some(ip) = peer
        {
            if crate::limits::is_trusted(ip, &self.config.trusted_proxies) {
                // Its clients are admitted at their request, once its
                // X-Forwarded-For has said who they are.
                proxy = Some(ip);
            } else {
                match self.shared.peers.admit(ip, self.now_ms) {
                    Ok(admitted) => peer_slot = admitted,
                    Err(why) => peer_refused = Some(why),
                }
            }
        }
        let (key, conn) = self.conns.insert(fd);
        conn.peer = peer_slot;
        if let Some(ip) = proxy {
            conn.input = Input::head_from_proxy(ip);
        }
        let slot = key.slot;
        self.stats.add(Counter::ConnectionsAccepted, 1);
        if over {
            // Refused politely; the socket is already ours, so say why.
            self.stats.add(Counter::ConnectionsRefused, 1);
            let body = b"server at its connection limit; try another node or later\n";
            let response = crate::protocol::handshake::http_response(
                503,
                "text/plain",
                body,
                &[("Retry-After", "5")],
            );
            self.respond_and_close(slot, response);
            return key;
        }
        if let Some(why) = peer_refused {
            self.refuse_peer(slot, why);
            return key;
        }
        let deadline = self.now_ms + self.config.handshake_timeout.as_millis() as u64;
        self.set_deadline(slot, deadline);
        key
    }

    /// Bytes arrived on `key`.
    pub fn on_received(&mut self, key: ConnKey, data: &[u8]) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.heartbeat.heard();
        }
        match self.conns.get(slot).map(|c| c.phase) {
            Some(Phase::Handshake) => self.on_head_bytes(slot, data),
            Some(Phase::Open) => self.on_frames(slot, data),
            // Closing: the peer's remaining bytes (including its close
            // reply) are read only to let the connection end cleanly.
            _ => {}
        }
    }

    /// The peer closed its side (end of stream): nothing more will be read.
    pub fn on_read_closed(&mut self, key: ConnKey) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.read_closed = true;
        match conn.phase {
            // A final reply is queued or being written (a request followed
            // at once by a half-close, as `nc -N` sends it): let it finish;
            // the close completes once it is written.
            Phase::Closing if !conn.out.is_empty() => {}
            Phase::Handshake | Phase::Open => self.release(slot, false, CloseReason::PeerGone),
            _ => {
                let reason = conn.close_reason.unwrap_or(CloseReason::PeerGone);
                self.release(slot, false, reason);
            }
        }
    }

    /// Reading or writing `key` failed; `peer_gone` for a reset or broken
    /// pipe, as opposed to any other error.
    pub fn on_error(&mut self, key: ConnKey, peer_gone: bool) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        let reason = if peer_gone {
            CloseReason::PeerGone
        } else {
            CloseReason::Error
        };
        self.release(slot, true, reason);
    }

    /// The driver closed the socket of a connection it was asked to close,
    /// and no operation on it remains: its slot is freed.
    pub fn on_released(&mut self, key: ConnKey) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.peers.release(conn.peer);
        if conn.endpoint == Endpoint::Subscriber && conn.takes_deflated() {
            self.shared.deflate_clients.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.endpoint == Endpoint::Sse {
            self.shared.sse_clients.fetch_sub(1, Ordering::Relaxed);
        }
        conn.out.abandon_in_flight();
        let released = conn.out.clear();
        self.note_unqueued(released);
        self.stats
            .closed(conn.close_reason.unwrap_or(CloseReason::Error));
    }

    /// The answer to an [`Action::AdminPage`] request.
    pub fn on_response(&mut self, key: ConnKey, response: Vec<u8>) {
        if let Some(slot) = self.live_slot(key)
            && self.conns.get(slot).is_some_and(|c| !c.is_closing())
        {
            self.respond_and_close(slot, response);
        }
    }

    /// Graceful shutdown begins: every WebSocket client gets a 1001 close;
    /// new upgrades are answered 503 (`Shared::draining`).
    pub fn drain(&mut self) {
        for slot in self.conns.slots(Some(Phase::Open)) {
            let last = self.last_words(
                slot,
                1001,
                "server shutting down; reconnect with since= to resume",
            );
            self.close_with(slot, Some(last), CloseReason::Shutdown);
        }
        // The control plane waits for the count of open WebSockets to reach
        // 0; publish it now (still counting these), then say so.
        self.publish_stats();
        self.shared.drain_acks.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes every connection at once; the driver stops once they are released.
    pub fn shutdown(&mut self) {
        self.stopping = true;
        for slot in self.conns.slots(None) {
            self.release(slot, true, CloseReason::Shutdown);
        }
    }

    /// The next thing the driver must do, if any. For [`Action::Send`],
    /// `iov` holds the bytes to write (pointer, length), in order.
    pub fn poll_action(&mut self, iov: &mut Vec<IoSlicePtr>) -> Option<Action> {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Some(action);
            }
            if let Some(action) = self.flush_next(iov)? {
                return Some(action);
            }
        }
    }

    /// Copies this shard's counters where `/metrics` and the watchdog read them.
    pub fn publish_stats(&mut self) {
        self.stats
            .set(Gauge::ConnectionsOpen, self.conns.len() as u64);
        self.stats
            .set(Gauge::Subscriptions, self.channels.subscriptions());
        self.stats
            .set(Gauge::WebSocketsOpen, self.conns.websockets());
        self.stats
            .set(Gauge::SseStreamsOpen, self.conns.sse_streams());
        self.shared.shard_stats[self.index].publish(&self.stats);
        self.shared.shard_heartbeat[self.index].store(self.now_ms, Ordering::Relaxed);
    }

    // ----- closing -----

    /// Queues `last` (a close frame or final HTTP response), stops reading
    /// requests, and shuts the write side once everything is written.
    fn close_with(&mut self, slot: u32, last: Option<Bytes>, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        conn.close_reason = Some(reason);
        conn.phase = Phase::Closing;
        conn.input = Input::Discard;
        if let Some(frame) = last {
            let n = conn.out.push(Rc::new(frame));
            self.note_queued(slot, n);
        }
        self.unsubscribe_all(slot);
        self.set_deadline(slot, self.now_ms + CLOSE_GRACE_MS);
        self.schedule_flush(slot);
    }

    /// Everything queued is written: shut the write side, then wait (within
    /// the close grace) for the peer to close, so our last bytes are not
    /// destroyed by a reset.
    fn linger(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        self.actions
            .push_back(Action::ShutdownWrite { fd: conn.fd });
        conn.phase = Phase::Lingering;
        if conn.read_closed {
            // The peer has closed already: we are done.
            let reason = conn.close_reason.unwrap_or(CloseReason::Error);
            self.release(slot, false, reason);
        }
        // The deadline set when closing began still stands: the whole close
        // takes at most CLOSE_GRACE_MS.
    }

    /// Ends the connection: asks the driver to close it (a reset when
    /// `abort`), and frees it once the driver says it is done.
    fn release(&mut self, slot: u32, abort: bool, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.phase == Phase::Releasing {
            return;
        }
        self.parked.remove(&slot);
        tracing::debug!(
            shard = self.index,
            slot,
            abort,
            ?reason,
            phase = ?conn.phase,
            "releasing connection"
        );
        if conn.close_reason.is_none()
            || conn.phase == Phase::Handshake
            || conn.phase == Phase::Open
        {
            conn.close_reason = Some(reason);
        }
        conn.phase = Phase::Releasing;
        conn.input = Input::Discard;
        let key = ConnKey {
            slot,
            generation: conn.generation,
        };
        self.actions.push_back(Action::Close {
            key,
            fd: conn.fd,
            abort,
        });
        self.unsubscribe_all(slot);
        self.set_deadline(slot, self.now_ms + RELEASE_GRACE_MS);
    }

    // ----- timers -----

    fn set_deadline(&mut self, slot: u32, deadline: u64) {
        self.conns.set_deadline(slot, deadline);
    }

    fn fire_timers(&mut self) {
        for slot in self.conns.expired(self.now_ms) {
            self.on_timer(slot);
        }
    }

    fn on_timer(&mut self, slot: u32) {
        if self.on_parked_timer(slot) {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        match conn.phase {
            Phase::Handshake => self.release(slot, true, CloseReason::HandshakeTimeout),
            Phase::Open => {
                let auth_end = match conn.auth.as_deref() {
                    Some(AuthState::Pending(_)) => Some("authentication required"),
                    Some(AuthState::Granted { expires_at_ms, .. })
                        if *expires_at_ms <= self.now_ms =>
                    {
                        Some("token expired")
                    }
                    _ => None,
                };
                match auth_end {
                    Some(reason) => {
                        self.stats.add(Counter::AuthFailures, 1);
                        let last = self.last_words(slot, 4001, reason);
                        self.close_with(slot, Some(last), CloseReason::AuthRefused);
                    }
                    None => self.heartbeat(slot),
                }
            }
            Phase::Closing | Phase::Lingering => {
                // Grace over. Still Closing: the peer does not read, so what
                // is queued will never go; reset. Lingering: everything was
                // written; a slow client is reset to free the kernel's buffer
                // at once, anyone else gets a normal close.
                let reason = conn.close_reason.unwrap_or(CloseReason::Error);
                let abort = conn.phase == Phase::Closing || reason == CloseReason::SlowClient;
                self.release(slot, abort, reason);
            }
            Phase::Releasing => {
                let fd = conn.fd;
                self.actions.push_back(Action::ForceShutdown { fd });
            }
        }
    }

    /// Ping every interval; close a client silent for the timeout after a ping.
    fn heartbeat(&mut self, slot: u32) {
        let interval = self.config.ping_interval.as_millis() as u64;
        let timeout = self.config.ping_timeout.as_millis() as u64;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        // A quiet moment: an idle connection gives back its queue storage.
        conn.out.release_storage();
        if conn.sse.is_some() {
            // An event stream cannot answer: a comment keeps proxies from
            // timing it out, and a gone peer shows as a failed send.
            self.enqueue(
                slot,
                Rc::new(Bytes::from_static(crate::protocol::sse::HEARTBEAT)),
            );
            return self.set_deadline(slot, self.now_ms + interval);
        }
        match conn.heartbeat.on_due() {
            Beat::Silent => {
                let frame = encode_close_frame(1001, "ping timeout");
                self.close_with(slot, Some(frame), CloseReason::PingTimeout);
            }
            // Next ping one interval after the last one.
            Beat::Answered => {
                self.set_deadline(slot, self.now_ms + interval.saturating_sub(timeout))
            }
            Beat::Ping => {
                let ping = self.ping_frame.clone();
                self.enqueue(slot, ping);
                self.set_deadline(slot, self.now_ms + timeout);
            }
        }
    }

    /// What a connection is told as it is closed: a close frame with `code`,
    /// or on an event stream (which has none) an `error` event.
    pub(super) fn last_words(&self, slot: u32, code: u16, reason: &str) -> Bytes {
        if self.conns.get(slot).is_some_and(|c| c.sse.is_some()) {
            let notice = crate::protocol::control::error(reason);
            return Bytes::clone(&self.notice_frame(slot, &notice));
        }
        encode_close_frame(code, reason)
    }

    /// The time in Unix seconds (token expiry is in those).
    fn unix_now(&self) -> u64 {
        (self.shared.unix_ms_at_start + self.now_ms) / 1000
    }
}
