//! Command-line parsing: the subcommands of INTERFACE.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ringcast",
    version,
    about = "WebSocket broadcast server on io_uring: publishers write to a local UDP or Unix socket, every subscribed client gets the message."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server in the foreground (what systemd runs).
    Serve(Box<ServeArgs>),
    /// Send one message (DATA), or one per stdin line, to a running server's feed.
    Publish(PublishArgs),
    /// Check this host's kernel and process limits for N connections.
    Doctor(DoctorArgs),
    /// Fan-out load generator: N WebSocket clients, a paced feed, a report.
    Bench(BenchArgs),
    /// Print a signed token (for --auth-secret-file servers), for testing and ops.
    Token(TokenArgs),
}

/// `ringcast token`: mints a JWT (HS256) with the first secret of the file.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The server's secret file (the first line signs).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Channels the token allows: names, `prefix*`, or `*` for all.
    #[arg(long, value_name = "A,B", value_delimiter = ',', required = true)]
    pub channels: Vec<String>,
    /// Lifetime [default: 1h]. Prefer short ones: tokens in URLs end up in proxy logs.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub ttl: String,
    /// Who the token is for (recorded in the token, not checked).
    #[arg(long, value_name = "NAME")]
    pub sub: Option<String>,
}

/// `ringcast bench`. Works against any WebSocket server that broadcasts the
/// published data: the seq and timestamp travel inside it.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server to connect to (path and query included).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?channels=bench")]
    pub url: String,
    /// WebSocket clients to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Client threads per process (each drives its sockets with io_uring).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Processes to spread the clients over (when one's open-files limit is too small).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Source addresses to connect from, round-robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<std::net::IpAddr>,
    /// Connections opened per second, in all.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Clients that stop reading after the handshake (to see the high-water mark work).
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Feed to publish to: udp:ADDR or unix:PATH.
    #[arg(long, default_value = "udp:127.0.0.1:9000")]
    pub feed: String,
    /// Channel to publish on (must be the one the URL subscribes to).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Bytes of `data` per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages per second; several (comma-separated) run as successive steps.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rate: Vec<f64>,
    /// Length of each step (or of the idle hold with --rate 0).
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Longest wait after a step for messages still in flight.
    #[arg(long, default_value = "3s")]
    pub drain: String,
    /// Stop at the first step that is not sustained (ratio or p99 missed).
    #[arg(long)]
    pub sweep: bool,
    /// Delivery ratio a step must reach to count as sustained.
    #[arg(long, default_value_t = 0.999)]
    pub min_ratio: f64,
    /// p99 latency a step must stay under to count as sustained.
    #[arg(long, default_value = "50ms")]
    pub max_p99: String,
    /// PID of a server on this host: report its CPU per delivery and RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also print the report as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// (internal) run as worker N of --processes.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Connections to check for.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub connections: u64,
}

/// `ringcast publish`: DATA is sent as the message's `data`, verbatim when it
/// is valid JSON, as a JSON string otherwise.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Channel to publish on [default: the server's `default` channel].
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Unix feed socket of the server [default: ./ringcast.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "udp")]
    pub unix: Option<PathBuf>,
    /// Publish over UDP to this address instead (one datagram per message).
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<std::net::SocketAddr>,
    /// Always send the data as a JSON string, even when it parses as JSON.
    #[arg(long)]
    pub text: bool,
    /// The data; without it, every stdin line is one message.
    pub data: Option<String>,
}

/// Every flag is also a key of the TOML config file; flags win.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (keys as the flags below, without `--`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket + HTTP listener [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// UDP feed socket, or `off` [default: 127.0.0.1:9000].
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<String>,
    /// Unix stream feed socket, or `off` [default: ./ringcast.sock].
    #[arg(long, value_name = "PATH")]
    pub unix: Option<String>,
    /// Shards (threads, each pinned to a CPU) [default: CPUs allowed to the process].
    #[arg(long, value_name = "N")]
    pub shards: Option<String>,
    /// Per-connection queued-bytes limit; above it the client is disconnected (4008) [default: 4MiB].
    #[arg(long, value_name = "BYTES")]
    pub high_water: Option<String>,
    /// Largest message a /ws client may send [default: 64KiB].
    #[arg(long, value_name = "BYTES")]
    pub max_message: Option<String>,
    /// Largest message on /echo [default: 16MiB].
    #[arg(long, value_name = "BYTES")]
    pub echo_max_message: Option<String>,
    /// Largest feed message (UDP datagram or Unix line) [default: 1MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_feed_message: Option<String>,
    /// Server ping period [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// Close a client silent this long after a ping [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub ping_timeout: Option<String>,
    /// Drop connections that have not completed the handshake by then [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Serve /echo, which echoes every message (for conformance suites).
    #[arg(long)]
    pub echo: bool,
    /// Receive buffers per shard, a power of two [default: 1024].
    #[arg(long, value_name = "N")]
    pub recv_buffers: Option<String>,
    /// Size of each receive buffer [default: 4KiB].
    #[arg(long, value_name = "BYTES")]
    pub recv_buffer_size: Option<String>,
    /// Channels one connection may subscribe to [default: 100].
    #[arg(long, value_name = "N")]
    pub max_subscriptions: Option<String>,
    /// Channels the server tracks in all [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_channels: Option<String>,
    /// Messages kept per channel for `since=` resume; 0 disables [default: 1000].
    #[arg(long, value_name = "N")]
    pub history: Option<String>,
    /// Bytes kept per channel for resume [default: 16MiB].
    #[arg(long, value_name = "BYTES")]
    pub history_bytes: Option<String>,
    /// Bytes of history kept across all channels [default: 512MiB].
    #[arg(long, value_name = "BYTES")]
    pub history_total: Option<String>,
    /// Drop channels idle (no subscriber, no message) this long [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub channel_ttl: Option<String>,
    /// Messages per second a /ws client may send before it is closed (1008) [default: 50].
    #[arg(long, value_name = "N")]
    pub client_rate: Option<String>,
    /// Connections accepted in all; past it, 503 [default: what the open-files limit allows].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Connections one shard accepts [default: no per-shard limit].
    #[arg(long, value_name = "N")]
    pub max_connections_per_shard: Option<String>,
    /// On SIGTERM, how long clients get to leave after their 1001 [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Kernel send buffer per client socket, or `off` for the kernel's autotuning [default: off].
    #[arg(long, value_name = "BYTES")]
    pub send_buffer: Option<String>,
    /// Require signed tokens; the file holds the secret(s), one per line [default: off].
    #[arg(long, value_name = "FILE")]
    pub auth_secret_file: Option<String>,
    /// Time a client without a token has to send an auth message [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub auth_timeout: Option<String>,
    /// Origins browsers may connect from, comma-separated; `*.` wildcards [default: any].
    #[arg(long, value_name = "ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Connections one client IP may hold; 0 = no limit [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<String>,
    /// New connections per second per client IP (bursts of 2x); 0 = no limit [default: 100].
    #[arg(long, value_name = "N")]
    pub handshake_rate_per_ip: Option<String>,
    /// Apply per-IP limits to loopback peers too (off: a local proxy carries everyone) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub limit_loopback: Option<String>,
    /// Proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the client for the per-IP limits [default: none].
    #[arg(long, value_name = "NETWORKS")]
    pub trusted_proxies: Option<String>,
    /// Largest HTTP request head; larger gets 431 [default: 8KiB].
    #[arg(long, value_name = "BYTES")]
    pub max_request_header: Option<String>,
    /// Bytes per second a /ws client may send before it is closed (1008) [default: 64KiB].
    #[arg(long, value_name = "BYTES")]
    pub client_bytes_rate: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// I/O driver: auto (io_uring where it works, else epoll), io-uring, or epoll [default: auto].
    #[arg(long, value_name = "DRIVER")]
    pub io: Option<String>,
}

impl ServeArgs {
    /// The flags the user gave, as (config key, value) pairs.
    pub fn given(&self) -> Vec<(&'static str, String)> {
        let options = [
            ("listen", &self.listen),
            ("udp", &self.udp),
            ("unix", &self.unix),
            ("shards", &self.shards),
            ("high-water", &self.high_water),
            ("max-message", &self.max_message),
            ("echo-max-message", &self.echo_max_message),
            ("max-feed-message", &self.max_feed_message),
            ("ping-interval", &self.ping_interval),
            ("ping-timeout", &self.ping_timeout),
            ("handshake-timeout", &self.handshake_timeout),
            ("recv-buffers", &self.recv_buffers),
            ("recv-buffer-size", &self.recv_buffer_size),
            ("max-subscriptions", &self.max_subscriptions),
            ("max-channels", &self.max_channels),
            ("history", &self.history),
            ("history-bytes", &self.history_bytes),
            ("history-total", &self.history_total),
            ("channel-ttl", &self.channel_ttl),
            ("client-rate", &self.client_rate),
            ("max-connections", &self.max_connections),
            ("max-connections-per-shard", &self.max_connections_per_shard),
            ("drain-timeout", &self.drain_timeout),
            ("send-buffer", &self.send_buffer),
            ("auth-secret-file", &self.auth_secret_file),
            ("auth-timeout", &self.auth_timeout),
            ("allowed-origins", &self.allowed_origins),
            ("max-connections-per-ip", &self.max_connections_per_ip),
            ("handshake-rate-per-ip", &self.handshake_rate_per_ip),
            ("limit-loopback", &self.limit_loopback),
            ("trusted-proxies", &self.trusted_proxies),
            ("max-request-header", &self.max_request_header),
            ("client-bytes-rate", &self.client_bytes_rate),
            ("log-format", &self.log_format),
            ("io", &self.io),
        ];
        let mut given: Vec<(&'static str, String)> = options
            .into_iter()
            .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
            .collect();
        if self.echo {
            given.push(("echo", "true".to_owned()));
        }
        given
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KEYS;

    #[test]
    fn every_config_key_is_a_flag() {
        let args = Cli::parse_from(["ringcast", "serve"]);
        assert!(matches!(args.command, Command::Serve(_)));
        let cmd = <Cli as clap::CommandFactory>::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for key in KEYS {
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(key)),
                "config key {key} has no flag"
            );
        }
    }
}
