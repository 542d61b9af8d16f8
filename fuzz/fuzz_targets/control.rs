//! Client control messages (ping, subscribe, unsubscribe, auth), and the
//! notices the server builds from them: whatever arrives, the reply the client
//! gets back must be well-formed JSON of the expected type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::protocol::control::{self, ClientMessage, parse_client_message};

fn notice_type(notice: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(notice).expect("notice is JSON");
    value["type"]
        .as_str()
        .expect("notice has a type")
        .to_owned()
}

fuzz_target!(|data: &[u8]| {
    match parse_client_message(data) {
        Ok(ClientMessage::Ping) => assert_eq!(notice_type(&control::pong()), "pong"),
        Ok(ClientMessage::Subscribe { channels, since }) => {
            let current: Vec<(&str, u64)> = channels
                .iter()
                .map(|c| (c.as_str(), since.get(c).copied().unwrap_or(0)))
                .collect();
            assert_eq!(notice_type(&control::subscribed(&current)), "subscribed");
        }
        Ok(ClientMessage::Unsubscribe { channels }) => {
            assert_eq!(
                notice_type(&control::unsubscribed(&channels)),
                "unsubscribed"
            );
        }
        Ok(ClientMessage::Auth { token }) => {
            // The token text is echoed nowhere; a reason naming it must still be JSON.
            let reason = format!("token rejected: {}", token.len());
            assert_eq!(notice_type(&control::error(&reason)), "error");
        }
        Err(reason) => assert_eq!(notice_type(&control::error(&reason)), "error"),
    }
});
