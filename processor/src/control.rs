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
        CandidateRecord, ControlError, Hello, LoaderMessage, ProcessRecord, ProcessorMessage,
        SandboxState, Welcome,
    },
};

use crate::sandbox::SandboxReport;

/// What the loader says once the welcome is done, as the run loop consumes it.
#[derive(Debug)]
pub enum Update {
    Added(ProcessRecord),
    Removed(u32),
    KernelStats(Vec<(String, u64)>),
    /// A process the loader would capture if selected (a discovery selector with `k8s_*`
    /// fields bounds it): see `kube::select`.
    Candidate(CandidateRecord),
    CandidateRemoved(u32),
    /// Flow counts since the previous report (`network.enable`).
    FlowCounts(Vec<sonde_schema::control::FlowCount>),
    /// Resource usage of captured processes (`application_process`).
    ProcessUsage(Vec<sonde_schema::control::ProcessUsage>),
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

/// First and longest wait between connect attempts while the loader is not up.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// True for the errors of a loader that is not (yet, or no longer) listening: no socket file,
/// or one nobody accepts on. Anything else (permissions, a bad path) will not pass by itself.
fn loader_not_up(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<nix::Error>())
        .any(|e| {
            matches!(
                e,
                nix::Error::ENOENT | nix::Error::ECONNREFUSED | nix::Error::EAGAIN
            )
        })
}

/// `connect_to`, retried while the loader is not up (split deployments start the units in
/// any order, and a restarting loader is briefly gone): the wait doubles from 100 ms up to
/// 5 s between attempts, logged once when the waiting starts and once when it ends. The
/// process's default SIGTERM action still ends it while it waits.
pub fn connect_retrying(path: &Path) -> Result<OwnedFd> {
    let started = std::time::Instant::now();
    let mut delay = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match connect_to(path) {
            Ok(fd) => {
                if attempts > 1 {
                    tracing::info!(
                        socket = %path.display(),
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the loader is up; connected"
                    );
                }
                return Ok(fd);
            }
            Err(e) if loader_not_up(&e) => {
                if attempts == 1 {
                    tracing::warn!(
                        socket = %path.display(),
                        error = format!("{e:#}"),
                        max_retry_ms = RETRY_MAX.as_millis() as u64,
                        "the loader is not up yet; retrying the connect with backoff"
                    );
                } else {
                    tracing::debug!(
                        attempts,
                        error = format!("{e:#}"),
                        "still waiting for the loader"
                    );
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
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

/// Says hello with the sandbox this process applied and the sampling rule of injected traces
/// (`sampling::inject_bound`), and waits (bounded) for the welcome: the ring buffer's
/// geometry and its fd.
pub fn hello(
    conn: BorrowedFd<'_>,
    sandbox: &SandboxReport,
    inject_sampled_below: u64,
) -> Result<(Welcome, OwnedFd)> {
    ProcessorMessage::Hello(Hello {
        agent: concat!("sonde-processor ", env!("CARGO_PKG_VERSION")).to_string(),
        sandbox: Some(SandboxState {
            // The wire keeps a flag: at least the filesystem rules are enforced.
            landlock: sandbox.landlock.any(),
            seccomp_filters: u8::try_from(sandbox.seccomp_filters).unwrap_or(u8::MAX),
        }),
        inject_sampled_below: Some(inject_sampled_below),
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
        LoaderMessage::CandidateAdded(c) => Ok(Update::Candidate(c)),
        LoaderMessage::CandidateRemoved(pid) => Ok(Update::CandidateRemoved(pid)),
        LoaderMessage::FlowCounts(flows) => Ok(Update::FlowCounts(flows)),
        LoaderMessage::ProcessUsage(usage) => Ok(Update::ProcessUsage(usage)),
        LoaderMessage::Refused(reason) => Err(ControlError::Refused { reason }),
        other @ LoaderMessage::Welcome(_) => Err(ControlError::Unexpected {
            expected: "update",
            got: other.name(),
        }),
    }
}

/// Sends the processor's requests (selections and narrowings), at most `MAX_NARROW_PIDS`
/// pids per message.
pub fn send_requests(conn: BorrowedFd<'_>, messages: Vec<ProcessorMessage>) -> Result<()> {
    for m in messages {
        m.send(conn)
            .with_context(|| format!("sending a {} to the loader", m.name()))?;
    }
    Ok(())
}

/// Says goodbye before a clean exit (best effort).
pub fn goodbye(conn: &OwnedFd, reason: &str) {
    let _ = ProcessorMessage::Goodbye(reason.to_string()).send(conn.as_fd());
}
