//! The `/ws` query string: which channels to subscribe to. Pure.

use crate::feed::envelope::{DEFAULT_CHANNEL, MAX_CHANNEL_NAME, is_valid_channel_name};

/// What a subscriber asked for in its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsQuery {
    /// Channels to subscribe to, deduplicated, in the order given.
    pub channels: Vec<String>,
}

/// Parses `channels=a,b` (percent-encoding allowed). No `channels` parameter
/// means `["default"]`; an empty one means none (subscribe later).
pub fn parse_ws_query(query: &str, max_channels: usize) -> Result<WsQuery, String> {
    let mut channels: Option<Vec<String>> = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "channels" {
            let list = channels.get_or_insert_with(Vec::new);
            for name in value.split(',').filter(|n| !n.is_empty()) {
                if !is_valid_channel_name(name) {
                    return Err(format!(
                        "invalid channel name '{}': use 1-{MAX_CHANNEL_NAME} characters of A-Z a-z 0-9 . _ : -",
                        name.chars().take(MAX_CHANNEL_NAME + 1).collect::<String>()
                    ));
                }
                if !list.iter().any(|c| c == name) {
                    list.push(name.to_owned());
                }
            }
        }
    }
    let channels = channels.unwrap_or_else(|| vec![DEFAULT_CHANNEL.to_owned()]);
    if channels.len() > max_channels {
        return Err(format!(
            "too many channels: {} asked, at most {max_channels} per connection",
            channels.len()
        ));
    }
    Ok(WsQuery { channels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        let q = |s: &str| parse_ws_query(s, 10).map(|q| q.channels);
        assert_eq!(q("").unwrap(), vec!["default"]);
        assert_eq!(q("x=1").unwrap(), vec!["default"]);
        assert_eq!(q("channels=a,b,a").unwrap(), vec!["a", "b"]);
        assert_eq!(q("channels=a%3A1,b").unwrap(), vec!["a:1", "b"]);
        assert_eq!(q("channels=a&channels=c").unwrap(), vec!["a", "c"]);
        assert!(q("channels=").unwrap().is_empty());
        assert!(
            q("channels=a%20b")
                .unwrap_err()
                .contains("invalid channel name 'a b'")
        );
        assert!(
            q("channels=1,2,3,4,5,6,7,8,9,10,11")
                .unwrap_err()
                .contains("too many")
        );
    }
}
