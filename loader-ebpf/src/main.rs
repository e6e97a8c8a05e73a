//! Sonde's kernel programs. Only tracepoints are used (this kernel has no kprobes and refuses
//! fentry): syscall tracepoints carry fds and user buffers, the `sock:sock_{recv,send}_length`
//! tracepoints fire inside socket I/O and tell which syscalls touched a TCP socket, and `sched`
//! tracepoints report process lifecycle to the loader.
//!
//! Cost on processes that are not selected: one hash lookup per hooked syscall.
//!
//! The crate builds for `bpfel-unknown-none` (through `loader/build.rs`); on the host it compiles
//! to an empty binary so workspace-wide `cargo build/clippy/test` keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod offsets;
#[cfg(target_arch = "bpf")]
mod pairing;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
