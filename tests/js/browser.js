// Drives a real Chromium (the system's, through puppeteer-core) for
// tests/browser.rs. One JSON command per stdin line, one JSON event per
// stdout line:
//   {"cmd":"open","url":U}           -> {"event":"opened"}
//   {"cmd":"eval","id":N,"js":EXPR}   -> {"event":"eval","id":N,"value":V}
//   {"cmd":"screenshot","path":P}     -> {"event":"screenshot","path":P}
// Pages call window.report({event: NAME, ...}) -> {"event":"report",
// "name":NAME, ...}. Console
// errors and warnings, uncaught exceptions and failed requests are reported
// too ("console", "pageerror", "requestfailed"), so a test can insist there
// are none. It also serves tests/js/pages/ on a port of its own (a page's
// origin, distinct from the server's): {"event":"ready","pages":URL}.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");
const readline = require("readline");
const puppeteer = require("puppeteer-core");

const out = (event, detail) => process.stdout.write(JSON.stringify(Object.assign({ event }, detail)) + "\n");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function servePages() {
  const root = path.join(__dirname, "pages");
  const server = http.createServer((req, res) => {
    const name = path.basename(new URL(req.url, "http://x").pathname);
    const file = path.join(root, name);
    if (!name.endsWith(".html") || !fs.existsSync(file)) {
      res.writeHead(404).end("not found\n");
      return;
    }
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(fs.readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function main() {
  if (!fs.existsSync(executablePath)) {
    out("fatal", { reason: `no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM` });
    process.exit(1);
  }
  const pages = await servePages();
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // Root in CI has no user namespace sandbox to offer.
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"],
  });
  let page = null;
  const commands = readline.createInterface({ input: process.stdin });
  out("ready", { pages: `http://127.0.0.1:${pages.address().port}` });
  for await (const line of commands) {
    let cmd;
    try { cmd = JSON.parse(line); } catch (e) { continue; }
    try {
      if (cmd.cmd === "open") {
        page = await browser.newPage();
        await page.setViewport({ width: 1280, height: 900 });
        page.on("console", (m) => {
          if (m.type() === "error" || m.type() === "warn") out("console", { type: m.type(), text: m.text() });
        });
        page.on("pageerror", (e) => out("pageerror", { text: String(e) }));
        page.on("requestfailed", (r) => out("requestfailed", { url: r.url(), text: r.failure() && r.failure().errorText }));
        await page.exposeFunction("report", (obj) => {
          const detail = Object.assign({}, obj, { name: obj.event });
          delete detail.event;
          out("report", detail);
        });
        await page.goto(cmd.url, { waitUntil: "load" });
        out("opened", { url: cmd.url });
      } else if (cmd.cmd === "eval") {
        out("eval", { id: cmd.id, value: await page.evaluate(cmd.js) });
      } else if (cmd.cmd === "screenshot") {
        fs.mkdirSync(path.dirname(cmd.path), { recursive: true });
        await page.screenshot({ path: cmd.path, fullPage: true });
        out("screenshot", { path: cmd.path });
      } else if (cmd.cmd === "quit") {
        break;
      }
    } catch (e) {
      out("fatal", { reason: `${cmd.cmd}: ${e}` });
    }
  }
  await browser.close();
  pages.close();
  process.exit(0);
}

main().catch((e) => {
  out("fatal", { reason: String(e && e.stack || e) });
  process.exit(1);
});
