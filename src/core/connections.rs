//! A shard's connections: the slab they live in, the one deadline each has on
//! the timer wheel, and the list of those with something to send.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use super::conn::{AuthState, Conn, ConnKey, Endpoint, Phase};
use super::outqueue::Forms;
use super::slab::Slab;
use super::timer::{TimerEntry, TimerWheel};
use std::rc::Rc;

const TICK_MS: u64 = 20;
const WHEEL_SLOTS: usize = 4096;

pub struct Connections {
    slab: Slab<Conn>,
    timers: TimerWheel,
    due: Vec<TimerEntry>,
    /// Connections with something to send (or a close to finish), in the
    /// order they became so; each is on it at most once (`flush_pending`).
    flush_list: VecDeque<u32>,
    /// Connections upgraded to WebSocket and not yet released.
    websockets: u64,
    /// Server-sent event streams open.
    sse_streams: u64,
}

impl Connections {
    /// How often the timer wheel turns.
    pub const TICK_MS: u64 = TICK_MS;

    pub fn new(now_ms: u64) -> Self {
        Connections {
            slab: Slab::new(),
            timers: TimerWheel::new(TICK_MS, WHEEL_SLOTS, now_ms),
            due: Vec::new(),
            flush_list: VecDeque::new(),
            websockets: 0,
            sse_streams: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn websockets(&self) -> u64 {
        self.websockets
    }

    pub fn sse_streams(&self) -> u64 {
        self.sse_streams
    }

    pub fn get(&self, slot: u32) -> Option<&Conn> {
        self.slab.get(slot)
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slab.get_mut(slot)
    }

    /// The connection `key` names, if it still lives in its slot.
    pub fn live(&self, key: ConnKey) -> Option<&Conn> {
        self.slab
            .get(key.slot)
            .filter(|c| c.generation == key.generation)
    }

    /// The key of the connection in `slot`, if one lives there.
    pub fn key_of(&self, slot: u32) -> Option<ConnKey> {
        self.slab.get(slot).map(|c| ConnKey {
            slot,
            generation: c.generation,
        })
    }

    /// Slots of every connection, or of those in `phase`.
    pub fn slots(&self, phase: Option<Phase>) -> Vec<u32> {
        self.slab
            .occupied()
            .filter(|&s| phase.is_none_or(|p| self.slab.get(s).is_some_and(|c| c.phase == p)))
            .collect()
    }

    /// Adds a connection for `fd`, in its handshake.
    pub fn insert(&mut self, fd: RawFd) -> (ConnKey, &mut Conn) {
        let (slot, generation) = self.slab.next_key();
        self.slab.insert(Conn::new(fd, generation));
        let key = ConnKey { slot, generation };
        let conn = self
            .slab
            .get_mut(slot)
            .expect("the slot just filled holds the connection");
        (key, conn)
    }

    /// The connection in `slot` is now a WebSocket of this kind.
    pub fn upgraded(&mut self, slot: u32, endpoint: Endpoint) {
        if let Some(conn) = self.slab.get_mut(slot) {
            debug_assert!(conn.endpoint == Endpoint::Unknown || conn.endpoint == Endpoint::Http);
            conn.endpoint = endpoint;
            match endpoint {
                Endpoint::Subscriber | Endpoint::Echo => self.websockets += 1,
                Endpoint::Sse => self.sse_streams += 1,
                _ => {}
            }
        }
    }

    /// Frees the slot `key` names (its timer entries go stale and are
    /// dropped when they fire).
    pub fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        self.live(key)?;
        let conn = self.slab.remove(key.slot)?;
        match conn.endpoint {
            Endpoint::Subscriber | Endpoint::Echo => self.websockets -= 1,
            Endpoint::Sse => self.sse_streams -= 1,
            _ => {}
        }
        Some(conn)
    }

    /// Sets the connection's one deadline (ms, shard clock), replacing any
    /// earlier one. An authenticated connection also wakes when its token
    /// expires, whichever comes first.
    pub fn set_deadline(&mut self, slot: u32, deadline: u64) {
        let Some(conn) = self.slab.get_mut(slot) else {
            return;
        };
        let deadline = match conn.auth.as_deref() {
            Some(AuthState::Granted { expires_at_ms, .. }) if conn.phase == Phase::Open => {
                deadline.min(*expires_at_ms)
            }
            _ => deadline,
        };
        conn.deadline = deadline;
        self.timers.insert(TimerEntry {
            slot,
            generation: conn.generation,
            deadline,
        });
    }

    /// Slots whose deadline has come by `now_ms` (their deadline is cleared).
    pub fn expired(&mut self, now_ms: u64) -> Vec<u32> {
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(now_ms, &mut due);
        let mut slots = Vec::new();
        for entry in due.drain(..) {
            if let Some(conn) = self.slab.get_mut(entry.slot)
                && conn.generation == entry.generation
                && conn.deadline == entry.deadline
            {
                conn.deadline = 0;
                slots.push(entry.slot);
            }
        }
        self.due = due;
        slots
    }

    /// Puts the connection on the flush list, unless it is on it already.
    pub fn schedule_flush(&mut self, slot: u32) {
        if let Some(conn) = self.slab.get_mut(slot)
            && !conn.flush_pending
        {
            conn.flush_pending = true;
            self.flush_list.push_back(slot);
        }
    }

    /// Queues a message's shared frame (the form this connection takes) on
    /// `slot` and schedules its flush (the fan-out's inner step); returns the
    /// bytes now queued there and the bytes added. An event stream gets the
    /// shared event after an id of its own (its position in every channel,
    /// now at `seq` in `channel`).
    pub fn push_frame(
        &mut self,
        slot: u32,
        forms: &Forms,
        channel: u32,
        seq: u64,
        epoch: &str,
    ) -> Option<(u64, u64)> {
        let conn = self.slab.get_mut(slot)?;
        let len = match (conn.sse.as_deref_mut(), forms.sse()) {
            (Some(stream), Some(event)) => {
                stream.set(channel, seq);
                conn.out.push(Rc::new(stream.id_line(epoch))) + conn.out.push(event.clone())
            }
            _ => conn.out.push(forms.pick(conn.takes_deflated()).clone()),
        };
        let queued = conn.out.queued_bytes();
        if !conn.flush_pending {
            conn.flush_pending = true;
            self.flush_list.push_back(slot);
        }
        Some((queued, len))
    }

    /// Takes the next connection off the flush list.
    pub fn next_flush(&mut self) -> Option<(u32, &mut Conn)> {
        // A slot freed while on the list is skipped.
        let slot = loop {
            let slot = self.flush_list.pop_front()?;
            if self.slab.get(slot).is_some() {
                break slot;
            }
        };
        let conn = self.slab.get_mut(slot)?;
        conn.flush_pending = false;
        Some((slot, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_deadline_does_not_fire() {
        let mut conns = Connections::new(0);
        let (key, _) = conns.insert(7);
        conns.set_deadline(key.slot, 100);
        conns.set_deadline(key.slot, 500);
        assert!(conns.expired(200).is_empty());
        assert_eq!(conns.expired(520), vec![key.slot]);
        assert!(conns.expired(10_000).is_empty(), "fired once");
    }

    #[test]
    fn a_released_connection_s_deadline_does_not_fire_for_the_next_one() {
        let mut conns = Connections::new(0);
        let (old, _) = conns.insert(7);
        conns.set_deadline(old.slot, 100);
        assert!(conns.remove(old).is_some());
        let (new, _) = conns.insert(8);
        assert_eq!(new.slot, old.slot);
        assert!(conns.live(old).is_none());
        assert!(conns.remove(old).is_none(), "an old key frees nothing");
        assert!(conns.expired(200).is_empty());
    }

    #[test]
    fn flush_list_holds_each_connection_once_in_order() {
        let mut conns = Connections::new(0);
        let (a, _) = conns.insert(1);
        let (b, _) = conns.insert(2);
        conns.schedule_flush(b.slot);
        conns.schedule_flush(a.slot);
        conns.schedule_flush(b.slot);
        assert_eq!(conns.next_flush().map(|(s, _)| s), Some(b.slot));
        assert_eq!(conns.next_flush().map(|(s, _)| s), Some(a.slot));
        assert!(conns.next_flush().is_none());
        conns.schedule_flush(a.slot);
        assert_eq!(conns.next_flush().map(|(s, _)| s), Some(a.slot));
    }

    #[test]
    fn websockets_are_counted_until_released() {
        let mut conns = Connections::new(0);
        let (a, _) = conns.insert(1);
        let (b, _) = conns.insert(2);
        conns.upgraded(a.slot, Endpoint::Subscriber);
        conns.upgraded(b.slot, Endpoint::Http);
        assert_eq!(conns.websockets(), 1);
        conns.remove(b);
        assert_eq!(conns.websockets(), 1);
        conns.remove(a);
        assert_eq!(conns.websockets(), 0);
    }
}
