//! Network flow metrics (`network.enable`): the loader's per-flow deltas
//! (`LoaderMessage::FlowCounts`) are added once to the series of one aggregation
//! (`FlowStore`), which Prometheus encodes as `beyla_network_flow_bytes_total` and
//! `beyla_network_flow_packets_total` and OTLP as the sums `beyla.network.flow.bytes` /
//! `beyla.network.flow.packets` under one host resource (`otlp::flows`).
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
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};
use sonde_schema::control::{FlowCount, FlowDirection};
use tracing::warn;

use crate::{
    config::Config,
    kube::{PodEnd, Store},
    metrics::Metrics,
    otlp::Otlp,
};

/// The attributes of one flow series, in selection order (OTLP names; Prometheus's replace
/// dots with underscores).
pub type FlowKey = Vec<(&'static str, String)>;

/// The series of one metric and their counts, in key order.
pub type SeriesList = Vec<(FlowKey, SeriesCount)>;

/// How long a flow series lives without new counts (the reference system's
/// `prometheus_export.ttl` default): with addresses or ports selected every flow is a series,
/// and without expiry a port scan would grow the processor without bound.
pub const FLOW_SERIES_TTL: Duration = Duration::from_secs(300);

/// Flow series kept at most per metric; counts of a new series beyond it are not counted
/// (`FlowStore::overflowed`), and the first overflow is logged.
pub const MAX_FLOW_SERIES: usize = 16384;

/// One series' count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesCount {
    pub value: u64,
    /// When the series started (OTLP's start time of its cumulative points).
    pub start_unix_nano: u64,
    last_counted: Instant,
}

/// The one aggregation of flow metrics: every flow's deltas added once to the series of
/// their selected attributes, which both outputs encode (Prometheus: `FlowCollector` at each
/// scrape; OTLP: `otlp::flows` at each export interval, under the host's flow resource). The
/// reader thread is the only writer, once per batch of flows; readers lock to copy.
#[derive(Debug, Default)]
pub struct FlowStore {
    series: Mutex<FlowSeries>,
    overflowed: AtomicU64,
    warned: AtomicBool,
}

#[derive(Debug, Default)]
pub struct FlowSeries {
    pub bytes: HashMap<FlowKey, SeriesCount>,
    pub packets: HashMap<FlowKey, SeriesCount>,
}

impl FlowStore {
    fn lock(&self) -> MutexGuard<'_, FlowSeries> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every series and its count now.
    pub fn snapshot(&self) -> (SeriesList, SeriesList) {
        let s = self.lock();
        let copy = |m: &HashMap<FlowKey, SeriesCount>| {
            let mut v: Vec<(FlowKey, SeriesCount)> =
                m.iter().map(|(k, c)| (k.clone(), *c)).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        (copy(&s.bytes), copy(&s.packets))
    }

    /// Counts not kept because `MAX_FLOW_SERIES` series were.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Relaxed)
    }

    /// Removes the series that counted nothing for `ttl`; returns how many went.
    pub fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let mut s = self.lock();
        let before = s.bytes.len() + s.packets.len();
        let keep = |c: &mut SeriesCount| now.saturating_duration_since(c.last_counted) < ttl;
        s.bytes.retain(|_, c| keep(c));
        s.packets.retain(|_, c| keep(c));
        before - (s.bytes.len() + s.packets.len())
    }

    fn overflow(&self) {
        self.overflowed.fetch_add(1, Relaxed);
        if !self.warned.swap(true, Relaxed) {
            warn!(
                max = MAX_FLOW_SERIES,
                "network flow series limit reached: counts of new series are dropped (sonde_flow_series_overflow_total); select fewer flow attributes"
            );
        }
    }
}

/// Adds `n` to `key`'s series in `map`, made (from zero) if it is not there and there is room.
fn add(
    map: &mut HashMap<FlowKey, SeriesCount>,
    key: FlowKey,
    n: u64,
    now: Instant,
    unix: u64,
) -> bool {
    if let Some(c) = map.get_mut(&key) {
        c.value += n;
        c.last_counted = now;
        return true;
    }
    if map.len() >= MAX_FLOW_SERIES {
        return false;
    }
    map.insert(
        key,
        SeriesCount {
            value: n,
            start_unix_nano: unix,
            last_counted: now,
        },
    );
    true
}

/// The Prometheus side: the collector encoding the store at each scrape, as the two
/// `prometheus-client` counter families did before (same names, HELP and labels; a family
/// without series is left out, as the registry left an empty family out; HELP ends with the
/// period the registry appended).
#[derive(Debug, Clone, Default)]
pub struct FlowFamilies {
    store: Arc<FlowStore>,
}

const BYTES_NAME: &str = "beyla_network_flow_bytes";
const BYTES_HELP: &str = "Bytes of the network flows seen on this host's interfaces, IP headers included (beyla.network.flow.bytes).";
const PACKETS_NAME: &str = "beyla_network_flow_packets";
const PACKETS_HELP: &str =
    "Packets of the network flows seen on this host's interfaces (beyla.network.flow.packets).";

impl FlowFamilies {
    pub fn register(registry: &mut Registry) -> FlowFamilies {
        let f = FlowFamilies::default();
        registry.register_collector(Box::new(FlowCollector {
            store: Arc::clone(&f.store),
        }));
        f
    }

    /// The one aggregation both outputs encode; `apply` is its writer.
    pub fn store(&self) -> Arc<FlowStore> {
        Arc::clone(&self.store)
    }

    /// Removes the series that counted nothing for `ttl`; returns how many went.
    pub fn expire(&self, now: Instant, ttl: Duration) -> usize {
        self.store.expire(now, ttl)
    }
}

#[derive(Debug)]
struct FlowCollector {
    store: Arc<FlowStore>,
}

/// Prometheus label names: dots become underscores.
fn prometheus_labels(key: &FlowKey) -> Vec<(String, &str)> {
    key.iter()
        .map(|(k, v)| (k.replace('.', "_"), v.as_str()))
        .collect()
}

impl Collector for FlowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (bytes, packets) = self.store.snapshot();
        for (name, help, series) in [
            (BYTES_NAME, BYTES_HELP, &bytes),
            (PACKETS_NAME, PACKETS_HELP, &packets),
        ] {
            if series.is_empty() {
                continue;
            }
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, c) in series {
                ConstCounter::new(c.value).encode(e.encode_family(&prometheus_labels(key))?)?;
            }
        }
        let overflowed = self.store.overflowed();
        if overflowed > 0 {
            let c = ConstCounter::new(overflowed);
            let e = encoder.encode_descriptor(
                "sonde_flow_series_overflow",
                "Network flow counts not kept because the most flow series Sonde keeps per metric were reached.",
                None,
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        Ok(())
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

/// Adds the loader's flow deltas to the one aggregation (when Prometheus or OTLP metrics are
/// on) and hands it to OTLP (`otlp`, present when metrics are exported) with the first
/// counts. `kube`: the Kubernetes store, when its metadata is on.
pub fn apply(
    flows: &[FlowCount],
    config: &Config,
    metrics: &Metrics,
    kube: Option<&Store>,
    otlp: Option<&mut Otlp>,
) {
    if config.prometheus_export.port.is_none() && otlp.is_none() {
        return;
    }
    let selected = Selected::new(config, kube.is_some());
    let mut pods = PodEnds {
        store: kube.filter(|_| selected.pod_ends()),
        seen: HashMap::new(),
    };
    let now = Instant::now();
    let unix = unix_nanos();
    let store = &metrics.flows.store;
    store.expire(now, FLOW_SERIES_TTL);
    // One selection for both metrics (the packets metric follows the bytes selection unless
    // it has its own): one key, built once.
    let same = selected.bytes == selected.packets;
    let mut series = store.lock();
    let FlowSeries {
        bytes: bytes_series,
        packets: packets_series,
    } = &mut *series;
    let mut overflowed = 0;
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
        let key = |names: &[&'static str]| -> FlowKey {
            names.iter().map(|a| (*a, values.get(a))).collect()
        };
        let bytes_key = key(&selected.bytes);
        let packets_key = if same {
            bytes_key.clone()
        } else {
            key(&selected.packets)
        };
        for (map, k, n) in [
            (&mut *bytes_series, bytes_key, flow.bytes),
            (&mut *packets_series, packets_key, flow.packets),
        ] {
            if !add(map, k, n, now, unix) {
                overflowed += 1;
            }
        }
    }
    drop(series);
    for _ in 0..overflowed {
        store.overflow();
    }
    if let Some(o) = otlp {
        o.export_flows(&metrics.flows.store);
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
        let mut registry = Registry::default();
        let f = FlowFamilies::register(&mut registry);
        let t0 = Instant::now();
        let key = |port: &str| vec![("src.port", port.to_string())];
        let count = |bytes: bool, port: &str, n: u64, at: Instant| {
            let mut s = f.store.lock();
            let map = if bytes { &mut s.bytes } else { &mut s.packets };
            assert!(add(map, key(port), n, at, 0));
        };
        count(true, "1", 10, t0);
        count(false, "1", 1, t0);
        count(true, "2", 20, t0 + Duration::from_secs(200));
        // Nothing is old enough yet.
        assert_eq!(f.expire(t0 + Duration::from_secs(299), FLOW_SERIES_TTL), 0);
        // Port 1's series (both metrics) go; port 2's stays with its count.
        assert_eq!(f.expire(t0 + Duration::from_secs(300), FLOW_SERIES_TTL), 2);
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let text = encode();
        assert!(!text.contains("src_port=\"1\""), "{text}");
        assert!(
            text.contains("beyla_network_flow_bytes_total{src_port=\"2\"} 20"),
            "{text}"
        );
        assert!(!text.contains("beyla_network_flow_packets"), "{text}");
        // Counting again brings a series back, from zero.
        count(true, "1", 5, t0 + Duration::from_secs(301));
        assert!(
            encode().contains("beyla_network_flow_bytes_total{src_port=\"1\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn series_beyond_the_limit_are_counted_as_overflow() {
        let c = config(
            "attributes:\n  select:\n    beyla_network_flow_bytes:\n      include: [src.port]\n",
        );
        let m = Metrics::new("host-a");
        let flows: Vec<FlowCount> = (0..=MAX_FLOW_SERIES as u16)
            .map(|p| flow(p, FlowDirection::Egress, 100))
            .collect();
        apply(&flows, &c, &m, None, None);
        let t = text(&m);
        assert_eq!(
            t.matches("beyla_network_flow_bytes_total{").count(),
            MAX_FLOW_SERIES
        );
        // The last flow of each metric found no room.
        assert!(
            t.contains("sonde_flow_series_overflow_total 2"),
            "{}",
            &t[t.len() - 400..]
        );
        // A series already kept still counts.
        apply(&flows[..1], &c, &m, None, None);
        assert!(text(&m).contains("beyla_network_flow_bytes_total{src_port=\"0\"} 200"));
    }

    #[test]
    fn transport_names() {
        assert_eq!(transport_name(17), "udp");
        assert_eq!(transport_name(58), "ipv6-icmp");
        assert_eq!(transport_name(200), "200");
    }
}
