//! The OpenTelemetry SDK instruments that counted process metrics, network flows and the
//! service graph before each moved into one aggregation of Sonde's own, kept for tests only:
//! the encoders' tests compare what Sonde encodes with what these instruments exported
//! (`usage_metrics`, `flows`, `graph_metrics`). The code below is as it was in production
//! (`meters.rs`, `flows.rs`), only moved here.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use opentelemetry::{
    KeyValue, StringValue, Value,
    metrics::{Counter, Meter, MeterProvider},
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reader handle `SdkMeterProvider::with_reader` takes, sharing the `ManualReader` the
/// test collects from.
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

/// A provider with `resource` and the reader to collect it.
pub(super) fn provider(resource: Resource) -> (SdkMeterProvider, Arc<ManualReader>) {
    let reader = Arc::new(ManualReader::builder().build());
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(SharedReader(Arc::clone(&reader)))
        .build();
    (provider, reader)
}

/// Interned label values of one process.
pub(super) struct ServiceLabels {
    service_name: Value,
    service_namespace: Option<Value>,
}

impl ServiceLabels {
    pub(super) fn new(process: &ProcessResource) -> ServiceLabels {
        let arc = |s: &str| Value::String(StringValue::from(Arc::<str>::from(s)));
        ServiceLabels {
            service_name: arc(&process.service_name),
            service_namespace: process.service_namespace.as_deref().map(arc),
        }
    }
}

/// One reading as the SDK instruments recorded it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UsagePoint {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub utilization: Option<(f64, f64)>,
    pub memory_rss: u64,
    pub memory_virtual: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_receive_bytes: u64,
    pub net_transmit_bytes: u64,
    pub parent_pid: u32,
    pub command: String,
    pub owner: String,
}

/// A process's latest process-metrics reading, shared with its instruments' callbacks.
pub(super) type UsageCell = Arc<Mutex<Option<UsagePoint>>>;

/// Registers the process-metrics instruments of one process: observable ones, reporting the
/// cell's reading at each collection (cumulative sums as the loader read them, gauges as
/// they are), and nothing once the cell is empty, so the series stop with the process.
pub(super) fn usage_instruments(meter: &Meter, labels: &ServiceLabels) -> UsageCell {
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

/// The two flow sums of the host pipeline.
pub(super) struct FlowInstruments {
    bytes: Counter<u64>,
    packets: Counter<u64>,
}

impl FlowInstruments {
    /// The flows' resource as it was built, and the instruments on a provider carrying it.
    pub(super) fn new(host: &str) -> (FlowInstruments, SdkMeterProvider, Arc<ManualReader>) {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sonde-network-flows"),
                KeyValue::new("host.name", host.to_string()),
                KeyValue::new("os.type", "linux"),
                KeyValue::new("telemetry.sdk.name", "sonde"),
                KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let (provider, reader) = provider(resource);
        let meter = provider.meter("sonde");
        let f = FlowInstruments {
            bytes: meter
                .u64_counter("beyla.network.flow.bytes")
                .with_unit("By")
                .with_description("Bytes of the network flows seen on this host's interfaces, IP headers included")
                .build(),
            packets: meter
                .u64_counter("beyla.network.flow.packets")
                .with_unit("{packet}")
                .with_description("Packets of the network flows seen on this host's interfaces")
                .build(),
        };
        (f, provider, reader)
    }

    pub(super) fn add(
        &self,
        bytes_attrs: &[KeyValue],
        bytes: u64,
        packets_attrs: &[KeyValue],
        packets: u64,
    ) {
        self.bytes.add(bytes, bytes_attrs);
        self.packets.add(packets, packets_attrs);
    }
}

mod tests {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        common::v1::KeyValue as ProtoKeyValue,
        metrics::v1::{ResourceMetrics as ProtoResourceMetrics, metric},
    };
    use prometheus_client::registry::Registry;
    use sonde_schema::control::{FlowCount, FlowDirection, ProcessUsage};

    use super::*;
    use crate::{
        kube::K8sLabels,
        metrics::Metrics,
        otlp::{
            convert, flows,
            meters::{self, Meters, Pipelines},
            usage_metrics,
        },
        process_metrics::{ProcessLabels, ProcessMetrics},
    };

    /// Makes two collections comparable: resource attributes, metrics and point attributes
    /// in key order (the SDK's resource is a hash map and it sent a point's attributes as
    /// recorded or sorted; the order means nothing in OTLP), timestamps left out.
    fn normalized(mut rm: ProtoResourceMetrics) -> ProtoResourceMetrics {
        let by_key = |a: &ProtoKeyValue, b: &ProtoKeyValue| a.key.cmp(&b.key);
        if let Some(r) = rm.resource.as_mut() {
            r.attributes.sort_by(by_key);
        }
        for scope in &mut rm.scope_metrics {
            scope.metrics.sort_by(|a, b| a.name.cmp(&b.name));
            for m in &mut scope.metrics {
                let points = match &mut m.data {
                    Some(metric::Data::Sum(s)) => &mut s.data_points,
                    Some(metric::Data::Gauge(g)) => &mut g.data_points,
                    other => panic!("{}: {other:?}", m.name),
                };
                for p in points.iter_mut() {
                    (p.start_time_unix_nano, p.time_unix_nano) = (0, 0);
                    p.attributes.sort_by(by_key);
                }
                points.sort_by_key(|p| format!("{:?}", p.attributes));
            }
        }
        rm
    }

    fn sdk_collection(reader: &ManualReader) -> ProtoResourceMetrics {
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).expect("collects");
        ExportMetricsServiceRequest::from(&rm)
            .resource_metrics
            .remove(0)
    }

    fn reading(at_s: u64, user_ms: u64) -> ProcessUsage {
        ProcessUsage {
            pid: 4242,
            parent_pid: 17,
            uid: 1000,
            cpu_user_ns: user_ms * 1_000_000,
            cpu_system_ns: 250_000_000,
            memory_rss: 200 << 20,
            memory_virtual: 400 << 20,
            disk_read_bytes: 12,
            disk_write_bytes: 4096,
            net_receive_bytes: 10,
            net_transmit_bytes: 20,
            sampled_at_ns: at_s * 1_000_000_000,
        }
    }

    /// Two readings of one process, recorded into the one aggregation and encoded under its
    /// pipeline's resource, against the same reading reported by the SDK's observable
    /// instruments (built as production built them) on a provider with the same resource:
    /// the same resource, scope, metrics and points, timestamps aside.
    #[test]
    fn process_metrics_are_encoded_as_the_sdk_instruments_exported_them() {
        for namespace in [Some("shop"), None] {
            let process = ProcessResource {
                pid: 4242,
                service_name: "svc".into(),
                service_namespace: namespace.map(Into::into),
                exe_path: "/usr/bin/python3".into(),
                k8s: None,
            };
            let mut registry = Registry::default();
            let store = ProcessMetrics::register(&mut registry);
            let labels = ProcessLabels {
                service_name: "svc".into(),
                service_namespace: namespace.unwrap_or_default().into(),
                process_pid: 4242,
                process_parent_pid: 17,
                process_command: "python3".into(),
                process_owner: "1000".into(),
                k8s: K8sLabels::default(),
            };
            let mut series = None;
            for u in [reading(10, 1000), reading(15, 3500)] {
                let obs = store.observe(&u);
                series = Some(store.record(&u, &obs, labels.clone()));
            }
            let series = series.expect("recorded");
            let r = series.reading();
            assert!(r.utilization.is_some());

            let (provider, reader) = provider(convert::resource(&process, "h"));
            let meter = provider.meter("sonde");
            let cell = usage_instruments(&meter, &ServiceLabels::new(&process));
            *lock(&cell) = Some(UsagePoint {
                cpu_user_seconds: 3.5,
                cpu_system_seconds: 0.25,
                utilization: r.utilization,
                memory_rss: 200 << 20,
                memory_virtual: 400 << 20,
                disk_read_bytes: 12,
                disk_write_bytes: 4096,
                net_receive_bytes: 10,
                net_transmit_bytes: 20,
                parent_pid: 17,
                command: "python3".into(),
                owner: "1000".into(),
            });
            let sdk = sdk_collection(&reader);

            let pipelines = Pipelines::default();
            let mut meters = Meters::new(Arc::clone(&pipelines));
            meters.add(4242, &process, &convert::resource(&process, "h"));
            meters.export_usage(4242, &series);
            let (mut collected, _) = meters::collect(&pipelines, 0);
            let c = collected.remove(0);
            let ours = ProtoResourceMetrics {
                resource: Some(c.resource),
                scope_metrics: vec![usage_metrics::scope(c.usage)],
                schema_url: String::new(),
            };
            assert_eq!(normalized(ours), normalized(sdk), "namespace {namespace:?}");
        }
    }

    fn flow(sport: u16, direction: FlowDirection, bytes: u64, packets: u64) -> FlowCount {
        let v4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped();
        FlowCount {
            src: v4([10, 200, 0, 1]),
            dst: v4([10, 200, 0, 2]),
            src_port: sport,
            dst_port: 5201,
            transport: if sport.is_multiple_of(2) { 6 } else { 17 },
            direction,
            ifindex: 4,
            iface: "veth-a".into(),
            bytes,
            packets,
        }
    }

    /// The same flow counts through the one aggregation and through the SDK counters (built
    /// as production built them, under the same host resource): the same resource, scope,
    /// metrics and points, timestamps aside.
    #[test]
    fn flows_are_encoded_as_the_sdk_counters_exported_them() {
        let file = sonde_config::FileText {
            path: "t.yaml".into(),
            text: "prometheus_export:\n  port: 9999\nattributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [direction, iface, transport]\n    beyla_network_flow_packets:\n      include: [transport]\n".into(),
        };
        let config =
            crate::config::Config::from_sources(Some(&file), &Default::default()).expect("config");
        let flows_in: Vec<FlowCount> = (0..40)
            .map(|p: u16| {
                let d = if p.is_multiple_of(3) {
                    FlowDirection::Ingress
                } else {
                    FlowDirection::Egress
                };
                flow(30000 + p, d, 100 + u64::from(p), 1 + u64::from(p % 4))
            })
            .collect();
        let m = Metrics::new("h");
        crate::flows::apply(&flows_in, &config, &m, None, None);
        let ours =
            flows::resource_metrics(&m.flows.store(), &flows::resource("h"), 0).expect("series");

        let (sdk_flows, _provider, reader) = FlowInstruments::new("h");
        for f in &flows_in {
            let direction = if f.direction == FlowDirection::Ingress {
                "ingress"
            } else {
                "egress"
            };
            let transport = crate::flows::transport_name(f.transport);
            sdk_flows.add(
                &[
                    KeyValue::new("direction", direction),
                    KeyValue::new("iface", f.iface.clone()),
                    KeyValue::new("transport", transport.clone()),
                ],
                f.bytes,
                &[KeyValue::new("transport", transport)],
                f.packets,
            );
        }
        let sdk = sdk_collection(&reader);
        assert_eq!(normalized(ours), normalized(sdk));
    }
}
