//! One hashed timer wheel per shard, instead of a timer per connection.
//!
//! Each connection has a single deadline (handshake timeout, next ping, pong
//! deadline, close grace). Setting a new deadline inserts a new entry; the old
//! one is not searched for but recognised as stale when it fires, because it
//! no longer matches the connection's current deadline. An entry is 16 bytes
//! and a connection has about one live entry, so the wheel costs O(1) per
//! timer operation and ~16 bytes per connection.

/// A scheduled wake-up for connection `slot` (of generation `generation`) at
/// `deadline` (milliseconds on the shard's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub slot: u32,
    pub generation: u32,
    pub deadline: u64,
}

pub struct TimerWheel {
    tick_ms: u64,
    slots: Vec<Vec<TimerEntry>>,
    /// The next tick to process; every tick before it has been processed.
    next_tick: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel of `slots` buckets (a power of two) of `tick_ms` each.
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> Self {
        assert!(slots.is_power_of_two() && tick_ms > 0);
        TimerWheel {
            tick_ms,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            next_tick: now_ms / tick_ms,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, entry: TimerEntry) {
        // Never file into a tick already processed: it would wait a full turn.
        let tick = (entry.deadline.div_ceil(self.tick_ms)).max(self.next_tick);
        let mask = self.slots.len() as u64 - 1;
        self.slots[(tick & mask) as usize].push(entry);
        self.len += 1;
    }

    /// Moves every entry due at `now_ms` into `due`.
    pub fn expire(&mut self, now_ms: u64, due: &mut Vec<TimerEntry>) {
        let now_tick = now_ms / self.tick_ms;
        let mask = self.slots.len() as u64 - 1;
        // After a long stall, one pass over the wheel covers every slot.
        let last = now_tick.min(self.next_tick + mask);
        while self.next_tick <= last {
            let index = (self.next_tick & mask) as usize;
            let mut bucket = std::mem::take(&mut self.slots[index]);
            for entry in bucket.drain(..) {
                if entry.deadline <= now_ms {
                    due.push(entry);
                    self.len -= 1;
                } else {
                    // Due in a later turn of the wheel.
                    self.slots[index].push(entry);
                }
            }
            if self.slots[index].is_empty() {
                self.slots[index] = bucket;
            }
            self.next_tick += 1;
        }
        if now_tick > last {
            self.next_tick = now_tick + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(slot: u32, deadline: u64) -> TimerEntry {
        TimerEntry {
            slot,
            generation: 0,
            deadline,
        }
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimerWheel::new(10, 8, 0);
        w.insert(e(1, 25));
        w.insert(e(2, 500)); // several turns later
        let mut due = Vec::new();
        w.expire(24, &mut due);
        assert!(due.is_empty());
        w.expire(30, &mut due);
        assert_eq!(due, vec![e(1, 25)]);
        due.clear();
        w.expire(499, &mut due);
        assert!(due.is_empty());
        w.expire(500, &mut due);
        assert_eq!(due, vec![e(2, 500)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_next_expire() {
        let mut w = TimerWheel::new(10, 8, 1000);
        w.insert(e(1, 5));
        let mut due = Vec::new();
        w.expire(1000, &mut due);
        assert_eq!(due, vec![e(1, 5)]);
    }

    #[test]
    fn long_stall_covers_everything() {
        let mut w = TimerWheel::new(10, 8, 0);
        for i in 0..50 {
            w.insert(e(i, u64::from(i) * 7));
        }
        let mut due = Vec::new();
        w.expire(100_000, &mut due);
        assert_eq!(due.len(), 50);
        assert!(w.is_empty());
        w.insert(e(99, 100_005));
        due.clear();
        w.expire(100_010, &mut due);
        assert_eq!(due.len(), 1);
    }
}
