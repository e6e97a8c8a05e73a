//! The programs: socket I/O (BTF tracepoints `sock_recv_length`, `sock_send_length`), TCP
//! state changes (BTF tracepoint `inet_sock_set_state`: closes and listens), and process
//! lifecycle. BTF tracepoints (`tp_btf`) rather than raw ones: the verifier types the socket
//! argument, so its fields are plain loads (`btf::load`) instead of a helper call each. No
//! `syscalls:*` tracepoint is attached: enabling any of them puts every system call of every
//! task on the kernel's slow path.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_boot_ns, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sonde_schema::{
    EVENT_THREAD, PROC_EXEC, PROC_EXIT, PROC_FORK, PROC_LISTEN, ProcEvent, THREAD_ENDED,
    THREAD_STARTED, ThreadNotice, counters, process_net,
};

use crate::{
    btf, inject,
    maps::{
        CONNS, EVENTS, OP_READ, OP_WRITE, PROC_EVENTS, PROC_NET_BYTES, SocketIo, count,
        count_process_bytes, deselect, listen_port_wanted, process_metrics_on, select, selected,
    },
    offsets, pairing,
    sock::SockHead,
    syscall_abi, tls,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_PEEK: i32 = 2;

/// TCP states (include/net/tcp_states.h) this file reacts to.
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

/// A TCP read or write of a selected process, fed to the pairing state machine. BTF tracepoint
/// arguments: `(struct sock *sk, int ret, int flags)`, the socket typed by the verifier.
#[inline(always)]
fn on_socket_io(ctx: &BtfTracePointContext, op: u8) -> u32 {
    // Every socket read and write on the host runs this. What the tracepoint's own arguments
    // rule out is ruled out first, with plain loads: the task pointer below is a helper call,
    // the largest part of what an unselected run costs. Failed and empty reads (EAGAIN, EOF)
    // carry nothing to pair or count (closes arrive through `inet_sock_set_state`); a peek is
    // read again for real; only TCP is paired, and process metrics count IPv4/IPv6 sockets of
    // any transport, so Unix-domain, netlink and (with process metrics off) UDP sockets end
    // here.
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    // SAFETY: `sk` is this BTF tracepoint's socket argument.
    let family: u16 = unsafe { btf::load(sk, offsets::skc_family()) };
    let tcp = is_tcp(family, sk);
    let count_bytes = process_metrics_on() && is_inet_family(family);
    if !tcp && !count_bytes {
        return 0;
    }
    // SAFETY: no preconditions; returns the current task's BTF-typed pointer.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let (pid, tgid) = current_ids(task);
    if !selected(tgid) {
        return 0;
    }
    let id = (u64::from(tgid) << 32) | u64::from(pid);
    // Process metrics: the bytes of every IPv4/IPv6 socket of the process.
    if count_bytes {
        let slot = if op == OP_READ {
            process_net::RECEIVED
        } else {
            process_net::SENT
        };
        count_process_bytes(tgid, slot, ret as u64);
    }
    if !tcp {
        return 0;
    }
    // SAFETY: `task` is the current task's BTF-typed pointer; the helper returns a pointer
    // into it, and the registers are then read through that BTF-typed pointer (fault-handled
    // loads; see `syscall_abi`).
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as u64;
    let Some(args) = syscall_abi::syscall_args(regs) else {
        return 0;
    };
    let Some(buf_kind) = syscall_abi::buffer_kind(args.nr) else {
        count(counters::UNTRACKED_SYSCALLS);
        return 0;
    };
    let io = SocketIo {
        buf: args.arg1,
        iov_count: args.arg2,
        sk,
        fd: args.arg0 as u32,
        op,
        buf_kind,
    };
    let state = match CONNS.get_ptr_mut(&sk) {
        Some(p) => {
            // SAFETY: pointer from a successful map lookup.
            pairing::on_data(unsafe { &mut *p }, &io, id, ret as u64);
            Some(p)
        }
        // A new TCP connection (checked above). A socket carrying TLS is the uprobes'
        // business.
        None => {
            // SAFETY: `sk` is this BTF tracepoint's socket argument.
            let head = unsafe { SockHead::typed(sk) };
            let opening = if offsets::tls_enabled() {
                match tls::claims_socket(&io, id, ret as u64) {
                    tls::Claim::Tls => None,
                    tls::Claim::Clear(opening) => opening,
                }
            } else {
                pairing::opening(&io, ret as u64)
            };
            opening.and_then(|o| pairing::on_new_connection(&io, &head, id, ret as u64, o))
        }
    };
    // The header search past the capture, from this one place (see
    // `pairing::search_past_capture`).
    if let Some(p) = state {
        // SAFETY: pointer from a successful map lookup above.
        pairing::search_deferred(unsafe { &mut *p });
    }
    // Context propagation: the `sk_msg` program ran earlier in this same write; the ids it
    // injected belong to the client exchange the pairing just started.
    if op == OP_WRITE && inject::enabled() {
        inject::stamp(sk, id);
    }
    0
}

/// The current task's thread id and thread-group id, read through its BTF-typed pointer
/// (plain loads the verifier checks against `struct task_struct`): the same values as
/// `bpf_get_current_pid_tgid`, without a second helper call on every socket syscall of a
/// selected process (the register read needs the task pointer anyway).
#[inline(always)]
fn current_ids(task: *const u8) -> (u32, u32) {
    let task = task as u64;
    // SAFETY: `task` is the BTF-typed current task; the offsets come from kernel BTF and name
    // the `pid` and `tgid` members, each a 4-byte `pid_t`.
    unsafe {
        (
            btf::load(task, offsets::task_pid() as u64),
            btf::load(task, offsets::task_tgid() as u64),
        )
    }
}

/// True for an IPv4 or IPv6 address family.
#[inline(always)]
fn is_inet_family(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// True for an IPv4 or IPv6 TCP socket of family `family`; `sk` is the tracepoint's BTF-typed
/// socket.
#[inline(always)]
fn is_tcp(family: u16, sk: u64) -> bool {
    // SAFETY: `sk` is the BTF tracepoint's socket argument (the callers').
    is_inet_family(family) && unsafe { btf::load::<u16>(sk, offsets::sk_protocol()) } == IPPROTO_TCP
}

#[btf_tracepoint(function = "sock_recv_length")]
// Inlined into the entry point the macro generates: left to itself, LLVM made the body a
// BPF-to-BPF call once it grew, and that call cost every socket syscall on the host
// ~12 ns (`UNSELECTED=1 bench/prog_costs.sh`: 405 → 450 ns per request).
#[inline(always)]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    on_socket_io(&ctx, OP_READ)
}

#[btf_tracepoint(function = "sock_send_length")]
#[inline(always)]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    on_socket_io(&ctx, OP_WRITE)
}

/// A TCP socket changed state. Arguments: `(const struct sock *sk, int oldstate, int
/// newstate)`. Listening is reported to the loader (port selection); a local close (FIN_WAIT1,
/// LAST_ACK) or the socket's end (CLOSE) finishes its exchange. A peer's FIN alone does not:
/// the response may still be on its way.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let newstate = ctx.arg::<u64>(2) as i32;
    match newstate {
        TCP_LISTEN => {
            // Only ports the selection covers: a listen() loop on other ports costs one bit
            // test and never reaches the process ring. Every covered listen is reported with
            // the listening process: the loader looks at that process's network namespace
            // only (its own `/proc/<pid>/net/tcp{,6}`), whichever namespace it is.
            // SAFETY: argument 0 is this BTF tracepoint's socket.
            let port: u16 = unsafe { btf::load(ctx.arg(0), offsets::skc_num()) };
            if listen_port_wanted(port) {
                proc_event(
                    PROC_LISTEN,
                    (bpf_get_current_pid_tgid() >> 32) as u32,
                    u32::from(port),
                );
            }
        }
        TCP_FIN_WAIT1 | TCP_LAST_ACK => pairing::on_close(ctx.arg(0), false),
        TCP_CLOSE => pairing::on_close(ctx.arg(0), true),
        _ => {}
    }
    0
}

/// Writes a process notice; false (and counted) when the ring was full.
#[inline(always)]
fn proc_event(kind: u32, pid: u32, child_pid: u32) -> bool {
    let ev = ProcEvent {
        kind,
        pid,
        child_pid,
        _pad: 0,
        // SAFETY: no preconditions; reads CLOCK_BOOTTIME.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    if PROC_EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        count(counters::PROC_EVENTS_LOST);
        return false;
    }
    true
}

/// Tells the processor that thread `tid` of selected process `pid` started (created by
/// `parent_tid`) or ended: client spans of a thread started and ended within a request are
/// that request's children (`processor/src/pipeline/linker.rs`).
#[inline(always)]
fn thread_notice(what: u8, pid: u32, tid: u32, parent_tid: u32) {
    let notice = ThreadNotice {
        kind: EVENT_THREAD,
        what,
        _pad: 0,
        pid,
        tid,
        parent_tid,
        ns: pairing::now_ns(),
    };
    if EVENTS
        .output::<ThreadNotice>(&notice, pairing::wakeup_flags(ThreadNotice::SIZE))
        .is_err()
    {
        count(counters::THREAD_NOTICES_LOST);
    }
}

/// An execve: reported for selected processes (their new image is checked again) and, only
/// when executable-path selection is configured, for every process.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if offsets::notify_all_execs() || selected(tgid) {
        proc_event(PROC_EXEC, tgid, 0);
    }
    0
}

/// A selected process ended: its byte is cleared here, before the loader hears of it, so the
/// pid is out of the filter before any new task can take it.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    // Only the thread-group leader's exit ends the process.
    if tgid != id as u32 {
        thread_notice(THREAD_ENDED, tgid, id as u32, 0);
        return 0;
    }
    deselect(tgid);
    if process_metrics_on() {
        let _ = PROC_NET_BYTES.remove(&tgid);
    }
    proc_event(PROC_EXIT, tgid, 0);
    0
}

/// Every new task sets its own pid's byte from scratch: a pid the loader selected for an
/// earlier process can never be selected for the task that reuses it, even if the exit notice
/// was lost or the loader set the byte late. A fork of a selected process is selected here at
/// once (the loader selects every fork of a selected process, with its parent's metadata, when
/// it reads the notice): a server that forks per connection (PostgreSQL) reads the client's
/// first bytes right after `fork`, before the loader could set the byte.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: bounded read of the tracepoint record.
    let child = unsafe { ctx.read_at::<i32>(offsets::fork_child_pid()).unwrap_or(0) } as u32;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !selected(tgid) {
        deselect(child);
        return 0;
    }
    select(child);
    proc_event(PROC_FORK, tgid, child);
    thread_notice(
        THREAD_STARTED,
        tgid,
        child,
        bpf_get_current_pid_tgid() as u32,
    );
    0
}
