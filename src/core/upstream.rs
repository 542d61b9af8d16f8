//! A shard of a fleet node: subscriptions that wait for the fleet, and the
//! fleet's epoch changing under connected clients.
//!
//! A channel this node has not heard of is created *unsynced*: its seq and
//! history are not yet the fleet's, so a welcome would carry a wrong seq.
//! A subscriber to it waits (its handshake response, or its `subscribe`,
//! held back) while the fleet task syncs the channel from Redis, then goes
//! through the usual path. It waits at most [`FLEET_WAIT_MS`]: then it is
//! told the fleet is unreachable.
//!
//! When the fleet's epoch changes (its Redis lost its data), every channel's
//! seqs start over: each subscriber gets a `reset` to where its channel is
//! now, and continues from there.

use super::*;

use crate::protocol::control;
use crate::protocol::query::WsQuery;
use fanout::{Ack, Epoch};

/// Longest a subscriber waits for its channels to be synced.
pub const FLEET_WAIT_MS: u64 = 5000;

/// What a connection waits to do once its channels are synced.
#[derive(Debug)]
pub enum Parked {
    /// Its URL's subscriptions, after `prefix` (the handshake response or
    /// event-stream head, not sent yet).
    Connect { query: WsQuery, prefix: Vec<u8> },
    /// A `subscribe` message.
    Subscribe {
        channels: Vec<String>,
        since: std::collections::BTreeMap<String, u64>,
    },
}

/// A parked connection's wait.
#[derive(Debug)]
pub struct Waiting {
    pub parked: Parked,
    /// Until when (shard clock) it may wait.
    pub until: u64,
}

impl ShardCore {
    /// In a fleet: whether any of `channels` has yet to be synced, or a
    /// resume from `since` reaches back further than the node holds (then
    /// the fleet's log is read first). Each is asked for. `Err` when one
    /// cannot be created at all.
    pub(super) fn must_wait_for_fleet(
        &mut self,
        slot: u32,
        channels: &[String],
        since: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<bool, registry::ChannelRefused> {
        if !self.shared.registry.in_fleet() {
            return Ok(false);
        }
        let now = self.now_ms;
        let mut wait = false;
        for name in channels {
            let channel = self.look_up_for(slot, |registry, creator, may_create| {
                registry.want(name, now, creator, may_create)
            })?;
            if !channel.is_synced() {
                wait = true;
            } else if let Some(from) = since(name).map(|s| s + 1)
                && channel.needs_backfill(from, self.config.history)
            {
                self.shared.registry.want_backfill(&channel, from);
                wait = true;
            }
        }
        Ok(wait)
    }

    /// Holds `parked` back until the fleet has synced its channels.
    pub(super) fn park(&mut self, slot: u32, parked: Parked) {
        // Parked again after a retry: the wait it started with still holds.
        let until = self
            .park_until
            .take()
            .unwrap_or(self.now_ms + FLEET_WAIT_MS);
        let Some(generation) = self.conns.get(slot).map(|c| c.generation) else {
            return;
        };
        if self
            .parked
            .get(&slot)
            .is_some_and(|(g, _)| *g == generation)
        {
            // One wait at a time; a client that asks again is told so.
            if matches!(parked, Parked::Subscribe { .. }) {
                self.client_error(
                    slot,
                    "a subscribe is waiting for the fleet; retry when it is answered",
                );
            }
            return;
        }
        self.parked
            .insert(slot, (generation, Waiting { parked, until }));
        self.set_deadline(slot, until);
    }

    /// What `slot` waits for, if it is parked (and open).
    pub(super) fn waiting(&self, slot: u32) -> Option<&Waiting> {
        let conn = self.conns.get(slot).filter(|c| c.phase == Phase::Open)?;
        self.parked
            .get(&slot)
            .filter(|(g, _)| *g == conn.generation)
            .map(|(_, w)| w)
    }

    /// A parked connection's deadline: given up on once past its wait.
    /// Returns false when the connection is not parked.
    pub(super) fn on_parked_timer(&mut self, slot: u32) -> bool {
        let Some(until) = self.waiting(slot).map(|w| w.until) else {
            return false;
        };
        if self.now_ms < until {
            self.set_deadline(slot, until);
            return true;
        }
        let Some((_, waiting)) = self.parked.remove(&slot) else {
            return false;
        };
        let sse = self
            .conns
            .get(slot)
            .is_some_and(|c| c.endpoint == Endpoint::Sse);
        let why = "the fleet cannot be reached (Redis); retry shortly";
        match waiting.parked {
            Parked::Connect { .. } if sse => {
                // The stream's head was never sent: answer plainly instead.
                let response = crate::protocol::handshake::http_response(
                    503,
                    "text/plain",
                    format!("{why}\n").as_bytes(),
                    &[("Retry-After", "2")],
                );
                self.respond_and_close(slot, response);
            }
            Parked::Connect { prefix, .. } => {
                // The upgrade completes, so the client reads a close code.
                self.enqueue(slot, Rc::new(Bytes::from(prefix)));
                let last = self.last_words(slot, 1013, why);
                self.close_with(slot, Some(last), CloseReason::Error);
            }
            Parked::Subscribe { .. } => {
                self.client_error(slot, why);
                let deadline = self.now_ms + self.config.ping_interval.as_millis() as u64;
                self.set_deadline(slot, deadline);
            }
        }
        true
    }

    /// What the fleet changed since the shard last looked: a new epoch
    /// (every subscriber reset), and channels synced (waiting subscribers
    /// go on). Cheap when nothing changed: two atomic loads.
    pub fn on_upstream_change(&mut self) {
        self.check_epoch();
        let synced = self.shared.upstream.synced();
        if synced != self.synced_seen && !self.parked.is_empty() {
            self.synced_seen = synced;
            self.retry_parked();
        }
    }

    /// A new epoch since the shard last looked: every subscriber is reset.
    /// One atomic load when nothing changed (it runs before each delivery).
    pub(super) fn check_epoch(&mut self) {
        let epochs = self.shared.epoch_changes();
        if epochs != self.epoch_seen {
            self.epoch_seen = epochs;
            self.on_new_epoch();
        }
    }

    /// Parked connections whose channels are all synced now go on.
    fn retry_parked(&mut self) {
        let registry = &self.shared.registry;
        let ready: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, (_, w))| {
                let names = match &w.parked {
                    Parked::Connect { query, .. } => &query.channels,
                    Parked::Subscribe { channels, .. } => channels,
                };
                names
                    .iter()
                    .all(|n| registry.get(n).is_none_or(|c| c.is_synced()))
            })
            .map(|(&slot, _)| slot)
            .collect();
        for slot in ready {
            let open = self.waiting(slot).is_some();
            let Some((_, waiting)) = self.parked.remove(&slot) else {
                continue;
            };
            if !open {
                continue;
            }
            self.park_until = Some(waiting.until);
            match waiting.parked {
                Parked::Connect { query, prefix } => {
                    let deadline = self.now_ms + self.config.ping_interval.as_millis() as u64;
                    if self.subscribe_query(slot, &query, prefix).is_ok()
                        && self.waiting(slot).is_none()
                    {
                        self.set_deadline(slot, deadline);
                    }
                }
                Parked::Subscribe { channels, since } => {
                    self.subscribe_after_wait(slot, channels, since);
                }
            }
            self.park_until = None;
        }
    }

    /// A `subscribe` message, once nothing is left to wait for (or parked
    /// again, its wait unchanged).
    pub(super) fn subscribe_after_wait(
        &mut self,
        slot: u32,
        channels: Vec<String>,
        since: std::collections::BTreeMap<String, u64>,
    ) {
        let lookup = |name: &str| since.get(name).copied();
        match self.must_wait_for_fleet(slot, &channels, &lookup) {
            Ok(true) => return self.park(slot, Parked::Subscribe { channels, since }),
            Ok(false) => {}
            Err(why) => {
                let refused = fanout::Refused { why, channels };
                return self.client_error(slot, &refused.notice());
            }
        }
        if let Err(refused) =
            self.subscribe_and_notify(slot, &channels, &lookup, Epoch::Current, Ack::Subscribed)
        {
            self.client_error(slot, &refused.notice());
        }
    }

    /// The fleet's epoch changed: the distributor has set every channel to
    /// the new epoch's state; each subscriber is told where its channel
    /// now is (`reset`), and goes on live from there.
    fn on_new_epoch(&mut self) {
        self.epoch = self.shared.epoch();
        let locals: Vec<u32> = self.channels.locals();
        for local in locals {
            let Some(ch) = self.channels.get_mut(local) else {
                continue;
            };
            // Where the channel stood when the new epoch was taken, not
            // now: what came after is delivered as usual.
            let current = ch.channel.synced_seq();
            ch.delivered_seq = current;
            let name = ch.channel.name.clone();
            let mut everyone: Vec<u32> = ch.subscribers.clone();
            everyone.extend_from_slice(&ch.pending);
            let pending = std::mem::take(&mut ch.pending);
            let notice = control::reset(&name, current);
            for &slot in &everyone {
                if let Some(stream) = self.sse_state(slot) {
                    stream.set(local, current);
                }
                self.enqueue_text(slot, &notice);
            }
            for slot in pending {
                self.join_live(slot, local);
            }
        }
    }
}
