//! The capture state the serve loop keeps in step with the machine: which processes are
//! selected (and so in the kernel PID filter), which ones the processor narrowed out, the
//! connected processor, and the status file `--audit` reads. Every change to the selection is
//! told to the processor; the processor can only narrow it.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use anyhow::Result;
use sonde_config::Config;
use sonde_schema::control::{LoaderMessage, ProcessRecord, ProcessorMessage};
use sonde_schema::{PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent};
use tracing::{debug, info, warn};

use crate::{
    audit,
    control::{self, ControlListener, PeerPolicy},
    probes::Probes,
    selection::{self, Selector},
};

/// The selected processes and the processor they are reported to.
pub struct Capture<'a> {
    config: &'a Config,
    selected: BTreeMap<u32, ProcessRecord>,
    /// Processes the processor asked to stop capturing; they stay out until they exit.
    narrowed_out: BTreeSet<u32>,
    client: Option<OwnedFd>,
    status: audit::Status,
    status_path: PathBuf,
}

impl<'a> Capture<'a> {
    /// Nothing selected yet and no processor; `status` describes this loader.
    pub fn new(config: &'a Config, status: audit::Status) -> Self {
        Capture {
            config,
            selected: BTreeMap::new(),
            narrowed_out: BTreeSet::new(),
            client: None,
            status,
            status_path: audit::status_path(&config.control_socket),
        }
    }

    /// Replaces the status file with the current status.
    pub fn write_status(&self) {
        self.status.write(&self.status_path);
    }

    /// The connected processor's socket, if any.
    pub fn processor(&self) -> Option<BorrowedFd<'_>> {
        self.client.as_ref().map(|c| c.as_fd())
    }

    /// Accepts a pending connection, authenticates it, takes its hello and hands it the ring
    /// buffer and the selected processes; it then replaces any previous processor.
    pub fn accept(&mut self, listener: &ControlListener, policy: &PeerPolicy, probes: &Probes) {
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
            self.write_status();
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

    /// Reads one message from the connected processor. After its hello the processor may
    /// only narrow the capture or say goodbye; anything else closes its connection.
    pub fn on_processor_message(&mut self, probes: &mut Probes) {
        let Some(client) = self.processor() else {
            return;
        };
        let datagram = match sonde_schema::channel::recv(client, 0) {
            Ok(datagram) => datagram,
            Err(e) => {
                info!(
                    reason = format!("{:#}", anyhow::Error::new(e)),
                    "processor disconnected"
                );
                return self.disconnect();
            }
        };
        let unexpected = match ProcessorMessage::decode(&datagram) {
            Ok(ProcessorMessage::Narrow(pids)) => return self.narrow(probes, &pids),
            Ok(ProcessorMessage::Goodbye(reason)) => {
                info!(reason, "processor said goodbye");
                return self.disconnect();
            }
            Ok(ProcessorMessage::Hello(_)) => "a second hello".to_string(),
            Err(e) => format!("{e:#}"),
        };
        warn!(
            error = unexpected,
            "processor sent an unexpected message; closing its connection"
        );
        self.disconnect();
    }

    /// Forgets the processor connection (and its entry in the status file).
    fn disconnect(&mut self) {
        self.client = None;
        if self.status.processor.take().is_some() {
            self.write_status();
        }
    }

    /// Sends to the processor, if one is connected; a failed send drops the connection.
    fn with_client(&mut self, what: &str, f: impl FnOnce(BorrowedFd<'_>) -> Result<()>) {
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

    /// Scans `/proc` for the processes the configuration selects: new ones are added, exited
    /// ones removed.
    pub fn rescan(&mut self, probes: &mut Probes) {
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

    /// Applies the kernel's process notices (exit, exec, fork, listen) waiting in the ring.
    pub fn drain_proc_events(&mut self, probes: &mut Probes) {
        let mut rescan = false;
        for ev in read_proc_events(probes) {
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

    /// Forwards the kernel programs' counters to the processor.
    pub fn send_stats(&mut self, counters: &[(&'static str, u64)]) {
        let stats =
            LoaderMessage::KernelStats(counters.iter().map(|&(n, v)| (n.to_string(), v)).collect());
        self.with_client("kernel stats", |c| Ok(stats.send(c, &[])?));
    }
}

/// Takes every process notice waiting in the ring (all of them first: handling one changes
/// the probes).
fn read_proc_events(probes: &mut Probes) -> Vec<ProcEvent> {
    let mut events = Vec::new();
    while let Some(item) = probes.proc_events.next() {
        if item.len() >= std::mem::size_of::<ProcEvent>() {
            // SAFETY: ProcEvent is repr(C) plain integers and the sample holds enough bytes.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcEvent>()) });
        }
    }
    events
}
