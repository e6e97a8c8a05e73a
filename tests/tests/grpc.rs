//! gRPC under real eBPF, both ends instrumented: a Python grpcio server (selected by its port)
//! and a Python grpcio client (selected by its pid) multiplexing 45 concurrent unary calls on
//! one HTTP/2 connection (40 OK, 3 NOT_FOUND, 2 INTERNAL) plus one server-streaming call of
//! 10 messages 100 ms apart. Exactly one server span and one client span per call, with the
//! gRPC method and status from the trailers; the streaming span ends at the trailers. The
//! OTLP and Prometheus RPC metrics count the same calls per method and status.
//!
//! The peers: `tests/peers/grpc_peer.py` (service `sonde.test.Echo`, raw-bytes messages, no
//! generated code), run by the test virtualenv's Python (grpcio).

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sonde_e2e::{otlp::*, peers::*, *};

const SAY: &str = "sonde.test.Echo/Say";
const COUNT: &str = "sonde.test.Echo/Count";
/// Concurrent unary calls on the one channel.
const CALLS: u64 = 45;
/// (status code name, gRPC status code, calls asking for it).
const FAILURES: [(&str, u64, u64); 2] = [("NOT_FOUND", 5, 3), ("INTERNAL", 13, 2)];
/// The Count call: 10 messages, each after 100 ms.
const STREAM: &str = "10,100";
/// The server holds each Say call this long after sending its response headers
/// (`grpc_peer.py --say-delay-ms`, default 100): a span ending at the headers instead of the
/// trailers would be shorter.
const SAY_HOLD_NS: u64 = 100_000_000;

/// The metric and attribute names the assertions use, in one place (as the processor names
/// them in `protocols/grpc.rs`: the reference system's current RPC conventions).
mod names {
    // OTLP span and metric attributes, and the duration histograms.
    pub const OTLP_SERVER_DURATION: &str = "rpc.server.call.duration";
    pub const OTLP_CLIENT_DURATION: &str = "rpc.client.call.duration";
    pub const OTLP_SYSTEM: &str = "rpc.system.name";
    pub const OTLP_METHOD: &str = "rpc.method";
    pub const OTLP_STATUS: &str = "rpc.response.status_code";
    /// The OTLP status attribute's value for a code: the status name, as a string.
    pub fn otlp_status(code: u64) -> serde_json::Value {
        serde_json::json!(status_name(code))
    }
    // Prometheus.
    pub const PROM_SERVER_COUNT: &str = "rpc_server_call_duration_seconds_count";
    pub const PROM_CLIENT_COUNT: &str = "rpc_client_call_duration_seconds_count";
    pub const PROM_SYSTEM: &str = "rpc_system_name";
    pub const PROM_METHOD: &str = "rpc_method";
    pub const PROM_STATUS: &str = "rpc_response_status_code";
    /// The Prometheus status label's value for a code.
    pub fn prom_status(code: u64) -> String {
        status_name(code).to_string()
    }

    /// The canonical name of a gRPC status code (`grpc/doc/statuscodes.md`).
    pub fn status_name(code: u64) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(code as usize).copied().unwrap_or("_OTHER")
    }
}

/// Calls per (method, gRPC status code) the client makes.
fn expected_calls() -> BTreeMap<(String, u64), u64> {
    let failed: u64 = FAILURES.iter().map(|f| f.2).sum();
    let mut m = BTreeMap::new();
    m.insert((SAY.to_string(), 0), CALLS - failed);
    for (_, code, k) in FAILURES {
        m.insert((SAY.to_string(), code), k);
    }
    m.insert((COUNT.to_string(), 0), 1);
    m
}

fn total_calls() -> usize {
    expected_calls().values().sum::<u64>() as usize
}

fn grpc_peer(mode: &str, port: u16) -> Command {
    let mut cmd = Command::new(otlp_python());
    cmd.arg(repo_root().join("tests/peers/grpc_peer.py"))
        .arg(mode)
        .arg("--port")
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// The gRPC server on `port`, listening.
fn start_grpc_server(port: u16) -> Proc {
    let mut p = Proc::spawn("grpc-server", &mut grpc_peer("server", port));
    assert_eq!(
        read_line(&mut p, Duration::from_secs(30)).trim(),
        "ready",
        "the gRPC server did not start"
    );
    p
}

/// The gRPC client for `port`, waiting for a line on its standard input before it connects.
fn start_grpc_client(port: u16) -> Proc {
    let fail = FAILURES
        .iter()
        .map(|(name, _, k)| format!("{name}:{k}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = grpc_peer("client", port);
    cmd.args(["--calls", &CALLS.to_string(), "--fail", &fail])
        .args(["--stream", STREAM, "--wait"])
        .stdin(Stdio::piped());
    Proc::spawn("grpc-client", &mut cmd)
}

/// Lets the client go; checks what it got: every call answered as asked, 10 stream messages,
/// one HTTP/2 connection, the unary calls in flight together.
fn run_grpc_client(client: &mut Proc) {
    client
        .child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("start the client");
    let line = read_line(client, Duration::from_secs(90));
    let mut got: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client output ({e}): {line:?}"));
    let inflight = got["max_inflight"].as_u64().unwrap_or(0);
    got.as_object_mut().expect("object").remove("max_inflight");
    let mut say = json!({ "OK": CALLS - FAILURES.iter().map(|f| f.2).sum::<u64>() });
    for (name, _, k) in FAILURES {
        say[name] = json!(k);
    }
    assert_eq!(
        got,
        json!({
            "Say": say,
            "Count": { "OK": 1 },
            "count_messages": 10,
            "connections": 1,
        }),
        "what the client got"
    );
    // All 45 are issued at once and each is held 100 ms: they overlap on the one connection.
    assert!(inflight >= 20, "only {inflight} calls in flight at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks one side's spans (`kind` "server" or "client"): exactly one per call, counted per
/// (method, status), each a gRPC span over HTTP/2.
fn assert_rpc_spans(spans: &[Value], kind: &str, port: u16) {
    let brief = |s: &Value| {
        format!(
            "{} {} {} rpc_status={} {}ms",
            s["kind"],
            s["name"],
            s["status"],
            s["rpc_status"],
            s["duration_ns"].as_u64().unwrap_or(0) / 1_000_000
        )
    };
    let listed: Vec<String> = spans.iter().map(brief).collect();
    let mut got: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for s in spans {
        let method = s["rpc_method"].as_str().unwrap_or("").to_string();
        let code = s["rpc_status"].as_u64().unwrap_or(u64::MAX);
        *got.entry((method, code)).or_default() += 1;
    }
    assert_eq!(got, expected_calls(), "{kind} spans: {listed:?}");
    assert_eq!(spans.len(), total_calls(), "{listed:?}");
    for s in spans {
        let method = s["rpc_method"].as_str().unwrap_or("");
        assert_eq!(s["kind"], kind, "{s}");
        assert_eq!(s["name"], method, "{s}");
        assert_eq!(s["rpc_system"], "grpc", "{s}");
        assert_eq!(s["path"], format!("/{method}"), "{s}");
        assert_eq!(s["method"], "POST", "{s}");
        // The HTTP status stays 200; the gRPC status comes from the trailers.
        assert_eq!(s["status"], 200, "{s}");
        assert_eq!(s["protocol_version"], "2", "{s}");
        assert_eq!(s["scheme"], "http", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
        assert_eq!(s["server_address"], "127.0.0.1", "{s}");
        assert!(
            s["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("grpc-python")),
            "{s}"
        );
        assert!(s.get("malformed").is_none(), "{s}");
        assert_eq!(s["no_response"], false, "{s}");
        assert_eq!(s["trace_id"].as_str().map(str::len), Some(32), "{s}");
        let duration = s["duration_ns"].as_u64().unwrap_or(0);
        if method == COUNT {
            // Ten messages 100 ms apart: the span ends at the trailers, not the first message.
            assert!(duration >= 900_000_000, "Count lasted {duration} ns: {s}");
        } else {
            assert!(
                duration >= SAY_HOLD_NS - 1_000_000,
                "Say lasted {duration} ns: {s}"
            );
        }
    }
}

#[test]
fn grpc_server_and_client_spans_per_method_and_status() {
    let _guard = serial();
    let dir = TempDir::new("grpc");
    let port = free_port();
    let server = start_grpc_server(port);
    let mut client = start_grpc_client(port);
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let sonde = Sonde::start(
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &[],
        &dir,
        &[server_pid, client_pid],
    );
    run_grpc_client(&mut client);

    let n = total_calls();
    let server_spans = sonde.wait_spans(n, Duration::from_secs(30), |s| s["pid"] == server_pid);
    assert_rpc_spans(&server_spans, "server", port);
    let client_spans = sonde.wait_spans(n, Duration::from_secs(30), |s| s["pid"] == client_pid);
    assert_rpc_spans(&client_spans, "client", port);
    assert_eq!(
        sonde.spans().len(),
        2 * n,
        "no other span from either process"
    );
}

// ---- Metrics ---------------------------------------------------------------------------------

/// Sum of the `metric` samples whose labels include every `name="value"` of `labels`.
fn prom_count(text: &str, metric: &str, labels: &[(&str, String)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Whether a span with this gRPC status is an error (span status ERROR) on this side: the
/// RPC conventions mark every non-OK code on clients, and only UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS on servers.
fn is_error(kind: &str, code: u64) -> bool {
    match kind {
        "client" => code != 0,
        _ => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

#[test]
fn grpc_otlp_and_prometheus_count_calls_per_method_and_status() {
    let _guard = serial();
    let dir = TempDir::new("grpc-metrics");
    let port = free_port();
    let metrics_port = free_port();
    let receiver = Receiver::start(&dir, free_port(), 0);
    let server = start_grpc_server(port);
    let mut client = start_grpc_client(port);
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!("prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\n"),
    )
    .expect("writing the test configuration");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let sonde = Sonde::start(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &dir,
        &[server_pid, client_pid],
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    run_grpc_client(&mut client);
    let n = total_calls();

    // OTLP spans: one per call and side, named by the method, with the RPC attributes.
    let spans = receiver.wait_spans(2 * n, Duration::from_secs(30), |s| {
        s["resource"]["process.pid"] == server_pid || s["resource"]["process.pid"] == client_pid
    });
    assert_eq!(spans.len(), 2 * n, "{spans:#?}");
    for (kind, otlp_kind, pid) in [("server", 2, server_pid), ("client", 3, client_pid)] {
        let side: Vec<&Value> = spans
            .iter()
            .filter(|s| s["resource"]["process.pid"] == pid)
            .collect();
        for ((method, code), want) in expected_calls() {
            let got = side
                .iter()
                .filter(|s| {
                    s["attributes"][names::OTLP_METHOD] == method.as_str()
                        && s["attributes"][names::OTLP_STATUS] == names::otlp_status(code)
                })
                .count() as u64;
            assert_eq!(got, want, "{kind} {method} {code}: {side:#?}");
        }
        for s in &side {
            let a = &s["attributes"];
            assert_eq!(s["kind"], otlp_kind, "{s}");
            assert_eq!(s["name"], a[names::OTLP_METHOD], "{s}");
            assert_eq!(a[names::OTLP_SYSTEM], "grpc", "{s}");
            assert_eq!(a["server.port"], port, "{s}");
            let code = (0..=16u64)
                .find(|c| a[names::OTLP_STATUS] == names::otlp_status(*c))
                .unwrap_or_else(|| panic!("no gRPC status: {s}"));
            let error = is_error(kind, code);
            assert_eq!(s["status_code"], if error { 2 } else { 0 }, "{s}");
        }
    }

    // OTLP metrics: the call duration histograms count every call per method and status.
    for (metric, pid) in [
        (names::OTLP_SERVER_DURATION, server_pid),
        (names::OTLP_CLIENT_DURATION, client_pid),
    ] {
        let points = receiver.wait_points(metric, n as u64, Duration::from_secs(20), |p| {
            p["resource"]["process.pid"] == pid
        });
        assert_eq!(count_where(&points, metric, &[]), n as u64, "{points:#?}");
        for ((method, code), want) in expected_calls() {
            let got = count_where(
                &points,
                metric,
                &[
                    (names::OTLP_SYSTEM, json!("grpc")),
                    (names::OTLP_METHOD, json!(method)),
                    (names::OTLP_STATUS, names::otlp_status(code)),
                ],
            );
            assert_eq!(got, want, "{metric} {method} {code}: {points:#?}");
        }
    }

    // Prometheus: the same counts, and promtool accepts the exposition.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(metrics_port, "/metrics");
        if prom_count(&text, names::PROM_SERVER_COUNT, &[]) >= n as u64
            && prom_count(&text, names::PROM_CLIENT_COUNT, &[]) >= n as u64
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for metric in [names::PROM_SERVER_COUNT, names::PROM_CLIENT_COUNT] {
        assert_eq!(
            prom_count(&text, metric, &[]),
            n as u64,
            "{metric}:\n{text}"
        );
        for ((method, code), want) in expected_calls() {
            let got = prom_count(
                &text,
                metric,
                &[
                    (names::PROM_SYSTEM, "grpc".to_string()),
                    (names::PROM_METHOD, method.clone()),
                    (names::PROM_STATUS, names::prom_status(code)),
                ],
            );
            assert_eq!(got, want, "{metric} {method} {code}:\n{text}");
        }
    }
    promtool_check(&text);
    drop(sonde);
}
