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

/// A `subscribe` or `unsubscribe` message for `names`.
fn control(kind: &str, names: &[String]) -> String {
    serde_json::json!({"type": kind, "channels": names}).to_string()
}

/// The next notice's JSON, or None once the server has closed the connection.
fn next_notice(c: &mut RawClient) -> Option<serde_json::Value> {
    let frame = c.read_non_ping()?;
    if frame.opcode != 1 {
        return None;
    }
    serde_json::from_str(frame.text()).ok()
}

/// Sends a `subscribe` for `names`; returns how many were joined and the
/// refusal of the rest, or None once the server has closed the connection.
fn subscribe(c: &mut RawClient, names: &[String]) -> Option<(usize, Option<String>)> {
    c.send_text(&control("subscribe", names));
    let first = next_notice(c)?;
    let refusal = |notice: &serde_json::Value| {
        assert_eq!(notice["type"], "error", "{notice}");
        notice["reason"].as_str().map(str::to_owned)
    };
    if first["type"] != "subscribed" {
        return Some((0, refusal(&first)));
    }
    let joined = first["channels"].as_object().map_or(0, |m| m.len());
    if joined == names.len() {
        return Some((joined, None));
    }
    Some((joined, refusal(&next_notice(c)?)))
}

/// The next channel message (a frame with a `seq`), skipping notices.
fn next_message(c: &mut RawClient) -> serde_json::Value {
    loop {
        let notice = next_notice(c).expect("a message before the connection ends");
        if notice.get("seq").is_some() {
            return notice;
        }
    }
}

#[test]
fn subscribing_to_made_up_channels_pins_nothing_and_locks_nobody_out() {
    let server = Server::start(&["--max-channels", "2000", "--unix", "feed.sock"]);
    // 40 clients, each subscribing to 99 fresh names (with `real`, its 100
    // subscriptions) and leaving them, 25 times: 99,000 names, 50 times the
    // table. Each client reads its replies before it goes on, so every
    // message it sent was handled.
    let clients: Vec<_> = (0..40)
        .map(|client| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr, "/ws?channels=real");
                c.read_welcome();
                let mut refused = 0;
                for round in 0..25 {
                    let names: Vec<String> =
                        (0..99).map(|i| format!("f{client}-{round}-{i}")).collect();
                    let Some((_, refusal)) = subscribe(&mut c, &names) else {
                        break; // closed for too many refused messages
                    };
                    // Refused once the connection has created its allowance
                    // for the minute, or while the others hold the clients'
                    // share of the table.
                    if let Some(why) = refusal {
                        assert!(
                            why.contains("too fast") || why.contains("channel limit reached"),
                            "{why}"
                        );
                        refused += 1;
                    }
                    c.send_text(&control("unsubscribe", &names));
                    let Some(reply) = next_notice(&mut c) else {
                        break;
                    };
                    assert_eq!(reply["type"], "unsubscribed", "{reply}");
                }
                refused
            })
        })
        .collect();
    let refused: u32 = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(refused > 0, "creating channels this fast is refused");
    assert!(server.wait_metric("ringcast_channel_refusals_total", &[], |v| v > 0) > 0);
    // Every made-up channel went with its last subscriber (`real` too: no
    // one published to it, and the flood's connections are gone).
    assert_eq!(
        server.wait_metric("ringcast_channels", &[], |v| v == 0),
        0,
        "made-up channels outlived their subscribers"
    );
    // A new subscriber to a new channel, and a publisher to it, get through.
    let mut late = RawClient::connect(server.addr, "/ws?channels=brand-new");
    assert_eq!(late.read_welcome()["type"], "welcome");
    server.wait_metric("ringcast_subscriptions", &[], |v| v >= 1);
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    writeln!(feed, r#"{{"channel":"brand-new","data":1}}"#).unwrap();
    let message = next_message(&mut late);
    assert_eq!(message["seq"], 1, "{message}");
    assert_eq!(server.metric("ringcast_feed_errors_total", &[]), 0);
}

#[test]
fn one_address_holds_a_bounded_number_of_made_up_channels() {
    let server = Server::start(&[
        "--limit-loopback",
        "--max-new-channels-per-ip",
        "150",
        "--unix",
        "feed.sock",
    ]);
    // 99 names: with `real`, a connection's 100 subscriptions.
    let names = |prefix: &str| -> Vec<String> { (0..99).map(|i| format!("{prefix}{i}")).collect() };
    let here: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut a = RawClient::connect_from(here, server.addr, "/ws?channels=real");
    a.read_welcome();
    assert_eq!(subscribe(&mut a, &names("a")), Some((99, None)));
    // `real` and a's 99 count against the address: b may create 50 more.
    let mut b = RawClient::connect_from(here, server.addr, "/ws?channels=real");
    b.read_welcome();
    let (joined, refusal) = subscribe(&mut b, &names("b")).unwrap();
    assert_eq!(joined, 50, "150 in all");
    let why = refusal.unwrap();
    assert!(why.contains("and 48 more not created"), "{why}");
    assert!(why.contains("held from your address"), "{why}");
    // Another address is not affected.
    let mut c = RawClient::connect_from(elsewhere, server.addr, "/ws?channels=real");
    c.read_welcome();
    assert_eq!(subscribe(&mut c, &names("c")), Some((99, None)));
    // A channel a publisher writes to no longer counts against the address.
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for i in 0..10 {
        writeln!(feed, r#"{{"channel":"a{i}","data":1}}"#).unwrap();
    }
    drop(feed);
    for _ in 0..10 {
        next_message(&mut a);
    }
    assert_eq!(subscribe(&mut b, &names("d")[..10]), Some((10, None)));
    // Leaving gives the rest back: with a gone, its other 89 made-up
    // channels go too, and b may create again.
    drop(a);
    server.wait_metric("ringcast_websockets_open", &[], |v| v == 2);
    assert_eq!(subscribe(&mut b, &names("e")[..30]), Some((30, None)));
}
