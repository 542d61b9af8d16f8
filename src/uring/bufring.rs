//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`).
//!
//! Why: a conventional receive parks a buffer per socket for as long as the
//! socket waits for data, so a million idle connections would pin a million
//! buffers. With a provided-buffer ring, one multishot receive is armed per
//! socket *without* a buffer; the kernel picks a buffer from this shard-wide
//! pool only when bytes actually arrive, and we hand it straight back after
//! parsing. Idle sockets therefore cost no user-space buffer at all, and the
//! pool size bounds receive memory per shard regardless of connection count.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The buffer group id of the single pool each ring uses.
pub const BUFFER_GROUP: u16 = 0;

pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    entries: u16,
    tail: u16,
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    buf_size: u32,
}

impl BufRing {
    /// Maps the ring and the buffers (prefaulted, so the pool is part of the
    /// start-up RSS rather than showing up as per-connection growth) and
    /// registers the ring with `submitter`.
    pub fn new(
        submitter: &io_uring::Submitter<'_>,
        entries: u16,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        assert!(
            entries.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let bufs_bytes = usize::from(entries) * buf_size as usize;
        let ring = map_anonymous(ring_bytes)?;
        let bufs = match map_anonymous(bufs_bytes) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `ring` was mapped just above with this length and is unused.
                unsafe { libc::munmap(ring.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            ring: ring.cast(),
            ring_bytes,
            entries,
            tail: 0,
            bufs,
            bufs_bytes,
            buf_size,
        };
        // SAFETY: the ring memory is page-aligned (mmap), sized for `entries`
        // entries, and stays mapped until Drop, which runs after the IoUring
        // that uses it is dropped (the driver declares the ring first).
        unsafe {
            submitter.register_buf_ring_with_flags(
                ring.as_ptr() as u64,
                entries,
                BUFFER_GROUP,
                0,
            )?;
        }
        for bid in 0..entries {
            this.recycle(bid);
        }
        Ok(this)
    }

    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// The first `len` bytes of buffer `bid`, which a receive completion
    /// just filled. The buffer goes back to the kernel when the guard drops,
    /// and the guard borrows the ring, so the bytes cannot outlive that.
    /// `bid` must come from a completion and not have been recycled since
    /// (it is then the kernel's again; reading it would race its writes).
    pub fn filled(&mut self, bid: u16, len: usize) -> Filled<'_> {
        assert!(bid < self.entries && len <= self.buf_size as usize);
        Filled {
            ring: self,
            bid,
            len,
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = usize::from(self.tail & mask);
        // SAFETY: `index` < entries, so the entry is inside the ring mapping;
        // the kernel only reads entries between its head and our published
        // tail, and this slot is past the tail until we publish below.
        unsafe {
            let entry = &mut *self.ring.as_ptr().add(index);
            entry.set_addr(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size as usize) as u64,
            );
            entry.set_len(self.buf_size);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved bytes, inside the
        // mapping; it is only ever written by us, read by the kernel, and the
        // release store orders the entry writes above before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

/// A filled receive buffer, recycled on drop (see [`BufRing::filled`]).
pub struct Filled<'a> {
    ring: &'a mut BufRing,
    bid: u16,
    len: usize,
}

impl std::ops::Deref for Filled<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: in bounds of the mapping (checked in `filled`); the kernel
        // wrote this buffer and does not touch it again until it is
        // recycled, which happens only when this guard drops, after every
        // borrow of the slice has ended.
        unsafe {
            std::slice::from_raw_parts(
                self.ring
                    .bufs
                    .as_ptr()
                    .add(usize::from(self.bid) * self.ring.buf_size as usize),
                self.len,
            )
        }
    }
}

impl Drop for Filled<'_> {
    fn drop(&mut self) {
        self.ring.recycle(self.bid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths; the
        // ring that used them has been dropped already (field order).
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_bytes);
        }
    }
}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; the result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}
