//! Authentication with channel claims, Origin checks, and per-client limits,
//! over real sockets.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, KEY, RawClient, Server};
use serde_json::{Value, json};

/// A secret file (mode 600) in a fresh directory.
fn secret_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "test-secret-0123456789-0123456789-abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

fn mint(secret: &std::path::Path, channels: &str, ttl: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--secret-file"])
        .arg(secret)
        .args(["--channels", channels, "--ttl", ttl])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Sends an upgrade with extra header lines; returns the status and, on
/// 101, the open client (with the response head).
fn upgrade(server: &Server, path: &str, extra: &[String]) -> (u16, String, Option<RawClient>) {
    let mut c = RawClient::connect_tcp(server.addr);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    c.send_raw(req.as_bytes());
    let head = c.read_head();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let client = (status == 101).then_some(c);
    (status, head, client)
}

fn next(c: &mut RawClient) -> Value {
    let f = c.read_non_ping().expect("a frame");
    assert_eq!(f.opcode, 1, "{f:?} {}", String::from_utf8_lossy(&f.payload));
    serde_json::from_str(f.text()).unwrap()
}

fn expect_close(c: &mut RawClient, code: u16, reason: &str) {
    let f = loop {
        let f = c.read_non_ping().expect("close frame");
        if f.opcode == 8 {
            break f;
        }
    };
    assert_eq!(f.close_code(), Some(code), "{}", f.close_reason());
    assert!(f.close_reason().contains(reason), "{}", f.close_reason());
}

fn publish(server: &Server, channel: &str, data: &str) {
    let mut s = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    writeln!(s, r#"{{"channel":"{channel}","data":{data}}}"#).unwrap();
}

fn auth_server(secret: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--unix",
        "feed.sock",
        "--auth-secret-file",
        secret.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn tokens_in_subprotocol_query_or_first_message() {
    let (_dir, secret) = secret_file();
    let server = auth_server(&secret, &[]);
    let token = mint(&secret, "prices,news.*", "10m");

    // Subprotocol: echoed back when valid.
    let (status, head, c) = upgrade(
        &server,
        "/ws?channels=prices",
        &[format!("Sec-WebSocket-Protocol: token.{token}")],
    );
    assert_eq!(status, 101);
    assert!(
        head.contains(&format!("Sec-WebSocket-Protocol: token.{token}\r\n")),
        "{head}"
    );
    let mut c = c.unwrap();
    assert_eq!(next(&mut c)["channels"], json!({"prices": 0}));
    publish(&server, "prices", "1");
    assert_eq!(next(&mut c)["seq"], 1);

    // Query parameter.
    let (status, _, c) = upgrade(&server, &format!("/ws?channels=news.eu&token={token}"), &[]);
    assert_eq!(status, 101);
    assert_eq!(next(&mut c.unwrap())["channels"], json!({"news.eu": 0}));

    // First message: nothing (but ping) before it; then the URL's channels.
    let (status, _, c) = upgrade(&server, "/ws?channels=prices&since=0", &[]);
    assert_eq!(status, 101);
    let mut c = c.unwrap();
    c.send_text(r#"{"type":"subscribe","channels":["prices"]}"#);
    assert!(
        next(&mut c)["reason"]
            .as_str()
            .unwrap()
            .contains("authenticate first")
    );
    c.send_text(&format!(r#"{{"type":"auth","token":"{token}"}}"#));
    assert_eq!(next(&mut c)["channels"], json!({"prices": 1}));
    assert_eq!(next(&mut c)["seq"], 1, "since=0 replays after auth");
    assert_eq!(next(&mut c)["type"], "authenticated");
}

#[test]
fn refused_tokens_and_channels() {
    let (_dir, secret) = secret_file();
    let server = auth_server(&secret, &["--auth-timeout", "500ms"]);
    let good = mint(&secret, "prices", "10m");
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other");
    std::fs::write(&other, "a-different-secret-0123456789-0123456789\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let forged = mint(&other, "prices", "10m");
    // Signed with the server's secret, expired a minute ago (past the leeway).
    let claims = ringcast::auth::Claims {
        exp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 60,
        nbf: None,
        channels: vec!["prices".into()],
        sub: None,
    };
    let sign = |claims: &ringcast::auth::Claims| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-0123456789-0123456789-abcdef"),
        )
        .unwrap()
    };
    let expired = sign(&claims);
    // Signed with the server's secret, valid only from a minute from now
    // (past the leeway): refused until then.
    let now = claims.exp + 60;
    let not_yet = sign(&ringcast::auth::Claims {
        exp: now + 600,
        nbf: Some(now + 60),
        ..claims.clone()
    });

    let (status, head, _) = upgrade(&server, &format!("/ws?channels=prices&token={forged}"), &[]);
    assert_eq!(status, 401, "{head}");
    let (status, head, _) = upgrade(&server, "/ws?channels=prices&token=not-a-jwt", &[]);
    assert_eq!(status, 401, "{head}");
    let (status, _, _) = upgrade(
        &server,
        &format!("/ws?channels=prices&token={expired}"),
        &[],
    );
    assert_eq!(status, 401);
    let (status, text) = common::http_request(
        server.addr,
        &common::upgrade_request(&format!("/ws?channels=prices&token={not_yet}")),
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not valid yet"), "{text}");
    let (status, _, _) = upgrade(&server, &format!("/ws?channels=secret&token={good}"), &[]);
    assert_eq!(status, 403);

    // No token and no auth message: closed 4001 after the auth timeout.
    let (_, _, c) = upgrade(&server, "/ws?channels=prices", &[]);
    expect_close(&mut c.unwrap(), 4001, "authentication required");
    // A bad auth message: 4001.
    let (_, _, c) = upgrade(&server, "/ws?channels=prices", &[]);
    let mut c = c.unwrap();
    c.send_text(&format!(r#"{{"type":"auth","token":"{forged}"}}"#));
    expect_close(&mut c, 4001, "invalid token");
    // A good token that does not cover the URL's channels: 4003.
    let (_, _, c) = upgrade(&server, "/ws?channels=secret", &[]);
    let mut c = c.unwrap();
    c.send_text(&format!(r#"{{"type":"auth","token":"{good}"}}"#));
    expect_close(&mut c, 4003, "not allowed");
    // At runtime: an error notice, and nothing delivered.
    let (_, _, c) = upgrade(&server, &format!("/ws?channels=prices&token={good}"), &[]);
    let mut c = c.unwrap();
    next(&mut c);
    c.send_text(r#"{"type":"subscribe","channels":["secret"]}"#);
    assert!(
        next(&mut c)["reason"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    publish(&server, "secret", "1");
    publish(&server, "prices", "2");
    let m = next(&mut c);
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_u64()),
        (Some("prices"), Some(2))
    );
    assert!(server.metric("ringcast_auth_failures_total", &[]) >= 8);
    let auth_closes = server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"auth\""],
        |v| v >= 3,
    );
    assert!(auth_closes >= 3, "{auth_closes}");
}

#[test]
fn expiring_token_closes_4001_unless_refreshed() {
    let (_dir, secret) = secret_file();
    let server = auth_server(&secret, &[]);
    let short = mint(&secret, "a", "2s");
    let (_, _, c) = upgrade(&server, &format!("/ws?channels=a&token={short}"), &[]);
    let mut c = c.unwrap();
    next(&mut c);
    let started = Instant::now();
    expect_close(&mut c, 4001, "token expired");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Refreshed before expiry: stays connected.
    let short = mint(&secret, "a", "2s");
    let (_, _, c) = upgrade(&server, &format!("/ws?channels=a&token={short}"), &[]);
    let mut c = c.unwrap();
    next(&mut c);
    let fresh = mint(&secret, "a", "10m");
    c.send_text(&format!(r#"{{"type":"auth","token":"{fresh}"}}"#));
    assert_eq!(next(&mut c)["type"], "authenticated");
    std::thread::sleep(Duration::from_millis(2600));
    publish(&server, "a", "7");
    assert_eq!(next(&mut c)["data"], 7);
}

#[test]
fn origin_check() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
    ]);
    for (origin, want) in [
        ("https://app.example.com", 101),
        ("https://APP.example.com", 101),
        ("https://a.example.org", 101),
        ("https://a.b.example.org", 101),
        ("https://example.org", 403),
        ("https://evil.com", 403),
        ("http://app.example.com", 403),
        ("https://app.example.com.evil.com", 403),
    ] {
        let (status, head, _) = upgrade(&server, "/ws", &[format!("Origin: {origin}")]);
        assert_eq!(status, want, "{origin}: {head}");
    }
    // Non-browser clients send no Origin: not affected.
    assert_eq!(upgrade(&server, "/ws", &[]).0, 101);
    assert_eq!(
        server.metric("ringcast_handshakes_refused_origin_total", &[]),
        4
    );
}

#[test]
fn per_ip_connection_and_handshake_limits() {
    let server = Server::start(&[
        "--limit-loopback",
        "--max-connections-per-ip",
        "3",
        "--handshake-rate-per-ip",
        "1000",
    ]);
    let held: Vec<_> = (0..3)
        .map(|_| upgrade(&server, "/ws", &[]).2.unwrap())
        .collect();
    let (status, head, _) = upgrade(&server, "/ws", &[]);
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("Retry-After"));
    drop(held);
    // Loopback is limited here, so even /metrics counts against the budget:
    // poll with upgrades until the closes have been released.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upgrade(&server, "/ws", &[]).0 != 101 {
        assert!(Instant::now() < deadline, "connections never released");
        std::thread::sleep(Duration::from_millis(20));
    }

    let server = Server::start(&["--limit-loopback", "--handshake-rate-per-ip", "5"]);
    let statuses: Vec<u16> = (0..20).map(|_| upgrade(&server, "/ws", &[]).0).collect();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    // A burst of twice the rate passes, the rest is refused.
    assert!((8..=11).contains(&(20 - refused)), "{statuses:?}");
    // Loopback is exempt without --limit-loopback.
    let server = Server::start(&["--max-connections-per-ip", "1"]);
    let _a = upgrade(&server, "/ws", &[]).2.unwrap();
    assert_eq!(upgrade(&server, "/ws", &[]).0, 101);
}

#[test]
fn request_header_and_inbound_byte_limits() {
    let server = Server::start(&[
        "--max-request-header",
        "2KiB",
        "--client-bytes-rate",
        "4KiB",
        "--max-message",
        "2KiB",
    ]);
    let (status, _, _) = upgrade(&server, "/ws", &[format!("X-Pad: {}", "p".repeat(3000))]);
    assert_eq!(status, 431);
    assert_eq!(
        server.metric("ringcast_requests_refused_header_size_total", &[]),
        1
    );
    let (status, _, _) = upgrade(&server, "/ws", &[format!("X-Pad: {}", "p".repeat(1000))]);
    assert_eq!(status, 101);
    // Bucket: 8 KiB (2 s); each ping carries 1 KiB of padding.
    let (_, _, c) = upgrade(&server, "/ws", &[]);
    let mut c = c.unwrap();
    next(&mut c);
    let padded = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1000));
    for _ in 0..12 {
        c.send_text(&padded);
    }
    expect_close(&mut c, 1008, "too many bytes");
    server.wait_metric(
        "ringcast_connections_closed_total",
        &["reason=\"rate_limited\""],
        |v| v == 1,
    );
}

#[test]
fn subscription_limit() {
    let server = Server::start(&["--max-subscriptions", "3"]);
    let (status, head, _) = upgrade(&server, "/ws?channels=a,b,c,d", &[]);
    assert_eq!(status, 400, "{head}");
    // Repeats count once.
    let (status, _, c) = upgrade(&server, "/ws?channels=a,b,a,b", &[]);
    assert_eq!(status, 101);
    let mut c = c.unwrap();
    next(&mut c);
    c.send_text(r#"{"type":"subscribe","channels":["c","d"]}"#);
    let notice = next(&mut c);
    assert_eq!(notice["type"], "error");
    assert!(
        notice["reason"]
            .as_str()
            .unwrap()
            .contains("too many subscriptions"),
        "{notice}"
    );
    c.send_text(r#"{"type":"subscribe","channels":["c"]}"#);
    assert_eq!(next(&mut c)["type"], "subscribed");
    assert_eq!(
        server.metric("ringcast_subscription_limit_refusals_total", &[]),
        2
    );
}

#[test]
fn sighup_rotates_secrets_without_disconnecting_anyone() {
    let (_dir, secret) = secret_file();
    let server = auth_server(&secret, &[]);
    let old = mint(&secret, "a", "10m");
    let status_with =
        |token: &str| upgrade(&server, &format!("/ws?channels=a&token={token}"), &[]).0;
    let (status, _, c) = upgrade(&server, &format!("/ws?channels=a&token={old}"), &[]);
    assert_eq!(status, 101);
    let mut connected = c.unwrap();
    next(&mut connected);
    let reloaded = |needle: &str| {
        server.signal(libc::SIGHUP);
        server
            .wait_for_log(needle, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no '{needle}' in:\n{}", server.log()));
    };

    // Step 1: the new secret first (it signs), the old one still verifies.
    let old_secret = std::fs::read_to_string(&secret).unwrap();
    let new_secret = "new-secret-0123456789-0123456789-abcdef\n";
    std::fs::write(&secret, format!("{new_secret}{old_secret}")).unwrap();
    reloaded("reloaded the secret file (2 secret(s))");
    let new = mint(&secret, "a", "10m");
    assert_eq!((status_with(&new), status_with(&old)), (101, 101));

    // Step 2: the old secret goes; its tokens stop working at the handshake.
    std::fs::write(&secret, new_secret).unwrap();
    reloaded("reloaded the secret file (1 secret(s))");
    assert_eq!((status_with(&new), status_with(&old)), (101, 401));

    // A file that cannot be used is refused, and the current secrets stay.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    reloaded("kept the current secrets");
    assert_eq!(status_with(&new), 101);

    // The client authenticated with the old token was never disconnected.
    publish(&server, "a", "1");
    assert_eq!(next(&mut connected)["data"], 1);
}

#[test]
fn per_ip_limits_behind_a_trusted_proxy() {
    // The test client is the proxy (127.0.0.1); X-Forwarded-For names the
    // clients it carries.
    let server = Server::start(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--max-connections-per-ip",
        "2",
    ]);
    let via = |xff: &str| upgrade(&server, "/ws", &[format!("X-Forwarded-For: {xff}")]);
    let held: Vec<_> = (0..2)
        .map(|_| via("203.0.113.5").2.expect("upgraded"))
        .collect();
    let (status, head, _) = via("203.0.113.5");
    assert_eq!(status, 429, "{head}");
    // A forged entry on the left does not escape the limit...
    assert_eq!(via("198.51.100.77, 203.0.113.5").0, 429);
    // ...and another client behind the same proxy has its own budget.
    let other = via("203.0.113.6");
    assert_eq!(other.0, 101);
    assert_eq!(
        server.metric("ringcast_connections_refused_per_ip_total", &[]),
        2
    );
    // Closing releases the client's connections.
    drop(held);
    server.wait_metric("ringcast_websockets_open", &[], |v| v == 1);
    assert_eq!(via("203.0.113.5").0, 101);

    // Without --trusted-proxies the header is not believed: the peer is
    // loopback, exempt by default.
    let server = Server::start(&["--max-connections-per-ip", "1"]);
    let _held: Vec<_> = (0..3)
        .map(|_| {
            let (status, _, c) = upgrade(&server, "/ws", &["X-Forwarded-For: 203.0.113.5".into()]);
            assert_eq!(status, 101);
            c
        })
        .collect();
}

/// The user the server runs as to stand in for a systemd unit's dynamic
/// user: `nobody` when the tests run as root and can switch to it, else the
/// tests' own (unprivileged already). True when it is another user.
fn unit_user() -> (u32, u32, bool) {
    if rustix::process::getuid().is_root() {
        (65534, 65534, true)
    } else {
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        (uid.as_raw(), gid.as_raw(), false)
    }
}

#[test]
fn under_the_unit_the_secret_arrives_as_a_credential_and_reloads() {
    let (uid, gid, switched) = unit_user();
    // What systemd builds for LoadCredential=auth-secret:/etc/ringcast/secret:
    // a directory and a copy of the file, readable by the service's user only.
    let (_root_dir, root_secret) = secret_file();
    let creds = tempfile::tempdir().unwrap();
    let credential = creds.path().join("auth-secret");
    let install = |from: &std::path::Path| {
        let staged = creds.path().join(".staged");
        std::fs::copy(from, &staged).unwrap();
        std::os::unix::fs::chown(&staged, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o400)).unwrap();
        // Swapped in whole, as systemd's refresh on reload does.
        std::fs::rename(&staged, &credential).unwrap();
    };
    install(&root_secret);
    std::os::unix::fs::chown(creds.path(), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(creds.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let creds_dir = creds.path().to_str().unwrap();

    // The root-only file itself is what the unit's user cannot read: the
    // server says so, with the line that fixes it, and does not start.
    if switched {
        root_only_secret_is_refused_with_the_fix(&root_secret, uid, gid);
    }

    // With the credential, no auth-secret-file: authentication is on.
    let server = Server::start_as(
        uid,
        gid,
        &["--unix", "feed.sock"],
        &[("CREDENTIALS_DIRECTORY", creds_dir)],
    );
    assert!(
        server.log().contains(
            "authentication on: the secret comes from the systemd credential 'auth-secret'"
        ),
        "{}",
        server.log()
    );
    let token = mint(&root_secret, "prices", "10m");
    let (status, _, client) = upgrade(&server, &format!("/ws?channels=prices&token={token}"), &[]);
    assert_eq!(status, 101);
    let mut client = client.unwrap();
    assert_eq!(next(&mut client)["type"], "welcome");
    // A token signed with any other secret is refused.
    let (_other_dir, other) = secret_file();
    std::fs::write(&other, "rotated-secret-0123456789-0123456789-abcd\n").unwrap();
    let rotated = mint(&other, "prices", "10m");
    let status =
        |token: &str| upgrade(&server, &format!("/ws?channels=prices&token={token}"), &[]).0;
    assert_eq!(status(&rotated), 401);

    // Rotation: the new secret first, the old one second; systemd refreshes
    // the credential, the reload (SIGHUP) re-reads it.
    let both = root_secret.with_file_name("both");
    std::fs::write(
        &both,
        "rotated-secret-0123456789-0123456789-abcd\ntest-secret-0123456789-0123456789-abcdef\n",
    )
    .unwrap();
    install(&both);
    server.signal(libc::SIGHUP);
    server
        .wait_for_log(
            "SIGHUP: reloaded the secret file (2 secret(s))",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no reload; log:\n{}", server.log()));
    assert_eq!(status(&rotated), 101);
    assert_eq!(status(&token), 101, "the old one still verifies");
}

/// The server as `uid` with a secret file only root may read: it does not
/// start, and says how to pass the file instead.
fn root_only_secret_is_refused_with_the_fix(root_secret: &std::path::Path, uid: u32, gid: u32) {
    let refused = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp",
            "off",
            "--unix",
            "off",
        ])
        .arg("--auth-secret-file")
        .arg(root_secret)
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("Permission denied"), "{why}");
    assert!(
        why.contains(&format!(
            "LoadCredential=auth-secret:{}",
            root_secret.display()
        )),
        "{why}"
    );
}
