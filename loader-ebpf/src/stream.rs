//! Stream chunks: for connections whose protocol multiplexes exchanges (HTTP/2), the kernel
//! does not pair anything. It copies the bytes of every read and write (up to
//! `STREAM_CAPTURE`, across up to `MAX_SEGMENTS` iovec entries) into one ring-buffer record,
//! in syscall order, and the processor reassembles frames and streams. Header compression
//! state depends on every header block of the connection, so nothing may be filtered here.

use sonde_schema::{
    CHUNK_FIRST, CHUNK_MIDSTREAM, CHUNK_TLS, ChunkHeader, EVENT_STREAM_CHUNK, FLOW_INBOUND,
    FLOW_OUTBOUND, STREAM_CAPTURE, STREAM_CAPTURE_OTHER, counters, protocol,
};

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{
    maps::{
        BUF_IOVEC, BUF_MSGHDR, BUF_NONE, CHUNK_BUF, ChunkBuf, ConnState, EVENTS, OP_READ, SocketIo,
        count,
    },
    pairing::{now_ns, wakeup_flags},
    sock,
};

/// Iovec entries walked per syscall (Linux's `IOV_MAX`). HTTP/2 stacks gather many frames into
/// one `writev`: Node.js puts each frame header and payload in a segment of its own, so ten
/// concurrent responses are forty segments.
const MAX_SEGMENTS: u64 = 1024;
/// Masks that restate bounds for the verifier: a segment starts below `STREAM_CAPTURE` and
/// copies at most `2 * STREAM_CAPTURE - 1` bytes, so every copy ends inside `ChunkBuf::data`.
const OFFSET_MASK: u64 = STREAM_CAPTURE as u64 - 1;
const LEN_MASK: u64 = 2 * STREAM_CAPTURE as u64 - 1;

/// `frame_type, minimum and maximum payload length` of the HTTP/2 frame types (RFC 9113 §6).
#[inline(always)]
fn frame_length_ok(frame_type: u8, len: u32, stream: u32) -> bool {
    match frame_type {
        // DATA, HEADERS, CONTINUATION: on a stream.
        0 | 1 | 9 => stream != 0 && len <= STREAM_CAPTURE as u32,
        // PRIORITY, RST_STREAM: fixed sizes, on a stream.
        2 => stream != 0 && len == 5,
        3 => stream != 0 && len == 4,
        // SETTINGS: connection-level, six bytes a setting.
        4 => stream == 0 && len % 6 == 0 && len <= 60,
        // PING, GOAWAY: connection-level.
        6 => stream == 0 && len == 8,
        7 => stream == 0 && (8..=1024).contains(&len),
        // WINDOW_UPDATE: on a stream or the connection.
        8 => len == 4,
        _ => false,
    }
}

/// True for the server's connection preface: a SETTINGS frame (type 4, stream 0) without the
/// ACK flag. A server writes it first, before it reads the client's preface.
#[inline(always)]
pub fn is_settings(head: &[u8; 9]) -> bool {
    head[3] == 4 && head[4] & 1 == 0 && head[5..9] == [0, 0, 0, 0]
}

/// True when nine bytes read as a plausible HTTP/2 frame header whose frame fits in the `ret`
/// bytes that moved: how a connection already under way when Sonde started is recognised.
#[inline(always)]
pub fn plausible_frame(head: &[u8; 9], ret: u64) -> bool {
    let len = (head[0] as u32) << 16 | (head[1] as u32) << 8 | head[2] as u32;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    stream & 0x8000_0000 == 0 && 9 + len as u64 <= ret && frame_length_ok(head[3], len, stream)
}

/// Marks a freshly inserted connection as HTTP/2; `midstream` when no preface was seen.
#[inline(always)]
pub fn adopt(state: &mut ConnState, midstream: bool) {
    state.protocol = protocol::HTTP2;
    state.chunk_flags = if midstream {
        CHUNK_FIRST | CHUNK_MIDSTREAM
    } else {
        CHUNK_FIRST
    };
}

/// Marks a freshly inserted connection as an "other TCP" stream (its first bytes were seen).
#[inline(always)]
pub fn adopt_other(state: &mut ConnState) {
    state.protocol = protocol::OTHER;
    state.chunk_flags = CHUNK_FIRST;
}

/// What `copy_segment` works on, in this CPU's slot of `SEG_WALK`. Not on the stack: the
/// verifier tracks stack values exactly and would check the callback once per distinct
/// `got`; values read from a map are unknown to it, so the callback is checked once per call
/// site.
#[repr(C)]
pub struct SegmentWalk {
    /// The user iovec array.
    iov: u64,
    /// Its entries.
    count: u64,
    /// Bytes to capture in all.
    want: u64,
    /// Bytes captured so far.
    got: u64,
}

#[map(name = "SEG_WALK")]
static SEG_WALK: PerCpuArray<SegmentWalk> = PerCpuArray::with_max_entries(1, 0);

/// The `bpf_loop` context: only a pointer (which never changes) lives on the stack.
#[repr(C)]
struct WalkCtx {
    walk: *mut SegmentWalk,
}

/// One iteration of the `bpf_loop` over a syscall's iovec entries: copies entry `index` into
/// this CPU's chunk buffer. A `bpf_loop` callback is verified once, whatever the count, where
/// an unrolled or bounded loop is verified once per iteration and per call site (64 segments
/// exceeded the verifier's budget). Returns 1 to stop.
extern "C" fn copy_segment(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `WalkCtx` on `copy_iovecs`'s stack, alive for the whole loop; its
    // pointer is this CPU's slot of SEG_WALK, which nothing else uses while we run.
    let walk = unsafe { &mut *(*(ctx as *const WalkCtx)).walk };
    if index >= walk.count || walk.got >= walk.want {
        return 1;
    }
    // SAFETY: no preconditions; returns the id of the CPU the program runs on.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(p) = CHUNK_BUF.get_ptr_mut(cpu) else {
        return 1;
    };
    // struct iovec { void *iov_base; size_t iov_len; }
    // SAFETY: bpf_probe_read_user copies from an arbitrary user address with fault handling;
    // a bad address yields an error.
    let Ok([base, len]) = (unsafe {
        aya_ebpf::helpers::bpf_probe_read_user((walk.iov + index * 16) as *const [u64; 2])
    }) else {
        return 1;
    };
    let room = walk.want - walk.got;
    let n = if len < room { len } else { room };
    if n == 0 {
        return 0;
    }
    // SAFETY: this CPU's slot (see CHUNK_BUF); destination offset < STREAM_CAPTURE and length
    // < 2 * STREAM_CAPTURE, so the copy stays inside `data` (3 * STREAM_CAPTURE bytes); the
    // helper faults safely on bad user addresses.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            (*p).data
                .as_mut_ptr()
                .add((walk.got & OFFSET_MASK) as usize)
                .cast(),
            (n & LEN_MASK) as u32,
            base as *const _,
        )
    };
    if rc != 0 {
        return 1;
    }
    walk.got += n;
    0
}

/// Copies up to `want` bytes from the iovec array at `iov` (`count` entries) into this CPU's
/// chunk buffer.
#[inline(always)]
fn copy_iovecs(iov: u64, count: u64, want: u64) -> u64 {
    let Some(wp) = SEG_WALK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array: nothing else uses it while we run.
    let walk = unsafe { &mut *wp };
    walk.iov = iov;
    walk.count = count;
    walk.want = want;
    walk.got = 0;
    let loops = if count < MAX_SEGMENTS {
        count
    } else {
        MAX_SEGMENTS
    };
    let mut ctx = WalkCtx { walk: wp };
    // SAFETY: bpf_loop calls `copy_segment` at most `loops` times with a pointer to `ctx`,
    // which outlives the call.
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            loops as u32,
            copy_segment as *mut core::ffi::c_void,
            (&mut ctx as *mut WalkCtx).cast(),
            0,
        );
    }
    walk.got
}

/// Sends the bytes one read or write moved on an HTTP/2 connection as a stream chunk.
#[inline(always)]
pub fn emit_chunk(state: &mut ConnState, io: &SocketIo, id: u64, ret: u64) {
    // SAFETY: no preconditions; returns the id of the CPU the program runs on.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(p) = CHUNK_BUF.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: pointer from a successful array lookup of this CPU's slot; only this CPU's
    // program uses it while we run (see CHUNK_BUF).
    let buf = unsafe { &mut *p };
    let cap = if state.protocol == protocol::OTHER {
        STREAM_CAPTURE_OTHER as u64
    } else {
        STREAM_CAPTURE as u64
    };
    let want = if ret < cap { ret } else { cap };
    // The iovec array, when the bytes are behind one: walked from a single call site (the
    // verifier checks a bpf_loop callback once per site).
    let iovecs = match io.buf_kind {
        BUF_IOVEC => Some((io.buf, io.iov_count)),
        BUF_MSGHDR => {
            // struct msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov;
            // size_t msg_iovlen; ... }
            // SAFETY: as in copy_iovecs.
            match unsafe {
                aya_ebpf::helpers::bpf_probe_read_user((io.buf + 16) as *const [u64; 2])
            } {
                Ok([iov, count]) => Some((iov, count)),
                Err(_) => Some((0, 0)),
            }
        }
        _ => None,
    };
    let captured = match (io.buf_kind, iovecs) {
        (_, Some((iov, count))) => {
            if count == 0 {
                0
            } else {
                copy_iovecs(iov, count, want)
            }
        }
        (BUF_NONE, None) => 0,
        _ => {
            // SAFETY: as in copy_iovecs; offset 0, length < 2 * STREAM_CAPTURE.
            let rc = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    buf.data.as_mut_ptr().cast(),
                    (want & LEN_MASK) as u32,
                    io.buf as *const _,
                )
            };
            if rc == 0 { want } else { 0 }
        }
    };
    if captured < ret {
        count(counters::CHUNKS_TRUNCATED);
    }
    let ev = &state.event;
    let h = &mut buf.header;
    h.kind = EVENT_STREAM_CHUNK;
    h.protocol = state.protocol;
    h.flow = if io.op == OP_READ {
        FLOW_INBOUND
    } else {
        FLOW_OUTBOUND
    };
    h.flags = if state.tls != 0 {
        state.chunk_flags | CHUNK_TLS
    } else {
        state.chunk_flags
    };
    h.pid = (id >> 32) as u32;
    h.tid = id as u32;
    h.fd = io.fd;
    h.conn_id = ev.conn_id;
    h.ts_ns = now_ns();
    h.total = ret;
    h.captured = captured as u32;
    h.family = ev.family;
    h.local_port = ev.local_port;
    h.peer_port = ev.peer_port;
    // SAFETY: `ChunkHeader`'s and `HttpEvent`'s address fields are 8-aligned (asserted in
    // `sonde_schema`), both in 8-aligned map values.
    unsafe {
        sock::copy_addr(&mut h.local_addr, &ev.local_addr);
        sock::copy_addr(&mut h.peer_addr, &ev.peer_addr);
    }
    let len = ChunkHeader::SIZE + (captured & LEN_MASK) as usize;
    // SAFETY: the header starts the map value and `len` < SIZE + 2 * STREAM_CAPTURE bytes are
    // inside it; the ring buffer copies them.
    let record = unsafe { core::slice::from_raw_parts((buf as *const ChunkBuf).cast::<u8>(), len) };
    match EVENTS.output::<[u8]>(record, wakeup_flags(len)) {
        Ok(()) => {
            state.chunk_flags = 0;
            count(counters::CHUNKS_SENT)
        }
        Err(_) => count(counters::CHUNKS_LOST_RINGBUF_FULL),
    }
}
