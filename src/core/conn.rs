//! Per-connection state, kept compact: an idle WebSocket connection holds no
//! buffer (the reader's buffers are empty until a message arrives, the out
//! queue's storage is released when it drains), only this struct and its
//! subscriptions.

use std::net::IpAddr;
use std::os::fd::RawFd;

use smallvec::SmallVec;

use crate::metrics::CloseReason;
use crate::protocol::reader::FrameReader;

use super::budget::ClientBudget;
use super::heartbeat::Heartbeat;
use super::outqueue::OutQueue;

/// Names one connection: its slot, and the slot's generation (a slot is
/// reused after its connection is released; an event for the old one is
/// recognised by its generation and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub slot: u32,
    pub generation: u32,
}

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
    /// `/sse`: a subscriber on a server-sent event stream.
    Sse,
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
    pub heartbeat: Heartbeat,
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
    /// What the client may still send (filled when it upgrades).
    pub budget: ClientBudget,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<crate::protocol::deflate::Agreement>,
    /// Where a server-sent event stream stands in each channel (its events'
    /// ids); `None` for every other connection.
    pub sse: Option<Box<SseState>>,
    /// Entry in the per-IP limits table.
    pub peer: crate::limits::PeerSlot,
    /// Authentication state; `None` when authentication is off.
    pub auth: Option<Box<AuthState>>,
}

/// An event stream's position in each of its channels: the last seq it was
/// sent (or told it missed), which every event's id carries.
#[derive(Debug, Default)]
pub struct SseState {
    pub positions: Vec<(u32, std::sync::Arc<str>, u64)>,
}

impl SseState {
    pub fn set(&mut self, channel: u32, seq: u64) {
        if let Some(p) = self.positions.iter_mut().find(|p| p.0 == channel) {
            p.2 = seq;
        }
    }

    /// The `id:` line for where the stream stands now.
    pub fn id_line(&self, epoch: &str) -> bytes::Bytes {
        bytes::Bytes::from(crate::protocol::sse::id_line(
            epoch,
            self.positions.iter().map(|(_, name, seq)| (&**name, *seq)),
        ))
    }
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
            heartbeat: Heartbeat::default(),
            close_reason: None,
            deadline: 0,
            input: Input::Head(None),
            out: OutQueue::default(),
            subs: SmallVec::new(),
            replay: None,
            budget: ClientBudget::default(),
            deflate: None,
            sse: None,
            peer: crate::limits::UNTRACKED,
            auth: None,
        }
    }

    /// Takes broadcast frames in their shared compressed form.
    pub fn takes_deflated(&self) -> bool {
        self.deflate.is_some_and(|a| a.takes_shared_frames())
    }

    pub fn is_closing(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing | Phase::Lingering | Phase::Releasing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
