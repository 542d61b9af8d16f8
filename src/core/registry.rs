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
//!
//! What clients can make the table hold is bounded: a channel a client made
//! up (subscribed to, never published) goes as soon as its last subscriber
//! leaves; such channels count against the client IP that created them
//! (`PeerLimits::hold_channel`) until a publisher writes to them; and clients
//! may fill only nine tenths of `--max-channels`, so publishers always find
//! room for a new channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::Encoded;
use super::history::{History, Released};
use crate::limits::{PeerLimits, PeerSlot, UNTRACKED};

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
    /// The client IP whose hold of unpublished channels this one counts
    /// against (`UNTRACKED`: none; cleared by the first publish).
    creator: AtomicU32,
    /// Taken out of the table; a publish that still holds it must look the
    /// channel up again. Set and read under the history lock.
    retired: AtomicBool,
    /// Subscriptions to it, all shards: counted when a client subscribes or
    /// leaves (never per delivery), for the status page.
    subscribers: AtomicU64,
    /// Its seq and history are the fleet's (always, without a fleet). Until
    /// then a subscriber waits: its welcome must carry the fleet's seq.
    synced: AtomicBool,
    /// When a subscriber last asked for it to be synced (registry clock).
    wanted_at: AtomicU64,
    /// The seq it was last synced at.
    synced_seq: AtomicU64,
    /// How far back its history holds everything the fleet's log held when
    /// it was last filled from it (`u64::MAX`: unknown, e.g. trimmed since):
    /// a resume from below what the node holds reads the log once, then
    /// takes what it got.
    reach: AtomicU64,
    /// A resume wants the history from this seq (`u64::MAX`: none pending).
    wanted_from: AtomicU64,
}

/// One channel's figures at one instant, for the status page.
#[derive(Debug, Clone)]
pub struct ChannelFigures {
    pub id: u64,
    pub name: Arc<str>,
    pub last_seq: u64,
    pub subscribers: u64,
}

/// How long a fleet channel nobody subscribes to stays wanted after a
/// subscriber last asked for it.
pub const WANT_GRACE_MS: u64 = 30_000;

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
    /// frame, and what was evicted from the history to stay within `limits`;
    /// `None` when the channel was retired meanwhile (look it up again).
    pub fn publish(
        &self,
        limits: HistoryLimits,
        now_ms: u64,
        build: impl FnOnce(u64) -> Encoded,
    ) -> Option<(u64, Encoded, Released)> {
        let mut history = self.history();
        if self.retired.load(SeqCst) {
            return None;
        }
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
        Some((seq, frame, evicted))
    }

    /// Takes message `seq` from the fleet (whose seqs these are): appended
    /// when it follows the last one; a later one after a hole (the fleet no
    /// longer had what came between) starts the history over at it, so a
    /// replay reports the hole as a gap. `None` when it is not newer, or the
    /// channel was retired meanwhile.
    pub fn publish_at(
        &self,
        seq: u64,
        limits: HistoryLimits,
        now_ms: u64,
        build: impl FnOnce(u64) -> Encoded,
    ) -> Option<(Encoded, Released)> {
        let mut history = self.history();
        let last = self.last_seq.load(SeqCst);
        if self.retired.load(SeqCst) || seq <= last {
            return None;
        }
        let mut released = Released::default();
        if seq != last + 1 {
            released += history.clear();
        }
        let frame = build(seq);
        if limits.count > 0 {
            released += history.push(seq, frame.clone(), limits.count, limits.bytes);
        }
        if released.frames > 0 {
            self.note_trimmed();
        }
        self.last_seq.store(seq, SeqCst);
        drop(history);
        self.last_active.store(now_ms, SeqCst);
        Some((frame, released))
    }

    /// The fleet's state of the channel: its last seq and the messages it
    /// retains (oldest first, contiguous, ending at `seq`). Replaces
    /// whatever was here; returns the history released. Marks it synced.
    pub fn sync(
        &self,
        seq: u64,
        retained: impl IntoIterator<Item = (u64, Encoded)>,
        limits: HistoryLimits,
    ) -> Released {
        let mut history = self.history();
        let mut released = history.clear();
        if limits.count > 0 {
            for (s, frame) in retained {
                released += history.push(s, frame, limits.count, limits.bytes);
            }
        }
        // What the log held is all it can give.
        let reach = history.oldest().unwrap_or(seq + 1);
        self.reach.store(reach, SeqCst);
        self.wanted_from.store(u64::MAX, SeqCst);
        self.last_seq.store(seq, SeqCst);
        self.synced_seq.store(seq, SeqCst);
        self.synced.store(true, SeqCst);
        released
    }

    /// In a fleet: whether a resume from `from` needs the fleet's log (the
    /// node holds less, and has not asked the log that far back yet).
    pub fn needs_backfill(&self, from: u64, limits_count: usize) -> bool {
        if !self.is_synced() || limits_count == 0 || self.reach.load(SeqCst) <= from {
            return false;
        }
        let history = self.history();
        match history.oldest() {
            Some(oldest) => from < oldest,
            None => from <= self.last_seq(),
        }
    }

    /// Its history lost frames to a cap: the fleet's log may hold more.
    pub fn note_trimmed(&self) {
        self.reach.store(u64::MAX, SeqCst);
    }

    /// The resume history it waits for (`None`: nothing pending).
    pub fn wanted_from(&self) -> Option<u64> {
        let from = self.wanted_from.load(SeqCst);
        (from != u64::MAX).then_some(from)
    }

    /// Older messages from the fleet's log, asked for from `from`: put in
    /// front of the history (see `History::prepend`). Returns the (seq,
    /// bytes) added.
    pub fn backfill(
        &self,
        from: u64,
        frames: Vec<(u64, Encoded)>,
        limits: HistoryLimits,
    ) -> Vec<(u64, usize)> {
        let mut history = self.history();
        let end = history.oldest().unwrap_or(self.last_seq() + 1);
        let older: Vec<(u64, Encoded)> = frames.into_iter().filter(|(s, _)| *s < end).collect();
        let added = if older.last().is_some_and(|(s, _)| *s + 1 == end) {
            history.prepend(older, limits.count)
        } else {
            Vec::new()
        };
        self.reach.fetch_min(from, SeqCst);
        self.wanted_from.store(u64::MAX, SeqCst);
        added
    }

    /// The seq it was last synced at (see `sync`).
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq.load(SeqCst)
    }

    /// Forgets the fleet's state (its epoch changed and this channel has no
    /// subscriber to bring over): the next subscriber syncs it anew.
    pub fn unsync(&self) -> Released {
        let mut history = self.history();
        let released = history.clear();
        self.last_seq.store(0, SeqCst);
        self.synced.store(false, SeqCst);
        released
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(SeqCst)
    }

    /// When a subscriber last waited for it to be synced (registry clock).
    pub fn wanted_at(&self) -> u64 {
        self.wanted_at.load(Relaxed)
    }

    /// In a fleet: whether it is still worth listening to at `now_ms`: some
    /// shard has subscribers on it, or a subscriber asked for it within
    /// [`WANT_GRACE_MS`] (one may be on its way).
    pub fn is_wanted(&self, now_ms: u64) -> bool {
        self.has_interest() || now_ms.saturating_sub(self.wanted_at()) < WANT_GRACE_MS
    }

    /// A publisher wrote to the channel: it no longer counts against the
    /// client IP that created it.
    pub fn adopt(&self, peers: &PeerLimits) {
        let creator = self.creator.swap(UNTRACKED, SeqCst);
        peers.release_channel(creator);
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

    /// A client subscribed (`true`) or left (`false`).
    pub fn count_subscriber(&self, joined: bool) {
        if joined {
            self.subscribers.fetch_add(1, Relaxed);
        } else {
            self.subscribers.fetch_sub(1, Relaxed);
        }
    }

    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Relaxed)
    }

    fn has_interest(&self) -> bool {
        self.interest.iter().any(|i| i.load(SeqCst))
    }
}

/// Why a channel was not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRefused {
    /// The table is at `--max-channels` (for a client: at the share clients
    /// may fill).
    TableFull,
    /// The client's IP holds as many unpublished channels as it may.
    IpHoldsTooMany,
    /// The connection creates channels faster than it may.
    TooFast,
}

impl ChannelRefused {
    /// For the client, with what to do about it.
    pub fn reason(self) -> &'static str {
        match self {
            ChannelRefused::TableFull => "server channel limit reached; try again later",
            ChannelRefused::IpHoldsTooMany => {
                "too many channels no one publishes to are held from your address; leave some"
            }
            ChannelRefused::TooFast => {
                "new channels created too fast; subscribe to fewer new channels per minute"
            }
        }
    }
}

/// Who asks a shard to subscribe to a channel, for the limits on creating one.
#[derive(Clone, Copy)]
pub struct Creator<'a> {
    pub peers: &'a PeerLimits,
    /// The client IP's slot in `peers` (`UNTRACKED` when its IP has no limits).
    pub peer: PeerSlot,
}

/// Told about a channel whose fleet subscription may need to change: it
/// needs syncing, or its interest went from none to some or back.
pub type Watcher = Box<dyn Fn(&Arc<Channel>) + Send + Sync>;

pub struct Registry {
    by_name: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    /// Set when the node is one of a fleet: new channels start unsynced.
    watcher: std::sync::OnceLock<Watcher>,
    next_id: AtomicU64,
    shards: usize,
    max_channels: usize,
    /// Clients create channels only while the table holds fewer than this.
    client_share: usize,
}

impl Registry {
    pub fn new(shards: usize, max_channels: usize) -> Registry {
        Registry {
            by_name: RwLock::new(HashMap::new()),
            watcher: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(1),
            shards,
            max_channels,
            client_share: max_channels - max_channels / 10,
        }
    }

    /// Makes this a fleet's registry: channels created from now on wait to
    /// be synced, and `watcher` hears of every channel to look at. Set once,
    /// before any channel exists.
    pub fn join_fleet(&self, watcher: Watcher) {
        let _ = self.watcher.set(watcher);
    }

    pub fn in_fleet(&self) -> bool {
        self.watcher.get().is_some()
    }

    fn tell_watcher(&self, channel: &Arc<Channel>) {
        if let Some(watch) = self.watcher.get() {
            watch(channel);
        }
    }

    /// For a shard, in a fleet: the channel `name` (created as `subscribe`
    /// would, for `creator`), asked to be synced if it is not. The
    /// subscriber waits for that before it subscribes.
    pub fn want(
        &self,
        name: &str,
        now_ms: u64,
        creator: Creator<'_>,
        may_create: impl FnOnce() -> bool,
    ) -> Result<Arc<Channel>, ChannelRefused> {
        let channel = match self.get(name) {
            Some(c) => c,
            None => {
                let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
                match map.get(name) {
                    Some(c) => c.clone(),
                    None => self.create_for(&mut map, name, now_ms, creator, may_create)?,
                }
            }
        };
        if !channel.is_synced() {
            channel.wanted_at.store(now_ms, Relaxed);
            channel.last_active.store(now_ms, SeqCst);
            self.tell_watcher(&channel);
        }
        Ok(channel)
    }

    /// In a fleet: a resume wants `channel`'s history from `from`, further
    /// back than the node holds; the fleet link reads it from the log.
    pub fn want_backfill(&self, channel: &Arc<Channel>, from: u64) {
        channel.wanted_from.fetch_min(from, SeqCst);
        self.tell_watcher(channel);
    }

    /// A channel created by a client, within the limits on clients.
    fn create_for(
        &self,
        map: &mut HashMap<Arc<str>, Arc<Channel>>,
        name: &str,
        now_ms: u64,
        creator: Creator<'_>,
        may_create: impl FnOnce() -> bool,
    ) -> Result<Arc<Channel>, ChannelRefused> {
        if map.len() >= self.client_share {
            return Err(ChannelRefused::TableFull);
        }
        if !creator.peers.hold_channel(creator.peer) {
            return Err(ChannelRefused::IpHoldsTooMany);
        }
        // Only a channel that would be created spends the budget.
        if !may_create() {
            creator.peers.release_channel(creator.peer);
            return Err(ChannelRefused::TooFast);
        }
        let channel = self.insert_new(map, name, now_ms)?;
        channel.creator.store(creator.peer, SeqCst);
        Ok(channel)
    }

    /// For a shard: the channel `name` with this shard's interest raised,
    /// under the lock the sweep excludes; created for `creator` if new and
    /// the limits allow (`may_create` is the connection's own budget).
    /// `now_ms` is the server clock (the channels' activity time).
    pub fn subscribe(
        &self,
        name: &str,
        shard: usize,
        now_ms: u64,
        creator: Creator<'_>,
        may_create: impl FnOnce() -> bool,
    ) -> Result<Arc<Channel>, ChannelRefused> {
        {
            let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(name) {
                let first = !c.has_interest();
                c.set_interest(shard, true);
                c.last_active.store(now_ms, SeqCst);
                let c = c.clone();
                drop(map);
                if first {
                    self.tell_watcher(&c);
                }
                return Ok(c);
            }
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let channel = match map.get(name) {
            Some(c) => c.clone(),
            None => self.create_for(&mut map, name, now_ms, creator, may_create)?,
        };
        let first = !channel.has_interest();
        channel.set_interest(shard, true);
        channel.last_active.store(now_ms, SeqCst);
        drop(map);
        if first {
            self.tell_watcher(&channel);
        }
        Ok(channel)
    }

    /// A shard's last subscriber to `channel` left. A channel no shard wants
    /// and no one ever published to holds nothing worth keeping: it goes now
    /// rather than after the TTL, so subscribing to made-up names pins
    /// nothing.
    pub fn release_if_unused(&self, channel: &Arc<Channel>, peers: &PeerLimits) {
        if !channel.has_interest() {
            // The fleet may stop listening to it.
            self.tell_watcher(channel);
        }
        if channel.has_interest() || channel.last_seq() != 0 {
            return;
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let Some(current) = map.get(&channel.name) else {
            return;
        };
        if !Arc::ptr_eq(current, channel) || channel.has_interest() {
            return;
        }
        // Under the history lock, so a publish either came first (and the
        // channel stays) or sees it retired and looks it up again.
        let history = channel.history();
        if channel.last_seq() != 0 {
            return;
        }
        channel.retired.store(true, SeqCst);
        drop(history);
        map.remove(&channel.name);
        channel.adopt(peers);
    }

    /// Removes channels with no subscriber anywhere and no activity for
    /// `ttl_ms` at `now`; returns the history released with them.
    pub fn sweep(&self, ttl_ms: u64, now: u64, peers: &PeerLimits) -> Released {
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let mut released = Released::default();
        map.retain(|_, c| {
            let idle = now.saturating_sub(c.last_active.load(SeqCst)) >= ttl_ms;
            if idle && !c.has_interest() {
                let mut history = c.history();
                c.retired.store(true, SeqCst);
                released += history.clear();
                drop(history);
                c.adopt(peers);
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

    /// The channel called `name`, created if new (by a publisher: up to
    /// `--max-channels`). The caller has validated the name.
    pub fn get_or_create(&self, name: &str, now_ms: u64) -> Result<Arc<Channel>, ChannelRefused> {
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
    ) -> Result<Arc<Channel>, ChannelRefused> {
        if map.len() >= self.max_channels {
            return Err(ChannelRefused::TableFull);
        }
        let name: Arc<str> = Arc::from(name);
        let channel = Arc::new(Channel {
            id: self.next_id.fetch_add(1, SeqCst),
            name: name.clone(),
            interest: (0..self.shards).map(|_| AtomicBool::new(false)).collect(),
            last_seq: AtomicU64::new(0),
            last_active: AtomicU64::new(now_ms),
            history: Mutex::new(History::default()),
            creator: AtomicU32::new(UNTRACKED),
            subscribers: AtomicU64::new(0),
            synced: AtomicBool::new(!self.in_fleet()),
            wanted_at: AtomicU64::new(0),
            synced_seq: AtomicU64::new(0),
            reach: AtomicU64::new(u64::MAX),
            wanted_from: AtomicU64::new(u64::MAX),
            retired: AtomicBool::new(false),
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

    /// Every channel (one pass under the read lock).
    pub fn all(&self) -> Vec<Arc<Channel>> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Every channel's figures (one pass under the read lock; the status
    /// page asks at most once a second, and only while someone looks).
    pub fn figures(&self) -> Vec<ChannelFigures> {
        let map = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|c| ChannelFigures {
                id: c.id,
                name: c.name.clone(),
                last_seq: c.last_seq(),
                subscribers: c.subscribers(),
            })
            .collect()
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
    use bytes::Bytes;

    fn no_limits() -> PeerLimits {
        PeerLimits::new(0, 0, 0, false)
    }

    fn client(peers: &PeerLimits) -> Creator<'_> {
        Creator {
            peers,
            peer: UNTRACKED,
        }
    }

    fn publish(c: &Channel, data: &'static str) -> u64 {
        c.publish(LIMITS, 0, |_| {
            Encoded::plain(Bytes::from_static(data.as_bytes()))
        })
        .expect("not retired")
        .0
    }

    #[test]
    fn create_once_and_cap() {
        let r = Registry::new(2, 2);
        let a = r.get_or_create("a", 0).unwrap();
        assert_eq!(r.get_or_create("a", 0).unwrap().id, a.id);
        r.get_or_create("b", 0).unwrap();
        assert_eq!(
            r.get_or_create("c", 0).unwrap_err(),
            ChannelRefused::TableFull
        );
        assert_eq!(r.len(), 2);
    }

    const LIMITS: HistoryLimits = HistoryLimits {
        count: 10,
        bytes: 1000,
    };

    #[test]
    fn seq_history_and_interest() {
        let peers = no_limits();
        let r = Registry::new(2, 10);
        let a = r.get_or_create("a", 0).unwrap();
        let (s1, f1, _) = a
            .publish(LIMITS, 0, |seq| {
                Encoded::plain(Bytes::from(format!("m{seq}")))
            })
            .unwrap();
        let s2 = publish(&a, "m2");
        assert_eq!((s1, s2, a.last_seq(), &f1.frame[..]), (1, 2, 2, &b"m1"[..]));
        let history = a.history();
        assert_eq!((history.oldest(), history.len()), (Some(1), 2));
        drop(history);
        let b = r.subscribe("a", 1, 0, client(&peers), || true).unwrap();
        assert!(!b.is_interested(0) && b.is_interested(1));
        assert_eq!(r.busiest(5)[0], (Arc::from("a"), 2));
    }

    #[test]
    fn sweep_only_idle_channels_without_subscribers() {
        let peers = no_limits();
        let r = Registry::new(1, 10);
        let a = r.get_or_create("a", 0).unwrap();
        publish(&a, "12345");
        r.subscribe("b", 0, 0, client(&peers), || true).unwrap();
        // ttl 0: everything is idle; only the unsubscribed one goes.
        assert_eq!(r.sweep(0, 0, &peers).bytes, 5);
        assert!(r.get("a").is_none());
        assert!(r.get("b").is_some());
        r.get("b").unwrap().set_interest(0, false);
        assert_eq!(r.sweep(3_600_000, 0, &peers).frames, 0);
        assert!(r.get("b").is_some());
    }

    #[test]
    fn a_made_up_channel_goes_with_its_last_subscriber() {
        let peers = no_limits();
        let r = Registry::new(2, 10);
        let made_up = r.subscribe("x", 0, 0, client(&peers), || true).unwrap();
        r.subscribe("x", 1, 0, client(&peers), || true).unwrap();
        made_up.set_interest(0, false);
        r.release_if_unused(&made_up, &peers);
        assert!(r.get("x").is_some(), "shard 1 still wants it");
        made_up.set_interest(1, false);
        r.release_if_unused(&made_up, &peers);
        assert!(r.get("x").is_none());
        assert!(
            made_up
                .publish(LIMITS, 0, |_| Encoded::plain(Bytes::new()))
                .is_none(),
            "a publish holding the old one is told to look again"
        );
        // One that was published to keeps its seq (and history) until the TTL.
        let kept = r.subscribe("y", 0, 0, client(&peers), || true).unwrap();
        publish(&kept, "1");
        kept.set_interest(0, false);
        r.release_if_unused(&kept, &peers);
        assert_eq!(r.get("y").map(|c| c.last_seq()), Some(1));
    }

    #[test]
    fn clients_fill_nine_tenths_and_publishers_the_rest() {
        let peers = no_limits();
        let r = Registry::new(1, 20);
        for i in 0..18 {
            r.subscribe(&format!("c{i}"), 0, 0, client(&peers), || true)
                .unwrap();
        }
        assert_eq!(
            r.subscribe("c18", 0, 0, client(&peers), || true).err(),
            Some(ChannelRefused::TableFull)
        );
        r.subscribe("c0", 0, 0, client(&peers), || true)
            .expect("an existing channel is always joined");
        r.get_or_create("p18", 0).unwrap();
        r.get_or_create("p19", 0).unwrap();
        assert_eq!(
            r.get_or_create("p20", 0).err(),
            Some(ChannelRefused::TableFull)
        );
    }

    #[test]
    fn creation_counts_against_the_ip_until_published_or_gone() {
        let peers = PeerLimits::new(0, 0, 2, false);
        let ip = "192.0.2.7".parse().unwrap();
        let peer = peers.admit(ip, 0).unwrap();
        let from_ip = Creator {
            peers: &peers,
            peer,
        };
        let r = Registry::new(1, 100);
        let a = r.subscribe("a", 0, 0, from_ip, || true).unwrap();
        assert_eq!(
            r.subscribe("d", 0, 0, from_ip, || false).err(),
            Some(ChannelRefused::TooFast),
            "the connection's own budget, which holds nothing for the IP"
        );
        let b = r.subscribe("b", 0, 0, from_ip, || true).unwrap();
        assert_eq!(
            r.subscribe("c", 0, 0, from_ip, || panic!("not asked"))
                .err(),
            Some(ChannelRefused::IpHoldsTooMany)
        );
        // Published to: a publisher's channel now, not the client's.
        publish(&a, "1");
        a.adopt(&peers);
        r.subscribe("c", 0, 0, from_ip, || true).unwrap();
        // Left: gone, and the hold with it.
        b.set_interest(0, false);
        r.release_if_unused(&b, &peers);
        r.subscribe("d", 0, 0, from_ip, || true).unwrap();
        assert!(
            r.subscribe("a", 0, 0, from_ip, || false).is_ok(),
            "joining costs nothing"
        );
    }
}
