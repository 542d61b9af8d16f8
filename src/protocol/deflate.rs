//! permessage-deflate (RFC 7692): negotiating it at the handshake, and
//! compressing and inflating whole messages. Pure: no I/O.
//!
//! ringcast always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, so
//! one compressed frame serves every subscriber that negotiated the
//! extension, and no connection keeps a compression window between messages
//! (an idle compressed connection costs what an uncompressed one does). The
//! server may ask for `client_no_context_takeover` even when it was not
//! offered (§7.1.1.1).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The trailer a sync flush ends with; stripped from each compressed
/// message on the wire and put back before inflating (§7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The largest LZ77 window our compressed messages may use
    /// (`server_max_window_bits`, 15 unless the client asked for less).
    pub server_window_bits: u8,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response(&self) -> String {
        let mut value = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.server_window_bits < 15 {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        value
    }

    /// Whether broadcast frames, compressed once with a full window, may be
    /// sent to this client as they are.
    pub fn takes_shared_frames(&self) -> bool {
        self.server_window_bits == 15
    }
}

/// Picks the first permessage-deflate offer we can honour from the
/// `Sec-WebSocket-Extensions` header values (in order); `None`: decline.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    header_values
        .into_iter()
        .flat_map(split_outside_quotes(','))
        .find_map(|offer| accept_offer(&offer))
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(sep: char) -> impl Fn(&str) -> Vec<String> {
    move |text| {
        let mut parts = vec![String::new()];
        let mut quoted = false;
        for c in text.chars() {
            match c {
                '"' => quoted = !quoted,
                c if c == sep && !quoted => parts.push(String::new()),
                c => parts.last_mut().map_or((), |p| p.push(c)),
            }
        }
        parts
    }
}

/// One offer: `permessage-deflate` and its parameters, each valid and
/// given once, or it is declined (§7.1).
fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = split_outside_quotes(';')(offer).into_iter();
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_window_bits = 15;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (param.trim().to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: &str| -> Option<u8> {
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
            ok.then(|| v.parse().ok())
                .flatten()
                .filter(|b| (8..=15).contains(b))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_window_bits = bits(v)?,
            // The client says it can limit its own window; we do not ask it to
            // (we inflate any window), so the value only has to be valid.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(Agreement { server_window_bits })
}

/// Compresses whole messages, each on its own (no context kept between
/// them). Keeps its working memory from one message to the next.
pub struct Deflater {
    compress: Compress,
    window_bits: u8,
}

/// The level broadcast messages are compressed at: small JSON messages gain
/// little from more effort, and the one compression is on the feed's path.
pub const LEVEL: u32 = 3;

impl Deflater {
    /// A compressor whose window is at most `window_bits` (9..=15; zlib has no
    /// raw 8-bit window, so an 8-bit limit is met by not compressing).
    pub fn new(window_bits: u8) -> Option<Deflater> {
        (9..=15).contains(&window_bits).then(|| Deflater {
            compress: Compress::new_with_window_bits(Compression::new(LEVEL), false, window_bits),
            window_bits,
        })
    }

    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// The compressed form of `payload` as it goes on the wire (without the
    /// sync-flush trailer).
    pub fn compress(&mut self, payload: &[u8]) -> Vec<u8> {
        self.compress.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.compress.total_in();
            // Output space is always left, so this only fails on a bug in
            // the library; a message then goes uncompressed upstream.
            if self
                .compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                return Vec::new();
            }
            input = &input[(self.compress.total_in() - before_in) as usize..];
            if input.is_empty() && out.ends_with(&TAIL) {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
        out
    }
}

/// One compressor per window size, made when first needed (for a shard's
/// `/echo` connections, which compress what they send back each for itself).
#[derive(Default)]
pub struct DeflaterCache {
    by_bits: [Option<Deflater>; 7],
}

impl DeflaterCache {
    /// The compressor for windows of at most `bits`; `None` for 8 (met by
    /// not compressing).
    pub fn get(&mut self, bits: u8) -> Option<&mut Deflater> {
        let index = usize::from(bits.checked_sub(9)?);
        let slot = self.by_bits.get_mut(index)?;
        if slot.is_none() {
            *slot = Deflater::new(bits);
        }
        slot.as_mut()
    }
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close 1009).
    TooBig,
    /// It is not valid deflate data (close 1007).
    Corrupt,
}

/// Inflates one message's compressed payload, to at most `limit` bytes (a
/// little more is allocated at most, never what the data would inflate to).
/// The inflater lives only for this call: no state is kept between messages.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut inflater = Decompress::new_with_window_bits(false, 15);
    let mut out = Vec::new();
    for (part, last) in [(compressed, false), (&TAIL[..], true)] {
        let mut input = part;
        loop {
            if out.len() == out.capacity() {
                // Room up to one byte past the limit, so going over shows.
                let room = out.capacity().max(1024).min(limit + 1 - out.len());
                out.reserve_exact(room);
            }
            let (before, produced) = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (inflater.total_in() - before) as usize;
            input = &input[used..];
            if used == 0 && out.len() == produced && out.len() < out.capacity() {
                break; // no progress possible: the part is used up
            }
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block ends the stream: only the trailer may follow.
                return if input.is_empty() || last {
                    Ok(out)
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            // Done with this part once its input is used and the output had
            // room left (so nothing is pending inside the inflater).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_taken_in_order_and_invalid_ones_declined() {
        let agreed = |h: &str| negotiate([h]);
        let agreement = Agreement {
            server_window_bits: 15,
        };
        let full = Some(agreement);
        assert_eq!(agreed("permessage-deflate"), full);
        assert_eq!(agreed("permessage-deflate; client_max_window_bits"), full);
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=10"),
            Some(Agreement {
                server_window_bits: 10
            })
        );
        assert_eq!(agreed("x-webkit-deflate-frame"), None);
        // Invalid: unknown or repeated parameters, bad values.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        // The first acceptable one wins, across commas and header lines.
        assert_eq!(
            negotiate([
                "permessage-deflate; foo, permessage-deflate; server_max_window_bits=\"12\""
            ]),
            Some(Agreement {
                server_window_bits: 12
            })
        );
        assert_eq!(negotiate(["foo", "permessage-deflate"]), full);
        assert_eq!(
            agreement.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn compressed_messages_inflate_back_each_on_its_own() {
        let mut deflater = Deflater::new(15).unwrap();
        let json = br#"{"channel":"prices","seq":1,"data":{"bid":101.25,"ask":101.5}}"#.repeat(20);
        let a = deflater.compress(&json);
        let b = deflater.compress(&json);
        assert_eq!(a, b, "no context carried from one message to the next");
        assert!(a.len() < json.len() / 4, "{} of {}", a.len(), json.len());
        assert_eq!(inflate(&a, 1 << 20).unwrap(), json);
        assert_eq!(inflate(&deflater.compress(b""), 10).unwrap(), b"");
        let small = Deflater::new(9).unwrap().compress(&json);
        assert_eq!(inflate(&small, 1 << 20).unwrap(), json);
        assert!(Deflater::new(8).is_none());
    }

    #[test]
    fn inflation_stops_at_the_limit_and_refuses_garbage() {
        let mut deflater = Deflater::new(15).unwrap();
        let bomb = deflater.compress(&vec![b'a'; 10 << 20]);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 64 << 10), Err(InflateError::TooBig));
        let exact = deflater.compress(&vec![b'a'; 1000]);
        assert_eq!(inflate(&exact, 1000).unwrap().len(), 1000);
        assert_eq!(inflate(&exact, 999), Err(InflateError::TooBig));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
    }
}
