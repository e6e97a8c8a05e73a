//! The loader's run-time seccomp policy (`seccomp/loader.json`, compiled into the binary by
//! `build.rs`), installed once the programs are attached and the capabilities dropped. What it
//! takes away from a compromised loader even though it still holds CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH: every `bpf()` command but map lookups, updates, deletes and key walks
//! on maps it already holds (no loading, attaching or new maps), `perf_event_open`, `ptrace`
//! and `process_vm_*` (CAP_SYS_PTRACE stays for `/proc` access checks only), mounts, modules,
//! `kexec`, namespaces, keyrings, and every socket but `AF_UNIX`. In single-host mode the
//! filter must also let the forked child drop privileges and exec the processor, and the
//! processor start (it inherits the filter, then adds its own, stricter one), so that variant
//! additionally allows `execve`, the `set*id`/`capset` calls, executable mappings, the
//! Landlock and seccomp calls, and TCP sockets.

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

/// Installs the run-time filters on the calling thread (the loader is single-threaded).
pub fn apply_runtime_policy(spawns_processor: bool) -> anyhow::Result<Vec<&'static str>> {
    let mut names = Vec::new();
    for (name, filter) in runtime_filters(spawns_processor) {
        seccompiler::apply_filter(&filter)
            .map_err(|e| anyhow::anyhow!("installing the seccomp filter {name}: {e}"))?;
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

/// `sonde-loader --check-runtime-policy`: installs the run-time policy of the given mode and
/// tries what it must forbid, printing one JSON line per probe. True when all came out as
/// expected. Probes use arguments that make the call harmless had it been allowed.
pub fn check_runtime_policy(spawns_processor: bool) -> anyhow::Result<bool> {
    apply_runtime_policy(spawns_processor)?;
    let attr = [0u8; 128];
    let attr_ptr = attr.as_ptr() as libc::c_long;
    let eperm = libc::EPERM;
    let mut probes = vec![
        Probe {
            name: "bpf_map_create",
            nr: libc::SYS_bpf,
            args: [0, attr_ptr, 128],
            expect_errno: eperm,
        },
        Probe {
            name: "bpf_prog_load",
            nr: libc::SYS_bpf,
            args: [5, attr_ptr, 128],
            expect_errno: eperm,
        },
        Probe {
            name: "bpf_raw_tracepoint_open",
            nr: libc::SYS_bpf,
            args: [17, attr_ptr, 128],
            expect_errno: eperm,
        },
        Probe {
            name: "bpf_link_create",
            nr: libc::SYS_bpf,
            args: [28, attr_ptr, 128],
            expect_errno: eperm,
        },
        Probe {
            name: "perf_event_open",
            nr: libc::SYS_perf_event_open,
            args: [attr_ptr, 0, -1],
            expect_errno: eperm,
        },
        Probe {
            name: "ptrace_attach_pid_1",
            nr: libc::SYS_ptrace,
            args: [libc::PTRACE_ATTACH as libc::c_long, 1, 0],
            expect_errno: eperm,
        },
        Probe {
            name: "process_vm_readv",
            nr: libc::SYS_process_vm_readv,
            args: [1, 0, 0],
            expect_errno: eperm,
        },
        Probe {
            name: "mount",
            nr: libc::SYS_mount,
            args: [0, 0, 0],
            expect_errno: eperm,
        },
        Probe {
            name: "init_module",
            nr: libc::SYS_init_module,
            args: [0, 0, 0],
            expect_errno: eperm,
        },
        Probe {
            name: "unshare_mount_namespace",
            nr: libc::SYS_unshare,
            args: [libc::CLONE_NEWNS as libc::c_long, 0, 0],
            expect_errno: eperm,
        },
        Probe {
            name: "socket_netlink",
            nr: libc::SYS_socket,
            args: [
                libc::AF_NETLINK as libc::c_long,
                libc::SOCK_RAW as libc::c_long,
                0,
            ],
            expect_errno: eperm,
        },
        // Allowed: a map lookup reaches the kernel, which rejects the zeroed attributes.
        Probe {
            name: "bpf_map_lookup_elem_allowed",
            nr: libc::SYS_bpf,
            args: [1, attr_ptr, 128],
            expect_errno: 0,
        },
    ];
    if !spawns_processor {
        probes.push(Probe {
            name: "socket_tcp",
            nr: libc::SYS_socket,
            args: [
                libc::AF_INET as libc::c_long,
                libc::SOCK_STREAM as libc::c_long,
                0,
            ],
            expect_errno: eperm,
        });
        probes.push(Probe {
            name: "execve",
            nr: libc::SYS_execve,
            args: [0, 0, 0],
            expect_errno: eperm,
        });
    }
    let mut all = true;
    for p in &probes {
        // SAFETY: each probe's arguments are null pointers, invalid ids or a zeroed buffer
        // that lives across the call; allowed or not, the call changes nothing.
        let ret = unsafe { libc::syscall(p.nr, p.args[0], p.args[1], p.args[2], 0, 0) };
        let errno = if ret == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        };
        let as_expected = if p.expect_errno == 0 {
            errno != eperm
        } else {
            errno == p.expect_errno
        };
        all &= as_expected;
        println!(
            "{}",
            serde_json::json!({
                "probe": p.name,
                "errno": format!("{:?}", nix::errno::Errno::from_raw(errno)),
                "expected": if p.expect_errno == 0 {
                    "not EPERM".to_string()
                } else {
                    format!("{:?}", nix::errno::Errno::from_raw(p.expect_errno))
                },
                "as_expected": as_expected,
            })
        );
    }
    Ok(all)
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
