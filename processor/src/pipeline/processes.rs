//! The process table: the instrumented processes the loader announced, kept by pid, and the
//! ones it removed, kept for a grace period because their last events may still be queued in
//! the ring buffer. Spans read their service name here, and OTLP resources are built from it
//! ([`ProcessTable::meta`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use sonde_config::naming::{EnvNames, K8sNames, NameInputs, ServiceNames};
use sonde_schema::control::ProcessRecord;

use crate::{config::Config, kube::K8sMeta, otlp::ProcessResource, stats::Stats};

/// How long metadata of an exited process is kept: its last events may still be queued.
pub const REMOVED_GRACE: Duration = Duration::from_secs(10);

/// Processes the loader announced, and those it removed less than [`REMOVED_GRACE`] ago.
#[derive(Debug, Default)]
pub struct ProcessTable {
    live: PidMap<ProcessRecord>,
    removed: Vec<(u32, Instant)>,
    /// The service of each live process, resolved once when announced (`naming`'s ladder)
    /// and again when its Kubernetes metadata arrives or changes.
    services: PidMap<ServiceNames>,
    /// The Kubernetes metadata of processes whose pod is known (`crate::kube`).
    k8s: PidMap<Arc<K8sMeta>>,
}

/// Looked up once per span: a seeded foldhash, not SipHash (pids are the loader's, not
/// chosen by traffic).
type PidMap<V> = HashMap<u32, V, foldhash::fast::RandomState>;

/// The inputs of the service-name ladder a record carries (the Kubernetes rungs are `None`
/// here; `k8s` fills them when the pod's metadata is known).
pub fn name_inputs(p: &ProcessRecord, k8s: K8sNames) -> NameInputs {
    let given = |s: &String| (!s.trim().is_empty()).then(|| s.clone());
    NameInputs {
        selector_name: given(&p.selector_service_name),
        selector_namespace: given(&p.selector_service_namespace),
        env: EnvNames {
            service_name: given(&p.env_service_name),
            service_namespace: given(&p.env_service_namespace),
        },
        k8s,
        exe_name: p.service_name.clone(),
    }
}

impl ProcessTable {
    /// The loader announced `p` (again, if it had been removed: it is live once more).
    pub fn add(&mut self, p: ProcessRecord) {
        self.removed.retain(|(pid, _)| *pid != p.pid);
        // A new announcement: the pipeline looks its container up again.
        self.k8s.remove(&p.pid);
        self.services
            .insert(p.pid, name_inputs(&p, K8sNames::default()).resolve());
        self.live.insert(p.pid, p);
    }

    /// The service (name, namespace) of a process the loader announced.
    pub fn service(&self, pid: u32) -> Option<&ServiceNames> {
        self.services.get(&pid)
    }

    /// Sets (or clears) the Kubernetes metadata of `pid` and names it again with the ladder's
    /// Kubernetes rungs. True when something changed (its resource and series must then be
    /// rebuilt).
    pub fn set_k8s(&mut self, pid: u32, meta: Option<Arc<K8sMeta>>) -> bool {
        if self.k8s.get(&pid) == meta.as_ref() {
            return false;
        }
        let Some(p) = self.live.get(&pid) else {
            return false;
        };
        let names = meta.as_ref().map(|m| m.names()).unwrap_or_default();
        self.services.insert(pid, name_inputs(p, names).resolve());
        match meta {
            Some(m) => self.k8s.insert(pid, m),
            None => self.k8s.remove(&pid),
        };
        true
    }

    /// The Kubernetes metadata of `pid`, when its pod is known.
    pub fn k8s(&self, pid: u32) -> Option<&Arc<K8sMeta>> {
        self.k8s.get(&pid)
    }

    /// Live processes in a container: (pid, container id).
    pub fn in_containers(&self) -> impl Iterator<Item = (u32, &str)> {
        self.live
            .values()
            .filter(|p| !p.container_id.is_empty())
            .map(|p| (p.pid, p.container_id.as_str()))
    }

    /// The container id of `pid` (empty when none or unknown).
    pub fn container_id(&self, pid: u32) -> &str {
        self.live.get(&pid).map_or("", |p| p.container_id.as_str())
    }

    /// The loader removed `pid` at `at`; it stays known for the grace period.
    pub fn remove(&mut self, pid: u32, at: Instant) {
        self.removed.push((pid, at));
    }

    /// Processes announced and not removed.
    pub fn instrumented(&self) -> usize {
        self.live.len().saturating_sub(self.removed.len())
    }

    /// The service name of `pid`: the loader's, or for a process it never announced (counted
    /// in `stats.unknown_process`) its command name from `/proc`, or `pid-N`.
    pub fn service_name(&self, pid: u32, stats: &mut Stats) -> Cow<'_, str> {
        if let Some(s) = self.services.get(&pid) {
            return Cow::Borrowed(&s.name);
        }
        stats.unknown_process += 1;
        Cow::Owned(
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| format!("pid-{pid}")),
        )
    }

    /// Forgets processes removed at least the grace period before `now`; returns their pids.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let live = &mut self.live;
        let services = &mut self.services;
        let k8s = &mut self.k8s;
        let mut gone = Vec::new();
        self.removed.retain(|(pid, at)| {
            if now.duration_since(*at) >= REMOVED_GRACE {
                live.remove(pid);
                services.remove(pid);
                k8s.remove(pid);
                gone.push(*pid);
                false
            } else {
                true
            }
        });
        gone
    }

    /// What the OTLP resource of `pid` is built from: the service the ladder gave the
    /// announced process (`naming`), else `fallback_name` (the span's).
    pub fn meta(&self, pid: u32, _config: &Config, fallback_name: &str) -> ProcessResource {
        let info = self.live.get(&pid);
        let service = self.services.get(&pid);
        ProcessResource {
            pid,
            service_name: service
                .map(|s| s.name.clone())
                .unwrap_or_else(|| fallback_name.to_string()),
            service_namespace: service.and_then(|s| s.namespace.clone()),
            exe_path: info.map(|p| p.exe_path.clone()).unwrap_or_default(),
            k8s: self.k8s.get(&pid).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, service: &str) -> ProcessRecord {
        ProcessRecord {
            pid,
            exe_path: format!("/usr/bin/{service}"),
            service_name: service.to_string(),
            ..ProcessRecord::default()
        }
    }

    #[test]
    fn removed_processes_are_kept_for_the_grace_period() {
        let mut table = ProcessTable::default();
        let mut stats = Stats::default();
        let t0 = Instant::now();
        table.add(record(1, "a"));
        table.add(record(2, "b"));
        table.remove(1, t0);
        assert_eq!(table.instrumented(), 1);
        assert!(table.expire(t0 + REMOVED_GRACE / 2).is_empty());
        assert_eq!(table.service_name(1, &mut stats), "a");
        assert_eq!(table.expire(t0 + REMOVED_GRACE), vec![1]);
        assert_eq!(table.instrumented(), 1);
        assert_eq!(stats.unknown_process, 0);
        // Gone: the name now comes from /proc (or pid-N), and is counted as unknown.
        let _ = table.service_name(1, &mut stats);
        assert_eq!(stats.unknown_process, 1);
    }

    #[test]
    fn a_process_added_again_is_live_again() {
        let mut table = ProcessTable::default();
        let t0 = Instant::now();
        table.add(record(1, "a"));
        table.remove(1, t0);
        table.add(record(1, "a2"));
        assert_eq!(table.instrumented(), 1);
        assert!(table.expire(t0 + REMOVED_GRACE).is_empty());
        assert_eq!(table.service_name(1, &mut Stats::default()), "a2");
    }

    #[test]
    fn the_name_ladder_names_spans_and_resources() {
        let mut table = ProcessTable::default();
        let config = Config::default();
        // The executable's name last.
        table.add(record(1, "python3"));
        let m = table.meta(1, &config, "span-name");
        assert_eq!(
            (
                m.service_name.as_str(),
                m.exe_path.as_str(),
                m.service_namespace
            ),
            ("python3", "/usr/bin/python3", None)
        );
        // The process's own OTEL_SERVICE_NAME / namespace over the executable.
        table.add(ProcessRecord {
            env_service_name: "from-env".into(),
            env_service_namespace: "env-ns".into(),
            ..record(2, "python3")
        });
        // The selector's name over both; its namespace missing: the environment's.
        table.add(ProcessRecord {
            env_service_name: "from-env".into(),
            env_service_namespace: "env-ns".into(),
            selector_service_name: "from-selector".into(),
            ..record(3, "python3")
        });
        let mut stats = Stats::default();
        assert_eq!(table.service_name(2, &mut stats), "from-env");
        assert_eq!(table.service_name(3, &mut stats), "from-selector");
        let m = table.meta(3, &config, "span-name");
        assert_eq!(
            (m.service_name.as_str(), m.service_namespace.as_deref()),
            ("from-selector", Some("env-ns"))
        );
        // A process never announced: the span's name.
        assert_eq!(
            table.meta(9, &config, "span-name").service_name,
            "span-name"
        );
        assert_eq!(stats.unknown_process, 0);
    }
}
