//! Exists only so `loader` can name this crate as a build dependency (cargo then rebuilds the
//! loader when the kernel programs change). The programs are the `sonde-loader-ebpf` binary.
#![no_std]
