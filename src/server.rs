//! `ringcast serve`: binds the listeners, starts one shard per CPU, prints
//! the start-up summary, and runs the control plane (signals; the feed).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use socket2::{Domain, Socket, Type};

use crate::config::ServeConfig;
use crate::metrics::{self, SharedStats};
use crate::shard::{self, ShardConfig, ShardHandle, ShardMsg};

/// State every thread can read: per-shard stats and the drain flag.
pub struct Shared {
    pub shard_stats: Vec<SharedStats>,
    pub draining: AtomicBool,
    pub started: Instant,
}

impl Shared {
    pub fn new(shards: usize) -> Shared {
        Shared {
            shard_stats: (0..shards).map(|_| SharedStats::default()).collect(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// The whole `/metrics` page.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        metrics::write_header(
            &mut out,
            "ringcast_uptime_seconds",
            "Seconds since the server started.",
            "gauge",
        );
        out.push_str(&format!(
            "ringcast_uptime_seconds {}\n",
            self.started.elapsed().as_secs()
        ));
        let snapshots: Vec<_> = self.shard_stats.iter().map(|s| s.snapshot()).collect();
        metrics::render_shards(&mut out, &snapshots);
        out
    }
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
    pub shards: Vec<ShardHandle>,
    pub shared: Arc<Shared>,
}

/// Binds and starts everything; returns once every shard accepts.
pub fn start(config: &ServeConfig) -> Result<Running, StartError> {
    crate::sys::ignore_sigpipe();
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
    let listeners = bind_listeners(config.listen, shard_count)?;
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
    });
    let shared = Arc::new(Shared::new(shard_count));
    let mut shards = Vec::with_capacity(shard_count);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cpu = cpus[index % cpus.len()];
        // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(listener.into_raw_fd()) };
        let handle = shard::spawn(index, cpu, fd, shard_config.clone(), shared.clone())
            .map_err(|e| StartError(format!("shard {index} could not start: {e}")))?;
        shards.push(handle);
    }
    let cpu_list = shards
        .iter()
        .map(|s| s.cpu.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let feeds = [
        config.udp.map(|a| format!("udp {a}")),
        config
            .unix
            .as_ref()
            .map(|p| format!("unix {}", p.display())),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    let feeds = if feeds.is_empty() {
        "none".to_owned()
    } else {
        feeds.join(", ")
    };
    tracing::info!(
        "ringcast {} listening on {listen}; {shard_count} shard(s) on CPU(s) {cpu_list}; feeds: {feeds}; open files limit {open_files}{}",
        env!("CARGO_PKG_VERSION"),
        if config.echo { "; /echo enabled" } else { "" },
    );
    Ok(Running {
        listen,
        shards,
        shared,
    })
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
        wait_for_signal().await;
    });
    tracing::info!("shutting down");
    for shard in &running.shards {
        shard.send(ShardMsg::Shutdown);
    }
    for shard in running.shards {
        let _ = shard.thread.join();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
