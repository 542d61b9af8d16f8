//! A client that stops reading is cut at the high-water mark (close 4008),
//! the fast clients lose nothing, and the server's memory stays bounded.

mod common;

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{RawClient, Server, upgrade_request};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn slow_client_is_cut_fast_clients_lose_nothing_memory_bounded() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--unix",
        "feed.sock",
        "--high-water",
        "1MiB",
    ]);
    let fast = 500;
    let live_messages = 3000;
    let bulk_size = 32 * 1024;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut clients = runtime.block_on(async {
        let mut all = Vec::new();
        for _ in 0..fast / 50 {
            let batch = (0..50).map(|_| async {
                tokio_tungstenite::connect_async(server.url("/ws?channels=live"))
                    .await
                    .expect("connect")
                    .0
            });
            all.extend(futures_util::future::join_all(batch).await);
        }
        all
    });

    // The slow client never reads. It uses a real network's MSS: with
    // loopback's 64 KiB segments, a receiver whose window has been shut for
    // a while does not reopen it when it reads again (silly-window
    // avoidance) and the stream crawls on zero-window probes; that would
    // test the kernel's loopback, not the server.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_tcp_mss(1460).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut slow = RawClient::from_stream(socket.into());
    slow.send_raw(upgrade_request("/ws?channels=live,bulk").as_bytes());
    assert!(slow.read_head().starts_with("HTTP/1.1 101"));
    server.wait_metric("ringcast_subscriptions", &[], |v| v == fast as u64 + 2);

    let baseline = server.rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), server.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = common::rss_of(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Once the server cuts the slow client, read what reached it: the last
    // frame must be the 4008 close.
    let test_start = std::time::Instant::now();
    let watcher = {
        let addr = server.addr;
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while common::metric_sum(
                &common::http_request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1,
                "ringcast_slow_client_disconnects_total",
                &[],
            ) == 0
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "slow client never cut"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let cut_seen = test_start.elapsed();
            let mut last = None;
            while let Some(frame) = slow.read_frame() {
                last = Some(frame);
            }
            assert!(slow.last_error.is_none(), "{:?}", slow.last_error);
            (last, cut_seen)
        })
    };

    // Publish: the live stream, interleaved with big messages only the slow
    // client subscribes to (96 MiB in all).
    let publisher = {
        let path = server.unix.clone().unwrap();
        std::thread::spawn(move || {
            let mut w = BufWriter::new(UnixStream::connect(path).unwrap());
            let bulk = format!("\"{}\"", "b".repeat(bulk_size));
            for k in 1..=live_messages {
                writeln!(
                    w,
                    r#"{{"channel":"live","data":{{"k":{k},"pad":"{}"}}}}"#,
                    "x".repeat(150)
                )
                .unwrap();
                writeln!(w, r#"{{"channel":"bulk","data":{bulk}}}"#).unwrap();
            }
            w.flush().unwrap();
        })
    };

    let counts = runtime.block_on(async {
        let reads = clients.drain(..).map(|mut ws| async move {
            let mut next = 1u64;
            while next <= live_messages as u64 {
                let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
                    .await
                    .expect("fast client starved")
                    .expect("stream ended")
                    .expect("read");
                let Message::Text(text) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "welcome" {
                    continue;
                }
                assert_eq!(v["seq"].as_u64(), Some(next), "gap or duplicate");
                assert_eq!(v["data"]["k"].as_u64(), Some(next));
                next += 1;
            }
            next - 1
        });
        futures_util::future::join_all(reads).await
    });
    publisher.join().unwrap();
    let (close, cut_seen) = watcher.join().unwrap();
    let close = close.expect("the slow client received nothing");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    assert!(counts.iter().all(|&n| n == live_messages as u64));
    assert_eq!(close.close_code(), Some(4008), "{close:?}");
    assert!(close.close_reason().contains("slow consumer"), "{close:?}");
    assert_eq!(
        server.metric("ringcast_slow_client_disconnects_total", &[]),
        1
    );
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let published = (live_messages * bulk_size) as u64;
    eprintln!("slow client cut {cut_seen:?} after publishing began");
    eprintln!(
        "RSS baseline {} MiB, peak growth {} MiB while {} MiB of bulk was published",
        baseline >> 20,
        growth >> 20,
        published >> 20
    );
    assert!(
        growth < 48 << 20,
        "server RSS grew by {} MiB (high-water mark 1 MiB)",
        growth >> 20
    );
}
