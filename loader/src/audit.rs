//! `sonde-loader --audit`: what the running loader and processor hold, read from `/proc`
//! (uid, capability sets with the reason for each capability, `NoNewPrivs`, seccomp), plus
//! the sandbox the processor reported when it connected (Landlock is not visible in `/proc`),
//! checked against the documented policy. The running loader keeps that report in a status
//! file next to the control socket (`sonde-status.json`, mode 0644, no secrets), opened at
//! start-up and rewritten in place (the loader can no longer create files there once it left
//! uid 0).

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use caps::Capability;
use serde::{Deserialize, Serialize};
use sonde_plumbing::proc_status::ProcStatus;
use sonde_schema::control::Hello;

use crate::privileges;

/// What `--audit` says about TLS capture: whether it is on, by which path, and what that path
/// needs at run time. `configured`: `ebpf.tls`; `active`: the uprobes loaded.
pub fn tls_capture(configured: bool, active: bool) -> String {
    match (configured, active) {
        (_, true) => "on: OpenSSL uprobes attached per selected process with uprobe-multi links \
            (BPF_LINK_CREATE on the two programs loaded at start-up); needs no run-time \
            capability (no CAP_SYS_ADMIN, no CAP_BPF/CAP_PERFMON after start-up); the run-time \
            seccomp policy allows BPF_LINK_CREATE"
            .into(),
        (true, false) => "off: ebpf.tls is on but this kernel has no uprobe-multi links or the \
            uprobes did not load (see the loader log); the run-time seccomp policy denies \
            BPF_LINK_CREATE (loader_no_attach)"
            .into(),
        (false, false) => "off (ebpf.tls: false); the run-time seccomp policy denies \
            BPF_LINK_CREATE (loader_no_attach)"
            .into(),
    }
}

/// What `--audit` says about process metrics (`application_process`): whether the loader
/// reads captured processes' `/proc` counters, and what that needs.
pub fn process_metrics(config: &sonde_config::Config) -> String {
    if config.processes.enable {
        format!(
            "on: every {}, /proc/<pid>/stat, status (Uid line) and io of captured processes only, \
             forwarded as numbers; io needs ptrace-read access (CAP_SYS_PTRACE, already held); \
             socket bytes from the PROC_NET_BYTES map (lookups and deletes); no added \
             capability or seccomp rule",
            sonde_config::format_duration(config.processes.interval)
        )
    } else {
        "off (metrics.features has no application_process)".into()
    }
}

/// What `--audit` says about network flow metrics (`network.enable`): the hooks, what they
/// need, what they cannot see.
pub fn network_flows(config: &sonde_config::Config) -> String {
    let n = &config.network;
    if n.enable {
        format!(
            "on: raw tracepoints net:netif_receive_skb (ingress) and net:net_dev_start_xmit \
             (egress), attached at start-up with CAP_BPF+CAP_PERFMON (no network capability: \
             no TC, no packet socket); packet headers only, in the kernel; every network \
             namespace is seen (the tracepoints are global); per-CPU LRU map of {} flows read \
             every {} (map lookups, deletes: no added seccomp rule); not seen: packets dropped \
             before netif_receive_skb (NIC, XDP drop/redirect), AF_XDP and kernel-bypass \
             traffic",
            n.cache_max_flows,
            sonde_config::format_duration(n.cache_active_timeout)
        )
    } else {
        "off (network.enable: false): the packet tracepoints are not attached".into()
    }
}

/// What `--audit` says about context propagation (`ebpf.context_propagation`): whether the
/// injection programs are attached, where, and the capability that took.
pub fn context_propagation(config: &sonde_config::Config, cgroup: Option<&Path>) -> String {
    match cgroup {
        Some(root) => format!(
            "on (headers): cgroup connect4/connect6 and sock_ops programs on {} and an sk_msg \
             program on the INJECT_SOCKS socket map, attached at start-up with CAP_NET_ADMIN \
             (held for this feature only, dropped with the other start-up capabilities); only \
             sockets that selected processes connect enter the map; a traceparent header is \
             added to their cleartext HTTP/1 requests that carry none",
            root.display()
        ),
        None => format!(
            "off (ebpf.context_propagation: {}): nothing attached, no socket map, CAP_NET_ADMIN \
             not needed",
            config.ebpf.context_propagation.as_str()
        ),
    }
}

/// The status file for a control socket path.
pub fn status_path(control_socket: &Path) -> PathBuf {
    control_socket.with_file_name("sonde-status.json")
}

/// What the loader records about itself and the connected processor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub loader_pid: u32,
    pub spawns_processor: bool,
    /// How HTTPS is captured, for `--audit` (see [`tls_capture`]).
    #[serde(default)]
    pub tls_capture: String,
    /// Process metrics, for `--audit` (see [`process_metrics`]).
    #[serde(default)]
    pub process_metrics: String,
    /// Network flow metrics, for `--audit` (see [`network_flows`]).
    #[serde(default)]
    pub network_flows: String,
    /// Context propagation, for `--audit` (see [`context_propagation`]).
    #[serde(default)]
    pub context_propagation: String,
    pub kept_capabilities: Vec<String>,
    pub processor: Option<ProcessorStatus>,
    /// Pids the processor asked to select that were not candidates (refused), since start.
    #[serde(default)]
    pub refused_selections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessorStatus {
    pub pid: u32,
    pub uid: u32,
    pub hello: Hello,
    /// The connected processor's executable and cgroup, as the loader read them when it
    /// accepted the connection (split deployments; None for the processor `sonde` started,
    /// which is connected through its own socketpair).
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// The status file as the running loader opened it at start-up.
static STATUS_FILE: OnceLock<(PathBuf, File)> = OnceLock::new();

/// Opens (creating, mode 0644) the status file the loader rewrites from then on; called
/// while the loader may still create files there. Not following a symbolic link.
pub fn open_status_file(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening the status file {}", path.display()))?;
    let _ = STATUS_FILE.set((path.to_path_buf(), file));
    Ok(())
}

impl Status {
    /// Rewrites the status file in place (through the file opened at start-up; opened now
    /// when there is none, as in unit tests). Readers retry a read that does not parse
    /// ([`read_status`]). Failures are logged only.
    pub fn write(&self, path: &Path) {
        let result = (|| -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            let write = |f: &File| {
                f.write_all_at(&bytes, 0)?;
                f.set_len(bytes.len() as u64)
            };
            match STATUS_FILE.get() {
                Some((opened, f)) if opened == path => write(f),
                _ => {
                    open_status_file(path).map_err(std::io::Error::other)?;
                    match STATUS_FILE.get() {
                        Some((opened, f)) if opened == path => write(f),
                        _ => Err(std::io::Error::other("another status file is open")),
                    }
                }
            }
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "writing the status file failed");
        }
    }
}

/// One process as `/proc/<pid>/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub comm: String,
    pub uid: String,
    pub gid: String,
    pub no_new_privs: bool,
    pub seccomp_mode: u32,
    pub seccomp_filters: u32,
    pub capabilities: CapabilityView,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapabilityView {
    /// Effective capabilities, each with why Sonde holds it (or that it should not).
    pub effective: Vec<(String, String)>,
    pub permitted: Vec<String>,
    pub bounding: Vec<String>,
    pub ambient: Vec<String>,
    pub inheritable: Vec<String>,
}

fn cap_names(mask: u64) -> Vec<Capability> {
    caps::all()
        .into_iter()
        .filter(|c| mask & (1u64 << c.index()) != 0)
        .collect()
}

fn names(caps: &[Capability]) -> Vec<String> {
    let mut v: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

fn view(pid: u32) -> Option<ProcessView> {
    let status = ProcStatus::of(pid).ok()?;
    let mut effective: Vec<(String, String)> = cap_names(status.cap_eff)
        .into_iter()
        .map(|c| {
            (
                c.to_string(),
                privileges::reason(c)
                    .unwrap_or("not needed by Sonde")
                    .to_string(),
            )
        })
        .collect();
    effective.sort();
    Some(ProcessView {
        pid,
        comm: status.name,
        uid: status.uid.to_string(),
        gid: status.gid.to_string(),
        no_new_privs: status.no_new_privs,
        seccomp_mode: status.seccomp.unwrap_or(0),
        seccomp_filters: status.seccomp_filters.unwrap_or(0),
        capabilities: CapabilityView {
            effective,
            permitted: names(&cap_names(status.cap_prm)),
            bounding: names(&cap_names(status.cap_bnd)),
            ambient: names(&cap_names(status.cap_amb)),
            inheritable: names(&cap_names(status.cap_inh)),
        },
    })
}

/// Whether `pid` has exited and waits to be reaped: a zombie holds no credentials,
/// capabilities or filters any more (its `/proc/<pid>/status` shows none), so it is no
/// running loader or processor.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    })
}

/// Pids whose command name is one of `comms` (this auditing process and zombies excluded).
fn pids_named(comms: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            *pid != me
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| comms.contains(&c.trim()))
                && !is_zombie(*pid)
        })
        .collect();
    pids.sort();
    pids
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// TLS capture as the loader recorded it ([`tls_capture`]); empty without a status file.
    pub tls_capture: String,
    /// Process metrics as the loader recorded it ([`process_metrics`]); empty without a
    /// status file.
    pub process_metrics: String,
    /// Network flow metrics as the loader recorded it ([`network_flows`]); empty without a
    /// status file.
    pub network_flows: String,
    /// Context propagation as the loader recorded it ([`context_propagation`]); empty
    /// without a status file.
    pub context_propagation: String,
    /// Selections the connected processors asked for outside the loader's candidates
    /// (refused), from the status file.
    pub refused_selections: u64,
    pub loaders: Vec<ProcessView>,
    pub processors: Vec<ProcessorView>,
    pub status_file: String,
    /// Every way the running pair departs from the documented policy; empty when it holds.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessorView {
    #[serde(flatten)]
    pub process: ProcessView,
    /// As the processor reported it at connect time; None when it is not the connected one.
    pub landlock: Option<bool>,
}

/// Builds the report for the pair using `control_socket`.
pub fn report(control_socket: &Path) -> Report {
    let path = status_path(control_socket);
    let status = read_status(&path);
    let mut problems = Vec::new();
    let loaders = loader_views();
    if loaders.is_empty() {
        problems.push("no sonde or sonde-loader process is running".into());
    }
    for l in &loaders {
        problems.extend(loader_problems(l, status.as_ref()));
    }
    let processors = processor_views(status.as_ref());
    if processors.is_empty() {
        problems.push("no sonde-processor process is running".into());
    }
    for p in &processors {
        problems.extend(processor_problems(p, &path));
    }
    Report {
        tls_capture: status
            .as_ref()
            .map(|s| s.tls_capture.clone())
            .unwrap_or_default(),
        process_metrics: status
            .as_ref()
            .map(|s| s.process_metrics.clone())
            .unwrap_or_default(),
        network_flows: status
            .as_ref()
            .map(|s| s.network_flows.clone())
            .unwrap_or_default(),
        context_propagation: status
            .as_ref()
            .map(|s| s.context_propagation.clone())
            .unwrap_or_default(),
        refused_selections: status.as_ref().map_or(0, |s| s.refused_selections),
        loaders,
        processors,
        status_file: path.display().to_string(),
        problems,
    }
}

/// The running loader's status file; None when it is missing or unreadable. The loader
/// rewrites it in place, so a read that does not parse is retried a few times.
fn read_status(path: &Path) -> Option<Status> {
    for _ in 0..20 {
        let bytes = std::fs::read(path).ok()?;
        if let Ok(s) = serde_json::from_slice(&bytes) {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// Every running loader (`sonde` in single-host mode, `sonde-loader` otherwise).
fn loader_views() -> Vec<ProcessView> {
    pids_named(&["sonde", "sonde-loader"])
        .into_iter()
        .filter_map(view)
        .collect()
}

/// Every running processor, with the Landlock state the connected one reported.
fn processor_views(status: Option<&Status>) -> Vec<ProcessorView> {
    pids_named(&["sonde-processor"])
        .into_iter()
        .filter_map(view)
        .map(|process| {
            let landlock = status
                .and_then(|s| s.processor.as_ref())
                .filter(|p| p.pid == process.pid)
                .and_then(|p| p.hello.sandbox.map(|s| s.landlock));
            ProcessorView { process, landlock }
        })
        .collect()
}

/// How a loader departs from its run-time capability set. Its mode comes from the status
/// file when that is this loader's, else from its name (`sonde` spawns the processor).
fn loader_problems(l: &ProcessView, status: Option<&Status>) -> Vec<String> {
    let spawns = status
        .filter(|s| s.loader_pid == l.pid)
        .map_or(l.comm == "sonde", |s| s.spawns_processor);
    let allowed = names(
        &privileges::runtime_capabilities(spawns)
            .into_iter()
            .collect::<Vec<_>>(),
    );
    let mut problems = Vec::new();
    // Single host leaves uid 0 after start-up (loader.user); the split loader runs as its
    // unit's user (a root-started sonde-loader is not a shipped configuration).
    if spawns && l.uid.split_whitespace().any(|u| u == "0") {
        problems.push(format!(
            "loader {} runs with uid 0 after start-up (uids {}; loader.user: root?)",
            l.pid, l.uid
        ));
    }
    if spawns && l.gid.split_whitespace().any(|g| g == "0") {
        problems.push(format!(
            "loader {} runs with gid 0 after start-up (gids {})",
            l.pid, l.gid
        ));
    }
    for (cap, _) in &l.capabilities.effective {
        if !allowed.contains(cap) {
            problems.push(format!(
                "loader {} holds {cap}, which its run-time phase does not need",
                l.pid
            ));
        }
    }
    for cap in &l.capabilities.bounding {
        if !allowed.contains(cap) {
            problems.push(format!("loader {} keeps {cap} in its bounding set", l.pid));
        }
    }
    if !l.capabilities.ambient.is_empty() {
        problems.push(format!("loader {} has ambient capabilities", l.pid));
    }
    problems
}

/// How a processor departs from its sandbox: uid 0, any capability, no `NO_NEW_PRIVS`,
/// fewer than its two seccomp filters, or Landlock off or unreported.
fn processor_problems(p: &ProcessorView, status_path: &Path) -> Vec<String> {
    let pid = p.process.pid;
    let c = &p.process.capabilities;
    let mut problems = Vec::new();
    if p.process.uid.split_whitespace().any(|u| u == "0") {
        problems.push(format!("processor {pid} runs with uid 0"));
    }
    if !(c.effective.is_empty()
        && c.permitted.is_empty()
        && c.ambient.is_empty()
        && c.inheritable.is_empty())
    {
        problems.push(format!("processor {pid} holds capabilities"));
    }
    if !p.process.no_new_privs {
        problems.push(format!("processor {pid} lacks NO_NEW_PRIVS"));
    }
    if p.process.seccomp_mode != 2 || p.process.seccomp_filters < 2 {
        problems.push(format!(
            "processor {pid} is not under its seccomp filters (Seccomp {}, filters {})",
            p.process.seccomp_mode, p.process.seccomp_filters
        ));
    }
    match p.landlock {
        Some(true) => {}
        Some(false) => problems.push(format!(
            "processor {pid} runs without Landlock (processor.landlock: off)"
        )),
        None => problems.push(format!(
            "processor {pid}: no Landlock report (not the connected processor, or no status file at {})",
            status_path.display()
        )),
    }
    problems
}

/// Renders the report for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let mut process = |role: &str, p: &ProcessView, landlock: Option<Option<bool>>| {
        out += &format!(
            "{role} pid {} ({})\n  uid {}  gid {}\n  no_new_privs {}  seccomp mode {} with {} filter(s)\n",
            p.pid, p.comm, p.uid, p.gid, p.no_new_privs, p.seccomp_mode, p.seccomp_filters
        );
        if let Some(l) = landlock {
            out += &format!(
                "  landlock {}\n",
                match l {
                    Some(true) => "enforced (reported by the processor at connect)",
                    Some(false) => "OFF (processor.landlock: off)",
                    None => "unknown (no report)",
                }
            );
        }
        if p.capabilities.effective.is_empty() {
            out += "  effective capabilities: none\n";
        } else {
            out += "  effective capabilities:\n";
            for (cap, why) in &p.capabilities.effective {
                out += &format!("    {cap}: {why}\n");
            }
        }
        for (set, caps) in [
            ("permitted", &p.capabilities.permitted),
            ("bounding", &p.capabilities.bounding),
            ("ambient", &p.capabilities.ambient),
            ("inheritable", &p.capabilities.inheritable),
        ] {
            out += &format!(
                "  {set}: {}\n",
                if caps.is_empty() {
                    "none".to_string()
                } else {
                    caps.join(" ")
                }
            );
        }
    };
    for l in &report.loaders {
        process("loader", l, None);
    }
    for p in &report.processors {
        process("processor", &p.process, Some(p.landlock));
    }
    if !report.tls_capture.is_empty() {
        out += &format!("TLS capture: {}\n", report.tls_capture);
    }
    if !report.process_metrics.is_empty() {
        out += &format!("process metrics: {}\n", report.process_metrics);
    }
    if !report.network_flows.is_empty() {
        out += &format!("network flows: {}\n", report.network_flows);
    }
    if !report.context_propagation.is_empty() {
        out += &format!("context propagation: {}\n", report.context_propagation);
    }
    if report.refused_selections > 0 {
        out += &format!(
            "refused selections: {} (the processor asked to capture processes outside the loader's candidates)\n",
            report.refused_selections
        );
    }
    if report.problems.is_empty() {
        out += "verdict: the running pair matches the documented least-privilege policy\n";
    } else {
        out += "verdict: PROBLEMS\n";
        for p in &report.problems {
            out += &format!("  - {p}\n");
        }
    }
    out
}
