// Shared by the build scripts of `processor/` and `loader/` (through `include!`): compiles a
// seccomp policy of this directory (seccompiler's JSON format) into BPF at build time and
// writes it as a Rust table of `sock_filter` instructions per named filter, so the binary
// carries the exact filter and a policy error fails the build instead of the start-up.

/// Compiles `seccomp/<policy>` into `$OUT_DIR/<out>`.
fn compile_seccomp_policy(policy: &str, out: &str) {
    use std::{env, fmt::Write as _, fs, path::PathBuf};
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let path = manifest.join("../seccomp").join(policy);
    println!("cargo:rerun-if-changed={}", path.display());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let target: seccompiler::TargetArch = arch
        .as_str()
        .try_into()
        .unwrap_or_else(|e| panic!("no seccomp support for target architecture {arch}: {e:?}"));
    let json = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let filters = seccompiler::compile_from_json(json.as_slice(), target)
        .unwrap_or_else(|e| panic!("compiling {}: {e}", path.display()));
    let mut names: Vec<&String> = filters.keys().collect();
    names.sort();
    let mut text = format!("// Generated at build time from seccomp/{policy}.\n");
    for name in names {
        writeln!(
            text,
            "pub const {}: &[(u16, u8, u8, u32)] = &[",
            name.to_uppercase()
        )
        .expect("write");
        for insn in &filters[name] {
            writeln!(text, "    ({}, {}, {}, {}),", insn.code, insn.jt, insn.jf, insn.k)
                .expect("write");
        }
        text.push_str("];\n");
    }
    let dest = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join(out);
    fs::write(&dest, text).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
