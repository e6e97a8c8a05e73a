//! Any ring-buffer record through decoding, exchange assembly, span building, route
//! decoration, RED metrics and conversion to OTLP span data, as the processor does it. The input is split into records at every 0xff 0xff 0xff 0xff marker, so
//! one input can carry a sequence (an event, its updates, a close).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sonde_processor::{
    exchange::Assembler,
    metrics::Metrics,
    otlp::convert,
    red::RedRecorder,
    routes::Router,
    span::{self, Built, ServiceInfo},
};
use sonde_schema::Record;

fuzz_target!(|data: &[u8]| {
    let mut assembler = Assembler::new(Duration::from_millis(1), 4);
    let mut rng = rand::rng();
    let now = Instant::now();
    let routes = sonde_processor::config::RoutesConfig {
        patterns: vec!["/user/{id}".into(), "/static/*".into()],
        ignored_patterns: vec!["/health".into()],
        max_path_segment_cardinality: 2,
        ..Default::default()
    };
    let mut router = Router::new(&routes);
    let metrics = Metrics::new("fuzz");
    let mut red = RedRecorder::default();
    let scope = convert::scope();
    let meta = || convert::ProcessResource {
        pid: 1,
        service_name: "fuzz".into(),
        service_namespace: None,
        exe_path: "/fuzz".into(),
    };
    let query = sonde_processor::http::QueryPolicy {
        export: true,
        extra_sensitive: vec!["session".into()],
    };
    let mut build = |ev: &sonde_schema::HttpEvent| {
        let service = ServiceInfo { name: "fuzz", namespace: None };
        if let Built::Span(mut s) = span::build(ev, &service, &query, 0, &mut rng) {
            let routed = router.route("fuzz", &s.path);
            s.set_route(routed.route);
            red.record(&s, Some(&metrics), None, &meta);
            let _ = convert::span_data(*s, &scope);
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
