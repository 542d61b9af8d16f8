//! The status page's figures (`/status.json`), sampled once a second from
//! the counters the shards and the feed already publish: an open page costs
//! the shards nothing beyond answering its request.
//!
//! The global rates are sampled always (a handful of atomic loads a second),
//! so a page opened now shows the last minutes at once. The per-channel
//! tables need a pass over every channel: that pass runs only while
//! someone looks (a request in the last [`WATCH_FOR`]), once a second however
//! many tabs are open.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::core::registry::ChannelFigures;

/// How much rate history the page's sparklines show: one sample a second.
pub const HISTORY_SECONDS: usize = 300;
/// Channels listed in each of the page's top tables.
pub const TOP_CHANNELS: usize = 10;
/// After a request, keep sampling the channel tables this long.
pub const WATCH_FOR_MS: u64 = 10_000;

/// Monotonic totals read at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub published: u64,
    /// Per shard: channel messages queued to clients.
    pub delivered: Vec<u64>,
}

impl Totals {
    fn delivered_all(&self) -> u64 {
        self.delivered.iter().sum()
    }
}

/// Per-second rates over the last [`HISTORY_SECONDS`], from successive
/// totals.
#[derive(Debug, Default)]
pub struct RateHistory {
    last: Option<(u64, Totals)>,
    published: VecDeque<f64>,
    delivered: VecDeque<f64>,
    delivered_per_shard: Vec<f64>,
}

/// Per second over `ms` milliseconds (counters only grow; a total that went
/// down, as it cannot, counts as no change).
fn per_second(now: u64, before: u64, ms: u64) -> f64 {
    now.saturating_sub(before) as f64 * 1000.0 / ms as f64
}

impl RateHistory {
    /// Takes the totals read at `at_ms` (server clock).
    pub fn record(&mut self, at_ms: u64, totals: Totals) {
        if let Some((then, before)) = &self.last {
            let ms = at_ms.saturating_sub(*then);
            if ms == 0 {
                return;
            }
            push_bounded(
                &mut self.published,
                per_second(totals.published, before.published, ms),
            );
            push_bounded(
                &mut self.delivered,
                per_second(totals.delivered_all(), before.delivered_all(), ms),
            );
            self.delivered_per_shard = totals
                .delivered
                .iter()
                .enumerate()
                .map(|(i, &n)| per_second(n, before.delivered.get(i).copied().unwrap_or(n), ms))
                .collect();
        }
        self.last = Some((at_ms, totals));
    }

    /// The latest rates: (published, delivered) per second.
    pub fn current(&self) -> (f64, f64) {
        (
            self.published.back().copied().unwrap_or(0.0),
            self.delivered.back().copied().unwrap_or(0.0),
        )
    }

    pub fn delivered_by_shard(&self, shard: usize) -> f64 {
        self.delivered_per_shard.get(shard).copied().unwrap_or(0.0)
    }

    pub fn totals(&self) -> Option<&Totals> {
        self.last.as_ref().map(|(_, t)| t)
    }

    pub fn sparklines(&self) -> History {
        History {
            interval_seconds: 1,
            published_per_second: self.published.iter().map(|&r| round1(r)).collect(),
            delivered_per_second: self.delivered.iter().map(|&r| round1(r)).collect(),
        }
    }
}

fn push_bounded(ring: &mut VecDeque<f64>, value: f64) {
    if ring.len() == HISTORY_SECONDS {
        ring.pop_front();
    }
    ring.push_back(value);
}

/// Rates to one decimal: enough for a page, and short JSON.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The per-channel tables, with each channel's rate since the previous pass.
#[derive(Debug, Default)]
pub struct ChannelTables {
    last: Option<(u64, HashMap<u64, u64>)>,
}

impl ChannelTables {
    /// One pass over every channel's `figures` at `at_ms`.
    pub fn sample(&mut self, at_ms: u64, figures: Vec<ChannelFigures>) -> Channels {
        let count = figures.len();
        let rated: Vec<ChannelRow> = match &self.last {
            Some((then, seqs)) if at_ms > *then => figures
                .iter()
                .map(|f| {
                    let before = seqs.get(&f.id).copied().unwrap_or(f.last_seq);
                    row(f, per_second(f.last_seq, before, at_ms - then))
                })
                .collect(),
            _ => figures.iter().map(|f| row(f, 0.0)).collect(),
        };
        self.last = Some((at_ms, figures.iter().map(|f| (f.id, f.last_seq)).collect()));
        let by_subscribers = top(&rated, |r| (r.subscribers as f64, r.per_second));
        let by_rate = top(&rated, |r| (r.per_second, r.subscribers as f64));
        Channels {
            count,
            top_by_subscribers: by_subscribers,
            top_by_rate: by_rate,
        }
    }
}

fn row(f: &ChannelFigures, per_second: f64) -> ChannelRow {
    ChannelRow {
        channel: f.name.clone(),
        subscribers: f.subscribers,
        per_second: round1(per_second),
        seq: f.last_seq,
    }
}

/// The [`TOP_CHANNELS`] rows with the largest `key`, largest first (ties by
/// name, so the table does not shuffle between refreshes). Rows whose key is
/// zero say nothing and are left out.
fn top(rows: &[ChannelRow], key: impl Fn(&ChannelRow) -> (f64, f64)) -> Vec<ChannelRow> {
    let mut kept: Vec<&ChannelRow> = rows.iter().filter(|r| key(r).0 > 0.0).collect();
    let order = |a: &&ChannelRow, b: &&ChannelRow| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.channel.cmp(&b.channel))
    };
    if kept.len() > TOP_CHANNELS {
        kept.select_nth_unstable_by(TOP_CHANNELS, order);
        kept.truncate(TOP_CHANNELS);
    }
    kept.sort_unstable_by(order);
    kept.into_iter().cloned().collect()
}

// ----- the JSON document -----

/// `/status.json`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub driver: &'static str,
    pub uptime_seconds: u64,
    pub epoch: String,
    pub fleet: Fleet,
    pub connections: Connections,
    pub rates: Rates,
    pub totals: TotalsOut,
    pub feed_errors: Vec<Kind>,
    pub queued_bytes: u64,
    pub shards: Vec<Shard>,
    pub history: History,
    pub channels: Option<Channels>,
}

/// Whether this node is part of a fleet, and how its link is.
#[derive(Debug, Serialize)]
pub struct Fleet {
    /// `single-node`, or `redis`: one of a fleet over Redis.
    pub mode: &'static str,
    /// The Redis (without its password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// `up` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<&'static str>,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Last round trip to Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Channels listened to in Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels_subscribed: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub open: u64,
    pub websockets: u64,
    pub sse_streams: u64,
    pub max: u64,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub published_per_second: f64,
    pub delivered_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct TotalsOut {
    pub published: u64,
    pub delivered: u64,
    pub slow_client_cuts: SlowCuts,
    pub udp_drops: u64,
}

#[derive(Debug, Serialize)]
pub struct SlowCuts {
    pub websocket: u64,
    pub sse: u64,
}

/// A count by kind (kept as a list so the page shows the kinds in order).
#[derive(Debug, Serialize)]
pub struct Kind {
    pub kind: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Shard {
    pub shard: usize,
    pub connections: u64,
    pub websockets: u64,
    pub sse_streams: u64,
    pub subscriptions: u64,
    pub queued_bytes: u64,
    pub delivered_per_second: f64,
    pub slow_client_cuts: u64,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub interval_seconds: u64,
    pub published_per_second: Vec<f64>,
    pub delivered_per_second: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Channels {
    pub count: usize,
    pub top_by_subscribers: Vec<ChannelRow>,
    pub top_by_rate: Vec<ChannelRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelRow {
    pub channel: Arc<str>,
    pub subscribers: u64,
    pub per_second: f64,
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(published: u64, delivered: &[u64]) -> Totals {
        Totals {
            published,
            delivered: delivered.to_vec(),
        }
    }

    fn figures(id: u64, name: &str, seq: u64, subscribers: u64) -> ChannelFigures {
        ChannelFigures {
            id,
            name: name.into(),
            last_seq: seq,
            subscribers,
        }
    }

    #[test]
    fn rates_come_from_successive_totals() {
        let mut h = RateHistory::default();
        h.record(1_000, totals(10, &[100, 0]));
        assert_eq!(h.current(), (0.0, 0.0), "one sample is no rate yet");
        h.record(2_000, totals(15, &[150, 30]));
        assert_eq!(h.current(), (5.0, 80.0));
        assert_eq!(h.delivered_by_shard(1), 30.0);
        // Half a second: the rate is per second, not per sample.
        h.record(2_500, totals(20, &[150, 30]));
        assert_eq!(h.current(), (10.0, 0.0));
        // Two samples at the same instant: the second is ignored.
        h.record(2_500, totals(99, &[150, 30]));
        assert_eq!(h.current(), (10.0, 0.0));
        assert_eq!(h.sparklines().published_per_second, vec![5.0, 10.0]);
    }

    #[test]
    fn history_keeps_only_the_last_minutes() {
        let mut h = RateHistory::default();
        for s in 0..(HISTORY_SECONDS as u64 + 50) {
            h.record(s * 1000, totals(s * 2, &[s]));
        }
        let spark = h.sparklines();
        assert_eq!(spark.published_per_second.len(), HISTORY_SECONDS);
        assert!(spark.delivered_per_second.iter().all(|&r| r == 1.0));
    }

    #[test]
    fn a_shard_counter_that_appears_later_starts_at_no_rate() {
        let mut h = RateHistory::default();
        h.record(0, totals(0, &[5]));
        h.record(1_000, totals(0, &[5, 7]));
        assert_eq!(h.delivered_by_shard(1), 0.0);
        assert_eq!(h.delivered_by_shard(9), 0.0);
    }

    #[test]
    fn channel_tables_rank_by_subscribers_and_by_rate() {
        let mut t = ChannelTables::default();
        let first = t.sample(
            0,
            vec![
                figures(1, "a", 0, 3),
                figures(2, "b", 10, 1),
                figures(3, "idle", 0, 0),
            ],
        );
        assert_eq!(first.count, 3);
        assert!(first.top_by_rate.is_empty(), "no rate before a second pass");
        let names = |rows: &[ChannelRow]| {
            rows.iter()
                .map(|r| r.channel.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first.top_by_subscribers), ["a", "b"]);
        let second = t.sample(
            2_000,
            vec![
                figures(1, "a", 2, 3),
                figures(2, "b", 30, 1),
                figures(4, "new", 50, 0),
            ],
        );
        // A channel first seen in this pass has no rate yet.
        assert_eq!(names(&second.top_by_rate), ["b", "a"]);
        assert_eq!(second.top_by_rate[0].per_second, 10.0);
        assert_eq!(second.top_by_rate[1].per_second, 1.0);
    }

    #[test]
    fn channel_tables_are_bounded_and_stable() {
        let mut t = ChannelTables::default();
        let many: Vec<_> = (0..1000)
            .map(|i| figures(i, &format!("c{i:04}"), 0, 5))
            .collect();
        let tables = t.sample(0, many);
        assert_eq!(tables.top_by_subscribers.len(), TOP_CHANNELS);
        // All tied: by name.
        assert_eq!(&*tables.top_by_subscribers[0].channel, "c0000");
        assert_eq!(&*tables.top_by_subscribers[9].channel, "c0009");
    }
}
