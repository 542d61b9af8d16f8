//! Counters and the Prometheus text rendering of `/metrics`.
//!
//! A shard counts into plain `u64`s it alone owns and copies them into shared
//! atomics with relaxed stores once per event-loop iteration, so counting a
//! delivery is an ordinary add, never an atomic read-modify-write.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic per-shard counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    ConnectionsAccepted,
    HandshakesRejected,
    HttpRequests,
    FramesDelivered,
    BytesSent,
    SendCalls,
    MessagesFannedOut,
    FramesReceived,
    SlowClientCuts,
    SlowSseCuts,
    FramesReplayed,
    ClientErrors,
    ConnectionsRefused,
    RefusedPerIp,
    RefusedOrigin,
    RefusedHeaderSize,
    SubscriptionLimit,
    ChannelRefusals,
    AuthFailures,
}

impl Counter {
    pub const ALL: [Counter; 19] = [
        Counter::ConnectionsAccepted,
        Counter::HandshakesRejected,
        Counter::HttpRequests,
        Counter::FramesDelivered,
        Counter::BytesSent,
        Counter::SendCalls,
        Counter::MessagesFannedOut,
        Counter::FramesReceived,
        Counter::SlowClientCuts,
        Counter::SlowSseCuts,
        Counter::FramesReplayed,
        Counter::ClientErrors,
        Counter::ConnectionsRefused,
        Counter::RefusedPerIp,
        Counter::RefusedOrigin,
        Counter::RefusedHeaderSize,
        Counter::SubscriptionLimit,
        Counter::ChannelRefusals,
        Counter::AuthFailures,
    ];
    pub const COUNT: usize = Self::ALL.len();

    fn name_help(self) -> (&'static str, &'static str) {
        match self {
            Counter::ConnectionsAccepted => (
                "ringcast_connections_accepted_total",
                "TCP connections accepted.",
            ),
            Counter::HandshakesRejected => (
                "ringcast_handshakes_rejected_total",
                "Requests to a WebSocket endpoint refused with an HTTP error.",
            ),
            Counter::HttpRequests => (
                "ringcast_http_requests_total",
                "Plain HTTP requests answered (healthz, metrics, not found...).",
            ),
            Counter::FramesDelivered => (
                "ringcast_frames_delivered_total",
                "Channel messages queued to subscribed WebSocket clients.",
            ),
            Counter::BytesSent => (
                "ringcast_bytes_sent_total",
                "Bytes written to client sockets.",
            ),
            Counter::SendCalls => (
                "ringcast_send_calls_total",
                "Send operations submitted (each may carry many frames).",
            ),
            Counter::MessagesFannedOut => (
                "ringcast_shard_messages_total",
                "Feed messages this shard fanned out to its subscribers.",
            ),
            Counter::FramesReceived => (
                "ringcast_frames_received_total",
                "WebSocket messages and control frames received from clients.",
            ),
            Counter::ConnectionsRefused => (
                "ringcast_connections_refused_total",
                "Connections refused with 503 because the server or shard was at --max-connections.",
            ),
            Counter::RefusedPerIp => (
                "ringcast_connections_refused_per_ip_total",
                "Connections refused with 429: the client IP held too many or opened them too fast.",
            ),
            Counter::RefusedOrigin => (
                "ringcast_handshakes_refused_origin_total",
                "Browser upgrades refused with 403: Origin not in --allowed-origins.",
            ),
            Counter::RefusedHeaderSize => (
                "ringcast_requests_refused_header_size_total",
                "Requests refused with 431: the request head exceeded --max-request-header.",
            ),
            Counter::SubscriptionLimit => (
                "ringcast_subscription_limit_refusals_total",
                "Subscriptions refused for exceeding --max-subscriptions (400 at the handshake, error notice after).",
            ),
            Counter::ChannelRefusals => (
                "ringcast_channel_refusals_total",
                "Channels a client subscribed to that were not created: the table at the share clients may fill, the IP's hold of unpublished channels, or the connection's creation rate (1013 at the handshake, error notice after).",
            ),
            Counter::AuthFailures => (
                "ringcast_auth_failures_total",
                "Missing, invalid or expired tokens, and subscriptions outside a token's channels.",
            ),
            Counter::FramesReplayed => (
                "ringcast_frames_replayed_total",
                "History frames sent to clients resuming with since=.",
            ),
            Counter::ClientErrors => (
                "ringcast_client_errors_total",
                "Invalid control messages from clients (answered with an error notice).",
            ),
            Counter::SlowClientCuts | Counter::SlowSseCuts => (
                "ringcast_slow_client_disconnects_total",
                "Clients cut for falling behind the high-water mark (counted when cut), by transport.",
            ),
        }
    }
}

/// Point-in-time per-shard values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    ConnectionsOpen,
    WebSocketsOpen,
    QueuedBytes,
    QueuedBytesPeak,
    Subscriptions,
    /// Server-sent event streams open.
    SseStreamsOpen,
}

impl Gauge {
    pub const ALL: [Gauge; 6] = [
        Gauge::SseStreamsOpen,
        Gauge::ConnectionsOpen,
        Gauge::WebSocketsOpen,
        Gauge::QueuedBytes,
        Gauge::QueuedBytesPeak,
        Gauge::Subscriptions,
    ];
    pub const COUNT: usize = Self::ALL.len();

    fn name_help(self) -> (&'static str, &'static str) {
        match self {
            Gauge::SseStreamsOpen => (
                "ringcast_sse_streams_open",
                "Server-sent event streams open now (/sse).",
            ),
            Gauge::ConnectionsOpen => ("ringcast_connections_open", "Connections open now."),
            Gauge::WebSocketsOpen => (
                "ringcast_websockets_open",
                "WebSocket connections open now (subscribers and echo).",
            ),
            Gauge::QueuedBytes => (
                "ringcast_queued_bytes",
                "Bytes queued for clients and not yet sent.",
            ),
            Gauge::QueuedBytesPeak => (
                "ringcast_queued_bytes_peak",
                "Largest queue any single connection of this shard reached (bytes).",
            ),
            Gauge::Subscriptions => (
                "ringcast_subscriptions",
                "Channel subscriptions held by this shard's connections.",
            ),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClose,
    /// A plain HTTP request was answered (or a handshake refused).
    HttpDone,
    /// The client broke the protocol (1002).
    ProtocolError,
    /// Text that was not UTF-8 (1007).
    InvalidUtf8,
    /// A compressed message that did not inflate (1007).
    BadCompression,
    /// A message over the limit (1009).
    MessageTooBig,
    /// Over the high-water mark (4008).
    SlowClient,
    /// Too many invalid messages (1008).
    PolicyViolation,
    /// Over --client-rate or --client-bytes-rate (1008).
    RateLimited,
    /// No valid token in time, an expired one, or channels it does not
    /// cover (4001, 4003).
    AuthRefused,
    /// Silent past the ping timeout.
    PingTimeout,
    /// Handshake not completed in time.
    HandshakeTimeout,
    /// The peer vanished without a close frame (EOF or reset).
    PeerGone,
    /// Server shutting down (1001).
    Shutdown,
    /// A socket error.
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::ClientClose,
        CloseReason::HttpDone,
        CloseReason::ProtocolError,
        CloseReason::InvalidUtf8,
        CloseReason::BadCompression,
        CloseReason::MessageTooBig,
        CloseReason::SlowClient,
        CloseReason::PolicyViolation,
        CloseReason::RateLimited,
        CloseReason::AuthRefused,
        CloseReason::PingTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::PeerGone,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::HttpDone => "http_done",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::BadCompression => "bad_compression",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::SlowClient => "slow_client",
            CloseReason::PolicyViolation => "policy_violation",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::AuthRefused => "auth",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }
}

/// A shard's own counters; plain integers, owned by the shard thread.
#[derive(Debug, Clone, Default)]
pub struct LocalStats {
    pub counters: [u64; Counter::COUNT],
    pub gauges: [u64; Gauge::COUNT],
    pub closed: [u64; CloseReason::COUNT],
}

impl LocalStats {
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.counters[c as usize] += n;
    }

    #[inline]
    pub fn set(&mut self, g: Gauge, v: u64) {
        self.gauges[g as usize] = v;
    }

    #[inline]
    pub fn gauge(&self, g: Gauge) -> u64 {
        self.gauges[g as usize]
    }

    pub fn closed(&mut self, r: CloseReason) {
        self.closed[r as usize] += 1;
    }
}

/// The copy of a shard's stats that other threads read.
#[derive(Debug, Default)]
pub struct SharedStats {
    counters: [AtomicU64; Counter::COUNT],
    gauges: [AtomicU64; Gauge::COUNT],
    closed: [AtomicU64; CloseReason::COUNT],
}

impl SharedStats {
    /// Copies `local` in; plain relaxed stores, one writer.
    pub fn publish(&self, local: &LocalStats) {
        for (a, v) in self.counters.iter().zip(local.counters) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.gauges.iter().zip(local.gauges) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.closed.iter().zip(local.closed) {
            a.store(v, Relaxed);
        }
    }

    pub fn snapshot(&self) -> LocalStats {
        let mut s = LocalStats::default();
        for (v, a) in s.counters.iter_mut().zip(&self.counters) {
            *v = a.load(Relaxed);
        }
        for (v, a) in s.gauges.iter_mut().zip(&self.gauges) {
            *v = a.load(Relaxed);
        }
        for (v, a) in s.closed.iter_mut().zip(&self.closed) {
            *v = a.load(Relaxed);
        }
        s
    }
}

/// Writes a metric's HELP/TYPE header.
pub fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric with one value and no labels: its header and its line.
pub fn write_single(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    write_header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// Renders the per-shard part of `/metrics`.
/// Several [`write_single`]s: (name, help, kind, value) each.
pub fn write_singles(out: &mut String, metrics: &[(&str, &str, &str, u64)]) {
    for &(name, help, kind, value) in metrics {
        write_single(out, name, help, kind, value);
    }
}

pub fn render_shards(out: &mut String, shards: &[LocalStats]) {
    for g in Gauge::ALL {
        let (name, help) = g.name_help();
        write_header(out, name, help, "gauge");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.gauges[g as usize]);
        }
    }
    for c in Counter::ALL {
        if c == Counter::SlowSseCuts {
            continue; // rendered with SlowClientCuts, as transport="sse"
        }
        let (name, help) = c.name_help();
        write_header(out, name, help, "counter");
        for (i, s) in shards.iter().enumerate() {
            if c == Counter::SlowClientCuts {
                for (transport, counter) in [("websocket", c), ("sse", Counter::SlowSseCuts)] {
                    let _ = writeln!(
                        out,
                        "{name}{{shard=\"{i}\",transport=\"{transport}\"}} {}",
                        s.counters[counter as usize]
                    );
                }
                continue;
            }
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.counters[c as usize]);
        }
    }
    let name = "ringcast_connections_closed_total";
    write_header(out, name, "Connections closed, by reason.", "counter");
    for (i, s) in shards.iter().enumerate() {
        for r in CloseReason::ALL {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{i}\",reason=\"{}\"}} {}",
                r.label(),
                s.closed[r as usize]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_and_render() {
        let shared = SharedStats::default();
        let mut local = LocalStats::default();
        local.add(Counter::ConnectionsAccepted, 3);
        local.set(Gauge::ConnectionsOpen, 2);
        local.closed(CloseReason::PingTimeout);
        shared.publish(&local);
        let mut out = String::new();
        render_shards(&mut out, &[shared.snapshot(), LocalStats::default()]);
        assert!(out.contains("ringcast_connections_accepted_total{shard=\"0\"} 3\n"));
        assert!(out.contains("ringcast_connections_open{shard=\"0\"} 2\n"));
        assert!(out.contains("ringcast_connections_open{shard=\"1\"} 0\n"));
        assert!(out.contains(
            "ringcast_connections_closed_total{shard=\"0\",reason=\"ping_timeout\"} 1\n"
        ));
    }
}
