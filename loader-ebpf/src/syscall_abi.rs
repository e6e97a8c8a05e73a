//! Where a task's saved user registers keep the syscall number and arguments, and the numbers
//! of the syscalls that carry socket payloads. The socket tracepoints fire inside the syscall,
//! so the registers still hold its arguments: no entry/exit hooks and no per-syscall map.
//! These are architecture ABI facts (`struct pt_regs` is part of the ptrace ABI), not kernel
//! internals that move between versions.

use crate::maps::{BUF_IOVEC, BUF_MSGHDR, BUF_NONE, BUF_PLAIN};

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    /// `struct pt_regs` byte offsets (arch/x86/include/uapi/asm/ptrace.h).
    pub const ARG0: u64 = 112; // di
    pub const ARG1: u64 = 104; // si
    pub const ARG2: u64 = 96; // dx
    pub const SYSCALL_NR: u64 = 120; // orig_ax

    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    /// `struct pt_regs` byte offsets (arch/arm64/include/asm/ptrace.h): x0 is overwritten by
    /// the return value, so the first argument comes from orig_x0.
    pub const ARG0: u64 = 272; // orig_x0
    pub const ARG1: u64 = 8; // regs[1]
    pub const ARG2: u64 = 16; // regs[2]
    pub const SYSCALL_NR: u64 = 280; // syscallno

    pub const READ: u64 = 63;
    pub const WRITE: u64 = 64;
    pub const READV: u64 = 65;
    pub const WRITEV: u64 = 66;
    pub const SENDFILE: u64 = 71;
    pub const SENDTO: u64 = 206;
    pub const RECVFROM: u64 = 207;
    pub const SENDMSG: u64 = 211;
    pub const RECVMSG: u64 = 212;
}

/// A syscall's number and its first three arguments, from a task's saved registers.
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub nr: u64,
    pub arg0: u64,
    pub arg1: u64,
    /// The iovec count of `readv`/`writev`.
    pub arg2: u64,
}

#[inline(always)]
pub fn syscall_args(regs: u64) -> Option<SyscallArgs> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: `regs` is the BTF-typed `struct pt_regs *` bpf_task_pt_regs returned, and the
        // offsets name its 8-byte register slots: plain loads, no helper call.
        let (arg2, arg1, arg0, nr) = unsafe {
            (
                crate::btf::load::<u64>(regs, arch::ARG2),
                crate::btf::load::<u64>(regs, arch::ARG1),
                crate::btf::load::<u64>(regs, arch::ARG0),
                crate::btf::load::<u64>(regs, arch::SYSCALL_NR),
            )
        };
        Some(SyscallArgs {
            nr,
            arg0,
            arg1,
            arg2,
        })
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        // SAFETY: bpf_probe_read_kernel copies with fault handling.
        unsafe {
            let nr =
                aya_ebpf::helpers::bpf_probe_read_kernel((regs + arch::SYSCALL_NR) as *const u64)
                    .ok()?;
            let arg0 =
                aya_ebpf::helpers::bpf_probe_read_kernel((regs + arch::ARG0) as *const u64).ok()?;
            let arg1 =
                aya_ebpf::helpers::bpf_probe_read_kernel((regs + arch::ARG1) as *const u64).ok()?;
            let arg2 =
                aya_ebpf::helpers::bpf_probe_read_kernel((regs + arch::ARG2) as *const u64).ok()?;
            Some(SyscallArgs {
                nr,
                arg0,
                arg1,
                arg2,
            })
        }
    }
}

/// How the payload of syscall `nr` is laid out in user memory; None for syscalls whose fd is
/// not in the first argument (io_uring, recvmmsg, …), which are not tracked.
#[inline(always)]
pub fn buffer_kind(nr: u64) -> Option<u8> {
    match nr {
        arch::READ | arch::WRITE | arch::RECVFROM | arch::SENDTO => Some(BUF_PLAIN),
        arch::READV | arch::WRITEV => Some(BUF_IOVEC),
        arch::RECVMSG | arch::SENDMSG => Some(BUF_MSGHDR),
        arch::SENDFILE => Some(BUF_NONE),
        _ => None,
    }
}
