//! The OTLP side of each instrumented process as the reader thread keeps it: its resource,
//! the attributes its RED series are counted under (the counting itself is `red_store`'s,
//! shared with Prometheus), the service graph cells its spans count in
//! (`service_graph::Cell`, also shared with Prometheus) and its process-metrics series
//! (`process_metrics::UsageSeries`, likewise). The worker reads every process's pipeline each
//! interval through the shared map (`Pipelines`) and encodes it under the process's
//! resource; the network flows (`flows::FlowStore`) have a pipeline of their own, under the
//! host's resource.
//!
//! No OpenTelemetry SDK meter provider is involved: every metric is counted once in Sonde's
//! own aggregations and encoded with `opentelemetry-proto`'s types (`red_metrics`,
//! `graph_metrics`, `usage_metrics`, `flows`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::{metrics::v1::Metric, resource::v1::Resource as ProtoResource};
use opentelemetry_sdk::Resource;

use super::convert::ProcessResource;
use crate::{
    flows::FlowStore,
    process_metrics::UsageSeries,
    protocols::{db, grpc, messaging},
    red_store::Series,
    semconv::method_value,
    service_graph::Cell,
    span::{Rpc, Span, SpanKind},
};

/// A process's metric pipeline, read by the worker.
pub(super) struct ProcessMeters {
    /// Its resource, attributes in key order.
    resource: ProtoResource,
    /// Its process-metrics series, once it had a reading.
    usage: Option<Arc<UsageSeries>>,
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
    fn new(resource: ProtoResource) -> ProcessMeters {
        ProcessMeters {
            resource,
            usage: None,
            removed: false,
            retired_red: Vec::new(),
            graph: Vec::new(),
        }
    }
}

/// The pipelines of known processes, shared by the reader thread (which adds and retires
/// them) and the worker (which collects them), and the flows'.
#[derive(Default)]
pub(super) struct PipelineSet {
    live: HashMap<u32, ProcessMeters>,
    /// Retired pipelines whose pid came back (a new process, or a new resource for the same
    /// one) before their last collection.
    replaced: Vec<(u32, ProcessMeters)>,
    /// The network flows and the host resource they are reported under, from their first
    /// counts on.
    flows: Option<(ProtoResource, Arc<FlowStore>)>,
}

pub(super) type Pipelines = Arc<Mutex<PipelineSet>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a plain map behind, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An SDK resource (`convert::resource`) as the OTLP message, attributes in key order (the
/// SDK's resource is a hash map: the same process always gets the same message).
pub(super) fn proto_resource(resource: &Resource) -> ProtoResource {
    let mut r = ProtoResource::from(resource);
    r.attributes.sort_by(|a, b| a.key.cmp(&b.key));
    r
}

/// One pipeline's collection.
pub(super) struct Collected {
    /// The pid.
    pub key: u32,
    pub resource: ProtoResource,
    /// Its process metrics (`usage_metrics`), empty without a live series.
    pub usage: Vec<Metric>,
    /// A retired pipeline's RED series (its last collection); `None` for a live one, whose
    /// series are the store's live ones for `key`.
    pub retired_red: Option<Vec<Arc<Series>>>,
    /// Its service graph cells.
    pub graph: Vec<Arc<Cell>>,
}

/// Every pipeline's cumulative metrics at `now`; those of processes that went away are
/// dropped after this last collection. Also the flows' pipeline, when there is one.
pub(super) fn collect(
    pipelines: &Pipelines,
    now: u64,
) -> (Vec<Collected>, Option<(ProtoResource, Arc<FlowStore>)>) {
    let mut set = lock(pipelines);
    let PipelineSet {
        live,
        replaced,
        flows,
    } = &mut *set;
    let mut out = Vec::with_capacity(live.len() + replaced.len());
    let all = live
        .iter_mut()
        .map(|(k, m)| (*k, m))
        .chain(replaced.iter_mut().map(|(k, m)| (*k, m)));
    for (key, m) in all {
        m.graph.retain(|c| c.edge.is_live());
        if m.usage.as_ref().is_some_and(|u| !u.is_live()) {
            m.usage = None;
        }
        out.push(Collected {
            key,
            resource: m.resource.clone(),
            usage: m
                .usage
                .as_deref()
                .map(|u| super::usage_metrics::metrics(u, now))
                .unwrap_or_default(),
            retired_red: m.removed.then(|| std::mem::take(&mut m.retired_red)),
            graph: m.graph.clone(),
        });
    }
    replaced.clear();
    live.retain(|_, m| !m.removed);
    (out, flows.clone())
}

/// Interned label values of one process, so building a series' attributes clones reference
/// counts rather than strings.
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

/// The reader thread's side of OTLP metrics: the labels of every known process.
pub(super) struct Meters {
    labels: HashMap<u32, ServiceLabels>,
    pipelines: Pipelines,
}

impl Meters {
    pub(super) fn new(pipelines: Pipelines) -> Meters {
        Meters {
            labels: HashMap::new(),
            pipelines,
        }
    }

    /// Makes the pipeline of a process first seen.
    pub(super) fn add(&mut self, pid: u32, process: &ProcessResource, resource: &Resource) {
        self.labels.insert(pid, ServiceLabels::new(process));
        let mut set = lock(&self.pipelines);
        // A retired pipeline not collected yet keeps its last collection.
        if let Some(old) = set.live.remove(&pid)
            && old.removed
        {
            set.replaced.push((pid, old));
        }
        set.live
            .insert(pid, ProcessMeters::new(proto_resource(resource)));
    }

    /// The attributes `s` is counted under, for a caller that keeps them per series; `None`
    /// for a process without a pipeline.
    pub(super) fn attributes(&self, s: &Span) -> Option<Vec<KeyValue>> {
        let l = self.labels.get(&s.pid)?;
        Some(metric_attributes(s, l))
    }

    /// Reports `series` (the process-metrics series of `pid`) with the process's metrics
    /// until it ends or another replaces it; nothing for a process without a pipeline.
    pub(super) fn export_usage(&self, pid: u32, series: &Arc<UsageSeries>) {
        if let Some(m) = lock(&self.pipelines).live.get_mut(&pid)
            && !m.removed
            && !m.usage.as_ref().is_some_and(|u| Arc::ptr_eq(u, series))
        {
            m.usage = Some(Arc::clone(series));
        }
    }

    /// Stops reporting `pid`'s process metrics (the process left).
    pub(super) fn end_usage(&self, pid: u32) {
        if let Some(m) = lock(&self.pipelines).live.get_mut(&pid) {
            m.usage = None;
        }
    }

    /// Reports the network flows of `store` under the host's `resource` from now on.
    pub(super) fn export_flows(
        &self,
        store: &Arc<FlowStore>,
        resource: impl FnOnce() -> ProtoResource,
    ) {
        let mut set = lock(&self.pipelines);
        if set.flows.is_none() {
            set.flows = Some((resource(), Arc::clone(store)));
        }
    }

    /// Reports `cell` (a service graph cell of `pid`) with the process's metrics, until its
    /// edge leaves or the process's last collection; nothing for a process without a
    /// pipeline.
    pub(super) fn add_graph_cell(&self, pid: u32, cell: Arc<Cell>) {
        if let Some(m) = lock(&self.pipelines).live.get_mut(&pid)
            && !m.removed
        {
            m.graph.push(cell);
        }
    }

    /// Retires a process that went away (or whose resource changed): its pipeline is
    /// collected once more, with `retired_red` (its RED series, `RedStore::forget`), then
    /// dropped.
    pub(super) fn forget(&mut self, pid: u32, retired_red: Vec<Arc<Series>>) {
        self.labels.remove(&pid);
        if let Some(m) = lock(&self.pipelines).live.get_mut(&pid) {
            m.removed = true;
            m.retired_red = retired_red;
        }
    }
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
