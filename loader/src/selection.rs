//! Which processes to instrument: by listening port (`open_port`), by executable path glob
//! (`auto_target_exe`) or by pid. Reads only `/proc`; never payload bytes.
//!
//! A process is identified by its pid *and* its start time (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot): a pid number alone is recycled by the kernel. Every decision reads
//! the start time before and after looking at the process, so the reason found belongs to the
//! process that is selected.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
};

use sonde_config::Config;
use sonde_plumbing::proc_status::ProcStatus;
use sonde_schema::control::ProcessRecord;

/// A process the selection covers: its start time and what the processor is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub start: u64,
    pub record: ProcessRecord,
}

/// The selection criteria, from configuration. `pinned` holds the start time of the process
/// each configured pid (`target_pids`) named when it was first seen: a later process on that
/// pid is not the one the operator meant.
pub struct Selector<'a> {
    config: &'a Config,
    pinned: &'a BTreeMap<u32, u64>,
    own_pid: u32,
}

impl<'a> Selector<'a> {
    pub fn new(config: &'a Config, pinned: &'a BTreeMap<u32, u64>) -> Self {
        Selector {
            config,
            pinned,
            own_pid: std::process::id(),
        }
    }

    /// Every live process the configuration selects, with the reason.
    pub fn scan(&self) -> BTreeMap<u32, Candidate> {
        let mut out = BTreeMap::new();
        let listening = match &self.config.open_port {
            Some(ports) => listening_inodes(|p| ports.contains(p)),
            None => BTreeMap::new(),
        };
        for pid in all_pids() {
            if let Some(c) = self.evaluate(pid, &listening) {
                out.insert(pid, c);
            }
        }
        out
    }

    /// Checks one process (after an exec notice).
    pub fn check(&self, pid: u32) -> Option<Candidate> {
        let listening = match &self.config.open_port {
            Some(ports) => listening_inodes(|p| ports.contains(p)),
            None => BTreeMap::new(),
        };
        self.evaluate(pid, &listening)
    }

    /// The process now on `pid`, if selected: its start time is read before and after the
    /// checks and must not change (else the pid changed hands while it was looked at).
    fn evaluate(&self, pid: u32, listening: &BTreeMap<u64, u16>) -> Option<Candidate> {
        let start = start_time(pid)?;
        let reason = self.reason_for(pid, start, listening)?;
        let record = read_record(pid, reason)?;
        (start_time(pid) == Some(start)).then_some(Candidate { start, record })
    }

    fn reason_for(&self, pid: u32, start: u64, listening: &BTreeMap<u64, u16>) -> Option<String> {
        let status = ProcStatus::of(pid).ok()?;
        // A thread-group leader (a process, not a thread), and not this loader.
        if pid == self.own_pid || status.tgid != pid {
            return None;
        }
        if self.config.target_pids.contains(&pid)
            && self.pinned.get(&pid).is_none_or(|&s| s == start)
        {
            return Some("pid".into());
        }
        if !discoverable(self.config, status.uid.real, status.uid.effective) {
            return None;
        }
        if let Some(glob) = &self.config.auto_target_exe
            && let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe"))
            && glob.is_match(&exe.to_string_lossy())
        {
            return Some(format!("exe {}", glob.pattern));
        }
        if !listening.is_empty()
            && let Some(port) = socket_inodes(pid).iter().find_map(|i| listening.get(i))
        {
            return Some(format!("port {port}"));
        }
        None
    }
}

/// What `/proc/<pid>/stat` says about a process's identity and life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold spaces
/// and `)`, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 lie between the state and the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// The start time of the live process on `pid` (None when there is none, or only a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let stat = parse_stat(&text)?;
    (!matches!(stat.state, 'Z' | 'X' | 'x')).then_some(stat.start)
}

/// What became of a selected process, from its recorded start time and the start time of the
/// live process on its pid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The same process, still alive.
    Same,
    /// No live process on the pid (exited, or a zombie).
    Gone,
    /// Another process holds the pid now: the recorded one is gone, the new one is a stranger.
    Reused,
}

pub fn fate(recorded: u64, now: Option<u64>) -> Fate {
    match now {
        None => Fate::Gone,
        Some(s) if s == recorded => Fate::Same,
        Some(_) => Fate::Reused,
    }
}

/// Clock ticks per second (`USER_HZ`), the unit of `/proc/<pid>/stat` start times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// True when a process that started at `start` ticks can be the child a fork notice written
/// at `boot_ns` (CLOCK_BOOTTIME) announced: the kernel stamps the child's start just before
/// the notice, so its tick is the notice's tick or the one before. A process that took the
/// child's pid later started later.
pub fn is_forked_child(start: u64, boot_ns: u64, ticks_per_sec: u64) -> bool {
    let tick = boot_ns / (1_000_000_000 / ticks_per_sec.max(1));
    start == tick || start + 1 == tick
}

/// Whether discovery (port, executable) may select a process with these uids:
/// `discovery_uids` (when set) must hold both, `discovery_exclude_uids` neither.
pub fn discoverable(config: &Config, real: u32, effective: u32) -> bool {
    let allowed = config.discovery_uids.is_empty()
        || (config.discovery_uids.contains(&real) && config.discovery_uids.contains(&effective));
    allowed
        && !config.discovery_exclude_uids.contains(&real)
        && !config.discovery_exclude_uids.contains(&effective)
}

/// True for a thread-group leader (a process, not a thread).
pub fn is_process(pid: u32) -> bool {
    ProcStatus::of(pid).is_ok_and(|status| status.tgid == pid)
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Socket inodes held by a process.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let link = fs::read_link(e.ok()?.path()).ok()?;
        let link = link.to_str()?;
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Inodes of TCP sockets in LISTEN state whose local port passes `wanted`, mapped to the port.
fn listening_inodes(wanted: impl Fn(u16) -> bool) -> BTreeMap<u64, u16> {
    let mut out = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for (port, inode) in parse_listeners(&text) {
            if wanted(port) {
                out.insert(inode, port);
            }
        }
    }
    out
}

/// Parses `/proc/net/tcp{,6}`: (local port, inode) of every LISTEN (state 0A) socket.
pub fn parse_listeners(text: &str) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

fn read_record(pid: u32, reason: String) -> Option<ProcessRecord> {
    let exe_path = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()?
        .to_string_lossy()
        .into_owned();
    let cmdline: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let service_name = service_name_for(&exe_path);
    Some(ProcessRecord {
        pid,
        exe_path,
        cmdline,
        service_name,
        reason,
    })
}

/// The default service name: the executable's file name, without a " (deleted)" suffix.
pub fn service_name_for(exe_path: &str) -> String {
    let base = exe_path.rsplit('/').next().unwrap_or(exe_path);
    base.trim_end_matches(" (deleted)").to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn parses_listen_sockets_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listeners(text), vec![(8080, 12345)]);
    }

    #[test]
    fn stat_start_time_is_field_22() {
        // A command name with spaces and parentheses; start time 123456.
        let text = "4242 (evil) name (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                start: 123456
            })
        );
        assert_eq!(parse_stat("1 (x) Z 0"), None);
        assert_eq!(parse_stat("garbage"), None);
        let own = start_time(std::process::id()).unwrap();
        let text = fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(parse_stat(&text).unwrap().start, own);
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn fates_of_a_selected_pid() {
        assert_eq!(fate(500, Some(500)), Fate::Same);
        assert_eq!(fate(500, None), Fate::Gone);
        assert_eq!(fate(500, Some(501)), Fate::Reused);
        // An earlier start on the same pid is a different process too.
        assert_eq!(fate(500, Some(499)), Fate::Reused);
    }

    #[test]
    fn fork_children_are_told_from_later_processes() {
        // Notice at 12.345678 s after boot, 100 ticks per second: tick 1234.
        let ns = 12_345_678_000;
        assert!(is_forked_child(1234, ns, 100));
        assert!(is_forked_child(1233, ns, 100));
        assert!(!is_forked_child(1235, ns, 100));
        assert!(!is_forked_child(1200, ns, 100));
        assert!(!is_forked_child(0, ns, 100));
    }

    #[test]
    fn a_configured_pid_names_one_process() {
        let mut config = Config::default();
        let me = std::process::id();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        config.target_pids = vec![pid];
        let start = start_time(pid).unwrap();
        let mut pinned = BTreeMap::new();
        let found = Selector::new(&config, &pinned).check(pid).unwrap();
        assert_eq!((found.start, found.record.reason.as_str()), (start, "pid"));
        // Pinned to this process: selected while it lives.
        pinned.insert(pid, start);
        assert!(Selector::new(&config, &pinned).check(pid).is_some());
        // Pinned to another process that held the pid: not selected.
        pinned.insert(pid, start + 1);
        assert_eq!(Selector::new(&config, &pinned).check(pid), None);
        // The loader never selects itself.
        config.target_pids = vec![me];
        assert_eq!(Selector::new(&config, &BTreeMap::new()).check(me), None);
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn discovery_uid_filters() {
        let mut config = Config::default();
        assert!(discoverable(&config, 1000, 1000));
        config.discovery_exclude_uids = vec![1000];
        assert!(!discoverable(&config, 1000, 1000));
        assert!(!discoverable(&config, 0, 1000));
        assert!(!discoverable(&config, 1000, 0));
        assert!(discoverable(&config, 33, 33));
        config.discovery_uids = vec![0, 33];
        assert!(discoverable(&config, 33, 33));
        assert!(discoverable(&config, 0, 33));
        assert!(!discoverable(&config, 1001, 33));
        assert!(!discoverable(&config, 33, 1001));

        // A listener of uid 65534 on a selected port is not discovered when excluded; a
        // configured pid still is.
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)"])
            .stdout(std::process::Stdio::piped())
            .uid(65534)
            .gid(65534)
            .current_dir("/")
            .spawn();
        let Ok(child) = child.as_mut() else {
            // Not root: cannot run as another uid.
            return;
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let pid = child.id();
        let mut config = Config {
            open_port: Some(sonde_config::PortSet::parse("t", &port.to_string()).unwrap()),
            ..Config::default()
        };
        let pinned = BTreeMap::new();
        let found = Selector::new(&config, &pinned).check(pid).unwrap();
        assert_eq!(found.record.reason, format!("port {port}"));
        config.discovery_exclude_uids = vec![65534];
        assert_eq!(Selector::new(&config, &pinned).check(pid), None);
        config.discovery_exclude_uids = vec![];
        config.discovery_uids = vec![0];
        assert_eq!(Selector::new(&config, &pinned).check(pid), None);
        config.target_pids = vec![pid];
        assert_eq!(
            Selector::new(&config, &pinned)
                .check(pid)
                .unwrap()
                .record
                .reason,
            "pid"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn service_names() {
        assert_eq!(service_name_for("/usr/sbin/nginx"), "nginx");
        assert_eq!(
            service_name_for("/usr/bin/python3.11 (deleted)"),
            "python3.11"
        );
    }

    #[test]
    fn a_process_is_a_thread_group_leader() {
        assert!(is_process(std::process::id()));
        // A live thread's /proc entry reads, but its Tgid is the process's.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap().as_raw() as u32;
        assert!(!is_process(tid));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert!(!is_process(u32::MAX));
    }

    #[test]
    fn finds_own_listener_by_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inodes = listening_inodes(|p| p == port);
        assert_eq!(inodes.len(), 1);
        let mine = socket_inodes(std::process::id());
        assert!(inodes.keys().all(|i| mine.contains(i)));
    }
}
