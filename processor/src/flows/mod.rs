//! Network flow metrics (`network.enable`): the loader's per-flow deltas
//! (`LoaderMessage::FlowCounts`) become `beyla_network_flow_bytes_total` and
//! `beyla_network_flow_packets_total` in the Prometheus registry and the OTLP sums
//! `beyla.network.flow.bytes` / `beyla.network.flow.packets` under one host resource.
//!
//! Each flow is named with the attributes `select` keeps (the reference system's defaults:
//! `direction`, plus `src.cidr`/`dst.cidr` with `network.cidrs`, plus `k8s.cluster.name` with
//! Kubernetes metadata), and its deltas are added to the series of that attribute subset: a
//! thousand client ports under the defaults are one series per direction.
//!
//! Naming, kept simple: `src.name`/`dst.name` is this host's name for the end on this host's
//! side of the interface (the destination of an ingress packet, the source of an egress one)
//! and the address text for the other end. `direction` is `ingress` or `egress`; `transport`
//! is the IANA keyword in lower case (`tcp`, `udp`, `icmp`, `ipv6-icmp`, …, or the number).

pub mod select;

use std::net::{IpAddr, Ipv6Addr};

use opentelemetry::KeyValue;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sonde_schema::control::{FlowCount, FlowDirection};

use crate::{config::Config, metrics::Metrics, otlp::Otlp};

/// The label set of one flow series (Prometheus names: dots become underscores).
pub type FlowLabels = Vec<(String, String)>;

/// The two Prometheus counter families (no series until flows arrive).
#[derive(Debug, Clone, Default)]
pub struct FlowFamilies {
    pub bytes: Family<FlowLabels, Counter>,
    pub packets: Family<FlowLabels, Counter>,
}

impl FlowFamilies {
    pub fn register(registry: &mut Registry) -> FlowFamilies {
        let f = FlowFamilies::default();
        registry.register(
            "beyla_network_flow_bytes",
            "Bytes of the network flows seen on this host's interfaces, IP headers included (beyla.network.flow.bytes)",
            f.bytes.clone(),
        );
        registry.register(
            "beyla_network_flow_packets",
            "Packets of the network flows seen on this host's interfaces (beyla.network.flow.packets)",
            f.packets.clone(),
        );
        f
    }
}

/// One flow's attribute values, computed once per flow for both metrics.
struct Values<'a> {
    flow: &'a FlowCount,
    host: &'a str,
    config: &'a Config,
}

impl Values<'_> {
    fn get(&self, attribute: &str) -> String {
        let f = self.flow;
        let ingress = f.direction == FlowDirection::Ingress;
        match attribute {
            "direction" => if ingress { "ingress" } else { "egress" }.to_string(),
            "src.address" => address(f.src).to_string(),
            "dst.address" => address(f.dst).to_string(),
            "src.port" => f.src_port.to_string(),
            "dst.port" => f.dst_port.to_string(),
            "transport" => transport_name(f.transport),
            "iface" => f.iface.clone(),
            // The end on this host's side of the interface is this host.
            "src.name" if !ingress => self.host.to_string(),
            "dst.name" if ingress => self.host.to_string(),
            "src.name" => address(f.src).to_string(),
            "dst.name" => address(f.dst).to_string(),
            "src.cidr" => self.cidr(f.src),
            "dst.cidr" => self.cidr(f.dst),
            "k8s.cluster.name" => self
                .config
                .kubernetes
                .cluster_name
                .clone()
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn cidr(&self, a: Ipv6Addr) -> String {
        self.config
            .shared
            .network
            .cidr_of(address(a))
            .unwrap_or_default()
            .to_string()
    }
}

/// IPv4-mapped addresses as IPv4.
pub fn address(a: Ipv6Addr) -> IpAddr {
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}

/// The IANA keyword of a protocol number, in lower case.
pub fn transport_name(n: u8) -> String {
    match n {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// The attribute subsets of the two metrics, from the configuration.
pub struct Selected {
    pub bytes: Vec<&'static str>,
    pub packets: Vec<&'static str>,
}

impl Selected {
    pub fn new(config: &Config, kubernetes: bool) -> Selected {
        let cidrs = !config.shared.network.cidrs.is_empty();
        let (b, p) = config.flow_select.effective();
        Selected {
            bytes: select::resolve(b, cidrs, kubernetes),
            packets: select::resolve(p, cidrs, kubernetes),
        }
    }
}

/// Adds the loader's flow deltas to the metrics: Prometheus when its endpoint is on, OTLP
/// when metrics are exported.
pub fn apply(
    flows: &[FlowCount],
    config: &Config,
    metrics: &Metrics,
    kubernetes: bool,
    mut otlp: Option<&mut Otlp>,
) {
    let selected = Selected::new(config, kubernetes);
    let prometheus = config.prometheus_export.port.is_some();
    for flow in flows {
        let values = Values {
            flow,
            host: metrics.host_name(),
            config,
        };
        let bytes_attrs: Vec<(&'static str, String)> =
            selected.bytes.iter().map(|a| (*a, values.get(a))).collect();
        let packets_attrs: Vec<(&'static str, String)> = selected
            .packets
            .iter()
            .map(|a| (*a, values.get(a)))
            .collect();
        if prometheus {
            metrics
                .flows
                .bytes
                .get_or_create(&prometheus_labels(&bytes_attrs))
                .inc_by(flow.bytes);
            metrics
                .flows
                .packets
                .get_or_create(&prometheus_labels(&packets_attrs))
                .inc_by(flow.packets);
        }
        if let Some(o) = otlp.as_deref_mut() {
            o.record_flow(
                &otlp_attributes(&bytes_attrs),
                flow.bytes,
                &otlp_attributes(&packets_attrs),
                flow.packets,
            );
        }
    }
}

fn prometheus_labels(attrs: &[(&'static str, String)]) -> FlowLabels {
    attrs
        .iter()
        .map(|(k, v)| (k.replace('.', "_"), v.clone()))
        .collect()
}

fn otlp_attributes(attrs: &[(&'static str, String)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16, direction: FlowDirection, bytes: u64) -> FlowCount {
        FlowCount {
            src: "10.200.0.1"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped(),
            dst: "10.200.0.2"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped(),
            src_port: sport,
            dst_port: 5201,
            transport: 6,
            direction,
            ifindex: 4,
            iface: "veth-a".into(),
            bytes,
            packets: 1,
        }
    }

    fn config(yaml: &str) -> Config {
        let file = sonde_config::FileText {
            path: "t.yaml".into(),
            text: format!("prometheus_export:\n  port: 9999\n{yaml}"),
        };
        Config::from_sources(Some(&file), &Default::default()).expect("config")
    }

    fn text(m: &Metrics) -> String {
        m.encode()
    }

    #[test]
    fn defaults_aggregate_client_ports_into_one_series_per_direction() {
        let c = config("");
        let m = Metrics::new("host-a");
        let flows: Vec<FlowCount> = (0..1000)
            .flat_map(|p| {
                [
                    flow(30000 + p, FlowDirection::Egress, 100),
                    flow(30000 + p, FlowDirection::Ingress, 60),
                ]
            })
            .collect();
        apply(&flows, &c, &m, false, None);
        let t = text(&m);
        assert!(
            t.contains("beyla_network_flow_bytes_total{direction=\"egress\"} 100000"),
            "{t}"
        );
        assert!(t.contains("beyla_network_flow_bytes_total{direction=\"ingress\"} 60000"));
        assert!(t.contains("beyla_network_flow_packets_total{direction=\"ingress\"} 1000"));
        assert_eq!(t.matches("beyla_network_flow_bytes_total{").count(), 2);
    }

    #[test]
    fn selection_and_cidrs_name_the_series() {
        let c = config(
            "network:\n  cidrs: [10.200.0.0/30, 10.0.0.0/8]\nattributes:\n  select:\n    beyla.network.flow.bytes:\n      include: [src_address, dst.port, transport, src.name, dst.name, '*cidr']\n      exclude: [dst_cidr]\n",
        );
        let m = Metrics::new("host-a");
        apply(
            &[flow(40000, FlowDirection::Egress, 500)],
            &c,
            &m,
            false,
            None,
        );
        let t = text(&m);
        assert!(
            t.contains("beyla_network_flow_bytes_total{src_address=\"10.200.0.1\",dst_port=\"5201\",transport=\"tcp\",src_name=\"host-a\",dst_name=\"10.200.0.2\",src_cidr=\"10.200.0.0/30\"} 500"),
            "{t}"
        );
        // The packets metric follows the bytes selection when it has none of its own.
        assert!(t.contains("beyla_network_flow_packets_total{src_address=\"10.200.0.1\""));
    }

    #[test]
    fn transport_names() {
        assert_eq!(transport_name(17), "udp");
        assert_eq!(transport_name(58), "ipv6-icmp");
        assert_eq!(transport_name(200), "200");
    }
}
