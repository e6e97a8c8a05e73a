//! The processor's refusal to run with privilege: not as uid 0, and with every capability set
//! (effective, permitted, inheritable, ambient) empty. Read from `/proc/self/status` so the
//! check needs no capability syscalls. Also the first thing `main` does: the process is made
//! non-dumpable, so its memory and environment stay out of reach of same-uid processes.

use sonde_plumbing::proc_status::{ProcStatus, StatusError};

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
    #[error("PR_SET_DUMPABLE 0 failed: {0}")]
    Dumpable(nix::Error),
    #[error("checking this process's privileges")]
    Status(#[from] StatusError),
}

/// `PR_SET_DUMPABLE 0`, before the configuration (and with it any OTLP header) is read: the
/// kernel then treats this process as root-owned for `/proc/<pid>/{environ,mem,maps,fd,…}` and
/// `ptrace`, so another process of the same uid (a compromised neighbour daemon, a local user
/// sharing the uid) can neither read its environment or memory nor attach to it, with or
/// without Yama. It also disables core dumps, which would hold the same secrets.
pub fn make_undumpable() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_dumpable(false).map_err(PrivilegeError::Dumpable)
}

/// Whether this process is dumpable (`PR_GET_DUMPABLE`; `sandbox::apply` reads it before
/// seccomp, which allows no `prctl` but `PR_SET_NAME`).
pub fn is_dumpable() -> bool {
    nix::sys::prctl::get_dumpable().unwrap_or(true)
}

/// Checks this process; returns its status for the start-up log.
pub fn ensure_unprivileged() -> Result<ProcStatus, PrivilegeError> {
    let uid = nix::unistd::getuid().as_raw();
    let euid = nix::unistd::geteuid().as_raw();
    if uid == 0 || euid == 0 {
        return Err(PrivilegeError::Root { uid, euid });
    }
    let status = ProcStatus::of_self()?;
    refuse_capabilities(&status)?;
    Ok(status)
}

/// Fails when any capability set but the bounding set is non-empty, naming the sets held.
fn refuse_capabilities(status: &ProcStatus) -> Result<(), PrivilegeError> {
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
    if held.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Capabilities(held.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tx\nTgid:\t7\nPPid:\t1\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t10\n";

    #[test]
    fn make_undumpable_clears_the_dumpable_flag() {
        // In a thread of the test process it changes the whole process, which is harmless here.
        make_undumpable().expect("PR_SET_DUMPABLE");
        assert!(!is_dumpable());
    }

    #[test]
    fn parses_status_fields() {
        let s = ProcStatus::parse(STATUS).expect("parse");
        assert_eq!(s.cap_bnd, 0x1ff_ffff_ffff);
        assert_eq!(s.cap_eff, 0);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, Some(2));
        assert_eq!(s.seccomp_filters, Some(10));
    }

    #[test]
    fn a_full_bounding_set_is_fine_any_other_set_is_refused() {
        let s = ProcStatus::parse(STATUS).expect("parse");
        refuse_capabilities(&s).expect("only the bounding set");
        let held = STATUS
            .replace("CapInh:\t0000000000000000", "CapInh:\t0000000000000400")
            .replace("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000400");
        let err = refuse_capabilities(&ProcStatus::parse(&held).expect("parse"))
            .expect_err("capabilities held");
        assert!(
            err.to_string()
                .contains("CapInh=0000000000000400 CapAmb=0000000000000400"),
            "{err}"
        );
    }
}
