//! `sonde-processor`: connects to the loader, maps the event ring buffer, turns events into
//! spans and prints them. Refuses to start as root or with any capability.
//!
//! This file is the command line and the order of things; `main` runs the phases in turn:
//! `configure` → `sandbox` → `connect` (and `start_pipeline`) → `run_passes` → `shut_down`.
//! What happens to the events is the library's `pipeline`.

use std::{
    io::{BufWriter, StdoutLock},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use sonde_plumbing::{notify::Notifier, proc_status::ProcStatus, stop};
use sonde_processor::{
    config::{Config, TracePrinter},
    control, kube,
    metrics::Metrics,
    otlp::Otlp,
    pipeline::{self, Pipeline, SpanSink},
    privileges,
    ringbuf::RingReader,
    sandbox::{self, LandlockMode, SandboxPolicy, SandboxReport},
    sandbox_check::{self, ProbeTargets},
    scheduling,
};
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
    #[arg(long, conflicts_with = "control_fd")]
    control: Option<PathBuf>,
    /// The control socket as an inherited descriptor (single-host mode: `sonde` starts the
    /// processor with its end of a socketpair; there is no socket path).
    #[arg(long)]
    control_fd: Option<i32>,
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
    /// Landlock: best_effort (enforce what the kernel has), required (refuse to start without
    /// the whole ruleset) or off (overrides processor.landlock / SONDE_LANDLOCK).
    #[arg(long, value_name = "MODE")]
    landlock: Option<String>,
    /// Run without any Landlock ruleset (insecure, flagged by --audit; same as --landlock off).
    #[arg(long, conflicts_with = "landlock")]
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
    /// For --check-sandbox: a local UDP port the processor must not be able to send to.
    #[arg(long, requires = "check_sandbox")]
    probe_udp_port: Option<u16>,
    /// For --check-sandbox: a pathname Unix socket listening outside the sandbox, which the
    /// processor must not be able to connect to or pass descriptors over.
    #[arg(long, requires = "check_sandbox")]
    probe_unix_socket: Option<PathBuf>,
    /// For --check-sandbox: run the probes WITHOUT applying the sandbox (the control case:
    /// shows each probe can succeed, so its denial under the sandbox means something). Exits 0
    /// when every probe ran.
    #[arg(long, hide = true, requires = "check_sandbox")]
    probe_without_sandbox: bool,
}

const CONTROL_TOKEN: u64 = 1;
const RING_TOKEN: u64 = 2;

/// Poll timeout: the kernel wakes us only once 64 KiB are queued, so a quiet service's spans
/// are picked up by this timer instead.
const POLL_INTERVAL_MS: u16 = 50;

/// Where spans are printed: stdout, buffered (flushed once per pass).
type Output = BufWriter<StdoutLock<'static>>;

fn main() -> ExitCode {
    // Started by fd (`/proc/self/fd/N`) in single-host mode, the kernel would name the process
    // after the fd number; give it its name back for ps, top and pgrep.
    let _ = nix::sys::prctl::set_name(c"sonde-processor");
    // First, before the configuration (OTLP headers) is read: no same-uid process may read
    // this process's memory or environment.
    if let Err(e) = privileges::make_undumpable() {
        eprintln!("sonde-processor: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let config = match configure(&cli) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    // Before any thread starts, so every thread inherits it; logged once logging is up.
    let scheduled = scheduling::apply(config.shared.processor.scheduling);
    // Before the sandbox: one-time set-up stays ahead of it, so the allowlist
    // (seccomp/processor.json) needs only what the run itself calls.
    let shared = &config.shared;
    sonde_plumbing::logging::init(shared.log_level.as_str(), shared.log_format.is_json());
    let policy = shared.processor.scheduling.as_str();
    match scheduled {
        Ok(()) => info!(policy = %policy, "scheduling policy"),
        // Not fatal: the processor works as well under the policy it was started with.
        Err(e) => warn!(
            "processor.scheduling: could not switch to {policy} ({e}); running under the inherited policy"
        ),
    }
    // Kubernetes metadata is resolved before the sandbox too: its configuration files, and
    // the port and files the sandbox must then allow.
    let kube = match prepare_kube(&config.kubernetes) {
        Ok(kube) => kube,
        Err(exit) => return exit,
    };
    let mut policy = sandbox_policy(&config, cli.config.as_deref());
    if let Some(k) = &kube {
        add_kube_to_policy(&mut policy, k);
    }
    if cli.check_sandbox {
        return check_sandbox(&cli, &config, &policy);
    }
    // An inherited control socket is taken (and checked) before the sandbox; nothing is read
    // from it until the sandbox is in place.
    let control = match cli.control_fd {
        Some(fd) => match control::inherited(fd) {
            Ok(fd) => Endpoint::Inherited(fd),
            Err(e) => {
                error!("{e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => Endpoint::Path(
            cli.control
                .clone()
                .unwrap_or_else(|| config.shared.control_socket.clone()),
        ),
    };
    match run(&config, &policy, control, kube) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the loader is: a socket path to connect to (split deployments), or the end of a
/// socketpair `sonde` handed this process (single host).
enum Endpoint {
    Path(PathBuf),
    Inherited(OwnedFd),
}

/// Phases 2 to 5 of a normal start, from the sandbox on.
fn run(
    config: &Config,
    policy: &SandboxPolicy,
    control: Endpoint,
    kube: Option<kube::Prepared>,
) -> Result<()> {
    // INVARIANT: the sandbox is in place before the first untrusted byte is read. Nothing
    // from the loader (control socket, ring buffer) or the network is read before this line,
    // and no thread exists yet; threads started later (exporters, the Prometheus endpoint)
    // inherit it.
    // Refuse privilege before touching the loader at all (the sandbox checks again).
    privileges::ensure_unprivileged()?;
    // Unix sockets are connected (not read) first: seccomp allows no new AF_UNIX socket, and
    // Landlock scopes abstract ones. The systemd notify socket (Type=notify), then the
    // control socket: in split deployments the loader may not be up yet (units start in any
    // order, or it is restarting), so the connect is retried with a bounded backoff.
    let notifier = Notifier::from_env()?;
    let control = match control {
        Endpoint::Path(path) => Endpoint::Inherited(control::connect_retrying(&path)?),
        inherited @ Endpoint::Inherited(_) => inherited,
    };
    let sandbox = sandbox(policy)?;
    stop::install()?;
    let inject_sampled_below = sonde_processor::sampling::inject_bound(config.sampler);
    let mut loader = connect(control, &sandbox, inject_sampled_below)?;
    // The watcher thread starts under the sandbox, before the first byte from the loader.
    let kube = kube.map(kube::start).transpose()?;
    let mut pipeline = start_pipeline(config)?;
    if let Some(store) = kube {
        pipeline = pipeline.with_kube(store);
    }
    // Connected, the ring mapped and the exporters up: ready (systemd Type=notify).
    if let Err(e) = notifier.ready("connected to the loader") {
        warn!(error = %e, "telling systemd the processor is ready (READY=1) failed");
    }
    // The notify socket is a connected datagram socket: kept open, it could be re-connected
    // or used with a destination address to pass fds to any local datagram socket. It goes
    // before the first untrusted byte.
    drop(notifier);
    let result = run_passes(&mut loader, &mut pipeline);
    shut_down(&loader, pipeline, &result);
    result
}

/// Phase 1: the configuration (file, environment, then flags). `Err` is the exit code when
/// there is nothing more to do: the configuration was printed or checked (before any privilege
/// check or connection, so these work anywhere), or it is invalid (2).
fn configure(cli: &Cli) -> Result<Config, ExitCode> {
    let invalid = |e: &dyn std::fmt::Display| {
        eprintln!("sonde-processor: configuration error: {e}");
        ExitCode::from(2)
    };
    let mut config = Config::from_process(cli.config.as_deref()).map_err(|e| invalid(&e))?;
    if let Some(p) = &cli.trace_printer {
        config.trace_printer =
            TracePrinter::parse("--trace-printer", p).map_err(|e| invalid(&e))?;
    }
    if let Some(mode) = &cli.landlock {
        config.shared.processor.landlock =
            LandlockMode::parse("--landlock", mode).map_err(|e| invalid(&e))?;
        config.shared.processor.insecure_no_landlock = false;
    }
    if cli.insecure_no_landlock {
        config.shared.processor.landlock = LandlockMode::Off;
    }
    if cli.print_config {
        print!("{}", config.to_yaml());
        return Err(ExitCode::SUCCESS);
    }
    if cli.print_own_config {
        print!("{}", config.own_to_yaml());
        return Err(ExitCode::SUCCESS);
    }
    if cli.check_config {
        return Err(ExitCode::SUCCESS);
    }
    Ok(config)
}

/// What the sandbox allows for this configuration: the configuration file is readable; the
/// Prometheus port (when configured) may be bound; TCP connections only to the ports of the
/// OTLP endpoints.
fn sandbox_policy(config: &Config, config_file: Option<&Path>) -> SandboxPolicy {
    let mut connect_ports: Vec<u16> = [&config.traces_export.otlp, &config.metrics_export.otlp]
        .into_iter()
        .flatten()
        .map(|e| e.port)
        .collect();
    // Host names resolve over TCP (see `sandbox`): the name servers' port too.
    if [&config.traces_export.otlp, &config.metrics_export.otlp]
        .into_iter()
        .flatten()
        .any(|e| sandbox::host_needs_resolution(&e.url))
    {
        connect_ports.push(sandbox::DNS_PORT);
    }
    connect_ports.sort_unstable();
    connect_ports.dedup();
    // The configuration file, and the CA files of TLS endpoints (read when the exporters are
    // built, under the sandbox).
    let read_paths = config_file
        .filter(|p| p.as_os_str() != "-")
        .map(Path::to_path_buf)
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
        landlock: config.shared.processor.landlock_mode(),
    }
}

/// Kubernetes metadata (`attributes.kubernetes`): `Ok(None)` when off. A configuration that
/// cannot be loaded stops the start (exit 2) when metadata is explicitly on, and only turns it
/// off (one warning) under autodetect.
fn prepare_kube(settings: &kube::Settings) -> Result<Option<kube::Prepared>, ExitCode> {
    let get = |name: &str| std::env::var(name).ok();
    match kube::prepare(settings, &get) {
        Ok(prepared) => Ok(prepared),
        Err(e) if settings.enable == kube::Enable::True => {
            error!("Kubernetes metadata: {e:#}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            warn!("Kubernetes metadata off (attributes.kubernetes.enable: autodetect): {e:#}");
            Ok(None)
        }
    }
}

/// What Kubernetes metadata needs of the sandbox: connecting to the API server's port (and
/// 53 when it is named by a host name), reading the token's directory and client
/// certificate files.
fn add_kube_to_policy(policy: &mut SandboxPolicy, kube: &kube::Prepared) {
    policy.connect_ports.push(kube.connect_port);
    if kube.needs_dns {
        policy.connect_ports.push(sandbox::DNS_PORT);
    }
    policy.connect_ports.sort_unstable();
    policy.connect_ports.dedup();
    policy.read_paths.extend(kube.read_paths.iter().cloned());
}

/// Refuses to run with privilege, then sandboxes this (still single-threaded) process: a
/// normal start and `--check-sandbox` alike.
fn enter_sandbox(policy: &SandboxPolicy) -> Result<(ProcStatus, SandboxReport)> {
    let status = privileges::ensure_unprivileged()?;
    let sandbox = sandbox::apply(policy).context("applying the processor sandbox")?;
    Ok((status, sandbox))
}

/// Phase 2: `enter_sandbox`, and say so in the log.
fn sandbox(policy: &SandboxPolicy) -> Result<SandboxReport> {
    let (status, sandbox) = enter_sandbox(policy)?;
    info!(
        uid = status.uid.real,
        no_new_privs = status.no_new_privs,
        cap_bnd = format!("{:016x}", status.cap_bnd),
        landlock = sandbox.landlock.any(),
        landlock_mode = sandbox.landlock_mode.as_str(),
        landlock_abi = sandbox.landlock.abi,
        landlock_tcp = sandbox.landlock.tcp,
        landlock_scoping = sandbox.landlock.scoping,
        seccomp_filters = sandbox.seccomp_filters,
        "running unprivileged and sandboxed"
    );
    // Once, at start: what Landlock does and does not enforce here (seccomp is on either way).
    if sandbox.landlock_mode == LandlockMode::Off {
        warn!(
            "Landlock is OFF (processor.landlock: off): file and TCP access are not restricted; seccomp still applies"
        );
    } else if sandbox.landlock.complete() {
        info!("{}", sandbox.landlock.describe());
    } else {
        warn!(
            "{} (processor.landlock: best_effort; seccomp still applies)",
            sandbox.landlock.describe()
        );
    }
    Ok(sandbox)
}

/// `--check-sandbox`: the same refusal and sandbox as a normal start, then the probes.
fn check_sandbox(cli: &Cli, config: &Config, policy: &SandboxPolicy) -> ExitCode {
    let probes = ProbeTargets {
        connect_port: cli.probe_connect_port,
        bind_port: cli.probe_bind_port,
        write_dir: cli.probe_write_dir.clone(),
        abstract_socket: cli.probe_abstract_socket.clone(),
        udp_port: cli.probe_udp_port,
        unix_socket: cli.probe_unix_socket.clone(),
        allowed_bind_port: config.prometheus_export.port,
        allowed_connect_ports: policy.connect_ports.clone(),
    };
    if cli.probe_without_sandbox {
        sandbox_check::run_unsandboxed_and_report(&probes);
        return ExitCode::SUCCESS;
    }
    match enter_sandbox(policy) {
        Err(e) => {
            eprintln!("sonde-processor: {e:#}");
            ExitCode::FAILURE
        }
        Ok((_, sandbox)) if sandbox_check::run_and_report(&sandbox, &probes) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
    }
}

/// The loader's side of a run: the control connection, the ring buffer mapped from the fd it
/// handed over, and the epoll set watching both.
struct Loader {
    conn: OwnedFd,
    ring: RingReader,
    epoll: Epoll,
}

/// Phase 3: connects to the loader (or takes the inherited socket), says hello (with the
/// sampling rule for injected traces, `sampling::inject_bound`) and maps the ring buffer it
/// hands over.
fn connect(
    control: Endpoint,
    sandbox: &SandboxReport,
    inject_sampled_below: u64,
) -> Result<Loader> {
    let conn = match control {
        Endpoint::Path(path) => control::connect_to(&path)?,
        Endpoint::Inherited(fd) => fd,
    };
    let (welcome, ring_fd) = control::hello(conn.as_fd(), sandbox, inject_sampled_below)?;
    let ring = RingReader::new(ring_fd, welcome.data_size, welcome.page_size)?;
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
    Ok(Loader { conn, ring, epoll })
}

impl Loader {
    /// Waits for the control socket or the ring buffer, at most the poll interval (a signal
    /// ends the wait early). True when the control socket has a message; the ring buffer is
    /// drained on every pass anyway.
    fn wait(&self) -> Result<bool> {
        let mut events = [EpollEvent::empty(); 2];
        let n = match self
            .epoll
            .wait(&mut events, EpollTimeout::from(POLL_INTERVAL_MS))
        {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(anyhow::Error::from(e).context("epoll_wait")),
        };
        Ok(events[..n].iter().any(|e| e.data() == CONTROL_TOKEN))
    }
}

/// Phase 3, continued: the metrics, the Prometheus endpoint and OTLP export, and the
/// pipeline that feeds them.
fn start_pipeline(config: &Config) -> Result<Pipeline<'_, Output>> {
    let mono_to_unix = pipeline::mono_to_unix()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let metrics = Arc::new(Metrics::with_service_graph(
        host.trim(),
        sonde_config::host_metrics::service_graph_enabled(&config.shared),
    ));
    if let Some(port) = config.prometheus_export.port {
        let addr = std::net::SocketAddr::new(config.prometheus_export.address, port);
        metrics
            .serve(addr, config.prometheus_export.path.clone())
            .with_context(|| format!("serving Prometheus metrics on {addr}"))?;
        info!(%addr, path = config.prometheus_export.path, "Prometheus endpoint listening");
    }
    let otlp = Otlp::start(
        &config.traces_export,
        &config.metrics_export,
        host.trim(),
        metrics.otlp.clone(),
        metrics.red_store(),
    )
    .context("starting OTLP export")?;
    let out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let sink = SpanSink::new(config, metrics, otlp, out, mono_to_unix);
    Ok(Pipeline::new(sink))
}

/// Phase 4: one pass per wake-up (a control message, ring buffer data, or the poll timer)
/// until SIGINT/SIGTERM, or an error such as the loader going away.
fn run_passes(loader: &mut Loader, pipeline: &mut Pipeline<'_, Output>) -> Result<()> {
    while !stop::requested() {
        // Control first: metadata of a process always precedes its first event.
        if loader.wait()? {
            let update = control::read_update(loader.conn.as_fd())
                .context("control connection to the loader lost")?;
            pipeline.apply(update);
        }
        control::send_requests(loader.conn.as_fd(), pipeline.take_requests())?;
        let now = Instant::now();
        loader.ring.drain(|bytes| pipeline.record(bytes, now));
        pipeline.end_pass(now, loader.ring.corrupt_records);
    }
    Ok(())
}

/// Phase 5: completes what is held, flushes and stops the exporters, tells the loader why
/// the processor leaves and logs the final counters.
fn shut_down(loader: &Loader, pipeline: Pipeline<'_, Output>, result: &Result<()>) {
    let stats = pipeline.finish();
    control::goodbye(
        &loader.conn,
        if result.is_ok() { "stopping" } else { "error" },
    );
    info!(stats = %serde_json::to_string(&stats).unwrap_or_default(), "final processor stats");
}
