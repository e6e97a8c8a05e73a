//! `sonde`: single-host mode. Run as root; the loader attaches the probes and starts
//! `sonde-processor` as an unprivileged user (default `nobody`), restarting it if it dies.

fn main() -> std::process::ExitCode {
    sonde_loader::cli::main_with(true)
}
