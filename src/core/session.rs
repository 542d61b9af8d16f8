//! An open WebSocket: client frames, control messages, protocol errors, and
//! the per-connection limits on what a client may send.

use super::*;

use crate::protocol::channel::is_valid_channel_name;
use crate::protocol::control::{self, ClientMessage, parse_client_message};
use crate::protocol::deflate::Deflater;
use crate::protocol::reader::{Event, Flow, FrameReader, Violation};

/// A message a subscriber sent, kept until the reader is done with the bytes.
enum Inbound {
    Text(Vec<u8>),
    Binary,
}

impl ShardCore {
    pub(super) fn on_frames(&mut self, slot: u32, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let echo = conn.endpoint == Endpoint::Echo;
        let limit = if echo {
            self.config.echo_max_message
        } else {
            self.config.max_message
        };
        let deflate = conn.deflate;
        let Input::Frames(reader_slot) = &mut conn.input else {
            return;
        };
        let reader = reader_slot.get_or_insert_with(|| {
            Box::new(match deflate {
                Some(_) => FrameReader::with_deflate(limit),
                None => FrameReader::new(limit),
            })
        });
        let out = &mut conn.out;
        let mut echo_deflater = match deflate {
            Some(agreement) if echo => self.echo_deflaters.get(agreement.server_window_bits),
            _ => None,
        };
        let min_size = self.config.compression_min_size;
        let mut queued = 0u64;
        let mut received = 0u64;
        let mut inbound = Vec::new();
        let mut client_close: Option<Option<u16>> = None;
        let result = reader.feed(data, &mut |event| {
            received += 1;
            match event {
                Event::Message { binary, payload } => {
                    if echo {
                        let op = if binary { OpCode::Binary } else { OpCode::Text };
                        queued += match echo_deflater.as_deref_mut() {
                            Some(deflater) if payload.len() >= min_size => {
                                push_compressed(out, op, payload, deflater)
                            }
                            _ => push_message(out, op, payload),
                        };
                    } else if binary {
                        inbound.push(Inbound::Binary);
                    } else {
                        inbound.push(Inbound::Text(std::mem::take(payload)));
                    }
                    Flow::Continue
                }
                Event::Ping(payload) => {
                    queued += out.push(Rc::new(encode_server_frame(OpCode::Pong, payload)));
                    Flow::Continue
                }
                Event::Pong(_) => Flow::Continue,
                Event::Close { code, .. } => {
                    client_close = Some(code);
                    Flow::Stop
                }
            }
        });
        if reader.is_idle() {
            *reader_slot = None;
        }
        self.stats.add(Counter::FramesReceived, received);
        self.note_queued(slot, queued);
        if !echo && let Err(what) = self.take_tokens(slot, received, data.len()) {
            let frame = encode_close_frame(1008, &format!("rate limit exceeded: too many {what}"));
            return self.close_with(slot, Some(frame), CloseReason::RateLimited);
        }
        for message in inbound {
            if self.conns.get(slot).is_none_or(|c| c.is_closing()) {
                return;
            }
            match message {
                Inbound::Text(text) => self.on_control(slot, &text),
                Inbound::Binary => {
                    self.client_error(slot, "binary messages are not accepted on /ws")
                }
            }
        }
        match (result, client_close) {
            (Err(violation), _) => self.fail(slot, violation),
            (Ok(_), Some(code)) => {
                // Echo the status code (RFC 6455 §5.5.1), or an empty close.
                let reply = match code {
                    Some(code) => encode_close_frame(code, ""),
                    None => encode_server_frame(OpCode::Close, b""),
                };
                self.close_with(slot, Some(reply), CloseReason::ClientClose);
            }
            (Ok(_), None) => self.schedule_flush(slot),
        }
    }

    pub(super) fn fail(&mut self, slot: u32, violation: Violation) {
        let reason = match violation {
            Violation::Protocol(_) => CloseReason::ProtocolError,
            Violation::InvalidUtf8 => CloseReason::InvalidUtf8,
            Violation::BadCompression => CloseReason::BadCompression,
            Violation::TooBig => CloseReason::MessageTooBig,
        };
        let frame = encode_close_frame(violation.close_code(), violation.reason());
        self.close_with(slot, Some(frame), reason);
    }

    /// Spends `messages` and `bytes` from the client's budgets; says which
    /// one ran out.
    fn take_tokens(&mut self, slot: u32, messages: u64, bytes: usize) -> Result<(), &'static str> {
        let (rates, now) = (self.budget_rates, self.now_ms);
        match self.conns.get_mut(slot) {
            Some(conn) => conn
                .budget
                .spend(&rates, now, messages, bytes)
                .map_err(|e| e.what()),
            None => Ok(()),
        }
    }

    fn on_control(&mut self, slot: u32, text: &[u8]) {
        let message = match parse_client_message(text) {
            Ok(m) => m,
            Err(why) => return self.client_error(slot, &why),
        };
        let pending = matches!(
            self.conns.get(slot).and_then(|c| c.auth.as_deref()),
            Some(AuthState::Pending(_))
        );
        if pending && !matches!(message, ClientMessage::Auth { .. } | ClientMessage::Ping) {
            return self.client_error(
                slot,
                r#"authenticate first: send {"type":"auth","token":"…"}"#,
            );
        }
        match message {
            ClientMessage::Ping => self.enqueue_text(slot, &control::pong()),
            ClientMessage::Auth { token } => self.on_auth(slot, &token),
            ClientMessage::Subscribe { channels, since } => {
                self.on_subscribe(slot, channels, &since)
            }
            ClientMessage::Unsubscribe { channels } => {
                let left: Vec<String> = channels
                    .into_iter()
                    .filter(|name| self.unsubscribe(slot, name))
                    .collect();
                self.enqueue_text(slot, &control::unsubscribed(&left));
            }
        }
    }

    fn on_subscribe(
        &mut self,
        slot: u32,
        mut channels: Vec<String>,
        since: &std::collections::BTreeMap<String, u64>,
    ) {
        if let Some(bad) = channels.iter().find(|c| !is_valid_channel_name(c)) {
            let why = format!(
                "invalid channel name '{}': use 1-128 characters of A-Z a-z 0-9 . _ : -",
                bad.chars().take(129).collect::<String>()
            );
            return self.client_error(slot, &why);
        }
        channels.sort_unstable();
        channels.dedup();
        // With authentication, only what the token allows.
        let denied: Vec<String> = match self.conns.get(slot).and_then(|c| c.auth.as_deref()) {
            Some(AuthState::Granted { grant, .. }) => channels
                .iter()
                .filter(|c| !grant.allows(c))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        for channel in &denied {
            self.stats.add(Counter::AuthFailures, 1);
            self.client_error(
                slot,
                &format!("channel '{channel}' is not allowed by your token"),
            );
        }
        channels.retain(|c| !denied.contains(c));
        if channels.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let held = conn.subs.len();
        let new = channels.len(); // an upper bound: some may be held already
        if held + new > self.config.max_subscriptions {
            self.stats.add(Counter::SubscriptionLimit, 1);
            let why = format!(
                "too many subscriptions: at most {} per connection",
                self.config.max_subscriptions
            );
            return self.client_error(slot, &why);
        }
        // In a fleet, it may wait for its channels first.
        self.subscribe_after_wait(slot, channels, since.clone());
    }

    /// `{"type":"auth"}`: authenticates a connection that upgraded without a
    /// token (then subscribes it to what its URL asked for), or refreshes the
    /// token of one that is authenticated.
    fn on_auth(&mut self, slot: u32, token: &str) {
        let Some(authenticator) = self.config.auth.clone() else {
            return self.client_error(slot, "authentication is not enabled on this server");
        };
        let Some(state) = self.conns.get_mut(slot).and_then(|c| c.auth.take()) else {
            return;
        };
        let grant = match authenticator.verify_at(token, self.unix_now()) {
            Ok(grant) => grant,
            Err(refusal) => {
                self.stats.add(Counter::AuthFailures, 1);
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.auth = Some(state);
                }
                let pending = matches!(
                    self.conns.get(slot).and_then(|c| c.auth.as_deref()),
                    Some(AuthState::Pending(_))
                );
                if pending {
                    let frame = encode_close_frame(4001, &refusal.reason());
                    return self.close_with(slot, Some(frame), CloseReason::AuthRefused);
                }
                // A failed refresh keeps the current token.
                return self.client_error(slot, &refusal.reason());
            }
        };
        let expires = grant.expires;
        let granted = self.granted(grant);
        match *state {
            AuthState::Pending(query) => {
                let denied = match &granted {
                    AuthState::Granted { grant, .. } => {
                        query.channels.iter().find(|c| !grant.allows(c)).cloned()
                    }
                    AuthState::Pending(_) => None,
                };
                if let Some(channel) = denied {
                    self.stats.add(Counter::AuthFailures, 1);
                    let reason = format!("channel '{channel}' is not allowed by the token");
                    let frame = encode_close_frame(4003, &reason);
                    return self.close_with(slot, Some(frame), CloseReason::AuthRefused);
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.auth = Some(Box::new(granted));
                }
                if self.subscribe_query(slot, &query, Vec::new()).is_err() {
                    return;
                }
                let deadline = self.now_ms + self.config.ping_interval.as_millis() as u64;
                self.set_deadline(slot, deadline);
            }
            AuthState::Granted { .. } => {
                // Refreshed: channels the new token no longer allows are left.
                let dropped: Vec<String> = match &granted {
                    AuthState::Granted { grant, .. } => self
                        .subscribed_channels(slot)
                        .into_iter()
                        .filter(|c| !grant.allows(c))
                        .collect(),
                    AuthState::Pending(_) => Vec::new(),
                };
                for channel in &dropped {
                    self.unsubscribe(slot, channel);
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.auth = Some(Box::new(granted));
                }
                if !dropped.is_empty() {
                    self.enqueue_text(slot, &control::unsubscribed(&dropped));
                }
                // The timer may be set for the old expiry: restart the
                // heartbeat cycle (the refresh proves the client alive).
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.heartbeat.restart();
                }
                let deadline = self.now_ms + self.config.ping_interval.as_millis() as u64;
                self.set_deadline(slot, deadline);
            }
        }
        self.enqueue_text(slot, &control::authenticated(expires));
    }

    /// Answers an invalid message with an error notice; too many of them
    /// and the client is closed (1008).
    pub(super) fn client_error(&mut self, slot: u32, why: &str) {
        self.stats.add(Counter::ClientErrors, 1);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.budget.strike() {
            let frame = encode_close_frame(1008, "too many invalid messages");
            return self.close_with(slot, Some(frame), CloseReason::PolicyViolation);
        }
        self.enqueue_text(slot, &control::error(why));
    }
}

/// Queues a message compressed (permessage-deflate) when that makes it
/// smaller, else as it is.
fn push_compressed(
    out: &mut outqueue::OutQueue,
    op: OpCode,
    payload: &mut Vec<u8>,
    deflater: &mut Deflater,
) -> u64 {
    let compressed = deflater.compress(payload);
    if compressed.is_empty() || compressed.len() >= payload.len() {
        return push_message(out, op, payload);
    }
    out.push(Rc::new(crate::protocol::frame::encode_compressed_frame(
        op,
        &compressed,
    )))
}

/// Queues a whole message as one frame. Big payloads are not copied: the
/// header and the payload buffer are queued as two pieces.
pub(super) fn push_message(out: &mut outqueue::OutQueue, op: OpCode, payload: &mut Vec<u8>) -> u64 {
    if payload.len() <= 4096 {
        return out.push(Rc::new(encode_server_frame(op, payload)));
    }
    let mut header = [0u8; crate::protocol::frame::MAX_SERVER_HEADER];
    let n = crate::protocol::frame::write_server_header(&mut header, true, op, payload.len());
    let head = out.push(Rc::new(Bytes::copy_from_slice(&header[..n])));
    head + out.push(Rc::new(Bytes::from(std::mem::take(payload))))
}
