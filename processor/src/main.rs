//! `sonde-processor`: connects to the loader, maps the event ring buffer, turns events into
//! spans and prints them. Refuses to start as root or with any capability.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::BufWriter,
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use sonde_processor::config::{Config, TracePrinter};
use sonde_processor::{
    control::{self, Update},
    exchange::{self, Assembler},
    metrics::Metrics,
    otlp::{Otlp, ProcessResource},
    printer::Printer,
    privileges,
    red::RedRecorder,
    ringbuf::RingReader,
    routes::Router,
    sampling,
    sandbox::{self, SandboxPolicy},
    sandbox_check,
    span::{self, Built, ServiceInfo},
    stats::Stats,
};
use sonde_schema::{HttpEvent, Record, control::ProcessRecord};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Sonde eBPF auto-instrumentation: the unprivileged processor"
)]
struct Cli {
    /// YAML configuration file (also BEYLA_CONFIG_PATH).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Control socket of the loader (default: control_socket from the configuration).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Print only the processor's own sections and exit (what `sonde --print-config` adds
    /// after the loader's part).
    #[arg(long, hide = true)]
    print_own_config: bool,
    /// Check the configuration and exit: 0, or 2 with the error naming the key (how `sonde`
    /// checks the processor's sections at start).
    #[arg(long)]
    check_config: bool,
    /// Span output: disabled, text or json (overrides trace_printer / BEYLA_TRACE_PRINTER).
    #[arg(long)]
    trace_printer: Option<String>,
    /// Run without the Landlock ruleset when the kernel cannot enforce it (insecure; same as
    /// processor.insecure_no_landlock).
    #[arg(long)]
    insecure_no_landlock: bool,
    /// Apply the sandbox, try what it must forbid and allow, print one JSON line per probe and
    /// exit (0 when every probe came out as expected). Does not connect to the loader.
    #[arg(long)]
    check_sandbox: bool,
    /// For --check-sandbox: a local TCP port with a listener, which the sandbox must not let
    /// the processor reach.
    #[arg(long, default_value_t = 1, requires = "check_sandbox")]
    probe_connect_port: u16,
    /// For --check-sandbox: a free local TCP port the sandbox must not let the processor bind.
    #[arg(long, default_value_t = 0, requires = "check_sandbox")]
    probe_bind_port: u16,
    /// For --check-sandbox: a directory the processor's user could write to, which the
    /// sandbox must not let it write to.
    #[arg(long, default_value = "/tmp", requires = "check_sandbox")]
    probe_write_dir: PathBuf,
    /// For --check-sandbox: the name of an abstract Unix socket listening outside the sandbox,
    /// which the processor must not be able to reach.
    #[arg(long, requires = "check_sandbox")]
    probe_abstract_socket: Option<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// How long metadata of an exited process is kept: its last events may still be queued.
const REMOVED_GRACE: Duration = Duration::from_secs(10);
const CONTROL_TOKEN: u64 = 1;
const RING_TOKEN: u64 = 2;

/// Poll timeout: the kernel wakes us only once 64 KiB are queued, so a quiet service's spans
/// are picked up by this timer instead.
const POLL_INTERVAL_MS: u16 = 50;

fn main() -> std::process::ExitCode {
    // Started by fd (`/proc/self/fd/N`) in single-host mode, the kernel would name the process
    // after the fd number; give it its name back for ps, top and pgrep.
    let _ = nix::sys::prctl::set_name(c"sonde-processor");
    let cli = Cli::parse();
    let mut config = match Config::from_process(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde-processor: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(p) = &cli.trace_printer {
        match TracePrinter::parse("--trace-printer", p) {
            Ok(p) => config.trace_printer = p,
            Err(e) => {
                eprintln!("sonde-processor: configuration error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if cli.print_config || cli.print_own_config || cli.check_config {
        if cli.print_config {
            print!("{}", config.to_yaml());
        } else if cli.print_own_config {
            print!("{}", config.own_to_yaml());
        }
        return std::process::ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.shared.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    if cli.insecure_no_landlock {
        config.shared.processor.insecure_no_landlock = true;
    }
    let policy = sandbox_policy(&config, cli.config.as_deref());
    if cli.check_sandbox {
        let probes = sandbox_check::ProbeTargets {
            connect_port: cli.probe_connect_port,
            bind_port: cli.probe_bind_port,
            write_dir: cli.probe_write_dir.clone(),
            abstract_socket: cli.probe_abstract_socket.clone(),
            allowed_bind_port: config.prometheus_export.port,
            allowed_connect_ports: policy.connect_ports.clone(),
        };
        return check_sandbox(&policy, &probes);
    }

    match run(
        &config,
        &policy,
        cli.control.unwrap_or_else(|| config.shared.control_socket.clone()),
    ) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Processes {
    live: HashMap<u32, ProcessRecord>,
    removed: Vec<(u32, Instant)>,
}

impl Processes {
    fn service_name(&self, pid: u32, stats: &mut Stats) -> Cow<'_, str> {
        if let Some(p) = self.live.get(&pid) {
            return Cow::Borrowed(&p.service_name);
        }
        stats.unknown_process += 1;
        Cow::Owned(
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| format!("pid-{pid}")),
        )
    }

    /// Forgets processes removed longer than the grace period ago; returns their pids.
    fn expire(&mut self) -> Vec<u32> {
        let now = Instant::now();
        let live = &mut self.live;
        let mut gone = Vec::new();
        self.removed.retain(|(pid, at)| {
            if now.duration_since(*at) >= REMOVED_GRACE {
                live.remove(pid);
                gone.push(*pid);
                false
            } else {
                true
            }
        });
        gone
    }

    /// What OTLP resources are built from.
    fn meta(&self, pid: u32, config: &Config, fallback_name: &str) -> ProcessResource {
        let info = self.live.get(&pid);
        ProcessResource {
            pid,
            service_name: config
                .shared
                .service_name
                .clone()
                .or_else(|| info.map(|p| p.service_name.clone()))
                .unwrap_or_else(|| fallback_name.to_string()),
            service_namespace: config.shared.service_namespace.clone(),
            exe_path: info.map(|p| p.exe_path.clone()).unwrap_or_default(),
        }
    }
}

/// What the sandbox allows for this configuration: the configuration file is readable; the
/// Prometheus port (when configured) may be bound; TCP connections only to the ports of the
/// OTLP endpoints.
fn sandbox_policy(config: &Config, config_file: Option<&std::path::Path>) -> SandboxPolicy {
    let mut connect_ports: Vec<u16> = [&config.traces_export.otlp, &config.metrics_export.otlp]
        .into_iter()
        .flatten()
        .map(|e| e.port)
        .collect();
    connect_ports.sort_unstable();
    connect_ports.dedup();
    // The configuration file, and the CA files of TLS endpoints (read when the exporters are
    // built, under the sandbox).
    let read_paths = config_file
        .filter(|p| p.as_os_str() != "-")
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(
            [&config.traces_export.otlp, &config.metrics_export.otlp]
                .into_iter()
                .flatten()
                .filter_map(|e| e.ca_file.clone()),
        )
        .collect();
    SandboxPolicy {
        read_paths,
        connect_ports,
        bind_ports: config.prometheus_export.port.into_iter().collect(),
        insecure_no_landlock: config.shared.processor.insecure_no_landlock,
    }
}

/// `--check-sandbox`: the same refusal and sandbox as a normal start, then the probes.
fn check_sandbox(
    policy: &SandboxPolicy,
    probes: &sandbox_check::ProbeTargets,
) -> std::process::ExitCode {
    let report = privileges::ensure_unprivileged()
        .map_err(anyhow::Error::from)
        .and_then(|_| sandbox::apply(policy).map_err(anyhow::Error::from));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sonde-processor: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcomes = sandbox_check::run(probes);
    let mut all = true;
    for o in &outcomes {
        all &= o.as_expected;
        println!("{}", serde_json::to_string(o).unwrap_or_default());
    }
    let status = sandbox_check::status_view().ok();
    println!(
        "{}",
        serde_json::json!({
            "landlock": report.landlock,
            "seccomp_filters_installed": report.seccomp_filters,
            "status": status,
            "all_as_expected": all,
        })
    );
    if all {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn run(config: &Config, policy: &SandboxPolicy, control_path: PathBuf) -> Result<()> {
    let status = privileges::ensure_unprivileged()?;
    // Before the first byte from the loader or the kernel is read.
    let sandbox = sandbox::apply(policy).context("applying the processor sandbox")?;
    info!(
        uid = nix::unistd::getuid().as_raw(),
        no_new_privs = status.no_new_privs,
        cap_bnd = format!("{:016x}", status.cap_bnd),
        landlock = sandbox.landlock,
        seccomp_filters = sandbox.seccomp_filters,
        "running unprivileged and sandboxed"
    );
    if !sandbox.landlock {
        warn!(
            "Landlock is OFF (processor.insecure_no_landlock): file and TCP access are not restricted"
        );
    }
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_stop_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::sigaction(sig, &action) }
            .context("installing signal handlers")?;
    }

    let conn = control::connect_to(&control_path)?;
    let (welcome, ring_fd) = control::hello(conn.as_fd(), &sandbox)?;
    let mut ring = RingReader::new(ring_fd, welcome.data_size, welcome.page_size)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    epoll
        .add(
            conn.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, CONTROL_TOKEN),
        )
        .context("watching the control socket")?;
    epoll
        .add(
            ring.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, RING_TOKEN),
        )
        .context("watching the ring buffer")?;
    info!(
        ring_bytes = welcome.data_size,
        pending = ring.pending_bytes(),
        "connected to the loader; ring buffer mapped"
    );

    // CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns) to Unix time.
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
    let as_ns =
        |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    let mono_to_unix = as_ns(real) - as_ns(mono);

    let mut stats = Stats::default();
    let mut processes = Processes {
        live: HashMap::new(),
        removed: Vec::new(),
    };
    let mut last_stats = Instant::now();
    let mut assembler = Assembler::new(exchange::DEFAULT_HOLD, exchange::DEFAULT_MAX_HELD);
    let metrics = Arc::new(Metrics::new(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
    ));
    if let Some(port) = config.prometheus_export.port {
        let addr = std::net::SocketAddr::new(config.prometheus_export.address, port);
        metrics
            .serve(addr, config.prometheus_export.path.clone())
            .with_context(|| format!("serving Prometheus metrics on {addr}"))?;
        info!(%addr, path = config.prometheus_export.path, "Prometheus endpoint listening");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let otlp = Otlp::start(
        &config.traces_export,
        &config.metrics_export,
        host.trim(),
        metrics.otlp.clone(),
    )
    .context("starting OTLP export")?;
    let mut early_seen = 0u64;
    let mut sink = SpanSink {
        config,
        router: Router::new(&config.routes),
        metrics: Arc::clone(&metrics),
        printer: Printer::new(
            config.trace_printer,
            BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
        ),
        // Span and trace ids need uniqueness, not secrecy: a fast generator seeded from the OS.
        ids: <rand::rngs::SmallRng as rand::SeedableRng>::from_rng(&mut rand::rng()),
        mono_to_unix,
        otlp,
        red: RedRecorder::default(),
    };

    let stats_every = Duration::from_secs(u64::from(config.shared.stats_interval_secs));

    let result = loop {
        if STOP.load(Ordering::SeqCst) {
            break Ok(());
        }
        let control_ready = {
            let mut events = [EpollEvent::empty(); 2];
            let n = match epoll.wait(&mut events, EpollTimeout::from(POLL_INTERVAL_MS)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => break Err(anyhow::Error::from(e).context("epoll_wait")),
            };
            // The ring buffer is drained on every pass; only the control socket needs the flag.
            events[..n].iter().any(|e| e.data() == CONTROL_TOKEN)
        };
        // Control first: metadata of a process always precedes its first event.
        if control_ready {
            match control::read_update(conn.as_fd()) {
                Ok(Update::Added(p)) => {
                    info!(
                        pid = p.pid,
                        service = p.service_name,
                        exe = p.exe_path,
                        reason = p.reason,
                        "process added"
                    );
                    processes.removed.retain(|(pid, _)| *pid != p.pid);
                    processes.live.insert(p.pid, p);
                }
                Ok(Update::Removed(pid)) => {
                    info!(pid, "process removed");
                    processes.removed.push((pid, Instant::now()));
                }
                Ok(Update::KernelStats(counters)) => {
                    stats.kernel = counters.into_iter().collect();
                    let lost = stats
                        .kernel
                        .get("events_lost_ringbuf_full")
                        .copied()
                        .unwrap_or(0);
                    metrics.kernel_events_lost.set(lost as i64);
                }
                Err(e) => {
                    let e = anyhow::Error::new(e);
                    break Err(e.context("control connection to the loader lost"));
                }
            }
        }
        let now = Instant::now();
        ring.drain(|bytes| {
            stats.events += 1;
            metrics.events.inc();
            let record = match Record::decode(bytes) {
                Ok(record) => record,
                Err(e) => {
                    stats.decode_errors += 1;
                    warn!(error = %e, "undecodable ring buffer record");
                    return;
                }
            };
            assembler.feed(record, now, |ev| sink.emit(ev, &processes, &mut stats));
        });
        assembler.expire(now, |ev| sink.emit(ev, &processes, &mut stats));
        stats.late_updates = assembler.late_updates;
        stats.completed_early = assembler.completed_early;
        metrics
            .spans_dropped
            .inc_by(assembler.completed_early - early_seen);
        early_seen = assembler.completed_early;
        metrics
            .instrumented_processes
            .set(processes.live.len().saturating_sub(processes.removed.len()) as i64);
        if let Some(o) = sink.otlp.as_mut() {
            o.flush();
        }
        stats.ring_corrupt = ring.corrupt_records;
        if sink.printer.flush().is_err() {
            stats.print_errors += 1;
        }
        for pid in processes.expire() {
            if let Some(o) = sink.otlp.as_mut() {
                o.forget(pid);
            }
            sink.red.forget(pid);
        }
        if last_stats.elapsed() >= stats_every {
            stats.otlp_spans_exported = metrics.otlp.spans_exported.get();
            stats.otlp_spans_dropped = metrics.otlp.spans_dropped_queue_full.get()
                + metrics.otlp.spans_dropped_export_failed.get();
            info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "processor stats");
            last_stats = Instant::now();
        }
    };
    assembler.finish(|ev| sink.emit(ev, &processes, &mut stats));
    let _ = sink.printer.flush();
    if let Some(o) = sink.otlp.take() {
        o.shutdown();
    }
    stats.otlp_spans_exported = metrics.otlp.spans_exported.get();
    stats.otlp_spans_dropped = metrics.otlp.spans_dropped_queue_full.get()
        + metrics.otlp.spans_dropped_export_failed.get();
    control::goodbye(&conn, if result.is_ok() { "stopping" } else { "error" });
    info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "final processor stats");
    result
}

/// Where completed exchanges go: span building, route decoration, metrics, sampling and
/// the printer, with the state they keep between spans.
struct SpanSink<'a, W: std::io::Write> {
    config: &'a Config,
    router: Router,
    metrics: Arc<Metrics>,
    printer: Printer<W>,
    ids: rand::rngs::SmallRng,
    mono_to_unix: i128,
    otlp: Option<Otlp>,
    red: RedRecorder,
}

impl<W: std::io::Write> SpanSink<'_, W> {
    /// Builds the span of one completed exchange and prints it, counting what happened.
    fn emit(&mut self, ev: &HttpEvent, processes: &Processes, stats: &mut Stats) {
        let config = self.config;
        // Borrowed on the hot path: no allocation per event for a known process.
        let name = match &config.shared.service_name {
            Some(name) => Cow::Borrowed(name.as_str()),
            None => processes.service_name(ev.pid, stats),
        };
        let service = ServiceInfo {
            name: &name,
            namespace: config.shared.service_namespace.as_deref(),
        };
        match span::build(ev, &service, self.mono_to_unix, &mut self.ids) {
            Built::NotHttp => stats.not_http += 1,
            Built::Span(mut s) => {
                let mut ignored = None;
                if s.malformed.is_none() {
                    let routed = self.router.route(&s.service_name, &s.path);
                    ignored = routed.ignored;
                    s.set_route(routed.route);
                }
                // HTTP metrics only when something serves them: no label strings per span
                // otherwise.
                if !ignored.is_some_and(|m| m.drops_metrics()) {
                    let prometheus = config
                        .prometheus_export
                        .port
                        .is_some()
                        .then_some(&*self.metrics);
                    let otlp = self.otlp.as_mut().filter(|o| o.exports_metrics());
                    if prometheus.is_some() || otlp.is_some() {
                        let meta = || processes.meta(s.pid, config, &s.service_name);
                        self.red.record(&s, prometheus, otlp, &meta);
                    }
                }
                if ignored.is_some_and(|m| m.drops_traces()) {
                    stats.ignored_routes += 1;
                    return;
                }
                stats.spans += 1;
                stats.malformed += u64::from(s.malformed.is_some());
                stats.no_response += u64::from(s.no_response);
                if !sampling::keeps(config.sampler, &s.trace_id.0, s.parent_sampled) {
                    stats.unsampled += 1;
                    return;
                }
                if self.printer.print(&s).is_err() {
                    stats.print_errors += 1;
                    self.metrics.export_errors.inc();
                }
                if let Some(o) = self.otlp.as_mut()
                    && o.exports_traces()
                {
                    o.ensure_process(&|| processes.meta(s.pid, config, &s.service_name), s.pid);
                    o.export_span(s);
                }
            }
        }
    }
}
