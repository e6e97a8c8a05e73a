//! Compiles `control.capnp` into Rust when the `control` feature is on.
//! The kernel programs depend on this crate without the feature, so they never need `capnp`.

fn main() {
    println!("cargo:rerun-if-changed=control.capnp");
    if std::env::var_os("CARGO_FEATURE_CONTROL").is_none() {
        return;
    }
    if let Err(e) = capnpc::CompilerCommand::new().file("control.capnp").run() {
        panic!(
            "compiling control.capnp failed (is Debian's `capnproto` installed? run scripts/setup.sh): {e}"
        );
    }
}
