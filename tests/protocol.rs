//! RFC 6455 framing rules, seen by a real client over TCP: each violation
//! gets its close code and the TCP connection is closed; fragmentation,
//! interleaved control frames, UTF-8 across fragments and big messages work.

mod common;

use common::{RawClient, Server};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A frame to send: (fin, opcode, payload).
type Raw = (bool, u8, Vec<u8>);

/// Sends `frames` (fin, opcode, payload) and expects a close with `code`,
/// then the end of the TCP connection.
fn expect_close(server: &Server, path: &str, frames: &[Raw], code: u16, what: &str) {
    let mut c = RawClient::connect(server.addr, path);
    if path.starts_with("/ws") {
        c.read_welcome();
    }
    for (fin, op, payload) in frames {
        c.send(*fin, *op, payload);
    }
    let frame = c
        .read_non_ping()
        .unwrap_or_else(|| panic!("{what}: no close frame"));
    assert_eq!(frame.opcode, 8, "{what}: expected close, got {frame:?}");
    assert_eq!(frame.close_code(), Some(code), "{what}: {frame:?}");
    assert!(c.expect_eof(), "{what}: TCP connection not closed");
}

#[test]
fn violations_get_their_close_codes() {
    let server = Server::start(&["--echo"]);
    let t = |fin: bool, op: u8, p: &[u8]| (fin, op, p.to_vec());
    let cases: Vec<(&str, Vec<Raw>, u16)> = vec![
        ("reserved opcode 3", vec![t(true, 3, b"x")], 1002),
        ("reserved control opcode 11", vec![t(true, 11, b"")], 1002),
        ("ping over 125 bytes", vec![t(true, 9, &[b'p'; 126])], 1002),
        (
            "fragmented ping",
            vec![t(false, 9, b"a"), t(true, 0, b"b")],
            1002,
        ),
        (
            "continuation without a message",
            vec![t(true, 0, b"x")],
            1002,
        ),
        (
            "text inside a fragmented message",
            vec![t(false, 1, b"a"), t(true, 1, b"b")],
            1002,
        ),
        (
            "invalid UTF-8",
            vec![t(
                true,
                1,
                &[
                    0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
                ],
            )],
            1007,
        ),
        (
            "close code 1005",
            vec![t(true, 8, &1005u16.to_be_bytes())],
            1002,
        ),
        (
            "close code 999",
            vec![t(true, 8, &999u16.to_be_bytes())],
            1002,
        ),
        (
            "close code 5000",
            vec![t(true, 8, &5000u16.to_be_bytes())],
            1002,
        ),
        ("1-byte close", vec![t(true, 8, &[3])], 1002),
        (
            "close reason not UTF-8",
            vec![t(true, 8, &[0x03, 0xe8, 0xff, 0xfe])],
            1002,
        ),
    ];
    for (what, frames, code) in &cases {
        expect_close(&server, "/echo", frames, *code, what);
    }
    let n = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"protocol_error\""],
        |v| v >= 10,
    );
    assert!(n >= 10, "{n}");
}

#[test]
fn unmasked_frame_is_1002() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    let f = c.read_non_ping().expect("close");
    assert_eq!(f.close_code(), Some(1002));
    assert!(c.expect_eof());
}

#[test]
fn reserved_bits_are_1002() {
    let server = Server::start(&["--echo"]);
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut c = RawClient::connect(server.addr, "/echo");
        let mut frame = ringcast::protocol::frame::encode_client_frame(true, 1, b"x", [1, 2, 3, 4]);
        frame[0] |= rsv;
        c.send_raw(&frame);
        assert_eq!(
            c.read_non_ping().unwrap().close_code(),
            Some(1002),
            "rsv {rsv:#x}"
        );
        assert!(c.expect_eof());
    }
}

#[test]
fn invalid_utf8_fails_fast_inside_a_fragmented_message() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    // The second fragment is already invalid; the final one is never sent.
    c.send(false, 1, "κόσ".as_bytes());
    c.send(false, 0, &[0xed, 0xa0, 0x80]);
    let f = c.read_non_ping().expect("close before the message ends");
    assert_eq!(f.close_code(), Some(1007));
}

#[test]
fn message_over_the_limit_is_1009() {
    let server = Server::start(&[
        "--echo",
        "--max-message",
        "1KiB",
        "--echo-max-message",
        "4KiB",
    ]);
    // /echo has its own (larger) limit.
    expect_close(
        &server,
        "/echo",
        &[(true, 2, vec![0; 5000])],
        1009,
        "echo over 4 KiB",
    );
    let mut c = RawClient::connect(server.addr, "/echo");
    c.send(true, 2, &[7; 4000]);
    assert_eq!(c.read_frame().unwrap().payload.len(), 4000);
    // /ws: the limit applies across fragments too.
    expect_close(
        &server,
        "/ws",
        &[(false, 1, vec![b'a'; 600]), (true, 0, vec![b'b'; 600])],
        1009,
        "ws over 1 KiB in two fragments",
    );
}

#[test]
fn close_handshake_echoes_the_code_then_closes_tcp() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    c.send(true, 8, &payload);
    let f = c.read_non_ping().unwrap();
    assert_eq!((f.opcode, f.close_code()), (8, Some(1000)));
    assert!(c.expect_eof());
    // An empty close is answered with an empty close.
    let mut c = RawClient::connect(server.addr, "/echo");
    c.send(true, 8, b"");
    let f = c.read_non_ping().unwrap();
    assert_eq!((f.opcode, f.payload.len()), (8, 0));
    assert!(c.expect_eof());
    let n = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"client_close\""],
        |v| v >= 2,
    );
    assert!(n >= 2, "{n}");
}

#[test]
fn fragments_with_interleaved_pings() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    c.send(false, 1, b"Hello, ");
    c.send(true, 9, b"ping-1");
    c.send(false, 0, b"fragmented ");
    c.send(true, 9, b"ping-2");
    c.send(true, 0, b"world");
    let pong1 = c.read_frame().unwrap();
    assert_eq!(
        (pong1.opcode, pong1.payload.as_slice()),
        (10, &b"ping-1"[..])
    );
    let pong2 = c.read_frame().unwrap();
    assert_eq!(
        (pong2.opcode, pong2.payload.as_slice()),
        (10, &b"ping-2"[..])
    );
    let msg = c.read_frame().unwrap();
    assert_eq!((msg.opcode, msg.text()), (1, "Hello, fragmented world"));
}

#[test]
fn utf8_split_across_fragments_is_accepted() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    let text = "κόσμε — ☺ 𝄞";
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let op = if i == 0 { 1 } else { 0 };
        c.send(i == bytes.len() - 1, op, &[*b]);
    }
    assert_eq!(c.read_frame().unwrap().text(), text);
}

#[test]
fn binary_stays_binary_and_zero_length_frames_work() {
    let server = Server::start(&["--echo"]);
    let mut c = RawClient::connect(server.addr, "/echo");
    c.send(true, 2, &[0, 255, 1]);
    let f = c.read_frame().unwrap();
    assert_eq!((f.opcode, f.payload), (2, vec![0, 255, 1]));
    for _ in 0..50 {
        c.send(true, 1, b"");
    }
    for _ in 0..50 {
        let f = c.read_frame().unwrap();
        assert_eq!((f.opcode, f.payload.len()), (1, 0));
    }
}

#[tokio::test]
async fn one_mib_echo_through_a_real_client() {
    let server = Server::start(&["--echo"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/echo"))
        .await
        .expect("connect");
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    let text: String = "ringcast ☺ ".repeat(100_000);
    ws.send(Message::Text(text.clone().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(b.as_ref(), big.as_slice()),
        other => panic!("expected binary, got {other:?}"),
    }
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("expected text, got {other:?}"),
    }
    ws.close(None).await.unwrap();
}
