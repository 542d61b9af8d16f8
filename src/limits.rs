//! Per-client-IP limits: connections held, new connections per second (a
//! token bucket), and channels created that no one has published to yet.
//! Shared by every shard, since one client's connections are spread over all
//! of them; touched only when a connection opens or closes or a client
//! creates a channel, never per message.
//!
//! Entries live while their IP holds connections or channels, or until its
//! handshake bucket has refilled, so the table is bounded by the clients seen
//! in the last couple of seconds plus those holding something.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use ipnet::IpNet;

/// A connection's place in the table, or [`UNTRACKED`].
pub type PeerSlot = u32;
pub const UNTRACKED: PeerSlot = u32::MAX;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyHandshakes,
}

pub struct PeerLimits {
    max_connections: u32,
    /// Unpublished channels one IP's clients may have created and still hold.
    max_channels: u32,
    /// Handshakes per millisecond, and the bucket size; 0: no rate limit.
    rate_per_ms: f64,
    burst: f64,
    limit_loopback: bool,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_ip: HashMap<IpAddr, PeerSlot>,
    entries: Vec<Entry>,
    free: Vec<PeerSlot>,
}

struct Entry {
    ip: IpAddr,
    connections: u32,
    channels: u32,
    tokens: f64,
    refilled_at_ms: u64,
}

impl PeerLimits {
    /// A limit of 0 is no limit.
    pub fn new(
        max_connections: usize,
        handshakes_per_sec: u32,
        max_channels: usize,
        limit_loopback: bool,
    ) -> PeerLimits {
        PeerLimits {
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            max_channels: u32::try_from(max_channels).unwrap_or(u32::MAX),
            rate_per_ms: f64::from(handshakes_per_sec) / 1000.0,
            burst: 2.0 * f64::from(handshakes_per_sec),
            limit_loopback,
            table: Mutex::new(Table::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_connections > 0 || self.rate_per_ms > 0.0 || self.max_channels > 0
    }

    /// Admits a new connection from `ip` at `now_ms`, or says why not.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<PeerSlot, Refused> {
        if !self.enabled() || (ip.is_loopback() && !self.limit_loopback) {
            return Ok(UNTRACKED);
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match table.by_ip.get(&ip) {
            Some(&slot) => slot,
            None => {
                if table.entries.len() > 4096 && table.free.is_empty() {
                    self.sweep(&mut table, now_ms);
                }
                let entry = Entry {
                    ip,
                    connections: 0,
                    channels: 0,
                    tokens: self.burst,
                    refilled_at_ms: now_ms,
                };
                let slot = match table.free.pop() {
                    Some(slot) => {
                        table.entries[slot as usize] = entry;
                        slot
                    }
                    None => {
                        table.entries.push(entry);
                        (table.entries.len() - 1) as PeerSlot
                    }
                };
                table.by_ip.insert(ip, slot);
                slot
            }
        };
        let entry = &mut table.entries[slot as usize];
        if self.max_connections > 0 && entry.connections >= self.max_connections {
            return Err(Refused::TooManyConnections);
        }
        if self.rate_per_ms > 0.0 {
            self.refill(entry, now_ms);
            if entry.tokens < 1.0 {
                return Err(Refused::TooManyHandshakes);
            }
            entry.tokens -= 1.0;
        }
        entry.connections += 1;
        Ok(slot)
    }

    /// A connection admitted as `slot` has closed.
    pub fn release(&self, slot: PeerSlot) {
        if slot == UNTRACKED {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get_mut(slot as usize) {
            entry.connections = entry.connections.saturating_sub(1);
        }
    }

    /// A client of `slot` creates a channel no one has published to: counted
    /// against its IP, or refused (false) when the IP holds its limit.
    pub fn hold_channel(&self, slot: PeerSlot) -> bool {
        if slot == UNTRACKED || self.max_channels == 0 {
            return true;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = table.entries.get_mut(slot as usize) else {
            return true;
        };
        if entry.channels >= self.max_channels {
            return false;
        }
        entry.channels += 1;
        true
    }

    /// A channel held by `slot`'s IP was published to, or is gone.
    pub fn release_channel(&self, slot: PeerSlot) {
        if slot == UNTRACKED || self.max_channels == 0 {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get_mut(slot as usize) {
            entry.channels = entry.channels.saturating_sub(1);
        }
    }

    /// IPs tracked now (for /metrics).
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ip
            .len()
    }

    fn refill(&self, entry: &mut Entry, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(entry.refilled_at_ms) as f64;
        entry.tokens = (entry.tokens + elapsed * self.rate_per_ms).min(self.burst);
        entry.refilled_at_ms = now_ms;
    }

    /// Forgets IPs holding nothing whose bucket is full again.
    fn sweep(&self, table: &mut Table, now_ms: u64) {
        let mut freed = Vec::new();
        for (slot, entry) in table.entries.iter_mut().enumerate() {
            if entry.connections == 0
                && entry.channels == 0
                && table.by_ip.get(&entry.ip) == Some(&(slot as PeerSlot))
            {
                self.refill(entry, now_ms);
                if entry.tokens >= self.burst {
                    freed.push((slot as PeerSlot, entry.ip));
                }
            }
        }
        for (slot, ip) in freed {
            table.by_ip.remove(&ip);
            table.free.push(slot);
        }
    }
}

/// Whether `ip` is one of the `--trusted-proxies`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy;
/// then the nearest address of `X-Forwarded-For` (read right to left) that
/// is not a trusted proxy. Entries further left were written by the client
/// and prove nothing, so a forged header cannot pick another client's
/// budget; one it cannot parse stops the walk at the last hop vouched for.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !is_trusted(client, trusted) {
        return client;
    }
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip.to_canonical();
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// `203.0.113.5`, `2001:db8::1`, `[2001:db8::1]`, or either with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_per_ip() {
        let limits = PeerLimits::new(2, 0, 0, false);
        let a = limits.admit(ip(1), 0).unwrap();
        limits.admit(ip(1), 0).unwrap();
        assert_eq!(limits.admit(ip(1), 0), Err(Refused::TooManyConnections));
        assert!(limits.admit(ip(2), 0).is_ok(), "other IPs unaffected");
        limits.release(a);
        assert!(limits.admit(ip(1), 0).is_ok());
    }

    #[test]
    fn handshake_rate_with_burst() {
        let limits = PeerLimits::new(0, 10, 0, false);
        for _ in 0..20 {
            let s = limits.admit(ip(1), 0).unwrap();
            limits.release(s);
        }
        assert_eq!(limits.admit(ip(1), 0), Err(Refused::TooManyHandshakes));
        // 100 ms later: one more token.
        assert!(limits.admit(ip(1), 100).is_ok());
        assert_eq!(limits.admit(ip(1), 100), Err(Refused::TooManyHandshakes));
    }

    #[test]
    fn loopback_exempt_unless_asked() {
        let limits = PeerLimits::new(1, 1, 0, false);
        let lo = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..10 {
            assert_eq!(limits.admit(lo, 0), Ok(UNTRACKED));
        }
        let strict = PeerLimits::new(1, 0, 0, true);
        strict.admit(lo, 0).unwrap();
        assert_eq!(strict.admit(lo, 0), Err(Refused::TooManyConnections));
    }

    #[test]
    fn table_stays_bounded() {
        let limits = PeerLimits::new(10, 100, 0, false);
        for i in 0..20_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let slot = limits.admit(ip, u64::from(i) * 100).unwrap();
            limits.release(slot);
        }
        assert!(limits.tracked() < 10_000, "{}", limits.tracked());
    }

    #[test]
    fn unpublished_channels_per_ip() {
        let limits = PeerLimits::new(0, 0, 2, false);
        let a = limits.admit(ip(1), 0).unwrap();
        let b = limits.admit(ip(2), 0).unwrap();
        assert!(limits.hold_channel(a) && limits.hold_channel(a));
        assert!(!limits.hold_channel(a), "a third is refused");
        assert!(limits.hold_channel(b), "other IPs unaffected");
        limits.release_channel(a);
        assert!(limits.hold_channel(a));
        // An IP that holds channels is remembered after its connections close.
        limits.release(a);
        let mut table = limits.table.lock().unwrap();
        limits.sweep(&mut table, 1_000_000);
        assert_eq!(table.by_ip.get(&ip(1)), Some(&a));
        assert_eq!(table.by_ip.get(&ip(2)), Some(&b), "b still connected");
        drop(table);
        assert!(
            limits.hold_channel(UNTRACKED),
            "untracked clients are not counted"
        );
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let proxies = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let client = |peer: &str, xff: Option<&str>| client_ip(ip(peer), xff, &proxies);
        // Not from a proxy: the header is ignored.
        assert_eq!(
            client("203.0.113.9", Some("198.51.100.1")),
            ip("203.0.113.9")
        );
        // From a proxy: the nearest untrusted hop.
        assert_eq!(
            client("127.0.0.1", Some("198.51.100.1")),
            ip("198.51.100.1")
        );
        assert_eq!(
            client("127.0.0.1", Some("6.6.6.6, 198.51.100.1, 10.1.2.3")),
            ip("198.51.100.1"),
            "a forged entry on the left is not believed"
        );
        assert_eq!(
            client("127.0.0.1", Some("[2001:db8::7]:4711")),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("127.0.0.1", Some("198.51.100.1:80")),
            ip("198.51.100.1")
        );
        // Nothing usable: the last address vouched for.
        assert_eq!(client("127.0.0.1", None), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", Some("")), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", Some("junk, 10.0.0.5")), ip("10.0.0.5"));
        // Every hop trusted: the leftmost.
        assert_eq!(
            client("127.0.0.1", Some("10.0.0.1, 10.0.0.2")),
            ip("10.0.0.1")
        );
        // An IPv4 peer seen through an IPv6 socket.
        assert_eq!(
            client("::ffff:127.0.0.1", Some("198.51.100.1")),
            ip("198.51.100.1")
        );
    }
}
