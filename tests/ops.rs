//! Operations: graceful drain on SIGTERM, connection limits, `ringcast
//! doctor`, the systemd notification protocol, JSON logs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, RawClient, Server, metric_sum, upgrade_request};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn sigterm_drains_1000_clients_with_1001_and_exits_0() {
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "10s"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = runtime.block_on(async {
        let mut all = Vec::new();
        for _ in 0..10 {
            let batch = (0..100).map(|_| async {
                tokio_tungstenite::connect_async(server.url("/ws?channels=a"))
                    .await
                    .expect("connect")
                    .0
            });
            all.extend(futures_util::future::join_all(batch).await);
        }
        all
    });
    // One client that never reads or answers: the drain has to wait for it
    // (up to the close grace), which lets us watch /healthz meanwhile.
    let mut stubborn = RawClient::connect(server.addr, "/ws?channels=a");
    server.wait_metric("ringcast_websockets_open", &[], |v| v == 1001);
    assert_eq!(server.get("/healthz").0, 200);

    let started = Instant::now();
    server.signal(libc::SIGTERM);
    // Every well-behaved client gets 1001 and a clean close.
    let codes = runtime.block_on(async {
        let reads = clients.into_iter().map(|mut ws| async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                    Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("no close frame: {other:?}"),
                }
            }
        });
        futures_util::future::join_all(reads).await
    });
    assert!(
        codes.iter().all(|c| *c == Some(CloseCode::Away)),
        "{codes:?}"
    );
    // Still draining (the stubborn client): health says 503, upgrades are refused.
    assert_eq!(server.get("/healthz").0, 503);
    let (status, _) = common::http_request(server.addr, &upgrade_request("/ws"));
    assert_eq!(status, 503);
    let code = server.wait_exit(Duration::from_secs(12)).expect("exited");
    assert_eq!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The stubborn one got its 1001 too, before being cut.
    let close = stubborn.read_non_ping_skipping_text().expect("close frame");
    assert_eq!(close.close_code(), Some(1001));
    let log = server.log();
    assert!(
        log.contains("draining: closing 1001 WebSocket client(s)"),
        "{log}"
    );
}

#[test]
fn second_signal_exits_at_once() {
    let mut server = Server::start(&["--drain-timeout", "30s"]);
    let _stubborn = RawClient::connect(server.addr, "/ws");
    server.wait_metric("ringcast_websockets_open", &[], |v| v == 1);
    server.signal(libc::SIGTERM);
    server
        .wait_for_log("draining", Duration::from_secs(5))
        .unwrap();
    let started = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(server.log().contains("second signal: exiting now"));
}

#[test]
fn over_max_connections_gets_503_and_is_counted() {
    let server = Server::start(&["--shards", "1", "--max-connections", "10"]);
    let clients: Vec<RawClient> = (0..10)
        .map(|_| RawClient::connect(server.addr, "/ws"))
        .collect();
    for _ in 0..3 {
        let (status, text) = common::http_request(server.addr, &upgrade_request("/ws"));
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("connection limit"));
    }
    drop(clients);
    // Room again once the server has seen them go: until then a new
    // connection is refused too (and counted), so count those.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut refused = 3;
    let _c = loop {
        let mut c = RawClient::connect_tcp(server.addr);
        c.send_raw(upgrade_request("/ws").as_bytes());
        let head = c.read_head();
        if head.starts_with("HTTP/1.1 101") {
            break c;
        }
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(std::time::Instant::now() < deadline, "no room after 10 s");
        refused += 1;
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        server.metric("ringcast_connections_refused_total", &[]),
        refused
    );
}

#[test]
fn max_connections_per_shard() {
    let server = Server::start(&["--shards", "2", "--max-connections-per-shard", "3"]);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = RawClient::connect_tcp(server.addr);
        c.send_raw(upgrade_request("/ws").as_bytes());
        let head = c.read_head();
        if head.starts_with("HTTP/1.1 101") {
            accepted.push(c);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    assert!(
        accepted.len() <= 6 && refused >= 4,
        "{} accepted",
        accepted.len()
    );
}

#[test]
fn configured_limit_that_cannot_fit_is_reported() {
    let server = Server::start(&["--max-connections", "5000000"]);
    let log = server.log();
    assert!(
        log.contains("--max-connections 5000000 cannot fit: the open-files limit is"),
        "{log}"
    );
}

#[test]
fn doctor_prints_the_kernel_settings_for_this_host() {
    let out = Command::new(BIN)
        .args(["doctor", "--connections", "1000000", "--sysctl"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = String::from_utf8(out.stdout).unwrap();
    let setting = |key: &str| {
        file.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .map(str::to_owned)
    };
    let read = |path: &str| std::fs::read_to_string(path).unwrap();
    // tcp_mem: at most a quarter of this host's memory, in pages.
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let max_pages = mem_kib * 1024 / 4 / 4096;
    assert_eq!(
        setting("net.ipv4.tcp_mem"),
        Some(format!(
            "{} {} {max_pages}",
            max_pages / 2,
            max_pages / 4 * 3
        )),
        "{file}"
    );
    // The descriptor limits: written only where this host has less than a
    // million connections need, never lowering what it has.
    for (key, path) in [
        ("fs.nr_open", "/proc/sys/fs/nr_open"),
        ("fs.file-max", "/proc/sys/fs/file-max"),
    ] {
        let have: u64 = read(path).trim().parse().unwrap();
        match setting(key) {
            Some(value) => assert!(
                value.parse::<u64>().unwrap() > have,
                "{key} lowered: {file}"
            ),
            None => assert!(
                file.contains(&format!("({have} on this host already")),
                "{file}"
            ),
        }
    }
    // Every line a sysctl.d file may hold: comments, blanks, `key = value`.
    for line in file.lines() {
        assert!(
            line.is_empty() || line.starts_with('#') || line.contains(" = "),
            "{line}"
        );
    }
}

#[test]
fn doctor_reports_the_real_limits() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY (test): getrlimit fills a struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let out = Command::new(BIN)
        .args(["doctor", "--connections", "1000000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("soft {}, hard {}", lim.rlim_cur, lim.rlim_max)),
        "{text}"
    );
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
    assert!(
        text.contains(&format!("fs.nr_open: {}", nr_open.trim())),
        "{text}"
    );
    assert!(text.contains("io driver: auto -> "), "{text}");
    if lim.rlim_max < 1_000_100 {
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("[FAIL] open files (RLIMIT_NOFILE)"), "{text}");
        assert!(text.contains("LimitNOFILE="), "{text}");
    }
    // A small count fits on any machine that can run the tests.
    let out = Command::new(BIN)
        .args(["doctor", "--connections", "100"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn systemd_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = Server::start_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let recv = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(recv().as_deref(), Some("READY=1"));
    assert_eq!(recv().as_deref(), Some("WATCHDOG=1"));
    assert_eq!(recv().as_deref(), Some("WATCHDOG=1"));
    server.signal(libc::SIGTERM);
    // Watchdog pings may still arrive before it.
    let mut seen = Vec::new();
    while let Some(m) = recv() {
        seen.push(m);
        if seen.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("STOPPING=1"),
        "{seen:?}"
    );
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn json_logs() {
    let server = Server::start(&["--log-format", "json"]);
    let line = server
        .wait_for_log("listening on", Duration::from_secs(5))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("listening on")
    );
}

#[test]
fn socket_activation_keeps_the_listener_across_restarts() {
    // The test plays systemd: it owns the listening socket throughout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = Server::start_activated(&listener, &["--shards", "2"]);
    assert_eq!(first.addr, addr);
    assert!(
        first.log().contains("socket from systemd"),
        "{}",
        first.log()
    );

    // Both shards accept on the one socket, in turn.
    let mut clients: Vec<RawClient> = (0..200).map(|_| RawClient::connect(addr, "/ws")).collect();
    let epoch = clients
        .iter_mut()
        .map(|c| c.read_welcome()["epoch"].clone())
        .last()
        .unwrap();
    let metrics = first.metrics();
    for shard in ["shard=\"0\"", "shard=\"1\""] {
        let open = metric_sum(&metrics, "ringcast_websockets_open", &[shard]);
        assert!(open >= 60, "{shard} holds {open} of 200:\n{metrics}");
    }

    // Restart: while no server runs, a new client still connects (it waits
    // in the socket's backlog) and is served by the next server.
    drop(clients);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(15)), Some(0));
    let waiting = std::thread::spawn(move || {
        let mut c = RawClient::connect(addr, "/ws");
        c.read_welcome()["epoch"].clone()
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = Server::start_activated(&listener, &["--shards", "2"]);
    let new_epoch = waiting
        .join()
        .expect("client that connected during the restart");
    assert_ne!(new_epoch, epoch);
    assert_eq!(second.get("/healthz").0, 200);
}

#[test]
fn socket_activation_refuses_what_it_cannot_serve() {
    let run = |fds: &str| {
        Command::new("sh")
            .args([
                "-c",
                &format!(r#"LISTEN_PID=$$ LISTEN_FDS={fds} exec "$0" serve --udp off --unix off"#),
                BIN,
            ])
            .output()
            .unwrap()
    };
    // Two sockets: ringcast serves one, and says which setting to change.
    let out = run("2");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("systemd passed 2 sockets"), "{log}");
    assert!(log.contains("ListenStream="), "{log}");
    // Nothing was passed: descriptor 3 is closed here (or, under some
    // harness, something other than a listening TCP socket).
    let out = run("1");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("systemd") && log.contains("(fd 3)"), "{log}");
}

#[test]
fn sighup_without_authentication_is_harmless() {
    let server = Server::start(&[]);
    server.signal(libc::SIGHUP);
    assert!(
        server
            .wait_for_log("nothing to reload", Duration::from_secs(10))
            .is_some(),
        "{}",
        server.log()
    );
    assert_eq!(server.get("/healthz").0, 200);
}

/// `ringcast serve 2>&1 | head -5`: once the reader of its log is gone, every
/// line it writes fails (EPIPE); the server must go on serving and still
/// drain and exit 0 on SIGTERM (writing more lines into the void).
#[test]
fn losing_the_log_pipe_never_takes_the_server_down() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--udp",
            "off",
            "--unix",
            "off",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("a start-up line").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(';').next().unwrap().parse().unwrap();
        }
    };
    drop(lines);
    // SIGHUP logs a line each time; a client connecting and a request, too
    // at debug level; the drain logs several.
    for _ in 0..3 {
        // SAFETY (test): kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    }
    let mut c = RawClient::connect(addr, "/ws");
    c.read_welcome();
    assert_eq!(
        common::http_request(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0,
        200
    );
    // SAFETY (test): as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let close = c.read_non_ping().expect("a close frame");
    assert_eq!(close.close_code(), Some(1001));
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "a broken log pipe must not kill the server"
    );
}

/// Killed with -9, a server's listener lingers for a moment while the kernel
/// tears its ring down; the next server on the same port waits that out.
#[test]
fn a_restart_right_after_kill_9_gets_the_same_port() {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut first = Server::start(&["--listen", &listen]);
        let mut c = RawClient::connect(first.addr, "/ws");
        c.read_welcome();
        // Restart at once, before the killed process is even reaped.
        first.signal(libc::SIGKILL);
        let second = Server::start(&["--listen", &listen]);
        assert_eq!(second.get("/healthz").0, 200, "{}", second.log());
        assert!(
            first.wait_exit(Duration::from_secs(10)).is_none(),
            "killed: no exit code"
        );
    }
}

/// Healthy means fully started: the feed sockets exist.
#[test]
fn healthy_means_the_feed_sockets_are_there() {
    let server = Server::start(&["--unix", "feed.sock", "--udp", "127.0.0.1:0"]);
    assert_eq!(server.get("/healthz").0, 200);
    assert!(server.unix.as_ref().unwrap().exists());
    std::os::unix::net::UnixStream::connect(server.unix.as_ref().unwrap()).expect("unix feed");
    assert!(server.udp.is_some());
}
