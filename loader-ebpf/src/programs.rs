//! The tracepoint programs: syscall entry/exit, socket length, close, and process lifecycle.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_schema::{FLAG_CLOSED, PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent, counters};

use crate::maps::{
    BUF_IOVEC, BUF_MSGHDR, BUF_NONE, BUF_PLAIN, CONNS, ConnKey, INFLIGHT, InFlight, OP_READ,
    OP_WRITE, PHASE_REQUEST, PHASE_RESPONSE, PID_FILTER, PROC_EVENTS, count,
};

#[inline(always)]
fn selected(tgid: u32) -> bool {
    PID_FILTER.get_ptr(&tgid).is_some()
}

#[inline(always)]
fn read_arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: read_at performs a bounded bpf_probe_read of the tracepoint record.
    unsafe { ctx.read_at::<u64>(crate::offsets::syscall_arg(index)).unwrap_or(0) }
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, op: u8, buf_kind: u8) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    let fd = read_arg(ctx, 0) as u32;
    let buf = if buf_kind == BUF_NONE { 0 } else { read_arg(ctx, 1) };

    // The direction flipped back at syscall entry: the server reads again, or the client
    // writes again, so the previous exchange on this connection is complete.
    if let Some(p) = CONNS.get_ptr_mut(&ConnKey { tgid, fd }) {
        // SAFETY: pointer from a successful map lookup.
        let state = unsafe { &mut *p };
        let server = state.role == sonde_schema::DIRECTION_SERVER;
        if state.phase == PHASE_RESPONSE && (server == (op == OP_READ)) {
            crate::pairing::flush(state, 0);
        }
    }

    let io = InFlight {
        buf,
        start_ns: crate::pairing::now_ns(),
        sk: 0,
        fd,
        op,
        buf_kind,
        tcp: 0,
        _pad: 0,
    };
    if INFLIGHT.insert(&id, &io, 0).is_err() {
        count(counters::INFLIGHT_MAP_FULL);
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = INFLIGHT.get_ptr(&id) else {
        return 0;
    };
    // SAFETY: pointer from a successful lookup; copied before the entry is removed.
    let io = unsafe { *p };
    let _ = INFLIGHT.remove(&id);
    if io.tcp == 0 {
        return 0;
    }
    // SAFETY: bounded read of the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(crate::offsets::syscall_ret()).unwrap_or(0) };
    if ret <= 0 {
        return 0;
    }
    crate::pairing::on_data(&io, id, ret as u64);
    0
}

/// `sock:sock_recv_length` / `sock:sock_send_length`: marks the running syscall as TCP I/O.
#[inline(always)]
fn on_sock_length(ctx: &TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = INFLIGHT.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: bounded reads of the tracepoint record.
    let (sk, family, protocol) = unsafe {
        (
            ctx.read_at::<u64>(crate::offsets::sock_len_sk()).unwrap_or(0),
            ctx.read_at::<u16>(crate::offsets::sock_len_family()).unwrap_or(0),
            ctx.read_at::<u16>(crate::offsets::sock_len_protocol()).unwrap_or(0),
        )
    };
    const IPPROTO_TCP: u16 = 6;
    if protocol == IPPROTO_TCP && (family == 2 || family == 10) {
        // SAFETY: pointer from a successful lookup of this thread's own entry.
        let io = unsafe { &mut *p };
        io.tcp = 1;
        io.sk = sk;
    }
    0
}

macro_rules! enter_program {
    ($name:ident, $op:expr, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $op, $kind)
        }
    };
}

macro_rules! exit_program {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit(&ctx)
        }
    };
}

enter_program!(sys_enter_read, OP_READ, BUF_PLAIN);
enter_program!(sys_enter_recvfrom, OP_READ, BUF_PLAIN);
enter_program!(sys_enter_readv, OP_READ, BUF_IOVEC);
enter_program!(sys_enter_recvmsg, OP_READ, BUF_MSGHDR);
enter_program!(sys_enter_write, OP_WRITE, BUF_PLAIN);
enter_program!(sys_enter_sendto, OP_WRITE, BUF_PLAIN);
enter_program!(sys_enter_writev, OP_WRITE, BUF_IOVEC);
enter_program!(sys_enter_sendmsg, OP_WRITE, BUF_MSGHDR);
enter_program!(sys_enter_sendfile64, OP_WRITE, BUF_NONE);
// One exit program serves every hooked syscall; the loader attaches it to each sys_exit_*.
exit_program!(sys_exit_io);

#[tracepoint]
pub fn sock_length(ctx: TracePointContext) -> u32 {
    on_sock_length(&ctx)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    let key = ConnKey { tgid, fd: read_arg(&ctx, 0) as u32 };
    if let Some(p) = CONNS.get_ptr_mut(&key) {
        // SAFETY: pointer from a successful lookup.
        let state = unsafe { &mut *p };
        if state.phase == PHASE_REQUEST || state.phase == PHASE_RESPONSE {
            crate::pairing::flush(state, FLAG_CLOSED);
        }
        let _ = CONNS.remove(&key);
    }
    0
}

#[inline(always)]
fn proc_event(kind: u32, pid: u32, child_pid: u32) {
    let ev = ProcEvent { kind, pid, child_pid, _pad: 0 };
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
    let _ = PID_FILTER.remove(&tgid);
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
    let child = unsafe { ctx.read_at::<i32>(crate::offsets::fork_child_pid()).unwrap_or(0) };
    proc_event(PROC_FORK, tgid, child as u32);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    // SAFETY: bounded read of the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(crate::offsets::syscall_ret()).unwrap_or(-1) };
    if ret == 0 {
        proc_event(PROC_LISTEN, ctx.tgid(), 0);
    }
    0
}

