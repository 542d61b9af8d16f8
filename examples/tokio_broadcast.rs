//! Baseline (a) for `benches/compare.sh`: a WebSocket broadcast server as a
//! typical Rust user writes it with tokio-tungstenite: one task per client,
//! a `tokio::sync::broadcast` channel, `sink.send` per message. Same feed as
//! ringcast (UDP datagrams, Unix-socket lines); the published text is
//! forwarded as is; any path and query on the upgrade is accepted.
//!
//!   cargo run --release --example tokio_broadcast -- --listen 127.0.0.1:8081 --udp 127.0.0.1:9001

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8081".into());
    let udp = arg("--udp").unwrap_or_else(|| "127.0.0.1:9001".into());
    let (tx, _) = broadcast::channel::<Utf8Bytes>(4096);

    let socket = UdpSocket::bind(&udp).await.expect("bind UDP feed");
    let feed = tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok(n) = socket.recv(&mut buf).await else {
                continue;
            };
            if let Ok(text) = std::str::from_utf8(&buf[..n]) {
                let _ = feed.send(Utf8Bytes::from(text.to_owned()));
            }
        }
    });
    if let Some(path) = arg("--unix") {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind Unix feed");
        let feed = tx.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let feed = feed.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = feed.send(Utf8Bytes::from(line));
                    }
                });
            }
        });
    }

    let listener = TcpListener::bind(&listen).await.expect("bind listener");
    eprintln!("tokio_broadcast listening on {listen}, feed udp {udp}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut source) = ws.split();
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(text) => {
                            if sink.send(Message::Text(text)).await.is_err() {
                                break;
                            }
                        }
                        // The usual choice: a lagging client skips ahead.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    },
                    incoming = source.next() => match incoming {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        _ => {}
                    },
                }
            }
        });
    }
}
