//! `serve` settings: embedded defaults, then the TOML file (`--config`), then
//! flags. Both sources go through one parser per key, so a bad value gives the
//! same clear error whether it came from a flag or the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `serve` can be told. Each default is chosen for a single box
/// serving many browsers; the comment says why.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// WebSocket + HTTP listener. Loopback by default: exposing a server is a
    /// decision the operator makes explicitly (usually behind nginx or an LB).
    pub listen: SocketAddr,
    /// UDP feed (one datagram = one message); `None` when `off`.
    pub udp: Option<SocketAddr>,
    /// Unix stream feed (one message per line); `None` when `off`.
    pub unix: Option<PathBuf>,
    /// Shards (threads, one per CPU); `None` = every CPU the process may use.
    pub shards: Option<usize>,
    /// Per-connection queued-bytes limit: 4 MiB holds ~30k typical 128-byte
    /// messages, ample for a burst, small enough that 100 stuck clients cost
    /// at most 400 MiB before they are cut.
    pub high_water: u64,
    /// Largest message a client may send on `/ws` (control messages are tiny;
    /// 64 KiB leaves room and bounds what a client can make us buffer).
    pub max_message: usize,
    /// Largest message a client may send on `/echo` (conformance suites send 16 MiB).
    pub echo_max_message: usize,
    /// Largest feed message (a UDP datagram or a Unix line).
    pub max_feed_message: usize,
    /// Server ping period: 30 s keeps NAT and proxy idle timers (often 60 s) open.
    pub ping_interval: Duration,
    /// How long a pinged client may stay silent before it is closed.
    pub ping_timeout: Duration,
    /// A handshake not completed within this is dropped (slowloris).
    pub handshake_timeout: Duration,
    /// Serve `/echo` (conformance testing); off in production.
    pub echo: bool,
    /// Provided receive buffers per shard and their size. Shared by all the
    /// shard's connections: idle sockets hold no buffer.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Channels the server keeps track of; bounds the channel table whatever
    /// publishers and clients ask for.
    pub max_channels: usize,
    /// Messages kept per channel for `since=` resume (0 disables history).
    /// 1,000 covers a reconnect after a deploy at typical rates.
    pub history: usize,
    /// Bytes kept per channel (whichever bound is hit first).
    pub history_bytes: u64,
    /// Bytes kept across all channels: the server-wide bound.
    pub history_total: u64,
    /// Channels with no subscriber and no message for this long are dropped
    /// (their seq starts again at 1 if they come back).
    pub channel_ttl: Duration,
    /// Messages per second a `/ws` client may send (burst: twice that).
    /// Clients only send control messages; 50/s is far above honest use.
    pub client_rate: u32,
    /// Connections the server accepts in all; `None` = as many as the
    /// open-files limit allows. Past it, new connections get a 503.
    pub max_connections: Option<usize>,
    /// Connections one shard accepts; `None` = no per-shard limit.
    pub max_connections_per_shard: Option<usize>,
    /// On SIGTERM, how long clients get to go after their 1001 before the
    /// rest is cut. 10 s covers a close handshake on a slow mobile link.
    pub drain_timeout: Duration,
    /// Kernel send buffer per client socket (`SO_SNDBUF`); `None` leaves
    /// it to the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s max, 4 MiB
    /// by default). A stuck client holds up to this in kernel memory before
    /// ringcast's own queue (`high-water`) starts to fill.
    pub send_buffer: Option<u64>,
    /// Require a signed token (see `auth`): the file holding the secret(s).
    /// Off by default.
    pub auth_secret_file: Option<PathBuf>,
    /// With auth on, a client that connected without a token has this long
    /// to send `{"type":"auth","token":…}` before it is closed (4001).
    pub auth_timeout: Duration,
    /// Origins a browser may connect from (`https://app.example.com`,
    /// `https://*.example.com`); empty: any. Requests without an Origin
    /// header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Connections one client IP may hold (0: no limit). Generous, for
    /// offices and carrier NAT sharing an address.
    pub max_connections_per_ip: usize,
    /// New connections per second one client IP may open (bursts of twice
    /// that; 0: no limit): reconnect storms pass, floods do not.
    pub handshake_rate_per_ip: u32,
    /// Apply the per-IP limits to loopback peers too. Off by default: on
    /// loopback the peer is usually a local proxy (nginx) carrying everyone.
    pub limit_loopback: bool,
    /// Proxies whose `X-Forwarded-For` names the real client: the per-IP
    /// limits then apply to that client, not to the proxy.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest HTTP request head (request line + headers); larger gets 431.
    pub max_request_header: usize,
    /// Bytes per second a `/ws` client may send (bursts of twice that, or of
    /// two maximal messages); above it, close 1008.
    pub client_bytes_rate: u64,
    /// Log output format.
    pub log_format: LogFormat,
    /// The shards' I/O driver: io_uring where it works end to end, epoll
    /// elsewhere (`auto`), or one of them by name.
    pub io: crate::driver::probe::IoChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            udp: Some("127.0.0.1:9000".parse().expect("valid literal")),
            unix: Some(PathBuf::from("./ringcast.sock")),
            shards: None,
            high_water: 4 * 1024 * 1024,
            max_message: 64 * 1024,
            echo_max_message: 16 * 1024 * 1024,
            max_feed_message: 1024 * 1024,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            echo: false,
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            max_subscriptions: 100,
            max_channels: 100_000,
            history: 1000,
            history_bytes: 16 * 1024 * 1024,
            history_total: 512 * 1024 * 1024,
            channel_ttl: Duration::from_secs(3600),
            client_rate: 50,
            max_connections: None,
            max_connections_per_shard: None,
            drain_timeout: Duration::from_secs(10),
            send_buffer: None,
            auth_secret_file: None,
            auth_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_connections_per_ip: 1000,
            handshake_rate_per_ip: 100,
            limit_loopback: false,
            trusted_proxies: Vec::new(),
            max_request_header: 8 * 1024,
            client_bytes_rate: 64 * 1024,
            log_format: LogFormat::Text,
            io: crate::driver::probe::IoChoice::Auto,
        }
    }
}

/// Every key, as written in the TOML file and (with `--`) on the command line.
pub const KEYS: &[&str] = &[
    "listen",
    "udp",
    "unix",
    "shards",
    "high-water",
    "max-message",
    "echo-max-message",
    "max-feed-message",
    "ping-interval",
    "ping-timeout",
    "handshake-timeout",
    "echo",
    "recv-buffers",
    "recv-buffer-size",
    "max-subscriptions",
    "max-channels",
    "history",
    "history-bytes",
    "history-total",
    "channel-ttl",
    "client-rate",
    "max-connections",
    "max-connections-per-shard",
    "drain-timeout",
    "send-buffer",
    "auth-secret-file",
    "auth-timeout",
    "allowed-origins",
    "max-connections-per-ip",
    "handshake-rate-per-ip",
    "limit-loopback",
    "trusted-proxies",
    "max-request-header",
    "client-bytes-rate",
    "log-format",
    "io",
];

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

    /// Sets one key from its text form. The error says what is accepted.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "listen" => self.listen = parse_addr(value)?,
            "udp" => self.udp = parse_off(value).map(parse_addr).transpose()?,
            "unix" => {
                self.unix = parse_off(value)
                    .map(|p| {
                        if p.is_empty() {
                            Err("expected a path or 'off'".to_owned())
                        } else {
                            Ok(PathBuf::from(p))
                        }
                    })
                    .transpose()?
            }
            "shards" => self.shards = Some(parse_count(value, 1, 1024)?),
            "high-water" => self.high_water = parse_size(value, 1024, 1 << 40)?,
            "max-message" => self.max_message = parse_size(value, 125, 1 << 30)? as usize,
            "echo-max-message" => self.echo_max_message = parse_size(value, 125, 1 << 30)? as usize,
            "max-feed-message" => self.max_feed_message = parse_size(value, 64, 64 << 20)? as usize,
            "ping-interval" => self.ping_interval = parse_duration(value)?,
            "ping-timeout" => self.ping_timeout = parse_duration(value)?,
            "handshake-timeout" => self.handshake_timeout = parse_duration(value)?,
            "echo" => self.echo = parse_bool(value)?,
            "recv-buffers" => {
                let n = parse_count(value, 16, 32768)?;
                if !n.is_power_of_two() {
                    return Err("must be a power of two between 16 and 32768".into());
                }
                self.recv_buffers = n as u16;
            }
            "recv-buffer-size" => self.recv_buffer_size = parse_size(value, 512, 1 << 20)? as u32,
            "max-subscriptions" => self.max_subscriptions = parse_count(value, 1, 100_000)?,
            "max-channels" => self.max_channels = parse_count(value, 1, 100_000_000)?,
            "history" => self.history = parse_count(value, 0, 10_000_000)?,
            "history-bytes" => self.history_bytes = parse_size(value, 0, 1 << 40)?,
            "history-total" => self.history_total = parse_size(value, 0, 1 << 44)?,
            "channel-ttl" => self.channel_ttl = parse_duration(value)?,
            "client-rate" => self.client_rate = parse_count(value, 1, 1_000_000)? as u32,
            "max-connections" => self.max_connections = Some(parse_count(value, 1, 100_000_000)?),
            "max-connections-per-shard" => {
                self.max_connections_per_shard = Some(parse_count(value, 1, 100_000_000)?)
            }
            "drain-timeout" => self.drain_timeout = parse_duration(value)?,
            "send-buffer" => {
                self.send_buffer = parse_off(value)
                    .map(|v| parse_size(v, 4096, 1 << 30))
                    .transpose()?
            }
            "auth-secret-file" => self.auth_secret_file = parse_off(value).map(PathBuf::from),
            "auth-timeout" => self.auth_timeout = parse_duration(value)?,
            "allowed-origins" => {
                self.allowed_origins = parse_list(value, "*", |o| {
                    parse_origin_pattern(o).map(|()| o.to_ascii_lowercase())
                })?
            }
            "max-connections-per-ip" => {
                self.max_connections_per_ip = parse_count(value, 0, 100_000_000)?
            }
            "handshake-rate-per-ip" => {
                self.handshake_rate_per_ip = parse_count(value, 0, 1_000_000)? as u32
            }
            "limit-loopback" => self.limit_loopback = parse_bool(value)?,
            "trusted-proxies" => self.trusted_proxies = parse_list(value, "off", parse_network)?,
            "max-request-header" => {
                self.max_request_header = parse_size(value, 1024, 64 * 1024)? as usize
            }
            "client-bytes-rate" => self.client_bytes_rate = parse_size(value, 1024, 1 << 30)?,
            "log-format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err("expected 'text' or 'json'".into()),
                }
            }
            "io" => self.io = crate::driver::probe::IoChoice::parse(value)?,
            _ => {
                return Err(format!(
                    "unknown setting '{key}' (known: {})",
                    KEYS.join(", ")
                ));
            }
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

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|_| "expected a duration such as 30s, 500ms or 2m".to_owned())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
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
