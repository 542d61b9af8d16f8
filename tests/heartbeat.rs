//! Server pings on an interval and closes clients that stay silent after a ping.

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, Server};
use futures_util::StreamExt;

#[test]
fn silent_client_is_closed_after_interval_plus_timeout() {
    let server = Server::start(&["--ping-interval", "300ms", "--ping-timeout", "300ms"]);
    let mut c = RawClient::connect(server.addr, "/ws");
    let start = Instant::now();
    c.read_welcome();
    let ping = c.read_frame().expect("a ping");
    assert_eq!(ping.opcode, 9);
    let ping_at = start.elapsed();
    assert!(
        ping_at >= Duration::from_millis(250),
        "pinged too early: {ping_at:?}"
    );
    // Never answer: the next thing is a close, then the end of TCP.
    let close = c.read_frame().expect("a close frame");
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    let closed_at = start.elapsed();
    assert!(
        closed_at >= Duration::from_millis(550),
        "closed before interval + timeout: {closed_at:?}"
    );
    assert!(c.expect_eof());
    drop(c);
    let closed = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"ping_timeout\""],
        |v| v == 1,
    );
    assert_eq!(closed, 1);
}

#[tokio::test]
async fn client_answering_pings_stays_connected() {
    let server = Server::start(&["--ping-interval", "200ms", "--ping-timeout", "200ms"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws"))
        .await
        .unwrap();
    // tungstenite answers pings while we read; nothing else arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))))
                if t.contains(r#""type":"welcome""#) => {}
            Ok(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert!(
        pings >= 3,
        "only {pings} pings in 1.5 s at a 200 ms interval"
    );
    assert_eq!(
        server.metric(
            "ringcast_connections_closed_total",
            &["reason=\"ping_timeout\""]
        ),
        0
    );
}
