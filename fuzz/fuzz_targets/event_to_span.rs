//! Any ring-buffer record through decoding, exchange assembly and span building, as the
//! processor does it. The input is split into records at every 0xff 0xff 0xff 0xff marker, so
//! one input can carry a sequence (an event, its updates, a close).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sonde_processor::{
    exchange::Assembler,
    span::{self, ServiceInfo},
};
use sonde_schema::Record;

fuzz_target!(|data: &[u8]| {
    let mut assembler = Assembler::new(Duration::from_millis(1), 4);
    let mut rng = rand::rng();
    let now = Instant::now();
    let mut build = |ev: &sonde_schema::HttpEvent| {
        let _ = span::build(ev, &ServiceInfo { name: "fuzz", namespace: None }, 0, &mut rng);
    };
    for chunk in data.split(|&b| b == 0xff).filter(|c| !c.is_empty()) {
        if let Ok(record) = Record::decode(chunk) {
            assembler.feed(record, now, &mut build);
        }
    }
    assembler.expire(now + Duration::from_millis(2), &mut build);
    assembler.finish(&mut build);
});
