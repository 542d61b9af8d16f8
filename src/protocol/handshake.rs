//! The opening handshake (RFC 6455 §4.2) and the plain HTTP requests that share
//! the listener: parse a request head, decide what it asks for, build the
//! response bytes. Pure: bytes in, decisions and bytes out.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Default longest request head (request line + headers). Larger → 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most headers in one request; more → 431.
const MAX_HEADERS: usize = 64;
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A parsed request head with the parts ringcast looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (after `?`), empty when there is none.
    pub query: String,
    /// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_version: Option<String>,
    pub ws_key: Option<String>,
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` values offered by the client, in order.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` header values, in order.
    pub extensions: Vec<String>,
    /// `Last-Event-ID`: where a reconnecting `EventSource` stood.
    pub last_event_id: Option<String>,
    /// `X-Forwarded-For`, several headers joined with `,` in order; only
    /// believed from `--trusted-proxies`.
    pub forwarded_for: Option<String>,
    /// The request says it has a body (`Content-Length` above 0, or any
    /// `Transfer-Encoding`). A WebSocket upgrade must not: the bytes after
    /// its head would otherwise be read as WebSocket frames.
    pub has_body: bool,
}

/// Why a request head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP at all, or a malformed request line / header.
    Malformed,
    /// Head larger than [`MAX_REQUEST_HEAD`] or with too many headers.
    TooLarge,
    /// Well-formed, but not a request HTTP/1.1 allows; the text says why.
    Invalid(&'static str),
}

impl HeadError {
    pub fn response(self) -> Vec<u8> {
        match self {
            HeadError::Malformed => {
                http_response(400, "text/plain", b"malformed HTTP request\n", &[])
            }
            HeadError::TooLarge => {
                http_response(431, "text/plain", b"request header fields too large\n", &[])
            }
            HeadError::Invalid(why) => {
                http_response(400, "text/plain", format!("{why}\n").as_bytes(), &[])
            }
        }
    }
}

/// Parses a request head from the bytes received so far.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((head, n)))`: the head is the
/// first `n` bytes; anything after it is already the client's next data
/// (pipelined WebSocket frames, for example).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    parse_request_head_limited(buf, MAX_REQUEST_HEAD)
}

/// As [`parse_request_head`], with heads longer than `max_head` refused.
pub fn parse_request_head_limited(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= max_head => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Partial => return Ok(None),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    // httparse guarantees these are present on a complete parse.
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Malformed);
    };
    let target = origin_form(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let mut head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        minor_version,
        upgrade_websocket: false,
        connection_upgrade: false,
        ws_version: None,
        ws_key: None,
        origin: None,
        protocols: Vec::new(),
        extensions: Vec::new(),
        last_event_id: None,
        forwarded_for: None,
        has_body: false,
    };
    let mut hosts = 0;
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            // Only the headers we read must be text; others may carry anything.
            if is_any(
                h.name,
                &["upgrade", "connection", "sec-websocket-key", "origin"],
            ) {
                return Err(HeadError::Malformed);
            }
            continue;
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<u64>() {
                Ok(0) => {}
                Ok(_) => head.has_body = true,
                Err(_) => return Err(HeadError::Invalid("malformed Content-Length")),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.has_body = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            // RFC 6455 §4.1: exactly one.
            if head.ws_key.is_some() {
                return Err(HeadError::Invalid("more than one Sec-WebSocket-Key header"));
            }
            head.ws_key = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            let list = head.forwarded_for.get_or_insert_with(String::new);
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(value.trim());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            head.extensions.push(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.protocols.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header.
    if head.minor_version >= 1 && hosts != 1 {
        return Err(HeadError::Invalid(if hosts == 0 {
            "HTTP/1.1 requests need a Host header"
        } else {
            "more than one Host header"
        }));
    }
    Ok(Some((head, len)))
}

/// The path-and-query of a request target: absolute-form targets
/// (`http://host:port/ws?…`, RFC 9112 §3.2.2, as proxies send them) lose
/// their scheme and authority.
fn origin_form(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return target;
    }
    rest.find(['/', '?']).map_or("/", |at| &rest[at..])
}

fn is_any(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// True when the comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A refused upgrade: the status and a short human-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

impl Rejection {
    pub fn response(&self) -> Vec<u8> {
        let body = format!("{}\n", self.reason);
        let extra: &[(&str, &str)] = match self.status {
            426 => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            405 => &[("Allow", "GET")],
            _ => &[],
        };
        http_response(self.status, "text/plain", body.as_bytes(), extra)
    }
}

/// Checks that `head` is a valid RFC 6455 upgrade request and returns the
/// `Sec-WebSocket-Accept` value for it.
pub fn validate_upgrade(head: &RequestHead) -> Result<String, Rejection> {
    if head.has_body {
        // Anything after the head would be taken for WebSocket frames.
        return Err(Rejection {
            status: 400,
            reason: "a WebSocket upgrade must not have a body (Content-Length or Transfer-Encoding)",
        });
    }
    if head.method != "GET" {
        return Err(Rejection {
            status: 405,
            reason: "WebSocket upgrades must use GET",
        });
    }
    if head.minor_version < 1 {
        return Err(Rejection {
            status: 400,
            reason: "WebSocket upgrades need HTTP/1.1",
        });
    }
    if !head.upgrade_websocket {
        return Err(Rejection {
            status: 400,
            reason: "missing 'Upgrade: websocket' header",
        });
    }
    if !head.connection_upgrade {
        return Err(Rejection {
            status: 400,
            reason: "missing 'Connection: Upgrade' header",
        });
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err(Rejection {
            status: 426,
            reason: "unsupported Sec-WebSocket-Version (only 13 is supported)",
        });
    }
    let key = head.ws_key.as_deref().ok_or(Rejection {
        status: 400,
        reason: "missing Sec-WebSocket-Key header",
    })?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(Rejection {
            status: 400,
            reason: "Sec-WebSocket-Key must be 16 bytes in base64",
        }),
    }
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID);
    BASE64.encode(sha.finalize())
}

/// The `101 Switching Protocols` response; `protocol` is the subprotocol the
/// server selected, `extensions` the extensions it agreed to, if any.
pub fn switching_protocols(
    accept: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.push_str(accept);
    out.push_str("\r\n");
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if let Some(e) = extensions {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(e);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A complete HTTP/1.1 response with `Content-Length` and `Connection: close`.
pub fn http_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        status,
        reason_phrase(status),
        content_type,
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Strips the body from a response (for HEAD requests).
pub fn head_only(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /ws?channels=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
    }

    fn parse(text: &str) -> RequestHead {
        parse_request_head(text.as_bytes()).unwrap().unwrap().0
    }

    const KEY_HEADERS: &str =
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn an_upgrade_with_a_body_is_refused() {
        for body in [
            "Content-Length: 20\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\n",
        ] {
            let head = parse(&upgrade(&format!("{KEY_HEADERS}{body}")));
            let rejection = validate_upgrade(&head).unwrap_err();
            assert_eq!(rejection.status, 400, "{body}");
            assert!(rejection.reason.contains("body"));
        }
        let head = parse(&upgrade(&format!("{KEY_HEADERS}Content-Length: 0\r\n")));
        assert!(validate_upgrade(&head).is_ok(), "an empty body is no body");
        let bad = upgrade(&format!("{KEY_HEADERS}Content-Length: lots\r\n"));
        assert!(matches!(
            parse_request_head(bad.as_bytes()),
            Err(HeadError::Invalid(_))
        ));
    }

    #[test]
    fn host_and_key_must_appear_exactly_once() {
        let two_keys = upgrade(&format!(
            "{KEY_HEADERS}Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
        ));
        assert_eq!(
            parse_request_head(two_keys.as_bytes()),
            Err(HeadError::Invalid("more than one Sec-WebSocket-Key header"))
        );
        let no_host = "GET /healthz HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_request_head(no_host.as_bytes()),
            Err(HeadError::Invalid("HTTP/1.1 requests need a Host header"))
        );
        let two_hosts = "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(
            parse_request_head(two_hosts.as_bytes()),
            Err(HeadError::Invalid("more than one Host header"))
        );
        // HTTP/1.0 has no Host requirement.
        assert!(parse_request_head(b"GET /healthz HTTP/1.0\r\n\r\n").is_ok());
        let response = HeadError::Invalid("more than one Host header").response();
        assert!(response.starts_with(b"HTTP/1.1 400 "));
    }

    #[test]
    fn absolute_form_targets_are_accepted() {
        let head =
            parse("GET http://127.0.0.1:8080/ws?channels=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_str()),
            ("/ws", "channels=a")
        );
        let head = parse("GET HTTP://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(head.path, "/");
        let head = parse("GET /ws?next=http://x/ HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_str()),
            ("/ws", "next=http://x/")
        );
    }

    #[test]
    fn rfc_example_accept_key() {
        // RFC 6455 §1.3
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_is_accepted() {
        let head = parse(&upgrade(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ));
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query, "channels=a");
        assert_eq!(
            validate_upgrade(&head).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let head = parse(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, UPGRADE\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert!(validate_upgrade(&head).is_ok());
    }

    #[test]
    fn wrong_version_is_426() {
        let head = parse(&upgrade(
            "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ));
        let r = validate_upgrade(&head).unwrap_err();
        assert_eq!(r.status, 426);
        let text = String::from_utf8(r.response()).unwrap();
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn bad_keys_are_400() {
        for key in [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let head = parse(&upgrade(&format!(
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            )));
            assert_eq!(validate_upgrade(&head).unwrap_err().status, 400, "{key}");
        }
    }

    #[test]
    fn partial_and_pipelined() {
        let full =
            upgrade("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        for cut in 0..full.len() {
            assert_eq!(parse_request_head(&full.as_bytes()[..cut]), Ok(None));
        }
        let mut pipelined = full.clone().into_bytes();
        pipelined.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse_request_head(&pipelined).unwrap().unwrap();
        assert_eq!(n, full.len());
    }

    #[test]
    fn oversize_head_is_431() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(parse_request_head(big.as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_has_length_and_close() {
        let r = String::from_utf8(http_response(200, "text/plain", b"ok\n", &[])).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nok\n"));
    }
}
