//! Plain HTTP on the shared listener, and the upgrade to WebSocket.

use super::*;

use crate::protocol::handshake::{
    HeadError, RequestHead, head_only, http_response, parse_request_head_limited,
    switching_protocols, validate_upgrade,
};
use crate::protocol::query::{QueryError, WsQuery, parse_ws_query};
use budget::ClientBudget;
use conn::HeadState;
use fanout::{Ack, Epoch};
use upstream::Parked;

impl ShardCore {
    // ----- HTTP -----

    pub(super) fn on_head_bytes(&mut self, slot: u32, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Input::Head(state) = &mut conn.input else {
            return;
        };
        let state = state.get_or_insert_with(Box::default);
        state.buf.extend_from_slice(data);
        match parse_request_head_limited(&state.buf, self.config.max_request_header) {
            Ok(None) => {}
            Err(e) => {
                if e == HeadError::TooLarge {
                    self.stats.add(Counter::RefusedHeaderSize, 1);
                }
                self.reject(slot, e.response())
            }
            Ok(Some((head, len))) => {
                let HeadState { buf, proxy } = *std::mem::take(state);
                conn.input = Input::Discard;
                self.on_request(slot, &head, &buf[len..], proxy);
            }
        }
    }

    fn on_request(&mut self, slot: u32, head: &RequestHead, rest: &[u8], proxy: Option<IpAddr>) {
        if let Some(proxy) = proxy
            && let Err(why) = self.admit_behind_proxy(slot, proxy, head)
        {
            return self.refuse_peer(slot, why);
        }
        match head.path.as_str() {
            "/ws" => self.upgrade(slot, head, Endpoint::Subscriber, rest),
            "/sse" if head.method == "GET" => self.open_event_stream(slot, head),
            "/echo" if self.config.echo => self.upgrade(slot, head, Endpoint::Echo, rest),
            path => {
                self.stats.add(Counter::HttpRequests, 1);
                let response = if head.method != "GET" && head.method != "HEAD" {
                    http_response(
                        405,
                        "text/plain",
                        b"only GET is supported\n",
                        &[("Allow", "GET")],
                    )
                } else {
                    match path {
                        "/healthz" => {
                            if self.shared.is_draining() {
                                http_response(503, "text/plain", b"draining\n", &[])
                            } else if !self.shared.is_ready() {
                                http_response(503, "text/plain", b"starting\n", &[])
                            } else if !self.shared.upstream.is_up() {
                                // Answered from a flag the fleet tasks keep:
                                // never waits on Redis.
                                let why = format!("{}\n", self.shared.upstream.problem());
                                http_response(503, "text/plain", why.as_bytes(), &[])
                            } else {
                                http_response(200, "text/plain", b"ok\n", &[])
                            }
                        }
                        path => match AdminPage::at(path) {
                            Some(page) if self.config.serve_admin => {
                                return self.ask_admin(slot, page, head.method == "HEAD");
                            }
                            Some(_) => http_response(
                                404,
                                "text/plain",
                                b"not found here: the status page and /metrics are served on the metrics listener (--metrics-listen)\n",
                                &[],
                            ),
                            None => static_page(path),
                        },
                    }
                };
                let response = if head.method == "HEAD" {
                    head_only(response)
                } else {
                    response
                };
                self.respond_and_close(slot, response);
            }
        }
    }

    /// Hands `page` to the admin side, which renders it off the shard (a
    /// scrape or an open status page must not stall fan-out); the answer
    /// comes back in `on_response`.
    fn ask_admin(&mut self, slot: u32, page: AdminPage, head: bool) {
        let Some(key) = self.key_of(slot) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.endpoint = Endpoint::Http;
        }
        self.actions
            .push_back(Action::AdminPage { key, page, head });
    }

    pub(super) fn respond_and_close(&mut self, slot: u32, response: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.endpoint = Endpoint::Http;
        }
        self.close_with(slot, Some(Bytes::from(response)), CloseReason::HttpDone);
    }

    pub(super) fn upgrade(
        &mut self,
        slot: u32,
        head: &RequestHead,
        endpoint: Endpoint,
        rest: &[u8],
    ) {
        let accept = match validate_upgrade(head) {
            Ok(accept) => accept,
            Err(rejection) => return self.reject(slot, rejection.response()),
        };
        if let Err(response) = self.admit_subscriber(head) {
            return self.reject(slot, response);
        }
        let query = if endpoint == Endpoint::Subscriber {
            match self.subscriber_query(head) {
                Ok(q) => Some(q),
                Err(response) => return self.reject(slot, response),
            }
        } else {
            None
        };
        // Authentication (subscribers only; /echo is a test endpoint).
        let mut protocol = None;
        let mut auth = None;
        if let (Some(authenticator), Some(query)) = (self.config.auth.clone(), &query) {
            let offered = head
                .protocols
                .iter()
                .find(|p| p.starts_with(TOKEN_PROTOCOL));
            let token = offered
                .map(|p| &p[TOKEN_PROTOCOL.len()..])
                .or(query.token.as_deref());
            match token {
                None => auth = Some(AuthState::Pending(query.clone())),
                Some(token) => match self.grant_for(&authenticator, token, query) {
                    Ok(granted) => {
                        protocol = offered.cloned();
                        auth = Some(granted);
                    }
                    Err(response) => return self.reject(slot, response),
                },
            }
        }
        let budget = ClientBudget::full(&self.budget_rates, self.now_ms);
        let deflate = if self.config.compression {
            crate::protocol::deflate::negotiate(head.extensions.iter().map(String::as_str))
        } else {
            None
        };
        self.conns.upgraded(slot, endpoint);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.phase = Phase::Open;
        conn.input = Input::Frames(None);
        conn.budget = budget;
        conn.deflate = deflate;
        if endpoint == Endpoint::Subscriber && conn.takes_deflated() {
            // Counted down when the connection is released.
            self.shared.deflate_clients.fetch_add(1, Ordering::Relaxed);
        }
        let pending = matches!(auth, Some(AuthState::Pending(_)));
        conn.auth = auth.map(Box::new);
        let extensions = deflate.map(|a| a.response());
        let response = switching_protocols(&accept, protocol.as_deref(), extensions.as_deref());
        match query {
            Some(query) if !pending => {
                if self.subscribe_query(slot, &query, response).is_err() {
                    return;
                }
            }
            _ => self.enqueue(slot, Rc::new(Bytes::from(response))),
        }
        let deadline = if pending {
            // Until it authenticates, the client only has this long.
            self.now_ms + self.config.auth_timeout.as_millis() as u64
        } else {
            self.now_ms + self.config.ping_interval.as_millis() as u64
        };
        if self.waiting(slot).is_none() {
            // (A subscriber waiting for the fleet keeps its own deadline.)
            self.set_deadline(slot, deadline);
        }
        if !rest.is_empty() {
            // Frames pipelined behind the request head.
            self.on_frames(slot, rest);
        }
    }

    /// `GET /sse`: the same subscription, `since`, `token` and Origin rules as
    /// `/ws`, answered with a server-sent event stream. `Last-Event-ID` (what
    /// a reconnecting `EventSource` sends) wins over `since=`.
    fn open_event_stream(&mut self, slot: u32, head: &RequestHead) {
        if let Err(response) = self.admit_subscriber(head) {
            return self.reject(slot, response);
        }
        let mut query = match self.subscriber_query(head) {
            Ok(q) => q,
            Err(response) => return self.reject(slot, response),
        };
        if let Some(id) = &head.last_event_id
            && let Some((epoch, positions)) = crate::protocol::sse::parse_last_event_id(id)
        {
            match crate::protocol::query::parse_since(positions, &query.channels) {
                Ok(since) => {
                    query.since = since;
                    query.epoch = Some(epoch.to_owned());
                }
                Err(why) => return self.reject(slot, refuse(400, format!("Last-Event-ID: {why}"))),
            }
        }
        // A stream cannot authenticate later: the token comes with the URL.
        let mut auth = None;
        if let Some(authenticator) = self.config.auth.clone() {
            let Some(token) = query.token.as_deref() else {
                self.stats.add(Counter::AuthFailures, 1);
                return self.reject(
                    slot,
                    refuse(401, "a token is required: add token= to the URL".into()),
                );
            };
            match self.grant_for(&authenticator, token, &query) {
                Ok(granted) => auth = Some(granted),
                Err(response) => return self.reject(slot, response),
            }
        }
        self.stats.add(Counter::HttpRequests, 1);
        let budget = ClientBudget::full(&self.budget_rates, self.now_ms);
        self.conns.upgraded(slot, Endpoint::Sse);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.phase = Phase::Open;
        conn.budget = budget;
        // Nothing the client sends matters now; end of stream still does.
        conn.input = Input::Discard;
        conn.sse = Some(Box::default());
        conn.auth = auth.map(Box::new);
        // Counted down when the connection is released.
        self.shared.sse_clients.fetch_add(1, Ordering::Relaxed);
        // The origin was allowed above: say so, so EventSource may read it.
        let response = crate::protocol::sse::response_head(head.origin.as_deref());
        if self.subscribe_query(slot, &query, response).is_err() {
            return;
        }
        let deadline = self.now_ms + self.config.ping_interval.as_millis() as u64;
        if self.waiting(slot).is_none() {
            self.set_deadline(slot, deadline);
        }
    }

    /// Verifies a token given at connect time for the channels `query` asks
    /// for: the grant, or the refusal to answer with (401, 403).
    fn grant_for(
        &mut self,
        authenticator: &crate::auth::Authenticator,
        token: &str,
        query: &WsQuery,
    ) -> Result<AuthState, Vec<u8>> {
        let grant = authenticator
            .verify_at(token, self.unix_now())
            .map_err(|refusal| {
                self.stats.add(Counter::AuthFailures, 1);
                refuse(401, refusal.reason())
            })?;
        if let Some(denied) = query.channels.iter().find(|c| !grant.allows(c)) {
            self.stats.add(Counter::AuthFailures, 1);
            return Err(refuse(
                403,
                format!("channel '{denied}' is not allowed by the token"),
            ));
        }
        Ok(self.granted(grant))
    }

    /// The refusals a new subscriber meets on any transport: the server is
    /// draining (503), or the browser page's origin is not allowed (403).
    fn admit_subscriber(&mut self, head: &RequestHead) -> Result<(), Vec<u8>> {
        if self.shared.is_draining() {
            let body = b"server is shutting down; connect to another node\n";
            return Err(http_response(
                503,
                "text/plain",
                body,
                &[("Retry-After", "1")],
            ));
        }
        if let Some(origin) = &head.origin
            && !origin_allowed(&self.config.allowed_origins, origin)
        {
            self.stats.add(Counter::RefusedOrigin, 1);
            return Err(refuse(403, format!("origin {origin} is not allowed")));
        }
        Ok(())
    }

    /// What the URL asks for (400 when it cannot be read).
    fn subscriber_query(&mut self, head: &RequestHead) -> Result<WsQuery, Vec<u8>> {
        parse_ws_query(&head.query, self.config.max_subscriptions).map_err(|why| {
            if matches!(why, QueryError::TooManyChannels { .. }) {
                self.stats.add(Counter::SubscriptionLimit, 1);
            }
            refuse(400, why.to_string())
        })
    }

    /// Subscribes to what the URL asked for, after `prefix` (the handshake
    /// response, or nothing once it is sent). Closes with 1013 when the
    /// server's channel table is full.
    pub(super) fn subscribe_query(
        &mut self,
        slot: u32,
        query: &WsQuery,
        prefix: Vec<u8>,
    ) -> Result<(), ()> {
        // Positions of another run of the server mean nothing in this one:
        // such a resume replays this epoch from its start.
        let epoch = match &query.epoch {
            Some(epoch) if **epoch != *self.epoch => Epoch::Stale,
            _ => Epoch::Current,
        };
        let since = |name: &str| {
            let s = query.since.iter().find(|(c, _)| c == name).map(|(_, s)| *s);
            if epoch == Epoch::Stale {
                s.map(|_| 0)
            } else {
                s
            }
        };
        match self.must_wait_for_fleet(slot, &query.channels, &since) {
            Ok(false) => {}
            Ok(true) => {
                let parked = Parked::Connect {
                    query: query.clone(),
                    prefix,
                };
                self.park(slot, parked);
                return Ok(());
            }
            Err(why) => {
                if let Some(conn) = self.conns.get(slot)
                    && conn.endpoint != Endpoint::Sse
                {
                    self.enqueue(slot, Rc::new(Bytes::from(prefix)));
                }
                let last = self.last_words(slot, 1013, why.reason());
                self.close_with(slot, Some(last), CloseReason::Error);
                return Err(());
            }
        }
        let since = |name: &str| query.since.iter().find(|(c, _)| c == name).map(|(_, s)| *s);
        let ack = Ack::Welcome { handshake: prefix };
        if let Err(refused) = self.subscribe_and_notify(slot, &query.channels, &since, epoch, ack) {
            let last = self.last_words(slot, 1013, refused.why.reason());
            self.close_with(slot, Some(last), CloseReason::Error);
            return Err(());
        }
        Ok(())
    }

    /// The auth state of a verified token, its expiry on the shard clock.
    pub(super) fn granted(&self, grant: crate::auth::Grant) -> AuthState {
        let expires_at_ms = self.now_ms + grant.seconds_left_at(self.unix_now()) * 1000;
        AuthState::Granted {
            grant,
            expires_at_ms,
        }
    }

    /// A connection from a trusted proxy: the per-IP limits apply to the
    /// client its `X-Forwarded-For` names (admitted here, released on close).
    fn admit_behind_proxy(
        &mut self,
        slot: u32,
        peer: IpAddr,
        head: &RequestHead,
    ) -> Result<(), crate::limits::Refused> {
        let trusted = &self.config.trusted_proxies;
        let client = crate::limits::client_ip(peer, head.forwarded_for.as_deref(), trusted);
        let admitted = self.shared.peers.admit(client, self.now_ms)?;
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.peer = admitted;
        }
        Ok(())
    }

    pub(super) fn reject(&mut self, slot: u32, response: Vec<u8>) {
        self.stats.add(Counter::HandshakesRejected, 1);
        self.respond_and_close(slot, response);
    }

    /// 429: the client's address is over a per-IP limit.
    pub(super) fn refuse_peer(&mut self, slot: u32, why: crate::limits::Refused) {
        self.stats.add(Counter::RefusedPerIp, 1);
        let body: &[u8] = match why {
            crate::limits::Refused::TooManyConnections => {
                b"too many connections from your address\n"
            }
            crate::limits::Refused::TooManyHandshakes => {
                b"too many new connections from your address; slow down\n"
            }
        };
        let response = http_response(429, "text/plain", body, &[("Retry-After", "2")]);
        self.respond_and_close(slot, response);
    }
}

/// Subprotocol prefix a client offers its token in: `token.<JWT>`. The
/// server echoes the offered value back when the token is valid.
pub(super) const TOKEN_PROTOCOL: &str = "token.";

/// Whether a browser's `Origin` matches one of the allowed patterns
/// (`scheme://host[:port]`, host possibly `*.domain`); no patterns: any.
/// A plain-text refusal with `status` and `why`.
fn refuse(status: u16, why: String) -> Vec<u8> {
    http_response(status, "text/plain", format!("{why}\n").as_bytes(), &[])
}

pub(super) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    allowed
        .iter()
        .any(|pattern| match pattern.split_once("://*.") {
            Some((scheme, domain)) => origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| {
                    host.len() > domain.len() + 1
                        && host.ends_with(domain)
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                }),
            None => *pattern == origin,
        })
}

/// The browser client (client/ringcast.js), embedded in the binary.
const CLIENT_JS: &str = include_str!("../../client/ringcast.js");

/// The plain GET answers that need nothing from the shard.
fn static_page(path: &str) -> Vec<u8> {
    match path {
        "/ringcast.js" => http_response(
            200,
            "application/javascript; charset=utf-8",
            CLIENT_JS.as_bytes(),
            &[],
        ),
        _ => http_response(404, "text/plain", b"not found\n", &[]),
    }
}
