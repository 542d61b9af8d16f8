//! The feed sockets: UDP (one datagram = one message) and a Unix stream
//! socket (one message per `\n`-terminated line, any number of publishers).
//! They only frame messages and enforce the size limit; the distributor
//! parses them.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::AsyncReadExt;
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::envelope::FeedError;
use super::{FeedStats, Incoming};

/// Kernel receive buffer asked for the UDP socket, to ride out bursts while
/// the distributor is busy (capped by net.core.rmem_max).
const UDP_RCVBUF: usize = crate::tuning::UDP_FEED_BUFFER as usize;

/// Binds the UDP feed socket.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM.cloexec(),
        None,
    )?;
    let _ = socket.set_recv_buffer_size(UDP_RCVBUF);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Reads datagrams until the socket fails. In a fleet whose Redis cannot
/// be reached, each is refused (and counted) at once: a datagram cannot
/// wait, and queueing it would only delay its loss.
pub async fn run_udp(
    socket: UdpSocket,
    tx: mpsc::Sender<Incoming>,
    max_message: usize,
    stats: Arc<FeedStats>,
    shared: Arc<crate::core::shared::Shared>,
) {
    // Big enough for any datagram, so none is silently truncated.
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("UDP feed receive failed: {e}");
                continue;
            }
        };
        stats.udp_messages.fetch_add(1, Relaxed);
        if n > max_message {
            stats.error(FeedError::Oversize);
            continue;
        }
        if !shared.upstream.is_up() {
            stats.fleet_refused_udp.fetch_add(1, Relaxed);
            continue;
        }
        let message = Incoming {
            bytes: buf[..n].to_vec(),
            source: "udp",
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

/// Binds the Unix feed socket. A stale socket file (nobody listening) is
/// replaced; a live one, or a file that is not a socket, is an error.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; remove it or choose another --unix path",
                        path.display()
                    ),
                ));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another server is listening on {}; stop it or choose another --unix path",
                        path.display()
                    ),
                )),
                Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("replacing stale socket file {}", path.display());
                    std::fs::remove_file(path)?;
                    UnixListener::bind(path)
                }
                Err(c) => Err(c),
            }
        }
        Err(e) => {
            let hint = match e.kind() {
                io::ErrorKind::NotFound => match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => format!(
                        " (the directory {} does not exist: create it, or under systemd \
                         let RuntimeDirectory= make it)",
                        dir.display()
                    ),
                    _ => String::new(),
                },
                io::ErrorKind::PermissionDenied => {
                    " (this user may not create files there: choose another --unix path)".into()
                }
                _ => String::new(),
            };
            Err(io::Error::new(e.kind(), format!("{e}{hint}")))
        }
    }
}

/// Accepts Unix publishers until the listener fails.
pub async fn run_unix(
    listener: UnixListener,
    tx: mpsc::Sender<Incoming>,
    max_message: usize,
    stats: Arc<FeedStats>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(read_lines(stream, tx.clone(), max_message, stats.clone()));
            }
            Err(e) => {
                tracing::warn!("Unix feed accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One publisher: every complete line is a message, in order. A line over
/// the limit is skipped to its end; a line cut short by the publisher
/// disconnecting is lost (and counted).
async fn read_lines(
    mut stream: UnixStream,
    tx: mpsc::Sender<Incoming>,
    max_message: usize,
    stats: Arc<FeedStats>,
) {
    stats.unix_publishers.fetch_add(1, Relaxed);
    let mut splitter = LineSplitter::new(max_message);
    let mut chunk = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut lines = Vec::new();
        splitter.push(&chunk[..n], &mut lines, &stats);
        for line in lines {
            stats.unix_messages.fetch_add(1, Relaxed);
            let message = Incoming {
                bytes: line,
                source: "unix",
            };
            if tx.send(message).await.is_err() {
                break 'read;
            }
        }
    }
    if splitter.has_partial() {
        stats.error(FeedError::PartialLine);
    }
    stats.unix_publishers.fetch_sub(1, Relaxed);
}

/// Splits a byte stream into lines of at most `max` bytes (the `\n`, and a
/// `\r` before it, are not part of the line). Pure, for testing.
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    /// Inside a line already refused as oversize: skip to its end.
    skipping: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            max,
            partial: Vec::new(),
            skipping: false,
        }
    }

    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>, stats: &FeedStats) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            let (piece, rest) = bytes.split_at(pos);
            bytes = &rest[1..];
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(piece);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > self.max {
                stats.error(FeedError::Oversize);
            } else if !line.is_empty() {
                out.push(line);
            }
        }
        if self.skipping {
            return;
        }
        self.partial.extend_from_slice(bytes);
        // +1: the line may still end with a '\r' that is not part of it.
        if self.partial.len() > self.max + 1 {
            stats.error(FeedError::Oversize);
            self.partial = Vec::new();
            self.skipping = true;
        }
    }
}

/// Removes the Unix socket file when the server stops.
pub struct SocketFileGuard(pub PathBuf);

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, FeedStats, bool) {
        let stats = FeedStats::default();
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out, &stats);
        }
        let partial = s.has_partial();
        (out, stats, partial)
    }

    #[test]
    fn lines_across_reads() {
        let (out, _, partial) = split(100, &[b"ab", b"c\nde", b"f\r\n\n", b"gh"]);
        assert_eq!(out, vec![b"abc".to_vec(), b"def".to_vec()]);
        assert!(partial);
    }

    #[test]
    fn oversize_lines_are_skipped_to_their_end() {
        let (out, stats, _) = split(5, &[b"123456", b"789\nok\n", b"1234567890\nfine\n"]);
        assert_eq!(out, vec![b"ok".to_vec(), b"fine".to_vec()]);
        assert_eq!(stats.errors(FeedError::Oversize), 2);
        let (out, _, _) = split(5, &[b"12345\r\n"]);
        assert_eq!(out, vec![b"12345".to_vec()]);
    }
}
