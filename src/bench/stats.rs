//! What the load generator measures, how snapshots from threads and worker
//! processes merge, and what it reads of the server from /proc.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Counters of one client thread or worker process, cumulative since start,
/// plus the latencies recorded since the previous snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Connections whose handshake succeeded and that are still open.
    pub open: u64,
    /// Connections that failed to connect or to upgrade.
    pub failed: u64,
    /// Bench messages received (one per delivery).
    pub received: u64,
    /// Bytes read from the server, all connections.
    #[serde(default)]
    pub bytes: u64,
    /// Bench messages missing (a seq skipped on a connection).
    pub gaps: u64,
    /// Bench messages received twice, or out of order.
    pub dups: u64,
    /// Connections the server closed with 4008 (too slow).
    pub slow_cut: u64,
    /// Connections closed for any other reason.
    pub closed: u64,
    /// Latency samples since the previous snapshot: (µs, count).
    pub latency: Vec<(u64, u64)>,
}

impl Snapshot {
    /// Adds `other`'s counters (cumulative) into self; latencies are
    /// recorded into `hist`.
    pub fn absorb(&mut self, other: &Snapshot, hist: &mut Histogram<u64>) {
        self.open += other.open;
        self.failed += other.failed;
        self.received += other.received;
        self.bytes += other.bytes;
        self.gaps += other.gaps;
        self.dups += other.dups;
        self.slow_cut += other.slow_cut;
        self.closed += other.closed;
        for &(us, n) in &other.latency {
            let _ = hist.record_n(us.max(1), n);
        }
    }
}

/// Drains a histogram into (value, count) pairs for a snapshot.
pub fn take_latencies(hist: &mut Histogram<u64>) -> Vec<(u64, u64)> {
    let pairs = hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    hist.reset();
    pairs
}

/// Latency percentiles of a step, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// CPU time (user + system) of a process, in nanoseconds, from /proc/PID/stat.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / hz)
}

/// Time one CPU spent busy, from `/proc/stat` (all processes, kernel work
/// included: softirq, kernel threads, io-wq workers), in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait.
    pub busy_ns: u64,
    /// Of which softirq (network receive and transmit processing).
    pub softirq_ns: u64,
}

impl CpuTimes {
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            softirq_ns: self.softirq_ns.saturating_sub(earlier.softirq_ns),
        }
    }
}

/// The busy times of CPU `cpu` so far.
pub fn cpu_times(cpu: usize) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(&stat, cpu)
}

fn parse_cpu_line(stat: &str, cpu: usize) -> Option<CpuTimes> {
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns = |ticks: u64| ticks * 1_000_000_000 / hz;
    Some(CpuTimes {
        busy_ns: ns(user + nice + system + irq + softirq + steal),
        softirq_ns: ns(softirq),
    })
}

/// Resident set size of a process, in bytes.
pub fn process_rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::sys::page_size())
}

/// Monotonic clock in nanoseconds (same clock in every process of the host,
/// so a publish timestamp can be compared with a receive time).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge_with_their_latencies() {
        let mut h = new_histogram();
        for us in [10, 20, 30, 1000] {
            h.record(us).unwrap();
        }
        let a = Snapshot {
            received: 4,
            latency: take_latencies(&mut h),
            ..Default::default()
        };
        assert!(h.is_empty());
        let mut total = Snapshot::default();
        let mut merged = new_histogram();
        total.absorb(&a, &mut merged);
        total.absorb(&a, &mut merged);
        assert_eq!(total.received, 8);
        assert_eq!(merged.len(), 8);
        let p = Percentiles::of(&merged);
        assert!(p.p50 >= 19 && p.p50 <= 21, "{p:?}");
        assert!(p.max >= 999, "{p:?}");
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(process_rss(pid).unwrap() > 0);
        assert!(process_cpu_ns(pid).is_some());
        let t = monotonic_ns();
        assert!(monotonic_ns() >= t);
    }
}
