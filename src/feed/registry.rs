//! The channels, shared by the feed and the shards.
//!
//! The feed looks a channel up for every message; a shard looks it up when a
//! client subscribes. Each channel records which shards have subscribers
//! (`interest`), so the feed hands a message only to the shards that need it.
//!
//! Subscribing without a gap: a shard first raises its interest flag, then
//! reads `last_seq`; the feed first publishes a message's seq, then reads the
//! interest flags (all sequentially consistent). Any message the shard's read
//! of `last_seq` does not cover was therefore seen by the feed with the flag
//! up, and reaches the shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};

/// One channel.
#[derive(Debug)]
pub struct Channel {
    pub id: u64,
    pub name: Arc<str>,
    interest: Box<[AtomicBool]>,
    /// The seq of the last message published (0: none yet).
    last_seq: AtomicU64,
}

impl Channel {
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(SeqCst)
    }

    /// Assigns the next seq. Only the feed calls this (one writer).
    pub fn next_seq(&self) -> u64 {
        let seq = self.last_seq.load(SeqCst) + 1;
        self.last_seq.store(seq, SeqCst);
        seq
    }

    pub fn set_interest(&self, shard: usize, interested: bool) {
        self.interest[shard].store(interested, SeqCst);
    }

    pub fn is_interested(&self, shard: usize) -> bool {
        self.interest[shard].load(SeqCst)
    }
}

/// The channel table would grow past `--max-channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyChannels;

pub struct Registry {
    by_name: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    next_id: AtomicU64,
    shards: usize,
    max_channels: usize,
}

impl Registry {
    pub fn new(shards: usize, max_channels: usize) -> Registry {
        Registry {
            by_name: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shards,
            max_channels,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The channel called `name`, created if new. The caller has validated
    /// the name.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Channel>, TooManyChannels> {
        if let Some(c) = self.get(name) {
            return Ok(c);
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        if map.len() >= self.max_channels {
            return Err(TooManyChannels);
        }
        let name: Arc<str> = Arc::from(name);
        let channel = Arc::new(Channel {
            id: self.next_id.fetch_add(1, SeqCst),
            name: name.clone(),
            interest: (0..self.shards).map(|_| AtomicBool::new(false)).collect(),
            last_seq: AtomicU64::new(0),
        });
        map.insert(name, channel.clone());
        Ok(channel)
    }

    pub fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (name, last seq) of up to `limit` channels, busiest first.
    pub fn busiest(&self, limit: usize) -> Vec<(Arc<str>, u64)> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(Arc<str>, u64)> = map
            .values()
            .map(|c| (c.name.clone(), c.last_seq()))
            .collect();
        drop(map);
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_once_and_cap() {
        let r = Registry::new(2, 2);
        let a = r.get_or_create("a").unwrap();
        assert_eq!(r.get_or_create("a").unwrap().id, a.id);
        r.get_or_create("b").unwrap();
        assert_eq!(r.get_or_create("c").unwrap_err(), TooManyChannels);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn seq_and_interest() {
        let r = Registry::new(2, 10);
        let a = r.get_or_create("a").unwrap();
        assert_eq!((a.next_seq(), a.next_seq(), a.last_seq()), (1, 2, 2));
        a.set_interest(1, true);
        assert!(!a.is_interested(0) && a.is_interested(1));
        assert_eq!(r.busiest(5)[0], (Arc::from("a"), 2));
    }
}
