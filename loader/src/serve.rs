//! The unprivileged phase: the event loop the loader runs after [`crate::start`], under its
//! run-time capabilities and seccomp policy, until SIGINT/SIGTERM. It serves the control
//! socket, keeps the capture in step with process notices and periodic `/proc` rescans,
//! forwards the kernel counters and, in single-host mode, keeps the processor running.

use std::{
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sonde_config::Config;
use tracing::{debug, info, warn};

use crate::{
    audit, capture::Capture, control::ControlListener, heap, probes::Probes, start::Started,
    supervisor::Supervisor,
};

/// How often the selected processes' start times are checked again (pid reuse; no walk of
/// `/proc`: the kernel's notices cover exec, fork, exit and listen in between, and a full walk
/// runs only at start-up and after lost notices).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// The longest one wait for events lasts: the supervisor and the timers run at least this
/// often.
const TICK_MS: u16 = 200;

/// Runs the loop until a stop signal, then stops the processor it started (if any). Nothing
/// in it blocks: control connections are non-blocking with deadlines (`capture`), hellos are
/// awaited by this loop's `poll`, not by a wait of their own.
pub fn serve(config: &Config, started: Started) -> Result<()> {
    let Started {
        mut probes,
        consumer,
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
            tls_capture: audit::tls_capture(config.ebpf.tls, probes.tls_active()),
            process_metrics: audit::process_metrics(config),
            network_flows: audit::network_flows(config),
            context_propagation: audit::context_propagation(
                config,
                probes.inject.as_ref().map(|i| i.cgroup.as_path()),
            ),
            kept_capabilities,
            processor: None,
            refused_selections: 0,
        },
    );
    capture.write_status();
    capture.rescan(&mut probes);

    let mut last_rescan = Instant::now();
    let mut last_stats = Instant::now();
    let mut losses = LossWatch::default();
    let stats_every = Duration::from_secs(u64::from(config.stats_interval_secs));
    let mut last_flows = Instant::now();
    let flows_every = config
        .network
        .cache_active_timeout
        .max(Duration::from_millis(100));
    let mut usage = crate::usage::UsageReader::new(config);
    while !sonde_plumbing::stop::requested() {
        if let Some(s) = supervisor.as_mut()
            && let Some((conn, pid)) = s.tick()
        {
            capture.adopt_spawned(conn, pid);
        }
        let ready = wait(listener.as_ref(), &probes, &capture)?;
        // First, while the connections are still those the wait watched.
        capture.service(&mut probes, &consumer, &ready.connections, Instant::now());
        if let (Some(s), Some(pid)) = (supervisor.as_mut(), capture.spawned_connected()) {
            s.connected(pid);
        }
        if ready.listener
            && let Some(l) = &listener
        {
            capture.accept(l, &policy);
        }
        if ready.proc_events {
            capture.drain_proc_events(&mut probes);
        }
        capture.rescan_if_owed(&mut probes);
        if last_rescan.elapsed() >= RESCAN_EVERY {
            capture.rescan(&mut probes);
            last_rescan = Instant::now();
            // What the last rounds read and freed (`/proc` files, ELF files, messages).
            heap::trim_if_slack();
        }
        if last_stats.elapsed() >= stats_every {
            let counters = probes.counters();
            let restarts = supervisor.as_ref().map_or(0, |s| s.restarts);
            // Quiet unless something was lost since the last report: then it is a warning.
            if losses.grew(&counters) {
                warn!(counters = ?counters, restarts, "kernel counters: events were lost");
            } else {
                debug!(counters = ?counters, restarts, "kernel counters");
            }
            capture.send_stats(&counters);
            last_stats = Instant::now();
        }
        // Process metrics: the captured processes' /proc counters, while a processor listens.
        if let Some(u) = usage.as_mut()
            && capture.has_client()
            && u.due(Instant::now())
        {
            let batches = u.sample(&capture.captured(), &probes, Instant::now());
            capture.send_usage(batches);
        }
        // Flow metrics: the kernel flow map's growth, every `network.cache_active_timeout`.
        if last_flows.elapsed() >= flows_every
            && let Some(flows) = probes.flows.as_mut()
        {
            capture.send_flows(flows);
            last_flows = Instant::now();
        }
        // Single host: a processor that broke the protocol is killed; the supervisor reaps and
        // restarts it.
        if let Some(pid) = capture.take_violator()
            && let Some(s) = supervisor.as_mut()
            && s.child_pid() == Some(pid)
        {
            s.kill("it broke the control protocol");
        }
    }
    info!("stopping");
    capture.flush_log();
    if let Some(s) = supervisor.as_mut() {
        s.stop();
    }
    let counters = probes.counters();
    info!(counters = ?counters, "final kernel counters");
    Ok(())
}

/// What the wait found.
struct Ready {
    listener: bool,
    proc_events: bool,
    /// Per connection of `Capture::watched`, in its order.
    connections: Vec<PollFlags>,
}

/// Waits up to one tick for a connection, a process notice or control traffic. A signal ends
/// the wait early (no `SA_RESTART`), so a stop request is seen at once.
fn wait(
    listener: Option<&ControlListener>,
    probes: &Probes,
    capture: &Capture<'_>,
) -> Result<Ready> {
    let mut fds = vec![PollFd::new(probes.proc_events.as_fd(), PollFlags::POLLIN)];
    fds.extend(listener.map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)));
    let first_connection = fds.len();
    fds.extend(
        capture
            .watched()
            .into_iter()
            .map(|(fd, flags)| PollFd::new(fd, flags)),
    );
    match poll(&mut fds, PollTimeout::from(TICK_MS)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e).context("poll"),
    }
    let revents = |f: &PollFd<'_>| f.revents().unwrap_or(PollFlags::empty());
    Ok(Ready {
        proc_events: !revents(&fds[0]).is_empty(),
        listener: listener.is_some() && !revents(&fds[1]).is_empty(),
        connections: fds[first_connection..].iter().map(revents).collect(),
    })
}

/// Kernel counters that count something lost (events, updates, process notices, tracked
/// connections), and whether any grew since the last look.
#[derive(Debug, Default)]
struct LossWatch {
    last: u64,
}

impl LossWatch {
    fn grew(&mut self, counters: &[(&'static str, u64)]) -> bool {
        let lost: u64 = counters
            .iter()
            .filter(|(name, _)| sonde_schema::counters::is_loss_name(name))
            .map(|(_, v)| *v)
            .sum();
        let grew = lost > self.last;
        self.last = lost;
        grew
    }
}

#[cfg(test)]
mod tests {
    use super::LossWatch;

    #[test]
    fn only_loss_counters_that_grew_count() {
        let mut watch = LossWatch::default();
        assert!(!watch.grew(&[("events_sent", 10), ("events_lost_ringbuf_full", 0)]));
        assert!(!watch.grew(&[("events_sent", 99), ("non_http_payloads", 5)]));
        assert!(watch.grew(&[("events_sent", 99), ("conn_map_full", 1)]));
        assert!(!watch.grew(&[("events_sent", 120), ("conn_map_full", 1)]));
        assert!(watch.grew(&[("proc_events_lost", 1), ("conn_map_full", 1)]));
    }
}
