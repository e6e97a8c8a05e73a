//! The processor's refusal to run with privilege: not as uid 0, and with every capability set
//! (effective, permitted, inheritable, ambient) empty. Read from `/proc/self/status` so the
//! check needs no capability syscalls.

use std::fs;

/// Why the processor refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "sonde-processor refuses to run as root (uid {uid}, euid {euid}); start it as an unprivileged user (single-host mode does this for you)"
    )]
    Root { uid: u32, euid: u32 },
    #[error(
        "sonde-processor refuses to run holding capabilities: {0}; drop them all (capabilities.drop: [ALL], CapabilityBoundingSet=)"
    )]
    Capabilities(String),
    #[error("cannot read /proc/self/status: {0}")]
    Status(std::io::Error),
}

/// Capability, NNP and seccomp fields of a `/proc/<pid>/status` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCaps {
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// Seccomp mode (2: filters); None when the kernel does not report it.
    pub seccomp: Option<u32>,
    pub seccomp_filters: Option<u32>,
}

pub fn parse_status(text: &str) -> StatusCaps {
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let field = |name: &str| {
        value(name)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    let decimal = |name: &str| value(name).and_then(|v| v.parse().ok());
    StatusCaps {
        seccomp: decimal("Seccomp:"),
        seccomp_filters: decimal("Seccomp_filters:"),
        cap_inh: field("CapInh:"),
        cap_prm: field("CapPrm:"),
        cap_eff: field("CapEff:"),
        cap_bnd: field("CapBnd:"),
        cap_amb: field("CapAmb:"),
        no_new_privs: field("NoNewPrivs:") == 1,
    }
}

/// Checks this process; returns its capability status for the start-up log.
pub fn ensure_unprivileged() -> Result<StatusCaps, PrivilegeError> {
    let uid = nix::unistd::getuid().as_raw();
    let euid = nix::unistd::geteuid().as_raw();
    if uid == 0 || euid == 0 {
        return Err(PrivilegeError::Root { uid, euid });
    }
    let status =
        parse_status(&fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Status)?);
    let held: Vec<String> = [
        ("CapEff", status.cap_eff),
        ("CapPrm", status.cap_prm),
        ("CapInh", status.cap_inh),
        ("CapAmb", status.cap_amb),
    ]
    .iter()
    .filter(|(_, v)| *v != 0)
    .map(|(n, v)| format!("{n}={v:016x}"))
    .collect();
    if !held.is_empty() {
        return Err(PrivilegeError::Capabilities(held.join(" ")));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let s = parse_status(
            "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t10\n",
        );
        assert_eq!(s.cap_bnd, 0x1ff_ffff_ffff);
        assert_eq!(s.cap_eff, 0);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, Some(2));
        assert_eq!(s.seccomp_filters, Some(10));
    }
}
