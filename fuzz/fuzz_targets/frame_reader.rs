//! The client-frame reader, with its fragmentation and UTF-8 state carried
//! across arbitrary splits of the input. The first bytes choose the message
//! limit, the split sizes, and whether permessage-deflate was negotiated
//! (then RSV1 messages are inflated: still within the limit, still UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::reader::{Event, Flow, FrameReader};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let step = usize::from(data[2] & 0x7f).max(1);
    let mut reader = if data[2] & 0x80 != 0 {
        FrameReader::with_deflate(max)
    } else {
        FrameReader::new(max)
    };
    for piece in data[3..].chunks(step) {
        let result = reader.feed(piece, &mut |event| {
            match event {
                Event::Message { binary, payload } => {
                    assert!(payload.len() <= max);
                    if !binary {
                        assert!(
                            std::str::from_utf8(payload).is_ok(),
                            "invalid UTF-8 delivered"
                        );
                    }
                }
                Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
                Event::Close { code, reason } => {
                    if let Some(code) = code {
                        assert!(ringcast::protocol::frame::is_valid_close_code(code));
                    }
                    assert!(reason.len() <= 123);
                }
            }
            Flow::Continue
        });
        if result.is_err() {
            break;
        }
    }
});
