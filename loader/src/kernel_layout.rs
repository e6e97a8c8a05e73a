//! What the loader learns about the running kernel before loading: the tracefs mount,
//! tracepoint record offsets (from tracefs `format` files) and `struct sock_common` field
//! offsets (from `/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE relocations, so these are
//! handed to the kernel programs as read-only globals instead of being hard-coded.

use std::{fs, path::Path};

use btf_rs::{Backend, Btf, Type};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors from inspecting the kernel.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read tracepoint format {path}: {source} (is tracefs mounted at {TRACEFS}?)")]
    Format {
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    MissingField { tracepoint: String, field: String },
    #[error("kernel BTF ({KERNEL_BTF}) unreadable: {0}")]
    Btf(String),
    #[error("kernel BTF has no member {field} in struct {ty}")]
    MissingMember { ty: String, field: String },
    #[error(
        "mounting tracefs at {TRACEFS} failed: {0} (mount it before starting the loader, or grant CAP_SYS_ADMIN)"
    )]
    MountTracefs(nix::Error),
}

fn is_mounted(mounts: &str, target: &str, fstype: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _dev = f.next();
        f.next() == Some(target) && f.next() == Some(fstype)
    })
}

/// Mounts tracefs when it is missing (a fresh machine lacks it): the tracepoint format files
/// and ids are read from it. That mount is the loader's only use of `CAP_SYS_ADMIN`, and only
/// where tracefs is not already mounted. Nothing is pinned, so bpffs is not needed. Returns
/// whether it mounted tracefs, for the log.
pub fn ensure_tracefs() -> Result<bool, LayoutError> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if is_mounted(&mounts, TRACEFS, "tracefs") {
        return Ok(false);
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LayoutError::MountTracefs)?;
    Ok(true)
}

/// Byte offset of `field` in the record of tracepoint `category/name`.
pub fn tracepoint_field_offset(
    category: &str,
    name: &str,
    field: &str,
) -> Result<u32, LayoutError> {
    let path = format!("{TRACEFS}/events/{category}/{name}/format");
    let text = fs::read_to_string(&path).map_err(|source| LayoutError::Format {
        path: path.clone(),
        source,
    })?;
    parse_field_offset(&text, field).ok_or_else(|| LayoutError::MissingField {
        tracepoint: format!("{category}:{name}"),
        field: field.to_string(),
    })
}

/// Finds `offset:N` on the line declaring `field` in a tracefs format file.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let Some((decl, rest)) = decl.split_once(';') else {
            continue;
        };
        // The declared name is the last identifier, minus any array suffix.
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if name != field {
            continue;
        }
        let offset = rest.trim().strip_prefix("offset:")?.split(';').next()?;
        return offset.trim().parse().ok();
    }
    None
}

/// Byte offsets of the `struct sock_common` fields the kernel programs read.
#[derive(Debug, Clone, Copy)]
pub struct SockOffsets {
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `struct sock::sk_protocol` (a plain u16 since Linux 5.6).
    pub sk_protocol: u32,
}

impl SockOffsets {
    /// True when the fields read from every new connection (`daddr`, `rcv_saddr`, `dport`,
    /// `num`, `family`) lie within the first `head_bytes` of `struct sock_common`, so the
    /// kernel programs copy them in one read.
    pub fn head_covers(&self, head_bytes: u32) -> bool {
        [
            (self.daddr, 4),
            (self.rcv_saddr, 4),
            (self.dport, 2),
            (self.num, 2),
            (self.family, 2),
        ]
        .iter()
        .all(|&(offset, size)| offset + size <= head_bytes)
    }
}

/// Where the running kernel describes its types.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Opens the running kernel's BTF for the few dozen lookups below: mapped and read where it is
/// asked (btf-rs's `Backend::Mmap`), not parsed whole. Parsing the 5.5 MiB into btf-rs's types
/// was the loader's start-up peak: 41 MiB resident and 226 ms, against 3 MiB and 5 ms mapped
/// (measured on Linux 6.18, BENCHMARKS.md "Loader memory"). A kernel that refuses to map the
/// file (the mapping is newer than BTF in sysfs) gets it parsed as before.
pub fn kernel_btf() -> Result<Btf, LayoutError> {
    match Btf::from_file_with_backend(KERNEL_BTF, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(mapped) => {
            tracing::info!(
                error = %mapped,
                path = KERNEL_BTF,
                "the kernel BTF could not be mapped; reading it whole (~40 MiB during start-up)"
            );
            parsed_kernel_btf().map_err(|parsed| {
                LayoutError::Btf(format!("{parsed} (mapping it failed too: {mapped})"))
            })
        }
    }
}

/// The running kernel's BTF parsed whole (the fallback of [`kernel_btf`]).
fn parsed_kernel_btf() -> Result<Btf, LayoutError> {
    Btf::from_file_with_backend(KERNEL_BTF, Backend::Cache)
        .map_err(|e| LayoutError::Btf(e.to_string()))
}

/// Reads the sock_common layout from kernel BTF.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, LayoutError> {
    let ty = "sock_common";
    let s = find_struct(btf, ty)?;
    let get = |field: &str| byte_offset(btf, &s, ty, field);
    let sock = find_struct(btf, "sock")?;
    Ok(SockOffsets {
        daddr: get("skc_daddr")?,
        rcv_saddr: get("skc_rcv_saddr")?,
        dport: get("skc_dport")?,
        num: get("skc_num")?,
        family: get("skc_family")?,
        v6_daddr: get("skc_v6_daddr")?,
        v6_rcv_saddr: get("skc_v6_rcv_saddr")?,
        sk_protocol: byte_offset(btf, &sock, "sock", "sk_protocol")?,
    })
}

/// Byte offsets of `struct task_struct::pid` and `::tgid`: the socket programs read the current
/// task's ids through its BTF-typed pointer instead of calling `bpf_get_current_pid_tgid`.
#[derive(Debug, Clone, Copy)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
}

/// Reads the task_struct ids' layout from kernel BTF.
pub fn task_offsets(btf: &Btf) -> Result<TaskOffsets, LayoutError> {
    let ty = "task_struct";
    let s = find_struct(btf, ty)?;
    Ok(TaskOffsets {
        pid: byte_offset(btf, &s, ty, "pid")?,
        tgid: byte_offset(btf, &s, ty, "tgid")?,
    })
}

/// Byte offsets of the `struct sk_buff`, `struct skb_shared_info` and `struct net_device`
/// fields the flow programs read.
#[derive(Debug, Clone, Copy)]
pub struct SkbOffsets {
    pub len: u32,
    pub dev: u32,
    pub head: u32,
    pub data: u32,
    /// `sk_buff_data_t end`: an offset from `head` on 64-bit kernels.
    pub end: u32,
    pub network_header: u32,
    pub protocol: u32,
    pub gso_segs: u32,
    pub ifindex: u32,
    pub name: u32,
    pub flags: u32,
}

/// Reads the packet layouts the flow programs need from kernel BTF.
pub fn skb_offsets(btf: &Btf) -> Result<SkbOffsets, LayoutError> {
    let skb = find_struct(btf, "sk_buff")?;
    let shinfo = find_struct(btf, "skb_shared_info")?;
    let dev = find_struct(btf, "net_device")?;
    let in_skb = |field: &str| byte_offset(btf, &skb, "sk_buff", field);
    let in_dev = |field: &str| byte_offset(btf, &dev, "net_device", field);
    let o = SkbOffsets {
        len: in_skb("len")?,
        dev: in_skb("dev")?,
        head: in_skb("head")?,
        data: in_skb("data")?,
        end: in_skb("end")?,
        network_header: in_skb("network_header")?,
        protocol: in_skb("protocol")?,
        gso_segs: byte_offset(btf, &shinfo, "skb_shared_info", "gso_segs")?,
        ifindex: in_dev("ifindex")?,
        name: in_dev("name")?,
        flags: in_dev("flags")?,
    };
    // The programs read `len` … `data` in one window (`SKB_WINDOW` bytes).
    let window = sonde_schema::flows::SKB_WINDOW as u32;
    for (field, at, size) in [
        ("protocol", o.protocol, 2),
        ("network_header", o.network_header, 2),
        ("end", o.end, 4),
        ("head", o.head, 8),
        ("data", o.data, 8),
    ] {
        if at < o.len || at + size > o.len + window {
            return Err(LayoutError::Btf(format!(
                "sk_buff.{field} at {at} is outside the {window}-byte window from sk_buff.len at {}",
                o.len
            )));
        }
    }
    Ok(o)
}

fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, LayoutError> {
    btf.resolve_types_by_name(name)
        .map_err(|e| LayoutError::Btf(e.to_string()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| LayoutError::Btf(format!("no struct {name}")))
}

/// Byte offset of a byte-aligned member (bitfields are refused).
fn byte_offset(btf: &Btf, s: &btf_rs::Struct, ty: &str, field: &str) -> Result<u32, LayoutError> {
    match member_offset_bits(btf, s, field) {
        Some(bits) if bits % 8 == 0 => Ok(bits / 8),
        _ => Err(LayoutError::MissingMember {
            ty: ty.into(),
            field: field.into(),
        }),
    }
}

/// Number of parameters of a tracepoint's prototype (`btf_trace_<name>` in kernel BTF),
/// counting the leading `void *` context: raw and BTF tracepoint programs read the others by
/// index.
pub fn raw_tracepoint_arity(btf: &Btf, name: &str) -> Result<usize, LayoutError> {
    let typedef = format!("btf_trace_{name}");
    let t = btf
        .resolve_types_by_name(&typedef)
        .map_err(|e| LayoutError::Btf(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| LayoutError::Btf(format!("no {typedef}")))?;
    let mut current = t;
    for _ in 0..4 {
        current = match current {
            Type::FuncProto(p) => return Ok(p.parameters.len()),
            Type::Typedef(ref td) => btf
                .resolve_chained_type(td)
                .map_err(|e| LayoutError::Btf(e.to_string()))?,
            Type::Ptr(ref ptr) => btf
                .resolve_chained_type(ptr)
                .map_err(|e| LayoutError::Btf(e.to_string()))?,
            _ => break,
        };
    }
    Err(LayoutError::Btf(format!(
        "{typedef} is not a function prototype"
    )))
}

/// Bit offset of `field` in `s`, descending into anonymous struct and union members.
fn member_offset_bits(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some(m.bit_offset());
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m).ok()? {
                Type::Struct(inner) | Type::Union(inner) => inner,
                _ => continue,
            };
            if let Some(off) = member_offset_bits(btf, &inner, field) {
                return Some(m.bit_offset() + off);
            }
        }
    }
    None
}

/// True when `path` exists (used to report which optional hooks are available).
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    Path::new(&format!("{TRACEFS}/events/{category}/{name}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_RECV: &str = "name: sock_recv_length\nID: 2283\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\
        \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
        \tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n";

    #[test]
    fn finds_a_mount_by_target_and_type() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert!(is_mounted(mounts, TRACEFS, "tracefs"));
        assert!(!is_mounted(mounts, "/sys/kernel", "tracefs"));
        assert!(!is_mounted(mounts, "/sys", "tracefs"));
    }

    #[test]
    fn parses_format_offsets() {
        assert_eq!(parse_field_offset(SOCK_RECV, "sk"), Some(8));
        assert_eq!(parse_field_offset(SOCK_RECV, "family"), Some(16));
        assert_eq!(parse_field_offset(SOCK_RECV, "ret"), Some(20));
        assert_eq!(parse_field_offset(SOCK_RECV, "child_comm"), Some(16));
        assert_eq!(parse_field_offset(SOCK_RECV, "protocol"), None);
    }

    #[test]
    fn reads_sock_common_from_this_kernel() {
        // Kernel BTF is part of the machine kind Sonde targets; the layout must be found.
        let o = sock_offsets(&kernel_btf().expect("kernel BTF")).expect("sock_common");
        assert_eq!(
            (o.daddr, o.rcv_saddr, o.dport, o.num, o.family),
            (0, 4, 12, 14, 16)
        );
        assert!(o.v6_daddr > 16 && o.v6_rcv_saddr == o.v6_daddr + 16);
        assert!(o.sk_protocol > o.v6_rcv_saddr);
    }

    #[test]
    fn the_socket_identity_fields_lie_in_the_copied_head() {
        let btf = kernel_btf().expect("kernel BTF");
        let so = sock_offsets(&btf).expect("sock_common layout");
        assert!(
            so.head_covers(sonde_schema::globals::SOCK_HEAD_BYTES),
            "{so:?}"
        );
        // A layout with the family further on is read field by field.
        let moved = SockOffsets { family: 40, ..so };
        assert!(!moved.head_covers(sonde_schema::globals::SOCK_HEAD_BYTES));
    }

    #[test]
    fn reads_task_ids_from_this_kernel() {
        let btf = kernel_btf().expect("kernel BTF");
        let t = task_offsets(&btf).expect("task_struct layout");
        // pid_t pid; pid_t tgid; declared one after the other since Linux 2.6.
        assert_eq!(t.tgid, t.pid + 4, "{t:?}");
        assert!(t.pid > 0 && t.pid < 16384, "{t:?}");
    }

    #[test]
    fn reads_packet_layouts_from_this_kernel() {
        let o = skb_offsets(&kernel_btf().expect("kernel BTF")).expect("sk_buff");
        // Every field was found at a distinct place; `head` and `data` are adjacent pointers.
        assert_eq!(o.data, o.head + 8);
        assert!(o.len > o.dev && o.end > o.len && o.network_header > o.len);
        assert!(o.gso_segs > 0 && o.gso_segs < 16);
        assert_eq!(
            raw_tracepoint_arity(&kernel_btf().expect("btf"), "netif_receive_skb").ok(),
            Some(2)
        );
        assert_eq!(
            raw_tracepoint_arity(&kernel_btf().expect("btf"), "net_dev_start_xmit").ok(),
            Some(3)
        );
    }

    #[test]
    fn the_mapped_and_the_parsed_kernel_btf_give_the_same_layouts() {
        // Opened here, not through `kernel_btf`: that one falls back to the parse, and the
        // test would compare the parse with itself.
        let Ok(mapped) = Btf::from_file_with_backend(KERNEL_BTF, Backend::Mmap) else {
            eprintln!("skipped: this kernel does not map {KERNEL_BTF} (Linux 6.16 and later do)");
            return;
        };
        let parsed = parsed_kernel_btf().expect("kernel BTF parsed");
        for btf in [&mapped, &parsed] {
            assert!(btf.resolve_ids_by_name("sock_common").is_ok());
        }
        assert_eq!(
            format!("{:?}", sock_offsets(&mapped).expect("mapped")),
            format!("{:?}", sock_offsets(&parsed).expect("parsed"))
        );
        assert_eq!(
            format!("{:?}", task_offsets(&mapped).expect("mapped")),
            format!("{:?}", task_offsets(&parsed).expect("parsed"))
        );
        assert_eq!(
            format!("{:?}", skb_offsets(&mapped).expect("mapped")),
            format!("{:?}", skb_offsets(&parsed).expect("parsed"))
        );
        for tp in [
            "sock_recv_length",
            "inet_sock_set_state",
            "net_dev_start_xmit",
        ] {
            assert_eq!(
                raw_tracepoint_arity(&mapped, tp).ok(),
                raw_tracepoint_arity(&parsed, tp).ok(),
                "{tp}"
            );
        }
    }

    #[test]
    fn socket_tracepoint_prototypes() {
        // (void *__data, struct sock *sk, int ret, int flags)
        let btf = kernel_btf().expect("kernel BTF");
        assert_eq!(
            raw_tracepoint_arity(&btf, "sock_recv_length").expect("btf"),
            4
        );
        assert_eq!(
            raw_tracepoint_arity(&btf, "sock_send_length").expect("btf"),
            4
        );
    }
}
