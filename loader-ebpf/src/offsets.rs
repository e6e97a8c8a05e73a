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
// Linux 6.18 x86_64 defaults; the loader always sets them from BTF.
offset_global!(TASK_PID_OFF, 1264);
offset_global!(TASK_TGID_OFF, 1268);
// Off unless the loader checked the layout: each socket field is then read on its own.
offset_global!(SOCK_HEAD_COVERS, 0);
offset_global!(NOTIFY_ALL_EXECS, 0);
offset_global!(TLS_ENABLED, 0);
// 64 - log2(65,536): the map's default size; the loader sets it with the size.
offset_global!(CONN_SLOT_SHIFT, 48);

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

/// True when the loader found the socket identity fields inside the head `sock::SockHead::read`
/// copies (the TLS probes' path).
#[inline(always)]
pub fn sock_head_covers() -> bool {
    read_global!(SOCK_HEAD_COVERS) != 0
}

/// `struct task_struct::pid`.
#[inline(always)]
pub fn task_pid() -> usize {
    read_global!(TASK_PID_OFF)
}
/// `struct task_struct::tgid`.
#[inline(always)]
pub fn task_tgid() -> usize {
    read_global!(TASK_TGID_OFF)
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

/// `64 - log2(slots)` of `maps::CONN_SLOTS` (`sonde_schema::conn_slots`).
#[inline(always)]
pub fn conn_slot_shift() -> u64 {
    read_global!(CONN_SLOT_SHIFT) as u64 & 63
}

// Flow metrics (`flows.rs`): `struct sk_buff`, `struct skb_shared_info` and `struct net_device`
// offsets from kernel BTF. The defaults are Linux 6.18 x86_64's.
offset_global!(SKB_LEN_OFF, 112);
offset_global!(SKB_DEV_OFF, 16);
offset_global!(SKB_HEAD_OFF, 192);
offset_global!(SKB_DATA_OFF, 200);
offset_global!(SKB_END_OFF, 188);
offset_global!(SKB_NETWORK_HEADER_OFF, 180);
offset_global!(SKB_PROTOCOL_OFF, 176);
offset_global!(SHINFO_GSO_SEGS_OFF, 6);
offset_global!(DEV_IFINDEX_OFF, 224);
offset_global!(DEV_NAME_OFF, 0);
offset_global!(DEV_FLAGS_OFF, 208);
offset_global!(FLOWS_SKIP_LOOPBACK, 1);

/// The flow programs' offsets, read once per packet.
#[derive(Clone, Copy)]
pub struct SkbOffsets {
    pub len: u64,
    pub dev: u64,
    pub head: u64,
    pub data: u64,
    pub end: u64,
    pub network_header: u64,
    pub protocol: u64,
    pub gso_segs: u64,
    pub ifindex: u64,
    pub name: u64,
    pub flags: u64,
}

#[inline(always)]
pub fn skb() -> SkbOffsets {
    SkbOffsets {
        len: read_global!(SKB_LEN_OFF) as u64,
        dev: read_global!(SKB_DEV_OFF) as u64,
        head: read_global!(SKB_HEAD_OFF) as u64,
        data: read_global!(SKB_DATA_OFF) as u64,
        end: read_global!(SKB_END_OFF) as u64,
        network_header: read_global!(SKB_NETWORK_HEADER_OFF) as u64,
        protocol: read_global!(SKB_PROTOCOL_OFF) as u64,
        gso_segs: read_global!(SHINFO_GSO_SEGS_OFF) as u64,
        ifindex: read_global!(DEV_IFINDEX_OFF) as u64,
        name: read_global!(DEV_NAME_OFF) as u64,
        flags: read_global!(DEV_FLAGS_OFF) as u64,
    }
}

/// Non-zero: packets of loopback devices (`IFF_LOOPBACK`) are not counted (`lo` is excluded
/// by `network.exclude_interfaces`, the default).
#[inline(always)]
pub fn flows_skip_loopback() -> bool {
    read_global!(FLOWS_SKIP_LOOPBACK) != 0
}
