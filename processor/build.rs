//! Compiles the processor's seccomp policy (`seccomp/processor.json`) into the binary.

include!("../seccomp/compile.rs");

fn main() {
    compile_seccomp_policy("processor.json", "seccomp_filters.rs");
}
