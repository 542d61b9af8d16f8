//! `ringcast serve`: binds the listeners, starts one shard per CPU, prints
//! the start-up summary, and runs the control plane (signals; the feed).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;

use crate::config::ServeConfig;
use crate::core::CoreConfig;
use crate::core::registry::HistoryLimits;
use crate::core::shared::Shared;
use crate::driver::{self, DriverConfig, Io, ShardHandle, ShardMsg, ShardSetup};
use crate::feed::{Distributor, FeedStats, HistoryConfig, ShardLink, ingest};
use crate::limits::PeerLimits;

/// Messages queued from the ingest tasks to the distributor.
const INGEST_QUEUE: usize = 4096;
/// In a fleet: what the link heard, waiting for the distributor.
const FLEET_EVENTS: usize = 4096;
/// In a fleet: messages fed here, waiting for the publisher (which sends
/// them in batches of up to `fleet::publisher::BATCH`).
const FLEET_OUTGOING: usize = 8192;
/// Channel messages queued to each shard.
const SHARD_INBOX: usize = 16384;

/// 64 random bits in hex, from the kernel's random source.
fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    if getrandom_fill(&mut bytes).is_err() {
        // Never expected on Linux 3.17+; time still distinguishes restarts.
        bytes = unix_ms_now().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(bytes: &mut [u8]) -> std::io::Result<()> {
    let n = rustix::rand::getrandom(&mut *bytes, rustix::rand::GetRandomFlags::empty())?;
    if n == bytes.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("short read from getrandom"))
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    pub feed: Arc<FeedStats>,
    /// Inode of the UDP feed socket, once bound (for its drop counter).
    pub udp_inode: Arc<AtomicU64>,
    /// The server clock's origin.
    pub started: Instant,
    pub open_files: u64,
    pub max_connections: usize,
    pub io: Io,
    /// Where the status page and `/metrics` are served, when not on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// In a fleet: what its tasks need once the runtime runs.
    pub fleet: Option<FleetParts>,
}

/// A fleet node's pieces, made at start (the registry must know before any
/// channel exists) and run on the control runtime.
pub struct FleetParts {
    pub config: crate::fleet::FleetConfig,
    pub stats: Arc<crate::fleet::FleetStats>,
    pub health: Arc<crate::fleet::Health>,
    pub interest: tokio::sync::mpsc::UnboundedReceiver<Arc<crate::core::registry::Channel>>,
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
    let auth = match crate::auth::secret_source(config.auth_secret_file.as_deref()) {
        Some(path) => {
            let auth = crate::auth::Authenticator::from_file(&path).map_err(StartError)?;
            if config.auth_secret_file.is_none() {
                tracing::info!(
                    "authentication on: the secret comes from the systemd credential '{}' ({})",
                    crate::auth::CREDENTIAL,
                    path.display()
                );
            }
            Some(Arc::new(auth))
        }
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
    let (io, fallback) = crate::driver::probe::resolve(config.io).map_err(StartError)?;
    if let Some(warning) = fallback {
        tracing::warn!("{warning}");
    }
    let core_config = Arc::new(CoreConfig {
        high_water: config.high_water,
        max_message: config.max_message,
        echo_max_message: config.echo_max_message,
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        handshake_timeout: config.handshake_timeout,
        echo: config.echo,
        max_subscriptions: config.max_subscriptions,
        max_connections,
        max_connections_per_shard: config.max_connections_per_shard.unwrap_or(usize::MAX),
        trusted_proxies: config.trusted_proxies.clone(),
        auth: auth.clone(),
        auth_timeout: config.auth_timeout,
        allowed_origins: config.allowed_origins.clone(),
        max_request_header: config.max_request_header,
        client_bytes_rate: config.client_bytes_rate.min(u64::from(u32::MAX / 4)) as u32,
        client_rate: config.client_rate,
        serve_admin: config.metrics_listen.is_none(),
        compression: config.compression,
        compression_min_size: config.compression_min_size,
        history: config.history,
    });
    let driver_config = Arc::new(DriverConfig {
        io,
        recv_buffers: config.recv_buffers,
        recv_buffer_size: config.recv_buffer_size,
        inbox_capacity: SHARD_INBOX,
        send_buffer: config.send_buffer.map(|b| b.min(i32::MAX as u64) as u32),
        shared_listener: inherited_listener,
    });
    let peers = PeerLimits::new(
        config.max_connections_per_ip,
        config.handshake_rate_per_ip,
        config.max_new_channels_per_ip,
        config.limit_loopback,
    );
    let started = Instant::now();
    let shared = Arc::new(Shared::new(
        shard_count,
        config.max_channels,
        peers,
        new_epoch(),
        unix_ms_now(),
    ));
    let feed = Arc::new(FeedStats::default());
    let udp_inode = Arc::new(AtomicU64::new(0));
    let fleet = config.redis.as_ref().map(|url| {
        // Channels are told about from the shards' threads; the link reads
        // them on the control runtime.
        let (tx, interest) = tokio::sync::mpsc::unbounded_channel();
        shared.registry.join_fleet(Box::new(move |channel| {
            let _ = tx.send(channel.clone());
        }));
        FleetParts {
            config: crate::fleet::FleetConfig {
                url: url.clone(),
                prefix: config.redis_prefix.clone(),
                history: config.history,
                log_ttl: config.channel_ttl,
                node: crate::fleet::node_name(),
            },
            stats: Arc::new(crate::fleet::FleetStats::default()),
            health: Arc::new(crate::fleet::Health::new(shared.clone(), url)),
            interest,
        }
    });
    let source = Arc::new(crate::admin::AdminSource {
        fleet: fleet
            .as_ref()
            .map(|f| (f.stats.clone(), crate::fleet::redacted(&f.config.url))),
        shared: shared.clone(),
        feed: feed.clone(),
        udp_inode: udp_inode.clone(),
        started,
        io,
        max_connections: max_connections as u64,
        busiest: Default::default(),
        status: Default::default(),
    });
    let admin = crate::admin::start(source.clone())
        .map_err(|e| StartError(format!("cannot start the admin threads: {e}")))?;
    let metrics_listen = match config.metrics_listen {
        Some(addr) => Some(crate::admin::serve_on(addr, source).map_err(|e| {
            StartError(format!(
                "cannot listen for the status page and metrics on {addr} (--metrics-listen): {e}"
            ))
        })?),
        None => None,
    };
    let mut shards = Vec::with_capacity(shard_count);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cpu = cpus[index % cpus.len()];
        let setup = ShardSetup {
            index,
            cpu,
            listener: OwnedFd::from(listener),
            core: core_config.clone(),
            driver: driver_config.clone(),
            shared: shared.clone(),
            started,
            admin: Some(admin.clone()),
        };
        let handle = driver::spawn(setup)
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
        feed,
        udp_inode,
        started,
        open_files,
        max_connections,
        io,
        metrics_listen,
        fleet,
    })
}

/// The connection limit: the configured one, or what the open-files limit
/// allows. A configured limit that cannot fit is reported loudly (it still
/// applies: connections past the file limit fail at accept and are logged).
fn connection_budget(config: &ServeConfig, open_files: u64, shards: usize) -> usize {
    let reserved = crate::tuning::reserved_fds(shards as u64);
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
        let hint = bind_hint(
            &e,
            "another ringcast or another server is listening there; stop it or pick another --listen",
        );
        StartError(format!("cannot listen on {addr}: {e}{hint}"))
    };
    // SO_REUSEPORT would silently share the port with another ringcast
    // already running there; a plain bind first detects that.
    if addr.port() != 0 {
        bind_probe(addr).map_err(fail)?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = new_socket(bound, true).map_err(fail)?;
        socket.bind(&bound.into()).map_err(fail)?;
        socket
            .listen(crate::tuning::SOMAXCONN as i32)
            .map_err(fail)?;
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

/// What to do about a failed bind, for the error message; `in_use` says what
/// to do when the address is taken.
fn bind_hint(e: &std::io::Error, in_use: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(" (address already in use: {in_use})"),
        Some(libc::EACCES) => {
            " (permission denied: ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
        }
        Some(libc::EADDRNOTAVAIL) => " (that IP address is not on this host)".to_owned(),
        _ => String::new(),
    }
}

/// How long a busy port is retried at start: a process killed with -9 keeps
/// its listener for some milliseconds while the kernel tears its io_uring
/// down, and a restart right after it should wait that out, not fail.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Binds (and drops) a plain socket on `addr`, retrying a port still in use
/// for up to [`BIND_RETRY`].
fn bind_probe(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = Instant::now() + BIND_RETRY;
    let mut logged = false;
    loop {
        let probe = new_socket(addr, false)?;
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && Instant::now() < deadline => {
                if !logged {
                    tracing::info!(
                        "{addr} is in use; retrying for up to {} s (a previous server may still be closing)",
                        BIND_RETRY.as_secs()
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
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
    let mut running = start(&config)?;
    let fleet = running.fleet.take();
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
        let feeds = bind_feeds(&config, &running.udp_inode)?;
        // Everything a client or publisher can reach exists now: healthy.
        running.shared.ready.store(true, Relaxed);
        print_summary(&config, &running, &feeds);
        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        let stats = running.feed.clone();
        let max = config.max_feed_message;
        let _socket_file = if let Some((listener, guard)) = feeds.unix {
            tokio::spawn(ingest::run_unix(listener, tx.clone(), max, stats.clone()));
            Some(guard)
        } else {
            None
        };
        if let Some((_, socket)) = feeds.udp {
            tokio::spawn(ingest::run_udp(
                socket,
                tx.clone(),
                max,
                stats.clone(),
                running.shared.clone(),
            ));
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
        let links = running
            .shards
            .iter()
            .map(|s| ShardLink::new(s.index, s.deliveries.clone(), s.waker()))
            .collect();
        let distributor = Distributor::new(
            running.feed.clone(),
            running.shared.clone(),
            running.started,
            links,
            history,
            config
                .compression
                .then(|| crate::feed::Compression::new(config.compression_min_size)),
        );
        match fleet {
            None => {
                tokio::spawn(distributor.run(crate::feed::Source::Feed(rx)));
            }
            Some(fleet) => {
                let (events_tx, events) = mpsc::channel(FLEET_EVENTS);
                let (outgoing, to_publish) = mpsc::channel(FLEET_OUTGOING);
                let epoch = Arc::new(tokio::sync::watch::Sender::new(String::new()));
                let link = crate::fleet::link::Link::new(
                    &fleet.config,
                    running.shared.clone(),
                    running.started,
                    fleet.stats.clone(),
                    fleet.health.clone(),
                    events_tx,
                    fleet.interest,
                    epoch.clone(),
                )
                .map_err(|e| StartError(format!("--redis: {e}")))?;
                tokio::spawn(link.run());
                tokio::spawn(crate::fleet::publisher::run(
                    fleet.config.clone(),
                    to_publish,
                    epoch,
                    fleet.stats.clone(),
                    fleet.health.clone(),
                ));
                tokio::spawn(crate::feed::forward_to_fleet(rx, outgoing, stats.clone()));
                tokio::spawn(distributor.run(crate::feed::Source::Fleet(events)));
            }
        }
        crate::notify::notify("READY=1");
        if let Some(period) = crate::notify::watchdog_interval() {
            tokio::spawn(feed_watchdog(
                running.shared.clone(),
                running.started,
                period,
            ));
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
        // Counts are only final once every shard has handled the drain.
        if running.shared.drain_acknowledged() && running.shared.websockets_open() == 0 {
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
async fn feed_watchdog(shared: Arc<Shared>, started: Instant, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let now = started.elapsed().as_millis() as u64;
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

fn bind_feeds(config: &ServeConfig, udp_inode: &AtomicU64) -> Result<Feeds, StartError> {
    let udp = match config.udp {
        Some(addr) => {
            let socket = ingest::bind_udp(addr)
                .map_err(|e| {
                    let hint = bind_hint(&e, "another ringcast or another program has it; stop it, pick another --udp, or --udp off");
                    StartError(format!("cannot bind the UDP feed on {addr}: {e}{hint}"))
                })?;
            let bound = socket.local_addr().unwrap_or(addr);
            udp_inode.store(socket_inode(socket.as_fd()), Relaxed);
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

fn socket_inode(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).map_or(0, |st| st.st_ino)
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
        "ringcast {} listening on {}{}; {} shard(s) on CPU(s) {cpu_list}, io driver {}; feeds: {feeds}; {}open files limit {}; max connections {}{}",
        env!("CARGO_PKG_VERSION"),
        running.listen,
        if running.inherited_listener {
            " (socket from systemd; --listen ignored)"
        } else {
            ""
        },
        running.shards.len(),
        running.io.label(),
        running
            .metrics_listen
            .map_or(String::new(), |a| format!("metrics on {a}; ")),
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
            None => tracing::info!("SIGHUP: nothing to reload (authentication is off)"),
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
