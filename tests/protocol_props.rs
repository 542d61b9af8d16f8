//! Property tests of the pure protocol code: encoding then parsing frames
//! round-trips under any split of the byte stream, and arbitrary bytes never
//! make the frame reader or the request parser panic.

use proptest::prelude::*;

use ringcast::protocol::frame::{apply_mask, encode_client_frame};
use ringcast::protocol::handshake::{parse_request_head, validate_upgrade};
use ringcast::protocol::reader::{Event, Flow, FrameReader};

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

fn message() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<String>().prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(Msg::Binary),
    ]
}

/// Encodes `msg` as fragments of at most `frag` bytes (never splitting a
/// text message's bytes differently from a real client: any split is legal).
fn encode(msg: &Msg, frag: usize, key: [u8; 4], ping_between: bool) -> Vec<u8> {
    let (op, bytes) = match msg {
        Msg::Text(t) => (1u8, t.as_bytes().to_vec()),
        Msg::Binary(b) => (2u8, b.clone()),
    };
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(frag.max(1)).collect()
    };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let fin = i == chunks.len() - 1;
        let opcode = if i == 0 { op } else { 0 };
        out.extend(encode_client_frame(fin, opcode, chunk, key));
        if ping_between && !fin {
            out.extend(encode_client_frame(true, 9, b"p", key));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn frames_round_trip_under_any_split(
        msgs in proptest::collection::vec(message(), 1..4),
        frag in 1usize..100_000,
        read in 1usize..5000,
        key in any::<[u8; 4]>(),
        ping_between in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(encode(m, frag, key, ping_between));
        }
        let mut reader = FrameReader::new(1 << 20);
        let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
        for piece in stream.chunks(read) {
            let r = reader.feed(piece, &mut |e| {
                if let Event::Message { binary, payload } = e {
                    got.push((binary, std::mem::take(payload)));
                }
                Flow::Continue
            });
            prop_assert!(r.is_ok(), "{:?}", r);
        }
        prop_assert!(reader.is_idle());
        prop_assert_eq!(got.len(), msgs.len());
        for (m, (binary, bytes)) in msgs.iter().zip(got) {
            match m {
                Msg::Text(t) => {
                    prop_assert!(!binary);
                    prop_assert_eq!(t.as_bytes(), bytes.as_slice());
                }
                Msg::Binary(b) => {
                    prop_assert!(binary);
                    prop_assert_eq!(b, &bytes);
                }
            }
        }
    }

    #[test]
    fn frame_reader_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        read in 1usize..64,
        max in 0usize..2000,
    ) {
        let mut reader = FrameReader::new(max);
        for piece in bytes.chunks(read) {
            if reader.feed(piece, &mut |_| Flow::Continue).is_err() {
                break;
            }
        }
    }

    #[test]
    fn request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
        if let Ok(Some((head, len))) = parse_request_head(&bytes) {
            prop_assert!(len <= bytes.len());
            let _ = validate_upgrade(&head);
        }
    }

    #[test]
    fn request_parser_never_panics_on_header_like_text(
        lines in proptest::collection::vec("[ -~]{0,40}", 0..20),
    ) {
        let mut text = String::from("GET /ws?x HTTP/1.1\r\n");
        for l in &lines {
            text.push_str(l);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        if let Ok(Some((head, _))) = parse_request_head(text.as_bytes()) {
            let _ = validate_upgrade(&head);
        }
    }

    #[test]
    fn masking_is_an_involution(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
        pos in 0usize..4,
    ) {
        let mut d = data.clone();
        apply_mask(&mut d, key, pos);
        apply_mask(&mut d, key, pos);
        prop_assert_eq!(d, data);
    }
}
