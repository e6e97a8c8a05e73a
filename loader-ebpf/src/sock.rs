//! A socket's identity fields (family, ports, IPv4 addresses): from the socket programs' BTF-typed
//! socket by plain loads (`SockHead::typed`), or, where the address is only a number (the TLS
//! probes keep it in a map), from one copy of the head of its `struct sock_common` instead of
//! one `bpf_probe_read_kernel` per field. These fields have opened `struct sock_common`
//! since Linux 2.6 (`skc_daddr`, `skc_rcv_saddr`, `skc_hash`,
//! `skc_dport`, `skc_num`, `skc_family`); the loader checks that this kernel's BTF puts them
//! inside the copied head (`SOCK_HEAD_COVERS`) and, if not, each field is read on its own as
//! before. A new connection's first bytes read five of them: a helper call is the largest part
//! of a program's cost on a kernel with return-thunk mitigations (BENCHMARKS.md "Kernel per
//! request").

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

use crate::{offsets, pairing::read_kernel};

/// Bytes copied from the start of `struct sock_common`.
pub const HEAD_BYTES: usize = sonde_schema::globals::SOCK_HEAD_BYTES as usize;

/// A socket's identity fields. Scalars rather than a copy of the head's bytes: a zeroed or
/// moved byte array is a call to a byte-by-byte `memset`/`memmove` on this target.
#[derive(Clone, Copy)]
pub struct SockHead {
    family: u16,
    /// Host order.
    local_port: u16,
    /// Host order.
    peer_port: u16,
    /// Network order, as the bytes lie in memory.
    peer_addr4: u32,
    local_addr4: u32,
}

impl SockHead {
    /// The fields of `sk`, a BTF-typed socket (the socket tracepoints' argument): one plain
    /// load each, no helper call.
    #[inline(always)]
    pub fn typed(sk: u64) -> SockHead {
        SockHead {
            family: load(sk, offsets::skc_family()),
            local_port: load(sk, offsets::skc_num()),
            peer_port: u16::from_be(load(sk, offsets::skc_dport())),
            peer_addr4: load(sk, offsets::skc_daddr()),
            local_addr4: load(sk, offsets::skc_rcv_saddr()),
        }
    }

    /// The fields of `sk`, a kernel address held as a number (the TLS probes keep it in a
    /// map): one copy of the head (one helper call), or a read per field when the loader
    /// found them outside it. Zero for what could not be read.
    #[inline(always)]
    pub fn read(sk: u64) -> SockHead {
        if !offsets::sock_head_covers() {
            return SockHead {
                family: read_kernel(sk + offsets::skc_family()).unwrap_or(0),
                local_port: read_kernel(sk + offsets::skc_num()).unwrap_or(0),
                peer_port: u16::from_be(read_kernel(sk + offsets::skc_dport()).unwrap_or(0)),
                peer_addr4: read_kernel(sk + offsets::skc_daddr()).unwrap_or(0),
                local_addr4: read_kernel(sk + offsets::skc_rcv_saddr()).unwrap_or(0),
            };
        }
        let mut head = core::mem::MaybeUninit::<[u64; HEAD_BYTES / 8]>::uninit();
        // SAFETY: the helper writes all HEAD_BYTES of the destination, the head's copy or
        // zeros when the read faults, so the value is initialised after it.
        let head = unsafe {
            bpf_probe_read_kernel(head.as_mut_ptr().cast(), HEAD_BYTES as u32, sk as *const _);
            head.assume_init()
        };
        let at = |offset: u64| -> *const u8 {
            // The loader set SOCK_HEAD_COVERS only if every field lies inside the head; the
            // clamp restates it (a no-op then).
            // SAFETY: at most HEAD_BYTES - 4, so a read of up to 4 bytes stays in `head`.
            unsafe {
                head.as_ptr()
                    .cast::<u8>()
                    .add(offset.min((HEAD_BYTES - 4) as u64) as usize)
            }
        };
        // SAFETY: each read lies inside `head` (see `at`); unaligned reads of plain integers.
        unsafe {
            SockHead {
                family: at(offsets::skc_family()).cast::<u16>().read_unaligned(),
                local_port: at(offsets::skc_num()).cast::<u16>().read_unaligned(),
                peer_port: u16::from_be(at(offsets::skc_dport()).cast::<u16>().read_unaligned()),
                peer_addr4: at(offsets::skc_daddr()).cast::<u32>().read_unaligned(),
                local_addr4: at(offsets::skc_rcv_saddr()).cast::<u32>().read_unaligned(),
            }
        }
    }

    #[inline(always)]
    pub fn family(&self) -> u16 {
        self.family
    }

    /// The local port, host order.
    #[inline(always)]
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// The peer's port, host order.
    #[inline(always)]
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The peer's IPv4 address, network order.
    #[inline(always)]
    pub fn peer_addr4(&self) -> [u8; 4] {
        self.peer_addr4.to_ne_bytes()
    }

    /// The local IPv4 address, network order.
    #[inline(always)]
    pub fn local_addr4(&self) -> [u8; 4] {
        self.local_addr4.to_ne_bytes()
    }
}

/// `T` at `offset` of `ptr`, a BTF-typed kernel pointer (a tracepoint argument the verifier
/// types from kernel BTF): a plain load, which the verifier checks against the struct's layout
/// (the offset is a read-only global, so a constant to it) and makes fault-handled.
#[inline(always)]
pub fn load<T: Copy>(ptr: u64, offset: u64) -> T {
    // SAFETY: see above; a load the verifier rejects never runs.
    unsafe { core::ptr::read_volatile((ptr as *const u8).add(offset as usize).cast::<T>()) }
}

/// Copies a 16-byte address field as two 8-byte words. `dst` and `src` must be 8-aligned
/// (fields at a multiple of 8 in an 8-aligned struct; `sonde_schema` asserts it for the ring
/// records): a byte-array assignment is a call to a byte-by-byte `memmove` on this target.
#[inline(always)]
pub fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    // SAFETY: both are valid 16-byte fields, 8-aligned (see above), so each is two aligned
    // u64s.
    unsafe {
        let s = src.as_ptr().cast::<u64>();
        let d = dst.as_mut_ptr().cast::<u64>();
        d.write(s.read());
        d.add(1).write(s.add(1).read());
    }
}

/// Sets a 16-byte address field (8-aligned, as for `copy_addr`) to an IPv4 address in its
/// first four bytes and zeros after.
#[inline(always)]
pub fn set_addr4(dst: &mut [u8; 16], addr: [u8; 4]) {
    // SAFETY: as in `copy_addr`; little or big endian, the first four bytes in memory of the
    // first word are `addr` because it is written from native-endian bytes.
    unsafe {
        let d = dst.as_mut_ptr().cast::<u64>();
        let mut word = [0u8; 8];
        word[..4].copy_from_slice(&addr);
        d.write(u64::from_ne_bytes(word));
        d.add(1).write(0);
    }
}
