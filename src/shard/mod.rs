//! A shard: one thread pinned to one CPU, with its own io_uring, its own
//! `SO_REUSEPORT` listener and its own connections. A connection lives and
//! dies on the shard that accepted it, so nothing on the per-connection path
//! is shared with another thread.
//!
//! The loop: submit queued operations and wait for completions (or the next
//! timer tick); handle accepts, received bytes and finished sends; drain the
//! inbox of messages from the feed; fire due timers; start the sends that
//! became possible. Sends are started at the end of an iteration so that
//! everything queued for a connection during the iteration leaves together.

#[doc(hidden)]
pub mod bench_support;
mod conn;
mod fanout;
mod http;
mod outqueue;
mod send;
use send::text_frame;
mod session;
mod timer;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::feed::envelope::is_valid_channel_name;
use crate::feed::registry::Channel;
use crate::metrics::{CloseReason, Counter, Gauge, LocalStats};
use crate::protocol::frame::{OpCode, encode_close_frame, encode_server_frame};
use crate::protocol::handshake::{
    HeadError, RequestHead, http_response, parse_request_head_limited, switching_protocols,
    validate_upgrade,
};
use crate::protocol::query::{QueryError, parse_ws_query};
use crate::protocol::reader::{Event, Flow, FrameReader, Violation};
use crate::server::Shared;

use crate::protocol::query::WsQuery;
use crate::uring::{Completion, Driver, MAX_IOVECS_PER_SEND, Op};
use conn::{AuthState, Conn, Endpoint, Input, PENDING, Phase, ReplayCursor, Slab, Subscription};
use fanout::Ack;
use outqueue::FrameRef;
use timer::{TimerEntry, TimerWheel};

/// Settings a shard needs, resolved from the serve configuration.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub high_water: u64,
    pub max_message: usize,
    pub echo_max_message: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub handshake_timeout: Duration,
    pub echo: bool,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    pub max_subscriptions: usize,
    pub inbox_capacity: usize,
    /// Messages per second a `/ws` client may send.
    pub client_rate: u32,
    /// Connections the whole server accepts (see `Shared::connections`).
    pub max_connections: usize,
    /// Connections this shard accepts.
    pub max_connections_per_shard: usize,
    /// `SO_SNDBUF` for client sockets; `None`: kernel autotuning.
    pub send_buffer: Option<u32>,
    /// Every shard accepts on the same socket (systemd socket activation)
    /// rather than on its own `SO_REUSEPORT` one.
    pub shared_listener: bool,
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
}

/// A channel message for a shard: the frame, encoded once by the feed and
/// shared (one reference per shard, one atomic increment per shard).
#[derive(Debug)]
pub struct Delivery {
    pub channel: u64,
    pub seq: u64,
    pub frame: Bytes,
}

/// Messages to a shard from other threads.
#[derive(Debug)]
pub enum ShardMsg {
    /// Graceful shutdown begins: send every WebSocket client a 1001 close;
    /// answer new upgrades with 503 (the listener stays open so /healthz
    /// can say 503 to the load balancer).
    Drain,
    /// Close every connection and stop.
    Shutdown,
}

/// Wakes a shard blocked in `io_uring_enter`: an eventfd the shard keeps a
/// read posted on. `notified` collapses many wake-ups into one write until
/// the shard has looked at its inbox.
pub struct Waker {
    fd: OwnedFd,
    notified: AtomicBool,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker {
            fd,
            notified: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe {
                libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
    }
}

/// What the rest of the server holds for each shard.
pub struct ShardHandle {
    pub index: usize,
    pub cpu: usize,
    pub inbox: mpsc::UnboundedSender<ShardMsg>,
    /// Channel messages; bounded, so a shard that falls behind slows the
    /// feed down instead of growing without limit.
    pub deliveries: mpsc::Sender<Delivery>,
    pub waker: Arc<Waker>,
    pub thread: std::thread::JoinHandle<()>,
}

impl ShardHandle {
    pub fn send(&self, msg: ShardMsg) {
        if self.inbox.send(msg).is_ok() {
            self.waker.wake();
        }
    }
}

/// Starts shard `index` on `cpu`, serving `listener`. Returns once its ring
/// is set up and accepting, or with the reason it could not be.
pub fn spawn(
    index: usize,
    cpu: usize,
    listener: OwnedFd,
    config: Arc<ShardConfig>,
    shared: Arc<Shared>,
) -> std::io::Result<ShardHandle> {
    let waker = Arc::new(Waker::new()?);
    let (tx, rx) = mpsc::unbounded_channel();
    let (deliveries_tx, deliveries_rx) = mpsc::channel(config.inbox_capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_waker = waker.clone();
    let thread = std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            if let Err(e) = crate::sys::pin_current_thread(cpu) {
                tracing::warn!(shard = index, cpu, "cannot pin shard to its CPU: {e}");
            }
            let inboxes = Inboxes {
                control: rx,
                deliveries: deliveries_rx,
            };
            let shard = match Shard::new(index, listener, config, shared, inboxes, thread_waker) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            shard.run();
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ShardHandle {
            index,
            cpu,
            inbox: tx,
            deliveries: deliveries_tx,
            waker,
            thread,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("shard thread died during start-up")),
    }
}

/// Sets up (and drops) a small ring, as a shard would: the real test of
/// whether io_uring is usable here. The error explains the likely cause.
pub fn probe_io_uring() -> std::io::Result<()> {
    Driver::new(8, 16, 512).map(drop)
}

/// Submission queue size: enough to start a send on thousands of
/// connections per `io_uring_enter`.
const SQ_ENTRIES: u32 = 4096;
const TICK_MS: u64 = 20;
const WHEEL_SLOTS: usize = 4096;
/// Time for a close frame / final response to be written and the peer to
/// close its side, before the connection is reset.
const CLOSE_GRACE_MS: u64 = 2000;
/// Time for cancelled operations to come back before forcing them.
const RELEASE_GRACE_MS: u64 = 5000;
/// Wait before re-arming accept after it failed (e.g. out of descriptors).
const ACCEPT_RETRY_MS: u64 = 100;
/// Channel messages fanned out per loop iteration before the shard goes
/// back to the ring (sends, receives) and then continues with the rest.
const DELIVERY_BUDGET: usize = 1024;

struct Inboxes {
    control: mpsc::UnboundedReceiver<ShardMsg>,
    deliveries: mpsc::Receiver<Delivery>,
}

/// A channel as one shard sees it: its local subscribers.
struct ShardChannel {
    channel: Arc<Channel>,
    /// Live subscribers: every new message is queued to each.
    subscribers: Vec<u32>,
    /// Connections catching up (resume) or waiting for the shard to reach
    /// the seq they start at; see `fanout`.
    pending: Vec<u32>,
    /// Highest seq fanned out here; anything at or below is skipped.
    delivered_seq: u64,
}

struct Shard {
    index: usize,
    config: Arc<ShardConfig>,
    shared: Arc<Shared>,
    // The driver owns the ring; connections' fds are closed before it drops.
    driver: Driver,
    listener: OwnedFd,
    conns: Slab<Conn>,
    timers: TimerWheel,
    due: Vec<TimerEntry>,
    flush_list: Vec<u32>,
    starved: Vec<u32>,
    iov: Vec<(*const u8, usize)>,
    inbox: Inboxes,
    channels: Slab<ShardChannel>,
    channel_slots: HashMap<u64, u32>,
    subscriptions: u64,
    websockets: u64,
    slow: Vec<u32>,
    waker: Arc<Waker>,
    wake_buf: Box<u64>,
    woken: bool,
    epoch: Instant,
    now_ms: u64,
    stats: LocalStats,
    ping_frame: FrameRef,
    accept_armed: bool,
    accept_retry_at: u64,
    stopping: bool,
    last_accept_error_log: u64,
}

impl Shard {
    fn new(
        index: usize,
        listener: OwnedFd,
        config: Arc<ShardConfig>,
        shared: Arc<Shared>,
        inbox: Inboxes,
        waker: Arc<Waker>,
    ) -> std::io::Result<Shard> {
        let driver = Driver::new(SQ_ENTRIES, config.recv_buffers, config.recv_buffer_size)?;
        let epoch = Instant::now();
        let mut shard = Shard {
            index,
            config,
            shared,
            driver,
            listener,
            conns: Slab::new(),
            timers: TimerWheel::new(TICK_MS, WHEEL_SLOTS, 0),
            due: Vec::new(),
            flush_list: Vec::new(),
            starved: Vec::new(),
            iov: Vec::with_capacity(MAX_IOVECS_PER_SEND),
            inbox,
            channels: Slab::new(),
            channel_slots: HashMap::new(),
            subscriptions: 0,
            websockets: 0,
            slow: Vec::new(),
            waker,
            wake_buf: Box::new(0),
            woken: false,
            epoch,
            now_ms: 0,
            stats: LocalStats::default(),
            ping_frame: Rc::new(encode_server_frame(OpCode::Ping, b"")),
            accept_armed: false,
            accept_retry_at: 0,
            stopping: false,
            last_accept_error_log: 0,
        };
        shard.arm_accept()?;
        shard.arm_wake()?;
        // Submit now so start-up errors surface before we report ready.
        shard.driver.submit_and_wait(Some(Duration::ZERO))?;
        Ok(shard)
    }

    fn run(mut self) {
        loop {
            // With inbox work left over, only look at the ring, do not wait.
            let timeout = if self.woken {
                Duration::ZERO
            } else {
                Duration::from_millis(TICK_MS)
            };
            if let Err(e) = self.driver.submit_and_wait(Some(timeout)) {
                tracing::error!(
                    shard = self.index,
                    "io_uring_enter failed: {e}; shard stops"
                );
                break;
            }
            self.now_ms = self.epoch.elapsed().as_millis() as u64;
            let completions = self.driver.take_reaped();
            for c in &completions {
                self.on_completion(*c);
            }
            self.driver.restore(completions);
            if std::mem::take(&mut self.woken) {
                self.drain_inbox();
            }
            self.fire_timers();
            self.rearm_starved();
            if !self.accept_armed && !self.stopping && self.now_ms >= self.accept_retry_at {
                let _ = self.arm_accept();
            }
            self.flush_all();
            self.publish_stats();
            self.shared.shard_heartbeat[self.index]
                .store(self.shared.uptime_ms(), Ordering::Relaxed);
            if self.stopping && self.conns.is_empty() {
                break;
            }
        }
        self.publish_stats();
    }

    fn arm_accept(&mut self) -> std::io::Result<()> {
        // On a shared socket the kernel wakes the first waiting accept, so
        // a multishot accept would take every connection for one shard. A
        // single accept, re-armed after each connection, puts the shard at
        // the back of the queue: connections go round the shards.
        let listener = self.listener.as_raw_fd();
        if self.config.shared_listener {
            self.driver.accept_once(listener)?;
        } else {
            self.driver.accept(listener)?;
        }
        self.accept_armed = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> std::io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        // SAFETY: `wake_buf` is boxed (stable address) and owned by the shard,
        // which outlives the ring's use of it (the ring drops with the shard).
        unsafe { self.driver.wait_for_wake(self.waker.fd.as_raw_fd(), buf) }
    }

    fn on_completion(&mut self, c: Completion) {
        match c.op {
            Op::Accept => self.on_accept(c),
            Op::Recv => self.on_recv(c),
            Op::Send => self.on_send(c),
            Op::Wake => {
                self.woken = true;
                // Clear before draining, so a message sent after the drain
                // starts wakes us again (see Waker).
                self.waker.notified.store(false, Ordering::SeqCst);
                if let Err(e) = self.arm_wake() {
                    tracing::error!(shard = self.index, "cannot re-arm wake-up: {e}");
                }
            }
            Op::Cancel => {}
        }
    }

    // ----- accepting -----

    fn on_accept(&mut self, c: Completion) {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result >= 0 {
            self.open_conn(c.result);
            return;
        }
        let err = std::io::Error::from_raw_os_error(-c.result);
        if c.result == -libc::ECANCELED || self.stopping {
            return;
        }
        if self.now_ms >= self.last_accept_error_log + 1000 || self.last_accept_error_log == 0 {
            self.last_accept_error_log = self.now_ms.max(1);
            let hint = if matches!(-c.result, libc::EMFILE | libc::ENFILE) {
                " (out of file descriptors: raise LimitNOFILE / fs.nr_open, see `ringcast doctor`)"
            } else {
                ""
            };
            tracing::warn!(shard = self.index, "accept failed: {err}{hint}");
        }
        if !self.accept_armed {
            self.accept_retry_at = self.now_ms + ACCEPT_RETRY_MS;
        }
    }

    /// 429: the client's address is over a per-IP limit.
    fn refuse_peer(&mut self, slot: u32, why: crate::limits::Refused) {
        self.stats.add(Counter::RefusedPerIp, 1);
        let body: &[u8] = match why {
            crate::limits::Refused::TooManyConnections => {
                b"too many connections from your address\n"
            }
            crate::limits::Refused::TooManyHandshakes => {
                b"too many new connections from your address; slow down\n"
            }
        };
        let response = http_response(429, "text/plain", body, &[("Retry-After", "2")]);
        self.respond_and_close(slot, response);
    }

    fn open_conn(&mut self, fd: RawFd) {
        set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        if let Some(size) = self.config.send_buffer {
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size as libc::c_int);
        }
        let total = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let over = total > self.config.max_connections
            || self.conns.len() >= self.config.max_connections_per_shard;
        let mut peer = crate::limits::UNTRACKED;
        let mut peer_refused = None;
        // A trusted proxy's clients are admitted at their request, once
        // its X-Forwarded-For has said who they are.
        if !over
            && self.shared.peers.enabled()
            && let Some(ip) = peer_ip(fd)
            && !crate::limits::is_trusted(ip, &self.config.trusted_proxies)
        {
            match self.shared.peers.admit(ip, self.shared.uptime_ms()) {
                Ok(admitted) => peer = admitted,
                Err(why) => peer_refused = Some(why),
            }
        }
        let (slot, generation) = self.conns.next_key();
        let mut conn = Conn::new(fd, generation);
        conn.peer = peer;
        self.conns.insert(conn);
        self.stats.add(Counter::ConnectionsAccepted, 1);
        if self.driver.recv(fd, slot, generation).is_err() {
            self.release(slot, true, CloseReason::Error);
            return;
        }
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.recv_armed = true;
        }
        if over {
            // Refused politely; the socket is already ours, so say why.
            self.stats.add(Counter::ConnectionsRefused, 1);
            let body = b"server at its connection limit; try another node or later\n";
            let response = http_response(503, "text/plain", body, &[("Retry-After", "5")]);
            return self.respond_and_close(slot, response);
        }
        if let Some(why) = peer_refused {
            return self.refuse_peer(slot, why);
        }
        let deadline = self.now_ms + self.config.handshake_timeout.as_millis() as u64;
        self.set_deadline(slot, deadline);
    }

    // ----- receiving -----

    fn on_recv(&mut self, c: Completion) {
        let bid = c.buffer();
        let live = self
            .conns
            .get_mut(c.slot)
            .filter(|conn| c.matches_generation(conn.generation));
        let Some(conn) = live else {
            if let Some(bid) = bid {
                self.driver.recycle(bid);
            }
            return;
        };
        if !c.more() {
            conn.recv_armed = false;
        }
        if c.result > 0 {
            conn.heard = true;
            if let Some(bid) = bid {
                // SAFETY: the buffer was just filled by this completion and
                // is recycled right after `on_data`, which does not keep the
                // slice beyond its return.
                let data = unsafe { self.driver.received(bid, c.result as usize) };
                self.on_data(c.slot, data);
                self.driver.recycle(bid);
            }
            self.after_recv_ended(c.slot);
        } else if c.result == 0 {
            self.on_peer_eof(c.slot);
        } else if c.result == -libc::ENOBUFS {
            // The shard's buffer pool ran dry; re-arm once buffers are back.
            conn.recv_starved = true;
            self.starved.push(c.slot);
        } else if c.result == -libc::ECANCELED {
            self.try_finish(c.slot);
        } else {
            let reason = if matches!(-c.result, libc::ECONNRESET | libc::EPIPE) {
                CloseReason::PeerGone
            } else {
                CloseReason::Error
            };
            self.release(c.slot, true, reason);
        }
    }

    /// A multishot receive can end after delivering data; keep reading.
    fn after_recv_ended(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.recv_armed {
            return;
        }
        if conn.phase == Phase::Releasing {
            self.try_finish(slot);
        } else if !conn.recv_starved {
            conn.recv_starved = true;
            self.starved.push(slot);
        }
    }

    fn rearm_starved(&mut self) {
        let starved = std::mem::take(&mut self.starved);
        for &slot in &starved {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.recv_starved = false;
            if conn.recv_armed {
                continue;
            }
            if conn.phase == Phase::Releasing {
                self.try_finish(slot);
                continue;
            }
            let (fd, generation) = (conn.fd, conn.generation);
            if self.driver.recv(fd, slot, generation).is_ok() {
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.recv_armed = true;
                }
            } else {
                self.release(slot, true, CloseReason::Error);
            }
        }
        self.starved = starved;
        self.starved.clear();
    }

    fn on_data(&mut self, slot: u32, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        match conn.phase {
            Phase::Handshake => self.on_head_bytes(slot, data),
            Phase::Open => self.on_frames(slot, data),
            // Closing: the peer's remaining bytes (including its close
            // reply) are read only to let the connection end cleanly.
            Phase::Closing | Phase::Lingering | Phase::Releasing => {}
        }
    }

    fn on_peer_eof(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let reason = match conn.phase {
            Phase::Handshake | Phase::Open => CloseReason::PeerGone,
            _ => conn.close_reason.unwrap_or(CloseReason::PeerGone),
        };
        // Nothing more will be read; whatever is still queued cannot matter
        // to a peer that closed, except a final reply we let finish.
        if conn.phase == Phase::Closing && conn.out.send_in_flight() {
            return;
        }
        self.release(slot, false, reason);
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

    fn linger(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        // SAFETY: shutdown on our own socket fd; no memory is involved.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
        conn.phase = Phase::Lingering;
        if !conn.recv_armed && !conn.recv_starved {
            // Nothing will tell us the peer closed: we are done.
            let reason = conn.close_reason.unwrap_or(CloseReason::Error);
            self.release(slot, false, reason);
        }
        // The deadline set when closing began still stands: the whole close
        // takes at most CLOSE_GRACE_MS.
    }

    /// Ends the connection: cancels its operations and closes the socket once
    /// they are back. `abort` resets it (RST) instead of a normal close.
    fn release(&mut self, slot: u32, abort: bool, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.phase == Phase::Releasing {
            return;
        }
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
        conn.abort |= abort;
        let fd = conn.fd;
        let busy = conn.recv_armed || conn.out.send_in_flight();
        self.unsubscribe_all(slot);
        if busy {
            if self.driver.cancel_all(fd).is_err() {
                // SAFETY: shutdown on our own socket; it forces the pending
                // operations to complete so the slot can be released.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            self.set_deadline(slot, self.now_ms + RELEASE_GRACE_MS);
        }
        self.try_finish(slot);
    }

    /// Frees the connection once the kernel holds no operation on it.
    fn try_finish(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.phase != Phase::Releasing || conn.recv_armed || conn.out.send_in_flight() {
            return;
        }
        let Some(mut conn) = self.conns.remove(slot) else {
            return;
        };
        if conn.abort {
            set_linger_zero(conn.fd);
        }
        // SAFETY: the fd is ours, and no io_uring operation references it
        // any more (none armed, none in flight).
        unsafe { libc::close(conn.fd) };
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.peers.release(conn.peer);
        if matches!(conn.endpoint, Endpoint::Subscriber | Endpoint::Echo) {
            self.websockets -= 1;
        }
        let released = conn.out.clear();
        self.note_unqueued(released);
        self.stats
            .closed(conn.close_reason.unwrap_or(CloseReason::Error));
    }

    // ----- timers -----

    fn set_deadline(&mut self, slot: u32, deadline: u64) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        // An authenticated connection also wakes when its token expires.
        let deadline = match conn.auth.as_deref() {
            Some(AuthState::Granted { expires_at_ms, .. }) if conn.phase == Phase::Open => {
                deadline.min(*expires_at_ms)
            }
            _ => deadline,
        };
        conn.deadline = deadline;
        self.timers.insert(TimerEntry {
            slot,
            generation: conn.generation,
            deadline,
        });
    }

    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(self.now_ms, &mut due);
        for entry in due.drain(..) {
            let current = self
                .conns
                .get(entry.slot)
                .is_some_and(|c| c.generation == entry.generation && c.deadline == entry.deadline);
            if current {
                self.on_timer(entry.slot);
            }
        }
        self.due = due;
    }

    fn on_timer(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.deadline = 0;
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
                        let frame = encode_close_frame(4001, reason);
                        self.close_with(slot, Some(frame), CloseReason::AuthRefused);
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
                // Cancelled operations did not come back: force them.
                // SAFETY: shutdown on our own socket fd.
                unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
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
        if conn.ping_outstanding {
            if !conn.heard {
                let frame = encode_close_frame(1001, "ping timeout");
                self.close_with(slot, Some(frame), CloseReason::PingTimeout);
                return;
            }
            // Answered: next ping one interval after the last one.
            conn.ping_outstanding = false;
            let next = self.now_ms + interval.saturating_sub(timeout);
            self.set_deadline(slot, next);
            return;
        }
        conn.ping_outstanding = true;
        conn.heard = false;
        let ping = self.ping_frame.clone();
        self.enqueue(slot, ping);
        self.set_deadline(slot, self.now_ms + timeout);
    }

    // ----- inbox and stats -----

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.control.try_recv() {
            match msg {
                ShardMsg::Drain => self.drain(),
                ShardMsg::Shutdown => self.shutdown(),
            }
        }
        for _ in 0..DELIVERY_BUDGET {
            match self.inbox.deliveries.try_recv() {
                Ok(delivery) => self.deliver(delivery),
                Err(_) => return,
            }
        }
        // Budget spent with messages left: come back without waiting.
        self.woken = true;
    }

    fn drain(&mut self) {
        let open: Vec<u32> = self
            .conns
            .occupied()
            .filter(|&s| self.conns.get(s).is_some_and(|c| c.phase == Phase::Open))
            .collect();
        for slot in open {
            let frame = encode_close_frame(
                1001,
                "server shutting down; reconnect with since= to resume",
            );
            self.close_with(slot, Some(frame), CloseReason::Shutdown);
        }
    }

    fn shutdown(&mut self) {
        self.stopping = true;
        let slots: Vec<u32> = self.conns.occupied().collect();
        for slot in slots {
            self.release(slot, true, CloseReason::Shutdown);
        }
    }

    fn publish_stats(&mut self) {
        self.stats
            .set(Gauge::ConnectionsOpen, self.conns.len() as u64);
        self.stats.set(Gauge::Subscriptions, self.subscriptions);
        self.stats.set(Gauge::WebSocketsOpen, self.websockets);
        self.shared.shard_stats[self.index].publish(&self.stats);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        for slot in self.conns.occupied().collect::<Vec<_>>() {
            if let Some(conn) = self.conns.get(slot) {
                // SAFETY: closing our own fds at shard exit; the ring (and
                // with it every operation) is torn down right after.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
}

/// The client's IP address (IPv4-mapped IPv6 addresses as IPv4).
fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    // SAFETY: sockaddr_storage is plain data; getpeername writes at most
    // `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: pointer and length describe `storage`, which we own.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            Some(std::net::IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(
                ip.to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4),
            )
        }
        _ => None,
    }
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: passes a live c_int of the right size for an int option.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live linger struct of the right size for SO_LINGER.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
