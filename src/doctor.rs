//! `ringcast doctor`: reads the live kernel and process limits and says what
//! must change for N connections, with the command or file that fixes each.

use std::fmt::Write as _;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but will hurt at scale or under bursts.
    Warn,
    /// Must change before N connections fit.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found, and what is needed.
    pub detail: String,
    /// How to fix it (empty when fine).
    pub fix: String,
}

/// Kernel memory per idle established TCP socket (socket, tcp_sock, file,
/// inode/dentry, io_uring receive state): slab growth measured on Linux 6.18
/// with 19,000 idle loopback connections (see tuning/README.md).
pub const KERNEL_BYTES_PER_IDLE_SOCKET: u64 = 5632;
/// ringcast's own memory per idle connection: RSS growth measured with
/// `ringcast bench` (S3: 238 bytes at 19,000 connections), rounded up.
pub const RINGCAST_BYTES_PER_CONNECTION: u64 = 256;
use crate::tuning::{self, Host};

/// How to keep the settings: the file for this host.
fn keep(connections: u64) -> String {
    format!(
        "to keep it: ringcast doctor --connections {connections} --sysctl > /etc/sysctl.d/99-ringcast.conf && sysctl --system"
    )
}

/// This host, as the tuning is sized for it.
pub fn this_host(connections: u64) -> Host {
    let cpus = crate::sys::allowed_cpus()
        .map(|c| c.len() as u64)
        .unwrap_or(1)
        .max(1);
    Host {
        connections,
        cpus,
        memory: meminfo_kib("MemTotal").map(|k| k * 1024),
        nr_open: sysctl_u64("fs/nr_open"),
        file_max: sysctl_u64("fs/file-max"),
    }
}

/// Runs every check for `connections` connections.
pub fn run(connections: u64) -> Vec<Check> {
    let host = this_host(connections);
    let cpus = host.cpus;
    let fds = host.descriptors();
    let mut checks = Vec::new();

    let (soft, hard) = crate::sys::nofile_limit().unwrap_or((0, 0));
    checks.push(Check {
        name: "open files (RLIMIT_NOFILE)",
        verdict: if hard >= fds { Verdict::Ok } else { Verdict::Fail },
        detail: format!(
            "soft {soft}, hard {hard}; need {fds} ({connections} clients + {} for ringcast). `serve` raises the soft limit to the hard one",
            tuning::reserved_fds(cpus)
        ),
        fix: format!(
            "under systemd: LimitNOFILE={} in the unit (systemd/ringcast.service sets 1048576); \
             from a shell: copy tuning/limits.d/ringcast.conf to /etc/security/limits.d/ and log in again. \
             The hard limit cannot exceed fs.nr_open",
            fds.max(tuning::UNIT_NOFILE)
        ),
    });

    checks.push(min_sysctl(
        "fs.nr_open",
        host.nr_open,
        tuning::nr_open_needed(&host),
        Verdict::Fail,
        "the most LimitNOFILE can be",
        connections,
    ));
    checks.push(min_sysctl(
        "fs.file-max",
        host.file_max,
        tuning::file_max_needed(&host),
        Verdict::Fail,
        "open files system-wide, with 10% room for everything else",
        connections,
    ));

    checks.push(io_driver_check());

    let need_mem = connections * (KERNEL_BYTES_PER_IDLE_SOCKET + RINGCAST_BYTES_PER_CONNECTION);
    let available = meminfo_kib("MemAvailable").map(|k| k * 1024);
    checks.push(Check {
        name: "memory",
        verdict: match available {
            Some(a) if a >= need_mem + need_mem / 4 => Verdict::Ok,
            Some(a) if a >= need_mem => Verdict::Warn,
            _ => Verdict::Fail,
        },
        detail: format!(
            "available {}; {connections} idle connections need about {} (kernel ~{} B + ringcast ~{} B each), more when they are busy",
            human(available.unwrap_or(0)),
            human(need_mem),
            KERNEL_BYTES_PER_IDLE_SOCKET,
            RINGCAST_BYTES_PER_CONNECTION
        ),
        fix: "add memory, or spread the clients over more hosts".into(),
    });

    // TCP memory: while clients are busy, each socket holds some buffer.
    let tcp_mem_max = sysctl_fields("net/ipv4/tcp_mem")
        .get(2)
        .copied()
        .map(|p| p * 4096);
    let busy_need = connections * tuning::BUSY_SOCKET_BYTES;
    let sized = host.memory.map(tuning::tcp_mem_pages);
    let sized_max = sized.map_or(0, |p| p[2] * 4096);
    checks.push(Check {
        name: "net.ipv4.tcp_mem",
        verdict: match tcp_mem_max {
            Some(m) if m >= busy_need => Verdict::Ok,
            _ => Verdict::Warn,
        },
        detail: format!(
            "max {} for all TCP buffers; {connections} sockets holding {} each when busy need {}",
            human(tcp_mem_max.unwrap_or(0)),
            human(tuning::BUSY_SOCKET_BYTES),
            human(busy_need)
        ),
        fix: match sized {
            Some([min, pressure, max]) => format!(
                "sysctl -w net.ipv4.tcp_mem='{min} {pressure} {max}' (pages: a quarter of this host's {}); {}{}",
                human(host.memory.unwrap_or(0)),
                keep(connections),
                if sized_max < busy_need {
                    format!(
                        ". Even that ({}) cannot give every socket its share: add memory, or spread the clients over more hosts",
                        human(sized_max)
                    )
                } else {
                    String::new()
                }
            ),
            None => "add memory, or spread the clients over more hosts (MemTotal unreadable)".into(),
        },
    });
    for (name, key, want) in [
        ("net.ipv4.tcp_rmem", "net/ipv4/tcp_rmem", tuning::TCP_RMEM),
        ("net.ipv4.tcp_wmem", "net/ipv4/tcp_wmem", tuning::TCP_WMEM),
    ] {
        let fields = sysctl_fields(key);
        let default = fields.get(1).copied().unwrap_or(0);
        let small = default <= want[1] || connections < 100_000;
        checks.push(Check {
            name,
            verdict: if small { Verdict::Ok } else { Verdict::Warn },
            detail: format!(
                "default buffer {} (want at most {}); at {connections} connections the default is what every socket starts with",
                human(default),
                human(want[1])
            ),
            fix: format!(
                "sysctl -w {name}='{} {} {}' (autotuning still grows busy sockets); {}",
                want[0],
                want[1],
                want[2],
                keep(connections)
            ),
        });
    }

    checks.push(min_sysctl(
        "net.core.somaxconn",
        sysctl_u64("net/core/somaxconn"),
        tuning::SOMAXCONN,
        Verdict::Warn,
        "accept backlog: a reconnect storm after a deploy arrives all at once",
        connections,
    ));
    checks.push(min_sysctl(
        "net.ipv4.tcp_max_syn_backlog",
        sysctl_u64("net/ipv4/tcp_max_syn_backlog"),
        tuning::SYN_BACKLOG,
        Verdict::Warn,
        "half-open connections queued during a reconnect storm",
        connections,
    ));
    checks.push(min_sysctl(
        "net.core.netdev_max_backlog",
        sysctl_u64("net/core/netdev_max_backlog"),
        tuning::NETDEV_BACKLOG,
        Verdict::Warn,
        "packets queued per CPU before the stack drops them",
        connections,
    ));
    let range = sysctl_fields("net/ipv4/ip_local_port_range");
    let width = match range.as_slice() {
        [lo, hi, ..] => hi.saturating_sub(*lo) + 1,
        _ => 0,
    };
    checks.push(Check {
        name: "net.ipv4.ip_local_port_range",
        verdict: if width >= connections.min(60_000) { Verdict::Ok } else { Verdict::Warn },
        detail: format!(
            "{width} local ports; a proxy on this host (nginx) uses one per client towards ringcast, so one proxy address reaches at most {width} clients"
        ),
        fix: "sysctl -w net.ipv4.ip_local_port_range='1024 65535', and for more clients behind a local proxy give it several upstream addresses (127.0.0.2, 127.0.0.3, ...) — see tuning/nginx.conf".into(),
    });
    checks.push(Check {
        name: "CPUs",
        verdict: Verdict::Ok,
        detail: format!("{cpus} CPU(s) allowed to this process: `serve` runs {cpus} shard(s)"),
        fix: String::new(),
    });
    checks
}

/// The printable report and the exit status (0: everything fits).
pub fn report(connections: u64, checks: &[Check]) -> (String, i32) {
    let mut out = format!("ringcast doctor: can this host hold {connections} connections?\n\n");
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "[ ok ]",
            Verdict::Warn => "[warn]",
            Verdict::Fail => "[FAIL]",
        };
        let _ = writeln!(out, "{tag} {}: {}", c.name, c.detail);
        if c.verdict != Verdict::Ok && !c.fix.is_empty() {
            let _ = writeln!(out, "       fix: {}", c.fix);
        }
    }
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warns = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    let _ = writeln!(
        out,
        "\n{}",
        match (fails, warns) {
            (0, 0) => "Everything fits.".to_owned(),
            (0, w) => format!("Fits; {w} recommendation(s) above."),
            (f, w) => format!("Does not fit: {f} thing(s) must change, {w} recommendation(s)."),
        }
    );
    (out, if fails > 0 { 1 } else { 0 })
}

/// Which driver `serve --io auto` would pick here, and why: io_uring only
/// when a ring was set up, registered and an operation submitted and reaped.
fn io_driver_check() -> Check {
    use crate::driver::probe::{IoChoice, resolve};
    match resolve(IoChoice::Auto) {
        Ok((crate::driver::Io::IoUring, _)) => Check {
            name: "io driver",
            verdict: Verdict::Ok,
            detail: "auto -> io-uring (a ring was set up and registered, and an operation submitted and reaped)".into(),
            fix: String::new(),
        },
        Ok((driver, warning)) => {
            let cause = crate::driver::probe::probe_io_uring()
                .err()
                .map(|u| (u.cause, u.fix));
            let (why, fix) = cause.unwrap_or_else(|| (warning.unwrap_or_default(), String::new()));
            Check {
                name: "io driver",
                verdict: Verdict::Warn,
                detail: format!(
                    "auto -> {} ({why}); everything works on epoll",
                    driver.label()
                ),
                fix,
            }
        }
        Err(e) => Check {
            name: "io driver",
            verdict: Verdict::Fail,
            detail: e,
            fix: String::new(),
        },
    }
}

fn min_sysctl(
    name: &'static str,
    have: Option<u64>,
    need: u64,
    fail: Verdict,
    why: &str,
    connections: u64,
) -> Check {
    let ok = have.is_some_and(|h| h >= need);
    Check {
        name,
        verdict: if ok { Verdict::Ok } else { fail },
        detail: format!(
            "{} (want at least {need}: {why})",
            have.map_or("unreadable".to_owned(), |h| h.to_string())
        ),
        fix: format!("sysctl -w {name}={need}; {}", keep(connections)),
    }
}

fn sysctl_fields(key: &str) -> Vec<u64> {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn sysctl_u64(key: &str) -> Option<u64> {
    sysctl_fields(key).first().copied()
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_exit_status_follows_failures() {
        let check = |verdict| Check {
            name: "x",
            verdict,
            detail: "d".into(),
            fix: "do it".into(),
        };
        let (text, code) = report(10, &[check(Verdict::Ok), check(Verdict::Warn)]);
        assert_eq!(code, 0);
        assert!(text.contains("[warn] x: d\n       fix: do it"));
        let (text, code) = report(10, &[check(Verdict::Fail)]);
        assert_eq!(code, 1);
        assert!(text.contains("Does not fit: 1 thing(s) must change"));
    }
}
