//! The processor's sections of the configuration (output, routes, sampling, exporters) are the
//! processor's to parse: the loader never links that code. To still stop at start on a bad
//! value, naming the key, the loader runs the processor binary once on the same file and
//! environment — as the processor's user when the loader is root — and asks it to check the
//! file (`--check-config`) or print its sections (`--print-own-config`, for
//! `sonde --print-config`). The file goes on the child's standard input unchanged.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use sonde_config::Config;

use crate::{
    identity::{ProcessorIdentity, resolve_processor},
    supervisor::{self, ProcessorSpec},
};

/// What the processor binary is asked to do with the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Parse everything; exit 0, or 2 with the error naming the key.
    Check,
    /// Print the processor's own sections as YAML on standard output.
    PrintOwn,
}

/// A config pass reads a file and exits; anything slower is a hung binary.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid a check runs as when the processor may be any user of its group.
const NOBODY: u32 = 65534;

/// The processor binary: `processor.binary`, else `sonde-processor` next to the loader.
pub fn processor_binary(config: &Config) -> PathBuf {
    config.processor.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("sonde-processor")))
            .unwrap_or_else(|| PathBuf::from("sonde-processor"))
    })
}

/// The processor single-host mode starts and supervises, as `uid`/`gid`, with `handed` (the
/// secret variables' block and the file, `Cli::config`) on its standard input. Its control
/// socket is not a path: the supervisor adds `--control-fd N` for the socketpair it makes at
/// each start.
pub fn supervised(config: &Config, uid: u32, gid: u32, handed: &str) -> ProcessorSpec {
    spec(processor_binary(config), Vec::new(), uid, gid, handed)
}

/// `binary args --config -`, with the configuration's environment and `handed` on stdin.
/// Secret variables (OTLP headers) are in `handed`, never in `env`.
fn spec(
    binary: PathBuf,
    mut args: Vec<OsString>,
    uid: u32,
    gid: u32,
    handed: &str,
) -> ProcessorSpec {
    args.extend(["--config".into(), "-".into()]);
    ProcessorSpec {
        binary,
        args,
        uid,
        gid,
        env: supervisor::processor_env(),
        config_yaml: handed.to_string(),
    }
}

/// Runs one configuration pass of the processor binary. Without a processor binary a check
/// is skipped (a split install may ship the loader alone) and a print fails.
pub fn run(config: &Config, handed: &str, pass: Pass) -> Result<()> {
    let binary = processor_binary(config);
    if !binary.exists() {
        if pass == Pass::Check {
            return Ok(());
        }
        bail!(
            "cannot print the processor's sections: no processor binary at {} (sonde-processor --print-config prints them where it is installed)",
            binary.display()
        );
    }
    // A root loader runs the pass as the processor's user. An unprivileged loader started
    // with capabilities (systemd's ambient set) clears its ambient set first: ambient
    // capabilities are the only ones a non-root process hands across exec, and the loader
    // itself never needs them again, so the processor binary never runs with a capability.
    let drop_to = if nix::unistd::geteuid().is_root() {
        Some(
            match resolve_processor(&config.processor.user, config.processor.group.as_deref())? {
                ProcessorIdentity::User { uid, gid } => (uid, gid),
                ProcessorIdentity::AnyUserOfGroup { gid } => (NOBODY, gid),
            },
        )
    } else {
        caps::clear(None, caps::CapSet::Ambient)
            .context("clearing the ambient capability set before running the processor")?;
        None
    };
    let flag = match pass {
        Pass::Check => "--check-config",
        Pass::PrintOwn => "--print-own-config",
    };
    let (uid, gid) = drop_to.unwrap_or((0, 0));
    let spec = spec(binary.clone(), vec![flag.into()], uid, gid, handed);
    let status = supervisor::run_once(&spec, drop_to.is_some(), PASS_TIMEOUT)
        .with_context(|| format!("running {} {flag}", binary.display()))?;
    if !status.success() {
        bail!(
            "{} {flag} rejected the configuration ({status}; its message is above)",
            binary.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervised_processor_has_no_socket_path_and_reads_the_file_on_stdin() {
        let config = Config::default();
        let spec = supervised(&config, 1000, 50, "service_name: a: b\n");
        let args: Vec<OsString> = vec!["--config".into(), "-".into()];
        assert_eq!(spec.args, args);
        assert_eq!((spec.uid, spec.gid), (1000, 50));
        assert_eq!(spec.config_yaml, "service_name: a: b\n");
        assert_eq!(spec.binary, processor_binary(&config));
    }
}
