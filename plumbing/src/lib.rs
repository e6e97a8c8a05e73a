//! The process plumbing both Sonde binaries (the privileged loader and the sandboxed
//! processor) need, in one place: stopping on SIGINT/SIGTERM ([`stop`]), installing the log
//! subscriber ([`logging`]) and reading a process's `/proc/<pid>/status` ([`proc_status`]).
//! It links into the privileged binary, so it stays small: no configuration, no I/O beyond
//! `/proc`, and only `nix`, `thiserror` and `tracing-subscriber` as dependencies.

pub mod logging;
pub mod notify;
pub mod proc_status;
pub mod stop;
