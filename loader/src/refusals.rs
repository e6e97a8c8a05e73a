//! Refused narrowing and selection requests and refused control connections, logged aggregated: at most one
//! line per kind per [`INTERVAL`], with the count and a few examples, so a peer cannot turn
//! refusals into an unbounded stream of log lines.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::warn;

/// How often aggregated refusals are logged (when there were any).
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Examples kept per line.
const SAMPLES: usize = 8;

/// Refusals counted since the last line.
pub struct Refusals {
    narrow_count: u64,
    narrow_pids: Vec<u32>,
    select_count: u64,
    select_pids: Vec<u32>,
    /// Refused connections by reason: count and example peers.
    connections: BTreeMap<&'static str, (u64, Vec<String>)>,
    last: Option<Instant>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new()
    }
}

impl Refusals {
    pub fn new() -> Refusals {
        Refusals {
            narrow_count: 0,
            narrow_pids: Vec::new(),
            select_count: 0,
            select_pids: Vec::new(),
            connections: BTreeMap::new(),
            last: None,
        }
    }

    /// A narrowing request named `pid`, which is not captured.
    pub fn narrow(&mut self, pid: u32) {
        self.narrow_count += 1;
        if self.narrow_pids.len() < SAMPLES && !self.narrow_pids.contains(&pid) {
            self.narrow_pids.push(pid);
        }
    }

    /// A selection request named `pid`, which is not a current candidate.
    pub fn select(&mut self, pid: u32) {
        self.select_count += 1;
        if self.select_pids.len() < SAMPLES && !self.select_pids.contains(&pid) {
            self.select_pids.push(pid);
        }
    }

    /// A connection was refused for `reason`; `peer` describes it.
    pub fn connection(&mut self, reason: &'static str, peer: String) {
        let (count, peers) = self.connections.entry(reason).or_default();
        *count += 1;
        if peers.len() < SAMPLES {
            peers.push(peer);
        }
    }

    /// Logs what was counted, if an interval has passed since the last line (or `force`).
    pub fn flush(&mut self, now: Instant, force: bool) {
        if !force && self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            return;
        }
        if self.narrow_count == 0 && self.select_count == 0 && self.connections.is_empty() {
            return;
        }
        self.last = Some(now);
        if self.narrow_count > 0 {
            warn!(
                count = self.narrow_count,
                pids = ?self.narrow_pids,
                "refused the processor's narrowing request: pids not captured (the processor can only narrow)"
            );
            self.narrow_count = 0;
            self.narrow_pids.clear();
        }
        if self.select_count > 0 {
            warn!(
                count = self.select_count,
                pids = ?self.select_pids,
                "refused the processor's selection request: pids not candidates (the processor may choose only among the loader's candidates)"
            );
            self.select_count = 0;
            self.select_pids.clear();
        }
        for (reason, (count, peers)) in std::mem::take(&mut self.connections) {
            warn!(reason, count, peers = ?peers, "refused control connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_refusals_are_counted_and_sampled() {
        let mut r = Refusals::new();
        for pid in [5, 5, 6] {
            r.select(pid);
        }
        assert_eq!((r.select_count, r.select_pids.clone()), (3, vec![5, 6]));
        for pid in 100..120 {
            r.select(pid);
        }
        assert_eq!(r.select_count, 23);
        assert_eq!(r.select_pids.len(), SAMPLES);
        r.flush(Instant::now(), true);
        assert_eq!((r.select_count, r.select_pids.len()), (0, 0));
    }
}
