//! Framing of the control protocol: exactly one capnp message per `SOCK_SEQPACKET` datagram,
//! with any file descriptors in the same datagram's `SCM_RIGHTS` (capnp-rust cannot carry fds).
//! Both sides send and receive through this module, so size and fd-count limits are enforced
//! identically; `control` turns the bytes into typed messages.

use std::prelude::rust_2024::*;
use std::{
    io::IoSliceMut,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Largest datagram either side sends or accepts. Every message the `control` codec builds
/// stays well under it (its field limits are sized for that, and a unit test checks).
pub const MAX_MESSAGE_BYTES: usize = 65536;
/// Most fds one datagram may carry.
pub const MAX_FDS: usize = 4;

/// Errors on the control channel (framing and the socket itself; message content is
/// `control::ControlError`'s).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed the connection.
    #[error("peer closed the control connection")]
    Closed,
    /// A system call failed.
    #[error("control socket I/O")]
    Io(#[source] nix::Error),
    /// The datagram was larger than `MAX_MESSAGE_BYTES` or its fd array was cut.
    #[error("control message truncated (limit {MAX_MESSAGE_BYTES} bytes, {MAX_FDS} fds)")]
    Truncated,
    /// More fds than allowed, or fds where none were expected.
    #[error("control message carried {0} unexpected fds")]
    UnexpectedFds(usize),
    /// A non-blocking send or receive found the socket's queue full or empty.
    #[error("control socket would block")]
    WouldBlock,
}

/// Sends one message with `fds` attached.
pub fn send<A: capnp::message::Allocator>(
    sock: BorrowedFd<'_>,
    message: &capnp::message::Builder<A>,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    send_bytes(
        sock,
        &capnp::serialize::write_message_to_words(message),
        fds,
    )
}

/// Sends one already serialized message (`control`'s `encode` output) with `fds` attached.
pub fn send_bytes(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    send_bytes_flags(sock, bytes, fds, MsgFlags::empty())
}

/// `send_bytes` that never waits (`MSG_DONTWAIT`): a full queue is `ChannelError::WouldBlock`,
/// so the caller decides how long a peer may stay behind.
pub fn send_bytes_nonblocking(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    send_bytes_flags(sock, bytes, fds, MsgFlags::MSG_DONTWAIT)
}

fn send_bytes_flags(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
) -> Result<(), ChannelError> {
    if bytes.len() > MAX_MESSAGE_BYTES || fds.len() > MAX_FDS {
        return Err(ChannelError::Truncated);
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    match sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL | flags,
        None,
    ) {
        Ok(_) => {}
        Err(nix::errno::Errno::EAGAIN) => return Err(ChannelError::WouldBlock),
        Err(e) => return Err(ChannelError::Io(e)),
    }
    Ok(())
}

/// A received datagram: the capnp bytes and the fds that came with it (close-on-exec).
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Datagram {
    /// Parses the bytes as a capnp message with conservative reader limits.
    pub fn message(
        &self,
    ) -> Result<capnp::message::Reader<capnp::serialize::OwnedSegments>, capnp::Error> {
        let mut options = capnp::message::ReaderOptions::new();
        options
            .traversal_limit_in_words(Some(MAX_MESSAGE_BYTES / 8))
            .nesting_limit(16);
        capnp::serialize::read_message(&mut &self.bytes[..], options)
    }
}

/// Receives one datagram, accepting at most `max_fds` fds. Fds are received with
/// `MSG_CMSG_CLOEXEC`, so none leaks into a child process.
pub fn recv(sock: BorrowedFd<'_>, max_fds: usize) -> Result<Datagram, ChannelError> {
    recv_flags(sock, max_fds, MsgFlags::empty())
}

/// `recv` that never waits (`MSG_DONTWAIT`): nothing queued is `ChannelError::WouldBlock`.
pub fn recv_nonblocking(sock: BorrowedFd<'_>, max_fds: usize) -> Result<Datagram, ChannelError> {
    recv_flags(sock, max_fds, MsgFlags::MSG_DONTWAIT)
}

fn recv_flags(
    sock: BorrowedFd<'_>,
    max_fds: usize,
    flags: MsgFlags,
) -> Result<Datagram, ChannelError> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return Err(ChannelError::WouldBlock),
            Err(e) => return Err(ChannelError::Io(e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = c {
                    for fd in received {
                        // SAFETY: the kernel just installed this fd in our table for us; nothing
                        // else owns it, so wrapping it transfers ownership exactly once.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(ChannelError::Truncated);
    }
    if len == 0 && fds.is_empty() {
        return Err(ChannelError::Closed);
    }
    if fds.len() > max_fds {
        return Err(ChannelError::UnexpectedFds(fds.len()));
    }
    buf.truncate(len);
    Ok(Datagram { bytes: buf, fds })
}
