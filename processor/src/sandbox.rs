//! The processor's sandbox, applied in `main` before any thread starts and before the first
//! byte of traffic is parsed. Three layers, in this order:
//!
//! 1. `NO_NEW_PRIVS` (both other layers need it; it also makes setuid binaries and file
//!    capabilities inert).
//! 2. Landlock: read-only access beneath `/proc` (service names of processes), the
//!    configuration file, TLS trust stores and the name-resolution files (and, with Kubernetes
//!    metadata on, the service-account token's directory or the kubeconfig's credential
//!    files: `crate::kube::prepare`); no other file access at all (files already open, such
//!    as stdout, are unaffected); TCP connect and bind only to the ports the configuration
//!    exports to or serves on (and the Kubernetes API server's); abstract Unix sockets and
//!    signals scoped to the processor itself. Best effort by default (`processor.landlock`):
//!    each right the kernel lacks is left out (filesystem rules need ABI 1, Linux 5.13; TCP
//!    ports ABI 4, Linux 6.7; abstract-socket and signal scoping ABI 6, Linux 6.12) and `main`
//!    logs once what is and is not enforced ([`LandlockEnforcement`]); seccomp alone still
//!    denies new Unix sockets, UDP and `kill`. With `processor.landlock: required` it fails
//!    closed: a kernel that cannot enforce the whole ruleset stops the start.
//! 3. seccomp: the allowlist in `seccomp/processor.json`, compiled into BPF by `build.rs`;
//!    every other system call fails with `EPERM` (`clone3` with `ENOSYS`, so glibc falls back
//!    to `clone`, which the allowlist restricts to threads). Egress: `socket()` makes TCP
//!    sockets only (protocol pinned; no UDP, no new `AF_UNIX` socket: the control socket is
//!    connected or inherited before this point), `sendto`/`sendmsg` never with `MSG_FASTOPEN`
//!    (TCP Fast Open connects without the connect hook Landlock checks), `setsockopt` only for
//!    the (level, option) pairs the code sets (never `SO_ATTACH_*`, `TCP_FASTOPEN*`,
//!    `TCP_ULP`).
//!
//! Name resolution without UDP: before the sandbox, `RES_OPTIONS=use-vc` makes glibc's stub
//! resolver query the `resolv.conf` name servers over TCP port 53 (RFC 7766 requires servers
//! to answer there; systemd-resolved, CoreDNS and dnsmasq do). Landlock then allows connect to
//! port 53 only when an endpoint names a host rather than an IP address. Landlock checks
//! ports, not addresses: which hosts the processor may reach at those ports is the systemd
//! unit's `IPAddressAllow=` and the Kubernetes `NetworkPolicy`'s job.
//!
//! Both are applied to the calling thread, which is the only one at that point; threads
//! started later inherit them.

use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use seccompiler::BpfProgram;
use serde::Serialize;
pub use sonde_config::LandlockMode;

mod filters {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

include!("../../seccomp/tables.rs");

/// The Landlock ABI whose rights the ruleset uses: 6 adds signal and abstract-socket scoping
/// (Linux 6.12) to TCP port rules (ABI 4, Linux 6.7).
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// Files and trees the processor may read besides `/proc` and its configuration file.
pub const READABLE_SYSTEM_PATHS: &[&str] = &[
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
];

/// What the sandbox allows.
#[derive(Debug, Clone, Default)]
pub struct SandboxPolicy {
    /// Trees and files readable (besides the fixed system paths and `/proc`).
    pub read_paths: Vec<PathBuf>,
    /// TCP ports the processor may connect to (exporters, the Kubernetes API).
    pub connect_ports: Vec<u16>,
    /// TCP ports the processor may bind (the Prometheus endpoint).
    pub bind_ports: Vec<u16>,
    /// How strictly Landlock is enforced (`processor.landlock`).
    pub landlock: LandlockMode,
}

/// The port glibc's resolver queries name servers on (TCP, with `use-vc`).
pub const DNS_PORT: u16 = 53;

/// True when `url`'s host is a name to resolve, not an IP address literal.
pub fn host_needs_resolution(url: &str) -> bool {
    match url.parse::<http::Uri>() {
        Ok(uri) => uri.host().is_some_and(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_err()
        }),
        // An URL that does not parse is never connected to; resolution is not needed.
        Err(_) => false,
    }
}

/// Makes glibc's stub resolver use TCP (`RES_OPTIONS` gains `use-vc`), so that seccomp can
/// deny UDP sockets altogether. Called while the process is single-threaded and before the
/// first lookup (glibc reads `RES_OPTIONS` when it initialises its resolver state).
fn resolve_names_over_tcp() {
    const VAR: &str = "RES_OPTIONS";
    let options = match std::env::var(VAR) {
        Ok(v) if v.split_whitespace().any(|o| o == "use-vc") => return,
        Ok(v) if !v.trim().is_empty() => format!("{v} use-vc"),
        _ => "use-vc".to_string(),
    };
    // SAFETY: `apply` runs before any thread is started (see the module comment), so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var(VAR, options) };
}

/// tokio's signal driver is compiled in (the Kubernetes client, `kube-client`, requires
/// tokio's `signal` feature) and every runtime with I/O (the OTLP exporter's, the Kubernetes
/// watchers') sets it up, which makes one process-wide Unix socket pair the first time. seccomp
/// forbids new Unix sockets, so the pair is made here, before, by building (and dropping) a
/// single-threaded runtime: no thread is started, no signal handler installed. The pair only
/// talks to itself (no descriptor can leave through it).
fn make_tokio_signal_pipe() {
    let _ = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
}

/// What of the Landlock ruleset the kernel enforces, from the ABI it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockEnforcement {
    /// The Landlock ABI the ruleset was enforced with (0: none: no Landlock in the kernel, not
    /// enabled in `lsm=`, or `processor.landlock: off`).
    pub abi: u8,
    /// File access: read-only `/proc`, configuration and trust stores, nothing else (ABI 1).
    pub filesystem: bool,
    /// `truncate(2)` and `ioctl` on devices are covered too (ABI 3 and 5; seccomp denies
    /// `truncate` and `ioctl` anyway).
    pub filesystem_complete: bool,
    /// TCP bind and connect only to the configured ports (ABI 4).
    pub tcp: bool,
    /// Abstract Unix sockets and signals scoped to the processor (ABI 6).
    pub scoping: bool,
}

impl LandlockEnforcement {
    /// Nothing enforced.
    pub const NONE: LandlockEnforcement = LandlockEnforcement {
        abi: 0,
        filesystem: false,
        filesystem_complete: false,
        tcp: false,
        scoping: false,
    };

    /// What the processor's ruleset (written for [`LANDLOCK_ABI`]) enforces on a kernel
    /// offering `abi`: each right the kernel lacks is left out.
    pub fn for_abi(abi: ABI) -> LandlockEnforcement {
        let n = (abi as i32).clamp(0, LANDLOCK_ABI as i32);
        LandlockEnforcement {
            abi: n as u8,
            filesystem: n >= 1,
            filesystem_complete: n >= 5,
            tcp: n >= 4,
            scoping: n >= 6,
        }
    }

    /// At least the filesystem rules are enforced.
    pub fn any(&self) -> bool {
        self.filesystem
    }

    /// Every right of the ruleset is enforced.
    pub fn complete(&self) -> bool {
        self.filesystem && self.filesystem_complete && self.tcp && self.scoping
    }

    /// One line for the log: what is enforced, what is not and which kernel would add it.
    pub fn describe(&self) -> String {
        if !self.any() {
            return "Landlock NOT enforced (files, TCP ports and scoping rest on seccomp alone: \
                    no new Unix or UDP sockets, no kill; file reads and TCP ports are open)"
                .to_string();
        }
        let mut enforced = vec!["filesystem"];
        let mut missing = Vec::new();
        if !self.filesystem_complete {
            missing.push("truncate/device-ioctl file rights (ABI 3/5; seccomp denies both)");
        }
        if self.tcp {
            enforced.push("TCP bind/connect ports");
        } else {
            missing.push("TCP bind/connect ports (ABI 4, Linux 6.7)");
        }
        if self.scoping {
            enforced.push("abstract-socket and signal scoping");
        } else {
            missing.push(
                "abstract-socket and signal scoping (ABI 6, Linux 6.12; seccomp still denies \
                 new Unix sockets and kill)",
            );
        }
        let mut line = format!(
            "Landlock ABI {}: enforced: {}",
            self.abi,
            enforced.join(", ")
        );
        if !missing.is_empty() {
            line.push_str("; NOT enforced: ");
            line.push_str(&missing.join(", "));
        }
        line
    }
}

/// What was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxReport {
    /// The Landlock mode asked for.
    pub landlock_mode: LandlockMode,
    /// What of the Landlock ruleset is enforced.
    pub landlock: LandlockEnforcement,
    /// Seccomp filters installed.
    pub seccomp_filters: usize,
    /// `PR_GET_DUMPABLE` as the sandbox went up (false: `main` made the process non-dumpable).
    pub dumpable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("setting NO_NEW_PRIVS: {0}")]
    NoNewPrivs(nix::Error),
    #[error("building the Landlock ruleset: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error(
        "processor.landlock is required, but this kernel cannot fully enforce the processor's \
         Landlock ruleset ({enforced}; the whole ruleset needs Landlock ABI 6, Linux 6.12 or \
         later, with landlock in the lsm= list). Set processor.landlock: best_effort \
         (SONDE_LANDLOCK=best_effort) to start with what the kernel enforces"
    )]
    LandlockNotEnforced { enforced: String },
    #[error("installing the seccomp filter {name}: {source}")]
    Seccomp {
        name: &'static str,
        source: seccompiler::Error,
    },
}

/// The compiled seccomp filters, by name, in the order they are installed.
pub fn seccomp_filters() -> [(&'static str, BpfProgram); 2] {
    [
        ("processor_clone3", program(filters::PROCESSOR_CLONE3)),
        ("processor", program(filters::PROCESSOR)),
    ]
}

/// Applies NO_NEW_PRIVS, Landlock and seccomp to the calling thread.
pub fn apply(policy: &SandboxPolicy) -> Result<SandboxReport, SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    resolve_names_over_tcp();
    make_tokio_signal_pipe();
    let dumpable = crate::privileges::is_dumpable();
    let landlock = match policy.landlock {
        LandlockMode::Off => LandlockEnforcement::NONE,
        mode => restrict_with_landlock(policy, mode)?,
    };
    let filters = seccomp_filters();
    for (name, filter) in &filters {
        seccompiler::apply_filter(filter)
            .map_err(|source| SandboxError::Seccomp { name, source })?;
    }
    Ok(SandboxReport {
        landlock_mode: policy.landlock,
        landlock,
        seccomp_filters: filters.len(),
        dumpable,
    })
}

/// Builds and enforces the ruleset, best effort (the crate's default compatibility level:
/// rights the kernel lacks are left out), then reads what the kernel enforced. In `required`
/// mode anything short of the whole ruleset is an error.
fn restrict_with_landlock(
    policy: &SandboxPolicy,
    mode: LandlockMode,
) -> Result<LandlockEnforcement, SandboxError> {
    let abi = LANDLOCK_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let readable = ["/proc"]
        .iter()
        .map(PathBuf::from)
        .chain(READABLE_SYSTEM_PATHS.iter().map(PathBuf::from))
        .chain(policy.read_paths.iter().cloned());
    let ports = policy
        .connect_ports
        .iter()
        .map(|p| NetPort::new(*p, AccessNet::ConnectTcp))
        .chain(
            policy
                .bind_ports
                .iter()
                .map(|p| NetPort::new(*p, AccessNet::BindTcp)),
        )
        .map(Ok::<_, landlock::RulesetError>);
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(readable, read))?
        .add_rules(ports)?
        .restrict_self()?;
    let enforced = match (&status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, _) => LandlockEnforcement::NONE,
        (_, LandlockStatus::Available { effective_abi, .. }) => {
            LandlockEnforcement::for_abi(effective_abi)
        }
        (_, LandlockStatus::NotEnabled | LandlockStatus::NotImplemented) => {
            LandlockEnforcement::NONE
        }
    };
    if mode == LandlockMode::Required
        && (status.ruleset != RulesetStatus::FullyEnforced || !enforced.complete())
    {
        return Err(SandboxError::LandlockNotEnforced {
            enforced: enforced.describe(),
        });
    }
    Ok(enforced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each Landlock ABI brings to the processor's ruleset, and how the log says it
    /// (kernels older than the test machine's cannot be simulated, so the report is checked
    /// from the ABI alone).
    #[test]
    fn enforcement_follows_the_kernel_abi() {
        let none = LandlockEnforcement::for_abi(ABI::Unsupported);
        assert_eq!(none, LandlockEnforcement::NONE);
        assert!(!none.any());
        assert!(none.describe().contains("Landlock NOT enforced"));

        let v1 = LandlockEnforcement::for_abi(ABI::V1);
        assert!(v1.filesystem && !v1.filesystem_complete && !v1.tcp && !v1.scoping);
        let line = v1.describe();
        assert!(
            line.starts_with("Landlock ABI 1: enforced: filesystem;"),
            "{line}"
        );
        assert!(line.contains("NOT enforced: "), "{line}");
        assert!(line.contains("TCP bind/connect ports (ABI 4"), "{line}");
        assert!(line.contains("signal scoping (ABI 6"), "{line}");

        let v4 = LandlockEnforcement::for_abi(ABI::V4);
        assert!(v4.filesystem && v4.tcp && !v4.scoping && !v4.filesystem_complete);
        let line = v4.describe();
        assert!(
            line.contains("enforced: filesystem, TCP bind/connect ports;"),
            "{line}"
        );
        assert!(!line.contains("TCP bind/connect ports (ABI 4"), "{line}");

        let v5 = LandlockEnforcement::for_abi(ABI::V5);
        assert!(v5.filesystem_complete && v5.tcp && !v5.scoping && !v5.complete());

        for abi in [ABI::V6, ABI::V7, ABI::V9] {
            let full = LandlockEnforcement::for_abi(abi);
            assert!(full.complete(), "{abi:?}");
            assert_eq!(full.abi, 6, "the ruleset is written for ABI 6");
            assert!(
                !full.describe().contains("NOT enforced"),
                "{}",
                full.describe()
            );
        }
    }

    /// The filters in the binary are exactly what the policy file compiles to today.
    #[test]
    fn built_filters_match_the_policy_file() {
        let compiled = compile_policy_now("processor.json");
        for (name, built) in seccomp_filters() {
            assert_eq!(&compiled[name], &built, "filter {name}");
        }
        assert_eq!(compiled.len(), 2);
    }

    /// Syscalls that must never be in the allowlist, whatever else changes.
    #[test]
    fn policy_never_allows_the_dangerous_calls() {
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../seccomp/processor.json"
            ))
            .expect("policy file"),
        )
        .expect("json");
        let allowed: Vec<&str> = json["processor"]["filter"]
            .as_array()
            .expect("filter list")
            .iter()
            .filter_map(|r| r["syscall"].as_str())
            .collect();
        assert_eq!(json["processor"]["mismatch_action"]["errno"], 1);
        for forbidden in [
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "execve",
            "execveat",
            "fork",
            "vfork",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "setuid",
            "setgid",
            "setreuid",
            "setregid",
            "setresuid",
            "setresgid",
            "setgroups",
            "setfsuid",
            "setfsgid",
            "capset",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "keyctl",
            "add_key",
            "request_key",
            "seccomp",
            "kill",
            "pidfd_open",
            "pidfd_getfd",
            "io_uring_setup",
            "userfaultfd",
            "chmod",
            "fchmod",
            "chown",
            "fchown",
            "ioctl",
        ] {
            assert!(!allowed.contains(&forbidden), "{forbidden} is allowed");
        }
        // Egress (issue 13). socket(): TCP only, family, type and protocol pinned: no
        // AF_UNIX (the control socket exists before the sandbox), no UDP, raw or MPTCP.
        let rules = json["processor"]["filter"].as_array().expect("rules");
        let arg = |rule: &serde_json::Value, index: u64| -> Option<serde_json::Value> {
            rule["args"]
                .as_array()?
                .iter()
                .find(|a| a["index"] == index)
                .cloned()
        };
        for rule in rules.iter().filter(|r| r["syscall"] == "socket") {
            let family = arg(rule, 0).expect("family")["val"].as_u64();
            assert!(
                [Some(2), Some(10)].contains(&family),
                "socket family {family:?}"
            );
            let kind = arg(rule, 1).expect("type");
            assert_eq!(kind["op"]["masked_eq"], 15);
            assert_eq!(kind["val"], 1, "SOCK_STREAM only");
            let protocol = arg(rule, 2).expect("protocol pinned");
            assert_eq!(protocol["op"], "eq");
            assert!([0, 6].contains(&protocol["val"].as_u64().expect("protocol")));
        }
        // sendto/sendmsg: never MSG_FASTOPEN (flags are argument 3 and 2).
        for (call, index) in [("sendto", 3), ("sendmsg", 2)] {
            let found: Vec<_> = rules.iter().filter(|r| r["syscall"] == call).collect();
            assert!(!found.is_empty(), "{call}");
            for rule in found {
                let flags = arg(rule, index).unwrap_or_else(|| panic!("{call} flags unchecked"));
                assert_eq!(flags["op"]["masked_eq"], 0x2000_0000, "{call}");
                assert_eq!(flags["val"], 0, "{call}");
            }
        }
        // setsockopt: only pinned (level, option) pairs, none of the dangerous ones.
        let forbidden = [
            (1, 26),
            (1, 50),
            (1, 51),
            (1, 52),
            (6, 23),
            (6, 30),
            (6, 31),
        ];
        for rule in rules.iter().filter(|r| r["syscall"] == "setsockopt") {
            let level = arg(rule, 1).expect("level pinned");
            let name = arg(rule, 2).expect("option pinned");
            assert_eq!(
                (level["op"].as_str(), name["op"].as_str()),
                (Some("eq"), Some("eq"))
            );
            let pair = (
                level["val"].as_u64().expect("level"),
                name["val"].as_u64().expect("option"),
            );
            assert!(!forbidden.contains(&pair), "setsockopt {pair:?}");
        }
        assert!(!allowed.contains(&"socketpair"), "socketpair");
        assert!(!allowed.contains(&"sendmmsg"), "sendmmsg");
    }
}
