//! Where a fleet keeps things in Redis, and the shape of a live message.
//! Pure: names and encodings only.
//!
//! Per channel `c` (all under one prefix, default `ringcast`):
//! - `ringcast:{c}:seq`: the channel's last seq, for the whole fleet (never
//!   expires: a count that started over would reuse seqs clients hold);
//! - `ringcast:{c}:log`: a stream of the last `--history` messages, entry id
//!   `<seq>-0`, field `d` the message's data (expires after `--channel-ttl`
//!   without a publish);
//! - `ringcast:{c}:done:<id>`: the seq a publish with idempotency key `<id>`
//!   got, remembered for a while, so a retried publish is not applied twice;
//! - pub/sub channel `ringcast:live:c`: every message, as it is published.
//!
//! The braces make the per-channel keys one hash slot, so the publish script
//! touches one slot per channel plus the fleet's epoch.
//! `ringcast:epoch`: the fleet's epoch. `ringcast:probe:<node>`: a node's
//! liveness probe, published to itself.

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    pub fn seq(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:seq", self.prefix)
    }

    pub fn log(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:log", self.prefix)
    }

    pub fn done(&self, channel: &str, id: &str) -> String {
        format!("{}:{{{channel}}}:done:{id}", self.prefix)
    }

    pub fn live(&self, channel: &str) -> String {
        format!("{}:live:{channel}", self.prefix)
    }

    pub fn probe(&self, node: &str) -> String {
        format!("{}:probe:{node}", self.prefix)
    }

    /// The ringcast channel a live pub/sub channel carries.
    pub fn channel_of_live<'a>(&self, live: &'a str) -> Option<&'a str> {
        live.strip_prefix(self.prefix.as_str())?
            .strip_prefix(":live:")
    }
}

/// A live message as published: `<epoch> <seq> <data>`.
pub fn encode_live(epoch: &str, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(epoch.len() + 22 + data.len());
    out.extend_from_slice(epoch.as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b' ');
    out.extend_from_slice(data);
    out
}

/// A live message, read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Live<'a> {
    pub epoch: &'a str,
    pub seq: u64,
    pub data: &'a [u8],
}

/// Parses `<epoch> <seq> <data>`; `None` for anything else.
pub fn decode_live(payload: &[u8]) -> Option<Live<'_>> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&payload[..space]).ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    if epoch.is_empty() || seq == 0 {
        return None;
    }
    Some(Live {
        epoch,
        seq,
        data: &rest[space + 1..],
    })
}

/// The seq of a stream entry id `<seq>-0`.
pub fn seq_of_entry(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// The publish, atomic on the Redis server: check the epoch (creating the
/// fleet's first one if there is none: a Redis that lost its data), skip a
/// publish already applied (its idempotency key), take the next seq, append
/// to the channel's log capped near the history length, remember the key,
/// and publish for live fan-out. Answers `{1, seq}` (applied), `{2, seq}`
/// (applied before, by an earlier try) or `{0, epoch}` (the fleet's epoch is
/// not the one the node sent: it adopts it and publishes again).
///
/// KEYS: epoch, seq, log, done. ARGV: proposed epoch, node's epoch, data,
/// history length, log TTL (ms), done TTL (ms), live channel.
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
if epoch ~= ARGV[2] then
  return {0, epoch}
end
local done = redis.call('GET', KEYS[4])
if done then
  return {2, tonumber(done)}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], seq, 'PX', ARGV[6])
redis.call('PUBLISH', ARGV[7], epoch .. ' ' .. seq .. ' ' .. ARGV[3])
return {1, seq}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_share_a_slot_per_channel() {
        let k = Keys::new("rc");
        assert_eq!(k.seq("prices.eur"), "rc:{prices.eur}:seq");
        assert_eq!(k.log("prices.eur"), "rc:{prices.eur}:log");
        assert_eq!(k.done("a", "n1:7"), "rc:{a}:done:n1:7");
        assert_eq!(k.live("a:b"), "rc:live:a:b");
        assert_eq!(k.channel_of_live("rc:live:a:b"), Some("a:b"));
        assert_eq!(k.channel_of_live("other:live:a"), None);
        assert_eq!(k.channel_of_live(&k.probe("n1")), None);
    }

    #[test]
    fn live_messages_round_trip_and_junk_is_refused() {
        let m = encode_live("e1", 42, br#"{"p": 1 2}"#);
        assert_eq!(
            decode_live(&m),
            Some(Live {
                epoch: "e1",
                seq: 42,
                data: br#"{"p": 1 2}"#
            })
        );
        for junk in [&b""[..], b"e1", b"e1 x data", b" 1 d", b"e1 0 d", b"e1 5"] {
            assert_eq!(decode_live(junk), None, "{junk:?}");
        }
        assert_eq!(seq_of_entry("17-0"), Some(17));
        assert_eq!(seq_of_entry("17-1"), None);
    }

    proptest! {
        #[test]
        fn any_live_message_round_trips(seq in 1u64.., data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let m = encode_live("abc", seq, &data);
            let live = decode_live(&m).unwrap();
            prop_assert_eq!(live.seq, seq);
            prop_assert_eq!(live.data, &data[..]);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_live(&bytes);
        }
    }
}
