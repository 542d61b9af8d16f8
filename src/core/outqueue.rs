//! A connection's queue of frames waiting to be sent.
//!
//! Frames are reference-counted with `Rc`: a shard shares one encoded frame
//! among all its subscribers without atomic operations. At most one send is
//! in flight per connection; it carries the first `in_flight` frames (the
//! first one possibly from an offset, after a partial send). Everything queued
//! meanwhile goes out together in the next send.
//!
//! The first frame is held inline: at low rates a connection never has more
//! than one frame waiting, so delivering to it allocates nothing, and an idle
//! connection holds no queue storage at all (`release_storage`).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

/// Most pieces (frames) in one send. Linux allows 1024 iovecs; 256 frames of
/// even 128 bytes is 32 KiB per syscall, past the point of diminishing returns.
pub const MAX_SEND_PIECES: usize = 256;

/// An encoded frame (or any bytes to write), shared within one shard.
pub type FrameRef = Rc<Bytes>;

/// A channel message's frames within one shard: the plain one, and the
/// compressed one when the feed made it (see `Encoded`).
#[derive(Debug, Clone)]
pub struct Forms {
    plain: FrameRef,
    deflated: Option<FrameRef>,
    sse: Option<FrameRef>,
}

impl Forms {
    /// The forms of `message`; with `sse`, the event-stream one too.
    pub fn new(message: super::Encoded, sse: bool) -> Forms {
        let sse = sse.then(|| Rc::new(message.sse_form()));
        Forms {
            plain: Rc::new(message.frame),
            deflated: message.deflated.map(Rc::new),
            sse,
        }
    }

    /// The event-stream form (`data:` lines), when made.
    pub fn sse(&self) -> Option<&FrameRef> {
        self.sse.as_ref()
    }

    /// The frame for a client that takes compressed frames (`deflate`) or not.
    pub fn pick(&self, deflate: bool) -> &FrameRef {
        match (&self.deflated, deflate) {
            (Some(deflated), true) => deflated,
            _ => &self.plain,
        }
    }
}

/// One piece of a send: where the bytes are and how many. The pointer is
/// into a frame the queue keeps alive until the send is reported done.
pub type IoSlicePtr = (*const u8, usize);

/// A FIFO of frames whose first element lives inline.
#[derive(Debug, Default)]
struct Frames {
    /// The front; `None` only when the queue is empty.
    first: Option<FrameRef>,
    rest: VecDeque<FrameRef>,
}

impl Frames {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn front(&self) -> Option<&FrameRef> {
        self.first.as_ref()
    }

    fn push_back(&mut self, frame: FrameRef) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<FrameRef> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        front
    }

    fn pop_back(&mut self) -> Option<FrameRef> {
        self.rest.pop_back().or_else(|| self.first.take())
    }

    fn iter(&self) -> impl Iterator<Item = &FrameRef> {
        self.first.iter().chain(self.rest.iter())
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: Frames,
    /// Bytes of `frames[0]` already written (a frame is far below 4 GiB:
    /// the largest message any endpoint takes is 1 GiB).
    front_offset: u32,
    /// Bytes queued and not yet written.
    queued: u64,
    /// Frames the send in flight covers (0: no send in flight).
    in_flight: u32,
}

impl OutQueue {
    pub fn push(&mut self, frame: FrameRef) -> u64 {
        let len = frame.len() as u64;
        self.queued += len;
        self.frames.push_back(frame);
        len
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn queued_bytes(&self) -> u64 {
        self.queued
    }

    pub fn send_in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Describes the next send: up to `max` frames as (pointer, length), and
    /// marks them in flight. The pointers stay valid until [`OutQueue::sent`]
    /// or [`OutQueue::abandon_in_flight`] is called: the frames are kept alive
    /// by this queue until then.
    pub fn start_send(&mut self, max: usize, out: &mut Vec<IoSlicePtr>) {
        debug_assert!(self.in_flight == 0, "one send in flight at most");
        out.clear();
        for (i, frame) in self.frames.iter().take(max).enumerate() {
            let skip = if i == 0 {
                self.front_offset as usize
            } else {
                0
            };
            out.push((frame[skip..].as_ptr(), frame.len() - skip));
        }
        self.in_flight = out.len() as u32;
    }

    /// Accounts for a completed send of `n` bytes; returns the number of whole
    /// frames finished.
    pub fn sent(&mut self, mut n: usize) -> usize {
        self.in_flight = 0;
        self.queued -= n as u64;
        let mut finished = 0;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                debug_assert!(false, "sent more than was queued");
                break;
            };
            let rest = front.len() - self.front_offset as usize;
            if n >= rest {
                n -= rest;
                self.front_offset = 0;
                self.frames.pop_front();
                finished += 1;
            } else {
                self.front_offset += n as u32;
                n = 0;
            }
        }
        // Zero-length frames at the front are done as soon as they are reached.
        while self.front_offset == 0 && self.frames.front().is_some_and(|f| f.is_empty()) {
            self.frames.pop_front();
        }
        finished
    }

    /// The send in flight failed or was cancelled: nothing more is in flight.
    pub fn abandon_in_flight(&mut self) {
        self.in_flight = 0;
    }

    /// Drops every frame the kernel is not currently reading (those after the
    /// send in flight); returns the bytes released. Used when a client is cut
    /// for being too slow: its backlog is freed at once.
    pub fn drop_unsent(&mut self) -> u64 {
        let keep = (self.in_flight as usize).max(usize::from(self.front_offset > 0));
        let mut released = 0;
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                released += f.len() as u64;
            }
        }
        self.queued -= released;
        released
    }

    /// Drops everything (the connection is gone and no send is in flight).
    pub fn clear(&mut self) -> u64 {
        debug_assert!(self.in_flight == 0);
        let released = self.queued;
        *self = OutQueue::default();
        released
    }

    /// Releases the overflow storage of an empty queue. Called when a
    /// connection has been quiet for a while (its heartbeat), not after every
    /// send: a busy connection keeps its buffer between bursts.
    pub fn release_storage(&mut self) {
        if self.frames.is_empty() {
            self.frames.rest = VecDeque::new();
        }
    }

    /// Bytes of heap this queue holds for its own bookkeeping.
    #[cfg(test)]
    pub fn storage_bytes(&self) -> usize {
        self.frames.rest.capacity() * std::mem::size_of::<FrameRef>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> FrameRef {
        Rc::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn collect(q: &mut OutQueue, max: usize) -> Vec<Vec<u8>> {
        let mut iov = Vec::new();
        q.start_send(max, &mut iov);
        iov.iter()
            // SAFETY (test): the queue keeps the frames alive.
            .map(|(p, l)| unsafe { std::slice::from_raw_parts(*p, *l) }.to_vec())
            .collect()
    }

    #[test]
    fn partial_sends_resume_at_the_right_byte() {
        let mut q = OutQueue::default();
        q.push(frame("hello"));
        q.push(frame("world"));
        assert_eq!(q.queued_bytes(), 10);
        assert_eq!(
            collect(&mut q, 8),
            vec![b"hello".to_vec(), b"world".to_vec()]
        );
        assert_eq!(q.sent(3), 0);
        assert_eq!(q.queued_bytes(), 7);
        assert_eq!(collect(&mut q, 8), vec![b"lo".to_vec(), b"world".to_vec()]);
        assert_eq!(q.sent(4), 1);
        assert_eq!(collect(&mut q, 8), vec![b"rld".to_vec()]);
        assert_eq!(q.sent(3), 1);
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn batch_is_capped() {
        let mut q = OutQueue::default();
        for _ in 0..10 {
            q.push(frame("x"));
        }
        assert_eq!(collect(&mut q, 4).len(), 4);
        q.sent(4);
        assert_eq!(collect(&mut q, 100).len(), 6);
    }

    #[test]
    fn drop_unsent_keeps_in_flight_frames() {
        let mut q = OutQueue::default();
        for s in ["aa", "bb", "cc", "dd"] {
            q.push(frame(s));
        }
        collect(&mut q, 2);
        assert_eq!(q.drop_unsent(), 4);
        assert_eq!(q.queued_bytes(), 4);
        q.sent(1);
        // With nothing in flight, only the half-written frame is kept: it
        // must be finished so the stream stays on a frame boundary.
        assert_eq!(q.drop_unsent(), 2);
        assert_eq!(collect(&mut q, 8), vec![b"a".to_vec()]);
    }

    #[test]
    fn one_frame_at_a_time_allocates_nothing() {
        let mut q = OutQueue::default();
        for _ in 0..3 {
            q.push(frame("x"));
            collect(&mut q, 8);
            q.sent(1);
        }
        assert_eq!(q.storage_bytes(), 0);
        q.push(frame("a"));
        q.push(frame("b"));
        q.push(frame("c"));
        assert!(q.storage_bytes() > 0);
        assert_eq!(
            collect(&mut q, 8),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        q.sent(3);
        q.release_storage();
        assert_eq!(q.storage_bytes(), 0);
    }

    #[test]
    fn empty_frames_do_not_stall() {
        let mut q = OutQueue::default();
        q.push(frame("ab"));
        q.push(frame(""));
        collect(&mut q, 8);
        q.sent(2);
        assert!(q.is_empty());
    }
}
