//! The kernel settings for a ringcast host, in one place: `ringcast doctor`
//! checks the live host against them and prints them for this host
//! (`--sysctl`), and the shipped `tuning/sysctl.d/99-ringcast.conf` is what they
//! come to when the host is not known (a test holds the two together).
//!
//! Two kinds of value depend on the host. Descriptor limits grow with the
//! connections wanted, but are never lowered: on a systemd host PID 1 already
//! raises `fs.nr_open` and `fs.file-max` to their maximum at boot. And
//! `tcp_mem` (all TCP buffers together) is a share of the host's memory.

use std::fmt::Write as _;

/// What the settings are sized for.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub connections: u64,
    pub cpus: u64,
    /// Physical memory, bytes (`MemTotal`); `None`: not known.
    pub memory: Option<u64>,
    /// The host's current values; `None`: not known.
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
}

impl Host {
    /// The host the shipped file is written for: a million connections,
    /// nothing else known.
    pub const REFERENCE: Host = Host {
        connections: 1_000_000,
        cpus: 8,
        memory: None,
        nr_open: None,
        file_max: None,
    };

    /// File descriptors ringcast needs: one per client plus its own.
    pub fn descriptors(&self) -> u64 {
        self.connections + reserved_fds(self.cpus)
    }
}

/// File descriptors ringcast needs besides clients: listeners, rings,
/// eventfds, feed sockets and publishers, logs.
pub fn reserved_fds(cpus: u64) -> u64 {
    64 + 8 * cpus
}

/// The `LimitNOFILE=` the shipped unit asks for.
pub const UNIT_NOFILE: u64 = 1_048_576;

/// The part of physical memory TCP buffers may take at most (`tcp_mem`'s
/// max); the kernel's own default is about 9%. A broadcast host's sockets
/// are its workload, but the rest must still fit: connection state, history.
pub const TCP_MEM_SHARE: u64 = 4;

/// Send buffer a busy socket holds during a broadcast, for sizing `tcp_mem`.
pub const BUSY_SOCKET_BYTES: u64 = 8 * 1024;

/// One setting.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    /// The value to write, space-separated for vectors.
    pub value: String,
    /// Written commented out, with this reason (not needed, or not known
    /// for this host).
    pub skip: Option<String>,
    /// Comment lines above it.
    pub why: &'static str,
    /// Starts a section of the file.
    pub section: Option<&'static str>,
}

/// `fs.nr_open` the connections need (the most a process's limit can be).
pub fn nr_open_needed(host: &Host) -> u64 {
    host.descriptors()
}

/// `fs.file-max` for ringcast plus a tenth for everything else.
pub fn file_max_needed(host: &Host) -> u64 {
    let fds = host.descriptors();
    fds + fds / 10
}

/// `tcp_mem` (min, pressure, max) in 4 KiB pages for `memory` bytes.
pub fn tcp_mem_pages(memory: u64) -> [u64; 3] {
    let max = memory / TCP_MEM_SHARE / 4096;
    [max / 2, max / 4 * 3, max]
}

pub const TCP_RMEM: [u64; 3] = [4096, 8192, 4 << 20];
pub const TCP_WMEM: [u64; 3] = [4096, 16384, 4 << 20];
pub const SOMAXCONN: u64 = 65535;
pub const SYN_BACKLOG: u64 = 65535;
pub const NETDEV_BACKLOG: u64 = 65536;
/// What the UDP feed socket asks for (`SO_RCVBUF`).
pub const UDP_FEED_BUFFER: u64 = 8 << 20;

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A descriptor limit: set only where the host has less than needed.
fn never_lower(current: Option<u64>, needed: u64) -> (String, Option<String>) {
    let value = (needed * 2).next_power_of_two();
    match current {
        Some(have) if have >= needed => (
            value.to_string(),
            Some(format!(
                "{have} on this host already, enough for {needed}: left as it is"
            )),
        ),
        Some(_) => (value.to_string(), None),
        None => (
            value.to_string(),
            Some(format!(
                "needs at least {needed}. systemd raises it to its maximum at boot, and setting \
                 it would lower that: uncomment only where `sysctl` shows less"
            )),
        ),
    }
}

/// Every setting, sized for `host`.
pub fn settings(host: &Host) -> Vec<Setting> {
    // The unit's LimitNOFILE must fit too, or systemd cannot start it.
    let (nr_open, nr_open_skip) = never_lower(host.nr_open, nr_open_needed(host).max(UNIT_NOFILE));
    let (file_max, file_max_skip) = never_lower(host.file_max, file_max_needed(host));
    let (tcp_mem, tcp_mem_skip) = match host.memory {
        Some(memory) => (join(&tcp_mem_pages(memory)), None),
        None => (
            join(&tcp_mem_pages(64 << 30)),
            Some(
                "sized from the host's memory (here: 64 GiB). `ringcast doctor --sysctl` prints \
                 it for yours; left out, the kernel's default (~9% of memory) applies"
                    .to_owned(),
            ),
        ),
    };
    let set = |section, key, value: String, why| Setting {
        key,
        value,
        skip: None,
        why,
        section,
    };
    vec![
        Setting {
            skip: nr_open_skip,
            ..set(
                Some("descriptors: one per client"),
                "fs.nr_open",
                nr_open,
                "Ceiling for any process's open-files limit (the unit asks for 1048576).",
            )
        },
        Setting {
            skip: file_max_skip,
            ..set(
                None,
                "fs.file-max",
                file_max,
                "Open files system-wide: clients plus everything else on the host.",
            )
        },
        set(
            Some("connection storms (every client reconnects after a deploy)"),
            "net.core.somaxconn",
            SOMAXCONN.to_string(),
            "Accept queue per listener (ringcast asks for 65535; this caps it).",
        ),
        set(
            None,
            "net.ipv4.tcp_max_syn_backlog",
            SYN_BACKLOG.to_string(),
            "Half-open connections queued.",
        ),
        set(
            None,
            "net.core.netdev_max_backlog",
            NETDEV_BACKLOG.to_string(),
            "Packets queued per CPU before the stack drops them.",
        ),
        set(
            None,
            "net.ipv4.tcp_syncookies",
            "1".into(),
            "SYN cookies keep the host answering if the SYN backlog still overflows.",
        ),
        set(
            Some("memory per socket: small defaults, autotuning grows busy ones"),
            "net.ipv4.tcp_rmem",
            join(&TCP_RMEM),
            "min / default / max per socket, bytes. An idle socket holds no buffer;\n\
             the default is what a socket starts with when data flows.",
        ),
        set(None, "net.ipv4.tcp_wmem", join(&TCP_WMEM), ""),
        Setting {
            skip: tcp_mem_skip,
            ..set(
                None,
                "net.ipv4.tcp_mem",
                tcp_mem,
                "All TCP buffers together, in 4 KiB pages (min / pressure / max): at most a\n\
                 quarter of the host's memory. A broadcast to N sockets holds ~8 KiB in each.",
            )
        },
        set(
            None,
            "net.ipv4.tcp_slow_start_after_idle",
            "0".into(),
            "Broadcast traffic is bursty: do not fall back to slow start between bursts.",
        ),
        set(
            Some("closed connections"),
            "net.ipv4.tcp_fin_timeout",
            "15".into(),
            "Shorter FIN-WAIT-2 so departed clients release their socket sooner.",
        ),
        set(
            None,
            "net.ipv4.ip_local_port_range",
            "1024 65535".into(),
            "A proxy on this host opens one connection per client towards ringcast:\n\
             give it every local port, and let it reuse TIME-WAIT ports.",
        ),
        set(None, "net.ipv4.tcp_tw_reuse", "1".into(), ""),
        set(None, "net.ipv4.tcp_max_tw_buckets", "2000000".into(), ""),
        set(
            Some("the UDP feed"),
            "net.core.rmem_max",
            UDP_FEED_BUFFER.to_string(),
            "Lets ringcast's UDP feed socket buffer 8 MiB of bursts (it asks for that).",
        ),
        Setting {
            skip: Some("the key exists only while nf_conntrack is loaded".into()),
            ..set(
                Some("connection tracking, only if nf_conntrack is loaded (firewall)"),
                "net.netfilter.nf_conntrack_max",
                (host.connections * 2).max(262_144).to_string(),
                "Every client is a tracked flow; the default table holds ~262k.",
            )
        },
    ]
}

/// The sysctl.d file for `host`.
pub fn sysctl_file(host: &Host) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Kernel settings for a ringcast host serving up to {} WebSocket clients.",
        host.connections
    );
    if host.memory.is_none() {
        out.push_str(
            "# Written for no host in particular; `ringcast doctor --connections N --sysctl`\n\
             # prints them sized for this one (its memory, its current limits).\n",
        );
    }
    let n = host.connections;
    let _ = write!(
        out,
        "# Install: ringcast doctor --connections {n} --sysctl \\\n\
         #            > /etc/sysctl.d/99-ringcast.conf && sysctl --system\n\
         # Check:   ringcast doctor --connections {n}\n\
         # Why each one, and the memory arithmetic: tuning/README.md in ringcast's source.\n",
    );
    for s in settings(host) {
        if let Some(section) = s.section {
            let _ = write!(out, "\n# --- {section} ---\n");
        }
        for line in s.why.lines() {
            let _ = writeln!(out, "# {line}");
        }
        match &s.skip {
            None => {
                let _ = writeln!(out, "{} = {}", s.key, s.value);
            }
            Some(why) => {
                comment(&mut out, &format!("({why})"));
                let _ = writeln!(out, "# {} = {}", s.key, s.value);
            }
        }
    }
    out
}

/// Appends `text` as comment lines of at most 80 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 80 && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_what_the_settings_come_to() {
        let shipped = include_str!("../tuning/sysctl.d/99-ringcast.conf");
        assert_eq!(
            shipped,
            sysctl_file(&Host::REFERENCE),
            "regenerate: cargo run --release -- doctor --reference-sysctl > tuning/sysctl.d/99-ringcast.conf"
        );
        assert!(
            shipped.lines().all(|l| l.len() <= 88),
            "lines stay readable"
        );
    }

    fn line<'a>(file: &'a str, key: &str) -> Option<&'a str> {
        file.lines().find(|l| l.starts_with(&format!("{key} = ")))
    }

    #[test]
    fn descriptor_limits_are_never_lowered() {
        let systemd_host = Host {
            nr_open: Some(1_073_741_816),
            file_max: Some(9_223_372_036_854_775_807),
            memory: Some(16 << 30),
            ..Host::REFERENCE
        };
        let file = sysctl_file(&systemd_host);
        assert_eq!(line(&file, "fs.nr_open"), None, "{file}");
        assert_eq!(line(&file, "fs.file-max"), None);
        assert!(file.contains("1073741816 on this host already"));
        let small_host = Host {
            nr_open: Some(65_536),
            file_max: Some(100_000),
            ..systemd_host
        };
        let file = sysctl_file(&small_host);
        assert_eq!(line(&file, "fs.nr_open"), Some("fs.nr_open = 2097152"));
        assert_eq!(line(&file, "fs.file-max"), Some("fs.file-max = 4194304"));
    }

    #[test]
    fn tcp_mem_is_a_quarter_of_memory() {
        let host = |gib: u64| Host {
            memory: Some(gib << 30),
            ..Host::REFERENCE
        };
        // 16 GiB: a 4 GiB cap is 1,048,576 pages.
        assert_eq!(
            line(&sysctl_file(&host(16)), "net.ipv4.tcp_mem"),
            Some("net.ipv4.tcp_mem = 524288 786432 1048576")
        );
        assert_eq!(tcp_mem_pages(64 << 30)[2], 4 * 1_048_576);
        assert_eq!(
            line(&sysctl_file(&Host::REFERENCE), "net.ipv4.tcp_mem"),
            None
        );
    }
}
