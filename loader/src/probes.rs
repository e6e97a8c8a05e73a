//! Loads the kernel programs with the offsets of this kernel, attaches them, and keeps the
//! handles (programs stay attached as long as this struct lives).

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use sonde_config::{Config, NetworkSettings, PortSet};
use sonde_schema::{counters, globals, process_net};
use tracing::{info, warn};

use crate::{
    flows::FlowReader,
    kernel_layout::{self, LayoutError},
    tls::{self, MapFds, TlsProbes},
};

/// Errors from loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the kernel programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("reading the kernel BTF (/sys/kernel/btf/vmlinux) for the BTF tracepoints: {0}")]
    KernelBtf(#[source] aya::BtfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error(
        "tracepoint {tracepoint} has {arity} parameters in kernel BTF, expected 4 (context and three arguments)"
    )]
    Prototype {
        tracepoint: &'static str,
        arity: usize,
    },
    #[error("reading the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    PossibleCpus(String),
    #[error("pid {0} is beyond kernel.pid_max")]
    PidOutOfRange(u32),
    #[error("required tracepoint {0} is not available in this kernel")]
    MissingTracepoint(String),
    #[error("duplicating the ring buffer fd: {0}")]
    Dup(std::io::Error),
    #[error("mapping map {0} into memory: {1}")]
    MapShared(&'static str, std::io::Error),
    #[error(transparent)]
    Inject(#[from] crate::inject::InjectError),
}

/// BTF tracepoints (`tp_btf`) attached, each with a program of the same name taking three
/// arguments: the verifier types the socket argument from kernel BTF, so the programs read
/// its fields with plain loads instead of a `bpf_probe_read_kernel` call each.
const SOCKET_TRACEPOINTS: [&str; 3] = [
    "sock_recv_length",
    "sock_send_length",
    "inet_sock_set_state",
];

/// Packet tracepoints of the flow metrics (`network.enable`), with the parameter count of
/// their prototype (context included); programs of the same name.
const FLOW_TRACEPOINTS: [(&str, usize); 2] = [
    (sonde_schema::flows::INGRESS_PROGRAM, 2),
    (sonde_schema::flows::EGRESS_PROGRAM, 3),
];

/// `sched:` tracepoints attached, each with a program of the same name.
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_exit",
    "sched_process_fork",
];

/// Sizes and kernel-side filters chosen by configuration.
pub struct ProbeSizes {
    pub ring_buffer_bytes: u32,
    pub max_connections: u32,
    /// Ports whose `listen()` the kernel reports (`open_port` and the discovery selectors'
    /// `open_ports`); none: no listen notices.
    pub listen_ports: Option<PortSet>,
    /// Report every `execve` (executable-path selection), not only those of selected processes.
    pub notify_all_execs: bool,
    /// The OpenSSL uprobes will be attached (`ebpf.tls`): sockets may be linked to TLS
    /// connections.
    pub tls: bool,
    /// Process metrics (`application_process`): the socket programs count bytes per process.
    pub process_metrics: bool,
    /// `network.*`: with `enable`, the packet tracepoints are attached and the flow map is
    /// sized to `cache_max_flows`.
    pub network: NetworkSettings,
    /// `ebpf.context_propagation: headers`: attach the injection programs on this cgroup v2
    /// root (`ebpf.cgroup_root`; None: discovered). None: injection off.
    pub inject: Option<Option<std::path::PathBuf>>,
}

impl ProbeSizes {
    pub fn for_config(config: &Config) -> Self {
        ProbeSizes {
            ring_buffer_bytes: config.ebpf.ring_buffer_bytes,
            max_connections: config.ebpf.max_connections,
            listen_ports: config.listen_ports(),
            notify_all_execs: config.needs_exec_notices(),
            tls: config.ebpf.tls,
            process_metrics: config.processes.enable,
            network: config.network.clone(),
            inject: (config.ebpf.context_propagation == sonde_config::ContextPropagation::Headers)
                .then(|| config.ebpf.cgroup_root.clone()),
        }
    }
}

/// The loaded, attached kernel side.
pub struct Probes {
    ebpf: Ebpf,
    /// The OpenSSL uprobes, when `ebpf.tls` is on and this kernel has uprobe-multi links.
    tls: Option<TlsProbes>,
    pid_filter: SharedBytes,
    counters: PerCpuArray<MapData, u64>,
    pub proc_events: RingBuf<MapData>,
    pub ring_buffer_bytes: u32,
    /// Socket bytes per captured process (process metrics on only).
    proc_net: Option<PerCpuHashMap<MapData, u32, [u64; 2]>>,
    /// The flow map's reader, when flow metrics are on (`network.enable`).
    pub flows: Option<FlowReader>,
    /// Context propagation's counters, when it is on.
    pub inject: Option<crate::inject::Injection>,
}

impl Probes {
    /// Loads and attaches everything. Every failure names the hook or map concerned.
    pub fn load(sizes: &ProbeSizes) -> Result<Probes, ProbeError> {
        let child =
            kernel_layout::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?;
        let btf = kernel_layout::kernel_btf()?;
        // The programs read their arguments by position after the context pointer:
        // (sk, ret, flags) and (sk, oldstate, newstate).
        for tp in SOCKET_TRACEPOINTS {
            let arity = kernel_layout::raw_tracepoint_arity(&btf, tp)?;
            if arity != 4 {
                return Err(ProbeError::Prototype {
                    tracepoint: tp,
                    arity,
                });
            }
        }
        let so = kernel_layout::sock_offsets(&btf)?;
        let task = kernel_layout::task_offsets(&btf)?;
        let skb = kernel_layout::skb_offsets(&btf)?;
        if sizes.network.enable {
            // (skb) and (skb, dev): the programs read the skb only.
            for (tp, expected) in FLOW_TRACEPOINTS {
                let arity = kernel_layout::raw_tracepoint_arity(&btf, tp)?;
                if arity != expected {
                    return Err(ProbeError::Prototype {
                        tracepoint: tp,
                        arity,
                    });
                }
            }
        }
        // Done with the kernel BTF (a mapping; tens of MiB where it had to be parsed): aya
        // parses its own below.
        drop(btf);
        // Loopback traffic is skipped in the kernel when `lo` is not counted (the default).
        let skip_loopback = u32::from(!sizes.network.counts_interface("lo"));
        let flow_entries = if sizes.network.enable {
            sizes.network.cache_max_flows
        } else {
            64
        };
        let pid_max = pid_max();
        let pid_words = pid_max.div_ceil(8).max(1);
        let conn_slots = sonde_schema::conn_slots(sizes.max_connections);
        let conn_slot_shift: u32 = 64 - conn_slots.trailing_zeros();
        info!(
            fork_child = child,
            skc_family = so.family,
            sk_protocol = so.sk_protocol,
            skc_v6_daddr = so.v6_daddr,
            pid_max,
            pid_filter_bytes = u64::from(pid_words) * 8,
            "kernel layout read from tracefs and BTF"
        );

        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));
        // Injection off: the socket map is left out (creating one needs CAP_NET_ADMIN).
        let object: std::borrow::Cow<'_, [u8]> = if sizes.inject.is_some() {
            std::borrow::Cow::Borrowed(object)
        } else {
            crate::inject::disable_in_object(object)?
        };
        let object = &*object;
        let mut ebpf = EbpfLoader::new()
            .override_global(
                sonde_schema::inject::ENABLED,
                &u32::from(sizes.inject.is_some()),
                true,
            )
            .override_global(globals::FORK_CHILD_PID, &child, true)
            .override_global(globals::SKC_DADDR, &so.daddr, true)
            .override_global(globals::SKC_RCV_SADDR, &so.rcv_saddr, true)
            .override_global(globals::SKC_DPORT, &so.dport, true)
            .override_global(globals::SKC_NUM, &so.num, true)
            .override_global(globals::SKC_FAMILY, &so.family, true)
            .override_global(globals::SK_PROTOCOL, &so.sk_protocol, true)
            .override_global(globals::SKC_V6_DADDR, &so.v6_daddr, true)
            .override_global(globals::SKC_V6_RCV_SADDR, &so.v6_rcv_saddr, true)
            .override_global(
                globals::SOCK_HEAD_COVERS,
                &u32::from(so.head_covers(globals::SOCK_HEAD_BYTES)),
                true,
            )
            .override_global(globals::TASK_PID, &task.pid, true)
            .override_global(globals::TASK_TGID, &task.tgid, true)
            .override_global(
                globals::NOTIFY_ALL_EXECS,
                &u32::from(sizes.notify_all_execs),
                true,
            )
            .override_global(globals::TLS_ENABLED, &u32::from(sizes.tls), true)
            .override_global(globals::SKB_LEN, &skb.len, true)
            .override_global(globals::SKB_DEV, &skb.dev, true)
            .override_global(globals::SKB_HEAD, &skb.head, true)
            .override_global(globals::SKB_DATA, &skb.data, true)
            .override_global(globals::SKB_END, &skb.end, true)
            .override_global(globals::SKB_NETWORK_HEADER, &skb.network_header, true)
            .override_global(globals::SKB_PROTOCOL, &skb.protocol, true)
            .override_global(globals::SHINFO_GSO_SEGS, &skb.gso_segs, true)
            .override_global(globals::DEV_IFINDEX, &skb.ifindex, true)
            .override_global(globals::DEV_NAME, &skb.name, true)
            .override_global(globals::DEV_FLAGS, &skb.flags, true)
            .override_global(globals::FLOWS_SKIP_LOOPBACK, &skip_loopback, true)
            .map_max_entries(sonde_schema::flows::FLOWS_MAP, flow_entries)
            .override_global(
                process_net::ENABLED,
                &u32::from(sizes.process_metrics),
                true,
            )
            // Off: the per-process byte map is never written; one entry keeps it tiny.
            .map_max_entries(
                process_net::MAP,
                if sizes.process_metrics {
                    process_net::MAX_PROCESSES
                } else {
                    1
                },
            )
            .map_max_entries(sonde_schema::EVENTS_MAP, sizes.ring_buffer_bytes)
            .map_max_entries(sonde_schema::CONNS_MAP, sizes.max_connections)
            .map_max_entries(sonde_schema::CONN_SLOTS_MAP, conn_slots)
            .override_global(globals::CONN_SLOT_SHIFT, &conn_slot_shift, true)
            .map_max_entries(sonde_schema::PID_FILTER_MAP, pid_words)
            .map_max_entries(sonde_schema::CHUNK_BUF_MAP, possible_cpus()?)
            .load(object)
            .map_err(ProbeError::Load)?;

        // The BTF tracepoints are loaded against the kernel BTF once more: `EbpfLoader::new`
        // parses its own copy and aya 0.14 neither hands it out nor builds a loader without it
        // (passing ours through `.btf()` would still parse that copy, and hold both at once).
        // Parsed after the loader above is gone, so one copy is alive at a time; dropped once
        // the programs are attached.
        let aya_btf = aya::Btf::from_sys_fs().map_err(ProbeError::KernelBtf)?;
        for tp in SOCKET_TRACEPOINTS {
            attach(&mut ebpf, tp, Hook::Btf(&aya_btf))?;
        }
        drop(aya_btf);
        for tp in SCHED_TRACEPOINTS {
            attach(&mut ebpf, tp, Hook::Tracepoint("sched"))?;
        }
        // Flow metrics off: the packet programs are neither loaded nor attached.
        let flows = if sizes.network.enable {
            for (tp, _) in FLOW_TRACEPOINTS {
                attach(&mut ebpf, tp, Hook::Raw)?;
            }
            let map = PerCpuHashMap::try_from(take(&mut ebpf, sonde_schema::flows::FLOWS_MAP)?)
                .map_err(|source| ProbeError::Map {
                    map: sonde_schema::flows::FLOWS_MAP,
                    source,
                })?;
            info!(
                tracepoints = ?FLOW_TRACEPOINTS.map(|(t, _)| t),
                cache_max_flows = sizes.network.cache_max_flows,
                skip_loopback = skip_loopback != 0,
                "network flow metrics on: packet tracepoints attached"
            );
            Some(FlowReader::new(map, sizes.network.clone()))
        } else {
            None
        };
        let inject = match &sizes.inject {
            Some(root) => Some(crate::inject::Injection::attach(
                &mut ebpf,
                root.as_deref(),
            )?),
            None => None,
        };
        // The OpenSSL uprobes are loaded now (CAP_BPF, CAP_PERFMON) on the same maps, and
        // attached per selected process later (no capability needed for the links).
        let tls = sizes.tls.then(|| load_tls(object, &ebpf)).flatten();

        let pid_filter = map_shared(&ebpf, sonde_schema::PID_FILTER_MAP, pid_words)?;
        let mut listen_ports: Array<MapData, u64> =
            Array::try_from(take(&mut ebpf, sonde_schema::LISTEN_PORTS_MAP)?).map_err(
                |source| ProbeError::Map {
                    map: sonde_schema::LISTEN_PORTS_MAP,
                    source,
                },
            )?;
        if let Some(ports) = &sizes.listen_ports {
            for (word, bits) in port_words(ports).into_iter().enumerate() {
                if bits != 0 {
                    listen_ports
                        .set(word as u32, bits, 0)
                        .map_err(|source| ProbeError::Map {
                            map: sonde_schema::LISTEN_PORTS_MAP,
                            source,
                        })?;
                }
            }
        }
        let counters = PerCpuArray::try_from(take(&mut ebpf, sonde_schema::COUNTERS_MAP)?)
            .map_err(|source| ProbeError::Map {
                map: sonde_schema::COUNTERS_MAP,
                source,
            })?;
        let proc_events = RingBuf::try_from(take(&mut ebpf, sonde_schema::PROC_EVENTS_MAP)?)
            .map_err(|source| ProbeError::Map {
                map: sonde_schema::PROC_EVENTS_MAP,
                source,
            })?;
        let proc_net = if sizes.process_metrics {
            Some(
                PerCpuHashMap::try_from(take(&mut ebpf, process_net::MAP)?).map_err(|source| {
                    ProbeError::Map {
                        map: process_net::MAP,
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        Ok(Probes {
            proc_net,
            ebpf,
            tls,
            pid_filter,
            counters,
            proc_events,
            ring_buffer_bytes: sizes.ring_buffer_bytes,
            flows,
            inject,
        })
    }

    /// A new fd for the HTTP event ring buffer, to hand to a processor. Ring buffer fds must
    /// be read-write: the consumer page is mapped writable.
    pub fn events_fd(&self) -> Result<OwnedFd, ProbeError> {
        let map = self
            .ebpf
            .map(sonde_schema::EVENTS_MAP)
            .ok_or(ProbeError::MissingMap(sonde_schema::EVENTS_MAP))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(ProbeError::MissingMap(sonde_schema::EVENTS_MAP));
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(ProbeError::Dup)
    }

    /// Sets `pid`'s byte in the kernel filter (that byte only).
    pub fn select_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        if !self.pid_filter.set(pid, true) {
            return Err(ProbeError::PidOutOfRange(pid));
        }
        Ok(())
    }

    /// Clears `pid`'s byte in the kernel filter (that byte only).
    pub fn unselect_pid(&mut self, pid: u32) {
        self.pid_filter.set(pid, false);
        if let Some(t) = self.tls.as_mut() {
            t.detach_process(pid);
        }
    }

    /// With `ebpf.tls`: probes the OpenSSL functions of every file the selected process `pid`
    /// maps (again: only files mapped since the last call), logging what was attached and,
    /// once per kind, TLS libraries Sonde cannot see into.
    pub fn attach_tls(&mut self, pid: u32) {
        let Some(t) = self.tls.as_mut() else {
            return;
        };
        match t.attach_process(pid) {
            Ok(report) => {
                for n in report
                    .not_instrumentable
                    .iter()
                    .filter(|n| n.first_sighting)
                {
                    warn!(
                        pid,
                        path = n.path,
                        "TLS library not instrumentable: {}",
                        n.library.reason()
                    );
                }
                for (path, error) in &report.failed {
                    warn!(pid, path, error, "TLS probes not attached to this file");
                }
                if !report.instrumented.is_empty() {
                    let files: Vec<String> = report
                        .instrumented
                        .iter()
                        .map(|i| format!("{} ({})", i.path, i.functions.join(",")))
                        .collect();
                    info!("TLS probes attached pid={pid} files={files:?}");
                }
            }
            // Gone already: its exit deselects it.
            Err(tls::TlsError::NoProcess(_)) => {}
            Err(e) => warn!(pid, error = %e, "TLS probes not attached"),
        }
    }

    /// True when the OpenSSL uprobes are loaded (`ebpf.tls` on and this kernel has uprobe-multi
    /// links): only then does the run-time policy keep `BPF_LINK_CREATE`.
    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    /// Processes with TLS probes attached, and what the link limits refused.
    pub fn tls_status(&self) -> Option<(usize, tls::Refusals)> {
        self.tls
            .as_ref()
            .map(|t| (t.processes().count(), t.refusals()))
    }

    /// Whether `pid`'s byte is set: the kernel clears it when the process exits or a new task
    /// takes the pid.
    pub fn pid_in_filter(&self, pid: u32) -> bool {
        self.pid_filter.get(pid)
    }

    /// Process notices the kernel could not write (the process ring was full), summed over CPUs.
    pub fn proc_events_lost(&self) -> u64 {
        self.counters
            .get(&counters::PROC_EVENTS_LOST, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Socket bytes (received, sent) the kernel counted for `pid` since it was captured;
    /// zero when none were counted (or process metrics are off).
    pub fn net_bytes(&self, pid: u32) -> (u64, u64) {
        self.proc_net
            .as_ref()
            .and_then(|m| m.get(&pid, 0).ok())
            .map_or((0, 0), |per_cpu| {
                per_cpu.iter().fold((0, 0), |(r, s), v| {
                    (r + v[process_net::RECEIVED], s + v[process_net::SENT])
                })
            })
    }

    /// Drops `pid`'s socket byte count (a deselected process; the kernel drops it at exit).
    pub fn forget_net_bytes(&mut self, pid: u32) {
        if let Some(m) = self.proc_net.as_mut() {
            let _ = m.remove(&pid);
        }
    }

    /// Sums each kernel counter across CPUs, in `counters::NAMES` order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..counters::COUNT)
            .map(|i| {
                let total = match self.counters.get(&i, 0) {
                    Ok(values) => values.iter().sum(),
                    Err(e) => {
                        warn!(counter = counters::NAMES[i as usize], error = %e, "reading kernel counter failed");
                        0
                    }
                };
                (counters::NAMES[i as usize], total)
            })
            .chain(self.inject.iter().flat_map(|i| {
                let mut c = i.counters();
                // Context propagation: how many sockets the socket map holds right now.
                c.push(("inject_sockets_open", i.sockets() as u64));
                c
            }))
            .collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// How many CPUs the kernel can bring up: the size of per-CPU scratch arrays indexed by CPU id.
fn possible_cpus() -> Result<u32, ProbeError> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, e)| ProbeError::PossibleCpus(format!("{path}: {e}")))?;
    u32::try_from(cpus.max(1)).map_err(|e| ProbeError::PossibleCpus(e.to_string()))
}

/// Loads the OpenSSL uprobes for `ebpf.tls`; None (TLS capture off, said once) when this kernel
/// has no uprobe-multi links or the programs do not load.
fn load_tls(object: &[u8], ebpf: &Ebpf) -> Option<TlsProbes> {
    match tls::probe_uprobe_multi() {
        Ok(true) => {}
        Ok(false) => {
            warn!(
                "TLS capture off: this kernel has no uprobe-multi links (BPF_TRACE_UPROBE_MULTI, Linux ≥ 6.6); perf-event uprobes would need CAP_SYS_ADMIN, which Sonde does not take"
            );
            return None;
        }
        Err(e) => {
            warn!(error = %e, "TLS capture off: probing for uprobe-multi links failed");
            return None;
        }
    }
    match TlsProbes::load(object, &MapFds::from_ebpf(ebpf), tls::Limits::default()) {
        Ok(probes) => {
            info!(
                functions = ?sonde_schema::tls::FUNCTIONS.map(|(f, _)| f),
                "TLS capture on: OpenSSL uprobes loaded (attached per selected process with uprobe-multi links)"
            );
            info!("{}", tls::UNDETECTABLE);
            Some(probes)
        }
        Err(e) => {
            warn!(error = %e, "TLS capture off: loading the OpenSSL uprobes failed");
            None
        }
    }
}

/// `kernel.pid_max` (4194304, the largest it can be, when unreadable).
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

/// The `LISTEN_PORTS` bitmap for `ports`: bit `port % 64` of word `port / 64`.
fn port_words(ports: &PortSet) -> Vec<u64> {
    let mut words = vec![0u64; 1024];
    for port in 1..=u16::MAX {
        if ports.contains(port) {
            words[usize::from(port / 64)] |= 1 << (port % 64);
        }
    }
    words
}

/// Maps the mmap-able array `name` (`words` u64 values).
fn map_shared(ebpf: &Ebpf, name: &'static str, words: u32) -> Result<SharedBytes, ProbeError> {
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let aya::maps::Map::Array(data) = map else {
        return Err(ProbeError::MissingMap(name));
    };
    SharedBytes::map(data, words).map_err(|e| ProbeError::MapShared(name, e))
}

/// An mmap-able kernel array mapped into the loader as bytes: the pid filter (one byte per
/// pid) and the notice flags. Each change is a single-byte store, so setting one pid can never
/// undo the kernel's clearing of a neighbour (as rewriting a shared word from a stale view
/// would).
struct SharedBytes {
    base: NonNull<AtomicU8>,
    /// Bytes holding pids (`pid_max` rounded up to whole words).
    len: usize,
    /// Bytes mapped (page-rounded).
    mapped: usize,
}

// SAFETY: the mapping is owned by this struct and accessed through atomics only.
unsafe impl Send for SharedBytes {}

impl SharedBytes {
    /// Maps the array's `words` u64 values (one page-rounded shared mapping).
    fn map(data: &MapData, words: u32) -> std::io::Result<SharedBytes> {
        let bytes = words as usize * 8;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mapped = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length against
        // the array, and the pointer is only used within `len` bytes until munmap in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedBytes {
            base: NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?,
            len: bytes,
            mapped,
        })
    }

    fn byte(&self, pid: u32) -> Option<&AtomicU8> {
        let i = pid as usize;
        // SAFETY: in bounds of the live mapping; AtomicU8 has the layout of u8.
        (i < self.len).then(|| unsafe { &*self.base.as_ptr().add(i) })
    }

    /// Sets or clears one pid's byte; false when the pid is beyond the filter.
    fn set(&self, pid: u32, on: bool) -> bool {
        match self.byte(pid) {
            Some(b) => {
                b.store(u8::from(on), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    fn get(&self, pid: u32) -> bool {
        self.byte(pid)
            .is_some_and(|b| b.load(Ordering::SeqCst) != 0)
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

/// Where a program attaches; each program is named after its tracepoint.
#[derive(Clone, Copy)]
enum Hook<'a> {
    /// A raw tracepoint (arguments by position, no tracefs needed).
    Raw,
    /// A BTF tracepoint: a raw tracepoint whose arguments the verifier types from this kernel
    /// BTF.
    Btf(&'a aya::Btf),
    /// A tracepoint of this tracefs category (`sched`, …).
    Tracepoint(&'static str),
}

/// Loads the program `name` and attaches it to `hook`.
fn attach(ebpf: &mut Ebpf, name: &'static str, hook: Hook<'_>) -> Result<(), ProbeError> {
    if let Hook::Tracepoint(category) = hook
        && !kernel_layout::tracepoint_exists(category, name)
    {
        return Err(ProbeError::MissingTracepoint(format!("{category}:{name}")));
    }
    let program = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    let failed = |source| ProbeError::Program {
        program: name,
        source,
    };
    match hook {
        Hook::Btf(btf) => {
            let prog: &mut BtfTracePoint = program.try_into().map_err(failed)?;
            prog.load(name, btf).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        Hook::Raw => {
            let prog: &mut RawTracePoint = program.try_into().map_err(failed)?;
            prog.load().map_err(failed)?;
            prog.attach(name).map_err(failed)?;
        }
        Hook::Tracepoint(category) => {
            let prog: &mut TracePoint = program.try_into().map_err(failed)?;
            prog.load().map_err(failed)?;
            prog.attach(category, name).map_err(failed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// The compiler-builtins functions LLVM calls for a zeroed, moved or compared aggregate it
    /// does not expand inline on the BPF target: each call is a BPF-to-BPF call into a loop of
    /// one byte per step (a 64-byte buffer zeroed per packet was ~200 instructions of the flow
    /// programs; BENCHMARKS.md "Kernel programs without memset"). `loader-ebpf/src/zero.rs`
    /// shows the ways around them.
    const BYTE_LOOPS: [&str; 5] = ["memset", "memmove", "memcpy", "memcmp", "bcmp"];

    #[test]
    fn no_kernel_program_calls_a_byte_by_byte_memset_or_memmove() {
        let bytes = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));
        let file = object::File::parse(bytes).expect("the kernel object parses");
        let mut calls = Vec::new();
        for section in file.sections() {
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(index) = reloc.target() else {
                    continue;
                };
                let name = file
                    .symbol_by_index(index)
                    .and_then(|s| s.name())
                    .unwrap_or_default();
                if BYTE_LOOPS.contains(&name) {
                    let section = section.name().unwrap_or("?");
                    calls.push(format!("{section}+{offset:#x} calls {name}"));
                }
            }
        }
        assert!(calls.is_empty(), "{calls:#?}");
    }
}
