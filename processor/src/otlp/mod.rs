//! OTLP export of spans and RED metrics (`otel_traces_export`, `otel_metrics_export`) with
//! `opentelemetry-otlp`, over gRPC or HTTP/protobuf, optionally gzip-compressed, over TLS
//! (rustls with ring) for `https://` endpoints.
//!
//! The ring-buffer reader never waits on the network. Sampled spans are handed to the
//! exporter thread once per pass of the reader's loop, within a bound (`queue_size`) counted
//! from hand-over to export; beyond it a span is dropped and counted. Metrics are recorded in
//! memory by the reader thread into one `SdkMeterProvider` per instrumented process, each
//! with its own resource (`service.*`, `process.*`, `host.name`, `telemetry.sdk.*`), so
//! counts never depend on the collector. One exporter thread, running a single-threaded
//! Tokio runtime, batches spans per process and sends them, and collects and sends the
//! metrics every `interval`. Failed exports are retried with backoff by the exporter, then
//! counted and dropped; the next batch reconnects by itself once the collector is back.
//!
//! The SDK's own batch processor and periodic reader are not used: both serve one resource
//! per provider, while Sonde exports for many processes, each its own resource.

pub mod convert;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context;
use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider},
};
use opentelemetry_otlp::{
    Compression, MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter, reader::MetricReader,
    },
    trace::SpanExporter as _,
};
use prometheus_client::metrics::counter::Counter;
use sonde_config::{MetricsExport, OtlpEndpoint, OtlpProtocol, TracesExport};
use tracing::{debug, info, warn};

use crate::{
    metrics::{DURATION_BUCKETS, SIZE_BUCKETS},
    span::{Span, SpanKind},
};
pub use convert::ProcessMeta;
use convert::ServiceLabels;

/// Processes with OTLP state at once; spans and metrics of processes beyond this are
/// exported under a shared resource naming only the service.
pub const MAX_PROCESSES: usize = 4096;

/// What the export path did; registered as `sonde_otlp_*` in the Prometheus registry
/// (the counters share their values with their clones there).
#[derive(Debug, Default, Clone)]
pub struct ExportCounters {
    /// Spans handed to an exporter that accepted them.
    pub spans_exported: Counter,
    /// Spans dropped because the export queue was full.
    pub spans_dropped_queue_full: Counter,
    /// Spans dropped because their export failed after retries.
    pub spans_dropped_export_failed: Counter,
    /// Metric export requests accepted.
    pub metric_exports: Counter,
    /// Metric export requests that failed after retries.
    pub metric_exports_failed: Counter,
}

/// The instruments of one process, used by the reader thread.
struct ProcessInstruments {
    labels: ServiceLabels,
    server_duration: Histogram<f64>,
    server_request_size: Histogram<u64>,
    server_response_size: Histogram<u64>,
    client_duration: Histogram<f64>,
    client_request_size: Histogram<u64>,
    client_response_size: Histogram<u64>,
}

/// A process's metric pipeline, collected by the exporter thread.
struct ProcessMeters {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    /// Set when the process went away: exported once more, then dropped.
    removed: bool,
}

/// The reader handle `SdkMeterProvider::with_reader` takes, sharing the `ManualReader` the
/// exporter thread collects from.
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// State shared between the reader thread and the exporter thread.
struct Shared {
    host: String,
    /// Resource per process, for span batches.
    resources: Mutex<HashMap<u32, Resource>>,
    meters: Mutex<HashMap<u32, ProcessMeters>>,
    counters: ExportCounters,
}

/// The reader thread's side of OTLP export.
pub struct Otlp {
    spans: Option<tokio::sync::mpsc::UnboundedSender<Vec<Span>>>,
    /// Sampled spans of the current pass, handed over together by `flush`: one wake-up of
    /// the exporter thread per pass rather than per span.
    pending: Vec<Span>,
    /// Spans handed over and not yet exported or dropped; bounded by `queue_size`.
    queued: Arc<AtomicUsize>,
    queue_size: usize,
    metrics_on: bool,
    shared: Arc<Shared>,
    instruments: HashMap<u32, ProcessInstruments>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Otlp {
    /// Builds the exporters and starts the exporter thread. Returns `None` when neither
    /// signal has an endpoint.
    pub fn start(
        traces: &TracesExport,
        metrics: &MetricsExport,
        host: &str,
        counters: ExportCounters,
    ) -> anyhow::Result<Option<Otlp>> {
        if traces.otlp.is_none() && metrics.otlp.is_none() {
            return Ok(None);
        }
        // One crypto provider for every TLS client in the process (tonic's and reqwest's).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // tonic's channel starts its worker on the runtime current when it is built.
        let (span_exporter, metric_exporter) = {
            let _guard = runtime.enter();
            let spans = traces
                .otlp
                .as_ref()
                .map(|e| span_exporter(e, traces.timeout))
                .transpose()?;
            let metrics = metrics
                .otlp
                .as_ref()
                .map(|e| metric_exporter(e, metrics.timeout))
                .transpose()?;
            (spans, metrics)
        };
        let shared = Arc::new(Shared {
            host: host.to_string(),
            resources: Mutex::new(HashMap::new()),
            meters: Mutex::new(HashMap::new()),
            counters,
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            let queued = Arc::clone(&queued);
            let batch_max = traces.batch_max_size;
            let batch_timeout = traces.batch_timeout;
            let interval = metrics.interval;
            std::thread::Builder::new()
                .name("sonde-otlp".into())
                .spawn(move || {
                    runtime.block_on(async {
                        let spans = async {
                            if let Some(exporter) = span_exporter {
                                export_spans(
                                    exporter,
                                    rx,
                                    &queued,
                                    &shared,
                                    batch_max,
                                    batch_timeout,
                                )
                                .await
                            }
                        };
                        let metrics = async {
                            if let Some(exporter) = metric_exporter {
                                export_metrics(exporter, &shared, interval, &stop).await
                            }
                        };
                        tokio::join!(spans, metrics);
                    })
                })?
        };
        for (signal, e) in [("traces", &traces.otlp), ("metrics", &metrics.otlp)] {
            if let Some(e) = e {
                info!(
                    signal,
                    url = e.url,
                    protocol = e.protocol.as_str(),
                    "OTLP export on"
                );
            }
        }
        Ok(Some(Otlp {
            spans: traces.otlp.as_ref().map(|_| tx),
            pending: Vec::new(),
            queued,
            queue_size: traces.queue_size,
            metrics_on: metrics.otlp.is_some(),
            shared,
            instruments: HashMap::new(),
            stop,
            thread: Some(thread),
        }))
    }

    /// True when spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.spans.is_some()
    }

    /// True when metrics are exported.
    pub fn exports_metrics(&self) -> bool {
        self.metrics_on
    }

    /// Makes sure a process has its resource and, when metrics are exported, its meters.
    /// Cheap when it already has them (`meta` is only called the first time).
    pub fn ensure_process(&mut self, meta: &dyn Fn() -> ProcessMeta, pid: u32) {
        if self.instruments.contains_key(&pid) || self.instruments.len() >= MAX_PROCESSES {
            return;
        }
        let meta = meta();
        let resource = convert::resource(&meta, &self.shared.host);
        lock(&self.shared.resources).insert(pid, resource.clone());
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(Arc::clone(&reader)))
            .build();
        let meter = provider.meter("sonde");
        let f64_hist = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let u64_hist = |name: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit("By")
                .with_description(description)
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build()
        };
        self.instruments.insert(
            pid,
            ProcessInstruments {
                labels: ServiceLabels::new(&meta),
                server_duration: f64_hist(
                    "http.server.request.duration",
                    "Duration of HTTP server requests",
                ),
                server_request_size: u64_hist(
                    "http.server.request.body.size",
                    "Size of HTTP server request bodies",
                ),
                server_response_size: u64_hist(
                    "http.server.response.body.size",
                    "Size of HTTP server response bodies",
                ),
                client_duration: f64_hist(
                    "http.client.request.duration",
                    "Duration of HTTP client requests",
                ),
                client_request_size: u64_hist(
                    "http.client.request.body.size",
                    "Size of HTTP client request bodies",
                ),
                client_response_size: u64_hist(
                    "http.client.response.body.size",
                    "Size of HTTP client response bodies",
                ),
            },
        );
        if self.metrics_on {
            lock(&self.shared.meters).insert(
                pid,
                ProcessMeters {
                    provider,
                    reader,
                    removed: false,
                },
            );
        }
    }

    /// Counts one request in the process's histograms.
    pub fn record(&mut self, s: &Span, meta: &dyn Fn() -> ProcessMeta) {
        if let Some(attrs) = self.series_attributes(s, meta) {
            self.record_with(s, &attrs);
        }
    }

    /// The attributes `s` is counted under, for a caller that keeps them per series; `None`
    /// when metrics are not exported (or the process is beyond `MAX_PROCESSES`).
    pub fn series_attributes(
        &mut self,
        s: &Span,
        meta: &dyn Fn() -> ProcessMeta,
    ) -> Option<Vec<KeyValue>> {
        if !self.metrics_on {
            return None;
        }
        self.ensure_process(meta, s.pid);
        let i = self.instruments.get(&s.pid)?;
        Some(convert::metric_attributes(s, &i.labels))
    }

    /// Counts one request under attributes from `series_attributes`.
    pub fn record_with(&self, s: &Span, attrs: &[KeyValue]) {
        let Some(i) = self.instruments.get(&s.pid) else {
            return;
        };
        let (duration, request, response) = match s.kind {
            SpanKind::Server => (
                &i.server_duration,
                &i.server_request_size,
                &i.server_response_size,
            ),
            SpanKind::Client => (
                &i.client_duration,
                &i.client_request_size,
                &i.client_response_size,
            ),
        };
        duration.record(s.duration_ns as f64 / 1e9, attrs);
        if let Some(n) = s.request_body_size {
            request.record(n, attrs);
        }
        if let Some(n) = s.response_body_size {
            response.record(n, attrs);
        }
    }

    /// Queues a sampled span for export; drops and counts it when the queue is full. Its
    /// process should be known (`ensure_process`); otherwise it goes out under a resource
    /// naming only its service.
    pub fn export_span(&mut self, s: Box<Span>) {
        if self.spans.is_none() {
            return;
        }
        if self.queued.load(Ordering::Relaxed) + self.pending.len() >= self.queue_size {
            self.shared.counters.spans_dropped_queue_full.inc();
            return;
        }
        self.pending.push(*s);
    }

    /// Hands the spans of this pass to the exporter thread.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len();
        if let Some(tx) = &self.spans {
            self.queued.fetch_add(n, Ordering::Relaxed);
            if tx.send(batch).is_err() {
                // The exporter thread is gone (it only stops at shutdown).
                self.queued.fetch_sub(n, Ordering::Relaxed);
                self.shared
                    .counters
                    .spans_dropped_export_failed
                    .inc_by(n as u64);
            }
        }
    }

    /// Forgets a process that went away: its meters are exported once more, then dropped.
    pub fn forget(&mut self, pid: u32) {
        self.instruments.remove(&pid);
        if let Some(m) = lock(&self.shared.meters).get_mut(&pid) {
            m.removed = true;
        }
        lock(&self.shared.resources).remove(&pid);
    }

    /// Sends what is queued and the last metrics, then stops the exporter thread.
    pub fn shutdown(mut self) {
        self.flush();
        self.spans = None;
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn span_exporter(e: &OtlpEndpoint, timeout: Duration) -> anyhow::Result<SpanExporter> {
    Ok(match e.protocol {
        OtlpProtocol::Grpc => {
            over_grpc(SpanExporter::builder().with_tonic(), e, timeout)?.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            over_http(SpanExporter::builder().with_http(), e, timeout)?.build()?
        }
    })
}

fn metric_exporter(e: &OtlpEndpoint, timeout: Duration) -> anyhow::Result<MetricExporter> {
    Ok(match e.protocol {
        OtlpProtocol::Grpc => {
            over_grpc(MetricExporter::builder().with_tonic(), e, timeout)?.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            over_http(MetricExporter::builder().with_http(), e, timeout)?.build()?
        }
    })
}

/// The endpoint's settings on a gRPC exporter builder of either signal.
fn over_grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    e: &OtlpEndpoint,
    timeout: Duration,
) -> anyhow::Result<B> {
    let mut b = builder
        .with_endpoint(e.url.clone())
        .with_timeout(timeout)
        .with_metadata(metadata(&e.headers)?);
    if e.gzip {
        b = b.with_compression(Compression::Gzip);
    }
    if e.tls {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
        let tls = match &e.ca_file {
            Some(path) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(path).with_context(
                    || format!("reading the OTLP CA file {}", path.display()),
                )?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        b = b.with_tls_config(tls);
    }
    Ok(b)
}

/// The endpoint's settings on an HTTP/protobuf exporter builder of either signal.
fn over_http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    e: &OtlpEndpoint,
    timeout: Duration,
) -> anyhow::Result<B> {
    let b = builder
        .with_endpoint(e.url.clone())
        .with_timeout(timeout)
        .with_headers(e.headers.iter().cloned().collect())
        .with_http_client(http_client(e, timeout)?);
    Ok(if e.gzip {
        b.with_compression(Compression::Gzip)
    } else {
        b
    })
}

/// The HTTP client of one endpoint: for `https://`, rustls (ring) trusting exactly the
/// configured CA file or, without one, the system's trust store.
fn http_client(e: &OtlpEndpoint, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if e.tls {
        let mut roots = rustls::RootCertStore::empty();
        match &e.ca_file {
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading the OTLP CA file {}", path.display()))?
                {
                    roots.add(cert.context("a certificate of the OTLP CA file")?)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A certificate the system store holds but rustls rejects is skipped.
                    let _ = roots.add(cert);
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "no trusted certificates in the system store for {}: {:?}",
                    e.url,
                    found.errors
                );
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        b = b.tls_backend_preconfigured(config);
    }
    Ok(b.build()?)
}

fn metadata(
    headers: &[(String, String)],
) -> anyhow::Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| anyhow::anyhow!("OTLP header name {k:?} is not valid gRPC metadata"))?;
        let value = http::HeaderValue::from_str(v).map_err(|_| {
            anyhow::anyhow!("the value of OTLP header {k:?} is not valid gRPC metadata")
        })?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

/// Batches queued spans and exports them, one request per process (each has its resource).
async fn export_spans(
    mut exporter: SpanExporter,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Span>>,
    queued: &AtomicUsize,
    shared: &Shared,
    batch_max: usize,
    batch_timeout: Duration,
) {
    let scope = convert::scope();
    let mut log = FailureLog::new("span");
    let mut batch: Vec<Span> = Vec::with_capacity(batch_max.min(4096));
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut open = true;
    while open || !batch.is_empty() {
        let flush_all = tokio::select! {
            got = rx.recv(), if open => match got {
                Some(spans) => {
                    batch.extend(spans);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + batch_timeout);
                    false
                }
                // The reader side is shutting down: send what is left.
                None => { open = false; true }
            },
            _ = sleep_until(deadline) => true,
        };
        while batch.len() >= batch_max || (flush_all && !batch.is_empty()) {
            let rest = batch.split_off(batch.len().min(batch_max));
            let full = std::mem::replace(&mut batch, rest);
            let n = full.len();
            send_spans(&mut exporter, full, shared, &scope, &mut log).await;
            queued.fetch_sub(n, Ordering::Relaxed);
        }
        if batch.is_empty() {
            deadline = None;
        }
    }
    let _ = exporter.shutdown();
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send_spans(
    exporter: &mut SpanExporter,
    batch: Vec<Span>,
    shared: &Shared,
    scope: &opentelemetry::InstrumentationScope,
    log: &mut FailureLog,
) {
    let mut by_process: HashMap<u32, (String, Vec<_>)> = HashMap::new();
    for s in batch {
        let entry = by_process
            .entry(s.pid)
            .or_insert_with(|| (s.service_name.clone(), Vec::new()));
        entry.1.push(convert::span_data(s, scope));
    }
    for (pid, (service_name, spans)) in by_process {
        let resource = lock(&shared.resources).get(&pid).cloned();
        // A process beyond MAX_PROCESSES: a resource naming just the service.
        let resource = resource.unwrap_or_else(|| {
            Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.name", service_name),
                    KeyValue::new("process.pid", i64::from(pid)),
                    KeyValue::new("host.name", shared.host.clone()),
                    KeyValue::new("telemetry.sdk.name", "sonde"),
                ])
                .build()
        });
        exporter.set_resource(&resource);
        let n = spans.len() as u64;
        match exporter.export(spans).await {
            Ok(()) => {
                shared.counters.spans_exported.inc_by(n);
                log.succeeded();
            }
            Err(e) => {
                shared.counters.spans_dropped_export_failed.inc_by(n);
                log.failed(&e, n);
            }
        }
    }
}

/// Collects every process's cumulative metrics each `interval` and exports them; once more
/// when stopping.
async fn export_metrics(
    exporter: MetricExporter,
    shared: &Shared,
    interval: Duration,
    stop: &tokio::sync::Notify,
) {
    let mut log = FailureLog::new("metric");
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.notified() => true,
        };
        let started = Instant::now();
        let collected: Vec<ResourceMetrics> = {
            let mut meters = lock(&shared.meters);
            let mut out = Vec::with_capacity(meters.len());
            for m in meters.values() {
                let mut rm = ResourceMetrics::default();
                if m.reader.collect(&mut rm).is_ok() {
                    out.push(rm);
                }
            }
            meters.retain(|_, m| {
                if m.removed {
                    let _ = m.provider.shutdown();
                }
                !m.removed
            });
            out
        };
        for rm in &collected {
            match exporter.export(rm).await {
                Ok(()) => {
                    shared.counters.metric_exports.inc();
                    log.succeeded();
                }
                Err(e) => {
                    shared.counters.metric_exports_failed.inc();
                    log.failed(&e, 1);
                }
            }
        }
        debug!(
            processes = collected.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metrics exported"
        );
        if stopping {
            break;
        }
    }
    let _ = exporter.shutdown();
}

/// Export failure logging that cannot flood: the first failure is logged, then at most one
/// summary a minute while failures go on, and the recovery once.
struct FailureLog {
    signal: &'static str,
    failing: bool,
    last_warning: Option<Instant>,
    /// Items dropped since the last warning.
    dropped_since: u64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn new(signal: &'static str) -> FailureLog {
        FailureLog {
            signal,
            failing: false,
            last_warning: None,
            dropped_since: 0,
        }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display, dropped: u64) {
        self.dropped_since += dropped;
        let due = self.last_warning.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if !self.failing || due {
            warn!(
                signal = self.signal,
                %error,
                dropped = self.dropped_since,
                "OTLP export failing; what cannot be sent is dropped and counted (reported again in a minute while it goes on)"
            );
            self.last_warning = Some(Instant::now());
            self.dropped_since = 0;
        }
        self.failing = true;
    }

    fn succeeded(&mut self) {
        if self.failing {
            info!(signal = self.signal, "OTLP export working again");
            self.failing = false;
            self.dropped_since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_config::OtlpProtocol;

    fn span(pid: u32) -> Box<Span> {
        Box::new(Span {
            pid,
            tid: pid,
            ..Span::fixture()
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // Nothing listens on port 9 of 127.0.0.1: every export fails.
        let traces = TracesExport {
            otlp: Some(OtlpEndpoint {
                url: "http://127.0.0.1:9/v1/traces".into(),
                protocol: OtlpProtocol::HttpProtobuf,
                port: 9,
                headers: Vec::new(),
                gzip: false,
                tls: false,
                ca_file: None,
            }),
            queue_size: 10,
            batch_max_size: 4,
            batch_timeout: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
        };
        let counters = ExportCounters::default();
        let mut otlp = Otlp::start(&traces, &MetricsExport::default(), "h", counters.clone())
            .expect("start")
            .expect("traces on");
        let meta = || ProcessMeta {
            pid: 7,
            service_name: "svc".into(),
            service_namespace: None,
            exe_path: "/x".into(),
        };
        let started = std::time::Instant::now();
        otlp.ensure_process(&meta, 7);
        for _ in 0..25 {
            otlp.export_span(span(7));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "never waits"
        );
        assert_eq!(counters.spans_dropped_queue_full.get(), 15);
        otlp.flush();
        otlp.shutdown();
        // The ten queued spans were sent, failed and counted; none vanished.
        assert_eq!(counters.spans_dropped_export_failed.get(), 10);
        assert_eq!(counters.spans_exported.get(), 0);
    }
}
