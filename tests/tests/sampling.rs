//! The trace sampler end to end: `always_off` prints no span while every request is still
//! built and counted; `traceidratio 0.1` keeps about a tenth of 2000 requests; the default
//! parent-based sampler follows the `sampled` flag of an incoming `traceparent`.

use std::{io::Write, time::Duration};

use sonde_e2e::*;

fn run(
    sampler: &str,
    arg: Option<&str>,
    requests: usize,
) -> (Vec<serde_json::Value>, serde_json::Value, u16) {
    let dir = TempDir::new("sampling");
    let port = free_port();
    // nginx: fast keep-alive answers, so 2000 requests take about a second.
    let server = start_server(ServerKind::Nginx, port, &dir);
    let mut env = vec![("OTEL_TRACES_SAMPLER", sampler)];
    if let Some(a) = arg {
        env.push(("OTEL_TRACES_SAMPLER_ARG", a));
    }
    let mut sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &env,
        &dir,
        &[server.pid()],
    );
    let mut conn = HttpConn::open(port);
    for i in 0..requests {
        assert_eq!(conn.request("GET", &format!("/ok/s{i}"), None, false), 200);
    }
    drop(conn);
    // Let the last exchange complete (close notice) and the processor drain.
    std::thread::sleep(Duration::from_millis(1500));
    let printed = sonde.spans();
    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    (printed, final_processor_stats(&sonde), port)
}

#[test]
fn always_off_prints_nothing_but_counts_every_request() {
    let _guard = serial();
    let (printed, stats, _) = run("always_off", None, 20);
    assert_eq!(printed.len(), 0);
    assert_eq!(stats["spans"], 20, "{stats}");
    assert_eq!(stats["unsampled"], 20, "{stats}");
}

#[test]
fn traceidratio_keeps_about_a_tenth() {
    let _guard = serial();
    let (spans, stats, port) = run("traceidratio", Some("0.1"), 2000);
    let printed = spans.len();
    assert_eq!(stats["spans"], 2000, "{stats}");
    // 10% ± 3% (4.5 standard deviations of a binomial with n = 2000, p = 0.1).
    assert!((140..=260).contains(&printed), "printed {printed} of 2000");
    assert_eq!(stats["unsampled"], 2000 - printed, "{stats}");
    // What the sampler keeps is whole (a dropped span is built without its name, Host and
    // User-Agent), and each kept trace id is one the ratio keeps: the upper 63 bits of its
    // last 8 bytes below a tenth of 2^63.
    let host = format!("127.0.0.1:{port}");
    for s in &spans {
        let path = s["path"].as_str().expect("path");
        assert!(path.starts_with("/ok/s"), "{s}");
        assert!(
            s["name"].as_str().is_some_and(|n| n.starts_with("GET /")),
            "{s}"
        );
        assert_eq!(s["host"], host.as_str(), "{s}");
        assert_eq!(s["user_agent"], "sonde-e2e", "{s}");
        let id = s["trace_id"].as_str().expect("trace id");
        let low = u64::from_str_radix(&id[16..], 16).expect("hex trace id");
        assert!((low >> 1) < (0.1 * (1u64 << 63) as f64) as u64, "{s}");
    }
}

#[test]
fn parent_based_default_follows_the_callers_flag() {
    let _guard = serial();
    let Served {
        dir: _dir,
        port,
        server: _server,
        sonde,
    } = serve_python_with_sonde("sampling-parent");
    for (path, flags) in [
        ("/ok/sampled", "01"),
        ("/ok/not-sampled", "00"),
        ("/ok/no-parent", ""),
    ] {
        let mut conn = HttpConn::open(port);
        let header = if flags.is_empty() {
            String::new()
        } else {
            format!("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}\r\n")
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n");
        conn.stream().write_all(req.as_bytes()).expect("send");
        assert_eq!(conn.read_response(), 200);
    }
    let spans = sonde.wait_spans(2, Duration::from_secs(10), |_| true);
    let paths: Vec<&str> = spans.iter().filter_map(|s| s["path"].as_str()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths.contains(&"/ok/sampled") && paths.contains(&"/ok/no-parent"),
        "{paths:?}"
    );
    let sampled = spans
        .iter()
        .find(|s| s["path"] == "/ok/sampled")
        .expect("span");
    assert_eq!(sampled["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}
