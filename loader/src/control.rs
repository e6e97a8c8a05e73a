//! The loader's end of the control socket: a `SOCK_SEQPACKET` listener whose peers must pass
//! an `SO_PEERCRED` check and a protocol version check before they receive any fd. The
//! messages themselves are `sonde_schema::control`'s; this module is only the socket side.

use std::{
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
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
            },
            ProcessorIdentity::AnyUserOfGroup { gid } => PeerPolicy {
                uids: None,
                gid: Some(gid),
            },
        }
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

    /// Accepts one pending connection, if any, and authenticates it.
    pub fn accept(&self, policy: &PeerPolicy) -> Result<Option<(OwnedFd, u32, u32)>> {
        let raw = match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => raw,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e).context("accept on the control socket"),
        };
        // SAFETY: accept4 returned a fresh fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let cred = getsockopt(&conn, PeerCredentials).context("SO_PEERCRED")?;
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        if !policy.allows(uid, gid) {
            refuse(conn.as_fd(), "peer credentials not allowed");
            bail!(
                "refused control connection from pid {pid} uid {uid} gid {gid}: not in the allowed uids {:?} / gid {:?}",
                policy.uids,
                policy.gid
            );
        }
        Ok(Some((conn, pid as u32, uid)))
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

/// Waits (bounded) for the processor's hello; a processor of another protocol version is told
/// why before the connection closes.
pub fn read_hello(conn: BorrowedFd<'_>) -> Result<Hello> {
    let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(Duration::from_secs(5)).unwrap_or(PollTimeout::MAX),
    )
    .context("waiting for hello")?;
    if ready == 0 {
        bail!("processor sent no hello within 5 s");
    }
    let datagram = channel::recv(conn, 0).map_err(|source| ControlError::Recv {
        expecting: "hello",
        source,
    })?;
    match ProcessorMessage::decode(&datagram) {
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

/// Tells a peer why it is not served (best effort: the connection closes either way).
fn refuse(conn: BorrowedFd<'_>, why: &str) {
    let _ = LoaderMessage::Refused(why.to_string()).send(conn, &[]);
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
        };
        assert!(user.allows(1000, 5) && user.allows(1001, 6));
        assert!(!user.allows(0, 0) && !user.allows(1002, 5));
        let user_and_group = PeerPolicy {
            uids: Some(vec![1000]),
            gid: Some(50),
        };
        assert!(user_and_group.allows(1000, 50));
        assert!(!user_and_group.allows(1000, 51));
        let any_of_group = PeerPolicy {
            uids: None,
            gid: Some(50),
        };
        assert!(any_of_group.allows(61184, 50) && any_of_group.allows(1, 50));
        assert!(!any_of_group.allows(61184, 51) && !any_of_group.allows(0, 0));
        // An empty policy admits nobody.
        let nobody = PeerPolicy {
            uids: None,
            gid: None,
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
}
