//! Connections spread over the shards (SO_REUSEPORT), each shard counted.

mod common;

use common::{RawClient, Server};

#[test]
fn connections_spread_over_two_shards() {
    let server = Server::start(&["--shards", "2"]);
    let clients: Vec<RawClient> = (0..64)
        .map(|_| RawClient::connect(server.addr, "/ws"))
        .collect();
    let metrics = server.metrics();
    let on =
        |shard: &str| common::metric_sum(&metrics, "ringcast_connections_accepted_total", &[shard]);
    let (a, b) = (on("shard=\"0\""), on("shard=\"1\""));
    // 64 handshakes plus this /metrics request.
    assert_eq!(a + b, 65, "{metrics}");
    assert!(a > 0 && b > 0, "all connections on one shard: {a} / {b}");
    let open = common::metric_sum(&metrics, "ringcast_connections_open", &[]);
    assert!(open >= 64, "{metrics}");
    drop(clients);
}
