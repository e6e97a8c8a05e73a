//! Network flow metrics, loader side: every `network.cache_active_timeout` the loader walks
//! the kernel's per-CPU flow map (`FLOWS`), sums each flow over the CPUs, and forwards what
//! grew since its previous walk as `LoaderMessage::FlowCounts` (plain numbers: the loader
//! parses no packet). Flows on interfaces `network.interfaces` / `exclude_interfaces` reject
//! are never forwarded; flows idle for `IDLE_WALKS` walks are deleted from the map so the LRU
//! keeps room for live ones.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use sonde_config::NetworkSettings;
use sonde_schema::{
    control::{FlowCount, FlowDirection, MAX_FLOWS_PER_MESSAGE},
    flows::{DIRECTION_INGRESS, FlowKey, FlowValue},
};
use tracing::warn;

/// Walks without traffic after which a flow's entry is deleted from the kernel map.
pub const IDLE_WALKS: u32 = 3;

/// `FlowKey` as aya reads it from the map.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub FlowKey);
// SAFETY: a #[repr(C)] struct of integers and byte arrays with explicit padding: every bit
// pattern is valid.
unsafe impl aya::Pod for Key {}

/// `FlowValue` as aya reads it from the map.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Value(pub FlowValue);
// SAFETY: as for `Key`.
unsafe impl aya::Pod for Value {}

/// What the loader last reported of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    bytes: u64,
    packets: u64,
    idle_walks: u32,
}

/// The reader of the kernel flow map.
pub struct FlowReader {
    map: PerCpuHashMap<MapData, Key, Value>,
    ledger: Ledger,
}

impl FlowReader {
    pub fn new(map: PerCpuHashMap<MapData, Key, Value>, settings: NetworkSettings) -> FlowReader {
        FlowReader {
            map,
            ledger: Ledger {
                settings,
                seen: HashMap::new(),
            },
        }
    }

    /// Reads the map and returns the flows' growth since the previous call, in messages of at
    /// most `MAX_FLOWS_PER_MESSAGE` flows. Idle flows are deleted from the map.
    pub fn collect(&mut self) -> Vec<Vec<FlowCount>> {
        let keys: Vec<Key> = self.map.keys().filter_map(Result::ok).collect();
        let mut totals = Vec::with_capacity(keys.len());
        for key in keys {
            // Gone meanwhile (LRU eviction): its growth since the last walk is lost.
            let Ok(values) = self.map.get(&key, 0) else {
                continue;
            };
            let mut total = Total {
                iface: [0; 16],
                bytes: 0,
                packets: 0,
            };
            for v in values.iter() {
                total.bytes = total.bytes.wrapping_add(v.0.bytes);
                total.packets = total.packets.wrapping_add(v.0.packets);
                if total.iface[0] == 0 {
                    total.iface = v.0.iface;
                }
            }
            totals.push((key.0, total));
        }
        let (counts, idle) = self.ledger.update(totals);
        for key in idle {
            // Traffic that raced with the delete (a packet between the walk and now) is lost:
            // the flow was idle for `IDLE_WALKS` walks.
            if let Err(e) = self.map.remove(&Key(key)) {
                warn!(error = %e, "deleting an idle flow from the kernel map failed");
            }
        }
        counts
            .chunks(MAX_FLOWS_PER_MESSAGE)
            .map(<[FlowCount]>::to_vec)
            .collect()
    }
}

/// A flow's counts summed over the CPUs.
#[derive(Debug, Clone, Copy)]
struct Total {
    iface: [u8; 16],
    bytes: u64,
    packets: u64,
}

/// The bookkeeping of `collect`, apart from the map so it can be tested without a kernel.
struct Ledger {
    settings: NetworkSettings,
    seen: HashMap<FlowKey, Seen>,
}

impl Ledger {
    /// Turns this walk's totals into deltas; returns them and the flows to delete.
    fn update(&mut self, totals: Vec<(FlowKey, Total)>) -> (Vec<FlowCount>, Vec<FlowKey>) {
        let mut counts = Vec::new();
        let mut idle = Vec::new();
        let mut next = HashMap::with_capacity(totals.len());
        for (key, total) in totals {
            let before = self.seen.get(&key).copied().unwrap_or_default();
            // Smaller than before: the entry was evicted and created again since.
            let (bytes, packets) = if total.packets < before.packets || total.bytes < before.bytes {
                (total.bytes, total.packets)
            } else {
                (total.bytes - before.bytes, total.packets - before.packets)
            };
            let mut seen = Seen {
                bytes: total.bytes,
                packets: total.packets,
                idle_walks: 0,
            };
            if packets == 0 {
                seen.idle_walks = before.idle_walks + 1;
                if seen.idle_walks >= IDLE_WALKS {
                    idle.push(key);
                    continue;
                }
            } else {
                let iface = iface_name(&total.iface);
                if self.settings.counts_interface(&iface) {
                    counts.push(flow_count(&key, iface, bytes, packets));
                }
            }
            next.insert(key, seen);
        }
        // Flows missing from this walk were evicted or deleted: forgotten.
        self.seen = next;
        (counts, idle)
    }
}

/// The NUL-padded kernel interface name as text.
fn iface_name(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn flow_count(key: &FlowKey, iface: String, bytes: u64, packets: u64) -> FlowCount {
    FlowCount {
        src: key.src.into(),
        dst: key.dst.into(),
        src_port: key.src_port,
        dst_port: key.dst_port,
        transport: key.transport,
        direction: if key.direction == DIRECTION_INGRESS {
            FlowDirection::Ingress
        } else {
            FlowDirection::Egress
        },
        ifindex: key.ifindex,
        iface,
        bytes,
        packets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_schema::flows::DIRECTION_EGRESS;

    fn settings() -> NetworkSettings {
        NetworkSettings {
            enable: true,
            cache_max_flows: 5000,
            cache_active_timeout: std::time::Duration::from_secs(5),
            interfaces: Vec::new(),
            exclude_interfaces: vec!["lo".into(), "docker*".into()],
            cidrs: Vec::new(),
        }
    }

    fn key(sport: u16, direction: u8) -> FlowKey {
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..].copy_from_slice(&[10, 200, 0, 1]);
        FlowKey {
            src,
            dst: [0; 16],
            dev: 0xffff_8880_0000_1000,
            ifindex: 7,
            src_port: sport,
            dst_port: 80,
            transport: 6,
            direction,
            _pad: [0; 6],
        }
    }

    fn total(iface: &str, bytes: u64, packets: u64) -> Total {
        let mut name = [0u8; 16];
        name[..iface.len()].copy_from_slice(iface.as_bytes());
        Total {
            iface: name,
            bytes,
            packets,
        }
    }

    #[test]
    fn reports_growth_then_deletes_idle_flows() {
        let mut l = Ledger {
            settings: settings(),
            seen: HashMap::new(),
        };
        let k = key(40000, DIRECTION_EGRESS);
        let (c, idle) = l.update(vec![(k, total("veth0", 1000, 10))]);
        assert_eq!((c.len(), idle.len()), (1, 0));
        assert_eq!((c[0].bytes, c[0].packets), (1000, 10));
        assert_eq!(
            c[0].src,
            "::ffff:10.200.0.1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            (c[0].iface.as_str(), c[0].direction),
            ("veth0", FlowDirection::Egress)
        );
        let (c, _) = l.update(vec![(k, total("veth0", 1500, 12))]);
        assert_eq!((c[0].bytes, c[0].packets), (500, 2));
        // Idle: nothing reported, deleted on the IDLE_WALKS-th idle walk.
        for walk in 1..=IDLE_WALKS {
            let (c, idle) = l.update(vec![(k, total("veth0", 1500, 12))]);
            assert!(c.is_empty());
            assert_eq!(idle.len(), usize::from(walk == IDLE_WALKS));
        }
        assert!(l.seen.is_empty());
    }

    #[test]
    fn recreated_entries_and_excluded_interfaces() {
        let mut l = Ledger {
            settings: settings(),
            seen: HashMap::new(),
        };
        let k = key(40000, DIRECTION_INGRESS);
        l.update(vec![(k, total("eth0", 5000, 5))]);
        // Evicted and recreated: smaller totals are the growth.
        let (c, _) = l.update(vec![(k, total("eth0", 300, 1))]);
        assert_eq!(
            (c[0].bytes, c[0].packets, c[0].direction),
            (300, 1, FlowDirection::Ingress)
        );
        let (c, _) = l.update(vec![
            (key(1, DIRECTION_INGRESS), total("lo", 10, 1)),
            (key(2, DIRECTION_INGRESS), total("docker0", 10, 1)),
        ]);
        assert!(c.is_empty(), "{c:?}");
        // The missing flow was forgotten.
        assert_eq!(l.seen.len(), 2);
    }
}
