//! Command-line behaviour: errors name the bad value and exit 2.

mod common;

use std::process::Command;

use common::BIN;

fn serve(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .output()
        .expect("run ringcast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_values_exit_2_naming_the_value() {
    for (args, needle) in [
        (vec!["--high-water", "lots"], "--high-water 'lots'"),
        (vec!["--listen", "nowhere"], "--listen 'nowhere'"),
        (vec!["--shards", "0"], "--shards '0'"),
        (vec!["--ping-interval", "soon"], "--ping-interval 'soon'"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let (code, stderr) = serve(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringcast.toml");
    std::fs::write(&path, "high-water = \"huge\"\n").unwrap();
    let (code, stderr) = serve(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("high-water") && stderr.contains("huge"),
        "{stderr}"
    );
    let (code, stderr) = serve(&["--config", "/nonexistent/ringcast.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve(&["--listen", &addr, "--udp", "off", "--unix", "off"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
}

#[test]
fn udp_port_in_use_says_what_to_do() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve(&["--listen", "127.0.0.1:0", "--udp", &addr, "--unix", "off"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    assert!(stderr.contains("--udp off"), "the fix: {stderr}");
}
