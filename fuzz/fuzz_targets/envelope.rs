//! The feed envelope parser and the frame it encodes: whatever is accepted
//! must produce a frame that is exactly the contract's JSON, with `data`
//! byte-for-byte as published.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::feed::envelope::{encode_frame, is_valid_channel_name, parse};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The delivered payload, read back as a subscriber would. `data` stays raw:
/// JSON allows numbers that serde_json's `Value` refuses (`1E999`), and the
/// contract is about the bytes, not their meaning.
#[derive(Deserialize)]
struct Delivered<'a> {
    channel: String,
    seq: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = parse(data) {
        assert!(is_valid_channel_name(&env.channel));
        let frame = encode_frame(&env.channel, 7, env.data);
        let payload_at = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let delivered: Delivered<'_> =
            serde_json::from_slice(&frame[payload_at..]).expect("delivered frame is JSON");
        assert_eq!(delivered.channel, env.channel);
        assert_eq!(delivered.seq, 7);
        assert_eq!(delivered.data.get().as_bytes(), env.data);
    }
});
