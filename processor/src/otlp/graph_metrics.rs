//! The OTLP encoding of the service graph (`service_graph`): one process's cells as the
//! monotonic cumulative sums `traces_service_graph_request_total` and `…_failed_total` and
//! the cumulative histograms `traces_service_graph_request_client` / `…_server` (unit `s`),
//! one data point per edge, attributed `client`, `client_namespace`, `connection_type`,
//! `server`, `server_namespace`. Names, units, descriptions, attributes, temporality and
//! scope (`sonde`, no version) are those the OpenTelemetry SDK instruments exported before
//! the counting moved into `service_graph::GraphStore` (a test compares the two); as with the
//! SDK, a point appears once something was counted in it. The attributes are sorted by key
//! (the SDK sent either that order or the recorded one). Built once per export interval and
//! process, not per request.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    common::v1::{InstrumentationScope, KeyValue},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ScopeMetrics, Sum, metric, number_data_point,
    },
};

use super::{convert::SCOPE_NAME, red_metrics::histogram_point};
use crate::service_graph::{COUNTERS, Cell, CellSnapshot, HISTOGRAMS};

/// Adds the metrics of `cells` (one process's) at `now` to `scopes`: into the scope the
/// SDK's meter reports under (`sonde` without a version, shared with process metrics) when
/// present, else a new one. Nothing when no cell counted anything.
pub fn add_scope_metrics(scopes: &mut Vec<ScopeMetrics>, cells: &[Arc<Cell>], now_unix_nano: u64) {
    let metrics = metrics(cells, now_unix_nano);
    if metrics.is_empty() {
        return;
    }
    let sdk_scope = |s: &ScopeMetrics| {
        s.scope
            .as_ref()
            .is_some_and(|sc| sc.name == SCOPE_NAME && sc.version.is_empty())
    };
    match scopes.iter_mut().find(|s| sdk_scope(s)) {
        Some(s) => s.metrics.extend(metrics),
        None => scopes.push(ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.into(),
                ..InstrumentationScope::default()
            }),
            metrics,
            schema_url: String::new(),
        }),
    }
}

/// The four metrics of `cells`, each left out when it has no point.
pub fn metrics(cells: &[Arc<Cell>], now: u64) -> Vec<Metric> {
    let snapshots: Vec<(&Cell, CellSnapshot)> = cells
        .iter()
        .filter(|c| c.edge.is_live())
        .map(|c| (&**c, c.snapshot()))
        .collect();
    let mut out = Vec::with_capacity(4);
    for f in &COUNTERS {
        let value = f.value;
        let data_points: Vec<NumberDataPoint> = snapshots
            .iter()
            .filter(|(_, s)| value(s) > 0)
            .map(|(c, s)| NumberDataPoint {
                attributes: attributes(c),
                start_time_unix_nano: c.start_unix_nano,
                time_unix_nano: now.max(c.start_unix_nano),
                value: Some(number_data_point::Value::AsInt(
                    i64::try_from(value(s)).unwrap_or(i64::MAX),
                )),
                ..NumberDataPoint::default()
            })
            .collect();
        if !data_points.is_empty() {
            out.push(Metric {
                name: f.otlp.into(),
                description: f.help.into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Metric::default()
            });
        }
    }
    for f in &HISTOGRAMS {
        let pick = f.pick;
        let data_points: Vec<HistogramDataPoint> = snapshots
            .iter()
            .filter(|(_, s)| pick(s).count() > 0)
            .map(|(c, s)| histogram_point(attributes(c), c.start_unix_nano, now, pick(s)))
            .collect();
        if !data_points.is_empty() {
            out.push(Metric {
                name: f.name.into(),
                description: f.help.into(),
                unit: "s".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Metric::default()
            });
        }
    }
    out
}

fn attributes(c: &Cell) -> Vec<KeyValue> {
    c.edge
        .labels
        .otlp_attributes()
        .into_iter()
        .map(|(k, v)| KeyValue::from(&opentelemetry::KeyValue::new(k, v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Instant,
    };

    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::{
        metrics::Metrics,
        otlp::ProcessResource,
        service_graph::{SERIES_TTL, SERVER_HELP, ServiceGraph, TOTAL_HELP},
        span::{Address, Span, SpanKind},
    };

    /// A span of `service` (process `pid`) on 127.0.0.1:`port` → 127.0.0.1:`server_port`.
    fn span(kind: SpanKind, pid: u32, service: &str, port: u16, server_port: u16, ms: u64) -> Span {
        let lo = Address(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        Span {
            kind,
            pid,
            service_name: service.into(),
            service_namespace: Some("shop".into()),
            status: 200,
            client_address: lo,
            client_port: port,
            server_address: lo,
            server_port,
            duration_ns: ms * 1_000_000,
            ..Span::fixture()
        }
    }

    fn attrs(kvs: &[KeyValue]) -> Vec<(&str, &str)> {
        kvs.iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => (kv.key.as_str(), s.as_str()),
                    other => panic!("not a string: {other:?}"),
                },
            )
            .collect()
    }

    fn sum(m: &Metric) -> &Sum {
        match &m.data {
            Some(metric::Data::Sum(s)) => s,
            other => panic!("{}: not a sum: {other:?}", m.name),
        }
    }

    fn histogram(m: &Metric) -> &Histogram {
        match &m.data {
            Some(metric::Data::Histogram(h)) => h,
            other => panic!("{}: not a histogram: {other:?}", m.name),
        }
    }

    fn int(p: &NumberDataPoint) -> i64 {
        match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            other => panic!("not an int: {other:?}"),
        }
    }

    /// front (pid 1) calls back (pid 2) 3 times (server 2, 2, 30 ms; client 5, 5, 60 ms), one
    /// failing, and an uninstrumented peer on port 9999 twice (client 7 ms).
    fn graph(m: &Metrics, now: Instant) -> (ServiceGraph, Arc<crate::service_graph::GraphStore>) {
        let store = m.service_graph.as_ref().expect("on").store();
        let mut g = ServiceGraph::new((false, false), now, Arc::clone(&store));
        let f = m.service_graph.as_ref();
        for (i, (c, s, status)) in [(5, 2, 200), (5, 2, 503), (60, 30, 200)]
            .into_iter()
            .enumerate()
        {
            let port = 40000 + i as u16;
            let mut server = span(SpanKind::Server, 2, "back", port, 8080, s);
            server.status = status;
            let mut client = span(SpanKind::Client, 1, "front", port, 8080, c);
            client.status = status;
            g.record(&server, now, f, None, &ProcessResource::bare);
            g.record(&client, now, f, None, &ProcessResource::bare);
        }
        for i in 0..2 {
            g.record(
                &span(SpanKind::Client, 1, "front", 41000 + i, 9999, 7),
                now,
                f,
                None,
                &ProcessResource::bare,
            );
        }
        g.expire(
            Some(now + crate::service_graph::PAIRING_WINDOW),
            f,
            None,
            &ProcessResource::bare,
        );
        (g, store)
    }

    #[test]
    fn the_server_process_reports_the_counts_as_the_sdk_did() {
        let m = Metrics::with_service_graph("h", true);
        let (_g, store) = graph(&m, Instant::now());
        let cells = store.cells(2);
        let start = cells[0].start_unix_nano;
        let metrics = metrics(&cells, start + 10);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "traces_service_graph_request_total",
                "traces_service_graph_request_failed_total",
                "traces_service_graph_request_server",
            ],
            "no client durations on the server's resource"
        );
        let pair = [
            ("client", "front"),
            ("client_namespace", "shop"),
            ("connection_type", ""),
            ("server", "back"),
            ("server_namespace", "shop"),
        ];
        for (m, value) in metrics[..2].iter().zip([3, 1]) {
            let s = sum(m);
            assert!(s.is_monotonic);
            assert_eq!(
                s.aggregation_temporality,
                AggregationTemporality::Cumulative as i32
            );
            assert_eq!(m.unit, "");
            assert_eq!(s.data_points.len(), 1);
            let p = &s.data_points[0];
            assert_eq!(int(p), value, "{}", m.name);
            assert_eq!(attrs(&p.attributes), pair);
            assert_eq!(
                (p.start_time_unix_nano, p.time_unix_nano),
                (start, start + 10)
            );
        }
        assert_eq!(metrics[0].description, TOTAL_HELP);
        let h = histogram(&metrics[2]);
        assert_eq!(metrics[2].unit, "s");
        assert_eq!(metrics[2].description, SERVER_HELP);
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.count, 3);
        assert_eq!(p.explicit_bounds, crate::semconv::DURATION_BUCKETS);
        // 2 ms twice in le=0.005, 30 ms in le=0.05.
        let mut expected = vec![0u64; 16];
        expected[1] = 2;
        expected[4] = 1;
        assert_eq!(p.bucket_counts, expected);
        assert!((p.sum.expect("sum") - 0.034).abs() < 1e-9);
        assert_eq!((p.min, p.max), (Some(0.002), Some(0.03)));
        assert_eq!(attrs(&p.attributes), pair);
    }

    #[test]
    fn the_client_process_reports_its_durations_and_its_virtual_node_edge() {
        let m = Metrics::with_service_graph("h", true);
        let (_g, store) = graph(&m, Instant::now());
        let cells = store.cells(1);
        let metrics = metrics(&cells, u64::MAX);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        // No failure on its own edge: no failed point, as the SDK made none.
        assert_eq!(
            names,
            [
                "traces_service_graph_request_total",
                "traces_service_graph_request_client",
            ]
        );
        let total = &sum(&metrics[0]).data_points;
        assert_eq!(total.len(), 1, "the pair counts on the server's resource");
        assert_eq!(int(&total[0]), 2);
        assert_eq!(
            attrs(&total[0].attributes),
            [
                ("client", "front"),
                ("client_namespace", "shop"),
                ("connection_type", "virtual_node"),
                ("server", "127.0.0.1"),
                ("server_namespace", ""),
            ]
        );
        let mut points = histogram(&metrics[1]).data_points.clone();
        points.sort_by_key(|p| p.count);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].count, 2);
        assert_eq!(points[0].bucket_counts[2], 2, "7 ms in le=0.01");
        assert_eq!(points[1].count, 3);
        assert_eq!(points[1].bucket_counts[1], 2, "5 ms in le=0.005");
        assert_eq!(points[1].bucket_counts[5], 1, "60 ms in le=0.075");
        assert!((points[1].sum.expect("sum") - 0.07).abs() < 1e-9);
        assert_eq!(attrs(&points[1].attributes)[3], ("server", "back"));
    }

    #[test]
    fn an_edge_past_its_ttl_is_no_longer_reported() {
        let m = Metrics::with_service_graph("h", true);
        let now = Instant::now();
        let (mut g, store) = graph(&m, now);
        let cells = store.cells(1);
        assert_eq!(metrics(&cells, 0).len(), 2);
        g.expire(
            Some(now + SERIES_TTL * 2),
            m.service_graph.as_ref(),
            None,
            &ProcessResource::bare,
        );
        assert!(store.is_empty());
        assert!(metrics(&cells, 0).is_empty(), "its cells say so");
        let mut scopes = Vec::new();
        add_scope_metrics(&mut scopes, &cells, 0);
        assert!(scopes.is_empty());
    }

    #[test]
    fn the_metrics_join_the_sdk_scope_when_there_is_one() {
        let m = Metrics::with_service_graph("h", true);
        let (_g, store) = graph(&m, Instant::now());
        let red = ScopeMetrics {
            scope: Some(crate::otlp::red_metrics::scope()),
            ..ScopeMetrics::default()
        };
        let mut scopes = vec![red.clone()];
        add_scope_metrics(&mut scopes, &store.cells(2), 0);
        assert_eq!(
            scopes.len(),
            2,
            "the RED scope has a version: not the SDK's"
        );
        let scope = scopes[1].scope.as_ref().expect("scope");
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("sonde", ""));
        assert_eq!(scopes[1].metrics.len(), 3);
        let sdk = ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "sonde".into(),
                ..InstrumentationScope::default()
            }),
            metrics: vec![Metric {
                name: "process.cpu.time".into(),
                ..Metric::default()
            }],
            schema_url: String::new(),
        };
        let mut scopes = vec![red, sdk];
        add_scope_metrics(&mut scopes, &store.cells(2), 0);
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[1].metrics.len(), 4);
    }

    /// The same requests through the SDK instruments the service graph used before (built
    /// as they were), collected and converted as the worker did: the same scope, metrics
    /// and points, timestamps aside.
    #[test]
    fn identical_to_what_the_sdk_instruments_exported() {
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_sdk::metrics::{
            ManualReader, SdkMeterProvider, data::ResourceMetrics, reader::MetricReader as _,
        };

        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(crate::otlp::sdk_reference::SharedReader(Arc::clone(
                &reader,
            )))
            .build();
        let meter = provider.meter("sonde");
        let total = meter
            .u64_counter("traces_service_graph_request_total")
            .with_description("number of service calls in trace service graph metrics format")
            .build();
        let failed = meter
            .u64_counter("traces_service_graph_request_failed_total")
            .with_description(
                "number of failed service calls in trace service graph metrics format",
            )
            .build();
        let server = meter
            .f64_histogram("traces_service_graph_request_server")
            .with_unit("s")
            .with_description(
                "duration of server service calls, in seconds, in trace service graph metrics format",
            )
            .with_boundaries(crate::semconv::DURATION_BUCKETS.to_vec())
            .build();
        let kv = opentelemetry::KeyValue::new;
        let attrs = [
            kv("client", "front"),
            kv("client_namespace", "shop"),
            kv("server", "back"),
            kv("server_namespace", "shop"),
            kv("connection_type", ""),
        ];
        // What `graph` counts on the server process (pid 2).
        for (secs, fails) in [(0.002, false), (0.002, true), (0.03, false)] {
            total.add(1, &attrs);
            if fails {
                failed.add(1, &attrs);
            }
            server.record(secs, &attrs);
        }
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).expect("collects");
        let request = ExportMetricsServiceRequest::from(&rm);
        let mut sdk = request.resource_metrics[0].scope_metrics[0].clone();

        let m = Metrics::with_service_graph("h", true);
        let (_g, store) = graph(&m, Instant::now());
        let mut ours = Vec::new();
        add_scope_metrics(&mut ours, &store.cells(2), 0);
        let mut ours = ours.remove(0);
        for scope in [&mut sdk, &mut ours] {
            scope.metrics.sort_by(|a, b| a.name.cmp(&b.name));
            for m in &mut scope.metrics {
                // The SDK exported a point's attributes either as recorded or sorted by key
                // (whichever its map met first): the order means nothing in OTLP.
                let by_key = |a: &KeyValue, b: &KeyValue| a.key.cmp(&b.key);
                match &mut m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| {
                        (p.start_time_unix_nano, p.time_unix_nano) = (0, 0);
                        p.attributes.sort_by(by_key);
                    }),
                    Some(metric::Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| {
                        (p.start_time_unix_nano, p.time_unix_nano) = (0, 0);
                        p.attributes.sort_by(by_key);
                    }),
                    _ => {}
                }
            }
        }
        assert_eq!(ours, sdk);
    }
}
