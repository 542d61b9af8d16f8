//! TCP proxies for the network going wrong: one whose connections can all
//! be cut at once (and new ones refused for a while), or one of them frozen
//! (it stays open and goes silent), as a mobile link or a stuck middlebox
//! does; and a balancer that sends each connection to the first backend
//! that takes it, as a load balancer in front of a fleet does. The cutting
//! proxy keeps the head of every request it forwarded, so a test can see
//! what a reconnecting client sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One connection through the proxy.
struct Piped {
    client: TcpStream,
    server: TcpStream,
    /// The proxy's own port towards the server (what the server sees).
    upstream_port: u16,
    frozen: Arc<AtomicBool>,
}

pub struct CuttingProxy {
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<Piped>>>,
    refusing: Arc<AtomicBool>,
    heads: Arc<Mutex<Vec<String>>>,
}

/// Copies `from` to `to` until either ends; while `frozen`, what arrives is
/// swallowed (the connection stays up and says nothing). The first request
/// head seen goes to `heads`.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: Arc<AtomicBool>,
    heads: Option<Arc<Mutex<Vec<String>>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(heads) = &heads
            && head.len() < 16384
            && !head.windows(4).any(|w| w == b"\r\n\r\n")
        {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head[..end]).into_owned());
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

impl CuttingProxy {
    /// Forwards every connection to `upstream` (connected anew each time,
    /// so a server restarted on the same port is reached again).
    pub fn start(upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (list, refuse, seen) = (open.clone(), refusing.clone(), heads.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if refuse.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                let upstream_port = server.local_addr().map_or(0, |a| a.port());
                list.lock().unwrap().push(Piped {
                    client: client.try_clone().unwrap(),
                    server: server.try_clone().unwrap(),
                    upstream_port,
                    frozen: frozen.clone(),
                });
                let (c, s, f, h) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    frozen.clone(),
                    seen.clone(),
                );
                std::thread::spawn(move || pipe(c, s, f, Some(h)));
                std::thread::spawn(move || pipe(server, client, frozen, None));
            }
        });
        CuttingProxy {
            addr,
            open,
            refusing,
            heads,
        }
    }

    /// Drops every connection open through the proxy.
    pub fn cut(&self) {
        for p in self.open.lock().unwrap().drain(..) {
            let _ = p.client.shutdown(Shutdown::Both);
            let _ = p.server.shutdown(Shutdown::Both);
        }
    }

    /// Silences the connection the server sees coming from `port` (its
    /// bytes are swallowed both ways; it stays open). False if none.
    pub fn freeze_upstream_port(&self, port: u16) -> bool {
        let open = self.open.lock().unwrap();
        let found = open.iter().find(|p| p.upstream_port == port);
        if let Some(p) = found {
            p.frozen.store(true, Ordering::SeqCst);
        }
        found.is_some()
    }

    /// While `true`, new connections are closed as soon as they arrive.
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    /// The heads of the requests forwarded so far, oldest first.
    pub fn request_heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Sends each connection to the first of its backends that accepts it.
pub struct Balancer {
    pub addr: SocketAddr,
}

impl Balancer {
    pub fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Some(server) = backends.iter().find_map(|b| TcpStream::connect(b).ok()) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                let (c, s, f) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    frozen.clone(),
                );
                std::thread::spawn(move || pipe(c, s, f, None));
                std::thread::spawn(move || pipe(server, client, frozen, None));
            }
        });
        Balancer { addr }
    }
}
