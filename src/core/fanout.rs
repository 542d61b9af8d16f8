//! Channels on a shard: subscribing (with resume), leaving, fanning a
//! message out, and replaying history to clients that resume.
//!
//! Every subscription starts at a cursor: the next seq the client should get
//! (`since + 1`, or the channel's current seq + 1). The shard tracks, per
//! channel, the last seq it fanned out (`delivered_seq`). A connection is
//! on the live subscriber list exactly when its cursor is `delivered_seq + 1`;
//! until then it is *pending*: behind (it is fed from the history, a batch
//! at a time as its queue drains, so a long replay never trips the
//! high-water mark) or ahead (it waits for the shard to catch up). This makes
//! the switch from replay to live exact: no gap, no duplicate, whatever is
//! published meanwhile.

use super::*;

use super::history::Replay;
use super::registry::{ChannelRefused, Creator};
use crate::protocol::control;
use conn::{PENDING, ReplayCursor, Subscription};
use outqueue::Forms;

/// Bytes of history copied into a connection's queue per refill.
const REPLAY_BATCH_BYTES: usize = 256 * 1024;

/// What a subscribe found, for the notices the caller sends.
pub(super) struct Subscribed {
    /// The channel's seq at the time of subscribing.
    pub current: u64,
    /// The client's `since` was ahead of the channel: it has been reset.
    pub reset: bool,
}

/// Channels a subscribe could not join, and why (the first reason met).
pub(super) struct Refused {
    pub why: ChannelRefused,
    pub channels: Vec<String>,
}

impl Refused {
    /// The error notice for the client.
    pub fn notice(&self) -> String {
        let first = self.channels.first().map_or("", String::as_str);
        let first: String = first.chars().take(128).collect();
        match self.channels.len() {
            0 | 1 => format!("channel '{first}' not created: {}", self.why.reason()),
            n => format!(
                "channel '{first}' and {} more not created: {}",
                n - 1,
                self.why.reason()
            ),
        }
    }
}

/// Whether `since` positions belong to this run of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Epoch {
    /// This epoch's (or the client did not say).
    Current,
    /// An earlier epoch's: they say nothing about this one's messages.
    Stale,
}

/// Which notice acknowledges a set of subscriptions.
pub(super) enum Ack {
    /// On connect: `welcome`, with the server's epoch, sent in one buffer
    /// with the handshake response that precedes it.
    Welcome { handshake: Vec<u8> },
    /// After a `subscribe` message.
    Subscribed,
}

impl ShardCore {
    /// Subscribes to `channels` (each from `since(name)`, or from now), then
    /// queues the acknowledgement with every channel's current seq, a reset
    /// notice for each `since` ahead of its channel, and the first replay
    /// batch, in that order.
    ///
    /// A channel that cannot be created fails a connect as a whole (the
    /// caller closes it); after a `subscribe` message the others are still
    /// joined and acknowledged, and the refused ones are returned.
    ///
    /// Positions from a stale epoch are not replayed from as if they were
    /// this one's: each such channel gets a `reset` to 0, then everything
    /// this epoch retains from its start (a gap notice where that is gone).
    pub(super) fn subscribe_and_notify(
        &mut self,
        slot: u32,
        channels: &[String],
        since: &dyn Fn(&str) -> Option<u64>,
        epoch: Epoch,
        ack: Ack,
    ) -> Result<(), Refused> {
        let mut currents = Vec::with_capacity(channels.len());
        let mut resets = Vec::new();
        let mut refused: Option<Refused> = None;
        for name in channels {
            let stale = epoch == Epoch::Stale && since(name).is_some();
            let from = if stale { Some(0) } else { since(name) };
            let s = match self.subscribe(slot, name, from) {
                Ok(s) => s,
                Err(why) => {
                    if let Ack::Welcome { handshake } = ack {
                        // The upgrade still completes, so the close that
                        // follows is a WebSocket close the client can read.
                        self.enqueue(slot, Rc::new(Bytes::from(handshake)));
                        return Err(Refused {
                            why,
                            channels: vec![name.clone()],
                        });
                    }
                    refused
                        .get_or_insert(Refused {
                            why,
                            channels: Vec::new(),
                        })
                        .channels
                        .push(name.clone());
                    continue;
                }
            };
            currents.push((name.as_str(), s.current));
            if stale {
                resets.push(control::reset(name, 0));
            } else if s.reset {
                resets.push(control::reset(name, s.current));
            }
        }
        match ack {
            Ack::Welcome { mut handshake } => {
                let welcome = control::welcome(&self.epoch, &currents);
                handshake.extend_from_slice(&self.notice_frame(slot, &welcome));
                self.enqueue(slot, Rc::new(Bytes::from(handshake)));
            }
            Ack::Subscribed if currents.is_empty() => {}
            Ack::Subscribed => self.enqueue_text(slot, &control::subscribed(&currents)),
        }
        for notice in resets {
            self.enqueue_text(slot, &notice);
        }
        self.refill(slot);
        refused.map_or(Ok(()), Err)
    }

    /// Subscribes `slot` to `name` from `since` (or from now). Notices and
    /// replayed frames are left to the caller (see [`Shard::refill`]), so
    /// that they follow its welcome or acknowledgement.
    pub(super) fn subscribe(
        &mut self,
        slot: u32,
        name: &str,
        since: Option<u64>,
    ) -> Result<Subscribed, ChannelRefused> {
        let (shard, now) = (self.index, self.now_ms);
        let channel = self.look_up_for(slot, |registry, creator, may_create| {
            registry.subscribe(name, shard, now, creator, may_create)
        })?;
        // Interest is up (registry.subscribe); only now is the seq read.
        let local = self.channels.open(channel);
        let Some(ch) = self.channels.get_mut(local) else {
            return Err(ChannelRefused::TableFull);
        };
        let current = ch.channel.last_seq();
        let reset = since.is_some_and(|s| s > current);
        let cursor = match since {
            Some(s) if !reset => s + 1,
            _ => current + 1,
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(Subscribed { current, reset });
        };
        if conn.subs.iter().any(|s| s.channel == local) {
            return Ok(Subscribed { current, reset });
        }
        if let Some(stream) = conn.sse.as_deref_mut() {
            stream
                .positions
                .push((local, ch.channel.name.clone(), cursor - 1));
        }
        ch.channel.count_subscriber(true);
        if cursor == ch.delivered_seq + 1 {
            conn.subs.push(Subscription {
                channel: local,
                position: ch.subscribers.len() as u32,
            });
            ch.subscribers.push(slot);
        } else {
            conn.subs.push(Subscription {
                channel: local,
                position: PENDING,
            });
            conn.replay
                .get_or_insert_with(Default::default)
                .push(ReplayCursor {
                    channel: local,
                    next: cursor,
                });
            ch.pending.push(slot);
        }
        self.channels.subscribed();
        Ok(Subscribed { current, reset })
    }

    /// Runs `look_up` on the registry with what creating a channel for
    /// `slot` takes: its IP's hold (`Creator`) and its creation budget (spent
    /// only if a channel is created). A refusal is counted.
    pub(super) fn look_up_for(
        &mut self,
        slot: u32,
        look_up: impl FnOnce(
            &registry::Registry,
            Creator<'_>,
            &mut dyn FnMut() -> bool,
        ) -> Result<Arc<registry::Channel>, ChannelRefused>,
    ) -> Result<Arc<registry::Channel>, ChannelRefused> {
        let (rates, now) = (self.budget_rates, self.now_ms);
        let creator = Creator {
            peers: &self.shared.peers,
            peer: self
                .conns
                .get(slot)
                .map_or(crate::limits::UNTRACKED, |c| c.peer),
        };
        let conns = &mut self.conns;
        let mut may_create = || {
            conns
                .get_mut(slot)
                .is_some_and(|c| c.budget.create_channel(&rates, now))
        };
        look_up(&self.shared.registry, creator, &mut may_create)
            .inspect_err(|_| self.stats.add(Counter::ChannelRefusals, 1))
    }

    /// Leaves one channel, by its name; false if not subscribed.
    pub(super) fn unsubscribe(&mut self, slot: u32, name: &str) -> bool {
        let Some(channel) = self.shared.registry.get(name) else {
            return false;
        };
        let Some(local) = self.channels.local(channel.id) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let Some(i) = conn.subs.iter().position(|s| s.channel == local) else {
            return false;
        };
        let sub = conn.subs.swap_remove(i);
        self.remove_subscription(slot, sub);
        true
    }

    /// Names of the channels `slot` is subscribed to (live or catching up).
    pub(super) fn subscribed_channels(&self, slot: u32) -> Vec<String> {
        let Some(conn) = self.conns.get(slot) else {
            return Vec::new();
        };
        conn.subs
            .iter()
            .filter_map(|s| self.channels.get(s.channel))
            .map(|ch| ch.channel.name.to_string())
            .collect()
    }

    pub(super) fn unsubscribe_all(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        for sub in std::mem::take(&mut conn.subs) {
            self.remove_subscription(slot, sub);
        }
    }

    /// Removes one subscription (already taken out of the connection's list)
    /// in O(1) for live subscribers: the last one takes its place.
    fn remove_subscription(&mut self, slot: u32, sub: Subscription) {
        if self.channels.get(sub.channel).is_none() {
            return;
        }
        self.channels.unsubscribed();
        if let Some(stream) = self.conns.get_mut(slot).and_then(|c| c.sse.as_deref_mut()) {
            stream.positions.retain(|p| p.0 != sub.channel);
        }
        let Some(ch) = self.channels.get_mut(sub.channel) else {
            return;
        };
        ch.channel.count_subscriber(false);
        if sub.position == PENDING {
            ch.pending.retain(|&s| s != slot);
            if let Some(conn) = self.conns.get_mut(slot) {
                drop_cursor(conn, sub.channel);
            }
        } else {
            let position = sub.position as usize;
            ch.subscribers.swap_remove(position);
            if let Some(&moved) = ch.subscribers.get(position)
                && let Some(conn) = self.conns.get_mut(moved)
                && let Some(s) = conn.subs.iter_mut().find(|s| s.channel == sub.channel)
            {
                s.position = sub.position;
            }
        }
        if let Some(channel) = self.channels.close_if_unused(sub.channel, self.index) {
            self.shared
                .registry
                .release_if_unused(&channel, &self.shared.peers);
        }
    }

    /// Fans one channel message out to this shard's subscribers: per
    /// subscriber, a reference-count increment (not atomic), a queue push
    /// and a counter; sends start at the end of the loop iteration.
    pub fn deliver(&mut self, delivery: Delivery) {
        // A delivery of a new epoch must not meet the old one's seqs.
        self.check_epoch();
        let Some(local) = self.channels.local(delivery.channel) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(local) else {
            return;
        };
        if delivery.seq <= ch.delivered_seq {
            return;
        }
        if delivery.seq > ch.delivered_seq + 1 {
            // A hole the fleet could not fill: said, never silent.
            let (from, to) = (ch.delivered_seq + 1, delivery.seq - 1);
            self.tell_live_subscribers_of_gap(local, from, to);
        }
        let Some(ch) = self.channels.get_mut(local) else {
            return;
        };
        ch.delivered_seq = delivery.seq;
        let forms = Forms::new(delivery.message, self.conns.sse_streams() > 0);
        let epoch = &self.epoch;
        let high_water = self.config.high_water;
        let mut peak = self.stats.gauge(Gauge::QueuedBytesPeak);
        let mut added = 0;
        for &slot in &ch.subscribers {
            let Some((queued, len)) =
                self.conns
                    .push_frame(slot, &forms, local, delivery.seq, epoch)
            else {
                continue;
            };
            added += len;
            peak = peak.max(queued);
            if queued > high_water {
                self.slow.push(slot);
            }
        }
        let n = ch.subscribers.len() as u64;
        let has_pending = !ch.pending.is_empty();
        self.stats.add(Counter::MessagesFannedOut, 1);
        self.stats.add(Counter::FramesDelivered, n);
        self.stats.set(Gauge::QueuedBytesPeak, peak);
        let total = self.stats.gauge(Gauge::QueuedBytes) + added;
        self.stats.set(Gauge::QueuedBytes, total);
        if has_pending {
            self.advance_pending(local, delivery.seq, &forms);
        }
        while let Some(slot) = self.slow.pop() {
            self.cut_slow_client(slot);
        }
    }

    /// After message `seq` was fanned out: a pending connection whose cursor
    /// was exactly `seq` takes it; any whose cursor is now `seq + 1` joins.
    fn advance_pending(&mut self, local: u32, seq: u64, forms: &Forms) {
        let Some(ch) = self.channels.get(local) else {
            return;
        };
        let waiting: Vec<u32> = ch.pending.clone();
        for slot in waiting {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let Some(next) = cursor_of(conn, local) else {
                continue;
            };
            if next == seq {
                set_cursor(conn, local, seq + 1);
                self.stats.add(Counter::FramesDelivered, 1);
                if let Some((_, added)) =
                    self.conns.push_frame(slot, forms, local, seq, &self.epoch)
                {
                    self.note_queued(slot, added);
                }
                self.join_live(slot, local);
            } else if next == seq + 1 {
                self.join_live(slot, local);
            }
        }
    }

    /// A gap notice to every live subscriber of `local` (event streams:
    /// their position moves past it).
    fn tell_live_subscribers_of_gap(&mut self, local: u32, from: u64, to: u64) {
        let Some(ch) = self.channels.get(local) else {
            return;
        };
        let notice = control::gap(&ch.channel.name, from, to);
        for slot in ch.subscribers.clone() {
            if let Some(stream) = self.sse_state(slot) {
                stream.set(local, to);
            }
            self.enqueue_text(slot, &notice);
        }
    }

    /// Moves `slot` from the channel's pending list to its live subscribers.
    pub(super) fn join_live(&mut self, slot: u32, local: u32) {
        let (Some(ch), Some(conn)) = (self.channels.get_mut(local), self.conns.get_mut(slot))
        else {
            return;
        };
        ch.pending.retain(|&s| s != slot);
        drop_cursor(conn, local);
        if let Some(sub) = conn.subs.iter_mut().find(|s| s.channel == local) {
            sub.position = ch.subscribers.len() as u32;
            ch.subscribers.push(slot);
        }
    }

    /// Copies the next batch of what a resuming connection missed from the
    /// history into its queue (gap notices where frames are gone), and moves
    /// it to the live list of each channel it has caught up on.
    pub(super) fn refill(&mut self, slot: u32) {
        let Some(mut cursors) = self.conns.get_mut(slot).and_then(|c| c.replay.take()) else {
            return;
        };
        // A batch well under the high-water mark, so replay never trips it.
        let mut budget = REPLAY_BATCH_BYTES.min(self.config.high_water as usize / 4);
        let mut caught_up = Vec::new();
        let mut batch = Vec::new();
        let deflate = self.conns.get(slot).is_some_and(|c| c.takes_deflated());
        let epoch = self.epoch.clone();
        for cursor in cursors.iter_mut() {
            let Some(ch) = self.channels.get(cursor.channel) else {
                continue;
            };
            let (channel, to) = (ch.channel.clone(), ch.delivered_seq);
            while budget > 0 && cursor.next <= to {
                batch.clear();
                let found = channel.history().read(cursor.next, to, budget, &mut batch);
                match found {
                    Replay::Gap { from, to } => {
                        let notice = control::gap(&channel.name, from, to);
                        if let Some(stream) = self.sse_state(slot) {
                            stream.set(cursor.channel, to);
                        }
                        let frame = self.notice_frame(slot, &notice);
                        self.push_replayed(slot, frame);
                        cursor.next = to + 1;
                    }
                    Replay::Frames { next } => {
                        for (seq, message) in (cursor.next..).zip(batch.drain(..)) {
                            let frame = match self.sse_state(slot) {
                                Some(stream) => {
                                    stream.set(cursor.channel, seq);
                                    let id = stream.id_line(&epoch);
                                    self.push_replayed(slot, Rc::new(id));
                                    message.sse_form()
                                }
                                None => message.for_client(deflate).clone(),
                            };
                            budget = budget.saturating_sub(frame.len());
                            self.push_replayed(slot, Rc::new(frame));
                            self.stats.add(Counter::FramesReplayed, 1);
                        }
                        cursor.next = next;
                    }
                }
            }
            if cursor.next == to + 1 {
                caught_up.push(cursor.channel);
            }
        }
        match self.conns.get_mut(slot) {
            Some(conn) if !conn.is_closing() => conn.replay = Some(cursors),
            _ => return,
        }
        for local in caught_up {
            self.join_live(slot, local);
        }
        self.schedule_flush(slot);
    }

    fn push_replayed(&mut self, slot: u32, frame: FrameRef) {
        if let Some(conn) = self.conns.get_mut(slot) {
            let n = conn.out.push(frame);
            self.note_queued(slot, n);
        }
    }
}

fn cursor_of(conn: &Conn, local: u32) -> Option<u64> {
    conn.replay
        .as_ref()?
        .iter()
        .find(|c| c.channel == local)
        .map(|c| c.next)
}

fn set_cursor(conn: &mut Conn, local: u32, next: u64) {
    if let Some(c) = conn
        .replay
        .as_mut()
        .and_then(|r| r.iter_mut().find(|c| c.channel == local))
    {
        c.next = next;
    }
}

fn drop_cursor(conn: &mut Conn, local: u32) {
    if let Some(r) = conn.replay.as_mut() {
        r.retain(|c| c.channel != local);
        if r.is_empty() {
            conn.replay = None;
        }
    }
}
