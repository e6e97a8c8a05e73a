//! sonde-loader: the small privileged half of Sonde. It mounts tracefs if missing, loads and
//! attaches the kernel programs, drops to its run-time capabilities, keeps the PID filter in step
//! with the configured selection, and hands the ring buffer fd plus process metadata to an
//! authenticated processor over the control socket. It never parses payload bytes.
//!
//! The start-up sequence, in order:
//! 1. read configuration; 2. mount tracefs if missing; 3. load + attach probes;
//! 4. bind the control socket; 5. drop capabilities; 6. run the event loop.

pub mod audit;
pub mod cli;
pub mod identity;
pub mod control;
pub mod kernel_layout;
pub mod privileges;
pub mod probes;
pub mod processor_config;
pub mod sandbox;
pub mod selection;
pub mod supervisor;

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sonde_config::Config;
use sonde_schema::control::{LoaderMessage, ProcessRecord, ProcessorMessage};
use sonde_schema::{PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent};
use tracing::{debug, info, warn};

use crate::{
    control::{ControlListener, PeerPolicy},
    identity::{ProcessorIdentity, resolve_processor},
    probes::{ProbeSizes, Probes},
    selection::Selector,
    supervisor::{ProcessorSpec, Supervisor},
};

/// How the loader was started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Single-host mode: start and supervise `sonde-processor` as the configured user.
    pub spawn_processor: bool,
    /// The configuration file's text, handed unchanged to the processor `sonde` starts (on
    /// its standard input: it may not be allowed to read the file).
    pub processor_config: String,
}

/// Capabilities the loader needs in its effective set at start-up; their absence is reported
/// by name before anything is attempted.
const STARTUP_CAPABILITIES: [caps::Capability; 2] =
    [caps::Capability::CAP_BPF, caps::Capability::CAP_PERFMON];

fn check_startup_capabilities() -> Result<()> {
    let effective =
        caps::read(None, caps::CapSet::Effective).context("reading effective capabilities")?;
    let missing: Vec<String> = STARTUP_CAPABILITIES
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "sonde-loader lacks {} (needed to load and attach the kernel programs); run it as root or grant them (systemd AmbientCapabilities=, Kubernetes capabilities.add)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Runs the loader until SIGINT/SIGTERM.
pub fn run(config: Config, options: RunOptions) -> Result<()> {
    check_startup_capabilities()?;
    if !config.has_selection() {
        warn!(
            "no process selected: set open_port / BEYLA_OPEN_PORT, auto_target_exe / BEYLA_AUTO_TARGET_EXE or target_pids"
        );
    }
    let identity = resolve_processor(&config.processor.user, config.processor.group.as_deref())?;
    if options.spawn_processor && matches!(identity, ProcessorIdentity::AnyUserOfGroup { .. }) {
        bail!(
            "processor.user \"*\" (any user of processor.group) is for a processor started separately; single-host mode needs a user to start it as"
        );
    }

    if kernel_layout::ensure_tracefs()? {
        info!(path = kernel_layout::TRACEFS, "mounted tracefs");
    }
    let mut probes = Probes::load(&ProbeSizes {
        ring_buffer_bytes: config.ebpf.ring_buffer_bytes,
        max_connections: config.ebpf.max_connections,
    })
    .context("loading kernel programs")?;
    info!(
        ring_buffer_bytes = config.ebpf.ring_buffer_bytes,
        max_connections = config.ebpf.max_connections,
        "kernel programs attached"
    );

    let listener = ControlListener::bind(&config.control_socket, identity)?;
    let policy = match identity {
        ProcessorIdentity::User { uid, gid } => {
            let mut uids = vec![uid];
            uids.extend(&config.processor.allowed_uids);
            PeerPolicy {
                uids: Some(uids),
                gid: config.processor.group.as_ref().map(|_| gid),
            }
        }
        ProcessorIdentity::AnyUserOfGroup { gid } => PeerPolicy {
            uids: None,
            gid: Some(gid),
        },
    };
    info!(socket = %config.control_socket.display(), allowed_uids = ?policy.uids, allowed_gid = ?policy.gid, "control socket listening");

    let keep = privileges::runtime_capabilities(options.spawn_processor);
    let kept = privileges::drop_to(&keep).context("dropping capabilities")?;
    info!(capabilities = ?kept, "dropped to run-time capabilities");

    sonde_plumbing::stop::install()?;
    let filters = sandbox::apply_runtime_policy(options.spawn_processor)
        .context("installing the run-time seccomp policy")?;
    info!(?filters, "run-time seccomp policy installed");

    let mut supervisor = options.spawn_processor.then(|| {
        let binary = processor_config::processor_binary(&config);
        let args: Vec<std::ffi::OsString> = vec![
            "--control".into(),
            config.control_socket.clone().into(),
            "--config".into(),
            "-".into(),
        ];
        let (uid, gid) = match identity {
            ProcessorIdentity::User { uid, gid } => (uid, gid),
            // Refused above for single-host mode.
            ProcessorIdentity::AnyUserOfGroup { gid } => (u32::MAX, gid),
        };
        Supervisor::new(ProcessorSpec {
            binary,
            args,
            uid,
            gid,
            env: supervisor::processor_env(),
            config_yaml: options.processor_config.clone(),
        })
    });

    let mut state = LoaderState {
        config: &config,
        selected: BTreeMap::new(),
        narrowed_out: Default::default(),
        client: None,
        status: audit::Status {
            loader_pid: std::process::id(),
            spawns_processor: options.spawn_processor,
            kept_capabilities: kept.clone(),
            processor: None,
        },
    };
    state
        .status
        .write(&audit::status_path(&config.control_socket));
    state.rescan(&mut probes);

    let mut last_rescan = Instant::now();
    let mut last_stats = Instant::now();
    let stats_every = Duration::from_secs(u64::from(config.stats_interval_secs));
    while !sonde_plumbing::stop::requested() {
        if let Some(s) = supervisor.as_mut() {
            s.tick();
        }
        let (listen_ready, client_ready, proc_ready) = {
            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(probes.proc_events.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &state.client {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                fds.get(2).is_some_and(ready),
                ready(&fds[1]),
            )
        };
        if listen_ready {
            state.accept(&listener, &policy, &probes);
        }
        if client_ready {
            // After its hello the processor may only narrow the capture or say goodbye.
            match sonde_schema::channel::recv(
                state.client.as_ref().map(|c| c.as_fd()).expect("client"),
                0,
            ) {
                Err(e) => {
                    info!(
                        reason = format!("{:#}", anyhow::Error::new(e)),
                        "processor disconnected"
                    );
                    state.disconnect();
                }
                Ok(datagram) => match ProcessorMessage::decode(&datagram) {
                    Ok(ProcessorMessage::Narrow(pids)) => state.narrow(&mut probes, &pids),
                    Ok(ProcessorMessage::Goodbye(reason)) => {
                        info!(reason, "processor said goodbye");
                        state.disconnect();
                    }
                    Ok(ProcessorMessage::Hello(_)) => {
                        warn!(
                            error = "a second hello",
                            "processor sent an unexpected message; closing its connection"
                        );
                        state.disconnect();
                    }
                    Err(e) => {
                        warn!(
                            error = format!("{e:#}"),
                            "processor sent an unexpected message; closing its connection"
                        );
                        state.disconnect();
                    }
                },
            }
        }
        if proc_ready {
            state.drain_proc_events(&mut probes);
        }
        if last_rescan.elapsed() >= Duration::from_secs(2) {
            state.rescan(&mut probes);
            last_rescan = Instant::now();
        }
        if last_stats.elapsed() >= stats_every {
            let counters = probes.counters();
            info!(counters = ?counters, restarts = supervisor.as_ref().map_or(0, |s| s.restarts), "kernel counters");
            state.send_stats(&counters);
            last_stats = Instant::now();
        }
    }
    info!("stopping");
    if let Some(s) = supervisor.as_mut() {
        s.stop();
    }
    let counters = probes.counters();
    info!(counters = ?counters, "final kernel counters");
    Ok(())
}

struct LoaderState<'a> {
    config: &'a Config,
    selected: BTreeMap<u32, ProcessRecord>,
    /// Processes the processor asked to stop capturing; they stay out until they exit.
    narrowed_out: std::collections::BTreeSet<u32>,
    client: Option<OwnedFd>,
    status: audit::Status,
}

impl LoaderState<'_> {
    /// Forgets the processor connection (and its entry in the status file).
    fn disconnect(&mut self) {
        self.client = None;
        if self.status.processor.take().is_some() {
            self.status
                .write(&audit::status_path(&self.config.control_socket));
        }
    }

    fn accept(&mut self, listener: &ControlListener, policy: &PeerPolicy, probes: &Probes) {
        let (conn, pid, uid) = match listener.accept(policy) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                warn!(error = format!("{e:#}"), "control connection refused");
                return;
            }
        };
        let result = (|| -> Result<()> {
            let hello = control::read_hello(conn.as_fd())?;
            let ring = probes.events_fd()?;
            control::send_welcome(conn.as_fd(), ring.as_fd(), probes.ring_buffer_bytes)?;
            for meta in self.selected.values() {
                LoaderMessage::ProcessAdded(meta.clone()).send(conn.as_fd(), &[])?;
            }
            info!(
                pid,
                uid,
                agent = hello.agent,
                landlock = ?hello.sandbox.map(|s| s.landlock),
                seccomp_filters = ?hello.sandbox.map(|s| s.seccomp_filters),
                processes = self.selected.len(),
                "processor connected; ring buffer handed over"
            );
            self.status.processor = Some(audit::ProcessorStatus { pid, uid, hello });
            self.status
                .write(&audit::status_path(&self.config.control_socket));
            Ok(())
        })();
        match result {
            Ok(()) => {
                if self.client.replace(conn).is_some() {
                    info!("replaced the previous processor connection");
                }
            }
            Err(e) => warn!(
                pid,
                uid,
                error = format!("{e:#}"),
                "processor handshake failed"
            ),
        }
    }

    fn with_client(
        &mut self,
        what: &str,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> Result<()>,
    ) {
        let Some(c) = &self.client else { return };
        if let Err(e) = f(c.as_fd()) {
            warn!(
                error = format!("{e:#}"),
                what, "control send failed; dropping processor connection"
            );
            self.disconnect();
        }
    }

    fn add(&mut self, probes: &mut Probes, meta: ProcessRecord) {
        if self.selected.contains_key(&meta.pid) || self.narrowed_out.contains(&meta.pid) {
            return;
        }
        // Metadata goes out before the pid enters the filter, so the processor always knows a
        // process before its first event.
        let added = LoaderMessage::ProcessAdded(meta.clone());
        self.with_client("process added", |c| Ok(added.send(c, &[])?));
        if let Err(e) = probes.select_pid(meta.pid) {
            warn!(pid = meta.pid, error = %e, "cannot add pid to the kernel filter");
            return;
        }
        info!(
            pid = meta.pid,
            exe = meta.exe_path,
            service = meta.service_name,
            reason = meta.reason,
            "process selected"
        );
        self.selected.insert(meta.pid, meta);
    }

    /// The processor's request to stop capturing `pids`: honoured for captured processes only;
    /// anything else is refused and logged, so a processor can never widen the capture.
    fn narrow(&mut self, probes: &mut Probes, pids: &[u32]) {
        for &pid in pids {
            if self.selected.contains_key(&pid) {
                self.narrowed_out.insert(pid);
                self.remove(probes, pid);
                info!(pid, "capture narrowed at the processor's request");
            } else {
                warn!(
                    pid,
                    "refused the processor's narrowing request: pid is not captured (the processor can only narrow)"
                );
            }
        }
    }

    fn remove(&mut self, probes: &mut Probes, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            probes.unselect_pid(pid);
            let removed = LoaderMessage::ProcessRemoved(pid);
            self.with_client("process removed", |c| Ok(removed.send(c, &[])?));
            info!(pid, "process deselected");
        }
    }

    fn rescan(&mut self, probes: &mut Probes) {
        let now = Selector::new(self.config).scan();
        let gone: Vec<u32> = self
            .selected
            .keys()
            .filter(|p| !now.contains_key(p))
            .copied()
            .collect();
        for pid in gone {
            // A selected process stays selected while it lives (e.g. a fork of a port owner
            // that closed its listener copy); only exit removes it.
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.remove(probes, pid);
            }
        }
        for (_, meta) in now {
            self.add(probes, meta);
        }
    }

    fn drain_proc_events(&mut self, probes: &mut Probes) {
        let mut events = Vec::new();
        while let Some(item) = probes.proc_events.next() {
            if item.len() >= std::mem::size_of::<ProcEvent>() {
                // SAFETY: ProcEvent is repr(C) plain integers and the sample holds enough bytes.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcEvent>()) });
            }
        }
        let mut rescan = false;
        for ev in events {
            debug!(?ev, "process event");
            match ev.kind {
                PROC_EXIT => {
                    self.narrowed_out.remove(&ev.pid);
                    self.remove(probes, ev.pid);
                }
                PROC_EXEC => {
                    if let Some(meta) = Selector::new(self.config).check(ev.pid) {
                        self.add(probes, meta);
                    } else if self.selected.contains_key(&ev.pid) {
                        // A selected process exec'd something the selection does not cover.
                        self.remove(probes, ev.pid);
                    }
                }
                PROC_FORK => {
                    let child = ev.child_pid;
                    if selection::is_process(child)
                        && let Some(parent) = self.selected.get(&ev.pid).cloned()
                    {
                        let meta = ProcessRecord {
                            pid: child,
                            reason: format!("child of {}", ev.pid),
                            ..parent
                        };
                        self.add(probes, meta);
                    }
                }
                PROC_LISTEN => rescan |= self.config.open_port.is_some(),
                _ => {}
            }
        }
        if rescan {
            self.rescan(probes);
        }
    }

    fn send_stats(&mut self, counters: &[(&'static str, u64)]) {
        let stats =
            LoaderMessage::KernelStats(counters.iter().map(|&(n, v)| (n.to_string(), v)).collect());
        self.with_client("kernel stats", |c| Ok(stats.send(c, &[])?));
    }
}
