//! The load generator's WebSocket clients: a few threads, each driving
//! thousands of sockets through its own io_uring (multishot receive into a
//! provided-buffer ring, as the server does), so the generator is not the
//! bottleneck. Connections are opened synchronously at a paced rate (a
//! loopback handshake takes microseconds), then only read.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::stats::{Snapshot, monotonic_ns, new_histogram, take_latencies};
use crate::protocol::frame::encode_client_frame;
use crate::uring::{Completion, Driver, Op};

/// Where the clients connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    /// Path and query, e.g. `/ws?channels=bench`.
    pub path: String,
    /// Offer permessage-deflate.
    pub compression: bool,
    /// Read a server-sent event stream (`GET /sse`) instead of WebSocket.
    pub sse: bool,
}

/// One thread's share of the clients.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub connections: usize,
    /// How many of them never read after the handshake.
    pub slow: usize,
    pub source_ips: Vec<IpAddr>,
    /// Connections opened per second by this thread.
    pub connect_rate: f64,
}

/// What a client thread shares with the reporter.
#[derive(Default)]
pub struct Shared {
    pub snapshot: Mutex<Snapshot>,
    pub stop: AtomicBool,
}

pub fn spawn(
    plan: Plan,
    index: usize,
) -> std::io::Result<(std::thread::JoinHandle<()>, Arc<Shared>)> {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("bench-client-{index}"))
        .spawn(move || run(plan, index, &s))?;
    Ok((handle, shared))
}

struct Conn {
    fd: RawFd,
    /// An event stream, not a WebSocket.
    sse: bool,
    /// Bytes of an incomplete frame.
    partial: Vec<u8>,
    /// Last bench seq seen (0: none yet).
    last_seq: u64,
    open: bool,
}

struct Counters {
    snap: Snapshot,
    hist: Histogram<u64>,
    /// When the current batch of completions was reaped: the receive time
    /// of every frame in it (one clock read per batch, not per frame).
    now_ns: u64,
}

fn run(plan: Plan, index: usize, shared: &Shared) {
    let mut c = Counters {
        snap: Snapshot::default(),
        hist: new_histogram(),
        now_ns: monotonic_ns(),
    };
    let mut conns: Vec<Conn> = Vec::with_capacity(plan.connections);
    let mut leftovers = Vec::new();
    let started = Instant::now();
    let mut last_publish = Instant::now();
    for i in 0..plan.connections {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // Pace: connection i is due at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / plan.connect_rate.max(1.0));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let source = (!plan.source_ips.is_empty())
            .then(|| plan.source_ips[(i + index) % plan.source_ips.len()]);
        // The first `slow` connections are stuck clients: a small receive
        // window, as a suspended mobile browser has.
        let rcvbuf = (i < plan.slow).then_some(4096);
        match connect(&plan.target, source, rcvbuf) {
            Ok((fd, leftover)) => {
                conns.push(Conn {
                    fd,
                    sse: plan.target.sse,
                    partial: Vec::new(),
                    last_seq: 0,
                    open: true,
                });
                leftovers.push(leftover);
                c.snap.open += 1;
            }
            Err(e) => {
                if c.snap.failed == 0 {
                    eprintln!("ringcast bench: connection failed: {e}");
                }
                c.snap.failed += 1;
            }
        }
        if last_publish.elapsed() > Duration::from_millis(100) {
            publish(&mut c, shared);
            last_publish = Instant::now();
        }
    }
    publish(&mut c, shared);
    let mut driver = match Driver::new(4096, 2048, 16 * 1024) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringcast bench: {e}");
            return;
        }
    };
    // The first `slow` connections never read: not even the kernel's
    // buffers drain, which is what a stuck client looks like to a server.
    let slow = plan.slow.min(conns.len());
    for (slot, conn) in conns.iter_mut().enumerate().skip(slow) {
        if driver.recv(conn.fd, slot as u32, 0).is_err() {
            conn.open = false;
        }
    }
    c.now_ns = monotonic_ns();
    for (slot, leftover) in leftovers.into_iter().enumerate().skip(slow) {
        if !leftover.is_empty() {
            on_bytes(&mut conns[slot], &leftover, &mut c);
        }
    }
    while !shared.stop.load(Ordering::Relaxed) {
        if driver
            .submit_and_wait(Some(Duration::from_millis(50)))
            .is_err()
        {
            break;
        }
        let completions = driver.take_reaped();
        c.now_ns = monotonic_ns();
        for done in &completions {
            on_completion(&mut driver, &mut conns, done, &mut c);
        }
        driver.restore(completions);
        if last_publish.elapsed() > Duration::from_millis(100) {
            check_slow(&mut conns[..slow], &mut c);
            publish(&mut c, shared);
            last_publish = Instant::now();
        }
    }
    publish(&mut c, shared);
    for conn in &conns {
        // SAFETY: closing our own descriptors; the ring is dropped right after.
        unsafe { libc::close(conn.fd) };
    }
}

/// `TCP_ESTABLISHED` in the kernel's include/net/tcp_states.h.
const TCP_ESTABLISHED: u8 = 1;

/// Slow connections are never read, so a server closing them is seen in
/// the TCP state instead: once it is no longer ESTABLISHED (FIN after the
/// server's 4008 close, or a reset), the server has cut the client.
fn check_slow(slow: &mut [Conn], c: &mut Counters) {
    for conn in slow.iter_mut().filter(|conn| conn.open) {
        // SAFETY: tcp_info is plain data; all-zero is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: pointer and length describe `info`, which we own.
        let rc = unsafe {
            libc::getsockopt(
                conn.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc == 0 && info.tcpi_state != TCP_ESTABLISHED {
            gone(conn, c, true);
        }
    }
}

/// Copies the counters and the latencies since the last call out.
fn publish(c: &mut Counters, shared: &Shared) {
    let mut snap = shared.snapshot.lock().unwrap_or_else(|e| e.into_inner());
    let mut latency = std::mem::take(&mut snap.latency);
    latency.extend(take_latencies(&mut c.hist));
    *snap = Snapshot {
        latency,
        ..c.snap.clone()
    };
}

fn on_completion(driver: &mut Driver, conns: &mut [Conn], done: &Completion, c: &mut Counters) {
    if done.op != Op::Recv {
        return;
    }
    let Some(conn) = conns.get_mut(done.slot as usize) else {
        return;
    };
    if done.result > 0 {
        if let Some(bid) = done.buffer() {
            let data = driver.received(bid, done.result as usize);
            on_bytes(conn, &data, c);
        }
        if !done.more() && conn.open && driver.recv(conn.fd, done.slot, 0).is_err() {
            gone(conn, c, false);
        }
    } else if done.result == -libc::ENOBUFS {
        // Buffers ran dry for a moment: they are back now; read again.
        if driver.recv(conn.fd, done.slot, 0).is_err() {
            gone(conn, c, false);
        }
    } else if !done.more() {
        gone(conn, c, false);
    }
}

fn gone(conn: &mut Conn, c: &mut Counters, slow_cut: bool) {
    if !conn.open {
        return;
    }
    conn.open = false;
    c.snap.open -= 1;
    if slow_cut {
        c.snap.slow_cut += 1;
    } else {
        c.snap.closed += 1;
    }
}

/// Parses the frames in `data` (after any partial frame kept from the
/// previous read) and keeps the incomplete tail, reusing the connection's
/// buffer rather than allocating per read.
fn on_bytes(conn: &mut Conn, data: &[u8], c: &mut Counters) {
    c.snap.bytes += data.len() as u64;
    if conn.sse {
        return on_event_bytes(conn, data, c);
    }
    let mut partial = std::mem::take(&mut conn.partial);
    let buf: &[u8] = if partial.is_empty() {
        data
    } else {
        partial.extend_from_slice(data);
        &partial
    };
    let mut at = 0;
    while let Some((head, payload, len)) = parse_server_frame(&buf[at..]) {
        if head & 0x40 != 0 && head & 0x0f == 1 {
            // Compressed (permessage-deflate): a delivery; its seq and time
            // stamp are not read (inflating here would cost the generator
            // more than the server's delivery).
            c.snap.received += 1;
        } else {
            on_frame(conn, head & 0x0f, payload, c);
        }
        at += len;
    }
    if partial.is_empty() {
        partial.extend_from_slice(&data[at..]);
    } else {
        partial.drain(..at);
    }
    // Thousands of idle connections must not each keep a large buffer.
    if partial.is_empty() && partial.capacity() > 4096 {
        partial = Vec::new();
    }
    conn.partial = partial;
}

/// An event stream: events end at a blank line; each bench event carries
/// its stamp in its `data:` line.
fn on_event_bytes(conn: &mut Conn, data: &[u8], c: &mut Counters) {
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    conn.partial.extend_from_slice(data);
    let mut at = 0;
    while let Some(end) = END.find(&conn.partial[at..]) {
        let event = &conn.partial[at..at + end];
        if let Some((seq, sent_ns)) = bench_stamp(event) {
            delivered(conn, seq, sent_ns, c);
        }
        at += end + 2;
    }
    conn.partial.drain(..at);
    if conn.partial.is_empty() && conn.partial.capacity() > 4096 {
        conn.partial = Vec::new();
    }
}

/// A bench message arrived: counted, timed, and checked for gaps.
fn delivered(conn: &mut Conn, seq: u64, sent_ns: u64, c: &mut Counters) {
    c.snap.received += 1;
    let latency_us = c.now_ns.saturating_sub(sent_ns) / 1000;
    let _ = c.hist.record(latency_us.max(1));
    if conn.last_seq == 0 || seq == conn.last_seq + 1 {
        conn.last_seq = seq;
    } else if seq > conn.last_seq {
        c.snap.gaps += seq - conn.last_seq - 1;
        conn.last_seq = seq;
    } else {
        c.snap.dups += 1;
    }
}

fn on_frame(conn: &mut Conn, opcode: u8, payload: &[u8], c: &mut Counters) {
    match opcode {
        0x0..=0x2 => {
            let Some((seq, sent_ns)) = bench_stamp(payload) else {
                return; // a notice, or another server's greeting
            };
            delivered(conn, seq, sent_ns, c);
        }
        0x8 => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            let slow_cut = code == Some(4008);
            gone(conn, c, slow_cut);
        }
        0x9 => {
            // Answer pings, as any client must; a tiny write that never blocks here.
            let pong = encode_client_frame(true, 0xA, payload, [7, 7, 7, 7]);
            // SAFETY: sends from a live buffer on our own socket.
            unsafe {
                libc::send(
                    conn.fd,
                    pong.as_ptr().cast(),
                    pong.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
        }
        _ => {}
    }
}

/// Parses one unmasked server frame from the front of `buf`: (first header
/// byte: FIN, RSV and opcode; payload; total length).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at): (u64, usize) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?), 10),
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    if buf.len() < end {
        return None;
    }
    Some((buf[0], &buf[at..end], end))
}

/// Finds `"bench":[SEQ,TS` near the start of a payload. Runs once per
/// received frame, so it must cost far less than the server's delivery.
pub fn bench_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    static MARK: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"bench\":["));
    let head = &payload[..payload.len().min(512)];
    let mut rest = &head[MARK.find(head)? + MARK.needle().len()..];
    let seq = take_number(&mut rest)?;
    let sent_ns = take_number(&mut rest)?;
    Some((seq, sent_ns))
}

/// The next run of ASCII digits in `rest` as a number (past separators),
/// advancing `rest` beyond it; `None` if there is none or it overflows.
fn take_number(rest: &mut &[u8]) -> Option<u64> {
    let start = rest.iter().position(u8::is_ascii_digit)?;
    let digits = &rest[start..];
    let len = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let mut value: u64 = 0;
    for &d in &digits[..len] {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    *rest = &digits[len..];
    Some(value)
}

/// Opens one WebSocket connection; returns the fd and any bytes that came
/// with the handshake response.
fn connect(
    target: &Target,
    source: Option<IpAddr>,
    rcvbuf: Option<usize>,
) -> std::io::Result<(RawFd, Vec<u8>)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target.addr),
        socket2::Type::STREAM.cloexec(),
        None,
    )?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&target.addr.into(), Duration::from_secs(5))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream: std::net::TcpStream = socket.into();
    // 16 bytes, base64: unique enough for a load generator.
    let nonce = (u128::from(monotonic_ns()) << 64) | u128::from(std::process::id());
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        nonce.to_le_bytes(),
    );
    let request = if target.sse {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            target.path, target.host
        )
    } else {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n{}\r\n",
            target.path,
            target.host,
            key,
            if target.compression {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            }
        )
    };
    stream.write_all(request.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Err(std::io::Error::other("no handshake response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let expected: &[u8] = if target.sse {
        b"HTTP/1.1 200"
    } else {
        b"HTTP/1.1 101"
    };
    if !buf.starts_with(expected) {
        let line = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
        return Err(std::io::Error::other(format!(
            "upgrade refused: {}",
            line.lines().next().unwrap_or("")
        )));
    }
    Ok((stream.into_raw_fd(), buf[end..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_any_envelope() {
        assert_eq!(
            bench_stamp(br#"{"channel":"b","seq":9,"data":{"bench":[42,123456789],"pad":"x"}}"#),
            Some((42, 123456789))
        );
        assert_eq!(bench_stamp(br#"{"bench":[ 7 , 8 ]}"#), Some((7, 8)));
        assert_eq!(bench_stamp(br#"{"type":"welcome"}"#), None);
        assert_eq!(bench_stamp(br#"{"bench":[1]}"#), None);
        assert_eq!(bench_stamp(br#"{"bench":[99999999999999999999,1]}"#), None);
        assert_eq!(
            bench_stamp(br#"{"bench":[18446744073709551615,0]}"#),
            Some((u64::MAX, 0))
        );
    }

    #[test]
    fn server_frames_parse_incrementally() {
        let f = crate::protocol::frame::encode_server_frame(
            crate::protocol::frame::OpCode::Text,
            &[b'a'; 300],
        );
        assert_eq!(parse_server_frame(&f[..3]), None);
        let (op, payload, len) = parse_server_frame(&f).unwrap();
        assert_eq!((op & 0x0f, payload.len(), len), (1, 300, f.len()));
    }
}
