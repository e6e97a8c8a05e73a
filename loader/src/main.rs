//! `sonde-loader`: the privileged half on its own (systemd unit or pod container). It serves
//! the control socket and waits for a separately started `sonde-processor`;
//! `--spawn-processor` makes it start one itself, as `sonde` does.

fn main() -> std::process::ExitCode {
    sonde_loader::cli::main_with(false)
}
