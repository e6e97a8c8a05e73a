//! Stop on SIGINT or SIGTERM: the handlers only set a flag, which the main loop polls (its
//! `poll`/`epoll_wait` returns `EINTR` when a signal arrives, so it notices at once).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installing a handler failed.
#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler")]
pub struct StopError {
    pub signal: Signal,
    #[source]
    pub source: nix::Error,
}

/// Installs the SIGINT and SIGTERM handlers. No `SA_RESTART`: blocking calls return `EINTR`.
pub fn install() -> Result<(), StopError> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // replaces no handler whose state anything relies on.
        unsafe { sigaction(signal, &action) }.map_err(|source| StopError { signal, source })?;
    }
    Ok(())
}

/// Asks the main loop to stop as a stop signal would (the supervisor giving up).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// True once SIGINT or SIGTERM has arrived (after [`install`]).
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_sets_the_flag() {
        install().expect("install");
        assert!(!requested());
        nix::sys::signal::raise(Signal::SIGTERM).expect("raise");
        assert!(requested());
    }
}
