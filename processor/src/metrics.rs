//! RED metrics of the instrumented services and Sonde's own counters, in a
//! `prometheus-client` registry, and the Prometheus endpoint that serves them
//! (`prometheus_export`). Metric names are the OpenTelemetry HTTP semantic-convention metrics
//! under their usual Prometheus names (`http_server_request_duration_seconds`, …); every
//! request is counted whether or not its trace is sampled. The OTLP exporter counts its
//! outcomes into `ExportCounters`, defined and registered here; nothing here knows OTLP.

use std::{fmt::Debug, hash::Hash, net::SocketAddr, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    kube::K8sLabels,
    protocols::{db, grpc, messaging},
    semconv::{self, DURATION_BUCKETS, SIZE_BUCKETS},
    span::{Span, SpanKind},
};

/// What the OTLP export path did; registered here as `sonde_otlp_*` (the counters share
/// their values with the clones the exporter counts into).
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    http_request_method: String,
    http_response_status_code: u16,
    http_route: String,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    http_request_method: String,
    http_response_status_code: u16,
    http_route: String,
    server_address: String,
    server_port: u16,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

/// Labels of `rpc_server_call_duration_seconds` (the reference system's default set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcServerLabels {
    rpc_method: String,
    rpc_system_name: String,
    rpc_response_status_code: String,
    server_address: String,
    server_port: u16,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

/// Labels of `rpc_client_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcClientLabels {
    rpc_method: String,
    rpc_system_name: String,
    rpc_response_status_code: String,
    error_type: String,
    server_address: String,
    server_port: u16,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

/// Labels of `db_client_operation_duration_seconds` and `db_server_operation_duration_seconds`
/// (the reference system's default set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    db_operation_name: String,
    db_system_name: String,
    error_type: String,
    server_address: String,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

/// Labels of `messaging_client_operation_duration_seconds` and
/// `messaging_process_duration_seconds` (the reference system's default set, and the error).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessagingLabels {
    messaging_system: String,
    messaging_destination_name: String,
    messaging_operation_name: String,
    error_type: String,
    server_address: String,
    service_name: String,
    service_namespace: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    k8s: K8sLabels,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn register_durations<L>(registry: &mut Registry, instrument: &semconv::Instrument) -> Histograms<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    let family: Histograms<L> = Family::new_with_constructor(durations as fn() -> Histogram);
    registry.register_with_unit(
        instrument.name.replace('.', "_"),
        instrument.description,
        Unit::Seconds,
        family.clone(),
    );
    family
}

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn sizes() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// The three histogram families of one span kind.
struct RedFamilies<L> {
    duration: Histograms<L>,
    request_size: Histograms<L>,
    response_size: Histograms<L>,
}

impl<L> RedFamilies<L>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    fn register(registry: &mut Registry, names: &semconv::RedInstruments) -> RedFamilies<L> {
        let families = RedFamilies {
            duration: Family::new_with_constructor(durations as fn() -> Histogram),
            request_size: Family::new_with_constructor(sizes as fn() -> Histogram),
            response_size: Family::new_with_constructor(sizes as fn() -> Histogram),
        };
        for (instrument, unit, family) in [
            (&names.duration, Unit::Seconds, &families.duration),
            (&names.request_size, Unit::Bytes, &families.request_size),
            (&names.response_size, Unit::Bytes, &families.response_size),
        ] {
            registry.register_with_unit(
                instrument.name.replace('.', "_"),
                instrument.description,
                unit,
                family.clone(),
            );
        }
        families
    }

    fn series(&self, labels: &L) -> PromSeries {
        PromSeries {
            duration: self.duration.get_or_create(labels).clone(),
            request_size: Some(self.request_size.get_or_create(labels).clone()),
            response_size: Some(self.response_size.get_or_create(labels).clone()),
        }
    }
}

/// The histograms of one series (method, status, route, service; peer for clients): duration
/// and, for HTTP, body sizes.
#[derive(Clone)]
pub struct PromSeries {
    duration: Histogram,
    request_size: Option<Histogram>,
    response_size: Option<Histogram>,
}

impl PromSeries {
    /// Counts one request of this series.
    pub fn observe(&self, s: &Span) {
        self.duration.observe(s.duration_ns as f64 / 1e9);
        if let (Some(h), Some(n)) = (&self.request_size, s.request_body_size) {
            h.observe(n as f64);
        }
        if let (Some(h), Some(n)) = (&self.response_size, s.response_body_size) {
            h.observe(n as f64);
        }
    }
}

/// The metric families the processor records into.
pub struct Metrics {
    registry: Arc<Registry>,
    server: RedFamilies<ServerLabels>,
    client: RedFamilies<ClientLabels>,
    rpc_server: Histograms<RpcServerLabels>,
    rpc_client: Histograms<RpcClientLabels>,
    db_client: Histograms<DbLabels>,
    db_server: Histograms<DbLabels>,
    messaging_client: Histograms<MessagingLabels>,
    messaging_process: Histograms<MessagingLabels>,
    /// Ring buffer records received.
    pub events: Counter,
    /// Events lost in the kernel (ring buffer full), as last reported by the loader.
    pub kernel_events_lost: Gauge,
    /// Spans not delivered to their output (print or export failures).
    pub export_errors: Counter,
    /// Exchanges completed early because too many were held (spans emitted short).
    pub spans_dropped: Counter,
    /// Processes currently instrumented.
    pub instrumented_processes: Gauge,
    /// OTLP export outcomes.
    pub otlp: ExportCounters,
    /// Process metrics (`process_*`, `crate::process_metrics`): series only when on.
    pub process: crate::process_metrics::ProcessMetrics,
    /// Network flow metrics (`beyla_network_flow_*`, `crate::flows`): series only when on.
    pub flows: crate::flows::FlowFamilies,
    /// Service graph metrics (`traces_service_graph_*`, `crate::service_graph`): registered
    /// only when on.
    pub service_graph: Option<crate::service_graph::GraphFamilies>,
    /// `target_info`: the agent's series and one per instrumented service.
    target_info: Family<Vec<(String, String)>, Gauge>,
    /// The `target_info` labels of each process, and how many processes share each set.
    targets: std::sync::Mutex<Targets>,
    host: String,
}

/// The per-service `target_info` series and the processes behind each.
#[derive(Debug, Default)]
struct Targets {
    by_pid: std::collections::HashMap<u32, Vec<(String, String)>>,
    count: std::collections::HashMap<Vec<(String, String)>, usize>,
}

impl Metrics {
    /// `host` and `version` label `target_info`.
    pub fn new(host: &str) -> Metrics {
        Metrics::with_service_graph(host, false)
    }

    /// As `new`, with the service graph families (`crate::service_graph`) registered when
    /// `service_graph` (the `application_service_graph` feature) is on, and nothing of them
    /// otherwise.
    pub fn with_service_graph(host: &str, service_graph: bool) -> Metrics {
        let mut registry = Registry::default();
        let server = RedFamilies::register(&mut registry, &semconv::SERVER);
        let client = RedFamilies::register(&mut registry, &semconv::CLIENT);
        let rpc_server = register_durations(&mut registry, &grpc::SERVER_DURATION);
        let rpc_client = register_durations(&mut registry, &grpc::CLIENT_DURATION);
        let db_client = register_durations(&mut registry, &db::CLIENT_DURATION);
        let db_server = register_durations(&mut registry, &db::SERVER_DURATION);
        let messaging_client =
            register_durations(&mut registry, &messaging::CLIENT_OPERATION_DURATION);
        let messaging_process = register_durations(&mut registry, &messaging::PROCESS_DURATION);
        // A gauge of 1 rather than an OpenMetrics `info` metric: the Prometheus text
        // format (and promtool) knows no `info` type.
        let target_info = Family::<Vec<(String, String)>, Gauge>::default();
        target_info
            .get_or_create(&vec![
                ("host_name".to_string(), host.to_string()),
                ("telemetry_sdk_name".to_string(), "sonde".to_string()),
                (
                    "telemetry_sdk_version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
            ])
            .set(1);
        registry.register(
            "target_info",
            "Target metadata: the agent producing these metrics, and each instrumented service with its resource attributes (service, host, Kubernetes)",
            target_info.clone(),
        );
        let process = crate::process_metrics::ProcessMetrics::register(&mut registry);
        let flows = crate::flows::FlowFamilies::register(&mut registry);
        let service_graph =
            service_graph.then(|| crate::service_graph::GraphFamilies::register(&mut registry));
        let own = registry.sub_registry_with_prefix("sonde");
        let events = Counter::default();
        let kernel_events_lost = Gauge::default();
        let export_errors = Counter::default();
        let spans_dropped = Counter::default();
        let instrumented_processes = Gauge::default();
        own.register(
            "events_received",
            "Ring buffer records received",
            events.clone(),
        );
        own.register(
            "kernel_events_lost",
            "Events lost in the kernel because the ring buffer was full",
            kernel_events_lost.clone(),
        );
        own.register(
            "export_errors",
            "Spans that could not be written to their output",
            export_errors.clone(),
        );
        own.register(
            "spans_dropped",
            "Exchanges completed early because the table of held exchanges was full",
            spans_dropped.clone(),
        );
        own.register(
            "instrumented_processes",
            "Processes currently instrumented",
            instrumented_processes.clone(),
        );
        let otlp = ExportCounters::default();
        own.register(
            "otlp_spans_exported",
            "Spans an OTLP collector accepted",
            otlp.spans_exported.clone(),
        );
        for (reason, counter) in [
            ("queue_full", &otlp.spans_dropped_queue_full),
            ("export_failed", &otlp.spans_dropped_export_failed),
        ] {
            own.register(
                format!("otlp_spans_dropped_{reason}"),
                format!("Spans dropped before reaching the collector: {reason}"),
                counter.clone(),
            );
        }
        own.register(
            "otlp_metric_exports",
            "OTLP metric export requests the collector accepted",
            otlp.metric_exports.clone(),
        );
        own.register(
            "otlp_metric_exports_failed",
            "OTLP metric export requests that failed after retries",
            otlp.metric_exports_failed.clone(),
        );
        Metrics {
            otlp,
            flows,
            service_graph,
            process,
            registry: Arc::new(registry),
            server,
            client,
            rpc_server,
            rpc_client,
            db_client,
            db_server,
            messaging_client,
            messaging_process,
            events,
            kernel_events_lost,
            export_errors,
            spans_dropped,
            instrumented_processes,
            target_info,
            targets: std::sync::Mutex::default(),
            host: host.to_string(),
        }
    }

    /// Sets the `target_info` series of process `pid` (its service and resource
    /// attributes: `service_name`, `service_namespace`, `host_name`, `telemetry_sdk_*`, and its
    /// Kubernetes labels), or removes it (`None`). Processes of one service with the same
    /// attributes share one series, removed with the last of them.
    pub fn set_target(&self, pid: u32, service: Option<(&str, Option<&str>, &K8sLabels)>) {
        let labels = service.map(|(name, namespace, k8s)| {
            let mut l = vec![("service_name".to_string(), name.to_string())];
            if let Some(ns) = namespace {
                l.push(("service_namespace".to_string(), ns.to_string()));
            }
            l.push(("host_name".to_string(), self.host.clone()));
            l.push(("telemetry_sdk_name".to_string(), "sonde".to_string()));
            l.push((
                "telemetry_sdk_version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ));
            if let Some(m) = &k8s.0 {
                l.extend(m.prometheus_labels());
            }
            l
        });
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if t.by_pid.get(&pid) == labels.as_ref() {
            return;
        }
        if let Some(old) = t.by_pid.remove(&pid)
            && let Some(n) = t.count.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                t.count.remove(&old);
                self.target_info.remove(&old);
            }
        }
        if let Some(l) = labels {
            *t.count.entry(l.clone()).or_default() += 1;
            self.target_info.get_or_create(&l).set(1);
            t.by_pid.insert(pid, l);
        }
    }

    /// The histograms `s` is counted in, as handles sharing the registry's state, so a caller
    /// that keeps them records later requests of the same series without building labels or
    /// looking them up again.
    /// `k8s`: the process's Kubernetes labels (none outside Kubernetes).
    pub fn series(&self, s: &Span, k8s: &K8sLabels) -> PromSeries {
        let namespace = s.service_namespace.clone().unwrap_or_default();
        if let Some(d) = &s.db {
            let labels = DbLabels {
                db_operation_name: d.operation.clone().unwrap_or_default(),
                db_system_name: d.system.to_string(),
                error_type: db::error_type(d, s.no_response)
                    .unwrap_or_default()
                    .to_string(),
                server_address: s.server_address.to_string(),
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            };
            let family = match s.kind {
                SpanKind::Client => &self.db_client,
                SpanKind::Server => &self.db_server,
            };
            return PromSeries {
                duration: family.get_or_create(&labels).clone(),
                request_size: None,
                response_size: None,
            };
        }
        if let Some(m) = &s.messaging {
            let labels = MessagingLabels {
                messaging_system: m.system.to_string(),
                messaging_destination_name: m.destination.clone().unwrap_or_default(),
                messaging_operation_name: m.operation.name().to_string(),
                error_type: messaging::error_type(m, s.no_response).unwrap_or_default(),
                server_address: s.server_address.to_string(),
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            };
            let family = match m.operation {
                messaging::Operation::Publish | messaging::Operation::Metadata => {
                    &self.messaging_client
                }
                messaging::Operation::Process => &self.messaging_process,
            };
            return PromSeries {
                duration: family.get_or_create(&labels).clone(),
                request_size: None,
                response_size: None,
            };
        }
        if let Some(rpc) = &s.rpc {
            let status = rpc
                .status_code
                .filter(|c| *c <= 16)
                .map_or("", grpc::status_name)
                .to_string();
            let duration = match s.kind {
                SpanKind::Server => self
                    .rpc_server
                    .get_or_create(&RpcServerLabels {
                        rpc_method: rpc.method.clone(),
                        rpc_system_name: rpc.system.to_string(),
                        rpc_response_status_code: status,
                        server_address: s.server_address.to_string(),
                        server_port: s.server_port,
                        service_name: s.service_name.clone(),
                        service_namespace: namespace,
                        k8s: k8s.clone(),
                    })
                    .clone(),
                SpanKind::Client => self
                    .rpc_client
                    .get_or_create(&RpcClientLabels {
                        rpc_method: rpc.method.clone(),
                        rpc_system_name: rpc.system.to_string(),
                        rpc_response_status_code: status,
                        error_type: if grpc::is_error(s.kind, rpc.status_code) {
                            grpc::error_type(rpc.status_code).to_string()
                        } else {
                            String::new()
                        },
                        server_address: s.server_address.to_string(),
                        server_port: s.server_port,
                        service_name: s.service_name.clone(),
                        service_namespace: namespace,
                        k8s: k8s.clone(),
                    })
                    .clone(),
            };
            return PromSeries {
                duration,
                request_size: None,
                response_size: None,
            };
        }
        let route = s.route.clone().unwrap_or_default();
        // Non-standard methods count as `_OTHER`, so a scanner cannot mint new series.
        let method = semconv::method_value(&s.method);
        match s.kind {
            SpanKind::Server => self.server.series(&ServerLabels {
                http_request_method: method.to_string(),
                http_response_status_code: s.status,
                http_route: route,
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            }),
            SpanKind::Client => self.client.series(&ClientLabels {
                http_request_method: method.to_string(),
                http_response_status_code: s.status,
                http_route: route,
                server_address: s.server_address.to_string(),
                server_port: s.server_port,
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            }),
        }
    }

    /// This host's name (`host_name` of `target_info`).
    pub fn host_name(&self) -> &str {
        &self.host
    }

    /// The exposition in OpenMetrics text (what Prometheus asks for when it scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the classic Prometheus text format 0.0.4, for clients that do not
    /// ask for OpenMetrics (curl, promtool, older scrapers).
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode())
    }

    /// Serves the exposition at `path` on `addr` from a thread of its own, so a slow scraper
    /// never delays the ring buffer reader. Binding happens here, under the sandbox (Landlock
    /// allows exactly this port).
    pub fn serve(self: &Arc<Self>, addr: SocketAddr, path: String) -> std::io::Result<()> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        let metrics = Arc::clone(self);
        std::thread::Builder::new()
            .name("sonde-prometheus".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let wanted =
                        request.url() == path && *request.method() == tiny_http::Method::Get;
                    let response = if wanted {
                        let openmetrics = request.headers().iter().any(|h| {
                            h.field.equiv("Accept")
                                && h.value.as_str().contains("application/openmetrics-text")
                        });
                        let (body, content_type): (String, &[u8]) = if openmetrics {
                            (
                                metrics.encode(),
                                b"application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                        } else {
                            (
                                metrics.encode_classic(),
                                b"text/plain; version=0.0.4; charset=utf-8",
                            )
                        };
                        let mut r = tiny_http::Response::from_string(body);
                        if let Ok(h) =
                            tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type)
                        {
                            r = r.with_header(h);
                        }
                        r
                    } else {
                        tiny_http::Response::from_string("not found\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })?;
        Ok(())
    }
}

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4: counter families are
/// named with their `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family
/// without it), and `# UNIT` and `# EOF`, which 0.0.4 does not know, are dropped.
fn openmetrics_to_classic(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Address;

    fn record(m: &Metrics, s: &Span) {
        m.series(s, &K8sLabels::default()).observe(s);
    }

    fn span(kind: SpanKind, status: u16, route: &str, ns: u64) -> Span {
        Span {
            kind,
            path: "/x/1".into(),
            route: Some(route.into()),
            status,
            server_address: Address(Some("127.0.0.1".parse().expect("ip"))),
            server_port: 8080,
            client_port: 5000,
            request_body_size: Some(0),
            response_body_size: Some(100),
            end_unix_nano: ns,
            duration_ns: ns,
            ..Span::fixture()
        }
    }

    #[test]
    fn histograms_count_per_route_and_status() {
        let m = Metrics::new("host-a");
        for _ in 0..3 {
            record(&m, &span(SpanKind::Server, 200, "/x/*", 20_000_000));
        }
        record(&m, &span(SpanKind::Server, 500, "/x/*", 2_000_000_000));
        record(&m, &span(SpanKind::Client, 404, "/y", 1_000_000));
        m.events.inc_by(5);
        let text = m.encode();
        assert!(text.contains(
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/x/*\",service_name=\"svc\",service_namespace=\"\"} 3"
        ), "{text}");
        assert!(text.contains("http_response_status_code=\"500\""), "{text}");
        // 20 ms falls in the 0.025 bucket; 2 s in 2.5.
        assert!(
            text.lines().any(|l| l.starts_with(
                "http_server_request_duration_seconds_bucket{le=\"0.025\",http_request_method=\"GET\",http_response_status_code=\"200\""
            ) && l.ends_with("} 3")),
            "{text}"
        );
        assert!(text.contains(
            "http_client_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"404\",http_route=\"/y\",server_address=\"127.0.0.1\",server_port=\"8080\",service_name=\"svc\",service_namespace=\"\"} 1"
        ), "{text}");
        assert!(text.contains("target_info{host_name=\"host-a\""), "{text}");
        assert!(text.contains("sonde_events_received_total 5"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let classic = m.encode_classic();
        assert!(classic.contains("# TYPE sonde_events_received_total counter\n"));
        assert!(classic.contains("# HELP sonde_events_received_total "));
        assert!(classic.contains("# TYPE http_server_request_duration_seconds histogram\n"));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }
    #[test]
    fn messaging_histograms_count_per_operation_and_topic() {
        use crate::{protocols::messaging::Operation, span::Messaging};
        let m = Metrics::new("host-a");
        let messaging = |operation, error_code| {
            let mut s = span(SpanKind::Client, 0, "", 1_000_000);
            s.messaging = Some(Messaging {
                system: "kafka",
                operation,
                destination: Some("orders".into()),
                client_id: Some("c".into()),
                error_code,
            });
            s
        };
        record(&m, &messaging(Operation::Publish, None));
        record(&m, &messaging(Operation::Publish, None));
        record(&m, &messaging(Operation::Publish, Some(3)));
        record(&m, &messaging(Operation::Process, None));
        let text = m.encode();
        assert!(text.contains(
            "messaging_client_operation_duration_seconds_count{messaging_system=\"kafka\",messaging_destination_name=\"orders\",messaging_operation_name=\"publish\",error_type=\"\",server_address=\"127.0.0.1\",service_name=\"svc\",service_namespace=\"\"} 2"
        ), "{text}");
        assert!(
            text.contains("error_type=\"UNKNOWN_TOPIC_OR_PARTITION\""),
            "{text}"
        );
        assert!(text.contains(
            "messaging_process_duration_seconds_count{messaging_system=\"kafka\",messaging_destination_name=\"orders\",messaging_operation_name=\"process\""
        ), "{text}");
        assert!(
            !text.contains("http_client_request_duration_seconds_count"),
            "{text}"
        );
    }
}
