//! HTTPS through OpenSSL: uprobes on `SSL_read`, `SSL_write`, `SSL_read_ex` and `SSL_write_ex`
//! (entry and return; the loader attaches them per selected process with uprobe-multi links
//! and tells the functions apart by the link's cookie) hand the plaintext to the same pairing
//! as cleartext sockets, keyed by (process, `SSL *`) instead of the socket.
//!
//! The `SSL *` is linked to its TCP socket by the socket I/O of the same thread: a read inside
//! an `SSL_read` call (blocking BIO: Python, nginx, curl), or the first write after an
//! `SSL_write` (memory BIO: Node.js writes the records after `SSL_write` returns). A linked
//! socket's bytes are ciphertext and skipped; its close ends the TLS connection; its endpoints
//! go to the processor in a `ConnTuple` if an exchange already went out without them.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_attach_cookie},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_schema::{ConnTuple, EVENT_CONN_TUPLE, counters};

use crate::{
    maps::{
        BUF_PLAIN, CONN_ZERO, ConnState, EVENTS, OP_READ, OP_WRITE, SOCK_TLS, SSL_CALLS,
        SSL_PENDING_WRITE, SocketIo, SslCall, TLS_CONNS, TLS_SOCK, TLS_USED_LINKED, TlsKey, count,
        mark_tls_used, selected, tls_used,
    },
    pairing::{self, FirstBytes, Opening},
};

/// Uprobe cookies: which function a link was attached to.
use sonde_schema::tls::{
    COOKIE_READ_EX as FUNC_READ_EX, COOKIE_WRITE as FUNC_WRITE, COOKIE_WRITE_EX as FUNC_WRITE_EX,
};

#[inline(always)]
fn is_write(func: u64) -> bool {
    func == FUNC_WRITE || func == FUNC_WRITE_EX
}

/// Entry of an SSL read or write: remember the call for the return probe; a write also waits
/// for the thread's next socket write to link its socket.
#[uprobe]
pub fn ssl_entry(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !selected((id >> 32) as u32) {
        return 0;
    }
    // SAFETY: the context is this uprobe's; the helper reads the link's cookie.
    let func = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if ssl == 0 || buf == 0 {
        return 0;
    }
    let len_ptr: u64 = if func == FUNC_READ_EX || func == FUNC_WRITE_EX {
        ctx.arg(3).unwrap_or(0)
    } else {
        0
    };
    let call = SslCall {
        ssl,
        buf,
        len_ptr,
        func,
    };
    if SSL_CALLS.insert(&id, &call, 0).is_err() {
        count(counters::TLS_CALLS_UNTRACKED);
        return 0;
    }
    if is_write(func) {
        let _ = SSL_PENDING_WRITE.insert(&id, &ssl, 0);
    }
    0
}

/// Return of an SSL read or write: the plaintext that moved goes to the pairing state of the
/// (process, `SSL *`) connection.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = SSL_CALLS.get_ptr(&id) else {
        return 0;
    };
    // SAFETY: pointer from a successful map lookup; copied before the entry is removed.
    let call = unsafe { *call };
    let _ = SSL_CALLS.remove(&id);
    let ret: i64 = ctx.ret::<i32>() as i64;
    let bytes: u64 = if call.len_ptr != 0 {
        // `_ex`: 1 on success, the count written through the pointer.
        if ret != 1 {
            return 0;
        }
        pairing::read_user::<u64>(call.len_ptr).unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        // WANT_READ / WANT_WRITE (non-blocking BIO, nginx), errors, EOF: nothing moved.
        return 0;
    };
    if bytes == 0 {
        return 0;
    }
    let key = TlsKey {
        tgid: id >> 32,
        ssl: call.ssl,
    };
    let io = SocketIo {
        buf: call.buf,
        iov_count: 0,
        sk: 0,
        fd: 0,
        op: if is_write(call.func) {
            OP_WRITE
        } else {
            OP_READ
        },
        buf_kind: BUF_PLAIN,
    };
    let state = match TLS_CONNS.get_ptr_mut(&key) {
        Some(p) => {
            // SAFETY: pointer from a successful map lookup.
            pairing::on_data(unsafe { &mut *p }, &io, id, bytes);
            Some(p)
        }
        None => new_connection(&key, &io, id, bytes),
    };
    // The header search past the capture, from this one place (see
    // `pairing::search_past_capture`).
    if let Some(p) = state {
        // SAFETY: pointer from a successful map lookup above.
        pairing::search_deferred(unsafe { &mut *p });
    }
    0
}

/// First plaintext of a TLS connection: track it if it starts HTTP/1 or HTTP/2. Returns its
/// state when it is tracked.
#[inline(always)]
fn new_connection(key: &TlsKey, io: &SocketIo, id: u64, bytes: u64) -> Option<*mut ConnState> {
    let opening = pairing::opening(io, bytes)?;
    let first = pairing::classify(io, &opening, bytes);
    // Picked up at a response (the probes were attached while the request was under way):
    // the next request starts the pairing.
    if first == FirstBytes::Http1Response {
        return None;
    }
    if first == FirstBytes::Other {
        // Any other protocol over TLS (PostgreSQL, Redis): an "other TCP" stream.
        count(counters::NON_HTTP_PAYLOADS);
    }
    let zero = CONN_ZERO.get_ptr(0)?;
    // SAFETY: CONN_ZERO's single slot is a valid, never-written ConnState.
    if TLS_CONNS.insert(key, unsafe { &*zero }, 0).is_err() {
        count(counters::CONN_MAP_FULL);
        return None;
    }
    let p = TLS_CONNS.get_ptr_mut(key)?;
    // SAFETY: pointer from a successful lookup of the entry just inserted.
    let state = unsafe { &mut *p };
    state.tls = 1;
    if let Some(sk) = TLS_SOCK.get_ptr(key) {
        // SAFETY: pointer from a successful map lookup.
        pairing::read_tuple(state, unsafe { *sk });
    }
    pairing::begin(state, io, id, bytes, &opening.seg, first);
    Some(p)
}

/// What `claims_socket` found on a socket the cleartext path does not track.
pub enum Claim {
    /// It belongs to TLS (already linked, or linked now) and must not be paired as cleartext.
    Tls,
    /// Not TLS: its first segment's opening bytes (None when there is no segment), read here
    /// and handed on so the cleartext path does not read them again.
    Clear(Option<Opening>),
}

/// Socket I/O of a selected process on a socket the cleartext path does not track: does it
/// belong to TLS? A socket already linked is answered without reading user memory.
#[inline(always)]
pub fn claims_socket(io: &SocketIo, id: u64, ret: u64) -> Claim {
    let (sk, op) = (io.sk, io.op);
    // An SSL_write's ciphertext goes out with the thread's next socket write, whichever socket
    // that is: the pending write is used up by it, linked or not, so a stale one can never
    // link the next connection's handshake to an earlier SSL object.
    let pending = if op == OP_WRITE {
        // SAFETY: pointer from a successful map lookup, copied at once.
        let pending = SSL_PENDING_WRITE.get_ptr(&id).map(|s| unsafe { *s });
        if pending.is_some() {
            let _ = SSL_PENDING_WRITE.remove(&id);
        }
        pending
    } else {
        None
    };
    if tls_used(TLS_USED_LINKED) && SOCK_TLS.get_ptr(&sk).is_some() {
        return Claim::Tls;
    }
    // Only bytes that are TLS records link a socket: a write to some other socket between an
    // SSL_write and its ciphertext (Node.js under backpressure) must not take the link.
    let opening = pairing::opening(io, ret);
    match &opening {
        Some(o) if pairing::looks_like_tls_record(o) => {}
        _ => return Claim::Clear(opening),
    }
    let ssl = if op == OP_WRITE {
        match pending {
            Some(ssl) => ssl,
            None => return Claim::Clear(opening),
        }
    } else {
        // A read inside an SSL_read: the library is pulling ciphertext through a socket BIO.
        // SAFETY: pointer from a successful map lookup, copied at once.
        match SSL_CALLS.get_ptr(&id).map(|c| unsafe { *c }) {
            Some(call) if !is_write(call.func) => call.ssl,
            _ => return Claim::Clear(opening),
        }
    };
    link(
        sk,
        TlsKey {
            tgid: id >> 32,
            ssl,
        },
    );
    Claim::Tls
}

/// Links a socket to a TLS connection; if the connection's exchanges went out without their
/// endpoints, they follow now in a `ConnTuple`.
#[inline(always)]
fn link(sk: u64, key: TlsKey) {
    // The `SSL *` was linked to another socket: the object was freed and reused for this new
    // connection; what is kept for the old one is stale.
    // SAFETY: pointer from a successful map lookup, copied at once.
    if let Some(old) = TLS_SOCK.get_ptr(&key).map(|s| unsafe { *s })
        && old != sk
    {
        let _ = TLS_CONNS.remove(&key);
        let _ = SOCK_TLS.remove(&old);
    }
    mark_tls_used(TLS_USED_LINKED);
    if SOCK_TLS.insert(&sk, &key, 0).is_err() || TLS_SOCK.insert(&key, &sk, 0).is_err() {
        return;
    }
    count(counters::TLS_LINKS);
    let Some(p) = TLS_CONNS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: pointer from a successful map lookup.
    let state: &mut ConnState = unsafe { &mut *p };
    if state.event.family != 0 {
        return;
    }
    pairing::read_tuple(state, sk);
    let ev = &state.event;
    let tuple = ConnTuple {
        kind: EVENT_CONN_TUPLE,
        _pad: 0,
        family: ev.family,
        pid: ev.pid,
        conn_id: ev.conn_id,
        local_port: ev.local_port,
        peer_port: ev.peer_port,
        _pad2: 0,
        local_addr: ev.local_addr,
        peer_addr: ev.peer_addr,
    };
    if EVENTS
        .output::<ConnTuple>(&tuple, pairing::wakeup_flags(ConnTuple::SIZE))
        .is_err()
    {
        count(counters::TUPLES_LOST_RINGBUF_FULL);
    }
}
