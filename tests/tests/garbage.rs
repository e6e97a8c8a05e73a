//! Hostile and broken traffic against an instrumented server: random bytes, a truncated
//! request, a 64 KiB request line and other protocols. Nothing crashes, nothing bogus is
//! reported as a normal request, and what was skipped or malformed is counted.

use std::{io::Read, time::Duration};

use serde_json::Value;
use sonde_e2e::*;

/// Deterministic pseudo-random bytes that never start like an HTTP method.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    out[0] = 0;
    out
}

/// Sends raw bytes on a fresh connection, half-closes, and drains whatever comes back.
fn send_raw(port: u16, bytes: &[u8]) {
    let mut conn = HttpConn::open(port);
    conn.write_raw(bytes);
    let _ = conn.stream().shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = conn.stream().read_to_end(&mut sink);
}

#[test]
fn garbage_is_survived_and_counted() {
    let _guard = serial();
    let dir = TempDir::new("garbage");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let yaml = "stats_interval_secs: 1\n";
    let mut sonde =
        Sonde::start_with_config(&dir.path("sonde.yaml"), yaml, port, &dir, server.pid());

    send_raw(port, &noise(4096));
    send_raw(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"); // TLS ClientHello start
    send_raw(port, b"SSH-2.0-OpenSSH_9.2p1\r\n");
    send_raw(port, b"*1\r\n$4\r\nPING\r\n"); // Redis
    send_raw(port, b"GET /truncated HTTP/1.1\r\nHost: x\r\nContent-Le");
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 64 * 1024));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    send_raw(port, &long);

    // The server and both Sonde processes are still there, and a normal request is traced.
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/after-garbage", None, true),
        200
    );
    let ok = sonde.wait_spans(1, Duration::from_secs(10), |s| {
        s["path"] == "/ok/after-garbage"
    });
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["status"], 200);
    assert!(ok[0].get("malformed").is_none());

    let spans = sonde.spans();
    let summary: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {:.40} {} {:?}",
                s["method"],
                s["path"],
                s["status"],
                s.get("malformed")
            )
        })
        .collect();
    // The 64 KiB request line is reported, marked malformed, with the server's 414.
    let long_spans: Vec<&Value> = spans
        .iter()
        .filter(|s| s["path"].as_str().is_some_and(|p| p.starts_with("/aaaa")))
        .collect();
    assert_eq!(long_spans.len(), 1, "{summary:?}");
    assert_eq!(
        long_spans[0]["malformed"],
        "request line exceeds the captured bytes"
    );
    assert_eq!(long_spans[0]["status"], 414);
    // The truncated request is reported once, with what the server made of it: Python treats
    // the early end of the headers as their end and routes the request (404).
    let truncated: Vec<&Value> = spans.iter().filter(|s| s["path"] == "/truncated").collect();
    assert_eq!(truncated.len(), 1, "{summary:?}");
    assert_eq!(truncated[0]["status"], 404, "{}", truncated[0]);
    assert_eq!(truncated[0]["host"], "x", "{}", truncated[0]);
    // The Redis command is one: a PING span of the server (which is no Redis server: its
    // answer is no RESP reply, so the span has none). Nothing else became a span: the other
    // three non-HTTP payloads produced none.
    let redis: Vec<&Value> = spans.iter().filter(|s| s["db_system"] == "redis").collect();
    assert_eq!(redis.len(), 1, "{summary:?}");
    assert_eq!(redis[0]["db_operation"], "PING", "{}", redis[0]);
    assert_eq!(redis[0]["kind"], "server", "{}", redis[0]);
    assert_eq!(spans.len(), 4, "{summary:?}");

    sonde.wait_log_nth("kernel counters", 2, Duration::from_secs(10));
    assert_eq!(
        sonde.log_count("processor started"),
        1,
        "the processor must not have restarted"
    );
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["spans"], 4, "{stats}");
    assert_eq!(stats["malformed"], 1, "{stats}");
    assert_eq!(stats["decode_errors"], 0, "{stats}");
    // Noise, SSH and Redis as non-HTTP; the TLS ClientHello apart, as TLS Sonde cannot read.
    let non_http = stats["kernel"]["non_http_payloads"].as_u64().unwrap_or(0);
    let tls = stats["kernel"]["tls_unlinked_payloads"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        non_http >= 3 && tls >= 1,
        "the four non-HTTP payloads must be counted in the kernel: {stats}"
    );
    assert_eq!(stats["kernel"]["events_lost_ringbuf_full"], 0, "{stats}");
}
