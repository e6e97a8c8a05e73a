//! Loads the kernel programs with the offsets of this kernel, attaches them, and keeps the
//! handles (programs stay attached as long as this struct lives).

use std::{
    collections::HashSet,
    os::fd::{AsFd, OwnedFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
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
        "raw tracepoint {tracepoint} has {arity} parameters in kernel BTF, expected 4 (context and three arguments)"
    )]
    Prototype {
        tracepoint: &'static str,
        arity: usize,
    },
    #[error("pid {0} is beyond kernel.pid_max")]
    PidOutOfRange(u32),
    #[error("required tracepoint {0} is not available in this kernel")]
    MissingTracepoint(String),
    #[error("duplicating the ring buffer fd: {0}")]
    Dup(std::io::Error),
}

/// Raw tracepoints attached, each with a program of the same name taking three arguments.
const RAW_TRACEPOINTS: [&str; 3] = [
    "sock_recv_length",
    "sock_send_length",
    "inet_sock_set_state",
];

/// `sched:` tracepoints attached, each with a program of the same name.
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_exit",
    "sched_process_fork",
];

/// Sizes chosen by configuration.
pub struct ProbeSizes {
    pub ring_buffer_bytes: u32,
    pub max_connections: u32,
}

/// The loaded, attached kernel side.
pub struct Probes {
    ebpf: Ebpf,
    pid_bitmap: Array<MapData, u64>,
    pid_words: u32,
    selected: HashSet<u32>,
    counters: PerCpuArray<MapData, u64>,
    pub proc_events: RingBuf<MapData>,
    pub ring_buffer_bytes: u32,
}

impl Probes {
    /// Loads and attaches everything. Every failure names the hook or map concerned.
    pub fn load(sizes: &ProbeSizes) -> Result<Probes, ProbeError> {
        let child =
            kernel_layout::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?;
        let btf = kernel_layout::kernel_btf()?;
        // The programs read their arguments by position after the context pointer:
        // (sk, ret, flags) and (sk, oldstate, newstate).
        for tp in RAW_TRACEPOINTS {
            let arity = kernel_layout::raw_tracepoint_arity(&btf, tp)?;
            if arity != 4 {
                return Err(ProbeError::Prototype {
                    tracepoint: tp,
                    arity,
                });
            }
        }
        let so = kernel_layout::sock_offsets(&btf)?;
        let pid_words = pid_bitmap_words();
        info!(
            fork_child = child,
            skc_family = so.family,
            sk_protocol = so.sk_protocol,
            skc_v6_daddr = so.v6_daddr,
            pid_bitmap_words = pid_words,
            "kernel layout read from tracefs and BTF"
        );

        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::FORK_CHILD_PID, &child, true)
            .override_global(globals::SKC_DADDR, &so.daddr, true)
            .override_global(globals::SKC_RCV_SADDR, &so.rcv_saddr, true)
            .override_global(globals::SKC_DPORT, &so.dport, true)
            .override_global(globals::SKC_NUM, &so.num, true)
            .override_global(globals::SKC_FAMILY, &so.family, true)
            .override_global(globals::SK_PROTOCOL, &so.sk_protocol, true)
            .override_global(globals::SKC_V6_DADDR, &so.v6_daddr, true)
            .override_global(globals::SKC_V6_RCV_SADDR, &so.v6_rcv_saddr, true)
            .map_max_entries(sonde_schema::EVENTS_MAP, sizes.ring_buffer_bytes)
            .map_max_entries(sonde_schema::CONNS_MAP, sizes.max_connections)
            .map_max_entries(sonde_schema::PID_BITMAP_MAP, pid_words)
            .load(object)
            .map_err(ProbeError::Load)?;

        for tp in RAW_TRACEPOINTS {
            attach(&mut ebpf, tp, Hook::Raw)?;
        }
        for tp in SCHED_TRACEPOINTS {
            attach(&mut ebpf, tp, Hook::Tracepoint("sched"))?;
        }

        let pid_bitmap =
            Array::try_from(take(&mut ebpf, sonde_schema::PID_BITMAP_MAP)?).map_err(|source| {
                ProbeError::Map {
                    map: sonde_schema::PID_BITMAP_MAP,
                    source,
                }
            })?;
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
        Ok(Probes {
            ebpf,
            pid_bitmap,
            pid_words,
            selected: HashSet::new(),
            counters,
            proc_events,
            ring_buffer_bytes: sizes.ring_buffer_bytes,
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

    pub fn select_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        if pid / 64 >= self.pid_words {
            return Err(ProbeError::PidOutOfRange(pid));
        }
        self.selected.insert(pid);
        self.write_word(pid / 64)
    }

    pub fn unselect_pid(&mut self, pid: u32) {
        if self.selected.remove(&pid) {
            let _ = self.write_word(pid / 64);
        }
    }

    /// Rewrites one bitmap word from the selected set (the loader owns the bitmap; the kernel
    /// only clears bits of exiting processes, which this rewrite also does).
    fn write_word(&mut self, word: u32) -> Result<(), ProbeError> {
        let bits = self
            .selected
            .iter()
            .filter(|p| **p / 64 == word)
            .fold(0u64, |acc, p| acc | 1 << (p % 64));
        self.pid_bitmap
            .set(word, bits, 0)
            .map_err(|source| ProbeError::Map {
                map: sonde_schema::PID_BITMAP_MAP,
                source,
            })
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

/// Words of the pid bitmap: enough for `kernel.pid_max` (4194304 when unreadable).
fn pid_bitmap_words() -> u32 {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    pid_max.div_ceil(64).max(1)
}

/// Where a program attaches; each program is named after its tracepoint.
#[derive(Clone, Copy)]
enum Hook {
    /// A raw tracepoint (arguments by position, no tracefs needed).
    Raw,
    /// A tracepoint of this tracefs category (`sched`, …).
    Tracepoint(&'static str),
}

/// Loads the program `name` and attaches it to `hook`.
fn attach(ebpf: &mut Ebpf, name: &'static str, hook: Hook) -> Result<(), ProbeError> {
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
