//! The OTLP side of each instrumented process as the reader thread keeps it: the attributes
//! its RED series are counted under (the counting itself is `red_store`'s, shared with
//! Prometheus), the service graph cells its spans count in (`service_graph::Cell`, also
//! shared with Prometheus), and one `SdkMeterProvider`, carrying the process's resource, for
//! the observable `process.*` instruments of process metrics. The worker collects every
//! provider each interval through the shared map (`Providers`) and adds the process's RED
//! series and service graph cells to the same resource.
//!
//! The SDK's periodic reader is not used: it serves one resource per provider's exporter,
//! while Sonde exports for many processes, each its own resource.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use opentelemetry::{
    KeyValue, StringValue, Value,
    metrics::{Meter, MeterProvider},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, reader::MetricReader,
    },
};

use super::convert::ProcessResource;
use crate::{
    process_metrics::UsagePoint,
    protocols::{db, grpc, messaging},
    red_store::Series,
    semconv::method_value,
    service_graph::Cell,
    span::{Rpc, Span, SpanKind},
};

/// A process's metric pipeline, collected by the worker.
pub(super) struct ProcessMeters {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    /// Set when the process went away (or its resource changed): collected once more, with
    /// `retired_red`, then dropped.
    removed: bool,
    /// The RED series the process had when it was retired, for that last collection.
    retired_red: Vec<Arc<Series>>,
    /// Its service graph cells (those of edges that left after their TTL are dropped at the
    /// next collection).
    graph: Vec<Arc<Cell>>,
}

impl ProcessMeters {
    fn new(provider: SdkMeterProvider, reader: Arc<ManualReader>) -> ProcessMeters {
        ProcessMeters {
            provider,
            reader,
            removed: false,
            retired_red: Vec::new(),
            graph: Vec::new(),
        }
    }
}

/// The meter pipelines of known processes, shared by the reader thread (which adds and
/// retires them) and the worker (which collects them).
#[derive(Default)]
pub(super) struct ProviderSet {
    live: HashMap<u32, ProcessMeters>,
    /// Retired pipelines whose pid came back (a new process, or a new resource for the same
    /// one) before their last collection.
    replaced: Vec<(u32, ProcessMeters)>,
}

pub(super) type Providers = Arc<Mutex<ProviderSet>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a plain map behind, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One pipeline's collection.
pub(super) struct Collected {
    /// The pid (or the flows' key).
    pub key: u32,
    pub metrics: ResourceMetrics,
    /// A retired pipeline's RED series (its last collection); `None` for a live one, whose
    /// series are the store's live ones for `key`.
    pub retired_red: Option<Vec<Arc<Series>>>,
    /// Its service graph cells.
    pub graph: Vec<Arc<Cell>>,
}

/// Every pipeline's cumulative metrics; those of processes that went away are shut down
/// after this last collection.
pub(super) fn collect(providers: &Providers) -> Vec<Collected> {
    let mut set = lock(providers);
    let ProviderSet { live, replaced } = &mut *set;
    let mut out = Vec::with_capacity(live.len() + replaced.len());
    let all = live
        .iter_mut()
        .map(|(k, m)| (*k, m))
        .chain(replaced.iter_mut().map(|(k, m)| (*k, m)));
    for (key, m) in all {
        let mut metrics = ResourceMetrics::default();
        m.graph.retain(|c| c.edge.is_live());
        if m.reader.collect(&mut metrics).is_ok() {
            out.push(Collected {
                key,
                metrics,
                retired_red: m.removed.then(|| std::mem::take(&mut m.retired_red)),
                graph: m.graph.clone(),
            });
        }
    }
    for (_, m) in replaced.drain(..) {
        let _ = m.provider.shutdown();
    }
    live.retain(|_, m| {
        if m.removed {
            let _ = m.provider.shutdown();
        }
        !m.removed
    });
    out
}

/// The reader handle `SdkMeterProvider::with_reader` takes, sharing the `ManualReader` the
/// worker collects from.
#[derive(Debug)]
pub(super) struct SharedReader(pub(super) Arc<ManualReader>);

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

/// Interned label values of one process, so recording a metric clones reference counts
/// rather than strings.
struct ServiceLabels {
    service_name: Value,
    service_namespace: Option<Value>,
}

impl ServiceLabels {
    fn new(process: &ProcessResource) -> ServiceLabels {
        let arc = |s: &str| Value::String(StringValue::from(Arc::<str>::from(s)));
        ServiceLabels {
            service_name: arc(&process.service_name),
            service_namespace: process.service_namespace.as_deref().map(arc),
        }
    }
}

/// The instruments of one process, used by the reader thread.
struct ProcessInstruments {
    labels: ServiceLabels,
    /// For instruments made later (process metrics, on its first reading).
    meter: Meter,
    /// The process's latest process-metrics reading, which its observable instruments report
    /// at each collection; `None` (the process left) reports nothing.
    usage: Option<UsageCell>,
}

/// The reader thread's side of OTLP metrics: the instruments of every known process.
pub(super) struct Meters {
    instruments: HashMap<u32, ProcessInstruments>,
    providers: Providers,
}

impl Meters {
    pub(super) fn new(providers: Providers) -> Meters {
        Meters {
            instruments: HashMap::new(),
            providers,
        }
    }

    /// Builds the meter pipeline and instruments of a process first seen.
    pub(super) fn add(&mut self, pid: u32, process: &ProcessResource, resource: Resource) {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(Arc::clone(&reader)))
            .build();
        let meter = provider.meter("sonde");
        self.instruments.insert(
            pid,
            ProcessInstruments {
                labels: ServiceLabels::new(process),
                meter: meter.clone(),
                usage: None,
            },
        );
        let mut set = lock(&self.providers);
        // A retired pipeline not collected yet keeps its last collection.
        if let Some(old) = set.live.remove(&pid)
            && old.removed
        {
            set.replaced.push((pid, old));
        }
        set.live.insert(pid, ProcessMeters::new(provider, reader));
    }

    /// The attributes `s` is counted under, for a caller that keeps them per series; `None`
    /// for a process without instruments.
    pub(super) fn attributes(&self, s: &Span) -> Option<Vec<KeyValue>> {
        let i = self.instruments.get(&s.pid)?;
        Some(metric_attributes(s, &i.labels))
    }

    /// Sets the process-metrics reading `pid`'s observable instruments report (made at its
    /// first reading).
    pub(super) fn record_usage(&mut self, pid: u32, point: UsagePoint) {
        let Some(i) = self.instruments.get_mut(&pid) else {
            return;
        };
        let cell = i
            .usage
            .get_or_insert_with(|| usage_instruments(&i.meter, &i.labels));
        *lock(cell) = Some(point);
    }

    /// Stops reporting `pid`'s process metrics (the process left).
    pub(super) fn end_usage(&mut self, pid: u32) {
        if let Some(cell) = self.instruments.get(&pid).and_then(|i| i.usage.as_ref()) {
            *lock(cell) = None;
        }
    }

    /// A meter pipeline of its own (not a process's: the network flows'), collected with the
    /// processes' under `key`.
    pub(super) fn host_provider(&self, key: u32, resource: Resource) -> SdkMeterProvider {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(Arc::clone(&reader)))
            .build();
        lock(&self.providers)
            .live
            .insert(key, ProcessMeters::new(provider.clone(), reader));
        provider
    }

    /// Reports `cell` (a service graph cell of `pid`) with the process's metrics, until its
    /// edge leaves or the process's last collection; nothing for a process without a
    /// pipeline.
    pub(super) fn add_graph_cell(&self, pid: u32, cell: Arc<Cell>) {
        if let Some(m) = lock(&self.providers).live.get_mut(&pid)
            && !m.removed
        {
            m.graph.push(cell);
        }
    }

    /// Retires a process that went away (or whose resource changed): its pipeline is
    /// collected once more, with `retired_red` (its RED series, `RedStore::forget`), then
    /// dropped.
    pub(super) fn forget(&mut self, pid: u32, retired_red: Vec<Arc<Series>>) {
        self.instruments.remove(&pid);
        if let Some(m) = lock(&self.providers).live.get_mut(&pid) {
            m.removed = true;
            m.retired_red = retired_red;
        }
    }
}

/// A process's latest process-metrics reading, shared with its instruments' callbacks.
type UsageCell = Arc<Mutex<Option<UsagePoint>>>;

/// Registers the process-metrics instruments of one process: observable ones, reporting the
/// cell's reading at each collection (cumulative sums as the loader read them, gauges as
/// they are), and nothing once the cell is empty, so the series stop with the process.
fn usage_instruments(meter: &Meter, labels: &ServiceLabels) -> UsageCell {
    let cell: UsageCell = Arc::default();
    let base = {
        let service_name = labels.service_name.clone();
        let service_namespace = labels.service_namespace.clone();
        move |p: &UsagePoint| {
            let mut attrs = vec![
                KeyValue::new("service.name", service_name.clone()),
                KeyValue::new("process.command", p.command.clone()),
                KeyValue::new("process.owner", p.owner.clone()),
                KeyValue::new("process.parent_pid", i64::from(p.parent_pid)),
            ];
            if let Some(ns) = &service_namespace {
                attrs.push(KeyValue::new("service.namespace", ns.clone()));
            }
            attrs
        }
    };
    let with = {
        let base = base.clone();
        move |key: &'static str, value: &'static str, p: &UsagePoint| {
            let mut a = base(p);
            a.push(KeyValue::new(key, value));
            a
        }
    };
    let c = Arc::clone(&cell);
    let w = with.clone();
    meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description("Total CPU seconds broken down by different states")
        .with_callback(move |o| {
            if let Some(p) = lock(&c).as_ref() {
                o.observe(p.cpu_user_seconds, &w("cpu.mode", "user", p));
                o.observe(p.cpu_system_seconds, &w("cpu.mode", "system", p));
            }
        })
        .build();
    let c = Arc::clone(&cell);
    let w = with.clone();
    meter
        .f64_observable_gauge("process.cpu.utilization")
        .with_unit("1")
        .with_description(
            "Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process",
        )
        .with_callback(move |o| {
            if let Some(p) = lock(&c).as_ref()
                && let Some((user, system)) = p.utilization
            {
                o.observe(user, &w("cpu.mode", "user", p));
                o.observe(system, &w("cpu.mode", "system", p));
            }
        })
        .build();
    for (name, description, memory) in [
        (
            "process.memory.usage",
            "The amount of physical memory in use",
            (|p: &UsagePoint| p.memory_rss) as fn(&UsagePoint) -> u64,
        ),
        (
            "process.memory.virtual",
            "The amount of committed virtual memory",
            |p: &UsagePoint| p.memory_virtual,
        ),
    ] {
        let c = Arc::clone(&cell);
        let b = base.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit("By")
            .with_description(description)
            .with_callback(move |o| {
                if let Some(p) = lock(&c).as_ref() {
                    o.observe(memory(p), &b(p));
                }
            })
            .build();
    }
    for (name, description, key, values) in [
        (
            "process.disk.io",
            "Disk bytes transferred",
            "disk.io.direction",
            (|p: &UsagePoint| [("read", p.disk_read_bytes), ("write", p.disk_write_bytes)])
                as fn(&UsagePoint) -> [(&'static str, u64); 2],
        ),
        (
            "process.network.io",
            "Network bytes transferred",
            "network.io.direction",
            |p: &UsagePoint| {
                [
                    ("receive", p.net_receive_bytes),
                    ("transmit", p.net_transmit_bytes),
                ]
            },
        ),
    ] {
        let c = Arc::clone(&cell);
        let w = with.clone();
        meter
            .u64_observable_counter(name)
            .with_unit("By")
            .with_description(description)
            .with_callback(move |o| {
                if let Some(p) = lock(&c).as_ref() {
                    for (direction, v) in values(p) {
                        o.observe(v, &w(key, direction, p));
                    }
                }
            })
            .build();
    }
    cell
}

/// The attributes an RPC call is counted under (the reference system's default set).
fn rpc_metric_attributes(s: &Span, rpc: &Rpc, labels: &ServiceLabels) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(8);
    attrs.push(KeyValue::new(grpc::METHOD_KEY, rpc.method.clone()));
    attrs.push(KeyValue::new(grpc::SYSTEM_KEY, rpc.system));
    if let Some(code) = rpc.status_code.filter(|c| *c <= 16) {
        attrs.push(KeyValue::new(grpc::STATUS_KEY, grpc::status_name(code)));
    }
    if s.kind == SpanKind::Client && grpc::is_error(s.kind, rpc.status_code) {
        attrs.push(KeyValue::new(
            "error.type",
            grpc::error_type(rpc.status_code),
        ));
    }
    attrs.push(KeyValue::new(
        "server.address",
        s.server_address.to_string(),
    ));
    attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    attrs.push(KeyValue::new("service.name", labels.service_name.clone()));
    if let Some(ns) = &labels.service_namespace {
        attrs.push(KeyValue::new("service.namespace", ns.clone()));
    }
    attrs
}

/// The attributes a span's request is counted under in the RED histograms.
fn metric_attributes(s: &Span, labels: &ServiceLabels) -> Vec<KeyValue> {
    if let Some(rpc) = &s.rpc {
        return rpc_metric_attributes(s, rpc, labels);
    }
    if let Some(m) = &s.messaging {
        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::new("messaging.system", m.system));
        if let Some(d) = &m.destination {
            attrs.push(KeyValue::new("messaging.destination.name", d.clone()));
        }
        attrs.push(KeyValue::new(
            "messaging.operation.name",
            m.operation.name(),
        ));
        if let Some(e) = messaging::error_type(m, s.no_response) {
            attrs.push(KeyValue::new("error.type", e));
        }
        attrs.push(KeyValue::new(
            "server.address",
            s.server_address.to_string(),
        ));
        attrs.push(KeyValue::new("service.name", labels.service_name.clone()));
        if let Some(ns) = &labels.service_namespace {
            attrs.push(KeyValue::new("service.namespace", ns.clone()));
        }
        return attrs;
    }
    if let Some(d) = &s.db {
        let mut attrs = Vec::with_capacity(7);
        if let Some(op) = &d.operation {
            attrs.push(KeyValue::new("db.operation.name", op.clone()));
        }
        attrs.push(KeyValue::new("db.system.name", d.system));
        if let Some(e) = db::error_type(d, s.no_response) {
            attrs.push(KeyValue::new("error.type", e.to_string()));
        }
        attrs.push(KeyValue::new(
            "server.address",
            s.server_address.to_string(),
        ));
        attrs.push(KeyValue::new("service.name", labels.service_name.clone()));
        if let Some(ns) = &labels.service_namespace {
            attrs.push(KeyValue::new("service.namespace", ns.clone()));
        }
        return attrs;
    }
    let mut attrs = Vec::with_capacity(8);
    attrs.push(KeyValue::new(
        "http.request.method",
        method_value(&s.method),
    ));
    if s.status > 0 {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(s.status),
        ));
    } else {
        attrs.push(KeyValue::new("error.type", "no_response"));
    }
    if let Some(route) = &s.route {
        attrs.push(KeyValue::new("http.route", route.clone()));
    }
    attrs.push(KeyValue::new("url.scheme", s.scheme));
    if s.kind == SpanKind::Client {
        attrs.push(KeyValue::new(
            "server.address",
            s.server_address.to_string(),
        ));
        attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    }
    attrs.push(KeyValue::new("service.name", labels.service_name.clone()));
    if let Some(ns) = &labels.service_namespace {
        attrs.push(KeyValue::new("service.namespace", ns.clone()));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_attributes_bound_the_method() {
        let labels = ServiceLabels::new(&ProcessResource {
            pid: 1,
            service_name: "svc".into(),
            service_namespace: None,
            exe_path: "/x".into(),
            k8s: None,
        });
        let mut s = Span {
            route: Some("/users/{id}".into()),
            status: 200,
            ..Span::fixture()
        };
        s.method = "BREW".into();
        let attrs = metric_attributes(&s, &labels);
        assert!(attrs.contains(&KeyValue::new("http.request.method", "_OTHER")));
        assert!(attrs.contains(&KeyValue::new("http.route", "/users/{id}")));
        assert!(attrs.contains(&KeyValue::new("service.name", "svc")));
        assert!(!attrs.iter().any(|kv| kv.key.as_str() == "server.address"));
    }
}
