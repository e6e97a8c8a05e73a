//! The control protocol's messages as Rust types, with their one encoder and decoder: what the
//! loader sends (`LoaderMessage`), what the processor sends (`ProcessorMessage`), the limits
//! every field is held to, and errors that name the message and field that failed.
//!
//! Both binaries build and check messages here, so the two ends cannot drift apart; their
//! `control.rs` keep only the socket side (listening and peer checks, connecting, the
//! handshake's order and timeouts). Framing (one capnp message per datagram, fds beside it)
//! is `channel`'s.
//!
//! Limits: a string over its limit is cut at a character boundary, by the sender and again by
//! the receiver, so a peer cannot push more than the limit into the other side's logs or
//! resources; a command line's arguments past `MAX_CMDLINE_ARGS` are dropped the same way;
//! a list of pids or counters over its limit is refused, since it means a broken peer. Text
//! is decoded leniently (invalid UTF-8 replaced): every string is free text for logs and
//! resource attributes, and a bad byte in one is no reason to drop the connection.

use std::os::fd::BorrowedFd;
use std::prelude::rust_2024::*;

use crate::{
    channel::{self, ChannelError, Datagram},
    control_capnp::{loader_message, process_record, processor_message},
};

/// The protocol version both sides must speak (`control.capnp`); a hello or welcome with
/// another one is refused before anything else in it is read.
pub const PROTOCOL_VERSION: u32 = crate::control_capnp::PROTOCOL_VERSION;

/// Most pids in one narrowing request.
pub const MAX_NARROW_PIDS: usize = 1024;
/// Bytes of a process's executable path (Linux `PATH_MAX`).
pub const MAX_EXE_PATH_BYTES: usize = 4096;
/// Bytes of a service name.
pub const MAX_SERVICE_NAME_BYTES: usize = 256;
/// Bytes of a container id (runtimes use 64 hex characters).
pub const MAX_CONTAINER_ID_BYTES: usize = 128;
/// Bytes of the reason a process was selected ("exe <glob>" carries an operator's pattern).
pub const MAX_REASON_BYTES: usize = 1024;
/// Command-line arguments carried per process; later ones are dropped, so a process with a
/// huge command line cannot push a message past `channel::MAX_MESSAGE_BYTES`.
pub const MAX_CMDLINE_ARGS: usize = 64;
/// Bytes of each command-line argument.
pub const MAX_CMDLINE_ARG_BYTES: usize = 256;
/// Bytes of the hello's agent text.
pub const MAX_AGENT_BYTES: usize = 256;
/// Bytes of a goodbye's or a refusal's reason.
pub const MAX_REASON_NOTE_BYTES: usize = 256;
/// Selectors' Kubernetes criteria carried with one candidate.
pub const MAX_CANDIDATE_SELECTORS: usize = 16;
/// Entries (fields, labels or annotations) of one selector's Kubernetes criteria.
pub const MAX_CRITERIA_ENTRIES: usize = 32;
/// Bytes of a criteria entry's name (a field or a label/annotation key).
pub const MAX_CRITERIA_NAME_BYTES: usize = 317;
/// Bytes of a criteria entry's pattern.
pub const MAX_CRITERIA_PATTERN_BYTES: usize = 1024;
/// Counters in one kernel-stats message.
pub const MAX_COUNTERS: usize = 64;
/// Bytes of a counter's name.
pub const MAX_COUNTER_NAME_BYTES: usize = 64;

/// Flows in one flow-counts message (a flow encodes to ~100 bytes).
pub const MAX_FLOWS_PER_MESSAGE: usize = 256;
/// Processes in one process-usage message.
pub const MAX_USAGE_PER_MESSAGE: usize = 256;
/// Bytes of an interface name (`IFNAMSIZ` - 1).
pub const MAX_IFACE_BYTES: usize = 15;

// The loader reports every kernel counter in one message.
const _: () = assert!(crate::counters::COUNT as usize <= MAX_COUNTERS);

/// A process the loader captures: built by the loader's selection, carried by
/// `LoaderMessage::ProcessAdded`, kept by the processor for its spans and resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub exe_path: String,
    pub cmdline: Vec<String>,
    /// Derived by the loader (the executable's name); the processor's configuration may
    /// override it.
    pub service_name: String,
    /// Why the loader selected the process: "port 8080", "exe /usr/sbin/*", "pid", ….
    pub reason: String,
    /// The container runtime's id (64 hex characters) from the process's cgroup path, for
    /// Kubernetes metadata; empty when the process is in no container.
    pub container_id: String,
    /// The process's own `OTEL_SERVICE_NAME` / `OTEL_SERVICE_NAMESPACE` (or `service.name` /
    /// `service.namespace` in its `OTEL_RESOURCE_ATTRIBUTES`): only these values leave the
    /// loader, never the environment. Empty when unset.
    pub env_service_name: String,
    pub env_service_namespace: String,
    /// The `name` / `namespace` of the discovery selector that chose the process; empty when
    /// none (or the selector has none).
    pub selector_service_name: String,
    pub selector_service_namespace: String,
}

/// The `k8s_*` fields of one discovery selector, as the loader's configuration has them: the
/// processor evaluates them against a candidate's pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sCriteria {
    /// The selector's key (`discovery.instrument[2]`), for logs.
    pub key: String,
    /// Patterns are unanchored regular expressions (`discovery.services`), else globs.
    pub regex: bool,
    /// (`k8s_namespace`, pattern), (`k8s_deployment_name`, pattern), ….
    pub fields: Vec<(String, String)>,
    pub pod_labels: Vec<(String, String)>,
    pub pod_annotations: Vec<(String, String)>,
}

/// A process the loader would capture if the processor selected it (see
/// `LoaderMessage::CandidateAdded`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CandidateRecord {
    pub process: ProcessRecord,
    /// Any one holding selects the process (at most `MAX_CANDIDATE_SELECTORS`).
    pub selectors: Vec<K8sCriteria>,
}

/// The geometry of the HTTP event ring buffer, so the processor can map it without any
/// `bpf()` call. Its fd travels beside the message (`SCM_RIGHTS`, the datagram's only fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Data area size in bytes (the map's `max_entries`, a power of two).
    pub data_size: u32,
    pub page_size: u32,
}

/// What the processor says about itself when it connects. The loader logs it and keeps it in
/// its status file for `sonde-loader --audit`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// Free text: the processor's name and version.
    pub agent: String,
    /// The sandbox the processor applied before connecting; None from a processor that does
    /// not report one.
    pub sandbox: Option<SandboxState>,
    /// Which traces started by `traceparent` injection the processor samples: those whose
    /// trace id's last 8 bytes, shifted right by one, are below this (`1 << 63`: all; 0:
    /// none). None from a processor that does not say: the kernel marks them all sampled.
    #[serde(default)]
    pub inject_sampled_below: Option<u64>,
}

/// The processor's sandbox as it reports it (seccomp is also visible in `/proc`, Landlock is
/// not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxState {
    pub landlock: bool,
    pub seccomp_filters: u8,
}

/// Which way a flow's packets went through the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowDirection {
    /// Received on the interface (`net:netif_receive_skb`).
    Ingress,
    /// Sent by the interface (`net:net_dev_start_xmit`).
    Egress,
}

/// One flow's traffic on one interface in one direction since its previous report
/// (`LoaderMessage::FlowCounts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowCount {
    /// IPv6, or IPv4 as an IPv4-mapped IPv6 address.
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number (6 TCP, 17 UDP).
    pub transport: u8,
    pub direction: FlowDirection,
    pub ifindex: u32,
    /// The interface's name (at most `MAX_IFACE_BYTES`).
    pub iface: String,
    /// IP-layer bytes (IP headers included, link-layer headers not); a GSO/GRO aggregate
    /// counts as the segments it stands for.
    pub bytes: u64,
    pub packets: u64,
}

/// Resource usage of one captured process (`LoaderMessage::ProcessUsage`): counters are
/// cumulative (CPU and disk since the process started, network since it was captured),
/// memory is current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    pub parent_pid: u32,
    /// Real uid.
    pub uid: u32,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_rss: u64,
    pub memory_virtual: u64,
    /// `/proc/<pid>/io` `read_bytes` / `write_bytes`.
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Socket bytes counted in the kernel.
    pub net_receive_bytes: u64,
    pub net_transmit_bytes: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the reading.
    pub sampled_at_ns: u64,
}

/// Everything the loader sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoaderMessage {
    /// The answer to a hello; the ring buffer fd goes with it.
    Welcome(Welcome),
    ProcessAdded(ProcessRecord),
    ProcessRemoved(u32),
    /// Kernel counters by name, summed over CPUs.
    KernelStats(Vec<(String, u64)>),
    /// Sent before the loader closes a connection it will not serve, with the reason.
    Refused(String),
    /// A process in a pod's cgroup that matches the non-Kubernetes fields of selectors with
    /// `k8s_*` fields: not captured until the processor selects it.
    CandidateAdded(CandidateRecord),
    /// A candidate is gone.
    CandidateRemoved(u32),
    /// Flow counts since the previous report (at most `MAX_FLOWS_PER_MESSAGE`).
    FlowCounts(Vec<FlowCount>),
    /// Usage of captured processes (at most `MAX_USAGE_PER_MESSAGE`).
    ProcessUsage(Vec<ProcessUsage>),
}

/// Everything the processor sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessorMessage {
    /// The first message on a connection.
    Hello(Hello),
    /// Stop capturing these processes (at most `MAX_NARROW_PIDS`).
    Narrow(Vec<u32>),
    /// Start capturing these candidates (at most `MAX_NARROW_PIDS`). The processor can only
    /// choose among the candidates the loader announced: the loader refuses any other pid.
    Select(Vec<u32>),
    /// Sent before a clean shutdown, with the reason.
    Goodbye(String),
}

/// A control message that could not be built, sent, received or understood, naming the
/// message and the field.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("sending {message}")]
    Send {
        message: &'static str,
        #[source]
        source: ChannelError,
    },
    #[error("receiving {expecting}")]
    Recv {
        expecting: &'static str,
        #[source]
        source: ChannelError,
    },
    #[error("decoding {message}: field {field}")]
    Decode {
        message: &'static str,
        field: &'static str,
        #[source]
        source: capnp::Error,
    },
    #[error("{message} with {count} {field}, limit {limit}")]
    TooMany {
        message: &'static str,
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{message} encodes to {bytes} bytes, over the {limit}-byte datagram limit")]
    TooLarge {
        message: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("{message} came with {got} file descriptors, expected {expected}")]
    Fds {
        message: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{message} names fd index {index} of {count} attached")]
    FdIndex {
        message: &'static str,
        index: u8,
        count: usize,
    },
    #[error("{message} of protocol version {peer}; this side speaks {ours}")]
    Version {
        message: &'static str,
        peer: u32,
        ours: u32,
    },
    #[error("expected {expected}, received {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the loader refused this processor: {reason}")]
    Refused { reason: String },
}

impl LoaderMessage {
    /// What the message is, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            LoaderMessage::Welcome(_) => "welcome",
            LoaderMessage::ProcessAdded(_) => "process added",
            LoaderMessage::ProcessRemoved(_) => "process removed",
            LoaderMessage::KernelStats(_) => "kernel stats",
            LoaderMessage::Refused(_) => "refusal",
            LoaderMessage::CandidateAdded(_) => "candidate added",
            LoaderMessage::CandidateRemoved(_) => "candidate removed",
            LoaderMessage::FlowCounts(_) => "flow counts",
            LoaderMessage::ProcessUsage(_) => "process usage",
        }
    }

    /// The fds that travel with this message: the ring buffer's with a welcome, none
    /// otherwise.
    pub fn fd_count(&self) -> usize {
        usize::from(matches!(self, LoaderMessage::Welcome(_)))
    }

    /// The datagram's bytes, limits applied.
    pub fn encode(&self) -> Result<Vec<u8>, ControlError> {
        let mut builder = capnp::message::Builder::new_default();
        let mut root = builder.init_root::<loader_message::Builder<'_>>();
        match self {
            LoaderMessage::Welcome(w) => {
                let mut welcome = root.init_welcome();
                welcome.set_protocol_version(PROTOCOL_VERSION);
                let mut ring = welcome.init_ring_buffer();
                ring.set_fd_index(0);
                ring.set_data_size(w.data_size);
                ring.set_page_size(w.page_size);
            }
            LoaderMessage::ProcessAdded(p) => encode_process(root.init_process_added(), p),
            LoaderMessage::ProcessRemoved(pid) => root.set_process_removed(*pid),
            LoaderMessage::KernelStats(counters) => {
                check_count(self.name(), "counters", counters.len(), MAX_COUNTERS)?;
                let mut list = root.init_kernel_stats().init_counters(len_u32(counters));
                for (i, (name, value)) in (0u32..).zip(counters) {
                    let mut c = list.reborrow().get(i);
                    c.set_name(truncate(name, MAX_COUNTER_NAME_BYTES));
                    c.set_value(*value);
                }
            }
            LoaderMessage::Refused(why) => root.set_refused(truncate(why, MAX_REASON_NOTE_BYTES)),
            LoaderMessage::CandidateAdded(c) => {
                check_count(
                    self.name(),
                    "selectors",
                    c.selectors.len(),
                    MAX_CANDIDATE_SELECTORS,
                )?;
                let mut cand = root.init_candidate_added();
                encode_process(cand.reborrow().init_process(), &c.process);
                let mut list = cand.init_selectors(len_u32(&c.selectors));
                for (i, sel) in (0u32..).zip(&c.selectors) {
                    let mut k = list.reborrow().get(i);
                    k.set_key(truncate(&sel.key, MAX_REASON_BYTES));
                    k.set_regex(sel.regex);
                    for (which, entries) in [
                        (0, &sel.fields),
                        (1, &sel.pod_labels),
                        (2, &sel.pod_annotations),
                    ] {
                        check_count(self.name(), "criteria", entries.len(), MAX_CRITERIA_ENTRIES)?;
                        let mut l = match which {
                            0 => k.reborrow().init_fields(len_u32(entries)),
                            1 => k.reborrow().init_pod_labels(len_u32(entries)),
                            _ => k.reborrow().init_pod_annotations(len_u32(entries)),
                        };
                        for (j, (name, pattern)) in (0u32..).zip(entries) {
                            let mut e = l.reborrow().get(j);
                            e.set_name(truncate(name, MAX_CRITERIA_NAME_BYTES));
                            e.set_pattern(truncate(pattern, MAX_CRITERIA_PATTERN_BYTES));
                        }
                    }
                }
            }
            LoaderMessage::CandidateRemoved(pid) => root.set_candidate_removed(*pid),
            LoaderMessage::FlowCounts(flows) => {
                check_count(self.name(), "flows", flows.len(), MAX_FLOWS_PER_MESSAGE)?;
                let mut list = root.init_flow_counts().init_flows(len_u32(flows));
                for (i, f) in (0u32..).zip(flows) {
                    let mut out = list.reborrow().get(i);
                    out.set_src_addr(&f.src.octets());
                    out.set_dst_addr(&f.dst.octets());
                    out.set_src_port(f.src_port);
                    out.set_dst_port(f.dst_port);
                    out.set_transport(f.transport);
                    out.set_direction(match f.direction {
                        FlowDirection::Ingress => 0,
                        FlowDirection::Egress => 1,
                    });
                    out.set_ifindex(f.ifindex);
                    out.set_iface(truncate(&f.iface, MAX_IFACE_BYTES));
                    out.set_bytes(f.bytes);
                    out.set_packets(f.packets);
                }
            }
            LoaderMessage::ProcessUsage(usage) => {
                check_count(self.name(), "processes", usage.len(), MAX_USAGE_PER_MESSAGE)?;
                let mut list = root.init_process_usage().init_processes(len_u32(usage));
                for (i, u) in (0u32..).zip(usage) {
                    let mut out = list.reborrow().get(i);
                    out.set_pid(u.pid);
                    out.set_parent_pid(u.parent_pid);
                    out.set_uid(u.uid);
                    out.set_cpu_user_ns(u.cpu_user_ns);
                    out.set_cpu_system_ns(u.cpu_system_ns);
                    out.set_memory_rss(u.memory_rss);
                    out.set_memory_virtual(u.memory_virtual);
                    out.set_disk_read_bytes(u.disk_read_bytes);
                    out.set_disk_write_bytes(u.disk_write_bytes);
                    out.set_net_receive_bytes(u.net_receive_bytes);
                    out.set_net_transmit_bytes(u.net_transmit_bytes);
                    out.set_sampled_at_ns(u.sampled_at_ns);
                }
            }
        }
        finish(self.name(), &builder)
    }

    /// Reads a received datagram, checking its fds against the message kind (the welcome's
    /// ring buffer fd is then `datagram.fds[0]`).
    pub fn decode(datagram: &Datagram) -> Result<LoaderMessage, ControlError> {
        const WHAT: &str = "loader message";
        let message = datagram.message().map_err(decode_error(WHAT, "datagram"))?;
        let root = message
            .get_root::<loader_message::Reader<'_>>()
            .map_err(decode_error(WHAT, "root"))?;
        let which = root
            .which()
            .map_err(|e| decode_error(WHAT, "kind")(e.into()))?;
        let decoded = match which {
            loader_message::Which::Welcome(w) => {
                const WHAT: &str = "welcome";
                let w = w.map_err(decode_error(WHAT, "welcome"))?;
                check_version(WHAT, w.get_protocol_version())?;
                let ring = w
                    .get_ring_buffer()
                    .map_err(decode_error(WHAT, "ring_buffer"))?;
                check_fds(WHAT, 1, datagram.fds.len())?;
                if usize::from(ring.get_fd_index()) >= datagram.fds.len() {
                    return Err(ControlError::FdIndex {
                        message: WHAT,
                        index: ring.get_fd_index(),
                        count: datagram.fds.len(),
                    });
                }
                LoaderMessage::Welcome(Welcome {
                    data_size: ring.get_data_size(),
                    page_size: ring.get_page_size(),
                })
            }
            loader_message::Which::ProcessAdded(p) => {
                let p = p.map_err(decode_error("process added", "process"))?;
                LoaderMessage::ProcessAdded(decode_process(p)?)
            }
            loader_message::Which::ProcessRemoved(pid) => LoaderMessage::ProcessRemoved(pid),
            loader_message::Which::KernelStats(s) => {
                const WHAT: &str = "kernel stats";
                let counters = s
                    .and_then(|s| s.get_counters())
                    .map_err(decode_error(WHAT, "counters"))?;
                check_count(WHAT, "counters", counters.len() as usize, MAX_COUNTERS)?;
                let mut out = Vec::with_capacity(counters.len() as usize);
                for c in counters.iter() {
                    let name = c.get_name().map_err(decode_error(WHAT, "counters.name"))?;
                    out.push((text(name, MAX_COUNTER_NAME_BYTES), c.get_value()));
                }
                LoaderMessage::KernelStats(out)
            }
            loader_message::Which::Refused(why) => LoaderMessage::Refused(text(
                why.map_err(decode_error("refusal", "reason"))?,
                MAX_REASON_NOTE_BYTES,
            )),
            loader_message::Which::CandidateAdded(c) => {
                const WHAT: &str = "candidate added";
                let c = c.map_err(decode_error(WHAT, "candidate"))?;
                let process =
                    decode_process(c.get_process().map_err(decode_error(WHAT, "process"))?)?;
                let list = c.get_selectors().map_err(decode_error(WHAT, "selectors"))?;
                check_count(
                    WHAT,
                    "selectors",
                    list.len() as usize,
                    MAX_CANDIDATE_SELECTORS,
                )?;
                let mut selectors = Vec::with_capacity(list.len() as usize);
                for k in list.iter() {
                    let entries =
                        |l: capnp::Result<
                            capnp::struct_list::Reader<'_, crate::control_capnp::entry::Owned>,
                        >,
                         field: &'static str|
                         -> Result<Vec<(String, String)>, ControlError> {
                            let l = l.map_err(decode_error(WHAT, field))?;
                            check_count(WHAT, field, l.len() as usize, MAX_CRITERIA_ENTRIES)?;
                            l.iter()
                                .map(|e| {
                                    Ok((
                                        text(
                                            e.get_name().map_err(decode_error(WHAT, field))?,
                                            MAX_CRITERIA_NAME_BYTES,
                                        ),
                                        text(
                                            e.get_pattern().map_err(decode_error(WHAT, field))?,
                                            MAX_CRITERIA_PATTERN_BYTES,
                                        ),
                                    ))
                                })
                                .collect()
                        };
                    selectors.push(K8sCriteria {
                        key: text(
                            k.get_key().map_err(decode_error(WHAT, "selectors.key"))?,
                            MAX_REASON_BYTES,
                        ),
                        regex: k.get_regex(),
                        fields: entries(k.get_fields(), "selectors.fields")?,
                        pod_labels: entries(k.get_pod_labels(), "selectors.pod_labels")?,
                        pod_annotations: entries(
                            k.get_pod_annotations(),
                            "selectors.pod_annotations",
                        )?,
                    });
                }
                LoaderMessage::CandidateAdded(CandidateRecord { process, selectors })
            }
            loader_message::Which::CandidateRemoved(pid) => LoaderMessage::CandidateRemoved(pid),
            loader_message::Which::FlowCounts(f) => {
                const WHAT: &str = "flow counts";
                let list = f
                    .and_then(|f| f.get_flows())
                    .map_err(decode_error(WHAT, "flows"))?;
                check_count(WHAT, "flows", list.len() as usize, MAX_FLOWS_PER_MESSAGE)?;
                let mut out = Vec::with_capacity(list.len() as usize);
                for f in list.iter() {
                    let addr = |d: capnp::Result<&[u8]>, field: &'static str| {
                        let d = d.map_err(decode_error(WHAT, field))?;
                        let octets: [u8; 16] = d.try_into().map_err(|_| {
                            decode_error(WHAT, field)(capnp::Error::failed(format!(
                                "{} bytes, expected 16",
                                d.len()
                            )))
                        })?;
                        Ok::<_, ControlError>(std::net::Ipv6Addr::from(octets))
                    };
                    out.push(FlowCount {
                        src: addr(f.get_src_addr(), "flows.src_addr")?,
                        dst: addr(f.get_dst_addr(), "flows.dst_addr")?,
                        src_port: f.get_src_port(),
                        dst_port: f.get_dst_port(),
                        transport: f.get_transport(),
                        direction: match f.get_direction() {
                            0 => FlowDirection::Ingress,
                            1 => FlowDirection::Egress,
                            d => {
                                return Err(decode_error(WHAT, "flows.direction")(
                                    capnp::Error::failed(format!("direction {d}")),
                                ));
                            }
                        },
                        ifindex: f.get_ifindex(),
                        iface: text(
                            f.get_iface().map_err(decode_error(WHAT, "flows.iface"))?,
                            MAX_IFACE_BYTES,
                        ),
                        bytes: f.get_bytes(),
                        packets: f.get_packets(),
                    });
                }
                LoaderMessage::FlowCounts(out)
            }
            loader_message::Which::ProcessUsage(u) => {
                const WHAT: &str = "process usage";
                let list = u
                    .and_then(|u| u.get_processes())
                    .map_err(decode_error(WHAT, "processes"))?;
                check_count(
                    WHAT,
                    "processes",
                    list.len() as usize,
                    MAX_USAGE_PER_MESSAGE,
                )?;
                LoaderMessage::ProcessUsage(
                    list.iter()
                        .map(|u| ProcessUsage {
                            pid: u.get_pid(),
                            parent_pid: u.get_parent_pid(),
                            uid: u.get_uid(),
                            cpu_user_ns: u.get_cpu_user_ns(),
                            cpu_system_ns: u.get_cpu_system_ns(),
                            memory_rss: u.get_memory_rss(),
                            memory_virtual: u.get_memory_virtual(),
                            disk_read_bytes: u.get_disk_read_bytes(),
                            disk_write_bytes: u.get_disk_write_bytes(),
                            net_receive_bytes: u.get_net_receive_bytes(),
                            net_transmit_bytes: u.get_net_transmit_bytes(),
                            sampled_at_ns: u.get_sampled_at_ns(),
                        })
                        .collect(),
                )
            }
        };
        check_fds(decoded.name(), decoded.fd_count(), datagram.fds.len())?;
        Ok(decoded)
    }

    /// Encodes and sends the message with `fds`, which must be the ring buffer's for a welcome
    /// and none otherwise.
    pub fn send(&self, sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> Result<(), ControlError> {
        check_fds(self.name(), self.fd_count(), fds.len())?;
        channel::send_bytes(sock, &self.encode()?, fds).map_err(|source| ControlError::Send {
            message: self.name(),
            source,
        })
    }
}

impl ProcessorMessage {
    /// What the message is, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ProcessorMessage::Hello(_) => "hello",
            ProcessorMessage::Narrow(_) => "narrowing request",
            ProcessorMessage::Select(_) => "selection request",
            ProcessorMessage::Goodbye(_) => "goodbye",
        }
    }

    /// The datagram's bytes, limits applied.
    pub fn encode(&self) -> Result<Vec<u8>, ControlError> {
        let mut builder = capnp::message::Builder::new_default();
        let mut root = builder.init_root::<processor_message::Builder<'_>>();
        match self {
            ProcessorMessage::Hello(h) => {
                let mut hello = root.init_hello();
                hello.set_protocol_version(PROTOCOL_VERSION);
                hello.set_agent(truncate(&h.agent, MAX_AGENT_BYTES));
                if let Some(bound) = h.inject_sampled_below {
                    hello.set_inject_sampled_below_plus_one(bound.min(1 << 63) + 1);
                }
                if let Some(s) = h.sandbox {
                    let mut sandbox = hello.init_sandbox();
                    sandbox.set_landlock(s.landlock);
                    sandbox.set_seccomp_filters(s.seccomp_filters);
                }
            }
            ProcessorMessage::Narrow(pids) => {
                check_count(self.name(), "pids", pids.len(), MAX_NARROW_PIDS)?;
                let mut list = root.init_narrow().init_stop_pids(len_u32(pids));
                for (i, pid) in (0u32..).zip(pids) {
                    list.set(i, *pid);
                }
            }
            ProcessorMessage::Select(pids) => {
                check_count(self.name(), "pids", pids.len(), MAX_NARROW_PIDS)?;
                let mut list = root.init_select().init_pids(len_u32(pids));
                for (i, pid) in (0u32..).zip(pids) {
                    list.set(i, *pid);
                }
            }
            ProcessorMessage::Goodbye(why) => {
                root.set_goodbye(truncate(why, MAX_REASON_NOTE_BYTES));
            }
        }
        finish(self.name(), &builder)
    }

    /// Reads a received datagram. The processor never sends fds, so any is an error; so is a
    /// hello of another protocol version or a narrowing request over `MAX_NARROW_PIDS`.
    pub fn decode(datagram: &Datagram) -> Result<ProcessorMessage, ControlError> {
        const WHAT: &str = "processor message";
        check_fds(WHAT, 0, datagram.fds.len())?;
        let message = datagram.message().map_err(decode_error(WHAT, "datagram"))?;
        let root = message
            .get_root::<processor_message::Reader<'_>>()
            .map_err(decode_error(WHAT, "root"))?;
        let which = root
            .which()
            .map_err(|e| decode_error(WHAT, "kind")(e.into()))?;
        Ok(match which {
            processor_message::Which::Hello(h) => {
                const WHAT: &str = "hello";
                let h = h.map_err(decode_error(WHAT, "hello"))?;
                check_version(WHAT, h.get_protocol_version())?;
                let agent = h.get_agent().map_err(decode_error(WHAT, "agent"))?;
                let sandbox = if h.has_sandbox() {
                    let s = h.get_sandbox().map_err(decode_error(WHAT, "sandbox"))?;
                    Some(SandboxState {
                        landlock: s.get_landlock(),
                        seccomp_filters: s.get_seccomp_filters(),
                    })
                } else {
                    None
                };
                let inject_sampled_below = match h.get_inject_sampled_below_plus_one() {
                    0 => None,
                    v => Some((v - 1).min(1 << 63)),
                };
                ProcessorMessage::Hello(Hello {
                    agent: text(agent, MAX_AGENT_BYTES),
                    sandbox,
                    inject_sampled_below,
                })
            }
            processor_message::Which::Narrow(n) => {
                const WHAT: &str = "narrowing request";
                let pids = n
                    .and_then(|n| n.get_stop_pids())
                    .map_err(decode_error(WHAT, "stop_pids"))?;
                check_count(WHAT, "pids", pids.len() as usize, MAX_NARROW_PIDS)?;
                ProcessorMessage::Narrow(pids.iter().collect())
            }
            processor_message::Which::Select(n) => {
                const WHAT: &str = "selection request";
                let pids = n
                    .and_then(|n| n.get_pids())
                    .map_err(decode_error(WHAT, "pids"))?;
                check_count(WHAT, "pids", pids.len() as usize, MAX_NARROW_PIDS)?;
                ProcessorMessage::Select(pids.iter().collect())
            }
            processor_message::Which::Goodbye(why) => ProcessorMessage::Goodbye(text(
                why.map_err(decode_error("goodbye", "reason"))?,
                MAX_REASON_NOTE_BYTES,
            )),
        })
    }

    /// Encodes and sends the message (the processor never sends fds).
    pub fn send(&self, sock: BorrowedFd<'_>) -> Result<(), ControlError> {
        channel::send_bytes(sock, &self.encode()?, &[]).map_err(|source| ControlError::Send {
            message: self.name(),
            source,
        })
    }
}

fn encode_process(mut p: process_record::Builder<'_>, record: &ProcessRecord) {
    p.set_pid(record.pid);
    p.set_exe_path(truncate(&record.exe_path, MAX_EXE_PATH_BYTES));
    p.set_service_name(truncate(&record.service_name, MAX_SERVICE_NAME_BYTES));
    p.set_reason(truncate(&record.reason, MAX_REASON_BYTES));
    p.set_container_id(truncate(&record.container_id, MAX_CONTAINER_ID_BYTES));
    p.set_env_service_name(truncate(&record.env_service_name, MAX_SERVICE_NAME_BYTES));
    p.set_env_service_namespace(truncate(
        &record.env_service_namespace,
        MAX_SERVICE_NAME_BYTES,
    ));
    p.set_selector_service_name(truncate(
        &record.selector_service_name,
        MAX_SERVICE_NAME_BYTES,
    ));
    p.set_selector_service_namespace(truncate(
        &record.selector_service_namespace,
        MAX_SERVICE_NAME_BYTES,
    ));
    let args = &record.cmdline[..record.cmdline.len().min(MAX_CMDLINE_ARGS)];
    let mut list = p.init_cmdline(len_u32(args));
    for (i, arg) in (0u32..).zip(args) {
        list.set(i, truncate(arg, MAX_CMDLINE_ARG_BYTES));
    }
}

fn decode_process(p: process_record::Reader<'_>) -> Result<ProcessRecord, ControlError> {
    const WHAT: &str = "process added";
    let field = |name: &'static str, t: capnp::Result<capnp::text::Reader<'_>>, max: usize| {
        t.map(|t| text(t, max)).map_err(decode_error(WHAT, name))
    };
    let args = p.get_cmdline().map_err(decode_error(WHAT, "cmdline"))?;
    let mut cmdline = Vec::with_capacity(args.len().min(MAX_CMDLINE_ARGS as u32) as usize);
    for arg in args.iter().take(MAX_CMDLINE_ARGS) {
        cmdline.push(field("cmdline", arg, MAX_CMDLINE_ARG_BYTES)?);
    }
    Ok(ProcessRecord {
        pid: p.get_pid(),
        exe_path: field("exe_path", p.get_exe_path(), MAX_EXE_PATH_BYTES)?,
        cmdline,
        service_name: field("service_name", p.get_service_name(), MAX_SERVICE_NAME_BYTES)?,
        reason: field("reason", p.get_reason(), MAX_REASON_BYTES)?,
        container_id: field("container_id", p.get_container_id(), MAX_CONTAINER_ID_BYTES)?,
        env_service_name: field(
            "env_service_name",
            p.get_env_service_name(),
            MAX_SERVICE_NAME_BYTES,
        )?,
        env_service_namespace: field(
            "env_service_namespace",
            p.get_env_service_namespace(),
            MAX_SERVICE_NAME_BYTES,
        )?,
        selector_service_name: field(
            "selector_service_name",
            p.get_selector_service_name(),
            MAX_SERVICE_NAME_BYTES,
        )?,
        selector_service_namespace: field(
            "selector_service_namespace",
            p.get_selector_service_namespace(),
            MAX_SERVICE_NAME_BYTES,
        )?,
    })
}

/// Serializes a built message, refusing one over the datagram limit (the field limits keep
/// every message far below it; this is the backstop).
fn finish(
    message: &'static str,
    builder: &capnp::message::Builder<capnp::message::HeapAllocator>,
) -> Result<Vec<u8>, ControlError> {
    let bytes = capnp::serialize::write_message_to_words(builder);
    if bytes.len() > channel::MAX_MESSAGE_BYTES {
        return Err(ControlError::TooLarge {
            message,
            bytes: bytes.len(),
            limit: channel::MAX_MESSAGE_BYTES,
        });
    }
    Ok(bytes)
}

fn decode_error(
    message: &'static str,
    field: &'static str,
) -> impl Fn(capnp::Error) -> ControlError {
    move |source| ControlError::Decode {
        message,
        field,
        source,
    }
}

fn check_version(message: &'static str, peer: u32) -> Result<(), ControlError> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ControlError::Version {
            message,
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}

fn check_fds(message: &'static str, expected: usize, got: usize) -> Result<(), ControlError> {
    if got == expected {
        Ok(())
    } else {
        Err(ControlError::Fds {
            message,
            expected,
            got,
        })
    }
}

fn check_count(
    message: &'static str,
    field: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), ControlError> {
    if count <= limit {
        Ok(())
    } else {
        Err(ControlError::TooMany {
            message,
            field,
            count,
            limit,
        })
    }
}

/// A list length for capnp; callers have checked it against a limit far below `u32::MAX`.
fn len_u32<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}

/// Received text, invalid UTF-8 replaced, cut like the sender cuts it. The whole text is
/// converted before the cut (it is bounded by the datagram size), so a valid string arrives
/// exactly as `truncate` would have left it.
fn text(t: capnp::text::Reader<'_>, max: usize) -> String {
    let lossy = String::from_utf8_lossy(t.as_bytes());
    truncate(&lossy, max).to_string()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
