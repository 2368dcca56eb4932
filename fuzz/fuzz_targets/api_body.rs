//! The API's request parsers on any bytes: the `{"enabled": bool}` body of
//! `checkers` and `failover` and the `/events` query. They never panic, and
//! an accepted body means what it says.

#![no_main]

use halo::api::{event_query, parse_switch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(switch) = parse_switch(data) {
        let value: serde_json::Value =
            serde_json::from_slice(data).expect("an accepted body is JSON");
        assert_eq!(
            value,
            serde_json::json!({ "enabled": switch.enabled }),
            "accepted body {:?}",
            String::from_utf8_lossy(data)
        );
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = event_query(Some(query));
    }
});
