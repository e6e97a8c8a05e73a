//! Builds the kernel programs (`loader-ebpf`) for bpfel-unknown-none with nightly build-std
//! through aya-build, so `cargo build` of the loader embeds an up-to-date object.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../loader-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sonde-loader-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
