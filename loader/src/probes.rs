//! Loads the kernel programs with the offsets of this kernel, attaches them, and keeps the
//! handles (programs stay attached as long as this struct lives).

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use sonde_schema::{counters, globals};
use tracing::{info, warn};

use crate::kernel_layout::{self, LayoutError};

/// Errors from loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the kernel programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("required tracepoint {0} is not available in this kernel")]
    MissingTracepoint(String),
    #[error("duplicating the ring buffer fd: {0}")]
    Dup(std::io::Error),
}

/// Which syscall hooks carry HTTP bytes: (program, tracepoint name) pairs.
const ENTER_HOOKS: &[(&str, &str)] = &[
    ("sys_enter_read", "sys_enter_read"),
    ("sys_enter_recvfrom", "sys_enter_recvfrom"),
    ("sys_enter_readv", "sys_enter_readv"),
    ("sys_enter_recvmsg", "sys_enter_recvmsg"),
    ("sys_enter_write", "sys_enter_write"),
    ("sys_enter_sendto", "sys_enter_sendto"),
    ("sys_enter_writev", "sys_enter_writev"),
    ("sys_enter_sendmsg", "sys_enter_sendmsg"),
    ("sys_enter_sendfile64", "sys_enter_sendfile64"),
];

const EXIT_HOOKS: &[&str] = &[
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_readv",
    "sys_exit_recvmsg",
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_writev",
    "sys_exit_sendmsg",
    "sys_exit_sendfile64",
];

/// Sizes chosen by configuration.
pub struct ProbeSizes {
    pub ring_buffer_bytes: u32,
    pub max_connections: u32,
}

/// The loaded, attached kernel side.
pub struct Probes {
    ebpf: Ebpf,
    pid_filter: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    pub proc_events: RingBuf<MapData>,
    pub ring_buffer_bytes: u32,
}

impl Probes {
    /// Loads and attaches everything. Every failure names the hook or map concerned.
    pub fn load(sizes: &ProbeSizes) -> Result<Probes, ProbeError> {
        let arg0 = kernel_layout::tracepoint_field_offset("syscalls", "sys_enter_read", "fd")?;
        let ret = kernel_layout::tracepoint_field_offset("syscalls", "sys_exit_read", "ret")?;
        let sk = kernel_layout::tracepoint_field_offset("sock", "sock_recv_length", "sk")?;
        let family = kernel_layout::tracepoint_field_offset("sock", "sock_recv_length", "family")?;
        let protocol = kernel_layout::tracepoint_field_offset("sock", "sock_recv_length", "protocol")?;
        let child = kernel_layout::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?;
        let so = kernel_layout::sock_offsets()?;
        info!(
            syscall_arg0 = arg0, syscall_ret = ret, sock_sk = sk, sock_family = family,
            sock_protocol = protocol, fork_child = child, skc_v6_daddr = so.v6_daddr,
            "kernel layout read from tracefs and BTF"
        );

        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::SYSCALL_ARG0, &arg0, true)
            .override_global(globals::SYSCALL_RET, &ret, true)
            .override_global(globals::SOCK_LEN_SK, &sk, true)
            .override_global(globals::SOCK_LEN_FAMILY, &family, true)
            .override_global(globals::SOCK_LEN_PROTOCOL, &protocol, true)
            .override_global(globals::FORK_CHILD_PID, &child, true)
            .override_global(globals::SKC_DADDR, &so.daddr, true)
            .override_global(globals::SKC_RCV_SADDR, &so.rcv_saddr, true)
            .override_global(globals::SKC_DPORT, &so.dport, true)
            .override_global(globals::SKC_NUM, &so.num, true)
            .override_global(globals::SKC_FAMILY, &so.family, true)
            .override_global(globals::SKC_V6_DADDR, &so.v6_daddr, true)
            .override_global(globals::SKC_V6_RCV_SADDR, &so.v6_rcv_saddr, true)
            .map_max_entries(sonde_schema::EVENTS_MAP, sizes.ring_buffer_bytes)
            .map_max_entries(sonde_schema::CONNS_MAP, sizes.max_connections)
            .load(object)
            .map_err(ProbeError::Load)?;

        for &(program, tp) in ENTER_HOOKS {
            attach(&mut ebpf, program, &[("syscalls", tp)])?;
        }
        let exits: Vec<(&str, &str)> = EXIT_HOOKS.iter().map(|tp| ("syscalls", *tp)).collect();
        attach(&mut ebpf, "sys_exit_io", &exits)?;
        attach(&mut ebpf, "sock_length", &[("sock", "sock_recv_length"), ("sock", "sock_send_length")])?;
        attach(&mut ebpf, "sys_enter_close", &[("syscalls", "sys_enter_close")])?;
        attach(&mut ebpf, "sys_exit_listen", &[("syscalls", "sys_exit_listen")])?;
        attach(&mut ebpf, "sched_process_exec", &[("sched", "sched_process_exec")])?;
        attach(&mut ebpf, "sched_process_exit", &[("sched", "sched_process_exit")])?;
        attach(&mut ebpf, "sched_process_fork", &[("sched", "sched_process_fork")])?;

        let pid_filter = HashMap::try_from(take(&mut ebpf, sonde_schema::PID_FILTER_MAP)?)
            .map_err(|source| ProbeError::Map { map: sonde_schema::PID_FILTER_MAP, source })?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, sonde_schema::COUNTERS_MAP)?)
            .map_err(|source| ProbeError::Map { map: sonde_schema::COUNTERS_MAP, source })?;
        let proc_events = RingBuf::try_from(take(&mut ebpf, sonde_schema::PROC_EVENTS_MAP)?)
            .map_err(|source| ProbeError::Map { map: sonde_schema::PROC_EVENTS_MAP, source })?;
        Ok(Probes { ebpf, pid_filter, counters, proc_events, ring_buffer_bytes: sizes.ring_buffer_bytes })
    }

    /// A new fd for the HTTP event ring buffer, to hand to a processor. Ring buffer fds must
    /// be read-write: the consumer page is mapped writable.
    pub fn events_fd(&self) -> Result<OwnedFd, ProbeError> {
        let map = self.ebpf.map(sonde_schema::EVENTS_MAP).ok_or(ProbeError::MissingMap(sonde_schema::EVENTS_MAP))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(ProbeError::MissingMap(sonde_schema::EVENTS_MAP));
        };
        data.fd().as_fd().try_clone_to_owned().map_err(ProbeError::Dup)
    }

    pub fn select_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.pid_filter
            .insert(pid, 1, 0)
            .map_err(|source| ProbeError::Map { map: sonde_schema::PID_FILTER_MAP, source })
    }

    pub fn unselect_pid(&mut self, pid: u32) {
        // The kernel removes exited processes itself; a missing key is not an error.
        let _ = self.pid_filter.remove(&pid);
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
            .collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn attach(ebpf: &mut Ebpf, program: &'static str, tracepoints: &[(&str, &str)]) -> Result<(), ProbeError> {
    for (category, name) in tracepoints {
        if !kernel_layout::tracepoint_exists(category, name) {
            return Err(ProbeError::MissingTracepoint(format!("{category}:{name}")));
        }
    }
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingMap(program))?
        .try_into()
        .map_err(|source| ProbeError::Program { program, source })?;
    prog.load().map_err(|source| ProbeError::Program { program, source })?;
    for (category, name) in tracepoints {
        prog.attach(category, name).map_err(|source| ProbeError::Program { program, source })?;
    }
    Ok(())
}
