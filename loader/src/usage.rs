//! Process metrics, the loader's part (`metrics.features: [application_process]`): every
//! `processes.interval`, the CPU, memory and disk counters of each *captured* process are read
//! from `/proc/<pid>/{stat,status,io}` and its socket bytes from the kernel's per-process map,
//! and forwarded as plain numbers (`LoaderMessage::ProcessUsage`). The processor cannot read
//! them itself: `/proc/<pid>/io` needs ptrace access (the loader keeps `CAP_SYS_PTRACE`) and
//! its unit hides other processes. Nothing else of the process is read, and a process whose
//! start time no longer matches its selection (pid reused) is skipped.

use std::{
    fs,
    time::{Duration, Instant},
};

use sonde_config::Config;
use sonde_schema::control::{MAX_USAGE_PER_MESSAGE, ProcessUsage};
use tracing::{info, warn};

use crate::probes::Probes;

/// The fields of `/proc/<pid>/stat` process metrics use (clock ticks and pages as the kernel
/// gives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// Field 14, user mode time, clock ticks.
    pub utime: u64,
    /// Field 15, kernel mode time, clock ticks.
    pub stime: u64,
    /// Field 22, start time after boot, clock ticks: with the pid, the process's identity.
    pub start: u64,
    /// Field 23, virtual memory size, bytes.
    pub vsize: u64,
    /// Field 24, resident set size, pages.
    pub rss_pages: u64,
}

/// Parses the fields of `/proc/<pid>/stat` process metrics use (split by
/// [`crate::selection::stat_fields`], which counts them from the command name's last `)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let fields: Vec<&str> = crate::selection::stat_fields(text)?.collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        start: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `read_bytes` and `write_bytes` of `/proc/<pid>/io` (bytes the process caused to be
/// fetched from, and sent to, the storage layer).
pub fn parse_io(text: &str) -> Option<(u64, u64)> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((value("read_bytes:")?, value("write_bytes:")?))
}

/// The real uid of `/proc/<pid>/status` (first number of its `Uid:` line).
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Ticks to nanoseconds without overflow for any realistic tick count.
fn ticks_to_ns(ticks: u64, ticks_per_sec: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(ticks_per_sec.max(1))) as u64
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The periodic reader; present only when process metrics are on.
pub struct UsageReader {
    interval: Duration,
    last: Option<Instant>,
    ticks_per_sec: u64,
    page_size: u64,
    /// `/proc/<pid>/io` reads refused (ptrace access denied): their disk I/O was sent as 0.
    pub io_unreadable: u64,
}

impl UsageReader {
    /// `None` when process metrics are off.
    pub fn new(config: &Config) -> Option<UsageReader> {
        if !config.processes.enable {
            return None;
        }
        info!(
            interval = ?config.processes.interval,
            "process metrics on: reading /proc/<pid>/{{stat,status,io}} of captured processes"
        );
        Some(UsageReader {
            interval: config.processes.interval,
            last: None,
            ticks_per_sec: crate::selection::clock_ticks(),
            page_size: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .map_or(4096, |v| v as u64),
            io_unreadable: 0,
        })
    }

    /// True when a reading is due at `now` (the first one at once).
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.duration_since(last) >= self.interval)
    }

    /// Reads every process of `targets` ((pid, start time) pairs), in messages of at most
    /// `MAX_USAGE_PER_MESSAGE` readings. Processes gone or replaced are skipped.
    pub fn sample(
        &mut self,
        targets: &[(u32, u64)],
        probes: &Probes,
        now: Instant,
    ) -> Vec<Vec<ProcessUsage>> {
        self.last = Some(now);
        let readings: Vec<ProcessUsage> = targets
            .iter()
            .filter_map(|&(pid, start)| self.read(pid, start, probes))
            .collect();
        readings
            .chunks(MAX_USAGE_PER_MESSAGE)
            .map(<[ProcessUsage]>::to_vec)
            .collect()
    }

    fn read(&mut self, pid: u32, start: u64, probes: &Probes) -> Option<ProcessUsage> {
        let stat = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        if stat.start != start {
            return None;
        }
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(parse_uid)?;
        let (disk_read_bytes, disk_write_bytes) = match fs::read_to_string(format!(
            "/proc/{pid}/io"
        )) {
            Ok(text) => parse_io(&text).unwrap_or((0, 0)),
            Err(e) => {
                if self.io_unreadable == 0 {
                    warn!(pid, error = %e, "/proc/<pid>/io unreadable: disk I/O reported as 0 (logged once, counted)");
                }
                self.io_unreadable += 1;
                (0, 0)
            }
        };
        let (net_receive_bytes, net_transmit_bytes) = probes.net_bytes(pid);
        Some(ProcessUsage {
            pid,
            parent_pid: stat.ppid,
            uid,
            cpu_user_ns: ticks_to_ns(stat.utime, self.ticks_per_sec),
            cpu_system_ns: ticks_to_ns(stat.stime, self.ticks_per_sec),
            memory_rss: stat.rss_pages.saturating_mul(self.page_size),
            memory_virtual: stat.vsize,
            disk_read_bytes,
            disk_write_bytes,
            net_receive_bytes,
            net_transmit_bytes,
            sampled_at_ns: monotonic_ns(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of a process named `a) b (c` (the kernel prints the name as is).
    const STAT: &str = "4242 (a) b (c) S 17 4242 4242 0 -1 4194304 2717 0 0 0 123 45 0 0 20 0 3 0 987654 209715200 51200 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = parse_stat(STAT).expect("parsed");
        assert_eq!(
            s,
            Stat {
                ppid: 17,
                utime: 123,
                stime: 45,
                start: 987654,
                vsize: 209_715_200,
                rss_pages: 51200,
            }
        );
        // A name that looks like fields.
        let tricky = STAT.replace("a) b (c", ") R 1 2 3 (");
        assert_eq!(parse_stat(&tricky), Some(s));
    }

    #[test]
    fn truncated_or_garbled_stat_is_refused() {
        assert_eq!(parse_stat("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
        assert_eq!(parse_stat(&STAT.replace(" 123 ", " x ")), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn io_and_uid_are_read_by_key() {
        let io = "rchar: 100\nwchar: 200\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 1048576\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(io), Some((4096, 1_048_576)));
        assert_eq!(parse_io("rchar: 1\n"), None);
        let status = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_uid(status), Some(1000));
        assert_eq!(parse_uid("Name:\tx\n"), None);
    }

    #[test]
    fn ticks_become_nanoseconds() {
        assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
        assert!(ticks_to_ns(u64::MAX / 2, 100) > 0);
    }

    #[test]
    fn own_process_reads_back() {
        let own = std::process::id();
        let stat =
            parse_stat(&fs::read_to_string("/proc/self/stat").expect("stat")).expect("parsed");
        let status = fs::read_to_string("/proc/self/status").expect("status");
        assert_eq!(parse_uid(&status), Some(nix::unistd::getuid().as_raw()));
        assert!(stat.rss_pages > 0 && stat.vsize > 0, "{stat:?}");
        assert!(own > 0);
    }
}
