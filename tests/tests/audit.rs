//! `sonde-loader --audit` on a live pair: it reads both processes from /proc, names the reason
//! for each capability the loader holds, shows the processor's sandbox, and fails when the pair
//! departs from the documented policy (here: a processor started without Landlock).

use std::{process::Command, time::Duration};

use serde_json::Value;
use sonde_e2e::*;

fn audit(control_socket: &std::path::Path) -> (Value, bool) {
    let out = Command::new(binary("sonde-loader"))
        .args(["--audit", "--json", "--open-port", "1"])
        .env("SONDE_CONTROL_SOCKET", control_socket)
        .output()
        .expect("sonde-loader --audit");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.success())
}

#[test]
fn audit_of_a_single_host_pair_passes_with_reasons_for_each_capability() {
    let _guard = serial();
    let Served {
        dir: _dir,
        port: _port,
        server: _server,
        sonde,
    } = serve_python_with_sonde("audit");

    let (report, ok) = audit(&sonde.control_socket);
    assert!(ok, "audit failed: {report:#}");
    assert_eq!(report["problems"], Value::Array(vec![]));
    let loaders = report["loaders"].as_array().expect("loaders");
    assert_eq!(loaders.len(), 1, "{report:#}");
    assert_eq!(loaders[0]["pid"], sonde.proc.pid());
    let effective: Vec<(String, String)> =
        serde_json::from_value(loaders[0]["capabilities"]["effective"].clone()).expect("caps");
    let names: Vec<&str> = effective.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "CAP_DAC_READ_SEARCH",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_PTRACE"
        ]
    );
    assert!(
        effective.iter().all(|(_, why)| why.len() > 20),
        "{effective:?}"
    );
    let processors = report["processors"].as_array().expect("processors");
    assert_eq!(processors.len(), 1);
    let p = &processors[0];
    assert_eq!(p["landlock"], true);
    assert_eq!(p["seccomp_mode"], 2);
    // Its own two filters on top of the three it inherits from the loader's single-host
    // policy (clone3, the run-time allowlist, the setid pin).
    assert_eq!(p["seccomp_filters"], 5);
    assert_eq!(loaders[0]["seccomp_mode"], 2);
    assert_eq!(loaders[0]["seccomp_filters"], 3);
    // The loader left uid 0 (all four ids).
    let loader_uid = loaders[0]["uid"].as_str().expect("uid");
    assert!(
        loader_uid.split_whitespace().count() == 4
            && loader_uid.split_whitespace().all(|u| u != "0"),
        "{loader_uid}"
    );
    assert_eq!(p["no_new_privs"], true);
    assert_eq!(p["uid"], "65534 65534 65534 65534");
    assert_eq!(p["capabilities"]["effective"], Value::Array(vec![]));
    // TLS capture is on by default, through uprobe-multi links: no capability for it at run
    // time (the capability list above is the whole of it, no CAP_SYS_ADMIN or CAP_BPF).
    let tls = report["tls_capture"].as_str().expect("tls_capture");
    assert!(
        tls.starts_with("on: ") && tls.contains("uprobe-multi"),
        "{tls}"
    );
}

/// With `ebpf.tls: false` the loader holds exactly the same capabilities, one more seccomp
/// filter (`loader_no_attach`, which denies `BPF_LINK_CREATE` again), and `--audit` says TLS
/// capture is off.
#[test]
fn audit_with_tls_capture_off_shows_the_same_capabilities_and_says_so() {
    let _guard = serial();
    let dir = TempDir::new("audit-notls");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[("SONDE_TLS", "false")],
        &dir,
        &[server.pid()],
    );
    let (report, ok) = audit(&sonde.control_socket);
    assert!(ok, "audit failed: {report:#}");
    let loaders = report["loaders"].as_array().expect("loaders");
    let effective: Vec<(String, String)> =
        serde_json::from_value(loaders[0]["capabilities"]["effective"].clone()).expect("caps");
    let names: Vec<&str> = effective.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "CAP_DAC_READ_SEARCH",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_PTRACE"
        ]
    );
    assert_eq!(loaders[0]["seccomp_filters"], 4);
    let tls = report["tls_capture"].as_str().expect("tls_capture");
    assert!(tls.starts_with("off (ebpf.tls: false)"), "{tls}");
}

#[test]
fn audit_flags_a_processor_running_without_landlock() {
    let _guard = serial();
    let dir = TempDir::new("audit-nolandlock");
    let port = free_port();
    let loader = Sonde::start_binary(
        "sonde-loader",
        &["--open-port", &port.to_string()],
        &[],
        &dir,
    );
    loader.wait_log("control socket listening", Duration::from_secs(30));
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
    .arg(installed_binary("sonde-processor", &dir))
    .arg("--insecure-no-landlock")
    .arg("--control")
    .arg(&loader.control_socket);
    let processor = Sonde::attach("sonde-processor", cmd, &[], loader.control_socket.clone());
    processor.wait_log("ring buffer mapped", Duration::from_secs(30));
    loader.wait_log("processor connected", Duration::from_secs(10));

    let (report, ok) = audit(&loader.control_socket);
    assert!(!ok, "audit passed a processor without Landlock: {report:#}");
    let problems: Vec<String> =
        serde_json::from_value(report["problems"].clone()).expect("problems");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("without Landlock"), "{problems:?}");
    assert_eq!(report["processors"][0]["landlock"], false);
}

/// `loader.user: root` keeps `sonde` at uid 0 after start-up: the operator's choice, which
/// `--audit` reports as a departure from the policy.
#[test]
fn audit_flags_a_single_host_loader_left_at_uid_0() {
    let _guard = serial();
    let dir = TempDir::new("audit-root-loader");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[("SONDE_LOADER_USER", "root")],
        &dir,
        &[server.pid()],
    );
    sonde.wait_log("loader.user is root", Duration::from_secs(5));
    let (report, ok) = audit(&sonde.control_socket);
    assert!(!ok, "audit passed a loader at uid 0: {report:#}");
    let problems: Vec<String> =
        serde_json::from_value(report["problems"].clone()).expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("runs with uid 0 after start-up")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("runs with gid 0 after start-up")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
}
