//! A channel's recent frames, for clients resuming with `since=`.
//!
//! The frames are the very `Bytes` the live path sends (no copies); the ring
//! is bounded by count and bytes per channel, and the feed enforces a global
//! byte cap across channels by evicting the globally oldest frames first.
//! Seqs in the ring are consecutive, so finding one is an index computation.

use std::collections::VecDeque;

use super::Encoded;

#[derive(Debug, Default)]
pub struct History {
    /// Seq of `frames[0]`.
    first_seq: u64,
    frames: VecDeque<Encoded>,
    bytes: usize,
}

/// What an eviction released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub frames: usize,
    pub bytes: usize,
}

impl std::ops::AddAssign for Released {
    fn add_assign(&mut self, other: Released) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

/// What a replay read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// Frames from the requested seq on were appended; `next` is the seq to
    /// ask for next time.
    Frames { next: u64 },
    /// Seqs `from..=to` are no longer retained; ask again from `to + 1`.
    Gap { from: u64, to: u64 },
}

impl History {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Seq of the oldest retained frame, if any.
    pub fn oldest(&self) -> Option<u64> {
        (!self.frames.is_empty()).then_some(self.first_seq)
    }

    /// Appends frame `seq` (one more than the last) and trims the ring to
    /// `max_count` frames and `max_bytes` bytes (the newest frame is always
    /// kept). Returns what was evicted.
    pub fn push(
        &mut self,
        seq: u64,
        frame: Encoded,
        max_count: usize,
        max_bytes: usize,
    ) -> Released {
        if self.frames.is_empty() {
            self.first_seq = seq;
        }
        debug_assert_eq!(seq, self.first_seq + self.frames.len() as u64);
        self.bytes += frame.len();
        self.frames.push_back(frame);
        let mut evicted = Released::default();
        while self.frames.len() > 1 && (self.frames.len() > max_count || self.bytes > max_bytes) {
            evicted += self.pop_oldest();
        }
        evicted
    }

    /// Puts older frames in front: `frames` (ascending, contiguous, ending
    /// just before the oldest retained one, or anywhere when the ring is
    /// empty), as many as `max_count` leaves room for, newest first. Only
    /// the count bounds them: they are there for a client resuming now, from
    /// what the fleet's log still held. Returns the (seq, bytes) added.
    pub fn prepend(&mut self, frames: Vec<(u64, Encoded)>, max_count: usize) -> Vec<(u64, usize)> {
        let room = max_count.saturating_sub(self.frames.len());
        let mut added = Vec::new();
        for (seq, frame) in frames.into_iter().rev().take(room) {
            let fits = if self.frames.is_empty() {
                true
            } else {
                seq + 1 == self.first_seq
            };
            if !fits {
                break;
            }
            self.first_seq = seq;
            self.bytes += frame.len();
            added.push((seq, frame.len()));
            self.frames.push_front(frame);
        }
        added
    }

    /// Evicts the oldest frame if it is `seq` (the global cap's eviction
    /// order may name a frame already trimmed by the per-channel limits).
    pub fn evict_if_oldest(&mut self, seq: u64) -> Released {
        if self.oldest() == Some(seq) {
            self.pop_oldest()
        } else {
            Released::default()
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) -> Released {
        let released = Released {
            frames: self.frames.len(),
            bytes: self.bytes,
        };
        self.frames.clear();
        self.bytes = 0;
        released
    }

    fn pop_oldest(&mut self) -> Released {
        let Some(f) = self.frames.pop_front() else {
            return Released::default();
        };
        self.first_seq += 1;
        self.bytes -= f.len();
        Released {
            frames: 1,
            bytes: f.len(),
        }
    }

    /// Appends to `out` the frames with seq in `from..=to`, stopping after
    /// `budget` bytes (at least one frame is taken).
    pub fn read(&self, from: u64, to: u64, budget: usize, out: &mut Vec<Encoded>) -> Replay {
        if let Some(oldest) = self.oldest()
            && from < oldest
        {
            return Replay::Gap {
                from,
                to: (oldest - 1).min(to),
            };
        }
        if self.frames.is_empty() && from <= to {
            return Replay::Gap { from, to };
        }
        let mut next = from;
        let mut taken = 0;
        while next <= to {
            let Some(frame) = self.frames.get((next - self.first_seq) as usize) else {
                break;
            };
            if taken > 0 && taken + frame.len() > budget {
                break;
            }
            taken += frame.len();
            out.push(frame.clone());
            next += 1;
        }
        Replay::Frames { next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Encoded {
        Encoded::plain(bytes::Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut h = History::default();
        for seq in 1..=10 {
            h.push(seq, frame(10), 4, 1000);
        }
        assert_eq!((h.oldest(), h.len(), h.bytes()), (Some(7), 4, 40));
        h.push(11, frame(25), 4, 50);
        // 10 + 10 + 25 would be 45 with seq 9: 9, 10, 11 retained.
        assert_eq!((h.oldest(), h.len()), (Some(9), 3));
        // A single frame over the byte limit is still kept.
        h.push(12, frame(500), 4, 50);
        assert_eq!((h.oldest(), h.len()), (Some(12), 1));
    }

    #[test]
    fn reads_ranges_and_reports_gaps() {
        let mut h = History::default();
        for seq in 5..=9 {
            h.push(seq, frame(10), 100, 1000);
        }
        let mut out = Vec::new();
        assert_eq!(h.read(2, 9, 1000, &mut out), Replay::Gap { from: 2, to: 4 });
        assert!(out.is_empty());
        assert_eq!(h.read(5, 9, 25, &mut out), Replay::Frames { next: 7 });
        assert_eq!(out.len(), 2);
        assert_eq!(h.read(7, 9, 1000, &mut out), Replay::Frames { next: 10 });
        assert_eq!(out.len(), 5);
        // Nothing newer than the last retained seq yet.
        assert_eq!(h.read(10, 12, 1000, &mut out), Replay::Frames { next: 10 });
        assert_eq!(h.evict_if_oldest(6), Released::default());
        assert_eq!(
            h.evict_if_oldest(5),
            Released {
                frames: 1,
                bytes: 10
            }
        );
        assert_eq!(h.oldest(), Some(6));
        // Empty history: everything asked for is gone.
        let empty = History::default();
        assert_eq!(
            empty.read(1, 3, 10, &mut out),
            Replay::Gap { from: 1, to: 3 }
        );
    }
}
