//! Client spans from an instrumented Python client, and no spans from processes that are not
//! selected.

use std::time::Duration;

use sonde_e2e::*;

#[test]
fn python_client_yields_client_spans() {
    let _guard = serial();
    let dir = TempDir::new("client");
    let port = free_port();
    let _server = start_server(ServerKind::Python, port, &dir);
    let plan = CLIENT_PLAN;
    let mut client = start_python_client(port, &plan);
    let pid = client.pid();
    let service = exe_name(pid);
    let pid_arg = pid.to_string();
    // Only the client is selected (by pid); the server is not.
    let sonde = Sonde::start(&["--pid", &pid_arg], &[], &dir, &[pid]);

    let statuses = run_python_client(&mut client);
    assert_eq!(
        statuses,
        [200, 201, 404, 500],
        "client saw unexpected statuses"
    );

    let spans = sonde.wait_spans(plan.len(), Duration::from_secs(15), |s| s["pid"] == pid);
    let got: Vec<(String, String, u64)> = spans
        .iter()
        .map(|s| {
            assert_eq!(s["kind"], "client", "{s}");
            assert_eq!(s["server_port"], port, "{s}");
            assert_eq!(s["server_address"], "127.0.0.1", "{s}");
            assert_eq!(s["service_name"], service.as_str(), "{s}");
            assert!(s["duration_ns"].as_u64().unwrap_or(0) > 0, "{s}");
            (
                s["method"].as_str().unwrap_or("").to_string(),
                s["path"].as_str().unwrap_or("").to_string(),
                s["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET".to_string(), "/ok/one".to_string(), 200),
            ("POST".to_string(), "/submit".to_string(), 201),
            ("GET".to_string(), "/missing/two".to_string(), 404),
            ("GET".to_string(), "/error/three".to_string(), 500),
        ]
    );
    let post = &spans[1];
    assert_eq!(post["request_body_size"], 321, "{post}");
    // The server was not selected: no server spans at all.
    assert!(
        sonde.spans().iter().all(|s| s["kind"] == "client"),
        "unexpected server spans"
    );
}

#[test]
fn unselected_server_produces_no_spans() {
    let _guard = serial();
    let dir = TempDir::new("unselected");
    let (selected_port, other_port) = (free_port(), free_port());
    let selected = start_server(ServerKind::Python, selected_port, &dir);
    let other = start_server(ServerKind::Node, other_port, &dir);
    let arg = selected_port.to_string();
    let sonde = Sonde::start(&["--open-port", &arg], &[], &dir, &[selected.pid()]);

    for i in 0..5 {
        assert_eq!(
            HttpConn::open(other_port).request("GET", &format!("/ok/other{i}"), None, true),
            200
        );
    }
    for i in 0..3 {
        assert_eq!(
            HttpConn::open(selected_port).request("GET", &format!("/ok/mine{i}"), None, true),
            200
        );
    }
    let spans = sonde.wait_spans(3, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), 3, "spans: {spans:?}");
    assert!(
        spans
            .iter()
            .all(|s| s["pid"] == selected.pid() && s["server_port"] == selected_port),
        "{spans:?}"
    );
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", other.pid())),
        0
    );
}

#[test]
fn port_ranges_select_servers_started_later() {
    let _guard = serial();
    let dir = TempDir::new("later");
    let port = free_port();
    let range = format!("{}-{}", port, port.saturating_add(1));
    // Sonde starts first; the server appears afterwards and is picked up when it listens.
    let sonde = Sonde::start(&["--open-port", &range], &[], &dir, &[]);
    let server = start_server(ServerKind::Python, port, &dir);
    sonde.wait_selected(server.pid());
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/late", None, true),
        200
    );
    let spans = sonde.wait_spans(1, Duration::from_secs(15), |s| s["pid"] == server.pid());
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["path"], "/ok/late");
    let line = sonde.wait_log(
        &format!("process selected pid={} ", server.pid()),
        Duration::from_secs(1),
    );
    assert_eq!(
        log_field(&line, "reason").as_deref(),
        Some("port"),
        "{line}"
    );
}

/// `discovery_exclude_uids`: a local user's listener on a selected port is not captured, while
/// the service on the other selected port is.
#[test]
fn a_listener_of_an_excluded_uid_is_not_selected() {
    let _guard = serial();
    let dir = TempDir::new("uidfilter");
    let (service_port, user_port) = (free_port(), free_port());
    let service = start_server(ServerKind::Python, service_port, &dir);
    // The same server as uid 65534, run from a copy it can read with Debian's python.
    let script = dir.path("python_server.py");
    std::fs::copy(server_script("python_server.py"), &script).expect("copy the server");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "/usr/bin/python3",
    ])
    .arg(&script)
    .arg(user_port.to_string());
    let user = Proc::spawn("python as uid 65534", &mut cmd);
    wait_for_port(user_port, Duration::from_secs(10));

    let config = dir.path("sonde.yaml");
    std::fs::write(&config, "discovery_exclude_uids: [65534]\n").expect("config");
    let ports = format!("{service_port},{user_port}");
    let sonde = Sonde::start(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            &ports,
        ],
        &[],
        &dir,
        &[service.pid()],
    );
    for port in [service_port, user_port, service_port, user_port] {
        assert_eq!(HttpConn::open(port).request("GET", "/uid", None, true), 404);
    }
    let spans = sonde.wait_spans(2, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 2, "{spans:?}");
    for s in &spans {
        assert_eq!(s["server_port"], service_port, "{s}");
    }
    assert_eq!(
        sonde.log_count(&format!("process selected pid={}", user.pid())),
        0,
        "{:?}",
        sonde.log_lines()
    );
}
