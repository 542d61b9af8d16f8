//! The channels one shard has subscribers for: each with its live
//! subscriber list, the connections catching up on it, and the last seq the
//! shard fanned out. A channel is here exactly while some connection of this
//! shard is subscribed to it; the last one to leave takes it away and lowers
//! the shard's interest in the registry, so the feed stops sending it here.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::Channel;
use super::slab::Slab;

/// A channel as one shard sees it.
pub(super) struct ShardChannel {
    pub channel: Arc<Channel>,
    /// Live subscribers: every new message is queued to each.
    pub subscribers: Vec<u32>,
    /// Connections catching up (resume) or waiting for the shard to reach
    /// the seq they start at; see `fanout`.
    pub pending: Vec<u32>,
    /// Highest seq fanned out here; anything at or below is skipped.
    pub delivered_seq: u64,
}

impl ShardChannel {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.pending.is_empty()
    }
}

/// The shard's channel table, by local slot and by registry id.
#[derive(Default)]
pub(super) struct Channels {
    slots: Slab<ShardChannel>,
    by_id: HashMap<u64, u32>,
    /// Subscriptions held by this shard's connections, all channels.
    subscriptions: u64,
}

impl Channels {
    /// The local slot of the registry's channel `id`, if this shard has it.
    pub fn local(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, local: u32) -> Option<&ShardChannel> {
        self.slots.get(local)
    }

    pub fn get_mut(&mut self, local: u32) -> Option<&mut ShardChannel> {
        self.slots.get_mut(local)
    }

    /// The local slot of `channel`, added if new. A new one starts at the
    /// channel's current seq: the caller raised this shard's interest
    /// before, so every later message reaches it.
    pub fn open(&mut self, channel: Arc<Channel>) -> u32 {
        if let Some(local) = self.local(channel.id) {
            return local;
        }
        let id = channel.id;
        let delivered_seq = channel.last_seq();
        let local = self.slots.insert(ShardChannel {
            channel,
            subscribers: Vec::new(),
            pending: Vec::new(),
            delivered_seq,
        });
        self.by_id.insert(id, local);
        local
    }

    /// Forgets `local` if no connection of this shard is on it any more, and
    /// tells the registry this shard (`shard`) no longer wants its messages.
    /// Returns the channel when it was forgotten.
    pub fn close_if_unused(&mut self, local: u32, shard: usize) -> Option<Arc<Channel>> {
        let ch = self.slots.get(local).filter(|ch| ch.is_unused())?;
        ch.channel.set_interest(shard, false);
        let id = ch.channel.id;
        self.by_id.remove(&id);
        self.slots.remove(local).map(|ch| ch.channel)
    }

    /// Every local channel slot.
    pub fn locals(&self) -> Vec<u32> {
        self.by_id.values().copied().collect()
    }

    pub fn subscribed(&mut self) {
        self.subscriptions += 1;
    }

    pub fn unsubscribed(&mut self) {
        self.subscriptions -= 1;
    }

    pub fn subscriptions(&self) -> u64 {
        self.subscriptions
    }
}
