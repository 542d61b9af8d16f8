//! The opening handshake and the plain HTTP endpoints, over real TCP.

mod common;

use std::time::Duration;

use common::{KEY, RawClient, Server, http_request, upgrade_request};

const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn request(path: &str, headers: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

#[test]
fn handshake_table() {
    let server = Server::start(&["--echo"]);
    let up = "Upgrade: websocket";
    let conn = "Connection: Upgrade";
    let ver = "Sec-WebSocket-Version: 13";
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let key = key.as_str();
    let cases: Vec<(&str, String, u16)> = vec![
        ("valid", request("/ws", &[up, conn, ver, key]), 101),
        ("valid echo", request("/echo", &[up, conn, ver, key]), 101),
        (
            "tokens in lists, any case",
            request(
                "/ws",
                &[
                    "Upgrade: WebSocket",
                    "Connection: keep-alive, UPGRADE",
                    ver,
                    key,
                ],
            ),
            101,
        ),
        ("no Upgrade", request("/ws", &[conn, ver, key]), 400),
        (
            "Upgrade: h2c",
            request("/ws", &["Upgrade: h2c", conn, ver, key]),
            400,
        ),
        ("no Connection", request("/ws", &[up, ver, key]), 400),
        (
            "Connection: close",
            request("/ws", &[up, "Connection: close", ver, key]),
            400,
        ),
        ("no version", request("/ws", &[up, conn, key]), 426),
        (
            "version 8",
            request("/ws", &[up, conn, "Sec-WebSocket-Version: 8", key]),
            426,
        ),
        ("no key", request("/ws", &[up, conn, ver]), 400),
        (
            "key not base64",
            request("/ws", &[up, conn, ver, "Sec-WebSocket-Key: !!!!"]),
            400,
        ),
        (
            "key of 15 bytes",
            request(
                "/ws",
                &[up, conn, ver, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
            ),
            400,
        ),
        (
            "POST",
            format!("POST /ws HTTP/1.1\r\nHost: x\r\n{up}\r\n{conn}\r\n{ver}\r\n{key}\r\n\r\n"),
            405,
        ),
        (
            "HTTP/1.0",
            format!("GET /ws HTTP/1.0\r\nHost: x\r\n{up}\r\n{conn}\r\n{ver}\r\n{key}\r\n\r\n"),
            400,
        ),
        ("unknown path", request("/nope", &[up, conn, ver, key]), 404),
        (
            "garbage",
            "\x16\x03\x01\x00\x7f not http\r\n\r\n".to_owned(),
            400,
        ),
        (
            "oversize head",
            request("/ws", &[&format!("X-Big: {}", "a".repeat(9000))]),
            431,
        ),
        ("healthz", request("/healthz", &[]), 200),
        ("metrics", request("/metrics", &[]), 200),
        ("index", request("/", &[]), 200),
    ];
    for (name, req, want) in &cases {
        let (status, text) = http_request(server.addr, req);
        assert_eq!(status, *want, "{name}: {text}");
        if *want == 101 {
            assert!(
                text.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
                "{name}: {text}"
            );
        } else {
            assert!(text.contains("Connection: close\r\n"), "{name}: {text}");
            let body_len = text.split("\r\n\r\n").nth(1).unwrap().len();
            assert!(
                text.contains(&format!("Content-Length: {body_len}\r\n")),
                "{name}: wrong Content-Length: {text}"
            );
        }
        if *want == 426 {
            assert!(
                text.contains("Sec-WebSocket-Version: 13\r\n"),
                "{name}: {text}"
            );
        }
    }
    // Refusals are counted.
    assert!(server.metric("ringcast_handshakes_rejected_total", &[]) >= 12);
}

#[test]
fn echo_is_off_by_default() {
    let server = Server::start(&[]);
    let (status, _) = http_request(server.addr, &upgrade_request("/echo"));
    assert_eq!(status, 404);
}

#[test]
fn request_split_into_single_bytes() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect_tcp(server.addr);
    for b in upgrade_request("/echo").bytes() {
        c.send_raw(&[b]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.send_text("after a slow handshake");
    assert_eq!(c.read_frame().unwrap().text(), "after a slow handshake");
}

#[test]
fn frames_pipelined_behind_the_request() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect_tcp(server.addr);
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(ringcast::protocol::frame::encode_client_frame(
        true,
        1,
        b"pipelined",
        [9, 9, 9, 9],
    ));
    c.send_raw(&bytes);
    assert!(c.read_head().starts_with("HTTP/1.1 101"));
    assert_eq!(c.read_frame().unwrap().text(), "pipelined");
}

#[test]
fn slow_handshake_is_dropped() {
    let server = Server::start(&["--handshake-timeout", "300ms"]);
    let mut c = RawClient::connect_tcp(server.addr);
    c.send_raw(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    let started = std::time::Instant::now();
    assert!(c.expect_eof(), "server kept a half-sent handshake open");
    assert!(started.elapsed() < Duration::from_secs(5));
    let n = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"handshake_timeout\""],
        |v| v == 1,
    );
    assert_eq!(n, 1);
}

#[test]
fn healthz_and_metrics_content() {
    let server = Server::start(&["--shards", "2"]);
    let (status, text) = server.get("/healthz");
    assert_eq!(status, 200);
    assert!(text.ends_with("ok\n"));
    let metrics = server.metrics();
    for name in [
        "ringcast_connections_open{shard=\"0\"}",
        "ringcast_connections_open{shard=\"1\"}",
        "ringcast_connections_accepted_total{shard=\"1\"}",
        "ringcast_connections_closed_total{shard=\"0\",reason=\"client_close\"}",
        "# TYPE ringcast_connections_accepted_total counter",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"));
    // The README documents every metric served, with its type.
    let readme = include_str!("../README.md");
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line[7..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            readme.contains(&format!("| `{name}` | {kind} |")),
            "README.md's metrics table has no row for {name} ({kind})"
        );
    }
}

/// A GET upgrade smuggling frames in a body (`Content-Length`, or chunked)
/// is refused: the body must never be read as WebSocket frames.
#[test]
fn an_upgrade_with_a_body_is_refused_and_its_body_never_runs() {
    let server = Server::start(&[]);
    let up = format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}"
    );
    // A masked {"type":"ping"} frame: answered with a pong if it ever ran.
    let frame = ringcast::protocol::frame::encode_client_frame(
        true,
        1,
        br#"{"type":"ping"}"#,
        [1, 2, 3, 4],
    );
    for framing in [
        format!("Content-Length: {}", frame.len()),
        "Transfer-Encoding: chunked".to_owned(),
    ] {
        let mut c = std::net::TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = request("/ws?channels=a", &[&up, &framing]).into_bytes();
        if framing.starts_with("Transfer") {
            bytes.extend(format!("{:x}\r\n", frame.len()).as_bytes());
            bytes.extend(&frame);
            bytes.extend(b"\r\n0\r\n\r\n");
        } else {
            bytes.extend(&frame);
        }
        std::io::Write::write_all(&mut c, &bytes).unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing}: {answer}");
        assert!(answer.contains("must not have a body"), "{answer}");
        assert!(!answer.contains("pong"), "the body ran: {answer}");
    }
}

#[test]
fn host_and_key_must_appear_once_and_absolute_targets_work() {
    let server = Server::start(&[]);
    let base = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13";
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let other = "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==";
    let (status, text) = http_request(server.addr, &request("/ws", &[base, &key, other]));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Sec-WebSocket-Key"), "{text}");
    let (status, text) = http_request(server.addr, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Host"), "{text}");
    let (status, _) = http_request(
        server.addr,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    );
    assert_eq!(status, 400);
    // Absolute form, as proxies may send it.
    let target = format!("http://{}/ws?channels=a", server.addr);
    let (status, text) = http_request(server.addr, &request(&target, &[base, &key]));
    assert_eq!(status, 101, "{text}");
    let (status, text) = http_request(
        server.addr,
        &request(&format!("http://{}/healthz", server.addr), &[]),
    );
    assert_eq!(status, 200, "{text}");
}

/// A request and an immediate half-close (what `nc -N` and some health
/// checkers send) still get their answer, every time.
#[test]
fn a_request_then_a_half_close_is_answered() {
    let server = Server::start(&[]);
    for i in 0..50 {
        let mut c = std::net::TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut c, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "attempt {i}: {answer:?}"
        );
    }
}

#[test]
fn metrics_on_a_listener_of_their_own() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let line = server
        .wait_for_log("listening on", Duration::from_secs(5))
        .unwrap();
    let addr: std::net::SocketAddr = line
        .split("metrics on ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the start-up line names the metrics address")
        .parse()
        .unwrap();
    let (status, text) = http_request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("ringcast_connections_open{shard=\"0\"}"),
        "{text}"
    );
    let (status, _) = http_request(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404, "only metrics there");
    let (status, _) = http_request(addr, "garbage\r\n\r\n");
    assert_eq!(status, 400);
    // Not on the public listener any more.
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 404, "{text}");
    assert_eq!(server.get("/healthz").0, 200);
}
