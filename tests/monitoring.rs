//! The shipped monitoring: the Grafana dashboard and the Prometheus alert
//! rules (monitoring/) name only metrics the server serves (a fleet node,
//! which serves them all), the dashboard shows every one of them and is
//! well-formed, every query parses, and the alerts fire (and stay quiet) as
//! their unit tests say, under promtool.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use common::redis::Redis;
use serde_json::Value;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(file)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring("grafana/ringcast-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `ringcast_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ringcast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names (and types) a fleet node's `/metrics` declares: all a
/// single node has, and the fleet's.
fn served() -> BTreeSet<(String, String)> {
    let redis = Redis::start();
    let server = Server::start(&["--redis", &redis.url()]);
    server
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Every query of every panel.
fn queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_owned()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_name_only_served_metrics_and_the_dashboard_shows_all() {
    let typed = served();
    assert!(
        typed.iter().any(|(n, _)| n == "ringcast_fleet_link_up"),
        "{typed:?}"
    );
    // The README documents every metric, with its type.
    let readme = include_str!("../README.md");
    for (name, kind) in &typed {
        assert!(
            readme.contains(&format!("| `{name}` | {kind} |")),
            "README.md's metrics table has no row for {name} ({kind})"
        );
    }
    let served: BTreeSet<String> = typed.into_iter().map(|(n, _)| n).collect();
    assert!(served.len() > 30, "{served:?}");
    let on_dashboard: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    let unknown: Vec<_> = on_dashboard.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the server does not serve: {unknown:?}"
    );
    let missing: Vec<_> = served.difference(&on_dashboard).collect();
    assert!(
        missing.is_empty(),
        "metrics the dashboard does not show: {missing:?}"
    );
    for file in [
        "prometheus/ringcast-alerts.yml",
        "prometheus/ringcast-alerts.test.yml",
    ] {
        let text = std::fs::read_to_string(monitoring(file)).unwrap();
        let unknown: Vec<_> = metric_names(&text)
            .into_iter()
            .filter(|n| !served.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the server does not serve: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_importable_and_laid_out() {
    let d = dashboard();
    assert_eq!(d["uid"], "ringcast-overview");
    assert!(d["schemaVersion"].as_u64() >= Some(36));
    let variables = d["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap();
    assert_eq!(
        (datasource["type"].as_str(), datasource["query"].as_str()),
        (Some("datasource"), Some("prometheus")),
        "the importer picks the Prometheus data source"
    );
    assert!(variables.iter().any(|v| v["name"] == "instance"));
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{} off the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(!p["title"].as_str().unwrap().is_empty());
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{} says what it shows",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            // Every series is filtered by the instance picker.
            let selectors = expr.matches("ringcast_").count();
            let filtered = expr.matches("{instance=~\"$instance\"").count();
            assert_eq!(selectors, filtered, "{}: {expr}", p["title"]);
        }
    }
}

/// promtool from Prometheus (Debian: the `prometheus` package).
fn promtool() -> Command {
    let probe = Command::new("promtool").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "promtool is needed for this test: install Prometheus (Debian: apt-get install prometheus)"
    );
    Command::new("promtool")
}

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    let dir = monitoring("prometheus");
    let check = promtool()
        .args(["check", "rules", "ringcast-alerts.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
    let test = promtool()
        .args(["test", "rules", "ringcast-alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{said}");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Each query becomes a recording rule (Grafana's variables filled in as
    // Grafana would), and promtool parses them all.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries(&dashboard()).iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let check = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
