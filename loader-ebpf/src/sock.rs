//! A socket's identity fields (family, ports, IPv4 addresses): from the socket programs' BTF-typed
//! socket by plain loads (`SockHead::typed`), or, where the address is only a number (the TLS
//! probes keep it in a map), from one copy of the head of its `struct sock_common` instead of
//! one `bpf_probe_read_kernel` per field. These fields have
//! opened `struct sock_common` since Linux 2.6 (`skc_daddr`, `skc_rcv_saddr`, `skc_hash`,
//! `skc_dport`, `skc_num`, `skc_family`); the loader checks that this kernel's BTF puts them
//! inside the copied head (`SOCK_HEAD_COVERS`) and, if not, each field is read on its own as
//! before. A new connection's first bytes read five of them: a helper call is the largest part
//! of a program's cost on a kernel with return-thunk mitigations (BENCHMARKS.md "Kernel per
//! request").

use crate::{offsets, pairing::read_kernel};

/// Bytes copied from the start of `struct sock_common`.
pub const HEAD_BYTES: usize = sonde_schema::globals::SOCK_HEAD_BYTES as usize;

/// The first `HEAD_BYTES` of a socket (all zero when the copy faulted or was not made).
pub struct SockHead {
    bytes: [u8; HEAD_BYTES],
}

impl SockHead {
    /// Copies the head of `sk` (one helper call; none when the loader found the fields
    /// outside it).
    #[inline(always)]
    pub fn read(sk: u64) -> SockHead {
        let bytes = if offsets::sock_head_covers() {
            read_kernel::<[u8; HEAD_BYTES]>(sk).unwrap_or([0; HEAD_BYTES])
        } else {
            [0; HEAD_BYTES]
        };
        SockHead { bytes }
    }

    /// The head of `sk`, a BTF-typed socket (the socket tracepoints' argument), by one plain
    /// load per field: no helper call at all.
    #[inline(always)]
    pub fn typed(sk: u64) -> SockHead {
        let mut bytes = [0u8; HEAD_BYTES];
        if offsets::sock_head_covers() {
            put(
                &mut bytes,
                offsets::skc_daddr(),
                load::<[u8; 4]>(sk, offsets::skc_daddr()),
            );
            put(
                &mut bytes,
                offsets::skc_rcv_saddr(),
                load::<[u8; 4]>(sk, offsets::skc_rcv_saddr()),
            );
            put(
                &mut bytes,
                offsets::skc_dport(),
                load::<[u8; 2]>(sk, offsets::skc_dport()),
            );
            put(
                &mut bytes,
                offsets::skc_num(),
                load::<[u8; 2]>(sk, offsets::skc_num()),
            );
            put(
                &mut bytes,
                offsets::skc_family(),
                load::<[u8; 2]>(sk, offsets::skc_family()),
            );
        }
        SockHead { bytes }
    }

    /// `N` bytes at `offset` of the socket: from the copied head, or read on their own when the
    /// loader found the identity fields outside it.
    #[inline(always)]
    fn field<const N: usize>(&self, sk: u64, offset: u64) -> [u8; N] {
        if !offsets::sock_head_covers() {
            return read_kernel::<[u8; N]>(sk + offset).unwrap_or([0; N]);
        }
        let mut out = [0u8; N];
        let start = offset as usize;
        if start + N <= HEAD_BYTES {
            out.copy_from_slice(&self.bytes[start..start + N]);
        }
        out
    }

    #[inline(always)]
    pub fn family(&self, sk: u64) -> u16 {
        u16::from_ne_bytes(self.field(sk, offsets::skc_family()))
    }

    /// The local port, host order.
    #[inline(always)]
    pub fn local_port(&self, sk: u64) -> u16 {
        u16::from_ne_bytes(self.field(sk, offsets::skc_num()))
    }

    /// The peer's port, host order.
    #[inline(always)]
    pub fn peer_port(&self, sk: u64) -> u16 {
        u16::from_be_bytes(self.field(sk, offsets::skc_dport()))
    }

    /// The peer's IPv4 address, network order.
    #[inline(always)]
    pub fn peer_addr4(&self, sk: u64) -> [u8; 4] {
        self.field(sk, offsets::skc_daddr())
    }

    /// The local IPv4 address, network order.
    #[inline(always)]
    pub fn local_addr4(&self, sk: u64) -> [u8; 4] {
        self.field(sk, offsets::skc_rcv_saddr())
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

/// Writes `value` at `offset` of the head copy (nothing when it would not fit).
#[inline(always)]
fn put<const N: usize>(bytes: &mut [u8; HEAD_BYTES], offset: u64, value: [u8; N]) {
    let start = offset as usize;
    if start + N <= HEAD_BYTES {
        bytes[start..start + N].copy_from_slice(&value);
    }
}
