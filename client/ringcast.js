/*
 * ringcast.js — a small, dependency-free client for a ringcast server.
 *
 *   const rc = new Ringcast("wss://example.com/ws", {
 *     channels: ["prices"],
 *     onMessage(channel, data, seq) { ... },
 *     onGap({channel, from, to}) { ... },      // messages from..to are lost: resync
 *     onReset({channel, current}) { ... },     // the channel restarted at `current`
 *   });
 *   rc.subscribe(["news"]); rc.unsubscribe(["prices"]); rc.close();
 *
 * With authentication, pass `token`: a string, or a function returning one
 * (or a Promise of one), called before every connection attempt, so a token
 * that expired (close 4001) is replaced on reconnect. It is sent as the
 * subprotocol `token.<token>`, which keeps it out of URLs and proxy logs.
 *
 * It reconnects on its own (exponential backoff with full jitter, capped,
 * reset once a connection has been stable), resumes every channel from the
 * last seq it saw (`since=`), so nothing is lost across a reconnect that the
 * server still retains, and tells the application plainly when something
 * was lost (gap) or the server restarted (reset). An application-level ping
 * detects dead connections that TCP alone would notice only much later.
 *
 * Works in browsers (served by ringcast at /ringcast.js, global `Ringcast`)
 * and in Node (`require`, with Node's WebSocket or one passed as option).
 */
(function (root) {
  "use strict";

  var DEFAULTS = {
    channels: ["default"],
    minDelay: 500,        // first reconnect waits up to this (ms)
    maxDelay: 30000,      // cap on the reconnect wait
    stableAfter: 10000,   // a connection open this long resets the backoff
    connectTimeout: 10000,// give up on a connection attempt after this
    pingInterval: 20000,  // app-level ping period
    pingTimeout: 10000,   // silence after a ping that means the connection is dead
    onMessage: function () {},
    onGap: function () {},
    onReset: function () {},
    onWelcome: function () {},
    onStatus: function () {},
    onError: function () {},
    random: Math.random,
    token: null,
    WebSocket: null
  };

  function Ringcast(url, options) {
    var o = {};
    var k;
    for (k in DEFAULTS) o[k] = DEFAULTS[k];
    for (k in options || {}) o[k] = options[k];
    this.url = url;
    this.options = o;
    this.channels = o.channels.slice();
    this.lastSeq = {};     // channel -> last seq seen (the resume point)
    this.epoch = null;     // server run the seqs belong to
    this.attempt = 0;
    this.closed = false;
    this.ws = null;
    this.timers = {};
    this._connect();
  }

  Ringcast.prototype.subscribe = function (channels) {
    var fresh = channels.filter(function (c) { return this.channels.indexOf(c) < 0; }, this);
    this.channels = this.channels.concat(fresh);
    if (fresh.length && this._isOpen()) {
      var since = {};
      fresh.forEach(function (c) { if (c in this.lastSeq) since[c] = this.lastSeq[c]; }, this);
      this._send({ type: "subscribe", channels: fresh, since: since });
    }
  };

  Ringcast.prototype.unsubscribe = function (channels) {
    this.channels = this.channels.filter(function (c) { return channels.indexOf(c) < 0; });
    channels.forEach(function (c) { delete this.lastSeq[c]; }, this);
    if (this._isOpen()) this._send({ type: "unsubscribe", channels: channels });
  };

  Ringcast.prototype.close = function () {
    this.closed = true;
    this._clearTimers();
    if (this.ws) this.ws.close(1000, "client closing");
    this._status("closed");
  };

  /* ---- connection life ---- */

  Ringcast.prototype._resumeUrl = function () {
    var q = "channels=" + this.channels.map(encodeURIComponent).join(",");
    var since = this.channels
      .filter(function (c) { return c in this.lastSeq; }, this)
      .map(function (c) { return encodeURIComponent(c) + ":" + this.lastSeq[c]; }, this);
    if (since.length) q += "&since=" + since.join(",");
    // The positions belong to the server run (epoch) that gave them: a
    // server of another run answers `reset` instead of replaying its own
    // messages as if they followed ours.
    if (since.length && this.epoch !== null) q += "&epoch=" + encodeURIComponent(this.epoch);
    return this.url + (this.url.indexOf("?") < 0 ? "?" : "&") + q;
  };

  Ringcast.prototype._connect = function () {
    var self = this;
    this._status("connecting");
    var token = this.options.token;
    if (typeof token === "function") {
      try {
        token = token();
      } catch (e) {
        this.options.onError("token: " + e);
        return this._scheduleReconnect("no token");
      }
    }
    if (token && typeof token.then === "function") {
      token.then(
        function (t) { if (!self.closed) self._open(t); },
        function (e) { self.options.onError("token: " + e); self._scheduleReconnect("no token"); }
      );
    } else {
      this._open(token);
    }
  };

  Ringcast.prototype._open = function (token) {
    var self = this;
    var Ctor = this.options.WebSocket || root.WebSocket;
    if (!Ctor) throw new Error("ringcast.js: no WebSocket implementation available");
    var ws;
    try {
      ws = token ? new Ctor(this._resumeUrl(), ["token." + token]) : new Ctor(this._resumeUrl());
    } catch (e) {
      this.options.onError(String(e));
      this._scheduleReconnect("cannot connect");
      return;
    }
    this.ws = ws;
    this._setTimer("connect", this.options.connectTimeout, function () {
      self._drop(ws, "connect timeout");
    });
    ws.onopen = function () {
      if (ws !== self.ws) return;
      self._clearTimer("connect");
      self._status("open");
      self._setTimer("stable", self.options.stableAfter, function () { self.attempt = 0; });
      self._schedulePing();
    };
    ws.onmessage = function (event) {
      if (ws !== self.ws) return;
      self._heard();
      self._onText(event.data);
    };
    ws.onclose = function (event) {
      if (ws !== self.ws) return;
      self._scheduleReconnect("closed (" + event.code + (event.reason ? " " + event.reason : "") + ")");
    };
    ws.onerror = function () {
      // Some implementations (Node 20's WebSocket on a refused connection)
      // fire error and never close: reconnect on whichever comes first; the
      // other is then ignored, since `ws` is no longer the current socket.
      self._drop(ws, "connection error");
    };
  };

  /* Abandons `ws` (dead or stuck) and reconnects. */
  Ringcast.prototype._drop = function (ws, why) {
    if (ws !== this.ws) return;
    // Forgotten before it is closed: closing a socket that is still
    // connecting fires its error (and close) events at once, which must not
    // come back here.
    this.ws = null;
    try { ws.close(); } catch (e) { /* already closing */ }
    this._scheduleReconnect(why);
  };

  Ringcast.prototype._scheduleReconnect = function (why) {
    var self = this;
    this.ws = null;
    this._clearTimers();
    if (this.closed) return;
    // Full jitter: uniformly random in [0, min(cap, base * 2^attempt)], so a
    // crowd of clients disconnected at once does not come back at once.
    var ceiling = Math.min(this.options.maxDelay, this.options.minDelay * Math.pow(2, this.attempt));
    var delay = Math.floor(this.options.random() * ceiling);
    this.attempt += 1;
    this._status("reconnecting", { reason: why, delay: delay, attempt: this.attempt });
    this._setTimer("reconnect", delay, function () { self._connect(); });
  };

  /* ---- app-level ping ---- */

  Ringcast.prototype._schedulePing = function () {
    var self = this;
    this._setTimer("ping", this.options.pingInterval, function () {
      var ws = self.ws;
      self._send({ type: "ping" });
      self._setTimer("dead", self.options.pingTimeout, function () {
        self._status("dead", { reason: "no answer to ping" });
        self._drop(ws, "ping timeout");
      });
    });
  };

  /* Anything received proves the connection alive. */
  Ringcast.prototype._heard = function () {
    if (this.timers.dead) {
      this._clearTimer("dead");
      this._schedulePing();
    }
  };

  /* ---- messages ---- */

  Ringcast.prototype._onText = function (text) {
    var m;
    try { m = JSON.parse(text); } catch (e) { return this.options.onError("unparsable frame"); }
    if (typeof m.type === "string") return this._onNotice(m);
    var last = this.lastSeq[m.channel];
    if (last !== undefined && m.seq <= last) return; // already seen
    if (last !== undefined && m.seq > last + 1) {
      // Never expected: the server sends a gap notice first. Surface it anyway.
      this.options.onGap({ channel: m.channel, from: last + 1, to: m.seq - 1 });
    }
    this.lastSeq[m.channel] = m.seq;
    this.options.onMessage(m.channel, m.data, m.seq);
  };

  Ringcast.prototype._onNotice = function (n) {
    switch (n.type) {
      case "welcome":
      case "subscribed":
        var restarted = n.type === "welcome" && this.epoch !== null && this.epoch !== n.epoch;
        if (n.type === "welcome") this.epoch = n.epoch;
        for (var c in n.channels || {}) {
          // A channel we have no position in starts where the server is now.
          if (!(c in this.lastSeq)) this.lastSeq[c] = n.channels[c];
        }
        if (n.type === "welcome") {
          this.options.onWelcome({ epoch: n.epoch, channels: n.channels, restarted: restarted });
        }
        break;
      case "gap":
        this.lastSeq[n.channel] = n.to;
        this.options.onGap({ channel: n.channel, from: n.from, to: n.to });
        break;
      case "reset":
        this.lastSeq[n.channel] = n.current;
        this.options.onReset({ channel: n.channel, current: n.current });
        break;
      case "error":
        this.options.onError(n.reason);
        break;
      default:
        break; // pong, unsubscribed, and notices added later
    }
  };

  /* ---- helpers ---- */

  Ringcast.prototype._isOpen = function () {
    return this.ws && this.ws.readyState === 1;
  };

  Ringcast.prototype._send = function (obj) {
    if (this._isOpen()) this.ws.send(JSON.stringify(obj));
  };

  Ringcast.prototype._status = function (status, detail) {
    this.options.onStatus(status, detail || {});
  };

  Ringcast.prototype._setTimer = function (name, ms, fn) {
    this._clearTimer(name);
    this.timers[name] = setTimeout(fn, ms);
  };

  Ringcast.prototype._clearTimer = function (name) {
    if (this.timers[name]) clearTimeout(this.timers[name]);
    delete this.timers[name];
  };

  Ringcast.prototype._clearTimers = function () {
    for (var name in this.timers) clearTimeout(this.timers[name]);
    this.timers = {};
  };

  if (typeof module === "object" && module.exports) module.exports = Ringcast;
  else root.Ringcast = Ringcast;
})(typeof globalThis !== "undefined" ? globalThis : this);
