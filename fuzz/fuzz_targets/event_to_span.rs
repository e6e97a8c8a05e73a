//! Any ring-buffer record through decoding and span building, as the processor does it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::span::{self, ServiceInfo};
use sonde_schema::HttpEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = HttpEvent::decode(data) {
        let mut rng = rand::rng();
        let _ = span::build(&ev, &ServiceInfo { name: "fuzz", namespace: None }, 0, &mut rng);
    }
});
