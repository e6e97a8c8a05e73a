//! Capability handling: the loader keeps only what its run-time phase needs, and a spawned
//! processor starts with nothing at all.
//!
//! Run-time needs of the loader (after the programs are attached):
//! * `CAP_SYS_PTRACE` — read `/proc/<pid>/exe` and `/proc/<pid>/fd/*` of other users' processes
//!   (process selection by executable and by port).
//! * `CAP_DAC_READ_SEARCH` — traverse `/proc/<pid>/fd` directories owned by other users.
//! * Single-host mode only: `CAP_SETUID`, `CAP_SETGID` (start the processor as its user after a
//!   crash), `CAP_SETPCAP` (empty the child's bounding set before exec) and `CAP_KILL` (stop a
//!   processor running under another uid).
//!
//! Loading programs (`CAP_BPF`, `CAP_PERFMON`) is a start-up need only, and so is
//! `CAP_SYS_ADMIN`, which the loader uses only to mount tracefs where it is not mounted yet
//! (nothing is pinned, so bpffs is never needed); map updates on fds already held need no
//! capability (Linux ≥ 6.5).

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// Why the loader may hold `cap`, for logs and `--audit`; None for a capability it never
/// needs.
pub fn reason(cap: Capability) -> Option<&'static str> {
    Some(match cap {
        Capability::CAP_SYS_PTRACE => {
            "read /proc/<pid>/exe and /proc/<pid>/fd of other users' processes (selection by executable and port)"
        }
        Capability::CAP_DAC_READ_SEARCH => {
            "traverse other users' /proc/<pid>/fd; read root-only tracefs format files at start-up"
        }
        Capability::CAP_SETUID | Capability::CAP_SETGID => {
            "single-host mode: start and restart the processor as its user"
        }
        Capability::CAP_SETPCAP => {
            "drop capabilities from the bounding set (the loader's after start-up, the processor's before exec)"
        }
        Capability::CAP_KILL => "single-host mode: stop a processor running under another uid",
        Capability::CAP_BPF | Capability::CAP_PERFMON => {
            "start-up only: load and attach the kernel programs"
        }
        Capability::CAP_CHOWN => "start-up only: give the control socket to the processor",
        Capability::CAP_SYS_ADMIN => "start-up only, when tracefs is not mounted: mount it",
        _ => return None,
    })
}

/// The capabilities the loader keeps at run time.
pub fn runtime_capabilities(spawns_processor: bool) -> CapsHashSet {
    let mut keep: CapsHashSet = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH]
        .into_iter()
        .collect();
    if spawns_processor {
        keep.extend([
            Capability::CAP_SETUID,
            Capability::CAP_SETGID,
            Capability::CAP_KILL,
            Capability::CAP_SETPCAP,
        ]);
    }
    keep
}

/// Drops every capability not in `keep` from the effective, permitted, inheritable, ambient
/// and bounding sets. Returns the kept set (as held) for the log.
pub fn drop_to(keep: &CapsHashSet) -> Result<Vec<String>> {
    let permitted =
        caps::read(None, CapSet::Permitted).context("reading permitted capabilities")?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    // Bounding first: dropping from it needs CAP_SETPCAP, which goes away below.
    for cap in caps::all() {
        if !kept.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &kept).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting permitted capabilities")?;
    let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    names.sort();
    Ok(names)
}
