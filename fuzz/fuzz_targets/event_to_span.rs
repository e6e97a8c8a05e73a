//! Any ring-buffer record through decoding, exchange assembly, span building and route
//! decoration, as the processor does it. The input is split into records at every 0xff 0xff 0xff 0xff marker, so
//! one input can carry a sequence (an event, its updates, a close).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sonde_processor::{
    exchange::Assembler,
    routes::Router,
    span::{self, Built, ServiceInfo},
};
use sonde_schema::Record;

fuzz_target!(|data: &[u8]| {
    let mut assembler = Assembler::new(Duration::from_millis(1), 4);
    let mut rng = rand::rng();
    let now = Instant::now();
    let routes = sonde_config::RoutesConfig {
        patterns: vec!["/user/{id}".into(), "/static/*".into()],
        ignored_patterns: vec!["/health".into()],
        max_path_segment_cardinality: 2,
        ..Default::default()
    };
    let mut router = Router::new(&routes);
    let mut build = |ev: &sonde_schema::HttpEvent| {
        let service = ServiceInfo { name: "fuzz", namespace: None };
        if let Built::Span(mut s) = span::build(ev, &service, 0, &mut rng) {
            let routed = router.route("fuzz", &s.path);
            s.set_route(routed.route);
        }
    };
    for chunk in data.split(|&b| b == 0xff).filter(|c| !c.is_empty()) {
        if let Ok(record) = Record::decode(chunk) {
            assembler.feed(record, now, &mut build);
        }
    }
    assembler.expire(now + Duration::from_millis(2), &mut build);
    assembler.finish(&mut build);
});
