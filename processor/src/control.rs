//! The processor's end of the control socket: connect, say hello with the protocol version,
//! receive the ring buffer fd and its geometry, then process metadata as it changes.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    time::Duration,
};

use crate::sandbox::SandboxReport;
use anyhow::{Context, Result, anyhow, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};
use sonde_schema::{
    channel,
    control_capnp::{loader_message, processor_message},
};

/// The ring buffer as announced by the loader.
pub struct Welcome {
    pub ring_fd: OwnedFd,
    pub data_size: u32,
    pub page_size: u32,
}

/// A process the loader selected.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe_path: String,
    pub cmdline: Vec<String>,
    pub service_name: String,
    pub reason: String,
}

/// Messages after the welcome.
#[derive(Debug)]
pub enum Update {
    Added(ProcessInfo),
    Removed(u32),
    KernelStats(Vec<(String, u64)>),
}

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

pub fn hello(conn: BorrowedFd<'_>, sandbox: &SandboxReport) -> Result<Welcome> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut h = msg
            .init_root::<processor_message::Builder<'_>>()
            .init_hello();
        h.set_protocol_version(sonde_schema::control_capnp::PROTOCOL_VERSION);
        h.set_agent(concat!("sonde-processor ", env!("CARGO_PKG_VERSION")));
        let mut s = h.init_sandbox();
        s.set_landlock(sandbox.landlock);
        s.set_seccomp_filters(u8::try_from(sandbox.seccomp_filters).unwrap_or(u8::MAX));
    }
    channel::send(conn, &msg, &[]).map_err(|e| anyhow!("sending hello: {e}"))?;

    let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(Duration::from_secs(10)).unwrap_or(PollTimeout::MAX),
    )
    .context("waiting for the loader's welcome")?;
    if ready == 0 {
        bail!("the loader sent no welcome within 10 s");
    }
    let mut datagram = channel::recv(conn, 1).map_err(|e| anyhow!("reading welcome: {e}"))?;
    let (data_size, page_size, fd_index) = {
        let message = datagram.message().map_err(|e| anyhow!("{e}"))?;
        let root = message.get_root::<loader_message::Reader<'_>>()?;
        match root.which()? {
            loader_message::Which::Welcome(w) => {
                let w = w?;
                if w.get_protocol_version() != sonde_schema::control_capnp::PROTOCOL_VERSION {
                    bail!(
                        "loader speaks protocol {}, this processor speaks {}",
                        w.get_protocol_version(),
                        sonde_schema::control_capnp::PROTOCOL_VERSION
                    );
                }
                let rb = w.get_ring_buffer()?;
                (
                    rb.get_data_size(),
                    rb.get_page_size(),
                    rb.get_fd_index() as usize,
                )
            }
            loader_message::Which::Refused(why) => {
                bail!("the loader refused this processor: {}", why?.to_str()?)
            }
            _ => bail!("the loader's first message was not a welcome"),
        }
    };
    if fd_index >= datagram.fds.len() || datagram.fds.len() != 1 {
        bail!(
            "welcome references fd {fd_index} but carried {} fds",
            datagram.fds.len()
        );
    }
    let ring_fd = datagram.fds.swap_remove(fd_index);
    Ok(Welcome {
        ring_fd,
        data_size,
        page_size,
    })
}

/// Reads one update; Ok(None) for a message kind this processor ignores.
pub fn read_update(conn: BorrowedFd<'_>) -> Result<Option<Update>> {
    let datagram = channel::recv(conn, 0).map_err(|e| anyhow!("{e}"))?;
    let message = datagram.message().map_err(|e| anyhow!("{e}"))?;
    let root = message.get_root::<loader_message::Reader<'_>>()?;
    Ok(match root.which()? {
        loader_message::Which::ProcessAdded(p) => {
            let p = p?;
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String> {
                Ok(t?.to_string()?)
            };
            let mut cmdline = Vec::new();
            for a in p.get_cmdline()?.iter() {
                cmdline.push(a?.to_string()?);
            }
            Some(Update::Added(ProcessInfo {
                pid: p.get_pid(),
                exe_path: text(p.get_exe_path())?,
                cmdline,
                service_name: text(p.get_service_name())?,
                reason: text(p.get_reason())?,
            }))
        }
        loader_message::Which::ProcessRemoved(pid) => Some(Update::Removed(pid)),
        loader_message::Which::KernelStats(s) => {
            let mut out = Vec::new();
            for c in s?.get_counters()?.iter() {
                out.push((c.get_name()?.to_string()?, c.get_value()));
            }
            Some(Update::KernelStats(out))
        }
        loader_message::Which::Refused(why) => {
            bail!("the loader closed this session: {}", why?.to_str()?)
        }
        loader_message::Which::Welcome(_) => None,
    })
}

/// Says goodbye before a clean exit (best effort).
pub fn goodbye(conn: &OwnedFd, reason: &str) {
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<processor_message::Builder<'_>>()
        .set_goodbye(reason);
    let _ = channel::send(conn.as_fd(), &msg, &[]);
}
