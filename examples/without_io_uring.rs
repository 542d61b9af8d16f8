//! Runs a command where io_uring is refused, as inside a Docker container
//! with the default seccomp profile: `without_io_uring [--refuse
//! setup,enter,register] COMMAND [ARGS…]`. CI runs the whole test suite
//! this way, to show it passes (on epoll) where io_uring is off.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

#[path = "../tests/common/seccomp.rs"]
mod seccomp;

use seccomp::{Filter, IoUringCall};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut refused = IoUringCall::ALL.to_vec();
    if args.first().map(String::as_str) == Some("--refuse") && args.len() > 1 {
        let list = args[1].clone();
        args.drain(..2);
        refused.clear();
        for name in list.split(',') {
            refused.push(match name {
                "setup" => IoUringCall::Setup,
                "enter" => IoUringCall::Enter,
                "register" => IoUringCall::Register,
                other => {
                    eprintln!("without_io_uring: unknown call '{other}' (setup, enter, register)");
                    return ExitCode::from(2);
                }
            });
        }
    }
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: without_io_uring [--refuse setup,enter,register] COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    if let Err(e) = Filter::refusing(&refused).install() {
        eprintln!("without_io_uring: cannot install the seccomp filter: {e}");
        return ExitCode::from(1);
    }
    let err = Command::new(program).args(rest).exec();
    eprintln!("without_io_uring: cannot run {program}: {err}");
    ExitCode::from(127)
}
