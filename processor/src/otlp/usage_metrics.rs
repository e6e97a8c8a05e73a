//! The OTLP encoding of a process's process metrics (`process_metrics::UsageSeries`): its
//! latest reading as `process.cpu.time` (`s`), `process.disk.io` and `process.network.io`
//! (`By`), monotonic cumulative sums, and `process.cpu.utilization` (`1`),
//! `process.memory.usage` and `process.memory.virtual` (`By`), gauges, in
//! `opentelemetry-proto`'s types. Names, units, descriptions, value types, attributes (in the
//! order they were recorded), temporality and scope (`sonde`, no version) are those of the
//! OpenTelemetry SDK's observable instruments that reported them before the reading moved into
//! the one aggregation (`sdk_reference` keeps them, and a test compares the two). Built once
//! per export interval and process.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, ScopeMetrics, Sum, metric,
        number_data_point::Value,
    },
};

use super::convert::SCOPE_NAME;
use crate::process_metrics::{ProcessLabels, Reading, UsageSeries};

/// The scope process metrics, the service graph (`graph_metrics`) and the network flows
/// (`flows`) are reported under: `sonde` without a version, as the SDK's meter named it.
pub fn scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: SCOPE_NAME.into(),
            ..InstrumentationScope::default()
        }),
        metrics,
        schema_url: String::new(),
    }
}

pub(super) fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// The attributes of a process's points beside the metric's own mode or direction (its
/// resource carries `service.*`, `process.pid`, `host.name`, Kubernetes).
fn attributes(l: &ProcessLabels) -> Vec<KeyValue> {
    let mut attrs = vec![
        string("service.name", &l.service_name),
        string("process.command", &l.process_command),
        string("process.owner", &l.process_owner),
        int("process.parent_pid", i64::from(l.process_parent_pid)),
    ];
    if !l.service_namespace.is_empty() {
        attrs.push(string("service.namespace", &l.service_namespace));
    }
    attrs
}

/// One metric with one point per `(attribute value, value)`.
struct Points<'a> {
    base: &'a [KeyValue],
    start: u64,
    now: u64,
}

impl Points<'_> {
    fn point(&self, extra: Option<(&str, &str)>, value: Value) -> NumberDataPoint {
        let mut attributes = self.base.to_vec();
        if let Some((k, v)) = extra {
            attributes.push(string(k, v));
        }
        NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.now.max(self.start),
            value: Some(value),
            ..NumberDataPoint::default()
        }
    }
}

/// A cumulative, monotonic sum of `data_points`.
pub(super) fn sum(
    name: &str,
    unit: &str,
    description: &str,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn gauge(name: &str, unit: &str, description: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Metric::default()
    }
}

fn as_int(v: u64) -> Value {
    Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The metrics of `series` at `now`, in the order the SDK's instruments were registered;
/// nothing once the series ended (its process left, or a new series replaced it).
pub fn metrics(series: &UsageSeries, now_unix_nano: u64) -> Vec<Metric> {
    if !series.is_live() {
        return Vec::new();
    }
    let r: Reading = series.reading();
    let base = attributes(&series.labels);
    let p = Points {
        base: &base,
        start: series.start_unix_nano,
        now: now_unix_nano,
    };
    let mode = |m| Some(("cpu.mode", m));
    let mut out = Vec::with_capacity(6);
    out.push(sum(
        "process.cpu.time",
        "s",
        "Total CPU seconds broken down by different states",
        vec![
            p.point(mode("user"), Value::AsDouble(r.cpu_user_seconds)),
            p.point(mode("system"), Value::AsDouble(r.cpu_system_seconds)),
        ],
    ));
    if let Some((user, system)) = r.utilization {
        out.push(gauge(
            "process.cpu.utilization",
            "1",
            "Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process",
            vec![
                p.point(mode("user"), Value::AsDouble(user)),
                p.point(mode("system"), Value::AsDouble(system)),
            ],
        ));
    }
    out.push(gauge(
        "process.memory.usage",
        "By",
        "The amount of physical memory in use",
        vec![p.point(None, as_int(r.memory_rss))],
    ));
    out.push(gauge(
        "process.memory.virtual",
        "By",
        "The amount of committed virtual memory",
        vec![p.point(None, as_int(r.memory_virtual))],
    ));
    let disk = |d| Some(("disk.io.direction", d));
    out.push(sum(
        "process.disk.io",
        "By",
        "Disk bytes transferred",
        vec![
            p.point(disk("read"), as_int(r.disk_read_bytes)),
            p.point(disk("write"), as_int(r.disk_write_bytes)),
        ],
    ));
    let net = |d| Some(("network.io.direction", d));
    out.push(sum(
        "process.network.io",
        "By",
        "Network bytes transferred",
        vec![
            p.point(net("receive"), as_int(r.net_receive_bytes)),
            p.point(net("transmit"), as_int(r.net_transmit_bytes)),
        ],
    ));
    out
}

#[cfg(test)]
pub(super) mod tests {
    use prost::Message as _;

    use super::*;
    use crate::kube::K8sLabels;

    fn series(namespace: &str, utilization: Option<(f64, f64)>) -> UsageSeries {
        let labels = ProcessLabels {
            service_name: "svc".into(),
            service_namespace: namespace.into(),
            process_pid: 4242,
            process_parent_pid: 17,
            process_command: "python3".into(),
            process_owner: "1000".into(),
            k8s: K8sLabels::default(),
        };
        let reading = Reading {
            cpu_user_seconds: 3.5,
            cpu_system_seconds: 0.25,
            utilization,
            memory_rss: 200 << 20,
            memory_virtual: 400 << 20,
            disk_read_bytes: 12,
            disk_write_bytes: 4096,
            net_receive_bytes: 10,
            net_transmit_bytes: 20,
        };
        UsageSeries::new(4242, labels, reading, 1_000)
    }

    /// FNV-1a of the encoded bytes: pins them without a page of hex.
    pub(crate) fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// One line per metric and per point: what the bytes say, readably.
    pub(crate) fn describe(metrics: &[Metric]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for m in metrics {
            let (kind, points) = match &m.data {
                Some(metric::Data::Sum(s)) => (
                    format!(
                        "sum temporality={} monotonic={}",
                        s.aggregation_temporality, s.is_monotonic
                    ),
                    &s.data_points,
                ),
                Some(metric::Data::Gauge(g)) => ("gauge".to_string(), &g.data_points),
                other => panic!("{other:?}"),
            };
            let _ = writeln!(out, "{} [{}] {kind} \"{}\"", m.name, m.unit, m.description);
            for p in points {
                let attrs: Vec<String> = p
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => format!("{s:?}"),
                            Some(any_value::Value::IntValue(i)) => format!("int {i}"),
                            other => format!("{other:?}"),
                        };
                        format!("{}={v}", kv.key)
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "- {:?} {}..{} {}",
                    p.value,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    attrs.join(",")
                );
            }
        }
        out
    }

    /// The encoded scope of one reading, pinned (what the SDK's instruments exported,
    /// `sdk_reference`, with these timestamps): a change to any name, unit, description,
    /// value type, attribute or temporality shows here, readably in the listing and in the
    /// bytes' length and hash.
    #[test]
    fn one_reading_encodes_to_these_bytes() {
        let s = series("shop", Some((0.25, 0.05)));
        let scope = scope(metrics(&s, 2_000));
        assert_eq!(
            describe(&scope.metrics),
            PINNED.replace(" B", &format!(" {BASE}"))
        );
        let sc = scope.scope.as_ref().expect("scope");
        assert_eq!((sc.name.as_str(), sc.version.as_str()), ("sonde", ""));
        let bytes = scope.encode_to_vec();
        assert_eq!((bytes.len(), fnv(&bytes)), (2362, 7512673273931936708));
    }

    /// The listing `describe` gives; `B` stands for the process's attributes (`BASE`).
    const PINNED: &str = "\
process.cpu.time [s] sum temporality=2 monotonic=true \"Total CPU seconds broken down by different states\"\n\
- Some(AsDouble(3.5)) 1000..2000 B,cpu.mode=\"user\"\n\
- Some(AsDouble(0.25)) 1000..2000 B,cpu.mode=\"system\"\n\
process.cpu.utilization [1] gauge \"Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process\"\n\
- Some(AsDouble(0.25)) 1000..2000 B,cpu.mode=\"user\"\n\
- Some(AsDouble(0.05)) 1000..2000 B,cpu.mode=\"system\"\n\
process.memory.usage [By] gauge \"The amount of physical memory in use\"\n\
- Some(AsInt(209715200)) 1000..2000 B\n\
process.memory.virtual [By] gauge \"The amount of committed virtual memory\"\n\
- Some(AsInt(419430400)) 1000..2000 B\n\
process.disk.io [By] sum temporality=2 monotonic=true \"Disk bytes transferred\"\n\
- Some(AsInt(12)) 1000..2000 B,disk.io.direction=\"read\"\n\
- Some(AsInt(4096)) 1000..2000 B,disk.io.direction=\"write\"\n\
process.network.io [By] sum temporality=2 monotonic=true \"Network bytes transferred\"\n\
- Some(AsInt(10)) 1000..2000 B,network.io.direction=\"receive\"\n\
- Some(AsInt(20)) 1000..2000 B,network.io.direction=\"transmit\"\n";

    const BASE: &str = "service.name=\"svc\",process.command=\"python3\",process.owner=\"1000\",process.parent_pid=int 17,service.namespace=\"shop\"";

    #[test]
    fn no_utilization_before_the_second_reading_nothing_once_ended() {
        let s = series("", None);
        let m = metrics(&s, 2_000);
        assert_eq!(m.len(), 5);
        assert!(m.iter().all(|m| m.name != "process.cpu.utilization"));
        let Some(metric::Data::Gauge(g)) = &m[1].data else {
            panic!("memory usage is a gauge");
        };
        let p = &g.data_points[0];
        assert_eq!(p.value, Some(Value::AsInt(200 << 20)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1_000, 2_000));
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "service.name",
                "process.command",
                "process.owner",
                "process.parent_pid"
            ],
            "no empty namespace"
        );
        s.end();
        assert!(metrics(&s, 3_000).is_empty());
    }
}
