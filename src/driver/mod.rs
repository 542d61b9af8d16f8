//! Shard drivers: the I/O around a [`ShardCore`].
//!
//! A shard is one thread pinned to one CPU, with its own listener and its own
//! connections. Its driver accepts, reads and writes sockets, and turns what
//! happens into the core's events; the core answers with actions (send these
//! bytes, shut down, close) the driver carries out. Two drivers implement that
//! boundary: `uring` (io_uring: multishot accept and receive on a shard-wide
//! provided-buffer ring, vectored sends, cancellation) and `epoll`
//! (edge-triggered readiness, one shard-wide read buffer, `writev`).
//! `--io auto` takes io_uring where a ring can be set up and used end to end
//! (`probe`), and epoll elsewhere.

mod epoll;
pub mod probe;
mod uring;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::core::shared::Shared;
use crate::core::{AdminPage, ConnKey, CoreConfig, Delivery, ShardCore};

/// Which I/O driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    IoUring,
    Epoll,
}

impl Io {
    pub fn label(self) -> &'static str {
        match self {
            Io::IoUring => "io-uring",
            Io::Epoll => "epoll",
        }
    }
}

/// Driver settings (the socket side of a shard).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub io: Io,
    /// io_uring: provided receive buffers per shard, and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// Channel messages queued to a shard before the feed waits.
    pub inbox_capacity: usize,
    /// `SO_SNDBUF` for client sockets; `None`: kernel autotuning.
    pub send_buffer: Option<u32>,
    /// Every shard accepts on the same socket (systemd socket activation)
    /// rather than on its own `SO_REUSEPORT` one.
    pub shared_listener: bool,
}

/// Messages to a shard from other threads.
#[derive(Debug)]
pub enum ShardMsg {
    /// Graceful shutdown begins (see [`ShardCore::drain`]).
    Drain,
    /// Close every connection and stop.
    Shutdown,
    /// A rendered operator page for a connection that asked.
    Response { key: ConnKey, response: Vec<u8> },
}

/// Wakes a shard blocked waiting for I/O: an eventfd the shard's driver
/// watches. `notified` collapses many wake-ups into one write until the
/// shard has looked at its inbox.
pub struct Waker {
    fd: OwnedFd,
    notified: AtomicBool,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Waker {
            fd,
            notified: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            // A full counter (never reached: it is drained at every wake-up)
            // would still leave the shard awake, so the result can be ignored.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Called by the shard once woken, before it looks at its inbox, so a
    /// message sent after that look wakes it again.
    fn rearm(&self) {
        self.notified.store(false, Ordering::SeqCst);
    }

    /// Empties the eventfd counter (epoll: readiness stays until read).
    fn drain_counter(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}

/// Where requests for the operator's pages (`/metrics`, the status page)
/// go: rendered by the admin side, never on a shard's loop, and answered
/// through the shard's inbox.
#[derive(Clone)]
pub struct AdminDesk {
    pub requests: std::sync::mpsc::Sender<AdminRequest>,
}

/// One request for an operator's page.
pub struct AdminRequest {
    pub key: ConnKey,
    pub page: AdminPage,
    /// A HEAD request: the headers only.
    pub head: bool,
    pub reply: ShardReply,
}

/// How to send something back to a shard.
#[derive(Clone)]
pub struct ShardReply {
    inbox: mpsc::UnboundedSender<ShardMsg>,
    waker: Arc<Waker>,
}

impl ShardReply {
    pub fn send(&self, msg: ShardMsg) {
        if self.inbox.send(msg).is_ok() {
            self.waker.wake();
        }
    }
}

/// What the rest of the server holds for each shard.
pub struct ShardHandle {
    pub index: usize,
    pub cpu: usize,
    reply: ShardReply,
    /// Channel messages; bounded, so a shard that falls behind slows the
    /// feed down instead of growing without limit.
    pub deliveries: mpsc::Sender<Delivery>,
    pub thread: std::thread::JoinHandle<()>,
}

impl ShardHandle {
    pub fn send(&self, msg: ShardMsg) {
        self.reply.send(msg);
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.reply.waker.clone()
    }
}

/// What a shard thread is given.
pub struct ShardSetup {
    pub index: usize,
    pub cpu: usize,
    pub listener: OwnedFd,
    pub core: Arc<CoreConfig>,
    pub driver: Arc<DriverConfig>,
    pub shared: Arc<Shared>,
    /// The server clock's origin (the core counts ms since it).
    pub started: Instant,
    pub admin: Option<AdminDesk>,
}

/// Starts a shard. Returns once its driver is set up and accepting, or with
/// the reason it could not be.
pub fn spawn(setup: ShardSetup) -> std::io::Result<ShardHandle> {
    let waker = Arc::new(Waker::new()?);
    let (tx, rx) = mpsc::unbounded_channel();
    let (deliveries_tx, deliveries_rx) = mpsc::channel(setup.driver.inbox_capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reply = ShardReply { inbox: tx, waker };
    let thread_reply = reply.clone();
    let (index, cpu) = (setup.index, setup.cpu);
    let thread = std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            if let Err(e) = crate::sys::pin_current_thread(cpu) {
                tracing::warn!(shard = index, cpu, "cannot pin shard to its CPU: {e}");
            }
            let now = setup.started.elapsed().as_millis() as u64;
            let core = ShardCore::new(index, setup.core.clone(), setup.shared.clone(), now);
            let common = Common {
                core,
                inbox: Inboxes {
                    control: rx,
                    deliveries: deliveries_rx,
                },
                reply: thread_reply,
                started: setup.started,
                admin: setup.admin,
                config: setup.driver.clone(),
                woken: false,
            };
            let driver: std::io::Result<Box<dyn FnOnce()>> = match setup.driver.io {
                Io::IoUring => uring::UringShard::new(common, setup.listener)
                    .map(|shard| Box::new(move || shard.run()) as Box<dyn FnOnce()>),
                Io::Epoll => epoll::EpollShard::new(common, setup.listener)
                    .map(|shard| Box::new(move || shard.run()) as Box<dyn FnOnce()>),
            };
            match driver {
                Ok(run) => {
                    let _ = ready_tx.send(Ok(()));
                    run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ShardHandle {
            index,
            cpu,
            reply,
            deliveries: deliveries_tx,
            thread,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("shard thread died during start-up")),
    }
}

/// Channel messages fanned out per loop iteration before the shard goes
/// back to its sockets (sends, receives) and then continues with the rest.
const DELIVERY_BUDGET: usize = 1024;
/// Wait before accepting again after accept failed (e.g. out of descriptors).
const ACCEPT_RETRY_MS: u64 = 100;

struct Inboxes {
    control: mpsc::UnboundedReceiver<ShardMsg>,
    deliveries: mpsc::Receiver<Delivery>,
}

/// What both drivers keep around the core.
struct Common {
    core: ShardCore,
    inbox: Inboxes,
    reply: ShardReply,
    started: Instant,
    admin: Option<AdminDesk>,
    config: Arc<DriverConfig>,
    /// Woken, or inbox work left over: look at the inbox without waiting.
    woken: bool,
}

impl Common {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Drains control messages, then up to a budget of deliveries; leaves
    /// `woken` set when deliveries are left over.
    fn drain_inbox(&mut self) {
        // In a fleet: a new epoch, or channels synced for waiting clients.
        self.core.on_upstream_change();
        while let Ok(msg) = self.inbox.control.try_recv() {
            match msg {
                ShardMsg::Drain => self.core.drain(),
                ShardMsg::Shutdown => self.core.shutdown(),
                ShardMsg::Response { key, response } => self.core.on_response(key, response),
            }
        }
        for _ in 0..DELIVERY_BUDGET {
            match self.inbox.deliveries.try_recv() {
                Ok(delivery) => self.core.deliver(delivery),
                Err(_) => return,
            }
        }
        self.woken = true;
    }

    /// Hands a page request to the admin side, after publishing this
    /// shard's figures so the page is current for the shard that asks.
    fn request_admin_page(&mut self, key: ConnKey, page: AdminPage, head: bool) {
        self.core.publish_stats();
        match &self.admin {
            Some(desk) => {
                let request = AdminRequest {
                    key,
                    page,
                    head,
                    reply: self.reply.clone(),
                };
                if desk.requests.send(request).is_err() {
                    self.core.on_response(key, admin_unavailable());
                }
            }
            None => self.core.on_response(key, admin_unavailable()),
        }
    }
}

fn admin_unavailable() -> Vec<u8> {
    crate::protocol::handshake::http_response(
        503,
        "text/plain",
        b"the operator pages are not available on this server\n",
        &[],
    )
}

/// Socket options every client socket gets.
fn configure_client_socket(fd: BorrowedFd<'_>, send_buffer: Option<u32>) {
    let socket = socket2::SockRef::from(&fd);
    let _ = socket.set_tcp_nodelay(true);
    if let Some(size) = send_buffer {
        let _ = socket.set_send_buffer_size(size as usize);
    }
}

/// The client's IP address (IPv4-mapped IPv6 addresses as IPv4).
fn peer_ip(fd: BorrowedFd<'_>) -> Option<std::net::IpAddr> {
    let socket = socket2::SockRef::from(&fd);
    let ip = socket.peer_addr().ok()?.as_socket()?.ip();
    Some(match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    })
}

/// A byte of driver state per core slot (what each driver tracks of a
/// connection beyond what the core knows).
#[derive(Default)]
struct SlotFlags(Vec<u8>);

impl SlotFlags {
    fn get(&self, slot: u32) -> u8 {
        self.0.get(slot as usize).copied().unwrap_or(0)
    }

    fn set(&mut self, slot: u32, bits: u8) {
        *self.entry(slot) |= bits;
    }

    fn clear(&mut self, slot: u32, bits: u8) {
        *self.entry(slot) &= !bits;
    }

    /// A new connection in `slot` (or none): nothing set.
    fn reset(&mut self, slot: u32) {
        *self.entry(slot) = 0;
    }

    fn entry(&mut self, slot: u32) -> &mut u8 {
        let slot = slot as usize;
        if slot >= self.0.len() {
            self.0.resize(slot + 1, 0);
        }
        &mut self.0[slot]
    }
}

/// Shuts down one or both directions of a client socket.
fn shutdown(fd: RawFd, how: rustix::net::Shutdown) {
    // SAFETY: `fd` is a socket the driver accepted and has not closed (the
    // core only names live connections' sockets in its actions).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = rustix::net::shutdown(fd, how);
}

/// Closes a client socket, with a reset (`SO_LINGER` 0) when `abort`.
fn close_socket(fd: OwnedFd, abort: bool) {
    if abort {
        let _ = socket2::SockRef::from(&fd.as_fd()).set_linger(Some(std::time::Duration::ZERO));
    }
    drop(fd);
}

/// Logs a failed accept at most once a second, with the likely fix.
struct AcceptErrors {
    last_log_ms: Option<u64>,
}

impl AcceptErrors {
    fn report(&mut self, shard: usize, now_ms: u64, err: &std::io::Error) {
        if self.last_log_ms.is_some_and(|t| now_ms < t + 1000) {
            return;
        }
        self.last_log_ms = Some(now_ms);
        let hint = if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            " (out of file descriptors: raise LimitNOFILE / fs.nr_open, see `ringcast doctor`)"
        } else {
            ""
        };
        tracing::warn!(shard, "accept failed: {err}{hint}");
    }
}
