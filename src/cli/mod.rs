//! Command-line parsing: `serve`, `publish`, `bench`, `doctor` and `token`.

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
    Bench(Box<BenchArgs>),
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
    /// Lifetime. Prefer short ones: tokens in URLs end up in proxy logs.
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
    /// Offer permessage-deflate (as browsers do); compressed messages are
    /// counted, not inflated, so latency is measured on uncompressed ones.
    #[arg(long)]
    pub compression: bool,
    /// How clients subscribe: `websocket`, or `sse` (server-sent events:
    /// `/ws` in --url becomes `/sse`).
    #[arg(long, default_value = "websocket", value_parser = ["websocket", "sse"])]
    pub transport: String,
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
    /// CPU the server is pinned to: also report that CPU's whole busy time
    /// per delivery (kernel work there included), from /proc/stat.
    #[arg(long, value_name = "N")]
    pub server_cpu: Option<usize>,
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
    /// Print the sysctl.d file for N connections on this host (sized from its
    /// memory; limits it already has are not lowered), instead of checking.
    #[arg(long)]
    pub sysctl: bool,
    /// Print the file shipped in tuning/sysctl.d/ (for no host in particular).
    #[arg(long, hide = true)]
    pub reference_sysctl: bool,
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
    #[arg(long, value_name = "ADDR", conflicts_with = "redis")]
    pub udp: Option<std::net::SocketAddr>,
    /// Publish straight into a fleet's Redis (redis://host:port/db), as its
    /// nodes do; no node needed. Exits 1 if Redis cannot be reached within
    /// 10 seconds.
    #[arg(long, value_name = "URL", conflicts_with = "unix")]
    pub redis: Option<String>,
    /// The fleet's key prefix (its nodes' --redis-prefix).
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "ringcast",
        requires = "redis"
    )]
    pub redis_prefix: String,
    /// Messages the channel's log in Redis keeps (the nodes' --history).
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "redis")]
    pub history: usize,
    /// Always send the data as a JSON string, even when it parses as JSON.
    #[arg(long)]
    pub text: bool,
    /// The data; without it, every stdin line is one message.
    pub data: Option<String>,
}

/// `ringcast serve`: `--config FILE`, and one flag per setting (every one
/// also a key of the TOML config file; flags win). The flags are made from
/// the settings table (`config::SETTINGS`), not written out here.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file (keys as the flags, without `--`).
    pub config: Option<PathBuf>,
    /// The settings given as flags, as (key, value), in the table's order.
    given: Vec<(&'static str, String)>,
}

impl ServeArgs {
    /// The flags the user gave, as (config key, value) pairs.
    pub fn given(&self) -> Vec<(&'static str, String)> {
        self.given.clone()
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for setting in crate::config::SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                self.given.retain(|(key, _)| *key != setting.key);
                self.given.push((setting.key, value.clone()));
            }
        }
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = clap::Arg::new("config")
            .long("config")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file (keys as the flags below, without `--`)");
        cmd.arg(config)
            .args(crate::config::SETTINGS.iter().map(|setting| {
                let arg = clap::Arg::new(setting.key)
                    .long(setting.key)
                    .value_name(setting.value_name)
                    .help(format!("{} [default: {}]", setting.help, setting.default));
                if setting.is_switch() {
                    // `--echo` alone means true; `--echo false` is allowed too.
                    arg.num_args(0..=1).default_missing_value("true")
                } else {
                    arg
                }
            }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
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

    #[test]
    fn flags_come_through_as_settings() {
        let cli = Cli::parse_from([
            "ringcast",
            "serve",
            "--high-water",
            "1MiB",
            "--echo",
            "--limit-loopback",
            "false",
            "--drain-timeout",
            "5",
            "--config",
            "x.toml",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.config.as_deref(), Some(std::path::Path::new("x.toml")));
        let given = args.given();
        assert!(
            given.contains(&("high-water", "1MiB".to_owned())),
            "{given:?}"
        );
        assert!(given.contains(&("echo", "true".to_owned())), "{given:?}");
        assert!(given.contains(&("limit-loopback", "false".to_owned())));
        let config = crate::config::ServeConfig::load(None, &given).unwrap();
        assert_eq!(config.high_water, 1 << 20);
        assert!(config.echo && !config.limit_loopback);
        // A bare number is seconds, for every duration.
        assert_eq!(config.drain_timeout, std::time::Duration::from_secs(5));
    }
}
