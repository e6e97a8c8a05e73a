//! Command-line flags shared by `sonde-loader` and `sonde`, parsed once into `RunOptions` and
//! a `Config`. Flags override the file and the environment.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::Parser;
use sonde_config::{Config, ExeGlob, FileText, PortSet};

use crate::{
    audit,
    processor_config::{self, Pass},
    sandbox, serve,
    start::{self, RunOptions},
    supervisor,
};
use sonde_plumbing::notify::Notifier;

/// Exit code of a configuration error (the loader's own, or the processor's).
pub const EXIT_CONFIG: u8 = 2;

/// The file (and the secret variables' block before it) is handed to the processor through a
/// pipe written before the child runs, from the loader's event loop; a pipe holds 64 KiB, so
/// more could never be written and the write would block the loop.
const MAX_HANDED_CONFIG: usize = 60 << 10;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Sonde eBPF auto-instrumentation: the privileged loader"
)]
pub struct Cli {
    /// YAML configuration file (also BEYLA_CONFIG_PATH).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Instrument processes listening on these ports, e.g. 8080,8000-8999.
    #[arg(long)]
    pub open_port: Option<String>,
    /// Instrument processes whose executable path matches this glob, e.g. '*/nginx'.
    #[arg(long)]
    pub exe: Option<String>,
    /// Instrument these process ids (repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Start and supervise sonde-processor as the configured user (what `sonde` always does).
    #[arg(long)]
    pub spawn_processor: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Report what the running loader and processor hold (uids, capabilities with reasons,
    /// NO_NEW_PRIVS, seccomp, Landlock), check it against the documented policy and exit
    /// (non-zero when it does not hold).
    #[arg(long)]
    pub audit: bool,
    /// With --audit: print the report as JSON.
    #[arg(long, requires = "audit")]
    pub json: bool,
    /// Install the run-time seccomp policy (the single-host variant with --spawn-processor),
    /// try what it must forbid, print one JSON line per probe and exit (0 when all hold).
    #[arg(long)]
    pub check_runtime_policy: bool,
}

impl Cli {
    /// Builds the effective configuration: defaults < file < environment < flags; also
    /// returns what the processor gets on its standard input: the secret variables' block,
    /// then the file's text unchanged.
    pub fn config(&self) -> Result<(Config, String)> {
        let env = sonde_config::process_env();
        let file = FileText::locate(self.config.as_deref(), &env)?;
        // What goes down the pipe: the secret variables' block, then the file.
        let handed =
            sonde_config::with_secret_env(&env, file.as_ref().map_or("", |f| f.text.as_str()));
        if handed.len() > MAX_HANDED_CONFIG {
            bail!(
                "the configuration handed to the processor (the config file{} plus the OTEL_EXPORTER_OTLP_*HEADERS variables) is {} bytes; at most {MAX_HANDED_CONFIG} fit its pipe",
                file.as_ref()
                    .map(|f| format!(" {}", f.path.display()))
                    .unwrap_or_default(),
                handed.len()
            );
        }
        let mut config = Config::load(file.as_ref(), &env)?;
        if let Some(p) = &self.open_port {
            config.open_port = Some(PortSet::parse("--open-port", p)?);
        }
        if let Some(g) = &self.exe {
            config.auto_target_exe = Some(ExeGlob::parse("--exe", g)?);
        }
        if !self.pids.is_empty() {
            config.target_pids = self.pids.clone();
        }
        if config.apply_default_selection() {
            eprintln!(
                "sonde: no selection configured; instrumenting processes listening on {} (set open_port, auto_target_exe, target_pids or discovery.instrument to choose)",
                sonde_config::DEFAULT_OPEN_PORTS
            );
        }
        Ok((config, handed))
    }
}

/// Shared entry point of both binaries.
pub fn main_with(always_spawn_processor: bool) -> ExitCode {
    let cli = Cli::parse();
    let spawn_processor = always_spawn_processor || cli.spawn_processor;
    let (config, processor_config) = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde: configuration error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        // The warnings go with the effective configuration (logging is not set up here).
        for w in config.warnings() {
            eprintln!("sonde: warning: {w}");
        }
        return print_config(&config, &processor_config, spawn_processor);
    }
    if cli.check_runtime_policy {
        return check_runtime_policy(spawn_processor, config.ebpf.tls);
    }
    if cli.audit {
        return print_audit(&config, cli.json);
    }
    // The processor's sections are checked by the processor's own parser, before anything is
    // attached, so a bad value stops the loader naming its key.
    if let Err(e) = processor_config::run(&config, &processor_config, Pass::Check) {
        eprintln!("sonde: configuration error: {e:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    sonde_plumbing::logging::init(config.log_level.as_str(), config.log_format.is_json());
    // Once at start: keys accepted but not applied, selectors that select nothing yet.
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    let options = RunOptions {
        spawn_processor,
        processor_config,
    };
    match run(&config, &options) {
        Ok(()) => ExitCode::SUCCESS,
        // Once: the log goes to standard error already.
        Err(e) => {
            tracing::error!("{e:#}");
            match e.downcast_ref::<supervisor::GaveUp>() {
                Some(supervisor::GaveUp::Configuration) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `--print-config`: the loader's settings, then (single-host mode) the processor's own
/// sections, which are the processor's to parse and print.
fn print_config(config: &Config, processor_config: &str, spawn_processor: bool) -> ExitCode {
    print!("{}", config.to_yaml());
    // The child writes to the same standard output: ours must be out first.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    if !spawn_processor {
        return ExitCode::SUCCESS;
    }
    exit_code(processor_config::run(
        config,
        processor_config,
        Pass::PrintOwn,
    ))
}

/// `--check-runtime-policy`: success when the run-time seccomp policy forbids what it must.
fn check_runtime_policy(spawn_processor: bool, tls: bool) -> ExitCode {
    match sandbox::check_runtime_policy(spawn_processor, tls) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sonde: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--audit`: the report, as text or JSON; failure when the policy does not hold.
fn print_audit(config: &Config, json: bool) -> ExitCode {
    let report = audit::report(&config.control_socket);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", audit::render(&report));
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The loader proper: the privileged start, then the unprivileged serve loop until
/// SIGINT/SIGTERM.
fn run(config: &Config, options: &RunOptions) -> Result<()> {
    // systemd's notify socket (Type=notify), connected before the run-time seccomp policy,
    // which allows no new socket in split mode. Never handed on: the processor's environment
    // is an allowlist without NOTIFY_SOCKET.
    let notifier = Notifier::from_env()?;
    let started = start::start(config, options)?;
    // The programs are attached and the control socket (split) is listening: ready.
    if let Err(e) = notifier.ready(if options.spawn_processor {
        "kernel programs attached; starting the processor"
    } else {
        "kernel programs attached; control socket listening"
    }) {
        tracing::warn!(error = %e, "telling systemd the loader is ready (READY=1) failed");
    }
    serve::serve(config, started)?;
    // The supervisor stops the loop when it gives up on the processor.
    match supervisor::gave_up() {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// The exit code for the processor's verdict on its configuration.
fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
