//! The load generator's feed: publishes at a steady rate, each message
//! stamped in its data with a sequence number and the publish time
//! (`{"bench":[seq,ns],"pad":"…"}`), so receivers can measure loss and
//! latency whatever envelope the server wraps around the data.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::stats::monotonic_ns;

/// Where the bench publishes.
#[derive(Debug, Clone)]
pub enum FeedTarget {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for FeedTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(addr) = s.strip_prefix("udp:") {
            return addr
                .parse()
                .map(FeedTarget::Udp)
                .map_err(|_| format!("bad UDP address in '{s}'"));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(FeedTarget::Unix(path.into()));
        }
        Err(format!("feed must be udp:ADDR or unix:PATH, got '{s}'"))
    }
}

enum Sink {
    Udp(UdpSocket, SocketAddr),
    Unix(std::io::BufWriter<UnixStream>),
}

pub struct Publisher {
    sink: Sink,
    channel: String,
    pad: String,
    /// Seq of the last message published (continues across steps).
    pub seq: u64,
}

impl Publisher {
    /// `size`: bytes of each message's `data`.
    pub fn new(target: &FeedTarget, channel: &str, size: usize) -> std::io::Result<Publisher> {
        let sink = match target {
            FeedTarget::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                Sink::Udp(UdpSocket::bind(local)?, *addr)
            }
            FeedTarget::Unix(path) => {
                Sink::Unix(std::io::BufWriter::new(UnixStream::connect(path)?))
            }
        };
        // data = {"bench":[SEQ,NS],"pad":"…"}: ~45 bytes before the padding.
        let pad = realistic_pad(size.saturating_sub(45));
        Ok(Publisher {
            sink,
            channel: channel.to_owned(),
            pad,
            seq: 0,
        })
    }

    fn send_one(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let line = format!(
            r#"{{"channel":"{}","data":{{"bench":[{},{}],"pad":"{}"}}}}"#,
            self.channel,
            self.seq,
            monotonic_ns(),
            self.pad
        );
        match &mut self.sink {
            Sink::Udp(socket, addr) => socket.send_to(line.as_bytes(), *addr).map(drop),
            Sink::Unix(w) => {
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Udp(..) => Ok(()),
            Sink::Unix(w) => w.flush(),
        }
    }

    /// Publishes at `rate` messages per second for `duration`, paced per
    /// millisecond (bursts stay under one millisecond's worth). Returns how
    /// many were published.
    pub fn run(&mut self, rate: f64, duration: Duration) -> std::io::Result<u64> {
        let start = Instant::now();
        let first = self.seq;
        let total = (rate * duration.as_secs_f64()).round() as u64;
        loop {
            let elapsed = start.elapsed();
            let due = ((rate * elapsed.as_secs_f64()) as u64).min(total);
            while self.seq - first < due {
                self.send_one()?;
            }
            self.flush()?;
            if self.seq - first >= total {
                return Ok(total);
            }
            // Sleep to the next message (at most 1 ms: stay responsive to
            // timer slack and keep bursts small).
            let next = Duration::from_secs_f64((self.seq - first + 1) as f64 / rate);
            let wait = next
                .saturating_sub(start.elapsed())
                .min(Duration::from_millis(1));
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }
}

/// `len` bytes that compress like a live JSON feed (quotes: a fixed set of
/// symbols and exchanges, prices near each other, round-lot volumes, field
/// names repeated), not like a run of one byte: what permessage-deflate makes
/// of the bench messages is then what it makes of real ones. Single quotes:
/// the padding sits inside a JSON string.
fn realistic_pad(len: usize) -> String {
    const EXCHANGES: [&str; 4] = ["XNAS", "XNYS", "ARCX", "BATS"];
    let mut out = String::with_capacity(len + 128);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cents = 10_000 + x % 40_000;
        let spread = 1 + (x >> 20) % 5;
        out.push_str(&format!(
            "{{'symbol':'SYM{}','bid':{}.{:02},'ask':{}.{:02},'volume':{},'exchange':'{}'}},",
            i % 50,
            cents / 100,
            cents % 100,
            (cents + spread) / 100,
            (cents + spread) % 100,
            100 * (1 + (x >> 30) % 50),
            EXCHANGES[(x >> 40) as usize % 4]
        ));
        i += 1;
    }
    out.truncate(len);
    out
}
