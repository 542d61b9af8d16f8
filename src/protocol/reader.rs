//! Incremental reader of client frames (RFC 6455 §5), fed whatever bytes TCP
//! delivers, in pieces of any size.
//!
//! It enforces what a server must: masking, reserved bits, known opcodes,
//! control-frame rules, fragmentation order, a message-size limit, and UTF-8
//! validity of text *as the bytes arrive* (fail fast, §8.1), including code
//! points split across fragments. Each violation maps to the close code the
//! connection must be failed with. Pure: no I/O, no clock.
//!
//! With permessage-deflate negotiated, a message whose first frame has RSV1
//! set is compressed: it is inflated when its last frame arrives, to at most
//! the message limit, and only then checked for UTF-8.

use super::deflate::{InflateError, inflate};
use super::frame::{MAX_CONTROL_PAYLOAD, OpCode, apply_mask, is_valid_close_code};

/// Why the connection must be failed, and with which close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: a framing rule was broken; the text says which.
    Protocol(&'static str),
    /// 1007: text that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message over the configured limit.
    TooBig,
    /// 1007: a compressed message that does not inflate.
    BadCompression,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::InvalidUtf8 | Violation::BadCompression => 1007,
            Violation::TooBig => 1009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::InvalidUtf8 => "invalid UTF-8 in text message",
            Violation::TooBig => "message too big",
            Violation::BadCompression => "compressed message does not inflate",
        }
    }
}

/// Something the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message. The handler may take the buffer (`mem::take`)
    /// to keep the bytes without copying.
    Message {
        binary: bool,
        payload: &'a mut Vec<u8>,
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame: the code (absent when the payload was empty) and reason.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// What the handler wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop reading: the rest of the input is not looked at.
    Stop,
}

/// Buffers larger than this are released after their message rather than kept
/// for the next one, so a connection that once received a big message does
/// not hold the memory while idle.
const KEEP_BUFFER_CAPACITY: usize = 4 * 1024;

#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    op: OpCode,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    mask_pos: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    None,
    Text,
    Binary,
}

/// Reader state for one connection.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
    /// The message being read is compressed.
    compressed: bool,
    head: [u8; 14],
    head_len: u8,
    frame: Option<FrameInProgress>,
    kind: MessageKind,
    message: Vec<u8>,
    /// Prefix of `message` known to be valid UTF-8 (text only).
    utf8_valid: usize,
    control: Vec<u8>,
}

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        FrameReader {
            max_message,
            deflate: false,
            compressed: false,
            head: [0; 14],
            head_len: 0,
            frame: None,
            kind: MessageKind::None,
            message: Vec::new(),
            utf8_valid: 0,
            control: Vec::new(),
        }
    }

    /// A reader for a connection that negotiated permessage-deflate.
    pub fn with_deflate(max_message: usize) -> Self {
        FrameReader {
            deflate: true,
            ..FrameReader::new(max_message)
        }
    }

    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// True when no frame or message is half-read.
    pub fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.kind == MessageKind::None
    }

    /// Feeds received bytes; calls `handler` for each event, in order.
    /// Returns the violation that must fail the connection, if any.
    pub fn feed<F>(&mut self, mut input: &[u8], handler: &mut F) -> Result<Flow, Violation>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        while !input.is_empty() {
            if self.frame.is_none() {
                let used = self.read_header(input)?;
                input = &input[used..];
                match self.frame {
                    // Header still incomplete: all input consumed.
                    None => break,
                    Some(f) if f.remaining == 0 => {
                        if self.finish_frame(handler)? == Flow::Stop {
                            return Ok(Flow::Stop);
                        }
                    }
                    Some(_) => {}
                }
                continue;
            }
            let used = self.read_payload(input)?;
            input = &input[used..];
            if self.frame.is_some_and(|f| f.remaining == 0)
                && self.finish_frame(handler)? == Flow::Stop
            {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Accumulates header bytes, validating each as soon as it is known.
    /// Sets `self.frame` once the header is complete. Returns bytes consumed.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let mut used = 0;
        while used < input.len() {
            let needed = self.header_len_needed();
            if usize::from(self.head_len) == needed {
                break;
            }
            let take = (needed - usize::from(self.head_len)).min(input.len() - used);
            let start = usize::from(self.head_len);
            self.head[start..start + take].copy_from_slice(&input[used..used + take]);
            self.head_len += take as u8;
            used += take;
            if start < 2 && usize::from(self.head_len) >= 2 {
                self.check_first_two_bytes()?;
            }
        }
        if usize::from(self.head_len) == self.header_len_needed() {
            self.begin_frame()?;
        }
        Ok(used)
    }

    /// Header length implied by what has been read so far (2 until byte 1 is known).
    fn header_len_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + 4
    }

    fn check_first_two_bytes(&self) -> Result<(), Violation> {
        let b0 = self.head[0];
        let b1 = self.head[1];
        let op = OpCode::from_u8(b0 & 0x0f).ok_or(Violation::Protocol("unknown opcode"))?;
        // RSV1 marks a compressed message: on its first frame only (§6.1 of
        // RFC 7692), and only when the extension was negotiated.
        let rsv1_allowed = self.deflate && matches!(op, OpCode::Text | OpCode::Binary);
        if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !rsv1_allowed) {
            return Err(Violation::Protocol("reserved bits set without extension"));
        }
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(Violation::Protocol("client frame not masked"));
        }
        let len7 = b1 & 0x7f;
        if op.is_control() {
            if !fin {
                return Err(Violation::Protocol("fragmented control frame"));
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(Violation::Protocol("control frame payload over 125 bytes"));
            }
        } else {
            match (op, self.kind) {
                (OpCode::Continuation, MessageKind::None) => {
                    return Err(Violation::Protocol("continuation frame without a message"));
                }
                (OpCode::Text | OpCode::Binary, MessageKind::Text | MessageKind::Binary) => {
                    return Err(Violation::Protocol(
                        "new message inside a fragmented message",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn begin_frame(&mut self) -> Result<(), Violation> {
        let b0 = self.head[0];
        let len7 = self.head[1] & 0x7f;
        let (len, mask_at) = match len7 {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        // check_first_two_bytes ran already, so the opcode is known.
        let op = OpCode::from_u8(b0 & 0x0f).ok_or(Violation::Protocol("unknown opcode"))?;
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.head[mask_at..mask_at + 4]);
        self.head_len = 0;
        if !op.is_control() {
            let total = (self.message.len() as u64).saturating_add(len);
            if total > self.max_message as u64 {
                return Err(Violation::TooBig);
            }
            if op != OpCode::Continuation {
                self.kind = if op == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                self.utf8_valid = 0;
                self.compressed = b0 & 0x40 != 0;
            }
            // Reserve once per frame, not per TCP read, but not more than a
            // modest amount up front: a peer announcing a huge frame and then
            // sending nothing must not make us allocate it.
            self.message.reserve((len as usize).min(64 * 1024));
        }
        self.frame = Some(FrameInProgress {
            op,
            fin: b0 & 0x80 != 0,
            remaining: len,
            mask,
            mask_pos: 0,
        });
        Ok(())
    }

    fn read_payload(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(0);
        };
        let take = (frame.remaining.min(input.len() as u64)) as usize;
        let dest = if frame.op.is_control() {
            &mut self.control
        } else {
            &mut self.message
        };
        let start = dest.len();
        dest.extend_from_slice(&input[..take]);
        frame.mask_pos =
            apply_mask(&mut dest[start..], frame.mask, usize::from(frame.mask_pos)) as u8;
        frame.remaining -= take as u64;
        if !frame.op.is_control() && self.kind == MessageKind::Text && !self.compressed {
            self.check_utf8_so_far()?;
        }
        Ok(take)
    }

    /// Validates the text received since the last check. An incomplete code
    /// point at the end is fine (more may follow); anything else fails now.
    fn check_utf8_so_far(&mut self) -> Result<(), Violation> {
        let pending = &self.message[self.utf8_valid..];
        match simdutf8::compat::from_utf8(pending) {
            Ok(_) => {
                self.utf8_valid = self.message.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() => {
                self.utf8_valid += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(Violation::InvalidUtf8),
        }
    }

    fn finish_frame<F>(&mut self, handler: &mut F) -> Result<Flow, Violation>
    where
        F: FnMut(Event<'_>) -> Flow,
    {
        let Some(frame) = self.frame.take() else {
            return Ok(Flow::Continue);
        };
        let flow = match frame.op {
            OpCode::Ping => handler(Event::Ping(&self.control)),
            OpCode::Pong => handler(Event::Pong(&self.control)),
            OpCode::Close => {
                let (code, reason) = parse_close_payload(&self.control)?;
                handler(Event::Close { code, reason })
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if !frame.fin {
                    return Ok(Flow::Continue);
                }
                let binary = self.kind == MessageKind::Binary;
                if self.compressed {
                    self.message =
                        inflate(&self.message, self.max_message).map_err(|e| match e {
                            InflateError::TooBig => Violation::TooBig,
                            InflateError::Corrupt => Violation::BadCompression,
                        })?;
                    if !binary && simdutf8::basic::from_utf8(&self.message).is_err() {
                        return Err(Violation::InvalidUtf8);
                    }
                } else if !binary && self.utf8_valid != self.message.len() {
                    return Err(Violation::InvalidUtf8);
                }
                self.kind = MessageKind::None;
                self.compressed = false;
                self.utf8_valid = 0;
                let flow = handler(Event::Message {
                    binary,
                    payload: &mut self.message,
                });
                release_or_clear(&mut self.message);
                return Ok(flow);
            }
        };
        release_or_clear(&mut self.control);
        Ok(flow)
    }
}

fn release_or_clear(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUFFER_CAPACITY {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// Parses and validates a close frame's payload (§5.5.1, §7.4).
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), Violation> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(Violation::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            let reason = simdutf8::basic::from_utf8(&payload[2..])
                .map_err(|_| Violation::Protocol("close reason is not UTF-8"))?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::encode_client_frame;
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Msg(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

    /// Feeds `bytes` in pieces of `chunk` and collects events.
    fn run(bytes: &[u8], chunk: usize, max: usize) -> (Vec<Owned>, Result<(), Violation>) {
        let mut reader = FrameReader::new(max);
        let mut events = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let r = reader.feed(piece, &mut |e| {
                events.push(match e {
                    Event::Message { binary, payload } => Owned::Msg(binary, payload.clone()),
                    Event::Ping(p) => Owned::Ping(p.to_vec()),
                    Event::Pong(p) => Owned::Pong(p.to_vec()),
                    Event::Close { code, reason } => Owned::Close(code, reason.to_owned()),
                });
                Flow::Continue
            });
            if let Err(v) = r {
                return (events, Err(v));
            }
        }
        (events, Ok(()))
    }

    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, op, payload, KEY)
    }

    #[test]
    fn single_text_any_chunking() {
        let bytes = frame(true, 1, "hello κόσμε".as_bytes());
        for chunk in 1..=bytes.len() {
            let (ev, r) = run(&bytes, chunk, 1000);
            assert_eq!(r, Ok(()));
            assert_eq!(
                ev,
                vec![Owned::Msg(false, "hello κόσμε".as_bytes().to_vec())]
            );
        }
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut bytes = frame(false, 1, b"frag");
        bytes.extend(frame(true, 9, b"ping!"));
        bytes.extend(frame(false, 0, b"ment"));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(true, 0, b"ed"));
        for chunk in [1, 2, 5, 1000] {
            let (ev, r) = run(&bytes, chunk, 1000);
            assert_eq!(r, Ok(()));
            assert_eq!(
                ev,
                vec![
                    Owned::Ping(b"ping!".to_vec()),
                    Owned::Pong(vec![]),
                    Owned::Msg(false, b"fragmented".to_vec()),
                ]
            );
        }
    }

    #[test]
    fn utf8_split_across_fragments() {
        let text = "κόσμε".as_bytes();
        let mut bytes = Vec::new();
        for (i, b) in text.iter().enumerate() {
            let op = if i == 0 { 1 } else { 0 };
            bytes.extend(frame(i == text.len() - 1, op, &[*b]));
        }
        let (ev, r) = run(&bytes, 3, 1000);
        assert_eq!(r, Ok(()));
        assert_eq!(ev, vec![Owned::Msg(false, text.to_vec())]);
    }

    #[test]
    fn invalid_utf8_fails_before_frame_ends() {
        // 0xff can never appear in UTF-8: failure must come with the byte,
        // not when the (large) frame completes.
        let mut payload = b"abc".to_vec();
        payload.push(0xff);
        payload.extend(vec![b'x'; 10_000]);
        let bytes = frame(true, 1, &payload);
        let mut reader = FrameReader::new(1 << 20);
        // Header (2 + 2 + 4) plus the first 4 payload bytes.
        let r = reader.feed(&bytes[..12], &mut |_| Flow::Continue);
        assert_eq!(r, Err(Violation::InvalidUtf8));
    }

    #[test]
    fn incomplete_code_point_at_message_end_is_invalid() {
        let (_, r) = run(&frame(true, 1, &[b'a', 0xce]), 100, 1000);
        assert_eq!(r, Err(Violation::InvalidUtf8));
    }

    #[test]
    fn violations() {
        let unmasked = vec![0x81, 0x01, b'a'];
        let mut rsv1 = frame(true, 1, b"x");
        rsv1[0] |= 0x40;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (rsv1, 1002),
            (frame(true, 3, b"x"), 1002),        // reserved opcode
            (frame(true, 0xB, b""), 1002),       // reserved control opcode
            (frame(false, 9, b"x"), 1002),       // fragmented ping
            (frame(true, 9, &[0u8; 126]), 1002), // oversize control
            (frame(true, 0, b"x"), 1002),        // continuation first
            ([frame(false, 1, b"a"), frame(true, 2, b"b")].concat(), 1002),
            (frame(true, 8, &[0x03]), 1002), // 1-byte close
            (frame(true, 8, &999u16.to_be_bytes()), 1002), // bad code
            (frame(true, 8, &[0x03, 0xe8, 0xff]), 1002), // non-UTF-8 reason
            (frame(true, 2, &[0u8; 101]), 1009),
            (
                [frame(false, 2, &[0u8; 60]), frame(true, 0, &[0u8; 60])].concat(),
                1009,
            ),
            (frame(true, 1, &[0xc0, 0x80]), 1007),
        ];
        for (i, (bytes, code)) in cases.iter().enumerate() {
            let (_, r) = run(bytes, 1, 100);
            assert_eq!(r.map_err(Violation::close_code), Err(*code), "case {i}");
        }
    }

    #[test]
    fn close_frames() {
        let (ev, r) = run(&frame(true, 8, b""), 1, 100);
        assert_eq!((ev, r), (vec![Owned::Close(None, String::new())], Ok(())));
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye ☺".as_bytes());
        let (ev, _) = run(&frame(true, 8, &p), 2, 100);
        assert_eq!(ev, vec![Owned::Close(Some(1000), "bye ☺".into())]);
    }

    #[test]
    fn zero_length_frames_loop() {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend(frame(true, 2, b""));
        }
        let (ev, r) = run(&bytes, 7, 100);
        assert_eq!(r, Ok(()));
        assert_eq!(ev.len(), 100);
    }

    #[test]
    fn stop_leaves_rest_unread() {
        let mut bytes = frame(true, 8, b"");
        bytes.extend(frame(true, 1, b"after"));
        let mut reader = FrameReader::new(100);
        let mut seen = 0;
        let flow = reader
            .feed(&bytes, &mut |_| {
                seen += 1;
                Flow::Stop
            })
            .unwrap();
        assert_eq!((flow, seen), (Flow::Stop, 1));
    }

    #[test]
    fn big_buffers_are_released() {
        let mut reader = FrameReader::new(1 << 20);
        reader
            .feed(&frame(true, 2, &vec![1u8; 100_000]), &mut |_| {
                Flow::Continue
            })
            .unwrap();
        assert!(reader.is_idle());
        assert_eq!(reader.message.capacity(), 0);
    }
}
