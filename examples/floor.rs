//! Baseline (b) for `benches/compare.sh`: the floor. The cheapest possible
//! broadcast server: one thread, one io_uring (ringcast's own driver, so the
//! I/O machinery is the same), and for each UDP datagram one frame is built
//! and that same buffer is sent to every socket, one send each. No queue, no
//! coalescing, no channels, no heartbeat, no limits: ringcast can approach
//! its CPU cost per delivery at low rates but not beat it.
//!
//!   cargo run --release --example floor -- --listen 127.0.0.1:8082 --udp 127.0.0.1:9002

use std::collections::HashMap;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use ringcast::protocol::frame::{MAX_SERVER_HEADER, OpCode, write_server_header};
use ringcast::protocol::handshake::{parse_request_head, switching_protocols, validate_upgrade};
use ringcast::uring::{Driver, Op};

const UDP_SLOT: u32 = u32::MAX;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Conn {
    fd: RawFd,
    /// The request received so far, until the upgrade.
    head: Vec<u8>,
    upgraded: bool,
    open: bool,
}

fn main() -> std::io::Result<()> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8082".into());
    let udp_addr = arg("--udp").unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = TcpListener::bind(&listen)?;
    let udp = UdpSocket::bind(&udp_addr)?;
    // Receive buffers big enough for any datagram (64 KiB messages).
    let mut driver = Driver::new(4096, 256, 64 * 1024)?;
    driver.accept(listener.as_raw_fd())?;
    driver.recv(udp.as_raw_fd(), UDP_SLOT, 0)?;
    eprintln!("floor listening on {listen}, feed udp {udp_addr}");

    let mut conns: Vec<Conn> = Vec::new();
    // Frames being sent, by id, with the number of sends still in flight.
    let mut frames: HashMap<u32, (Rc<Vec<u8>>, usize)> = HashMap::new();
    let mut next_frame: u32 = 0;
    loop {
        driver.submit_and_wait(Some(Duration::from_millis(100)))?;
        let done = driver.take_reaped();
        for c in &done {
            match c.op {
                Op::Accept if c.result >= 0 => {
                    let slot = conns.len() as u32;
                    conns.push(Conn {
                        fd: c.result,
                        head: Vec::new(),
                        upgraded: false,
                        open: true,
                    });
                    driver.recv(c.result, slot, 0)?;
                }
                Op::Accept if !c.more() => driver.accept(listener.as_raw_fd())?,
                Op::Recv if c.slot == UDP_SLOT => {
                    if let (true, Some(bid)) = (c.result > 0, c.buffer()) {
                        let datagram = driver.received(bid, c.result as usize);
                        let mut header = [0u8; MAX_SERVER_HEADER];
                        let n =
                            write_server_header(&mut header, true, OpCode::Text, datagram.len());
                        let mut frame = header[..n].to_vec();
                        frame.extend_from_slice(&datagram);
                        drop(datagram);
                        let frame = Rc::new(frame);
                        next_frame = (next_frame + 1) & 0x00ff_ffff;
                        let mut sends = 0;
                        for (slot, conn) in conns.iter().enumerate() {
                            if conn.open && conn.upgraded {
                                // SAFETY: `frames` keeps the buffer alive until
                                // every send of it has completed.
                                unsafe {
                                    driver.send(
                                        conn.fd,
                                        slot as u32,
                                        next_frame,
                                        &[(frame.as_ptr(), frame.len())],
                                    )?
                                };
                                sends += 1;
                            }
                        }
                        if sends > 0 {
                            frames.insert(next_frame, (frame, sends));
                        }
                    }
                    if !c.more() {
                        driver.recv(udp.as_raw_fd(), UDP_SLOT, 0)?;
                    }
                }
                Op::Recv => {
                    let Some(conn) = conns.get_mut(c.slot as usize) else {
                        continue;
                    };
                    if c.result <= 0 {
                        if c.result != -libc::ENOBUFS && conn.open {
                            conn.open = false;
                            // SAFETY: our fd; nothing else reads it.
                            unsafe { libc::close(conn.fd) };
                        }
                        continue;
                    }
                    let Some(bid) = c.buffer() else { continue };
                    // Until the upgrade, collect the request; afterwards
                    // whatever clients send is ignored.
                    if conn.upgraded {
                        driver.recycle(bid);
                    } else {
                        conn.head
                            .extend_from_slice(&driver.received(bid, c.result as usize));
                        if let Ok(Some((head, _))) = parse_request_head(&conn.head) {
                            let response = match validate_upgrade(&head) {
                                Ok(accept) => switching_protocols(&accept, None, None),
                                Err(r) => r.response(),
                            };
                            // SAFETY: a blocking write of a small buffer we own.
                            unsafe {
                                libc::write(conn.fd, response.as_ptr().cast(), response.len())
                            };
                            conn.head = Vec::new();
                            conn.upgraded = true;
                        }
                    }
                }
                Op::Send => {
                    if c.result < 0
                        && let Some(conn) = conns.get_mut(c.slot as usize)
                        && conn.open
                    {
                        conn.open = false;
                        // SAFETY: our fd.
                        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
                    }
                    if let Some(entry) = frames.get_mut(&c.generation) {
                        entry.1 -= 1;
                        if entry.1 == 0 {
                            frames.remove(&c.generation);
                        }
                    }
                }
                _ => {}
            }
        }
        driver.restore(done);
    }
}
