//! Request/response pairing per connection, so user space gets one event per request instead
//! of one per syscall.
//!
//! A connection is keyed by its `struct sock *`. Its role comes from the direction of the
//! first bytes that look like an HTTP/1.x request line: read → this process is the server,
//! written → the client. Request bytes accumulate in the connection's state until the first
//! byte moves the other way; then the event (request capture, response head, timings) is
//! emitted at once, so a span never waits for the next request on an idle keep-alive
//! connection. Response bytes in later syscalls go out as small `ExchangeUpdate`s, and a TCP
//! close as a close notice; the processor completes the span from those. Keep-alive, split
//! reads and split writes all pair correctly, and a connection that predates the agent is
//! picked up at its next request.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_user};
use sonde_schema::{
    DIRECTION_CLIENT, DIRECTION_SERVER, EVENT_CONN_CLOSED, EVENT_HTTP, EVENT_REQUEST_MORE,
    EVENT_RESPONSE_MORE, ExchangeUpdate, FLAG_CLOSED, FLAG_NO_RESPONSE, FLAG_TLS,
    HTTP_EVENT_MIN_SIZE, REQUEST_CAPTURE, RESPONSE_CAPTURE, TRACEPARENT_NONE, counters, protocol,
};

use crate::{
    headers, inject,
    maps::{
        BUF_IOVEC, BUF_MSGHDR, BUF_NONE, CONN_ZERO, CONNS, ConnState, EVENTS, HDR_DEFERRED,
        OP_READ, OP_WRITE, PHASE_CLOSED, PHASE_IDLE, PHASE_REQUEST, PHASE_RESPONSE, SOCK_TLS,
        SlotUser, SocketIo, TLS_CONNS, TLS_SEEN, TLS_SOCK, TLS_USED_LINKED, TLS_USED_SEEN,
        WAKEUP_LOOK, conn_maybe_tracked, conn_slot_add, count, mark_tls_used, tls_used,
    },
    offsets,
    sock::{self, SockHead},
    stream,
    zero::{self, Words},
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Wake the processor only once this much is queued; it also polls on a short timer, so a
/// quiet service's spans still arrive promptly. Waking per event would cost a context switch
/// per request at saturation. Not higher: with 256 KiB or 1 MiB the kernel programs cost 3–5 %
/// less (fewer self-interrupts) but nginx kept 1–4 % less of its throughput, the ring's busy
/// part no longer in cache (BENCHMARKS.md "Kernel per request: where a quiet machine's 1.45 µs
/// goes").
const WAKEUP_BYTES: u64 = 64 * 1024;
/// Records a CPU writes between two looks at the ring's fill level (see `wakeup_flags`).
const WAKEUP_LOOK_EVERY: u32 = 8;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// CLOCK_MONOTONIC now, in nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions; it only reads the clock.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// The user memory holding the first bytes that moved, and how many bytes are there.
pub struct Segment {
    pub ptr: u64,
    pub len: u64,
}

/// Bytes of a new connection's first segment that `Opening` copies: enough for a method, the
/// HTTP/2 preface's head, a TLS record header and an HTTP/2 frame header.
const OPENING_BYTES: u64 = 16;

/// An untracked connection's first segment and a copy of its first bytes, read from user
/// memory once: the TLS check (`tls::claims_socket`, `looks_like_tls_record`) and the
/// classification (`classify`) all look at the copy, where each used to read the segment
/// again (a helper call each, on every new connection).
pub struct Opening {
    pub seg: Segment,
    /// The first `len` bytes of the segment; the rest zero.
    pub head: Words<16>,
    pub len: u64,
}

/// Reads the opening bytes of the first segment a syscall moved; None when there is no
/// segment to read (`BUF_NONE`, an unreadable `msghdr` or iovec).
#[inline(always)]
pub fn opening(io: &SocketIo, ret: u64) -> Option<Opening> {
    let seg = first_segment(io, ret)?;
    let mut n = seg.len;
    if n > OPENING_BYTES {
        n = OPENING_BYTES;
    }
    let mut head = MaybeUninit::<Words<16>>::uninit();
    // SAFETY: `Words` is plain bytes, valid all zero.
    let head = unsafe { zero::zero(&mut head) };
    // SAFETY: the destination is the 16-byte `head` and `n` ≤ 16; the helper faults safely on
    // a bad user address (and zeroes the destination then).
    let rc =
        unsafe { bpf_probe_read_user(head.0.as_mut_ptr().cast(), n as u32, seg.ptr as *const _) };
    Some(Opening {
        len: if rc == 0 { n } else { 0 },
        head: *head,
        seg,
    })
}

/// Reads `T` from user memory, or None on a fault.
#[inline(always)]
pub fn read_user<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies from an arbitrary user address with fault handling;
    // a bad address yields an error, never undefined behaviour.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
pub fn read_kernel<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies with fault handling; a bad address yields an error.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Finds the first data segment of a completed syscall that moved `ret` bytes.
#[inline(always)]
pub fn first_segment(io: &SocketIo, ret: u64) -> Option<Segment> {
    let iov = match io.buf_kind {
        BUF_NONE => return None,
        BUF_IOVEC => io.buf,
        // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; ... }
        BUF_MSGHDR => read_user::<u64>(io.buf + 16)?,
        _ => {
            return Some(Segment {
                ptr: io.buf,
                len: ret,
            });
        }
    };
    // struct iovec { void *iov_base; size_t iov_len; }: one read for both.
    let [base, len] = read_user::<[u64; 2]>(iov)?;
    Some(Segment {
        ptr: base,
        len: if len < ret { len } else { ret },
    })
}

/// True when four bytes start an HTTP/1.x request line: a standard method, or (checked only
/// when that fails) four upper-case letters or three and a space, how non-standard methods
/// such as `PROPFIND` or `PURGE` start. The processor confirms the `HTTP/1.x` version and
/// counts what is not HTTP. `PRI ` (the HTTP/2 preface) is not a method, and neither is
/// `HTTP`: a status line (the first bytes of a keep-alive connection picked up between a
/// request and its response) must not start an exchange in the wrong direction.
#[inline(always)]
fn is_method(head: &[u8; 4]) -> bool {
    if matches!(
        head,
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC"
    ) {
        return true;
    }
    let upper = |b: u8| b.is_ascii_uppercase();
    head != H2_PREFACE_HEAD
        && head != b"HTTP"
        && upper(head[0])
        && upper(head[1])
        && upper(head[2])
        && (upper(head[3]) || head[3] == b' ')
}

/// Appends up to the remaining capture room from `seg` into the request buffer; returns how
/// many bytes it captured.
#[inline(always)]
fn append_request(state: &mut ConnState, seg: &Segment) -> u64 {
    let off = state.event.request_len as u64;
    if off >= REQUEST_CAPTURE as u64 {
        return 0;
    }
    let mut n = seg.len;
    if n > REQUEST_CAPTURE as u64 {
        n = REQUEST_CAPTURE as u64;
    }
    if off + n > REQUEST_CAPTURE as u64 {
        n = REQUEST_CAPTURE as u64 - off;
    }
    // The masks restate bounds the code above already guarantees, in a form the verifier can
    // check against the map value (VERIFIER_SLACK covers the largest masked write).
    let off_m = off & 0xff;
    let n_m = n & 0x1ff;
    // SAFETY: destination is inside the map value (offset < 256, length < 512, followed by the
    // response buffer and VERIFIER_SLACK); the helper faults safely on bad user addresses.
    let rc = unsafe {
        bpf_probe_read_user(
            state.event.request.as_mut_ptr().add(off_m as usize).cast(),
            n_m as u32,
            seg.ptr as *const _,
        )
    };
    if rc == 0 {
        state.event.request_len = (off + n) as u16;
        return n;
    }
    0
}

/// After request bytes of `seg` were captured (`captured_now` of them): once the capture is
/// full, the rest of the header block is to be searched for `traceparent` (see `headers`).
/// With context propagation on, a server request's whole header block is searched, from its
/// first byte: the kernel needs the caller's trace id for the requests the serving thread
/// sends (`inject::adopt_incoming`).
///
/// The search is only noted here (in this CPU's `HDR_DEFERRED` slot); the program runs it
/// with [`search_deferred`] from one place before it returns. The verifier checks a
/// `bpf_loop` callback anew at every call site and on every path that reaches one: with the
/// search inlined at its three sites (a request's first bytes on a new connection, on a
/// tracked one, and its later segments) the socket-read program went past the verifier's
/// million-instruction limit, and so did the TLS return probe. (The TLS programs load with
/// the BTF function info the callback needs: `loader/src/tls/programs.rs`.)
#[inline(always)]
fn search_past_capture(state: &mut ConnState, seg: &Segment, captured_now: u64) {
    if state.hdr_scan == headers::HDR_DONE {
        return;
    }
    let captured = if state.event.request_len as usize == REQUEST_CAPTURE {
        captured_now
    } else if state.role == DIRECTION_SERVER && inject::enabled() {
        // Searched from this segment's start: no earlier captured bytes go before it.
        REQUEST_CAPTURE as u64
    } else {
        return;
    };
    if let Some(d) = HDR_DEFERRED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; only this program run uses it until it returns.
        let d = unsafe { &mut *d };
        d.pending = 1;
        d.ptr = seg.ptr;
        d.len = seg.len;
        d.captured = captured;
    }
}

/// Runs the search `search_past_capture` noted in this program run, if any, on `state` (the
/// connection it was noted for).
#[inline(always)]
pub fn search_deferred(state: &mut ConnState) {
    let Some(d) = HDR_DEFERRED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, written earlier in this program run (or left from an earlier
    // one with `pending` cleared).
    let d = unsafe { &mut *d };
    if d.pending == 0 {
        return;
    }
    d.pending = 0;
    let seg = Segment {
        ptr: d.ptr,
        len: d.len,
    };
    headers::search_segment(state, &seg, d.captured);
}

#[inline(always)]
fn append_response(state: &mut ConnState, seg: &Segment) {
    let off = state.event.response_len as u64;
    if off >= RESPONSE_CAPTURE as u64 {
        return;
    }
    let mut n = seg.len;
    if n > RESPONSE_CAPTURE as u64 {
        n = RESPONSE_CAPTURE as u64;
    }
    if off + n > RESPONSE_CAPTURE as u64 {
        n = RESPONSE_CAPTURE as u64 - off;
    }
    let off_m = off & 0x7f;
    let n_m = n & 0xff;
    // SAFETY: as in append_request; the response buffer is followed by VERIFIER_SLACK bytes.
    let rc = unsafe {
        bpf_probe_read_user(
            state.event.response.as_mut_ptr().add(off_m as usize).cast(),
            n_m as u32,
            seg.ptr as *const _,
        )
    };
    if rc == 0 {
        state.event.response_len = (off + n) as u16;
    }
}

/// Fills in the 4-tuple from the kernel socket (offsets from BTF, set by the loader).
#[inline(always)]
pub fn read_tuple(state: &mut ConnState, sk: u64) {
    read_tuple_from(state, &SockHead::read(sk), sk);
}

/// `read_tuple` with the socket's identity fields already read.
#[inline(always)]
fn read_tuple_from(state: &mut ConnState, head: &SockHead, sk: u64) {
    let family = head.family();
    let ev = &mut state.event;
    ev.family = family;
    ev.peer_port = head.peer_port();
    ev.local_port = head.local_port();
    if family == AF_INET {
        let d = head.peer_addr4();
        let s = head.local_addr4();
        // SAFETY: `HttpEvent`'s address fields are 8-aligned (asserted in `sonde_schema`) in an
        // 8-aligned map value.
        unsafe {
            sock::set_addr4(&mut ev.peer_addr, d);
            sock::set_addr4(&mut ev.local_addr, s);
        }
    } else if family == AF_INET6 {
        // SAFETY: bounded kernel reads into fixed 16-byte fields of the map value.
        unsafe {
            bpf_probe_read_kernel(
                ev.peer_addr.as_mut_ptr().cast(),
                16,
                (sk + offsets::skc_v6_daddr()) as *const _,
            );
            bpf_probe_read_kernel(
                ev.local_addr.as_mut_ptr().cast(),
                16,
                (sk + offsets::skc_v6_rcv_saddr()) as *const _,
            );
        }
    }
}

/// Ring buffer output flags for a record of `len` bytes: wake the processor when the unread
/// bytes reach `WAKEUP_BYTES`, once, and not again while they stay above. A forced wakeup is a
/// self-interrupt (`irq_work`): one per record while the processor was behind cost a
/// virtualised host more than the rest of the program (an MSR write, a VM exit, per event;
/// `perf` on nginx under load, BENCHMARKS.md "Kernel per request"). Nothing is lost by waking
/// once: the processor's epoll on the ring buffer is level-triggered (readable while any byte
/// is unread), so it finds the rest when it next waits, and its 50 ms poll covers the bytes
/// below the mark.
///
/// The fill level is looked at on every `WAKEUP_LOOK_EVERY`-th record of a CPU, not on each:
/// the look is a helper call, and helper calls are most of a program's cost on a kernel with
/// return-thunk mitigations. The mark is then seen up to that many records late (a few KiB
/// of an 8 MiB ring), and each CPU wakes the processor at most once per crossing it sees.
#[inline(always)]
pub fn wakeup_flags(len: usize) -> u64 {
    let Some(look) = WAKEUP_LOOK.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: this CPU's slot; program runs on one CPU do not overlap (no preemption inside
    // a tracing program, and a nested run only ever loses or repeats a count).
    let look = unsafe { &mut *look };
    look.since += 1;
    if look.since < WAKEUP_LOOK_EVERY {
        return BPF_RB_NO_WAKEUP;
    }
    look.since = 0;
    let above = EVENTS.query(BPF_RB_AVAIL_DATA) + len as u64 >= WAKEUP_BYTES;
    let crossed = above && look.above == 0;
    look.above = above as u32;
    if crossed {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Emits the exchange held by `state` (request capture plus what was seen of the response).
#[inline(always)]
fn emit_event(state: &mut ConnState, flags: u32) {
    if state.role == DIRECTION_SERVER && inject::enabled() {
        inject::serve_end(state);
    }
    state.event.flags = if state.tls != 0 {
        flags | FLAG_TLS
    } else {
        flags
    };
    // Send only the captured request bytes: the request buffer is last in the event. The mask
    // restates `request_len <= REQUEST_CAPTURE` for the verifier (the slack keeps it in the
    // map value).
    let len = HTTP_EVENT_MIN_SIZE + (state.event.request_len as usize & 0x1ff);
    // SAFETY: the event starts the map value, which extends VERIFIER_SLACK bytes past it, so
    // `len` (< HTTP_EVENT_MIN_SIZE + 512) bytes are readable; the ring buffer copies them.
    let record = unsafe {
        core::slice::from_raw_parts(
            (&state.event as *const sonde_schema::HttpEvent).cast::<u8>(),
            len,
        )
    };
    match EVENTS.output::<[u8]>(record, wakeup_flags(len)) {
        Ok(()) => count(counters::EVENTS_SENT),
        Err(_) => count(counters::EVENTS_LOST_RINGBUF_FULL),
    }
}

/// Emits a small record about the connection's already emitted exchange.
#[inline(always)]
pub fn emit_update(state: &ConnState, kind: u8, bytes: u64, now: u64) {
    // Built from zero, then filled: a `[0; 3]` padding literal is a `memset` call (see `zero`).
    let mut slot = core::mem::MaybeUninit::<ExchangeUpdate>::uninit();
    // SAFETY: an update is integers and a byte array: valid all zero.
    let update = unsafe { zero::zero(&mut slot) };
    update.kind = kind;
    update.pid = state.event.pid;
    update.conn_id = state.event.conn_id;
    update.bytes = bytes;
    update.end_ns = now;
    if EVENTS
        .output::<ExchangeUpdate>(update, wakeup_flags(ExchangeUpdate::SIZE))
        .is_err()
    {
        count(counters::UPDATES_LOST_RINGBUF_FULL);
    }
}

#[inline(always)]
fn start_request(
    state: &mut ConnState,
    io: &SocketIo,
    id: u64,
    seg: &Segment,
    ret: u64,
    now: u64,
    capture: bool,
) {
    // The request starts when its first bytes are read (server) or written (client): time
    // spent blocked waiting for a request is not part of it.
    let inbound = io.op == OP_READ;
    state.role = if inbound {
        DIRECTION_SERVER
    } else {
        DIRECTION_CLIENT
    };
    state.phase = PHASE_REQUEST;
    let ev = &mut state.event;
    ev.kind = EVENT_HTTP;
    ev.direction = state.role;
    ev.pid = (id >> 32) as u32;
    ev.tid = id as u32;
    ev.fd = io.fd;
    ev.start_ns = now;
    ev.end_ns = now;
    ev.request_bytes = ret;
    ev.response_bytes = 0;
    ev.response_len = 0;
    ev.flags = 0;
    ev.traceparent_source = TRACEPARENT_NONE;
    state.hdr_scan = headers::HDR_UNSCANNED;
    if inbound && inject::enabled() {
        inject::serve_begin(state, id);
    }
    let captured_now = if capture {
        state.event.request_len = 0;
        append_request(state, seg)
    } else {
        // The caller captured the segment already.
        state.event.request_len as u64
    };
    search_past_capture(state, seg, captured_now);
}

/// A fresh connection id: the low 32 bits of the clock above 32 random bits, so ids of closed
/// and reused sockets do not collide (two connections would need the same random word within
/// the same nanosecond of a 4.3 s cycle) and nothing about kernel memory leaks to user space.
/// The random half is the low one: the processor's maps take a connection id as its own hash
/// (`processor/src/prehashed.rs`), and the bucket comes from the low bits. One random word, not
/// two: each is a helper call on every new connection.
#[inline(always)]
fn new_conn_id(now: u64) -> u64 {
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let random = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
    (now << 32) | random as u64
}

/// The HTTP/2 client preface starts with these bytes (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const H2_PREFACE_HEAD: &[u8; 4] = b"PRI ";

/// What the first bytes on an untracked connection say it carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    Http1,
    /// An HTTP/1 status line: a keep-alive connection picked up between a request and its
    /// response; left untracked so its next request starts the pairing.
    Http1Response,
    Http2Preface,
    Http2MidStream,
    Other,
}

#[inline(always)]
pub fn classify(io: &SocketIo, opening: &Opening, ret: u64) -> FirstBytes {
    if opening.len < 4 {
        return FirstBytes::Other;
    }
    let b = &opening.head.0;
    let head = [b[0], b[1], b[2], b[3]];
    if is_method(&head) {
        return FirstBytes::Http1;
    }
    if &head == H2_PREFACE_HEAD {
        return FirstBytes::Http2Preface;
    }
    if &head == b"HTTP" {
        return FirstBytes::Http1Response;
    }
    if opening.len >= 9 {
        let frame = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]];
        if stream::plausible_frame(&frame, ret) {
            // A server writes its SETTINGS before it reads the client's preface: that is the
            // connection's start, not the middle.
            if io.op == OP_WRITE && stream::is_settings(&frame) {
                return FirstBytes::Http2Preface;
            }
            return FirstBytes::Http2MidStream;
        }
    }
    FirstBytes::Other
}

/// First bytes on a connection with no state: track it if they start an HTTP/1.x request
/// (paired here) or HTTP/2 (sent on as stream chunks). Returns its state when it is tracked.
#[inline(always)]
pub fn on_new_connection(
    io: &SocketIo,
    head: &SockHead,
    id: u64,
    ret: u64,
    opening: Opening,
) -> Option<*mut ConnState> {
    // A socket already closed (unhashed: no local port) carries nothing to pair: a peer's
    // last GOAWAY or a late write after the connection's end.
    if head.local_port() == 0 {
        return None;
    }
    let first = classify(io, &opening, ret);
    if first == FirstBytes::Http1Response {
        return None;
    }
    if first == FirstBytes::Other {
        // TLS on a socket not linked to an `SSL` object (a handshake, a library Sonde cannot
        // see into): counted, never parsed. OpenSSL reads a record's 5-byte header and its
        // body apart, so a socket that showed a record header is remembered: its body reads
        // look like any bytes, and must not become an "other TCP" stream.
        if looks_like_tls_record(&opening) {
            mark_tls_used(TLS_USED_SEEN);
            let _ = TLS_SEEN.insert(&io.sk, &1, 0);
            count(counters::TLS_UNLINKED_PAYLOADS);
            return None;
        }
        if tls_used(TLS_USED_SEEN) && TLS_SEEN.get_ptr(&io.sk).is_some() {
            count(counters::TLS_UNLINKED_PAYLOADS);
            return None;
        }
        // Any other protocol: the processor classifies the stream (databases, caches, …).
        count(counters::NON_HTTP_PAYLOADS);
    }
    let zero = CONN_ZERO.get_ptr(0)?;
    // Counted before the insert: a close racing with it must not find the slot empty while
    // the entry exists.
    let slot_user = if io.op == OP_READ {
        SlotUser::Recv
    } else {
        SlotUser::Send
    };
    conn_slot_add(io.sk, 1, slot_user);
    // SAFETY: CONN_ZERO's single slot is a valid, never-written ConnState.
    if CONNS.insert(&io.sk, unsafe { &*zero }, 0).is_err() {
        conn_slot_add(io.sk, -1, slot_user);
        count(counters::CONN_MAP_FULL);
        return None;
    }
    let p = CONNS.get_ptr_mut(&io.sk)?;
    // SAFETY: pointer from a successful lookup of the entry just inserted.
    let state = unsafe { &mut *p };
    read_tuple_from(state, head, io.sk);
    begin(state, io, id, ret, &opening.seg, first);
    Some(p)
}

/// Starts a freshly inserted connection (cleartext or TLS plaintext) from its first bytes.
#[inline(always)]
pub fn begin(
    state: &mut ConnState,
    io: &SocketIo,
    id: u64,
    ret: u64,
    seg: &Segment,
    first: FirstBytes,
) {
    let now = now_ns();
    state.event.conn_id = new_conn_id(now);
    match first {
        FirstBytes::Http1 => start_request(state, io, id, seg, ret, now, true),
        FirstBytes::Other => {
            state.event.pid = (id >> 32) as u32;
            stream::adopt_other(state);
            stream::emit_chunk(state, io, id, ret);
        }
        // Callers leave these untracked; nothing to start.
        FirstBytes::Http1Response => {}
        FirstBytes::Http2Preface | FirstBytes::Http2MidStream => {
            state.event.pid = (id >> 32) as u32;
            stream::adopt(state, first == FirstBytes::Http2MidStream);
            stream::emit_chunk(state, io, id, ret);
        }
    }
}

/// True when the bytes start like a TLS record (content type 20–23, version 3.x): ciphertext
/// on a socket not linked to an `SSL` object, counted apart from garbage.
#[inline(always)]
pub fn looks_like_tls_record(opening: &Opening) -> bool {
    let [kind, major, ..] = opening.head.0;
    opening.len >= 2 && (20..=23).contains(&kind) && major == 3
}

/// Handles `ret` > 0 bytes read or written on a tracked connection.
#[inline(always)]
pub fn on_data(state: &mut ConnState, io: &SocketIo, id: u64, ret: u64) {
    if state.protocol >= protocol::HTTP2 {
        stream::emit_chunk(state, io, id, ret);
        return;
    }
    let now = now_ns();
    let seg = first_segment(io, ret);
    let inbound = io.op == OP_READ;
    let request_direction = (state.role == DIRECTION_SERVER) == inbound;
    match state.phase {
        PHASE_REQUEST if request_direction => {
            state.event.request_bytes += ret;
            if let Some(seg) = seg {
                let captured_now = append_request(state, &seg);
                search_past_capture(state, &seg, captured_now);
            }
        }
        PHASE_REQUEST => {
            // The response starts: the exchange goes out now.
            state.phase = PHASE_RESPONSE;
            state.event.response_bytes = ret;
            state.event.end_ns = now;
            if let Some(seg) = seg {
                append_response(state, &seg);
            }
            emit_event(state, 0);
        }
        PHASE_RESPONSE if !request_direction => {
            emit_update(state, EVENT_RESPONSE_MORE, ret, now);
        }
        _ => {
            let Some(seg) = seg else { return };
            // Capture first and check the copy: one user-memory read instead of two on the
            // hottest path (every keep-alive request).
            state.event.request_len = 0;
            append_request(state, &seg);
            let head = &state.event.request;
            let len = state.event.request_len;
            let first4 = [head[0], head[1], head[2], head[3]];
            if len >= 4 && is_method(&first4) {
                start_request(state, io, id, &seg, ret, now, false);
            } else if state.phase == PHASE_RESPONSE && request_direction {
                // Not a new request: the rest of a body the server answered before reading
                // it all (nginx `return`, early errors). The exchange keeps its response.
                state.event.request_len = 0;
                emit_update(state, EVENT_REQUEST_MORE, ret, now);
            } else if len >= 4 && &first4 == H2_PREFACE_HEAD {
                // `Upgrade: h2c` answered with 101: the connection continues as HTTP/2.
                state.event.request_len = 0;
                state.phase = PHASE_IDLE;
                stream::adopt(state, false);
                stream::emit_chunk(state, io, id, ret);
            } else {
                state.event.request_len = 0;
                state.phase = PHASE_IDLE;
                count(counters::NON_HTTP_PAYLOADS);
            }
        }
    }
}

/// The connection is closing (`closed_for_good`: the socket is being torn down). A request
/// still waiting for its response goes out marked; an exchange already out gets a close
/// notice, so the processor completes its span without waiting. A socket linked to a TLS
/// connection closes that connection.
#[inline(always)]
pub fn on_close(sk: u64, closed_for_good: bool) {
    // Looked up before it is removed: the lookup takes no lock, and most sockets that close
    // (every TCP socket on the host runs this) were never seen carrying TLS; until one was,
    // not even the lookup runs.
    if closed_for_good && tls_used(TLS_USED_SEEN) && TLS_SEEN.get_ptr(&sk).is_some() {
        let _ = TLS_SEEN.remove(&sk);
    }
    // Most closing sockets were never tracked: two inlined array reads (`conn_maybe_tracked`)
    // instead of the hash lookup.
    if conn_maybe_tracked(sk)
        && let Some(p) = CONNS.get_ptr_mut(&sk)
    {
        // SAFETY: pointer from a successful map lookup.
        close_state(unsafe { &mut *p });
        if closed_for_good && CONNS.remove(&sk).is_ok() {
            conn_slot_add(sk, -1, SlotUser::StateChange);
        }
        return;
    }
    if !offsets::tls_enabled() || !tls_used(TLS_USED_LINKED) {
        return;
    }
    // SAFETY: pointer from a successful map lookup, copied at once.
    if let Some(key) = SOCK_TLS.get_ptr(&sk).map(|k| unsafe { *k }) {
        // The `SSL *` may already serve a newer connection (a client that closes one and
        // opens the next gets the freed object back): only its own socket ends it.
        // SAFETY: pointer from a successful map lookup, copied at once.
        let owner = TLS_SOCK.get_ptr(&key).map(|s| unsafe { *s });
        if owner == Some(sk) {
            if let Some(p) = TLS_CONNS.get_ptr_mut(&key) {
                // SAFETY: pointer from a successful map lookup.
                close_state(unsafe { &mut *p });
            }
            if closed_for_good {
                let _ = TLS_CONNS.remove(&key);
                let _ = TLS_SOCK.remove(&key);
            }
        }
        if closed_for_good {
            let _ = SOCK_TLS.remove(&sk);
        }
    }
}

/// Ends what a closing connection has open (see `on_close`).
#[inline(always)]
fn close_state(state: &mut ConnState) {
    if state.protocol >= protocol::HTTP2 {
        // One close notice per connection: the local close and the socket's end both land
        // here.
        if state.phase != PHASE_CLOSED {
            state.phase = PHASE_CLOSED;
            emit_update(state, EVENT_CONN_CLOSED, 0, now_ns());
        }
        return;
    }
    match state.phase {
        PHASE_REQUEST => emit_event(state, FLAG_NO_RESPONSE | FLAG_CLOSED),
        PHASE_RESPONSE => emit_update(state, EVENT_CONN_CLOSED, 0, now_ns()),
        _ => {}
    }
    state.phase = PHASE_IDLE;
}
