//! Every map of the kernel side, with its size and what it is for. Sizes that depend on the
//! deployment (ring buffer, connection table) are overridden by the loader at load time.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sonde_schema::{HttpEvent, counters};

/// Selected processes (tgid → 1), written by the loader, read on every hooked syscall.
#[map(name = "PID_FILTER")]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(8192, 0);

/// Completed request/response exchanges for the processor.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Process lifecycle notices for the loader.
#[map(name = "PROC_EVENTS")]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// Drop and skip counters, indexed by `sonde_schema::counters`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// A syscall of a selected process between its entry and its exit, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// User pointer: the data buffer, the iovec array or the msghdr, per `buf_kind`.
    pub buf: u64,
    pub start_ns: u64,
    /// `struct sock *` reported by the socket tracepoint while the syscall ran.
    pub sk: u64,
    pub fd: u32,
    pub op: u8,
    pub buf_kind: u8,
    /// Set when a socket tracepoint saw a TCP (IPv4/IPv6) socket during this syscall.
    pub tcp: u8,
    pub _pad: u8,
}

pub const OP_READ: u8 = 1;
pub const OP_WRITE: u8 = 2;

pub const BUF_PLAIN: u8 = 0;
pub const BUF_IOVEC: u8 = 1;
pub const BUF_MSGHDR: u8 = 2;
/// The syscall moves bytes without a user buffer (sendfile): count them, capture nothing.
pub const BUF_NONE: u8 = 3;

#[map(name = "INFLIGHT")]
pub static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(16384, 0);

/// Key of a connection: the owning process and its fd for the socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

pub const PHASE_IDLE: u8 = 0;
pub const PHASE_REQUEST: u8 = 1;
pub const PHASE_RESPONSE: u8 = 2;

/// Bytes after the event's capture buffers that are never read: appends to the capture
/// buffers use a masked offset plus a masked length, and the verifier must be able to prove
/// that the largest such write stays inside the map value.
pub const VERIFIER_SLACK: usize = 768;

/// Per-connection pairing state. `event` is emitted as-is when the exchange completes.
#[repr(C)]
pub struct ConnState {
    pub event: HttpEvent,
    pub slack: [u8; VERIFIER_SLACK],
    pub sk: u64,
    pub phase: u8,
    pub role: u8,
    pub _pad: [u8; 6],
}

#[map(name = "CONNS")]
pub static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(16384, 0);

/// One all-zero `ConnState`, never written: the template a new connection is inserted from
/// (the value is too large for the 512-byte eBPF stack).
#[map(name = "CONN_ZERO")]
pub static CONN_ZERO: PerCpuArray<ConnState> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is
        // valid and only this CPU's program can touch it while we run (no preemption).
        unsafe { *slot += 1 };
    }
}
