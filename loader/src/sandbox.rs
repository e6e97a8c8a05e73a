//! The loader's run-time seccomp policy (`seccomp/loader.json`, compiled into the binary by
//! `build.rs`), installed once the programs are attached and the capabilities dropped. What it
//! takes away from a compromised loader even though it still holds CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH: every `bpf()` command but map lookups, updates, deletes and key walks
//! on maps it already holds (no loading, attaching or new maps; `BPF_LINK_CREATE` only with
//! `ebpf.tls`, see below), `perf_event_open`, `ptrace`
//! and `process_vm_*` (CAP_SYS_PTRACE stays for `/proc` access checks only), mounts, modules,
//! `kexec`, namespaces, keyrings, and every socket but `AF_UNIX`. In single-host mode the
//! filter must also let the forked child drop privileges and exec the processor, and the
//! processor start (it inherits the filter, then adds its own, stricter one), so that variant
//! additionally allows `execve`, the `set*id`/`capset` calls, executable mappings, the
//! Landlock and seccomp calls, and TCP sockets.
//!
//! With `ebpf.tls` the loader attaches the OpenSSL uprobes to processes selected after
//! start-up, so the run-time filters let `bpf(BPF_LINK_CREATE)` through (it creates a link for
//! a program fd the loader already holds; loading programs and every other attach command stay
//! denied). With `ebpf.tls` off, one more filter built at start-up ([`no_attach_filter`])
//! denies `BPF_LINK_CREATE` again, so that mode is exactly as strict as before.
//!
//! Single-host mode adds a filter built at start-up ([`setid_filter`]), since it depends
//! on the configured processor user: the loader (no longer uid 0, see `privileges`) keeps
//! `CAP_SETUID`/`CAP_SETGID` only to start the processor, so `setresuid`/`setresgid` are
//! allowed with exactly the processor's uid/gid, `setgroups` only to empty the list, and every
//! other way to change ids (`setuid`, `setreuid`, `setfsuid`, their gid twins) fails with
//! `EPERM`. The capabilities cannot bring uid 0 (and root-owned files) back.

use anyhow::Context;
use seccompiler::BpfProgram;

mod filters {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

include!("../../seccomp/tables.rs");

/// The filters for this mode, by name, in installation order.
pub fn runtime_filters(spawns_processor: bool) -> [(&'static str, BpfProgram); 2] {
    let main = if spawns_processor {
        (
            "loader_runtime_spawning",
            program(filters::LOADER_RUNTIME_SPAWNING),
        )
    } else {
        ("loader_runtime", program(filters::LOADER_RUNTIME))
    };
    [("loader_clone3", program(filters::LOADER_CLONE3)), main]
}

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// A filter built at start-up that refuses (`EPERM`) what `rules` match and allows the rest.
fn refusing(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
) -> anyhow::Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH
            .try_into()
            .context("seccomp target architecture")?,
    )?;
    Ok(filter.try_into()?)
}

/// A rule matching when argument `arg` compares to `value` with `op`.
fn arg_rule(arg: u8, op: SeccompCmpOp, value: u64) -> anyhow::Result<SeccompRule> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?])?)
}

/// Single host: the filter pinning id changes to the processor's `uid`/`gid` (module doc).
pub fn setid_filter(uid: u32, gid: u32) -> anyhow::Result<BpfProgram> {
    // Rules list what is refused: any argument that is not the pinned id.
    let not = |arg: u8, value: u32| arg_rule(arg, SeccompCmpOp::Ne, u64::from(value));
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(
        libc::SYS_setresuid,
        vec![not(0, uid)?, not(1, uid)?, not(2, uid)?],
    );
    rules.insert(
        libc::SYS_setresgid,
        vec![not(0, gid)?, not(1, gid)?, not(2, gid)?],
    );
    rules.insert(libc::SYS_setgroups, vec![not(0, 0)?]);
    for always in [
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
    ] {
        rules.insert(always, Vec::new());
    }
    refusing(rules)
}

/// `BPF_LINK_CREATE`, the one attach command the run-time filters let through for `ebpf.tls`.
const BPF_LINK_CREATE: u64 = 28;

/// `ebpf.tls` off: the filter that denies `bpf(BPF_LINK_CREATE)` (module doc).
pub fn no_attach_filter() -> anyhow::Result<BpfProgram> {
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(
        libc::SYS_bpf,
        vec![arg_rule(0, SeccompCmpOp::Eq, BPF_LINK_CREATE)?],
    );
    refusing(rules)
}

/// Installs [`setid_filter`] on the calling thread.
pub fn apply_setid_filter(uid: u32, gid: u32) -> anyhow::Result<&'static str> {
    seccompiler::apply_filter(&setid_filter(uid, gid)?)
        .context("installing the seccomp filter loader_setid")?;
    Ok("loader_setid")
}

/// Installs the run-time filters on the calling thread (the loader is single-threaded);
/// `tls`: `ebpf.tls` is on, so `BPF_LINK_CREATE` stays allowed.
pub fn apply_runtime_policy(
    spawns_processor: bool,
    tls: bool,
) -> anyhow::Result<Vec<&'static str>> {
    let mut names = Vec::new();
    // First: the run-time filters do not allow installing more filters.
    if !tls {
        seccompiler::apply_filter(&no_attach_filter()?)
            .context("installing the seccomp filter loader_no_attach")?;
        names.push("loader_no_attach");
    }
    for (name, filter) in runtime_filters(spawns_processor) {
        seccompiler::apply_filter(&filter)
            .with_context(|| format!("installing the seccomp filter {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// One forbidden (or allowed) call tried by `--check-runtime-policy`.
struct Probe {
    name: &'static str,
    nr: libc::c_long,
    args: [libc::c_long; 3],
    /// The errno the call must fail with under the policy; 0: the policy must let it reach
    /// the kernel (any outcome but EPERM).
    expect_errno: i32,
}

impl Probe {
    /// A call the policy must refuse with EPERM.
    fn forbidden(name: &'static str, nr: libc::c_long, args: [libc::c_long; 3]) -> Self {
        Probe {
            name,
            nr,
            args,
            expect_errno: libc::EPERM,
        }
    }

    /// A call the policy must let reach the kernel.
    fn allowed(name: &'static str, nr: libc::c_long, args: [libc::c_long; 3]) -> Self {
        Probe {
            name,
            nr,
            args,
            expect_errno: 0,
        }
    }
}

/// `sonde-loader --check-runtime-policy`: installs the run-time policy of the given mode and
/// tries what it must forbid, printing one JSON line per probe. True when all came out as
/// expected. Probes use arguments that make the call harmless had it been allowed.
pub fn check_runtime_policy(spawns_processor: bool, tls: bool) -> anyhow::Result<bool> {
    apply_runtime_policy(spawns_processor, tls)?;
    // Zeroed `bpf()`/`perf_event_open` attributes; they outlive every probe below.
    let attr = [0u8; 128];
    // A one-entry group list (root's group) for the setgroups probe.
    let root_group: [libc::gid_t; 1] = [0];
    let mut probes = probes_for_every_mode(attr.as_ptr() as libc::c_long);
    probes.push(if tls {
        // Reaches the kernel, which rejects the zeroed attributes.
        Probe::allowed(
            "bpf_link_create_allowed_for_tls",
            libc::SYS_bpf,
            [28, attr.as_ptr() as libc::c_long, 128],
        )
    } else {
        Probe::forbidden(
            "bpf_link_create",
            libc::SYS_bpf,
            [28, attr.as_ptr() as libc::c_long, 128],
        )
    });
    if spawns_processor {
        // Pinned as for a processor running as nobody.
        apply_setid_filter(65534, 65534)?;
        probes.extend(setid_probes(root_group.as_ptr() as libc::c_long));
    } else {
        probes.extend(probes_without_processor_spawn());
    }
    let mut all = true;
    for probe in &probes {
        let errno = run_probe(probe);
        let as_expected = probe_as_expected(probe, errno);
        all &= as_expected;
        println!("{}", probe_report_line(probe, errno, as_expected));
    }
    Ok(all)
}

/// The probes both run-time filter variants must answer as expected. `attr_ptr` points at
/// a zeroed 128-byte buffer that must stay alive while the probes run.
fn probes_for_every_mode(attr_ptr: libc::c_long) -> Vec<Probe> {
    vec![
        Probe::forbidden("bpf_map_create", libc::SYS_bpf, [0, attr_ptr, 128]),
        Probe::forbidden("bpf_prog_load", libc::SYS_bpf, [5, attr_ptr, 128]),
        Probe::forbidden(
            "bpf_raw_tracepoint_open",
            libc::SYS_bpf,
            [17, attr_ptr, 128],
        ),
        Probe::forbidden(
            "perf_event_open",
            libc::SYS_perf_event_open,
            [attr_ptr, 0, -1],
        ),
        Probe::forbidden(
            "ptrace_attach_pid_1",
            libc::SYS_ptrace,
            [libc::PTRACE_ATTACH as libc::c_long, 1, 0],
        ),
        Probe::forbidden("process_vm_readv", libc::SYS_process_vm_readv, [1, 0, 0]),
        Probe::forbidden("mount", libc::SYS_mount, [0, 0, 0]),
        Probe::forbidden("init_module", libc::SYS_init_module, [0, 0, 0]),
        Probe::forbidden(
            "unshare_mount_namespace",
            libc::SYS_unshare,
            [libc::CLONE_NEWNS as libc::c_long, 0, 0],
        ),
        Probe::forbidden(
            "socket_netlink",
            libc::SYS_socket,
            [
                libc::AF_NETLINK as libc::c_long,
                libc::SOCK_RAW as libc::c_long,
                0,
            ],
        ),
        // Allowed: a map lookup reaches the kernel, which rejects the zeroed attributes.
        Probe::allowed(
            "bpf_map_lookup_elem_allowed",
            libc::SYS_bpf,
            [1, attr_ptr, 128],
        ),
    ]
}

/// The probes only the non-spawning variant forbids (single-host mode needs TCP and
/// `execve` for the processor it starts).
fn probes_without_processor_spawn() -> [Probe; 2] {
    [
        Probe::forbidden(
            "socket_tcp",
            libc::SYS_socket,
            [
                libc::AF_INET as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
                0,
            ],
        ),
        Probe::forbidden("execve", libc::SYS_execve, [0, 0, 0]),
    ]
}

/// Single host: no way back to uid 0 (or root's groups) through the kept `CAP_SETUID` and
/// `CAP_SETGID`. Run as root, each would succeed without the filter.
fn setid_probes(root_group_ptr: libc::c_long) -> [Probe; 6] {
    [
        Probe::forbidden("setresuid_root", libc::SYS_setresuid, [0, 0, 0]),
        Probe::forbidden(
            "setresuid_saved_root",
            libc::SYS_setresuid,
            [65534, 65534, 0],
        ),
        Probe::forbidden("setuid_root", libc::SYS_setuid, [0, 0, 0]),
        Probe::forbidden("setresgid_root", libc::SYS_setresgid, [0, 0, 0]),
        Probe::forbidden(
            "setgroups_root_group",
            libc::SYS_setgroups,
            [1, root_group_ptr, 0],
        ),
        Probe::forbidden("setfsuid_root", libc::SYS_setfsuid, [0, 0, 0]),
    ]
}

/// Makes the probe's call; the errno it failed with, 0 when it succeeded.
fn run_probe(probe: &Probe) -> i32 {
    let [a0, a1, a2] = probe.args;
    // SAFETY: each probe's arguments are null pointers, invalid ids or a zeroed buffer
    // that lives across the call; allowed or not, the call changes nothing.
    let ret = unsafe { libc::syscall(probe.nr, a0, a1, a2, 0, 0) };
    if ret == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

/// Whether the call came out as the policy demands.
fn probe_as_expected(probe: &Probe, errno: i32) -> bool {
    if probe.expect_errno == 0 {
        errno != libc::EPERM
    } else {
        errno == probe.expect_errno
    }
}

/// The JSON line `--check-runtime-policy` prints for one probe.
fn probe_report_line(probe: &Probe, errno: i32, as_expected: bool) -> serde_json::Value {
    serde_json::json!({
        "probe": probe.name,
        "errno": format!("{:?}", nix::errno::Errno::from_raw(errno)),
        "expected": if probe.expect_errno == 0 {
            "not EPERM".to_string()
        } else {
            format!("{:?}", nix::errno::Errno::from_raw(probe.expect_errno))
        },
        "as_expected": as_expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_filters_match_the_policy_file() {
        let compiled = compile_policy_now("loader.json");
        for spawns in [false, true] {
            for (name, built) in runtime_filters(spawns) {
                assert_eq!(&compiled[name], &built, "filter {name}");
            }
        }
        assert_eq!(compiled.len(), 3);
    }
}
