//! The Autobahn|Testsuite fuzzing client (RFC 6455 server conformance) against
//! `ringcast serve --echo`. Runs the vendored Python 3 port in tests/autobahn/
//! (it builds its own virtualenv from PyPI on first use).

mod common;

use std::process::Command;

use common::Server;

#[test]
fn autobahn_server_cases_all_pass() {
    let server = Server::start(&["--echo"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/autobahn/run.sh");
    let out = Command::new(script)
        .arg(server.url("/echo"))
        .env("AUTOBAHN_STRICT_CLOSE", "1")
        .output()
        .expect("run tests/autobahn/run.sh (needs bash and python3)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "Autobahn reported failures ({summary}):\n{stdout}\n{stderr}"
    );
    // 301 cases in 1.x–10.x; 12.x/13.x are permessage-deflate (not offered).
    assert!(
        summary.starts_with("301 passed, 0 failed"),
        "unexpected summary: {summary}"
    );
}
