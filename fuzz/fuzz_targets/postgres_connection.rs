//! Arbitrary chunks through a PostgreSQL connection tracker: flows, chunk lengths and
//! uncaptured tails are drawn from the input. It must never panic, keep its queue, cache and
//! buffers within their limits, emit only consistent exchanges, and leave nothing open after
//! close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::Flow;
use sonde_processor::protocols::postgres::{Connection, Limits};
use sonde_processor::protocols::sql::{MAX_SANITIZED_LEN, TRUNCATED};

/// A startup packet for database `db`, so that parsing also starts past the startup phase.
const STARTUP: &[u8] = b"\x00\x00\x00\x17\x00\x03\x00\x00database\x00db\x00\x00";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    // Small limits half of the time, so that every bound is reached.
    let limits = if mode & 1 != 0 {
        Limits {
            max_statements: 4,
            max_statement_bytes: 256,
            max_portals: 2,
            max_pending: 4,
            max_buffer: 64,
        }
    } else {
        Limits::default()
    };
    let request_flow = if mode & 2 != 0 {
        Flow::Inbound
    } else {
        Flow::Outbound
    };
    let fresh = mode & 4 != 0;
    // Detection must not panic on anything either.
    let _ = Connection::detect(request_flow, rest);
    let mut conn = Connection::with_limits(request_flow, fresh, limits);
    let mut out = Vec::new();
    let mut ts = 1u64;
    if fresh && mode & 8 != 0 {
        conn.feed(request_flow, STARTUP, STARTUP.len() as u64, ts, &mut out);
    }
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
            u64::from(control >> 2) * 97
        } else {
            0
        };
        ts += 1;
        conn.feed(flow, chunk, chunk.len() as u64 + uncaptured, ts, &mut out);
        assert!(conn.open_exchanges() <= limits.max_pending);
        assert!(conn.cached_statements() <= limits.max_statements);
        assert!(conn.buffered_bytes() <= 2 * 10_000.max(limits.max_buffer));
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.open_exchanges(), 0);
    for x in &out {
        assert_eq!(x.system, "postgresql");
        assert_eq!(x.request_flow, request_flow);
        assert!(x.start_ns <= x.end_ns, "{x:?}");
        assert!(
            x.query_text
                .as_ref()
                .is_none_or(|t| t.len() <= MAX_SANITIZED_LEN + TRUNCATED.len())
        );
        // Never a guessed statement: no text means no operation or table either.
        if x.query_text.is_none() {
            assert!(
                x.operation.is_none() && x.collection.is_none() && x.partial,
                "{x:?}"
            );
        }
        assert!(
            x.error_code
                .as_ref()
                .is_none_or(|c| c.len() == 5 || c == "_OTHER")
        );
    }
});
