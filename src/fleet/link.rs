//! Listening to the fleet: the channels this node has subscribers for, and
//! nothing else.
//!
//! One task holds a pub/sub connection (its subscriptions follow the
//! registry's interest) and a data connection (syncs, log reads, probes).
//! Every message it hands on is the next of its channel: one it already
//! passed on is dropped, and before one that skips ahead it reads what lies
//! between from the channel's log. So a client never meets a duplicate, and
//! a gap only where the fleet no longer holds the messages either.
//!
//! Every second it publishes a probe to itself. A data connection that
//! fails, or a probe that has not come back in [`PROBE_DEADLINE`] (a pub/sub
//! connection that went silent: killed, or Redis paused), ends the session:
//! both connections are made anew (jittered backoff) and every channel
//! catches up from its log where it stood.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::streams::StreamRangeReply;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, watch};

use super::keys::{self, Keys};
use super::{FleetConfig, FleetEvent, FleetStats, Health};
use crate::core::registry::Channel;
use crate::core::shared::Shared;

/// How often the probe goes out.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe not back after this long means the pub/sub connection is dead.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(2500);
/// Longest wait for a connection or a command.
const TIMEOUT: Duration = Duration::from_secs(1);
/// A channel is still listened to this long after its last subscriber here
/// left (and as long after a subscriber last asked for it: `is_wanted`).
const GRACE_MS: u64 = crate::core::registry::WANT_GRACE_MS;
/// How often channels nobody wants any more are let go.
const REVIEW_EVERY: Duration = Duration::from_secs(5);

/// A channel listened to, and the last seq handed on for it.
struct Track {
    channel: Arc<Channel>,
    last: u64,
    /// Since when (registry clock) nobody wants it; let go of after
    /// [`GRACE_MS`], so a client that reconnects finds it still listened to.
    unwanted_since: Option<u64>,
}

pub struct Link {
    keys: Keys,
    client: Client,
    history: usize,
    node: String,
    shared: Arc<Shared>,
    started: Instant,
    stats: Arc<FleetStats>,
    health: Arc<Health>,
    events: mpsc::Sender<FleetEvent>,
    interest: mpsc::UnboundedReceiver<Arc<Channel>>,
    /// The fleet's epoch as last heard (the publisher updates it too).
    fleet_epoch: Arc<watch::Sender<String>>,
    /// The epoch this node's channels are in (the last one handed on).
    node_epoch: Option<String>,
    tracked: HashMap<Arc<str>, Track>,
}

type Session = Result<(), String>;

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &FleetConfig,
        shared: Arc<Shared>,
        started: Instant,
        stats: Arc<FleetStats>,
        health: Arc<Health>,
        events: mpsc::Sender<FleetEvent>,
        interest: mpsc::UnboundedReceiver<Arc<Channel>>,
        fleet_epoch: Arc<watch::Sender<String>>,
    ) -> redis::RedisResult<Link> {
        Ok(Link {
            keys: Keys::new(&config.prefix),
            client: Client::open(config.url.as_str())?,
            history: config.history,
            node: config.node.clone(),
            shared,
            started,
            stats,
            health,
            events,
            interest,
            fleet_epoch,
            node_epoch: None,
            tracked: HashMap::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs sessions until the node stops, rebuilding after each failure.
    pub async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let began = Instant::now();
            let Err(why) = self.session().await else {
                return;
            };
            tracing::warn!("fleet: {why}; reconnecting");
            self.health.link(Some(why));
            if began.elapsed() > Duration::from_secs(10) {
                attempt = 0;
            }
            tokio::time::sleep(super::backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// One pair of connections, until one fails.
    async fn session(&mut self) -> Session {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut data = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let pubsub = tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "pub/sub connection timed out".to_owned())?
            .map_err(|e| format!("cannot open the pub/sub connection: {e}"))?;
        let (mut sink, mut stream) = pubsub.split();
        let probe = self.keys.probe(&self.node);
        timed(sink.subscribe(&probe)).await?;

        // Listen to everything wanted, then bring it up to date: what is
        // published from now on arrives live, anything before is read.
        let epoch = self.fleet_epoch_from(&mut data).await?;
        let wanted: Vec<Arc<Channel>> = self
            .shared
            .registry
            .all()
            .into_iter()
            .filter(|c| self.is_desired(c))
            .collect();
        let names: Vec<String> = wanted.iter().map(|c| self.keys.live(&c.name)).collect();
        if !names.is_empty() {
            timed(sink.subscribe(&names)).await?;
        }
        let mut old: HashMap<Arc<str>, Track> = std::mem::take(&mut self.tracked);
        for channel in &wanted {
            let last = old
                .remove(&channel.name)
                .filter(|t| Arc::ptr_eq(&t.channel, channel))
                .map(|t| t.last);
            self.tracked.insert(
                channel.name.clone(),
                Track {
                    channel: channel.clone(),
                    last: last.unwrap_or(0),
                    unwanted_since: None,
                },
            );
        }
        // Listened to before and not any more: their state would go stale.
        for (_, track) in old {
            self.send(FleetEvent::Forget {
                channel: track.channel,
            })
            .await?;
        }
        let mut epoch = epoch;
        if self.node_epoch.as_deref() == Some(epoch.as_str())
            && self.fleet_went_back(&mut data, &wanted).await?
        {
            // A Redis that came back with older data (a failover to a
            // replica that was behind, an old snapshot) would hand out seqs
            // clients already had: a new epoch instead, for the whole fleet.
            epoch = super::node_name();
            let _: () = timed(
                redis::cmd("SET")
                    .arg(self.keys.epoch())
                    .arg(&epoch)
                    .query_async(&mut data),
            )
            .await?;
            self.fleet_epoch.send_replace(epoch.clone());
            tracing::warn!(
                "fleet: Redis came back with older seqs than this node delivered; starting epoch {epoch}"
            );
        }
        if self.node_epoch.as_deref() != Some(epoch.as_str()) {
            self.adopt_epoch(&mut data, epoch).await?;
        } else {
            for channel in wanted {
                self.bring_up_to_date(&mut data, &channel).await?;
            }
        }
        self.publish_count();
        self.health.link(None);

        let mut epoch_changes = self.fleet_epoch.subscribe();
        let mut probe_tick = tokio::time::interval(PROBE_EVERY);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut review = tokio::time::interval(REVIEW_EVERY);
        let mut probe_back = Instant::now();
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err("the pub/sub connection closed".into());
                    };
                    if message.get_channel_name() == probe {
                        probe_back = Instant::now();
                        continue;
                    }
                    self.on_live(&mut data, message.get_channel_name(), message.get_payload_bytes()).await?;
                }
                channel = self.interest.recv() => {
                    let Some(channel) = channel else { return Ok(()) };
                    self.reconcile(&mut data, &mut sink, channel).await?;
                }
                _ = probe_tick.tick() => {
                    if probe_back.elapsed() > PROBE_DEADLINE {
                        FleetStats::add(&self.stats.rebuilds, 1);
                        return Err(format!(
                            "the pub/sub connection went silent (probe not back in {} ms)",
                            PROBE_DEADLINE.as_millis()
                        ));
                    }
                    let sent = Instant::now();
                    let _: i64 = timed(redis::cmd("PUBLISH").arg(&probe).arg(1).query_async(&mut data)).await?;
                    self.stats.rtt_us.store(sent.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                _ = review.tick() => self.let_go_of_unwanted(&mut sink).await?,
                changed = epoch_changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let epoch = epoch_changes.borrow_and_update().clone();
                    if self.node_epoch.as_deref() != Some(epoch.as_str()) {
                        self.adopt_epoch(&mut data, epoch).await?;
                    }
                }
            }
        }
    }

    /// The fleet's epoch; a Redis without one (new, or one that lost its
    /// data) gets one now.
    async fn fleet_epoch_from(
        &mut self,
        data: &mut MultiplexedConnection,
    ) -> Result<String, String> {
        let key = self.keys.epoch();
        let _: Value = timed(
            redis::cmd("SET")
                .arg(&key)
                .arg(super::node_name())
                .arg("NX")
                .query_async(data),
        )
        .await?;
        let epoch: Option<String> = timed(redis::cmd("GET").arg(&key).query_async(data)).await?;
        let epoch = epoch.ok_or("the fleet's epoch vanished as it was set")?;
        self.fleet_epoch.send_if_modified(|e| {
            let changed = *e != epoch;
            e.clone_from(&epoch);
            changed
        });
        Ok(epoch)
    }

    /// Whether any of `channels` has a seq in Redis below the one this node
    /// already has: the fleet's data went back in time.
    async fn fleet_went_back(
        &mut self,
        data: &mut MultiplexedConnection,
        channels: &[Arc<Channel>],
    ) -> Result<bool, String> {
        let synced: Vec<&Arc<Channel>> = channels.iter().filter(|c| c.is_synced()).collect();
        if synced.is_empty() {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        for channel in &synced {
            pipe.cmd("GET").arg(self.keys.seq(&channel.name));
        }
        let seqs: Vec<Option<u64>> = timed(pipe.query_async(data)).await?;
        Ok(synced
            .iter()
            .zip(seqs)
            .any(|(channel, seq)| seq.unwrap_or(0) < channel.last_seq()))
    }

    /// Channels this node listens to: those with subscribers here, and
    /// those a subscriber asked for a moment ago.
    fn is_desired(&self, channel: &Arc<Channel>) -> bool {
        let current = self
            .shared
            .registry
            .get(&channel.name)
            .is_some_and(|c| Arc::ptr_eq(&c, channel));
        current && channel.is_wanted(self.now_ms())
    }

    /// A channel's interest changed, or it wants syncing.
    async fn reconcile(
        &mut self,
        data: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        channel: Arc<Channel>,
    ) -> Session {
        if !self.is_desired(&channel) {
            return Ok(()); // let go of at the next review, after the grace
        }
        let same = self
            .tracked
            .get(&channel.name)
            .is_some_and(|t| Arc::ptr_eq(&t.channel, &channel));
        if same {
            // Listened to already, and synced or caught up (a sync sent is
            // applied before anything after it); a resume may want more of
            // its log than the node holds.
            return self.backfill_if_wanted(data, &channel).await;
        }
        if !self.tracked.contains_key(&channel.name) {
            timed(sink.subscribe(self.keys.live(&channel.name))).await?;
        }
        self.tracked.insert(
            channel.name.clone(),
            Track {
                channel: channel.clone(),
                last: 0,
                unwanted_since: None,
            },
        );
        self.publish_count();
        self.bring_up_to_date(data, &channel).await?;
        self.backfill_if_wanted(data, &channel).await
    }

    /// A client resumes from further back than the node holds: what the
    /// log has from there (up to `--history` messages), for the node's copy.
    async fn backfill_if_wanted(
        &mut self,
        data: &mut MultiplexedConnection,
        channel: &Arc<Channel>,
    ) -> Session {
        let Some(from) = channel.wanted_from() else {
            return Ok(());
        };
        let range: StreamRangeReply = timed(
            redis::cmd("XRANGE")
                .arg(self.keys.log(&channel.name))
                .arg(format!("{from}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(self.history.max(1))
                .query_async(data),
        )
        .await?;
        FleetStats::add(&self.stats.catchup_reads, 1);
        let retained = entries(range);
        FleetStats::add(&self.stats.catchup_messages, retained.len() as u64);
        self.send(FleetEvent::Backfill {
            channel: channel.clone(),
            from,
            retained,
        })
        .await
    }

    /// Unsubscribes from channels nobody wants any more (past the grace);
    /// the distributor forgets their state unless a subscriber came.
    async fn let_go_of_unwanted(&mut self, sink: &mut PubSubSink) -> Session {
        let now = self.now_ms();
        let desired: Vec<(Arc<str>, bool)> = self
            .tracked
            .values()
            .map(|t| (t.channel.name.clone(), self.is_desired(&t.channel)))
            .collect();
        let mut gone = Vec::new();
        for (name, wanted) in desired {
            let Some(track) = self.tracked.get_mut(&name) else {
                continue;
            };
            if wanted {
                track.unwanted_since = None;
            } else if now.saturating_sub(*track.unwanted_since.get_or_insert(now)) >= GRACE_MS {
                gone.push(name);
            }
        }
        for name in gone {
            timed(sink.unsubscribe(self.keys.live(&name))).await?;
            if let Some(track) = self.tracked.remove(&name) {
                self.send(FleetEvent::Forget {
                    channel: track.channel,
                })
                .await?;
            }
        }
        self.publish_count();
        Ok(())
    }

    /// A synced channel catches up from its log; any other is synced.
    async fn bring_up_to_date(
        &mut self,
        data: &mut MultiplexedConnection,
        channel: &Arc<Channel>,
    ) -> Session {
        if channel.is_synced() {
            let from = channel.last_seq();
            if let Some(track) = self.tracked.get_mut(&channel.name) {
                track.last = track.last.max(from);
            }
            return self.read_log(data, &channel.name, from + 1, None).await;
        }
        let (seq, retained) = self.fetch_state(data, &channel.name).await?;
        if let Some(track) = self.tracked.get_mut(&channel.name) {
            track.last = seq;
        }
        FleetStats::add(&self.stats.syncs, 1);
        self.send(FleetEvent::Sync {
            channel: channel.clone(),
            seq,
            retained,
        })
        .await
    }

    /// The channel's seq and retained messages, read at one instant.
    async fn fetch_state(
        &mut self,
        data: &mut MultiplexedConnection,
        name: &str,
    ) -> Result<(u64, Vec<(u64, Bytes)>), String> {
        let (seq, range): (Option<u64>, StreamRangeReply) = timed(
            redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(self.keys.seq(name))
                .cmd("XREVRANGE")
                .arg(self.keys.log(name))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(self.history.max(1))
                .query_async(data),
        )
        .await?;
        let mut retained = entries(range);
        retained.reverse();
        let seq = seq.unwrap_or(0).max(retained.last().map_or(0, |e| e.0));
        Ok((seq, contiguous_tail(retained, seq)))
    }

    /// Hands on the log's messages from `from` (to `to`, or the end), each
    /// newer than the last handed on.
    async fn read_log(
        &mut self,
        data: &mut MultiplexedConnection,
        name: &str,
        from: u64,
        to: Option<u64>,
    ) -> Session {
        let end = to.map_or("+".to_owned(), |t| format!("{t}-0"));
        let range: StreamRangeReply = timed(
            redis::cmd("XRANGE")
                .arg(self.keys.log(name))
                .arg(format!("{from}-0"))
                .arg(end)
                .query_async(data),
        )
        .await?;
        FleetStats::add(&self.stats.catchup_reads, 1);
        for (seq, bytes) in entries(range) {
            FleetStats::add(&self.stats.catchup_messages, 1);
            self.hand_on(name, seq, bytes).await?;
        }
        Ok(())
    }

    /// A live message: handed on if it is the next; after a hole, what lies
    /// between is read from the log first.
    async fn on_live(
        &mut self,
        data: &mut MultiplexedConnection,
        live_channel: &str,
        payload: &[u8],
    ) -> Session {
        let Some(name) = self.keys.channel_of_live(live_channel) else {
            return Ok(());
        };
        let Some(live) = keys::decode_live(payload) else {
            FleetStats::add(&self.stats.malformed, 1);
            return Ok(());
        };
        if self.node_epoch.as_deref() != Some(live.epoch) {
            // A message of another epoch: the fleet's changed (or this is a
            // straggler of the old one). Ask Redis which it is.
            let epoch = self.fleet_epoch_from(data).await?;
            if self.node_epoch.as_deref() != Some(epoch.as_str()) {
                self.adopt_epoch(data, epoch).await?;
            }
            if self.node_epoch.as_deref() != Some(live.epoch) {
                return Ok(());
            }
        }
        let Some(last) = self.tracked.get(name).map(|t| t.last) else {
            return Ok(()); // let go of meanwhile
        };
        if live.seq <= last {
            return Ok(());
        }
        if live.seq > last + 1 {
            self.read_log(data, name, last + 1, Some(live.seq - 1))
                .await?;
        }
        let data = Bytes::copy_from_slice(live.data);
        self.hand_on(name, live.seq, data).await
    }

    /// Passes message `seq` of `name` to the distributor, if it is newer
    /// than the last one passed on.
    async fn hand_on(&mut self, name: &str, seq: u64, data: Bytes) -> Session {
        let Some(track) = self.tracked.get_mut(name) else {
            return Ok(());
        };
        if seq <= track.last {
            return Ok(());
        }
        track.last = seq;
        let channel = track.channel.clone();
        self.send(FleetEvent::Message { channel, seq, data }).await
    }

    /// The fleet is in `epoch` now: every channel listened to is synced in
    /// it, and the distributor forgets the rest.
    async fn adopt_epoch(&mut self, data: &mut MultiplexedConnection, epoch: String) -> Session {
        let mut channels = Vec::with_capacity(self.tracked.len());
        let names: Vec<Arc<str>> = self.tracked.keys().cloned().collect();
        for name in names {
            let (seq, retained) = self.fetch_state(data, &name).await?;
            if let Some(track) = self.tracked.get_mut(&name) {
                track.last = seq;
                channels.push((track.channel.clone(), seq, retained));
            }
        }
        if self.node_epoch.is_some() {
            FleetStats::add(&self.stats.epoch_changes, 1);
            tracing::warn!(
                "fleet: the fleet's epoch is now {epoch} (Redis lost its data?); clients are told reset"
            );
        }
        self.node_epoch = Some(epoch.clone());
        self.send(FleetEvent::Epoch { epoch, channels }).await
    }

    async fn send(&self, event: FleetEvent) -> Session {
        self.events
            .send(event)
            .await
            .map_err(|_| "the distributor stopped".to_owned())
    }

    fn publish_count(&self) {
        self.stats.channels_subscribed.store(
            self.tracked.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// A Redis command within [`TIMEOUT`], its error worded for the log.
async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", TIMEOUT.as_millis())),
    }
}

/// (seq, data) of each well-formed log entry, in the order given.
fn entries(range: StreamRangeReply) -> Vec<(u64, Bytes)> {
    range
        .ids
        .into_iter()
        .filter_map(|entry| {
            let seq = keys::seq_of_entry(&entry.id)?;
            match entry.map.get("d")? {
                Value::BulkString(b) => Some((seq, Bytes::from(b.clone()))),
                _ => None,
            }
        })
        .collect()
}

/// The run of `entries` (oldest first) that ends at `seq` without a hole.
pub fn contiguous_tail(entries: Vec<(u64, Bytes)>, seq: u64) -> Vec<(u64, Bytes)> {
    if entries.last().map(|e| e.0) != Some(seq) {
        return Vec::new();
    }
    let mut start = entries.len() - 1;
    while start > 0 && entries[start - 1].0 + 1 == entries[start].0 {
        start -= 1;
    }
    entries.into_iter().skip(start).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seqs: &[u64]) -> Vec<(u64, Bytes)> {
        seqs.iter()
            .map(|&s| (s, Bytes::from(s.to_string())))
            .collect()
    }

    #[test]
    fn only_a_contiguous_tail_ending_at_the_seq_is_kept() {
        let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(seqs(contiguous_tail(e(&[3, 4, 5]), 5)), [3, 4, 5]);
        assert_eq!(seqs(contiguous_tail(e(&[1, 3, 4, 5]), 5)), [3, 4, 5]);
        assert!(
            contiguous_tail(e(&[3, 4]), 5).is_empty(),
            "the newest is missing"
        );
        assert!(contiguous_tail(Vec::new(), 0).is_empty());
    }
}
