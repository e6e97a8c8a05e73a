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
//! Single-host `sonde` started as root also leaves uid 0 once the programs are attached
//! ([`switch_user`]): it becomes `loader.user` (all four uids and gids, no supplementary
//! groups) and keeps exactly the capabilities above, as the split loader's systemd unit does.
//! Its `CAP_SETUID`/`CAP_SETGID` are pinned by a seccomp filter to the processor's ids
//! (`sandbox::setid_filter`): they cannot bring uid 0 back.
//!
//! Loading programs (`CAP_BPF`, `CAP_PERFMON`) is a start-up need only, even with `ebpf.tls`:
//! the OpenSSL uprobes are loaded at start-up, and attaching them to a process selected later
//! (a uprobe-multi link, `BPF_LINK_CREATE` on a program fd the loader holds) needs no
//! capability on Linux 6.18 (measured: created and fired with `CapEff` = `CAP_SYS_PTRACE`
//! alone, which reads the process's `/proc/<pid>/root`); a perf-event uprobe would need
//! `CAP_SYS_ADMIN`. A kernel that wants more refuses the link (logged, counted), and TLS
//! capture is off for that process. `CAP_SYS_ADMIN` is a start-up need only, and so is
//! `CAP_SYS_ADMIN`, which the loader uses only to mount tracefs where it is not mounted yet
//! (nothing is pinned, so bpffs is never needed); map updates on fds already held need no
//! capability (Linux ≥ 6.5). `CAP_NET_ADMIN` is a start-up need only and only with
//! `ebpf.context_propagation: headers` (creating the socket map, attaching the cgroup
//! `sock_ops`/`connect` and `sk_msg` programs); with the feature off it is neither asked for
//! nor used.

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
            "start-up only: load and attach the kernel programs (and load the OpenSSL uprobes)"
        }
        Capability::CAP_CHOWN => "start-up only: give the control socket to the processor",
        Capability::CAP_SYS_ADMIN => "start-up only, when tracefs is not mounted: mount it",
        Capability::CAP_NET_ADMIN => {
            "start-up only, with ebpf.context_propagation: headers: create the socket map and attach the cgroup sock_ops/connect and sk_msg programs"
        }
        _ => return None,
    })
}

/// The capabilities the loader keeps at run time (the same with or without `ebpf.tls`).
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

/// The user single-host `sonde` runs as after start-up (`loader.user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderUser {
    pub uid: u32,
    pub gid: u32,
}

impl LoaderUser {
    /// Resolves `loader.user` (a name or a numeric uid; gid: the user's primary group). It
    /// must exist and differ from the processor's uid: a process of the processor's uid could
    /// otherwise signal the loader and open its `/proc` files. `root` (uid 0) is the
    /// operator's explicit, insecure choice to stay uid 0; `--audit` flags it.
    pub fn resolve(user: &str, processor_uid: u32) -> Result<LoaderUser> {
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(uid.into())
                .with_context(|| format!("looking up loader.user {user:?}"))?
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
                .or((uid == 0).then_some((0, 0))),
            Err(_) => nix::unistd::User::from_name(user)
                .with_context(|| format!("looking up loader.user {user:?}"))?
                .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
        };
        let Some((uid, gid)) = found else {
            anyhow::bail!(
                "loader.user {user:?}: no such user. sonde leaves uid 0 after start-up for this \
                 user: create it (`useradd --system --no-create-home --shell /usr/sbin/nologin \
                 sonde-loader`, or the `u` line of deploy/systemd/sonde.sysusers) or set \
                 loader.user (SONDE_LOADER_USER) to an existing user of its own"
            );
        };
        if uid == processor_uid {
            anyhow::bail!(
                "loader.user {user:?} has the processor's uid {uid}: the loader needs a uid of its own"
            );
        }
        Ok(LoaderUser { uid, gid })
    }
}

/// Leaves uid 0 for `user`, keeping `keep` (already the only capabilities left, after
/// [`drop_to`]): `PR_SET_KEEPCAPS` across `setresuid`, then the effective set raised again
/// (the kernel clears it when the effective uid leaves 0). No supplementary groups remain.
/// Verifies the result: all four uids and gids are `user`'s, and the permitted set is `keep`.
pub fn switch_user(user: LoaderUser, keep: &CapsHashSet) -> Result<()> {
    let os = |what: &str, rc: libc::c_int| -> Result<()> {
        if rc < 0 {
            Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
        } else {
            Ok(())
        }
    };
    let before: CapsHashSet = caps::read(None, CapSet::Permitted)
        .context("reading permitted capabilities")?
        .intersection(keep)
        .copied()
        .collect();
    // SAFETY: plain system calls on integers (setgroups with a count of 0 reads no memory);
    // the loader is single-threaded here, so the per-thread credential calls cover the process.
    unsafe {
        os(
            "PR_SET_KEEPCAPS",
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
        )?;
        os("setgroups", libc::setgroups(0, std::ptr::null()))?;
        os("setresgid", libc::setresgid(user.gid, user.gid, user.gid))?;
        os("setresuid", libc::setresuid(user.uid, user.uid, user.uid))?;
        os(
            "clearing PR_SET_KEEPCAPS",
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
        )?;
    }
    let permitted =
        caps::read(None, CapSet::Permitted).context("reading permitted capabilities")?;
    caps::set(None, CapSet::Effective, &permitted).context("raising effective capabilities")?;
    let (r, e, s) = (
        nix::unistd::getresuid()?,
        nix::unistd::getresgid()?,
        nix::unistd::getgroups()?,
    );
    let uids = [r.real.as_raw(), r.effective.as_raw(), r.saved.as_raw()];
    let gids = [e.real.as_raw(), e.effective.as_raw(), e.saved.as_raw()];
    if uids != [user.uid; 3] || gids != [user.gid; 3] || !s.is_empty() || permitted != before {
        anyhow::bail!(
            "after switching to uid {} gid {}: uids {uids:?}, gids {gids:?}, groups {s:?}, permitted {permitted:?}",
            user.uid,
            user.gid
        );
    }
    Ok(())
}
