//! The loader's end of the control socket: a `SOCK_SEQPACKET` listener whose peers must pass
//! an `SO_PEERCRED` check and a protocol version check before they receive any fd. The
//! messages themselves are `sonde_schema::control`'s; this module is only the socket side.

use std::{
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, getsockopt, listen,
        socket, sockopt::PeerCredentials,
    },
    unistd::{Gid, Uid, chown},
};
use sonde_schema::{
    channel,
    control::{ControlError, Hello, LoaderMessage, ProcessorMessage, Welcome},
};

use crate::identity::ProcessorIdentity;

/// Who may connect.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The allowed uids; None: any uid (then `gid` is always set).
    pub uids: Option<Vec<u32>>,
    /// When set, the peer's gid must match.
    pub gid: Option<u32>,
    /// When set (`processor.binary` configured), the peer's executable must be this file:
    /// (device, inode).
    pub exe: Option<(u64, u64)>,
    /// When set (`processor.cgroup` configured), the peer's cgroup must be this one or lie
    /// below it.
    pub cgroup: Option<String>,
}

/// A connected peer as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `/proc/<pid>/exe`, for the log and the status file.
    pub exe: Option<String>,
    /// The peer's cgroup (v2 path), for the log and the status file.
    pub cgroup: Option<String>,
}

/// Why a connection was refused before its hello: a fixed reason (aggregated in the log by
/// it) and the peer's details.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl PeerPolicy {
    /// The processor's policy: its uid (plus `allowed_uids`), and its gid as well when
    /// `processor.group` is configured (`check_group`); or any uid of its group.
    pub fn for_processor(
        identity: ProcessorIdentity,
        allowed_uids: &[u32],
        check_group: bool,
    ) -> PeerPolicy {
        match identity {
            ProcessorIdentity::User { uid, gid } => PeerPolicy {
                uids: Some(
                    [uid]
                        .into_iter()
                        .chain(allowed_uids.iter().copied())
                        .collect(),
                ),
                gid: check_group.then_some(gid),
                exe: None,
                cgroup: None,
            },
            ProcessorIdentity::AnyUserOfGroup { gid } => PeerPolicy {
                uids: None,
                gid: Some(gid),
                exe: None,
                cgroup: None,
            },
        }
    }

    /// Whether a peer in `cgroup` may connect: always when no cgroup is required.
    pub fn allows_cgroup(&self, cgroup: Option<&str>) -> bool {
        let Some(required) = &self.cgroup else {
            return true;
        };
        cgroup.is_some_and(|c| {
            c == required
                || c.strip_prefix(required.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        let uid_ok = self.uids.as_ref().is_none_or(|u| u.contains(&uid));
        let gid_ok = self.gid.is_none_or(|g| g == gid);
        uid_ok && gid_ok && (self.uids.is_some() || self.gid.is_some())
    }
}

/// The listening control socket.
pub struct ControlListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl ControlListener {
    /// Creates the socket at `path` so that only the processor can even connect: owned by its
    /// uid/gid with mode 0600, or, for any user of a group, by this process and that group
    /// with mode 0660. A missing parent directory is created (0755); an existing one (a
    /// systemd `RuntimeDirectory=`, a pod volume) is left as its owner set it.
    pub fn bind(path: &Path, identity: ProcessorIdentity) -> Result<ControlListener> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
        let (owner, mode) = match identity {
            ProcessorIdentity::User { uid, gid } => ((Some(uid), gid), 0o600),
            ProcessorIdentity::AnyUserOfGroup { gid } => ((None, gid), 0o660),
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("creating the control socket")?;
        let addr =
            UnixAddr::new(path).with_context(|| format!("socket path {}", path.display()))?;
        bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding {}", path.display()))?;
        chown(
            path,
            owner.0.map(Uid::from_raw),
            Some(Gid::from_raw(owner.1)),
        )
        .with_context(|| format!("chown {} to {:?}:{}", path.display(), owner.0, owner.1))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        listen(&fd, Backlog::new(4).context("backlog")?)
            .context("listening on the control socket")?;
        Ok(ControlListener {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Accepts one pending connection, if any, and authenticates it: `SO_PEERCRED` uid/gid
    /// against the policy, then (when the policy names one) the peer's executable, read from
    /// `/proc/<pid>/exe` while an `SO_PEERPIDFD` pidfd shows the peer still alive, so a
    /// recycled pid cannot lend its executable to a peer that has exited. A refused peer is
    /// told why (best effort) and its connection closed.
    pub fn accept(&self, policy: &PeerPolicy) -> Result<Option<(OwnedFd, Peer)>, Refusal> {
        let raw = match accept4(
            self.fd.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(raw) => raw,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => {
                return Err(Refusal {
                    reason: "accept failed",
                    detail: e.to_string(),
                });
            }
        };
        // SAFETY: accept4 returned a fresh fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let refuse_with = |reason: &'static str, detail: String| {
            refuse(conn.as_fd(), reason);
            Err(Refusal { reason, detail })
        };
        let cred = match getsockopt(&conn, PeerCredentials) {
            Ok(c) => c,
            Err(e) => return refuse_with("SO_PEERCRED failed", e.to_string()),
        };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let who = format!("pid {pid} uid {uid} gid {gid}");
        if !policy.allows(uid, gid) {
            return refuse_with(
                "peer credentials not allowed",
                format!(
                    "{who} (allowed uids {:?}, gid {:?})",
                    policy.uids, policy.gid
                ),
            );
        }
        let Ok(pid) = u32::try_from(pid) else {
            return refuse_with("peer credentials not allowed", format!("{who}: no pid"));
        };
        let pidfd = peer_pidfd(conn.as_fd());
        let exe_path = format!("/proc/{pid}/exe");
        let exe_id = std::fs::metadata(&exe_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let peer = Peer {
            pid,
            uid,
            gid,
            exe: std::fs::read_link(&exe_path)
                .ok()
                .map(|p| p.display().to_string()),
            cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|c| {
                    c.lines()
                        .find_map(|l| l.strip_prefix("0::"))
                        .map(str::to_string)
                }),
        };
        // Everything above was read from /proc/<pid>: it was this peer's only if the peer is
        // still alive now (a pid is not reused while its owner lives).
        if let Some(pidfd) = &pidfd
            && !pidfd_alive(pidfd.as_fd(), pid)
        {
            return refuse_with("peer exited during the check", who);
        }
        if let Some(expected) = policy.exe
            && (pidfd.is_none() || exe_id != Some(expected))
        {
            return refuse_with(
                "peer executable is not the processor binary",
                format!(
                    "{who} exe {}",
                    peer.exe.as_deref().unwrap_or("(unreadable)")
                ),
            );
        }
        if !policy.allows_cgroup(peer.cgroup.as_deref()) {
            return refuse_with(
                "peer is not in the processor's cgroup",
                format!(
                    "{who} cgroup {} (required {:?})",
                    peer.cgroup.as_deref().unwrap_or("(unreadable)"),
                    policy.cgroup
                ),
            );
        }
        Ok(Some((conn, peer)))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The processor's hello from its first datagram; a processor of another protocol version is
/// told why before the connection closes.
pub fn decode_hello(conn: BorrowedFd<'_>, datagram: &channel::Datagram) -> Result<Hello> {
    match ProcessorMessage::decode(datagram) {
        Ok(ProcessorMessage::Hello(hello)) => Ok(hello),
        Ok(other) => Err(ControlError::Unexpected {
            expected: "hello",
            got: other.name(),
        }
        .into()),
        Err(e @ ControlError::Version { .. }) => {
            refuse(conn, "protocol version mismatch");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The peer's pidfd (`SO_PEERPIDFD`, Linux 6.5+); None on older kernels.
fn peer_pidfd(conn: BorrowedFd<'_>) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the c_int on our stack and updates
    // `len`; the socket fd is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new pidfd in our table for us alone.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SO_PEERPIDFD` (not in every libc yet).
const SO_PEERPIDFD: libc::c_int = 77;

/// Whether the pidfd names `pid` and that process has not exited (a pidfd polls readable once
/// its process exits).
fn pidfd_alive(pidfd: BorrowedFd<'_>, pid: u32) -> bool {
    let named = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .and_then(|p| p.trim().parse::<i64>().ok())
        });
    if named != Some(i64::from(pid)) {
        return false;
    }
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// Hands the processor the HTTP event ring buffer: its fd and the geometry to map it.
pub fn send_welcome(
    conn: BorrowedFd<'_>,
    ring_fd: BorrowedFd<'_>,
    data_size: u32,
) -> Result<(), ControlError> {
    let welcome = Welcome {
        data_size,
        page_size: page_size(),
    };
    LoaderMessage::Welcome(welcome).send(conn, &[ring_fd])
}

/// Tells a peer why it is not served (best effort, never waiting: the connection closes
/// either way).
pub fn refuse(conn: BorrowedFd<'_>, why: &str) {
    if let Ok(bytes) = LoaderMessage::Refused(why.to_string()).encode() {
        let _ = channel::send_bytes_nonblocking(conn, &bytes, &[]);
    }
}

/// The page size the processor maps the ring buffer with (the kernel's, as this side sees it).
fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_policy_by_user_and_by_group() {
        let user = PeerPolicy {
            uids: Some(vec![1000, 1001]),
            gid: None,
            exe: None,
            cgroup: None,
        };
        assert!(user.allows(1000, 5) && user.allows(1001, 6));
        assert!(!user.allows(0, 0) && !user.allows(1002, 5));
        let user_and_group = PeerPolicy {
            uids: Some(vec![1000]),
            gid: Some(50),
            exe: None,
            cgroup: None,
        };
        assert!(user_and_group.allows(1000, 50));
        assert!(!user_and_group.allows(1000, 51));
        let any_of_group = PeerPolicy {
            uids: None,
            gid: Some(50),
            exe: None,
            cgroup: None,
        };
        assert!(any_of_group.allows(61184, 50) && any_of_group.allows(1, 50));
        assert!(!any_of_group.allows(61184, 51) && !any_of_group.allows(0, 0));
        // An empty policy admits nobody.
        let nobody = PeerPolicy {
            uids: None,
            gid: None,
            exe: None,
            cgroup: None,
        };
        assert!(!nobody.allows(1000, 1000));
    }

    #[test]
    fn peer_policy_for_the_processor() {
        let user = ProcessorIdentity::User { uid: 1000, gid: 50 };
        let p = PeerPolicy::for_processor(user, &[1001], false);
        assert_eq!((p.uids, p.gid), (Some(vec![1000, 1001]), None));
        let p = PeerPolicy::for_processor(user, &[], true);
        assert_eq!((p.uids, p.gid), (Some(vec![1000]), Some(50)));
        let group = ProcessorIdentity::AnyUserOfGroup { gid: 50 };
        let p = PeerPolicy::for_processor(group, &[1001], false);
        assert_eq!((p.uids, p.gid), (None, Some(50)));
    }

    #[test]
    fn a_required_cgroup_admits_itself_and_below_only() {
        let mut p =
            PeerPolicy::for_processor(ProcessorIdentity::AnyUserOfGroup { gid: 5 }, &[], true);
        assert!(p.allows_cgroup(None));
        p.cgroup = Some("/system.slice/sonde-processor.service".into());
        assert!(p.allows_cgroup(Some("/system.slice/sonde-processor.service")));
        assert!(p.allows_cgroup(Some("/system.slice/sonde-processor.service/inner")));
        assert!(!p.allows_cgroup(Some("/system.slice/sonde-processor.service2")));
        assert!(!p.allows_cgroup(Some("/user.slice/user-0.slice/session-1.scope")));
        assert!(!p.allows_cgroup(None));
    }
}
