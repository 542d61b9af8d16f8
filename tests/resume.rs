//! Resuming without loss: `since=`, gap and reset notices, the welcome
//! notice, client control messages, and the limits on what clients send.

mod common;

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{RawClient, Server};
use serde_json::{Value, json};

fn publish(unix: &Path, channel: &str, range: std::ops::RangeInclusive<u64>) {
    let mut w = BufWriter::new(UnixStream::connect(unix).unwrap());
    for k in range {
        writeln!(w, r#"{{"channel":"{channel}","data":{{"k":{k}}}}}"#).unwrap();
    }
    w.flush().unwrap();
}

/// The next text frame as JSON (pings skipped).
fn next(c: &mut RawClient) -> Value {
    let f = c.read_non_ping().expect("a frame");
    assert_eq!(f.opcode, 1, "{f:?}");
    serde_json::from_str(f.text()).unwrap()
}

fn expect_messages(c: &mut RawClient, channel: &str, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let m = next(c);
        assert_eq!(m["channel"], channel, "{m}");
        assert_eq!(m["seq"], seq, "{m}");
        assert_eq!(m["data"]["k"], seq, "{m}");
    }
}

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--unix", "feed.sock", "--shards", "2"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn reconnect_with_since_gets_exactly_what_was_missed() {
    let server = start(&[]);
    let unix = server.unix.clone().unwrap();
    let mut c = RawClient::connect(server.addr, "/ws?channels=a");
    let welcome = next(&mut c);
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["channels"], json!({"a": 0}));
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16);
    publish(&unix, "a", 1..=10);
    expect_messages(&mut c, "a", 1..=10);
    drop(c);

    publish(&unix, "a", 11..=60);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 60);
    let mut c = RawClient::connect(server.addr, "/ws?channels=a&since=10");
    let welcome = next(&mut c);
    assert_eq!(welcome["channels"], json!({"a": 60}));
    assert_eq!(welcome["epoch"], epoch.as_str());
    expect_messages(&mut c, "a", 11..=60);
    publish(&unix, "a", 61..=65);
    expect_messages(&mut c, "a", 61..=65);
}

#[test]
fn no_loss_no_duplicate_while_publishing_continuously() {
    let server = start(&[]);
    let unix = server.unix.clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, published, unix) = (stop.clone(), published.clone(), unix.clone());
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(unix).unwrap();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                writeln!(s, r#"{{"channel":"live","data":{{"k":{k}}}}}"#).unwrap();
                published.store(k, Ordering::Relaxed);
                if k.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // First connection, without since: it starts after the welcome's seq.
    let mut c = RawClient::connect(server.addr, "/ws?channels=live");
    let mut last = next(&mut c)["channels"]["live"].as_u64().unwrap();
    let mut received = 0;
    for cycle in 0..40u64 {
        // Read a varying number of messages, then drop the connection.
        for _ in 0..(cycle * 37 % 150) {
            let m = next(&mut c);
            assert_eq!(m["seq"], last + 1, "cycle {cycle}: gap or duplicate: {m}");
            assert_eq!(m["data"]["k"], last + 1);
            last += 1;
            received += 1;
        }
        drop(c);
        c = RawClient::connect(server.addr, &format!("/ws?channels=live&since={last}"));
        let welcome = next(&mut c);
        assert_eq!(welcome["type"], "welcome");
        assert!(welcome["channels"]["live"].as_u64().unwrap() >= last);
    }
    // And the stream continues seamlessly after the last reconnect.
    for _ in 0..100 {
        let m = next(&mut c);
        assert_eq!(m["seq"], last + 1);
        last += 1;
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(received > 1000, "{received}");
    assert!(published.load(Ordering::Relaxed) >= last);
    // The switches were exercised: frames came from the history.
    assert!(server.metric("ringcast_frames_replayed_total", &[]) > 0);
}

#[test]
fn since_older_than_history_gets_a_gap_then_the_retained() {
    let server = start(&["--history", "10"]);
    publish(server.unix.as_ref().unwrap(), "a", 1..=30);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 30);
    let mut c = RawClient::connect(server.addr, "/ws?channels=a&since=5");
    assert_eq!(next(&mut c)["channels"], json!({"a": 30}));
    assert_eq!(
        next(&mut c),
        json!({"type": "gap", "channel": "a", "from": 6, "to": 20})
    );
    expect_messages(&mut c, "a", 21..=30);
}

#[test]
fn since_ahead_of_the_channel_gets_a_reset() {
    let server = start(&[]);
    let unix = server.unix.clone().unwrap();
    publish(&unix, "a", 1..=3);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 3);
    let mut c = RawClient::connect(server.addr, "/ws?channels=a,b&since=a:100,b:0");
    assert_eq!(next(&mut c)["channels"], json!({"a": 3, "b": 0}));
    assert_eq!(
        next(&mut c),
        json!({"type": "reset", "channel": "a", "current": 3})
    );
    publish(&unix, "a", 4..=4);
    expect_messages(&mut c, "a", 4..=4);
}

#[test]
fn replay_larger_than_the_high_water_mark_is_paced_not_cut() {
    let server = start(&[
        "--high-water",
        "256KiB",
        "--history-bytes",
        "16MiB",
        "--history",
        "5000",
    ]);
    let unix = server.unix.clone().unwrap();
    let pad = "p".repeat(4000);
    let mut w = BufWriter::new(UnixStream::connect(&unix).unwrap());
    for k in 1..=2000 {
        writeln!(w, r#"{{"channel":"big","data":{{"k":{k},"pad":"{pad}"}}}}"#).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 2000);
    let mut c = RawClient::connect(server.addr, "/ws?channels=big&since=0");
    assert_eq!(next(&mut c)["type"], "welcome");
    expect_messages(&mut c, "big", 1..=2000);
    assert_eq!(
        server.metric("ringcast_slow_client_disconnects_total", &[]),
        0
    );
    assert_eq!(server.metric("ringcast_frames_replayed_total", &[]), 2000);
}

#[test]
fn history_has_a_server_wide_cap() {
    let server = start(&["--history-total", "64KiB"]);
    let unix = server.unix.clone().unwrap();
    let pad = "p".repeat(1000);
    let mut w = BufWriter::new(UnixStream::connect(&unix).unwrap());
    for channel in ["x", "y"] {
        for k in 1..=100 {
            writeln!(
                w,
                r#"{{"channel":"{channel}","data":{{"k":{k},"pad":"{pad}"}}}}"#
            )
            .unwrap();
        }
    }
    w.flush().unwrap();
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 200);
    let held = server.metric("ringcast_history_bytes", &[]);
    assert!(held <= 64 * 1024 && held > 32 * 1024, "{held}");
    assert!(server.metric("ringcast_history_evicted_by_total_cap_total", &[]) > 100);
    // x's history went first (oldest anywhere): resuming x from 0 is a gap
    // over all of it; y keeps its most recent messages.
    let mut c = RawClient::connect(server.addr, "/ws?channels=x,y&since=x:0,y:90");
    next(&mut c);
    assert_eq!(
        next(&mut c),
        json!({"type": "gap", "channel": "x", "from": 1, "to": 100})
    );
    expect_messages(&mut c, "y", 91..=100);
}

#[test]
fn idle_channels_are_dropped_after_the_ttl() {
    let server = start(&["--channel-ttl", "1s"]);
    publish(server.unix.as_ref().unwrap(), "t", 1..=3);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 3);
    assert_eq!(server.metric("ringcast_channels", &[]), 1);
    assert_eq!(server.wait_metric("ringcast_channels", &[], |v| v == 0), 0);
    assert_eq!(server.metric("ringcast_history_bytes", &[]), 0);
    // Gone with its history: a client resuming it is told to resync.
    let mut c = RawClient::connect(server.addr, "/ws?channels=t&since=3");
    next(&mut c);
    assert_eq!(
        next(&mut c),
        json!({"type": "reset", "channel": "t", "current": 0})
    );
}

#[test]
fn control_messages_at_runtime() {
    let server = start(&[]);
    let unix = server.unix.clone().unwrap();
    let mut c = RawClient::connect(server.addr, "/ws?channels=");
    assert_eq!(next(&mut c)["channels"], json!({}));
    c.send_text(r#"{"type":"ping"}"#);
    assert_eq!(next(&mut c), json!({"type": "pong"}));
    publish(&unix, "a", 1..=5);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 5);
    c.send_text(r#"{"type":"subscribe","channels":["a","b"],"since":{"a":3}}"#);
    assert_eq!(
        next(&mut c),
        json!({"type": "subscribed", "channels": {"a": 5, "b": 0}})
    );
    expect_messages(&mut c, "a", 4..=5);
    publish(&unix, "b", 1..=1);
    expect_messages(&mut c, "b", 1..=1);
    c.send_text(r#"{"type":"unsubscribe","channels":["b","never"]}"#);
    assert_eq!(
        next(&mut c),
        json!({"type": "unsubscribed", "channels": ["b"]})
    );
    publish(&unix, "b", 2..=2);
    publish(&unix, "a", 6..=6);
    // Nothing of b after unsubscribing: the next frame is a's.
    expect_messages(&mut c, "a", 6..=6);
    for (bad, reason) in [
        ("not json", "not valid JSON"),
        (r#"{"type":"dance"}"#, "not a valid control message"),
        (
            r#"{"type":"subscribe","channels":["no spaces"]}"#,
            "invalid channel name",
        ),
    ] {
        c.send_text(bad);
        let e = next(&mut c);
        assert_eq!(e["type"], "error", "{e}");
        assert!(e["reason"].as_str().unwrap().contains(reason), "{e}");
    }
    c.send(true, 2, b"binary");
    assert_eq!(next(&mut c)["type"], "error");
}

#[test]
fn garbage_and_floods_are_closed_with_1008() {
    let server = start(&["--client-rate", "20"]);
    // Garbage: error notices, then 1008 when it goes on.
    let mut c = RawClient::connect(server.addr, "/ws?channels=a");
    next(&mut c);
    for _ in 0..11 {
        c.send_text("garbage");
    }
    let mut errors = 0;
    let close = loop {
        let f = c.read_non_ping().expect("frame");
        if f.opcode == 8 {
            break f;
        }
        errors += 1;
    };
    assert_eq!(errors, 10);
    assert_eq!(close.close_code(), Some(1008));
    assert!(c.expect_eof());
    // Flood: valid pings, far over 20/s (burst 40).
    let mut c = RawClient::connect(server.addr, "/ws?channels=a");
    next(&mut c);
    for _ in 0..100 {
        c.send_text(r#"{"type":"ping"}"#);
    }
    let close = loop {
        let f = c.read_non_ping().expect("frame");
        if f.opcode == 8 {
            break f;
        }
    };
    assert_eq!(close.close_code(), Some(1008));
    assert!(close.close_reason().contains("rate limit"));
    // Within the rate, all is well.
    let mut c = RawClient::connect(server.addr, "/ws?channels=a");
    next(&mut c);
    for _ in 0..10 {
        c.send_text(r#"{"type":"ping"}"#);
        assert_eq!(next(&mut c), json!({"type": "pong"}));
    }
    let garbage = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"policy_violation\""],
        |v| v == 1,
    );
    let flood = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"rate_limited\""],
        |v| v == 1,
    );
    assert_eq!((garbage, flood), (1, 1));
}
