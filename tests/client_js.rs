//! client/ringcast.js, driven for real under Node (its built-in WebSocket)
//! against real servers: a crash and restart (reconnect with jittered
//! backoff, new epoch, reset reported), and a frozen server (dead-connection
//! detection by app-level ping, then a lossless resume).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

struct Node {
    child: std::process::Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Node {
    fn start(url: &str) -> Node {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/drive_client.js");
        let mut child = Command::new("node")
            .arg("--experimental-websocket")
            .arg("--no-warnings")
            .arg(script)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is needed for this test (Node.js 20+)");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Node {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred`; returns it.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what}; events so far: {:#?}", self.seen));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    fn message(&mut self, seq: u64) -> Value {
        self.wait(&format!("message {seq}"), |v| v["event"] == "message")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"close\n");
        }
        std::thread::sleep(Duration::from_millis(100));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(server: &Server, n: std::ops::RangeInclusive<u64>) {
    let mut s = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for k in n {
        writeln!(s, r#"{{"channel":"c","data":{k}}}"#).unwrap();
    }
}

#[test]
fn browser_client_survives_restart_and_freeze() {
    let first = Server::start(&["--unix", "feed.sock"]);
    let port = first.addr.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut node = Node::start(&first.url("/ws"));
    let welcome = node.wait("welcome", |v| v["event"] == "welcome");
    assert_eq!(welcome["restarted"], false);
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    publish(&first, 1..=5);
    for seq in 1..=5 {
        let m = node.message(seq);
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_u64()),
            (Some(seq), Some(seq))
        );
    }

    // Crash: the client retries with jittered backoff until a new server is up.
    drop(first); // SIGKILL
    std::thread::sleep(Duration::from_millis(1500));
    let second = Server::start(&["--unix", "feed.sock", "--listen", &listen]);
    let welcome = node.wait("welcome after restart", |v| v["event"] == "welcome");
    assert_eq!(welcome["restarted"], true);
    assert_ne!(welcome["epoch"].as_str().unwrap(), epoch);
    // It asked for c since 5; the new server's c is at 0: reset, reported.
    let reset = node.wait("reset", |v| v["event"] == "reset");
    assert_eq!(
        (reset["channel"].as_str(), reset["current"].as_u64()),
        (Some("c"), Some(0))
    );
    let delays: Vec<(u64, u64)> = node
        .seen
        .iter()
        .filter(|v| v["status"] == "reconnecting")
        .map(|v| (v["attempt"].as_u64().unwrap(), v["delay"].as_u64().unwrap()))
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    common::assert_jittered_reconnects(&delays, 1);
    publish(&second, 1..=1);
    assert_eq!(node.message(1)["seq"], 1);

    // Freeze: the connection stays up at the TCP level but nothing answers.
    // The app-level ping notices; once the server thaws, the client resumes
    // from where it was, without loss and without a reset.
    // Past stableAfter (500 ms), so the backoff starts over.
    std::thread::sleep(Duration::from_millis(600));
    second.signal(libc::SIGSTOP);
    let dead = node.wait("dead connection", |v| v["status"] == "dead");
    assert_eq!(dead["reason"], "no answer to ping");
    publish(&second, 2..=3); // queued in the kernel until the server thaws
    std::thread::sleep(Duration::from_millis(800));
    second.signal(libc::SIGCONT);
    let welcome = node.wait("welcome after thaw", |v| v["event"] == "welcome");
    assert_eq!(welcome["restarted"], false);
    assert_eq!(node.message(2)["seq"], 2);
    assert_eq!(node.message(3)["seq"], 3);
    assert!(
        !node
            .seen
            .iter()
            .skip_while(|v| v["status"] != "dead")
            .any(|v| v["event"] == "reset" || v["event"] == "gap"),
        "{:#?}",
        node.seen
    );
}

#[test]
fn a_resume_across_a_restart_is_reset_not_mixed_with_the_new_run() {
    let first = Server::start(&["--unix", "feed.sock"]);
    let listen = format!("127.0.0.1:{}", first.addr.port());
    let mut node = Node::start(&first.url("/ws"));
    node.wait("welcome", |v| v["event"] == "welcome");
    publish(&first, 1..=5);
    for seq in 1..=5 {
        assert_eq!(node.message(seq)["seq"], seq);
    }
    // The client is held while the server restarts and the new run reaches
    // seq 10 on its own: its seq 5 is not the client's.
    // SAFETY (test): signals to our own child process.
    unsafe { libc::kill(node.child.id() as i32, libc::SIGSTOP) };
    drop(first);
    let second = Server::start(&["--unix", "feed.sock", "--listen", &listen]);
    publish(&second, 1..=10);
    second.wait_metric("ringcast_messages_published_total", &[], |v| v == 10);
    unsafe { libc::kill(node.child.id() as i32, libc::SIGCONT) };
    // It resumes with since=5 and the old epoch: reset to 0, then the new
    // run's 1..10, none taken for 6..10 of the old one.
    let reset = node.wait("reset", |v| v["event"] == "reset");
    assert_eq!(
        (reset["channel"].as_str(), reset["current"].as_u64()),
        (Some("c"), Some(0))
    );
    for seq in 1..=10 {
        assert_eq!(node.message(seq)["data"], seq);
    }
}
