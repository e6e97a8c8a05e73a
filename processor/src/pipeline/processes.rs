//! The process table: the instrumented processes the loader announced, kept by pid, and the
//! ones it removed, kept for a grace period because their last events may still be queued in
//! the ring buffer. Spans read their service name here, and OTLP resources are built from it
//! ([`ProcessTable::meta`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, Instant},
};

use sonde_schema::control::ProcessRecord;

use crate::{config::Config, otlp::ProcessResource, stats::Stats};

/// How long metadata of an exited process is kept: its last events may still be queued.
pub const REMOVED_GRACE: Duration = Duration::from_secs(10);

/// Processes the loader announced, and those it removed less than [`REMOVED_GRACE`] ago.
#[derive(Debug, Default)]
pub struct ProcessTable {
    live: HashMap<u32, ProcessRecord>,
    removed: Vec<(u32, Instant)>,
}

impl ProcessTable {
    /// The loader announced `p` (again, if it had been removed: it is live once more).
    pub fn add(&mut self, p: ProcessRecord) {
        self.removed.retain(|(pid, _)| *pid != p.pid);
        self.live.insert(p.pid, p);
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
        if let Some(p) = self.live.get(&pid) {
            return Cow::Borrowed(&p.service_name);
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
        let mut gone = Vec::new();
        self.removed.retain(|(pid, at)| {
            if now.duration_since(*at) >= REMOVED_GRACE {
                live.remove(pid);
                gone.push(*pid);
                false
            } else {
                true
            }
        });
        gone
    }

    /// What the OTLP resource of `pid` is built from: the configured service name first, then
    /// the loader's, then `fallback_name` (the span's).
    pub fn meta(&self, pid: u32, config: &Config, fallback_name: &str) -> ProcessResource {
        let info = self.live.get(&pid);
        ProcessResource {
            pid,
            service_name: config
                .shared
                .service_name
                .clone()
                .or_else(|| info.map(|p| p.service_name.clone()))
                .unwrap_or_else(|| fallback_name.to_string()),
            service_namespace: config.shared.service_namespace.clone(),
            exe_path: info.map(|p| p.exe_path.clone()).unwrap_or_default(),
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
    fn meta_prefers_the_configured_service_name() {
        let mut table = ProcessTable::default();
        table.add(record(1, "loader-name"));
        let mut config = Config::default();
        let m = table.meta(1, &config, "span-name");
        assert_eq!(
            (m.service_name.as_str(), m.exe_path.as_str()),
            ("loader-name", "/usr/bin/loader-name")
        );
        assert_eq!(
            table.meta(9, &config, "span-name").service_name,
            "span-name"
        );
        config.shared.service_name = Some("configured".into());
        assert_eq!(
            table.meta(1, &config, "span-name").service_name,
            "configured"
        );
    }
}
