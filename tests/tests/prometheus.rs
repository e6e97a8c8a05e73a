//! The Prometheus endpoint against real peers: the exposition Sonde serves passes
//! `promtool check metrics`, and Debian's Prometheus server, scraping it every second, answers
//! PromQL with exactly the requests the client sent, per method, route and status.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{peers::*, *};

/// Sum of `http_server_request_duration_seconds_count` samples whose labels contain all of
/// `labels`.
fn count(text: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends each `(path, status)` on a connection of its own (the Python server closes some after
/// answering), asserting the status; then scrapes until `n` requests are counted (bounded),
/// returning the last exposition.
fn send_and_scrape(port: u16, metrics_port: u16, sent: &[(&str, u16)], n: u64) -> String {
    for &(path, status) in sent {
        assert_eq!(
            HttpConn::open(port).request("GET", path, None, true),
            status
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(metrics_port, "/metrics");
        if count(&text, &[]) >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    text
}

#[test]
fn prometheus_scrapes_exact_counts_per_route_and_status() {
    let _guard = serial();
    let dir = TempDir::new("prometheus");
    let port = free_port();
    let metrics_port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let yaml = format!(
        "prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\nroutes:\n  patterns: [\"/ok/item/{{id}}\"]\n  ignored_patterns: [/ok/health]\n"
    );
    let sonde = Sonde::start_with_config(&dir.path("sonde.yaml"), &yaml, port, &dir, server.pid());
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));

    let sent = [
        ("/ok/item/1", 200u16),
        ("/ok/item/2", 200),
        ("/ok/item/3", 200),
        ("/ok/item/4", 200),
        ("/error/boom", 500),
        ("/error/boom", 500),
        ("/missing", 404),
        ("/ok/health", 200),
    ];
    // Wait until all but the ignored request are counted.
    let text = send_and_scrape(port, metrics_port, &sent, 7);
    assert_eq!(count(&text, &[]), 7, "{text}");
    assert_eq!(
        count(
            &text,
            &[
                "http_route=\"/ok/item/{id}\"",
                "http_response_status_code=\"200\""
            ]
        ),
        4
    );
    assert_eq!(count(&text, &["http_response_status_code=\"500\""]), 2);
    assert_eq!(count(&text, &["http_response_status_code=\"404\""]), 1);
    assert!(!text.contains("/ok/health"), "ignored route in metrics");
    assert!(text.contains("target_info{"), "{text}");
    assert!(text.contains("sonde_instrumented_processes 1"), "{text}");
    assert!(http_get(metrics_port, "/other").contains("not found"));

    // promtool accepts the exposition.
    promtool_check(&text);

    // A real Prometheus server scrapes Sonde and answers PromQL.
    let prom_port = free_port();
    let prom_dir = dir.path("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = Proc::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(prom_port, Duration::from_secs(30));
    let query = "sum%20by%20(http_route%2Chttp_response_status_code)%20(http_server_request_duration_seconds_count)";
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut results: Vec<(String, String, u64)> = Vec::new();
    while Instant::now() < deadline {
        let body = http_get(prom_port, &format!("/api/v1/query?query={query}"));
        if let Ok(v) = serde_json::from_str::<Value>(&body) {
            results = v["data"]["result"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            (
                                r["metric"]["http_route"].as_str().unwrap_or("").to_string(),
                                r["metric"]["http_response_status_code"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_string(),
                                r["value"][1]
                                    .as_str()
                                    .and_then(|n| n.parse().ok())
                                    .unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if results.iter().map(|r| r.2).sum::<u64>() == 7 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    results.sort();
    let find = |route: &str, status: &str| {
        results
            .iter()
            .find(|r| r.0 == route && r.1 == status)
            .map_or(0, |r| r.2)
    };
    assert_eq!(find("/ok/item/{id}", "200"), 4, "{results:?}");
    assert_eq!(results.iter().map(|r| r.2).sum::<u64>(), 7, "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.1 == "500")
            .map(|r| r.2)
            .sum::<u64>(),
        2,
        "{results:?}"
    );
}

/// With nothing taking finished spans (printer disabled, no trace export) the processor builds
/// each span for the metrics alone (no ids drawn, no name made): the counts per route and
/// status are exactly what the client sent, routes from patterns and from the `heuristic`
/// mode alike, and the spans are counted but none is sampled or linked.
#[test]
fn metrics_only_counts_every_request_by_route_and_status() {
    let _guard = serial();
    let dir = TempDir::new("prometheus-metrics-only");
    let port = free_port();
    let metrics_port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let yaml = format!(
        "prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\nroutes:\n  patterns: [\"/ok/item/{{id}}\"]\n  unmatched: heuristic\n"
    );
    // The harness turns the JSON printer on; the environment wins over the file.
    let mut sonde = Sonde::start_with_config_env(
        &dir.path("sonde.yaml"),
        &yaml,
        port,
        &dir,
        server.pid(),
        &[("BEYLA_TRACE_PRINTER", "disabled")],
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    let sent = [
        ("/ok/item/1", 200u16, "/ok/item/{id}"),
        ("/ok/item/22", 200, "/ok/item/{id}"),
        ("/ok/orders/12/lines/3", 200, "/ok/orders/*/lines/*"),
        ("/ok/orders/777/lines/9f", 200, "/ok/orders/*/lines/*"),
        ("/ok/orders/5/lines/1", 200, "/ok/orders/*/lines/*"),
        ("/error/boom", 500, "/error/boom"),
        ("/missing", 404, "/missing"),
    ];
    let requests: Vec<(&str, u16)> = sent.iter().map(|&(p, s, _)| (p, s)).collect();
    let text = send_and_scrape(port, metrics_port, &requests, sent.len() as u64);
    assert_eq!(count(&text, &[]), sent.len() as u64, "{text}");
    for (route, status, n) in [
        ("/ok/item/{id}", 200, 2),
        ("/ok/orders/*/lines/*", 200, 3),
        ("/error/boom", 500, 1),
        ("/missing", 404, 1),
    ] {
        let labels = [
            format!("http_route=\"{route}\""),
            format!("http_response_status_code=\"{status}\""),
            "http_request_method=\"GET\"".to_string(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(count(&text, &labels), n, "{route} {status}\n{text}");
    }
    promtool_check(&text);
    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["spans"], sent.len() as u64, "{stats}");
    assert_eq!(stats["unsampled"], 0, "{stats}");
    // Nothing printed: the spans were the metrics' alone.
    assert!(sonde.spans().is_empty(), "{:?}", sonde.spans());
}
