//! sonde-loader: the small privileged half of Sonde. It loads and attaches the kernel
//! programs, drops to its run-time capabilities, keeps the PID filter in step with the
//! configured selection, and hands the ring buffer fd plus process metadata to an
//! authenticated processor over the control socket. It never parses payload bytes.
//!
//! [`cli`] reads the configuration (and has the processor binary check its own sections),
//! then runs two phases:
//!
//! 1. [`start`], privileged, in order: check the start-up capabilities (`CAP_BPF`,
//!    `CAP_PERFMON`), naming any that is missing; resolve the processor's identity
//!    ([`identity`]); mount tracefs if it is missing ([`kernel_layout`]); load and attach the
//!    kernel programs ([`probes`], and with `ebpf.tls` the OpenSSL uprobes, [`tls`]); map the ring's consumer position ([`consumer`]); bind the
//!    control socket ([`control`], split deployments only: single host hands each processor
//!    it starts one end of a socketpair); drop to the run-time capabilities ([`privileges`]);
//!    install the stop-signal handlers; install the run-time seccomp policy ([`sandbox`]).
//! 2. [`serve`], unprivileged: the event loop, which keeps the capture state ([`capture`]:
//!    the selected processes, found by [`selection`], and the one connected processor, each
//!    connection driven without blocking by [`conn`], refusals logged by [`refusals`]) in step
//!    until SIGINT/SIGTERM, and in single-host mode keeps the processor running
//!    ([`supervisor`]). With process metrics on, [`usage`] reads the captured processes'
//!    `/proc` counters for it every `processes.interval`.
//!
//! [`heap`] keeps the loader's resident heap near what it uses, in both phases.

pub mod audit;
pub mod capture;
pub mod cgroup;
pub mod cli;
pub mod conn;
pub mod consumer;
pub mod control;
pub mod flows;
pub mod heap;
pub mod identity;
pub mod inject;
pub mod kernel_layout;
pub mod privileges;
pub mod probes;
pub mod processor_config;
pub mod refusals;
pub mod sandbox;
pub mod selection;
pub mod serve;
pub mod start;
pub mod supervisor;
pub mod tls;
pub mod usage;
