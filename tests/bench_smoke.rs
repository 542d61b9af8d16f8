//! A small `ringcast bench` run against a real server: every published
//! message reaches every client, and the JSON report says so.

mod common;

use std::process::Command;

use common::{BIN, Server};

/// The load generator drives its clients with io_uring: where that is off
/// (a container's seccomp profile), it cannot run, and says so.
fn generator_can_run() -> bool {
    let out = Command::new(BIN).arg("doctor").output().unwrap();
    let here = String::from_utf8_lossy(&out.stdout).contains("io driver: auto -> io-uring");
    if !here {
        println!("io_uring is not available here: the load generator needs it; not run");
    }
    here
}

#[test]
fn bench_smoke_run() {
    if !generator_can_run() {
        return;
    }
    let server = Server::start(&["--udp", "127.0.0.1:0"]);
    let out = Command::new(BIN)
        .args(["bench", "--url", &server.url("/ws?channels=bench")])
        .args(["--feed", &format!("udp:{}", server.udp.unwrap())])
        .args(["--connections", "300", "--processes", "2", "--slow", "2"])
        .args(["--rate", "20,40", "--duration", "1s", "--json"])
        .args(["--server-pid", &server.pid().to_string()])
        .output()
        .expect("run ringcast bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["connections"], 300);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert_eq!(step["received"], step["expected"], "{step}");
        assert_eq!(step["expected"], step["published"].as_u64().unwrap() * 298);
        assert_eq!(step["gaps"], 0);
        assert_eq!(step["dups"], 0);
        assert!(step["latency_us"]["p99"].as_u64().unwrap() > 0);
        assert!(step["server_cpu_ns_per_delivery"].as_f64().unwrap() > 0.0);
    }
    assert!(report["server_rss_per_connection"].is_number());
}

#[test]
fn bench_without_a_server_fails_clearly() {
    if !generator_can_run() {
        return;
    }
    // A port nothing listens on: bound, then closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args(["bench", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--connections", "20", "--duration", "1s", "--json"])
        .output()
        .expect("run ringcast bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("none of the 20 connections"), "{stderr}");
    assert!(out.stdout.is_empty(), "no report without a measurement");
}
