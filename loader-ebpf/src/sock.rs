//! A socket's identity fields (family, ports, IPv4 addresses), and the word-wise copies of the
//! ring records' address fields. The socket programs read the fields from their BTF-typed
//! socket with plain loads (`SockHead::typed`, no helper call). The TLS probes hold the socket
//! as a number from a map, so they copy the head of its `struct sock_common` in one
//! `bpf_probe_read_kernel` (`SockHead::read`) instead of one call per field: these fields have
//! opened the struct since Linux 2.6 (`skc_daddr`, `skc_rcv_saddr`, `skc_hash`, `skc_dport`,
//! `skc_num`, `skc_family`), the loader checks that this kernel's BTF puts them inside the
//! copied head (`SOCK_HEAD_COVERS`), and if not each is read on its own. A helper call is the
//! largest part of a program's cost on a kernel with return-thunk mitigations (BENCHMARKS.md
//! "Kernel per request").

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

use crate::{btf::load, offsets, pairing::read_kernel};

/// Bytes copied from the start of `struct sock_common`.
pub const HEAD_BYTES: usize = sonde_schema::globals::SOCK_HEAD_BYTES as usize;
// The copy's destination is `HEAD_BYTES / 8` words.
const _: () = assert!(HEAD_BYTES % 8 == 0);

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
    /// The fields of `sk`: one plain load each, no helper call.
    ///
    /// # Safety
    /// `sk` is the program's BTF-typed socket argument (see `btf::load`).
    #[inline(always)]
    pub unsafe fn typed(sk: u64) -> SockHead {
        // SAFETY: the caller's `sk` is BTF-typed; the offsets name `struct sock_common` fields.
        unsafe {
            SockHead {
                family: load(sk, offsets::skc_family()),
                local_port: load(sk, offsets::skc_num()),
                peer_port: u16::from_be(load(sk, offsets::skc_dport())),
                peer_addr4: load(sk, offsets::skc_daddr()),
                local_addr4: load(sk, offsets::skc_rcv_saddr()),
            }
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
        SockHead {
            family: from_head(&head, offsets::skc_family()),
            local_port: from_head(&head, offsets::skc_num()),
            peer_port: u16::from_be(from_head(&head, offsets::skc_dport())),
            peer_addr4: from_head(&head, offsets::skc_daddr()),
            local_addr4: from_head(&head, offsets::skc_rcv_saddr()),
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

/// `T` at `offset` of the copied head; zero when it would reach past the copy (the loader sets
/// `SOCK_HEAD_COVERS` only when no field does).
#[inline(always)]
fn from_head<T: Copy + Default>(head: &[u64; HEAD_BYTES / 8], offset: u64) -> T {
    if offset + core::mem::size_of::<T>() as u64 > HEAD_BYTES as u64 {
        return T::default();
    }
    // SAFETY: `offset + size_of::<T>()` is within the `HEAD_BYTES` of `head` (checked above);
    // an unaligned read of a plain integer.
    unsafe {
        head.as_ptr()
            .cast::<u8>()
            .add(offset as usize)
            .cast::<T>()
            .read_unaligned()
    }
}

/// Copies a 16-byte address field as two 8-byte words: a byte-array assignment is a call to a
/// byte-by-byte `memmove` on this target.
///
/// # Safety
/// `dst` and `src` are 8-aligned (the ring records' address fields: `sonde_schema` asserts
/// they lie at multiples of 8 in 8-aligned structs, and map values are 8-aligned).
#[inline(always)]
pub unsafe fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    // SAFETY: both are valid 16-byte fields, 8-aligned (the caller's contract), so each is two
    // aligned u64s.
    unsafe {
        let s = src.as_ptr().cast::<u64>();
        let d = dst.as_mut_ptr().cast::<u64>();
        d.write(s.read());
        d.add(1).write(s.add(1).read());
    }
}

/// Sets a 16-byte address field to an IPv4 address in its first four bytes and zeros after.
///
/// # Safety
/// `dst` is 8-aligned, as for `copy_addr`.
#[inline(always)]
pub unsafe fn set_addr4(dst: &mut [u8; 16], addr: [u8; 4]) {
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
