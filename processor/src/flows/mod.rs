//! Network flow metrics (`network.enable`): the loader's per-flow deltas
//! (`LoaderMessage::FlowCounts`) become `beyla_network_flow_bytes_total` and
//! `beyla_network_flow_packets_total` in the Prometheus registry and the OTLP sums
//! `beyla.network.flow.bytes` / `beyla.network.flow.packets` under one host resource.
//!
//! Each flow is named with the attributes `select` keeps (the reference system's defaults:
//! `direction`, plus `src.cidr`/`dst.cidr` with `network.cidrs`, plus, with Kubernetes
//! metadata, `k8s.{src,dst}.owner.name`, `k8s.{src,dst}.owner.type`, `k8s.{src,dst}.namespace`
//! and `k8s.cluster.name`), and its deltas are added to the series of that attribute subset:
//! a thousand client ports under the defaults are one series per direction (and pair of
//! owners).
//!
//! `k8s.src.*` / `k8s.dst.*`: an end whose address is a pod of this node (the store's
//! address index, [`crate::kube::Store::pod_by_ip`]) is named by the pod's namespace and top
//! owner (a bare pod by itself, type `Pod`); any other end (another node's pod, a
//! `hostNetwork` pod, a node, outside the cluster) has these attributes empty. Each distinct
//! address of a batch is looked up once.
//!
//! Naming, kept simple: `src.name`/`dst.name` is this host's name for the end on this host's
//! side of the interface (the destination of an ingress packet, the source of an egress one)
//! and the address text for the other end. `direction` is `ingress` or `egress`; `transport`
//! is the IANA keyword in lower case (`tcp`, `udp`, `icmp`, `ipv6-icmp`, …, or the number).

pub mod select;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use opentelemetry::KeyValue;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sonde_schema::control::{FlowCount, FlowDirection};

use crate::{
    config::Config,
    kube::{PodEnd, Store},
    metrics::Metrics,
    otlp::Otlp,
};

/// The label set of one flow series (Prometheus names: dots become underscores).
pub type FlowLabels = Vec<(String, String)>;

/// How long a Prometheus flow series lives without new counts (the reference system's
/// `prometheus_export.ttl` default): with addresses or ports selected every flow is a series,
/// and without expiry a port scan would grow the processor without bound.
pub const FLOW_SERIES_TTL: Duration = Duration::from_secs(300);

/// The two Prometheus counter families (no series until flows arrive), and when each series
/// last counted something.
#[derive(Debug, Clone, Default)]
pub struct FlowFamilies {
    pub bytes: Family<FlowLabels, Counter>,
    pub packets: Family<FlowLabels, Counter>,
    last_counted: Arc<Mutex<HashMap<FlowLabels, Instant>>>,
}

impl FlowFamilies {
    /// Adds to the series of `labels` in `family` and notes when.
    fn add(&self, bytes: bool, labels: FlowLabels, n: u64, now: Instant) {
        let family = if bytes { &self.bytes } else { &self.packets };
        family.get_or_create(&labels).inc_by(n);
        self.last_counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels, now);
    }

    /// Removes the series that counted nothing for `ttl`; returns how many went.
    pub fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let mut last = self
            .last_counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = last.len();
        last.retain(|labels, at| {
            let keep = now.saturating_duration_since(*at) < ttl;
            if !keep {
                self.bytes.remove(labels);
                self.packets.remove(labels);
            }
            keep
        });
        before - last.len()
    }

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
    /// The pods of this node the ends are (when a `k8s.src.*` / `k8s.dst.*` is selected).
    src_pod: Option<&'a PodEnd>,
    dst_pod: Option<&'a PodEnd>,
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
            "k8s.src.owner.name" => pod_value(self.src_pod, |p| &p.owner_name),
            "k8s.src.owner.type" => pod_value(self.src_pod, |p| &p.owner_type),
            "k8s.src.namespace" => pod_value(self.src_pod, |p| &p.namespace),
            "k8s.dst.owner.name" => pod_value(self.dst_pod, |p| &p.owner_name),
            "k8s.dst.owner.type" => pod_value(self.dst_pod, |p| &p.owner_type),
            "k8s.dst.namespace" => pod_value(self.dst_pod, |p| &p.namespace),
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

fn pod_value(pod: Option<&PodEnd>, field: impl Fn(&PodEnd) -> &String) -> String {
    pod.map(|p| field(p).clone()).unwrap_or_default()
}

/// The pods of this node behind a batch's addresses: each address is looked up in the
/// store once per batch.
struct PodEnds<'a> {
    store: Option<&'a Store>,
    seen: HashMap<Ipv6Addr, Option<PodEnd>>,
}

impl PodEnds<'_> {
    fn get(&mut self, a: Ipv6Addr) -> Option<&PodEnd> {
        let store = self.store?;
        self.seen
            .entry(a)
            .or_insert_with(|| store.pod_by_ip(address(a)))
            .as_ref()
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
    /// True when a selected attribute names an end by its pod.
    fn pod_ends(&self) -> bool {
        self.bytes
            .iter()
            .chain(&self.packets)
            .any(|a| select::K8S_ENDS.contains(a))
    }

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
/// when metrics are exported. `kube`: the Kubernetes store, when its metadata is on.
pub fn apply(
    flows: &[FlowCount],
    config: &Config,
    metrics: &Metrics,
    kube: Option<&Store>,
    mut otlp: Option<&mut Otlp>,
) {
    let selected = Selected::new(config, kube.is_some());
    let prometheus = config.prometheus_export.port.is_some();
    let mut pods = PodEnds {
        store: kube.filter(|_| selected.pod_ends()),
        seen: HashMap::new(),
    };
    let now = Instant::now();
    if prometheus {
        metrics.flows.expire(now, FLOW_SERIES_TTL);
    }
    for flow in flows {
        let src_pod = pods.get(flow.src).cloned();
        let dst_pod = pods.get(flow.dst).cloned();
        let values = Values {
            flow,
            host: metrics.host_name(),
            config,
            src_pod: src_pod.as_ref(),
            dst_pod: dst_pod.as_ref(),
        };
        let bytes_attrs: Vec<(&'static str, String)> =
            selected.bytes.iter().map(|a| (*a, values.get(a))).collect();
        let packets_attrs: Vec<(&'static str, String)> = selected
            .packets
            .iter()
            .map(|a| (*a, values.get(a)))
            .collect();
        if prometheus {
            let flows = &metrics.flows;
            flows.add(true, prometheus_labels(&bytes_attrs), flow.bytes, now);
            flows.add(false, prometheus_labels(&packets_attrs), flow.packets, now);
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
        apply(&flows, &c, &m, None, None);
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
            None,
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
    fn kubernetes_defaults_name_both_ends_by_their_pods_owners() {
        use crate::kube::meta::{Owner, OwnerKind, PodInfo};
        let c = config("");
        let m = Metrics::new("host-a");
        let store = Store::new(Some("c1".into()));
        store.apply_pod(PodInfo {
            uid: "u1".into(),
            name: "web-abc-x".into(),
            namespace: "shop".into(),
            owner: Some(Owner {
                kind: OwnerKind::DaemonSet,
                name: "web".into(),
            }),
            ips: vec!["10.200.0.1".parse().unwrap()],
            ..PodInfo::default()
        });
        store.apply_pod(PodInfo {
            uid: "u2".into(),
            name: "debug".into(),
            namespace: "tools".into(),
            ips: vec!["10.200.0.2".parse().unwrap()],
            ..PodInfo::default()
        });
        let mut outside = flow(1, FlowDirection::Egress, 7);
        outside.dst = "192.0.2.9"
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .to_ipv6_mapped();
        let flows: Vec<FlowCount> = (0..100)
            .map(|p| flow(30000 + p, FlowDirection::Egress, 10))
            .chain([outside])
            .collect();
        apply(&flows, &c, &m, Some(&store), None);
        let t = text(&m);
        assert!(
            t.contains("beyla_network_flow_bytes_total{direction=\"egress\",k8s_src_owner_name=\"web\",k8s_src_owner_type=\"DaemonSet\",k8s_src_namespace=\"shop\",k8s_dst_owner_name=\"debug\",k8s_dst_owner_type=\"Pod\",k8s_dst_namespace=\"tools\",k8s_cluster_name=\"\"} 1000"),
            "{t}"
        );
        // An end that is no pod of this node has empty k8s attributes.
        assert!(
            t.contains("beyla_network_flow_bytes_total{direction=\"egress\",k8s_src_owner_name=\"web\",k8s_src_owner_type=\"DaemonSet\",k8s_src_namespace=\"shop\",k8s_dst_owner_name=\"\",k8s_dst_owner_type=\"\",k8s_dst_namespace=\"\",k8s_cluster_name=\"\"} 7"),
            "{t}"
        );
        assert_eq!(t.matches("beyla_network_flow_bytes_total{").count(), 2);
    }

    #[test]
    fn series_that_counted_nothing_for_the_ttl_expire() {
        let f = FlowFamilies::default();
        let t0 = Instant::now();
        let labels = |port: &str| vec![("src_port".to_string(), port.to_string())];
        f.add(true, labels("1"), 10, t0);
        f.add(false, labels("1"), 1, t0);
        f.add(true, labels("2"), 20, t0 + Duration::from_secs(200));
        // Nothing is old enough yet.
        assert_eq!(f.expire(t0 + Duration::from_secs(299), FLOW_SERIES_TTL), 0);
        // Port 1's series (both families) go; port 2's stays with its count.
        assert_eq!(f.expire(t0 + Duration::from_secs(300), FLOW_SERIES_TTL), 1);
        let mut registry = Registry::default();
        registry.register("b", "b", f.bytes.clone());
        registry.register("p", "p", f.packets.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("src_port=\"1\""), "{text}");
        assert!(text.contains("b_total{src_port=\"2\"} 20"), "{text}");
        // Counting again brings a series back, from zero.
        f.add(true, labels("1"), 5, t0 + Duration::from_secs(301));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("b_total{src_port=\"1\"} 5"), "{text}");
    }

    #[test]
    fn transport_names() {
        assert_eq!(transport_name(17), "udp");
        assert_eq!(transport_name(58), "ipv6-icmp");
        assert_eq!(transport_name(200), "200");
    }
}
