//! permessage-deflate over real sockets: a real client (Node's WebSocket,
//! which offers the extension as browsers do) gets every broadcast
//! byte-exact, also when it joins mid-stream; frames above the threshold are
//! compressed (RSV1) and those below are not; a message is compressed once
//! however many clients take it; compressed client messages are inflated
//! within the message limit.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdout, Command, Stdio};

use common::{KEY, RawClient, Server};
use ringcast::protocol::deflate::{Deflater, inflate};
use serde_json::Value;

/// Node's WebSocket on `url`, one JSON line per event.
struct NodeClient {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl NodeClient {
    fn start(url: &str) -> NodeClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/listen.js");
        let mut child = Command::new("node")
            .args(["--experimental-websocket", "--no-warnings", script, url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is needed for this test (Node.js 20+)");
        let lines = BufReader::new(child.stdout.take().unwrap());
        NodeClient { child, lines }
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("node said: {line:?}"))
    }

    /// The text of the next channel message (notices skipped).
    fn message(&mut self) -> String {
        loop {
            let event = self.next();
            assert_eq!(event["event"], "message", "{event}");
            let text = event["text"].as_str().unwrap().to_owned();
            if text.contains(r#""seq":"#) {
                return text;
            }
        }
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw client that offers permessage-deflate; returns it and the
/// extensions the server answered with.
fn raw_deflate_client(server: &Server, path: &str) -> (RawClient, Option<String>) {
    let mut c = RawClient::connect_tcp(server.addr);
    c.send_raw(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        .as_bytes(),
    );
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let extensions = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .map(str::to_owned);
    (c, extensions)
}

/// The next data frame's text and whether it came compressed (RSV1).
fn read_text(c: &mut RawClient) -> (String, bool) {
    let frame = c.read_non_ping().expect("a frame");
    assert_eq!(frame.opcode, 1, "{frame:?}");
    let payload = if frame.rsv1 {
        inflate(&frame.payload, 1 << 20).expect("inflates")
    } else {
        frame.payload.clone()
    };
    (String::from_utf8(payload).unwrap(), frame.rsv1)
}

fn publish(server: &Server, lines: &[String]) {
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for line in lines {
        writeln!(feed, "{line}").unwrap();
    }
}

/// A message of about `size` bytes of realistic JSON.
fn quote(n: usize, size: usize) -> String {
    let mut rows = Vec::new();
    let mut i = 0;
    while rows.iter().map(|r: &String| r.len() + 1).sum::<usize>() < size {
        rows.push(format!(
            r#"{{"symbol":"SYM{i}","bid":{}.25,"ask":{}.5,"volume":{}}}"#,
            100 + n,
            100 + n,
            1000 * i
        ));
        i += 1;
    }
    format!("[{}]", rows.join(","))
}

fn delivered(channel: &str, seq: u64, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","seq":{seq},"data":{data}}}"#)
}

#[test]
fn a_real_client_gets_compressed_broadcasts_byte_exact_also_joining_mid_stream() {
    let server = Server::start(&["--unix", "feed.sock", "--compression-min-size", "256"]);
    let mut node = NodeClient::start(&server.url("/ws?channels=c"));
    let open = node.next();
    assert!(
        open["extensions"]
            .as_str()
            .unwrap()
            .starts_with("permessage-deflate"),
        "{open}"
    );
    let (mut raw, extensions) = raw_deflate_client(&server, "/ws?channels=c");
    assert_eq!(
        extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    raw.read_welcome();
    server.wait_metric("ringcast_subscriptions", &[], |v| v == 2);
    server.wait_metric("ringcast_compressed_clients", &[], |v| v == 2);
    // Big (compressed) and small (not) messages, interleaved.
    let data: Vec<String> = (0..6)
        .map(|n| {
            if n % 2 == 0 {
                quote(n, 1024)
            } else {
                format!(r#"{{"n":{n}}}"#)
            }
        })
        .collect();
    let lines: Vec<String> = data
        .iter()
        .map(|d| format!(r#"{{"channel":"c","data":{d}}}"#))
        .collect();
    publish(&server, &lines);
    for (i, d) in data.iter().enumerate() {
        let want = delivered("c", i as u64 + 1, d);
        assert_eq!(node.message(), want, "node, message {}", i + 1);
        let (text, compressed) = read_text(&mut raw);
        assert_eq!(text, want);
        assert_eq!(compressed, want.len() >= 256, "RSV1 on message {}", i + 1);
    }
    // Joining mid-stream, resuming from seq 2: the history's forms, byte-exact.
    let mut late = NodeClient::start(&server.url("/ws?channels=c&since=2"));
    assert_eq!(late.next()["event"], "open");
    for (i, d) in data.iter().enumerate().skip(2) {
        assert_eq!(late.message(), delivered("c", i as u64 + 1, d));
    }
    // Each big message was compressed once, for both clients.
    assert_eq!(server.metric("ringcast_compressed_messages_total", &[]), 3);
    let before = server.metric("ringcast_compression_input_bytes_total", &[]);
    let after = server.metric("ringcast_compression_output_bytes_total", &[]);
    assert!(after * 3 < before, "JSON compresses: {before} -> {after}");
}

#[test]
fn a_message_is_compressed_once_for_a_thousand_subscribers() {
    let server = Server::start(&["--unix", "feed.sock"]);
    let mut clients: Vec<RawClient> = (0..1000)
        .map(|_| raw_deflate_client(&server, "/ws?channels=many").0)
        .collect();
    for c in &mut clients {
        c.read_welcome();
    }
    server.wait_metric("ringcast_compressed_clients", &[], |v| v == 1000);
    let data: Vec<String> = (0..5).map(|n| quote(n, 2048)).collect();
    let lines: Vec<String> = data
        .iter()
        .map(|d| format!(r#"{{"channel":"many","data":{d}}}"#))
        .collect();
    publish(&server, &lines);
    for c in &mut clients {
        for (i, d) in data.iter().enumerate() {
            let (text, compressed) = read_text(c);
            assert!(compressed);
            assert_eq!(text, delivered("many", i as u64 + 1, d));
        }
    }
    assert_eq!(server.metric("ringcast_compressed_messages_total", &[]), 5);
}

#[test]
fn compressed_client_messages_are_inflated_within_the_limit() {
    let server = Server::start(&["--echo", "--max-message", "64KiB"]);
    let mut deflater = Deflater::new(15).unwrap();
    let send_compressed = |c: &mut RawClient, payload: &[u8], deflater: &mut Deflater| {
        let mut frame = ringcast::protocol::frame::encode_client_frame(
            true,
            1,
            &deflater.compress(payload),
            [9, 8, 7, 6],
        );
        frame[0] |= 0x40; // RSV1: compressed
        c.send_raw(&frame);
    };
    // A compressed subscribe on /ws is understood.
    let (mut c, _) = raw_deflate_client(&server, "/ws?channels=a");
    c.read_welcome();
    send_compressed(
        &mut c,
        br#"{"type":"subscribe","channels":["b"]}"#,
        &mut deflater,
    );
    let (reply, _) = read_text(&mut c);
    assert!(reply.contains(r#""type":"subscribed""#), "{reply}");
    // /echo sends back what it inflated (compressed again).
    let (mut echo, ext) = raw_deflate_client(&server, "/echo");
    assert!(ext.is_some());
    let text = "ringcast ".repeat(200);
    send_compressed(&mut echo, text.as_bytes(), &mut deflater);
    assert_eq!(read_text(&mut echo), (text, true));
    // A bomb: 10 MiB of one byte, a few KiB compressed: 1009 at the limit.
    let bomb = vec![b'a'; 10 << 20];
    send_compressed(&mut c, &bomb, &mut deflater);
    let close = c.read_non_ping_skipping_text().expect("a close");
    assert_eq!(close.close_code(), Some(1009), "{}", close.close_reason());
    // Data that does not inflate: 1007.
    let (mut bad, _) = raw_deflate_client(&server, "/ws?channels=a");
    bad.read_welcome();
    let mut frame =
        ringcast::protocol::frame::encode_client_frame(true, 1, &[0xff; 16], [1, 2, 3, 4]);
    frame[0] |= 0x40;
    bad.send_raw(&frame);
    let close = bad.read_non_ping_skipping_text().expect("a close");
    assert_eq!(close.close_code(), Some(1007), "{}", close.close_reason());
    // Without the extension, RSV1 is a protocol error (1002).
    let mut plain = RawClient::connect(server.addr, "/ws?channels=a");
    plain.read_welcome();
    plain.send_raw(&frame);
    let close = plain.read_non_ping_skipping_text().expect("a close");
    assert_eq!(close.close_code(), Some(1002));
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn compression_off_negotiates_nothing() {
    let server = Server::start(&["--compression", "off"]);
    let (_c, extensions) = raw_deflate_client(&server, "/ws?channels=a");
    assert_eq!(extensions, None);
}
