//! The request-head parser, the upgrade checks and the /ws query parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::handshake::{parse_request_head, switching_protocols, validate_upgrade};
use ringcast::protocol::query::parse_ws_query;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, len))) = parse_request_head(data) {
        assert!(len <= data.len());
        if let Ok(accept) = validate_upgrade(&head) {
            let response = switching_protocols(&accept, None);
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        if let Ok(q) = parse_ws_query(&head.query, 100) {
            assert!(q.channels.len() <= 100);
            for (channel, _) in &q.since {
                assert!(q.channels.contains(channel));
            }
        }
    }
});
