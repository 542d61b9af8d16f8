//! Test harness: starts the real `ringcast` binary on free ports and talks to
//! it over real sockets. `RawClient` speaks WebSocket byte by byte, for tests
//! that must send what a well-behaved library never would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringcast::protocol::frame::encode_client_frame;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

/// A running server, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub udp: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    log: Arc<(Mutex<String>, Condvar)>,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `ringcast serve` on 127.0.0.1:0 (plus `args`), feeds off
    /// unless `args` set them, and waits for its start-up line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// As [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        Server::launch(cmd, args)
    }

    /// Starts `ringcast serve` as systemd socket activation would: with
    /// `listener` as descriptor 3 and `LISTEN_PID`/`LISTEN_FDS` naming it.
    pub fn start_activated(listener: &std::net::TcpListener, args: &[&str]) -> Server {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = listener.as_raw_fd();
        // The shell learns its own pid ($$) and execs ringcast in place, so
        // LISTEN_PID names the server process, as systemd sets it.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#,
            BIN,
            "serve",
        ]);
        // SAFETY (test): between fork and exec only dup2/fcntl run, which
        // are async-signal-safe; fd stays open in the parent throughout.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 clears close-on-exec on the copy; fd 3 itself keeps it.
                let done = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::launch(cmd, args)
    }

    /// As [`Server::start`], in a process where a seccomp filter refuses
    /// the given io_uring system calls with EPERM (as container runtimes do).
    pub fn start_refusing(refused: &[IoUringCall], args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        refuse_io_uring(&mut cmd, refused);
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        Server::launch(cmd, args)
    }

    /// As [`Server::start`], with `/proc` mounted as systemd's
    /// `ProcSubset=pid` + `ProtectProc=invisible` mount it (no `/proc/net`),
    /// in a mount namespace of its own. Needs root and `unshare`; `None`
    /// where those are missing.
    pub fn start_with_pid_only_proc(args: &[&str]) -> Option<Server> {
        let usable = Command::new("unshare")
            .args(["--mount", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !usable {
            return None;
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$0" "$@""#,
            BIN,
            "serve",
        ]);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        Some(Server::launch(cmd, args))
    }

    /// As [`Server::start_with_env`], as the unprivileged `uid`:`gid` (the
    /// harness must be root to switch), in a working directory it owns: the
    /// server as a systemd unit's dynamic user sees the host.
    pub fn start_as(uid: u32, gid: u32, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied()).uid(uid).gid(gid);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        Server::launch_in(cmd, args, |dir| {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .expect("chown the working directory")
        })
    }

    /// Runs `cmd` (ringcast serve, its arguments up to `args`), feeds off
    /// unless `args` set them, and waits for its start-up line.
    fn launch(cmd: Command, args: &[&str]) -> Server {
        Server::launch_in(cmd, args, |_| {})
    }

    /// As [`Server::launch`], with `prepare` run on the working directory first.
    fn launch_in(
        mut cmd: Command,
        args: &[&str],
        prepare: impl FnOnce(&std::path::Path),
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        if !args.contains(&"--udp") {
            cmd.args(["--udp", "off"]);
        }
        if !args.contains(&"--unix") {
            cmd.args(["--unix", "off"]);
        }
        // The whole suite runs under the driver RINGCAST_IO names (CI runs
        // it under each); unset, the server picks (`auto`).
        if !args.contains(&"--io")
            && let Some(io) = io_driver()
        {
            cmd.args(["--io", &io]);
        }
        cmd.args(args)
            .current_dir(dir.path())
            .env(
                "RINGCAST_LOG",
                std::env::var("RINGCAST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ringcast");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("RINGCAST_TEST_ECHO_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                let (text, cv) = &*sink;
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                cv.notify_all();
            }
            let (_, cv) = &*sink;
            cv.notify_all();
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            udp: None,
            unix: None,
            log,
            dir,
        };
        let line = server
            .wait_for_log("listening on", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("server did not start; log:\n{}", server.log()));
        server.addr = field(&line, "listening on ").parse().expect("listen addr");
        if let Some(udp) = find_field(&line, "udp ") {
            server.udp = Some(udp.parse().expect("udp addr"));
        }
        if let Some(unix) = find_field(&line, "unix ") {
            let path = PathBuf::from(unix);
            server.unix = Some(if path.is_absolute() {
                path
            } else {
                server.dir.path().join(path)
            });
        }
        server
    }

    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (text, cv) = &*self.log;
        let mut guard = text.lock().unwrap();
        loop {
            if let Some(line) = guard.lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// GET `path`; returns (status, full response text).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    }

    pub fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Sum of a metric over every label set that contains all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> u64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Polls a metric until `want` holds (metrics of closed connections are
    /// counted when the socket is finally released, a moment after EOF).
    pub fn wait_metric(&self, name: &str, labels: &[&str], want: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A server at its connection limit answers 503 until the
            // connections being waited for are gone: ask again.
            let (status, text) = self.get("/metrics");
            let v = metric_sum(&text, name, labels);
            if status != 200 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if want(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY (test): kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the server process in bytes (from /proc).
    pub fn rss(&self) -> u64 {
        rss_of(self.pid()).expect("server process")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub mod proxy;
pub mod redis;
pub mod seccomp;
pub use seccomp::IoUringCall;

/// Makes the child that `cmd` starts refuse `refused` with EPERM, as
/// Docker's default seccomp profile does, without touching the host.
pub fn refuse_io_uring(cmd: &mut Command, refused: &[IoUringCall]) {
    use std::os::unix::process::CommandExt;
    let filter = seccomp::Filter::refusing(refused);
    // SAFETY (test): between fork and exec only prctl runs (async-signal
    // safe), on a filter built before the fork and kept alive by the closure.
    unsafe {
        cmd.pre_exec(move || filter.install());
    }
}

/// The I/O driver the suite runs servers on (`RINGCAST_IO`), if set.
pub fn io_driver() -> Option<String> {
    std::env::var("RINGCAST_IO").ok().filter(|v| !v.is_empty())
}

/// Resident set size of process `pid` in bytes, from /proc/PID/statm.
pub fn rss_of(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn find_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    find_field(line, key).unwrap_or_else(|| panic!("no '{key}' in '{line}'"))
}

pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends a raw HTTP request; returns (status, whole response). Reads to EOF,
/// except after a `101`, where the connection stays open: there it stops at
/// the end of the head.
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let switching = buf.starts_with(b"HTTP/1.1 101 ");
        if switching && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn close_reason(&self) -> &str {
        std::str::from_utf8(self.payload.get(2..).unwrap_or_default()).expect("utf-8 reason")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("utf-8 frame")
    }
}

/// A WebSocket client on a plain TcpStream, in full control of its bytes.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Why the last read stopped (None: EOF).
    pub last_error: Option<std::io::Error>,
}

impl RawClient {
    /// Connects and completes the handshake on `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawClient {
        let mut c = RawClient::connect_tcp(addr);
        c.send_raw(upgrade_request(path).as_bytes());
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        c
    }

    /// Connects from the loopback address `source` (127.0.0.x: another
    /// client IP for the per-IP limits) and completes the handshake on `path`.
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr, path: &str) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind the source address");
        socket.connect(&addr.into()).expect("connect");
        let mut c = RawClient::from_stream(socket.into());
        c.send_raw(upgrade_request(path).as_bytes());
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        c
    }

    pub fn connect_tcp(addr: SocketAddr) -> RawClient {
        RawClient::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            last_error: None,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a masked frame.
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&encode_client_frame(fin, opcode, payload, [1, 2, 3, 4]));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(true, 1, text.as_bytes());
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Err(e) => {
                self.last_error = Some(e);
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads the HTTP response head (up to the blank line).
    pub fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            if !self.fill() {
                return String::from_utf8_lossy(&self.buf).into_owned();
            }
        }
    }

    /// Reads one server frame; `None` on EOF / timeout.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads the welcome notice every `/ws` connection starts with; returns it.
    pub fn read_welcome(&mut self) -> serde_json::Value {
        let f = self.read_non_ping().expect("welcome notice");
        let v: serde_json::Value = serde_json::from_str(f.text()).expect("json");
        assert_eq!(v["type"], "welcome", "{v}");
        v
    }

    /// Reads frames until one that is neither a ping nor a text frame (a
    /// notice or message): the close, typically.
    pub fn read_non_ping_skipping_text(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_non_ping()?;
            if f.opcode != 1 {
                return Some(f);
            }
        }
    }

    /// Reads frames until one that is not a ping (pings are answered by the
    /// caller only when it asks for them).
    pub fn read_non_ping(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_frame()?;
            if f.opcode != 9 {
                return Some(f);
            }
        }
    }

    /// Reads until the server closes the TCP connection; true if it did
    /// within the read timeout.
    pub fn expect_eof(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    );
                }
            }
        }
    }
}

/// Parses an unmasked server frame from the front of `buf`.
pub fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    Some((
        Frame {
            fin: buf[0] & 0x80 != 0,
            rsv1: buf[0] & 0x40 != 0,
            opcode: buf[0] & 0x0f,
            payload: buf[at..at + len].to_vec(),
        },
        at + len,
    ))
}

/// The packages of tests/js/package.json, installed on first use (as the
/// Autobahn test builds its virtualenv): once per test process, all at once
/// (installing one alone would prune the others).
pub fn ensure_js_packages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
        let modules = std::path::Path::new(dir).join("node_modules");
        if ["eventsource", "puppeteer-core", "ws"]
            .iter()
            .all(|p| modules.join(p).exists())
        {
            return;
        }
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix", dir])
            .status()
            .expect("npm is needed to install the test drivers in tests/js (Node.js 20+ with npm)");
        assert!(status.success(), "npm install --prefix tests/js failed");
    });
}

/// client/ringcast.js's reconnects, as (attempt, delay ms) in order, with
/// `minDelay` 100 and `maxDelay` 400: one per failed attempt (an error and
/// a close of the same socket must not both schedule one), so the attempts
/// count up from `first`; each delay within full jitter's range
/// [0, min(400, 100 * 2^(attempt-1))]; and not all the same.
pub fn assert_jittered_reconnects(delays: &[(u64, u64)], first: u64) {
    let attempts: Vec<u64> = delays.iter().map(|d| d.0).collect();
    assert_eq!(
        attempts,
        (first..first + attempts.len() as u64).collect::<Vec<_>>(),
        "{delays:?}"
    );
    for (attempt, delay) in delays {
        let cap = 400.min(100 << (attempt - 1).min(8));
        assert!(*delay <= cap, "attempt {attempt}: {delay} ms over {cap}");
    }
    let distinct: std::collections::HashSet<_> = delays.iter().map(|d| d.1).collect();
    assert!(distinct.len() > 1, "no jitter: {delays:?}");
}
