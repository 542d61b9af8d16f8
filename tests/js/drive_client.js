// Drives client/ringcast.js under Node for tests/client_js.rs: every callback
// becomes one JSON line on stdout; a line "close" on stdin closes the client.
"use strict";
const Ringcast = require("../../client/ringcast.js");

const url = process.argv[2];
const log = (event, detail) => console.log(JSON.stringify(Object.assign({ event }, detail)));

// Node 20 has WebSocket behind --experimental-websocket (22+: built in); an
// older Node uses the `ws` package, which .ci/run installs only then.
const WebSocketImpl = globalThis.WebSocket || require("ws");

const rc = new Ringcast(url, {
  WebSocket: WebSocketImpl,
  channels: ["c"],
  minDelay: 100,
  maxDelay: 400,
  stableAfter: 500,
  // Long on purpose: a refused connection must lead to a reconnect at once,
  // not only when this timeout gives up on it.
  connectTimeout: 30000,
  pingInterval: 200,
  pingTimeout: 300,
  onMessage: (channel, data, seq) => log("message", { channel, seq, data }),
  onGap: (g) => log("gap", g),
  onReset: (r) => log("reset", r),
  onWelcome: (w) => log("welcome", w),
  onStatus: (status, d) => log("status", Object.assign({ status }, d)),
  onError: (reason) => log("error", { reason }),
});

process.stdin.on("data", (d) => {
  if (String(d).trim() === "close") {
    rc.close();
    setTimeout(() => process.exit(0), 50);
  }
});
