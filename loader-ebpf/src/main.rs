//! Sonde's kernel programs. Only tracepoints are used (this kernel has no kprobes and refuses
//! fentry). The `sock:sock_{recv,send}_length` tracepoints (attached as BTF tracepoints, so the
//! socket argument is typed and its fields are plain loads) fire inside every socket read and
//! write with the socket, the byte count and the flags; the syscall's fd and buffer come from
//! the task's saved registers (`syscall_abi`). `sock:inet_sock_set_state` ends connections and
//! reports listening sockets; `sched` tracepoints report process lifecycle to the loader. No
//! `syscalls:*` tracepoint is used (each one slows every system call of every task).
//!
//! Cost on processes that are not selected: one pid-filter byte test per socket read or write,
//! two array reads the verifier inlines per TCP close (`maps::CONN_SLOTS`; a hash lookup only
//! when a tracked socket shares the slot, and up to two more once the kernel has seen TLS), one
//! byte store per
//! fork; `execve` and `listen()` of processes that are not selected reach the loader only when
//! the selection needs them (executable-path selection, a configured port).
//!
//! The crate builds for `bpfel-unknown-none` (through `loader/build.rs`); on the host it compiles
//! to an empty binary so workspace-wide `cargo build/clippy/test` keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_xadd`: this target's `AtomicU64` has loads and stores only (no compare-and-swap), but
// the instruction set has an atomic add (`lock +=`), which this intrinsic lowers to
// (`maps::conn_slot_add`). The kernel side is built with nightly already (build-std).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod btf;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod inject;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod offsets;
#[cfg(target_arch = "bpf")]
mod pairing;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod stream;
#[cfg(target_arch = "bpf")]
mod syscall_abi;
#[cfg(target_arch = "bpf")]
mod tls;
#[cfg(target_arch = "bpf")]
mod zero;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
