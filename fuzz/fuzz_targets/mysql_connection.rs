//! Arbitrary chunks through a MySQL connection tracker: flows, chunk lengths and uncaptured
//! tails are drawn from the input. It must never panic, keep its queue, cache and buffers
//! within their limits, emit only consistent exchanges, and leave nothing open after close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::Flow;
use sonde_processor::protocols::mysql::{Connection, MAX_PENDING, MAX_STATEMENTS};
use sonde_processor::protocols::sql::{MAX_SANITIZED_LEN, TRUNCATED};

/// A MariaDB greeting and a handshake response for database `db` with its OK, so that
/// parsing also starts past the handshake.
const GREETING: &[u8] = b"\x31\x00\x00\x00\x0a10.11.19-MariaDB\x00\x07\x00\x00\x00abcdefgh\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
const RESPONSE: &[u8] = b"\x28\x00\x00\x01\x0d\xa2\x0b\x00\x00\x00\x00\x01!\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00app\x00\x00db\x00";
const AUTH_OK: &[u8] = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let request_flow = if mode & 2 != 0 {
        Flow::Inbound
    } else {
        Flow::Outbound
    };
    let fresh = mode & 4 != 0;
    // Detection must not panic on anything either.
    let _ = Connection::detect(request_flow, rest);
    let mut conn = Connection::new(request_flow, fresh);
    let mut out = Vec::new();
    let mut ts = 1u64;
    if fresh && mode & 8 != 0 {
        let server = request_flow.opposite();
        conn.feed(server, GREETING, GREETING.len() as u64, ts, &mut out);
        conn.feed(request_flow, RESPONSE, RESPONSE.len() as u64, ts, &mut out);
        conn.feed(server, AUTH_OK, AUTH_OK.len() as u64, ts, &mut out);
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
        assert!(conn.pending() <= MAX_PENDING);
        assert!(conn.cached_statements() <= MAX_STATEMENTS);
        assert!(conn.buffered_bytes() <= 64 * 1024 + 256);
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.pending(), 0);
    for x in &out {
        assert!(x.system == "mysql" || x.system == "mariadb");
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
        // The error number, as text.
        assert!(
            x.error_code
                .as_ref()
                .is_none_or(|c| c.parse::<u16>().is_ok())
        );
    }
});
