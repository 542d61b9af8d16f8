//! The `/ws` query string: which channels to subscribe to, and where to
//! resume them from. Pure.

use super::channel::{DEFAULT_CHANNEL, MAX_CHANNEL_NAME, is_valid_channel_name};

/// What a subscriber asked for in its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsQuery {
    /// Channels to subscribe to, deduplicated, in the order given.
    pub channels: Vec<String>,
    /// Resume points: deliver what came after this seq, per channel.
    pub since: Vec<(String, u64)>,
    /// The epoch the `since` positions belong to (`epoch=`, from the
    /// `welcome` the client saw), when it says.
    pub epoch: Option<String>,
    /// An auth token passed as `token=` (logged by proxies: prefer the
    /// subprotocol or the auth message, and short-lived tokens).
    pub token: Option<String>,
}

/// Why a `/ws` query was refused (the text is the 400 body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// More channels than `--max-subscriptions` allows.
    TooManyChannels { max: usize },
    /// A bad channel name or `since` value.
    Invalid(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::TooManyChannels { max } => {
                write!(f, "too many channels: at most {max} per connection")
            }
            QueryError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Parses `channels=a,b` (percent-encoding allowed) and `since=41` (one
/// channel) or `since=a:41,b:7`. No `channels` parameter means
/// `["default"]`; an empty one means none (subscribe later).
pub fn parse_ws_query(query: &str, max_channels: usize) -> Result<WsQuery, QueryError> {
    let mut channels: Option<Vec<String>> = None;
    let mut since_text: Option<String> = None;
    let mut token = None;
    let mut epoch = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "token" {
            token = Some(value.into_owned());
        } else if key == "epoch" {
            let valid = (1..=64).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(QueryError::Invalid(
                    "invalid epoch: send back the `epoch` of the welcome notice".to_owned(),
                ));
            }
            epoch = Some(value.into_owned());
        } else if key == "since" {
            since_text = Some(value.into_owned());
        } else if key == "channels" {
            let list = channels.get_or_insert_with(Vec::new);
            for name in value.split(',').filter(|n| !n.is_empty()) {
                if !is_valid_channel_name(name) {
                    return Err(QueryError::Invalid(format!(
                        "invalid channel name '{}': use 1-{MAX_CHANNEL_NAME} characters of A-Z a-z 0-9 . _ : -",
                        name.chars().take(MAX_CHANNEL_NAME + 1).collect::<String>()
                    )));
                }
                if !list.iter().any(|c| c == name) {
                    // Refused as soon as the list is too long, so a long
                    // query never costs more than max_channels² comparisons.
                    if list.len() == max_channels {
                        return Err(QueryError::TooManyChannels { max: max_channels });
                    }
                    list.push(name.to_owned());
                }
            }
        }
    }
    let channels = channels.unwrap_or_else(|| vec![DEFAULT_CHANNEL.to_owned()]);
    if channels.len() > max_channels {
        // Only `default` with --max-subscriptions 0.
        return Err(QueryError::TooManyChannels { max: max_channels });
    }
    let since = match since_text {
        None => Vec::new(),
        Some(text) => parse_since(&text, &channels).map_err(QueryError::Invalid)?,
    };
    Ok(WsQuery {
        channels,
        since,
        epoch,
        token,
    })
}

/// Parses a `since` value (`41`, or `a:41,b:7`) for `channels`.
pub fn parse_since(text: &str, channels: &[String]) -> Result<Vec<(String, u64)>, String> {
    let seq = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("invalid since value '{s}': expected a seq number"))
    };
    if !text.contains(':') {
        return match channels {
            [only] => Ok(vec![(only.clone(), seq(text)?)]),
            _ => Err(
                "since=N needs exactly one channel; with several, use since=a:41,b:7".to_owned(),
            ),
        };
    }
    let mut since = Vec::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (name, n) = pair
            .rsplit_once(':')
            .ok_or_else(|| format!("invalid since entry '{pair}': expected channel:seq"))?;
        if !channels.iter().any(|c| c == name) {
            return Err(format!(
                "since names channel '{name}', which is not in channels"
            ));
        }
        since.push((name.to_owned(), seq(n)?));
    }
    Ok(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        let q = |s: &str| {
            parse_ws_query(s, 10)
                .map(|q| q.channels)
                .map_err(|e| e.to_string())
        };
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
        // Ten distinct names (with repeats) fit.
        assert_eq!(q("channels=1,2,3,4,5,6,7,8,9,10,1,2").unwrap().len(), 10);
        assert_eq!(
            parse_ws_query("", 0),
            Err(QueryError::TooManyChannels { max: 0 })
        );
    }

    #[test]
    fn epoch() {
        let e = |q: &str| parse_ws_query(q, 10).map(|q| q.epoch);
        assert_eq!(
            e("since=3&epoch=a1B2-c_3").unwrap().as_deref(),
            Some("a1B2-c_3")
        );
        assert_eq!(e("since=3").unwrap(), None);
        for bad in ["epoch=", "epoch=a%20b", "epoch=a.b"] {
            assert!(e(bad).is_err(), "{bad}");
        }
        assert!(e(&format!("epoch={}", "x".repeat(65))).is_err());
    }

    #[test]
    fn since() {
        let s = |q: &str| {
            parse_ws_query(q, 10)
                .map(|q| q.since)
                .map_err(|e| e.to_string())
        };
        assert_eq!(s("channels=a&since=41").unwrap(), vec![("a".into(), 41)]);
        assert_eq!(s("since=3").unwrap(), vec![("default".into(), 3)]);
        // Channel names may contain ':' themselves: the seq is after the last one.
        assert_eq!(
            s("channels=a,x:y&since=a:41,x:y:7").unwrap(),
            vec![("a".into(), 41), ("x:y".into(), 7)]
        );
        assert!(
            s("channels=a,b&since=4")
                .unwrap_err()
                .contains("exactly one channel")
        );
        assert!(
            s("channels=a&since=b:4")
                .unwrap_err()
                .contains("not in channels")
        );
        assert!(
            s("channels=a&since=-1")
                .unwrap_err()
                .contains("invalid since")
        );
        assert!(
            s("channels=a&since=a:x")
                .unwrap_err()
                .contains("invalid since")
        );
        assert!(s("channels=a").unwrap().is_empty());
        let q = parse_ws_query("channels=a&token=abc.def", 10).unwrap();
        assert_eq!(q.token.as_deref(), Some("abc.def"));
    }
}
