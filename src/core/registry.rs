//! The channels, shared by the feed and the shards.
//!
//! The feed looks a channel up for every message; a shard looks it up when a
//! client subscribes. Each channel records which shards have subscribers
//! (`interest`), so the feed hands a message only to the shards that need it.
//!
//! Subscribing without a gap: a shard first raises its interest flag, then
//! reads `last_seq`; the feed first records a message in the history and
//! publishes its seq, then reads the interest flags (all sequentially
//! consistent). Any message the shard's read of `last_seq` does not cover was
//! therefore seen by the feed with the flag up, and reaches the shard; every
//! message it does cover is in the history (unless evicted: a gap notice).
//!
//! Idle channels (no subscriber on any shard, nothing published for the TTL)
//! are swept away with their history. Interest is raised under the registry's
//! read lock and the sweep holds the write lock, so a channel is never swept
//! while a shard is subscribing to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use super::history::{History, Released};

/// One channel.
#[derive(Debug)]
pub struct Channel {
    pub id: u64,
    pub name: Arc<str>,
    interest: Box<[AtomicBool]>,
    /// The seq of the last message published (0: none yet).
    last_seq: AtomicU64,
    /// When something last happened on the channel (ms since the registry
    /// started): a publish or a subscribe.
    last_active: AtomicU64,
    history: Mutex<History>,
}

/// Per-channel history bounds.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub count: usize,
    pub bytes: usize,
}

impl Channel {
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(SeqCst)
    }

    /// Assigns the next seq, builds the frame for it and records it in the
    /// history. Only the feed calls this (one writer). Returns the seq, the
    /// frame, and what was evicted from the history to stay within `limits`.
    pub fn publish(
        &self,
        limits: HistoryLimits,
        now_ms: u64,
        build: impl FnOnce(u64) -> Bytes,
    ) -> (u64, Bytes, Released) {
        let mut history = self.history();
        let seq = self.last_seq.load(SeqCst) + 1;
        let frame = build(seq);
        let evicted = if limits.count > 0 {
            history.push(seq, frame.clone(), limits.count, limits.bytes)
        } else {
            Released::default()
        };
        self.last_seq.store(seq, SeqCst);
        drop(history);
        self.last_active.store(now_ms, SeqCst);
        (seq, frame, evicted)
    }

    /// The history, locked. Held briefly: by the feed to append, by a shard
    /// to copy out a replay batch.
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_interest(&self, shard: usize, interested: bool) {
        self.interest[shard].store(interested, SeqCst);
    }

    pub fn is_interested(&self, shard: usize) -> bool {
        self.interest[shard].load(SeqCst)
    }

    fn has_interest(&self) -> bool {
        self.interest.iter().any(|i| i.load(SeqCst))
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

    /// For a shard: the channel `name` (created if new) with this shard's
    /// interest raised, under the lock the sweep excludes. `now_ms` is the
    /// server clock (the channels' activity time).
    pub fn subscribe(
        &self,
        name: &str,
        shard: usize,
        now_ms: u64,
    ) -> Result<Arc<Channel>, TooManyChannels> {
        {
            let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(name) {
                c.set_interest(shard, true);
                c.last_active.store(now_ms, SeqCst);
                return Ok(c.clone());
            }
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let channel = match map.get(name) {
            Some(c) => c.clone(),
            None => self.insert_new(&mut map, name, now_ms)?,
        };
        channel.set_interest(shard, true);
        channel.last_active.store(now_ms, SeqCst);
        Ok(channel)
    }

    /// Removes channels with no subscriber anywhere and no activity for
    /// `ttl_ms` at `now`; returns the history released with them.
    pub fn sweep(&self, ttl_ms: u64, now: u64) -> Released {
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let mut released = Released::default();
        map.retain(|_, c| {
            let idle = now.saturating_sub(c.last_active.load(SeqCst)) >= ttl_ms;
            if idle && !c.has_interest() {
                released += c.history().clear();
                false
            } else {
                true
            }
        });
        released
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
    pub fn get_or_create(&self, name: &str, now_ms: u64) -> Result<Arc<Channel>, TooManyChannels> {
        if let Some(c) = self.get(name) {
            return Ok(c);
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        self.insert_new(&mut map, name, now_ms)
    }

    fn insert_new(
        &self,
        map: &mut HashMap<Arc<str>, Arc<Channel>>,
        name: &str,
        now_ms: u64,
    ) -> Result<Arc<Channel>, TooManyChannels> {
        if map.len() >= self.max_channels {
            return Err(TooManyChannels);
        }
        let name: Arc<str> = Arc::from(name);
        let channel = Arc::new(Channel {
            id: self.next_id.fetch_add(1, SeqCst),
            name: name.clone(),
            interest: (0..self.shards).map(|_| AtomicBool::new(false)).collect(),
            last_seq: AtomicU64::new(0),
            last_active: AtomicU64::new(now_ms),
            history: Mutex::new(History::default()),
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
        let busiest_first =
            |a: &(Arc<str>, u64), b: &(Arc<str>, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
        // Linear selection, then a sort of only what is kept: the page stays
        // cheap with a hundred thousand channels.
        if all.len() > limit {
            all.select_nth_unstable_by(limit, busiest_first);
            all.truncate(limit);
        }
        all.sort_unstable_by(busiest_first);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_once_and_cap() {
        let r = Registry::new(2, 2);
        let a = r.get_or_create("a", 0).unwrap();
        assert_eq!(r.get_or_create("a", 0).unwrap().id, a.id);
        r.get_or_create("b", 0).unwrap();
        assert_eq!(r.get_or_create("c", 0).unwrap_err(), TooManyChannels);
        assert_eq!(r.len(), 2);
    }

    const LIMITS: HistoryLimits = HistoryLimits {
        count: 10,
        bytes: 1000,
    };

    #[test]
    fn seq_history_and_interest() {
        let r = Registry::new(2, 10);
        let a = r.get_or_create("a", 0).unwrap();
        let (s1, f1, _) = a.publish(LIMITS, 0, |seq| Bytes::from(format!("m{seq}")));
        let (s2, _, _) = a.publish(LIMITS, 0, |seq| Bytes::from(format!("m{seq}")));
        assert_eq!((s1, s2, a.last_seq(), &f1[..]), (1, 2, 2, &b"m1"[..]));
        let history = a.history();
        assert_eq!((history.oldest(), history.len()), (Some(1), 2));
        drop(history);
        let b = r.subscribe("a", 1, 0).unwrap();
        assert!(!b.is_interested(0) && b.is_interested(1));
        assert_eq!(r.busiest(5)[0], (Arc::from("a"), 2));
    }

    #[test]
    fn sweep_only_idle_channels_without_subscribers() {
        let r = Registry::new(1, 10);
        let a = r.get_or_create("a", 0).unwrap();
        a.publish(LIMITS, 0, |_| Bytes::from_static(b"12345"));
        r.subscribe("b", 0, 0).unwrap();
        // ttl 0: everything is idle; only the unsubscribed one goes.
        assert_eq!(r.sweep(0, 0).bytes, 5);
        assert!(r.get("a").is_none());
        assert!(r.get("b").is_some());
        r.get("b").unwrap().set_interest(0, false);
        assert_eq!(r.sweep(3_600_000, 0).frames, 0);
        assert!(r.get("b").is_some());
    }
}
