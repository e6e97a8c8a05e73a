//! Every map of the kernel side, with its size and what it is for. Sizes that depend on the
//! deployment (ring buffer, connection table) are overridden by the loader at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sonde_schema::{
    ChunkHeader, HttpEvent, STREAM_CAPTURE, counters,
    flows::{FlowKey, FlowValue},
    process_net,
};

/// `BPF_F_MMAPABLE`: the loader maps the pid filter into its memory and sets or clears one
/// byte per pid there, so no 64-bit word shared by other pids is ever rewritten from user space.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Selected processes, one byte per pid (byte `tgid % 8` of word `tgid / 8`; non-zero =
/// selected). The loader sets and clears bytes through its shared mapping; the kernel only
/// clears the byte of a pid whose process ended (leader exit) or that a new task just took
/// (fork), so a recycled pid always starts unselected. Checked on every socket read and write
/// of every process, so it is an array (lookups are inlined by the verifier) rather than a
/// hash map. The loader sizes it from `kernel.pid_max` (`pid_max` bytes).
#[map(name = "PID_FILTER")]
pub static PID_FILTER: Array<u64> = Array::with_max_entries(4096, BPF_F_MMAPABLE);

#[inline(always)]
pub fn selected(tgid: u32) -> bool {
    match PID_FILTER.get_ptr(tgid >> 3) {
        // SAFETY: pointer from a successful array lookup, valid for 8 bytes; the byte read is
        // a single load (the loader writes single bytes too).
        Some(word) => unsafe {
            core::ptr::read_volatile(word.cast::<u8>().add((tgid & 7) as usize)) != 0
        },
        None => false,
    }
}

/// Clears one pid's byte (only that byte: the neighbours belong to other pids, which the
/// loader may be setting at the same moment).
#[inline(always)]
pub fn deselect(tgid: u32) {
    if let Some(word) = PID_FILTER.get_ptr_mut(tgid >> 3) {
        // SAFETY: pointer from a successful array lookup, valid for 8 bytes; a one-byte store.
        unsafe { core::ptr::write_volatile(word.cast::<u8>().add((tgid & 7) as usize), 0) };
    }
}

/// Sets one pid's byte (a fork of a selected process; see `sched_process_fork`).
#[inline(always)]
pub fn select(tgid: u32) {
    if let Some(word) = PID_FILTER.get_ptr_mut(tgid >> 3) {
        // SAFETY: pointer from a successful array lookup, valid for 8 bytes; a one-byte store.
        unsafe { core::ptr::write_volatile(word.cast::<u8>().add((tgid & 7) as usize), 1) };
    }
}

/// Local ports whose `listen()` the loader wants to hear about (bit `port % 64` of word
/// `port / 64`), written by the loader once at load time from `open_port`.
#[map(name = "LISTEN_PORTS")]
pub static LISTEN_PORTS: Array<u64> = Array::with_max_entries(1024, 0);

#[inline(always)]
pub fn listen_port_wanted(port: u16) -> bool {
    match LISTEN_PORTS.get(u32::from(port) >> 6) {
        Some(word) => (*word >> (port & 63)) & 1 == 1,
        None => false,
    }
}

/// Completed request/response exchanges for the processor.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Process lifecycle notices for the loader.
#[map(name = "PROC_EVENTS")]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// Process metrics: socket bytes per captured process (`sonde_schema::process_net`), counted
/// only while `PROCESS_METRICS` is non-zero; per CPU, so the socket path adds without atomics
/// (the loader sums the CPUs). Removed at the process's exit (here) and when the loader
/// deselects it.
#[map(name = "PROC_NET_BYTES")]
pub static PROC_NET_BYTES: PerCpuHashMap<u32, [u64; 2]> =
    PerCpuHashMap::with_max_entries(process_net::MAX_PROCESSES, 0);

/// Non-zero when process metrics are on (`sonde_schema::process_net::ENABLED`); the loader
/// rewrites it in `.rodata` before the verifier sees it, so with the feature off the socket
/// path pays one load and a branch the verifier may even prune.
#[unsafe(no_mangle)]
static PROCESS_METRICS: u32 = 0;

#[inline(always)]
pub fn process_metrics_on() -> bool {
    // SAFETY: a plain u32 in .rodata, valid for the program's lifetime; a volatile load keeps
    // the compiler from folding the default.
    unsafe { core::ptr::read_volatile(&PROCESS_METRICS) != 0 }
}

/// Adds `n` socket bytes to `tgid`'s received (`slot` 0) or sent (`slot` 1) count. A full map
/// leaves the process uncounted (documented: its network I/O reads 0).
#[inline(always)]
pub fn count_process_bytes(tgid: u32, slot: usize, n: u64) {
    let slot = slot & 1;
    for _ in 0..2 {
        if let Some(p) = PROC_NET_BYTES.get_ptr_mut(&tgid) {
            // SAFETY: pointer from a successful lookup into this CPU's copy of the value; no
            // other CPU writes it, and a program is not preempted by another on its CPU.
            let value = unsafe { &mut *p };
            value[slot] = value[slot].wrapping_add(n);
            return;
        }
        let mut value = [0u64; 2];
        value[slot] = n;
        // BPF_NOEXIST: another CPU may have inserted the key meanwhile; then add to this
        // CPU's copy of its value.
        if PROC_NET_BYTES.insert(&tgid, &value, 1).is_ok() {
            return;
        }
    }
}

/// Drop and skip counters, indexed by `sonde_schema::counters`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// One socket read or write of a selected process, as seen from inside the syscall.
#[derive(Clone, Copy)]
pub struct SocketIo {
    /// User pointer: the data buffer, the iovec array or the msghdr, per `buf_kind`.
    pub buf: u64,
    /// Entries in the iovec array (`BUF_IOVEC` only).
    pub iov_count: u64,
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
/// A stream connection whose close notice went out.
pub const PHASE_CLOSED: u8 = 3;

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
    /// `sonde_schema::protocol::*`: how the connection's bytes are reported.
    pub protocol: u8,
    /// `CHUNK_*` flags for the connection's next stream chunk.
    pub chunk_flags: u8,
    /// Non-zero for the plaintext side of a TLS connection (kept in `TLS_CONNS`).
    pub tls: u8,
    /// `headers::HDR_*`: how far the search for `traceparent` past the capture got.
    pub hdr_scan: u8,
    pub _pad: [u8; 2],
}

/// A header search noted for later in this program run (`pairing::search_past_capture`,
/// the TLS return probe): the segment (user address, length) and its bytes captured now.
#[repr(C)]
pub struct DeferredSearch {
    pub pending: u64,
    pub ptr: u64,
    pub len: u64,
    pub captured: u64,
}

/// One per CPU: how many records this CPU wrote since it last looked at the ring's fill
/// level, and whether that look found it at or above the wakeup mark (`pairing::wakeup_flags`).
#[repr(C)]
pub struct WakeupLook {
    pub since: u32,
    pub above: u32,
}

#[map(name = "WAKEUP_LOOK")]
pub static WAKEUP_LOOK: PerCpuArray<WakeupLook> = PerCpuArray::with_max_entries(1, 0);

/// One per CPU: a program run notes at most one search and runs it before it returns.
#[map(name = "HDR_DEFERRED")]
pub static HDR_DEFERRED: PerCpuArray<DeferredSearch> = PerCpuArray::with_max_entries(1, 0);

/// The last bytes of a request segment whose header block went on past it, by connection id
/// (`headers`): the next segment's search starts with them, so a header line split across two
/// reads (nginx reads 1 KiB first) is still seen. Only requests with long header blocks have
/// an entry, removed when the block ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderTail {
    pub len: u64,
    pub bytes: [u8; HEADER_TAIL],
}

/// Bytes kept in a `HeaderTail`: a `traceparent` line with its line feed and white space.
pub const HEADER_TAIL: usize = 80;

#[map(name = "HDR_TAILS")]
pub static HDR_TAILS: LruHashMap<u64, HeaderTail> = LruHashMap::with_max_entries(4096, 0);

/// The state of the running `traceparent` search (`headers::Search`), one per CPU.
#[map(name = "HDR_SEARCH")]
pub static HDR_SEARCH: PerCpuArray<crate::headers::Search> = PerCpuArray::with_max_entries(1, 0);

/// Where a `HeaderTail` is assembled before it is stored (too large for the eBPF stack).
#[map(name = "HDR_TAIL_BUF")]
pub static HDR_TAIL_BUF: PerCpuArray<HeaderTail> = PerCpuArray::with_max_entries(1, 0);

/// Connections being paired, keyed by the kernel's `struct sock *`: the one identity that
/// every socket tracepoint (I/O and TCP state changes) hands over, so no syscall hook is
/// needed to learn about fds or closes. The address never leaves the kernel (events carry
/// `conn_id`).
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(16384, 0);

/// A counting filter in front of `CONNS` for the close path: per slot (a hash of the socket
/// address), how many sockets of that slot were inserted and not yet removed. Every TCP state
/// change of every socket on the host runs `inet_sock_set_state`; a close whose slot is zero
/// was never tracked and skips the `CONNS` lookup (a helper call) for two array reads the
/// verifier inlines (`SOCK_NUMBER`, then the slot). Incremented before the insert and
/// decremented after a successful remove, so a tracked socket's slot is never zero. What is
/// never decremented stays counted until the agent restarts: entries the LRU evicts (a full
/// `CONNS`) and a socket two CPUs inserted at once. Such slots, and slots shared with tracked
/// sockets, cost the close a lookup, which is at worst what every close paid without the
/// filter. Sized by the loader from `ebpf.max_connections` (`sonde_schema::conn_slots`: four
/// slots per connection, 65,536 to 1,048,576), with `offsets::conn_slot_shift` to match.
#[map(name = "CONN_SLOTS")]
pub static CONN_SLOTS: Array<u64> = Array::with_max_entries(1 << 16, 0);

/// The programs that hash socket addresses, each with its own `SOCK_NUMBER` word.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum SlotUser {
    Recv = 0,
    Send = 1,
    StateChange = 2,
}

/// Per CPU, a word per `SlotUser` that turns a socket pointer into a number: the verifier
/// types the BTF tracepoints' socket argument as a pointer and refuses arithmetic on it other
/// than adding offsets, but what a map value holds reads back as a plain number (storing a
/// pointer there is allowed to the privileged loader only, as is a pointer used as a map key).
/// One word per program because `inet_sock_set_state` also runs in softirq and can interrupt
/// another program between its store and its load; a program never interrupts itself on one
/// CPU (the kernel skips a nested run of the same tracing program, `prog->active`).
#[map(name = "SOCK_NUMBER")]
static SOCK_NUMBER: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// `sk`'s slot in `CONN_SLOTS`, or None if the scratch word could not be had.
#[inline(always)]
fn conn_slot(sk: u64, user: SlotUser) -> Option<u32> {
    let word = SOCK_NUMBER.get_ptr_mut(user as u32)?;
    // SAFETY: pointer from a successful per-CPU array lookup, valid for 8 bytes and written
    // only by this program on this CPU (see `SOCK_NUMBER`).
    let number = unsafe {
        core::ptr::write_volatile(word, sk);
        core::ptr::read_volatile(word)
    };
    // Fibonacci hashing of the address without its low bits (sockets are slab objects, their
    // low bits are alike).
    Some(
        ((number >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> crate::offsets::conn_slot_shift())
            as u32,
    )
}

/// Counts `sk` in its slot (before it is inserted into `CONNS`); `by` is 1 or -1.
#[inline(always)]
pub fn conn_slot_add(sk: u64, by: i32, user: SlotUser) {
    if let Some(p) = conn_slot(sk, user).and_then(|slot| CONN_SLOTS.get_ptr_mut(slot)) {
        // SAFETY: pointer from a successful array lookup, valid and 8-aligned for the map's
        // lifetime; other CPUs update the same slot only through atomics.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p,
                by as i64 as u64,
            )
        };
    }
}

/// False when no socket of `sk`'s slot is in `CONNS`: `sk` certainly is not. True when the
/// slot cannot be read (the lookup then decides).
#[inline(always)]
pub fn conn_maybe_tracked(sk: u64) -> bool {
    match conn_slot(sk, SlotUser::StateChange).and_then(|slot| CONN_SLOTS.get_ptr(slot)) {
        // SAFETY: pointer from a successful array lookup, valid for 8 bytes; one aligned load.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

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

/// Room for one stream chunk record: the header, then the captured bytes. Three times the capture
/// size because segments are appended at a masked offset below `STREAM_CAPTURE` with a masked length, and the
/// verifier must see that the largest such copy stays inside the value.
#[repr(C)]
pub struct ChunkBuf {
    pub header: ChunkHeader,
    pub data: [u8; 3 * STREAM_CAPTURE],
}

/// Scratch space a stream chunk is assembled in (too large for the eBPF stack), one slot per
/// CPU, indexed by the current CPU: a per-CPU array would do, but its values are limited to
/// 32 KiB. The loader sizes it to the number of possible CPUs. Programs run with migration
/// disabled and the socket tracepoints fire in process context, so a slot has one user at a
/// time.
#[map(name = "CHUNK_BUF")]
pub static CHUNK_BUF: Array<ChunkBuf> = Array::with_max_entries(1, 0);

/// A TLS connection: the process and its OpenSSL `SSL *` (unique within the process while the
/// connection lives).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsKey {
    pub tgid: u64,
    pub ssl: u64,
}

/// An `SSL_read`/`SSL_write` (or `_ex`) call in progress on a thread, from entry to return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// `_ex` variants: where the byte count is written (`size_t *`); 0 otherwise.
    pub len_ptr: u64,
    /// `tls::FUNC_*`, from the uprobe's cookie.
    pub func: u64,
}

/// SSL calls in progress, by thread (`pid_tgid`).
#[map(name = "SSL_CALLS")]
pub static SSL_CALLS: HashMap<u64, SslCall> = HashMap::with_max_entries(16384, 0);

/// The `SSL *` a thread last wrote through, by thread: the next socket write of that thread
/// carries its ciphertext (Node.js and Python's `SSLObject` send after `SSL_write` returns),
/// so that socket is linked to it.
#[map(name = "SSL_PENDING_WRITE")]
pub static SSL_PENDING_WRITE: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// Sockets linked to a TLS connection: their bytes are ciphertext, skipped by the socket path;
/// their close ends the TLS connection.
#[map(name = "SOCK_TLS")]
pub static SOCK_TLS: LruHashMap<u64, TlsKey> = LruHashMap::with_max_entries(16384, 0);

/// Sockets whose first bytes were a TLS record but that are not linked (yet): their later
/// bytes are ciphertext too (see `pairing::on_new_connection`). The value is unused.
#[map(name = "TLS_SEEN")]
pub static TLS_SEEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Whether a socket was ever put in `TLS_SEEN` (slot `TLS_USED_SEEN`) or `SOCK_TLS` (slot
/// `TLS_USED_LINKED`). Every TCP socket on the host closes through `pairing::on_close`, and
/// every new connection of a selected process asks whether it is TLS: until a slot is set,
/// those skip the map's lookup (an inlined array load instead of a hash lookup). Set before
/// the first insert, never cleared: once TLS was seen, the lookups run as before.
#[map(name = "TLS_USED")]
pub static TLS_USED: Array<u32> = Array::with_max_entries(2, 0);
pub const TLS_USED_SEEN: u32 = 0;
pub const TLS_USED_LINKED: u32 = 1;

/// True once `slot` of `TLS_USED` was set.
#[inline(always)]
pub fn tls_used(slot: u32) -> bool {
    TLS_USED.get(slot).is_some_and(|v| *v != 0)
}

/// Sets `slot` of `TLS_USED` (written only while clear, so the line is not dirtied on every
/// insert).
#[inline(always)]
pub fn mark_tls_used(slot: u32) {
    if let Some(p) = TLS_USED.get_ptr_mut(slot) {
        // SAFETY: pointer from a successful array lookup, valid for 4 bytes; a racing writer
        // stores the same value.
        unsafe {
            if core::ptr::read_volatile(p) == 0 {
                core::ptr::write_volatile(p, 1);
            }
        }
    }
}

/// The socket of a TLS connection, once linked: where its endpoints are read from.
#[map(name = "TLS_SOCK")]
pub static TLS_SOCK: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Pairing state of TLS connections (plaintext), as `CONNS` for cleartext ones.
#[map(name = "TLS_CONNS")]
pub static TLS_CONNS: LruHashMap<TlsKey, ConnState> = LruHashMap::with_max_entries(4096, 0);

/// Network flow counts (`flows.rs`), per CPU: no atomic adds on the packet path. The loader
/// sizes it to `network.cache_max_flows` (a tiny map when flow metrics are off: the programs
/// are not attached then) and reads, sums and ages the entries.
#[map(name = "FLOWS")]
pub static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> = LruPerCpuHashMap::with_max_entries(64, 0);
