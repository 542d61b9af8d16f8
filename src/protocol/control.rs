//! Messages a `/ws` client may send, and the notices the server sends. Pure.
//!
//! Notices are JSON objects with a `"type"` field and no `"seq"`, so they can
//! never be mistaken for channel messages.

use serde::Deserialize;
use serde_json::json;

/// A client's control message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// `{"type":"ping"}`: answered with `{"type":"pong"}`.
    Ping,
    /// `{"type":"subscribe","channels":[...],"since":{"a":41}}`.
    Subscribe {
        channels: Vec<String>,
        #[serde(default)]
        since: std::collections::BTreeMap<String, u64>,
    },
    /// `{"type":"unsubscribe","channels":[...]}`.
    Unsubscribe { channels: Vec<String> },
    /// `{"type":"auth","token":"…"}`: authenticate (or refresh the token).
    Auth { token: String },
}

/// Parses a client text message; the error is a reason for the client.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage, String> {
    serde_json::from_slice(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            "not valid JSON".to_owned()
        } else {
            format!(
                "not a valid control message: {e} (expected type ping, subscribe, unsubscribe or auth)"
            )
        }
    })
}

/// `{"type":"welcome","epoch":"…","channels":{"a":41}}`: sent first on every
/// connection. The epoch changes each time the server starts, so a client can
/// tell its seqs belong to an older run.
pub fn welcome(epoch: &str, channels: &[(&str, u64)]) -> String {
    json!({
        "type": "welcome",
        "epoch": epoch,
        "channels": channel_map(channels),
    })
    .to_string()
}

/// `{"type":"subscribed","channels":{"a":41}}`: acknowledges a subscribe
/// message with each channel's current seq.
pub fn subscribed(channels: &[(&str, u64)]) -> String {
    json!({"type": "subscribed", "channels": channel_map(channels)}).to_string()
}

pub fn unsubscribed(channels: &[String]) -> String {
    json!({"type": "unsubscribed", "channels": channels}).to_string()
}

/// Seqs `from..=to` of `channel` are gone: the client must resync.
pub fn gap(channel: &str, from: u64, to: u64) -> String {
    json!({"type": "gap", "channel": channel, "from": from, "to": to}).to_string()
}

/// The client's `since` is ahead of the channel (the server restarted, or the
/// channel was dropped when idle): its seq is now `current`, and the next
/// message will be `current + 1`. (Not `seq`: notices never carry one.)
pub fn reset(channel: &str, current: u64) -> String {
    json!({"type": "reset", "channel": channel, "current": current}).to_string()
}

/// A token was accepted; it expires at `expires` (Unix seconds).
pub fn authenticated(expires: u64) -> String {
    json!({"type": "authenticated", "expires": expires}).to_string()
}

pub fn pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}

pub fn error(reason: &str) -> String {
    json!({"type": "error", "reason": reason}).to_string()
}

fn channel_map(channels: &[(&str, u64)]) -> serde_json::Map<String, serde_json::Value> {
    channels
        .iter()
        .map(|(name, seq)| ((*name).to_owned(), json!(seq)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_client_message(br#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_client_message(br#"{"type":"subscribe","channels":["a"],"since":{"a":4}}"#),
            Ok(ClientMessage::Subscribe {
                channels: vec!["a".into()],
                since: [("a".to_owned(), 4)].into_iter().collect(),
            })
        );
        assert_eq!(
            parse_client_message(br#"{"type":"unsubscribe","channels":["a","b"]}"#),
            Ok(ClientMessage::Unsubscribe {
                channels: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(parse_client_message(b"nope").unwrap_err(), "not valid JSON");
        for bad in [
            &br#"{"type":"dance"}"#[..],
            br#"{"type":"subscribe"}"#,
            br#"{"channels":["a"]}"#,
            br#"{"type":"subscribe","channels":"a"}"#,
            br#"[1]"#,
        ] {
            assert!(parse_client_message(bad).is_err());
        }
    }

    #[test]
    fn notices_have_a_type_and_no_seq() {
        for text in [
            welcome("e1", &[("a", 3)]),
            subscribed(&[("a", 3)]),
            unsubscribed(&["a".into()]),
            gap("a", 1, 5),
            reset("a", 0),
            pong(),
            authenticated(1),
            error("bad \"thing\""),
        ] {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["type"].is_string(), "{text}");
            assert!(v.get("seq").is_none(), "{text}");
        }
        assert_eq!(
            gap("a", 42, 99),
            r#"{"type":"gap","channel":"a","from":42,"to":99}"#
        );
    }
}
