//! Any bytes through the HTTP/1.x head parsers: they must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::http;

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = http::parse_request(data) {
        assert!(!head.method.is_empty());
        if let Some(len) = head.head_len {
            assert!(len <= data.len());
        }
    }
    if let Some(head) = http::parse_response(data) {
        assert!(head.status <= 999);
    }
    let _ = http::parse_traceparent(data);
});
