# The control protocol between sonde-loader (privileged) and sonde-processor (unprivileged).
#
# Transport: one SOCK_SEQPACKET connection; every datagram holds exactly one capnp message
# (unpacked, single segment preferred). File descriptors travel in the same datagram as
# SCM_RIGHTS ancillary data and are referenced by their index in that datagram, because
# capnp-rust cannot carry fds itself.
#
# The one encoder and decoder of these messages is schema/src/control.rs. The limits every field
# is held to (string lengths, list lengths) live there, and the datagram size limit in
# schema/src/channel.rs (MAX_MESSAGE_BYTES, 65536 bytes), next to the code that enforces them.
@0xb7a3c2d15e8f4a91;

# Bumped on any incompatible change. Both sides refuse a peer with another version.
const protocolVersion :UInt32 = 1;

struct ProcessorMessage {
  union {
    hello @0 :Hello;
    # Sent before a clean shutdown, with the reason, so the loader logs it.
    goodbye @1 :Text;
    # Asks the loader to stop capturing processes. The loader refuses (and logs) a request
    # naming a process it does not capture. No message widens the capture beyond the loader's
    # configuration: `select` only chooses among the candidates the loader announced.
    narrow @2 :Narrow;
    # Asks the loader to start capturing candidates (see `candidateAdded`): processes the
    # loader's configuration already bounds, chosen by the processor from Kubernetes metadata.
    # The loader refuses (logs and counts) any pid that is not a current candidate.
    select @3 :Select;
  }
}

struct Select {
  # At most MAX_NARROW_PIDS (schema/src/control.rs) per message.
  pids @0 :List(UInt32);
}

struct Narrow {
  # At most MAX_NARROW_PIDS (schema/src/control.rs) per message.
  stopPids @0 :List(UInt32);
}

struct Hello {
  protocolVersion @0 :UInt32;
  # Free text for the loader's log (processor binary version).
  agent @1 :Text;
  # The sandbox the processor applied before connecting, as it reports it (the loader logs
  # it and `sonde-loader --audit` shows it; seccomp is also visible in /proc, Landlock is not).
  sandbox @2 :SandboxState;
  # The processor's sampling rule for traces the kernel starts by injecting `traceparent`
  # (`ebpf.context_propagation`), so the injected trace flags carry the decision the processor
  # makes for that client span: sampled when the upper 63 bits of the trace id's last 8 bytes
  # are below the bound (2^63: every trace; 0: none). On the wire the bound plus one; 0 (an
  # older processor) leaves the kernel's default, every trace sampled.
  injectSampledBelowPlusOne @3 :UInt64;
}

struct SandboxState {
  landlock @0 :Bool;
  seccompFilters @1 :UInt8;
}

struct LoaderMessage {
  union {
    welcome @0 :Welcome;
    processAdded @1 :ProcessRecord;
    processRemoved @2 :UInt32;
    kernelStats @3 :KernelStats;
    refused @4 :Text;
    # A process the loader may capture if the processor selects it: it is in a pod's cgroup
    # and matches every non-Kubernetes field of a discovery selector that has `k8s_*` fields.
    # It is not captured until the processor sends `select` for it.
    candidateAdded @5 :CandidateAdded;
    # A candidate is gone (exited, exec'd out of its selector, pid reused).
    candidateRemoved @6 :UInt32;
    # Network flow counts since the previous report (`network.enable`): the loader reads
    # them from the kernel's flow map and forwards plain numbers; it parses no packet.
    flowCounts @7 :FlowCounts;
    # Resource usage of captured processes (`application_process`), read by the loader from
    # /proc (the processor may not read other users' /proc/<pid>/io and cannot see them).
    processUsage @8 :ProcessUsageList;
  }
}

struct FlowCounts {
  # At most MAX_FLOWS_PER_MESSAGE (schema/src/control.rs) per message.
  flows @0 :List(FlowCount);
}

# One flow's traffic on one interface in one direction since its previous report.
struct FlowCount {
  # 16 bytes each: IPv6, or IPv4 as an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
  srcAddr @0 :Data;
  dstAddr @1 :Data;
  srcPort @2 :UInt16;
  dstPort @3 :UInt16;
  # IANA protocol number: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...
  transport @4 :UInt8;
  # 0: received on the interface (ingress), 1: sent by it (egress).
  direction @5 :UInt8;
  ifindex @6 :UInt32;
  # The interface's name as the kernel had it (at most 15 bytes).
  iface @7 :Text;
  # IP-layer bytes (IP headers included, link-layer headers not) and packets; a GSO/GRO
  # aggregate counts as the segments it stands for.
  bytes @8 :UInt64;
  packets @9 :UInt64;
}

struct ProcessUsageList {
  # At most MAX_USAGE_PER_MESSAGE (schema/src/control.rs) per message.
  processes @0 :List(ProcessUsage);
}

# Cumulative counters since the process started (CPU, disk) or since it was captured
# (network), and current gauges (memory), as /proc and the kernel give them.
struct ProcessUsage {
  pid @0 :UInt32;
  parentPid @1 :UInt32;
  # Real uid of the process (`process.owner` is resolved by the processor).
  uid @2 :UInt32;
  cpuUserNs @3 :UInt64;
  cpuSystemNs @4 :UInt64;
  # Resident set and virtual size, bytes.
  memoryRss @5 :UInt64;
  memoryVirtual @6 :UInt64;
  # /proc/<pid>/io read_bytes / write_bytes (storage I/O).
  diskReadBytes @7 :UInt64;
  diskWriteBytes @8 :UInt64;
  # Socket bytes received / sent, counted in the kernel from the socket I/O Sonde sees.
  netReceiveBytes @9 :UInt64;
  netTransmitBytes @10 :UInt64;
  # CLOCK_MONOTONIC nanoseconds when the loader read these values (utilization is the CPU
  # time between two readings over the time between them).
  sampledAtNs @11 :UInt64;
}

struct CandidateAdded {
  process @0 :ProcessRecord;
  # The Kubernetes criteria of the selectors whose other fields the process matches (any one
  # holding selects it), as the loader's configuration has them.
  selectors @1 :List(K8sCriteria);
}

# The `k8s_*` fields of one discovery selector.
struct K8sCriteria {
  # The selector's key, e.g. `discovery.instrument[2]`.
  key @0 :Text;
  # Patterns are unanchored regular expressions (`discovery.services`), else globs.
  regex @1 :Bool;
  # (`k8s_namespace`, pattern), (`k8s_deployment_name`, pattern), …
  fields @2 :List(Entry);
  podLabels @3 :List(Entry);
  podAnnotations @4 :List(Entry);
}

struct Entry {
  name @0 :Text;
  pattern @1 :Text;
}

struct Welcome {
  protocolVersion @0 :UInt32;
  ringBuffer @1 :RingBuffer;
}

# Geometry of a BPF_MAP_TYPE_RINGBUF, so the processor can mmap it without any bpf() call.
struct RingBuffer {
  # Index of the ring buffer fd in this datagram's SCM_RIGHTS array.
  fdIndex @0 :UInt8;
  # Data area size in bytes (the map's max_entries, a power of two).
  dataSize @1 :UInt32;
  pageSize @2 :UInt32;
}

# A process the loader captures (struct names are not on the wire: this was ProcessInfo).
struct ProcessRecord {
  pid @0 :UInt32;
  exePath @1 :Text;
  cmdline @2 :List(Text);
  # Service name derived by the loader (executable name); the processor may override it.
  serviceName @3 :Text;
  # Why the loader selected this process: "port 8080", "exe /usr/sbin/nginx", "pid".
  reason @4 :Text;
  # The container runtime's id (64 hex) from the process's cgroup path; empty when none.
  containerId @5 :Text;
  # The process's own OTEL_SERVICE_NAME / OTEL_SERVICE_NAMESPACE, or service.name /
  # service.namespace from its OTEL_RESOURCE_ATTRIBUTES (only these values leave the loader,
  # never the environment); empty when unset.
  envServiceName @6 :Text;
  envServiceNamespace @7 :Text;
  # The `name` / `namespace` of the discovery selector that matched; empty when none.
  selectorServiceName @8 :Text;
  selectorServiceNamespace @9 :Text;
}

struct KernelStats {
  counters @0 :List(Counter);
}

struct Counter {
  name @0 :Text;
  value @1 :UInt64;
}
