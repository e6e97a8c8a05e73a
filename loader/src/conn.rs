//! One control connection as the serve loop drives it: never blocking. Sends use
//! `MSG_DONTWAIT`; what the peer's queue cannot take waits in a bounded queue of its own and
//! goes out when the socket is writable again. A peer that leaves that queue undrained past
//! [`SEND_DEADLINE`] or lets it grow past [`MAX_QUEUED`] has stopped reading; one that sends
//! more than [`MAX_MESSAGES_PER_SECOND`] floods. Either is a [`Violation`]: the caller closes
//! the connection (and, in single-host mode, has the processor killed and restarted).

use std::{
    collections::VecDeque,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

use sonde_schema::{
    channel::{self, ChannelError, Datagram},
    control::{ControlError, LoaderMessage},
};

/// How long queued messages may wait for a peer that does not read.
pub const SEND_DEADLINE: Duration = Duration::from_secs(2);
/// Messages queued beyond what the socket holds; more means the peer stopped reading.
pub const MAX_QUEUED: usize = 4096;
/// Messages a processor may send per second. A processor narrows rarely and says hello and
/// goodbye once; anything near this is a flood.
pub const MAX_MESSAGES_PER_SECOND: u32 = 200;
/// Messages read per wake-up, so one peer cannot keep the loop to itself.
pub const MAX_READS_PER_WAKE: usize = 32;

/// Why a connection must be closed for the peer's behaviour (not merely because it left).
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error(
        "the processor stopped reading: {queued} messages waited more than {} ms",
        SEND_DEADLINE.as_millis()
    )]
    Stalled { queued: usize },
    #[error("the processor stopped reading: more than {MAX_QUEUED} messages queued")]
    QueueFull,
    #[error(
        "the processor flooded the control socket: over {MAX_MESSAGES_PER_SECOND} messages in one second"
    )]
    Flood,
}

/// Why a send or receive ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// A non-blocking control connection with its outgoing queue and receive budget.
pub struct Conn {
    fd: OwnedFd,
    queue: VecDeque<Vec<u8>>,
    /// When the oldest queued message was queued.
    stalled_since: Option<Instant>,
    window_start: Instant,
    window_messages: u32,
}

impl Conn {
    /// Wraps a connected socket, setting `O_NONBLOCK` on it as well (belt and braces: every
    /// call also passes `MSG_DONTWAIT`).
    pub fn new(fd: OwnedFd) -> Conn {
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Conn {
            fd,
            queue: VecDeque::new(),
            stalled_since: None,
            window_start: Instant::now(),
            window_messages: 0,
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether messages wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Sends `message` (no fds), or queues it behind earlier ones.
    pub fn send(&mut self, message: &LoaderMessage, now: Instant) -> Result<(), ConnError> {
        let bytes = message.encode()?;
        if self.queue.is_empty() {
            match channel::send_bytes_nonblocking(self.fd.as_fd(), &bytes, &[]) {
                Ok(()) => return Ok(()),
                Err(ChannelError::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.queue.len() >= MAX_QUEUED {
            return Err(Violation::QueueFull.into());
        }
        self.queue.push_back(bytes);
        self.stalled_since.get_or_insert(now);
        Ok(())
    }

    /// Sends what is queued, as far as the socket takes it; then checks the deadline.
    pub fn flush(&mut self, now: Instant) -> Result<(), ConnError> {
        while let Some(bytes) = self.queue.front() {
            match channel::send_bytes_nonblocking(self.fd.as_fd(), bytes, &[]) {
                Ok(()) => {
                    self.queue.pop_front();
                    // Progress: the deadline runs from now for what is left.
                    self.stalled_since = (!self.queue.is_empty()).then_some(now);
                }
                Err(ChannelError::WouldBlock) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.check_deadline(now)
    }

    /// A peer whose queue made no progress for `SEND_DEADLINE` has stopped reading.
    pub fn check_deadline(&self, now: Instant) -> Result<(), ConnError> {
        match self.stalled_since {
            Some(since) if now.duration_since(since) > SEND_DEADLINE => Err(Violation::Stalled {
                queued: self.queue.len(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Receives one datagram without waiting: None when nothing is queued. Counts it against
    /// the per-second budget.
    pub fn recv(&mut self, now: Instant) -> Result<Option<Datagram>, ConnError> {
        let datagram = match channel::recv_nonblocking(self.fd.as_fd(), 0) {
            Ok(d) => d,
            Err(ChannelError::WouldBlock) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_messages = 0;
        }
        self.window_messages += 1;
        if self.window_messages > MAX_MESSAGES_PER_SECOND {
            return Err(Violation::Flood.into());
        }
        Ok(Some(datagram))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn pair() -> (Conn, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        (Conn::new(a), b)
    }

    #[test]
    fn a_peer_that_does_not_read_is_a_violation_after_the_deadline() {
        let (mut conn, _peer) = pair();
        let start = Instant::now();
        let msg = LoaderMessage::ProcessRemoved(1);
        // Fill the socket, then the queue starts.
        let mut sent = 0;
        while !conn.wants_write() {
            conn.send(&msg, start).expect("send");
            sent += 1;
            assert!(sent < 100_000, "the socket never filled");
        }
        conn.flush(start).expect("within the deadline");
        let late = start + SEND_DEADLINE + Duration::from_millis(1);
        assert!(matches!(
            conn.flush(late),
            Err(ConnError::Violation(Violation::Stalled { .. }))
        ));
    }

    #[test]
    fn a_flood_is_a_violation() {
        let (mut conn, peer) = pair();
        let bytes = sonde_schema::control::ProcessorMessage::Goodbye("x".into())
            .encode()
            .expect("encode");
        let now = Instant::now();
        let mut result = Ok(None);
        for _ in 0..=MAX_MESSAGES_PER_SECOND {
            channel::send_bytes(peer.as_fd(), &bytes, &[]).expect("peer send");
            result = conn.recv(now);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(
            result,
            Err(ConnError::Violation(Violation::Flood))
        ));
        // Nothing queued: None, not an error.
        let (mut quiet, _p) = pair();
        assert!(matches!(quiet.recv(now), Ok(None)));
    }
}
