//! The unprivileged phase: the event loop the loader runs after [`crate::start`], under its
//! run-time capabilities and seccomp policy, until SIGINT/SIGTERM. It serves the control
//! socket, keeps the capture in step with process notices and periodic `/proc` rescans,
//! forwards the kernel counters and, in single-host mode, keeps the processor running.

use std::{
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sonde_config::Config;
use tracing::info;

use crate::{
    audit, capture::Capture, control::ControlListener, probes::Probes, start::Started,
    supervisor::Supervisor,
};

/// How often `/proc` is scanned again for selected processes (the kernel's notices cover
/// exec, fork, exit and listen in between).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// The longest one wait for events lasts: the supervisor and the timers run at least this
/// often.
const TICK_MS: u16 = 200;

/// Runs the loop until a stop signal, then stops the processor it started (if any).
pub fn serve(config: &Config, started: Started) -> Result<()> {
    let Started {
        mut probes,
        listener,
        policy,
        kept_capabilities,
        processor,
    } = started;
    let mut supervisor = processor.map(Supervisor::new);
    let mut capture = Capture::new(
        config,
        audit::Status {
            loader_pid: std::process::id(),
            spawns_processor: supervisor.is_some(),
            kept_capabilities,
            processor: None,
        },
    );
    capture.write_status();
    capture.rescan(&mut probes);

    let mut last_rescan = Instant::now();
    let mut last_stats = Instant::now();
    let stats_every = Duration::from_secs(u64::from(config.stats_interval_secs));
    while !sonde_plumbing::stop::requested() {
        if let Some(s) = supervisor.as_mut() {
            s.tick();
        }
        let ready = wait(&listener, &probes, capture.processor())?;
        if ready.listener {
            capture.accept(&listener, &policy, &probes);
        }
        if ready.processor {
            capture.on_processor_message(&mut probes);
        }
        if ready.proc_events {
            capture.drain_proc_events(&mut probes);
        }
        if last_rescan.elapsed() >= RESCAN_EVERY {
            capture.rescan(&mut probes);
            last_rescan = Instant::now();
        }
        if last_stats.elapsed() >= stats_every {
            let counters = probes.counters();
            info!(counters = ?counters, restarts = supervisor.as_ref().map_or(0, |s| s.restarts), "kernel counters");
            capture.send_stats(&counters);
            last_stats = Instant::now();
        }
    }
    info!("stopping");
    if let Some(s) = supervisor.as_mut() {
        s.stop();
    }
    let counters = probes.counters();
    info!(counters = ?counters, "final kernel counters");
    Ok(())
}

/// Which of the loop's descriptors have something to read.
struct Ready {
    listener: bool,
    proc_events: bool,
    processor: bool,
}

/// Waits up to one tick for a connection, a process notice or a processor message. A signal
/// ends the wait early (no `SA_RESTART`), so a stop request is seen at once.
fn wait(
    listener: &ControlListener,
    probes: &Probes,
    processor: Option<BorrowedFd<'_>>,
) -> Result<Ready> {
    let mut fds = vec![
        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        PollFd::new(probes.proc_events.as_fd(), PollFlags::POLLIN),
    ];
    fds.extend(processor.map(|c| PollFd::new(c, PollFlags::POLLIN)));
    match poll(&mut fds, PollTimeout::from(TICK_MS)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e).context("poll"),
    }
    let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
    Ok(Ready {
        listener: ready(&fds[0]),
        proc_events: ready(&fds[1]),
        processor: fds.get(2).is_some_and(ready),
    })
}
