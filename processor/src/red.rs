//! RED metrics on the hot path: every request is counted in the Prometheus histograms and the
//! OTLP histograms of its series. Building a series' labels (strings for method, route and
//! service) and finding its histograms costs more than counting, so the handles and
//! attributes of each series are kept here, found by one hash of the span's own fields,
//! and built only the first time a series is seen.

use std::hash::BuildHasher;

use opentelemetry::KeyValue;

use crate::{
    kube::K8sLabels,
    metrics::{Metrics, PromSeries},
    otlp::{Otlp, ProcessResource},
    prehashed::PrehashedMap,
    protocols::messaging::Operation,
    semconv::method_value,
    span::{Address, Span, SpanKind},
};

/// Series kept at most; beyond, the cache starts over (the series themselves live on in
/// their registries; only the shortcuts are rebuilt).
const MAX_SERIES: usize = 16384;

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
    prometheus: Option<PromSeries>,
    otlp: Option<Vec<KeyValue>>,
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

/// Records requests into the Prometheus and OTLP histograms through per-series shortcuts.
#[derive(Default)]
pub struct RedRecorder {
    /// Seeded per process: routes come from request paths, so collisions must not be
    /// choosable from outside.
    hasher: foldhash::fast::RandomState,
    series: PrehashedMap<Vec<Entry>>,
    len: usize,
}

impl RedRecorder {
    /// Counts `s` in the Prometheus histograms (when `prometheus` is given) and the OTLP
    /// ones (when `otlp` exports metrics).
    pub fn record(
        &mut self,
        s: &Span,
        prometheus: Option<&Metrics>,
        mut otlp: Option<&mut Otlp>,
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
                if self.len >= MAX_SERIES {
                    self.series.clear();
                    self.len = 0;
                }
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
                    prometheus: prometheus.map(|m| m.series(s, &K8sLabels(meta().k8s))),
                    otlp: otlp
                        .as_deref_mut()
                        .and_then(|o| o.series_attributes(s, meta)),
                };
                self.len += 1;
                let bucket = self.series.entry(h).or_default();
                bucket.push(entry);
                &bucket[bucket.len() - 1]
            }
        };
        if let Some(p) = &entry.prometheus {
            p.observe(s);
        }
        if let (Some(o), Some(attrs)) = (otlp, &entry.otlp) {
            o.record_with(s, attrs);
        }
    }

    /// Drops the shortcuts of a process that went away (its pid may come back as another).
    pub fn forget(&mut self, pid: u32) {
        let mut removed = 0;
        self.series.retain(|_, bucket| {
            let before = bucket.len();
            bucket.retain(|e| e.pid != pid);
            removed += before - bucket.len();
            !bucket.is_empty()
        });
        self.len -= removed;
    }

    /// Series currently kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = RedRecorder::default();
        for _ in 0..5 {
            r.record(&span(1, "/a", 200), Some(&m), None, &meta);
        }
        r.record(&span(1, "/a", 500), Some(&m), None, &meta);
        r.record(&span(1, "/b", 200), Some(&m), None, &meta);
        r.record(&span(2, "/a", 200), Some(&m), None, &meta);
        assert_eq!(r.len(), 4);
        let text = m.encode();
        let count = |route: &str, status: u16| {
            text.lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_count{")
                        && l.contains(&format!("http_route=\"{route}\""))
                        && l.contains(&format!("http_response_status_code=\"{status}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        // pids 1 and 2 share a service, hence a Prometheus series.
        assert_eq!(count("/a", 200), Some(6), "{text}");
        assert_eq!(count("/a", 500), Some(1));
        assert_eq!(count("/b", 200), Some(1));
        r.forget(1);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let m = Metrics::new("h");
        let mut r = RedRecorder::default();
        for i in 0..(MAX_SERIES + 10) {
            r.record(&span(1, &format!("/r{i}"), 200), Some(&m), None, &meta);
        }
        assert!(r.len() <= MAX_SERIES);
    }
}
