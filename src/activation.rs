//! systemd socket activation (`ringcast.socket`): the service manager owns the
//! listening socket and passes it at start (`LISTEN_PID`, `LISTEN_FDS`,
//! descriptors from 3). While ringcast restarts, connections wait in that
//! socket's backlog instead of being refused.
//!
//! An inherited socket is one socket, so the shards share it (each accepts on
//! its own duplicate) instead of each binding its own `SO_REUSEPORT` socket.

use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Socket, Type};

/// The first descriptor systemd passes.
pub const FIRST_FD: RawFd = 3;

/// How many descriptors were passed to process `pid`, from the values of
/// `LISTEN_PID` and `LISTEN_FDS`. Variables meant for another process (a
/// parent that did not clear them) count as none.
pub fn passed_fd_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<usize, String> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(0);
    };
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(0);
    }
    listen_fds
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("LISTEN_FDS={listen_fds:?} is not a number of descriptors"))
}

/// The listening TCP socket systemd passed, if any. Taken once per process:
/// later calls (a second server started in the same process) get `None`.
pub fn take_listener() -> Result<Option<Socket>, String> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let var = |name| std::env::var(name).ok();
    let count = passed_fd_count(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    )?;
    match count {
        0 => Ok(None),
        1 => {
            // SAFETY: under the activation protocol (LISTEN_PID is our pid),
            // descriptor 3 was opened for this process and nothing else in it
            // owns it; the Socket becomes its only owner.
            let socket = unsafe { Socket::from_raw_fd(FIRST_FD) };
            check_listener(&socket)?;
            socket
                .set_cloexec(true)
                .map_err(|e| format!("socket passed by systemd: {e}"))?;
            Ok(Some(socket))
        }
        n => Err(format!(
            "systemd passed {n} sockets; ringcast serves one listening TCP socket: keep one \
             ListenStream= in ringcast.socket ([::]:PORT takes IPv4 and IPv6 both)"
        )),
    }
}

fn check_listener(socket: &Socket) -> Result<(), String> {
    let what = |e: std::io::Error| format!("socket passed by systemd (fd {FIRST_FD}): {e}");
    let is_tcp = socket.r#type().map_err(what)? == Type::STREAM
        && socket.local_addr().map_err(what)?.as_socket().is_some();
    if !is_tcp || !socket.is_listener().map_err(what)? {
        return Err(format!(
            "the socket systemd passed (fd {FIRST_FD}) is not a listening TCP socket: \
             ringcast.socket needs ListenStream=ADDRESS:PORT"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_count_from_the_environment() {
        assert_eq!(passed_fd_count(None, None, 7), Ok(0));
        assert_eq!(passed_fd_count(Some("7"), None, 7), Ok(0));
        assert_eq!(passed_fd_count(Some("7"), Some("1"), 7), Ok(1));
        assert_eq!(passed_fd_count(Some("7"), Some("2"), 7), Ok(2));
        // Meant for another process: ignored.
        assert_eq!(passed_fd_count(Some("8"), Some("1"), 7), Ok(0));
        assert!(passed_fd_count(Some("7"), Some("x"), 7).is_err());
    }
}
