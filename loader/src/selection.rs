//! Which processes to instrument: by listening port (`open_port`), by executable path glob
//! (`auto_target_exe`) or by pid. Reads only `/proc`; never payload bytes.
//!
//! A process is identified by its pid *and* its start time (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot): a pid number alone is recycled by the kernel. Every decision reads
//! the start time before and after looking at the process, so the reason found belongs to the
//! process that is selected.
//!
//! Listeners on `open_port` ports are found in every network namespace without entering any
//! (`setns` would need `CAP_SYS_ADMIN`): each process's own `/proc/<pid>/net/tcp{,6}` shows
//! its namespace, named by the inode of `/proc/<pid>/ns/net`. The tables are read once per
//! namespace at start-up, then only for the namespace of a process the kernel saw `listen()`
//! on a covered port, and only up to their last listening socket (listeners come first).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    io::Read,
    time::{Duration, Instant},
};

use sonde_config::{Config, PortSet, discovery::Selector as DiscoverySelector, naming};
use sonde_plumbing::proc_status::ProcStatus;
use sonde_schema::control::{K8sCriteria, MAX_CANDIDATE_SELECTORS, ProcessRecord};

/// A process the selection covers: its start time and what the processor is told about it.
/// With `k8s` empty it is selected; else it is only a *candidate*: in a container's cgroup,
/// matching every other field of these selectors with Kubernetes fields, captured only once
/// the processor (which has the pod metadata) selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub start: u64,
    pub record: ProcessRecord,
    pub k8s: Vec<K8sCriteria>,
}

/// Why a selection request for a pid is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pid is no candidate: outside the bound the configuration sets.
    NotCandidate,
    /// The candidate on the pid exited, or another process holds the pid now.
    Gone,
}

/// The candidates: processes a selector with Kubernetes fields bounds, which the processor may
/// select. Keyed by pid, each with the start time of the process that was the candidate.
#[derive(Debug, Default)]
pub struct CandidateSet {
    by_pid: BTreeMap<u32, Candidate>,
}

impl CandidateSet {
    /// Adds or updates `c`; true when it is new or changed (to be announced).
    pub fn upsert(&mut self, c: Candidate) -> bool {
        if self.by_pid.get(&c.record.pid) == Some(&c) {
            return false;
        }
        self.by_pid.insert(c.record.pid, c);
        true
    }

    /// Forgets the candidate on `pid`; true when there was one.
    pub fn remove(&mut self, pid: u32) -> bool {
        self.by_pid.remove(&pid).is_some()
    }

    pub fn get(&self, pid: u32) -> Option<&Candidate> {
        self.by_pid.get(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Candidate> {
        self.by_pid.values()
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// The candidate a selection request for `pid` may capture, given the start time of the
    /// live process on `pid` now: only the very process that was made a candidate.
    pub fn admit(&self, pid: u32, start_now: Option<u64>) -> Result<&Candidate, Refusal> {
        let c = self.by_pid.get(&pid).ok_or(Refusal::NotCandidate)?;
        if start_now == Some(c.start) {
            Ok(c)
        } else {
            Err(Refusal::Gone)
        }
    }

    /// The candidates whose process is gone (per `start_of`, the live start time on a pid).
    pub fn stale(&self, start_of: impl Fn(u32) -> Option<u64>) -> Vec<u32> {
        self.by_pid
            .values()
            .filter(|c| start_of(c.record.pid) != Some(c.start))
            .map(|c| c.record.pid)
            .collect()
    }
}

/// The Kubernetes fields of `sel`, for the processor to evaluate.
pub fn k8s_criteria(sel: &DiscoverySelector, regex: bool) -> K8sCriteria {
    let entries = |m: &BTreeMap<String, sonde_config::discovery::Pattern>| {
        m.iter().map(|(k, p)| (k.clone(), p.text.clone())).collect()
    };
    K8sCriteria {
        key: sel.key.clone(),
        regex,
        fields: sel
            .k8s
            .fields
            .iter()
            .map(|(f, p)| (f.to_string(), p.text.clone()))
            .collect(),
        pod_labels: entries(&sel.k8s.pod_labels),
        pod_annotations: entries(&sel.k8s.pod_annotations),
    }
}

/// The selection criteria, from configuration. `pinned` holds the start time of the process
/// each configured pid (`target_pids`) named when it was first seen: a later process on that
/// pid is not the one the operator meant.
///
/// A process is selected by `target_pids`, or by the top-level selector (`open_port`,
/// `auto_target_exe`, `executable_name`, ANDed), or by a selector of `discovery.instrument`
/// (else `discovery.services`), each of whose fields must hold; the first that matches names
/// it. Discovery (everything but `target_pids`) never selects a process an exclude selector
/// matches (`exclude_instrument` / `exclude_services`, `default_exclude_instrument`).
pub struct Selector<'a> {
    config: &'a Config,
    pinned: &'a BTreeMap<u32, u64>,
    own_pid: u32,
    /// Every port a selector in force names.
    ports: Option<PortSet>,
}

/// What selected a process (or made it a candidate: `k8s` not empty).
struct Match {
    reason: String,
    name: Option<String>,
    namespace: Option<String>,
    k8s: Vec<K8sCriteria>,
}

/// What a process is, read from `/proc` once and only when a selector asks.
struct Facts<'f> {
    pid: u32,
    exe: Option<Option<String>>,
    ports: Option<Vec<u16>>,
    container: Option<bool>,
    port_of: PortOf<'f>,
}

impl Facts<'_> {
    fn exe(&mut self) -> Option<&str> {
        let pid = self.pid;
        self.exe
            .get_or_insert_with(|| {
                fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .as_deref()
    }

    /// The covered ports the process listens on.
    fn ports(&mut self) -> &[u16] {
        if self.ports.is_none() {
            let sockets = socket_inodes(self.pid);
            self.ports = Some(if sockets.is_empty() {
                Vec::new()
            } else {
                (self.port_of)(&sockets)
            });
        }
        self.ports.as_deref().unwrap_or_default()
    }

    fn in_container(&mut self) -> bool {
        let pid = self.pid;
        *self
            .container
            .get_or_insert_with(|| crate::cgroup::container_id(pid).is_some())
    }

    /// Whether every field of `sel` but its Kubernetes ones holds; the reason when it does.
    /// A selector with Kubernetes fields also needs the process in a container (a pod's
    /// cgroup); in an exclude list such a selector excludes nothing.
    fn matches(&mut self, sel: &DiscoverySelector, exclude: bool) -> Option<String> {
        let inert = if exclude {
            sel.inert_exclusion()
        } else {
            sel.inert()
        };
        if inert.is_some() {
            return None;
        }
        let mut parts = Vec::new();
        if !sel.k8s.is_empty() {
            if !self.in_container() {
                return None;
            }
            parts.push("in a pod".to_string());
        }
        if let Some(p) = &sel.exe_path {
            if !p.is_match(self.exe()?) {
                return None;
            }
            parts.push(format!("exe {}", p.text));
        }
        if sel.containers_only {
            if !self.in_container() {
                return None;
            }
            parts.push("container".to_string());
        }
        if let Some(ports) = &sel.open_ports {
            let port = self.ports().iter().copied().find(|&p| ports.contains(p))?;
            parts.push(format!("port {port}"));
        }
        Some(parts.join(", "))
    }

    /// The top-level selector: `auto_target_exe`, `executable_name` and `open_port`, ANDed.
    fn matches_top_level(&mut self, config: &Config) -> Option<String> {
        if !config.has_top_level_selector() {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(glob) = &config.auto_target_exe {
            if !glob.is_match(self.exe()?) {
                return None;
            }
            parts.push(format!("exe {}", glob.pattern));
        }
        if let Some(re) = &config.executable_name {
            if !re.is_match(self.exe()?) {
                return None;
            }
            parts.push(format!("executable_name {}", re.text));
        }
        if let Some(ports) = &config.open_port {
            let port = self.ports().iter().copied().find(|&p| ports.contains(p))?;
            parts.push(format!("port {port}"));
        }
        Some(parts.join(", "))
    }
}

impl<'a> Selector<'a> {
    pub fn new(config: &'a Config, pinned: &'a BTreeMap<u32, u64>) -> Self {
        Selector {
            config,
            pinned,
            own_pid: std::process::id(),
            ports: config.listen_ports(),
        }
    }

    /// Every live process the configuration selects, with the reason. With ports to watch,
    /// the listening sockets of every network namespace a process lives in are read once
    /// (through the first process found in it) into `listeners`, which then holds exactly the
    /// namespaces seen.
    pub fn scan(&self, listeners: &mut Listeners) -> BTreeMap<u32, Candidate> {
        let mut out = BTreeMap::new();
        let mut seen = HashSet::new();
        let none = HashMap::new();
        for pid in all_pids() {
            let ns = match &self.ports {
                Some(ports) => netns_of(pid).inspect(|&ns| {
                    if seen.insert(ns) && !listeners.read(ns, pid, ports) {
                        // Gone or moved: the next process in the namespace reads it.
                        seen.remove(&ns);
                    }
                }),
                None => None,
            };
            let listening = ns.and_then(|ns| listeners.get(ns)).unwrap_or(&none);
            let found = self.evaluate(pid, &mut |sockets| ports_in(sockets, listening));
            if let Some(c) = found {
                out.insert(pid, c);
            }
        }
        listeners.retain(|ns| seen.contains(&ns));
        out
    }

    /// Checks one process (after an exec notice). A process holding no socket is decided
    /// without looking at any table; one holding sockets is matched against its namespace's
    /// listeners as last read (every `listen()` on a covered port has them read again), read
    /// now if never read or when none matches and the reading is older than `LISTENERS_FRESH`.
    pub fn check(&self, pid: u32, listeners: &mut Listeners) -> Option<Candidate> {
        let ports = self.ports.as_ref();
        self.evaluate(pid, &mut |sockets| {
            let Some(ports) = ports else {
                return Vec::new();
            };
            let Some(ns) = netns_of(pid) else {
                return Vec::new();
            };
            let hit = |l: &Listeners| {
                l.get(ns)
                    .map(|map| ports_in(sockets, map))
                    .unwrap_or_default()
            };
            let found = hit(listeners);
            if !found.is_empty() || listeners.age(ns).is_some_and(|a| a < LISTENERS_FRESH) {
                return found;
            }
            listeners.read(ns, pid, ports);
            hit(listeners)
        })
    }

    /// Checks one process against `listening` (its namespace's listeners, just read).
    pub fn check_with(&self, pid: u32, listening: &HashMap<u64, u16>) -> Option<Candidate> {
        self.evaluate(pid, &mut |sockets| ports_in(sockets, listening))
    }

    /// The process now on `pid`, if selected: its start time is read before and after the
    /// checks and must not change (else the pid changed hands while it was looked at).
    /// `port_of` names the covered ports of the listeners among the process's socket inodes.
    fn evaluate(&self, pid: u32, port_of: PortOf<'_>) -> Option<Candidate> {
        let start = start_time(pid)?;
        let found = self.reason_for(pid, start, port_of)?;
        let mut record = read_record(pid, found.reason)?;
        record.selector_service_name = found.name.unwrap_or_default();
        record.selector_service_namespace = found.namespace.unwrap_or_default();
        // A candidate is in a pod's cgroup: its container id is what the processor looks up.
        if !found.k8s.is_empty() && record.container_id.is_empty() {
            return None;
        }
        (start_time(pid) == Some(start)).then_some(Candidate {
            start,
            record,
            k8s: found.k8s,
        })
    }

    fn reason_for(&self, pid: u32, start: u64, port_of: PortOf<'_>) -> Option<Match> {
        let status = ProcStatus::of(pid).ok()?;
        // A thread-group leader (a process, not a thread), and not this loader.
        if pid == self.own_pid || status.tgid != pid {
            return None;
        }
        let config = self.config;
        // The top-level selector (and `target_pids`) is named by `service_name`.
        let top_level = |reason: String| Match {
            reason,
            name: config.service_name.clone(),
            namespace: config.service_namespace.clone(),
            k8s: Vec::new(),
        };
        if config.target_pids.contains(&pid) && self.pinned.get(&pid).is_none_or(|&s| s == start) {
            return Some(top_level("pid".into()));
        }
        if !discoverable(config, status.uid.real, status.uid.effective) {
            return None;
        }
        let mut facts = Facts {
            pid,
            exe: None,
            ports: None,
            container: None,
            port_of,
        };
        // A selector without Kubernetes fields selects; failing that, the selectors with
        // Kubernetes fields whose other fields hold make the process a candidate (named by the
        // first of them), which the processor may select.
        let regex = config.discovery.instrument.is_empty();
        let found = if let Some(reason) = facts.matches_top_level(config) {
            top_level(reason)
        } else {
            let mut candidate: Option<Match> = None;
            let mut selected = None;
            for sel in config.discovery.include() {
                let Some(why) = facts.matches(sel, false) else {
                    continue;
                };
                if sel.k8s.is_empty() {
                    selected = Some(Match {
                        reason: format!("{} ({why})", sel.key),
                        name: sel.name.clone(),
                        namespace: sel.namespace.clone(),
                        k8s: Vec::new(),
                    });
                    break;
                }
                let c = candidate.get_or_insert_with(|| Match {
                    reason: format!("{} ({why})", sel.key),
                    name: sel.name.clone(),
                    namespace: sel.namespace.clone(),
                    k8s: Vec::new(),
                });
                if c.k8s.len() < MAX_CANDIDATE_SELECTORS {
                    c.k8s.push(k8s_criteria(sel, regex));
                }
            }
            selected.or(candidate)?
        };
        // Excluded: only a selector whose every field holds excludes; and the collector Sonde
        // exports to (a process listening on a local OTLP endpoint's port).
        if config
            .discovery
            .exclude()
            .any(|sel| facts.matches(sel, true).is_some())
            || (!config.collector_ports.is_empty()
                && facts
                    .ports()
                    .iter()
                    .any(|p| config.collector_ports.contains(p)))
        {
            return None;
        }
        Some(found)
    }
}

/// The covered ports among `sockets` (a process's socket inodes) per `listening`.
fn ports_in(sockets: &HashSet<u64>, listening: &HashMap<u64, u16>) -> Vec<u16> {
    sockets
        .iter()
        .filter_map(|i| listening.get(i).copied())
        .collect()
}

/// Finds the covered ports a process listens on, from its socket inodes.
type PortOf<'a> = &'a mut dyn FnMut(&HashSet<u64>) -> Vec<u16>;

/// What `/proc/<pid>/stat` says about a process's identity and life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

/// The fields of `/proc/<pid>/stat` from field 3 (the state) on. The command name (field 2)
/// is in parentheses and may hold spaces and `)`, so fields are counted from the last `)`:
/// field n is item n − 3. Every reader of `stat` splits it here.
pub fn stat_fields(text: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(text[text.rfind(')')? + 1..].split_ascii_whitespace())
}

/// Parses the identity and life fields of `/proc/<pid>/stat` (see [`stat_fields`]).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let mut fields = stat_fields(text)?;
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 lie between the state and the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// The start time of the live process on `pid` (None when there is none, or only a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    // One open and one read (the file is a few hundred bytes): this runs several times per
    // process notice.
    let mut buf = [0u8; 1024];
    let mut file = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    let text = if n < buf.len() {
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        fs::read_to_string(format!("/proc/{pid}/stat")).ok()?
    };
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

/// The descendants of `pid` (children, their children, …), from
/// `/proc/<pid>/task/<tid>/children`; at most `limit` of them.
pub fn descendants(pid: u32, limit: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    let mut seen = HashSet::from([pid]);
    while let Some(p) = queue.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.filter_map(|t| t.ok()) {
            let Ok(text) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                if out.len() >= limit {
                    return out;
                }
                if seen.insert(child) {
                    out.push(child);
                    queue.push(child);
                }
            }
        }
    }
    out
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

/// How long an exec check trusts a namespace's listeners as last read (`listen()` notices make
/// the namespace be read again at once, so this only bounds the life of a stale entry).
pub const LISTENERS_FRESH: Duration = Duration::from_secs(2);

/// Listening TCP sockets on covered ports, per network namespace (keyed by the inode of
/// `/proc/<pid>/ns/net`): socket inode → port.
#[derive(Debug, Default)]
pub struct Listeners {
    by_netns: HashMap<u64, NetnsListeners>,
    /// Tables read so far (for tests and logs).
    pub reads: u64,
}

#[derive(Debug)]
struct NetnsListeners {
    read_at: Instant,
    inodes: HashMap<u64, u16>,
}

impl Listeners {
    /// Reads the listeners of namespace `ns` through `pid`, a process in it, keeping those on
    /// `ports`. False (and nothing changed) when the process is gone or no longer in `ns`.
    pub fn read(&mut self, ns: u64, pid: u32, ports: &PortSet) -> bool {
        let Some(found) = netns_listeners(pid) else {
            return false;
        };
        // The tables are the namespace's only if the process was still in it afterwards.
        if netns_of(pid) != Some(ns) {
            return false;
        }
        self.reads += 1;
        let inodes = found
            .into_iter()
            .filter(|(port, _)| ports.contains(*port))
            .map(|(port, inode)| (inode, port))
            .collect();
        self.by_netns.insert(
            ns,
            NetnsListeners {
                read_at: Instant::now(),
                inodes,
            },
        );
        true
    }

    pub fn get(&self, ns: u64) -> Option<&HashMap<u64, u16>> {
        self.by_netns.get(&ns).map(|l| &l.inodes)
    }

    /// How long ago namespace `ns` was read (None: never).
    pub fn age(&self, ns: u64) -> Option<Duration> {
        self.by_netns.get(&ns).map(|l| l.read_at.elapsed())
    }

    /// Forgets namespaces not read for `max_age` (they are read again when next needed).
    pub fn prune(&mut self, max_age: Duration) {
        self.by_netns.retain(|_, l| l.read_at.elapsed() < max_age);
    }

    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.by_netns.retain(|&ns, _| keep(ns));
    }

    pub fn namespaces(&self) -> usize {
        self.by_netns.len()
    }
}

/// The network namespace of a process: the inode `/proc/<pid>/ns/net` names (`net:[N]`).
/// Reading the link is a ptrace-read access check, like `/proc/<pid>/fd`.
pub fn netns_of(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local port, inode) of every LISTEN TCP socket in `pid`'s network namespace, from the
/// process's own view, `/proc/<pid>/net/tcp{,6}` (world-readable: no capability, and no
/// `setns`). None when neither table can be opened (the process is gone).
pub fn netns_listeners(pid: u32) -> Option<Vec<(u16, u64)>> {
    let mut out = Vec::new();
    let mut opened = false;
    for table in ["tcp", "tcp6"] {
        if let Ok(file) = fs::File::open(format!("/proc/{pid}/net/{table}")) {
            opened = true;
            read_listeners(file, &mut out);
        }
    }
    opened.then_some(out)
}

/// Reads a `/proc/net/tcp{,6}` table up to its first socket that is not listening. The
/// kernel lists the listening hash before the established one (`tcp_get_idx`), so on a host
/// with tens of thousands of established or TIME_WAIT sockets this formats a few extra lines,
/// never the whole table.
pub fn read_listeners(mut table: impl Read, out: &mut Vec<(u16, u64)>) {
    let mut buf = vec![0u8; 16 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut header = true;
    loop {
        let n = match table.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut consumed = 0;
        while let Some(nl) = pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &pending[consumed..consumed + nl];
            consumed += nl + 1;
            if std::mem::take(&mut header) {
                continue;
            }
            match parse_listener(&String::from_utf8_lossy(line)) {
                Line::Listen(port, inode) => out.push((port, inode)),
                Line::Other => return,
                Line::Garbled => {}
            }
        }
        pending.drain(..consumed);
    }
}

enum Line {
    Listen(u16, u64),
    Other,
    Garbled,
}

fn parse_listener(line: &str) -> Line {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return Line::Garbled;
    }
    if f[3] != "0A" {
        return Line::Other;
    }
    let port = f[1]
        .rsplit(':')
        .next()
        .and_then(|p| u16::from_str_radix(p, 16).ok());
    match (port, f[9].parse()) {
        (Some(port), Ok(inode)) => Line::Listen(port, inode),
        _ => Line::Garbled,
    }
}

/// Parses a whole `/proc/net/tcp{,6}` text: (local port, inode) of its leading LISTEN
/// (state 0A) sockets.
pub fn parse_listeners(text: &str) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    read_listeners(text.as_bytes(), &mut out);
    out
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
    let env = env_names(pid);
    Some(ProcessRecord {
        pid,
        exe_path,
        cmdline,
        service_name,
        reason,
        container_id: crate::cgroup::container_id(pid).unwrap_or_default(),
        env_service_name: env.service_name.unwrap_or_default(),
        env_service_namespace: env.service_namespace.unwrap_or_default(),
        ..ProcessRecord::default()
    })
}

/// The service name and namespace a process's environment gives itself (`naming::EnvNames`):
/// `/proc/<pid>/environ` (a ptrace-read access check, like `/proc/<pid>/exe`), at most
/// `MAX_ENVIRON_BYTES` of it. Only these two values leave the loader.
pub fn env_names(pid: u32) -> naming::EnvNames {
    let Ok(file) = fs::File::open(format!("/proc/{pid}/environ")) else {
        return naming::EnvNames::default();
    };
    let mut bytes = Vec::new();
    let _ = file
        .take(naming::MAX_ENVIRON_BYTES as u64)
        .read_to_end(&mut bytes);
    naming::EnvNames::from_environ(&bytes)
}

/// The service a record names without Kubernetes metadata (`naming`'s ladder; the processor
/// climbs it again with the pod's metadata).
pub fn service_of(record: &ProcessRecord) -> naming::ServiceNames {
    let given = |s: &String| (!s.is_empty()).then(|| s.clone());
    naming::NameInputs {
        selector_name: given(&record.selector_service_name),
        selector_namespace: given(&record.selector_service_namespace),
        env: naming::EnvNames {
            service_name: given(&record.env_service_name),
            service_namespace: given(&record.env_service_namespace),
        },
        k8s: naming::K8sNames::default(),
        exe_name: record.service_name.clone(),
    }
    .resolve()
}

/// The default service name: the executable's file name, without a " (deleted)" suffix.
pub fn service_name_for(exe_path: &str) -> String {
    let base = exe_path.rsplit('/').next().unwrap_or(exe_path);
    base.trim_end_matches(" (deleted)").to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    fn candidate(pid: u32, start: u64) -> Candidate {
        Candidate {
            start,
            record: ProcessRecord {
                pid,
                container_id: "ab".repeat(32),
                ..ProcessRecord::default()
            },
            k8s: vec![K8sCriteria {
                key: "discovery.instrument[0]".into(),
                fields: vec![("k8s_namespace".into(), "shop".into())],
                ..K8sCriteria::default()
            }],
        }
    }

    #[test]
    fn candidate_set_admits_only_the_process_it_bounds() {
        let mut set = CandidateSet::default();
        assert!(set.upsert(candidate(10, 500)));
        // Announced once: the same candidate again is no news; a changed one is.
        assert!(!set.upsert(candidate(10, 500)));
        assert!(set.upsert(candidate(11, 600)));
        let mut changed = candidate(11, 600);
        changed.k8s[0].fields[0].1 = "other".into();
        assert!(set.upsert(changed));
        assert_eq!(set.len(), 2);
        // A pid never announced is outside the bound.
        assert_eq!(set.admit(12, Some(700)).err(), Some(Refusal::NotCandidate));
        // The candidate itself is admitted; the same pid under another process is not.
        assert_eq!(set.admit(10, Some(500)).map(|c| c.start), Ok(500));
        assert_eq!(set.admit(10, Some(501)).err(), Some(Refusal::Gone));
        assert_eq!(set.admit(10, None).err(), Some(Refusal::Gone));
        // Gone processes are found by start time and forgotten.
        let live = |pid: u32| (pid == 11).then_some(600);
        assert_eq!(set.stale(live), vec![10]);
        assert!(set.remove(10));
        assert!(!set.remove(10));
        assert_eq!(set.admit(10, Some(500)).err(), Some(Refusal::NotCandidate));
        assert!(set.stale(live).is_empty());
    }

    #[test]
    fn kubernetes_criteria_carry_the_selector_as_written() {
        let config = yaml_config(
            "discovery:\n  services:\n    - open_ports: 80\n      k8s_namespace: '^shop$'\n      k8s_pod_labels:\n        app: web\n      k8s_pod_annotations:\n        team: a.*\n",
        );
        let sel = &config.discovery.include()[0];
        let k = k8s_criteria(sel, true);
        assert_eq!(k.key, "discovery.services[0]");
        assert!(k.regex);
        assert_eq!(
            k.fields,
            vec![("k8s_namespace".to_string(), "^shop$".to_string())]
        );
        assert_eq!(k.pod_labels, vec![("app".to_string(), "web".to_string())]);
        assert_eq!(
            k.pod_annotations,
            vec![("team".to_string(), "a.*".to_string())]
        );
    }

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
        let found = Selector::new(&config, &pinned)
            .check(pid, &mut Listeners::default())
            .unwrap();
        assert_eq!((found.start, found.record.reason.as_str()), (start, "pid"));
        // Pinned to this process: selected while it lives.
        pinned.insert(pid, start);
        assert!(
            Selector::new(&config, &pinned)
                .check(pid, &mut Listeners::default())
                .is_some()
        );
        // Pinned to another process that held the pid: not selected.
        pinned.insert(pid, start + 1);
        assert_eq!(
            Selector::new(&config, &pinned).check(pid, &mut Listeners::default()),
            None
        );
        // The loader never selects itself.
        config.target_pids = vec![me];
        assert_eq!(
            Selector::new(&config, &BTreeMap::new()).check(me, &mut Listeners::default()),
            None
        );
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
        let found = Selector::new(&config, &pinned)
            .check(pid, &mut Listeners::default())
            .unwrap();
        assert_eq!(found.record.reason, format!("port {port}"));
        config.discovery_exclude_uids = vec![65534];
        assert_eq!(
            Selector::new(&config, &pinned).check(pid, &mut Listeners::default()),
            None
        );
        config.discovery_exclude_uids = vec![];
        config.discovery_uids = vec![0];
        assert_eq!(
            Selector::new(&config, &pinned).check(pid, &mut Listeners::default()),
            None
        );
        config.target_pids = vec![pid];
        assert_eq!(
            Selector::new(&config, &pinned)
                .check(pid, &mut Listeners::default())
                .unwrap()
                .record
                .reason,
            "pid"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A config read from YAML, as the loader reads it.
    fn yaml_config(yaml: &str) -> Config {
        let file = sonde_config::FileText {
            path: "t.yaml".into(),
            text: yaml.to_string(),
        };
        Config::load(Some(&file), &BTreeMap::new()).unwrap()
    }

    #[test]
    fn selectors_and_inside_or_across_and_exclusions_win() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=napper-env,service.namespace=ns1",
            )
            .spawn()
            .unwrap();
        let pid = child.id();
        // `spawn` returns once exec has begun: the kernel switches `/proc/<pid>/exe` before
        // it writes the new environment, so read the selection only after the environment
        // is there (a loaded CI machine caught that window).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_default()
            .windows(10)
            .any(|w| w == b"napper-env")
        {
            assert!(Instant::now() < deadline, "sleep never finished its exec");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pinned = BTreeMap::new();
        let check = |yaml: &str| {
            Selector::new(&yaml_config(yaml), &pinned).check(pid, &mut Listeners::default())
        };
        // A glob selector: selected, named, the environment's values carried.
        let c = check("discovery:\n  instrument:\n    - exe_path: '*/sleep'\n      name: napper\n")
            .unwrap();
        assert_eq!(c.record.reason, "discovery.instrument[0] (exe */sleep)");
        assert_eq!(c.record.selector_service_name, "napper");
        assert_eq!(c.record.env_service_name, "napper-env");
        assert_eq!(c.record.env_service_namespace, "ns1");
        assert_eq!(service_of(&c.record).name, "napper");
        // Fields ANDed: the glob matches, the port does not.
        assert!(
            check("discovery:\n  instrument:\n    - exe_path: '*/sleep'\n      open_ports: 1\n")
                .is_none()
        );
        assert!(check("auto_target_exe: '*/sleep'\nopen_port: 1\n").is_none());
        // Selectors ORed: the second matches.
        let c = check(
            "discovery:\n  instrument:\n    - exe_path: '*/nothing'\n    - exe_path: '*/sl?ep'\n",
        )
        .unwrap();
        assert_eq!(c.record.reason, "discovery.instrument[1] (exe */sl?ep)");
        assert_eq!(service_of(&c.record).name, "napper-env");
        // Regular expressions, unanchored, for services.
        assert!(check("discovery:\n  services:\n    - exe_path: 'lee'\n").is_some());
        assert!(check("discovery:\n  services:\n    - exe_path: '^lee'\n").is_none());
        // Exclusions win over any include; the defaults can be emptied, not by accident.
        assert!(check("discovery:\n  instrument:\n    - exe_path: '*/sleep'\n  exclude_instrument:\n    - exe_path: '*/sl*'\n").is_none());
        assert!(check("auto_target_exe: '*/sleep'\ndiscovery:\n  default_exclude_instrument: [{exe_path: '*/sleep'}]\n").is_none());
        // A selector with Kubernetes fields makes candidates of processes in containers
        // only (this test's process is in none); as an exclusion it excludes nothing.
        assert!(
            check(
                "discovery:\n  instrument:\n    - exe_path: '*/sleep'\n      k8s_namespace: prod\n"
            )
            .is_none()
        );
        assert!(check("discovery:\n  instrument:\n    - exe_path: '*/sleep'\n  exclude_instrument:\n    - exe_path: '*/sl*'\n      k8s_namespace: prod\n").is_some());
        // target_pids is not subject to exclusions; service_name names it.
        let c = check(&format!("target_pids: [{pid}]\nservice_name: top\ndiscovery:\n  default_exclude_instrument: [{{exe_path: '*/sleep'}}]\n")).unwrap();
        assert_eq!(
            (
                c.record.reason.as_str(),
                c.record.selector_service_name.as_str()
            ),
            ("pid", "top")
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
        let me = std::process::id();
        let found: Vec<u64> = netns_listeners(me)
            .unwrap()
            .into_iter()
            .filter(|&(p, _)| p == port)
            .map(|(_, inode)| inode)
            .collect();
        assert_eq!(found.len(), 1);
        assert!(socket_inodes(me).contains(&found[0]));
        let ns = netns_of(me).unwrap();
        let mut listeners = Listeners::default();
        let ports = sonde_config::PortSet::parse("t", &port.to_string()).unwrap();
        assert!(listeners.read(ns, me, &ports));
        assert_eq!(listeners.get(ns).unwrap().get(&found[0]), Some(&port));
        assert!(!listeners.read(ns, u32::MAX, &ports));
    }

    #[test]
    fn reading_stops_at_the_first_socket_not_listening() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let listen = |port: u16, inode: u64| {
            format!(
                "   0: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        let tw = "   2: 0100007F:1F90 0100007F:D2A4 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000\n";
        let mut text = String::from(header);
        text += &listen(80, 11);
        text += &listen(8080, 12);
        for _ in 0..5000 {
            text += tw;
        }
        // A listener after other sockets is never there in a real table: not read.
        text += &listen(9090, 13);
        /// A reader that counts how much of it was read.
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let mut reader = Counting(text.as_bytes(), 0);
        let mut out = Vec::new();
        read_listeners(&mut reader, &mut out);
        assert_eq!(out, vec![(80, 11), (8080, 12)]);
        assert!(
            reader.1 <= 16 << 10,
            "read {} of {} bytes",
            reader.1,
            text.len()
        );
        // A line split across reads is put together.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(7).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        read_listeners(Trickle(text.as_bytes()), &mut out);
        assert_eq!(out, vec![(80, 11), (8080, 12)]);
    }

    #[test]
    fn descendants_of_a_process() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while found.len() < 3 && Instant::now() < deadline {
            found = descendants(std::process::id(), 1000);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(found.len() >= 3, "{found:?}");
        assert!(descendants(std::process::id(), 1).len() == 1);
        for pid in found.iter().filter(|&&p| p != child.id()) {
            // SAFETY: plain kill(2) of a sleep this test started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_namespace_is_named_by_its_inode() {
        let me = std::process::id();
        let ns = netns_of(me).unwrap();
        let meta = fs::metadata(format!("/proc/{me}/ns/net")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ns);
        assert_eq!(netns_of(u32::MAX), None);
    }
}
