//! Service graph metrics (`application_service_graph`, issue 12 item 5) end to end: a Python
//! client process and the Python HTTP server it calls, both selected, and a second server
//! that is not. The Prometheus endpoint shows exactly one request per call on the
//! client/server edge named by both services (paired from the client and server spans, never
//! counted twice), its failures once, both duration histograms, and the calls to the
//! uninstrumented server as an edge to its address; with the feature off no
//! `traces_service_graph` family appears.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sonde_e2e::{otlp::Receiver, peers::*, *};

/// Calls to the selected server, of which `K` fail (500).
const N: u32 = 37;
const K: u32 = 5;
/// Calls to the server that is not selected.
const M: u32 = 11;

/// The value of the sample `name{…}` whose labels include every one of `labels`, summed over
/// the samples that match.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for l in text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
    {
        let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// A Python server named `service` (in namespace `shop`) on a free port.
fn server(dir: &TempDir, service: &str) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/servers/python_server.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_SERVICE_NAMESPACE", "shop");
    cmd.stdout(std::process::Stdio::null());
    let p = Proc::spawn(service, &mut cmd);
    wait_for_port(port, Duration::from_secs(30));
    let _ = dir;
    (p, port)
}

/// The front (client) process, gated: it sends once told to.
fn client(back: u16, outside: u16, n: u32, k: u32, m: u32) -> GatedPeer {
    let mut cmd = Command::new(python());
    cmd.arg(peer("graph_client.py"))
        .args([back, outside].map(|p| p.to_string()))
        .args([n, k, m].map(|x| x.to_string()))
        .env("OTEL_SERVICE_NAME", "graph-front")
        .env("OTEL_SERVICE_NAMESPACE", "shop");
    GatedPeer::start("graph_client", &mut cmd)
}

/// Starts `sonde` selecting `pids`, serving Prometheus on a free port, with `features`.
fn sonde(dir: &TempDir, pids: &[u32], features: &str) -> (Sonde, u16) {
    sonde_with(dir, pids, features, &[])
}

fn sonde_with(dir: &TempDir, pids: &[u32], features: &str, env: &[(&str, &str)]) -> (Sonde, u16) {
    let metrics_port = free_port();
    let mut args = Vec::new();
    for pid in pids {
        args.push("--pid".to_string());
        args.push(pid.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let port = metrics_port.to_string();
    let mut all_env = vec![
        ("BEYLA_PROMETHEUS_PORT", port.as_str()),
        ("BEYLA_METRICS_FEATURES", features),
    ];
    all_env.extend_from_slice(env);
    let sonde = Sonde::start(&args, &all_env, dir, pids);
    // Scraped only once the processor listens, as the other Prometheus tests do: the
    // selection can be logged before it binds the port (a refused connection failed CI once).
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(20));
    // The loader logs a selection before the processor has the process's name: wait until
    // the processor counts both processes, so no span is named before its service is known.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = format!("sonde_instrumented_processes {}", pids.len());
    while !http_get(metrics_port, "/metrics").contains(&ready) {
        assert!(
            Instant::now() < deadline,
            "the processor never knew {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (sonde, metrics_port)
}

#[test]
fn exact_requests_per_client_server_pair() {
    let _guard = serial();
    let dir = TempDir::new("service-graph");
    let (back, back_port) = server(&dir, "graph-back");
    let (_peer, peer_port) = server(&dir, "graph-outside");
    let mut front = client(back_port, peer_port, N, K, M);
    let (sonde, metrics_port) = sonde(
        &dir,
        &[front.pid(), back.pid()],
        "application,application_service_graph",
    );
    front.step();
    assert_eq!(
        front.line(),
        format!("done back:200={} back:500={K} peer:200={M}", N - K)
    );

    let pair = [
        "client=\"graph-front\"",
        "client_namespace=\"shop\"",
        "server=\"graph-back\"",
        "server_namespace=\"shop\"",
        "connection_type=\"\"",
    ];
    let outside = [
        "client=\"graph-front\"",
        "client_namespace=\"shop\"",
        "server=\"127.0.0.1\"",
        "server_namespace=\"\"",
        "connection_type=\"virtual_node\"",
    ];
    let total = "traces_service_graph_request_total";
    // Spans wait up to 2 s for their other end: poll until every request is counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && value(&http_get(metrics_port, "/metrics"), total, &[]) < Some(f64::from(N + M))
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    // Let anything counted late (a second count of one request) show.
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(metrics_port, "/metrics");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("service_graph"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(value(&text, total, &pair), Some(f64::from(N)), "{text}");
    assert_eq!(
        value(&text, "traces_service_graph_request_failed_total", &pair),
        Some(f64::from(K))
    );
    for h in ["client", "server"] {
        assert_eq!(
            value(
                &text,
                &format!("traces_service_graph_request_{h}_seconds_count"),
                &pair
            ),
            Some(f64::from(N)),
            "{h}"
        );
        assert_eq!(
            value(
                &text,
                &format!("traces_service_graph_request_{h}_seconds_bucket"),
                &[&pair[..], &["le=\"+Inf\""]].concat()
            ),
            Some(f64::from(N)),
            "{h}"
        );
    }
    assert_eq!(value(&text, total, &outside), Some(f64::from(M)));
    assert_eq!(
        value(&text, "traces_service_graph_request_failed_total", &outside),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "traces_service_graph_request_client_seconds_count",
            &outside
        ),
        Some(f64::from(M))
    );
    assert_eq!(
        value(
            &text,
            "traces_service_graph_request_server_seconds_count",
            &outside
        ),
        Some(0.0)
    );
    // Nothing else: every request of the pair was paired (no edge from the front's address
    // to graph-back), none counted twice.
    assert_eq!(value(&text, total, &[]), Some(f64::from(N + M)), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("traces_service_graph_request_total{"))
            .count(),
        2,
        "{text}"
    );
    promtool_check(&text);
    drop(sonde);
}

#[test]
fn off_by_default_nothing_registered() {
    let _guard = serial();
    let dir = TempDir::new("service-graph-off");
    let (back, back_port) = server(&dir, "graph-back");
    let (_peer, peer_port) = server(&dir, "graph-outside");
    let mut front = client(back_port, peer_port, 4, 1, 2);
    let (sonde, metrics_port) = sonde(&dir, &[front.pid(), back.pid()], "application");
    front.step();
    assert_eq!(front.line(), "done back:200=3 back:500=1 peer:200=2");
    // The RED metrics count the four server requests: the metrics are served and current.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(metrics_port, "/metrics");
        if value(&text, "http_server_request_duration_seconds_count", &[]) >= Some(4.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        value(&text, "http_server_request_duration_seconds_count", &[]),
        Some(4.0),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(metrics_port, "/metrics");
    assert!(!text.contains("service_graph"), "{text}");
    drop(sonde);
}

/// The latest OTLP point of `metric` on the resource of `service` whose attributes include
/// `attrs`: a histogram's count or a sum's value.
fn otlp_value(points: &[Value], service: &str, metric: &str, attrs: &[(&str, &str)]) -> u64 {
    points
        .iter()
        .filter(|p| p["name"] == metric && p["resource"]["service.name"] == service)
        .filter(|p| attrs.iter().all(|(k, v)| p["attributes"][*k] == json!(v)))
        .filter_map(|p| p["count"].as_u64().or_else(|| p["value"].as_u64()))
        .sum()
}

/// The same edges over OTLP: each process's meters carry what its spans saw (the request and
/// failure counts on the server's resource when paired, as the reference system counts them
/// on server spans; each duration on the resource of the span it came from).
#[test]
fn otlp_exports_the_edges_on_each_process_resource() {
    let _guard = serial();
    let dir = TempDir::new("service-graph-otlp");
    let receiver = Receiver::start(&dir, 0, free_port());
    let endpoint = format!("http://127.0.0.1:{}/v1/metrics", receiver.http_port);
    let (back, back_port) = server(&dir, "graph-back");
    let (_peer, peer_port) = server(&dir, "graph-outside");
    let mut front = client(back_port, peer_port, N, K, M);
    let (_sonde, metrics_port) = sonde_with(
        &dir,
        &[front.pid(), back.pid()],
        "application,application_service_graph",
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    front.step();
    assert_eq!(
        front.line(),
        format!("done back:200={} back:500={K} peer:200={M}", N - K)
    );
    let pair = [
        ("client", "graph-front"),
        ("client_namespace", "shop"),
        ("server", "graph-back"),
        ("server_namespace", "shop"),
        ("connection_type", ""),
    ];
    let outside = [
        ("client", "graph-front"),
        ("server", "127.0.0.1"),
        ("connection_type", "virtual_node"),
    ];
    let client_h = "traces_service_graph_request_client";
    let server_h = "traces_service_graph_request_server";
    receiver.wait_points(client_h, u64::from(N + M), Duration::from_secs(30), |_| {
        true
    });
    receiver.wait_points(server_h, u64::from(N), Duration::from_secs(30), |_| true);
    // A settle period so anything counted twice would show.
    std::thread::sleep(Duration::from_secs(3));
    let points = receiver.latest_points();
    let total = "traces_service_graph_request_total";
    let failed = "traces_service_graph_request_failed_total";
    assert_eq!(
        otlp_value(&points, "graph-back", total, &pair),
        u64::from(N)
    );
    assert_eq!(
        otlp_value(&points, "graph-back", failed, &pair),
        u64::from(K)
    );
    assert_eq!(
        otlp_value(&points, "graph-back", server_h, &pair),
        u64::from(N)
    );
    assert_eq!(
        otlp_value(&points, "graph-front", client_h, &pair),
        u64::from(N)
    );
    assert_eq!(otlp_value(&points, "graph-front", total, &pair), 0);
    assert_eq!(
        otlp_value(&points, "graph-front", total, &outside),
        u64::from(M)
    );
    assert_eq!(
        otlp_value(&points, "graph-front", client_h, &outside),
        u64::from(M)
    );
    let all_totals: u64 = ["graph-front", "graph-back"]
        .iter()
        .map(|s| otlp_value(&points, s, total, &[]))
        .sum();
    assert_eq!(all_totals, u64::from(N + M));
    // As the SDK instruments exported them: cumulative, the sums monotonic, the histograms
    // in seconds.
    for p in points.iter().filter(|p| {
        p["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("traces_service_graph"))
    }) {
        assert_eq!(p["temporality"], 2, "cumulative: {p}");
        if p["name"] == total || p["name"] == failed {
            assert_eq!(
                (&p["kind"], &p["is_monotonic"], &p["unit"]),
                (&json!("sum"), &json!(true), &json!("")),
                "{p}"
            );
        } else {
            assert_eq!(p["unit"], "s", "{p}");
        }
    }

    // One aggregation, two encoders: per edge, what the OTLP export carries (summed over the
    // processes' resources) is exactly what Prometheus shows.
    let text = http_get(metrics_port, "/metrics");
    let prometheus = [
        (total, "traces_service_graph_request_total"),
        (failed, "traces_service_graph_request_failed_total"),
        (
            client_h,
            "traces_service_graph_request_client_seconds_count",
        ),
        (
            server_h,
            "traces_service_graph_request_server_seconds_count",
        ),
    ];
    for edge in [&pair[..], &outside[..]] {
        let labels: Vec<String> = edge.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        for (otlp_name, prometheus_name) in prometheus {
            let over_otlp: u64 = ["graph-front", "graph-back"]
                .iter()
                .map(|s| otlp_value(&points, s, otlp_name, edge))
                .sum();
            assert_eq!(
                value(&text, prometheus_name, &labels),
                Some(over_otlp as f64),
                "{prometheus_name} {edge:?}: {text}"
            );
        }
    }
    assert_eq!(
        value(&text, "traces_service_graph_request_total", &[]),
        Some(f64::from(N + M))
    );
}
