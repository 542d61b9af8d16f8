// Publishing to ringcast from Node.js (no dependencies).
//
// Unix socket: one JSON object per line, in order, never dropped; keep the
// connection open and write a line per message. UDP: one datagram per
// message, cheapest, may be dropped under overload.
//
//   node publish.js unix ./ringcast.sock prices '{"EURUSD": 1.0842}'
//   node publish.js udp 127.0.0.1:9000 prices '{"EURUSD": 1.0842}'
"use strict";
const net = require("node:net");
const dgram = require("node:dgram");

const [transport, where, channel, data] = process.argv.slice(2);
const line = JSON.stringify({ channel, data: JSON.parse(data) }) + "\n";

if (transport === "unix") {
  const feed = net.createConnection(where, () => feed.end(line));
  feed.on("error", (e) => { console.error(e.message); process.exit(1); });
} else {
  const [host, port] = [where.slice(0, where.lastIndexOf(":")), Number(where.slice(where.lastIndexOf(":") + 1))];
  const feed = dgram.createSocket("udp4");
  feed.send(line, port, host, (e) => { feed.close(); if (e) { console.error(e.message); process.exit(1); } });
}
