//! The OTLP encoding of the RED series (`red_store`): each process's series as one
//! `ScopeMetrics` of cumulative explicit-bucket histograms, one metric per instrument, one
//! data point per series, in `opentelemetry-proto`'s types. Built once per export interval
//! and process, not per request, so plain structs serve; the request is prost-encoded once.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    common::v1::{InstrumentationScope, KeyValue},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, ScopeMetrics, metric,
    },
};

use super::convert::{SCOPE_NAME, SCOPE_VERSION};
use crate::red_store::{HistogramSnapshot, Instrument, Series, SeriesSnapshot, Unit};

/// The scope Sonde's metrics are reported under.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: SCOPE_VERSION.into(),
        ..InstrumentationScope::default()
    }
}

/// The metrics of `series` (one process's) at `now`; `None` when none has a request
/// counted or none is exported over OTLP.
pub fn scope_metrics(series: &[Arc<Series>], now_unix_nano: u64) -> Option<ScopeMetrics> {
    let mut metrics = Vec::new();
    let snapshots: Vec<(&Series, &[opentelemetry::KeyValue], SeriesSnapshot)> = series
        .iter()
        .filter_map(|s| Some((&**s, s.otlp.as_deref()?, s.snapshot())))
        .collect();
    for instrument in Instrument::ALL {
        for family in instrument.families() {
            let data_points: Vec<HistogramDataPoint> = snapshots
                .iter()
                .filter(|(s, _, _)| s.instrument == instrument)
                .filter_map(|(s, attrs, snap)| {
                    let h = (family.pick)(snap).filter(|h| h.count() > 0)?;
                    Some(histogram_point(
                        attrs.iter().map(KeyValue::from).collect(),
                        s.start_unix_nano,
                        now_unix_nano,
                        h,
                    ))
                })
                .collect();
            if data_points.is_empty() {
                continue;
            }
            metrics.push(Metric {
                name: family.names.name.into(),
                description: family.names.description.into(),
                unit: match family.unit {
                    Unit::Seconds => "s",
                    Unit::Bytes => "By",
                }
                .into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Metric::default()
            });
        }
    }
    (!metrics.is_empty()).then(|| ScopeMetrics {
        scope: Some(scope()),
        metrics,
        schema_url: String::new(),
    })
}

/// One cumulative histogram point (also the service graph's, `graph_metrics`).
pub(super) fn histogram_point(
    attributes: Vec<KeyValue>,
    start: u64,
    now: u64,
    h: &HistogramSnapshot,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now.max(start),
        count: h.count(),
        sum: Some(h.sum),
        bucket_counts: h.counts.clone(),
        explicit_bounds: h.bounds.to_vec(),
        // Read while the writer counts a series' first value, the bucket can show before the
        // extremes: no min/max then rather than infinities.
        min: (h.min <= h.max).then_some(h.min),
        max: (h.min <= h.max).then_some(h.max),
        ..HistogramDataPoint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{red_store::RedStore, span::Span};

    #[test]
    fn each_series_is_one_point_of_its_instrument_with_its_counts() {
        let store = RedStore::default();
        let attrs = vec![opentelemetry::KeyValue::new("http.route", "/a")];
        let server = store
            .add(Series::new(
                7,
                Instrument::HttpServer,
                None,
                Some(attrs),
                100,
            ))
            .expect("room");
        let unexported = store
            .add(Series::new(7, Instrument::HttpClient, None, None, 100))
            .expect("room");
        for ms in [3, 30, 300] {
            let s = Span {
                duration_ns: ms * 1_000_000,
                request_body_size: None,
                response_body_size: Some(100),
                ..Span::fixture()
            };
            server.record(&s);
            unexported.record(&s);
        }
        let scope = scope_metrics(&store.live(7), 500).expect("metrics");
        let names: Vec<&str> = scope.metrics.iter().map(|m| m.name.as_str()).collect();
        // No request carried a request body size: that histogram has no point.
        assert_eq!(
            names,
            [
                "http.server.request.duration",
                "http.server.response.body.size"
            ]
        );
        let Some(metric::Data::Histogram(h)) = &scope.metrics[0].data else {
            panic!("a histogram");
        };
        assert_eq!(h.data_points.len(), 1, "the client series is not exported");
        let p = &h.data_points[0];
        assert_eq!(p.count, 3);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (100, 500));
        assert!((p.sum.expect("sum") - 0.333).abs() < 1e-9);
        assert_eq!((p.min, p.max), (Some(0.003), Some(0.3)));
        assert_eq!(p.attributes.len(), 1);
        assert_eq!(scope.metrics[0].unit, "s");
        assert_eq!(scope.metrics[1].unit, "By");
    }
}
