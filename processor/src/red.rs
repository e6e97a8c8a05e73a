//! RED metrics on the hot path: every request is counted once, in the series of the one
//! aggregation both outputs encode (`red_store`). Building a series' labels and attributes
//! (strings for method, route and service) costs more than counting, so each series is
//! found here by one hash of the span's own fields, and its labels are built only the first
//! time it is seen.

use std::{hash::BuildHasher, sync::Arc};

use crate::{
    kube::K8sLabels,
    metrics::Metrics,
    otlp::{Otlp, ProcessResource},
    prehashed::PrehashedMap,
    protocols::messaging::Operation,
    red_store::{Instrument, RedStore, Series},
    semconv::method_value,
    span::{Address, Span, SpanKind},
};

struct Entry {
    pid: u32,
    kind: SpanKind,
    method: &'static str,
    status: u16,
    route: Option<String>,
    peer: Option<(Address, u16)>,
    no_response: bool,
    /// RPC method and status, for RPC spans.
    rpc: Option<(String, Option<u32>)>,
    /// Database system, operation and error code, for database spans.
    db: Option<(&'static str, Option<String>, Option<String>)>,
    /// Operation, topic and error code, for messaging spans.
    messaging: Option<MessagingKey>,
    series: Arc<Series>,
}

impl Entry {
    fn matches(&self, s: &Span, method: &'static str, peer: Option<(Address, u16)>) -> bool {
        self.pid == s.pid
            && self.kind == s.kind
            && self.method == method
            && self.status == s.status
            && self.route.as_deref() == s.route.as_deref()
            && self.peer == peer
            && self.rpc.as_ref().map(|(m, c)| (m.as_str(), *c))
                == s.rpc.as_ref().map(|r| (r.method.as_str(), r.status_code))
            && self
                .db
                .as_ref()
                .map(|(sys, op, e)| (*sys, op.as_deref(), e.as_deref()))
                == s.db
                    .as_ref()
                    .map(|d| (d.system, d.operation.as_deref(), d.error_code.as_deref()))
            && self
                .messaging
                .as_ref()
                .map(|(o, d, e)| (*o, d.as_deref(), *e))
                == messaging_key(s)
            && self.no_response == s.no_response
    }
}

/// What a messaging span's series depends on besides the common fields.
type MessagingKey = (Operation, Option<String>, Option<i16>);
type MessagingKeyRef<'a> = (Operation, Option<&'a str>, Option<i16>);

fn messaging_key(s: &Span) -> Option<MessagingKeyRef<'_>> {
    s.messaging
        .as_ref()
        .map(|m| (m.operation, m.destination.as_deref(), m.error_code))
}

/// Records requests into their series of the store, found through per-series shortcuts.
pub struct RedRecorder {
    store: Arc<RedStore>,
    /// Seeded per process: routes come from request paths, so collisions must not be
    /// choosable from outside.
    hasher: foldhash::fast::RandomState,
    series: PrehashedMap<Vec<Entry>>,
}

impl RedRecorder {
    /// The writer of `store` (`Metrics::red_store`); the only one.
    pub fn new(store: Arc<RedStore>) -> RedRecorder {
        RedRecorder {
            store,
            hasher: foldhash::fast::RandomState::default(),
            series: PrehashedMap::default(),
        }
    }

    /// Counts `s` in its series, labelled for Prometheus when `prometheus` (it is served)
    /// and for OTLP when `otlp` exports metrics.
    pub fn record(
        &mut self,
        s: &Span,
        prometheus: bool,
        otlp: Option<&mut Otlp>,
        meta: &dyn Fn() -> ProcessResource,
    ) {
        let method = method_value(&s.method);
        let peer = (s.kind == SpanKind::Client).then_some((s.server_address, s.server_port));
        let h = self.hasher.hash_one((
            s.pid,
            s.kind,
            method,
            s.status,
            s.route.as_deref(),
            peer,
            s.rpc.as_ref().map(|r| (r.method.as_str(), r.status_code)),
            s.db.as_ref()
                .map(|d| (d.system, d.operation.as_deref(), d.error_code.as_deref())),
            messaging_key(s),
            s.no_response,
        ));
        let found = self
            .series
            .get(&h)
            .and_then(|bucket| bucket.iter().position(|e| e.matches(s, method, peer)));
        let entry = match found {
            Some(i) => &self.series[&h][i],
            None => {
                // Checked before any label is built: at the limit, a flood of new routes
                // costs one hash and a counter each.
                if self.store.is_full() {
                    self.store.count_overflow();
                    return;
                }
                let prometheus = prometheus.then(|| Metrics::red_labels(s, &K8sLabels(meta().k8s)));
                let otlp = otlp.and_then(|o| o.series_attributes(s, meta));
                let start = s.end_unix_nano.saturating_sub(s.duration_ns);
                let series = Series::new(s.pid, Instrument::of(s), prometheus, otlp, start);
                // Beyond the store's limit the request is counted there as overflowed.
                let Some(series) = self.store.add(series) else {
                    return;
                };
                let entry = Entry {
                    pid: s.pid,
                    kind: s.kind,
                    method,
                    status: s.status,
                    route: s.route.clone(),
                    peer,
                    rpc: s.rpc.as_ref().map(|r| (r.method.clone(), r.status_code)),
                    db: s
                        .db
                        .as_ref()
                        .map(|d| (d.system, d.operation.clone(), d.error_code.clone())),
                    messaging: s
                        .messaging
                        .as_ref()
                        .map(|m| (m.operation, m.destination.clone(), m.error_code)),
                    no_response: s.no_response,
                    series,
                };
                let bucket = self.series.entry(h).or_default();
                bucket.push(entry);
                &bucket[bucket.len() - 1]
            }
        };
        entry.series.record(s);
    }

    /// Retires the series of a process that went away (its pid may come back as another):
    /// the store keeps their Prometheus totals and returns them for OTLP's last export (see
    /// `RedStore::forget`).
    pub fn forget(&mut self, pid: u32) -> Vec<Arc<Series>> {
        self.series.retain(|_, bucket| {
            bucket.retain(|e| e.pid != pid);
            !bucket.is_empty()
        });
        self.store.forget(pid)
    }

    /// Series currently kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.series.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::red_store::MAX_SERIES;

    fn span(pid: u32, route: &str, status: u16) -> Span {
        Span {
            path: route.into(),
            route: Some(route.into()),
            status,
            request_body_size: Some(0),
            end_unix_nano: 1_000_000,
            duration_ns: 1_000_000,
            pid,
            tid: pid,
            ..Span::fixture()
        }
    }

    fn meta() -> ProcessResource {
        ProcessResource {
            pid: 1,
            service_name: "svc".into(),
            service_namespace: None,
            exe_path: "/x".into(),
            k8s: None,
        }
    }

    #[test]
    fn counts_go_to_the_right_series_and_shortcuts_are_reused() {
        let m = Metrics::new("h");
        let mut r = RedRecorder::new(m.red_store());
        for _ in 0..5 {
            r.record(&span(1, "/a", 200), true, None, &meta);
        }
        r.record(&span(1, "/a", 500), true, None, &meta);
        r.record(&span(1, "/b", 200), true, None, &meta);
        r.record(&span(2, "/a", 200), true, None, &meta);
        assert_eq!(r.len(), 4);
        let text = m.encode();
        let count = |route: &str, status: u16| count_in(&text, route, status);
        // pids 1 and 2 share a service, hence a Prometheus series.
        assert_eq!(count("/a", 200), Some(6), "{text}");
        assert_eq!(count("/a", 500), Some(1));
        assert_eq!(count("/b", 200), Some(1));
        r.forget(1);
        assert_eq!(r.len(), 1);
        // The departed process's counts stay in its label set: the histogram never goes back.
        let text = m.encode();
        assert_eq!(count_in(&text, "/a", 200), Some(6), "{text}");
        r.record(&span(3, "/a", 200), true, None, &meta);
        assert_eq!(count_in(&m.encode(), "/a", 200), Some(7));
    }

    fn count_in(text: &str, route: &str, status: u16) -> Option<u64> {
        text.lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains(&format!("http_route=\"{route}\""))
                    && l.contains(&format!("http_response_status_code=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    }

    #[test]
    fn series_are_bounded_and_requests_beyond_are_counted() {
        let m = Metrics::new("h");
        let mut r = RedRecorder::new(m.red_store());
        for i in 0..(MAX_SERIES + 10) {
            r.record(&span(1, &format!("/r{i}"), 200), true, None, &meta);
        }
        assert_eq!(r.len(), MAX_SERIES);
        assert_eq!(m.red_store().overflowed(), 10);
        assert!(m.encode().contains("sonde_red_series_overflow_total 10"));
    }
}
