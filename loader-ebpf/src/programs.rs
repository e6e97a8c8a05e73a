//! The programs: socket I/O (raw tracepoints `sock_recv_length`, `sock_send_length`), close,
//! listen, and process lifecycle.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sonde_schema::{
    FLAG_CLOSED, PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent, counters,
};

use crate::{
    maps::{
        CONNS, ConnKey, OP_READ, OP_WRITE, PHASE_REQUEST, PHASE_RESPONSE, PROC_EVENTS, SocketIo,
        count, deselect, selected,
    },
    offsets, pairing, syscall_abi,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_PEEK: i32 = 2;

/// A TCP read or write of a selected process: flush a finished exchange when the direction
/// flipped back, then feed the bytes to the pairing state machine. Raw tracepoint arguments:
/// `(struct sock *sk, int ret, int flags)`.
#[inline(always)]
fn on_socket_io(ctx: &RawTracePointContext, op: u8) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if flags & MSG_PEEK != 0 {
        return 0;
    }
    // SAFETY: both helpers only return pointers into the current task; the registers are then
    // read with bpf_probe_read_kernel, which faults safely.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let Some((nr, arg0, buf)) = syscall_abi::syscall_args(regs) else {
        return 0;
    };
    let Some(buf_kind) = syscall_abi::buffer_kind(nr) else {
        if ret > 0 && is_tcp(sk) {
            count(counters::UNTRACKED_SYSCALLS);
        }
        return 0;
    };
    let io = SocketIo {
        buf,
        sk,
        fd: arg0 as u32,
        op,
        buf_kind,
    };
    let key = ConnKey { tgid, fd: io.fd };
    match CONNS.get_ptr_mut(&key) {
        Some(p) => {
            // SAFETY: pointer from a successful map lookup.
            let state = unsafe { &mut *p };
            let server = state.role == sonde_schema::DIRECTION_SERVER;
            // The server reads again (even an EAGAIN), or the client writes again: the
            // previous exchange on this connection is complete.
            if state.phase == PHASE_RESPONSE && (server == (op == OP_READ)) {
                pairing::flush(state, 0);
            }
            if ret > 0 {
                pairing::on_data(state, &io, id, ret as u64);
            }
        }
        // Only a new connection needs the socket checked: a tracked fd was a TCP socket when
        // its first request was seen, and closing it drops the state.
        None if ret > 0 && is_tcp(sk) => pairing::on_new_connection(&key, &io, id, ret as u64),
        None => {}
    }
    0
}

/// True for an IPv4 or IPv6 TCP socket.
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    // SAFETY: bpf_probe_read_kernel copies with fault handling; sk comes from the tracepoint.
    let (family, protocol) = unsafe {
        (
            aya_ebpf::helpers::bpf_probe_read_kernel((sk + offsets::skc_family()) as *const u16)
                .unwrap_or(0),
            aya_ebpf::helpers::bpf_probe_read_kernel((sk + offsets::sk_protocol()) as *const u16)
                .unwrap_or(0),
        )
    };
    protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6)
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> u32 {
    on_socket_io(&ctx, OP_READ)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> u32 {
    on_socket_io(&ctx, OP_WRITE)
}

/// Entry of a read-family syscall: a server that reads again has finished its response.
/// Flushing here, rather than when the read returns, emits the exchange at once even when the
/// server then blocks waiting for the next request on an idle keep-alive connection.
#[inline(always)]
fn on_read_entry(ctx: &TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    // SAFETY: bounded read of the tracepoint record.
    let fd = unsafe { ctx.read_at::<u64>(offsets::syscall_arg(0)).unwrap_or(0) } as u32;
    if let Some(p) = CONNS.get_ptr_mut(&ConnKey { tgid, fd }) {
        // SAFETY: pointer from a successful map lookup.
        let state = unsafe { &mut *p };
        if state.phase == PHASE_RESPONSE && state.role == sonde_schema::DIRECTION_SERVER {
            pairing::flush(state, 0);
        }
    }
    0
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    on_read_entry(&ctx)
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    on_read_entry(&ctx)
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    on_read_entry(&ctx)
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    on_read_entry(&ctx)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    // SAFETY: bounded read of the tracepoint record.
    let fd = unsafe { ctx.read_at::<u64>(offsets::syscall_arg(0)).unwrap_or(0) } as u32;
    let key = ConnKey { tgid, fd };
    if let Some(p) = CONNS.get_ptr_mut(&key) {
        // SAFETY: pointer from a successful lookup.
        let state = unsafe { &mut *p };
        if state.phase == PHASE_REQUEST || state.phase == PHASE_RESPONSE {
            pairing::flush(state, FLAG_CLOSED);
        }
        let _ = CONNS.remove(&key);
    }
    0
}

#[inline(always)]
fn proc_event(kind: u32, pid: u32, child_pid: u32) {
    let ev = ProcEvent {
        kind,
        pid,
        child_pid,
        _pad: 0,
    };
    if PROC_EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        count(counters::PROC_EVENTS_LOST);
    }
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    proc_event(PROC_EXEC, (bpf_get_current_pid_tgid() >> 32) as u32, 0);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // Only the thread-group leader's exit ends the process.
    if tgid != id as u32 || !selected(tgid) {
        return 0;
    }
    deselect(tgid);
    proc_event(PROC_EXIT, tgid, 0);
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    // SAFETY: bounded read of the tracepoint record.
    let child = unsafe { ctx.read_at::<i32>(offsets::fork_child_pid()).unwrap_or(0) };
    proc_event(PROC_FORK, tgid, child as u32);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    // SAFETY: bounded read of the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(offsets::syscall_ret()).unwrap_or(-1) };
    if ret == 0 {
        proc_event(PROC_LISTEN, ctx.tgid(), 0);
    }
    0
}
