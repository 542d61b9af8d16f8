//! In a real browser: Debian's Chromium, driven through puppeteer-core
//! (tests/js/browser.js). The status page loads with no console error and
//! its figures move when messages flow; client/ringcast.js subscribes,
//! reports a gap, survives a server restart (jittered reconnect, reset) and
//! resumes; a plain EventSource resumes through Last-Event-ID. Screenshots
//! land in target/browser/ for CI to keep.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Server;
use common::proxy::CuttingProxy;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// One Chromium, with the pages it reports from.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    /// Where tests/js/pages/ is served (an origin of its own).
    pages: String,
    next_eval: u64,
}

impl Browser {
    fn start() -> Browser {
        common::ensure_js_packages();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/browser.js");
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is needed for this test (Node.js 20+)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("browser.js: {line}"),
                }
            }
        });
        let mut browser = Browser {
            child,
            stdin,
            events,
            seen: Vec::new(),
            pages: String::new(),
            next_eval: 0,
        };
        let ready = browser.wait("browser ready", |v| v["event"] == "ready");
        browser.pages = ready["pages"].as_str().unwrap().to_owned();
        browser
    }

    fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").unwrap();
    }

    /// Waits for an event matching `pred`; returns it.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what}; events so far: {:#?}", self.seen));
            assert_ne!(v["event"], "fatal", "{v}; events so far: {:#?}", self.seen);
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits for the page to report an event named `name` matching `pred`.
    fn report(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait(&format!("page report {name}"), |v| {
            v["event"] == "report" && v["name"] == name && pred(v)
        })
    }

    /// What the page reported so far under `name`.
    fn reported(&self, name: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == "report" && v["name"] == name)
            .collect()
    }

    fn open(&mut self, url: &str) {
        self.send(json!({"cmd": "open", "url": url}));
        self.wait(&format!("{url} opened"), |v| v["event"] == "opened");
    }

    fn eval(&mut self, js: &str) -> Value {
        self.next_eval += 1;
        let id = self.next_eval;
        self.send(json!({"cmd": "eval", "id": id, "js": js}));
        self.wait(&format!("eval {js}"), |v| {
            v["event"] == "eval" && v["id"] == id
        })["value"]
            .clone()
    }

    /// Polls `js` in the page until `want` holds for its value.
    fn eval_until(&mut self, js: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(js);
            if want(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{js} stayed {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/browser")
            .join(name);
        self.send(json!({"cmd": "screenshot", "path": path}));
        self.wait("screenshot", |v| v["event"] == "screenshot");
        path
    }

    /// Console errors and warnings, uncaught exceptions and failed requests
    /// seen so far.
    fn complaints(&self) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|v| {
                ["console", "pageerror", "requestfailed"]
                    .contains(&v["event"].as_str().unwrap_or(""))
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(server: &Server, channel: &str, seqs: std::ops::RangeInclusive<u64>) {
    let mut s = UnixStream::connect(server.unix.as_ref().unwrap()).unwrap();
    for k in seqs {
        writeln!(s, r#"{{"channel":"{channel}","data":{{"n":{k}}}}}"#).unwrap();
    }
}

/// The text of element `id` in the page.
fn text_of(id: &str) -> String {
    format!("document.getElementById({id:?}).textContent")
}

/// A number shown in the page ("12,345" or "2.5").
fn number_of(id: &str) -> String {
    format!("Number(document.getElementById({id:?}).textContent.replace(/,/g, ''))")
}

#[test]
fn the_status_page_loads_clean_and_its_figures_move() {
    let server = Server::start(&["--unix", "feed.sock"]);
    let mut subscriber = common::RawClient::connect(server.addr, "/ws?channels=prices");
    subscriber.read_welcome();
    let mut browser = Browser::start();
    browser.open(&format!("http://{}/", server.addr));
    browser.eval_until("document.getElementById('state').className", |v| v == "ok");
    assert_eq!(browser.eval(&text_of("delivered-total")), "0");
    let shards = browser.eval("document.getElementById('shards').rows.length");

    // A publisher at about 20 messages a second until the page shows it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed = server.unix.clone().unwrap();
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(feed).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                writeln!(s, r#"{{"channel":"prices","data":{{"n":{n}}}}}"#).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    browser.eval_until(&number_of("delivery-rate"), |v| v.as_f64() > Some(0.0));
    browser.eval_until(&number_of("publish-rate"), |v| v.as_f64() > Some(0.0));
    browser.eval_until(&number_of("delivered-total"), |v| v.as_f64() >= Some(5.0));
    // The busiest channel, with its one subscriber, in both tables.
    browser.eval_until(
        "document.querySelector('#top-subs tr') && document.querySelector('#top-subs tr').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("prices1")),
    );
    browser.eval_until("document.querySelector('#top-rate tr').textContent", |v| {
        v.as_str().is_some_and(|t| t.starts_with("prices"))
    });
    // The sparkline draws the rate history.
    let points =
        browser.eval("document.querySelector('#spark-deliver polyline').getAttribute('points')");
    assert!(
        points.as_str().is_some_and(|p| p.split(' ').count() >= 2),
        "{points}"
    );
    assert_eq!(browser.eval(&text_of("ws-open")), "1");
    assert!(shards.as_u64() >= Some(1), "{shards}");
    assert_eq!(browser.eval(&text_of("driver")), server_driver(&server));
    let shot = browser.screenshot("status.png");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(publisher.join().unwrap() > 0);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{}", shot.display());
    assert!(
        browser.complaints().is_empty(),
        "{:#?}",
        browser.complaints()
    );
}

/// The driver the server says it runs on, as /status.json names it.
fn server_driver(server: &Server) -> String {
    let (_, text) = server.get("/status.json");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let status: Value = serde_json::from_str(body).unwrap();
    status["driver"].as_str().unwrap().to_owned()
}

/// The seqs of the next `n` messages the page reports, in order.
fn next_messages(browser: &mut Browser, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| browser.report("message", |_| true)["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn ringcast_js_in_a_browser_reports_a_gap_survives_a_restart_and_resumes() {
    let first = Server::start(&["--unix", "feed.sock", "--history", "5"]);
    let listen = format!("127.0.0.1:{}", first.addr.port());
    let proxy = CuttingProxy::start(first.addr);
    let mut browser = Browser::start();
    let page = format!("{}/client.html?server=http://{}", browser.pages, proxy.addr);
    browser.open(&page);
    let welcome = browser.report("welcome", |_| true);
    assert_eq!(welcome["restarted"], false);
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    publish(&first, "c", 1..=3);
    assert_eq!(next_messages(&mut browser, 3), [1, 2, 3]);

    // The network drops the client and keeps it off while 17 messages go
    // by; the server holds the last 5. The client resumes with since=3 and
    // is told plainly what it lost.
    proxy.refuse(true);
    proxy.cut();
    first.wait_metric("ringcast_websockets_open", &[], |v| v == 0);
    publish(&first, "c", 4..=20);
    first.wait_metric("ringcast_messages_published_total", &[], |v| v == 20);
    proxy.refuse(false);
    let gap = browser.report("gap", |_| true);
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(4), Some(15))
    );
    assert_eq!(next_messages(&mut browser, 5), [16, 17, 18, 19, 20]);

    // The server dies; the client retries with jittered backoff until a new
    // one is up on the same address, then hears it is a new run.
    let before_kill = browser.seen.len();
    drop(first);
    for _ in 0..3 {
        browser.report("status", |v| v["status"] == "reconnecting");
    }
    let second = Server::start(&["--unix", "feed.sock", "--history", "5", "--listen", &listen]);
    let welcome = browser.report("welcome", |_| true);
    assert_eq!(welcome["restarted"], true);
    assert_ne!(welcome["epoch"].as_str().unwrap(), epoch);
    let reset = browser.report("reset", |_| true);
    assert_eq!(
        (reset["channel"].as_str(), reset["current"].as_u64()),
        (Some("c"), Some(0))
    );
    let delays: Vec<(u64, u64)> = browser.seen[before_kill..]
        .iter()
        .filter(|v| v["name"] == "status" && v["status"] == "reconnecting")
        .map(|v| (v["attempt"].as_u64().unwrap(), v["delay"].as_u64().unwrap()))
        .collect();
    // Counted up from where the gap's reconnect left the count, if that
    // connection was not yet stable.
    let first = delays.first().map_or(1, |d| d.0);
    common::assert_jittered_reconnects(&delays, first);
    publish(&second, "c", 1..=2);
    assert_eq!(next_messages(&mut browser, 2), [1, 2]);
    let data = &browser.reported("message").last().unwrap()["data"];
    assert_eq!(data["n"], 2);
    browser.screenshot("ringcast-js.png");
    // Refused connections are logged by the browser; nothing may throw.
    let thrown: Vec<_> = browser
        .complaints()
        .into_iter()
        .filter(|v| v["event"] == "pageerror")
        .collect();
    assert!(thrown.is_empty(), "{thrown:#?}");
}

#[test]
fn a_plain_event_source_in_a_browser_resumes_through_last_event_id() {
    let server = Server::start(&["--unix", "feed.sock"]);
    let proxy = CuttingProxy::start(server.addr);
    let mut browser = Browser::start();
    let stream = format!("http://{}/sse?channels=c", proxy.addr);
    let page = format!(
        "{}/eventsource.html?url={}",
        browser.pages,
        urlencode(&stream)
    );
    browser.open(&page);
    browser.report("notice", |v| v["type"] == "welcome");
    let seq = |v: &Value| v["data"]["seq"].as_u64().unwrap();
    publish(&server, "c", 1..=3);
    let mut seqs: Vec<u64> = (0..3)
        .map(|_| seq(&browser.report("message", |_| true)))
        .collect();

    // The network drops the stream and keeps it off while 4..8 go by.
    proxy.refuse(true);
    proxy.cut();
    server.wait_metric("ringcast_sse_streams_open", &[], |v| v == 0);
    publish(&server, "c", 4..=8);
    server.wait_metric("ringcast_messages_published_total", &[], |v| v == 8);
    proxy.refuse(false);
    // EventSource reconnects by itself, sending the last id it saw.
    for _ in 4..=8 {
        seqs.push(seq(&browser.report("message", |_| true)));
    }
    publish(&server, "c", 9..=9);
    seqs.push(seq(&browser.report("message", |_| true)));
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let heads = proxy.request_heads();
    let resumed = heads.iter().rfind(|h| h.starts_with("GET /sse")).unwrap();
    let last_id = resumed
        .lines()
        .find_map(|l| {
            l.strip_prefix("Last-Event-ID: ")
                .or_else(|| l.strip_prefix("last-event-id: "))
        })
        .unwrap_or_else(|| panic!("the resuming request sent no Last-Event-ID:\n{resumed}"));
    let third = browser.reported("message")[2]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        last_id, third,
        "it resumed from the last event it had (seq 3)"
    );
    browser.screenshot("eventsource.png");
    // No notice of a loss: nothing was lost.
    assert!(
        !browser
            .reported("notice")
            .iter()
            .any(|v| v["type"] == "gap" || v["type"] == "reset"),
        "{:#?}",
        browser.seen
    );
}

/// Percent-encodes a URL to pass it in a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_status_page_of_a_fleet_node_shows_its_redis_link() {
    let redis = common::redis::Redis::start();
    let server = Server::start(&["--redis", &redis.url()]);
    let mut browser = Browser::start();
    browser.open(&format!("http://{}/", server.addr));
    let fleet = browser.eval_until(&text_of("fleet"), |v| {
        v.as_str().is_some_and(|t| t.contains("link up"))
    });
    let fleet = fleet.as_str().unwrap();
    assert!(
        fleet.contains(&format!("Redis redis://127.0.0.1:{}/0", redis.port)),
        "{fleet}"
    );
    // Redis gone: the page says so, with why.
    drop(redis);
    browser.eval_until(&text_of("fleet"), |v| {
        v.as_str()
            .is_some_and(|t| t.contains("link down") && t.contains("redis unreachable"))
    });
    assert_eq!(
        browser.eval("document.getElementById('fleet').className"),
        "nonzero"
    );
    browser.screenshot("status-fleet.png");
    assert!(
        browser.complaints().is_empty(),
        "{:#?}",
        browser.complaints()
    );
}
