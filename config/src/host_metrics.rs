//! Settings of the two metric families that need no application protocol: network flow
//! metrics (`network.*`) and process metrics (`processes.*`, the `application_process`
//! feature of `metrics.features`). Both binaries read them: the loader decides from them which
//! kernel programs to attach and what to read from `/proc`; the processor names, groups and
//! exports. Off by default, as in the reference system.

use std::{net::IpAddr, time::Duration};

use crate::{
    error::invalid,
    setting::{Setting, show, var},
    shared::Config,
    values::{format_duration, parse_bool, parse_duration, parse_in_range},
};

/// `network.*`: flow metrics (`beyla_network_flow_bytes_total`, `…_packets_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// `network.enable`, or the `network` feature in `metrics.features`.
    pub enable: bool,
    /// Flows the kernel tracks at once (an LRU map: the least recently active flow's counts
    /// beyond that are reported early, never lost silently).
    pub cache_max_flows: u32,
    /// How often the loader reads the kernel's flow counts and forwards them.
    pub cache_active_timeout: Duration,
    /// Interfaces counted (exact names or globs with `*`); empty: every interface.
    pub interfaces: Vec<String>,
    /// Interfaces never counted (default `lo`, as in the reference system).
    pub exclude_interfaces: Vec<String>,
    /// Address ranges that name the ends of a flow (`src.cidr` / `dst.cidr`): the most
    /// specific containing range wins.
    pub cidrs: Vec<Cidr>,
}

/// `processes.*`: process metrics of the instrumented processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMetricsSettings {
    /// The `application_process` feature of `metrics.features`.
    pub enable: bool,
    /// How often the loader reads each instrumented process's `/proc` counters.
    pub interval: Duration,
}

/// The feature names `metrics.features` accepts: the reference system's list. Sonde
/// implements `application`, `application_process` and `network` (and `all`); the others are
/// accepted with a warning.
pub const FEATURES: &[&str] = &[
    "application",
    "application_span",
    "application_span_otel",
    "application_span_sizes",
    "application_service_graph",
    "application_host",
    "application_process",
    "application_runtime",
    "network",
    "network_inter_zone",
    "network_flow_packets",
    "stats",
    "stats_tcp_rtt",
    "stats_tcp_failed_connections",
    "stats_tcp_retransmits",
    "stats_tcp_io",
    "ebpf",
    "all",
];

/// The features of `FEATURES` Sonde implements.
pub const IMPLEMENTED_FEATURES: &[&str] = &[
    "application",
    "application_process",
    "application_service_graph",
    "network",
    "all",
];

/// True when service graph metrics (`traces_service_graph_*`) are on: the
/// `application_service_graph` feature (or `all`) in `metrics.features`.
pub fn service_graph_enabled(c: &Config) -> bool {
    c.metrics_features
        .iter()
        .any(|f| f == "application_service_graph" || f == "all")
}

/// An IPv4 or IPv6 address range (`10.0.0.0/8`, `fd00::/8`), kept with the text the user
/// wrote: that text is the `src.cidr` / `dst.cidr` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub text: String,
    pub network: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn parse(key: &str, text: &str) -> Result<Cidr, crate::ConfigError> {
        const EXPECTED: &str = "an address range such as 10.0.0.0/8 or fd00::/8";
        let t = text.trim();
        let (addr, len) = t
            .split_once('/')
            .ok_or_else(|| invalid(key, text, EXPECTED))?;
        let network: IpAddr = addr.parse().map_err(|_| invalid(key, text, EXPECTED))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| invalid(key, text, EXPECTED))?;
        Ok(Cidr {
            text: t.to_string(),
            network,
            prefix_len,
        })
    }

    /// True when `addr` is inside the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl NetworkSettings {
    pub(crate) fn blank() -> NetworkSettings {
        NetworkSettings {
            enable: false,
            cache_max_flows: 0,
            cache_active_timeout: Duration::ZERO,
            interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            cidrs: Vec::new(),
        }
    }

    /// True when flows on `iface` are counted: listed (or no list) and not excluded.
    pub fn counts_interface(&self, iface: &str) -> bool {
        let listed = |list: &[String]| list.iter().any(|p| glob_match(p, iface));
        (self.interfaces.is_empty() || listed(&self.interfaces))
            && !listed(&self.exclude_interfaces)
    }

    /// The most specific configured range holding `addr` (its text), if any.
    pub fn cidr_of(&self, addr: IpAddr) -> Option<&str> {
        self.cidrs
            .iter()
            .filter(|c| c.contains(addr))
            .max_by_key(|c| c.prefix_len)
            .map(|c| c.text.as_str())
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// Applies `metrics.features`: a feature turns its family on (never off: `network.enable:
/// true` stays on whatever the list says).
fn apply_features(
    c: &mut Config,
    key: &str,
    features: &[String],
) -> Result<(), crate::ConfigError> {
    const EXPECTED: &str = "feature names: application, application_process, application_service_graph, network, all, … (the reference system's list)";
    for f in features {
        if !FEATURES.contains(&f.as_str()) {
            return Err(invalid(key, f, EXPECTED));
        }
    }
    let has = |name: &str| features.iter().any(|f| f == name || f == "all");
    c.processes.enable = has("application_process");
    c.network.enable |= has("network");
    c.metrics_features = features.to_vec();
    Ok(())
}

/// The settings of this module, in `--print-config` order (a group of `SHARED`).
pub(crate) static HOST_METRICS: &[Setting<Config>] = &[
    Setting {
        key: "metrics.features",
        env: &[var("BEYLA_METRICS_FEATURES")],
        flag: "",
        default: Some("application"),
        unset: "",
        doc: "metric families on: `application` (RED metrics), `application_process` (process metrics, see `processes.interval`), `application_service_graph` (service graph metrics, `traces_service_graph_*`), `network` (flow metrics, same as `network.enable: true`), `all`; the reference system's other names are accepted with a warning",
        secret: false,
        apply: |c, i| {
            let features = i.list("feature names")?;
            apply_features(c, i.key, &features)
        },
        show: |c| show::texts(&c.metrics_features),
    },
    Setting {
        key: "network.enable",
        env: &[var("BEYLA_NETWORK_METRICS")],
        flag: "",
        default: Some("false"),
        unset: "",
        doc: "network flow metrics (`beyla_network_flow_bytes_total`, `beyla_network_flow_packets_total`): the loader attaches raw tracepoints on `net:netif_receive_skb` and `net:net_dev_start_xmit` (no network capability; see security.md)",
        secret: false,
        apply: |c, i| {
            c.network.enable |= parse_bool(i.key, &i.text("a boolean")?)?;
            Ok(())
        },
        show: |c| show::flag(c.network.enable),
    },
    Setting {
        key: "network.cache_max_flows",
        env: &[var("BEYLA_NETWORK_CACHE_MAX_FLOWS")],
        flag: "",
        default: Some("5000"),
        unset: "",
        doc: "flows the kernel counts at once (LRU beyond that), 64 … 1048576",
        secret: false,
        apply: |c, i| {
            const EXPECTED: &str = "a number between 64 and 1048576";
            c.network.cache_max_flows =
                parse_in_range(i.key, &i.text(EXPECTED)?, 64..=1 << 20, EXPECTED)?;
            Ok(())
        },
        show: |c| show::number(c.network.cache_max_flows),
    },
    Setting {
        key: "network.cache_active_timeout",
        env: &[var("BEYLA_NETWORK_CACHE_ACTIVE_TIMEOUT")],
        flag: "",
        default: Some("5s"),
        unset: "",
        doc: "how often the loader reads the kernel's flow counts and forwards them (the flow metrics' resolution)",
        secret: false,
        apply: |c, i| {
            c.network.cache_active_timeout = parse_duration(i.key, &i.text("a duration")?)?;
            Ok(())
        },
        show: |c| show::text(format_duration(c.network.cache_active_timeout)),
    },
    Setting {
        key: "network.interfaces",
        env: &[var("BEYLA_NETWORK_INTERFACES")],
        flag: "",
        default: None,
        unset: "every interface",
        doc: "interfaces counted (names, `*` globs)",
        secret: false,
        apply: |c, i| {
            c.network.interfaces = i.list("interface names")?;
            Ok(())
        },
        show: |c| show::texts(&c.network.interfaces),
    },
    Setting {
        key: "network.exclude_interfaces",
        env: &[var("BEYLA_NETWORK_EXCLUDE_INTERFACES")],
        flag: "",
        default: Some("lo"),
        unset: "",
        doc: "interfaces never counted (names, `*` globs); `[]` counts loopback too",
        secret: false,
        apply: |c, i| {
            c.network.exclude_interfaces = i.list("interface names")?;
            Ok(())
        },
        show: |c| show::texts(&c.network.exclude_interfaces),
    },
    Setting {
        key: "network.cidrs",
        env: &[var("BEYLA_NETWORK_CIDRS")],
        flag: "",
        default: None,
        unset: "none",
        doc: "address ranges (`10.0.0.0/8`, `fd00::/8`) that group flow ends: `src.cidr` / `dst.cidr` is the most specific range holding the address",
        secret: false,
        apply: |c, i| {
            c.network.cidrs = i
                .list("address ranges")?
                .iter()
                .map(|t| Cidr::parse(i.key, t))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
        show: |c| {
            let texts: Vec<&str> = c.network.cidrs.iter().map(|c| c.text.as_str()).collect();
            show::texts(&texts)
        },
    },
    Setting {
        key: "processes.interval",
        env: &[var("BEYLA_PROCESSES_INTERVAL")],
        flag: "",
        default: Some("5s"),
        unset: "",
        doc: "how often the loader reads each instrumented process's CPU, memory and disk counters from `/proc` (process metrics: `application_process` in `metrics.features`)",
        secret: false,
        apply: |c, i| {
            c.processes.interval = parse_duration(i.key, &i.text("a duration")?)?;
            Ok(())
        },
        show: |c| show::text(format_duration(c.processes.interval)),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_and_the_most_specific_wins() {
        let n = NetworkSettings {
            cidrs: ["10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "0.0.0.0/0"]
                .iter()
                .map(|t| Cidr::parse("network.cidrs", t).unwrap())
                .collect(),
            ..NetworkSettings::blank()
        };
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert_eq!(n.cidr_of(ip("10.1.2.3")), Some("10.1.0.0/16"));
        assert_eq!(n.cidr_of(ip("10.2.2.3")), Some("10.0.0.0/8"));
        assert_eq!(n.cidr_of(ip("::ffff:10.2.2.3")), Some("10.0.0.0/8"));
        assert_eq!(n.cidr_of(ip("192.168.1.1")), Some("0.0.0.0/0"));
        assert_eq!(n.cidr_of(ip("fd12::1")), Some("fd00::/8"));
        assert_eq!(n.cidr_of(ip("2001:db8::1")), None);
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "fd00::/129"] {
            let e = Cidr::parse("network.cidrs", bad).unwrap_err().to_string();
            assert!(e.contains("network.cidrs"), "{e}");
        }
    }

    #[test]
    fn interfaces_listed_and_excluded_by_glob() {
        let mut n = NetworkSettings {
            exclude_interfaces: vec!["lo".into()],
            ..NetworkSettings::blank()
        };
        assert!(n.counts_interface("eth0"));
        assert!(!n.counts_interface("lo"));
        n.interfaces = vec!["veth*".into(), "eth0".into()];
        assert!(n.counts_interface("veth-sonde1"));
        assert!(n.counts_interface("eth0"));
        assert!(!n.counts_interface("eth1"));
        n.exclude_interfaces = vec!["veth*b".into()];
        assert!(!n.counts_interface("vethab"));
        assert!(n.counts_interface("vethba"));
    }
}
