//! The io_uring driver: one ring per shard.
//!
//! One multishot accept on the listener; per connection one multishot
//! receive that takes a buffer from the shard-wide provided-buffer ring only
//! when bytes arrive (an idle connection parks none), re-armed when the
//! kernel ends it (it does when the pool runs dry: ENOBUFS); vectored sends
//! straight from the core's queued frames; and on close, cancellation of
//! whatever is still armed, the socket closed only once the kernel has given
//! every operation back. The loop submits and waits once per iteration, so
//! everything the core queued during an iteration leaves together.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::core::{Action, ConnKey, IoSlicePtr, SendResult, ShardCore};
use crate::uring::{Completion, Driver, Op};
use rustix::net::Shutdown;

use super::{ACCEPT_RETRY_MS, AcceptErrors, Common, SlotFlags};

/// Submission queue size: enough to start a send on thousands of
/// connections per `io_uring_enter`.
const SQ_ENTRIES: u32 = 4096;

/// What the kernel holds for a connection (one byte per slot).
const RECV_ARMED: u8 = 1;
/// On the list of receives to re-arm.
const RECV_STARVED: u8 = 2;
const SEND_IN_FLIGHT: u8 = 4;
/// The core asked for a close; the socket closes once nothing is in flight.
const CLOSING: u8 = 8;
const ABORT: u8 = 16;
/// End of stream seen: the receive is not re-armed.
const READ_DONE: u8 = 32;

pub struct UringShard {
    common: Common,
    // The driver owns the ring; it is dropped after the loop ends.
    driver: Driver,
    listener: OwnedFd,
    /// Per core slot: the `RECV_ARMED`… flags above.
    flags: SlotFlags,
    starved: Vec<ConnKey>,
    iov: Vec<IoSlicePtr>,
    wake_buf: Box<u64>,
    accept_armed: bool,
    accept_retry_at: u64,
    accept_errors: AcceptErrors,
}

impl UringShard {
    pub fn new(common: Common, listener: OwnedFd) -> std::io::Result<UringShard> {
        let config = common.config.clone();
        let driver = Driver::new(SQ_ENTRIES, config.recv_buffers, config.recv_buffer_size)?;
        let mut shard = UringShard {
            common,
            driver,
            listener,
            flags: SlotFlags::default(),
            starved: Vec::new(),
            iov: Vec::with_capacity(crate::core::MAX_SEND_PIECES),
            wake_buf: Box::new(0),
            accept_armed: false,
            accept_retry_at: 0,
            accept_errors: AcceptErrors { last_log_ms: None },
        };
        shard.arm_accept()?;
        shard.arm_wake()?;
        // Submit now so start-up errors surface before we report ready.
        shard.driver.submit_and_wait(Some(Duration::ZERO))?;
        Ok(shard)
    }

    pub fn run(mut self) {
        let index = self.common.core.index();
        loop {
            let timeout = if self.common.woken {
                Duration::ZERO
            } else {
                ShardCore::TICK
            };
            if let Err(e) = self.driver.submit_and_wait(Some(timeout)) {
                tracing::error!(shard = index, "io_uring_enter failed: {e}; shard stops");
                break;
            }
            let now = self.common.now_ms();
            self.common.core.tick(now);
            let completions = self.driver.take_reaped();
            for c in &completions {
                self.on_completion(*c);
            }
            self.driver.restore(completions);
            if std::mem::take(&mut self.common.woken) {
                self.common.drain_inbox();
            }
            self.rearm_starved();
            if !self.accept_armed && !self.common.core.is_stopping() && now >= self.accept_retry_at
            {
                let _ = self.arm_accept();
            }
            self.run_actions();
            self.common.core.publish_stats();
            if self.common.core.is_finished() {
                break;
            }
        }
        self.common.core.publish_stats();
    }

    fn arm_accept(&mut self) -> std::io::Result<()> {
        // On a shared socket the kernel wakes the first waiting accept, so
        // a multishot accept would take every connection for one shard. A
        // single accept, re-armed after each connection, puts the shard at
        // the back of the queue: connections go round the shards.
        let listener = self.listener.as_raw_fd();
        if self.common.config.shared_listener {
            self.driver.accept_once(listener)?;
        } else {
            self.driver.accept(listener)?;
        }
        self.accept_armed = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> std::io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let fd = self.common.reply.waker.raw_fd();
        // SAFETY: `wake_buf` is boxed (stable address) and owned by this
        // shard, which outlives the ring's use of it (the ring drops with it).
        unsafe { self.driver.wait_for_wake(fd, buf) }
    }

    fn on_completion(&mut self, c: Completion) {
        match c.op {
            Op::Accept => self.on_accept(c),
            Op::Recv => self.on_recv(c),
            Op::Send => self.on_send(c),
            Op::Wake => {
                self.common.woken = true;
                self.common.reply.waker.rearm();
                if let Err(e) = self.arm_wake() {
                    tracing::error!(
                        shard = self.common.core.index(),
                        "cannot re-arm wake-up: {e}"
                    );
                }
            }
            Op::Cancel => {}
        }
    }

    /// The key a completion names, if that connection is still the core's.
    fn key(&self, c: &Completion) -> Option<ConnKey> {
        // Completions carry 24 bits of the generation; compare those.
        let key = self.common.core.key_of(c.slot)?;
        c.matches_generation(key.generation).then_some(key)
    }

    fn on_accept(&mut self, c: Completion) {
        if !c.more() {
            self.accept_armed = false;
        }
        let now = self.common.now_ms();
        if c.result >= 0 {
            let fd: RawFd = c.result;
            // SAFETY: the accept just returned this descriptor; it stays
            // open until this driver closes it on the core's Close.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            super::configure_client_socket(borrowed, self.common.config.send_buffer);
            let peer = super::peer_ip(borrowed);
            let key = self.common.core.on_accepted(fd, peer);
            self.flags.reset(key.slot);
            if self.driver.recv(fd, key.slot, key.generation).is_ok() {
                self.flags.set(key.slot, RECV_ARMED);
            } else {
                self.common.core.on_error(key, false);
            }
            return;
        }
        if c.result == -libc::ECANCELED || self.common.core.is_stopping() {
            return;
        }
        let err = std::io::Error::from_raw_os_error(-c.result);
        self.accept_errors
            .report(self.common.core.index(), now, &err);
        if !self.accept_armed {
            self.accept_retry_at = now + ACCEPT_RETRY_MS;
        }
    }

    fn on_recv(&mut self, c: Completion) {
        let bid = c.buffer();
        let Some(key) = self.key(&c) else {
            if let Some(bid) = bid {
                self.driver.recycle(bid);
            }
            return;
        };
        if !c.more() {
            self.flags.clear(key.slot, RECV_ARMED);
        }
        let closing = self.flags.get(key.slot) & CLOSING != 0;
        if c.result > 0 {
            if let Some(bid) = bid {
                let data = self.driver.received(bid, c.result as usize);
                if !closing {
                    self.common.core.on_received(key, &data);
                }
                // Dropping `data` hands the buffer back to the kernel.
            }
            self.after_recv(key);
        } else if c.result == 0 {
            self.flags.set(key.slot, READ_DONE);
            self.common.core.on_read_closed(key);
            self.try_finish(key);
        } else if c.result == -libc::ENOBUFS {
            // The shard's buffer pool ran dry; re-arm once buffers are back.
            self.after_recv(key);
        } else if c.result == -libc::ECANCELED {
            self.try_finish(key);
        } else {
            let peer_gone = matches!(-c.result, libc::ECONNRESET | libc::EPIPE);
            self.common.core.on_error(key, peer_gone);
            self.try_finish(key);
        }
    }

    /// A multishot receive can end after delivering data (or for lack of
    /// buffers); keep reading unless the connection is closing.
    fn after_recv(&mut self, key: ConnKey) {
        let flags = self.flags.get(key.slot);
        if flags & RECV_ARMED != 0 {
            return;
        }
        if flags & CLOSING != 0 {
            self.try_finish(key);
        } else if flags & (RECV_STARVED | READ_DONE) == 0 {
            self.flags.set(key.slot, RECV_STARVED);
            self.starved.push(key);
        }
    }

    fn rearm_starved(&mut self) {
        let starved = std::mem::take(&mut self.starved);
        for &key in &starved {
            let Some(fd) = self.common.core.fd(key) else {
                continue;
            };
            self.flags.clear(key.slot, RECV_STARVED);
            if self.flags.get(key.slot) & (RECV_ARMED | CLOSING | READ_DONE) != 0 {
                continue;
            }
            if self.driver.recv(fd, key.slot, key.generation).is_ok() {
                self.flags.set(key.slot, RECV_ARMED);
            } else {
                self.common.core.on_error(key, false);
            }
        }
        self.starved = starved;
        self.starved.clear();
    }

    fn on_send(&mut self, c: Completion) {
        let Some(key) = self.key(&c) else {
            return;
        };
        self.flags.clear(key.slot, SEND_IN_FLIGHT);
        let result = if c.result >= 0 {
            SendResult::Wrote(c.result as usize)
        } else if matches!(-c.result, libc::ECONNRESET | libc::EPIPE) {
            SendResult::PeerGone
        } else {
            SendResult::Failed
        };
        self.common.core.on_sent(key, result);
        self.try_finish(key);
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.common.core.poll_action(&mut self.iov) {
            match action {
                Action::Send { key, fd } => {
                    // SAFETY: the iovecs point into frames the core's queue for
                    // `key` holds until it is told this send is done
                    // (`on_sent`), and the core keeps the connection (and its
                    // queue) until `on_released`, which comes only after
                    // this send's completion (`try_finish`).
                    let r = unsafe { self.driver.send(fd, key.slot, key.generation, &self.iov) };
                    if r.is_ok() {
                        self.flags.set(key.slot, SEND_IN_FLIGHT);
                    } else {
                        self.common.core.on_sent(key, SendResult::Failed);
                    }
                }
                Action::ShutdownWrite { fd } => super::shutdown(fd, Shutdown::Write),
                Action::Close { key, fd, abort } => {
                    self.flags
                        .set(key.slot, CLOSING | if abort { ABORT } else { 0 });
                    if self.flags.get(key.slot) & (RECV_ARMED | SEND_IN_FLIGHT) != 0
                        && self.driver.cancel_all(fd).is_err()
                    {
                        // Shutting it down ends the pending operations too.
                        super::shutdown(fd, Shutdown::Both);
                    }
                    self.try_finish(key);
                }
                Action::ForceShutdown { fd } => super::shutdown(fd, Shutdown::Both),
                Action::AdminPage { key, page, head } => {
                    self.common.request_admin_page(key, page, head)
                }
            }
        }
    }

    /// Closes a connection the core asked to close once the kernel holds no
    /// operation on it any more, and tells the core.
    fn try_finish(&mut self, key: ConnKey) {
        let flags = self.flags.get(key.slot);
        if flags & CLOSING == 0 || flags & (RECV_ARMED | SEND_IN_FLIGHT) != 0 {
            return;
        }
        let Some(fd) = self.common.core.fd(key) else {
            return;
        };
        self.flags.reset(key.slot);
        // SAFETY: the descriptor came from accept and is closed exactly
        // once, here: no io_uring operation references it any more (none
        // armed, none in flight) and the core forgets it in on_released.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        super::close_socket(owned, flags & ABORT != 0);
        self.common.core.on_released(key);
    }
}
