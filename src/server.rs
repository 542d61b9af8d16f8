//! `ringcast serve`: binds the listeners, starts one shard per CPU, prints
//! the start-up summary, and runs the control plane (signals; the feed).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;

use crate::config::ServeConfig;
use crate::feed::envelope::FeedError;
use crate::feed::registry::{HistoryLimits, Registry};
use crate::feed::{Distributor, FeedStats, HistoryConfig, ingest};
use crate::limits::PeerLimits;
use crate::metrics::{self, SharedStats};
use crate::shard::{self, ShardConfig, ShardHandle, ShardMsg};

/// Channels listed one by one in `/metrics` (the busiest); more would make
/// the page, and the monitoring system's series count, unbounded.
const METRICS_CHANNELS: usize = 100;
/// Messages queued from the ingest tasks to the distributor.
const INGEST_QUEUE: usize = 4096;
/// Channel messages queued to each shard.
const SHARD_INBOX: usize = 16384;

/// State every thread can read: stats, the channels, the drain flag.
pub struct Shared {
    pub shard_stats: Vec<SharedStats>,
    pub draining: AtomicBool,
    pub started: Instant,
    pub registry: Registry,
    pub feed: Arc<FeedStats>,
    /// Inode of the UDP feed socket, to read its kernel drop counter.
    pub udp_inode: AtomicU64,
    /// Identifies this run of the server (random, new at each start), so
    /// clients can tell that their seqs belong to an earlier run.
    pub epoch: String,
    /// Connections open on all shards (checked against --max-connections).
    pub connections: AtomicUsize,
    /// Per-client-IP limits.
    pub peers: PeerLimits,
    /// Per shard, when its event loop last turned (ms since `started`):
    /// the systemd watchdog is only fed while every shard is alive.
    pub shard_heartbeat: Vec<AtomicU64>,
}

impl Shared {
    pub fn new(shards: usize, max_channels: usize, peers: PeerLimits) -> Shared {
        Shared {
            shard_stats: (0..shards).map(|_| SharedStats::default()).collect(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            registry: Registry::new(shards, max_channels),
            feed: Arc::new(FeedStats::default()),
            udp_inode: AtomicU64::new(0),
            epoch: new_epoch(),
            connections: AtomicUsize::new(0),
            peers,
            shard_heartbeat: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Milliseconds since the server started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// WebSocket connections open on all shards.
    pub fn websockets_open(&self) -> u64 {
        self.shard_stats
            .iter()
            .map(|s| s.snapshot().gauges[metrics::Gauge::WebSocketsOpen as usize])
            .sum()
    }

    /// The whole `/metrics` page.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        metrics::write_single(
            &mut out,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            "gauge",
            self.started.elapsed().as_secs(),
        );
        let snapshots: Vec<_> = self.shard_stats.iter().map(|s| s.snapshot()).collect();
        metrics::render_shards(&mut out, &snapshots);
        self.render_feed(&mut out);
        out
    }

    fn render_feed(&self, out: &mut String) {
        let feed = &self.feed;
        let single = [
            (
                "ringcast_messages_published_total",
                "Feed messages accepted and fanned out (all channels).",
                "counter",
                feed.published.load(Relaxed),
            ),
            (
                "ringcast_feed_udp_drops_total",
                "UDP feed datagrams the kernel dropped because the socket buffer was full.",
                "counter",
                self.udp_drops(),
            ),
            (
                "ringcast_feed_unix_publishers",
                "Publishers connected to the Unix feed socket.",
                "gauge",
                feed.unix_publishers.load(Relaxed),
            ),
            (
                "ringcast_limited_ips",
                "Client IPs tracked by the per-IP limits.",
                "gauge",
                self.peers.tracked() as u64,
            ),
            (
                "ringcast_channels",
                "Channels known to the server.",
                "gauge",
                self.registry.len() as u64,
            ),
            (
                "ringcast_history_bytes",
                "Bytes held in channel histories (all channels).",
                "gauge",
                feed.history_bytes.load(Relaxed),
            ),
            (
                "ringcast_history_frames",
                "Frames held in channel histories (all channels).",
                "gauge",
                feed.history_frames.load(Relaxed),
            ),
            (
                "ringcast_history_evicted_by_total_cap_total",
                "History frames evicted early because all channels together reached --history-total.",
                "counter",
                feed.history_evicted_by_total_cap.load(Relaxed),
            ),
        ];
        for (name, help, kind, value) in single {
            metrics::write_single(out, name, help, kind, value);
        }
        let name = "ringcast_feed_messages_total";
        metrics::write_header(out, name, "Feed messages received, by socket.", "counter");
        let _ = writeln!(
            out,
            "{name}{{source=\"udp\"}} {}",
            feed.udp_messages.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "{name}{{source=\"unix\"}} {}",
            feed.unix_messages.load(Relaxed)
        );
        let name = "ringcast_feed_errors_total";
        metrics::write_header(out, name, "Feed messages refused, by kind.", "counter");
        for kind in FeedError::ALL {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{}\"}} {}",
                kind.label(),
                feed.errors(kind)
            );
        }
        let name = "ringcast_channel_messages_published_total";
        metrics::write_header(
            out,
            name,
            "Messages published per channel (the 100 busiest channels only).",
            "counter",
        );
        for (channel, count) in self.registry.busiest(METRICS_CHANNELS) {
            let _ = writeln!(out, "{name}{{channel=\"{channel}\"}} {count}");
        }
    }

    /// The kernel's drop counter of the UDP feed socket (from /proc/net/udp*).
    fn udp_drops(&self) -> u64 {
        let inode = self.udp_inode.load(Relaxed);
        if inode == 0 {
            return 0;
        }
        let inode = inode.to_string();
        ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            // Columns: ... inode (9), ref, pointer, drops (12).
            .find(|cols| cols.get(9) == Some(&inode))
            .and_then(|cols| cols.get(12)?.parse().ok())
            .unwrap_or(0)
    }
}

/// 64 random bits in hex, from the kernel's random source.
fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Never expected on Linux 3.17+; time still distinguishes restarts.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A start-up failure: printed as is, exit status 1.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running server: its shards and where it listens.
pub struct Running {
    pub listen: SocketAddr,
    /// The listener came from systemd socket activation.
    pub inherited_listener: bool,
    /// Token verification (reloaded on SIGHUP), when authentication is on.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    pub shards: Vec<ShardHandle>,
    pub shared: Arc<Shared>,
    pub open_files: u64,
    pub max_connections: usize,
}

/// The bound feed sockets.
struct Feeds {
    udp: Option<(SocketAddr, tokio::net::UdpSocket)>,
    unix: Option<(tokio::net::UnixListener, ingest::SocketFileGuard)>,
}

/// Binds and starts everything; returns once every shard accepts.
pub fn start(config: &ServeConfig) -> Result<Running, StartError> {
    crate::sys::ignore_sigpipe();
    crate::sys::disable_transparent_huge_pages();
    let open_files = crate::sys::raise_nofile_limit()
        .map_err(|e| StartError(format!("cannot read the open-files limit: {e}")))?;
    let cpus = crate::sys::allowed_cpus()
        .map_err(|e| StartError(format!("cannot read the CPU affinity: {e}")))?;
    let shard_count = config.shards.unwrap_or(cpus.len()).max(1);
    if shard_count > cpus.len() {
        tracing::warn!(
            "{shard_count} shards on {} CPUs: shards will share CPUs (pinned round-robin)",
            cpus.len()
        );
    }
    let max_connections = connection_budget(config, open_files, shard_count);
    let auth = match &config.auth_secret_file {
        Some(path) => Some(Arc::new(
            crate::auth::Authenticator::from_file(path).map_err(StartError)?,
        )),
        None => None,
    };
    let inherited = crate::activation::take_listener().map_err(StartError)?;
    let inherited_listener = inherited.is_some();
    let listeners = match inherited {
        Some(socket) => share_listener(socket, shard_count)?,
        None => bind_listeners(config.listen, shard_count)?,
    };
    let listen = listeners[0]
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(config.listen);
    let shard_config = Arc::new(ShardConfig {
        high_water: config.high_water,
        max_message: config.max_message,
        echo_max_message: config.echo_max_message,
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        handshake_timeout: config.handshake_timeout,
        echo: config.echo,
        recv_buffers: config.recv_buffers,
        recv_buffer_size: config.recv_buffer_size,
        max_subscriptions: config.max_subscriptions,
        inbox_capacity: SHARD_INBOX,
        max_connections,
        max_connections_per_shard: config.max_connections_per_shard.unwrap_or(usize::MAX),
        send_buffer: config.send_buffer.map(|b| b.min(i32::MAX as u64) as u32),
        shared_listener: inherited_listener,
        trusted_proxies: config.trusted_proxies.clone(),
        auth: auth.clone(),
        auth_timeout: config.auth_timeout,
        allowed_origins: config.allowed_origins.clone(),
        max_request_header: config.max_request_header,
        client_bytes_rate: config.client_bytes_rate.min(u64::from(u32::MAX / 4)) as u32,
        client_rate: config.client_rate,
    });
    let peers = PeerLimits::new(
        config.max_connections_per_ip,
        config.handshake_rate_per_ip,
        config.limit_loopback,
    );
    let shared = Arc::new(Shared::new(shard_count, config.max_channels, peers));
    let mut shards = Vec::with_capacity(shard_count);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cpu = cpus[index % cpus.len()];
        // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) };
        let handle = shard::spawn(index, cpu, fd, shard_config.clone(), shared.clone())
            .map_err(|e| StartError(format!("shard {index} could not start: {e}")))?;
        tracing::info!("shard {index} ready on CPU {cpu}");
        shards.push(handle);
    }
    Ok(Running {
        listen,
        inherited_listener,
        auth,
        shards,
        shared,
        open_files,
        max_connections,
    })
}

/// The connection limit: the configured one, or what the open-files limit
/// allows. A configured limit that cannot fit is reported loudly (it still
/// applies: connections past the file limit fail at accept and are logged).
fn connection_budget(config: &ServeConfig, open_files: u64, shards: usize) -> usize {
    let reserved = crate::doctor::reserved_fds(shards as u64);
    let fits = open_files.saturating_sub(reserved) as usize;
    match config.max_connections {
        None => fits,
        Some(wanted) if wanted > fits => {
            tracing::warn!(
                "--max-connections {wanted} cannot fit: the open-files limit is {open_files}, \
                 room for about {fits} connections. Raise it (systemd: LimitNOFILE={}; shell: \
                 ulimit -n; /etc/security/limits.d), see `ringcast doctor --connections {wanted}`",
                wanted as u64 + reserved
            );
            wanted
        }
        Some(wanted) => wanted,
    }
}

/// One `SO_REUSEPORT` listener per shard, all on the same address: the kernel
/// spreads incoming connections across them.
fn bind_listeners(addr: SocketAddr, count: usize) -> Result<Vec<Socket>, StartError> {
    let fail = |e: std::io::Error| {
        let hint = match e.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                " (address already in use: another ringcast or another server is listening there; stop it or pick another --listen)"
            }
            Some(libc::EACCES) => {
                " (permission denied: ports below 1024 need CAP_NET_BIND_SERVICE)"
            }
            Some(libc::EADDRNOTAVAIL) => " (that IP address is not on this host)",
            _ => "",
        };
        StartError(format!("cannot listen on {addr}: {e}{hint}"))
    };
    // SO_REUSEPORT would silently share the port with another ringcast
    // already running there; a plain bind first detects that.
    if addr.port() != 0 {
        let probe = new_socket(addr, false).map_err(fail)?;
        probe.bind(&addr.into()).map_err(fail)?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = new_socket(bound, true).map_err(fail)?;
        socket.bind(&bound.into()).map_err(fail)?;
        socket.listen(65535).map_err(fail)?;
        if bound.port() == 0 {
            // Port 0: the first listener picks the port, the others join it.
            if let Some(actual) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                bound = actual;
            }
        }
        listeners.push(socket);
    }
    Ok(listeners)
}

/// The socket systemd passed, duplicated for every shard: they all accept
/// on it, and the kernel wakes one of them per connection.
fn share_listener(socket: Socket, count: usize) -> Result<Vec<Socket>, StartError> {
    let mut listeners = Vec::with_capacity(count);
    for _ in 1..count {
        let copy = socket
            .try_clone()
            .map_err(|e| StartError(format!("cannot share the socket systemd passed: {e}")))?;
        listeners.push(copy);
    }
    listeners.push(socket);
    Ok(listeners)
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(socket)
}

/// Runs the server until SIGINT/SIGTERM.
pub fn serve(config: ServeConfig) -> Result<(), StartError> {
    let running = start(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the control runtime: {e}")))?;
    runtime.block_on(async {
        // Before the start-up line and READY, so no signal can meet its
        // default action (exit, without a drain) once the server says it is up.
        let mut signals = Signals::new();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => {
                tokio::spawn(reload_on_hangup(hangups, running.auth.clone()));
            }
            Err(e) => tracing::error!("cannot listen for SIGHUP: {e}"),
        }
        let feeds = bind_feeds(&config, &running.shared)?;
        print_summary(&config, &running, &feeds);
        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        let stats = running.shared.feed.clone();
        let max = config.max_feed_message;
        let _socket_file = if let Some((listener, guard)) = feeds.unix {
            tokio::spawn(ingest::run_unix(listener, tx.clone(), max, stats.clone()));
            Some(guard)
        } else {
            None
        };
        if let Some((_, socket)) = feeds.udp {
            tokio::spawn(ingest::run_udp(socket, tx.clone(), max, stats.clone()));
        }
        drop(tx);
        let history = HistoryConfig {
            per_channel: HistoryLimits {
                count: config.history,
                bytes: config.history_bytes as usize,
            },
            total_bytes: config.history_total as usize,
            channel_ttl: config.channel_ttl,
        };
        let distributor = Distributor::new(running.shared.feed.clone(), &running, history);
        tokio::spawn(distributor.run(rx));
        crate::notify::notify("READY=1");
        if let Some(period) = crate::notify::watchdog_interval() {
            tokio::spawn(feed_watchdog(running.shared.clone(), period));
        }
        signals.next().await;
        drain(&running, &config, &mut signals, _socket_file).await;
        Ok::<(), StartError>(())
    })?;
    for shard in &running.shards {
        shard.send(ShardMsg::Shutdown);
    }
    for shard in running.shards {
        let _ = shard.thread.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Graceful shutdown: /healthz turns 503, every WebSocket client gets 1001,
/// and they get `--drain-timeout` to leave. A second signal ends it at once.
async fn drain(
    running: &Running,
    config: &ServeConfig,
    signals: &mut Signals,
    socket_file: Option<ingest::SocketFileGuard>,
) {
    let clients = running.shared.websockets_open();
    tracing::info!(
        "draining: closing {clients} WebSocket client(s) with 1001, up to {:?}",
        config.drain_timeout
    );
    running.shared.draining.store(true, Relaxed);
    crate::notify::notify("STOPPING=1");
    for shard in &running.shards {
        shard.send(ShardMsg::Drain);
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    loop {
        if running.shared.websockets_open() == 0 {
            tracing::info!("drained in {} ms", started.elapsed().as_millis());
            return;
        }
        tokio::select! {
            _ = signals.next() => {
                tracing::warn!(
                    "second signal: exiting now with {} client(s) still connected",
                    running.shared.websockets_open()
                );
                drop(socket_file);
                std::process::exit(0);
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    "drain timeout: cutting the {} client(s) still connected",
                    running.shared.websockets_open()
                );
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Pings the systemd watchdog at half its period, but only while every
/// shard's event loop is turning: a stuck shard makes systemd restart us.
async fn feed_watchdog(shared: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let now = shared.uptime_ms();
        let stale = period.as_millis() as u64 / 2;
        let alive = shared
            .shard_heartbeat
            .iter()
            .all(|beat| now.saturating_sub(beat.load(Relaxed)) < stale);
        if alive {
            crate::notify::notify("WATCHDOG=1");
        } else {
            tracing::error!("a shard has stopped turning; not feeding the systemd watchdog");
        }
    }
}

fn bind_feeds(config: &ServeConfig, shared: &Shared) -> Result<Feeds, StartError> {
    let udp = match config.udp {
        Some(addr) => {
            let socket = ingest::bind_udp(addr)
                .map_err(|e| StartError(format!("cannot bind the UDP feed on {addr}: {e}")))?;
            let bound = socket.local_addr().unwrap_or(addr);
            shared
                .udp_inode
                .store(socket_inode(socket.as_raw_fd()), Relaxed);
            Some((bound, socket))
        }
        None => None,
    };
    let unix = match &config.unix {
        Some(path) => {
            let listener = ingest::bind_unix(path).map_err(|e| {
                StartError(format!(
                    "cannot listen on the Unix feed socket {}: {e}",
                    path.display()
                ))
            })?;
            Some((listener, ingest::SocketFileGuard(path.clone())))
        }
        None => None,
    };
    Ok(Feeds { udp, unix })
}

fn socket_inode(fd: std::os::fd::RawFd) -> u64 {
    // SAFETY: fstat fills a stat struct we own; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        st.st_ino
    } else {
        0
    }
}

/// The one start-up line: where it listens, shards and CPUs, feeds, limits.
fn print_summary(config: &ServeConfig, running: &Running, feeds: &Feeds) {
    let cpu_list = running
        .shards
        .iter()
        .map(|s| s.cpu.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut list = Vec::new();
    if let Some((addr, _)) = &feeds.udp {
        list.push(format!("udp {addr}"));
    }
    if let Some(path) = &config.unix {
        list.push(format!("unix {}", path.display()));
    }
    let feeds = if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    };
    tracing::info!(
        "ringcast {} listening on {}{}; {} shard(s) on CPU(s) {cpu_list}; feeds: {feeds}; open files limit {}; max connections {}{}",
        env!("CARGO_PKG_VERSION"),
        running.listen,
        if running.inherited_listener {
            " (socket from systemd; --listen ignored)"
        } else {
            ""
        },
        running.shards.len(),
        running.open_files,
        running.max_connections,
        if config.echo { "; /echo enabled" } else { "" },
    );
}

/// SIGHUP re-reads the secret file (`systemctl reload ringcast`): secrets
/// rotate without disconnecting anyone. Without authentication there is
/// nothing to reload, and SIGHUP is only logged, never fatal.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    auth: Option<Arc<crate::auth::Authenticator>>,
) {
    while hangups.recv().await.is_some() {
        crate::notify::notify("RELOADING=1");
        match auth.as_deref().map(|a| a.reload()) {
            None => tracing::info!("SIGHUP: nothing to reload (no --auth-secret-file)"),
            Some(Ok(n)) => tracing::info!("SIGHUP: reloaded the secret file ({n} secret(s))"),
            Some(Err(e)) => tracing::warn!("SIGHUP: kept the current secrets: {e}"),
        }
        crate::notify::notify("READY=1");
    }
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for {name}: {e}");
                None
            }
        };
        Signals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}
