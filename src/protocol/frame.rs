//! WebSocket frame encoding (RFC 6455 §5.2) and the pieces shared by the
//! reader: opcodes, masking, close payloads. Pure, no I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    pub fn from_u8(op: u8) -> Option<OpCode> {
        Some(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Largest header a server (unmasked) frame can have.
pub const MAX_SERVER_HEADER: usize = 10;
/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Length of the header of an unmasked frame carrying `payload_len` bytes.
pub fn server_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Writes the header of an unmasked (server) frame into `out` and returns its length.
pub fn write_server_header(
    out: &mut [u8; MAX_SERVER_HEADER],
    fin: bool,
    op: OpCode,
    payload_len: usize,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | op as u8;
    match payload_len {
        0..=125 => {
            out[1] = payload_len as u8;
            2
        }
        126..=65535 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// A complete single-frame server message: header and payload in one buffer,
/// so one iovec sends it.
pub fn encode_server_frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut header, true, op, payload.len());
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&header[..n]);
    out.put_slice(payload);
    out.freeze()
}

/// The payload of an unmasked (server) frame encoded by this module.
pub fn server_frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or_default()
}

/// A whole message in one frame with RSV1 set: `compressed` is its
/// permessage-deflate form.
pub fn encode_compressed_frame(op: OpCode, compressed: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut header, true, op, compressed.len());
    header[0] |= 0x40;
    let mut out = BytesMut::with_capacity(n + compressed.len());
    out.put_slice(&header[..n]);
    out.put_slice(compressed);
    out.freeze()
}

/// A close frame with `code` and a reason, truncated on a character boundary
/// to fit the 125-byte control-frame limit.
pub fn encode_close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD);
    payload.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_server_frame(OpCode::Close, &payload)
}

/// XORs `data` with the 4-byte masking key, starting at key position `pos`
/// (0..4). Returns the key position after the data, for streaming use.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], pos: usize) -> usize {
    let pos = pos & 3;
    // Rotate the key so that byte 0 of the word lines up with data[0].
    let rotated = [
        key[pos],
        key[(pos + 1) & 3],
        key[(pos + 2) & 3],
        key[(pos + 3) & 3],
    ];
    let word = u32::from_ne_bytes(rotated);
    let wide = (u64::from(word) << 32) | u64::from(word);
    let wide_bytes = wide.to_ne_bytes();
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= wide_bytes[i & 3];
    }
    (pos + data.len()) & 3
}

/// Close codes a peer may send (RFC 6455 §7.4 and the IANA registry).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Encodes a masked client frame. Clients are the load generator and the
/// tests; the server never sends masked frames.
pub fn encode_client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((if fin { 0x80 } else { 0 }) | (opcode & 0x0f));
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes() {
        for (len, hl) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = encode_server_frame(OpCode::Binary, &vec![7u8; len]);
            assert_eq!(f.len(), len + hl);
            assert_eq!(server_header_len(len), hl);
            assert_eq!(f[0], 0x82);
        }
    }

    #[test]
    fn mask_streaming_equals_whole() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1usize, 3, 7, 8, 9, 500, 999] {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            let pos = apply_mask(a, key, 0);
            apply_mask(b, key, pos);
            assert_eq!(parts, whole, "split {split}");
        }
        let mut naive = data.clone();
        for (i, b) in naive.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        assert_eq!(naive, whole);
    }

    #[test]
    fn close_reason_truncated_on_char_boundary() {
        let f = encode_close_frame(4008, &"é".repeat(100));
        assert!(f.len() <= 2 + MAX_CONTROL_PAYLOAD);
        let payload = &f[2..];
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4008);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn close_codes() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
        ] {
            assert!(is_valid_close_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }
}
