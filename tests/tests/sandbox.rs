//! The processor's sandbox, each denial in its own case: the real `sonde-processor` binary,
//! started as nobody with no capability, applies its real sandbox (`--check-sandbox` runs the
//! same code path as a normal start) and then tries the forbidden operation. seccomp denials
//! come back as EPERM, Landlock's as EACCES. A last case turns Landlock off and shows the
//! probes do notice when a layer is missing.

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Command, Output},
};

use serde_json::Value;
use sonde_e2e::*;

/// Runs `sonde-processor --check-sandbox` as uid/gid 65534 with every capability set empty
/// and returns the probe lines by name, the summary line and the exit status.
fn check_sandbox(extra: &[&str]) -> (HashMap<String, Value>, Value, Output) {
    check_sandbox_as(65534, extra)
}

/// `check_sandbox` as `uid` (0 only for the unsandboxed control case: the processor refuses
/// root as soon as it would sandbox itself).
fn check_sandbox_as(uid: u32, extra: &[&str]) -> (HashMap<String, Value>, Value, Output) {
    let dir = TempDir::new("sandbox");
    let processor = installed_binary("sonde-processor", &dir);
    // A listener the sandbox must not let the processor reach, and a free port it must not
    // let it bind.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let connect_port = listener.local_addr().expect("addr").port().to_string();
    let bind_port = free_port().to_string();
    // A directory the user nobody can write to, so only the sandbox stops the write probe.
    // An abstract socket listening outside the sandbox, which Landlock's scoping must hide.
    let abstract_name = format!("sonde-sandbox-test-{}-{}", std::process::id(), free_port());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract name");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract listener")
    };
    let writable = dir.path("writable");
    std::fs::create_dir(&writable).expect("mkdir");
    std::fs::set_permissions(
        &writable,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    // Egress targets outside the sandbox: a UDP receiver (neither an endpoint nor a name
    // server) and a pathname Unix socket anyone may connect to (as D-Bus or journald are).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp receiver");
    let udp_port = udp.local_addr().expect("addr").port().to_string();
    let unix_path = writable.join("open.sock");
    let unix_listener = std::os::unix::net::UnixListener::bind(&unix_path).expect("unix listener");
    std::fs::set_permissions(
        &unix_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod socket");
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    // Root (the control case only) keeps its capabilities: some probes (SO_ATTACH_FILTER on
    // kernels that restrict it) need one to get through without the sandbox.
    let drop_caps: &[&str] = if uid == 0 {
        &[]
    } else {
        &["--inh-caps=-all", "--bounding-set=-all"]
    };
    let output = Command::new("setpriv")
        .args([reuid.as_str(), regid.as_str(), "--clear-groups"])
        .args(drop_caps)
        .arg(&processor)
        .args([
            "--check-sandbox",
            "--probe-connect-port",
            &connect_port,
            "--probe-bind-port",
            &bind_port,
            "--probe-abstract-socket",
            &abstract_name,
            "--probe-udp-port",
            &udp_port,
            "--probe-write-dir",
        ])
        .arg(&writable)
        .arg("--probe-unix-socket")
        .arg(&unix_path)
        .args(extra)
        .output()
        .expect("running sonde-processor --check-sandbox");
    drop(abstract_listener);
    drop(unix_listener);
    // Nothing reached the UDP receiver under the sandbox.
    udp.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    let received = udp.recv_from(&mut buf).is_ok();
    if !extra.contains(&"--probe-without-sandbox") {
        assert!(!received, "a datagram left the sandbox");
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut probes = HashMap::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match v["probe"].as_str() {
            Some(name) => {
                probes.insert(name.to_string(), v);
            }
            None => summary = v,
        }
    }
    assert!(
        summary.is_object(),
        "no summary line; stdout {stdout} stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (probes, summary, output)
}

fn assert_denied(probe: &str, errno: &str) {
    let (probes, summary, output) = check_sandbox(&[]);
    let p = probes
        .get(probe)
        .unwrap_or_else(|| panic!("probe {probe} did not run: {probes:?}"));
    assert_eq!(p["denied"], true, "{probe}: {p}");
    assert_eq!(p["errno"], errno, "{probe}: {p}");
    assert_eq!(summary["all_as_expected"], true, "{summary}");
    assert!(output.status.success(), "{summary}");
}

macro_rules! denied {
    ($($test:ident: $probe:literal => $errno:literal,)*) => {
        $(
            #[test]
            fn $test() {
                assert_denied($probe, $errno);
            }
        )*
    };
}

denied! {
    bpf_is_denied: "bpf" => "EPERM",
    perf_event_open_is_denied: "perf_event_open" => "EPERM",
    ptrace_is_denied: "ptrace" => "EPERM",
    process_vm_readv_is_denied: "process_vm_readv" => "EPERM",
    execve_is_denied: "execve" => "EPERM",
    fork_is_denied: "fork" => "EPERM",
    user_namespaces_are_denied: "unshare_user_namespace" => "EPERM",
    mount_is_denied: "mount" => "EPERM",
    setuid_is_denied: "setuid" => "EPERM",
    module_loading_is_denied: "init_module" => "EPERM",
    kexec_is_denied: "kexec_load" => "EPERM",
    keyctl_is_denied: "keyctl" => "EPERM",
    netlink_sockets_are_denied: "socket_netlink" => "EPERM",
    packet_sockets_are_denied: "socket_packet" => "EPERM",
    raw_inet_sockets_are_denied: "socket_raw_inet" => "EPERM",
    etc_shadow_cannot_be_opened: "open_etc_shadow" => "EACCES",
    files_outside_the_allowed_paths_cannot_be_read: "open_etc_passwd" => "EACCES",
    nothing_can_be_written: "create_file" => "EACCES",
    connecting_to_a_port_outside_the_allowlist_fails: "tcp_connect_unlisted_port" => "EACCES",
    binding_a_port_fails: "tcp_bind" => "EACCES",
    abstract_unix_sockets_outside_are_unreachable: "abstract_unix_connect" => "EPERM",
    // Egress (issue 13): TCP Fast Open would connect past Landlock's connect hook.
    tcp_fast_open_sendto_to_an_unlisted_port_is_denied: "tcp_fastopen_sendto_unlisted_port" => "EPERM",
    tcp_fast_open_sendmsg_to_an_unlisted_port_is_denied: "tcp_fastopen_sendmsg_unlisted_port" => "EPERM",
    setsockopt_tcp_fastopen_is_denied: "setsockopt_tcp_fastopen" => "EPERM",
    setsockopt_tcp_fastopen_connect_is_denied: "setsockopt_tcp_fastopen_connect" => "EPERM",
    setsockopt_so_attach_filter_is_denied: "setsockopt_so_attach_filter" => "EPERM",
    setsockopt_so_attach_bpf_is_denied: "setsockopt_so_attach_bpf" => "EPERM",
    setsockopt_tcp_ulp_is_denied: "setsockopt_tcp_ulp" => "EPERM",
    socket_protocols_other_than_tcp_are_denied: "socket_mptcp" => "EPERM",
    udp_sockets_are_denied: "socket_udp" => "EPERM",
    udp6_sockets_are_denied: "socket_udp6" => "EPERM",
    udp_to_an_address_that_is_not_a_resolver_is_denied: "udp_send_to_non_resolver" => "EPERM",
    new_unix_sockets_are_denied: "socket_unix" => "EPERM",
    pathname_unix_socket_connect_is_denied: "unix_pathname_connect" => "EPERM",
    fd_passing_over_a_pathname_socket_is_denied: "fd_passing_pathname_socket" => "EPERM",
    fd_passing_over_a_socketpair_is_denied: "fd_passing_socketpair" => "EPERM",
}

/// The control case for the egress probes: the same binary runs them without its sandbox
/// (as the processor's user, and as root for what the kernel itself refuses an unprivileged
/// user), and each gets through or fails for a reason other than the sandbox's EPERM/EACCES.
/// So the EPERMs above are the sandbox's doing.
#[test]
fn without_the_sandbox_every_egress_probe_gets_through() {
    let (as_user, _, out_user) = check_sandbox(&["--probe-without-sandbox"]);
    let (as_root, _, out_root) = check_sandbox_as(0, &["--probe-without-sandbox"]);
    assert!(out_user.status.success() && out_root.status.success());
    assert!(as_user.len() >= 15, "{as_user:?}");
    let sandbox_errno = |p: &Value| matches!(p["errno"].as_str(), Some("EPERM" | "EACCES"));
    for (name, p) in &as_user {
        let root = &as_root[name];
        assert!(
            !sandbox_errno(p) || !sandbox_errno(root),
            "{name} fails even without the sandbox: {p} / as root {root}"
        );
    }
    // The ones that matter most really succeed for the processor's own user.
    for name in [
        "tcp_fastopen_sendto_unlisted_port",
        "tcp_fastopen_sendmsg_unlisted_port",
        "setsockopt_tcp_fastopen_connect",
        "socket_udp",
        "udp_send_to_non_resolver",
        "unix_pathname_connect",
        "fd_passing_pathname_socket",
        "fd_passing_socketpair",
    ] {
        assert_eq!(as_user[name]["denied"], false, "{name}: {}", as_user[name]);
    }
    assert_eq!(as_root["setsockopt_so_attach_filter"]["denied"], false);
}

/// Names still resolve under the sandbox (the files source; DNS goes over TCP), and the
/// process is not dumpable (PR_GET_DUMPABLE read as the sandbox went up).
#[test]
fn names_resolve_without_udp_and_the_processor_is_not_dumpable() {
    let (probes, summary, output) = check_sandbox(&[]);
    assert_eq!(probes["resolve_localhost"]["denied"], false, "{summary}");
    assert_eq!(probes["setsockopt_tcp_nodelay"]["denied"], false);
    assert_eq!(probes["socket_tcp_ipproto_tcp"]["denied"], false);
    assert_eq!(summary["dumpable"], false, "{summary}");
    assert!(output.status.success(), "{summary}");
}

#[test]
fn status_shows_seccomp_nnp_and_no_capabilities_while_reads_of_proc_still_work() {
    let (probes, summary, _) = check_sandbox(&[]);
    let status = &summary["status"];
    assert_eq!(status["seccomp"], 2, "{summary}");
    assert_eq!(status["seccomp_filters"], 2, "{summary}");
    assert_eq!(status["no_new_privs"], true, "{summary}");
    for set in ["cap_eff", "cap_prm", "cap_inh", "cap_amb", "cap_bnd"] {
        assert_eq!(status[set], "0000000000000000", "{set}: {summary}");
    }
    assert_eq!(summary["landlock"], true);
    assert_eq!(probes["read_proc_self_status"]["denied"], false);
    assert_eq!(probes["socket_tcp"]["denied"], false);
}

#[test]
fn the_prometheus_port_and_only_it_may_be_bound() {
    let dir = TempDir::new("sandbox-prometheus");
    let port = free_port();
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, format!("prometheus_export:\n  port: {port}\n")).expect("config");
    let (probes, summary, output) =
        check_sandbox(&["--config", config.to_str().expect("utf-8 path")]);
    assert_eq!(
        probes["tcp_bind_prometheus_port"]["denied"], false,
        "{summary}"
    );
    // Any other port still fails.
    assert_eq!(probes["tcp_bind"]["errno"], "EACCES");
    assert!(output.status.success(), "{summary}");
}

#[test]
fn the_otlp_endpoint_ports_and_only_they_may_be_connected() {
    let dir = TempDir::new("sandbox-otlp");
    let collector = TcpListener::bind("127.0.0.1:0").expect("collector listener");
    let port = collector.local_addr().expect("addr").port();
    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!("otel_traces_export:\n  endpoint: http://127.0.0.1:{port}\n"),
    )
    .expect("config");
    let (probes, summary, output) =
        check_sandbox(&["--config", config.to_str().expect("utf-8 path")]);
    assert_eq!(
        probes["tcp_connect_otlp_port"]["denied"], false,
        "{summary}"
    );
    // Any other listening port still fails.
    assert_eq!(probes["tcp_connect_unlisted_port"]["errno"], "EACCES");
    assert!(output.status.success(), "{summary}");
}

#[test]
fn without_landlock_the_file_and_port_probes_get_through_and_the_check_fails() {
    let (probes, summary, output) = check_sandbox(&["--insecure-no-landlock"]);
    assert_eq!(summary["landlock"], false);
    assert_eq!(summary["all_as_expected"], false);
    assert!(!output.status.success());
    for probe in [
        "open_etc_passwd",
        "create_file",
        "tcp_connect_unlisted_port",
        "tcp_bind",
    ] {
        assert_eq!(probes[probe]["denied"], false, "{probe}: {}", probes[probe]);
        assert_eq!(probes[probe]["as_expected"], false);
    }
    // seccomp still holds, and alone keeps the egress closed: no Unix socket can be made (so
    // the abstract socket Landlock scopes away stays out of reach), no UDP, no Fast Open.
    assert_eq!(probes["bpf"]["errno"], "EPERM");
    assert_eq!(probes["execve"]["errno"], "EPERM");
    for probe in [
        "abstract_unix_connect",
        "unix_pathname_connect",
        "udp_send_to_non_resolver",
        "tcp_fastopen_sendto_unlisted_port",
        "fd_passing_socketpair",
    ] {
        assert_eq!(
            probes[probe]["errno"], "EPERM",
            "{probe}: {}",
            probes[probe]
        );
    }
}

#[test]
fn the_processor_refuses_to_start_when_run_as_root() {
    let dir = TempDir::new("sandbox-root");
    let processor = installed_binary("sonde-processor", &dir);
    let out = Command::new(&processor)
        .arg("--check-sandbox")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refuses to run as root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The loader's run-time policy, all four variants (split or single host, `ebpf.tls` on or
/// off): it installs the filter, then tries loading, attaching, perf events, ptrace,
/// process_vm_readv, mounts, modules, namespaces and netlink (and, without the processor to
/// spawn, TCP sockets and execve), all EPERM, while a map lookup still reaches the kernel.
/// `BPF_LINK_CREATE` is EPERM with `ebpf.tls` off and reaches the kernel with it on.
#[test]
fn loader_runtime_policy_denies_loading_attaching_and_tracing() {
    for (spawning, tls) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut cmd = std::process::Command::new(binary("sonde-loader"));
        cmd.args(["--check-runtime-policy", "--open-port", "1"]);
        cmd.env("SONDE_TLS", if tls { "true" } else { "false" });
        if spawning {
            cmd.arg("--spawn-processor");
        }
        let out = cmd.output().expect("sonde-loader --check-runtime-policy");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let probes: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let names: Vec<&str> = probes.iter().filter_map(|p| p["probe"].as_str()).collect();
        for must in [
            "bpf_map_create",
            "bpf_prog_load",
            "bpf_raw_tracepoint_open",
            "perf_event_open",
            "ptrace_attach_pid_1",
            "process_vm_readv",
            "mount",
            "init_module",
            "unshare_mount_namespace",
            "socket_netlink",
        ] {
            let p = probes
                .iter()
                .find(|p| p["probe"] == must)
                .unwrap_or_else(|| panic!("{must} missing from {names:?}"));
            assert_eq!(p["errno"], "EPERM", "{p}");
        }
        let lookup = probes
            .iter()
            .find(|p| p["probe"] == "bpf_map_lookup_elem_allowed")
            .expect("lookup probe");
        assert_ne!(lookup["errno"], "EPERM", "{lookup}");
        let link = if tls {
            "bpf_link_create_allowed_for_tls"
        } else {
            "bpf_link_create"
        };
        let link = probes
            .iter()
            .find(|p| p["probe"] == link)
            .unwrap_or_else(|| panic!("{link} missing from {names:?}"));
        assert_eq!(link["errno"] == "EPERM", !tls, "{link}");
        assert_eq!(names.contains(&"execve"), !spawning);
        assert!(out.status.success(), "spawning={spawning}: {stdout}");
    }
}

/// Landlock is best effort by default and the summary says what this kernel enforces (the
/// test machines have Landlock ABI 6 or later: everything); `required` starts here too, and
/// `--insecure-no-landlock` is `off`, reported as nothing enforced.
#[test]
fn the_summary_reports_what_landlock_enforces_in_each_mode() {
    let (_, summary, output) = check_sandbox(&[]);
    assert!(output.status.success(), "{summary}");
    assert_eq!(summary["landlock_mode"], "best_effort", "{summary}");
    let enforced = &summary["landlock_enforced"];
    assert_eq!(enforced["abi"], 6, "{summary}");
    for right in ["filesystem", "filesystem_complete", "tcp", "scoping"] {
        assert_eq!(enforced[right], true, "{right}: {summary}");
    }
    let report = summary["landlock_report"].as_str().expect("report line");
    assert!(
        report.starts_with("Landlock ABI 6: enforced: filesystem, TCP bind/connect ports, abstract-socket and signal scoping"),
        "{report}"
    );
    assert!(!report.contains("NOT enforced"), "{report}");

    let (_, summary, output) = check_sandbox(&["--landlock", "required"]);
    assert!(output.status.success(), "{summary}");
    assert_eq!(summary["landlock_mode"], "required");
    assert_eq!(summary["landlock_enforced"]["abi"], 6);

    let (_, summary, _) = check_sandbox(&["--insecure-no-landlock"]);
    assert_eq!(summary["landlock_mode"], "off");
    assert_eq!(summary["landlock_enforced"]["abi"], 0);
    assert_eq!(summary["landlock_enforced"]["filesystem"], false);
    assert!(
        summary["landlock_report"]
            .as_str()
            .is_some_and(|r| r.starts_with("Landlock NOT enforced")),
        "{summary}"
    );

    // A bad mode is a configuration error naming the flag.
    let dir = TempDir::new("sandbox-landlock-mode");
    let out = Command::new(installed_binary("sonde-processor", &dir))
        .args(["--landlock", "sometimes", "--check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--landlock") && err.contains("best_effort"),
        "{err}"
    );
}
