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
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&processor)
        .args([
            "--check-sandbox",
            "--probe-connect-port",
            &connect_port,
            "--probe-bind-port",
            &bind_port,
            "--probe-abstract-socket",
            &abstract_name,
            "--probe-write-dir",
        ])
        .arg(&writable)
        .args(extra)
        .output()
        .expect("running sonde-processor --check-sandbox");
    drop(abstract_listener);
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
        "abstract_unix_connect",
    ] {
        assert_eq!(probes[probe]["denied"], false, "{probe}: {}", probes[probe]);
        assert_eq!(probes[probe]["as_expected"], false);
    }
    // seccomp still holds.
    assert_eq!(probes["bpf"]["errno"], "EPERM");
    assert_eq!(probes["execve"]["errno"], "EPERM");
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

/// The loader's run-time policy, both variants: it installs the filter, then tries loading,
/// attaching, perf events, ptrace, process_vm_readv, mounts, modules, namespaces and netlink
/// (and, without the processor to spawn, TCP sockets and execve), all EPERM, while a map
/// lookup still reaches the kernel.
#[test]
fn loader_runtime_policy_denies_loading_attaching_and_tracing() {
    for spawning in [false, true] {
        let mut cmd = std::process::Command::new(binary("sonde-loader"));
        cmd.args(["--check-runtime-policy", "--open-port", "1"]);
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
            "bpf_link_create",
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
        assert_eq!(names.contains(&"execve"), !spawning);
        assert!(out.status.success(), "spawning={spawning}: {stdout}");
    }
}
