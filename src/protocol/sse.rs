//! Server-sent events (the `text/event-stream` format browsers' `EventSource`
//! reads): the response head, events, comments, and the resume id. Pure.
//!
//! An event's `id:` names where the connection stands in every channel it is
//! subscribed to, with the epoch they belong to: `E;a:5,b:7`. `EventSource`
//! sends the last one back as `Last-Event-ID` when it reconnects (with its
//! original URL), which resumes every channel at once.

/// The head of a `200 text/event-stream` response. The body has no length:
/// it ends when the stream does.
pub fn response_head(allow_origin: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = allow_origin {
        head.push_str("Access-Control-Allow-Origin: ");
        head.push_str(origin);
        head.push_str("\r\nVary: Origin\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Appends `data` as `data:` lines: a line break in it (`\n`, `\r\n` or
/// `\r`) starts a new one, as the format requires.
fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// A channel message's event without its id (the id is the connection's own
/// and is sent just before it): `data:` lines and the blank line.
pub fn message_data(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 16);
    push_data(&mut out, json);
    out.push(b'\n');
    out
}

/// A notice as an event named by its type (`event: welcome`, `event: gap`…).
pub fn notice(event: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    push_data(&mut out, json);
    out.push(b'\n');
    out
}

/// A comment line: keeps proxies from timing the stream out.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// The `id:` line for positions `(channel, seq)` of `epoch`.
pub fn id_line<'a>(epoch: &str, positions: impl Iterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(epoch.as_bytes());
    out.push(b';');
    let mut digits = itoa::Buffer::new();
    for (i, (name, seq)) in positions.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(digits.format(seq).as_bytes());
    }
    out.push(b'\n');
    out
}

/// Splits a `Last-Event-ID` into its epoch and its positions (in the form of
/// the `since=` parameter); `None` when it is not one of ours.
pub fn parse_last_event_id(id: &str) -> Option<(&str, &str)> {
    let (epoch, positions) = id.split_once(';')?;
    (!epoch.is_empty() && !positions.is_empty()).then_some((epoch, positions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_in_data_start_new_data_lines() {
        assert_eq!(message_data(b"{\"a\":1}"), b"data: {\"a\":1}\n\n");
        assert_eq!(
            message_data(b"{\n\"a\":1\r\n}\r"),
            b"data: {\ndata: \"a\":1\ndata: }\ndata: \n\n"
        );
        assert_eq!(notice("gap", b"{}"), b"event: gap\ndata: {}\n\n".to_vec());
    }

    #[test]
    fn ids_name_every_channel_and_parse_back() {
        let line = id_line("e1", [("a", 5), ("x:y", 7)].into_iter());
        assert_eq!(line, b"id: e1;a:5,x:y:7\n");
        assert_eq!(
            parse_last_event_id("e1;a:5,x:y:7"),
            Some(("e1", "a:5,x:y:7"))
        );
        assert_eq!(parse_last_event_id("garbage"), None);
        assert_eq!(parse_last_event_id(";a:1"), None);
    }

    #[test]
    fn cors_only_for_an_allowed_origin() {
        let head = String::from_utf8(response_head(Some("https://app.example"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(
            head.contains("Access-Control-Allow-Origin: https://app.example\r\nVary: Origin\r\n")
        );
        assert!(
            !String::from_utf8(response_head(None))
                .unwrap()
                .contains("Access-Control")
        );
    }
}
