//! Arbitrary chunks through a memcached connection tracker: flows, chunk lengths and
//! uncaptured tails are drawn from the input. It must never panic, keep its pending queue
//! within the limit, emit only consistent exchanges whose query text holds no argument (keys
//! and values never leave the tracker), and leave nothing pending after close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::db::DbExchange;
use sonde_processor::protocols::http2::Flow;
use sonde_processor::protocols::memcached::{Connection, MAX_PENDING};

fn check(x: &DbExchange) {
    assert_eq!(x.system, "memcached");
    assert!(x.start_ns <= x.end_ns, "{x:?}");
    assert!(x.collection.is_none() && x.namespace.is_none(), "{x:?}");
    assert!(x.raw_query_text.is_none() && !x.partial, "{x:?}");
    if x.no_response {
        assert!(x.response_bytes == 0 && x.error_code.is_none(), "{x:?}");
    }
    if let Some(op) = &x.operation {
        assert!(!op.is_empty() && op.len() <= 16, "{x:?}");
        assert!(
            op.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{x:?}"
        );
    }
    // The query text is the operation and placeholders (a trailing `noreply` or `...` kept),
    // nothing taken from the arguments.
    match (&x.operation, &x.query_text) {
        (Some(op), Some(q)) => {
            let rest = q
                .strip_prefix(op.as_str())
                .expect("query starts with the operation");
            let rest = rest
                .strip_suffix(" ...")
                .or_else(|| rest.strip_suffix(" noreply"))
                .unwrap_or(rest);
            assert!(rest.len() % 2 == 0 && rest.len() <= 128, "{x:?}");
            assert!(rest.as_bytes().chunks(2).all(|p| p == b" ?"), "{x:?}");
        }
        (None, None) => {}
        _ => panic!("query text without operation or the reverse: {x:?}"),
    }
    if let Some(code) = &x.error_code {
        assert!(
            ["ERROR", "CLIENT_ERROR", "SERVER_ERROR"].contains(&code.as_str()),
            "{x:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let request_flow = if mode & 1 != 0 {
        Flow::Inbound
    } else {
        Flow::Outbound
    };
    let mut conn = Connection::new(request_flow, mode & 2 != 0);
    let mut out = Vec::new();
    let mut ts = 1u64;
    // Each chunk: control byte (flow, whether a tail is uncaptured), length, bytes.
    while let [control, len, tail @ ..] = rest {
        let flow = if control & 1 != 0 {
            request_flow
        } else {
            request_flow.opposite()
        };
        let len = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(len);
        let uncaptured = if control & 2 != 0 {
            u64::from(control >> 2) * 37
        } else {
            0
        };
        ts += 1;
        conn.feed(flow, chunk, chunk.len() as u64 + uncaptured, ts, &mut out);
        assert!(conn.pending() <= MAX_PENDING);
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.pending(), 0);
    for x in &out {
        check(x);
    }
});
