//! `ringcast bench`: the fan-out load generator.
//!
//! Opens N WebSocket clients (from a few threads, optionally several
//! processes and source addresses), drives the feed at a steady rate, and
//! reports deliveries per second, delivery ratio, gaps and duplicates,
//! publish-to-receive latency percentiles, slow-client cuts and, with
//! `--server-pid`, the server's CPU time per delivery and its memory. It
//! works against any WebSocket server that broadcasts the published data:
//! sequence numbers and timestamps travel inside the data.

pub mod client;
pub mod publisher;
pub mod stats;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use client::{Plan, Target};
use publisher::{FeedTarget, Publisher};
use stats::{Percentiles, Snapshot, new_histogram, process_cpu_ns, process_rss};

/// Everything `ringcast bench` can be told.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub processes: usize,
    pub source_ips: Vec<IpAddr>,
    pub connect_rate: f64,
    pub slow: usize,
    pub feed: FeedTarget,
    pub channel: String,
    pub size: usize,
    /// Clients offer permessage-deflate.
    pub compression: bool,
    /// Clients read server-sent event streams instead of WebSocket.
    pub sse: bool,
    /// Publish rates to run, one step each (messages per second); empty or
    /// 0: hold the connections idle for `duration` (memory per connection).
    pub rates: Vec<f64>,
    pub duration: Duration,
    /// Longest wait after a step for messages still in flight.
    pub drain: Duration,
    pub server_pid: Option<u32>,
    /// The CPU the server is pinned to: its whole busy time per delivery
    /// (kernel work on its behalf included) is reported too.
    pub server_cpu: Option<usize>,
    /// Stop at the first step that misses `min_ratio` or `max_p99`.
    pub sweep: bool,
    pub min_ratio: f64,
    pub max_p99: Duration,
    pub json: bool,
    /// Set in worker processes: which share of the clients this one runs.
    pub worker_index: Option<usize>,
    /// The arguments to re-run this command as a worker.
    pub argv: Vec<String>,
}

/// One step's results.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub rate: f64,
    pub seconds: f64,
    pub published: u64,
    pub expected: u64,
    pub received: u64,
    pub ratio: f64,
    pub deliveries_per_sec: f64,
    /// Bytes the clients read per delivery (frames and headers, all kinds):
    /// what the wire carried.
    pub wire_bytes_per_delivery: f64,
    pub gaps: u64,
    pub dups: u64,
    pub slow_cut: u64,
    pub latency_us: Percentiles,
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// The server's CPU (`--server-cpu`), busy time of everything on it per
    /// delivery: the server's own time plus the kernel's work there
    /// (softirq, kernel threads), which process time does not show.
    pub server_core_busy_ns_per_delivery: Option<f64>,
    /// Of that, softirq time per delivery.
    pub server_core_softirq_ns_per_delivery: Option<f64>,
    /// Server CPU over the step, in % of one core (100: saturated).
    pub server_cpu_percent: Option<f64>,
    /// This load generator's CPU over the step, % of one core per process:
    /// near 100 means the generator, not the server, may be the limit.
    pub bench_cpu_percent: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub sustained: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub connections: u64,
    pub failed: u64,
    pub slow: usize,
    pub size: usize,
    /// Server RSS growth per open connection, measured across connecting.
    pub server_rss_per_connection: Option<f64>,
    pub steps: Vec<StepResult>,
    /// The fastest step that met the ratio and latency criteria.
    pub max_sustained: Option<StepResult>,
}

/// Runs the benchmark. In a worker process, runs its share of the clients
/// and returns `None` when the parent is done with it.
pub fn run(opts: &BenchOptions) -> Result<Option<Report>, String> {
    let mut target = parse_url(&opts.url)?;
    target.compression = opts.compression;
    if opts.sse {
        if let Some(rest) = target.path.strip_prefix("/ws") {
            target.path = format!("/sse{rest}");
        }
        target.sse = true;
    }
    let processes = opts.processes.max(1);
    let index = opts.worker_index.unwrap_or(0);
    let share = |total: usize| total / processes + usize::from(index < total % processes);
    let (my_conns, my_slow) = (share(opts.connections), share(opts.slow));
    check_fd_budget(my_conns, processes)?;
    let rss_before = opts.server_pid.and_then(process_rss);
    let locals = spawn_threads(opts, &target, my_conns, my_slow)?;
    if opts.worker_index.is_some() {
        worker_loop(&locals);
        return Ok(None);
    }
    let workers = spawn_workers(opts)?;
    let sources = Sources { locals, workers };

    // Connect everyone.
    let mut scratch = new_histogram();
    let started = Instant::now();
    let connected = loop {
        let s = sources.collect(&mut scratch);
        let attempted = s.open + s.failed + s.closed + s.slow_cut;
        eprint!(
            "\rconnecting: {} open, {} failed of {} ({:.0}/s)   ",
            s.open,
            s.failed,
            opts.connections,
            attempted as f64 / started.elapsed().as_secs_f64().max(0.001)
        );
        if attempted >= opts.connections as u64 {
            eprintln!();
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if connected.open == 0 && opts.connections > 0 {
        return Err(format!(
            "none of the {} connections to {} opened ({} failed, {} closed): is a server \
             listening there, and does it upgrade that path to WebSocket?",
            opts.connections, opts.url, connected.failed, connected.closed
        ));
    }
    // Give the server a moment to settle its handshakes before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = opts.server_pid.and_then(process_rss);
    let per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected.open > 0 => {
            Some((a as f64 - b as f64) / connected.open as f64)
        }
        _ => None,
    };
    if let Some(p) = per_connection {
        eprintln!(
            "server RSS {} -> {} MiB: {:.0} bytes per connection",
            rss_before.unwrap_or(0) >> 20,
            rss_after.unwrap_or(0) >> 20,
            p
        );
    }
    let fast = connected.open.saturating_sub(opts.slow as u64);
    let mut report = Report {
        url: opts.url.clone(),
        connections: connected.open,
        failed: connected.failed,
        slow: opts.slow,
        size: opts.size,
        server_rss_per_connection: per_connection,
        steps: Vec::new(),
        max_sustained: None,
    };
    let rates: Vec<f64> = opts.rates.iter().copied().filter(|r| *r > 0.0).collect();
    if rates.is_empty() {
        std::thread::sleep(opts.duration);
    } else {
        let mut publisher = Publisher::new(&opts.feed, &opts.channel, opts.size)
            .map_err(|e| format!("cannot open the feed {:?}: {e}", opts.feed))?;
        for rate in rates {
            let (step, p) = run_step(opts, &sources, publisher, rate, fast)?;
            publisher = p;
            eprintln!("{}", step_line(&step));
            let ok = step.sustained;
            if ok
                && report
                    .max_sustained
                    .as_ref()
                    .is_none_or(|m| m.deliveries_per_sec < step.deliveries_per_sec)
            {
                report.max_sustained = Some(step.clone());
            }
            report.steps.push(step);
            if opts.sweep && !ok {
                break;
            }
        }
    }
    sources.stop();
    Ok(Some(report))
}

fn run_step(
    opts: &BenchOptions,
    sources: &Sources,
    mut publisher: Publisher,
    rate: f64,
    fast: u64,
) -> Result<(StepResult, Publisher), String> {
    let mut hist = new_histogram();
    let mut interval = new_histogram();
    let before = sources.collect(&mut new_histogram());
    let cpu_before = opts.server_pid.and_then(process_cpu_ns);
    let core_before = opts.server_cpu.and_then(stats::cpu_times);
    let own_before = process_cpu_ns(std::process::id());
    let started = Instant::now();
    let duration = opts.duration;
    let handle = std::thread::spawn(move || {
        let published = publisher.run(rate, duration);
        (published, publisher)
    });
    let mut last = before.clone();
    let mut tick = Instant::now();
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let now = sources.collect(&mut interval);
        let secs = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let p = Percentiles::of(&interval);
        eprintln!(
            "[{rate:.0}/s] {:>4.0}s  open {}  {:.0} deliveries/s (expect {:.0})  p50 {} p99 {} max {}  gaps {} dups {} cut {}",
            started.elapsed().as_secs_f64(),
            now.open,
            (now.received - last.received) as f64 / secs,
            rate * fast as f64,
            ms(p.p50),
            ms(p.p99),
            ms(p.max),
            now.gaps - before.gaps,
            now.dups - before.dups,
            now.slow_cut - before.slow_cut,
        );
        hist.add(&interval).ok();
        interval.reset();
        last = now;
    }
    let (published, publisher) = handle.join().map_err(|_| "publisher thread panicked")?;
    let published = published.map_err(|e| format!("publishing failed: {e}"))?;
    let publish_secs = started.elapsed().as_secs_f64();
    // Wait for what is still in flight.
    let expected = published * fast;
    let drain_until = Instant::now() + opts.drain;
    let mut end = sources.collect(&mut interval);
    while end.received - before.received < expected && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(20));
        end = sources.collect(&mut interval);
    }
    hist.add(&interval).ok();
    let received = end.received - before.received;
    let wall_ns = started.elapsed().as_nanos() as f64;
    let server_cpu = match (cpu_before, opts.server_pid.and_then(process_cpu_ns)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
        _ => None,
    };
    let cpu = server_cpu
        .filter(|_| received > 0)
        .map(|ns| ns / received as f64);
    let core = match (core_before, opts.server_cpu.and_then(stats::cpu_times)) {
        (Some(a), Some(b)) if received > 0 => Some(b.since(a)),
        _ => None,
    };
    let own_cpu = match (own_before, process_cpu_ns(std::process::id())) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wall_ns * 100.0),
        _ => None,
    };
    let latency = Percentiles::of(&hist);
    let ratio = if expected == 0 {
        1.0
    } else {
        received as f64 / expected as f64
    };
    let sustained = ratio >= opts.min_ratio && latency.p99 <= opts.max_p99.as_micros() as u64;
    Ok((
        StepResult {
            rate,
            seconds: publish_secs,
            published,
            expected,
            received,
            ratio,
            deliveries_per_sec: received as f64 / publish_secs,
            wire_bytes_per_delivery: if received > 0 {
                (end.bytes - before.bytes) as f64 / received as f64
            } else {
                0.0
            },
            gaps: end.gaps - before.gaps,
            dups: end.dups - before.dups,
            slow_cut: end.slow_cut - before.slow_cut,
            latency_us: latency,
            server_cpu_ns_per_delivery: cpu,
            server_core_busy_ns_per_delivery: core.map(|c| c.busy_ns as f64 / received as f64),
            server_core_softirq_ns_per_delivery: core
                .map(|c| c.softirq_ns as f64 / received as f64),
            server_cpu_percent: server_cpu.map(|ns| ns / wall_ns * 100.0),
            bench_cpu_percent: own_cpu,
            server_rss_bytes: opts.server_pid.and_then(process_rss),
            sustained,
        },
        publisher,
    ))
}

/// A client thread of this process, and what it shares.
type LocalClients = (std::thread::JoinHandle<()>, Arc<client::Shared>);
/// A worker process, and its latest snapshot.
type Worker = (Child, Arc<Mutex<Snapshot>>);

/// Where snapshots come from: this process's client threads and workers.
struct Sources {
    locals: Vec<LocalClients>,
    workers: Vec<Worker>,
}

impl Sources {
    /// Sums every source's counters; moves their new latencies into `hist`.
    fn collect(&self, hist: &mut Histogram<u64>) -> Snapshot {
        let mut total = Snapshot::default();
        let mut take = |shared: &Mutex<Snapshot>| {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            total.absorb(&s, hist);
            s.latency.clear();
        };
        for (_, shared) in &self.locals {
            take(&shared.snapshot);
        }
        for (_, shared) in &self.workers {
            take(shared);
        }
        total
    }

    fn stop(self) {
        for (_, shared) in &self.locals {
            shared
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for (handle, _) in self.locals {
            let _ = handle.join();
        }
        for (mut child, _) in self.workers {
            // Closing its stdin tells a worker to stop.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

fn spawn_threads(
    opts: &BenchOptions,
    target: &Target,
    connections: usize,
    slow: usize,
) -> Result<Vec<LocalClients>, String> {
    let threads = opts.threads.max(1);
    let per_process_rate = opts.connect_rate / opts.processes.max(1) as f64;
    (0..threads)
        .map(|t| {
            let share = |total: usize| total / threads + usize::from(t < total % threads);
            let plan = Plan {
                target: target.clone(),
                connections: share(connections),
                slow: share(slow),
                source_ips: opts.source_ips.clone(),
                connect_rate: per_process_rate / threads as f64,
            };
            client::spawn(plan, t).map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect()
}

/// Re-runs this command as worker processes 1..P, each printing JSON
/// snapshots on stdout.
fn spawn_workers(opts: &BenchOptions) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    (1..opts.processes.max(1))
        .map(|i| {
            let mut child = Command::new(&exe)
                .args(&opts.argv)
                .args(["--worker-index", &i.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start worker {i}: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            let shared = Arc::new(Mutex::new(Snapshot::default()));
            let sink = shared.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(snap) = serde_json::from_str::<Snapshot>(&line) else {
                        continue;
                    };
                    let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let mut latency = std::mem::take(&mut s.latency);
                    latency.extend(snap.latency.iter().copied());
                    *s = Snapshot { latency, ..snap };
                }
            });
            Ok((child, shared))
        })
        .collect()
}

/// A worker: report this process's snapshot every 200 ms until stdin closes.
fn worker_loop(locals: &[LocalClients]) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut stdout = std::io::stdout();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let mut total = Snapshot::default();
        let mut hist = new_histogram();
        for (_, shared) in locals {
            let mut s = shared.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            total.absorb(&s, &mut hist);
            s.latency.clear();
        }
        total.latency = stats::take_latencies(&mut hist);
        let line = serde_json::to_string(&total).unwrap_or_default();
        if writeln!(stdout, "{line}").is_err() {
            break;
        }
    }
    for (_, shared) in locals {
        shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One process's descriptors must fit its open-files limit.
fn check_fd_budget(connections: usize, processes: usize) -> Result<(), String> {
    let limit = crate::sys::raise_nofile_limit().unwrap_or(1024) as usize;
    let room = limit.saturating_sub(64);
    if connections > room {
        return Err(format!(
            "{connections} connections per process do not fit its open-files limit ({limit}); \
             use --processes {} (or raise ulimit -n)",
            (connections * processes).div_ceil(room.max(1))
        ));
    }
    Ok(())
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        format!("--url must start with ws:// (got '{url}'); put TLS in front separately")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{authority}': {e}"))?
        .next()
        .ok_or_else(|| format!("no address for '{authority}'"))?;
    Ok(Target {
        addr,
        host: authority.to_owned(),
        path: path.to_owned(),
        compression: false,
        sse: path.starts_with("/sse"),
    })
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}ms", us as f64 / 1000.0)
    }
}

/// One line per step, for humans.
pub fn step_line(s: &StepResult) -> String {
    format!(
        "rate {:>7.0}/s  {:>11.0} deliveries/s  {:.0} B/delivery  ratio {:>8.4}%  p50 {:>8} p90 {:>8} p99 {:>8} p99.9 {:>8} max {:>8}  gaps {} dups {} cut {}  server {} cpu {}{}  rss {}  bench cpu {}{}",
        s.rate,
        s.deliveries_per_sec,
        s.wire_bytes_per_delivery,
        s.ratio * 100.0,
        ms(s.latency_us.p50),
        ms(s.latency_us.p90),
        ms(s.latency_us.p99),
        ms(s.latency_us.p999),
        ms(s.latency_us.max),
        s.gaps,
        s.dups,
        s.slow_cut,
        s.server_cpu_ns_per_delivery
            .map_or("-".to_owned(), |n| format!("{n:.0} ns/delivery")),
        s.server_cpu_percent
            .map_or("-".to_owned(), |p| format!("{p:.0}%")),
        match (
            s.server_core_busy_ns_per_delivery,
            s.server_core_softirq_ns_per_delivery
        ) {
            (Some(b), Some(q)) => format!("  its core {b:.0} ns/delivery (softirq {q:.0})"),
            _ => String::new(),
        },
        s.server_rss_bytes
            .map_or("-".to_owned(), |b| format!("{} MiB", b >> 20)),
        s.bench_cpu_percent
            .map_or("-".to_owned(), |p| format!("{p:.0}%")),
        if s.sustained { "" } else { "  (not sustained)" }
    )
}

/// The final human-readable summary.
pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "{} connections ({} failed, {} slow) to {}, {}-byte messages\n",
        r.connections, r.failed, r.slow, r.url, r.size
    );
    if let Some(p) = r.server_rss_per_connection {
        out.push_str(&format!("server RSS growth per connection: {p:.0} bytes\n"));
    }
    for s in &r.steps {
        out.push_str(&step_line(s));
        out.push('\n');
    }
    if let Some(m) = &r.max_sustained {
        out.push_str(&format!(
            "max sustained: {:.0} msg/s, {:.0} deliveries/s, p99 {}{}\n",
            m.rate,
            m.deliveries_per_sec,
            ms(m.latency_us.p99),
            m.server_cpu_ns_per_delivery
                .map_or(String::new(), |n| format!(
                    ", {n:.0} ns of server CPU per delivery"
                ))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/ws?channels=bench").unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.path, "/ws?channels=bench");
        assert_eq!(parse_url("ws://127.0.0.1:1").unwrap().path, "/");
        assert!(parse_url("wss://x").unwrap_err().contains("ws://"));
    }
}
