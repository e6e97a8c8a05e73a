//! Process metrics of the instrumented processes (`metrics.features: [application_process]`):
//! the loader's cumulative readings (`LoaderMessage::ProcessUsage`, read from `/proc` and the
//! kernel's per-process socket byte map) become the reference system's metrics —
//! `process.cpu.time` (by `cpu.mode`), `process.cpu.utilization`, `process.memory.usage`,
//! `process.memory.virtual`, `process.disk.io` and `process.network.io` (by direction).
//!
//! One aggregation, two encoders: each reading is recorded once, into its process's
//! `UsageSeries`, and both outputs encode that state — the Prometheus exposition
//! (`ProcessCollector`: `process_cpu_time_seconds_total`, …) at each scrape, and OTLP
//! (`otlp::usage_metrics`, each process under its own resource) at each export interval.
//! Series are removed when the process leaves; a reading lower than the previous one (a pid
//! reused between two readings) starts a new series, never a negative increase.
//!
//! `process.owner` is the numeric uid: the processor's sandbox does not read `/etc/passwd`,
//! and the loader forwards numbers only.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
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

/// One process's series as both outputs report them: its labels, when they started, and its
/// latest reading. Made at a process's first reading, and again when its counters went back
/// (pid reused) or its labels changed; the reader thread is its only writer.
#[derive(Debug)]
pub struct UsageSeries {
    pub pid: u32,
    /// Its Prometheus labels (the OTLP attributes are read from them: `usage_attributes`).
    pub labels: ProcessLabels,
    /// When the series started (OTLP's start time of its cumulative points).
    pub start_unix_nano: u64,
    reading: Mutex<Reading>,
    /// False once the process left or the series was replaced: OTLP stops reporting it.
    live: AtomicBool,
}

/// A process's values at its latest reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// The latest utilization `(user, system)`; none before the second reading of a series.
    pub utilization: Option<(f64, f64)>,
    pub memory_rss: u64,
    pub memory_virtual: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_receive_bytes: u64,
    pub net_transmit_bytes: u64,
}

impl Reading {
    fn of(u: &ProcessUsage, utilization: Option<(f64, f64)>) -> Reading {
        Reading {
            cpu_user_seconds: u.cpu_user_ns as f64 / 1e9,
            cpu_system_seconds: u.cpu_system_ns as f64 / 1e9,
            utilization,
            memory_rss: u.memory_rss,
            memory_virtual: u.memory_virtual,
            disk_read_bytes: u.disk_read_bytes,
            disk_write_bytes: u.disk_write_bytes,
            net_receive_bytes: u.net_receive_bytes,
            net_transmit_bytes: u.net_transmit_bytes,
        }
    }
}

impl UsageSeries {
    /// A series of `pid` under `labels` (tests build one directly).
    pub fn new(pid: u32, labels: ProcessLabels, reading: Reading, start_unix_nano: u64) -> Self {
        UsageSeries {
            pid,
            labels,
            start_unix_nano,
            reading: Mutex::new(reading),
            live: AtomicBool::new(true),
        }
    }

    /// Its latest reading.
    pub fn reading(&self) -> Reading {
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// False once its process left or a new series replaced it.
    pub fn is_live(&self) -> bool {
        self.live.load(Relaxed)
    }

    pub(crate) fn end(&self) {
        self.live.store(false, Relaxed);
    }
}

/// Process metrics: the one aggregation (each process's `UsageSeries`) that the Prometheus
/// exposition (`ProcessCollector`) and OTLP (`otlp::usage_metrics`, each process under its
/// resource) both encode, and the reading history behind it.
pub struct ProcessMetrics {
    state: Arc<Mutex<State>>,
    cpus: usize,
}

#[derive(Default)]
struct State {
    history: UsageHistory,
    /// The current series of each process.
    series: HashMap<u32, Arc<UsageSeries>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain maps behind, still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Prometheus families, as the `prometheus-client` families registered before the
/// aggregation moved here (same names, HELP, units, types and labels; a family with no
/// series is left out, as the registry leaves out an empty family; HELP ends with the period
/// the registry appended).
struct Family {
    name: &'static str,
    help: &'static str,
    unit: fn() -> Unit,
    kind: MetricType,
}

impl Family {
    fn descriptor<'a>(
        &'a self,
        encoder: &'a mut DescriptorEncoder<'_>,
        unit: &'a Unit,
    ) -> Result<MetricEncoder<'a>, std::fmt::Error> {
        encoder.encode_descriptor(self.name, self.help, Some(unit), self.kind)
    }
}

const CPU_TIME: Family = Family {
    name: "process_cpu_time",
    help: "Total CPU seconds broken down by different states (process.cpu.time).",
    unit: || Unit::Seconds,
    kind: MetricType::Counter,
};
const CPU_UTILIZATION: Family = Family {
    name: "process_cpu_utilization",
    help: "Difference in process.cpu.time since the last measurement, divided by the elapsed time and number of CPUs available to the process (process.cpu.utilization).",
    unit: || Unit::Other("ratio".into()),
    kind: MetricType::Gauge,
};
const MEMORY_USAGE: Family = Family {
    name: "process_memory_usage",
    help: "The amount of physical memory in use (process.memory.usage).",
    unit: || Unit::Bytes,
    kind: MetricType::Gauge,
};
const MEMORY_VIRTUAL: Family = Family {
    name: "process_memory_virtual",
    help: "The amount of committed virtual memory (process.memory.virtual).",
    unit: || Unit::Bytes,
    kind: MetricType::Gauge,
};
const DISK_IO: Family = Family {
    name: "process_disk_io",
    help: "Disk bytes transferred (process.disk.io).",
    unit: || Unit::Bytes,
    kind: MetricType::Counter,
};
const NETWORK_IO: Family = Family {
    name: "process_network_io",
    help: "Network bytes transferred through the process's sockets since it was instrumented (process.network.io).",
    unit: || Unit::Bytes,
    kind: MetricType::Counter,
};

/// Encodes every process's series at each scrape.
#[derive(Debug)]
struct ProcessCollector {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("series", &self.series.len())
            .finish()
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut all: Vec<(Arc<UsageSeries>, Reading)> = lock(&self.state)
            .series
            .values()
            .map(|s| (Arc::clone(s), s.reading()))
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        all.sort_by_key(|(s, _)| s.pid);
        let unit = (CPU_TIME.unit)();
        let mut e = CPU_TIME.descriptor(&mut encoder, &unit)?;
        for (s, r) in &all {
            for (mode, v) in [
                ("user", r.cpu_user_seconds),
                ("system", r.cpu_system_seconds),
            ] {
                let l = CpuLabels {
                    cpu_mode: mode.into(),
                    process: s.labels.clone(),
                };
                ConstCounter::new(v).encode(e.encode_family(&l)?)?;
            }
        }
        if all.iter().any(|(_, r)| r.utilization.is_some()) {
            let unit = (CPU_UTILIZATION.unit)();
            let mut e = CPU_UTILIZATION.descriptor(&mut encoder, &unit)?;
            for (s, r) in &all {
                let Some((user, system)) = r.utilization else {
                    continue;
                };
                for (mode, v) in [("user", user), ("system", system)] {
                    let l = CpuLabels {
                        cpu_mode: mode.into(),
                        process: s.labels.clone(),
                    };
                    ConstGauge::new(v).encode(e.encode_family(&l)?)?;
                }
            }
        }
        for (f, value) in [
            (
                &MEMORY_USAGE,
                (|r: &Reading| r.memory_rss) as fn(&Reading) -> u64,
            ),
            (&MEMORY_VIRTUAL, |r: &Reading| r.memory_virtual),
        ] {
            let unit = (f.unit)();
            let mut e = f.descriptor(&mut encoder, &unit)?;
            for (s, r) in &all {
                ConstGauge::new(i64_of(value(r))).encode(e.encode_family(&s.labels)?)?;
            }
        }
        let unit = (DISK_IO.unit)();
        let mut e = DISK_IO.descriptor(&mut encoder, &unit)?;
        for (s, r) in &all {
            for (d, v) in [("read", r.disk_read_bytes), ("write", r.disk_write_bytes)] {
                let l = DiskLabels {
                    disk_io_direction: d.into(),
                    process: s.labels.clone(),
                };
                ConstCounter::new(v).encode(e.encode_family(&l)?)?;
            }
        }
        let unit = (NETWORK_IO.unit)();
        let mut e = NETWORK_IO.descriptor(&mut encoder, &unit)?;
        for (s, r) in &all {
            for (d, v) in [
                ("receive", r.net_receive_bytes),
                ("transmit", r.net_transmit_bytes),
            ] {
                let l = NetworkLabels {
                    network_io_direction: d.into(),
                    process: s.labels.clone(),
                };
                ConstCounter::new(v).encode(e.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

impl ProcessMetrics {
    /// Registers the collector in `registry`.
    pub fn register(registry: &mut Registry) -> ProcessMetrics {
        let m = ProcessMetrics {
            state: Arc::default(),
            cpus: cpu_count(),
        };
        registry.register_collector(Box::new(ProcessCollector {
            state: Arc::clone(&m.state),
        }));
        m
    }

    /// Takes a reading into the history (utilization, resets).
    pub fn observe(&self, u: &ProcessUsage) -> Observation {
        lock(&self.state).history.observe(u, self.cpus as f64)
    }

    /// Records reading `u` under `labels`; returns the process's series. A reading whose
    /// counters went back, or whose labels differ, starts a new series (the old one ends);
    /// otherwise the series keeps its start and, when this reading gives none, its last
    /// utilization.
    pub fn record(
        &self,
        u: &ProcessUsage,
        obs: &Observation,
        labels: ProcessLabels,
    ) -> Arc<UsageSeries> {
        let mut state = lock(&self.state);
        if let Some(s) = state.series.get(&u.pid)
            && !obs.reset
            && s.labels == labels
        {
            let mut r = s.reading.lock().unwrap_or_else(PoisonError::into_inner);
            let utilization = obs.utilization.or(r.utilization);
            *r = Reading::of(u, utilization);
            drop(r);
            return Arc::clone(s);
        }
        let s = Arc::new(UsageSeries::new(
            u.pid,
            labels,
            Reading::of(u, obs.utilization),
            unix_nanos(),
        ));
        if let Some(old) = state.series.insert(u.pid, Arc::clone(&s)) {
            old.end();
        }
        s
    }

    /// The process left: its series go and its history is forgotten.
    pub fn remove(&self, pid: u32) {
        let mut state = lock(&self.state);
        if let Some(s) = state.series.remove(&pid) {
            s.end();
        }
        state.history.forget(pid);
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The loader's readings into the one aggregation (when Prometheus or OTLP metrics are on),
/// and each process's series handed to its OTLP pipeline (`otlp`, present when metrics are
/// exported). Readings of processes the processor does not know (not announced, or gone)
/// are ignored.
pub fn apply(
    usage: &[ProcessUsage],
    processes: &crate::pipeline::ProcessTable,
    config: &Config,
    metrics: &Metrics,
    mut otlp: Option<&mut Otlp>,
) {
    if config.prometheus_export.port.is_none() && otlp.is_none() {
        return;
    }
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
        let series = metrics.process.record(
            u,
            &obs,
            ProcessLabels {
                service_name: service.name.clone(),
                service_namespace: service.namespace.clone().unwrap_or_default(),
                process_pid: u.pid,
                process_parent_pid: u.parent_pid,
                process_command: command,
                process_owner: u.uid.to_string(),
                k8s: K8sLabels(processes.k8s(u.pid).cloned()),
            },
        );
        if let Some(o) = otlp.as_deref_mut() {
            o.export_usage(&|| meta.clone(), u.pid, series);
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
