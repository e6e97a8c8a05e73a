//! The capture state the serve loop keeps in step with the machine: which processes are
//! selected (and so in the kernel PID filter), which ones the processor narrowed out, the
//! connected processor, and the status file `--audit` reads. Every change to the selection is
//! told to the processor; the processor can only narrow it, or choose among the *candidates*
//! (processes in a pod's cgroup matching every non-Kubernetes field of a selector with `k8s_*`
//! fields) the loader announces: a candidate is not captured until the processor selects
//! it, and a selection naming anything else is refused, logged (aggregated) and counted in
//! the status file. The configuration stays the outer bound of what is captured.
//!
//! Processes are tracked by (pid, start time), never by pid alone: a pid whose start time
//! changed belongs to a new process, which is evaluated from scratch (see `selection`). The
//! kernel clears a pid's filter byte when its process exits and when a new task takes the pid,
//! so a late or lost notice cannot leave a recycled pid captured; a lost notice (the process
//! ring's loss counter moved) triggers a full resynchronisation from `/proc`.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::poll::PollFlags;
use sonde_config::Config;
use sonde_schema::channel::ChannelError;
use sonde_schema::control::{
    CandidateRecord, ControlError, LoaderMessage, ProcessRecord, ProcessorMessage,
};
use sonde_schema::{PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent};
use tracing::{debug, info, warn};

use crate::{
    audit,
    conn::{Conn, ConnError, MAX_READS_PER_WAKE},
    consumer::{Check, ConsumerGuard},
    control::{self, ControlListener, Peer, PeerPolicy},
    probes::Probes,
    refusals::Refusals,
    selection::{self, Candidate, Fate, Selector},
};

/// How long a connection may stay without saying hello.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);
/// Connections waiting for their hello at once; a newer one displaces the oldest.
pub const MAX_PENDING: usize = 4;

/// Where a connection came from: the socketpair of the processor this loader started (single
/// host), or the control socket (split deployments, peer checked by [`ControlListener`]).
#[derive(Debug, Clone)]
struct Origin {
    peer: Peer,
    spawned: bool,
}

impl Origin {
    fn describe(&self) -> String {
        format!(
            "pid {} uid {} gid {}{}",
            self.peer.pid,
            self.peer.uid,
            self.peer.gid,
            if self.spawned {
                " (started by sonde)"
            } else {
                ""
            }
        )
    }
}

/// A connection that has not said hello yet.
struct Pending {
    conn: Conn,
    origin: Origin,
    deadline: Instant,
}

/// The processor the ring buffer was handed to.
struct Client {
    conn: Conn,
    origin: Origin,
}

/// The selected processes and the processor they are reported to.
pub struct Capture<'a> {
    config: &'a Config,
    /// Selected processes by pid, each with the start time of the process selected.
    selected: BTreeMap<u32, Selected>,
    /// Processes (pid, start time) the processor asked to stop capturing; they stay out until
    /// they exit.
    narrowed_out: BTreeSet<(u32, u64)>,
    /// Processes the processor may select (selectors with Kubernetes fields), captured or not.
    candidates: selection::CandidateSet,
    /// Start time of the process each configured pid named when first seen.
    pinned: BTreeMap<u32, u64>,
    /// The process ring's loss counter when last checked.
    proc_events_lost: u64,
    ticks_per_sec: u64,
    /// The one live processor connection.
    client: Option<Client>,
    /// Connections waiting for their hello (at most `MAX_PENDING`).
    pending: Vec<Pending>,
    refusals: Refusals,
    /// A processor this loader started that broke the protocol: to be killed (and restarted).
    violator: Option<u32>,
    /// Listening sockets on covered ports, per network namespace, as last read.
    listeners: selection::Listeners,
    /// Every port a selector in force names (`Config::listen_ports`).
    listen_ports: Option<sonde_config::PortSet>,
    /// Network namespaces a `listen()` notice named since their last reading, with the
    /// processes that listened there (to be checked once the namespace is read).
    dirty_netns: BTreeMap<u64, BTreeSet<u32>>,
    /// Whether the next `rescan` walks all of `/proc` (at start-up, and after lost notices).
    full_scan_owed: bool,
    status: audit::Status,
    status_path: PathBuf,
}

/// A namespace's listening sockets are read at most this often for `listen()` notices; a
/// listen loop on a covered port waits (the loop ticks every 200 ms), it is not lost. Reading
/// another namespace's table walks the host's whole established hash (~14 ms per table with
/// 30,000 TIME_WAIT sockets on the host, measured), so this bounds a listen loop's cost.
const NETNS_REREAD_EVERY: Duration = Duration::from_millis(500);

/// Descendants of a listener looked at after its `listen()` notice, at most.
const MAX_DESCENDANTS: usize = 4096;

impl<'a> Capture<'a> {
    /// Nothing selected yet and no processor; `status` describes this loader.
    pub fn new(config: &'a Config, status: audit::Status) -> Self {
        Capture {
            config,
            selected: BTreeMap::new(),
            narrowed_out: BTreeSet::new(),
            candidates: selection::CandidateSet::default(),
            pinned: BTreeMap::new(),
            proc_events_lost: 0,
            ticks_per_sec: selection::clock_ticks(),
            client: None,
            pending: Vec::new(),
            refusals: Refusals::new(),
            violator: None,
            listeners: selection::Listeners::default(),
            listen_ports: config.listen_ports(),
            dirty_netns: BTreeMap::new(),
            full_scan_owed: true,
            status,
            status_path: audit::status_path(&config.control_socket),
        }
    }

    /// Replaces the status file with the current status.
    pub fn write_status(&self) {
        self.status.write(&self.status_path);
    }

    /// The connections to wait on, with the events wanted: pending ones first, then the
    /// processor's. `service` takes the results in the same order.
    pub fn watched(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds: Vec<(BorrowedFd<'_>, PollFlags)> = self
            .pending
            .iter()
            .map(|p| (p.conn.as_fd(), PollFlags::POLLIN))
            .collect();
        if let Some(c) = &self.client {
            let mut flags = PollFlags::POLLIN;
            if c.conn.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push((c.conn.as_fd(), flags));
        }
        fds
    }

    /// Accepts what waits on the control socket (split deployments), at most `MAX_PENDING` + 1
    /// per call: each connection passes the peer checks or is refused; at most `MAX_PENDING`
    /// wait for their hello, the oldest making room for a newer one.
    pub fn accept(&mut self, listener: &ControlListener, policy: &PeerPolicy) {
        for _ in 0..=MAX_PENDING {
            let (fd, peer) = match listener.accept(policy) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(refusal) => {
                    self.refusals.connection(refusal.reason, refusal.detail);
                    continue;
                }
            };
            let origin = Origin {
                peer,
                spawned: false,
            };
            // Full: the oldest waiting connection makes room. A processor says hello as soon as
            // it connects, so silent connections cannot keep it out by filling the slots.
            if self.pending.len() >= MAX_PENDING {
                let oldest = self.pending.remove(0);
                let why = "displaced by a newer connection before its hello";
                control::refuse(oldest.conn.as_fd(), why);
                self.refusals.connection(why, oldest.origin.describe());
            }
            self.pending.push(Pending {
                conn: Conn::new(fd),
                origin,
                deadline: Instant::now() + HELLO_DEADLINE,
            });
        }
    }

    /// Single host: the loader's end of the socketpair of the processor just started (`pid`).
    /// The previous processor is gone (the supervisor starts one only after reaping the last),
    /// so whatever was connected for it is dropped.
    pub fn adopt_spawned(&mut self, fd: OwnedFd, pid: u32) {
        if self.client.is_some() {
            self.disconnect(false);
        }
        self.pending.clear();
        self.pending.push(Pending {
            conn: Conn::new(fd),
            origin: Origin {
                peer: Peer {
                    pid,
                    uid: 0,
                    gid: 0,
                    exe: None,
                    cgroup: None,
                },
                spawned: true,
            },
            deadline: Instant::now() + HELLO_DEADLINE * 5,
        });
    }

    /// The processor this loader started that must be killed for breaking the protocol.
    /// The pid of a processor this loader started that has completed its handshake.
    pub fn spawned_connected(&self) -> Option<u32> {
        self.client
            .as_ref()
            .filter(|c| c.origin.spawned)
            .map(|c| c.origin.peer.pid)
    }

    pub fn take_violator(&mut self) -> Option<u32> {
        self.violator.take()
    }

    /// Handles what `poll` reported for `watched()` (same order), then the deadlines: hellos,
    /// a processor that stopped reading, and the aggregated refusal log.
    pub fn service(
        &mut self,
        probes: &mut Probes,
        consumer: &ConsumerGuard,
        ready: &[PollFlags],
        now: Instant,
    ) {
        let pending_ready: Vec<bool> = (0..self.pending.len())
            .map(|i| ready.get(i).is_some_and(|r| !r.is_empty()))
            .collect();
        let client_ready = ready.get(self.pending.len()).copied();
        // The processor's own traffic first: it may free the slot a pending hello wants.
        if let Some(r) = client_ready {
            if r.intersects(PollFlags::POLLOUT) {
                self.flush_client(now);
            }
            if r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.on_processor_messages(probes, now);
            }
        }
        if let Some(c) = &self.client
            && let Err(e) = c.conn.check_deadline(now)
        {
            self.drop_client(&e);
        }
        for i in (0..pending_ready.len()).rev() {
            if pending_ready[i] {
                let p = self.pending.remove(i);
                self.on_pending(p, probes, consumer, now);
            }
        }
        let (expired, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now >= p.deadline);
        self.pending = waiting;
        for p in expired {
            let why = "no hello before the deadline";
            control::refuse(p.conn.as_fd(), why);
            self.refusals.connection(why, p.origin.describe());
            if p.origin.spawned {
                self.violator = Some(p.origin.peer.pid);
            }
        }
        self.refusals.flush(now, false);
    }

    /// Logs the aggregated refusals now (at shutdown).
    pub fn flush_log(&mut self) {
        self.refusals.flush(Instant::now(), true);
    }

    /// A pending connection has something: its hello, or its end.
    fn on_pending(
        &mut self,
        mut p: Pending,
        probes: &mut Probes,
        consumer: &ConsumerGuard,
        now: Instant,
    ) {
        let datagram = match p.conn.recv(now) {
            Ok(Some(d)) => d,
            Ok(None) => return self.pending.push(p),
            Err(e) => {
                self.refusals.connection(
                    "closed before its hello",
                    format!("{} ({e})", p.origin.describe()),
                );
                return;
            }
        };
        let hello = match control::decode_hello(p.conn.as_fd(), &datagram) {
            Ok(h) => h,
            Err(e) => {
                warn!(
                    peer = p.origin.describe(),
                    error = format!("{e:#}"),
                    "processor handshake failed"
                );
                if p.origin.spawned {
                    self.violator = Some(p.origin.peer.pid);
                }
                return;
            }
        };
        // One live connection: a second hello is refused, never a replacement.
        if let Some(live) = &self.client {
            let why = "a processor is already connected";
            control::refuse(p.conn.as_fd(), why);
            self.refusals.connection(
                why,
                format!(
                    "{} (live: pid {})",
                    p.origin.describe(),
                    live.origin.peer.pid
                ),
            );
            return;
        }
        let result = (|| -> anyhow::Result<()> {
            match consumer.check_and_reset()? {
                Check::Kept { pending_bytes } => {
                    debug!(pending_bytes, "ring buffer consumer position checked")
                }
                Check::Reset { from, to } => warn!(
                    from,
                    to,
                    "ring buffer consumer position was not one the kernel left; reset to the producer position"
                ),
            }
            let ring = probes.events_fd()?;
            control::send_welcome(p.conn.as_fd(), ring.as_fd(), probes.ring_buffer_bytes)?;
            for s in self.selected.values() {
                p.conn
                    .send(&LoaderMessage::ProcessAdded(s.record.clone()), now)?;
            }
            for c in self.candidates.iter() {
                p.conn.send(&announce(c), now)?;
            }
            Ok(())
        })();
        let origin = p.origin.clone();
        if let Err(e) = result {
            warn!(
                peer = origin.describe(),
                error = format!("{e:#}"),
                "processor handshake failed"
            );
            if origin.spawned {
                self.violator = Some(origin.peer.pid);
            }
            return;
        }
        // The injected trace flags follow this processor's sampler from now on; one that
        // states none (older) gets every trace marked sampled, not a predecessor's rule.
        if let Some(inject) = probes.inject.as_mut()
            && let Err(e) = inject.set_sampled_below(hello.inject_sampled_below)
        {
            warn!(error = %e, "injected traceparent flags keep the previous rule: the sampling rule could not be written");
        }
        info!(
            pid = origin.peer.pid,
            uid = origin.peer.uid,
            spawned = origin.spawned,
            exe = origin.peer.exe,
            cgroup = origin.peer.cgroup,
            agent = hello.agent,
            landlock = ?hello.sandbox.map(|s| s.landlock),
            seccomp_filters = ?hello.sandbox.map(|s| s.seccomp_filters),
            processes = self.selected.len(),
            "processor connected; ring buffer handed over"
        );
        self.status.processor = Some(audit::ProcessorStatus {
            pid: origin.peer.pid,
            uid: origin.peer.uid,
            hello,
            exe: origin.peer.exe.clone(),
            cgroup: origin.peer.cgroup.clone(),
        });
        self.write_status();
        self.client = Some(Client {
            conn: p.conn,
            origin,
        });
    }

    fn flush_client(&mut self, now: Instant) {
        if let Some(c) = &mut self.client
            && let Err(e) = c.conn.flush(now)
        {
            self.drop_client(&e);
        }
    }

    /// Reads what the processor sent (at most `MAX_READS_PER_WAKE` messages). After its hello
    /// the processor may only narrow the capture or say goodbye; anything else, a flood, or a
    /// peer that stopped reading closes its connection.
    fn on_processor_messages(&mut self, probes: &mut Probes, now: Instant) {
        for _ in 0..MAX_READS_PER_WAKE {
            let Some(client) = &mut self.client else {
                return;
            };
            let datagram = match client.conn.recv(now) {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(e) => return self.drop_client(&e),
            };
            let unexpected = match ProcessorMessage::decode(&datagram) {
                Ok(ProcessorMessage::Narrow(pids)) => {
                    self.narrow(probes, &pids);
                    continue;
                }
                Ok(ProcessorMessage::Select(pids)) => {
                    self.select(probes, &pids);
                    continue;
                }
                Ok(ProcessorMessage::Goodbye(reason)) => {
                    info!(reason, "processor said goodbye");
                    return self.disconnect(false);
                }
                Ok(ProcessorMessage::Hello(_)) => "a second hello".to_string(),
                Err(e) => format!("{e:#}"),
            };
            warn!(
                error = unexpected,
                "processor sent an unexpected message; closing its connection"
            );
            return self.disconnect(true);
        }
    }

    /// Closes the processor's connection for `error`: a violation (stopped reading, flood) or
    /// the peer going away.
    fn drop_client(&mut self, error: &ConnError) {
        // What the protocol forbids (an oversized datagram, fds, undecodable or out-of-place
        // messages) is a violation like the loader's own limits, not a mere disconnection.
        let forbidden = matches!(
            error,
            ConnError::Channel(ChannelError::Truncated | ChannelError::UnexpectedFds(_))
        ) || matches!(
            error,
            ConnError::Control(c) if !matches!(c, ControlError::Send { .. } | ControlError::Recv { .. })
        );
        match error {
            ConnError::Violation(v) => {
                warn!(error = %v, "closing the processor's connection");
                self.disconnect(true);
            }
            e if forbidden => {
                warn!(
                    error = error_chain(e),
                    "the processor sent what the protocol forbids; closing its connection"
                );
                self.disconnect(true);
            }
            e => {
                info!(reason = error_chain(e), "processor disconnected");
                self.disconnect(false);
            }
        }
    }

    /// Forgets the processor connection (and its entry in the status file). A `violation` by
    /// a processor this loader started gets it killed and restarted.
    fn disconnect(&mut self, violation: bool) {
        if let Some(c) = self.client.take()
            && violation
            && c.origin.spawned
        {
            self.violator = Some(c.origin.peer.pid);
        }
        if self.status.processor.take().is_some() {
            self.write_status();
        }
    }

    /// Sends to the processor, if one is connected; a failed send drops the connection.
    fn send_client(&mut self, message: &LoaderMessage) {
        let Some(c) = &mut self.client else { return };
        if let Err(e) = c.conn.send(message, Instant::now()) {
            match &e {
                ConnError::Violation(_) => {}
                other => warn!(
                    error = %other,
                    what = message.name(),
                    "control send failed; dropping processor connection"
                ),
            }
            self.drop_client(&e);
        }
    }

    /// Selects `c` (the process now on `c.record.pid`). A different process recorded on that
    /// pid is deselected first. The filter byte is set, then the start time read again: if the
    /// pid changed hands meanwhile, the byte is cleared and nothing is selected.
    fn add(&mut self, probes: &mut Probes, c: Candidate) {
        if !c.k8s.is_empty() {
            return self.add_candidate(probes, c);
        }
        self.capture(probes, c, false);
    }

    /// Records `c` as a candidate (not captured) and announces it. A process selected
    /// directly before (it exec'd into something only a Kubernetes selector covers) is
    /// deselected; one the processor selected as a candidate stays selected.
    fn add_candidate(&mut self, probes: &mut Probes, c: Candidate) {
        let pid = c.record.pid;
        if let Some(old) = self.selected.get(&pid)
            && (old.start != c.start || !old.via_candidate)
        {
            self.remove(probes, pid);
        }
        if self.candidates.upsert(c.clone()) {
            info!(
                pid,
                start = c.start,
                exe = c.record.exe_path,
                container_id = c.record.container_id,
                reason = c.record.reason,
                selectors = c.k8s.len(),
                "process is a candidate: captured once the processor selects it from Kubernetes metadata"
            );
            self.send_client(&announce(&c));
        }
    }

    /// Forgets the candidate on `pid`, if any, and tells the processor.
    fn remove_candidate(&mut self, pid: u32) {
        if self.candidates.remove(pid) {
            self.send_client(&LoaderMessage::CandidateRemoved(pid));
            debug!(pid, "candidate removed");
        }
    }

    /// The processor's request to capture `pids`: honoured for current candidates only (same
    /// process: its start time is checked); anything else is refused, logged (aggregated) and
    /// counted, so the processor can choose within the loader's bound, never beyond it.
    fn select(&mut self, probes: &mut Probes, pids: &[u32]) {
        let mut refused = 0u64;
        for &pid in pids {
            match self.candidates.admit(pid, selection::start_time(pid)) {
                Ok(c) => {
                    if self.selected.get(&pid).is_some_and(|s| s.start == c.start) {
                        continue;
                    }
                    let mut c = c.clone();
                    c.record.reason = format!("{}, selected by the processor", c.record.reason);
                    c.k8s.clear();
                    info!(pid, "candidate selected at the processor's request");
                    self.capture(probes, c, true);
                }
                Err(why) => {
                    if why == selection::Refusal::Gone {
                        self.remove_candidate(pid);
                    }
                    self.refusals.select(pid);
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            self.status.refused_selections += refused;
            self.write_status();
        }
    }

    /// Captures `c`; `via_candidate` when the processor selected it among the candidates.
    fn capture(&mut self, probes: &mut Probes, c: Candidate, via_candidate: bool) {
        let pid = c.record.pid;
        // Selected on the configuration's own account: no longer the processor's to choose.
        if !via_candidate {
            self.remove_candidate(pid);
        }
        if let Some(old) = self.selected.get(&pid) {
            if old.start == c.start {
                return;
            }
            self.replaced(probes, pid, c.start);
        }
        if self.narrowed_out.contains(&(pid, c.start)) {
            return;
        }
        // The pid may have changed hands since the candidate was read: check right before
        // selecting (and again right after, below), so the window in which a newcomer could
        // be captured under this record is the few instructions between the two reads.
        if selection::start_time(pid) != Some(c.start) {
            info!(
                pid,
                start = c.start,
                "process ended or its pid was reused before being selected; not selected"
            );
            return;
        }
        // Metadata goes out before the pid enters the filter, so the processor always knows a
        // process before its first event.
        self.send_client(&LoaderMessage::ProcessAdded(c.record.clone()));
        if let Err(e) = probes.select_pid(pid) {
            warn!(pid, error = %e, "cannot add pid to the kernel filter");
            self.send_client(&LoaderMessage::ProcessRemoved(pid));
            return;
        }
        // Still the same process after the byte was set? If so it was alive throughout, and
        // its exit (or any later task on the pid) clears the byte in the kernel.
        if selection::start_time(pid) != Some(c.start) {
            probes.unselect_pid(pid);
            self.send_client(&LoaderMessage::ProcessRemoved(pid));
            info!(
                pid,
                start = c.start,
                "process ended or its pid was reused while being selected; not selected"
            );
            return;
        }
        if c.record.reason == "pid" {
            self.pinned.entry(pid).or_insert(c.start);
        }
        info!(
            pid,
            start = c.start,
            exe = c.record.exe_path,
            service = selection::service_of(&c.record).name,
            reason = c.record.reason,
            "process selected"
        );
        probes.attach_tls(pid);
        self.selected.insert(
            pid,
            Selected {
                start: c.start,
                record: c.record,
                since: std::time::Instant::now(),
                via_candidate,
            },
        );
    }

    /// The process selected on `pid` is gone and another one (started at `new_start`) holds
    /// the pid: the old selection ends; the newcomer is not selected by inheritance.
    fn replaced(&mut self, probes: &mut Probes, pid: u32, new_start: u64) {
        if let Some(old) = self.selected.get(&pid) {
            warn!(
                pid,
                old_start = old.start,
                new_start,
                "pid reused by a new process; the old process's selection ends"
            );
        }
        self.remove(probes, pid);
    }

    /// The processor's request to stop capturing `pids`: honoured for captured processes only;
    /// anything else is refused and logged (aggregated), so a processor can never widen the capture.
    fn narrow(&mut self, probes: &mut Probes, pids: &[u32]) {
        for &pid in pids {
            if let Some(s) = self.selected.get(&pid) {
                // A candidate the processor selected goes back to being a candidate (its
                // metadata may match again); anything else stays out until it exits.
                if !s.via_candidate {
                    self.narrowed_out.insert((pid, s.start));
                }
                self.remove(probes, pid);
                info!(pid, "capture narrowed at the processor's request");
            } else {
                self.refusals.narrow(pid);
            }
        }
    }

    fn remove(&mut self, probes: &mut Probes, pid: u32) {
        if self.selected.remove(&pid).is_some() {
            probes.unselect_pid(pid);
            probes.forget_net_bytes(pid);
            self.send_client(&LoaderMessage::ProcessRemoved(pid));
            info!(pid, "process deselected");
        }
    }

    /// Keeps the selection in step (called at start-up and then periodically): every selected
    /// process is checked by start time (gone or replaced ones are removed; a replacement is
    /// evaluated from scratch like any process) and configured pids not selected yet are
    /// looked at. Only the first call, and the first after lost notices, walks all of `/proc`
    /// (and reads the listening sockets of each network namespace once): in between, the
    /// kernel's notices (exec, fork, exit, and every `listen()` on a covered port) say what
    /// changed, so an idle loader reads nothing but the selected processes' `stat` files.
    pub fn rescan(&mut self, probes: &mut Probes) {
        let pids: Vec<(u32, u64)> = self.selected.iter().map(|(p, s)| (*p, s.start)).collect();
        for (pid, start) in pids {
            match selection::fate(start, selection::start_time(pid)) {
                // A selected process stays selected while it lives (e.g. a fork of a port
                // owner that closed its listener copy) unless the kernel cleared its byte
                // (its leader exited).
                Fate::Same if probes.pid_in_filter(pid) => {
                    if self
                        .selected
                        .get(&pid)
                        .is_some_and(|s| s.since.elapsed() < TLS_LATE_LIBRARIES)
                    {
                        probes.attach_tls(pid);
                    }
                }
                Fate::Same | Fate::Gone => self.remove(probes, pid),
                Fate::Reused => {
                    let now = selection::start_time(pid).unwrap_or_default();
                    self.replaced(probes, pid, now);
                }
            }
        }
        self.narrowed_out
            .retain(|&(pid, start)| selection::start_time(pid) == Some(start));
        for pid in self.candidates.stale(selection::start_time) {
            self.remove_candidate(pid);
        }
        if std::mem::take(&mut self.full_scan_owed) {
            // Every listen up to now is seen by this scan.
            self.dirty_netns.clear();
            let started = Instant::now();
            let found = Selector::new(self.config, &self.pinned).scan(&mut self.listeners);
            debug!(
                took_ms = started.elapsed().as_millis() as u64,
                network_namespaces = self.listeners.namespaces(),
                "selection: full scan of /proc"
            );
            for (_, c) in found {
                self.add(probes, c);
            }
        } else {
            // Namespaces that come and go (short-lived containers) do not pile up.
            self.listeners.prune(Duration::from_secs(60));
            for &pid in &self.config.target_pids {
                if !self.selected.contains_key(&pid)
                    && let Some(c) =
                        Selector::new(self.config, &self.pinned).check(pid, &mut self.listeners)
                {
                    self.add(probes, c);
                }
            }
        }
    }

    /// Checks the process ring's loss counter; if notices were lost since the last check, the
    /// selection is resynchronised from `/proc` (full rescan with start-time checks).
    pub fn resync_if_lost(&mut self, probes: &mut Probes) {
        let lost = probes.proc_events_lost();
        if lost != self.proc_events_lost {
            warn!(
                lost = lost.saturating_sub(self.proc_events_lost),
                total = lost,
                "process notices were lost; resynchronising the selection from /proc"
            );
            self.proc_events_lost = lost;
            self.full_scan_owed = true;
            self.rescan(probes);
        }
    }

    /// Applies the kernel's process notices (exit, exec, fork, listen) waiting in the ring.
    pub fn drain_proc_events(&mut self, probes: &mut Probes) {
        for ev in read_proc_events(probes) {
            debug!(?ev, "process event");
            match ev.kind {
                PROC_EXIT => {
                    let now = selection::start_time(ev.pid);
                    self.narrowed_out
                        .retain(|&(pid, start)| pid != ev.pid || Some(start) == now);
                    // A late notice about an earlier process must not end a later one.
                    if let Some(s) = self.selected.get(&ev.pid)
                        && selection::fate(s.start, now) != Fate::Same
                    {
                        self.remove(probes, ev.pid);
                    }
                    if self
                        .candidates
                        .get(ev.pid)
                        .is_some_and(|c| selection::fate(c.start, now) != Fate::Same)
                    {
                        self.remove_candidate(ev.pid);
                    }
                }
                PROC_EXEC => {
                    let found =
                        Selector::new(self.config, &self.pinned).check(ev.pid, &mut self.listeners);
                    match found {
                        Some(c) => {
                            if c.k8s.is_empty() {
                                self.remove_candidate(ev.pid);
                            }
                            self.add(probes, c)
                        }
                        // A selected process exec'd something the selection does not cover
                        // (or the pid is no longer the selected process's).
                        None => {
                            self.remove(probes, ev.pid);
                            self.remove_candidate(ev.pid);
                        }
                    }
                }
                PROC_FORK => self.forked(probes, ev.pid, ev.child_pid, ev.boot_ns),
                PROC_LISTEN if self.listen_ports.is_some() => self.listened(ev.pid),
                _ => {}
            }
        }
        self.rescan_if_owed(probes);
        self.resync_if_lost(probes);
    }

    /// A process listened on a covered port: its network namespace is read again (soon, see
    /// `rescan_if_owed`) and the process checked. A selected process needs nothing.
    fn listened(&mut self, pid: u32) {
        if let Some(s) = self.selected.get(&pid)
            && selection::start_time(pid) == Some(s.start)
        {
            return;
        }
        // Gone already (a short-lived listener): nothing to select.
        if let Some(ns) = selection::netns_of(pid) {
            self.dirty_netns.entry(ns).or_default().insert(pid);
        }
    }

    /// Reads the network namespaces `listen()` notices named (each once, through one of the
    /// processes that listened there, at most every `NETNS_REREAD_EVERY`) and checks those
    /// processes; the loop calls this every tick, so a deferred namespace is read soon.
    pub fn rescan_if_owed(&mut self, probes: &mut Probes) {
        let Some(ports) = self.listen_ports.clone() else {
            self.dirty_netns.clear();
            return;
        };
        let due: Vec<u64> = self
            .dirty_netns
            .keys()
            .copied()
            .filter(|&ns| {
                self.listeners
                    .age(ns)
                    .is_none_or(|a| a >= NETNS_REREAD_EVERY)
            })
            .collect();
        for ns in due {
            let pids = self.dirty_netns.remove(&ns).unwrap_or_default();
            if !pids.iter().any(|&pid| self.listeners.read(ns, pid, &ports)) {
                // Every process that listened there is gone or elsewhere.
                continue;
            }
            let Some(listening) = self.listeners.get(ns) else {
                continue;
            };
            // The listeners, and their descendants: a server that forks its workers right
            // after `listen()` (before it was selected here, so the forks were not) has them
            // holding the socket too.
            let mut checked = pids.clone();
            for &pid in &pids {
                checked.extend(selection::descendants(pid, MAX_DESCENDANTS));
            }
            let selector = Selector::new(self.config, &self.pinned);
            let found: Vec<Candidate> = checked
                .iter()
                .filter(|pid| !self.selected.contains_key(pid))
                .filter_map(|&pid| selector.check_with(pid, listening))
                .collect();
            debug!(
                netns = ns,
                listeners = listening.len(),
                checked = checked.len(),
                selected = found.len(),
                "listen notice: network namespace read"
            );
            for c in found {
                self.add(probes, c);
            }
        }
    }

    /// A selected process forked: the child is selected with it if it is still the child (its
    /// start time fits the notice's time) and the parent is still the selected process.
    fn forked(&mut self, probes: &mut Probes, parent: u32, child: u32, boot_ns: u64) {
        // The kernel selected the child at fork (its parent was selected there): every way
        // out without selecting it here clears that byte again.
        let Some(p) = self.selected.get(&parent) else {
            self.refuse_fork(probes, child);
            return;
        };
        if selection::start_time(parent) != Some(p.start) || !selection::is_process(child) {
            self.refuse_fork(probes, child);
            return;
        }
        let Some(start) = selection::start_time(child) else {
            self.refuse_fork(probes, child);
            return;
        };
        if !selection::is_forked_child(start, boot_ns, self.ticks_per_sec) {
            info!(
                pid = child,
                start, parent, "fork notice is about an earlier process on this pid; not selected"
            );
            return;
        }
        let record = ProcessRecord {
            pid: child,
            reason: format!("child of {parent}"),
            ..p.record.clone()
        };
        let via_candidate = p.via_candidate;
        // The child of a candidate the processor selected is a candidate too (same pod, same
        // selectors), so the processor narrows it with its parent when the metadata stops
        // matching.
        let inherited = via_candidate
            .then(|| self.candidates.get(parent))
            .flatten()
            .map(|c| c.k8s.clone());
        self.capture(
            probes,
            Candidate {
                start,
                record: record.clone(),
                k8s: Vec::new(),
            },
            via_candidate,
        );
        if let Some(k8s) = inherited
            && self.selected.get(&child).is_some_and(|s| s.start == start)
        {
            let c = Candidate { start, record, k8s };
            if self.candidates.upsert(c.clone()) {
                self.send_client(&announce(&c));
            }
        }
    }

    /// A fork the kernel selected that the loader does not take: its byte is cleared, unless
    /// the pid is a process the loader selected on its own account.
    fn refuse_fork(&mut self, probes: &mut Probes, child: u32) {
        if !self.selected.contains_key(&child) {
            probes.unselect_pid(child);
        }
    }

    /// The captured processes as (pid, start time): what process metrics read.
    pub fn captured(&self) -> Vec<(u32, u64)> {
        self.selected.iter().map(|(p, s)| (*p, s.start)).collect()
    }

    /// True when a processor is connected (process metrics are read only for one).
    pub fn has_client(&self) -> bool {
        self.client.is_some()
    }

    /// Forwards readings of process metrics (each at most `MAX_USAGE_PER_MESSAGE` long).
    pub fn send_usage(&mut self, batches: Vec<Vec<sonde_schema::control::ProcessUsage>>) {
        for batch in batches {
            self.send_client(&LoaderMessage::ProcessUsage(batch));
        }
    }

    /// Flow metrics: reads the kernel flow map and forwards what grew since the last read,
    /// while a processor is connected (otherwise the counts wait in the kernel map).
    pub fn send_flows(&mut self, flows: &mut crate::flows::FlowReader) {
        if self.client.is_none() {
            return;
        }
        for batch in flows.collect() {
            self.send_client(&LoaderMessage::FlowCounts(batch));
        }
    }

    /// Forwards the kernel programs' counters to the processor.
    pub fn send_stats(&mut self, counters: &[(&'static str, u64)]) {
        let stats =
            LoaderMessage::KernelStats(counters.iter().map(|&(n, v)| (n.to_string(), v)).collect());
        self.send_client(&stats);
    }
}

/// A selected process: its start time (with the pid, its identity) and its metadata.
struct Selected {
    start: u64,
    record: ProcessRecord,
    /// When it was selected: a young process may still `dlopen` its TLS library (Python
    /// imports `ssl` on first use), so rescans look for new ones for a while.
    since: std::time::Instant,
    /// Selected by the processor among the candidates (or a fork of one): narrowing it makes
    /// it a candidate again rather than keeping it out.
    via_candidate: bool,
}

/// The announcement of a candidate.
fn announce(c: &Candidate) -> LoaderMessage {
    LoaderMessage::CandidateAdded(CandidateRecord {
        process: c.record.clone(),
        selectors: c.k8s.clone(),
    })
}

/// How long after its selection a process's mappings are looked at again for TLS libraries.
const TLS_LATE_LIBRARIES: std::time::Duration = std::time::Duration::from_secs(60);

/// An error with its sources, as `{:#}` prints an `anyhow::Error`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
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
