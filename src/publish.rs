//! `ringcast publish`: sends one message (the argument) or one per stdin
//! line to a running server's feed, over its Unix socket (default) or UDP.
//!
//! The argument or line becomes the message's `data`: as is when it is valid
//! JSON (so `{"p":1}` or `42` stay structured), as a JSON string otherwise
//! (so `tail -f app.log | ringcast publish --channel logs` just works).
//! `--text` always sends a string.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::feed::envelope::{MAX_CHANNEL_NAME, is_valid_channel_name};

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Udp(SocketAddr),
    /// Straight into a fleet's Redis, as a fleet node publishes (no node
    /// needed): the fleet's seqs, its log, its live fan-out.
    Redis {
        url: String,
        prefix: String,
        history: usize,
    },
}

/// How long `publish --redis` tries to reach Redis before it gives up.
const REDIS_DEADLINE: Duration = Duration::from_secs(6);

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub channel: Option<String>,
    pub target: Target,
    pub text: bool,
}

/// A publish failure, worded for the user; `usage` errors exit 2, others 1.
#[derive(Debug)]
pub struct PublishError {
    pub message: String,
    pub usage: bool,
}

impl PublishError {
    fn usage(message: String) -> Self {
        PublishError {
            message,
            usage: true,
        }
    }

    fn io(message: String) -> Self {
        PublishError {
            message,
            usage: false,
        }
    }
}

/// Builds the envelope line for one piece of data (no trailing newline).
pub fn envelope(channel: Option<&str>, data: &str, text: bool) -> String {
    let data_json = if !text && serde_json::from_str::<&RawValue>(data).is_ok() {
        if data.contains('\n') || data.contains('\r') {
            // A line protocol cannot carry raw newlines: re-serialise compactly.
            serde_json::from_str::<serde_json::Value>(data)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| data.to_owned())
        } else {
            data.trim().to_owned()
        }
    } else {
        serde_json::Value::String(data.to_owned()).to_string()
    };
    match channel {
        Some(c) => format!("{{\"channel\":\"{c}\",\"data\":{data_json}}}"),
        None => format!("{{\"data\":{data_json}}}"),
    }
}

/// Publishes `data`, or every stdin line when `data` is `None`. Returns the
/// number of messages sent.
pub fn run(options: &PublishOptions, data: Option<&str>) -> Result<u64, PublishError> {
    if let Some(c) = &options.channel
        && !is_valid_channel_name(c)
    {
        return Err(PublishError::usage(format!(
            "invalid channel name '{c}': use 1-{MAX_CHANNEL_NAME} characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    let mut sink = Sink::open(&options.target)?;
    let channel = options.channel.as_deref();
    let mut sent = 0;
    match data {
        Some(d) => {
            sink.send(&envelope(channel, d, options.text))?;
            sent += 1;
        }
        None => {
            if io::IsTerminal::is_terminal(&io::stdin()) {
                let _ = writeln!(
                    io::stderr(),
                    "ringcast publish: no DATA given: publishing each line you type (Ctrl-D to end)"
                );
            }
            for line in io::stdin().lock().lines() {
                let line = line.map_err(|e| PublishError::io(format!("cannot read stdin: {e}")))?;
                let line = line.strip_suffix('\r').unwrap_or(&line);
                if line.is_empty() {
                    continue;
                }
                sink.send(&envelope(channel, line, options.text))?;
                sent += 1;
            }
        }
    }
    sink.finish()?;
    Ok(sent)
}

enum Sink {
    Unix(io::BufWriter<UnixStream>, PathBuf),
    Udp(UdpSocket, SocketAddr),
    Redis(Box<RedisSink>),
}

/// Messages for the fleet, sent in pipelined batches.
struct RedisSink {
    runtime: tokio::runtime::Runtime,
    publisher: crate::fleet::publisher::Publisher,
    url: String,
    node: String,
    sent: u64,
    epoch: String,
    batch: Vec<crate::fleet::Outgoing>,
}

impl RedisSink {
    fn open(url: &str, prefix: &str, history: usize) -> Result<RedisSink, PublishError> {
        let config = crate::fleet::FleetConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            history,
            log_ttl: Duration::from_secs(3600),
            node: crate::fleet::node_name(),
        };
        let publisher = crate::fleet::publisher::Publisher::new(&config)
            .map_err(|e| PublishError::usage(format!("--redis {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PublishError::io(format!("cannot start a runtime: {e}")))?;
        Ok(RedisSink {
            runtime,
            publisher,
            url: crate::fleet::redacted(url),
            node: config.node,
            sent: 0,
            epoch: String::new(),
            batch: Vec::new(),
        })
    }

    fn send(&mut self, line: &str) -> Result<(), PublishError> {
        let env = crate::feed::envelope::parse(line.as_bytes()).map_err(|kind| {
            PublishError::usage(format!("not a message the fleet takes ({})", kind.label()))
        })?;
        self.batch.push(crate::fleet::Outgoing {
            channel: env.channel.into_owned(),
            data: bytes::Bytes::copy_from_slice(env.data),
        });
        if self.batch.len() >= crate::fleet::publisher::BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Publishes the batch: retried (not applied twice) until it is in, or
    /// Redis stays out of reach past the deadline.
    fn flush(&mut self) -> Result<(), PublishError> {
        use crate::fleet::publisher::Outcome;
        let mut pending = std::mem::take(&mut self.batch);
        let mut ids: Vec<String> = pending
            .iter()
            .map(|_| {
                self.sent += 1;
                format!("{}:{}", self.node, self.sent)
            })
            .collect();
        let deadline = std::time::Instant::now() + REDIS_DEADLINE;
        let mut attempt = 0;
        while !pending.is_empty() {
            let (publisher, epoch) = (&mut self.publisher, &self.epoch);
            let result = self.runtime.block_on(publisher.try_batch(
                &pending,
                &ids,
                epoch,
                &crate::fleet::node_name(),
            ));
            match result {
                Ok(outcomes) => {
                    let mut again = (Vec::new(), Vec::new());
                    for ((message, id), outcome) in pending.into_iter().zip(ids).zip(outcomes) {
                        if let Outcome::Epoch(e) = outcome {
                            self.epoch = e;
                            again.0.push(message);
                            again.1.push(id);
                        }
                    }
                    (pending, ids) = again;
                }
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(PublishError::io(format!(
                        "cannot publish to Redis at {}: {e} (is it running, and is the URL right?)",
                        self.url
                    )));
                }
                Err(_) => {
                    std::thread::sleep(crate::fleet::backoff(attempt));
                    attempt += 1;
                }
            }
        }
        Ok(())
    }
}

impl Sink {
    fn open(target: &Target) -> Result<Sink, PublishError> {
        match target {
            Target::Redis {
                url,
                prefix,
                history,
            } => Ok(Sink::Redis(Box::new(RedisSink::open(
                url, prefix, *history,
            )?))),
            Target::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| {
                    PublishError::io(format!(
                        "cannot connect to the feed socket {}: {e} (is `ringcast serve` running? it listens on ./ringcast.sock by default; pass --unix PATH or --udp ADDR)",
                        path.display()
                    ))
                })?;
                Ok(Sink::Unix(io::BufWriter::new(stream), path.clone()))
            }
            Target::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                let socket = UdpSocket::bind(local)
                    .and_then(|s| s.connect(addr).map(|()| s))
                    .map_err(|e| {
                        PublishError::io(format!("cannot open a UDP socket to {addr}: {e}"))
                    })?;
                Ok(Sink::Udp(socket, *addr))
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<(), PublishError> {
        match self {
            Sink::Redis(redis) => redis.send(line),
            Sink::Unix(w, path) => w
                .write_all(line.as_bytes())
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|e| PublishError::io(format!("writing to {}: {e}", path.display()))),
            Sink::Udp(socket, addr) => {
                if line.len() > MAX_DATAGRAM {
                    return Err(PublishError::usage(format!(
                        "message of {} bytes is too large for UDP (max {MAX_DATAGRAM}); use the Unix socket",
                        line.len()
                    )));
                }
                socket
                    .send(line.as_bytes())
                    .map(drop)
                    .map_err(|e| udp_error(*addr, e))
            }
        }
    }

    /// Flushes, and for UDP waits briefly for the "port unreachable" a
    /// host reports when nothing listens there.
    fn finish(self) -> Result<(), PublishError> {
        match self {
            Sink::Redis(mut redis) => redis.flush(),
            Sink::Unix(mut w, path) => w
                .flush()
                .map_err(|e| PublishError::io(format!("writing to {}: {e}", path.display()))),
            Sink::Udp(socket, addr) => {
                let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1];
                match socket.recv(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Err(udp_error(addr, e))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

fn udp_error(addr: SocketAddr, e: io::Error) -> PublishError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        PublishError::io(format!(
            "nothing is listening on UDP {addr} (is `ringcast serve` running with --udp {addr}?)"
        ))
    } else {
        PublishError::io(format!("sending to UDP {addr}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_forms() {
        assert_eq!(
            envelope(Some("a"), "{\"p\": 1}", false),
            r#"{"channel":"a","data":{"p": 1}}"#
        );
        assert_eq!(envelope(None, "42", false), r#"{"data":42}"#);
        assert_eq!(envelope(None, "42", true), r#"{"data":"42"}"#);
        assert_eq!(
            envelope(None, "GET /x 200", false),
            r#"{"data":"GET /x 200"}"#
        );
        assert_eq!(
            envelope(None, "say \"hi\"", false),
            r#"{"data":"say \"hi\""}"#
        );
        assert_eq!(
            envelope(None, "{\n \"a\": 1\n}", false),
            r#"{"data":{"a":1}}"#
        );
    }
}
