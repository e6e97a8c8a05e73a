//! Beyla discovery configuration (`discovery.instrument` globs, `discovery.services` regular
//! expressions, exclusions, the `OTEL_EBPF_*` aliases), the reference system's example files,
//! and the service-name ladder's rungs Sonde has without Kubernetes: the selector's name,
//! `service_name`, the process's own `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the
//! executable's name.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::*;

/// A Python test server on `port` with `env` added to its environment.
fn python_server_with_env(port: u16, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(server_script("python_server.py"))
        .arg(port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("python-server", &mut cmd);
    wait_for_port(port, Duration::from_secs(60));
    p
}

/// Starts `sonde --config <yaml>` (no selection flag), waiting until `selected` are selected.
fn sonde_with(dir: &TempDir, yaml: &str, env: &[(&str, &str)], selected: &[u32]) -> Sonde {
    let path = dir.path("sonde.yaml");
    std::fs::write(&path, yaml).expect("writing the test configuration");
    Sonde::start(
        &["--config", path.to_str().expect("utf-8 path")],
        env,
        dir,
        selected,
    )
}

/// One GET per port, each on its own connection.
fn one_request_each(ports: &[u16], path: &str) {
    for &port in ports {
        assert_eq!(HttpConn::open(port).request("GET", path, None, true), 404);
    }
}

/// The spans whose path is `path`, as (pid, service name, service namespace).
fn spans_of(sonde: &Sonde, n: usize, path: &str) -> Vec<(u64, String, Option<String>)> {
    let mut got: Vec<(u64, String, Option<String>)> = sonde
        .wait_spans(n, Duration::from_secs(15), |s| s["path"] == path)
        .iter()
        .map(|s: &Value| {
            (
                s["pid"].as_u64().unwrap_or(0),
                s["service_name"].as_str().unwrap_or("").to_string(),
                s["service_namespace"].as_str().map(str::to_string),
            )
        })
        .collect();
    got.sort();
    got
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary("sonde"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `discovery.instrument` selects exactly the server its glob and ports match (fields ANDed)
/// and names it; a second server on a port another selector names, with an executable that
/// selector's glob does not match, is never selected.
#[test]
fn instrument_selects_exactly_the_matching_server_and_names_it() {
    let _guard = serial();
    let dir = TempDir::new("disc-instrument");
    let (a, b) = (free_port(), free_port());
    let server_a = start_server(ServerKind::Python, a, &dir);
    let server_b = start_server(ServerKind::Python, b, &dir);
    let yaml = format!(
        "discovery:\n  instrument:\n    - open_ports: {a}\n      exe_path: '*/python3*'\n      name: shop-web\n      namespace: shop\n    - open_ports: {b}\n      exe_path: '*/node'\n      name: not-python\n"
    );
    // A key the reference system defines and Sonde does not apply: one warning at start.
    let yaml = format!("{yaml}ebpf:\n  wakeup_len: 100\n");
    let sonde = sonde_with(&dir, &yaml, &[], &[server_a.pid()]);
    assert_eq!(
        sonde
            .log_count("configuration: accepted but not implemented yet, ignored: ebpf.wakeup_len"),
        1
    );
    let line = sonde.wait_log(
        &format!("process selected pid={} ", server_a.pid()),
        Duration::from_secs(5),
    );
    assert!(
        line.contains("discovery.instrument[0] (exe */python3*, port"),
        "{line}"
    );
    assert!(line.contains("service=\"shop-web\""), "{line}");
    one_request_each(&[a, b, a], "/disc/instrument");
    let spans = spans_of(&sonde, 2, "/disc/instrument");
    let want = (
        u64::from(server_a.pid()),
        "shop-web".to_string(),
        Some("shop".to_string()),
    );
    assert_eq!(spans, vec![want.clone(), want]);
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", server_b.pid())),
        0
    );
}

/// `discovery.services` takes unanchored regular expressions (`python` matches the whole
/// path `/usr/bin/python3.x`), and `exclude_services` removes what it matches.
#[test]
fn services_regexes_and_exclude_services() {
    let _guard = serial();
    let dir = TempDir::new("disc-services");
    let (a, b) = (free_port(), free_port());
    let server_a = start_server(ServerKind::Python, a, &dir);
    let server_b = start_server(ServerKind::Python, b, &dir);
    let yaml = format!(
        "discovery:\n  services:\n    - open_ports: {a},{b}\n      exe_path: python\n      name: legacy\n  exclude_services:\n    - open_ports: {b}\n      exe_path: 'py.hon'\n"
    );
    let sonde = sonde_with(&dir, &yaml, &[], &[server_a.pid()]);
    one_request_each(&[a, b], "/disc/services");
    let spans = spans_of(&sonde, 1, "/disc/services");
    assert_eq!(
        spans,
        vec![(u64::from(server_a.pid()), "legacy".to_string(), None)]
    );
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", server_b.pid())),
        0
    );
}

/// `exclude_instrument` removes a server the include list selects; the environment's
/// `OTEL_EBPF_*` alias wins over `BEYLA_*` for the top-level selector.
#[test]
fn exclude_instrument_and_otel_ebpf_aliases() {
    let _guard = serial();
    let dir = TempDir::new("disc-exclude");
    let (a, b, c) = (free_port(), free_port(), free_port());
    let server_a = start_server(ServerKind::Python, a, &dir);
    let server_b = start_server(ServerKind::Python, b, &dir);
    let server_c = start_server(ServerKind::Python, c, &dir);
    let yaml = format!(
        "discovery:\n  instrument:\n    - open_ports: {a},{b}\n      name: listed\n  exclude_instrument:\n    - open_ports: {b}\n"
    );
    // The top-level selector from the environment: OTEL_EBPF_OPEN_PORT (c) wins over
    // BEYLA_OPEN_PORT (b, excluded anyway), named by OTEL_EBPF_SERVICE_NAME.
    let c_port = c.to_string();
    let b_port = b.to_string();
    let sonde = sonde_with(
        &dir,
        &yaml,
        &[
            ("BEYLA_OPEN_PORT", b_port.as_str()),
            ("OTEL_EBPF_OPEN_PORT", c_port.as_str()),
            ("OTEL_EBPF_SERVICE_NAME", "from-alias"),
        ],
        &[server_a.pid(), server_c.pid()],
    );
    one_request_each(&[a, b, c], "/disc/exclude");
    let spans = spans_of(&sonde, 2, "/disc/exclude");
    let mut want = vec![
        (u64::from(server_a.pid()), "listed".to_string(), None),
        (u64::from(server_c.pid()), "from-alias".to_string(), None),
    ];
    want.sort();
    assert_eq!(spans, want);
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", server_b.pid())),
        0
    );
}

/// Sonde never instruments the collector it exports to: a process listening on the port of
/// a local OTLP endpoint is not selected even when `open_port` covers it (nor Sonde itself,
/// whose binaries `default_exclude_instrument` names).
#[test]
fn the_local_collector_is_never_selected() {
    let _guard = serial();
    let dir = TempDir::new("disc-collector");
    let (collector, b) = (free_port(), free_port());
    let collector_server = start_server(ServerKind::Python, collector, &dir);
    let server_b = start_server(ServerKind::Python, b, &dir);
    let endpoint = format!("http://127.0.0.1:{collector}/v1/traces");
    let sonde = sonde_with(
        &dir,
        &format!("open_port: {collector},{b}\n"),
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str())],
        &[server_b.pid()],
    );
    one_request_each(&[collector, b], "/disc/collector");
    let spans = spans_of(&sonde, 1, "/disc/collector");
    assert_eq!(
        spans,
        vec![(u64::from(server_b.pid()), exe_name(server_b.pid()), None)]
    );
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", collector_server.pid())),
        0
    );
    assert!(
        !sonde
            .log_lines()
            .iter()
            .any(|l| l.contains("process selected") && l.contains("sonde")),
        "Sonde selected itself"
    );
}

/// The ladder's rungs without Kubernetes, one server each, one run: the selector's name over
/// the process's own OTEL_SERVICE_NAME; the top-level selector's `service_name`; the process's
/// OTEL_SERVICE_NAME / OTEL_SERVICE_NAMESPACE; `service.name` / `service.namespace` of its
/// OTEL_RESOURCE_ATTRIBUTES; the executable's name.
#[test]
fn service_name_rungs_without_kubernetes() {
    let _guard = serial();
    let dir = TempDir::new("disc-names");
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let selector = python_server_with_env(ports[0], &[("OTEL_SERVICE_NAME", "loses-to-selector")]);
    let top = python_server_with_env(ports[1], &[]);
    let env = python_server_with_env(
        ports[2],
        &[
            ("OTEL_SERVICE_NAME", "env-name"),
            ("OTEL_SERVICE_NAMESPACE", "env-ns"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=loses-to-env"),
        ],
    );
    let attrs = python_server_with_env(
        ports[3],
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.name=attr%20name,service.namespace=attr-ns",
        )],
    );
    let plain = python_server_with_env(ports[4], &[]);
    let yaml = format!(
        "open_port: {}\nservice_name: top-level\nservice_namespace: top-ns\ndiscovery:\n  instrument:\n    - open_ports: {}\n      name: selector-name\n    - open_ports: {},{},{}\n",
        ports[1], ports[0], ports[2], ports[3], ports[4]
    );
    let pids: Vec<u32> = [&selector, &top, &env, &attrs, &plain]
        .iter()
        .map(|p| p.pid())
        .collect();
    let sonde = sonde_with(&dir, &yaml, &[], &pids);
    one_request_each(&ports, "/disc/names");
    let spans = spans_of(&sonde, 5, "/disc/names");
    let s = |v: &str| Some(v.to_string());
    let mut want = vec![
        (pids[0], "selector-name".to_string(), None),
        (pids[1], "top-level".to_string(), s("top-ns")),
        (pids[2], "env-name".to_string(), s("env-ns")),
        (pids[3], "attr name".to_string(), s("attr-ns")),
        (pids[4], exe_name(pids[4]), None),
    ]
    .into_iter()
    .map(|(p, n, ns)| (u64::from(p), n, ns))
    .collect::<Vec<_>>();
    want.sort();
    assert_eq!(spans, want);
}

/// The reference system's example configuration (its product documents, `log_level: INFO`,
/// `discovery.services` with `name` + `open_port`, `ebpf.wakeup_len`,
/// `ebpf.track_request_headers`, `otel_traces_export.endpoint`) loads: `--print-config` shows
/// the effective configuration, and the warnings name what is accepted but not applied.
#[test]
fn the_reference_example_configuration_loads() {
    let path = repo_root().join("tests/configs/beyla-docs-example.yaml");
    let (code, out, err) = run(
        &["--config", path.to_str().expect("utf-8"), "--print-config"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "log_level: info",
        "discovery:",
        "  services:",
        "  - name: my-app",
        "    open_ports: '8080'",
        "otel_traces_export:",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    assert!(out.contains("http://tempo:4318"), "{out}");
    // No default ports: the file selects.
    assert!(!err.contains("no selection configured"), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        [
            "sonde: warning: accepted but not implemented yet, ignored: ebpf.wakeup_len, ebpf.track_request_headers, ebpf.high_request_volume",
            "sonde: warning: discovery.services[0]: open_port is read as open_ports (the selector field's name)",
        ],
        "{err}"
    );
    // The printed configuration is itself a valid file that prints the same.
    let dir = TempDir::new("disc-example");
    let printed = dir.path("printed.yaml");
    std::fs::write(&printed, &out).expect("write");
    let (code, again, err) = run(
        &[
            "--config",
            printed.to_str().expect("utf-8"),
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
}

/// A `discovery.instrument` file with Kubernetes selectors loads without a warning for its
/// include selectors; the exclusion with Kubernetes fields is named (it excludes nothing).
#[test]
fn a_kubernetes_instrument_file_loads_and_names_only_its_kubernetes_exclusion() {
    let path = repo_root().join("tests/configs/k8s-instrument.yaml");
    let (code, out, err) = run(
        &["--config", path.to_str().expect("utf-8"), "--print-config"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "  - k8s_namespace: production",
        "    k8s_pod_labels:",
        "      app.kubernetes.io/part-of: shop*",
        "    exe_path: '*/python3*'",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    // Selectors with Kubernetes fields select (the processor chooses among the loader's
    // candidates, tests/tests/k8s_selection.rs): no warning names them.
    assert!(!err.contains("selects nothing"), "{err}");
    assert!(
        err.contains("selector discovery.exclude_instrument[0] excludes nothing"),
        "{err}"
    );
    assert!(!err.contains("discovery.instrument[3]"), "{err}");
    // A bad regular expression stops the binaries at start, naming its key path.
    let dir = TempDir::new("disc-bad");
    let bad = dir.path("bad.yaml");
    std::fs::write(
        &bad,
        "discovery:\n  services:\n    - open_ports: 80\n    - k8s_namespace: '(prod'\n",
    )
    .expect("write");
    for bin in ["sonde", "sonde-loader", "sonde-processor"] {
        let out = Command::new(binary(bin))
            .args(["--config", bad.to_str().expect("utf-8")])
            .env_clear()
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains("discovery.services[1].k8s_namespace") && err.contains("(prod"),
            "{bin}: {err}"
        );
    }
}
