//! Can io_uring be used here? Answered by doing what a shard does, end to
//! end: set up a ring, register a provided-buffer ring with it, submit an
//! operation and reap its completion. A seccomp filter may allow
//! `io_uring_setup` and still refuse `io_uring_enter` or
//! `io_uring_register`, so setting up a ring alone proves nothing.

use std::time::Duration;

use io_uring::IoUring;

use crate::uring::bufring::BufRing;

use super::Io;

/// Why io_uring cannot be used, and what would change that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub cause: String,
    pub fix: String,
}

/// What `--io` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoChoice {
    Auto,
    IoUring,
    Epoll,
}

impl IoChoice {
    pub fn parse(value: &str) -> Result<IoChoice, String> {
        match value {
            "auto" => Ok(IoChoice::Auto),
            "io-uring" | "io_uring" | "uring" => Ok(IoChoice::IoUring),
            "epoll" => Ok(IoChoice::Epoll),
            _ => Err("expected 'auto', 'io-uring' or 'epoll'".into()),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            IoChoice::Auto => "auto",
            IoChoice::IoUring => "io-uring",
            IoChoice::Epoll => "epoll",
        }
    }
}

/// The driver `choice` comes to on this host: the driver, and for `auto`
/// falling back to epoll the one-line warning that says why. `--io io-uring`
/// where io_uring cannot be had is an error naming the cause and the fix.
pub fn resolve(choice: IoChoice) -> Result<(Io, Option<String>), String> {
    match choice {
        IoChoice::Epoll => Ok((Io::Epoll, None)),
        IoChoice::IoUring => match probe_io_uring() {
            Ok(()) => Ok((Io::IoUring, None)),
            Err(u) => Err(format!(
                "--io io-uring: io_uring cannot be used here: {}. Fix: {}; or use --io auto, which runs on epoll here",
                u.cause, u.fix
            )),
        },
        IoChoice::Auto => match probe_io_uring() {
            Ok(()) => Ok((Io::IoUring, None)),
            Err(u) => Ok((
                Io::Epoll,
                Some(format!(
                    "io_uring is not available ({}); running on epoll. To use io_uring: {}",
                    u.cause, u.fix
                )),
            )),
        },
    }
}

/// Sets up a ring, registers a buffer ring with it, and submits and reaps a
/// no-op.
pub fn probe_io_uring() -> Result<(), Unavailable> {
    let ring = IoUring::builder().build(8).map_err(|e| setup_refused(&e))?;
    let params = ring.params();
    if !params.is_feature_submit_stable()
        || !params.is_feature_nodrop()
        || !params.is_feature_ext_arg()
    {
        return Err(Unavailable {
            cause: "this kernel's io_uring lacks features ringcast needs (Linux 6.1 or newer)"
                .into(),
            fix: "upgrade the kernel".into(),
        });
    }
    let bufs = BufRing::new(&ring.submitter(), 16, 512).map_err(|e| register_refused(&e))?;
    let result = round_trip(ring);
    drop(bufs);
    result
}

fn round_trip(mut ring: IoUring) -> Result<(), Unavailable> {
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op points at no memory.
    if unsafe { ring.submission().push(&nop) }.is_err() {
        return Err(Unavailable {
            cause: "could not queue an operation on a new ring".into(),
            fix: "report this as a bug".into(),
        });
    }
    let ts = io_uring::types::Timespec::from(Duration::from_secs(1));
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => {
            return Err(Unavailable {
                cause: format!(
                    "a ring was set up, but io_uring_enter was refused ({e}): a seccomp filter allows io_uring_setup and blocks io_uring_enter"
                ),
                fix: seccomp_fix().into(),
            });
        }
    }
    if ring.completion().any(|c| c.user_data() == 7) {
        Ok(())
    } else {
        Err(Unavailable {
            cause: "a submitted operation did not complete within 1 s".into(),
            fix: "check the kernel log; report this as a bug".into(),
        })
    }
}

fn seccomp_fix() -> &'static str {
    "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile \
     (Docker: --security-opt seccomp=<a profile allowing them>; systemd: add them to SystemCallFilter=)"
}

fn setup_refused(e: &std::io::Error) -> Unavailable {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(2)) => Unavailable {
            cause: "kernel.io_uring_disabled is 2: io_uring is off for every process".into(),
            fix: "sysctl -w kernel.io_uring_disabled=0".into(),
        },
        (Some(libc::EPERM), Some(1)) => Unavailable {
            cause: "kernel.io_uring_disabled is 1 and this process is not in kernel.io_uring_group"
                .into(),
            fix: "add the service's user to the group kernel.io_uring_group names, or sysctl -w kernel.io_uring_disabled=0".into(),
        },
        (Some(libc::EPERM), _) => Unavailable {
            cause: "io_uring_setup was refused (EPERM): a seccomp filter blocks io_uring (Docker's and containerd's default profiles do)".into(),
            fix: seccomp_fix().into(),
        },
        (Some(libc::ENOSYS), _) => Unavailable {
            cause: "io_uring_setup is not implemented (ENOSYS): this kernel has no io_uring, or a seccomp filter answers ENOSYS for it".into(),
            fix: format!("Linux 6.1 or newer with CONFIG_IO_URING, or {}", seccomp_fix()),
        },
        (Some(libc::ENOMEM), _) => Unavailable {
            cause: "not enough locked memory for a ring (RLIMIT_MEMLOCK)".into(),
            fix: "raise it (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)".into(),
        },
        _ => Unavailable {
            cause: format!("io_uring_setup failed: {e}"),
            fix: "Linux 6.1 or newer with io_uring enabled".into(),
        },
    }
}

fn register_refused(e: &std::io::Error) -> Unavailable {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Unavailable {
            cause: format!(
                "a ring was set up, but io_uring_register was refused ({e}): a seccomp filter blocks it"
            ),
            fix: seccomp_fix().into(),
        },
        _ => Unavailable {
            cause: format!("cannot register a provided-buffer ring ({e}; needs Linux 5.19+)"),
            fix: "Linux 6.1 or newer".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_epoll_needs_no_probe() {
        assert_eq!(IoChoice::parse("auto"), Ok(IoChoice::Auto));
        assert_eq!(IoChoice::parse("io-uring"), Ok(IoChoice::IoUring));
        assert_eq!(IoChoice::parse("epoll"), Ok(IoChoice::Epoll));
        assert!(IoChoice::parse("kqueue").is_err());
        assert_eq!(resolve(IoChoice::Epoll), Ok((Io::Epoll, None)));
    }
}
