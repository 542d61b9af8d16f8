//! Bad feed input is counted by kind and never delivered; the server stays
//! up; a stale Unix socket file is replaced, a live one is not; and
//! `ringcast publish` delivers from an argument and from stdin.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

use common::{BIN, RawClient, Server};

fn feed_errors(server: &Server, kind: &str) -> u64 {
    server.metric("ringcast_feed_errors_total", &[&format!("kind=\"{kind}\"")])
}

#[test]
fn bad_feed_input_is_counted_and_never_delivered() {
    let server = Server::start(&[
        "--udp",
        "127.0.0.1:0",
        "--unix",
        "feed.sock",
        "--max-feed-message",
        "1000",
    ]);
    let mut sub = RawClient::connect(server.addr, "/ws?channels=good,default,ok,a");
    sub.read_welcome();
    server.wait_metric("ringcast_subscriptions", &[], |v| v == 4);
    let unix_path = server.unix.clone().unwrap();

    // Over the Unix socket.
    let mut unix = UnixStream::connect(&unix_path).unwrap();
    let mut garbage: Vec<u8> = (0u8..=255).filter(|&b| b != b'\n').collect();
    garbage.rotate_left(255); // starts with 0xff
    unix.write_all(b"this is not json\n").unwrap(); // malformed
    unix.write_all(b"{\"channel\":\"bad name\",\"data\":1}\n")
        .unwrap(); // bad channel
    unix.write_all(b"{\"channel\":\"a/b\",\"data\":1}\n")
        .unwrap(); // bad channel
    unix.write_all(b"{\"channel\":\"ok\"}\n").unwrap(); // missing data
    unix.write_all(&[b"{\"data\":\"", &[b'x'; 2000][..], b"\"}\n"].concat())
        .unwrap(); // oversize
    unix.write_all(&[&garbage[..], b"\n"].concat()).unwrap(); // binary garbage
    unix.write_all(b"[1,2,3]\n").unwrap(); // JSON, not an object
    drop(unix);
    // A publisher that disconnects in the middle of a line.
    let mut partial = UnixStream::connect(&unix_path).unwrap();
    partial
        .write_all(b"{\"channel\":\"good\",\"data\":\"never fin")
        .unwrap();
    drop(partial);

    // Over UDP.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.udp.unwrap();
    udp.send_to(b"{nope", to).unwrap(); // malformed
    udp.send_to(&garbage, to).unwrap(); // binary garbage
    udp.send_to(&[b"{\"data\":\"", &[b'y'; 2000][..], b"\"}"].concat(), to)
        .unwrap(); // oversize
    udp.send_to(b"{\"channel\":\"\",\"data\":1}", to).unwrap(); // bad channel (empty)

    let want = [
        ("malformed_json", 5),
        ("bad_channel", 3),
        ("missing_data", 1),
        ("oversize", 2),
        ("partial_line", 1),
    ];
    for (kind, n) in want {
        let got = server.wait_metric(
            "ringcast_feed_errors_total",
            &[&format!("kind=\"{kind}\"")],
            |v| v == n,
        );
        assert_eq!(got, n, "{kind}");
    }
    assert_eq!(server.metric("ringcast_messages_published_total", &[]), 0);

    // Then a good message: it is the first and only thing the subscriber sees.
    let mut unix = UnixStream::connect(&unix_path).unwrap();
    unix.write_all(b"{\"channel\":\"good\",\"data\":\"fine\"}\n")
        .unwrap();
    let frame = sub.read_frame().expect("the good message");
    assert_eq!(frame.text(), r#"{"channel":"good","seq":1,"data":"fine"}"#);
    // Refused names never became channels.
    assert_eq!(server.metric("ringcast_channels", &[]), 4);
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
    assert!(feed_errors(&server, "too_many_channels") == 0);
    // Refusals are logged, rate-limited: one line for this burst.
    let log = server.log();
    assert_eq!(log.matches("feed message (").count(), 1, "{log}");
}

#[test]
fn stale_socket_file_is_replaced_live_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.sock");
    // Stale: a socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::start(&["--unix", path.to_str().unwrap()]);
    assert!(server.log().contains("replacing stale socket file"));
    // Live: a second server on the same path must refuse to start.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--udp", "off", "--unix"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another server is listening on"),
        "{stderr}"
    );
    // A file that is not a socket is never deleted.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "keep me").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--udp", "off", "--unix"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
    // A directory that does not exist: said so, with the fix.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--udp", "off", "--unix"])
        .arg(dir.path().join("missing/feed.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing does not exist"), "{stderr}");
    drop(server);
}

#[test]
fn publish_from_argument_and_stdin() {
    let server = Server::start(&["--udp", "127.0.0.1:0", "--unix", "feed.sock"]);
    let unix = server.unix.clone().unwrap();
    let mut sub = RawClient::connect(server.addr, "/ws?channels=logs");
    sub.read_welcome();
    server.wait_metric("ringcast_subscriptions", &[], |v| v == 1);

    // Order is guaranteed within one publisher's connection, not across
    // publishers or sockets: each publisher's messages are read before the
    // next one starts, so the seqs are known.
    let mut seq = 0;
    let mut expect = |sub: &mut RawClient, data: &str| {
        seq += 1;
        let frame = sub.read_frame().expect("message");
        assert_eq!(
            frame.text(),
            format!(r#"{{"channel":"logs","seq":{seq},"data":{data}}}"#)
        );
    };
    let status = Command::new(BIN)
        .args(["publish", "--channel", "logs", "--unix"])
        .arg(&unix)
        .arg(r#"{"level": "info"}"#)
        .status()
        .unwrap();
    assert!(status.success());
    expect(&mut sub, r#"{"level": "info"}"#);
    let mut child = Command::new(BIN)
        .args(["publish", "--channel", "logs", "--unix"])
        .arg(&unix)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /index.html 200\n\n42\nsay \"hi\"\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    // One connection: its lines arrive in order.
    for data in [r#""GET /index.html 200""#, "42", r#""say \"hi\"""#] {
        expect(&mut sub, data);
    }
    let status = Command::new(BIN)
        .args(["publish", "--channel", "logs", "--udp"])
        .arg(server.udp.unwrap().to_string())
        .args(["--text", "7"])
        .status()
        .unwrap();
    assert!(status.success());
    expect(&mut sub, r#""7""#);
}

#[test]
fn publish_without_a_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["publish", "--unix"])
        .arg(dir.path().join("none.sock"))
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is `ringcast serve` running?"), "{stderr}");

    // UDP: nothing listens on a port we just released.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(BIN)
        .args(["publish", "--udp", &port.to_string(), "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing is listening on UDP"), "{stderr}");

    let out = Command::new(BIN)
        .args(["publish", "--channel", "bad name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The publishing examples in examples/publish/ work as their comments say,
/// over both sockets (Go's only where a Go toolchain is installed).
#[test]
fn publishing_examples_work_over_unix_and_udp() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/publish");
    let server = Server::start(&["--udp", "127.0.0.1:0", "--unix", "feed.sock"]);
    let unix = server.unix.clone().unwrap();
    let udp = server.udp.unwrap().to_string();
    let mut sub = RawClient::connect(server.addr, "/ws?channels=prices");
    sub.read_welcome();
    let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    let mut runners: Vec<(&str, Vec<String>)> = vec![
        ("python3", vec![format!("{dir}/publish.py")]),
        ("node", vec![format!("{dir}/publish.js")]),
    ];
    if has("go") {
        runners.push(("go", vec!["run".into(), format!("{dir}/publish.go")]));
    } else {
        println!("no Go toolchain here: examples/publish/publish.go not run");
    }
    let mut seq = 0;
    for (tool, args) in &runners {
        for (transport, target) in [("unix", unix.to_str().unwrap()), ("udp", udp.as_str())] {
            let out = Command::new(tool)
                .args(args)
                .args([transport, target, "prices", r#"{"EURUSD": 1.0842}"#])
                .output()
                .unwrap_or_else(|e| panic!("run {tool}: {e}"));
            assert!(
                out.status.success(),
                "{tool} {transport}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            seq += 1;
            let frame = sub.read_frame().expect("the published message");
            let v: serde_json::Value = serde_json::from_str(frame.text()).unwrap();
            assert_eq!(v["seq"], seq, "{tool} {transport}: {v}");
            assert_eq!(v["data"]["EURUSD"], 1.0842, "{tool} {transport}: {v}");
        }
    }
}

/// UDP datagrams the kernel drops (the socket's buffer full) are counted,
/// also under the systemd unit's sandbox, whose /proc has no /proc/net.
#[test]
fn udp_drops_are_counted_under_the_units_proc() {
    let Some(server) = Server::start_with_pid_only_proc(&["--udp", "127.0.0.1:0"]) else {
        println!("needs root and unshare: UDP drops under ProcSubset=pid not checked here");
        return;
    };
    let udp = server.udp.unwrap();
    assert_eq!(server.metric("ringcast_feed_udp_drops_total", &[]), 0);
    // Stopped, it reads nothing: 20 MB of datagrams overflow its buffer.
    server.signal(libc::SIGSTOP);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(1000));
    for _ in 0..20_000 {
        let _ = sender.send_to(datagram.as_bytes(), udp);
    }
    server.signal(libc::SIGCONT);
    let drops = server.wait_metric("ringcast_feed_udp_drops_total", &[], |v| v > 0);
    assert!(drops > 0, "the kernel's drops are not counted");
    let received = server.wait_metric("ringcast_feed_messages_total", &["udp"], |v| v > 0);
    assert!(received + drops <= 20_000, "{received} + {drops}");
}

#[test]
fn publish_from_a_terminal_says_it_reads_lines() {
    let server = Server::start(&["--unix", "feed.sock"]);
    let mut sub = RawClient::connect(server.addr, "/ws?channels=typed");
    sub.read_welcome();
    server.wait_metric("ringcast_subscriptions", &[], |v| v == 1);
    // stdin is a terminal (a pseudo-terminal's far end).
    let (mut master, slave) = {
        let (mut m, mut s) = (0, 0);
        // SAFETY (test): openpty fills two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        use std::os::fd::FromRawFd;
        // SAFETY (test): both were just opened and are owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(m),
                std::os::fd::OwnedFd::from_raw_fd(s),
            )
        }
    };
    let mut publish = Command::new(BIN)
        .args(["publish", "--channel", "typed", "--unix"])
        .arg(server.unix.as_ref().unwrap())
        .stdin(Stdio::from(slave))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(publish.stderr.take().unwrap());
    let mut notice = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut notice).unwrap();
    assert!(
        notice.contains("no DATA given: publishing each line you type (Ctrl-D to end)"),
        "{notice}"
    );
    // A line, then Ctrl-D at the start of a line: end of input.
    master.write_all(b"hello\n\x04").unwrap();
    let frame = sub.read_non_ping().expect("the typed line");
    let message: serde_json::Value = serde_json::from_str(frame.text()).unwrap();
    assert_eq!(message["data"], "hello");
    assert!(publish.wait().unwrap().success());
}
