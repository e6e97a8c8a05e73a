//! Read-only globals the loader fills in at load time from tracefs format files and kernel
//! BTF (see `loader/src/kernel_layout.rs`). The defaults are the 6.x x86_64 values and only
//! matter if the loader could not compute a value, which it refuses to do silently.

macro_rules! offset_global {
    ($name:ident, $default:expr) => {
        #[unsafe(no_mangle)]
        static $name: u32 = $default;
    };
}

offset_global!(FORK_CHILD_PID_OFF, 20);
offset_global!(SKC_DADDR_OFF, 0);
offset_global!(SKC_RCV_SADDR_OFF, 4);
offset_global!(SKC_DPORT_OFF, 12);
offset_global!(SKC_NUM_OFF, 14);
offset_global!(SKC_FAMILY_OFF, 16);
offset_global!(SK_PROTOCOL_OFF, 516);
offset_global!(SKC_V6_DADDR_OFF, 56);
offset_global!(SKC_V6_RCV_SADDR_OFF, 72);
offset_global!(NOTIFY_ALL_EXECS, 0);
offset_global!(TLS_ENABLED, 0);

/// Reads a global through a volatile load so the compiler keeps the load (the loader rewrites
/// the value in the object's .rodata before the verifier sees it).
macro_rules! read_global {
    ($name:ident) => {
        // SAFETY: the global is a plain u32 in .rodata, valid for the program's lifetime.
        unsafe { core::ptr::read_volatile(&$name) as usize }
    };
}

#[inline(always)]
pub fn fork_child_pid() -> usize {
    read_global!(FORK_CHILD_PID_OFF)
}
#[inline(always)]
pub fn skc_daddr() -> u64 {
    read_global!(SKC_DADDR_OFF) as u64
}
#[inline(always)]
pub fn skc_rcv_saddr() -> u64 {
    read_global!(SKC_RCV_SADDR_OFF) as u64
}
#[inline(always)]
pub fn skc_dport() -> u64 {
    read_global!(SKC_DPORT_OFF) as u64
}
#[inline(always)]
pub fn skc_num() -> u64 {
    read_global!(SKC_NUM_OFF) as u64
}
#[inline(always)]
pub fn skc_family() -> u64 {
    read_global!(SKC_FAMILY_OFF) as u64
}
#[inline(always)]
pub fn sk_protocol() -> u64 {
    read_global!(SK_PROTOCOL_OFF) as u64
}
#[inline(always)]
pub fn skc_v6_daddr() -> u64 {
    read_global!(SKC_V6_DADDR_OFF) as u64
}
#[inline(always)]
pub fn skc_v6_rcv_saddr() -> u64 {
    read_global!(SKC_V6_RCV_SADDR_OFF) as u64
}

/// Non-zero when every `execve` on the machine must be reported (executable-path selection).
#[inline(always)]
pub fn notify_all_execs() -> bool {
    read_global!(NOTIFY_ALL_EXECS) != 0
}

/// True when the loader attaches the OpenSSL uprobes: only then do untracked sockets and
/// closes look for a TLS link.
#[inline(always)]
pub fn tls_enabled() -> bool {
    read_global!(TLS_ENABLED) != 0
}
