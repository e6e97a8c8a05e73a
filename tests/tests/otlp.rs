//! OTLP export against a real receiver built on the official protobuf definitions
//! (`tests/peers/otlp_receiver.py`, `opentelemetry-proto` + `grpcio`): exactly one span per
//! request with the semantic-convention attributes and resource, histograms whose counts equal
//! the requests per route and status, over gRPC and HTTP/protobuf; routes that stay bounded
//! under 10,000 unique ids; ignored routes leaving traces or metrics as configured; the
//! samplers; client spans and metrics; and a collector that goes away and comes back.

use std::time::Duration;

use serde_json::{Value, json};
use sonde_e2e::{otlp::*, *};

const DURATION: &str = "http.server.request.duration";

/// Starts `sonde` on `port` with `yaml` as its configuration and `env`.
fn start_sonde(dir: &TempDir, yaml: &str, env: &[(&str, &str)], port: u16, pid: u32) -> Sonde {
    let mut env = env.to_vec();
    env.push(("BEYLA_TRACE_PRINTER", "disabled"));
    Sonde::start_with_config_env(&dir.path("sonde.yaml"), yaml, port, dir, pid, &env)
}

/// Sends `n` GETs over one keep-alive connection, to `path(i)`; all must answer `status`.
fn keepalive_gets(port: u16, n: usize, status: u16, path: impl Fn(usize) -> String) {
    let mut conn = HttpConn::open(port);
    for i in 0..n {
        assert_eq!(conn.request("GET", &path(i), None, false), status);
    }
}

fn export(traces: (&str, &str), metrics: (&str, &str), compression: &str) {
    let dir = TempDir::new("otlp");
    let port = free_port();
    let receiver = Receiver::start(&dir, free_port(), free_port());
    let url = |proto: &str, signal: &str| match proto {
        "grpc" => format!("http://127.0.0.1:{}", receiver.grpc_port),
        _ => format!("http://127.0.0.1:{}/v1/{signal}", receiver.http_port),
    };
    let server = start_server(ServerKind::Python, port, &dir);
    let traces_url = url(traces.0, "traces");
    let metrics_url = url(metrics.0, "metrics");
    let sonde = start_sonde(
        &dir,
        "service_namespace: shop\n",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traces.1),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &metrics_url),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", metrics.1),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-sonde-test=a%20b"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", compression),
            // `url.query` is asserted below: export it (off by default).
            ("SONDE_URL_QUERY", "true"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        port,
        server.pid(),
    );
    let sent = send_standard_traffic(port);
    let service = exe_name(server.pid());

    let spans = receiver.wait_spans(sent.len(), Duration::from_secs(20), |s| {
        s["attributes"]["server.port"] == port
    });
    assert_eq!(spans.len(), sent.len(), "one span per request: {spans:#?}");
    let mut unmatched = spans.clone();
    for r in &sent {
        let pos = unmatched
            .iter()
            .position(|s| {
                s["attributes"]["url.path"] == r.path
                    && s["attributes"]["http.request.method"] == r.method
                    && s["attributes"]["http.response.status_code"] == r.status
            })
            .unwrap_or_else(|| panic!("no span for {} {}: {spans:#?}", r.method, r.path));
        let s = unmatched.remove(pos);
        let a = &s["attributes"];
        assert_eq!(s["transport"], traces.0, "{s}");
        assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER: {s}");
        assert_eq!(s["name"], format!("{} {}", r.method, r.path), "{s}");
        assert_eq!(a["http.route"], r.path, "{s}");
        // STATUS_CODE_ERROR for 5xx only on the server side.
        assert_eq!(s["status_code"], if r.status >= 500 { 2 } else { 0 }, "{s}");
        assert_eq!(a["url.scheme"], "http", "{s}");
        assert_eq!(a["server.address"], "127.0.0.1", "{s}");
        assert_eq!(a["server.port"], port, "{s}");
        assert_eq!(a["client.address"], "127.0.0.1", "{s}");
        assert_eq!(a["url.query"].as_str(), r.query, "{s}");
        if let Some(n) = r.body {
            assert_eq!(a["http.request.body.size"], n, "{s}");
        }
        assert_eq!(s["trace_id"].as_str().map(str::len), Some(32), "{s}");
        assert!(s["end_ns"].as_u64() > s["start_ns"].as_u64(), "{s}");
        let res = &s["resource"];
        assert_eq!(res["service.name"], service.as_str(), "{s}");
        assert_eq!(res["service.namespace"], "shop", "{s}");
        assert_eq!(res["process.pid"], server.pid(), "{s}");
        assert_eq!(res["process.executable.name"], service.as_str(), "{s}");
        assert_eq!(res["telemetry.sdk.name"], "sonde", "{s}");
        assert_eq!(res["telemetry.sdk.language"], "python", "{s}");
        assert!(
            res["host.name"].as_str().is_some_and(|h| !h.is_empty()),
            "{s}"
        );
        assert_eq!(
            res["service.instance.id"],
            format!(
                "{}-{}",
                res["host.name"].as_str().unwrap_or(""),
                server.pid()
            ),
            "{s}"
        );
    }

    let points = receiver.wait_points(DURATION, sent.len() as u64, Duration::from_secs(20), |p| {
        p["resource"]["process.pid"] == server.pid()
    });
    for r in &sent {
        let expected = sent
            .iter()
            .filter(|o| o.path == r.path && o.status == r.status)
            .count() as u64;
        let got = count_where(
            &points,
            DURATION,
            &[
                ("http.route", json!(r.path)),
                ("http.response.status_code", json!(r.status)),
                ("http.request.method", json!(r.method)),
                ("service.name", json!(service)),
                ("service.namespace", json!("shop")),
            ],
        );
        assert_eq!(got, expected, "{} {}: {points:#?}", r.path, r.status);
    }
    let p = points
        .iter()
        .find(|p| p["name"] == DURATION)
        .expect("a duration point");
    assert_eq!(p["unit"], "s");
    assert_eq!(p["temporality"], 2, "cumulative");
    assert_eq!(p["transport"], metrics.0);
    assert_eq!(
        p["explicit_bounds"],
        json!([
            0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ])
    );
    let all = receiver.latest_points();
    let sizes = count_where(&all, "http.server.request.body.size", &[]);
    assert_eq!(sizes, sent.len() as u64, "{all:#?}");
    for r in receiver.requests() {
        assert_eq!(
            r["headers"]["x-sonde-test"], "a b",
            "headers reach the collector: {r}"
        );
        // grpcio decompresses before the handler sees the call and hides the encoding
        // header; over HTTP the receiver sees it and gunzips the body itself.
        if r["transport"] != "http" {
            continue;
        }
        let encoding = &r["headers"]["content-encoding"];
        match compression {
            "gzip" => assert_eq!(encoding, "gzip", "{r}"),
            _ => assert!(encoding.is_null() || encoding == "identity", "{r}"),
        }
    }
    drop(sonde);
}

#[test]
fn grpc_traces_and_http_metrics() {
    let _guard = serial();
    export(("grpc", "grpc"), ("http", "http/protobuf"), "none");
}

/// Compressed with gzip (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[test]
fn http_traces_and_grpc_metrics_gzip() {
    let _guard = serial();
    export(("http", "http/protobuf"), ("grpc", "grpc"), "gzip");
}

/// Runs nginx under Sonde with OTLP export to a fresh receiver; `yaml` is appended to the
/// export settings.
fn nginx_with_receiver(
    dir: &TempDir,
    yaml: &str,
    env: &[(&str, &str)],
) -> (Proc, u16, Receiver, Sonde) {
    let port = free_port();
    let receiver = Receiver::start(dir, 0, free_port());
    let server = start_server(ServerKind::Nginx, port, dir);
    let config = format!(
        "otel_traces_export:\n  endpoint: http://127.0.0.1:{r}\n  protocol: http/protobuf\n  batch_timeout: 200ms\notel_metrics_export:\n  endpoint: http://127.0.0.1:{r}\n  protocol: http/protobuf\n  interval: 500ms\n{yaml}",
        r = receiver.http_port
    );
    let sonde = start_sonde(dir, &config, env, port, server.pid());
    (server, port, receiver, sonde)
}

fn routes_of(points: &[Value]) -> std::collections::BTreeSet<String> {
    points
        .iter()
        .filter(|p| p["name"] == DURATION)
        .filter_map(|p| p["attributes"]["http.route"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn ten_thousand_unique_ids_keep_routes_bounded_and_ignored_routes_leave_metrics() {
    let _guard = serial();
    let dir = TempDir::new("otlp-routes");
    let (_server, port, receiver, _sonde) = nginx_with_receiver(
        &dir,
        "routes:\n  ignored_patterns: [/ok/health]\n  ignore_mode: metrics\n",
        &[],
    );
    keepalive_gets(port, 10_000, 200, |i| format!("/ok/users/{i}/profile"));
    keepalive_gets(port, 5, 200, |_| "/ok/health".into());

    let points = receiver.wait_points(DURATION, 10_000, Duration::from_secs(30), |_| true);
    let routes = routes_of(&points);
    assert_eq!(count_where(&points, DURATION, &[]), 10_000, "{routes:?}");
    // The default low-cardinality mode collapses the id position after 10 distinct values.
    assert!(routes.contains("/ok/users/*/profile"), "{routes:?}");
    assert!(routes.len() <= 11, "routes stay bounded: {routes:?}");
    assert!(
        !routes.contains("/ok/health"),
        "ignored in metrics: {routes:?}"
    );

    // ignore_mode metrics keeps the traces: every request, health checks included, once.
    let spans = receiver.wait_spans(10_005, Duration::from_secs(30), |_| true);
    assert_eq!(spans.len(), 10_005);
    let health = spans
        .iter()
        .filter(|s| s["attributes"]["url.path"] == "/ok/health")
        .count();
    assert_eq!(health, 5);
    let distinct_span_routes: std::collections::BTreeSet<_> = spans
        .iter()
        .map(|s| s["attributes"]["http.route"].to_string())
        .collect();
    assert!(distinct_span_routes.len() <= 12, "{distinct_span_routes:?}");
}

#[test]
fn ignored_routes_leave_traces_but_stay_in_metrics() {
    let _guard = serial();
    let dir = TempDir::new("otlp-ignore-traces");
    let (_server, port, receiver, _sonde) = nginx_with_receiver(
        &dir,
        "routes:\n  ignored_patterns: [/ok/health]\n  ignore_mode: traces\n",
        &[],
    );
    keepalive_gets(port, 7, 200, |_| "/ok/health".into());
    keepalive_gets(port, 3, 200, |i| format!("/ok/page{i}"));
    let points = receiver.wait_points(DURATION, 10, Duration::from_secs(20), |_| true);
    assert_eq!(
        count_where(&points, DURATION, &[("http.route", json!("/ok/health"))]),
        7
    );
    let spans = receiver.wait_spans(3, Duration::from_secs(20), |_| true);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s["attributes"]["url.path"] != "/ok/health")
    );
}

#[test]
fn traceidratio_exports_a_tenth_of_ten_thousand_and_metrics_count_all() {
    let _guard = serial();
    let dir = TempDir::new("otlp-ratio");
    let (_server, port, receiver, sonde) = nginx_with_receiver(
        &dir,
        "",
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
    );
    keepalive_gets(port, 10_000, 200, |i| format!("/ok/r{}", i % 5));
    let points = receiver.wait_points(DURATION, 10_000, Duration::from_secs(30), |_| true);
    assert_eq!(count_where(&points, DURATION, &[]), 10_000);
    // Wait for the batch timer, then count: 10% ± 2% is 9 standard deviations wide.
    std::thread::sleep(Duration::from_secs(2));
    let exported = receiver.spans().len();
    assert!(
        (800..=1200).contains(&exported),
        "exported {exported} of 10000"
    );
    drop(sonde);
}

#[test]
fn always_off_exports_no_span_but_metrics_count_every_request() {
    let _guard = serial();
    let dir = TempDir::new("otlp-off");
    let (_server, port, receiver, _sonde) =
        nginx_with_receiver(&dir, "", &[("OTEL_TRACES_SAMPLER", "always_off")]);
    keepalive_gets(port, 500, 200, |i| format!("/ok/o{}", i % 3));
    let points = receiver.wait_points(DURATION, 500, Duration::from_secs(20), |_| true);
    assert_eq!(count_where(&points, DURATION, &[]), 500);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.spans().len(), 0);
}

/// One aggregation, two encoders: with Prometheus and OTLP metrics both on, each route's
/// request count, and its sum of durations, are the same in both, and equal what was sent.
#[test]
fn prometheus_and_otlp_read_the_same_counts() {
    let _guard = serial();
    let dir = TempDir::new("otlp-both");
    let metrics_port = free_port();
    let (_server, port, receiver, _sonde) = nginx_with_receiver(
        &dir,
        &format!("prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\n"),
        &[],
    );
    let sent = [("/ok/a", 300), ("/ok/b", 120), ("/missing", 45)];
    for (path, n) in sent {
        let status = if path == "/missing" { 404 } else { 200 };
        keepalive_gets(port, n, status, |_| path.to_string());
    }
    let total: usize = sent.iter().map(|(_, n)| n).sum();
    let points = receiver.wait_points(DURATION, total as u64, Duration::from_secs(20), |_| true);
    // The OTLP points are cumulative; the scrape comes after them, and nothing more was sent.
    let text = scrape(metrics_port);
    for (path, n) in sent {
        let otlp = count_where(&points, DURATION, &[("http.route", json!(path))]);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains(&format!("http_route=\"{path}\""))
            })
            .unwrap_or_else(|| panic!("no Prometheus series for {path}: {text}"));
        let prometheus: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a count");
        assert_eq!((otlp, prometheus), (n as u64, n as u64), "{path}");
        let otlp_sum: f64 = points
            .iter()
            .filter(|p| p["name"] == DURATION && p["attributes"]["http.route"] == path)
            .filter_map(|p| p["sum"].as_f64())
            .sum();
        let prometheus_sum: f64 = text
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_sum{")
                    && l.contains(&format!("http_route=\"{path}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .expect("a sum");
        assert!(
            (otlp_sum - prometheus_sum).abs() < 1e-9 && otlp_sum > 0.0,
            "{path}: OTLP sum {otlp_sum}, Prometheus sum {prometheus_sum}"
        );
    }
}

/// The processor's pid: the child of `sonde` named sonde-processor.
fn processor_pid(sonde: &Sonde) -> u32 {
    let parent = sonde.proc.pid();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is parenthesised; the ppid is the second field after it.
        let Some((comm_part, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm_part.ends_with("(sonde-processor") && ppid == Some(parent) {
            return pid;
        }
    }
    panic!("no sonde-processor child of {parent}");
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .expect("VmRSS")
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn collector_down_bounds_memory_counts_drops_and_recovers() {
    let _guard = serial();
    let dir = TempDir::new("otlp-down");
    let port = free_port();
    let collector_port = free_port();
    let metrics_port = free_port();
    let server = start_server(ServerKind::Nginx, port, &dir);
    let config = format!(
        "otel_traces_export:\n  endpoint: http://127.0.0.1:{collector_port}\n  protocol: http/protobuf\n  queue_size: 200\n  batch_max_size: 100\n  batch_timeout: 100ms\n  timeout: 1s\nprometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\n"
    );
    let sonde = start_sonde(&dir, &config, &[], port, server.pid());
    let processor = processor_pid(&sonde);

    // Nothing listens on the collector port: exports fail, the queue fills, spans drop.
    keepalive_gets(port, 3000, 200, |i| format!("/ok/before/{i}"));
    std::thread::sleep(Duration::from_secs(2));
    let rss_first = rss_kib(processor);
    keepalive_gets(port, 3000, 200, |i| format!("/ok/before2/{i}"));
    std::thread::sleep(Duration::from_secs(2));
    let rss_second = rss_kib(processor);
    let text = scrape(metrics_port);
    let full = sample(&text, "sonde_otlp_spans_dropped_queue_full_total");
    let failed = sample(&text, "sonde_otlp_spans_dropped_export_failed_total");
    assert!(full > 0, "queue overflow counted:\n{text}");
    assert!(failed > 0, "failed exports counted:\n{text}");
    assert!(full + failed <= 6000, "{full} + {failed}");
    // 3000 more requests while the collector is down leave the processor's memory flat.
    assert!(
        rss_second <= rss_first + 4096,
        "RSS grew from {rss_first} KiB to {rss_second} KiB"
    );
    assert!(rss_second < 64 * 1024, "RSS {rss_second} KiB");

    // The collector comes back: spans arrive again without a restart of Sonde.
    let receiver = Receiver::start(&dir, 0, collector_port);
    // A batch already failing finishes its last retry within the 1 s export timeout.
    std::thread::sleep(Duration::from_secs(2));
    keepalive_gets(port, 50, 200, |i| format!("/ok/after/{i}"));
    let after = receiver.wait_spans(50, Duration::from_secs(20), |s| {
        s["attributes"]["url.path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/after/"))
    });
    assert_eq!(after.len(), 50);
    // Failures were reported, once (not once per batch), and so was the recovery.
    sonde.wait_log("OTLP export working again", Duration::from_secs(10));
    let warnings = sonde.log_count("OTLP export failing");
    assert!((1..=2).contains(&warnings), "{warnings} failure warnings");
    let text = scrape(metrics_port);
    assert!(
        sample(&text, "sonde_otlp_spans_exported_total") >= 50,
        "{text}"
    );
    drop(sonde);
}

#[test]
fn client_spans_carry_the_full_url_and_client_metrics_the_peer() {
    let _guard = serial();
    let dir = TempDir::new("otlp-client");
    let port = free_port();
    let receiver = Receiver::start(&dir, free_port(), 0);
    let _server = start_server(ServerKind::Python, port, &dir);
    let mut client = start_python_client(port, &CLIENT_PLAN);
    let pid = client.pid();
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    // Only the client is selected (by pid).
    let sonde = Sonde::start(
        &["--pid", &pid.to_string()],
        &[
            ("BEYLA_TRACE_PRINTER", "disabled"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &dir,
        &[pid],
    );
    let statuses = run_python_client(&mut client);
    assert_eq!(statuses, [200, 201, 404, 500]);

    let spans = receiver.wait_spans(4, Duration::from_secs(20), |s| {
        s["resource"]["process.pid"] == pid
    });
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for (path, status, error) in [
        ("/ok/one", 200, false),
        ("/submit", 201, false),
        ("/missing/two", 404, true),
        ("/error/three", 500, true),
    ] {
        let s = spans
            .iter()
            .find(|s| s["attributes"]["http.response.status_code"] == status)
            .unwrap_or_else(|| panic!("no client span with {status}: {spans:#?}"));
        let a = &s["attributes"];
        assert_eq!(s["kind"], 3, "SPAN_KIND_CLIENT: {s}");
        assert_eq!(
            a["url.full"],
            format!("http://127.0.0.1:{port}{path}"),
            "{s}"
        );
        assert_eq!(a["server.address"], "127.0.0.1", "{s}");
        assert_eq!(a["server.port"], port, "{s}");
        // Clients: 4xx is an error too.
        assert_eq!(s["status_code"], if error { 2 } else { 0 }, "{s}");
    }
    let post = spans
        .iter()
        .find(|s| s["attributes"]["http.request.method"] == "POST")
        .expect("POST span");
    assert_eq!(post["attributes"]["http.request.body.size"], 321, "{post}");

    let points = receiver.wait_points(
        "http.client.request.duration",
        4,
        Duration::from_secs(20),
        |_| true,
    );
    assert_eq!(
        count_where(
            &points,
            "http.client.request.duration",
            &[
                ("server.address", json!("127.0.0.1")),
                ("server.port", json!(port))
            ]
        ),
        4,
        "{points:#?}"
    );
    assert_eq!(count_where(&points, DURATION, &[]), 0, "no server metrics");
    drop(sonde);
}

#[test]
fn a_real_collector_in_between_forwards_every_span_and_point() {
    let _guard = serial();
    let dir = TempDir::new("otlp-rotel");
    let port = free_port();
    let receiver = Receiver::start(&dir, free_port(), 0);
    let (rotel_grpc, rotel_http) = (free_port(), free_port());
    let _rotel = start_rotel(
        rotel_grpc,
        rotel_http,
        &format!("http://127.0.0.1:{}", receiver.grpc_port),
    );
    let server = start_server(ServerKind::Python, port, &dir);
    let base = format!("http://127.0.0.1:{rotel_http}");
    // Sonde speaks HTTP/protobuf to rotel; rotel forwards over gRPC to the receiver.
    let _sonde = start_sonde(
        &dir,
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        port,
        server.pid(),
    );
    let sent = send_standard_traffic(port);
    let spans = receiver.wait_spans(sent.len(), Duration::from_secs(30), |s| {
        s["resource"]["process.pid"] == server.pid()
    });
    assert_eq!(spans.len(), sent.len(), "{spans:#?}");
    for r in &sent {
        assert_eq!(
            spans
                .iter()
                .filter(|s| s["attributes"]["url.path"] == r.path
                    && s["attributes"]["http.response.status_code"] == r.status
                    && s["name"] == format!("{} {}", r.method, r.path))
                .count(),
            sent.iter()
                .filter(|o| o.path == r.path && o.status == r.status)
                .count(),
            "{} {}: {spans:#?}",
            r.method,
            r.path
        );
    }
    assert!(
        spans
            .iter()
            .all(|s| s["resource"]["telemetry.sdk.name"] == "sonde")
    );
    let points = receiver.wait_points(DURATION, sent.len() as u64, Duration::from_secs(30), |p| {
        p["resource"]["process.pid"] == server.pid()
    });
    assert_eq!(
        count_where(&points, DURATION, &[]),
        sent.len() as u64,
        "{points:#?}"
    );
}

#[test]
fn tls_endpoints_are_verified_against_the_configured_ca() {
    let _guard = serial();
    let dir = TempDir::new("otlp-tls");
    let port = free_port();
    let (ca, cert, key) = test_certificates(&dir);
    let receiver = Receiver::start_with(&dir, free_port(), free_port(), Some((&cert, &key)));
    let server = start_server(ServerKind::Python, port, &dir);
    let traces = format!("https://localhost:{}", receiver.grpc_port);
    let metrics = format!("https://localhost:{}/v1/metrics", receiver.http_port);
    let ca_arg = ca.to_str().expect("utf-8 path").to_string();
    let env = |with_ca: bool| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics.as_str()),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ];
        if with_ca {
            env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_arg.as_str()));
        }
        env
    };

    // Trusting the test CA: gRPC over TLS and HTTPS both deliver.
    let sonde = start_sonde(&dir, "", &env(true), port, server.pid());
    let sent = send_standard_traffic(port);
    let spans = receiver.wait_spans(sent.len(), Duration::from_secs(20), |s| {
        s["attributes"]["server.port"] == port
    });
    assert_eq!(spans.len(), sent.len(), "{spans:#?}");
    assert!(spans.iter().all(|s| s["transport"] == "grpc"));
    let points = receiver.wait_points(DURATION, sent.len() as u64, Duration::from_secs(20), |p| {
        p["resource"]["process.pid"] == server.pid()
    });
    assert_eq!(count_where(&points, DURATION, &[]), sent.len() as u64);
    assert!(points.iter().all(|p| p["transport"] == "http"));
    drop(sonde);

    // Without it, the system's trust store does not know the test CA: nothing is sent, and
    // the failure is logged and counted.
    let before = receiver.requests().len();
    let sonde = start_sonde(&dir, "", &env(false), port, server.pid());
    let mut conn = HttpConn::open(port);
    assert_eq!(conn.request("GET", "/ok/untrusted", None, false), 200);
    drop(conn);
    sonde.wait_log("OTLP export failing", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        receiver.requests().len(),
        before,
        "nothing reached an untrusted server"
    );
}
