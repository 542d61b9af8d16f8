//! The shard's I/O driver: the only code that talks to io_uring.
//!
//! The io_uring shard driver, the load generator and the bare-sender
//! baseline ask it to accept, receive, send and cancel, and read back
//! [`Completion`]s; nothing above this module knows about SQEs.
//!
//! Sends: a single frame goes out as `IORING_OP_SEND` pointing at the frame
//! bytes; several frames as one `IORING_OP_SENDMSG` with an iovec each. The
//! msghdr and iovec array only have to live until the SQE is *submitted*
//! (`IORING_FEAT_SUBMIT_STABLE`, checked at start), so they come from a scratch
//! arena that is reset once the submission queue is empty. The frame bytes
//! themselves must live until the completion; the caller's queue holds them.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::{BUFFER_GROUP, BufRing, Filled};

/// What an operation was, carried in its user_data next to the connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Cancel = 4,
    Wake = 5,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Wake,
            _ => return None,
        })
    }
}

/// Packs (op, slot, generation) into a user_data word.
fn token(op: Op, slot: u32, gen_: u32) -> u64 {
    (u64::from(op as u8) << 56) | (u64::from(gen_ & 0x00ff_ffff) << 32) | u64::from(slot)
}

/// One reaped completion, decoded.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub op: Op,
    pub slot: u32,
    /// Low 24 bits of the slot generation at submission.
    pub generation: u32,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// More completions will follow for this (multishot) operation.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, for receives.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    pub fn matches_generation(&self, generation: u32) -> bool {
        self.generation == generation & 0x00ff_ffff
    }
}

/// Frames per vectored send. Linux allows 1024 iovecs; 256 frames of even
/// 128 bytes is 32 KiB per syscall, already past the point of diminishing returns.
pub const MAX_IOVECS_PER_SEND: usize = 256;
const ARENA_CHUNK: usize = 4096;

pub struct Driver {
    // Field order matters: the ring is dropped (and its buffer registration
    // released) before the buffer memory is unmapped.
    ring: IoUring,
    bufs: BufRing,
    iovecs: Arena<libc::iovec>,
    msgs: Arena<libc::msghdr>,
    reaped: Vec<Completion>,
}

impl Driver {
    /// Sets up a ring with `sq_entries` submission slots and a pool of
    /// `recv_buffers` provided buffers of `recv_buffer_size` bytes.
    pub fn new(sq_entries: u32, recv_buffers: u16, recv_buffer_size: u32) -> io::Result<Driver> {
        let cq_entries = sq_entries * 8;
        // Single issuer + deferred task running: completions are processed
        // only when this thread asks, never by interrupting it.
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .build(sq_entries)
            })
            .map_err(explain_setup_error)?;
        if !ring.params().is_feature_submit_stable() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::other(
                "this kernel's io_uring lacks IORING_FEAT_SUBMIT_STABLE/NODROP (Linux 5.5+); ringcast needs Linux 6.1 or newer",
            ));
        }
        let bufs =
            BufRing::new(&ring.submitter(), recv_buffers, recv_buffer_size).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot register the receive buffer ring (needs Linux 5.19+; {e})"),
                )
            })?;
        Ok(Driver {
            ring,
            bufs,
            iovecs: Arena::new(),
            msgs: Arena::new(),
            reaped: Vec::with_capacity(cq_entries as usize),
        })
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module points only at memory
            // that outlives its use by the kernel: frame bytes held by the
            // caller until the completion, arena memory until submission,
            // and the buffer ring / wake buffer for the driver's lifetime.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // Queue full: submit what is queued. The arenas are NOT reset
            // here: `entry` itself may point into them and is not queued yet
            // (resetting here let the next send overwrite its msghdr). They
            // are reset after the event loop's own submit.
            self.ring.submit()?;
        }
    }

    fn reset_arenas_if_submitted(&mut self) {
        if self.ring.submission().is_empty() {
            self.iovecs.reset();
            self.msgs.reset();
        }
    }

    /// Arms a multishot accept on `listener`.
    pub fn accept(&mut self, listener: RawFd) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(Op::Accept, 0, 0));
        self.push(e)
    }

    /// Accepts one connection (its completion comes without "more").
    pub fn accept_once(&mut self, listener: RawFd) -> io::Result<()> {
        let e = opcode::Accept::new(
            types::Fd(listener),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(token(Op::Accept, 0, 0));
        self.push(e)
    }

    /// Arms a multishot receive on `fd` using the shard's buffer pool.
    pub fn recv(&mut self, fd: RawFd, slot: u32, generation: u32) -> io::Result<()> {
        let e = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(token(Op::Recv, slot, generation));
        self.push(e)
    }

    /// Sends `frames` (pointer, length) in order, as one operation.
    ///
    /// # Safety
    /// Each (pointer, length) must stay valid and unchanged until this send's
    /// completion is reaped.
    pub unsafe fn send(
        &mut self,
        fd: RawFd,
        slot: u32,
        generation: u32,
        frames: &[(*const u8, usize)],
    ) -> io::Result<()> {
        let user_data = token(Op::Send, slot, generation);
        let entry = if let [(ptr, len)] = frames {
            opcode::Send::new(types::Fd(fd), *ptr, *len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data)
        } else {
            if !self.iovecs.fits(frames.len()) || !self.msgs.fits(1) {
                // Before a new chunk: submit, so nothing queued points into
                // the arenas, and start them over (keeps them at one chunk).
                self.ring.submit()?;
                self.reset_arenas_if_submitted();
            }
            let iov = self.iovecs.alloc(frames.len());
            for (slot, (ptr, len)) in iov.iter_mut().zip(frames) {
                *slot = libc::iovec {
                    iov_base: *ptr as *mut libc::c_void,
                    iov_len: *len,
                };
            }
            let iov_ptr = iov.as_mut_ptr();
            let msg = &mut self.msgs.alloc(1)[0];
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            *msg = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov_ptr;
            msg.msg_iovlen = frames.len();
            opcode::SendMsg::new(types::Fd(fd), msg as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(user_data)
        };
        self.push(entry)
    }

    /// Cancels every operation in flight on `fd`.
    pub fn cancel_all(&mut self, fd: RawFd) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(token(Op::Cancel, 0, 0));
        self.push(e)
    }

    /// Reads 8 bytes from the shard's eventfd into `buf`.
    ///
    /// # Safety
    /// `buf` must stay valid until the completion is reaped.
    pub unsafe fn wait_for_wake(&mut self, eventfd: RawFd, buf: *mut u64) -> io::Result<()> {
        let e = opcode::Read::new(types::Fd(eventfd), buf.cast(), 8)
            .build()
            .user_data(token(Op::Wake, 0, 0));
        self.push(e)
    }

    /// Submits what is queued and waits for at least one completion or the timeout.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        self.reset_arenas_if_submitted();
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes every completion available now.
    pub fn reap(&mut self) -> &mut Vec<Completion> {
        self.reaped.clear();
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            let Some(op) = Op::from_u8((ud >> 56) as u8) else {
                continue;
            };
            self.reaped.push(Completion {
                op,
                slot: ud as u32,
                generation: ((ud >> 32) as u32) & 0x00ff_ffff,
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        &mut self.reaped
    }

    /// Moves the reaped completions out (so the caller can drive the driver
    /// while walking them); give the vector back with [`Driver::restore`].
    pub fn take_reaped(&mut self) -> Vec<Completion> {
        self.reap();
        std::mem::take(&mut self.reaped)
    }

    pub fn restore(&mut self, mut v: Vec<Completion>) {
        v.clear();
        self.reaped = v;
    }

    /// The bytes a receive completion delivered in buffer `bid`; the
    /// buffer goes back to the kernel when the guard drops.
    pub fn received(&mut self, bid: u16, len: usize) -> Filled<'_> {
        self.bufs.filled(bid, len)
    }

    /// Hands back a buffer whose bytes are not wanted.
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.recycle(bid);
    }

    pub fn recv_buffer_size(&self) -> u32 {
        self.bufs.buf_size()
    }
}

/// Explains why io_uring could not be set up, with the fix.
fn explain_setup_error(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) => {
            "io_uring is disabled for this process: either the sysctl kernel.io_uring_disabled is 1 or 2 \
             (fix: `sysctl -w kernel.io_uring_disabled=0`, or set kernel.io_uring_group to a group this user is in), \
             or a seccomp filter blocks it (Docker's default profile does: run with --security-opt seccomp=<profile allowing io_uring_setup/io_uring_enter/io_uring_register>; \
             under systemd, make sure SystemCallFilter= allows io_uring_setup, io_uring_enter and io_uring_register)"
        }
        Some(libc::ENOSYS) => {
            "this kernel has no io_uring (CONFIG_IO_URING=n) or a seccomp filter returns ENOSYS for it \
             (Docker's default profile; RHEL 9 disables io_uring by default: set kernel.io_uring_disabled=0); \
             ringcast needs Linux 6.1 or newer with io_uring enabled"
        }
        Some(libc::ENOMEM) => {
            "not enough locked memory for the ring: raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)"
        }
        _ => "io_uring_setup failed",
    };
    io::Error::new(e.kind(), format!("cannot create an io_uring ({e}): {why}"))
}

/// Scratch memory for msghdrs and iovecs that only needs to survive until
/// submission. Chunks never move, so pointers handed out stay valid until
/// `reset`, even when the arena grows.
struct Arena<T: Copy> {
    chunks: Vec<Box<[T]>>,
    chunk: usize,
    used: usize,
}

impl<T: Copy> Arena<T> {
    fn new() -> Self {
        Arena {
            chunks: Vec::new(),
            chunk: 0,
            used: 0,
        }
    }

    /// Whether `n` more fit in the current chunk.
    fn fits(&self, n: usize) -> bool {
        !self.chunks.is_empty() && self.used + n <= ARENA_CHUNK
    }

    fn alloc(&mut self, n: usize) -> &mut [T] {
        assert!(n <= ARENA_CHUNK, "arena request larger than a chunk");
        if self.chunks.is_empty() || self.used + n > ARENA_CHUNK {
            if !self.chunks.is_empty() {
                self.chunk += 1;
            }
            if self.chunk == self.chunks.len() {
                // SAFETY: T is iovec or msghdr, plain C structs for which
                // all-zero bytes are a valid value.
                let zero: T = unsafe { std::mem::zeroed() };
                self.chunks.push(vec![zero; ARENA_CHUNK].into_boxed_slice());
            }
            self.used = 0;
        }
        let start = self.used;
        self.used += n;
        &mut self.chunks[self.chunk][start..start + n]
    }

    fn reset(&mut self) {
        self.chunk = 0;
        self.used = 0;
        // Keep one chunk; drop the rest a burst may have added.
        self.chunks.truncate(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = token(Op::Send, 0xdead_beef, 0x0123_4567);
        assert_eq!((t >> 56) as u8, Op::Send as u8);
        assert_eq!(t as u32, 0xdead_beef);
        assert_eq!(((t >> 32) as u32) & 0xff_ffff, 0x23_4567);
    }

    /// Many multi-frame sends through a tiny submission queue: pushing an
    /// entry when the queue is full submits the others first, and the
    /// scratch memory the pending entry points at must survive that.
    #[test]
    fn vectored_sends_survive_a_full_submission_queue() {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair fills the two-element array.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let mut driver = match Driver::new(8, 16, 512) {
            Ok(d) => d,
            Err(e) => {
                // Where io_uring is off (a container's seccomp profile) the
                // server runs on epoll; this driver cannot be tested there.
                println!("io_uring is not available here, ring test not run: {e}");
                return;
            }
        };
        // 40 sends of 3 frames each, distinct bytes, all before any wait.
        let frames: Vec<Vec<u8>> = (0..120u32)
            .map(|i| format!("<{i:03}>").into_bytes())
            .collect();
        for (n, chunk) in frames.chunks(3).enumerate() {
            let parts: Vec<(*const u8, usize)> =
                chunk.iter().map(|f| (f.as_ptr(), f.len())).collect();
            // SAFETY: `frames` outlives every completion reaped below.
            unsafe { driver.send(fds[0], n as u32, 0, &parts) }.unwrap();
        }
        let mut sent = 0;
        while sent < 40 {
            driver
                .submit_and_wait(Some(Duration::from_secs(5)))
                .unwrap();
            let done = driver.take_reaped();
            for c in &done {
                assert_eq!(c.op, Op::Send);
                assert_eq!(c.result, 15, "send {} failed: {}", c.slot, c.result);
                sent += 1;
            }
            driver.restore(done);
        }
        let mut got = vec![0u8; 600];
        let mut have = 0;
        while have < 600 {
            // SAFETY: reads into the unfilled tail of `got`.
            let n = unsafe { libc::read(fds[1], got[have..].as_mut_ptr().cast(), 600 - have) };
            assert!(n > 0);
            have += n as usize;
        }
        assert_eq!(
            got,
            frames.concat(),
            "bytes out of order or from the wrong send"
        );
        // SAFETY: closing the pair we opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn arena_pointers_survive_growth() {
        let mut a: Arena<u64> = Arena::new();
        let first = a.alloc(10).as_ptr();
        for _ in 0..5 {
            a.alloc(ARENA_CHUNK);
        }
        let again = &a.chunks[0][..10];
        assert_eq!(again.as_ptr(), first);
        a.reset();
        assert_eq!(a.chunks.len(), 1);
    }
}
