//! Per-connection state, kept compact: an idle WebSocket connection holds no
//! buffer (the reader's buffers are empty until a message arrives, the out
//! queue's storage is released when it drains), only this struct and its
//! subscriptions.

use std::net::IpAddr;
use std::os::fd::RawFd;

use smallvec::SmallVec;

use crate::metrics::CloseReason;
use crate::protocol::reader::FrameReader;

use super::outqueue::OutQueue;

/// What the connection turned out to be, once its request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Request not read yet.
    Unknown,
    /// Plain HTTP: answered, then closed.
    Http,
    /// `/ws`: a subscriber.
    Subscriber,
    /// `/echo`: echoes every message (conformance testing).
    Echo,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// WebSocket open.
    Open,
    /// A final response or close frame is queued; once it is written the
    /// write side is shut down.
    Closing,
    /// Write side shut down; reading and discarding until the peer closes
    /// (so our last bytes are not destroyed by a reset), or the grace ends.
    Lingering,
    /// Waiting for the kernel to give back operations before closing the fd.
    Releasing,
}

/// How incoming bytes are interpreted.
#[derive(Debug)]
pub enum Input {
    /// Accumulating the request head (allocated on first bytes, or at
    /// accept for a trusted proxy's connection).
    Head(Option<Box<HeadState>>),
    /// WebSocket frames. The reader exists only while a frame or message
    /// is half-read: most subscribers never send anything, and a reader
    /// (~100 bytes) per idle connection would be most of its memory.
    Frames(Option<Box<FrameReader>>),
    /// Ignored (closing).
    Discard,
}

/// The request head read so far.
#[derive(Debug, Default)]
pub struct HeadState {
    pub buf: Vec<u8>,
    /// The connection comes from a trusted proxy at this address: the
    /// per-IP limits apply to the client its `X-Forwarded-For` names.
    pub proxy: Option<IpAddr>,
}

impl Input {
    pub fn head_from_proxy(proxy: IpAddr) -> Input {
        Input::Head(Some(Box::new(HeadState {
            buf: Vec::new(),
            proxy: Some(proxy),
        })))
    }
}

#[derive(Debug)]
pub struct Conn {
    /// The driver's name for the socket; never used here.
    pub fd: RawFd,
    pub generation: u32,
    pub phase: Phase,
    pub endpoint: Endpoint,
    /// On the shard's flush list.
    pub flush_pending: bool,
    /// The peer closed its side (end of stream).
    pub read_closed: bool,
    /// A server ping is unanswered (nothing heard since it was sent).
    pub ping_outstanding: bool,
    /// Something arrived from the peer since the last ping.
    pub heard: bool,
    pub close_reason: Option<CloseReason>,
    /// Current timer deadline (ms, shard clock); 0 = none.
    pub deadline: u64,
    pub input: Input,
    pub out: OutQueue,
    pub subs: SmallVec<[Subscription; 2]>,
    /// Channels this connection is still catching up on (resume); `None`
    /// for almost every connection. Boxed: 8 bytes instead of a `Vec`'s 24
    /// in every connection, for an extra allocation only while resuming.
    #[allow(clippy::box_collection)]
    pub replay: Option<Box<Vec<ReplayCursor>>>,
    /// Client message rate limit: a token bucket, in thousandths of a
    /// message, last refilled at `tokens_at` (shard clock, ms, wrapping).
    pub tokens: u32,
    pub tokens_at: u32,
    /// Invalid control messages so far.
    pub strikes: u8,
    /// Byte budget for what the client sends (same clock as `tokens`).
    pub byte_tokens: u32,
    /// Entry in the per-IP limits table.
    pub peer: crate::limits::PeerSlot,
    /// Authentication state; `None` when authentication is off.
    pub auth: Option<Box<AuthState>>,
}

/// Where an authenticated connection stands.
#[derive(Debug)]
pub enum AuthState {
    /// Upgraded without a token: waits for `{"type":"auth"}` with the
    /// subscriptions it asked for in its URL.
    Pending(crate::protocol::query::WsQuery),
    /// Authenticated: what the token allows, until when (shard clock, ms).
    Granted {
        grant: crate::auth::Grant,
        expires_at_ms: u64,
    },
}

/// `Subscription::position` of a subscription that is not on the live list yet.
pub const PENDING: u32 = u32::MAX;

/// Where a resuming connection stands in a channel: the next seq it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCursor {
    pub channel: u32,
    pub next: u64,
}

/// A connection's place in a shard channel's subscriber list, so leaving
/// is O(1) whatever the channel's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The shard-local channel slot.
    pub channel: u32,
    /// Index of this connection in that channel's subscriber list, or
    /// [`PENDING`] while it catches up.
    pub position: u32,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32) -> Conn {
        Conn {
            fd,
            generation,
            phase: Phase::Handshake,
            endpoint: Endpoint::Unknown,
            flush_pending: false,
            read_closed: false,
            ping_outstanding: false,
            heard: false,
            close_reason: None,
            deadline: 0,
            input: Input::Head(None),
            out: OutQueue::default(),
            subs: SmallVec::new(),
            replay: None,
            tokens: 0,
            tokens_at: 0,
            strikes: 0,
            byte_tokens: 0,
            peer: crate::limits::UNTRACKED,
            auth: None,
        }
    }

    pub fn is_closing(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing | Phase::Lingering | Phase::Releasing
        )
    }
}

/// A slab with a generation per slot, so a completion for a connection that
/// has since been replaced in the same slot is recognised and ignored.
///
/// Entries live in fixed-size chunks that never move: growing never copies
/// (a `Vec` of a million connections would copy ~170 MB inside the event
/// loop when it doubles) and never holds up to twice the memory it uses.
pub struct Slab<T> {
    chunks: Vec<Vec<SlabEntry<T>>>,
    free: Vec<u32>,
    len: usize,
}

const CHUNK: usize = 1024;

struct SlabEntry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Slots ever handed out (occupied or free).
    fn capacity_used(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |c| (self.chunks.len() - 1) * CHUNK + c.len())
    }

    fn entry(&self, slot: u32) -> Option<&SlabEntry<T>> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut SlabEntry<T>> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot and generation the next insert will use.
    pub fn next_key(&self) -> (u32, u32) {
        match self.free.last() {
            Some(&slot) => (slot, self.entry(slot).map_or(0, |e| e.generation)),
            None => (self.capacity_used() as u32, 0),
        }
    }

    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if let Some(slot) = self.free.pop()
            && let Some(entry) = self.entry_mut(slot)
        {
            entry.value = Some(value);
            return slot;
        }
        let slot = self.capacity_used();
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(SlabEntry {
                generation: 0,
                value: Some(value),
            });
        }
        slot as u32
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.entry_mut(slot)?.value.as_mut()
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.entry(slot)?.value.as_ref()
    }

    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let entry = self.entry_mut(slot)?;
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    /// Slots currently occupied.
    pub fn occupied(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, _)| i as u32)
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_change_on_reuse() {
        let mut s = Slab::new();
        let (slot, g0) = s.next_key();
        assert_eq!(s.insert("a"), slot);
        s.remove(slot);
        let (slot2, g1) = s.next_key();
        assert_eq!(slot2, slot);
        assert_ne!(g0, g1);
        s.insert("b");
        assert_eq!(s.len(), 1);
        assert_eq!(s.occupied().collect::<Vec<_>>(), vec![slot]);
    }

    #[test]
    fn grows_by_chunks_without_moving() {
        let mut s = Slab::new();
        for i in 0..(CHUNK * 2 + 5) {
            assert_eq!(s.insert(i) as usize, i);
        }
        let first = s.get(0).unwrap() as *const usize;
        for i in 0..CHUNK {
            s.insert(i);
        }
        assert_eq!(s.get(0).unwrap() as *const usize, first, "entries moved");
        assert_eq!(*s.get((CHUNK * 2 + 1) as u32).unwrap(), CHUNK * 2 + 1);
        assert_eq!(s.chunks.len(), 4);
        assert!(s.chunks.iter().all(|c| c.capacity() == CHUNK));
    }

    #[test]
    fn conn_is_compact() {
        // Guard against accidental growth of the per-connection footprint.
        assert!(
            std::mem::size_of::<Conn>() <= 192,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
