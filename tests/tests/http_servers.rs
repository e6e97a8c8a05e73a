//! Real servers of four languages under real eBPF: exactly one server span per request, with
//! the right method, path, query, status, service name, body size and a positive duration.

use std::time::Duration;

use sonde_e2e::*;

fn check_server(kind: ServerKind) {
    let _guard = serial();
    let dir = TempDir::new(&format!("{kind:?}"));
    let port = free_port();
    let server = start_server(kind, port, &dir);
    // nginx answers from its worker, a child of the process we started.
    let port_arg = port.to_string();
    // The standard traffic's queries are asserted: export them (off by default).
    let env = [("SONDE_URL_QUERY", "true")];
    let sonde = Sonde::start(&["--open-port", &port_arg], &env, &dir, &[server.pid()]);
    let sent = send_standard_traffic(port);
    let expected: Vec<u16> = sent.iter().map(|s| s.status).collect();
    assert_eq!(
        expected,
        [200, 201, 404, 500, 200, 201, 404, 200],
        "server answered unexpected statuses"
    );
    let spans = sonde.wait_spans(sent.len(), Duration::from_secs(15), |s| {
        s["server_port"] == port
    });
    let service = exe_name(server.pid());
    assert_server_spans(&spans, &sent, &service, port);
}

#[test]
fn nginx_server_spans() {
    check_server(ServerKind::Nginx);
}

#[test]
fn python_server_spans() {
    check_server(ServerKind::Python);
}

#[test]
fn node_server_spans() {
    check_server(ServerKind::Node);
}

#[test]
fn java_server_spans() {
    check_server(ServerKind::Java);
}
