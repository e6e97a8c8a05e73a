//! Builds the kernel programs (`loader-ebpf`) for bpfel-unknown-none with nightly build-std
//! through aya-build, so `cargo build` of the loader embeds an up-to-date object, and compiles
//! the loader's run-time seccomp policy (`seccomp/loader.json`) into the binary.

include!("../seccomp/compile.rs");

fn main() -> anyhow::Result<()> {
    compile_seccomp_policy("loader.json", "seccomp_filters.rs");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../loader-ebpf");
    // The workspace's release profile links user-space binaries with LTO; the kernel object
    // keeps the profile it was verified and measured with (bpf-linker links its bitcode
    // whole anyway). aya-build's cargo inherits this process's environment.
    // SAFETY: the build script has no other threads yet.
    unsafe { std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sonde-loader-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
