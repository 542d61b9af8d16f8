//! A connection's queue of frames waiting to be sent.
//!
//! Frames are reference-counted with `Rc`: a shard shares one encoded frame
//! among all its subscribers without atomic operations. At most one send is
//! in flight per connection; it carries the first `in_flight` frames (the
//! first one possibly from an offset, after a partial send). Everything queued
//! meanwhile goes out together in the next send.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

/// An encoded frame (or any bytes to write), shared within one shard.
pub type FrameRef = Rc<Bytes>;

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<FrameRef>,
    /// Bytes of `frames[0]` already written.
    front_offset: usize,
    /// Bytes queued and not yet written.
    queued: u64,
    /// Frames the send in flight covers (0: no send in flight).
    in_flight: usize,
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
    pub fn start_send(&mut self, max: usize, out: &mut Vec<(*const u8, usize)>) {
        debug_assert!(self.in_flight == 0, "one send in flight at most");
        out.clear();
        for (i, frame) in self.frames.iter().take(max).enumerate() {
            let skip = if i == 0 { self.front_offset } else { 0 };
            out.push((frame[skip..].as_ptr(), frame.len() - skip));
        }
        self.in_flight = out.len();
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
            let rest = front.len() - self.front_offset;
            if n >= rest {
                n -= rest;
                self.front_offset = 0;
                self.frames.pop_front();
                finished += 1;
            } else {
                self.front_offset += n;
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
        let keep = self.in_flight.max(usize::from(self.front_offset > 0));
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

    /// Releases the queue's storage when it has grown and is now empty, so a
    /// connection that once had a backlog does not keep the capacity while idle.
    pub fn shrink_if_idle(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames = VecDeque::new();
        }
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
    fn empty_frames_do_not_stall() {
        let mut q = OutQueue::default();
        q.push(frame("ab"));
        q.push(frame(""));
        collect(&mut q, 8);
        q.sent(2);
        assert!(q.is_empty());
    }
}
