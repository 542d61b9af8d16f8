//! The shard core in memory, with simulated time: no sockets, no threads, no
//! clock. `Sim` plays the driver and the kernel: it carries out the core's
//! actions, keeps what each connection was sent, and completes sends whole
//! (or, when told, partly, or not yet).

use std::collections::HashMap;

use super::*;
use crate::auth::{Authenticator, Claims};
use crate::limits::PeerLimits;
use crate::protocol::frame::encode_client_frame;

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A server frame as a client parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("utf-8 frame")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("json frame")
    }

    fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }

    fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// One connection as the simulated kernel sees it.
#[derive(Default)]
struct Peer {
    /// Every byte the server wrote to it.
    written: Vec<u8>,
    /// How far the test has read `written` (frames after the HTTP head).
    read: usize,
    /// A send the core started and the test has not completed (the bytes
    /// it covers, copied when it was started).
    in_flight: Option<Vec<u8>>,
    /// The pieces of every send, to see coalescing.
    sends: Vec<usize>,
    write_shut: bool,
    closed: Option<bool>,
}

struct Sim {
    core: ShardCore,
    shared: Arc<Shared>,
    now: u64,
    iov: Vec<IoSlicePtr>,
    peers: HashMap<ConnKey, Peer>,
    by_fd: HashMap<RawFd, ConnKey>,
    next_fd: RawFd,
    /// Complete every send at once, whole (a fast reader).
    auto_complete: bool,
    admin_requests: Vec<(ConnKey, AdminPage, bool)>,
}

impl Sim {
    fn new(config: CoreConfig) -> Sim {
        Sim::with_shared(
            config,
            Arc::new(Shared::new(
                1,
                1000,
                PeerLimits::new(0, 0, 0, false),
                "e1".into(),
                1_700_000_000_000,
            )),
        )
    }

    /// A fully started server's core (`Shared::ready` set).
    fn with_shared(config: CoreConfig, shared: Arc<Shared>) -> Sim {
        shared.ready.store(true, Ordering::Relaxed);
        Sim::starting(config, shared)
    }

    /// A core whose server has not said it is ready yet.
    fn starting(config: CoreConfig, shared: Arc<Shared>) -> Sim {
        Sim {
            core: ShardCore::new(0, Arc::new(config), shared.clone(), 0),
            shared,
            now: 0,
            iov: Vec::new(),
            peers: HashMap::new(),
            by_fd: HashMap::new(),
            next_fd: 100,
            auto_complete: true,
            admin_requests: Vec::new(),
        }
    }

    /// Carries out every action the core has.
    fn run(&mut self) {
        while let Some(action) = self.core.poll_action(&mut self.iov) {
            match action {
                Action::Send { key, .. } => {
                    let bytes: Vec<u8> = self
                        .iov
                        .iter()
                        // SAFETY: the core keeps these frames alive until this
                        // send is reported, which happens below or later.
                        .flat_map(|&(p, l)| unsafe { std::slice::from_raw_parts(p, l) })
                        .copied()
                        .collect();
                    let pieces = self.iov.len();
                    let peer = self.peers.get_mut(&key).expect("send to a known peer");
                    assert!(peer.in_flight.is_none(), "two sends in flight");
                    peer.sends.push(pieces);
                    if self.auto_complete {
                        peer.written.extend_from_slice(&bytes);
                        let n = bytes.len();
                        self.core.on_sent(key, SendResult::Wrote(n));
                    } else {
                        peer.in_flight = Some(bytes);
                    }
                }
                Action::ShutdownWrite { fd } => {
                    let key = self.by_fd[&fd];
                    self.peers.get_mut(&key).unwrap().write_shut = true;
                }
                Action::Close { key, abort, .. } => {
                    let peer = self.peers.get_mut(&key).unwrap();
                    assert!(peer.in_flight.is_none(), "closed with a send in flight");
                    peer.closed = Some(abort);
                    self.core.on_released(key);
                }
                Action::ForceShutdown { .. } => {}
                Action::AdminPage { key, page, head } => {
                    self.admin_requests.push((key, page, head))
                }
            }
        }
    }

    /// Completes the send in flight on `key` with `n` of its bytes written.
    fn complete(&mut self, key: ConnKey, n: usize) {
        let peer = self.peers.get_mut(&key).unwrap();
        let bytes = peer.in_flight.take().expect("a send in flight");
        peer.written.extend_from_slice(&bytes[..n]);
        self.core.on_sent(key, SendResult::Wrote(n));
        self.run();
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.core.tick(self.now);
        self.run();
    }

    fn accept(&mut self) -> ConnKey {
        let fd = self.next_fd;
        self.next_fd += 1;
        let key = self
            .core
            .on_accepted(fd, Some("192.0.2.1".parse().unwrap()));
        self.peers.insert(key, Peer::default());
        self.by_fd.insert(fd, key);
        self.run();
        key
    }

    fn recv(&mut self, key: ConnKey, bytes: &[u8]) {
        self.core.on_received(key, bytes);
        self.run();
    }

    /// Accepts a connection and upgrades it on `path`; returns it with its
    /// welcome notice read.
    fn connect(&mut self, path: &str) -> ConnKey {
        let key = self.accept();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
        self.recv(key, request.as_bytes());
        let head = self.http_head(key);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        key
    }

    /// The HTTP head the server wrote, consumed.
    fn http_head(&mut self, key: ConnKey) -> String {
        let peer = self.peers.get_mut(&key).unwrap();
        let end = peer.written[peer.read..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head")
            + 4;
        let head = String::from_utf8_lossy(&peer.written[peer.read..peer.read + end]).into_owned();
        peer.read += end;
        head
    }

    /// Everything written after what was read, as text.
    fn rest_text(&mut self, key: ConnKey) -> String {
        let peer = self.peers.get_mut(&key).unwrap();
        let text = String::from_utf8_lossy(&peer.written[peer.read..]).into_owned();
        peer.read = peer.written.len();
        text
    }

    /// The frames written since the last call.
    fn frames(&mut self, key: ConnKey) -> Vec<Frame> {
        let peer = self.peers.get_mut(&key).unwrap();
        let mut out = Vec::new();
        while let Some((frame, used)) = parse_frame(&peer.written[peer.read..]) {
            peer.read += used;
            out.push(frame);
        }
        out
    }

    fn peer(&self, key: ConnKey) -> &Peer {
        &self.peers[&key]
    }

    /// Publishes `data` on `channel` as the feed does, delivering it to the
    /// core when it has subscribers; returns the seq.
    fn publish(&mut self, channel: &str, data: &str) -> u64 {
        let ch = self
            .shared
            .registry
            .get_or_create(channel, self.now)
            .unwrap();
        let limits = registry::HistoryLimits {
            count: 100,
            bytes: 1 << 20,
        };
        let (seq, frame, _) = ch
            .publish(limits, self.now, |seq| {
                Encoded::plain(message_frame(channel, seq, data))
            })
            .expect("a channel the test just looked up");
        if ch.is_interested(0) {
            self.core.deliver(Delivery {
                channel: ch.id,
                seq,
                message: frame,
            });
            self.run();
        }
        seq
    }
}

fn message_frame(channel: &str, seq: u64, data: &str) -> Bytes {
    let text = format!(r#"{{"channel":"{channel}","seq":{seq},"data":{data}}}"#);
    encode_server_frame(OpCode::Text, text.as_bytes())
}

fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= at + len).then(|| {
        (
            Frame {
                opcode: buf[0] & 0x0f,
                payload: buf[at..at + len].to_vec(),
            },
            at + len,
        )
    })
}

fn client_text(text: &str) -> Vec<u8> {
    encode_client_frame(true, 1, text.as_bytes(), [1, 2, 3, 4])
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.opcode == 1)
        .map(|f| f.json())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

fn config() -> CoreConfig {
    CoreConfig {
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(5),
        ..CoreConfig::default()
    }
}

#[test]
fn handshake_subscribe_and_fan_out() {
    let mut sim = Sim::new(config());
    let a = sim.connect("/ws?channels=prices");
    let b = sim.connect("/ws?channels=prices,news");
    for key in [a, b] {
        let welcome = sim.frames(key)[0].json();
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["epoch"], "e1");
    }
    sim.publish("prices", r#"{"p":1}"#);
    sim.publish("news", r#""hello""#);
    let got_a = sim.frames(a);
    let got_b = sim.frames(b);
    assert_eq!(got_a.len(), 1);
    assert_eq!(
        got_a[0].text(),
        r#"{"channel":"prices","seq":1,"data":{"p":1}}"#
    );
    assert_eq!(seqs(&got_b), vec![1, 1]);
    assert_eq!(got_b[1].json()["channel"], "news");
    assert_eq!(
        sim.core.stats.counters[Counter::FramesDelivered as usize],
        3
    );
}

#[test]
fn frames_queued_during_a_send_leave_together() {
    let mut sim = Sim::new(config());
    let a = sim.connect("/ws?channels=c");
    sim.frames(a);
    sim.auto_complete = false;
    sim.publish("c", "1");
    // The first message's send is in flight; three more queue behind it.
    for n in 2..=4 {
        sim.publish("c", &n.to_string());
    }
    assert_eq!(sim.peer(a).sends.last(), Some(&1));
    let first = sim.peer(a).in_flight.clone().unwrap().len();
    sim.complete(a, first);
    assert_eq!(
        sim.peer(a).sends.last(),
        Some(&3),
        "one send of three frames"
    );
    let second = sim.peer(a).in_flight.clone().unwrap().len();
    sim.complete(a, second);
    assert_eq!(seqs(&sim.frames(a)), vec![1, 2, 3, 4]);
}

#[test]
fn a_partial_send_resumes_at_the_right_byte() {
    let mut sim = Sim::new(config());
    let a = sim.connect("/ws?channels=c");
    sim.frames(a);
    sim.auto_complete = false;
    sim.publish("c", r#""abcdefghij""#);
    sim.publish("c", r#""klmnopqrst""#);
    let len = sim.peer(a).in_flight.clone().unwrap().len();
    // The kernel took 7 bytes, then 5, then the rest.
    sim.complete(a, 7);
    sim.complete(a, 5);
    let rest = sim.peer(a).in_flight.clone().unwrap();
    assert_eq!(
        rest.len(),
        len - 12 + message_frame("c", 2, r#""klmnopqrst""#).len()
    );
    sim.complete(a, rest.len());
    let frames = sim.frames(a);
    assert_eq!(seqs(&frames), vec![1, 2]);
    assert_eq!(frames[1].json()["data"], "klmnopqrst");
    assert!(sim.peer(a).in_flight.is_none());
    assert_eq!(sim.core.stats.gauge(Gauge::QueuedBytes), 0);
}

#[test]
fn a_slow_client_gets_4008_then_a_reset_after_the_grace() {
    let mut sim = Sim::new(CoreConfig {
        high_water: 4096,
        ..config()
    });
    let slow = sim.connect("/ws?channels=c");
    let fast = sim.connect("/ws?channels=c");
    sim.frames(slow);
    sim.frames(fast);
    // The slow one's first send never completes; the fast one reads all.
    sim.auto_complete = false;
    sim.publish("c", "0");
    let first = sim.peer(fast).in_flight.clone().unwrap().len();
    sim.complete(fast, first);
    let data = format!(r#""{}""#, "x".repeat(500));
    let mut published = 1;
    while sim.peer(slow).closed.is_none() && published < 20 {
        sim.publish("c", &data);
        published += 1;
        if let Some(bytes) = sim.peer(fast).in_flight.clone() {
            sim.complete(fast, bytes.len());
        }
        if sim.core.stats.counters[Counter::SlowClientCuts as usize] > 0 {
            break;
        }
    }
    assert_eq!(sim.core.stats.counters[Counter::SlowClientCuts as usize], 1);
    assert!(published < 20, "cut after about 4 KiB queued");
    // Its backlog was dropped; what is still to go is the frame in flight
    // and the close frame with 4008.
    assert!(sim.peer(slow).closed.is_none());
    while let Some(bytes) = sim.peer(slow).in_flight.clone() {
        sim.complete(slow, bytes.len());
    }
    let frames = sim.frames(slow);
    let close = frames.last().unwrap();
    assert_eq!(close.close_code(), Some(4008));
    assert!(close.close_reason().contains("slow consumer"));
    assert!(sim.peer(slow).write_shut);
    // The peer never closes: reset after the grace.
    sim.advance(CLOSE_GRACE_MS - 10);
    assert!(sim.peer(slow).closed.is_none());
    sim.advance(20);
    assert_eq!(sim.peer(slow).closed, Some(true), "reset (abort)");
    // The fast client lost nothing.
    sim.auto_complete = true;
    sim.publish("c", "99");
    if let Some(bytes) = sim.peer(fast).in_flight.clone() {
        sim.complete(fast, bytes.len());
    }
    let got = seqs(&sim.frames(fast));
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    assert_eq!(*got.last().unwrap(), published as u64 + 1);
}

#[test]
fn resume_switches_from_replay_to_live_without_gap_or_duplicate() {
    let mut sim = Sim::new(CoreConfig {
        high_water: 4 << 20,
        ..config()
    });
    // A subscriber keeps the channel's history alive; 30 messages go by.
    let keeper = sim.connect("/ws?channels=c");
    for n in 1..=30 {
        sim.publish("c", &n.to_string());
    }
    sim.frames(keeper);
    // A client resumes from 10 while its sends complete only when told:
    // the replay is in its queue when message 31 arrives.
    sim.auto_complete = false;
    let key = sim.accept();
    let request = format!("GET /ws?channels=c&since=10 HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(key, request.as_bytes());
    sim.publish("c", "31");
    while let Some(bytes) = sim.peer(key).in_flight.clone() {
        sim.complete(key, bytes.len());
        if sim.peer(key).in_flight.is_none() {
            break;
        }
    }
    sim.publish("c", "32");
    while let Some(bytes) = sim.peer(key).in_flight.clone() {
        sim.complete(key, bytes.len());
    }
    sim.http_head(key);
    let frames = sim.frames(key);
    assert_eq!(frames[0].json()["type"], "welcome");
    assert_eq!(frames[0].json()["channels"]["c"], 30);
    assert_eq!(seqs(&frames), (11..=32).collect::<Vec<_>>());
    assert_eq!(
        sim.core.stats.counters[Counter::FramesReplayed as usize],
        20
    );
}

#[test]
fn heartbeat_pings_and_closes_a_silent_client() {
    let mut sim = Sim::new(CoreConfig {
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(10),
        ..config()
    });
    let quiet = sim.connect("/ws");
    let lively = sim.connect("/ws");
    sim.frames(quiet);
    sim.frames(lively);
    sim.advance(29_990);
    assert!(sim.frames(quiet).is_empty());
    sim.advance(20);
    assert_eq!(sim.frames(quiet)[0].opcode, 9, "a ping after the interval");
    assert_eq!(sim.frames(lively)[0].opcode, 9);
    sim.recv(lively, &encode_client_frame(true, 10, b"", [9, 9, 9, 9]));
    // Deadlines fire on the wheel's next tick (20 ms) at the latest.
    sim.advance(10_000 + Connections::TICK_MS);
    let frames = sim.frames(quiet);
    assert_eq!(frames[0].close_code(), Some(1001));
    assert!(frames[0].close_reason().contains("ping timeout"));
    assert!(
        sim.frames(lively).is_empty(),
        "an answered ping closes nothing"
    );
    // The next ping comes one interval after the last one.
    sim.advance(20_000 + Connections::TICK_MS);
    assert_eq!(sim.frames(lively)[0].opcode, 9);
}

#[test]
fn a_handshake_that_never_completes_is_reset() {
    let mut sim = Sim::new(config());
    let key = sim.accept();
    sim.recv(key, b"GET /ws HTTP/1.1\r\nHo");
    sim.advance(4_990);
    assert!(sim.peer(key).closed.is_none());
    sim.advance(20);
    assert_eq!(sim.peer(key).closed, Some(true));
    assert!(sim.peer(key).written.is_empty());
    assert_eq!(
        sim.core.stats.closed[CloseReason::HandshakeTimeout as usize],
        1
    );
}

#[test]
fn an_expiring_token_closes_4001_unless_refreshed() {
    let secret = b"0123456789abcdef0123456789abcdef-core".to_vec();
    let auth = Arc::new(Authenticator::new(std::slice::from_ref(&secret)));
    let mut sim = Sim::new(CoreConfig {
        auth: Some(auth),
        ..config()
    });
    // The server clock starts at Unix time 1,700,000,000 (see Sim::new).
    let token = |exp: u64| {
        let claims = Claims {
            exp,
            nbf: None,
            channels: vec!["c".into()],
            sub: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    let start = 1_700_000_000;
    let expiring = sim.connect(&format!("/ws?channels=c&token={}", token(start + 60)));
    let refreshed = sim.connect(&format!("/ws?channels=c&token={}", token(start + 60)));
    sim.frames(expiring);
    sim.frames(refreshed);
    sim.advance(50_000);
    sim.frames(expiring);
    sim.frames(refreshed);
    let refresh = format!(r#"{{"type":"auth","token":"{}"}}"#, token(start + 600));
    sim.recv(refreshed, &client_text(&refresh));
    assert_eq!(sim.frames(refreshed)[0].json()["type"], "authenticated");
    sim.advance(10_000 + Connections::TICK_MS);
    let frames = sim.frames(expiring);
    assert_eq!(frames.last().unwrap().close_code(), Some(4001));
    assert!(
        frames
            .last()
            .unwrap()
            .close_reason()
            .contains("token expired")
    );
    assert!(
        sim.frames(refreshed).iter().all(|f| f.opcode != 8),
        "the refreshed one stays"
    );
    // Without a token at all: 4001 after the auth timeout.
    let anonymous = sim.connect("/ws?channels=c");
    sim.frames(anonymous);
    sim.advance(10_000 + Connections::TICK_MS);
    assert_eq!(
        sim.frames(anonymous).last().unwrap().close_code(),
        Some(4001)
    );
}

#[test]
fn drain_closes_every_websocket_with_1001_and_answers_503() {
    let mut sim = Sim::new(config());
    let clients: Vec<ConnKey> = (0..5).map(|_| sim.connect("/ws?channels=c")).collect();
    for &c in &clients {
        sim.frames(c);
    }
    sim.shared.draining.store(true, Ordering::Relaxed);
    assert!(!sim.shared.drain_acknowledged());
    sim.core.drain();
    sim.run();
    // The shard says it has handled the drain only with its counts
    // published: the control plane must not see 0 clients before that.
    assert!(sim.shared.drain_acknowledged());
    assert_eq!(sim.shared.websockets_open(), 5);
    for &c in &clients {
        let frames = sim.frames(c);
        assert_eq!(frames[0].close_code(), Some(1001));
        // The client answers the close; the server closes normally.
        sim.recv(
            c,
            &encode_client_frame(true, 8, &1001u16.to_be_bytes(), [1; 4]),
        );
        sim.core.on_read_closed(c);
        sim.run();
        assert_eq!(sim.peer(c).closed, Some(false));
    }
    let late = sim.accept();
    let request = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(late, request.as_bytes());
    assert!(sim.http_head(late).starts_with("HTTP/1.1 503"));
    let health = sim.accept();
    sim.recv(health, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(sim.http_head(health).starts_with("HTTP/1.1 503"));
    assert_eq!(sim.core.conns.websockets(), 0);
}

#[test]
fn a_request_followed_at_once_by_a_half_close_is_answered() {
    let mut sim = Sim::new(config());
    let key = sim.accept();
    sim.auto_complete = false;
    // The request and the end of stream arrive in the same turn, before
    // the driver has started the reply's send.
    sim.core
        .on_received(key, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.core.on_read_closed(key);
    sim.run();
    let bytes = sim.peer(key).in_flight.clone().expect("the reply is sent");
    sim.complete(key, bytes.len());
    assert!(sim.rest_text(key).starts_with("HTTP/1.1 200"));
    assert_eq!(sim.peer(key).closed, Some(false), "then a normal close");
}

#[test]
fn admin_pages_are_rendered_off_the_core_and_answered_when_they_come() {
    let mut sim = Sim::new(config());
    let key = sim.accept();
    sim.recv(key, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(sim.admin_requests, vec![(key, AdminPage::Metrics, false)]);
    assert!(sim.peer(key).written.is_empty(), "nothing rendered here");
    let response = crate::protocol::handshake::http_response(200, "text/plain", b"m 1\n", &[]);
    sim.core.on_response(key, response);
    sim.run();
    assert!(sim.rest_text(key).ends_with("m 1\n"));
    // An answer for a connection that went away is dropped.
    let gone = sim.accept();
    sim.recv(gone, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.core.on_read_closed(gone);
    sim.run();
    sim.core.on_response(gone, b"late".to_vec());
    sim.run();
    assert!(sim.peer(gone).written.is_empty());
    // The status page and what it reads go the same way; HEAD is passed on.
    for (request, page, head) in [
        ("GET / HTTP/1.1", AdminPage::Status, false),
        ("HEAD /status.json HTTP/1.1", AdminPage::StatusJson, true),
    ] {
        sim.admin_requests.clear();
        let key = sim.accept();
        sim.recv(key, format!("{request}\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(sim.admin_requests, vec![(key, page, head)], "{request}");
    }
}

#[test]
fn with_a_metrics_listener_the_admin_pages_are_not_on_the_shared_one() {
    let mut sim = Sim::new(CoreConfig {
        serve_admin: false,
        ..config()
    });
    for path in ["/", "/status.json", "/metrics"] {
        let key = sim.accept();
        sim.recv(
            key,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(sim.admin_requests.is_empty(), "{path}");
        let text = sim.rest_text(key);
        assert!(text.starts_with("HTTP/1.1 404"), "{path}: {text}");
        assert!(text.contains("--metrics-listen"), "{path}: {text}");
    }
}

#[test]
fn connections_over_the_limit_are_answered_503_and_counted() {
    let mut sim = Sim::new(CoreConfig {
        max_connections: 2,
        ..config()
    });
    let _a = sim.connect("/ws");
    let _b = sim.connect("/ws");
    let c = sim.accept();
    assert!(sim.http_head(c).starts_with("HTTP/1.1 503"));
    assert_eq!(
        sim.core.stats.counters[Counter::ConnectionsRefused as usize],
        1
    );
    sim.core.on_read_closed(c);
    sim.run();
    assert_eq!(sim.shared.connections.load(Ordering::Relaxed), 2);
}

#[test]
fn pipelined_frames_behind_the_upgrade_are_read() {
    let mut sim = Sim::new(config());
    let key = sim.accept();
    let mut bytes = format!("GET /ws?channels= HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n").into_bytes();
    bytes.extend(client_text(r#"{"type":"subscribe","channels":["late"]}"#));
    bytes.extend(client_text(r#"{"type":"ping"}"#));
    sim.recv(key, &bytes);
    sim.http_head(key);
    let frames = sim.frames(key);
    let types: Vec<_> = frames.iter().map(|f| f.json()["type"].clone()).collect();
    assert_eq!(types, vec!["welcome", "subscribed", "pong"]);
    sim.publish("late", "1");
    assert_eq!(seqs(&sim.frames(key)), vec![1]);
}

#[test]
fn a_frame_split_anywhere_is_read_the_same() {
    let message = client_text(r#"{"type":"ping"}"#);
    for split in 1..message.len() {
        let mut sim = Sim::new(config());
        let key = sim.connect("/ws");
        sim.frames(key);
        sim.recv(key, &message[..split]);
        sim.recv(key, &message[split..]);
        assert_eq!(
            sim.frames(key)[0].json()["type"],
            "pong",
            "split at {split}"
        );
    }
}

#[test]
fn the_last_subscriber_leaving_takes_the_channel_off_this_shard() {
    let mut sim = Sim::new(config());
    let a = sim.connect("/ws?channels=c");
    let b = sim.connect("/ws?channels=c,d");
    let c = sim.shared.registry.get("c").unwrap();
    assert!(c.is_interested(0));
    assert_eq!(sim.core.channels.subscriptions(), 3);
    assert_eq!(c.subscribers(), 2, "the status page's count");
    sim.recv(
        a,
        &client_text(r#"{"type":"unsubscribe","channels":["c"]}"#),
    );
    assert!(c.is_interested(0), "b is still on it");
    assert_eq!(c.subscribers(), 1);
    sim.core.on_read_closed(b);
    sim.run();
    assert!(!c.is_interested(0), "the feed stops sending it here");
    assert!(sim.core.channels.local(c.id).is_none());
    assert_eq!(sim.core.channels.subscriptions(), 0);
    assert_eq!(c.subscribers(), 0);
    // Subscribing again starts from the channel's seq at that moment.
    sim.publish("c", "1");
    sim.recv(a, &client_text(r#"{"type":"subscribe","channels":["c"]}"#));
    sim.frames(a);
    sim.publish("c", "2");
    assert_eq!(seqs(&sim.frames(a)), vec![2]);
}

#[test]
fn healthz_says_starting_until_the_server_is_fully_up() {
    let shared = Arc::new(Shared::new(
        1,
        10,
        PeerLimits::new(0, 0, 0, false),
        "e1".into(),
        0,
    ));
    let mut sim = Sim::starting(config(), shared);
    let early = sim.accept();
    sim.recv(early, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = sim.rest_text(early);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.ends_with("starting\n"), "{answer}");
    // The feed sockets are bound: the server says it is ready.
    sim.shared.ready.store(true, Ordering::Relaxed);
    let later = sim.accept();
    sim.recv(later, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(sim.rest_text(later).starts_with("HTTP/1.1 200"));
}

#[test]
fn made_up_channels_pin_nothing_and_their_creation_is_bounded() {
    // Eleven subscriptions: `real` and ten made-up ones at a time.
    let mut sim = Sim::new(CoreConfig {
        max_subscriptions: 11,
        ..config()
    });
    let flood = sim.connect("/ws?channels=real");
    sim.frames(flood);
    let round = |n: usize| -> Vec<String> { (0..10).map(|i| format!("x{n}-{i}")).collect() };
    let subscribe = |names: &[String]| {
        client_text(&serde_json::json!({"type": "subscribe", "channels": names}).to_string())
    };
    let unsubscribe = |names: &[String]| {
        client_text(&serde_json::json!({"type": "unsubscribe", "channels": names}).to_string())
    };
    // Ten made-up names, then left: the registry forgets them at once.
    sim.recv(flood, &subscribe(&round(0)));
    assert_eq!(sim.shared.registry.len(), 11);
    sim.recv(flood, &unsubscribe(&round(0)));
    assert_eq!(sim.shared.registry.len(), 1, "only `real` is left");
    let types: Vec<String> = sim
        .frames(flood)
        .iter()
        .map(|f| f.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["subscribed", "unsubscribed"]);
    // The connection's allowance of new channels is spent for a minute:
    // the next made-up names are refused, an existing one is still joined.
    let mut next = round(1)[..9].to_vec();
    next.push("real2".into());
    sim.publish("real2", "1");
    sim.recv(flood, &subscribe(&next));
    let frames = sim.frames(flood);
    assert_eq!(frames[0].json()["type"], "subscribed");
    assert_eq!(
        frames[0].json()["channels"],
        serde_json::json!({"real2": 1})
    );
    assert_eq!(frames[1].json()["type"], "error");
    let why = frames[1].json()["reason"].as_str().unwrap().to_string();
    assert!(why.contains("'x1-0' and 8 more not created"), "{why}");
    assert!(why.contains("too fast"), "{why}");
    assert_eq!(sim.shared.registry.len(), 2);
    assert_eq!(
        sim.core.stats.counters[Counter::ChannelRefusals as usize],
        9
    );
    // A minute on, it may create again.
    sim.advance(60_000);
    sim.frames(flood);
    sim.recv(flood, &subscribe(&round(2)[..1]));
    assert_eq!(sim.frames(flood)[0].json()["type"], "subscribed");
    // Other clients, and publishers, were never locked out.
    let other = sim.connect("/ws?channels=brand-new");
    assert_eq!(sim.frames(other)[0].json()["type"], "welcome");
    sim.publish("brand-new", "7");
    assert_eq!(seqs(&sim.frames(other)), vec![1]);
}

#[test]
fn a_resume_from_another_epoch_is_reset_and_replayed_from_this_epoch_s_start() {
    // The Sim's server runs epoch "e1".
    let mut sim = Sim::new(config());
    let keeper = sim.connect("/ws?channels=c");
    for n in 1..=10 {
        sim.publish("c", &n.to_string());
    }
    sim.frames(keeper);
    // Positions of the same epoch: replayed from there, as ever.
    let same = sim.connect("/ws?channels=c&since=5&epoch=e1");
    let frames = sim.frames(same);
    assert_eq!(frames[0].json()["type"], "welcome");
    assert_eq!(seqs(&frames), (6..=10).collect::<Vec<_>>());
    // Seq 5 of an earlier run is not this run's seq 5: reset to 0, then all
    // ten, not 6..10 as if they followed the old ones.
    let stale = sim.connect("/ws?channels=c&since=5&epoch=e0");
    let frames = sim.frames(stale);
    assert_eq!(frames[0].json()["type"], "welcome");
    assert_eq!(frames[1].json()["type"], "reset");
    assert_eq!(frames[1].json()["current"], 0);
    assert_eq!(seqs(&frames), (1..=10).collect::<Vec<_>>());
    // A stale position beyond this epoch's end is treated the same way.
    let ahead = sim.connect("/ws?channels=c&since=50&epoch=e0");
    let frames = sim.frames(ahead);
    assert_eq!(frames[1].json()["current"], 0);
    assert_eq!(seqs(&frames), (1..=10).collect::<Vec<_>>());
    // Where this epoch's start is no longer retained (the Sim keeps 100), a
    // gap notice says so before the rest.
    for n in 11..=150 {
        sim.publish("c", &n.to_string());
    }
    sim.frames(keeper);
    let late = sim.connect("/ws?channels=c&since=5&epoch=e0");
    let frames = sim.frames(late);
    let notices: Vec<String> = frames[1..3]
        .iter()
        .map(|f| f.json()["type"].to_string())
        .collect();
    assert_eq!(notices, [r#""reset""#, r#""gap""#]);
    assert_eq!(
        (
            frames[2].json()["from"].clone(),
            frames[2].json()["to"].clone()
        ),
        (1.into(), 50.into())
    );
    assert_eq!(seqs(&frames), (51..=150).collect::<Vec<_>>());
}

#[test]
fn a_compressed_connection_keeps_no_inflate_state_between_messages() {
    let mut sim = Sim::new(config());
    let key = sim.accept();
    let request = format!(
        "GET /ws?channels=a HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    sim.recv(key, request.as_bytes());
    let head = sim.http_head(key);
    assert!(head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"), "{head}");
    let mut deflater = crate::protocol::deflate::Deflater::new(15).unwrap();
    let compressed = deflater.compress(br#"{"type":"subscribe","channels":["b"]}"#);
    let mut frame = encode_client_frame(true, 1, &compressed, [1, 2, 3, 4]);
    frame[0] |= 0x40;
    // Split mid-message: the reader exists while the message is half-read…
    let (first, second) = frame.split_at(frame.len() / 2);
    sim.recv(key, first);
    let reading = |sim: &Sim| {
        matches!(
            &sim.core.conns.get(key.slot).unwrap().input,
            Input::Frames(Some(_))
        )
    };
    assert!(reading(&sim));
    sim.recv(key, second);
    // …and is gone once it is done: nothing of the inflater stays either.
    assert!(
        !reading(&sim),
        "an idle compressed connection holds no reader"
    );
    let frames = sim.frames(key);
    assert_eq!(frames.last().unwrap().json()["type"], "subscribed");
}

/// A core whose registry is a fleet's: new channels wait to be synced.
fn fleet_sim() -> (Sim, Arc<std::sync::Mutex<Vec<String>>>) {
    let sim = Sim::new(config());
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = told.clone();
    sim.shared.registry.join_fleet(Box::new(move |c| {
        seen.lock().unwrap().push(c.name.to_string());
    }));
    (sim, told)
}

const FLEET_LIMITS: registry::HistoryLimits = registry::HistoryLimits {
    count: 100,
    bytes: 1 << 20,
};

/// What the fleet link and distributor do for `name`: its state at `seq`,
/// with `retained` messages, then the shards are told.
fn sync_from_fleet(sim: &mut Sim, name: &str, seq: u64, retained: std::ops::RangeInclusive<u64>) {
    let ch = sim.shared.registry.get(name).unwrap();
    let frames = retained.map(|s| (s, Encoded::plain(message_frame(name, s, &s.to_string()))));
    ch.sync(seq, frames, FLEET_LIMITS);
    sim.shared.upstream.note_synced();
    sim.core.on_upstream_change();
    sim.run();
}

/// Delivers message `seq` of `name` as the fleet's distributor does.
fn deliver_from_fleet(sim: &mut Sim, name: &str, seq: u64) {
    let ch = sim.shared.registry.get(name).unwrap();
    let (frame, _) = ch
        .publish_at(seq, FLEET_LIMITS, sim.now, |s| {
            Encoded::plain(message_frame(name, s, &s.to_string()))
        })
        .expect("newer");
    sim.core.deliver(Delivery {
        channel: ch.id,
        seq,
        message: frame,
    });
    sim.run();
}

#[test]
fn in_a_fleet_a_subscriber_waits_for_its_channel_to_be_synced_then_resumes_from_it() {
    let (mut sim, told) = fleet_sim();
    let key = sim.accept();
    let request = format!("GET /ws?channels=c&since=c:7 HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(key, request.as_bytes());
    assert!(
        sim.peer(key).written.is_empty(),
        "nothing until the channel is synced"
    );
    assert_eq!(
        told.lock().unwrap().as_slice(),
        ["c"],
        "the fleet is asked to sync it"
    );
    // The fleet holds 5..10 of c: the client (at 7) gets 8..10, then live.
    sync_from_fleet(&mut sim, "c", 10, 5..=10);
    assert!(sim.http_head(key).starts_with("HTTP/1.1 101"));
    let frames = sim.frames(key);
    assert_eq!(frames[0].json()["channels"]["c"], 10);
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| f.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [8, 9, 10]);
    deliver_from_fleet(&mut sim, "c", 11);
    assert_eq!(sim.frames(key)[0].json()["seq"], 11);
    // A channel synced already does not make the next subscriber wait.
    let other = sim.connect("/ws?channels=c");
    assert_eq!(sim.frames(other)[0].json()["channels"]["c"], 11);
}

#[test]
fn in_a_fleet_a_subscriber_is_told_when_its_channel_cannot_be_synced() {
    let (mut sim, _) = fleet_sim();
    let key = sim.accept();
    let request = format!("GET /ws?channels=c HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(key, request.as_bytes());
    sim.advance(upstream::FLEET_WAIT_MS - 1);
    assert!(sim.peer(key).written.is_empty());
    sim.advance(2);
    assert!(sim.http_head(key).starts_with("HTTP/1.1 101"));
    let close = sim.frames(key).pop().unwrap();
    assert_eq!(close.close_code(), Some(1013), "try again later");
    // An event stream, whose head was never sent, is answered 503.
    let stream = sim.accept();
    sim.recv(stream, b"GET /sse?channels=d HTTP/1.1\r\nHost: x\r\n\r\n");
    // (Deadlines fire on the timer wheel's next tick.)
    sim.advance(upstream::FLEET_WAIT_MS + 100);
    let answer = sim.rest_text(stream);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[test]
fn a_hole_the_fleet_could_not_fill_is_a_gap_notice_never_silent() {
    let (mut sim, _) = fleet_sim();
    let key = sim.accept();
    let request = format!("GET /ws?channels=c HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(key, request.as_bytes());
    sync_from_fleet(&mut sim, "c", 3, 1..=3);
    sim.http_head(key);
    sim.frames(key);
    deliver_from_fleet(&mut sim, "c", 7);
    let frames = sim.frames(key);
    let gap = frames[0].json();
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["from"].as_u64(),
            gap["to"].as_u64()
        ),
        (Some("gap"), Some(4), Some(6))
    );
    assert_eq!(frames[1].json()["seq"], 7);
}

#[test]
fn a_new_fleet_epoch_resets_every_subscriber_to_where_its_channel_is_now() {
    let (mut sim, _) = fleet_sim();
    let key = sim.accept();
    let request = format!("GET /ws?channels=c HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(key, request.as_bytes());
    sync_from_fleet(&mut sim, "c", 40, 38..=40);
    sim.http_head(key);
    assert_eq!(sim.frames(key)[0].json()["epoch"], "e1");
    // Redis lost its data: c starts over in epoch e2.
    let ch = sim.shared.registry.get("c").unwrap();
    ch.sync(0, std::iter::empty(), FLEET_LIMITS);
    sim.shared.set_epoch("e2");
    deliver_from_fleet(&mut sim, "c", 1);
    let frames = sim.frames(key);
    let reset = frames[0].json();
    assert_eq!(
        (reset["type"].as_str(), reset["current"].as_u64()),
        (Some("reset"), Some(0))
    );
    assert_eq!(
        frames[1].json()["seq"],
        1,
        "the new epoch's first message is not taken for a duplicate"
    );
    // A client resuming with the old epoch is reset too.
    let late = sim.accept();
    let request =
        format!("GET /ws?channels=c&since=c:40&epoch=e1 HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
    sim.recv(late, request.as_bytes());
    sim.http_head(late);
    let frames = sim.frames(late);
    assert_eq!(frames[0].json()["epoch"], "e2");
    assert_eq!(frames[1].json()["type"], "reset");
}
