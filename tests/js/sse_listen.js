// A plain EventSource (the `eventsource` package: what browsers do, under
// Node) for tests/sse.rs: every event becomes one JSON line on stdout.
"use strict";
const EventSource = require("eventsource");

const source = new EventSource(process.argv[2]);
const log = (line) => console.log(JSON.stringify(line));
source.onopen = () => log({ event: "open" });
source.onmessage = (e) => log({ event: "message", id: e.lastEventId, data: JSON.parse(e.data) });
for (const name of ["welcome", "gap", "reset", "error"]) {
  source.addEventListener(name, (e) => {
    if (e.data !== undefined) log({ event: name, data: JSON.parse(e.data) });
  });
}
source.onerror = () => log({ event: "connection-error" });
process.stdin.on("data", () => {
  source.close();
  process.exit(0);
});
