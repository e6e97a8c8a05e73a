//! systemd readiness (`Type=notify`): `READY=1` on the datagram socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as `sd_notify(3)` sends it.
//!
//! Both binaries run under seccomp filters that forbid creating a Unix socket, and the
//! processor's Landlock ruleset scopes abstract sockets: so the socket is created and
//! connected early ([`Notifier::from_env`], before any sandbox), and the message later goes
//! out with a plain `write` on that connected socket, which neither layer restricts (Landlock
//! lets a datagram socket keep sending to the peer it was connected to before the ruleset).
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call is a no-op.

use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Connecting to `$NOTIFY_SOCKET` failed.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the notify socket {path:?} ($NOTIFY_SOCKET)")]
pub struct NotifyError {
    pub path: OsString,
    #[source]
    pub source: nix::Error,
}

/// The connected notify socket, if systemd (or a test) asked for readiness.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<OwnedFd>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` when it is set and not empty; otherwise a no-op notifier.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(path) if !path.is_empty() => Notifier::connect(path),
            _ => Ok(Notifier::default()),
        }
    }

    /// Connects to the notify socket at `path` (`@name`: abstract).
    pub fn connect(path: OsString) -> Result<Notifier, NotifyError> {
        let error = |source| NotifyError {
            path: path.clone(),
            source,
        };
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name),
            None => UnixAddr::new(bytes),
        }
        .map_err(error)?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(error)?;
        connect(fd.as_raw_fd(), &addr).map_err(error)?;
        Ok(Notifier { socket: Some(fd) })
    }

    /// True when there is a notify socket.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `READY=1` with a `STATUS=` line. Best effort: an error is returned for the
    /// caller to log, and the service runs on either way.
    pub fn ready(&self, status: &str) -> nix::Result<()> {
        self.send(&format!("READY=1\nSTATUS={status}\n"))
    }

    /// Sends one `sd_notify` message (newline-separated `KEY=value` lines).
    pub fn send(&self, message: &str) -> nix::Result<()> {
        let Some(fd) = &self.socket else {
            return Ok(());
        };
        let n = nix::unistd::write(fd, message.as_bytes())?;
        if n == message.len() {
            Ok(())
        } else {
            Err(nix::errno::Errno::EMSGSIZE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn ready_reaches_a_pathname_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("sonde-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::connect(path.clone().into_os_string()).expect("connect");
        assert!(notifier.is_active());
        notifier.ready("serving").expect("send");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving\n");
        let _ = std::fs::remove_dir_all(&dir);

        let name = format!("sonde-notify-test-{}", std::process::id());
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let notifier = Notifier::connect(format!("@{name}").into()).expect("connect abstract");
        notifier.ready("x").expect("send");
        let n = listener.recv(&mut buf).expect("recv");
        assert!(buf[..n].starts_with(b"READY=1\n"));
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let notifier = Notifier::default();
        assert!(!notifier.is_active());
        notifier.ready("x").expect("no-op");
    }
}
