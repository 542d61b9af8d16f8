//! A fleet: real `redis-server`s on free ports and up to three ringcast
//! nodes on loopback. Every client on every node gets the same (seq, data),
//! none missing or twice; a client resumes on another node; and each fault
//! (Redis paused, a pub/sub connection killed or gone silent, a node killed,
//! Redis restarted with and without its data) ends without silent loss.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::proxy::{Balancer, CuttingProxy};
use common::redis::Redis;
use common::{RawClient, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A node of the fleet on `redis_url`, with a Unix feed (and `extra`).
fn node(redis_url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--unix", "feed.sock", "--redis", redis_url];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    wait_healthy(&server);
    server
}

fn health(server: &Server) -> (u16, String) {
    server.get("/healthz")
}

fn wait_healthy(server: &Server) {
    wait_until("the node to be healthy", || health(server).0 == 200);
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A publisher on a node's Unix feed.
struct Feed(UnixStream);

impl Feed {
    fn to(server: &Server) -> Feed {
        Feed(UnixStream::connect(server.unix.as_ref().unwrap()).unwrap())
    }

    fn send(&mut self, channel: &str, data: &str) {
        writeln!(self.0, r#"{{"channel":"{channel}","data":{data}}}"#).unwrap();
    }
}

/// A subscriber; `messages` reads the next channel messages (skipping
/// pings), `notices` are kept as they pass.
struct Client {
    raw: RawClient,
    welcome: Value,
    notices: Vec<Value>,
}

impl Client {
    fn connect(server: &Server, path: &str) -> Client {
        let mut raw = RawClient::connect(server.addr, path);
        let welcome = raw.read_welcome();
        Client {
            raw,
            welcome,
            notices: Vec::new(),
        }
    }

    fn epoch(&self) -> String {
        self.welcome["epoch"].as_str().unwrap().to_owned()
    }

    /// The next frame as JSON (a message or a notice).
    fn next(&mut self) -> Value {
        let frame = self
            .raw
            .read_non_ping()
            .unwrap_or_else(|| panic!("no frame; notices so far: {:?}", self.notices));
        serde_json::from_str(frame.text()).unwrap()
    }

    /// The next `n` channel messages as (seq, data), notices kept aside.
    fn messages(&mut self, n: usize) -> Vec<(u64, Value)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.next();
            if v["type"].is_string() {
                self.notices.push(v);
                continue;
            }
            out.push((v["seq"].as_u64().unwrap(), v["data"].clone()));
        }
        out
    }

    /// The next notice (messages before it are an error).
    fn notice(&mut self) -> Value {
        let v = self.next();
        assert!(
            v["type"].is_string(),
            "a message where a notice was due: {v}"
        );
        v
    }
}

fn seqs(messages: &[(u64, Value)]) -> Vec<u64> {
    messages.iter().map(|m| m.0).collect()
}

fn metric(server: &Server, name: &str, labels: &[&str]) -> u64 {
    server.metric(name, labels)
}

#[test]
fn every_client_on_every_node_gets_the_same_seqs_and_one_feed_keeps_its_order() {
    let redis = Redis::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis.url(), &[])).collect();
    let mut clients: Vec<Client> = nodes
        .iter()
        .map(|n| Client::connect(n, "/ws?channels=t"))
        .collect();
    assert!(
        clients.iter().all(|c| c.epoch() == clients[0].epoch()),
        "one fleet epoch"
    );
    // Only channels with subscribers are listened to in Redis.
    let listening = redis.cli(&[
        "PUBSUB",
        "NUMSUB",
        "ringcast:live:t",
        "ringcast:live:nobody",
    ]);
    assert_eq!(
        listening.split_whitespace().collect::<Vec<_>>(),
        ["ringcast:live:t", "3", "ringcast:live:nobody", "0"]
    );
    let mut feeds: Vec<Feed> = nodes.iter().map(Feed::to).collect();
    for i in 0..30 {
        for (n, feed) in feeds.iter_mut().enumerate() {
            feed.send("t", &format!(r#"{{"node":{n},"i":{i}}}"#));
        }
        feeds[0].send("nobody", "0");
    }
    let seen: Vec<Vec<(u64, Value)>> = clients.iter_mut().map(|c| c.messages(90)).collect();
    assert_eq!(seqs(&seen[0]), (1..=90).collect::<Vec<_>>());
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "every node delivers the same (seq, data)");
    }
    // Each node's feed, in the order it was fed.
    for n in 0..3 {
        let order: Vec<u64> = seen[0]
            .iter()
            .filter(|m| m.1["node"] == n)
            .map(|m| m.1["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            (0..30).collect::<Vec<_>>(),
            "node {n}'s feed reordered"
        );
    }
    for c in &clients {
        assert!(c.notices.is_empty(), "{:?}", c.notices);
    }
    assert_eq!(redis.cli(&["GET", "ringcast:{nobody}:seq"]), "30");
    assert!(metric(&nodes[0], "ringcast_fleet_publishes_total", &[]) >= 60);
    assert_eq!(
        metric(&nodes[0], "ringcast_fleet_channels_subscribed", &[]),
        1
    );
}

#[test]
fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let redis = Redis::start();
    let (a, b, c) = (
        node(&redis.url(), &[]),
        node(&redis.url(), &[]),
        node(&redis.url(), &[]),
    );
    let mut client = Client::connect(&a, "/ws?channels=r");
    let epoch = client.epoch();
    let mut feed_b = Feed::to(&b);
    for k in 1..=5 {
        feed_b.send("r", &k.to_string());
    }
    assert_eq!(seqs(&client.messages(5)), [1, 2, 3, 4, 5]);
    drop(client);
    for k in 6..=55 {
        feed_b.send("r", &k.to_string());
    }
    wait_until("50 more published", || {
        redis.cli(&["GET", "ringcast:{r}:seq"]) == "55"
    });
    // Node C has never had a subscriber on r: it syncs r, then replays.
    let mut resumed = Client::connect(&c, &format!("/ws?channels=r&since=r:5&epoch={epoch}"));
    assert_eq!(resumed.epoch(), epoch);
    let got = resumed.messages(50);
    assert_eq!(seqs(&got), (6..=55).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m.1 == m.0), "the data of each seq");
    Feed::to(&a).send("r", "56");
    assert_eq!(seqs(&resumed.messages(1)), [56], "then live");
    assert!(
        resumed.notices.is_empty(),
        "no gap, no reset: {:?}",
        resumed.notices
    );
}

#[test]
fn a_resume_from_further_back_than_a_node_holds_is_served_from_the_fleets_log() {
    let redis = Redis::start();
    let b = node(&redis.url(), &[]);
    // Node C keeps little of each channel itself (1 KiB: about 25 frames
    // here); the fleet's log keeps --history (1,000) messages.
    let c = node(&redis.url(), &["--history-bytes", "1KiB"]);
    let mut watching = Client::connect(&c, "/ws?channels=d");
    let epoch = watching.epoch();
    let mut feed = Feed::to(&b);
    for k in 1..=60 {
        feed.send("d", &k.to_string());
    }
    assert_eq!(seqs(&watching.messages(60)), (1..=60).collect::<Vec<_>>());
    let mut resumed = Client::connect(&c, &format!("/ws?channels=d&since=d:5&epoch={epoch}"));
    let got = resumed.messages(55);
    assert_eq!(seqs(&got), (6..=60).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m.1 == m.0), "the data of each seq");
    assert!(
        resumed.notices.is_empty(),
        "no gap: Redis held them: {:?}",
        resumed.notices
    );
    // Past what the log holds too, the gap is told.
    redis.cli(&["XTRIM", "ringcast:{d}:log", "MAXLEN", "10"]);
    let mut late = Client::connect(&c, &format!("/ws?channels=d&since=d:1&epoch={epoch}"));
    let gap = late.notice();
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["from"], 2);
}

#[test]
fn redis_paused_for_five_seconds_loses_nothing_and_health_says_why() {
    let redis = Redis::start();
    let a = node(&redis.url(), &["--udp", "127.0.0.1:0"]);
    let b = node(&redis.url(), &[]);
    let mut on_a = Client::connect(&a, "/ws?channels=p");
    let mut on_b = Client::connect(&b, "/ws?channels=p");
    let mut feed = Feed::to(&a);
    for k in 1..=3 {
        feed.send("p", &k.to_string());
    }
    assert_eq!(seqs(&on_a.messages(3)), [1, 2, 3]);
    assert_eq!(seqs(&on_b.messages(3)), [1, 2, 3]);

    redis.pause();
    let paused = Instant::now();
    wait_until("/healthz to say Redis is unreachable", || {
        let (code, body) = health(&a);
        code == 503 && body.contains("redis unreachable")
    });
    eprintln!("healthz 503 after {:?}", paused.elapsed());
    // The Unix publisher's lines wait; UDP datagrams are refused, counted.
    for k in 4..=8 {
        feed.send("p", &k.to_string());
    }
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        udp.send_to(br#"{"channel":"p","data":"lost"}"#, a.udp.unwrap())
            .unwrap();
    }
    wait_until("the datagrams to be refused", || {
        metric(&a, "ringcast_fleet_refused_total", &["feed=\"udp\""]) == 3
    });
    // Connected clients are still served meanwhile.
    on_a.raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(on_a.notice()["type"], "pong");
    let left = Duration::from_secs(5).saturating_sub(paused.elapsed());
    std::thread::sleep(left); // the outage lasts five seconds
    redis.resume();
    wait_healthy(&a);
    wait_healthy(&b);
    // Everything fed during the outage, once, in order, on both nodes.
    assert_eq!(seqs(&on_a.messages(5)), [4, 5, 6, 7, 8]);
    assert_eq!(seqs(&on_b.messages(5)), [4, 5, 6, 7, 8]);
    feed.send("p", "9");
    assert_eq!(seqs(&on_b.messages(1)), [9]);
    assert!(on_a.notices.is_empty() && on_b.notices.is_empty());
}

#[test]
fn a_pub_sub_connection_killed_or_gone_silent_is_rebuilt_with_catch_up() {
    let redis = Redis::start();
    // Node B reaches Redis through a proxy that can silence one connection.
    let proxy = CuttingProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let a = node(&redis.url(), &[]);
    let b = node(&format!("redis://{}/0", proxy.addr), &[]);
    let mut client = Client::connect(&b, "/ws?channels=s");
    let mut feed = Feed::to(&a);
    let mut next = 1u64;
    let mut publish = |feed: &mut Feed, n: u64| {
        for _ in 0..n {
            feed.send("s", &next.to_string());
            next += 1;
        }
    };

    // Killed: the connection closes; B notices, rebuilds, catches up.
    publish(&mut feed, 3);
    assert_eq!(seqs(&client.messages(3)), [1, 2, 3]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    publish(&mut feed, 5);
    assert_eq!(seqs(&client.messages(5)), [4, 5, 6, 7, 8]);

    // Silent: B's pub/sub connection stays open and delivers nothing. Its
    // probe stops coming back; it is rebuilt and catches up from the log.
    wait_until("B's pub/sub connection", || pubsub_ports(&redis).len() == 1);
    let port = pubsub_ports(&redis)
        .into_iter()
        .find(|&p| proxy.freeze_upstream_port(p));
    assert!(
        port.is_some(),
        "B's pub/sub connection goes through the proxy"
    );
    let rebuilds = metric(&b, "ringcast_fleet_rebuilds_total", &[]);
    publish(&mut feed, 5);
    wait_until("the silent connection to be found out", || {
        metric(&b, "ringcast_fleet_rebuilds_total", &[]) > rebuilds
    });
    assert_eq!(seqs(&client.messages(5)), [9, 10, 11, 12, 13]);
    publish(&mut feed, 1);
    assert_eq!(seqs(&client.messages(1)), [14]);
    assert!(client.notices.is_empty(), "{:?}", client.notices);
    assert!(metric(&b, "ringcast_fleet_catchup_messages_total", &[]) >= 5);
}

/// The client ports of the pub/sub connections Redis has that listen to a
/// channel besides their probe (node A, with no subscriber, has only that).
fn pubsub_ports(redis: &Redis) -> Vec<u16> {
    redis
        .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .lines()
        .filter(|l| l.split_whitespace().any(|f| f == "sub=2"))
        .filter_map(|l| {
            let addr = l.split_whitespace().find_map(|f| f.strip_prefix("addr="))?;
            addr.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn clients_of_a_killed_node_reconnect_through_the_balancer_and_lose_nothing() {
    let redis = Redis::start();
    let a = node(&redis.url(), &[]);
    let b = node(&redis.url(), &[]);
    let balancer = Balancer::start(vec![a.addr, b.addr]);
    // client/ringcast.js under Node, behind the balancer (which picks A).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/drive_client.js");
    let mut node_js = std::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", script])
        .arg(format!("ws://{}/ws", balancer.addr))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node is needed for this test");
    let (tx, events) = std::sync::mpsc::channel::<Value>();
    let stdout = node_js.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        loop {
            let v = events
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no {what}; events: {seen:#?}"));
            seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    };
    wait("welcome", &|v| v["event"] == "welcome");
    let mut feed = Feed::to(&b);
    for k in 1..=3 {
        feed.send("c", &k.to_string());
    }
    for k in 1..=3 {
        assert_eq!(wait("message", &|v| v["event"] == "message")["seq"], k);
    }
    drop(a); // SIGKILL: its clients lose their connection
    for k in 4..=13 {
        feed.send("c", &k.to_string());
    }
    let welcome = wait("welcome from B", &|v| v["event"] == "welcome");
    assert_eq!(welcome["restarted"], false, "the same fleet epoch on B");
    for k in 4..=13 {
        assert_eq!(wait("message", &|v| v["event"] == "message")["seq"], k);
    }
    assert!(
        !seen
            .iter()
            .any(|v| v["event"] == "gap" || v["event"] == "reset"),
        "{seen:#?}"
    );
    let _ = node_js.kill();
    let _ = node_js.wait();
}

#[test]
fn a_redis_restarted_empty_resets_clients_and_one_restarted_with_its_data_does_not() {
    // With its data (append-only file): the same epoch, no reset.
    let mut redis = Redis::start_persistent();
    let a = node(&redis.url(), &[]);
    let mut client = Client::connect(&a, "/ws?channels=e");
    let epoch = client.epoch();
    let mut feed = Feed::to(&a);
    for k in 1..=3 {
        feed.send("e", &k.to_string());
    }
    assert_eq!(seqs(&client.messages(3)), [1, 2, 3]);
    redis.restart();
    wait_healthy(&a);
    feed.send("e", "4");
    assert_eq!(seqs(&client.messages(1)), [4]);
    assert!(client.notices.is_empty(), "{:?}", client.notices);
    assert_eq!(redis.cli(&["GET", "ringcast:epoch"]), epoch);
    drop(client);
    drop(a);
    drop(redis);

    // Empty: a new epoch; every client is told reset, and seqs start over.
    let mut redis = Redis::start();
    let a = node(&redis.url(), &[]);
    let b = node(&redis.url(), &[]);
    let mut on_a = Client::connect(&a, "/ws?channels=e");
    let mut on_b = Client::connect(&b, "/ws?channels=e");
    let old_epoch = on_a.epoch();
    let mut feed = Feed::to(&a);
    for k in 1..=5 {
        feed.send("e", &k.to_string());
    }
    assert_eq!(seqs(&on_a.messages(5)), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&on_b.messages(5)), [1, 2, 3, 4, 5]);
    redis.restart();
    for client in [&mut on_a, &mut on_b] {
        let reset = client.notice();
        assert_eq!(
            (
                reset["type"].as_str(),
                reset["channel"].as_str(),
                reset["current"].as_u64()
            ),
            (Some("reset"), Some("e"), Some(0)),
            "{reset}"
        );
    }
    wait_healthy(&a);
    feed.send("e", "\"new\"");
    assert_eq!(on_a.messages(1), [(1, Value::from("new"))]);
    assert_eq!(on_b.messages(1), [(1, Value::from("new"))]);
    let new_epoch = redis.cli(&["GET", "ringcast:epoch"]);
    assert_ne!(new_epoch, old_epoch);
    // A client resuming with the old epoch's position is reset too, then
    // gets the new epoch's messages from its start.
    let mut late = Client::connect(&b, &format!("/ws?channels=e&since=e:5&epoch={old_epoch}"));
    assert_eq!(late.epoch(), new_epoch);
    assert_eq!(late.notice()["type"], "reset");
    assert_eq!(late.messages(1), [(1, Value::from("new"))]);
    assert!(metric(&a, "ringcast_fleet_epoch_changes_total", &[]) >= 1);
}

#[test]
fn publish_with_redis_needs_no_node_and_fails_fast_without_redis() {
    let redis = Redis::start();
    let a = node(&redis.url(), &[]);
    let mut client = Client::connect(&a, "/ws?channels=cli");
    let out = std::process::Command::new(common::BIN)
        .args([
            "publish",
            "--redis",
            &redis.url(),
            "--channel",
            "cli",
            "{\"x\":1}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.messages(1), [(1, serde_json::json!({"x": 1}))]);

    // Nothing listens there: a clear error, exit 1, well within 10 s.
    let started = Instant::now();
    let out = std::process::Command::new(common::BIN)
        .args([
            "publish",
            "--redis",
            "redis://127.0.0.1:1/0",
            "--channel",
            "cli",
            "x",
        ])
        .output()
        .unwrap();
    eprintln!(
        "publish without Redis gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot publish to Redis at redis://127.0.0.1:1/0"),
        "{said}"
    );
}

#[test]
fn a_node_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let server = Server::start(&["--unix", "feed.sock", "--redis", &url]);
    let (code, body) = health(&server);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("redis unreachable (redis://127.0.0.1:{port}/0)")),
        "{body}"
    );
    // A subscriber meanwhile waits, then is told to come back.
    let mut waiting = RawClient::connect(server.addr, "/ws?channels=w");
    let close = waiting.read_non_ping_skipping_text().unwrap();
    assert_eq!(close.close_code(), Some(1013), "{}", close.close_reason());
    assert!(close.close_reason().contains("Redis"));
    let redis = Redis::start_on(port);
    wait_healthy(&server);
    let mut client = Client::connect(&server, "/ws?channels=w");
    Feed::to(&server).send("w", "1");
    assert_eq!(seqs(&client.messages(1)), [1]);
    assert_eq!(client.epoch(), redis.cli(&["GET", "ringcast:epoch"]));
}

#[test]
fn a_redis_that_comes_back_with_older_seqs_starts_a_new_epoch_instead_of_reusing_them() {
    // As after a failover to a replica that was behind: the epoch is there,
    // but the channel's seq is below what clients already got.
    let redis = Redis::start();
    let a = node(&redis.url(), &[]);
    let mut client = Client::connect(&a, "/ws?channels=f");
    let old_epoch = client.epoch();
    let mut feed = Feed::to(&a);
    for k in 1..=5 {
        feed.send("f", &k.to_string());
    }
    assert_eq!(seqs(&client.messages(5)), [1, 2, 3, 4, 5]);
    redis.cli(&["SET", "ringcast:{f}:seq", "2"]);
    redis.cli(&["XTRIM", "ringcast:{f}:log", "MAXLEN", "2"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let reset = client.notice();
    assert_eq!(
        (reset["type"].as_str(), reset["channel"].as_str()),
        (Some("reset"), Some("f")),
        "{reset}"
    );
    let new_epoch = redis.cli(&["GET", "ringcast:epoch"]);
    assert_ne!(new_epoch, old_epoch, "a new epoch for the whole fleet");
    wait_healthy(&a);
    feed.send("f", "\"after\"");
    let (seq, data) = client.messages(1).remove(0);
    assert_eq!(data, Value::from("after"));
    assert_eq!(seq, reset["current"].as_u64().unwrap() + 1);
}
