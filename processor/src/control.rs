//! The processor's end of the control socket: connect, say hello with the protocol version,
//! receive the ring buffer fd and its geometry, then process metadata as it changes. The
//! messages themselves are `sonde_schema::control`'s; this module is only the socket side.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};
use sonde_schema::{
    channel,
    control::{
        ControlError, Hello, LoaderMessage, ProcessRecord, ProcessorMessage, SandboxState, Welcome,
    },
};

use crate::sandbox::SandboxReport;

/// What the loader says once the welcome is done, as the run loop consumes it.
#[derive(Debug)]
pub enum Update {
    Added(ProcessRecord),
    Removed(u32),
    KernelStats(Vec<(String, u64)>),
}

/// Connects to the loader's control socket (the loader checks this process's credentials).
pub fn connect_to(path: &Path) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating the control socket")?;
    let addr =
        UnixAddr::new(path).with_context(|| format!("control socket path {}", path.display()))?;
    connect(fd.as_raw_fd(), &addr).with_context(|| {
        format!(
            "connecting to the loader at {} (is sonde-loader running, and is this user allowed?)",
            path.display()
        )
    })?;
    Ok(fd)
}

/// Takes the control socket inherited from the loader (`--control-fd`, single-host mode: one
/// end of a `socketpair` the loader made for this process alone). Checked to be an open
/// `SOCK_SEQPACKET` socket, then marked close-on-exec so it reaches no other program.
pub fn inherited(fd: i32) -> Result<OwnedFd> {
    if fd < 3 {
        bail!("--control-fd {fd}: not an inherited descriptor");
    }
    // SAFETY: fcntl(F_GETFD) on an integer only reports whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("--control-fd {fd}: no such open descriptor");
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process alone by
    // its parent; nothing else in this process owns it, so ownership is taken exactly once.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let kind = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::SockType)
        .with_context(|| format!("--control-fd {fd}: not a socket"))?;
    if kind != SockType::SeqPacket {
        bail!("--control-fd {fd}: not a SOCK_SEQPACKET socket ({kind:?})");
    }
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .with_context(|| format!("--control-fd {fd}: setting close-on-exec"))?;
    Ok(owned)
}

/// Says hello with the sandbox this process applied and waits (bounded) for the welcome:
/// the ring buffer's geometry and its fd.
pub fn hello(conn: BorrowedFd<'_>, sandbox: &SandboxReport) -> Result<(Welcome, OwnedFd)> {
    ProcessorMessage::Hello(Hello {
        agent: concat!("sonde-processor ", env!("CARGO_PKG_VERSION")).to_string(),
        sandbox: Some(SandboxState {
            landlock: sandbox.landlock,
            seccomp_filters: u8::try_from(sandbox.seccomp_filters).unwrap_or(u8::MAX),
        }),
    })
    .send(conn)?;

    let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(Duration::from_secs(10)).unwrap_or(PollTimeout::MAX),
    )
    .context("waiting for the loader's welcome")?;
    if ready == 0 {
        bail!("the loader sent no welcome within 10 s");
    }
    let datagram = channel::recv(conn, 1).map_err(|source| ControlError::Recv {
        expecting: "welcome",
        source,
    })?;
    match LoaderMessage::decode(&datagram)? {
        // The codec checked that the welcome came with exactly its one fd.
        LoaderMessage::Welcome(welcome) => match datagram.fds.into_iter().next() {
            Some(ring_fd) => Ok((welcome, ring_fd)),
            None => bail!("the welcome came without the ring buffer fd"),
        },
        LoaderMessage::Refused(reason) => Err(ControlError::Refused { reason }.into()),
        other => Err(ControlError::Unexpected {
            expected: "welcome",
            got: other.name(),
        }
        .into()),
    }
}

/// Reads one update. A refusal (the loader ending this session) or a second welcome is an
/// error.
pub fn read_update(conn: BorrowedFd<'_>) -> Result<Update, ControlError> {
    let datagram = channel::recv(conn, 0).map_err(|source| ControlError::Recv {
        expecting: "update",
        source,
    })?;
    match LoaderMessage::decode(&datagram)? {
        LoaderMessage::ProcessAdded(p) => Ok(Update::Added(p)),
        LoaderMessage::ProcessRemoved(pid) => Ok(Update::Removed(pid)),
        LoaderMessage::KernelStats(counters) => Ok(Update::KernelStats(counters)),
        LoaderMessage::Refused(reason) => Err(ControlError::Refused { reason }),
        other @ LoaderMessage::Welcome(_) => Err(ControlError::Unexpected {
            expected: "update",
            got: other.name(),
        }),
    }
}

/// Says goodbye before a clean exit (best effort).
pub fn goodbye(conn: &OwnedFd, reason: &str) {
    let _ = ProcessorMessage::Goodbye(reason.to_string()).send(conn.as_fd());
}
