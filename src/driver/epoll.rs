//! The epoll driver, for hosts where io_uring is switched off (Docker's and
//! containerd's default seccomp profiles, `kernel.io_uring_disabled`, RHEL 9).
//!
//! Edge-triggered readiness through `mio`. Reads go into one shard-wide
//! buffer and straight into the core, so an idle connection parks no buffer
//! here either; a connection is read until the kernel has nothing more (or a
//! per-turn budget is spent, then it is read again next turn, so one flooding
//! peer cannot starve the others). Sends are one `writev` of everything the
//! core has queued for the connection; when the socket's buffer is full the
//! send is deferred until epoll says it is writable again.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::io::Errno;
use rustix::net::Shutdown;

use crate::core::{Action, ConnKey, IoSlicePtr, SendResult, ShardCore};

use super::{ACCEPT_RETRY_MS, AcceptErrors, Common, SlotFlags};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// The shard-wide read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Reads of one connection per readiness turn before the others get theirs.
const READ_BUDGET: usize = 8;
/// Connections accepted per turn (a few when all shards share one socket,
/// so they take turns).
const ACCEPT_BATCH: usize = 128;
const SHARED_ACCEPT_BATCH: usize = 4;
/// Connections a shard may be ahead of an even share on a shared socket.
const FAIR_SHARE_SLACK: usize = 4;
/// How long a shard ahead of its share leaves new connections to the others.
const FAIR_SHARE_DEFER_MS: u64 = 2;

/// Per-slot state (one byte).
const WRITE_BLOCKED: u8 = 1;
const READ_DONE: u8 = 2;

pub struct EpollShard {
    common: Common,
    poll: Poll,
    events: Events,
    ready: Vec<(Token, bool, bool)>,
    listener: OwnedFd,
    flags: SlotFlags,
    /// Connections whose read budget ran out with bytes perhaps left.
    read_again: Vec<ConnKey>,
    read_buf: Box<[u8]>,
    iov: Vec<IoSlicePtr>,
    iovecs: Vec<libc::iovec>,
    /// The listener may hold more connections than the last batch took.
    accept_pending: bool,
    accept_retry_at: u64,
    accept_errors: AcceptErrors,
}

fn token_of(key: ConnKey) -> Token {
    Token(((key.generation as usize) << 32) | key.slot as usize)
}

fn key_of(token: Token) -> ConnKey {
    ConnKey {
        slot: token.0 as u32,
        generation: (token.0 >> 32) as u32,
    }
}

impl EpollShard {
    pub fn new(common: Common, listener: OwnedFd) -> std::io::Result<EpollShard> {
        let poll = Poll::new()?;
        socket2::SockRef::from(&listener.as_fd()).set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&common.reply.waker.raw_fd()),
            WAKER,
            Interest::READABLE,
        )?;
        Ok(EpollShard {
            common,
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            listener,
            flags: SlotFlags::default(),
            read_again: Vec::new(),
            read_buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            iov: Vec::with_capacity(crate::core::MAX_SEND_PIECES),
            iovecs: Vec::with_capacity(crate::core::MAX_SEND_PIECES),
            // Connections may have queued before the listener was registered.
            accept_pending: true,
            accept_retry_at: 0,
            accept_errors: AcceptErrors { last_log_ms: None },
        })
    }

    pub fn run(mut self) {
        let index = self.common.core.index();
        loop {
            let now = self.common.now_ms();
            let timeout = if self.common.woken || !self.read_again.is_empty() {
                std::time::Duration::ZERO
            } else if self.accept_pending && !self.common.core.is_stopping() {
                let wait = self.accept_retry_at.saturating_sub(now);
                ShardCore::TICK.min(std::time::Duration::from_millis(wait))
            } else {
                ShardCore::TICK
            };
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(shard = index, "epoll_wait failed: {e}; shard stops");
                break;
            }
            let now = self.common.now_ms();
            self.common.core.tick(now);
            self.ready.clear();
            for event in self.events.iter() {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.ready
                    .push((event.token(), readable, event.is_writable()));
            }
            let ready = std::mem::take(&mut self.ready);
            for &(token, readable, writable) in &ready {
                match token {
                    LISTENER => self.accept_pending = true,
                    WAKER => {
                        self.common.reply.waker.drain_counter();
                        self.common.reply.waker.rearm();
                        self.common.woken = true;
                    }
                    token => {
                        let key = key_of(token);
                        if writable && self.flags.get(key.slot) & WRITE_BLOCKED != 0 {
                            self.flags.clear(key.slot, WRITE_BLOCKED);
                            self.common.core.on_writable(key);
                        }
                        if readable {
                            self.read(key);
                        }
                    }
                }
            }
            self.ready = ready;
            let mut again = std::mem::take(&mut self.read_again);
            for &key in &again {
                self.read(key);
            }
            again.clear();
            if self.read_again.is_empty() {
                // Keep the allocation.
                self.read_again = again;
            }
            if self.accept_pending && !self.common.core.is_stopping() && now >= self.accept_retry_at
            {
                self.accept(now);
            }
            if std::mem::take(&mut self.common.woken) {
                self.common.drain_inbox();
            }
            self.run_actions();
            self.common.core.publish_stats();
            if self.common.core.is_finished() {
                break;
            }
        }
        self.common.core.publish_stats();
    }

    fn accept(&mut self, now: u64) {
        let shared_listener = self.common.config.shared_listener;
        if shared_listener && self.ahead_of_fair_share() {
            // Every shard's epoll wakes for a connection on the one socket
            // they share, and the first awake would take nearly all of them:
            // a shard ahead of its share lets the others go first, and takes
            // what is left a moment later.
            self.accept_pending = true;
            self.accept_retry_at = now + FAIR_SHARE_DEFER_MS;
            return;
        }
        let batch = if shared_listener {
            SHARED_ACCEPT_BATCH
        } else {
            ACCEPT_BATCH
        };
        self.accept_pending = false;
        for _ in 0..batch {
            let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
            match rustix::net::accept_with(&self.listener, flags) {
                Ok(fd) => self.open(fd),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => {
                    let err = std::io::Error::from(e);
                    self.accept_errors
                        .report(self.common.core.index(), now, &err);
                    self.accept_retry_at = now + ACCEPT_RETRY_MS;
                    self.accept_pending = true;
                    return;
                }
            }
        }
        // Batch spent: more may be waiting, and no new edge will say so.
        self.accept_pending = true;
    }

    /// This shard holds clearly more than an even share of the server's
    /// connections.
    fn ahead_of_fair_share(&self) -> bool {
        let shared = self.common.core.shared();
        let shards = shared.shard_stats.len().max(1);
        let total = shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        let mine = self.common.core.connections();
        shards > 1 && mine * shards > total + FAIR_SHARE_SLACK * shards
    }

    fn open(&mut self, fd: OwnedFd) {
        super::configure_client_socket(fd.as_fd(), self.common.config.send_buffer);
        let peer = super::peer_ip(fd.as_fd());
        // The core knows the socket by its number; this driver closes it
        // when the core says so (Action::Close).
        let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let key = self.common.core.on_accepted(raw, peer);
        self.flags.reset(key.slot);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&raw), token_of(key), interest)
            .is_err()
        {
            self.common.core.on_error(key, false);
        }
    }

    /// Reads what the socket holds (up to the budget) into the core.
    fn read(&mut self, key: ConnKey) {
        let Some(fd) = self.common.core.fd(key) else {
            return;
        };
        if self.flags.get(key.slot) & READ_DONE != 0 {
            return;
        }
        // SAFETY: `fd` is a socket this driver accepted and has not closed
        // (the core returned it for a live connection).
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        for _ in 0..READ_BUDGET {
            if !self.common.core.wants_input(key) {
                return;
            }
            match rustix::net::recv(
                socket,
                &mut self.read_buf[..],
                rustix::net::RecvFlags::empty(),
            ) {
                Ok((0, _)) => {
                    self.flags.set(key.slot, READ_DONE);
                    self.common.core.on_read_closed(key);
                    return;
                }
                Ok((n, _)) => {
                    self.common.core.on_received(key, &self.read_buf[..n]);
                    if n < self.read_buf.len() {
                        // Drained for now; new bytes bring a new edge.
                        return;
                    }
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    let peer_gone = matches!(e, Errno::CONNRESET | Errno::PIPE);
                    self.common.core.on_error(key, peer_gone);
                    return;
                }
            }
        }
        self.read_again.push(key);
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.common.core.poll_action(&mut self.iov) {
            match action {
                Action::Send { key, fd } => self.send(key, fd),
                Action::ShutdownWrite { fd } => super::shutdown(fd, Shutdown::Write),
                Action::Close { key, fd, abort } => {
                    self.flags.reset(key.slot);
                    // SAFETY: the descriptor came from accept and is closed
                    // exactly once, here; nothing is in flight on it (every
                    // write is synchronous), and closing it also removes it
                    // from the epoll set.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    super::close_socket(owned, abort);
                    self.common.core.on_released(key);
                }
                Action::ForceShutdown { fd } => super::shutdown(fd, Shutdown::Both),
                Action::AdminPage { key, page, head } => {
                    self.common.request_admin_page(key, page, head)
                }
            }
        }
    }

    /// One `writev` of what the core queued (the pieces are in `self.iov`).
    fn send(&mut self, key: ConnKey, fd: RawFd) {
        if self.flags.get(key.slot) & WRITE_BLOCKED != 0 {
            self.common.core.send_deferred(key);
            return;
        }
        self.iovecs.clear();
        self.iovecs
            .extend(self.iov.iter().map(|&(ptr, len)| libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: len,
            }));
        let total: usize = self.iov.iter().map(|&(_, len)| len).sum();
        // SAFETY: `IoSlice` is guaranteed ABI-compatible with `iovec` on
        // Unix; each iovec points into a frame the core keeps alive until
        // `on_sent`/`send_deferred` below, and the write is synchronous.
        let slices = unsafe {
            std::slice::from_raw_parts(
                self.iovecs.as_ptr().cast::<IoSlice<'_>>(),
                self.iovecs.len(),
            )
        };
        // SAFETY: `fd` is a socket this driver accepted and has not closed.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut result = rustix::io::writev(socket, slices);
        while result == Err(Errno::INTR) {
            result = rustix::io::writev(socket, slices);
        }
        match result {
            Ok(n) => {
                if n < total {
                    self.flags.set(key.slot, WRITE_BLOCKED);
                }
                self.common.core.on_sent(key, SendResult::Wrote(n));
            }
            Err(Errno::AGAIN) => {
                self.flags.set(key.slot, WRITE_BLOCKED);
                self.common.core.send_deferred(key);
            }
            Err(Errno::PIPE | Errno::CONNRESET) => {
                self.common.core.on_sent(key, SendResult::PeerGone)
            }
            Err(_) => self.common.core.on_sent(key, SendResult::Failed),
        }
    }
}
