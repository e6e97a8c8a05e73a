//! Plain loads through BTF-typed kernel pointers (a `tp_btf` program's pointer arguments, the
//! task `bpf_get_current_task_btf` returns, the registers `bpf_task_pt_regs` returns): the
//! verifier checks each against the struct's BTF layout and makes it a fault-handled kernel
//! load, so no `bpf_probe_read_kernel` call is needed (a helper call is most of a program's
//! cost on a kernel with return-thunk mitigations).

/// `T` at `offset` of `ptr` (the offset a constant to the verifier: a literal, or a read-only
/// global the loader set from kernel BTF).
///
/// # Safety
/// `ptr` is a BTF-typed kernel pointer the verifier knows as such (a `tp_btf` program's
/// pointer argument, or `bpf_get_current_task_btf`'s task), and `offset` names a field of at
/// least `size_of::<T>()` bytes of its struct. Anything else fails verification at load.
#[inline(always)]
pub unsafe fn load<T: Copy>(ptr: u64, offset: u64) -> T {
    // SAFETY: the caller's contract above; the kernel handles a fault on the load.
    unsafe { core::ptr::read_volatile((ptr as *const u8).add(offset as usize).cast::<T>()) }
}
