//! Any bytes through the HTTP/1.x head parsers: they must never panic, never put a line break
//! into a path, and query redaction leaves no credential value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http1::parse as http;

fuzz_target!(|data: &[u8]| {
    let line_break = |s: &str| s.contains(['\r', '\n']);
    if let Ok(head) = http::parse_request(data) {
        assert!(!head.method.is_empty());
        // No request line may carry a header line into the path or query.
        assert!(!line_break(&head.path), "{:?}", head.path);
        assert!(!head.query.as_deref().is_some_and(line_break));
        if let Some(len) = head.head_len {
            assert!(len <= data.len());
        }
    }
    if let Some(head) = http::parse_response(data) {
        assert!(head.status <= 999);
    }
    // What a malformed request shows stops at space, CR and LF.
    let (_, path, query) = http::malformed_request_start(data);
    assert!(!line_break(&path) && !path.contains(' '), "{path:?}");
    assert!(!query.as_deref().is_some_and(line_break));
    // Redaction never panics and leaves no value of a sensitive parameter.
    let text = String::from_utf8_lossy(data);
    let redacted = http::redact_query(&text, &[]);
    for pair in redacted.split(['&', ';']) {
        if let Some((name, value)) = pair.split_once('=')
            && ["password", "token", "X-Amz-Signature"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            && !value.is_empty()
        {
            assert_eq!(value, http::REDACTED, "{text:?} -> {redacted:?}");
        }
    }
    let _ = http::parse_traceparent(data);
});
