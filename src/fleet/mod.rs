//! A fleet of nodes over Redis (`serve --redis URL`): every node delivers
//! the same seq for the same message, so a client resumes on any node.
//!
//! - **Publishing** ([`publisher`]): a message fed to any node goes through
//!   one atomic script ([`keys::PUBLISH_SCRIPT`]) that takes the channel's
//!   next seq, appends to its capped log, and publishes it live. A node's
//!   feed is published by one task, in order, in pipelined batches; a batch
//!   retried after a failure is not applied twice (idempotency keys).
//! - **Listening** ([`link`]): a node subscribes in Redis only to channels
//!   it has subscribers for, syncs a channel (seq and retained log) before
//!   its first subscriber is welcomed, fills any hole in what it hears from
//!   the log, probes its own pub/sub connection every second and rebuilds
//!   it (with catch-up from the logs) when the probe stops coming back.
//! - **Applying** is the distributor's (in `feed`), the one writer of the
//!   channels, which hands messages to the shards as for a local feed.
//!
//! The fleet's epoch lives in Redis (`keys::Keys::epoch`): a Redis restarted
//! with its data keeps it; one that lost it gets a new one, and every
//! client is told `reset`.

pub mod keys;
pub mod link;
pub mod publisher;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::core::registry::Channel;
use crate::core::shared::Shared;

/// How to reach the fleet, and what it keeps.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `redis://host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// Messages each channel's log keeps (`--history`).
    pub history: usize,
    /// A channel's log expires after this long without a publish.
    pub log_ttl: Duration,
    /// This node's name in idempotency keys and its probe channel.
    pub node: String,
}

/// A message for the fleet, from this node's feed.
#[derive(Debug)]
pub struct Outgoing {
    pub channel: String,
    pub data: Bytes,
}

/// What the link hands the distributor, in the order it must be applied.
#[derive(Debug)]
pub enum FleetEvent {
    /// The next message of a synced channel (a hole before it, when there is
    /// one, is one the fleet no longer holds).
    Message {
        channel: Arc<Channel>,
        seq: u64,
        data: Bytes,
    },
    /// The fleet's state of a channel: its seq and retained messages (oldest
    /// first, ending at `seq`), to take as they are.
    Sync {
        channel: Arc<Channel>,
        seq: u64,
        retained: Vec<(u64, Bytes)>,
    },
    /// Older messages of a channel from its log, for a client resuming
    /// from `from`, further back than the node held (oldest first).
    Backfill {
        channel: Arc<Channel>,
        from: u64,
        retained: Vec<(u64, Bytes)>,
    },
    /// The channel is no longer listened to: forget its state unless a
    /// subscriber came meanwhile (then the link listens again).
    Forget { channel: Arc<Channel> },
    /// The fleet's epoch is `epoch`: these channels' states in it; every
    /// other channel is forgotten.
    Epoch {
        epoch: String,
        channels: Vec<ChannelState>,
    },
}

/// A channel's state in the fleet: its seq, and its retained messages.
pub type ChannelState = (Arc<Channel>, u64, Vec<(u64, Bytes)>);

/// The fleet's figures, for `/metrics` and the status page.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Last round trip to Redis (a probe), in microseconds.
    pub rtt_us: AtomicU64,
    pub publishes: AtomicU64,
    /// Publishes a retry found already applied (not applied again).
    pub duplicates: AtomicU64,
    /// Publish batches retried after a failure.
    pub publish_retries: AtomicU64,
    /// Reads from channels' logs: holes filled, catch-ups after a rebuild.
    pub catchup_reads: AtomicU64,
    /// Messages read back from the logs by those reads.
    pub catchup_messages: AtomicU64,
    /// Channels synced from the fleet (seq and log) for a first subscriber.
    pub syncs: AtomicU64,
    /// Pub/sub connections rebuilt because the probe stopped coming back or
    /// the connection failed.
    pub rebuilds: AtomicU64,
    /// Channels this node listens to in Redis now.
    pub channels_subscribed: AtomicU64,
    /// Times the fleet's epoch changed under this node.
    pub epoch_changes: AtomicU64,
    /// Live messages that were not `<epoch> <seq> <data>`.
    pub malformed: AtomicU64,
}

/// The link's and the publisher's view of Redis, folded into the node's
/// health (`/healthz` and the status page).
pub struct Health {
    shared: Arc<Shared>,
    url: String,
    link: Mutex<Option<String>>,
    publisher: Mutex<Option<String>>,
}

impl Health {
    pub fn new(shared: Arc<Shared>, url: &str) -> Health {
        let health = Health {
            shared,
            url: redacted(url),
            link: Mutex::new(Some("not connected yet".into())),
            publisher: Mutex::new(None),
        };
        health.refresh();
        health
    }

    pub fn link(&self, problem: Option<String>) {
        *lock(&self.link) = problem;
        self.refresh();
    }

    pub fn publisher(&self, problem: Option<String>) {
        *lock(&self.publisher) = problem;
        self.refresh();
    }

    fn refresh(&self) {
        let problem = lock(&self.link)
            .clone()
            .or_else(|| lock(&self.publisher).clone());
        match problem {
            None => self.shared.upstream.set_up(),
            Some(p) => self
                .shared
                .upstream
                .set_down(&format!("redis unreachable ({}): {p}", self.url)),
        }
    }
}

/// `url` without its password, for logs and health pages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Backoff before reconnecting: full jitter over an exponential ceiling
/// (100 ms doubling to 2 s), so a fleet that lost Redis does not come back
/// all at once.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    let mut byte = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut byte, rustix::rand::GetRandomFlags::empty());
    Duration::from_millis(u64::from_le_bytes(byte) % (ceiling + 1))
}

/// A random name for this node (its idempotency keys and probe channel).
pub fn node_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FleetStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn backoff_is_jittered_under_a_ceiling() {
        for attempt in 0..10 {
            let cap = 100u64 * (1 << attempt.min(5));
            assert!(backoff(attempt) <= Duration::from_millis(cap.min(2000)));
        }
        let seen: std::collections::HashSet<_> = (0..50).map(|_| backoff(4)).collect();
        assert!(seen.len() > 1);
    }
}
