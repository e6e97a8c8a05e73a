//! OTLP export of spans and RED metrics (`otel_traces_export`, `otel_metrics_export`) as the
//! reader thread sees it: which signals are on, which processes are known (their resources
//! and, when metrics are exported, their meters), and handing spans over without ever
//! waiting on the network. The other jobs live in their own modules, each used from here:
//!
//! - `exporter`: building the exporters from the endpoints (protocol, headers, gzip, TLS);
//! - `transport`: sending encoded requests over gRPC or HTTP/protobuf, with retries;
//! - `coalesce`: the gRPC connection's writes gathered (h2 writes a frame at a time);
//! - `worker`: the exporter thread, its bounded span queue, batching and failure logging;
//! - `encode`: spans written straight into OTLP request bytes, resources encoded once;
//! - `meters`: per-process pipelines (resource, process-metrics series, service graph cells),
//!   the attributes RED series are counted under, and the network flows' pipeline;
//! - `red_metrics`: the RED series of `red_store` as OTLP histograms;
//! - `graph_metrics`: the service graph cells (`service_graph`) as OTLP sums and histograms;
//! - `usage_metrics`: process metrics (`process_metrics`) as OTLP sums and gauges;
//! - `flows`: the network flow series (`flows`) as OTLP sums under the host's resource;
//! - `convert`: spans and process metadata into OpenTelemetry data (pure functions).
//!
//! Counts never depend on the collector: metrics are recorded once in memory (RED requests
//! in `red_store`, service graph edges in `service_graph::GraphStore`, process readings in
//! `process_metrics`, network flows in `flows::FlowStore`, all of which Prometheus reads
//! too), each process with its own
//! resource (`service.*`, `process.*`, `host.name`, `telemetry.sdk.*`), and the worker
//! collects and sends them every `interval`. The outcomes are counted into
//! `metrics::ExportCounters`; nothing in `metrics` imports from here.

mod coalesce;
pub mod convert;
pub mod encode;
mod exporter;
mod flows;
pub mod graph_metrics;
#[cfg(test)]
mod legacy_convert;
mod meters;
pub mod red_metrics;
#[cfg(test)]
mod sdk_reference;
mod transport;
pub mod usage_metrics;
mod worker;

use std::collections::HashMap;

use opentelemetry::KeyValue;
use tracing::info;

pub use convert::ProcessResource;
use exporter::Exporters;
use meters::Meters;
use worker::{SpanQueue, Worker};

use crate::{
    config::{MetricsExport, TracesExport},
    metrics::ExportCounters,
    red_store::RedStore,
    span::Span,
};

/// Processes with OTLP state at once; spans of processes beyond this are exported under a
/// shared resource naming only the service, and their metrics are not exported.
pub const MAX_PROCESSES: usize = 4096;

/// The reader thread's side of OTLP export.
pub struct Otlp {
    host: String,
    /// The encoded resource of every known process; a process is known once it has one.
    resources: HashMap<u32, encode::EncodedResource>,
    /// Present when spans are exported.
    spans: Option<SpanQueue>,
    /// Present when metrics are exported.
    meters: Option<Meters>,
    worker: Worker,
}

impl Otlp {
    /// Builds the exporters and starts the exporter thread, which exports the RED series of
    /// `red` with each process's other metrics. Returns `None` when neither signal has an
    /// endpoint.
    pub fn start(
        traces: &TracesExport,
        metrics: &MetricsExport,
        host: &str,
        counters: ExportCounters,
        red: std::sync::Arc<RedStore>,
    ) -> anyhow::Result<Option<Otlp>> {
        if traces.otlp.is_none() && metrics.otlp.is_none() {
            return Ok(None);
        }
        let exporters = Exporters::build(traces, metrics)?;
        let pipelines = meters::Pipelines::default();
        let meters = exporters
            .metrics
            .as_ref()
            .map(|_| Meters::new(std::sync::Arc::clone(&pipelines)));
        let (worker, spans) =
            Worker::start(exporters, traces, metrics, pipelines, red, counters, host)?;
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
            host: host.to_string(),
            resources: HashMap::new(),
            spans,
            meters,
            worker,
        }))
    }

    /// True when spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.spans.is_some()
    }

    /// True when metrics are exported.
    pub fn exports_metrics(&self) -> bool {
        self.meters.is_some()
    }

    /// Makes sure a process has its resource and, when metrics are exported, its meters.
    /// Cheap when it already has them (`meta` is only called the first time).
    pub fn ensure_process(&mut self, meta: &dyn Fn() -> ProcessResource, pid: u32) {
        if self.resources.contains_key(&pid) || self.resources.len() >= MAX_PROCESSES {
            return;
        }
        let process = meta();
        let resource = convert::resource(&process, &self.host);
        self.resources
            .insert(pid, encode::encode_resource(&resource));
        if let Some(m) = self.meters.as_mut() {
            m.add(pid, &process, &resource);
        }
    }

    /// The attributes `s` is counted under, for a caller that keeps them per series; `None`
    /// when metrics are not exported (or the process is beyond `MAX_PROCESSES`).
    pub fn series_attributes(
        &mut self,
        s: &Span,
        meta: &dyn Fn() -> ProcessResource,
    ) -> Option<Vec<KeyValue>> {
        if !self.exports_metrics() {
            return None;
        }
        self.ensure_process(meta, s.pid);
        self.meters.as_ref()?.attributes(s)
    }

    /// Exports `series` (the process-metrics series of `pid`, `process_metrics`) with the
    /// process's metrics, under its resource (made first if needed, `meta` called only then);
    /// nothing when metrics are not exported or the process is beyond `MAX_PROCESSES`.
    pub fn export_usage(
        &mut self,
        meta: &dyn Fn() -> ProcessResource,
        pid: u32,
        series: std::sync::Arc<crate::process_metrics::UsageSeries>,
    ) {
        self.ensure_process(meta, pid);
        if let Some(m) = self.meters.as_ref() {
            m.export_usage(pid, &series);
        }
    }

    /// Exports the network flow series of `store` (`flows::FlowStore`) under the host's flow
    /// resource from now on.
    pub fn export_flows(&mut self, store: &std::sync::Arc<crate::flows::FlowStore>) {
        if let Some(m) = self.meters.as_ref() {
            m.export_flows(store, || flows::resource(&self.host));
        }
    }

    /// Exports a service graph cell of `pid` (`service_graph::Cell`) with the process's
    /// metrics, under its resource (made first if needed, `meta` called only then); nothing
    /// when metrics are not exported or the process is beyond `MAX_PROCESSES`.
    pub fn export_graph_cell(
        &mut self,
        meta: &dyn Fn() -> ProcessResource,
        pid: u32,
        cell: std::sync::Arc<crate::service_graph::Cell>,
    ) {
        self.ensure_process(meta, pid);
        if let Some(m) = self.meters.as_ref() {
            m.add_graph_cell(pid, cell);
        }
    }

    /// Stops reporting `pid`'s process metrics (it left; its meters go after their grace).
    pub fn end_usage(&mut self, pid: u32) {
        if let Some(m) = self.meters.as_ref() {
            m.end_usage(pid);
        }
    }

    /// Queues a sampled span for export; drops and counts it when the queue is full. Its
    /// process should be known (`ensure_process`); otherwise it goes out under a resource
    /// naming only its service.
    pub fn export_span(&mut self, s: Box<Span>) {
        if let Some(q) = self.spans.as_mut() {
            let resource = self.resources.get(&s.pid).cloned();
            q.push(s, resource);
        }
    }

    /// An exported span handed back by the exporter thread, for the next span to be written
    /// into (`http1::build_for`).
    pub fn spare_span(&mut self) -> Option<Box<Span>> {
        self.spans.as_mut().and_then(SpanQueue::spare)
    }

    /// Hands the queued spans to the exporter thread once there are enough of them or they
    /// have waited long enough (`now`: the pass's time; see `SpanQueue::flush`).
    pub fn flush(&mut self, now: std::time::Instant) {
        if let Some(q) = self.spans.as_mut() {
            q.flush(now);
        }
    }

    /// Forgets a process that went away (or whose resource changed): its meters and
    /// `retired_red` (its RED series, `RedRecorder::forget`) are exported once more under its
    /// resource, then dropped.
    pub fn forget(&mut self, pid: u32, retired_red: Vec<std::sync::Arc<crate::red_store::Series>>) {
        if let Some(m) = self.meters.as_mut() {
            m.forget(pid, retired_red);
        }
        self.resources.remove(&pid);
    }

    /// Sends what is queued and the last metrics, then stops the exporter thread.
    pub fn shutdown(mut self) {
        if let Some(q) = self.spans.take() {
            q.close();
        }
        self.worker.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{OtlpEndpoint, OtlpProtocol};

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
        let mut otlp = Otlp::start(
            &traces,
            &MetricsExport::default(),
            "h",
            counters.clone(),
            std::sync::Arc::default(),
        )
        .expect("start")
        .expect("traces on");
        let meta = || ProcessResource {
            pid: 7,
            service_name: "svc".into(),
            service_namespace: None,
            exe_path: "/x".into(),
            k8s: None,
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
        otlp.flush(std::time::Instant::now());
        otlp.shutdown();
        // The ten queued spans were sent, failed and counted; none vanished.
        assert_eq!(counters.spans_dropped_export_failed.get(), 10);
        assert_eq!(counters.spans_exported.get(), 0);
    }
}
