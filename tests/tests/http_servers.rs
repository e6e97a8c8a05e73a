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

/// HTTP/1 details the semantic conventions ask for, from a real server: the protocol version
/// of the request line (`1.0`, `1.1`), `User-Agent`, and a non-standard method reported as
/// `_OTHER` with the original kept apart and the span named `HTTP` (plus its route).
#[test]
fn protocol_version_user_agent_and_non_standard_methods() {
    let _guard = serial();
    let Served {
        dir: _dir,
        port,
        server: _server,
        sonde,
    } = serve_python_with_sonde("h1details");
    // A WebDAV method Python's server does not implement (501; it closes the connection).
    assert_eq!(
        HttpConn::open(port).request("PROPFIND", "/dav/x", None, false),
        501
    );
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/ua", None, true),
        200
    );
    // HTTP/1.0: the server closes after the response.
    let mut raw = HttpConn::open(port);
    raw.write_raw(b"GET /ok/old HTTP/1.0\r\nUser-Agent: old-client/1.0\r\n\r\n");
    assert_eq!(raw.read_response(), 200);

    let spans = sonde.wait_spans(3, Duration::from_secs(15), |s| s["server_port"] == port);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let by_path = |p: &str| {
        spans
            .iter()
            .find(|s| s["path"] == p)
            .unwrap_or_else(|| panic!("no span for {p}: {spans:#?}"))
    };
    let dav = by_path("/dav/x");
    assert_eq!(dav["method"], "_OTHER");
    assert_eq!(dav["method_original"], "PROPFIND");
    // `HTTP`, with the route the default learned tree gives the path.
    assert_eq!(dav["name"], "HTTP /dav/x");
    assert_eq!(dav["status"], 501);
    assert_eq!(dav["protocol_version"], "1.1");
    assert_eq!(dav["user_agent"], "sonde-e2e");
    let ua = by_path("/ok/ua");
    assert_eq!(ua["method"], "GET");
    assert!(ua.get("method_original").is_none(), "{ua}");
    assert_eq!(ua["protocol_version"], "1.1");
    assert_eq!(ua["scheme"], "http");
    let old = by_path("/ok/old");
    assert_eq!(old["protocol_version"], "1.0");
    assert_eq!(old["user_agent"], "old-client/1.0");
    assert_eq!(old["status"], 200);
}
