//! Network flow metrics: two raw tracepoints count every IP packet per (addresses, ports,
//! transport, direction, interface) in the per-CPU LRU hash `FLOWS`, which the loader reads
//! every `network.cache_active_timeout`. Attached only when `network.enable` is on.
//!
//! * `net:netif_receive_skb` (ingress): the packet as the stack receives it; `skb->data`
//!   points at the IP header (the driver pulled the link-layer header).
//! * `net:net_dev_start_xmit` (egress): the packet handed to the driver, after GSO
//!   segmentation in software; the IP header is at `skb->head + skb->network_header`.
//!
//! Only headers are read (IPv4 or IPv6 fixed header, then 14 bytes of TCP/UDP header), with
//! `bpf_probe_read_kernel`, at offsets the loader took from kernel BTF. A GSO/GRO aggregate of
//! `n = gso_segs` segments counts as `n` packets and `len + (n - 1) * (IP + L4 header)` bytes:
//! what the `n` packets on the wire carry at the IP layer. IPv6 extension headers are not
//! followed (the flow's transport is the first next-header value, ports 0).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use sonde_schema::flows::{DIRECTION_EGRESS, DIRECTION_INGRESS, FlowKey, FlowValue, SKB_WINDOW};

use core::mem::MaybeUninit;

use crate::{maps::FLOWS, offsets, zero};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IFF_LOOPBACK: u32 = 0x8;
const UDP_HEADER: u64 = 8;

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: RawTracePointContext) -> u32 {
    count_packet(ctx.arg(0), DIRECTION_INGRESS);
    0
}

#[raw_tracepoint(tracepoint = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: RawTracePointContext) -> u32 {
    count_packet(ctx.arg(0), DIRECTION_EGRESS);
    0
}

/// Fills `buf` from kernel memory in place (no copy through an `Option`, which would double
/// the stack the verifier allows, and no zeroing first, which is a byte-by-byte `memset` call
/// here: see `zero`); false when the address faults.
#[inline(always)]
fn read_into<const N: usize>(buf: &mut MaybeUninit<[u8; N]>, addr: u64) -> bool {
    // SAFETY: the helper writes exactly N bytes into `buf`, which is N bytes long: the copy,
    // or zeros when the kernel address faults.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            buf.as_mut_ptr().cast(),
            N as u32,
            addr as *const core::ffi::c_void,
        ) == 0
    }
}

/// Reads a `T` from kernel memory; None when the address faults.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies with fault handling; a bad address yields an error.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Bytes of packet headers read at once from the IP header: the IPv6 header (40) or an IPv4
/// header with up to 36 bytes of options, then 14 bytes of TCP/UDP header (an IPv4 packet
/// with more options is counted with ports 0).
const HEADERS: usize = 64;

/// A little-endian field of `N` bytes at `at` in `buf` (None when out of range: the verifier
/// knows the offsets, read-only globals, and drops the branch).
#[inline(always)]
fn field<const N: usize>(buf: &[u8; SKB_WINDOW], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    buf.get(at..at + N)?.try_into().ok()
}

/// Counts one packet (or GSO/GRO aggregate) of `skb`.
#[inline(always)]
fn count_packet(skb: u64, direction: u8) -> Option<()> {
    let o = offsets::skb();
    // One read of the sk_buff fields (len, protocol, network_header, end, head, data).
    let base = o.len;
    let mut w = MaybeUninit::<[u8; SKB_WINDOW]>::uninit();
    if !read_into(&mut w, skb + base) {
        return None;
    }
    // SAFETY: `read_into` wrote all of it.
    let w = unsafe { w.assume_init_ref() };
    let protocol = u16::from_be_bytes(field::<2>(w, o.protocol.wrapping_sub(base))?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return None;
    }
    let dev: u64 = read(skb + o.dev)?;
    if offsets::flows_skip_loopback() && read::<u32>(dev + o.flags)? & IFF_LOOPBACK != 0 {
        return None;
    }
    let len = u64::from(u32::from_ne_bytes(field(w, 0)?));
    let head = u64::from_ne_bytes(field(w, o.head.wrapping_sub(base))?);
    let data = u64::from_ne_bytes(field(w, o.data.wrapping_sub(base))?);
    let end = u64::from(u32::from_ne_bytes(field(w, o.end.wrapping_sub(base))?));
    let l3 = if direction == DIRECTION_INGRESS {
        data
    } else {
        head + u64::from(u16::from_ne_bytes(field(
            w,
            o.network_header.wrapping_sub(base),
        )?))
    };
    // The IP packet's length: what follows the IP header's start.
    let before = l3.checked_sub(data)?;
    let l3_len = len.checked_sub(before)?;

    let mut key_slot = MaybeUninit::<FlowKey>::uninit();
    // SAFETY: a flow key is integers and byte arrays: valid all zero.
    let key = unsafe { zero::zero(&mut key_slot) };
    key.dev = dev;
    key.ifindex = read(dev + o.ifindex)?;
    key.direction = direction;
    // IP and transport headers in one read (bytes past a short packet's end are never used:
    // ports are read only for TCP and UDP, which always carry their header).
    let mut h = MaybeUninit::<[u8; HEADERS]>::uninit();
    if !read_into(&mut h, l3) {
        return None;
    }
    // SAFETY: `read_into` wrote all of it.
    let h = unsafe { h.assume_init_ref() };
    let (ip_header, fragment) = if protocol == ETH_P_IP {
        if h[0] >> 4 != 4 {
            return None;
        }
        key.src[10] = 0xff;
        key.src[11] = 0xff;
        key.dst[10] = 0xff;
        key.dst[11] = 0xff;
        key.src[12..16].copy_from_slice(&h[12..16]);
        key.dst[12..16].copy_from_slice(&h[16..20]);
        key.transport = h[9];
        let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        (usize::from(h[0] & 0x0f) * 4, fragment_offset != 0)
    } else {
        if h[0] >> 4 != 6 {
            return None;
        }
        key.src.copy_from_slice(&h[8..24]);
        key.dst.copy_from_slice(&h[24..40]);
        key.transport = h[6];
        (40, false)
    };
    let mut l4_header = 0;
    if !fragment && (key.transport == IPPROTO_TCP || key.transport == IPPROTO_UDP) {
        // Ports, and the TCP data offset (byte 12).
        let t = ip_header & 0x3f;
        if t + 14 <= HEADERS {
            key.src_port = u16::from_be_bytes([h[t], h[t + 1]]);
            key.dst_port = u16::from_be_bytes([h[t + 2], h[t + 3]]);
            l4_header = if key.transport == IPPROTO_TCP {
                u64::from(h[t + 12] >> 4) * 4
            } else {
                UDP_HEADER
            };
        }
    }

    // skb_shared_info sits at head + end (64-bit kernels keep `end` as an offset).
    let segs = u64::from(read::<u16>(head + end + o.gso_segs).unwrap_or(0)).max(1);
    let bytes = l3_len + (segs - 1) * (ip_header as u64 + l4_header);

    match FLOWS.get_ptr_mut(&*key) {
        Some(v) => {
            // SAFETY: pointer from a successful lookup in a per-CPU map: this CPU's value, and
            // programs run with migration disabled, so no other writer touches it meanwhile.
            unsafe {
                (*v).bytes += bytes;
                (*v).packets += segs;
            }
        }
        None => {
            let mut value_slot = MaybeUninit::<FlowValue>::uninit();
            // SAFETY: a flow value is integers and a byte array: valid all zero.
            let value = unsafe { zero::zero(&mut value_slot) };
            value.bytes = bytes;
            value.packets = segs;
            // The helper leaves zeros on a fault.
            // SAFETY: the field's length into the field, fault-handled kernel read.
            unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    value.iface.as_mut_ptr().cast(),
                    value.iface.len() as u32,
                    (dev + o.name) as *const core::ffi::c_void,
                )
            };
            // BPF_ANY: a flow another CPU created meanwhile gets this CPU's slot written.
            let _ = FLOWS.insert(&*key, &*value, 0);
        }
    }
    Some(())
}
