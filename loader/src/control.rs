//! The loader's end of the control socket: a `SOCK_SEQPACKET` listener whose peers must pass
//! an `SO_PEERCRED` check and a protocol version check before they receive any fd.

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
    control_capnp::{loader_message, processor_message},
};

use crate::{ProcessorIdentity, selection::ProcessMeta};

/// Who may connect.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The allowed uids; None: any uid (then `gid` is always set).
    pub uids: Option<Vec<u32>>,
    /// When set, the peer's gid must match.
    pub gid: Option<u32>,
}

impl PeerPolicy {
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
            let _ = send_refusal(conn.as_fd(), "peer credentials not allowed");
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

/// A message from the processor after its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProcessor {
    Narrow(Vec<u32>),
    Goodbye(String),
}

/// Decodes a post-hello message: a narrowing request (size-checked) or a goodbye.
pub fn read_processor_message(datagram: &channel::Datagram) -> Result<FromProcessor> {
    if !datagram.fds.is_empty() {
        bail!("the processor sent file descriptors");
    }
    let message = datagram.message().map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = message.get_root::<processor_message::Reader<'_>>()?;
    match root.which()? {
        processor_message::Which::Goodbye(r) => {
            Ok(FromProcessor::Goodbye(r?.to_string().unwrap_or_default()))
        }
        processor_message::Which::Narrow(n) => {
            let pids = n?.get_stop_pids()?;
            if pids.len() > sonde_schema::control_capnp::MAX_NARROW_PIDS {
                bail!("narrowing request with {} pids", pids.len());
            }
            Ok(FromProcessor::Narrow(pids.iter().collect()))
        }
        processor_message::Which::Hello(_) => bail!("a second hello"),
    }
}

/// What a processor says about itself in its Hello.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HelloInfo {
    pub agent: String,
    /// Reported sandbox; None from a processor that does not report one.
    pub landlock: Option<bool>,
    pub seccomp_filters: Option<u8>,
}

/// Waits (bounded) for the processor's Hello and checks its protocol version.
pub fn read_hello(conn: BorrowedFd<'_>) -> Result<HelloInfo> {
    let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(Duration::from_secs(5)).unwrap_or(PollTimeout::MAX),
    )
    .context("waiting for hello")?;
    if ready == 0 {
        bail!("processor sent no hello within 5 s");
    }
    let datagram = channel::recv(conn, 0).map_err(|e| anyhow::anyhow!("reading hello: {e}"))?;
    let message = datagram.message().map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = message.get_root::<processor_message::Reader<'_>>()?;
    let processor_message::Which::Hello(hello) = root.which()? else {
        bail!("first message was not a hello");
    };
    let hello = hello?;
    let version = hello.get_protocol_version();
    if version != sonde_schema::control_capnp::PROTOCOL_VERSION {
        let _ = send_refusal(conn, "protocol version mismatch");
        bail!(
            "processor speaks protocol {version}, loader speaks {}",
            sonde_schema::control_capnp::PROTOCOL_VERSION
        );
    }
    let agent = hello.get_agent()?.to_string().unwrap_or_default();
    let (landlock, seccomp_filters) = if hello.has_sandbox() {
        let s = hello.get_sandbox()?;
        (Some(s.get_landlock()), Some(s.get_seccomp_filters()))
    } else {
        (None, None)
    };
    Ok(HelloInfo {
        agent,
        landlock,
        seccomp_filters,
    })
}

fn send_refusal(conn: BorrowedFd<'_>, why: &str) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<loader_message::Builder<'_>>()
        .set_refused(why);
    channel::send(conn, &msg, &[]).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn send_welcome(conn: BorrowedFd<'_>, ring_fd: BorrowedFd<'_>, data_size: u32) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut welcome = msg
            .init_root::<loader_message::Builder<'_>>()
            .init_welcome();
        welcome.set_protocol_version(sonde_schema::control_capnp::PROTOCOL_VERSION);
        let mut rb = welcome.init_ring_buffer();
        rb.set_fd_index(0);
        rb.set_data_size(data_size);
        rb.set_page_size(page_size());
    }
    channel::send(conn, &msg, &[ring_fd]).map_err(|e| anyhow::anyhow!("sending welcome: {e}"))
}

pub fn send_process_added(conn: BorrowedFd<'_>, meta: &ProcessMeta) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut p = msg
            .init_root::<loader_message::Builder<'_>>()
            .init_process_added();
        p.set_pid(meta.pid);
        p.set_exe_path(truncate(&meta.exe_path, 4096));
        p.set_service_name(truncate(&meta.service_name, 256));
        p.set_reason(&meta.reason);
        // Bounded so a process with a huge command line cannot exceed the datagram limit.
        let args: Vec<&str> = meta
            .cmdline
            .iter()
            .take(64)
            .map(|a| truncate(a, 256))
            .collect();
        let mut list = p.init_cmdline(args.len() as u32);
        for (i, a) in args.iter().enumerate() {
            list.set(i as u32, *a);
        }
    }
    channel::send(conn, &msg, &[]).map_err(|e| anyhow::anyhow!("sending process {}: {e}", meta.pid))
}

pub fn send_process_removed(conn: BorrowedFd<'_>, pid: u32) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<loader_message::Builder<'_>>()
        .set_process_removed(pid);
    channel::send(conn, &msg, &[]).map_err(|e| anyhow::anyhow!("sending removal of {pid}: {e}"))
}

pub fn send_kernel_stats(conn: BorrowedFd<'_>, counters: &[(&str, u64)]) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let stats = msg
            .init_root::<loader_message::Builder<'_>>()
            .init_kernel_stats();
        let mut list = stats.init_counters(counters.len() as u32);
        for (i, (name, value)) in counters.iter().enumerate() {
            let mut c = list.reborrow().get(i as u32);
            c.set_name(*name);
            c.set_value(*value);
        }
    }
    channel::send(conn, &msg, &[]).map_err(|e| anyhow::anyhow!("sending kernel stats: {e}"))
}

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

pub fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(build: impl FnOnce(processor_message::Builder<'_>)) -> channel::Datagram {
        let mut msg = capnp::message::Builder::new_default();
        build(msg.init_root::<processor_message::Builder<'_>>());
        channel::Datagram {
            bytes: capnp::serialize::write_message_to_words(&msg),
            fds: Vec::new(),
        }
    }

    #[test]
    fn processor_messages_after_hello() {
        let narrow = datagram(|m| {
            let mut p = m.init_narrow().init_stop_pids(2);
            p.set(0, 10);
            p.set(1, 20);
        });
        assert_eq!(
            read_processor_message(&narrow).unwrap(),
            FromProcessor::Narrow(vec![10, 20])
        );
        let too_many = datagram(|m| {
            m.init_narrow()
                .init_stop_pids(sonde_schema::control_capnp::MAX_NARROW_PIDS + 1);
        });
        assert!(read_processor_message(&too_many).is_err());
        let bye = datagram(|mut m| m.set_goodbye("stopping"));
        assert_eq!(
            read_processor_message(&bye).unwrap(),
            FromProcessor::Goodbye("stopping".into())
        );
        let hello = datagram(|m| {
            m.init_hello();
        });
        assert!(read_processor_message(&hello).is_err());
    }

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
}
