//! Arbitrary chunks through a Kafka connection tracker: flows, chunk lengths and uncaptured
//! tails are drawn from the input. It must never panic, keep its queue and buffers within
//! their limits, emit only consistent exchanges, and leave nothing open after close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::Flow;
use sonde_processor::protocols::kafka::{
    Connection, MAX_KEEP, MAX_PENDING, TOPIC_IDS, topic_ids_len,
};

/// A Produce v3 request (kafka-python), so that parsing also starts from a real request.
const PRODUCE: &[u8] = b"\x00\x00\x00\x44\x00\x00\x00\x03\x00\x00\x00\x01\x00\x17kafka-python-producer-1\xff\xff\x00\x01\x00\x00\x75\x30\x00\x00\x00\x01\x00\x02t1\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07RECORDS";

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
    if mode & 8 != 0 {
        conn.feed(request_flow, PRODUCE, PRODUCE.len() as u64, ts, &mut out);
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
        assert!(conn.buffered_bytes() <= 2 * MAX_KEEP);
        rest = after;
    }
    conn.close(ts + 1, &mut out);
    assert_eq!(conn.pending(), 0);
    assert!(topic_ids_len() <= TOPIC_IDS);
    for x in &out {
        assert_eq!(x.system, "kafka");
        assert_eq!(x.request_flow, request_flow);
        assert!(x.start_ns <= x.end_ns, "{x:?}");
        // No destination is a partial exchange; an acks=0 one never waits for a response.
        assert!(x.destination.is_some() || x.partial, "{x:?}");
        assert!(!(x.fire_and_forget && x.no_response), "{x:?}");
        assert!(x.error_code.is_none_or(|c| c != 0), "{x:?}");
        assert!(
            x.destination
                .as_ref()
                .is_none_or(|d| !d.is_empty() && d.len() <= 3 * 249)
        );
    }
});
