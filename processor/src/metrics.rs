//! The Prometheus side of metrics: a `prometheus-client` registry with Sonde's own counters,
//! the RED histograms encoded at each scrape from the one aggregation (`red_store`, through
//! `RedCollector`; the series' labels are built here, `red_labels`), and the endpoint that
//! serves them (`prometheus_export`). Metric names are the OpenTelemetry semantic-convention
//! metrics under their usual Prometheus names (`http_server_request_duration_seconds`, …);
//! every request is counted whether or not its trace is sampled. The OTLP exporter counts its
//! outcomes into `ExportCounters`, defined and registered here; nothing here knows OTLP.

use std::{fmt::Debug, hash::Hash, net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{
    kube::K8sLabels,
    protocols::{db, grpc, messaging},
    red_store::{self, HistogramSnapshot, Instrument, RedStore},
    semconv,
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
pub struct ServerLabels {
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
pub struct ClientLabels {
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
pub struct RpcServerLabels {
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
pub struct RpcClientLabels {
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
pub struct DbLabels {
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
pub struct MessagingLabels {
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

/// The Prometheus labels of one RED series: which struct depends on the instrument
/// (`red_store::Instrument`). Series of processes that share a label set are summed.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum PromLabels {
    Server(ServerLabels),
    Client(ClientLabels),
    RpcServer(RpcServerLabels),
    RpcClient(RpcClientLabels),
    Db(DbLabels),
    Messaging(MessagingLabels),
}

impl PromLabels {
    fn encode_histogram(
        &self,
        encoder: &mut MetricEncoder<'_>,
        h: &HistogramSnapshot,
    ) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(h.counts.len());
        for (i, n) in h.counts.iter().enumerate() {
            buckets.push((h.bounds.get(i).copied().unwrap_or(f64::INFINITY), *n));
        }
        let (sum, count) = (h.sum, h.count());
        let point = |e: MetricEncoder<'_>| -> Result<(), std::fmt::Error> {
            let mut e = e;
            e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
        };
        match self {
            PromLabels::Server(l) => point(encoder.encode_family(l)?),
            PromLabels::Client(l) => point(encoder.encode_family(l)?),
            PromLabels::RpcServer(l) => point(encoder.encode_family(l)?),
            PromLabels::RpcClient(l) => point(encoder.encode_family(l)?),
            PromLabels::Db(l) => point(encoder.encode_family(l)?),
            PromLabels::Messaging(l) => point(encoder.encode_family(l)?),
        }
    }
}

/// Encodes the RED histograms from the one aggregation (`red_store`) at each scrape: every
/// family's descriptor, then its label sets' totals.
#[derive(Debug)]
struct RedCollector {
    store: Arc<RedStore>,
}

impl Collector for RedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.store.prometheus_totals();
        for instrument in Instrument::ALL {
            for family in instrument.families() {
                let names = family.names;
                let unit = match family.unit {
                    red_store::Unit::Seconds => Unit::Seconds,
                    red_store::Unit::Bytes => Unit::Bytes,
                };
                let name = names.name.replace('.', "_");
                let mut points = encoder.encode_descriptor(
                    &name,
                    names.description,
                    Some(&unit),
                    MetricType::Histogram,
                )?;
                for ((i, labels), snap) in &totals {
                    if *i != instrument {
                        continue;
                    }
                    // A size histogram of a series that never carried a body size.
                    if let Some(h) = (family.pick)(snap).filter(|h| h.count() > 0) {
                        labels.encode_histogram(&mut points, h)?;
                    }
                }
            }
        }
        let overflow = ConstCounter::new(self.store.overflowed());
        let e = encoder.encode_descriptor(
            "sonde_red_series_overflow",
            "Requests not counted in the RED histograms because the series limit was reached",
            None,
            overflow.metric_type(),
        )?;
        overflow.encode(e)
    }
}

/// The metric families the processor records into.
pub struct Metrics {
    registry: Arc<Registry>,
    /// The RED series both outputs encode.
    red: Arc<RedStore>,
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
        let red = Arc::new(RedStore::default());
        registry.register_collector(Box::new(RedCollector {
            store: Arc::clone(&red),
        }));
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
            red,
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

    /// The RED series both outputs count requests in (`red_store`).
    pub fn red_store(&self) -> Arc<RedStore> {
        Arc::clone(&self.red)
    }

    /// The Prometheus labels `s` is counted under; `k8s`: the process's Kubernetes labels
    /// (none outside Kubernetes).
    pub fn red_labels(s: &Span, k8s: &K8sLabels) -> PromLabels {
        let namespace = s.service_namespace.clone().unwrap_or_default();
        if let Some(d) = &s.db {
            return PromLabels::Db(DbLabels {
                db_operation_name: d.operation.clone().unwrap_or_default(),
                db_system_name: d.system.to_string(),
                error_type: db::error_type(d, s.no_response)
                    .unwrap_or_default()
                    .to_string(),
                server_address: s.server_address.to_string(),
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            });
        }
        if let Some(m) = &s.messaging {
            return PromLabels::Messaging(MessagingLabels {
                messaging_system: m.system.to_string(),
                messaging_destination_name: m.destination.clone().unwrap_or_default(),
                messaging_operation_name: m.operation.name().to_string(),
                error_type: messaging::error_type(m, s.no_response).unwrap_or_default(),
                server_address: s.server_address.to_string(),
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            });
        }
        if let Some(rpc) = &s.rpc {
            let status = rpc
                .status_code
                .filter(|c| *c <= 16)
                .map_or("", grpc::status_name)
                .to_string();
            return match s.kind {
                SpanKind::Server => PromLabels::RpcServer(RpcServerLabels {
                    rpc_method: rpc.method.clone(),
                    rpc_system_name: rpc.system.to_string(),
                    rpc_response_status_code: status,
                    server_address: s.server_address.to_string(),
                    server_port: s.server_port,
                    service_name: s.service_name.clone(),
                    service_namespace: namespace,
                    k8s: k8s.clone(),
                }),
                SpanKind::Client => PromLabels::RpcClient(RpcClientLabels {
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
                }),
            };
        }
        let route = s.route.clone().unwrap_or_default();
        // Non-standard methods count as `_OTHER`, so a scanner cannot mint new series.
        let method = semconv::method_value(&s.method);
        match s.kind {
            SpanKind::Server => PromLabels::Server(ServerLabels {
                http_request_method: method.to_string(),
                http_response_status_code: s.status,
                http_route: route,
                service_name: s.service_name.clone(),
                service_namespace: namespace,
                k8s: k8s.clone(),
            }),
            SpanKind::Client => PromLabels::Client(ClientLabels {
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
        let series = crate::red_store::Series::new(
            s.pid,
            Instrument::of(s),
            Some(Metrics::red_labels(s, &K8sLabels::default())),
            None,
            0,
        );
        m.red.add(series).expect("room").record(s);
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
