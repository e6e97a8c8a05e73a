//! Arbitrary chunks through an HTTP/2 connection tracker: flows, chunk lengths and
//! uncaptured tails are drawn from the input. It must never panic, keep its stream table
//! within the limit, emit only consistent exchanges, and leave nothing open after close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::{
    Connection, Exchange, Flow, Limits, MAX_VALUE_LEN, Outcome,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn check(x: &Exchange) {
    assert!(x.request_start_ns <= x.end_ns, "{x:?}");
    assert!(x.response_start_ns.is_none_or(|t| t <= x.end_ns), "{x:?}");
    let r = &x.request;
    for value in [
        &r.method,
        &r.path,
        &r.authority,
        &r.scheme,
        &r.content_type,
        &r.user_agent,
        &r.traceparent,
        &r.tracestate,
        &x.response.content_type,
        &x.response.grpc_message,
    ] {
        assert!(value.as_ref().is_none_or(|v| v.len() <= MAX_VALUE_LEN));
    }
    if x.outcome == Outcome::HeadersUnknown {
        // Never a guessed request line.
        assert!(r.method.is_none() || r.path.is_none(), "{x:?}");
    }
    assert!(x.response.status.is_none_or(|s| (100..=999).contains(&s)));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    // Small limits half of the time, so that every bound is reached.
    let limits = if mode & 1 != 0 {
        Limits {
            max_streams: 4,
            max_header_list: 512,
            max_table_size: 256,
            max_frame_buffer: 256,
        }
    } else {
        Limits::default()
    };
    let mut conn = Connection::new(limits);
    if mode & 2 != 0 {
        conn.picked_up_mid_stream();
    }
    let mut out = Vec::new();
    let mut ts = 1u64;
    if mode & 4 != 0 {
        conn.feed(Flow::Outbound, PREFACE, PREFACE.len() as u64, ts, &mut out);
    }
    // Each chunk: control byte (flow, whether a tail is uncaptured), length, bytes.
    while let [control, len, tail @ ..] = rest {
        let flow = if control & 1 != 0 {
            Flow::Inbound
        } else {
            Flow::Outbound
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
        assert!(conn.open_streams() <= limits.max_streams);
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.open_streams(), 0);
    for x in &out {
        check(x);
    }
});
