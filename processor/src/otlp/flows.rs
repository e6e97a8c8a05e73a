//! The OTLP encoding of the network flow metrics (`flows::FlowStore`): the monotonic
//! cumulative sums `beyla.network.flow.bytes` (`By`) and `beyla.network.flow.packets`
//! (`{packet}`), one data point per series, attributed as selected (in selection order), in
//! the `sonde` scope (no version), under one resource naming the host and the agent, not a
//! process: flows belong to interfaces. Names, units, descriptions, value types, temporality
//! and scope are those of the OpenTelemetry SDK counters that counted them before the counting
//! moved into the one aggregation (`sdk_reference` keeps them, and a test compares the two).
//! A series leaves OTLP, as it leaves Prometheus, after `FLOW_SERIES_TTL` without counts.

use opentelemetry_proto::tonic::{
    metrics::v1::{Metric, NumberDataPoint, ResourceMetrics, number_data_point::Value},
    resource::v1::Resource,
};

use super::usage_metrics::{self, scope, string};
use crate::flows::{FlowKey, FlowStore, SeriesCount};

/// The flows' resource.
pub(super) fn resource(host: &str) -> Resource {
    Resource {
        attributes: vec![
            string("host.name", host),
            string("os.type", "linux"),
            string("service.name", "sonde-network-flows"),
            string("telemetry.sdk.name", "sonde"),
            string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Resource::default()
    }
}

fn sum(
    name: &str,
    unit: &str,
    description: &str,
    series: &[(FlowKey, SeriesCount)],
    now: u64,
) -> Option<Metric> {
    if series.is_empty() {
        return None;
    }
    let data_points = series
        .iter()
        .map(|(key, c)| NumberDataPoint {
            attributes: key.iter().map(|(k, v)| string(k, v)).collect(),
            start_time_unix_nano: c.start_unix_nano,
            time_unix_nano: now.max(c.start_unix_nano),
            value: Some(Value::AsInt(i64::try_from(c.value).unwrap_or(i64::MAX))),
            ..NumberDataPoint::default()
        })
        .collect();
    Some(usage_metrics::sum(name, unit, description, data_points))
}

/// The two flow sums of `store` at `now` under `resource`; `None` while it has no series.
pub(super) fn resource_metrics(
    store: &FlowStore,
    resource: &Resource,
    now_unix_nano: u64,
) -> Option<ResourceMetrics> {
    let (bytes, packets) = store.snapshot();
    let metrics: Vec<Metric> = [
        sum(
            "beyla.network.flow.bytes",
            "By",
            "Bytes of the network flows seen on this host's interfaces, IP headers included",
            &bytes,
            now_unix_nano,
        ),
        sum(
            "beyla.network.flow.packets",
            "{packet}",
            "Packets of the network flows seen on this host's interfaces",
            &packets,
            now_unix_nano,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!metrics.is_empty()).then(|| ResourceMetrics {
        resource: Some(resource.clone()),
        scope_metrics: vec![scope(metrics)],
        schema_url: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::metrics::v1::metric;
    use prost::Message as _;
    use sonde_schema::control::{FlowCount, FlowDirection};

    use super::*;
    use crate::{
        metrics::Metrics,
        otlp::usage_metrics::tests::{describe, fnv},
    };

    fn flow(sport: u16, direction: FlowDirection, bytes: u64) -> FlowCount {
        let v4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped();
        FlowCount {
            src: v4([10, 200, 0, 1]),
            dst: v4([10, 200, 0, 2]),
            src_port: sport,
            dst_port: 5201,
            transport: 17,
            direction,
            ifindex: 4,
            iface: "veth-a".into(),
            bytes,
            packets: 1,
        }
    }

    /// A hundred flows (a hundred client ports, both directions, one interface) under a
    /// selection of three attributes, pinned as encoded (what the SDK counters exported,
    /// `sdk_reference`, with the timestamps set): the host resource, the `sonde` scope, two
    /// sums of two points each.
    #[test]
    fn flows_encode_to_these_bytes() {
        let file = sonde_config::FileText {
            path: "t.yaml".into(),
            text: "prometheus_export:\n  port: 9999\nattributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [direction, iface, transport]\n".into(),
        };
        let config =
            crate::config::Config::from_sources(Some(&file), &Default::default()).expect("config");
        let flows: Vec<FlowCount> = (0..100)
            .map(|p: u16| {
                if p.is_multiple_of(4) {
                    flow(30000 + p, FlowDirection::Ingress, 60)
                } else {
                    flow(30000 + p, FlowDirection::Egress, 128)
                }
            })
            .collect();
        let m = Metrics::new("h");
        crate::flows::apply(&flows, &config, &m, None, None);
        let mut rm = resource_metrics(&m.flows.store(), &resource("h"), 0).expect("series");
        for metric in &mut rm.scope_metrics[0].metrics {
            let Some(metric::Data::Sum(s)) = &mut metric.data else {
                panic!("{metric:?}");
            };
            for p in &mut s.data_points {
                assert!(p.start_time_unix_nano > 0 && p.time_unix_nano == p.start_time_unix_nano);
                (p.start_time_unix_nano, p.time_unix_nano) = (1_000, 2_000);
            }
        }
        let keys: Vec<&str> = rm
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "host.name",
                "os.type",
                "service.name",
                "telemetry.sdk.name",
                "telemetry.sdk.version"
            ]
        );
        let scope = &rm.scope_metrics[0];
        assert_eq!(
            scope
                .scope
                .as_ref()
                .map(|s| (s.name.as_str(), s.version.as_str())),
            Some(("sonde", ""))
        );
        assert_eq!(describe(&scope.metrics), PINNED);
        let bytes = scope.encode_to_vec();
        assert_eq!((bytes.len(), fnv(&bytes)), (604, 10273470671509485390));
    }

    const PINNED: &str = "\
beyla.network.flow.bytes [By] sum temporality=2 monotonic=true \"Bytes of the network flows seen on this host's interfaces, IP headers included\"\n\
- Some(AsInt(9600)) 1000..2000 direction=\"egress\",transport=\"udp\",iface=\"veth-a\"\n\
- Some(AsInt(1500)) 1000..2000 direction=\"ingress\",transport=\"udp\",iface=\"veth-a\"\n\
beyla.network.flow.packets [{packet}] sum temporality=2 monotonic=true \"Packets of the network flows seen on this host's interfaces\"\n\
- Some(AsInt(75)) 1000..2000 direction=\"egress\",transport=\"udp\",iface=\"veth-a\"\n\
- Some(AsInt(25)) 1000..2000 direction=\"ingress\",transport=\"udp\",iface=\"veth-a\"\n";
}
