//! Arbitrary header blocks through one HPACK decoder, as one direction of a connection would
//! feed them: never a panic, the decoded list stays within its limit, the dynamic table
//! within its cap, and an error always leaves the decoder in the unknown state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::http2::HpackDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let cap = if mode & 1 != 0 { 256 } else { 65_536 };
    let max_list = if mode & 2 != 0 { 300 } else { 65_536 };
    let mut decoder = if mode & 4 != 0 {
        HpackDecoder::new_unknown(cap)
    } else {
        HpackDecoder::new(cap)
    };
    if mode & 8 != 0 {
        decoder.set_announced_size(u32::from(mode) << 8);
    }
    // Blocks are length-prefixed (one byte).
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (block, after) = tail.split_at(len);
        let mut list = 0usize;
        let result = decoder.decode(block, max_list, &mut |name, value| {
            list += name.len() + value.len() + 32;
        });
        assert!(list <= max_list, "{list}");
        assert!(decoder.table_size() <= cap);
        if result.is_err() {
            assert!(decoder.is_state_unknown());
        }
        rest = after;
    }
});
