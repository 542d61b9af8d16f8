//! The request-head parser, the upgrade checks, permessage-deflate
//! negotiation and the /ws query parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::deflate::negotiate;
use ringcast::protocol::handshake::{parse_request_head, switching_protocols, validate_upgrade};
use ringcast::protocol::query::parse_ws_query;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, len))) = parse_request_head(data) {
        assert!(len <= data.len());
        let deflate = negotiate(head.extensions.iter().map(String::as_str));
        if let Some(agreement) = deflate {
            assert!((8..=15).contains(&agreement.server_window_bits));
            // What we answer is itself an offer we would accept as it is.
            assert_eq!(negotiate([agreement.response().as_str()]), Some(agreement));
        }
        if let Ok(accept) = validate_upgrade(&head) {
            let extensions = deflate.map(|a| a.response());
            let response = switching_protocols(&accept, None, extensions.as_deref());
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
