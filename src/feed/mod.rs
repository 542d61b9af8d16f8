//! The feed: how publishers' messages get in and reach the shards.
//!
//! Ingest tasks (`ingest`) read UDP datagrams and Unix-socket lines and pass
//! each message to the distributor, one task that owns the order: it parses
//! the envelope, assigns the channel's next `seq`, encodes the frame once, and
//! hands a reference to it to every shard with subscribers of that channel.
//! The shards' inboxes are bounded: when a shard falls behind, the distributor
//! waits, Unix publishers are not read (never dropped, only slowed), and UDP
//! datagrams queue in the kernel (dropped there when its buffer is full, and
//! counted in `/metrics`).
//!
//! In a fleet, the seqs are the fleet's: the messages fed here go to Redis
//! (`forward_to_fleet`, then the fleet's publisher), and the distributor
//! applies what the fleet link hears (`Source::Fleet`), with the seq it
//! carries.

pub mod envelope;
pub mod ingest;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::history::Released;
use crate::core::registry::{Channel, HistoryLimits};
use crate::core::shared::Shared;
use crate::core::{Delivery, Encoded};
use crate::driver::Waker;
use crate::protocol::deflate::Deflater;
use crate::protocol::frame::{OpCode, encode_compressed_frame, server_frame_payload};
use envelope::FeedError;

/// Feed counters, read by `/metrics` on any thread.
#[derive(Debug, Default)]
pub struct FeedStats {
    pub published: AtomicU64,
    /// Bytes and frames held in channel histories, all channels.
    pub history_bytes: AtomicU64,
    pub history_frames: AtomicU64,
    pub history_evicted_by_total_cap: AtomicU64,
    pub udp_messages: AtomicU64,
    pub unix_messages: AtomicU64,
    pub unix_publishers: AtomicU64,
    /// permessage-deflate: messages compressed (once each, for every client
    /// that negotiated it), their payload bytes before and after, and the
    /// time spent compressing.
    pub compressed_messages: AtomicU64,
    pub compression_in_bytes: AtomicU64,
    pub compression_out_bytes: AtomicU64,
    pub compression_ns: AtomicU64,
    /// In a fleet: UDP datagrams refused while Redis could not be reached.
    pub fleet_refused_udp: AtomicU64,
    errors: [AtomicU64; FeedError::COUNT],
}

impl FeedStats {
    pub fn error(&self, kind: FeedError) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn errors(&self, kind: FeedError) -> u64 {
        self.errors[kind as usize].load(Relaxed)
    }
}

/// The compressed frame of `frame`'s message, once, for every client that
/// negotiated permessage-deflate; `None` when it is too small or does not
/// get smaller.
fn deflate(compression: &mut Compression, stats: &FeedStats, frame: &Bytes) -> Option<Bytes> {
    let payload = server_frame_payload(frame);
    if payload.len() < compression.min_size {
        return None;
    }
    let started = Instant::now();
    let compressed = compression.deflater.compress(payload);
    stats
        .compression_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    stats.compressed_messages.fetch_add(1, Relaxed);
    stats
        .compression_in_bytes
        .fetch_add(payload.len() as u64, Relaxed);
    stats
        .compression_out_bytes
        .fetch_add(compressed.len() as u64, Relaxed);
    (!compressed.is_empty() && compressed.len() < payload.len())
        .then(|| encode_compressed_frame(OpCode::Text, &compressed))
}

/// Logs a refused feed message at most once per interval, with the number
/// of refusals since the last line, so a flood of garbage cannot flood the log.
pub struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Calls `log(suppressed_since_last)` if the interval has passed.
    pub fn hit(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        log(self.suppressed);
        self.suppressed = 0;
        self.last = Some(now);
    }
}

/// A message from an ingest task to the distributor.
pub struct Incoming {
    pub bytes: Vec<u8>,
    pub source: &'static str,
}

/// Compression of broadcast messages (permessage-deflate), when on.
pub struct Compression {
    /// Payloads shorter than this go uncompressed.
    pub min_size: usize,
    deflater: Deflater,
}

impl Compression {
    pub fn new(min_size: usize) -> Compression {
        Compression {
            min_size,
            deflater: Deflater::new(15).expect("a full window is always available"),
        }
    }
}

/// History settings of the feed.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    pub per_channel: HistoryLimits,
    /// Cap on all channels' history together.
    pub total_bytes: usize,
    /// Channels idle this long with no subscriber are dropped.
    pub channel_ttl: Duration,
}

/// Owns seq assignment, the histories' global bound, and the hand-off to shards.
pub struct Distributor {
    shared: Arc<Shared>,
    /// The server clock's origin (channel activity is kept on it).
    started: Instant,
    stats: Arc<FeedStats>,
    shards: Vec<ShardLink>,
    log: RateLimitedLog,
    history: HistoryConfig,
    /// Every retained frame, in publish order: the global cap evicts from the
    /// front (the oldest anywhere). Entries already trimmed by a channel's
    /// own limits are skipped when reached, and compacted away in bulk.
    retained: VecDeque<(Arc<Channel>, u64)>,
    retained_bytes: usize,
    retained_frames: usize,
    compression: Option<Compression>,
}

/// What the distributor applies: the messages fed to this node (a single
/// node assigns their seqs), or in a fleet what the fleet link heard.
pub enum Source {
    Feed(mpsc::Receiver<Incoming>),
    Fleet(mpsc::Receiver<crate::fleet::FleetEvent>),
}

/// Where the distributor hands a shard its messages.
pub struct ShardLink {
    pub index: usize,
    pub tx: mpsc::Sender<Delivery>,
    pub waker: Arc<Waker>,
    /// Messages sent since the last wake-up.
    unwoken: bool,
}

impl ShardLink {
    pub fn new(index: usize, tx: mpsc::Sender<Delivery>, waker: Arc<Waker>) -> ShardLink {
        ShardLink {
            index,
            tx,
            waker,
            unwoken: false,
        }
    }
}

/// Builds a message's forms: the frame, once; the compressed frame, once,
/// while some client takes it; the event-stream form, once, while some
/// stream is open.
struct Encoder<'a> {
    shared: &'a Shared,
    stats: &'a FeedStats,
    compression: std::cell::RefCell<Option<&'a mut Compression>>,
}

impl<'a> Encoder<'a> {
    fn new(
        shared: &'a Shared,
        stats: &'a FeedStats,
        compression: &'a mut Option<Compression>,
    ) -> Encoder<'a> {
        Encoder {
            shared,
            stats,
            compression: std::cell::RefCell::new(compression.as_mut()),
        }
    }

    fn encode(&self, channel: &str, seq: u64, data: &[u8]) -> Encoded {
        let frame = envelope::encode_frame(channel, seq, data);
        let deflated = self
            .compression
            .borrow_mut()
            .as_deref_mut()
            .filter(|_| self.shared.deflate_clients.load(Relaxed) > 0)
            .and_then(|c| deflate(c, self.stats, &frame));
        let sse = (self.shared.sse_clients.load(Relaxed) > 0).then(|| {
            Bytes::from(crate::protocol::sse::message_data(server_frame_payload(
                &frame,
            )))
        });
        Encoded {
            frame,
            deflated,
            sse,
        }
    }
}

/// Messages taken from the ingest queue per round before waking the shards:
/// many messages per wake-up when publishers are busy, one when they are not.
const BATCH: usize = 256;

impl Distributor {
    pub fn new(
        stats: Arc<FeedStats>,
        shared: Arc<Shared>,
        started: Instant,
        shards: Vec<ShardLink>,
        history: HistoryConfig,
        compression: Option<Compression>,
    ) -> Self {
        Distributor {
            compression,
            shared,
            started,
            stats,
            history,
            retained: VecDeque::new(),
            retained_bytes: 0,
            retained_frames: 0,
            shards,
            log: RateLimitedLog::new(Duration::from_secs(5)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs until its source is gone: every ingest task (a single node), or
    /// the fleet link.
    pub async fn run(mut self, mut source: Source) {
        let mut messages = Vec::with_capacity(BATCH);
        let mut events = Vec::with_capacity(BATCH);
        let ttl = self.history.channel_ttl;
        let mut sweep =
            tokio::time::interval((ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let more = async {
                match &mut source {
                    Source::Feed(rx) => rx.recv_many(&mut messages, BATCH).await,
                    Source::Fleet(rx) => rx.recv_many(&mut events, BATCH).await,
                }
            };
            tokio::select! {
                n = more => {
                    if n == 0 {
                        return;
                    }
                    for message in messages.drain(..) {
                        self.publish(&message).await;
                    }
                    for event in events.drain(..) {
                        self.apply(event).await;
                    }
                    self.wake_shards();
                }
                _ = sweep.tick() => {
                    let released = self.shared.registry.sweep(
                        ttl.as_millis() as u64,
                        self.now_ms(),
                        &self.shared.peers,
                    );
                    self.forget(released);
                    self.publish_history_stats();
                }
            }
        }
    }

    /// Accounts for a frame just added to `channel`'s history, and evicts
    /// the oldest frames anywhere while over the global cap.
    fn retain(&mut self, channel: &Arc<Channel>, seq: u64, len: usize, evicted: Released) {
        if self.history.per_channel.count == 0 {
            return;
        }
        self.retained.push_back((channel.clone(), seq));
        self.retained_bytes += len;
        self.retained_frames += 1;
        self.forget(evicted);
        while self.retained_bytes > self.history.total_bytes {
            let Some((ch, seq)) = self.retained.pop_front() else {
                break;
            };
            let released = ch.history().evict_if_oldest(seq);
            if released.frames > 0 {
                ch.note_trimmed();
                self.stats
                    .history_evicted_by_total_cap
                    .fetch_add(1, Relaxed);
            }
            self.forget(released);
        }
        if self.retained.len() > 2 * self.retained_frames + 1024 {
            // Mostly stale entries: keep only frames still in a history.
            self.retained
                .retain(|(ch, seq)| ch.history().oldest().is_some_and(|o| o <= *seq));
        }
    }

    fn forget(&mut self, released: Released) {
        self.retained_bytes = self.retained_bytes.saturating_sub(released.bytes);
        self.retained_frames = self.retained_frames.saturating_sub(released.frames);
    }

    fn publish_history_stats(&self) {
        self.stats
            .history_bytes
            .store(self.retained_bytes as u64, Relaxed);
        self.stats
            .history_frames
            .store(self.retained_frames as u64, Relaxed);
    }

    async fn publish(&mut self, message: &Incoming) {
        let env = match envelope::parse(&message.bytes) {
            Ok(env) => env,
            Err(kind) => return self.refuse(kind, message),
        };
        let now = self.now_ms();
        // A channel subscribers made up and left is retired as the feed may
        // be about to publish to it; the publish then finds it retired and
        // looks it up again (finding it gone, it creates it anew).
        let (channel, (seq, frame, evicted)) = loop {
            let channel = match self.shared.registry.get_or_create(&env.channel, now) {
                Ok(c) => c,
                Err(_) => return self.refuse(FeedError::TooManyChannels, message),
            };
            let encoder = Encoder::new(&self.shared, &self.stats, &mut self.compression);
            let published = channel.publish(self.history.per_channel, now, |seq| {
                encoder.encode(&channel.name, seq, env.data)
            });
            if let Some(published) = published {
                break (channel, published);
            }
        };
        if seq == 1 {
            channel.adopt(&self.shared.peers);
        }
        self.retain(&channel, seq, frame.len(), evicted);
        self.fan_out(&channel, seq, &frame).await;
    }

    /// Hands message `seq` of `channel` to every shard that has subscribers
    /// for it (waiting for a shard that is behind).
    async fn fan_out(&mut self, channel: &Arc<Channel>, seq: u64, frame: &Encoded) {
        self.stats.published.fetch_add(1, Relaxed);
        for link in &mut self.shards {
            if !channel.is_interested(link.index) {
                continue;
            }
            let delivery = Delivery {
                channel: channel.id,
                seq,
                message: frame.clone(),
            };
            match link.tx.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    // The shard is behind: make sure it is awake, then wait.
                    link.waker.wake();
                    if link.tx.send(delivery).await.is_err() {
                        continue;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => continue,
            }
            link.unwoken = true;
        }
    }

    /// In a fleet: applies one thing the link heard, in order.
    async fn apply(&mut self, event: crate::fleet::FleetEvent) {
        use crate::fleet::FleetEvent;
        let now = self.now_ms();
        match event {
            FleetEvent::Message { channel, seq, data } => {
                let encoder = Encoder::new(&self.shared, &self.stats, &mut self.compression);
                let Some((frame, evicted)) =
                    channel.publish_at(seq, self.history.per_channel, now, |seq| {
                        encoder.encode(&channel.name, seq, &data)
                    })
                else {
                    return;
                };
                self.retain(&channel, seq, frame.len(), evicted);
                self.fan_out(&channel, seq, &frame).await;
            }
            FleetEvent::Sync {
                channel,
                seq,
                retained,
            } => {
                self.sync(&channel, seq, retained);
                self.shared.upstream.note_synced();
                self.wake_all();
            }
            FleetEvent::Backfill {
                channel,
                from,
                retained,
            } => {
                let encoder = Encoder::new(&self.shared, &self.stats, &mut self.compression);
                let frames: Vec<(u64, Encoded)> = retained
                    .iter()
                    .map(|(s, data)| (*s, encoder.encode(&channel.name, *s, data)))
                    .collect();
                for (seq, len) in channel.backfill(from, frames, self.history.per_channel) {
                    self.retain(&channel, seq, len, Released::default());
                }
                self.publish_history_stats();
                self.shared.upstream.note_synced();
                self.wake_all();
            }
            FleetEvent::Forget { channel } => {
                if !channel.is_wanted(now) {
                    let released = channel.unsync();
                    self.forget(released);
                }
            }
            FleetEvent::Epoch { epoch, channels } => {
                let mut states: std::collections::HashMap<u64, (u64, Vec<(u64, Bytes)>)> = channels
                    .into_iter()
                    .map(|(c, seq, retained)| (c.id, (seq, retained)))
                    .collect();
                for channel in self.shared.registry.all() {
                    match states.remove(&channel.id) {
                        Some((seq, retained)) => self.sync(&channel, seq, retained),
                        None => {
                            let released = channel.unsync();
                            self.forget(released);
                        }
                    }
                }
                // Shards compare the epoch before each delivery, so none
                // meets the new epoch's seqs with the old one's.
                self.shared.set_epoch(&epoch);
                self.shared.upstream.note_synced();
                self.wake_all();
            }
        }
    }

    /// Takes the fleet's state of `channel`.
    fn sync(&mut self, channel: &Arc<Channel>, seq: u64, retained: Vec<(u64, Bytes)>) {
        let encoder = Encoder::new(&self.shared, &self.stats, &mut self.compression);
        let frames: Vec<(u64, Encoded)> = retained
            .iter()
            .map(|(s, data)| (*s, encoder.encode(&channel.name, *s, data)))
            .collect();
        let lens: Vec<(u64, usize)> = frames.iter().map(|(s, f)| (*s, f.len())).collect();
        let released = channel.sync(seq, frames, self.history.per_channel);
        self.forget(released);
        for (s, len) in lens {
            self.retain(channel, s, len, Released::default());
        }
        self.publish_history_stats();
    }

    fn wake_all(&mut self) {
        for link in &mut self.shards {
            link.waker.wake();
            link.unwoken = false;
        }
    }

    fn wake_shards(&mut self) {
        self.publish_history_stats();
        for link in &mut self.shards {
            if std::mem::take(&mut link.unwoken) {
                link.waker.wake();
            }
        }
    }

    fn refuse(&mut self, kind: FeedError, message: &Incoming) {
        self.stats.error(kind);
        let source = message.source;
        let preview = preview(&message.bytes);
        self.log.hit(|suppressed| {
            tracing::warn!(
                "refused a {source} feed message ({}): {preview}{}",
                kind.label(),
                if suppressed > 0 {
                    format!(" ({suppressed} more refused since the last report)")
                } else {
                    String::new()
                }
            );
        });
    }
}

/// In a fleet: checks each message fed here and passes it on to the
/// fleet's publisher, waiting while it is behind or Redis cannot be reached
/// (Unix publishers are then not read; UDP datagrams are refused at the
/// socket meanwhile).
pub async fn forward_to_fleet(
    mut incoming: mpsc::Receiver<Incoming>,
    outgoing: mpsc::Sender<crate::fleet::Outgoing>,
    stats: Arc<FeedStats>,
) {
    let mut log = RateLimitedLog::new(Duration::from_secs(5));
    while let Some(message) = incoming.recv().await {
        let env = match envelope::parse(&message.bytes) {
            Ok(env) => env,
            Err(kind) => {
                stats.error(kind);
                let preview = preview(&message.bytes);
                log.hit(|_| {
                    tracing::warn!(
                        "refused a {} feed message ({}): {preview}",
                        message.source,
                        kind.label()
                    )
                });
                continue;
            }
        };
        let out = crate::fleet::Outgoing {
            channel: env.channel.into_owned(),
            data: Bytes::copy_from_slice(env.data),
        };
        if outgoing.send(out).await.is_err() {
            return;
        }
    }
}

/// The start of a refused message, printable, for the log.
pub fn preview(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(80)];
    let mut s: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if bytes.len() > head.len() {
        s.push('…');
    }
    s
}
