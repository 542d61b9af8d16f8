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
}
