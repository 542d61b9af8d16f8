//! Feed envelopes in, channel frames out. Pure.
//!
//! A publisher sends `{"channel": "<name>", "data": <any JSON>}`; subscribers
//! receive exactly `{"channel":"<name>","seq":<n>,"data":<data>}` with `data`
//! byte-for-byte as published. The parser is serde_json with `RawValue`: it
//! validates the whole message as JSON and hands back the exact byte span of
//! `data`, without copying or re-serialising it. (simd-json, the usual
//! faster-JSON choice, builds a tape that does not keep source offsets, so it cannot
//! return the original bytes of a value; see the README for the comparison.)

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::frame::{MAX_SERVER_HEADER, OpCode, write_server_header};

pub use crate::protocol::channel::{DEFAULT_CHANNEL, MAX_CHANNEL_NAME, is_valid_channel_name};

/// Why a feed message was refused; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum FeedError {
    /// Not a JSON object (or not JSON at all: binary garbage lands here).
    MalformedJson,
    /// No `data` field.
    MissingData,
    /// `channel` is not a string of 1–128 `[A-Za-z0-9._:-]`.
    BadChannel,
    /// Larger than `--max-feed-message`.
    Oversize,
    /// A Unix publisher disconnected in the middle of a line.
    PartialLine,
    /// The channel would exceed the server's channel limit.
    TooManyChannels,
}

impl FeedError {
    pub const ALL: [FeedError; 6] = [
        FeedError::MalformedJson,
        FeedError::MissingData,
        FeedError::BadChannel,
        FeedError::Oversize,
        FeedError::PartialLine,
        FeedError::TooManyChannels,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn label(self) -> &'static str {
        match self {
            FeedError::MalformedJson => "malformed_json",
            FeedError::MissingData => "missing_data",
            FeedError::BadChannel => "bad_channel",
            FeedError::Oversize => "oversize",
            FeedError::PartialLine => "partial_line",
            FeedError::TooManyChannels => "too_many_channels",
        }
    }
}

/// A parsed envelope borrowing from the message bytes.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub channel: Cow<'a, str>,
    pub data: &'a [u8],
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Parses and validates one feed message.
pub fn parse(message: &[u8]) -> Result<Envelope<'_>, FeedError> {
    // Cheap pre-check: anything that is not an object is malformed, and
    // serde would otherwise report a "missing field" for some non-objects.
    let trimmed = message.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return Err(FeedError::MalformedJson);
    }
    let wire: Wire<'_> = serde_json::from_slice(message).map_err(|_| FeedError::MalformedJson)?;
    let data = wire.data.ok_or(FeedError::MissingData)?;
    let channel = match wire.channel {
        None => Cow::Borrowed(DEFAULT_CHANNEL),
        Some(raw) => decode_channel(raw.get())?,
    };
    if !is_valid_channel_name(&channel) {
        return Err(FeedError::BadChannel);
    }
    Ok(Envelope {
        channel,
        data: data.get().as_bytes(),
    })
}

/// The channel field's value, already validated as JSON: a string without
/// escapes is borrowed as is (the common case, no allocation).
fn decode_channel(raw: &str) -> Result<Cow<'_, str>, FeedError> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| FeedError::BadChannel),
    }
}

const PREFIX: &[u8] = b"{\"channel\":\"";
const SEQ: &[u8] = b"\",\"seq\":";
const DATA: &[u8] = b",\"data\":";
const SUFFIX: &[u8] = b"}";

/// The complete WebSocket text frame delivered for a message: header and
/// payload in one buffer, built once and shared by every subscriber.
pub fn encode_frame(channel: &str, seq: u64, data: &[u8]) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(seq).as_bytes();
    let payload_len = PREFIX.len()
        + channel.len()
        + SEQ.len()
        + seq.len()
        + DATA.len()
        + data.len()
        + SUFFIX.len();
    let mut header = [0u8; MAX_SERVER_HEADER];
    let header_len = write_server_header(&mut header, true, OpCode::Text, payload_len);
    let mut out = BytesMut::with_capacity(header_len + payload_len);
    out.put_slice(&header[..header_len]);
    out.put_slice(PREFIX);
    out.put_slice(channel.as_bytes());
    out.put_slice(SEQ);
    out.put_slice(seq);
    out.put_slice(DATA);
    out.put_slice(data);
    out.put_slice(SUFFIX);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_kept_byte_for_byte() {
        let msg = br#"{"channel":"prices", "data" :  {"b": 1.50,  "a":[1 ,2], "s":"\u00e9"}  }"#;
        let env = parse(msg).unwrap();
        assert_eq!(env.channel, "prices");
        assert_eq!(env.data, br#"{"b": 1.50,  "a":[1 ,2], "s":"\u00e9"}"#);
    }

    #[test]
    fn numbers_beyond_f64_pass_through_untouched() {
        // Valid JSON, though many parsers cannot represent it; it is the
        // subscriber's business, and ringcast must neither refuse nor round it.
        let env = parse(br#"{"data":[1E999, 123456789012345678901234567890]}"#).unwrap();
        assert_eq!(env.data, b"[1E999, 123456789012345678901234567890]");
    }

    #[test]
    fn channel_defaults_and_escapes() {
        assert_eq!(parse(br#"{"data":1}"#).unwrap().channel, "default");
        // null counts as left out.
        assert_eq!(
            parse(br#"{"channel":null,"data":1}"#).unwrap().channel,
            "default"
        );
        // An escaped name is decoded before validation.
        assert_eq!(
            parse(br#"{"channel":"\u0061b","data":1}"#).unwrap().channel,
            "ab"
        );
        // Field order does not matter; unknown fields are ignored.
        let env = parse(br#"{"data":"x","id":7,"channel":"a.b:c-d_e"}"#).unwrap();
        assert_eq!(
            (env.channel.as_ref(), env.data),
            ("a.b:c-d_e", &b"\"x\""[..])
        );
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], FeedError)] = &[
            (b"", FeedError::MalformedJson),
            (b"not json", FeedError::MalformedJson),
            (b"[1,2]", FeedError::MalformedJson),
            (b"\"str\"", FeedError::MalformedJson),
            (b"\x00\xff\xfe{", FeedError::MalformedJson),
            (b"{\"data\":1", FeedError::MalformedJson),
            (b"{\"data\":1} trailing", FeedError::MalformedJson),
            (b"{\"data\":\"\xff\"}", FeedError::MalformedJson),
            (br#"{"channel":"a"}"#, FeedError::MissingData),
            (br#"{"channel":"","data":1}"#, FeedError::BadChannel),
            (br#"{"channel":"a b","data":1}"#, FeedError::BadChannel),
            (br#"{"channel":"a/b","data":1}"#, FeedError::BadChannel),
            (br#"{"channel":"\u00e9","data":1}"#, FeedError::BadChannel),
            (br#"{"channel":5,"data":1}"#, FeedError::BadChannel),
            (
                br#"{"channel":"a","channel":"b","data":1}"#,
                FeedError::MalformedJson,
            ),
            (br#"{"data":1,"data":2}"#, FeedError::MalformedJson),
        ];
        for (msg, want) in cases {
            assert_eq!(
                parse(msg).unwrap_err(),
                *want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        let long = format!(r#"{{"channel":"{}","data":1}}"#, "a".repeat(129));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), FeedError::BadChannel);
        let max = format!(r#"{{"channel":"{}","data":1}}"#, "a".repeat(128));
        assert!(parse(max.as_bytes()).is_ok());
    }

    #[test]
    fn frame_is_exactly_the_contract() {
        let frame = encode_frame("prices", 42, br#"{"p": 1}"#);
        let text = br#"{"channel":"prices","seq":42,"data":{"p": 1}}"#;
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1] as usize, text.len());
        assert_eq!(&frame[2..], text);
        // A frame needing the 16-bit length form.
        let data = vec![b'1'; 300];
        let frame = encode_frame("a", u64::MAX, &data);
        assert_eq!(frame[1], 126);
        let len = u16::from_be_bytes([frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        assert!(frame.ends_with(b"1111}"));
    }
}
