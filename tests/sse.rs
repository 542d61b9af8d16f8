//! Server-sent events over real sockets: events with resumable ids, notices
//! as named events, heartbeats, resume through `Last-Event-ID` (no loss, no
//! duplicate, a gap notice where history is gone), CORS, the slow-client cut
//! and the drain.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Server;
use common::proxy::CuttingProxy;
use serde_json::Value;

/// One event as the stream carried it.
#[derive(Debug, Default, Clone)]
struct Event {
    name: Option<String>,
    id: Option<String>,
    data: String,
    /// A comment line (heartbeat) rather than an event.
    comment: bool,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

/// An event-stream reader on a plain socket, as EventSource reads one.
struct Stream {
    reader: BufReader<TcpStream>,
    pub head: String,
}

impl Stream {
    fn open(server: &Server, path: &str, headers: &[&str]) -> Stream {
        Stream::open_with(server, path, headers, None)
    }

    /// With `receive_buffer`, the socket's receive buffer is that small (a
    /// client that stops reading then backs up into the server quickly).
    fn open_with(
        server: &Server,
        path: &str,
        headers: &[&str],
        receive_buffer: Option<usize>,
    ) -> Stream {
        let mut s = TcpStream::connect(server.addr).unwrap();
        if let Some(size) = receive_buffer {
            socket2::SockRef::from(&s)
                .set_recv_buffer_size(size)
                .unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n");
        for h in headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Stream { reader, head }
    }

    /// The next event or comment; None at the end of the stream.
    fn next(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut data: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if event.comment || !data.is_empty() {
                    event.data = data.join("\n");
                    return Some(event);
                }
                continue;
            }
            if line.starts_with(':') {
                event.comment = true;
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                event.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event.name = Some(v.to_owned());
            }
        }
    }

    /// The next event that is not a heartbeat.
    fn event(&mut self) -> Event {
        loop {
            let e = self.next().expect("an event before the stream ends");
            if !e.comment {
                return e;
            }
        }
    }

    fn ends(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

fn publish(server: &Server, lines: &[String]) {
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for line in lines {
        writeln!(feed, "{line}").unwrap();
    }
}

fn messages(channel: &str, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range
        .map(|n| format!(r#"{{"channel":"{channel}","data":{n}}}"#))
        .collect()
}

#[test]
fn events_ids_notices_heartbeats_and_resume_by_last_event_id() {
    let server = Server::start(&["--unix", "feed.sock", "--ping-interval", "1s"]);
    let mut stream = Stream::open(
        &server,
        "/sse?channels=a,b",
        &["Origin: https://app.example"],
    );
    assert!(
        stream.head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        stream.head
    );
    assert!(stream.head.contains("Content-Type: text/event-stream\r\n"));
    assert!(
        stream
            .head
            .contains("Access-Control-Allow-Origin: https://app.example\r\n")
    );
    let welcome = stream.event();
    assert_eq!(welcome.name.as_deref(), Some("welcome"));
    let epoch = welcome.json()["epoch"].as_str().unwrap().to_owned();
    server.wait_metric("ringcast_sse_streams_open", &[], |v| v == 1);
    publish(&server, &messages("a", 1..=3));
    publish(&server, &messages("b", 1..=2));
    let mut last_id = String::new();
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = stream.event();
        assert_eq!(e.name, None, "{e:?}");
        let m = e.json();
        got.push((
            m["channel"].as_str().unwrap().to_owned(),
            m["seq"].as_u64().unwrap(),
        ));
        last_id = e.id.expect("every message carries an id");
    }
    // Order across channels is the feed's; within each, seqs ascend.
    let seqs = |c: &str| -> Vec<u64> { got.iter().filter(|g| g.0 == c).map(|g| g.1).collect() };
    assert_eq!((seqs("a"), seqs("b")), (vec![1, 2, 3], vec![1, 2]));
    assert_eq!(last_id, format!("{epoch};a:3,b:2"));
    // A heartbeat comment within the ping interval.
    let beat = loop {
        let e = stream.next().expect("a heartbeat");
        if e.comment {
            break e;
        }
    };
    assert!(beat.comment);
    drop(stream);

    // Reconnect as EventSource does: the original URL (with since=, which
    // Last-Event-ID overrides) and the last id. Messages published while
    // away arrive once each, none before them again.
    publish(&server, &messages("a", 4..=5));
    publish(&server, &messages("b", 3..=3));
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 8);
    let mut back = Stream::open(
        &server,
        "/sse?channels=a,b&since=a:0,b:0",
        &[&format!("Last-Event-ID: {last_id}")],
    );
    assert_eq!(back.event().name.as_deref(), Some("welcome"));
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let m = back.event().json();
        resumed.push((
            m["channel"].as_str().unwrap().to_owned(),
            m["seq"].as_u64().unwrap(),
        ));
    }
    resumed.sort();
    assert_eq!(
        resumed,
        [
            ("a".to_owned(), 4),
            ("a".to_owned(), 5),
            ("b".to_owned(), 3)
        ]
    );
}

#[test]
fn a_resume_past_the_history_gets_a_gap_event_and_an_old_epoch_a_reset() {
    let server = Server::start(&["--unix", "feed.sock", "--history", "5"]);
    publish(&server, &messages("a", 1..=20));
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 20);
    let mut first = Stream::open(&server, "/sse?channels=a", &[]);
    let epoch = first.event().json()["epoch"].as_str().unwrap().to_owned();
    drop(first);
    let mut s = Stream::open(
        &server,
        "/sse?channels=a",
        &[&format!("Last-Event-ID: {epoch};a:2")],
    );
    assert_eq!(s.event().name.as_deref(), Some("welcome"));
    let gap = s.event();
    assert_eq!(gap.name.as_deref(), Some("gap"));
    assert_eq!(
        (gap.json()["from"].as_u64(), gap.json()["to"].as_u64()),
        (Some(3), Some(15))
    );
    assert_eq!(gap.id, None, "a notice is not a position to resume from");
    for seq in 16..=20 {
        let e = s.event();
        assert_eq!(e.json()["seq"], seq);
        assert_eq!(e.id, Some(format!("{epoch};a:{seq}")));
    }
    // An id from another run: reset, then what this run retains.
    let mut old = Stream::open(&server, "/sse?channels=a", &["Last-Event-ID: 0123abcd;a:7"]);
    assert_eq!(old.event().name.as_deref(), Some("welcome"));
    let reset = old.event();
    assert_eq!(reset.name.as_deref(), Some("reset"));
    assert_eq!(reset.json()["current"], 0);
    assert_eq!(old.event().name.as_deref(), Some("gap"));
    assert_eq!(old.event().json()["seq"], 16);
}

#[test]
fn a_stream_that_does_not_read_is_cut_and_counted_as_sse() {
    let server = Server::start(&[
        "--unix",
        "feed.sock",
        "--high-water",
        "256KiB",
        "--send-buffer",
        "16KiB",
    ]);
    let mut stuck = Stream::open_with(&server, "/sse?channels=big", &[], Some(16 << 10));
    assert_eq!(stuck.event().name.as_deref(), Some("welcome"));
    let mut fast = Stream::open(&server, "/sse?channels=big", &[]);
    assert_eq!(fast.event().name.as_deref(), Some("welcome"));
    // One 16 KB message at a time, each read by the reader before the next:
    // the one that never reads falls 256 KiB behind and is cut.
    let pad = "x".repeat(16_000);
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for seq in 1..=100 {
        writeln!(feed, r#"{{"channel":"big","data":"{pad}"}}"#).unwrap();
        assert_eq!(fast.event().json()["seq"], seq);
    }
    let cut = server.wait_metric(
        "ringcast_slow_client_disconnects_total",
        &["transport=\"sse\""],
        |v| v == 1,
    );
    assert_eq!(cut, 1);
    assert_eq!(
        server.metric(
            "ringcast_slow_client_disconnects_total",
            &["transport=\"websocket\""]
        ),
        0
    );
    drop(stuck);
}

#[test]
fn sigterm_ends_every_stream_and_tokens_are_required_when_auth_is_on() {
    let mut server = Server::start(&["--unix", "feed.sock"]);
    let mut s = Stream::open(&server, "/sse?channels=a", &[]);
    assert_eq!(s.event().name.as_deref(), Some("welcome"));
    server.wait_metric("ringcast_sse_streams_open", &[], |v| v == 1);
    server.signal(libc::SIGTERM);
    let last = s.event();
    assert_eq!(last.name.as_deref(), Some("error"));
    assert!(last.data.contains("shutting down"), "{last:?}");
    assert!(s.ends());
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "sse-secret-0123456789-0123456789-abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = Server::start(&["--auth-secret-file", secret.to_str().unwrap()]);
    let refused = Stream::open(&server, "/sse?channels=a", &[]);
    assert!(refused.head.starts_with("HTTP/1.1 401"), "{}", refused.head);
}

#[test]
fn a_real_event_source_reconnects_and_resumes_without_loss_or_duplicate() {
    common::ensure_js_packages();
    let server = Server::start(&["--unix", "feed.sock"]);
    let proxy = CuttingProxy::start(server.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/sse_listen.js");
    let mut node = std::process::Command::new("node")
        .args([script, &format!("http://{}/sse?channels=a", proxy.addr)])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node is needed for this test");
    let mut lines = BufReader::new(node.stdout.take().unwrap());
    let mut next = || -> Value {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!("node said {line:?} (is the eventsource package installed in tests/js?)")
        })
    };
    let mut wait_for = |what: &str| -> Value {
        loop {
            let v = next();
            if v["event"] == what {
                return v;
            }
        }
    };
    wait_for("welcome");
    server.wait_metric("ringcast_sse_streams_open", &[], |v| v == 1);
    publish(&server, &messages("a", 1..=3));
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(wait_for("message")["data"]["seq"].as_u64().unwrap());
    }
    // The network drops the stream; messages go on meanwhile.
    proxy.cut();
    server.wait_metric("ringcast_sse_streams_open", &[], |v| v == 0);
    publish(&server, &messages("a", 4..=6));
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 6);
    // EventSource reconnects by itself with Last-Event-ID: 4..6 exactly once.
    wait_for("welcome");
    for _ in 0..3 {
        seqs.push(wait_for("message")["data"]["seq"].as_u64().unwrap());
    }
    publish(&server, &messages("a", 7..=7));
    seqs.push(wait_for("message")["data"]["seq"].as_u64().unwrap());
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let _ = node.kill();
    let _ = node.wait();
}
