// Shared by the sandbox modules of `processor/` and `loader/` (through `include!`): turns the
// instruction tables `compile.rs` generated at build time back into seccompiler programs, and,
// for their unit tests, recompiles a policy file to compare.

/// A generated `(code, jt, jf, k)` table as a seccompiler program.
fn program(table: &[(u16, u8, u8, u32)]) -> seccompiler::BpfProgram {
    table
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect()
}

/// `seccomp/<policy>` compiled now, by filter name (tests: the binary must carry exactly this).
#[cfg(test)]
fn compile_policy_now(policy: &str) -> std::collections::HashMap<String, seccompiler::BpfProgram> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../seccomp")
        .join(policy);
    let json = std::fs::read(&path).expect("policy file");
    let arch: seccompiler::TargetArch = std::env::consts::ARCH.try_into().expect("arch");
    seccompiler::compile_from_json(json.as_slice(), arch).expect("policy compiles")
}
