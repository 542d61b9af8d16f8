//! `/status.json` and the status page over HTTP: the figures match what the
//! server is doing, and with `--metrics-listen` the pages move there.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{RawClient, Server, http_request};
use serde_json::Value;

fn status_at(addr: SocketAddr) -> Value {
    let (code, text) = http_request(addr, "GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("Content-Type: application/json\r\n"),
        "{text}"
    );
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/status.json` until `want` holds; returns that document.
fn status_until(addr: SocketAddr, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_at(addr);
        if want(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn row<'a>(rows: &'a Value, channel: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["channel"] == channel)
}

#[test]
fn status_json_counts_connections_channels_rates_and_errors() {
    let server = Server::start(&["--unix", "feed.sock", "--max-connections", "500"]);
    let mut clients: Vec<RawClient> = ["/ws?channels=a", "/ws?channels=a", "/ws?channels=a,b"]
        .iter()
        .map(|path| RawClient::connect(server.addr, path))
        .collect();
    let welcome = clients[0].read_welcome();
    for c in &mut clients[1..] {
        c.read_welcome();
    }
    let mut sse = TcpStream::connect(server.addr).unwrap();
    sse.write_all(b"GET /sse?channels=b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    sse.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let status = status_until(server.addr, "everyone counted", |s| {
        s["connections"]["websockets"] == 3 && s["connections"]["sse_streams"] == 1
    });
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["epoch"], welcome["epoch"]);
    assert_eq!(status["fleet"]["mode"], "single-node");
    assert_eq!(status["connections"]["max"], 500);
    let driver = status["driver"].as_str().unwrap();
    if let Some(expected) = common::io_driver().filter(|d| d != "auto") {
        assert_eq!(driver, expected);
    }
    let shards = status["shards"].as_array().unwrap();
    let per_shard = |field: &str| {
        shards
            .iter()
            .map(|s| s[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(per_shard("websockets"), 3);
    assert_eq!(per_shard("sse_streams"), 1);
    assert_eq!(per_shard("subscriptions"), 5, "a×3, b×2");
    let top = &status["channels"]["top_by_subscribers"];
    assert_eq!(row(top, "a").unwrap()["subscribers"], 3, "{top}");
    assert_eq!(row(top, "b").unwrap()["subscribers"], 2, "{top}");
    assert_eq!(status["channels"]["count"], 2);

    // Publishing: the totals count it, and a rate shows for channel a.
    let mut feed = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for k in 1..=10 {
        writeln!(feed, r#"{{"channel":"a","data":{k}}}"#).unwrap();
    }
    writeln!(feed, "not json").unwrap();
    let status = status_until(server.addr, "ten published, 30 delivered", |s| {
        s["totals"]["published"] == 10 && s["totals"]["delivered"] == 30
    });
    let malformed = status["feed_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "malformed_json")
        .unwrap();
    assert_eq!(malformed["count"], 1);
    // The rate of the second in which they went out is in the history.
    let status = status_until(server.addr, "the publish rate sampled", |s| {
        s["history"]["published_per_second"]
            .as_array()
            .is_some_and(|h| h.iter().any(|r| r.as_f64() > Some(0.0)))
    });
    assert_eq!(status["history"]["interval_seconds"], 1);
    assert_eq!(
        row(&status["channels"]["top_by_subscribers"], "a").unwrap()["seq"],
        10
    );

    // Subscribers that leave are no longer counted.
    drop(clients);
    drop(sse);
    let status = status_until(server.addr, "everyone gone", |s| {
        s["connections"]["websockets"] == 0 && s["connections"]["sse_streams"] == 0
    });
    assert!(
        status["channels"]["top_by_subscribers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{status:#}"
    );
}

/// The address in the start-up line's "metrics on ADDR;".
fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server
        .wait_for_log("listening on", Duration::from_secs(5))
        .unwrap();
    line.split("metrics on ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the start-up line names the metrics address")
        .parse()
        .unwrap()
}

#[test]
fn with_a_metrics_listener_the_status_page_is_served_there_only() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let admin = metrics_addr(&server);
    let (code, page) = http_request(admin, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    // Self-contained: the policy lets it load nothing from anywhere, and
    // the page names no other host.
    assert!(
        page.contains("Content-Security-Policy: default-src 'none';"),
        "{page}"
    );
    let body = page.split_once("\r\n\r\n").unwrap().1;
    assert!(!body.contains("http://") && !body.contains("https://"));
    assert!(body.contains("status.json"));
    assert!(status_at(admin)["uptime_seconds"].is_u64());
    let (code, head) = http_request(admin, "HEAD /status.json HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200);
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    let (code, _) = http_request(admin, "POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 405);
    // Not on the public listener.
    for path in ["/", "/status.json", "/metrics"] {
        let (code, text) = server.get(path);
        assert_eq!(code, 404, "{path}: {text}");
        assert!(text.contains("--metrics-listen"), "{path}: {text}");
    }
}

#[test]
fn a_client_that_trickles_its_request_does_not_hold_up_the_metrics_listener() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let admin = metrics_addr(&server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients that send a byte now and then and never finish.
    let tricklers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let mut s = TcpStream::connect(admin).unwrap();
            std::thread::spawn(move || {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if s.write_all(b"X").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    let (code, text) = http_request(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("ringcast_uptime_seconds"));
    for t in tricklers {
        t.join().unwrap();
    }
}
