// A plain subscriber for tests/compression.rs, on Node's own WebSocket (which
// offers permessage-deflate, as browsers do): prints the negotiated
// extensions, then every message's text, each as one JSON line on stdout.
"use strict";
const ws = new WebSocket(process.argv[2]);
const log = (line) => console.log(JSON.stringify(line));
ws.onopen = () => log({ event: "open", extensions: ws.extensions });
ws.onmessage = (m) => log({ event: "message", text: String(m.data) });
ws.onclose = (c) => {
  log({ event: "close", code: c.code });
  process.exit(0);
};
ws.onerror = () => log({ event: "error" });
process.stdin.on("data", () => ws.close());
