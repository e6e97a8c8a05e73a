//! Every map of the kernel side, with its size and what it is for. Sizes that depend on the
//! deployment (ring buffer, connection table) are overridden by the loader at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use sonde_schema::{HttpEvent, counters};

/// Selected processes as a bitmap over pids (bit `tgid % 64` of word `tgid / 64`), written by
/// the loader. Checked on every socket read and write of every process, so it is an array
/// (lookups are inlined by the verifier) rather than a hash map. The loader sizes it from
/// `kernel.pid_max`.
#[map(name = "PID_BITMAP")]
pub static PID_BITMAP: Array<u64> = Array::with_max_entries(65536, 0);

#[inline(always)]
pub fn selected(tgid: u32) -> bool {
    match PID_BITMAP.get(tgid >> 6) {
        Some(word) => (*word >> (tgid & 63)) & 1 == 1,
        None => false,
    }
}

/// Clears a pid from the bitmap (the loader, which owns the bitmap, does the same when it
/// handles the exit notice; this only closes the window before it does).
#[inline(always)]
pub fn deselect(tgid: u32) {
    if let Some(word) = PID_BITMAP.get_ptr_mut(tgid >> 6) {
        // SAFETY: pointer from a successful array lookup; a racing loader write of the same
        // word is benign (the loader rewrites the word from its own set).
        unsafe { *word &= !(1u64 << (tgid & 63)) };
    }
}

/// Completed request/response exchanges for the processor.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Process lifecycle notices for the loader.
#[map(name = "PROC_EVENTS")]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// Drop and skip counters, indexed by `sonde_schema::counters`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// One socket read or write of a selected process, as seen from inside the syscall.
#[derive(Clone, Copy)]
pub struct SocketIo {
    /// User pointer: the data buffer, the iovec array or the msghdr, per `buf_kind`.
    pub buf: u64,
    /// `struct sock *` from the tracepoint.
    pub sk: u64,
    pub fd: u32,
    pub op: u8,
    pub buf_kind: u8,
}

pub const OP_READ: u8 = 1;
pub const OP_WRITE: u8 = 2;

pub const BUF_PLAIN: u8 = 0;
pub const BUF_IOVEC: u8 = 1;
pub const BUF_MSGHDR: u8 = 2;
/// The syscall moves bytes without a user buffer (sendfile): count them, capture nothing.
pub const BUF_NONE: u8 = 3;

pub const PHASE_IDLE: u8 = 0;
pub const PHASE_REQUEST: u8 = 1;
pub const PHASE_RESPONSE: u8 = 2;

/// Bytes after the event's capture buffers that are never read: appends to the capture
/// buffers use a masked offset plus a masked length, and the verifier must be able to prove
/// that the largest such write stays inside the map value.
pub const VERIFIER_SLACK: usize = 768;

/// Per-connection pairing state. `event` is emitted as-is when the response starts.
#[repr(C)]
pub struct ConnState {
    pub event: HttpEvent,
    pub slack: [u8; VERIFIER_SLACK],
    pub phase: u8,
    pub role: u8,
    pub _pad: [u8; 6],
}

/// Connections being paired, keyed by the kernel's `struct sock *`: the one identity that
/// every socket tracepoint (I/O and TCP state changes) hands over, so no syscall hook is
/// needed to learn about fds or closes. The address never leaves the kernel (events carry
/// `conn_id`).
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(16384, 0);

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
