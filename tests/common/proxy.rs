//! A TCP proxy in front of a server whose connections can all be cut at
//! once, and new ones refused for a while: the network dropping a client, as
//! a mobile link does. It keeps the head of every request it forwarded, so
//! a test can see what a reconnecting client sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct CuttingProxy {
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    refusing: Arc<AtomicBool>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl CuttingProxy {
    /// Forwards every connection to `upstream` (looked up anew each time,
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
                list.lock().unwrap().push(client.try_clone().unwrap());
                list.lock().unwrap().push(server.try_clone().unwrap());
                let (mut up_from, mut up_to) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let seen = seen.clone();
                std::thread::spawn(move || {
                    // The request head is recorded as it passes.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = up_from.read(&mut buf) {
                        if n == 0 || up_to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if head.len() < 16384 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            head.extend_from_slice(&buf[..n]);
                            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                seen.lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&head[..end]).into_owned());
                            }
                        }
                    }
                    let _ = up_to.shutdown(Shutdown::Both);
                });
                let (mut down_from, mut down_to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down_from, &mut down_to);
                    let _ = down_to.shutdown(Shutdown::Both);
                });
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
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
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
