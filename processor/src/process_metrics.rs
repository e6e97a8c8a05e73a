//! Process metrics of the instrumented processes (`metrics.features: [application_process]`):
//! the loader's cumulative readings (`LoaderMessage::ProcessUsage`, read from `/proc` and the
//! kernel's per-process socket byte map) become the reference system's metrics —
//! `process.cpu.time` (by `cpu.mode`), `process.cpu.utilization`, `process.memory.usage`,
//! `process.memory.virtual`, `process.disk.io` and `process.network.io` (by direction) —
//! in the Prometheus registry (`process_cpu_time_seconds_total`, …) and in each process's
//! OTLP meter provider. Series are removed when the process leaves; a reading lower than the
//! previous one (a pid reused between two readings) starts the counters again, never a
//! negative increase.
//!
//! `process.owner` is the numeric uid: the processor's sandbox does not read `/etc/passwd`,
//! and the loader forwards numbers only.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, PoisonError, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use sonde_schema::control::ProcessUsage;

use crate::{config::Config, kube::K8sLabels, metrics::Metrics, otlp::Otlp};

/// `cpu.mode` values.
pub const CPU_MODES: [&str; 2] = ["user", "system"];
/// `disk.io.direction` values.
pub const DISK_DIRECTIONS: [&str; 2] = ["read", "write"];
/// `network.io.direction` values.
pub const NETWORK_DIRECTIONS: [&str; 2] = ["receive", "transmit"];

/// The attributes of one process's series (beside the metric's own direction or mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub service_name: String,
    pub service_namespace: String,
    pub process_pid: u32,
    pub process_parent_pid: u32,
    /// The executable's name.
    pub process_command: String,
    /// The numeric uid (see the module documentation).
    pub process_owner: String,
    /// The process's Kubernetes metadata (`k8s_*`, `container_id`), when known.
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabels {
    cpu_mode: String,
    #[prometheus(flatten)]
    process: ProcessLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    disk_io_direction: String,
    #[prometheus(flatten)]
    process: ProcessLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network_io_direction: String,
    #[prometheus(flatten)]
    process: ProcessLabels,
}

/// What one reading gives, beside its cumulative values: the CPU utilization since the
/// previous reading of the same process (none for the first), and whether the counters went
/// back (pid reused between readings: the series start again).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// `(user, system)`: CPU time over wall time over the number of CPUs.
    pub utilization: Option<(f64, f64)>,
    pub reset: bool,
}

/// The previous reading of every process, for utilization and reset detection.
#[derive(Debug, Default)]
pub struct UsageHistory {
    last: HashMap<u32, ProcessUsage>,
}

impl UsageHistory {
    /// Takes reading `u` (the machine having `cpus` CPUs).
    pub fn observe(&mut self, u: &ProcessUsage, cpus: f64) -> Observation {
        let previous = self.last.insert(u.pid, u.clone());
        let Some(p) = previous else {
            return Observation {
                utilization: None,
                reset: false,
            };
        };
        let reset = u.cpu_user_ns < p.cpu_user_ns
            || u.cpu_system_ns < p.cpu_system_ns
            || u.disk_read_bytes < p.disk_read_bytes
            || u.disk_write_bytes < p.disk_write_bytes
            || u.net_receive_bytes < p.net_receive_bytes
            || u.net_transmit_bytes < p.net_transmit_bytes;
        let dt = u.sampled_at_ns.saturating_sub(p.sampled_at_ns);
        let utilization = (!reset && dt > 0 && cpus > 0.0).then(|| {
            let share = |now: u64, before: u64| (now - before) as f64 / dt as f64 / cpus;
            (
                share(u.cpu_user_ns, p.cpu_user_ns),
                share(u.cpu_system_ns, p.cpu_system_ns),
            )
        });
        Observation { utilization, reset }
    }

    pub fn forget(&mut self, pid: u32) {
        self.last.remove(&pid);
    }
}

/// The CPUs this processor may run on (`sched_getaffinity`): the machine's, unless the whole
/// agent is pinned. At least 1.
pub fn cpu_count() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

type F64Counter = Counter<f64, AtomicU64>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// The Prometheus families of process metrics and the state behind them.
pub struct ProcessMetrics {
    cpu_time: Family<CpuLabels, F64Counter>,
    cpu_utilization: Family<CpuLabels, F64Gauge>,
    memory_usage: Family<ProcessLabels, Gauge>,
    memory_virtual: Family<ProcessLabels, Gauge>,
    disk_io: Family<DiskLabels, Counter>,
    network_io: Family<NetworkLabels, Counter>,
    state: Mutex<State>,
    cpus: usize,
}

#[derive(Default)]
struct State {
    history: UsageHistory,
    /// The labels each process's series were created with.
    labels: HashMap<u32, ProcessLabels>,
}

/// Sets a cumulative counter to `total`: the increase since the last value, or, when the
/// total went back, a fresh series starting at `total`.
fn set_counter<L, V>(family: &Family<L, Counter<V, AtomicU64>>, labels: &L, total: V, reset: bool)
where
    L: Clone + Hash + Eq + std::fmt::Debug,
    V: Copy + PartialOrd + std::ops::Sub<Output = V> + Default,
    Counter<V, AtomicU64>: Default,
    AtomicU64: prometheus_client::metrics::counter::Atomic<V>,
{
    if reset {
        family.remove(labels);
    }
    let c = family.get_or_create(labels);
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl ProcessMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> ProcessMetrics {
        let m = ProcessMetrics {
            cpu_time: Family::default(),
            cpu_utilization: Family::default(),
            memory_usage: Family::default(),
            memory_virtual: Family::default(),
            disk_io: Family::default(),
            network_io: Family::default(),
            state: Mutex::default(),
            cpus: cpu_count(),
        };
        registry.register_with_unit(
            "process_cpu_time",
            "Total CPU seconds broken down by different states (process.cpu.time)",
            Unit::Seconds,
            m.cpu_time.clone(),
        );
        registry.register_with_unit(
            "process_cpu_utilization",
            "Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process (process.cpu.utilization)",
            Unit::Other("ratio".into()),
            m.cpu_utilization.clone(),
        );
        registry.register_with_unit(
            "process_memory_usage",
            "The amount of physical memory in use (process.memory.usage)",
            Unit::Bytes,
            m.memory_usage.clone(),
        );
        registry.register_with_unit(
            "process_memory_virtual",
            "The amount of committed virtual memory (process.memory.virtual)",
            Unit::Bytes,
            m.memory_virtual.clone(),
        );
        registry.register_with_unit(
            "process_disk_io",
            "Disk bytes transferred (process.disk.io)",
            Unit::Bytes,
            m.disk_io.clone(),
        );
        registry.register_with_unit(
            "process_network_io",
            "Network bytes transferred through the process's sockets since it was instrumented (process.network.io)",
            Unit::Bytes,
            m.network_io.clone(),
        );
        m
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a reading into the history (utilization, resets).
    pub fn observe(&self, u: &ProcessUsage) -> Observation {
        self.state().history.observe(u, self.cpus as f64)
    }

    /// Records reading `u` under `labels` in the Prometheus families.
    pub fn record(&self, u: &ProcessUsage, obs: &Observation, labels: ProcessLabels) {
        let mut state = self.state();
        // Labels changed (parent, Kubernetes metadata): the old series go.
        let reset = obs.reset || state.labels.get(&u.pid).is_some_and(|old| *old != labels);
        if reset {
            self.remove_series(&mut state, u.pid);
        }
        state.labels.insert(u.pid, labels.clone());
        drop(state);
        let cpu = |mode: &str| CpuLabels {
            cpu_mode: mode.to_string(),
            process: labels.clone(),
        };
        let seconds = |ns: u64| ns as f64 / 1e9;
        set_counter(&self.cpu_time, &cpu("user"), seconds(u.cpu_user_ns), false);
        set_counter(
            &self.cpu_time,
            &cpu("system"),
            seconds(u.cpu_system_ns),
            false,
        );
        if let Some((user, system)) = obs.utilization {
            self.cpu_utilization.get_or_create(&cpu("user")).set(user);
            self.cpu_utilization
                .get_or_create(&cpu("system"))
                .set(system);
        }
        self.memory_usage
            .get_or_create(&labels)
            .set(i64::try_from(u.memory_rss).unwrap_or(i64::MAX));
        self.memory_virtual
            .get_or_create(&labels)
            .set(i64::try_from(u.memory_virtual).unwrap_or(i64::MAX));
        for (direction, total) in [("read", u.disk_read_bytes), ("write", u.disk_write_bytes)] {
            let l = DiskLabels {
                disk_io_direction: direction.to_string(),
                process: labels.clone(),
            };
            set_counter(&self.disk_io, &l, total, false);
        }
        for (direction, total) in [
            ("receive", u.net_receive_bytes),
            ("transmit", u.net_transmit_bytes),
        ] {
            let l = NetworkLabels {
                network_io_direction: direction.to_string(),
                process: labels.clone(),
            };
            set_counter(&self.network_io, &l, total, false);
        }
    }

    fn remove_series(&self, state: &mut State, pid: u32) {
        let Some(labels) = state.labels.remove(&pid) else {
            return;
        };
        for mode in CPU_MODES {
            let l = CpuLabels {
                cpu_mode: mode.to_string(),
                process: labels.clone(),
            };
            self.cpu_time.remove(&l);
            self.cpu_utilization.remove(&l);
        }
        self.memory_usage.remove(&labels);
        self.memory_virtual.remove(&labels);
        for d in DISK_DIRECTIONS {
            self.disk_io.remove(&DiskLabels {
                disk_io_direction: d.to_string(),
                process: labels.clone(),
            });
        }
        for d in NETWORK_DIRECTIONS {
            self.network_io.remove(&NetworkLabels {
                network_io_direction: d.to_string(),
                process: labels.clone(),
            });
        }
    }

    /// The process left: its series go and its history is forgotten.
    pub fn remove(&self, pid: u32) {
        let mut state = self.state();
        self.remove_series(&mut state, pid);
        state.history.forget(pid);
    }
}

/// One reading as OTLP records it: values and the data point attributes of the process
/// (its resource carries `service.*`, `process.pid`, `host.name`, Kubernetes).
#[derive(Debug, Clone, PartialEq)]
pub struct UsagePoint {
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

/// The loader's readings into metrics: Prometheus when its endpoint is on, OTLP (`otlp`,
/// present when metrics are exported) through each process's meter provider. Readings of
/// processes the processor does not know (not announced, or gone) are ignored.
pub fn apply(
    usage: &[ProcessUsage],
    processes: &crate::pipeline::ProcessTable,
    config: &Config,
    metrics: &Metrics,
    mut otlp: Option<&mut Otlp>,
) {
    let prometheus = config.prometheus_export.port.is_some();
    for u in usage {
        let Some(service) = processes.service(u.pid) else {
            continue;
        };
        let obs = metrics.process.observe(u);
        let meta = processes.meta(u.pid, config, &service.name);
        let command = meta
            .exe_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let owner = u.uid.to_string();
        if prometheus {
            metrics.process.record(
                u,
                &obs,
                ProcessLabels {
                    service_name: service.name.clone(),
                    service_namespace: service.namespace.clone().unwrap_or_default(),
                    process_pid: u.pid,
                    process_parent_pid: u.parent_pid,
                    process_command: command.clone(),
                    process_owner: owner.clone(),
                    k8s: K8sLabels(processes.k8s(u.pid).cloned()),
                },
            );
        }
        if let Some(o) = otlp.as_deref_mut() {
            let point = UsagePoint {
                cpu_user_seconds: u.cpu_user_ns as f64 / 1e9,
                cpu_system_seconds: u.cpu_system_ns as f64 / 1e9,
                utilization: obs.utilization,
                memory_rss: u.memory_rss,
                memory_virtual: u.memory_virtual,
                disk_read_bytes: u.disk_read_bytes,
                disk_write_bytes: u.disk_write_bytes,
                net_receive_bytes: u.net_receive_bytes,
                net_transmit_bytes: u.net_transmit_bytes,
                parent_pid: u.parent_pid,
                command,
                owner,
            };
            o.record_usage(&|| meta.clone(), u.pid, point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pid: u32, at_s: u64, user_ms: u64, system_ms: u64) -> ProcessUsage {
        ProcessUsage {
            pid,
            parent_pid: 1,
            uid: 1000,
            cpu_user_ns: user_ms * 1_000_000,
            cpu_system_ns: system_ms * 1_000_000,
            memory_rss: 200 << 20,
            memory_virtual: 400 << 20,
            disk_read_bytes: 0,
            disk_write_bytes: 4096,
            net_receive_bytes: 10,
            net_transmit_bytes: 20,
            sampled_at_ns: at_s * 1_000_000_000,
        }
    }

    #[test]
    fn utilization_is_cpu_over_wall_over_cpus() {
        let mut h = UsageHistory::default();
        let first = h.observe(&reading(7, 10, 1000, 100), 2.0);
        assert_eq!(first.utilization, None);
        assert!(!first.reset);
        // 5 s later: 2.5 s user, 0.5 s system on 2 CPUs.
        let next = h.observe(&reading(7, 15, 3500, 600), 2.0);
        let (user, system) = next.utilization.expect("second reading");
        assert!((user - 0.25).abs() < 1e-9, "{user}");
        assert!((system - 0.05).abs() < 1e-9, "{system}");
        assert!(!next.reset);
        // The same instant again: no utilization, no division by zero.
        assert_eq!(h.observe(&reading(7, 15, 3500, 600), 2.0).utilization, None);
    }

    #[test]
    fn a_reading_that_goes_back_is_a_reset() {
        let mut h = UsageHistory::default();
        h.observe(&reading(7, 10, 5000, 100), 1.0);
        let back = h.observe(&reading(7, 15, 10, 0), 1.0);
        assert!(back.reset);
        assert_eq!(back.utilization, None);
        // After the reset, the new process's readings are compared with each other.
        let after = h.observe(&reading(7, 20, 510, 0), 1.0);
        assert!(!after.reset);
        assert!((after.utilization.expect("u").0 - 0.1).abs() < 1e-9);
        h.forget(7);
        assert_eq!(h.observe(&reading(7, 25, 600, 0), 1.0).utilization, None);
    }

    fn labels(pid: u32) -> ProcessLabels {
        ProcessLabels {
            service_name: "svc".into(),
            service_namespace: String::new(),
            process_pid: pid,
            process_parent_pid: 1,
            process_command: "python3".into(),
            process_owner: "1000".into(),
            k8s: K8sLabels::default(),
        }
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn counters_follow_readings_and_series_go_with_the_process() {
        let mut registry = Registry::default();
        let m = ProcessMetrics::register(&mut registry);
        let encode = |r: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).expect("encode");
            out
        };
        for (at, user) in [(10, 1000), (15, 2500)] {
            let u = reading(7, at, user, 100);
            let obs = m.observe(&u);
            m.record(&u, &obs, labels(7));
        }
        let text = encode(&registry);
        let user = "process_cpu_time_seconds_total{cpu_mode=\"user\",service_name=\"svc\",service_namespace=\"\",process_pid=\"7\",process_parent_pid=\"1\",process_command=\"python3\",process_owner=\"1000\"}";
        assert_eq!(sample(&text, user), Some(2.5), "{text}");
        assert!(
            text.contains("process_cpu_utilization_ratio{cpu_mode=\"user\""),
            "{text}"
        );
        assert_eq!(
            sample(&text, "process_memory_usage_bytes{service_name=\"svc\""),
            Some((200u64 << 20) as f64)
        );
        assert!(text.contains("process_memory_virtual_bytes{"), "{text}");
        assert_eq!(
            sample(
                &text,
                "process_disk_io_bytes_total{disk_io_direction=\"write\""
            ),
            Some(4096.0)
        );
        assert_eq!(
            sample(
                &text,
                "process_network_io_bytes_total{network_io_direction=\"transmit\""
            ),
            Some(20.0)
        );
        // A pid reused between readings: the counter starts again, it never decreases by a
        // negative increment.
        let u = reading(7, 20, 300, 0);
        let obs = m.observe(&u);
        assert!(obs.reset);
        m.record(&u, &obs, labels(7));
        assert_eq!(sample(&encode(&registry), user), Some(0.3));
        m.remove(7);
        let text = encode(&registry);
        assert!(!text.contains("process_pid=\"7\""), "{text}");
    }

    #[test]
    fn new_labels_replace_the_old_series() {
        let mut registry = Registry::default();
        let m = ProcessMetrics::register(&mut registry);
        let u = reading(9, 10, 1000, 0);
        let obs = m.observe(&u);
        m.record(&u, &obs, labels(9));
        // Its parent changed (re-parented to init): one set of series, the new one.
        let mut moved = labels(9);
        moved.process_parent_pid = 1234;
        let u = reading(9, 15, 1200, 0);
        let obs = m.observe(&u);
        m.record(&u, &obs, moved);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let memory: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("process_memory_usage_bytes{"))
            .collect();
        assert_eq!(memory.len(), 1, "{text}");
        assert!(memory[0].contains("process_parent_pid=\"1234\""), "{text}");
        assert_eq!(
            sample(&text, "process_cpu_time_seconds_total{cpu_mode=\"user\""),
            Some(1.2)
        );
    }

    #[test]
    fn cpus_are_counted() {
        assert!(cpu_count() >= 1);
    }
}
