//! Context propagation (`ebpf.context_propagation: headers`): a W3C `traceparent` added to
//! cleartext HTTP/1 requests that selected processes send, with the ids their client span
//! will carry. User memory cannot be written here (kernel lockdown), so the header is added
//! to the socket message on its way down: an `sk_msg` program with `bpf_msg_push_data`.
//!
//! Which sockets: a cgroup `connect4`/`connect6` program runs in the connecting process and
//! marks the socket (by cookie) when the process is selected; the `sock_ops` program, on the
//! cgroup v2 root, puts a marked socket into `INJECT_SOCKS` once it is established. Only those
//! sockets take the `tcp_bpf` path and meet the `sk_msg` program; every other socket of the
//! host keeps the plain TCP path (grafana/beyla#2691: putting every socket of a cgroup into a
//! sockmap slows all of them and collides with other sk_msg users).
//!
//! What is touched: a message that starts with a request line of a standard method and holds
//! the whole header block (`\r\n\r\n` within its first `SCAN_LIMIT` bytes) with no
//! `traceparent` line. The header goes in before the block's last CRLF. Everything else passes
//! byte for byte. Request bodies are followed by their `Content-Length`, so a body that
//! happens to look like a request is never touched; a connection whose framing cannot be
//! followed (chunked bodies, a header block split across messages, several requests in one
//! message) is left alone from then on.
//!
//! The ids reach the span through the socket-write tracepoint, which fires after this program
//! in the same system call on the same thread: the injected value waits in `INJECT_PENDING`
//! (keyed by thread) and `stamp` copies it into the connection's `HttpEvent`.
//!
//! A request sent while its thread serves one (a thread-per-request server calling
//! downstream) continues the served request's trace: the server side (`serve_begin`, from the
//! pairing code) gives each server request its ids when it starts — the caller's trace id
//! when its `traceparent` is valid (`adopt_incoming`, from the header search, which with this
//! feature on looks through every server request's header block), else a random one — and
//! keeps them in `INJECT_SERVING` under the reading thread until the response starts. The
//! injected header then carries that trace id with a fresh span id, and the client span's
//! parent is the server span (`HttpEvent::injected_parent`); the processor gives the server
//! span the same ids (`HttpEvent::server_ids`). A thread that reads a request while another
//! it read is still unanswered (an event loop, pipelining) is marked ambiguous and from then
//! on sends traces of their own: a request is never put in the wrong trace. Requests sent
//! from other threads (a pool, a thread started for the request) are not linked here.
//!
//! Trace flags carry the processor's sampling decision for the client span: `01` when the
//! upper 63 bits of the trace id's last 8 bytes are below the rule in `INJECT_SAMPLING` (the
//! processor's sampler, `sampling::inject_bound`, handed over by the loader at its hello),
//! else `00`; `01` until a processor said. Under a server span the flags are the caller's
//! (when it sent a valid `traceparent`) or that rule applied to the server's trace id: the
//! decision the processor makes for the server span. The processor takes the flags as the
//! client span's parent decision, so both ends agree (see `protocols/http1` and
//! docs/configuration.md).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, sk_action::SK_PASS},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel},
    },
    macros::{cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{Array, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use sonde_schema::{
    DIRECTION_CLIENT, TRACEPARENT_INJECTED, TRACEPARENT_LEN, counters,
    inject::{self, LINE_LEN, SCAN_LIMIT},
};

use core::mem::MaybeUninit;

use crate::{
    maps::{CONNS, ConnState, PHASE_REQUEST, selected},
    zero::{self, Words},
};

/// Reads one `u32` context field. Volatile, so the compiler loads it straight from the
/// context pointer plus a constant: the verifier refuses context reads through a pointer the
/// program moved (as a copy of a whole array field would do).
macro_rules! ctx_u32 {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: a 4-byte read of a field of the kernel's context structure.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx).$($field)+)) }
    };
}

/// Non-zero when these programs are attached (the loader rewrites it before loading): the
/// socket-write path then looks for an injected value.
#[unsafe(no_mangle)]
static INJECT_ENABLED: u32 = 0;

#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain u32 in .rodata; a volatile load keeps the default from being folded.
    unsafe { core::ptr::read_volatile(&INJECT_ENABLED) != 0 }
}

/// Selected processes' client sockets, by cookie. The kernel removes a socket when it closes.
#[map(name = "INJECT_SOCKS")]
static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(inject::MAX_SOCKETS, 0);

/// Sockets a selected process is connecting (cookie → 1), until they are established.
#[map(name = "INJECT_MARKED")]
static INJECT_MARKED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// The sampling rule of injected flags plus one (0: none said, every trace sampled).
#[map(name = "INJECT_SAMPLING")]
static INJECT_SAMPLING: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "INJECT_STATS")]
static INJECT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(inject::COUNT, 0);

/// What a thread just injected, for its socket-write tracepoint (`stamp`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    value: [u8; TRACEPARENT_LEN],
    _pad: u8,
    /// The server span the request was sent under; zero: none.
    parent: [u8; 8],
}

#[map(name = "INJECT_PENDING")]
static INJECT_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// One `Pending` per CPU, built here rather than on the `sk_msg` program's small stack.
#[map(name = "INJECT_PENDING_BUF")]
static INJECT_PENDING_BUF: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// `Serving::parent_flags` when the request carried no valid `traceparent`.
const NO_PARENT: u8 = 0xff;

/// The request a thread is serving (see the module doc).
#[repr(C)]
#[derive(Clone, Copy)]
struct Serving {
    conn_id: u64,
    /// The server span's trace id and span id.
    ids: [u8; 24],
    /// The caller's sampled flag (0 or 1), or `NO_PARENT`.
    parent_flags: u8,
    /// Non-zero from the request's first byte until its response starts.
    in_flight: u8,
    /// Non-zero once the thread was seen serving overlapping requests: never cleared.
    ambiguous: u8,
    _pad: [u8; 5],
}

#[map(name = "INJECT_SERVING")]
static INJECT_SERVING: LruHashMap<u64, Serving> =
    LruHashMap::with_max_entries(inject::MAX_SERVING_THREADS, 0);

/// How a connection's outgoing bytes are framed, as far as this program follows them.
#[repr(C)]
#[derive(Clone, Copy)]
struct Framing {
    /// Body bytes of the last request still to come in later messages.
    body_left: u64,
    /// Non-zero: the framing was lost; nothing more is touched on this connection.
    gave_up: u64,
}

/// A connection as the `sk_msg` context names it (its two endpoints).
#[repr(C)]
#[derive(Clone, Copy)]
struct ConnKey {
    remote: [u32; 4],
    local: [u32; 4],
    remote_port: u32,
    local_port: u32,
}

#[map(name = "INJECT_FRAMING")]
static INJECT_FRAMING: LruHashMap<ConnKey, Framing> =
    LruHashMap::with_max_entries(inject::MAX_SOCKETS, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = INJECT_STATS.get_ptr_mut(index) {
        // SAFETY: pointer from a successful per-CPU array lookup; no other program runs on
        // this CPU's slot meanwhile.
        unsafe { *slot += 1 };
    }
}

const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;

/// A selected process connects a TCP socket: remember it until it is established.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !selected(tgid) {
        return 1;
    }
    // SAFETY: the context pointer is the kernel's; `type` is a readable field.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let _ = INJECT_MARKED.insert(&cookie, &1, 0);
    1
}

#[cgroup_sock_addr(connect4)]
pub fn inject_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn inject_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx)
}

/// A connection is established: a marked socket joins the map (and so meets the `sk_msg`
/// program); every other socket costs one hash lookup, once.
#[sock_ops]
pub fn inject_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if INJECT_MARKED.get_ptr(&cookie).is_none() {
        return 1;
    }
    let _ = INJECT_MARKED.remove(&cookie);
    // A reused 4-tuple starts with fresh framing.
    let o = ctx.ops;
    let v4 = ctx_u32!(o, family) == AF_INET;
    let key = ConnKey {
        remote: if v4 {
            [ctx_u32!(o, remote_ip4), 0, 0, 0]
        } else {
            [
                ctx_u32!(o, remote_ip6[0]),
                ctx_u32!(o, remote_ip6[1]),
                ctx_u32!(o, remote_ip6[2]),
                ctx_u32!(o, remote_ip6[3]),
            ]
        },
        local: if v4 {
            [ctx_u32!(o, local_ip4), 0, 0, 0]
        } else {
            [
                ctx_u32!(o, local_ip6[0]),
                ctx_u32!(o, local_ip6[1]),
                ctx_u32!(o, local_ip6[2]),
                ctx_u32!(o, local_ip6[3]),
            ]
        },
        remote_port: ctx_u32!(o, remote_port),
        local_port: ctx_u32!(o, local_port),
    };
    let _ = INJECT_FRAMING.remove(&key);
    // SAFETY: the context is the kernel's `bpf_sock_ops` for this established socket.
    match INJECT_SOCKS.update(cookie, unsafe { &mut *ctx.ops }, BPF_NOEXIST as u64) {
        Ok(()) => count(inject::SOCKETS_ADDED),
        Err(_) => count(inject::SOCKHASH_FULL),
    }
    1
}

/// Every message sent on a socket in the map. Always passes it on; at most adds the header.
#[sk_msg]
pub fn inject_sk_msg(ctx: SkMsgContext) -> u32 {
    on_message(&ctx);
    SK_PASS
}

#[inline(always)]
fn conn_key(ctx: &SkMsgContext) -> ConnKey {
    let m = ctx.msg;
    let v4 = ctx_u32!(m, family) == AF_INET;
    ConnKey {
        remote: if v4 {
            [ctx_u32!(m, remote_ip4), 0, 0, 0]
        } else {
            [
                ctx_u32!(m, remote_ip6[0]),
                ctx_u32!(m, remote_ip6[1]),
                ctx_u32!(m, remote_ip6[2]),
                ctx_u32!(m, remote_ip6[3]),
            ]
        },
        local: if v4 {
            [ctx_u32!(m, local_ip4), 0, 0, 0]
        } else {
            [
                ctx_u32!(m, local_ip6[0]),
                ctx_u32!(m, local_ip6[1]),
                ctx_u32!(m, local_ip6[2]),
                ctx_u32!(m, local_ip6[3]),
            ]
        },
        remote_port: ctx_u32!(m, remote_port),
        local_port: ctx_u32!(m, local_port),
    }
}

/// True when the message starts with a standard method and a space.
#[inline(always)]
fn starts_with_method(data: usize, end: usize) -> bool {
    if data + 8 > end {
        return false;
    }
    // SAFETY: 8 bytes checked against the packet end just above.
    let h = unsafe { core::ptr::read_unaligned(data as *const [u8; 8]) };
    matches!(
        [h[0], h[1], h[2], h[3]],
        [b'G', b'E', b'T', b' '] | [b'P', b'U', b'T', b' ']
    ) || matches!(
        [h[0], h[1], h[2], h[3], h[4]],
        [b'P', b'O', b'S', b'T', b' '] | [b'H', b'E', b'A', b'D', b' ']
    ) || [h[0], h[1], h[2], h[3], h[4], h[5]] == *b"PATCH "
        || [h[0], h[1], h[2], h[3], h[4], h[5], h[6]] == *b"DELETE "
        || h == *b"OPTIONS "
}

/// Offsets into the scan buffer are masked with this (the buffer has room past it for the
/// longest read at a masked offset).
const SCAN_MASK: u64 = SCAN_LIMIT as u64 - 1;

/// The message's first bytes and what the scan found, in this CPU's slot of `INJECT_SCAN`
/// (too large for the stack; and values read from a map are unknown to the verifier, so the
/// `bpf_loop` callback is verified once, not once per position).
#[repr(C)]
pub struct Scan {
    buf: [u8; SCAN_LIMIT as usize + 64],
    /// Bytes copied into `buf`.
    len: u64,
    /// Offset just past the header block's `\r\n\r\n`; 0 while not found.
    end: u64,
    /// Offset of the `Content-Length` value; 0 when there is none.
    cl_at: u64,
    has_traceparent: u64,
    chunked: u64,
}

#[map(name = "INJECT_SCAN")]
static INJECT_SCAN: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

/// 8 bytes of the scan buffer at `at` (masked), little endian, with bit 0x20 set in each:
/// ASCII letters lower-cased, `:` and `-` unchanged.
#[inline(always)]
fn lower8(buf: &[u8; SCAN_LIMIT as usize + 64], at: u64) -> u64 {
    // SAFETY: a masked offset plus 8 stays inside the buffer (64 bytes of room past the mask).
    let b = unsafe {
        core::ptr::read_unaligned(buf.as_ptr().add((at & SCAN_MASK) as usize) as *const [u8; 8])
    };
    u64::from_le_bytes(b) | 0x2020_2020_2020_2020
}

const fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// `traceparent:` (12 bytes: words at 0 and 4).
const TP: [u64; 2] = [word(b"tracepar"), word(b"eparent:")];
/// `content-length:` (15 bytes: words at 0 and 7).
const CL: [u64; 2] = [word(b"content-"), word(b"-length:")];
/// `transfer-encoding:` (18 bytes: words at 0, 8 and 10).
const TE: [u64; 3] = [word(b"transfer"), word(b"-encodin"), word(b"ncoding:")];

/// One line feed at `i` (below `s.len`): the blank line ends the block (true: stop);
/// otherwise the next line's name is compared with the three that matter, each comparison
/// branch-free.
#[inline(always)]
fn at_line_feed(s: &mut Scan, i: u64) -> bool {
    if i + 3 <= s.len
        && s.buf[((i + 1) & SCAN_MASK) as usize] == b'\r'
        && s.buf[((i + 2) & SCAN_MASK) as usize] == b'\n'
    {
        s.end = i + 3;
        return true;
    }
    let q = i + 1;
    // Each name is compared only when all of it is inside the copied bytes (the words may
    // read past them into the buffer's room, but then the lengths below fail).
    let w0 = lower8(&s.buf, q);
    if q + 12 <= s.len && (w0 ^ TP[0]) | (lower8(&s.buf, q + 4) ^ TP[1]) == 0 {
        s.has_traceparent = 1;
    }
    if q + 18 <= s.len
        && (w0 ^ TE[0]) | (lower8(&s.buf, q + 8) ^ TE[1]) | (lower8(&s.buf, q + 10) ^ TE[2]) == 0
    {
        s.chunked = 1;
    }
    if q + 15 <= s.len && (w0 ^ CL[0]) | (lower8(&s.buf, q + 7) ^ CL[1]) == 0 {
        s.cl_at = q + 15;
    }
    false
}

/// Eight bytes of the scan (`bpf_loop` callback, `index` counts words): a word without a line
/// feed costs one load and a bit test; one with line feeds is looked at byte by byte.
/// Returns 1 to stop.
extern "C" fn scan_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let _ = ctx;
    let Some(sp) = INJECT_SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled before the loop; nothing else uses it meanwhile.
    let s = unsafe { &mut *sp };
    let base = index * 8;
    if base >= s.len {
        return 1;
    }
    // SAFETY: a masked offset plus 8 stays inside the buffer (64 bytes of room past the mask).
    let w = u64::from_le_bytes(unsafe {
        core::ptr::read_unaligned(s.buf.as_ptr().add((base & SCAN_MASK) as usize) as *const [u8; 8])
    });
    // Non-zero when some byte of `w` is 0x0a (exact for "none": no false negatives).
    let x = w ^ 0x0a0a_0a0a_0a0a_0a0a;
    if x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 == 0 {
        return 0;
    }
    let mut k: u64 = 0;
    while k < 8 {
        let i = base + k;
        if i >= s.len {
            return 1;
        }
        if s.buf[(i & SCAN_MASK) as usize] == b'\n' && at_line_feed(s, i) {
            return 1;
        }
        k += 1;
    }
    0
}

/// Parses ` 1234\r` at `at` in the scan buffer (optional blanks, 1 to 12 digits, CR).
#[inline(always)]
fn content_length_at(s: &Scan, at: u64) -> Option<u64> {
    let mut n: u64 = 0;
    let mut digits: u32 = 0;
    let mut k: u64 = 0;
    while k < 16 {
        if at + k >= s.len {
            return None;
        }
        let c = s.buf[((at + k) & SCAN_MASK) as usize];
        if c.is_ascii_digit() {
            if digits == 12 {
                return None;
            }
            n = n * 10 + u64::from(c - b'0');
            digits += 1;
        } else if c == b'\r' && digits > 0 {
            return Some(n);
        } else if !(c == b' ' || c == b'\t') || digits > 0 {
            return None;
        }
        k += 1;
    }
    None
}

/// The lower-case hex digit of `v & 15`. Computed, not looked up: a 16-byte table lands in a
/// mergeable constant section (`.rodata.cst16`) that the loader's relocation does not map.
#[inline(always)]
fn hex_digit(v: u8) -> u8 {
    let d = v & 15;
    if d < 10 { b'0' + d } else { b'a' + d - 10 }
}

/// Messages up to this size are made contiguous after the header is added (see
/// `on_message`); a larger one already leaves in full-size segments.
const LINEARIZE_LIMIT: u32 = 16 * 1024;

/// Whether a trace whose id ends with `low` (its last 8 bytes, big-endian) is sampled.
#[inline(always)]
fn sampled(low: u64) -> bool {
    match INJECT_SAMPLING.get(0) {
        Some(&rule) if rule != 0 => (low >> 1) < rule - 1,
        _ => true,
    }
}

/// Fills `ids[from..]` with random bytes (in 4-byte draws; `from` is 0 or 16).
#[inline(always)]
fn draw(ids: &mut [u8; 24], from: usize) {
    let mut k = from / 4;
    while k < 6 {
        // SAFETY: no preconditions.
        let r = unsafe { bpf_get_prandom_u32() }.to_be_bytes();
        ids[k * 4] = r[0];
        ids[k * 4 + 1] = r[1];
        ids[k * 4 + 2] = r[2];
        ids[k * 4 + 3] = r[3];
        k += 1;
    }
    // All-zero ids are invalid; a zero draw of 128 (or 64) bits is not worth a branch more
    // than this one. A trace id taken from the served request (`from` 16) stays as it came.
    if from == 0 {
        ids[15] |= 1;
    }
    ids[23] |= 1;
}

/// The trace id's last 8 bytes, big-endian (what the ratio samplers look at).
#[inline(always)]
fn trace_low(ids: &[u8; 24]) -> u64 {
    u64::from_be_bytes([
        ids[8], ids[9], ids[10], ids[11], ids[12], ids[13], ids[14], ids[15],
    ])
}

/// `00-<trace>-<span>-<flags>` from binary ids.
#[inline(always)]
fn write_traceparent(out: &mut [u8; TRACEPARENT_LEN], ids: &[u8; 24], sampled: bool) {
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    let mut i = 0;
    while i < 16 {
        out[3 + 2 * i] = hex_digit(ids[i] >> 4);
        out[4 + 2 * i] = hex_digit(ids[i]);
        i += 1;
    }
    out[35] = b'-';
    let mut i = 0;
    while i < 8 {
        out[36 + 2 * i] = hex_digit(ids[16 + i] >> 4);
        out[37 + 2 * i] = hex_digit(ids[16 + i]);
        i += 1;
    }
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
}

/// The value of one hex digit (either case, as the processor's parser takes them).
#[inline(always)]
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `2 * N` hex digits of `v` from `at` into `out`; false on a non-hex digit.
#[inline(always)]
fn unhex<const N: usize>(v: &[u8; TRACEPARENT_LEN], at: usize, out: &mut [u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        let (Some(hi), Some(lo)) = (nibble(v[at + 2 * i]), nibble(v[at + 2 * i + 1])) else {
            return false;
        };
        out[i] = hi << 4 | lo;
        i += 1;
    }
    true
}

/// A server request starts on thread `id` (context propagation on): its span gets ids now,
/// and the thread remembers them while the request is in flight.
#[inline(always)]
pub fn serve_begin(state: &mut ConnState, id: u64) {
    let mut ids_slot = MaybeUninit::<Words<24>>::uninit();
    // SAFETY: `Words` is a byte array: valid all zero.
    let ids = &mut unsafe { zero::zero(&mut ids_slot) }.0;
    draw(ids, 0);
    state.event.server_ids = *ids;
    if let Some(p) = INJECT_SERVING.get_ptr_mut(&id) {
        // SAFETY: pointer from a successful lookup; only this thread writes its entry while
        // it runs this program (`serve_end` from another thread touches `in_flight` only).
        let s = unsafe { &mut *p };
        if s.in_flight != 0 {
            s.ambiguous = 1;
            // In the socket programs' counters: this runs in them (and in the TLS probes,
            // loaded after the injection maps went to the attachment).
            crate::maps::count(counters::OVERLAPPING_SERVER_REQUESTS);
        }
        s.conn_id = state.event.conn_id;
        s.ids = *ids;
        s.parent_flags = NO_PARENT;
        s.in_flight = 1;
        return;
    }
    let mut fresh_slot = MaybeUninit::<Serving>::uninit();
    // SAFETY: a serving record is integers and byte arrays: valid all zero.
    let fresh = unsafe { zero::zero(&mut fresh_slot) };
    fresh.conn_id = state.event.conn_id;
    fresh.ids = *ids;
    fresh.parent_flags = NO_PARENT;
    fresh.in_flight = 1;
    let _ = INJECT_SERVING.insert(&id, &*fresh, 0);
}

/// The header search found the server request's `traceparent` (in `state.event.traceparent`):
/// when it is valid (as the processor's parser judges: version `00`, hex ids, neither all
/// zero), the server span continues the caller's trace, and so do the requests its thread
/// sends meanwhile.
#[inline(always)]
pub fn adopt_incoming(state: &mut ConnState) {
    let v = &state.event.traceparent;
    if v[0] != b'0' || v[1] != b'0' || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return;
    }
    let mut trace_slot = MaybeUninit::<Words<16>>::uninit();
    // SAFETY: `Words` are byte arrays: valid all zero.
    let trace = unsafe { zero::zero(&mut trace_slot) };
    let mut span_slot = MaybeUninit::<Words<8>>::uninit();
    // SAFETY: as for `trace`.
    let span = unsafe { zero::zero(&mut span_slot) };
    let mut flags = [0u8; 1];
    if !unhex(v, 3, &mut trace.0) || !unhex(v, 36, &mut span.0) || !unhex(v, 53, &mut flags) {
        return;
    }
    if trace.is_zero() || span.is_zero() {
        return;
    }
    state.event.server_ids[..16].copy_from_slice(&trace.0);
    let id = (u64::from(state.event.pid) << 32) | u64::from(state.event.tid);
    if let Some(p) = INJECT_SERVING.get_ptr_mut(&id) {
        // SAFETY: pointer from a successful lookup (see `serve_begin`).
        let s = unsafe { &mut *p };
        if s.conn_id == state.event.conn_id {
            s.ids[..16].copy_from_slice(&trace.0);
            s.parent_flags = flags[0] & 1;
        }
    }
}

/// A server request's response starts (or its connection closes first): its thread serves
/// it no more.
#[inline(always)]
pub fn serve_end(state: &ConnState) {
    let id = (u64::from(state.event.pid) << 32) | u64::from(state.event.tid);
    if let Some(p) = INJECT_SERVING.get_ptr_mut(&id) {
        // SAFETY: pointer from a successful lookup; a one-byte store.
        let s = unsafe { &mut *p };
        if s.conn_id == state.event.conn_id {
            s.in_flight = 0;
        }
    }
}

/// The `traceparent` to inject for the thread `id` into `out`: under the request the thread
/// serves, if it serves exactly one, else a trace of its own.
#[inline(always)]
fn next_context(id: u64, out: &mut Pending) {
    let mut ids_slot = MaybeUninit::<Words<24>>::uninit();
    // SAFETY: `Words` is a byte array: valid all zero.
    let ids = &mut unsafe { zero::zero(&mut ids_slot) }.0;
    let serving = INJECT_SERVING.get_ptr(&id);
    let mut sampled_flag = NO_PARENT;
    out.parent = [0; 8];
    let mut from = 0;
    if let Some(p) = serving {
        // SAFETY: pointer from a successful lookup; copied field by field at once.
        let s = unsafe { &*p };
        if s.in_flight != 0 {
            if s.ambiguous != 0 {
                count(inject::SERVER_AMBIGUOUS);
            } else {
                ids[..16].copy_from_slice(&s.ids[..16]);
                out.parent.copy_from_slice(&s.ids[16..]);
                sampled_flag = s.parent_flags;
                from = 16;
                count(inject::UNDER_SERVER);
            }
        }
    }
    draw(ids, from);
    let sampled = if sampled_flag == NO_PARENT {
        sampled(trace_low(&ids))
    } else {
        sampled_flag != 0
    };
    write_traceparent(&mut out.value, &ids, sampled);
}

#[inline(always)]
fn on_message(ctx: &SkMsgContext) {
    let key = conn_key(ctx);
    let size = ctx.size();
    let framing = match INJECT_FRAMING.get_ptr_mut(&key) {
        Some(f) => f,
        None => {
            let mut fresh = MaybeUninit::<Framing>::uninit();
            if INJECT_FRAMING
                // SAFETY: a framing record is two integers: valid all zero.
                .insert(&key, &*unsafe { zero::zero(&mut fresh) }, 0)
                .is_err()
            {
                return;
            }
            match INJECT_FRAMING.get_ptr_mut(&key) {
                Some(f) => f,
                None => return,
            }
        }
    };
    // SAFETY: pointer from a successful lookup; only this socket's sender (serialized by the
    // socket lock) touches its entry.
    let framing = unsafe { &mut *framing };
    if framing.gave_up != 0 {
        return;
    }
    let size = u64::from(size);
    if framing.body_left > 0 {
        if size <= framing.body_left {
            framing.body_left -= size;
            return;
        }
        // The body ends inside this message and more follows: a request pipelined behind it
        // (or bytes this program cannot place).
        framing.gave_up = 1;
        count(inject::GAVE_UP);
        return;
    }
    let pull = if size < SCAN_LIMIT as u64 {
        size as u32
    } else {
        SCAN_LIMIT
    };
    // SAFETY: the helper takes the program's own context; it bounds-checks the range.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, pull, 0) } != 0 {
        framing.gave_up = 1;
        count(inject::FAILED);
        return;
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if !starts_with_method(data, end) {
        // Not a request start where one is expected: a protocol this program does not know,
        // or bytes it lost track of. Leave the connection alone.
        framing.gave_up = 1;
        count(inject::GAVE_UP);
        return;
    }
    let Some(sp) = INJECT_SCAN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU here.
    let scan = unsafe { &mut *sp };
    let mut n = (end - data) as u64;
    if n > SCAN_LIMIT as u64 {
        n = SCAN_LIMIT as u64;
    }
    // SAFETY: copies `n` (<= SCAN_LIMIT) pulled message bytes into the buffer; the helper
    // faults safely.
    if unsafe { bpf_probe_read_kernel(scan.buf.as_mut_ptr().cast(), n as u32, data as *const _) }
        != 0
    {
        framing.gave_up = 1;
        count(inject::FAILED);
        return;
    }
    scan.len = n;
    // Volatile: LLVM merges four zero stores into a `memset` call (see `zero`).
    // SAFETY: writes to fields of this CPU's slot, valid and aligned.
    unsafe {
        core::ptr::write_volatile(&mut scan.end, 0);
        core::ptr::write_volatile(&mut scan.cl_at, 0);
        core::ptr::write_volatile(&mut scan.has_traceparent, 0);
        core::ptr::write_volatile(&mut scan.chunked, 0);
    }
    // SAFETY: bpf_loop calls `scan_step` at most SCAN_LIMIT / 8 + 1 times; it keeps its state in
    // INJECT_SCAN, not behind the context pointer.
    unsafe {
        bpf_loop(
            (n / 8 + 1) as u32,
            scan_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    if scan.end == 0 {
        framing.gave_up = 1;
        count(inject::NOT_WHOLE);
        return;
    }
    let hend = scan.end as u32;
    let body = if scan.cl_at == 0 {
        Some(0)
    } else {
        content_length_at(scan, scan.cl_at)
    };
    let Some(body) = body else {
        framing.gave_up = 1;
        count(inject::GAVE_UP);
        return;
    };
    let chunked = scan.chunked != 0;
    let has_traceparent = scan.has_traceparent != 0;
    let whole = u64::from(hend) + body;
    if chunked || whole < size {
        // A chunked body, or a second request in this message: the framing of what follows
        // is not followed here. This message's header block is still whole.
        framing.gave_up = 1;
        count(inject::GAVE_UP);
    } else {
        framing.body_left = whole - size;
    }
    if has_traceparent {
        count(inject::HAD_TRACEPARENT);
        return;
    }
    let Some(pp) = INJECT_PENDING_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU here.
    let pending = unsafe { &mut *pp };
    let thread = bpf_get_current_pid_tgid();
    next_context(thread, pending);
    // Before the blank line that ends the block.
    let at = hend - 2;
    if ctx.push_data(at, LINE_LEN, 0).is_err() {
        count(inject::FAILED);
        return;
    }
    // SAFETY: the helper takes the program's own context; the range was just pushed.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + LINE_LEN, 0) } != 0 {
        // The room is there but unwritable: a header line of zero bytes would corrupt the
        // request, so take the room back out.
        let _ = ctx.pop_data(at, LINE_LEN, 0);
        count(inject::FAILED);
        return;
    }
    let p = ctx.data();
    if p + LINE_LEN as usize > ctx.data_end() {
        let _ = ctx.pop_data(at, LINE_LEN, 0);
        count(inject::FAILED);
        return;
    }
    // SAFETY: LINE_LEN bytes from `p` were checked against the packet end just above.
    let out = unsafe { &mut *(p as *mut [u8; LINE_LEN as usize]) };
    out[..13].copy_from_slice(b"traceparent: ");
    out[13..13 + TRACEPARENT_LEN].copy_from_slice(&pending.value);
    out[13 + TRACEPARENT_LEN] = b'\r';
    out[14 + TRACEPARENT_LEN] = b'\n';
    // The room came as a scatterlist entry of its own, and `tcp_bpf` sends each entry with a
    // separate `tcp_sendmsg_locked`: the request would leave as several small segments, and
    // without TCP_NODELAY Nagle would hold the later ones until the peer's delayed ACK (40 ms
    // per request, measured). Made contiguous again, the message leaves as the application's
    // own bytes would have.
    let total = ctx.size();
    if total <= LINEARIZE_LIMIT {
        // SAFETY: the helper takes the program's own context and bounds-checks the range.
        unsafe { bpf_msg_pull_data(ctx.msg, 0, total, 0) };
    }
    let _ = INJECT_PENDING.insert(&thread, pending, 0);
    count(inject::INJECTED);
}

/// Called by the socket-write tracepoint of a selected process (after this file's `sk_msg`
/// program ran in the same system call): a value this thread just injected goes into the
/// connection's pending client exchange.
#[inline(always)]
pub fn stamp(sk: u64, id: u64) {
    let Some(v) = INJECT_PENDING.get_ptr(&id) else {
        return;
    };
    if let Some(p) = CONNS.get_ptr_mut(&sk) {
        // SAFETY: pointers from successful map lookups; the pending entry is this thread's
        // and is read before it is removed below.
        let (state, pending) = unsafe { (&mut *p, &*v) };
        if state.role == DIRECTION_CLIENT && state.phase == PHASE_REQUEST {
            // SAFETY: two distinct map values' fields of the same length: a non-overlapping
            // copy, which this target inlines (an assignment here is a `memmove` call).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    pending.value.as_ptr(),
                    state.event.traceparent.as_mut_ptr(),
                    TRACEPARENT_LEN,
                )
            };
            state.event.injected_parent = pending.parent;
            state.event.traceparent_source = TRACEPARENT_INJECTED;
        }
    }
    let _ = INJECT_PENDING.remove(&id);
}
