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
use sonde_schema::flows::{DIRECTION_EGRESS, DIRECTION_INGRESS, FlowKey, FlowValue};

use crate::{maps::FLOWS, offsets};

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

/// Reads a `T` from kernel memory; None when the address faults.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies with fault handling; a bad address yields an error.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Counts one packet (or GSO/GRO aggregate) of `skb`.
#[inline(always)]
fn count_packet(skb: u64, direction: u8) -> Option<()> {
    let o = offsets::skb();
    let protocol = u16::from_be(read::<u16>(skb + o.protocol)?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return None;
    }
    let dev: u64 = read(skb + o.dev)?;
    if offsets::flows_skip_loopback() && read::<u32>(dev + o.flags)? & IFF_LOOPBACK != 0 {
        return None;
    }
    let len = u64::from(read::<u32>(skb + o.len)?);
    let head: u64 = read(skb + o.head)?;
    let data: u64 = read(skb + o.data)?;
    let l3 = if direction == DIRECTION_INGRESS {
        data
    } else {
        head + u64::from(read::<u16>(skb + o.network_header)?)
    };
    // The IP packet's length: what follows the IP header's start.
    let before = l3.checked_sub(data)?;
    let l3_len = len.checked_sub(before)?;

    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        dev,
        ifindex: read(dev + o.ifindex)?,
        src_port: 0,
        dst_port: 0,
        transport: 0,
        direction,
        _pad: [0; 6],
    };
    let (ip_header, fragment) = if protocol == ETH_P_IP {
        let h: [u8; 20] = read(l3)?;
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
        (u64::from(h[0] & 0x0f) * 4, fragment_offset != 0)
    } else {
        let h: [u8; 40] = read(l3)?;
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
        if let Some(t) = read::<[u8; 14]>(l3 + ip_header) {
            key.src_port = u16::from_be_bytes([t[0], t[1]]);
            key.dst_port = u16::from_be_bytes([t[2], t[3]]);
            l4_header = if key.transport == IPPROTO_TCP {
                u64::from(t[12] >> 4) * 4
            } else {
                UDP_HEADER
            };
        }
    }

    // skb_shared_info sits at head + end (64-bit kernels keep `end` as an offset).
    let end = u64::from(read::<u32>(skb + o.end)?);
    let segs = u64::from(read::<u16>(head + end + o.gso_segs).unwrap_or(0)).max(1);
    let bytes = l3_len + (segs - 1) * (ip_header + l4_header);

    match FLOWS.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: pointer from a successful lookup in a per-CPU map: this CPU's value, and
            // programs run with migration disabled, so no other writer touches it meanwhile.
            unsafe {
                (*v).bytes += bytes;
                (*v).packets += segs;
            }
        }
        None => {
            let mut value = FlowValue {
                bytes,
                packets: segs,
                iface: [0; 16],
            };
            value.iface = read(dev + o.name).unwrap_or([0; 16]);
            // BPF_ANY: a flow another CPU created meanwhile gets this CPU's slot written.
            let _ = FLOWS.insert(&key, &value, 0);
        }
    }
    Some(())
}
