//! `serve` settings: embedded defaults, then the TOML file (`--config`), then
//! flags. Both sources go through one parser per key, so a bad value gives the
//! same clear error whether it came from a flag or the file.
//!
//! Every setting is declared once, in the `settings!` table below: its field,
//! default, key (the TOML key, and the flag with `--`), help text and parser.
//! The struct, its defaults, the key list, the parser dispatch and the
//! command-line flags (`cli::ServeArgs`) all come from that table, so a new
//! setting is one entry here plus the code that uses it (and its line in the
//! example config and the README, which tests check).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::driver::probe::IoChoice;

/// One setting, as the command line and the docs see it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The TOML key; `--key` on the command line.
    pub key: &'static str,
    /// What the value is (`BYTES`, `DURATION`…); `BOOL` for switches, which
    /// may be given as a bare `--key`.
    pub value_name: &'static str,
    pub help: &'static str,
    /// The default, as the help shows it.
    pub default: &'static str,
}

impl Setting {
    pub fn is_switch(&self) -> bool {
        self.value_name == "BOOL"
    }
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $default:expr;
        $key:literal, $value_name:literal, $shown:literal, $help:literal,
        $parse:expr;
    )*) => {
        /// Everything `serve` can be told. Each default is chosen for a single
        /// box serving many browsers; the comment says why.
        #[derive(Debug, Clone, PartialEq)]
        pub struct ServeConfig {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for ServeConfig {
            fn default() -> Self {
                ServeConfig { $( $field: $default, )* }
            }
        }

        /// Every setting, in the order the help lists them.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { key: $key, value_name: $value_name, help: $help, default: $shown }, )*
        ];

        /// Every key, as written in the TOML file and (with `--`) on the command line.
        pub const KEYS: &[&str] = &[ $( $key, )* ];

        impl ServeConfig {
            /// Sets one key from its text form. The error says what is accepted.
            pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
                $(
                    if key == $key {
                        let parse: fn(&str) -> Result<$ty, String> = $parse;
                        self.$field = parse(value)?;
                        return Ok(());
                    }
                )*
                Err(format!("unknown setting '{key}' (known: {})", KEYS.join(", ")))
            }
        }
    };
}

settings! {
    /// WebSocket + HTTP listener. Loopback by default: exposing a server is a
    /// decision the operator makes explicitly (usually behind nginx or an LB).
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
    "listen", "ADDR", "127.0.0.1:8080", "WebSocket + HTTP listener",
    parse_addr;

    /// UDP feed (one datagram = one message); `None` when `off`.
    udp: Option<SocketAddr> = Some(SocketAddr::from(([127, 0, 0, 1], 9000)));
    "udp", "ADDR", "127.0.0.1:9000", "UDP feed socket, or `off`",
    |v| parse_off(v).map(parse_addr).transpose();

    /// Unix stream feed (one message per line); `None` when `off`.
    unix: Option<PathBuf> = Some(PathBuf::from("./ringcast.sock"));
    "unix", "PATH", "./ringcast.sock", "Unix stream feed socket, or `off`",
    |v| match parse_off(v) {
        Some("") => Err("expected a path or 'off'".into()),
        other => Ok(other.map(PathBuf::from)),
    };

    /// Shards (threads, one per CPU); `None` = every CPU the process may use.
    shards: Option<usize> = None;
    "shards", "N", "CPUs allowed to the process", "Shards (threads, each pinned to a CPU)",
    |v| parse_count(v, 1, 1024).map(Some);

    /// Per-connection queued-bytes limit: 4 MiB holds ~30k typical 128-byte
    /// messages, ample for a burst, small enough that 100 stuck clients cost
    /// at most 400 MiB before they are cut.
    high_water: u64 = 4 * 1024 * 1024;
    "high-water", "BYTES", "4MiB", "Per-connection queued-bytes limit; above it the client is disconnected (4008)",
    |v| parse_size(v, 1024, 1 << 40);

    /// Largest message a client may send on `/ws` (control messages are tiny;
    /// 64 KiB leaves room and bounds what a client can make us buffer).
    max_message: usize = 64 * 1024;
    "max-message", "BYTES", "64KiB", "Largest message a /ws client may send",
    |v| parse_size(v, 125, 1 << 30).map(|n| n as usize);

    /// Largest message a client may send on `/echo` (conformance suites send 16 MiB).
    echo_max_message: usize = 16 * 1024 * 1024;
    "echo-max-message", "BYTES", "16MiB", "Largest message on /echo",
    |v| parse_size(v, 125, 1 << 30).map(|n| n as usize);

    /// permessage-deflate with clients that offer it (every browser does).
    /// Each broadcast message is compressed once for all of them, so it costs
    /// next to nothing per client while cutting JSON traffic 3-5x.
    compression: bool = true;
    "compression", "on|off", "on", "Negotiate permessage-deflate; each message is compressed once for every client that takes it",
    parse_bool;

    /// Messages smaller than this go uncompressed: deflate gains little on
    /// them and costs its fixed overhead.
    compression_min_size: usize = 256;
    "compression-min-size", "BYTES", "256", "Messages (the delivered JSON text) shorter than this are sent uncompressed",
    |v| parse_size(v, 0, 1 << 30).map(|n| n as usize);

    /// Largest feed message (a UDP datagram or a Unix line).
    max_feed_message: usize = 1024 * 1024;
    "max-feed-message", "BYTES", "1MiB", "Largest feed message (UDP datagram or Unix line)",
    |v| parse_size(v, 64, 64 << 20).map(|n| n as usize);

    /// Server ping period: 30 s keeps NAT and proxy idle timers (often 60 s) open.
    ping_interval: Duration = Duration::from_secs(30);
    "ping-interval", "DURATION", "30s", "Server ping period",
    parse_duration;

    /// How long a pinged client may stay silent before it is closed.
    ping_timeout: Duration = Duration::from_secs(10);
    "ping-timeout", "DURATION", "10s", "Close a client silent this long after a ping",
    parse_duration;

    /// A handshake not completed within this is dropped (slowloris).
    handshake_timeout: Duration = Duration::from_secs(5);
    "handshake-timeout", "DURATION", "5s", "Drop connections that have not completed the handshake by then",
    parse_duration;

    /// Serve `/echo` (conformance testing); off in production.
    echo: bool = false;
    "echo", "BOOL", "false", "Serve /echo, which echoes every message (for conformance suites)",
    parse_bool;

    /// Provided receive buffers per shard (io_uring driver). Shared by all the
    /// shard's connections: idle sockets hold no buffer.
    recv_buffers: u16 = 1024;
    "recv-buffers", "N", "1024", "Receive buffers per shard (io_uring driver), a power of two",
    |v| match parse_count(v, 16, 32768)? {
        n if n.is_power_of_two() => Ok(n as u16),
        _ => Err("must be a power of two between 16 and 32768".into()),
    };

    /// Size of each receive buffer.
    recv_buffer_size: u32 = 4096;
    "recv-buffer-size", "BYTES", "4KiB", "Size of each receive buffer (io_uring driver)",
    |v| parse_size(v, 512, 1 << 20).map(|n| n as u32);

    /// Channels one connection may subscribe to.
    max_subscriptions: usize = 100;
    "max-subscriptions", "N", "100", "Channels one connection may subscribe to",
    |v| parse_count(v, 1, 100_000);

    /// Channels the server keeps track of; bounds the channel table whatever
    /// publishers and clients ask for.
    max_channels: usize = 100_000;
    "max-channels", "N", "100000", "Channels the server tracks in all",
    |v| parse_count(v, 1, 100_000_000);

    /// Messages kept per channel for `since=` resume (0 disables history).
    /// 1,000 covers a reconnect after a deploy at typical rates.
    history: usize = 1000;
    "history", "N", "1000", "Messages kept per channel for `since=` resume; 0 disables",
    |v| parse_count(v, 0, 10_000_000);

    /// Bytes kept per channel (whichever bound is hit first).
    history_bytes: u64 = 16 * 1024 * 1024;
    "history-bytes", "BYTES", "16MiB", "Bytes kept per channel for resume",
    |v| parse_size(v, 0, 1 << 40);

    /// Bytes kept across all channels: the server-wide bound.
    history_total: u64 = 512 * 1024 * 1024;
    "history-total", "BYTES", "512MiB", "Bytes of history kept across all channels",
    |v| parse_size(v, 0, 1 << 44);

    /// Channels with no subscriber and no message for this long are dropped
    /// (their seq starts again at 1 if they come back).
    channel_ttl: Duration = Duration::from_secs(3600);
    "channel-ttl", "DURATION", "1h", "Drop channels idle (no subscriber, no message) this long",
    parse_duration;

    /// Messages per second a `/ws` client may send (burst: twice that).
    /// Clients only send control messages; 50/s is far above honest use.
    client_rate: u32 = 50;
    "client-rate", "N", "50", "Messages per second a /ws client may send before it is closed (1008)",
    |v| parse_count(v, 1, 1_000_000).map(|n| n as u32);

    /// Connections the server accepts in all; `None` = as many as the
    /// open-files limit allows. Past it, new connections get a 503.
    max_connections: Option<usize> = None;
    "max-connections", "N", "what the open-files limit allows", "Connections accepted in all; past it, 503",
    |v| parse_count(v, 1, 100_000_000).map(Some);

    /// Connections one shard accepts; `None` = no per-shard limit.
    max_connections_per_shard: Option<usize> = None;
    "max-connections-per-shard", "N", "no per-shard limit", "Connections one shard accepts",
    |v| parse_count(v, 1, 100_000_000).map(Some);

    /// On SIGTERM, how long clients get to go after their 1001 before the
    /// rest is cut. 10 s covers a close handshake on a slow mobile link.
    drain_timeout: Duration = Duration::from_secs(10);
    "drain-timeout", "DURATION", "10s", "On SIGTERM, how long clients get to leave after their 1001",
    parse_duration;

    /// Kernel send buffer per client socket (`SO_SNDBUF`); `None` leaves
    /// it to the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s max, 4 MiB
    /// by default). A stuck client holds up to this in kernel memory before
    /// ringcast's own queue (`high-water`) starts to fill.
    send_buffer: Option<u64> = None;
    "send-buffer", "BYTES", "off", "Kernel send buffer per client socket, or `off` for the kernel's autotuning",
    |v| parse_off(v).map(|v| parse_size(v, 4096, 1 << 30)).transpose();

    /// Require a signed token (see `auth`): the file holding the secret(s).
    /// Off by default.
    auth_secret_file: Option<PathBuf> = None;
    "auth-secret-file", "FILE", "off", "Require signed tokens; the file holds the secret(s), one per line",
    |v| Ok(parse_off(v).map(PathBuf::from));

    /// With auth on, a client that connected without a token has this long
    /// to send `{"type":"auth","token":…}` before it is closed (4001).
    auth_timeout: Duration = Duration::from_secs(10);
    "auth-timeout", "DURATION", "10s", "Time a client without a token has to send an auth message",
    parse_duration;

    /// Origins a browser may connect from (`https://app.example.com`,
    /// `https://*.example.com`); empty: any. Requests without an Origin
    /// header (non-browser clients) are not affected.
    allowed_origins: Vec<String> = Vec::new();
    "allowed-origins", "ORIGINS", "any", "Origins browsers may connect from, comma-separated; `*.` wildcards",
    |v| parse_list(v, "*", |o| parse_origin_pattern(o).map(|()| o.to_ascii_lowercase()));

    /// Connections one client IP may hold (0: no limit). Generous, for
    /// offices and carrier NAT sharing an address.
    max_connections_per_ip: usize = 1000;
    "max-connections-per-ip", "N", "1000", "Connections one client IP may hold; 0 = no limit",
    |v| parse_count(v, 0, 100_000_000);

    /// Channels no one has published to that one client IP's connections
    /// may have created and still hold (0: no limit). Such a channel is
    /// dropped when its last subscriber leaves.
    max_new_channels_per_ip: usize = 1000;
    "max-new-channels-per-ip", "N", "1000", "Channels no one has published to yet that one client IP may create and hold; 0 = no limit",
    |v| parse_count(v, 0, 100_000_000);

    /// New connections per second one client IP may open (bursts of twice
    /// that; 0: no limit): reconnect storms pass, floods do not.
    handshake_rate_per_ip: u32 = 100;
    "handshake-rate-per-ip", "N", "100", "New connections per second per client IP (bursts of 2x); 0 = no limit",
    |v| parse_count(v, 0, 1_000_000).map(|n| n as u32);

    /// Apply the per-IP limits to loopback peers too. Off by default: on
    /// loopback the peer is usually a local proxy (nginx) carrying everyone.
    limit_loopback: bool = false;
    "limit-loopback", "BOOL", "false", "Apply per-IP limits to loopback peers too (off: a local proxy carries everyone)",
    parse_bool;

    /// Proxies whose `X-Forwarded-For` names the real client: the per-IP
    /// limits then apply to that client, not to the proxy.
    trusted_proxies: Vec<ipnet::IpNet> = Vec::new();
    "trusted-proxies", "NETWORKS", "none", "Proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the client for the per-IP limits",
    |v| parse_list(v, "off", parse_network);

    /// Largest HTTP request head (request line + headers); larger gets 431.
    max_request_header: usize = 8 * 1024;
    "max-request-header", "BYTES", "8KiB", "Largest HTTP request head; larger gets 431",
    |v| parse_size(v, 1024, 64 * 1024).map(|n| n as usize);

    /// Bytes per second a `/ws` client may send (bursts of twice that, or of
    /// two maximal messages); above it, close 1008.
    client_bytes_rate: u64 = 64 * 1024;
    "client-bytes-rate", "BYTES", "64KiB", "Bytes per second a /ws client may send before it is closed (1008)",
    |v| parse_size(v, 1024, 1 << 30);

    /// Log output format.
    log_format: LogFormat = LogFormat::Text;
    "log-format", "FORMAT", "text", "Log format: text or json",
    |v| match v {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected 'text' or 'json'".into()),
    };

    /// Where the status page and `/metrics` are served; `None`: on `listen`,
    /// with everything else.
    /// An address of its own (loopback, a private network) keeps the page,
    /// which names channels and counts clients, off the public listener.
    metrics_listen: Option<SocketAddr> = None;
    "metrics-listen", "ADDR", "off (on --listen)", "Serve the status page, /status.json and /metrics on this address only (e.g. a private one) instead of on --listen",
    |v| parse_off(v).map(parse_addr).transpose();

    /// The fleet's Redis: with it, this node is one of a fleet (every node
    /// delivers the same seqs, clients resume on any); without, it stands
    /// alone.
    redis: Option<String> = None;
    "redis", "URL", "off (a single node)", "Join a fleet over this Redis (redis://host:port/db): the same seqs on every node, resume on any",
    |v| parse_off(v).map(parse_redis_url).transpose();

    /// Prefix of the fleet's keys and pub/sub channels in Redis: fleets
    /// that share a Redis need one each.
    redis_prefix: String = "ringcast".to_owned();
    "redis-prefix", "PREFIX", "ringcast", "Prefix of the fleet's keys and channels in Redis (one per fleet sharing a Redis)",
    |v| if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        Ok(v.to_owned())
    } else {
        Err("expected 1-64 characters of A-Z a-z 0-9 . _ -".into())
    };

    /// The shards' I/O driver: io_uring where it works end to end, epoll
    /// elsewhere (`auto`), or one of them by name.
    io: IoChoice = IoChoice::Auto;
    "io", "DRIVER", "auto", "I/O driver: auto (io_uring where it works, else epoll), io-uring, or epoll",
    IoChoice::parse;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration error, worded for the person who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ServeConfig {
    /// Defaults, overlaid by the file (if any), overlaid by `flags`
    /// (`(key, value)` pairs of the flags the user actually gave).
    pub fn load(file: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut config = ServeConfig::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            config.apply_toml(&text).map_err(|ConfigError(msg)| {
                ConfigError(format!("config file {}: {msg}", path.display()))
            })?;
        }
        for (key, value) in flags {
            config
                .set(key, value)
                .map_err(|msg| ConfigError(format!("invalid --{key} '{value}': {msg}")))?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(format!("not valid TOML: {e}")))?;
        for (raw_key, value) in &table {
            let key = raw_key.replace('_', "-");
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "key '{raw_key}': expected a string, number or boolean, found {}",
                        other.type_str()
                    )));
                }
            };
            self.set(&key, &text)
                .map_err(|msg| ConfigError(format!("invalid {raw_key} = {value}: {msg}")))?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_interval < Duration::from_millis(100) {
            return Err(ConfigError("ping-interval must be at least 100ms".into()));
        }
        if self.ping_timeout < Duration::from_millis(100) {
            return Err(ConfigError("ping-timeout must be at least 100ms".into()));
        }
        if self.channel_ttl < Duration::from_secs(1) {
            return Err(ConfigError("channel-ttl must be at least 1s".into()));
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            return Err(ConfigError(
                "handshake-timeout must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

/// A comma-separated list, each item parsed by `item`; empty items and the
/// word that means "none" (`none_word`) are skipped.
fn parse_list<T>(
    value: &str,
    none_word: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != none_word)
        .map(item)
        .collect()
}

/// `10.0.0.0/8`, or one address (`127.0.0.1`, `::1`).
fn parse_network(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{value}' is not an address or network (e.g. 10.0.0.0/8, 127.0.0.1)"))
}

/// `scheme://host[:port]`, where host may start with `*.`.
fn parse_origin_pattern(value: &str) -> Result<(), String> {
    if !value.is_ascii() {
        return Err(format!(
            "'{value}' is not an origin as browsers send it: they send host names in their ASCII \
             (punycode) form, e.g. https://xn--9ca.example for https://é.example; write it that way"
        ));
    }
    let ok = value.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && !host.is_empty()
            && !host.contains('/')
            && !host.chars().skip(1).any(|c| c == '*')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not an origin: expected scheme://host[:port], e.g. https://app.example.com or https://*.example.com"
        ))
    }
}

fn parse_off(value: &str) -> Option<&str> {
    if value.eq_ignore_ascii_case("off") {
        None
    } else {
        Some(value)
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080".to_owned())
}

fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

fn parse_size(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let size: bytesize::ByteSize = value
        .trim()
        .parse()
        .map_err(|_| "expected a size such as 65536, 64KiB or 4MiB".to_owned())?;
    let n = size.as_u64();
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between {} and {}",
            bytesize::ByteSize(min).display().iec(),
            bytesize::ByteSize(max).display().iec()
        ))
    }
}

/// `30s`, `500ms`, `2m`; a bare number is seconds, as in systemd. Every
/// duration ringcast takes (settings, `bench`, `token`) is read this way.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|_| {
        "expected a duration such as 30s, 500ms or 2m (a bare number is seconds)".to_owned()
    })
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A Redis URL the client library accepts (checked now, so a typo is an
/// error at start rather than a fleet that never connects).
fn parse_redis_url(v: &str) -> Result<String, String> {
    redis::Client::open(v)
        .map(|_| v.to_owned())
        .map_err(|e| format!("not a Redis URL ({e}); expected redis://host:port/db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_interface() {
        let c = ServeConfig::load(None, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.udp.unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(c.unix.unwrap(), PathBuf::from("./ringcast.sock"));
        assert_eq!(c.high_water, 4 << 20);
        assert_eq!(c.ping_interval, Duration::from_secs(30));
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nhigh_water = \"1MiB\"\nudp = \"off\"\nshards = 3\n",
        )
        .unwrap();
        let c = ServeConfig::load(Some(&path), &[("listen", "127.0.0.1:2".into())]).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.high_water, 1 << 20);
        assert_eq!(c.udp, None);
        assert_eq!(c.shards, Some(3));
    }

    #[test]
    fn the_readme_documents_every_flag() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            assert!(
                readme.contains(&format!("| `--{key}")),
                "README.md's serve flags table has no row for --{key}"
            );
        }
    }

    #[test]
    fn example_config_parses_and_documents_every_key() {
        let text = include_str!("../systemd/ringcast.toml");
        let mut c = ServeConfig::default();
        c.apply_toml(text).unwrap();
        c.validate().unwrap();
        for key in KEYS {
            assert!(
                text.contains(&format!("\n{key} =")) || text.contains(&format!("# {key} =")),
                "systemd/ringcast.toml does not mention {key}"
            );
        }
    }

    #[test]
    fn a_non_ascii_origin_is_an_error_not_a_panic() {
        let e = ServeConfig::load(None, &[("allowed-origins", "https://é.example".into())])
            .unwrap_err();
        assert!(e.0.contains("--allowed-origins"), "{e}");
        assert!(e.0.contains("punycode"), "{e}");
        let e = ServeConfig::load(None, &[("allowed-origins", "é".into())]).unwrap_err();
        assert!(e.0.contains("not an origin"), "{e}");
        let c = ServeConfig::load(
            None,
            &[("allowed-origins", "https://xn--9ca.example".into())],
        )
        .unwrap();
        assert_eq!(
            c.allowed_origins,
            vec!["https://xn--9ca.example".to_owned()]
        );
    }

    #[test]
    fn io_driver_setting() {
        use crate::driver::probe::IoChoice;
        assert_eq!(ServeConfig::default().io, IoChoice::Auto);
        let c = ServeConfig::load(None, &[("io", "epoll".into())]).unwrap();
        assert_eq!(c.io, IoChoice::Epoll);
        let e = ServeConfig::load(None, &[("io", "kqueue".into())]).unwrap_err();
        assert!(e.0.contains("--io 'kqueue'"), "{e}");
    }

    #[test]
    fn errors_name_the_bad_value() {
        let e = ServeConfig::load(None, &[("high-water", "lots".into())]).unwrap_err();
        assert!(e.0.contains("--high-water 'lots'"), "{e}");
        let e = ServeConfig::load(None, &[("allowed-origins", "example.com".into())]).unwrap_err();
        assert!(e.0.contains("not an origin"), "{e}");
        let e = ServeConfig::load(None, &[("trusted-proxies", "10.0.0.0/33".into())]).unwrap_err();
        assert!(e.0.contains("not an address or network"), "{e}");
        let c = ServeConfig::load(None, &[("trusted-proxies", "127.0.0.1, 10.0.0.0/8".into())])
            .unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let e = ServeConfig::load(None, &[("shards", "0".into())]).unwrap_err();
        assert!(e.0.contains("--shards '0'"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = ServeConfig::load(Some(&path), &[]).unwrap_err();
        assert!(e.0.contains("unknown setting 'bogus'"), "{e}");
    }
}
