//! State every shard (and the control plane) can read: per-shard stats, the
//! channel registry, the drain flag, the connection count, the per-IP limits.
//! In memory only: nothing here does I/O or reads a clock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crate::limits::PeerLimits;
use crate::metrics::{self, SharedStats};

use super::registry::Registry;

pub struct Shared {
    pub shard_stats: Vec<SharedStats>,
    /// Fully started: listeners, shards and feed sockets all up (what
    /// systemd's READY=1 says). Until then `/healthz` answers 503, so a
    /// publisher that waits for health finds its socket there.
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// Shards that have handled the drain (sent their 1001s and published
    /// their counts): until all have, an open-connection count of 0 may
    /// only mean a shard has not published yet.
    pub drain_acks: AtomicUsize,
    pub registry: Registry,
    /// What the seqs clients hold belong to: this run of the server
    /// (random, new at each start), or in a fleet the fleet's epoch (kept in
    /// Redis), so clients can tell their positions belong to another run.
    epoch: Mutex<Arc<str>>,
    /// Bumped each time the epoch changes (a fleet's Redis lost its data):
    /// shards compare it before each delivery.
    epoch_changes: AtomicU64,
    /// The fleet link, when this node is one of a fleet.
    pub upstream: Upstream,
    /// Connections open on all shards (checked against --max-connections).
    pub connections: AtomicUsize,
    /// Per-client-IP limits.
    pub peers: PeerLimits,
    /// Per shard, when its event loop last turned (ms on the server clock):
    /// the systemd watchdog is only fed while every shard is alive.
    pub shard_heartbeat: Vec<AtomicU64>,
    /// Wall-clock time (ms since the Unix epoch) at which the server clock
    /// read 0: token expiry is in Unix seconds, the shards count in
    /// milliseconds since start.
    pub unix_ms_at_start: u64,
    /// Connections, all shards, that take broadcast messages compressed
    /// (permessage-deflate with a full window): while there are none, the
    /// feed compresses nothing.
    pub deflate_clients: AtomicU64,
    /// Server-sent event streams open, all shards: while there are none,
    /// the feed makes no event-stream form of messages.
    pub sse_clients: AtomicU64,
}

impl Shared {
    pub fn new(
        shards: usize,
        max_channels: usize,
        peers: PeerLimits,
        epoch: String,
        unix_ms_at_start: u64,
    ) -> Shared {
        Shared {
            shard_stats: (0..shards).map(|_| SharedStats::default()).collect(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_acks: AtomicUsize::new(0),
            registry: Registry::new(shards, max_channels),
            epoch: Mutex::new(epoch.into()),
            epoch_changes: AtomicU64::new(0),
            upstream: Upstream::default(),
            connections: AtomicUsize::new(0),
            peers,
            shard_heartbeat: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            unix_ms_at_start,
            deflate_clients: AtomicU64::new(0),
            sse_clients: AtomicU64::new(0),
        }
    }

    /// WebSocket connections open on all shards.
    pub fn websockets_open(&self) -> u64 {
        self.shard_stats
            .iter()
            .map(|s| s.snapshot().gauges[metrics::Gauge::WebSocketsOpen as usize])
            .sum()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Every shard has handled the drain and published what it still holds.
    pub fn drain_acknowledged(&self) -> bool {
        self.drain_acks.load(Relaxed) >= self.shard_stats.len()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn epoch(&self) -> Arc<str> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new epoch: every channel's seqs start over (the caller has reset
    /// the channels already).
    pub fn set_epoch(&self, epoch: &str) {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = epoch.into();
        self.epoch_changes.fetch_add(1, SeqCst);
    }

    pub fn epoch_changes(&self) -> u64 {
        self.epoch_changes.load(SeqCst)
    }
}

/// The state of the link to the fleet's Redis, as the fleet tasks see it and
/// `/healthz` reports it. Without a fleet it stays disabled and up.
#[derive(Default)]
pub struct Upstream {
    down: AtomicBool,
    problem: Mutex<String>,
    /// Bumped when channels were synced from the fleet: shards then look at
    /// the subscriptions waiting for that.
    synced: AtomicU64,
}

impl Upstream {
    /// Whether the link works (always, without a fleet).
    pub fn is_up(&self) -> bool {
        !self.down.load(Relaxed)
    }

    pub fn set_up(&self) {
        self.down.store(false, SeqCst);
    }

    pub fn set_down(&self, problem: &str) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem.to_owned();
        self.down.store(true, SeqCst);
    }

    /// Why the link is down.
    pub fn problem(&self) -> String {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn note_synced(&self) {
        self.synced.fetch_add(1, SeqCst);
    }

    pub fn synced(&self) -> u64 {
        self.synced.load(SeqCst)
    }
}
