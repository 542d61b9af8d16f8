//! Publishing a node's feed into the fleet: one task, one connection, one
//! batch at a time, so messages keep the order they were fed in; each batch
//! is one pipeline of script calls (one round trip, not one per message).
//! A batch that fails (timeout, lost connection) is sent again, whole and in
//! order, on a new connection; what an earlier try applied is recognised by
//! its idempotency key and not applied twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, watch};

use super::keys::{Keys, PUBLISH_SCRIPT};
use super::{FleetConfig, FleetStats, Health, Outgoing};

/// Messages sent in one pipeline, at most.
pub const BATCH: usize = 512;
/// Longest wait for a connection or a pipeline's answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis remembers an applied publish (its idempotency key).
const DONE_TTL_MS: u64 = 300_000;

/// What a publish became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now, with this seq.
    Applied(u64),
    /// Applied by an earlier try, with this seq.
    AlreadyApplied(u64),
    /// The fleet's epoch is this one, not the one sent: publish again.
    Epoch(String),
}

/// Reads the script's answer.
pub fn outcome(value: &Value) -> Option<Outcome> {
    let Value::Array(items) = value else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match (items.first().and_then(int), items.get(1)) {
        (Some(1), Some(v)) => int(v).map(Outcome::Applied),
        (Some(2), Some(v)) => int(v).map(Outcome::AlreadyApplied),
        (Some(0), Some(Value::BulkString(e))) => {
            Some(Outcome::Epoch(String::from_utf8_lossy(e).into_owned()))
        }
        (Some(0), Some(Value::SimpleString(e))) => Some(Outcome::Epoch(e.clone())),
        _ => None,
    }
}

/// A connection with the script loaded, and what it needs to publish.
pub struct Publisher {
    client: Client,
    keys: Keys,
    history: usize,
    log_ttl_ms: u64,
    sha: String,
    con: Option<MultiplexedConnection>,
}

impl Publisher {
    pub fn new(config: &FleetConfig) -> redis::RedisResult<Publisher> {
        Ok(Publisher {
            client: Client::open(config.url.as_str())?,
            keys: Keys::new(&config.prefix),
            history: config.history,
            log_ttl_ms: config.log_ttl.as_millis() as u64,
            sha: redis::Script::new(PUBLISH_SCRIPT).get_hash().to_owned(),
            con: None,
        })
    }

    async fn connection(&mut self) -> redis::RedisResult<&mut MultiplexedConnection> {
        if self.con.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT));
            let mut con = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(PUBLISH_SCRIPT)
                .query_async::<String>(&mut con)
                .await?;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("just connected"))
    }

    /// One try at `batch` (with idempotency key `ids[i]` each) under
    /// `epoch`; on an error the connection is dropped, to be made anew.
    pub async fn try_batch(
        &mut self,
        batch: &[Outgoing],
        ids: &[String],
        epoch: &str,
        proposed_epoch: &str,
    ) -> redis::RedisResult<Vec<Outcome>> {
        let mut pipe = redis::pipe();
        for (message, id) in batch.iter().zip(ids) {
            let channel = &message.channel;
            pipe.cmd("EVALSHA")
                .arg(&self.sha)
                .arg(4)
                .arg(self.keys.epoch())
                .arg(self.keys.seq(channel))
                .arg(self.keys.log(channel))
                .arg(self.keys.done(channel, id))
                .arg(proposed_epoch)
                .arg(epoch)
                .arg(&message.data[..])
                .arg(self.history.max(1))
                .arg(self.log_ttl_ms)
                .arg(DONE_TTL_MS)
                .arg(self.keys.live(channel));
        }
        let result = async {
            let con = self.connection().await?;
            pipe.query_async::<Vec<Value>>(con).await
        }
        .await;
        match result {
            Ok(values) => values
                .iter()
                .map(|v| {
                    outcome(v).ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "unexpected answer from the publish script",
                            format!("{v:?}"),
                        ))
                    })
                })
                .collect(),
            Err(e) => {
                self.con = None;
                Err(e)
            }
        }
    }
}

/// Publishes everything `rx` yields, in order, until it closes. `epoch` is
/// the fleet's epoch as this node knows it (updated from the answers).
pub async fn run(
    config: FleetConfig,
    mut rx: mpsc::Receiver<Outgoing>,
    epoch: Arc<watch::Sender<String>>,
    stats: Arc<FleetStats>,
    health: Arc<Health>,
) {
    let mut publisher = match Publisher::new(&config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("fleet: bad Redis URL: {e}");
            return;
        }
    };
    let mut counter = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let ids: Vec<String> = batch
            .iter()
            .map(|_| {
                counter += 1;
                format!("{}:{counter}", config.node)
            })
            .collect();
        let (mut pending, mut pending_ids) = (std::mem::take(&mut batch), ids);
        let mut attempt = 0u32;
        loop {
            let current = epoch.borrow().clone();
            let started = Instant::now();
            match publisher
                .try_batch(&pending, &pending_ids, &current, &super::node_name())
                .await
            {
                Ok(outcomes) => {
                    health.publisher(None);
                    stats.rtt_us.store(
                        started.elapsed().as_micros() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let mut again = (Vec::new(), Vec::new());
                    for ((message, id), outcome) in
                        pending.into_iter().zip(pending_ids).zip(outcomes)
                    {
                        match outcome {
                            Outcome::Applied(_) => FleetStats::add(&stats.publishes, 1),
                            Outcome::AlreadyApplied(_) => FleetStats::add(&stats.duplicates, 1),
                            Outcome::Epoch(fleet_epoch) => {
                                epoch.send_if_modified(|e| {
                                    let changed = *e != fleet_epoch;
                                    *e = fleet_epoch.clone();
                                    changed
                                });
                                again.0.push(message);
                                again.1.push(id);
                            }
                        }
                    }
                    if again.0.is_empty() {
                        break;
                    }
                    (pending, pending_ids) = again;
                }
                Err(e) => {
                    health.publisher(Some(e.to_string()));
                    FleetStats::add(&stats.publish_retries, 1);
                    tokio::time::sleep(super::backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_answers_are_read() {
        let v = |items: Vec<Value>| Value::Array(items);
        assert_eq!(
            outcome(&v(vec![Value::Int(1), Value::Int(7)])),
            Some(Outcome::Applied(7))
        );
        assert_eq!(
            outcome(&v(vec![Value::Int(2), Value::Int(7)])),
            Some(Outcome::AlreadyApplied(7))
        );
        assert_eq!(
            outcome(&v(vec![Value::Int(0), Value::BulkString(b"e2".to_vec())])),
            Some(Outcome::Epoch("e2".into()))
        );
        assert_eq!(outcome(&v(vec![Value::Int(9)])), None);
        assert_eq!(outcome(&Value::Nil), None);
    }
}
