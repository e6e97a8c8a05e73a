//! The one aggregation of RED metrics. Every request is counted once, into the histograms of
//! its series (`Series`), and both outputs encode that state: the Prometheus exposition
//! (`metrics::RedCollector`: series of one label set summed over the processes that share it)
//! and OTLP (`otlp::red_metrics`: one resource per process). Before, a request was recorded
//! twice, into a `prometheus-client` family and an OpenTelemetry SDK instrument, each hashing
//! its attribute set again.
//!
//! One thread writes (the reader thread, through `red::RedRecorder`), so counting is a plain
//! load and store of an atomic, not a locked read-modify-write; the Prometheus and OTLP
//! threads read at any time and may see a request in its bucket before its sum, which their
//! next read corrects. Counting a request of a known series takes no lock; adding a series
//! (its first request) and retiring a process's series take the store's lock, which a scrape
//! also holds while it sums the series.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use opentelemetry::KeyValue;

use crate::{
    metrics::PromLabels,
    protocols::{db, grpc, messaging},
    semconv::{self, DURATION_BUCKETS, RedInstruments, SIZE_BUCKETS},
    span::{Span, SpanKind},
};

/// Live series kept at most. A request of a new series
/// beyond it is not counted in any histogram but in `RedStore::overflowed`, and the first
/// overflow is logged: a route template that lets request paths through is the usual cause.
pub const MAX_SERIES: usize = 16384;

/// Which histograms a request is counted in: the OpenTelemetry instrument, by protocol and
/// span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    DbServer,
    DbClient,
    MessagingClient,
    MessagingProcess,
}

impl Instrument {
    /// Every instrument, in the order the outputs list them.
    pub const ALL: [Instrument; 8] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
        Instrument::DbClient,
        Instrument::DbServer,
        Instrument::MessagingClient,
        Instrument::MessagingProcess,
    ];

    /// The instrument a span's request is counted in.
    pub fn of(s: &Span) -> Instrument {
        if let Some(m) = &s.messaging {
            return match m.operation {
                messaging::Operation::Publish | messaging::Operation::Metadata => {
                    Instrument::MessagingClient
                }
                messaging::Operation::Process => Instrument::MessagingProcess,
            };
        }
        match (s.kind, s.rpc.is_some(), s.db.is_some()) {
            (SpanKind::Server, _, true) => Instrument::DbServer,
            (SpanKind::Client, _, true) => Instrument::DbClient,
            (SpanKind::Server, true, _) => Instrument::RpcServer,
            (SpanKind::Client, true, _) => Instrument::RpcClient,
            (SpanKind::Server, false, false) => Instrument::HttpServer,
            (SpanKind::Client, false, false) => Instrument::HttpClient,
        }
    }

    /// The duration histogram's name and description.
    pub fn duration(self) -> &'static semconv::Instrument {
        match self {
            Instrument::HttpServer => &semconv::SERVER.duration,
            Instrument::HttpClient => &semconv::CLIENT.duration,
            Instrument::RpcServer => &grpc::SERVER_DURATION,
            Instrument::RpcClient => &grpc::CLIENT_DURATION,
            Instrument::DbServer => &db::SERVER_DURATION,
            Instrument::DbClient => &db::CLIENT_DURATION,
            Instrument::MessagingClient => &messaging::CLIENT_OPERATION_DURATION,
            Instrument::MessagingProcess => &messaging::PROCESS_DURATION,
        }
    }

    /// HTTP's instruments, which also count body sizes.
    pub fn http(self) -> Option<&'static RedInstruments> {
        match self {
            Instrument::HttpServer => Some(&semconv::SERVER),
            Instrument::HttpClient => Some(&semconv::CLIENT),
            _ => None,
        }
    }
}

/// The unit of a histogram family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
}

/// One histogram family of an instrument, as both outputs list it: its name and
/// description, its unit, and which of a series' histograms it shows.
pub struct Family {
    pub names: &'static semconv::Instrument,
    pub unit: Unit,
    pub pick: fn(&SeriesSnapshot) -> Option<&HistogramSnapshot>,
}

impl Instrument {
    /// Its families: the duration, and for HTTP the request and response body sizes.
    pub fn families(self) -> Vec<Family> {
        let mut families = vec![Family {
            names: self.duration(),
            unit: Unit::Seconds,
            pick: |s| Some(&s.duration),
        }];
        if let Some(http) = self.http() {
            families.push(Family {
                names: &http.request_size,
                unit: Unit::Bytes,
                pick: |s| s.request_size.as_ref(),
            });
            families.push(Family {
                names: &http.response_size,
                unit: Unit::Bytes,
                pick: |s| s.response_size.as_ref(),
            });
        }
        families
    }
}

/// A histogram with fixed bucket bounds, written by one thread (see the module doc).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound (values up to and including it), then the values above the last.
    buckets: Box<[AtomicU64]>,
    /// `f64` bits.
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
        }
    }

    /// Counts one value. Only the writing thread calls this.
    pub(crate) fn record(&self, v: f64) {
        // The first bound at or above `v`: Prometheus' `le` and OTLP's explicit bounds agree
        // that a bucket includes its upper bound.
        let i = self.bounds.partition_point(|b| *b < v);
        let bucket = &self.buckets[i];
        bucket.store(bucket.load(Relaxed) + 1, Relaxed);
        let f = |a: &AtomicU64| f64::from_bits(a.load(Relaxed));
        self.sum.store((f(&self.sum) + v).to_bits(), Relaxed);
        if v < f(&self.min) {
            self.min.store(v.to_bits(), Relaxed);
        }
        if v > f(&self.max) {
            self.max.store(v.to_bits(), Relaxed);
        }
    }

    /// What the histogram holds now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let f = |a: &AtomicU64| f64::from_bits(a.load(Relaxed));
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: f(&self.sum),
            min: f(&self.min),
            max: f(&self.max),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds`.
    pub counts: Vec<u64>,
    pub sum: f64,
    /// `+inf` / `-inf` while empty.
    pub min: f64,
    pub max: f64,
}

impl HistogramSnapshot {
    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts (same bounds) into this one.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// The histograms of one series at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    pub duration: HistogramSnapshot,
    pub request_size: Option<HistogramSnapshot>,
    pub response_size: Option<HistogramSnapshot>,
}

impl SeriesSnapshot {
    fn merge(&mut self, other: &SeriesSnapshot) {
        self.duration.merge(&other.duration);
        for (a, b) in [
            (&mut self.request_size, &other.request_size),
            (&mut self.response_size, &other.response_size),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b);
            }
        }
    }
}

/// One series of one process: what it is counted under in each output, and its histograms.
#[derive(Debug)]
pub struct Series {
    pub pid: u32,
    pub instrument: Instrument,
    /// Its Prometheus labels, when Prometheus is served.
    pub prometheus: Option<PromLabels>,
    /// Its OTLP attributes, when metrics are exported over OTLP.
    pub otlp: Option<Vec<KeyValue>>,
    /// When it was first counted (OTLP's cumulative start time).
    pub start_unix_nano: u64,
    duration: Histogram,
    request_size: Option<Histogram>,
    response_size: Option<Histogram>,
}

impl Series {
    /// A series of `instrument` with no request counted yet.
    pub fn new(
        pid: u32,
        instrument: Instrument,
        prometheus: Option<PromLabels>,
        otlp: Option<Vec<KeyValue>>,
        start_unix_nano: u64,
    ) -> Series {
        let http = instrument.http().is_some();
        Series {
            pid,
            instrument,
            prometheus,
            otlp,
            start_unix_nano,
            duration: Histogram::new(&DURATION_BUCKETS),
            request_size: http.then(|| Histogram::new(&SIZE_BUCKETS)),
            response_size: http.then(|| Histogram::new(&SIZE_BUCKETS)),
        }
    }

    /// Counts one request of this series. Only the writing thread calls this.
    pub fn record(&self, s: &Span) {
        self.duration.record(s.duration_ns as f64 / 1e9);
        if let (Some(h), Some(n)) = (&self.request_size, s.request_body_size) {
            h.record(n as f64);
        }
        if let (Some(h), Some(n)) = (&self.response_size, s.response_body_size) {
            h.record(n as f64);
        }
    }

    pub fn snapshot(&self) -> SeriesSnapshot {
        SeriesSnapshot {
            duration: self.duration.snapshot(),
            request_size: self.request_size.as_ref().map(Histogram::snapshot),
            response_size: self.response_size.as_ref().map(Histogram::snapshot),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<u32, Vec<Arc<Series>>>,
    /// Prometheus: the totals of label sets whose processes went away, so a scraped
    /// histogram never goes backwards.
    retired: HashMap<(Instrument, PromLabels), SeriesSnapshot>,
}

/// Every series, shared by the writer and the two outputs.
#[derive(Debug, Default)]
pub struct RedStore {
    state: Mutex<State>,
    /// Live series; changed under the lock, read without it.
    len: AtomicUsize,
    overflowed: AtomicU64,
    overflow_logged: AtomicBool,
}

impl RedStore {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when no series can be added: a caller counts its request with
    /// `count_overflow` rather than build a series' labels for nothing.
    pub fn is_full(&self) -> bool {
        self.len.load(Relaxed) >= MAX_SERIES
    }

    /// Counts a request of a new series that found the store full.
    pub fn count_overflow(&self) {
        self.overflowed.fetch_add(1, Relaxed);
        if !self.overflow_logged.swap(true, Relaxed) {
            tracing::warn!(
                limit = MAX_SERIES,
                "RED metric series limit reached: requests of new series are counted in sonde_red_series_overflow only (are routes configured so that request paths do not become series?)"
            );
        }
    }

    /// Adds a series; `None` (and the request counted as overflowed) beyond `MAX_SERIES`.
    pub fn add(&self, series: Series) -> Option<Arc<Series>> {
        let mut st = self.state();
        if self.len.load(Relaxed) >= MAX_SERIES {
            drop(st);
            self.count_overflow();
            return None;
        }
        self.len.fetch_add(1, Relaxed);
        let series = Arc::new(series);
        st.live
            .entry(series.pid)
            .or_default()
            .push(Arc::clone(&series));
        Some(series)
    }

    /// Requests not counted in any series because of `MAX_SERIES`.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Relaxed)
    }

    /// Retires the series of a process that went away (or whose resource changed): their
    /// Prometheus totals live on in their label sets; they are returned for OTLP's last
    /// export of the process (`otlp::Otlp::forget`), and no longer counted here.
    pub fn forget(&self, pid: u32) -> Vec<Arc<Series>> {
        let mut st = self.state();
        let Some(gone) = st.live.remove(&pid) else {
            return Vec::new();
        };
        for s in &gone {
            if let Some(labels) = &s.prometheus {
                let snap = s.snapshot();
                match st.retired.get_mut(&(s.instrument, labels.clone())) {
                    Some(total) => total.merge(&snap),
                    None => {
                        st.retired.insert((s.instrument, labels.clone()), snap);
                    }
                }
            }
        }
        self.len.fetch_sub(gone.len(), Relaxed);
        gone
    }

    /// Prometheus: each label set's histograms, summed over its live and retired series.
    pub fn prometheus_totals(&self) -> HashMap<(Instrument, PromLabels), SeriesSnapshot> {
        let st = self.state();
        let mut totals = st.retired.clone();
        for s in st.live.values().flatten() {
            let Some(labels) = &s.prometheus else {
                continue;
            };
            let snap = s.snapshot();
            match totals.get_mut(&(s.instrument, labels.clone())) {
                Some(total) => total.merge(&snap),
                None => {
                    totals.insert((s.instrument, labels.clone()), snap);
                }
            }
        }
        totals
    }

    /// OTLP: the live series of `pid`.
    pub fn live(&self, pid: u32) -> Vec<Arc<Series>> {
        self.state().live.get(&pid).cloned().unwrap_or_default()
    }

    /// Live series.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_include_their_upper_bound_and_sums_add_up() {
        let h = Histogram::new(&DURATION_BUCKETS);
        for v in [0.0, 0.005, 0.0051, 0.3, 11.0] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.counts[0], 1, "0.0 in le=0");
        assert_eq!(s.counts[1], 1, "0.005 in le=0.005");
        assert_eq!(s.counts[2], 1, "0.0051 in le=0.01");
        assert_eq!(s.counts[8], 1, "0.3 in le=0.5");
        assert_eq!(s.counts[15], 1, "11 above the last bound");
        assert!((s.sum - 11.3101).abs() < 1e-9);
        assert_eq!((s.min, s.max), (0.0, 11.0));
    }

    fn series(pid: u32) -> Series {
        Series::new(pid, Instrument::HttpServer, None, None, 0)
    }

    #[test]
    fn retired_series_are_handed_back_and_no_longer_counted() {
        let store = RedStore::default();
        store.add(series(1)).expect("room");
        store.add(series(1)).expect("room");
        store.add(series(2)).expect("room");
        assert_eq!(store.forget(1).len(), 2);
        assert_eq!(store.len(), 1);
        assert!(store.forget(1).is_empty());
        assert_eq!(store.live(2).len(), 1);
    }

    #[test]
    fn the_store_is_bounded_and_counts_what_it_refuses() {
        let store = RedStore::default();
        for _ in 0..MAX_SERIES {
            store.add(series(1)).expect("room");
        }
        assert!(store.is_full());
        assert!(store.add(series(1)).is_none());
        assert_eq!(store.overflowed(), 1);
        assert_eq!(store.forget(1).len(), MAX_SERIES);
        assert!(store.add(series(2)).is_some(), "room again");
    }
}
