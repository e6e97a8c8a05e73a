//! Arbitrary chunks through a mysql connection tracker (STUB, being written).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::Flow;
use sonde_processor::protocols::mysql::Connection;

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::new(Flow::Outbound, true);
    let mut out = Vec::new();
    conn.feed(Flow::Outbound, data, data.len() as u64, 1, &mut out);
    conn.close(2, &mut out);
});
