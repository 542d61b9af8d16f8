//! Fan-out over real sockets: many clients, several channels, both feeds;
//! every client gets exactly its channels' messages, in order, byte-exact.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Server;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const CHANNELS: [&str; 3] = ["alpha", "beta", "gamma"];

/// The channels client `i` subscribes to: every tenth takes all three.
fn channels_of(i: usize) -> Vec<&'static str> {
    if i.is_multiple_of(10) {
        CHANNELS.to_vec()
    } else {
        vec![CHANNELS[i % 3]]
    }
}

/// Data with odd spacing, escapes and non-ASCII, to catch any reformatting.
fn data(feed: &str, k: usize) -> String {
    format!(r#"{{"k": {k} ,"feed":"{feed}", "s":"κόσμε \"q\" \\n", "n":[1, 2.50e3 ,null]}}"#)
}

#[test]
fn every_client_gets_exactly_its_channels_in_order() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--udp",
        "127.0.0.1:0",
        "--unix",
        "feed.sock",
    ]);
    let clients = 2000;
    let per_feed = 1000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Connect everyone, then wait until the server has every subscription.
    let mut sockets = runtime.block_on(async {
        let mut all = Vec::with_capacity(clients);
        for batch in (0..clients).collect::<Vec<_>>().chunks(100) {
            let connects = batch.iter().map(|&i| {
                let url = server.url(&format!("/ws?channels={}", channels_of(i).join(",")));
                async move {
                    tokio_tungstenite::connect_async(url)
                        .await
                        .expect("connect")
                        .0
                }
            });
            all.extend(futures_util::future::join_all(connects).await);
        }
        all
    });
    let subscriptions: u64 = (0..clients).map(|i| channels_of(i).len() as u64).sum();
    let seen = server.wait_metric("ringcast_subscriptions", &[], |v| v == subscriptions);
    assert_eq!(seen, subscriptions);
    let accepted = server.metrics();
    for shard in ["shard=\"0\"", "shard=\"1\""] {
        assert!(
            common::metric_sum(&accepted, "ringcast_subscriptions", &[shard]) > 0,
            "no subscriber on {shard}"
        );
    }

    // Publish: 1000 messages over the Unix socket, then 1000 over UDP.
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    let mut unix = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for k in 0..per_feed {
        let channel = CHANNELS[k % 3];
        let d = data("unix", k);
        writeln!(unix, r#"{{"channel":"{channel}","data":{d}}}"#).unwrap();
        expected.entry(channel).or_default().push(d);
    }
    unix.flush().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = server.udp.unwrap();
    // All Unix messages are sequenced before the first datagram.
    server.wait_metric("ringcast_messages_published_total", &[], |v| {
        v == per_feed as u64
    });
    for k in 0..per_feed {
        let channel = CHANNELS[k % 3];
        let d = data("udp", k);
        let msg = format!(r#"{{"data":{d},"channel":"{channel}"}}"#);
        udp.send_to(msg.as_bytes(), udp_addr).unwrap();
        expected.entry(channel).or_default().push(d);
        if k % 20 == 19 {
            // Pace the datagrams: the kernel drops what overflows the socket buffer.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // Every client reads until it has all its messages.
    let expected = &expected;
    let results = runtime.block_on(async {
        let reads = sockets.drain(..).enumerate().map(|(i, mut ws)| async move {
            let mine = channels_of(i);
            let want: usize = mine.iter().map(|c| expected[c].len()).sum();
            let mut got: HashMap<String, Vec<String>> = HashMap::new();
            let mut n = 0;
            while n < want {
                let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("client {i}: timed out after {n} of {want}"))
                    .expect("stream ended")
                    .expect("read");
                let Message::Text(text) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                if v["type"] == "welcome" {
                    continue; // the notice every connection starts with
                }
                let channel = v["channel"].as_str().unwrap().to_owned();
                got.entry(channel).or_default().push(text.to_string());
                n += 1;
            }
            (i, got)
        });
        futures_util::future::join_all(reads).await
    });
    for (i, got) in results {
        let mine = channels_of(i);
        assert_eq!(
            got.len(),
            mine.len(),
            "client {i} got other channels: {:?}",
            got.keys()
        );
        for channel in mine {
            let frames = &got[channel];
            let want = &expected[channel];
            assert_eq!(frames.len(), want.len(), "client {i} channel {channel}");
            for (seq0, (frame, data)) in frames.iter().zip(want).enumerate() {
                let exact = format!(
                    r#"{{"channel":"{channel}","seq":{},"data":{data}}}"#,
                    seq0 + 1
                );
                assert_eq!(frame, &exact, "client {i}");
            }
        }
    }
    let delivered = server.metric("ringcast_frames_delivered_total", &[]);
    let want: usize = (0..clients)
        .map(|i| {
            channels_of(i)
                .iter()
                .map(|c| expected[c].len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(delivered, want as u64);
    assert_eq!(server.metric("ringcast_feed_udp_drops_total", &[]), 0);
}
