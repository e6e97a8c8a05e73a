//! Any ring-buffer record through decoding, exchange assembly (HTTP/1 pairing and the
//! multiplexed-stream table), span building, route decoration, RED metrics and the OTLP span
//! encoding, as the processor does it. The input is split into records at every 0xff byte, so
//! one input can carry a sequence (an event, its updates, chunks, a close).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sonde_processor::{
    config::Sampler,
    metrics::Metrics,
    otlp::{
        convert,
        encode::{self, Encoder, Queued},
    },
    protocols::{
        db_spans,
        http1::{self, Built, exchange::Assembler, parse::QueryPolicy},
        http2_spans, messaging_spans,
        streams::{StreamExchange, StreamTable},
    },
    red::RedRecorder,
    routes::Router,
    span::{IdSource, ServiceInfo, Span, SpanUse},
};
use sonde_schema::{EVENT_CONN_CLOSED, Record};

/// The span of one stream exchange, as the processor's sink builds it.
fn stream_span(
    meta: &sonde_processor::protocols::streams::ConnMeta,
    ex: StreamExchange<'_>,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    rng: &mut impl sonde_processor::span::IdSource,
) -> Option<Span> {
    match ex {
        StreamExchange::Http2(ex) => http2_spans::build(meta, ex, service, query, 0, rng)
            .ok()
            .map(|(s, _)| s),
        StreamExchange::Db(ex) => Some(db_spans::build(meta, ex, service, true, 0, rng)),
        StreamExchange::Messaging(ex) => Some(messaging_spans::build(meta, ex, service, 0, rng)),
    }
}

/// Ids that are the same on every call: a span built twice from one event is the same span.
struct FixedIds;

impl IdSource for FixedIds {
    fn trace_id(&mut self) -> [u8; 16] {
        [1; 16]
    }
    fn span_id(&mut self) -> [u8; 8] {
        [2; 8]
    }
}

/// The HTTP/1 span of `ev`, built as the sink builds it for `span_use`: written into a finished
/// span when it has one (`spare`, here the last span built, of whatever protocol, given a route
/// as the sink gives one). Checked against the span built from nothing: no field of the spare
/// may show through.
fn http1_span(
    ev: &sonde_schema::HttpEvent,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    span_use: SpanUse,
    spare: Option<&Span>,
) -> Option<Span> {
    let build =
        |spare| match http1::build_for(ev, service, query, 0, &mut FixedIds, span_use, spare) {
            Built::Span(s, _) => Some(s),
            Built::NotHttp => None,
        };
    let fresh = build(None);
    if let Some(spare) = spare {
        let mut spare = Box::new(spare.clone());
        spare.set_route(Some("/spare/{id}".into()));
        let reused = build(Some(spare));
        assert_eq!(format!("{fresh:?}"), format!("{reused:?}"));
    }
    fresh.map(|s| *s)
}

/// How the input's first byte says spans are used: whole, metrics only, or behind a sampler
/// that keeps them (`FixedIds`' trace id is under a ratio of 0.5) or drops them (ratio 0):
/// each builds differently (`SpanUse`).
fn span_use_for(data: &[u8]) -> SpanUse {
    match data.first().map(|b| b % 4) {
        Some(1) => SpanUse::MetricsOnly,
        Some(2) => SpanUse::Sampled(Sampler::TraceIdRatio(0.5)),
        Some(3) => SpanUse::Sampled(Sampler::TraceIdRatio(0.0)),
        _ => SpanUse::Everything,
    }
}

fuzz_target!(|data: &[u8]| {
    let span_use = span_use_for(data);
    let mut assembler = Assembler::new(Duration::from_millis(1), 4);
    let mut streams = StreamTable::new(4, Duration::from_millis(1));
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
    let mut red = RedRecorder::new(metrics.red_store());
    let meta = || convert::ProcessResource {
        pid: 1,
        service_name: "fuzz".into(),
        service_namespace: None,
        exe_path: "/fuzz".into(),
        k8s: None,
    };
    let resource = encode::encode_resource(&convert::resource(&meta(), "fuzz-host"));
    let mut encoder = Encoder::new("fuzz-host");
    let mut encoded = Vec::new();
    let query = QueryPolicy {
        export: true,
        extra_sensitive: vec!["session".into()],
    };
    let service = ServiceInfo {
        name: "fuzz",
        namespace: None,
    };
    let mut finish = |mut s: Span| {
        if s.rpc.is_none() {
            let routed = router.route("fuzz", &s.path);
            s.set_route(routed.route);
        }
        red.record(&s, true, None, &meta);
        let queued = [Queued {
            resource: Some(resource.clone()),
            span: Box::new(s),
        }];
        encoder.request(&[&queued], &mut encoded);
    };
    let mut spans = Vec::new();
    for chunk in data.split(|&b| b == 0xff).filter(|c| !c.is_empty()) {
        match Record::decode(chunk) {
            Ok(Record::Chunk(h, payload)) => streams.feed(&h, payload, now, |meta, ex| {
                spans.extend(stream_span(meta, ex, &service, &query, &mut rng))
            }),
            Ok(Record::Update(u))
                if u.kind == EVENT_CONN_CLOSED
                    && streams.close(u.conn_id, u.end_ns, |meta, ex| {
                        spans.extend(stream_span(meta, ex, &service, &query, &mut rng))
                    }) => {}
            Ok(record) => {
                if let Record::Tuple(t) = &record {
                    streams.apply_tuple(t);
                }
                assembler.feed(record, now, |ev| {
                    spans.extend(http1_span(ev, &service, &query, span_use, spans.last()));
                })
            }
            Err(_) => {}
        }
    }
    let later = now + Duration::from_millis(2);
    assembler.expire(later, |ev| {
        spans.extend(http1_span(ev, &service, &query, span_use, spans.last()));
    });
    streams.expire(later, |meta, ex| {
        spans.extend(stream_span(meta, ex, &service, &query, &mut rng))
    });
    for s in spans {
        finish(s);
    }
});
