//! Bad input from clients: garbage before and after the handshake, floods of
//! pings and empty frames, and 10,000 handshakes that never finish. The
//! server stays up, its memory stays bounded, and well-behaved clients
//! connected at the same time receive every message.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{RawClient, Server};

/// Deterministic pseudo-random bytes (no extra dependency, reproducible).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads until the server closes the connection (or 10 s pass).
fn drain(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

#[test]
fn garbage_before_and_after_the_handshake() {
    let server = Server::start(&[]);
    for seed in 0..20 {
        // Before: an error response or a close, never a hang or a crash.
        let mut s = TcpStream::connect(server.addr).unwrap();
        let _ = s.write_all(&noise(seed, 4096));
        let reply = drain(s);
        assert!(
            reply.is_empty() || reply.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            &reply[..20.min(reply.len())]
        );
        // After: the connection is failed with a close code.
        let mut c = RawClient::connect(server.addr, "/ws");
        c.read_welcome();
        c.send_raw(&noise(seed + 100, 4096));
        let close = c.read_non_ping_skipping_text();
        if let Some(f) = close {
            assert_eq!(f.opcode, 8);
            let code = f.close_code().unwrap();
            assert!([1002, 1007, 1008, 1009].contains(&code), "close {code}");
        }
        assert!(c.expect_eof());
    }
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn ping_floods_and_empty_frame_loops_are_closed() {
    let server = Server::start(&["--client-rate", "50"]);
    for opcode in [9u8, 1, 2] {
        let mut c = RawClient::connect(server.addr, "/ws");
        c.read_welcome();
        // 2,000 frames as fast as TCP takes them: pings, or empty messages.
        let mut burst = Vec::new();
        for _ in 0..2000 {
            burst.extend(ringcast::protocol::frame::encode_client_frame(
                true,
                opcode,
                b"",
                [1, 2, 3, 4],
            ));
        }
        c.send_raw(&burst);
        let f = loop {
            let f = c.read_frame().expect("a close");
            if f.opcode == 8 {
                break f;
            }
        };
        assert_eq!(f.close_code(), Some(1008), "opcode {opcode}");
    }
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn ten_thousand_unfinished_handshakes_do_not_hurt_others() {
    let server = Server::start(&[
        "--unix",
        "feed.sock",
        "--handshake-timeout",
        "3s",
        "--shards",
        "2",
    ]);
    let mut good: Vec<RawClient> = (0..50)
        .map(|_| RawClient::connect(server.addr, "/ws?channels=live"))
        .collect();
    for c in &mut good {
        c.read_welcome();
    }
    let baseline = server.rss();
    // 10,000 connections that start a request and never finish it.
    let mut stuck = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let Ok(mut s) = TcpStream::connect(server.addr) else {
            continue;
        };
        let _ = s.write_all(b"GET /ws?channels=live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n");
        stuck.push(s);
    }
    assert!(stuck.len() >= 9_000, "only {} connected", stuck.len());
    // While they hang, the feed flows and every good client gets everything.
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for k in 1..=200 {
        writeln!(feed, r#"{{"channel":"live","data":{k}}}"#).unwrap();
    }
    for c in &mut good {
        for seq in 1..=200u64 {
            let f = c.read_non_ping().expect("message");
            let v: serde_json::Value = serde_json::from_str(f.text()).unwrap();
            assert_eq!(v["seq"], seq);
        }
    }
    let peak = server.rss();
    assert!(
        peak.saturating_sub(baseline) < 64 << 20,
        "RSS grew {} MiB for 10k pending handshakes",
        (peak - baseline) >> 20
    );
    // The handshake timeout reaps them.
    let reaped = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"handshake_timeout\""],
        |v| v >= stuck.len() as u64,
    );
    assert!(
        reaped >= stuck.len() as u64,
        "{reaped} reaped of {}",
        stuck.len()
    );
    drop(stuck);
    assert_eq!(server.get("/healthz").0, 200);
    // And the good clients are still served.
    writeln!(feed, r#"{{"channel":"live","data":201}}"#).unwrap();
    let f = good[0].read_non_ping().unwrap();
    assert!(f.text().contains(r#""seq":201"#));
}
