//! Finds a `traceparent` header in an HTTP/1 request's header block past the bytes the kernel
//! captures (`REQUEST_CAPTURE`), so a request with long headers (cookies, tokens) still
//! continues its caller's trace.
//!
//! Capturing the whole header block would grow every connection's state (two maps of 16,384
//! connections) and every event by kilobytes; instead the kernel looks through the rest of the
//! block only when the capture is full, and copies just the 55-byte value into the event
//! (`HttpEvent::traceparent`). Requests whose capture is not full cost nothing here, except
//! server requests while context propagation is on: their whole header block is searched from
//! the first byte, since the requests their thread sends continue the caller's trace (see
//! `inject`). The search
//! reads the segment into this CPU's chunk scratch a kilobyte at a time and tests eight bytes
//! at once for a line feed, 64 bytes per step of a `bpf_loop` (its callback is verified once,
//! whatever the length). It
//! stops at the end of the header block, so a body is never read as headers, and after
//! `HEADER_SCAN_LIMIT` bytes of one syscall (counted). A block that goes on past a syscall
//! (nginx reads 1 KiB first) leaves its last bytes in `HDR_TAILS`, so a line split across two
//! reads is still seen.

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user};
use sonde_schema::{
    DIRECTION_SERVER, HEADER_SCAN_LIMIT, REQUEST_CAPTURE, TRACEPARENT_LEN, TRACEPARENT_SCANNED,
    counters,
};

use crate::{
    inject,
    maps::{CHUNK_BUF, ConnState, HDR_SEARCH, HDR_TAIL_BUF, HDR_TAILS, HEADER_TAIL, count},
    pairing::Segment,
};

/// `ConnState::hdr_scan`: the capture is not full yet; nothing was searched.
pub const HDR_UNSCANNED: u8 = 0;
/// The capture and the segments so far were searched; the header block goes on.
pub const HDR_CONTINUES: u8 = 1;
/// The header block ended, or its `traceparent` was found: nothing more to search.
pub const HDR_DONE: u8 = 2;

/// Bytes read from user memory at a time.
const PIECE: u64 = 1024;
/// Restates for the verifier that scratch offsets stay in the first 16 KiB of the chunk
/// buffer (a search covers at most `REQUEST_CAPTURE + HEADER_SCAN_LIMIT` bytes plus a piece).
const OFFSET_MASK: u64 = 16 * 1024 - 1;
const PIECE_MASK: u64 = 2 * PIECE - 1;
/// Bytes past a line feed needed to decide on the line: the name and colon (12), optional
/// white space (2), the value (55), with room to spare.
const LOOKAHEAD: u64 = 80;

const MORE: u8 = 0;
const END: u8 = 1;
const FOUND: u8 = 2;

/// The state of one search, in this CPU's slot of `HDR_SEARCH`. Not on the stack: the
/// verifier tracks stack values exactly and would walk the `bpf_loop` callback once per
/// distinct position; values read from a map are unknown to it, so the callback is verified
/// once.
#[repr(C)]
pub struct Search {
    /// User address of the segment's first byte.
    user: u64,
    /// Scratch bytes that come before the segment's (the capture, or the last segment's tail).
    prefix: u64,
    /// Scratch bytes filled so far.
    loaded: u64,
    /// Bytes to search: `prefix` plus the segment's (at most `HEADER_SCAN_LIMIT`).
    len: u64,
    /// Scratch offset of the value, when found.
    value: u64,
    cpu: u32,
    outcome: u8,
    _pad: [u8; 3],
}

/// The scratch byte at `at` (masked into the buffer).
#[inline(always)]
fn byte(data: *const u8, at: u64) -> u8 {
    // SAFETY: `data` is this CPU's chunk buffer (48 KiB); the mask keeps the offset in it.
    unsafe { *data.add((at & OFFSET_MASK) as usize) }
}

/// What the `bpf_loop` callback works on: this CPU's search state and scratch buffer. Only
/// the two pointers live on the stack (they never change, so the verifier checks the callback
/// once); the positions live in the map value, unknown to it.
#[repr(C)]
struct SearchCtx {
    search: *mut Search,
    data: *mut u8,
}

/// Words (of eight bytes) looked at per `bpf_loop` step: fewer steps, fewer callback calls.
const WORDS_PER_STEP: u64 = 8;

/// One step of the search: the `8 * WORDS_PER_STEP` scratch bytes from
/// `index * 8 * WORDS_PER_STEP`, loading more from user memory first when fewer than
/// `LOOKAHEAD` bytes past them are in. Returns 1 to stop.
extern "C" fn search_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `SearchCtx` on `search_segment`'s stack, alive for the whole loop;
    // its pointers are this CPU's slots of HDR_SEARCH and CHUNK_BUF, which nothing else uses
    // while we run.
    let (s, data) = unsafe {
        let c = &*(ctx as *const SearchCtx);
        (&mut *c.search, c.data)
    };
    let base = index * 8 * WORDS_PER_STEP;
    if base >= s.len {
        return 1;
    }
    let mut want = base + 8 * WORDS_PER_STEP + LOOKAHEAD;
    if want > s.len {
        want = s.len;
    }
    if s.loaded < want {
        let mut n = s.len - s.loaded;
        if n > PIECE {
            n = PIECE;
        }
        // SAFETY: destination offset < 16 KiB and length < 2 KiB, inside the 48 KiB buffer;
        // the helper faults safely on bad user addresses.
        let rc = unsafe {
            bpf_probe_read_user(
                data.add((s.loaded & OFFSET_MASK) as usize).cast(),
                (n & PIECE_MASK) as u32,
                (s.user + (s.loaded - s.prefix)) as *const _,
            )
        };
        if rc != 0 {
            s.outcome = END;
            return 1;
        }
        s.loaded += n;
    }
    for w in 0..WORDS_PER_STEP {
        let pos = base + 8 * w;
        if pos >= s.len {
            return 1;
        }
        // SAFETY: offset masked into the buffer; unaligned loads are fine on map values here.
        let word = unsafe {
            core::ptr::read_unaligned(data.add((pos & OFFSET_MASK) as usize).cast::<u64>())
        };
        let x = word ^ 0x0a0a_0a0a_0a0a_0a0a;
        if x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0
            && decided_in_word(s, data, pos, word)
        {
            return 1;
        }
    }
    0
}

/// Looks at each line feed of the word at `pos`: the end of the header block, a
/// `traceparent` line, or a line too close to the end to tell. True when the search stops.
#[inline(always)]
fn decided_in_word(s: &mut Search, data: *const u8, pos: u64, word: u64) -> bool {
    for j in 0..8u64 {
        if (word >> (8 * j)) & 0xff != b'\n' as u64 {
            continue;
        }
        let at = pos + j;
        if at + 2 >= s.len {
            // Too close to the end to decide: the next segment (or nothing) will tell.
            return true;
        }
        let next = byte(data, at + 1);
        if next == b'\n' || (next == b'\r' && byte(data, at + 2) == b'\n') {
            s.outcome = END;
            return true;
        }
        if at + 13 > s.len {
            return true;
        }
        // SAFETY: offsets masked into the buffer, as above.
        let (name, tail) = unsafe {
            (
                core::ptr::read_unaligned(
                    data.add(((at + 1) & OFFSET_MASK) as usize).cast::<u64>(),
                ),
                core::ptr::read_unaligned(
                    data.add(((at + 9) & OFFSET_MASK) as usize).cast::<u32>(),
                ),
            )
        };
        // Header names are case-insensitive: setting bit 5 folds letters (and leaves ':').
        if name | 0x2020_2020_2020_2020 == u64::from_le_bytes(*b"tracepar")
            && tail | 0x2020_2020 == u32::from_le_bytes(*b"ent:")
        {
            let mut v = at + 13;
            if matches!(byte(data, v), b' ' | b'\t') {
                v += 1;
            }
            if matches!(byte(data, v), b' ' | b'\t') {
                v += 1;
            }
            if v + TRACEPARENT_LEN as u64 <= s.len {
                s.outcome = FOUND;
                s.value = v;
            }
            // Otherwise the value runs past what this syscall carried: undecided, the kept
            // tail brings the line back at the start of the next segment's search.
            return true;
        }
    }
    false
}

/// Searches a request segment once the capture is full. `captured_now` is how many of the
/// segment's leading bytes went into the capture in this syscall: on the first search the
/// capture's earlier bytes are searched too (they may hold the end of the block).
#[inline(always)]
pub fn search_segment(state: &mut ConnState, seg: &Segment, captured_now: u64) {
    if state.hdr_scan == HDR_DONE {
        return;
    }
    // SAFETY: no preconditions; returns the id of the CPU the program runs on.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(p) = CHUNK_BUF.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: pointer from a successful lookup of this CPU's slot (see CHUNK_BUF).
    let data = unsafe { (*p).data.as_mut_ptr() };
    let conn_id = state.event.conn_id;
    let prefix = if state.hdr_scan == HDR_UNSCANNED {
        count(counters::HEADER_SCANS);
        let earlier = (REQUEST_CAPTURE as u64).saturating_sub(captured_now);
        if earlier > 0 {
            // SAFETY: at most REQUEST_CAPTURE bytes from the connection's capture (kernel
            // memory, a map value) to the start of the 48 KiB scratch buffer.
            unsafe {
                bpf_probe_read_kernel(
                    data.cast(),
                    (earlier & 0x1ff) as u32,
                    state.event.request.as_ptr().cast(),
                );
            }
        }
        earlier
    } else {
        match HDR_TAILS.get_ptr(&conn_id) {
            Some(tail) => {
                // SAFETY: pointer from a successful map lookup; at most HEADER_TAIL bytes from
                // it to the start of the scratch buffer.
                unsafe {
                    let len = (*tail).len & 0x7f;
                    bpf_probe_read_kernel(data.cast(), len as u32, (*tail).bytes.as_ptr().cast());
                    len
                }
            }
            None => 0,
        }
    };
    let mut seg_len = seg.len;
    if seg_len > HEADER_SCAN_LIMIT as u64 {
        seg_len = HEADER_SCAN_LIMIT as u64;
    }
    let Some(sp) = HDR_SEARCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array: nothing else uses it while we run.
    let search = unsafe { &mut *sp };
    search.user = seg.ptr;
    search.prefix = prefix;
    search.loaded = prefix;
    search.len = prefix + seg_len;
    search.value = 0;
    search.cpu = cpu;
    search.outcome = MORE;
    let mut ctx = SearchCtx { search: sp, data };
    // SAFETY: bpf_loop calls `search_step` at most `len / 64 + 1` times with a pointer to
    // `ctx`, which outlives the call.
    unsafe {
        bpf_loop(
            ((search.len / (8 * WORDS_PER_STEP) + 1) & 0x3ff) as u32,
            search_step as *mut core::ffi::c_void,
            (&mut ctx as *mut SearchCtx).cast(),
            0,
        );
    }
    match search.outcome {
        FOUND => {
            // SAFETY: 55 bytes from the scratch buffer (offset masked into it) into the
            // event's fixed-size field.
            let rc = unsafe {
                bpf_probe_read_kernel(
                    state.event.traceparent.as_mut_ptr().cast(),
                    TRACEPARENT_LEN as u32,
                    data.add((search.value & OFFSET_MASK) as usize).cast(),
                )
            };
            if rc == 0 {
                state.event.traceparent_source = TRACEPARENT_SCANNED;
                count(counters::HEADER_SCAN_TRACEPARENTS);
                if state.role == DIRECTION_SERVER && inject::enabled() {
                    inject::adopt_incoming(state);
                }
            }
            finish(state, conn_id, prefix);
        }
        END => finish(state, conn_id, prefix),
        _ => {
            if seg.len > HEADER_SCAN_LIMIT as u64 {
                count(counters::HEADER_SCANS_CUT);
                finish(state, conn_id, prefix);
                return;
            }
            state.hdr_scan = HDR_CONTINUES;
            keep_tail(data, search.len, conn_id);
        }
    }
}

/// The search is over for this request.
#[inline(always)]
fn finish(state: &mut ConnState, conn_id: u64, prefix: u64) {
    if state.hdr_scan == HDR_CONTINUES && prefix > 0 {
        let _ = HDR_TAILS.remove(&conn_id);
    }
    state.hdr_scan = HDR_DONE;
}

/// Keeps the last `HEADER_TAIL` searched bytes for the connection's next segment.
#[inline(always)]
fn keep_tail(data: *const u8, len: u64, conn_id: u64) {
    let Some(p) = HDR_TAIL_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array: no other program uses it while we run.
    let tail = unsafe { &mut *p };
    let n = if len < HEADER_TAIL as u64 {
        len
    } else {
        HEADER_TAIL as u64
    };
    // SAFETY: `n` <= HEADER_TAIL bytes from the scratch buffer (offset masked into it) into
    // the slot's fixed-size array.
    let rc = unsafe {
        bpf_probe_read_kernel(
            tail.bytes.as_mut_ptr().cast(),
            (n & 0x7f) as u32,
            data.add(((len - n) & OFFSET_MASK) as usize).cast(),
        )
    };
    if rc == 0 {
        tail.len = n;
        let _ = HDR_TAILS.insert(&conn_id, tail, 0);
    }
}
