//! No secrets out: a real Python server and real requests carrying credentials (a malformed
//! request line followed by `Authorization: Bearer …`, a query with `X-Amz-Signature` and
//! `password`), traced by `sonde` with the JSON and text printers and OTLP export. The
//! credential never appears in any byte printed on stdout, logged on stderr or received by the
//! OTLP receiver; the query is not exported at all by default and is redacted when
//! `attributes.url_query` is on; control characters from a header are escaped in the text
//! printer.

use std::{io::Read, process::Command, time::Duration};

use serde_json::Value;
use sonde_e2e::{otlp::*, *};

/// The credential every request carries; no output may hold it.
const SECRET: &str = "S3cr3tTok3nZq9";

/// What one run produced.
struct Outcome {
    stdout: Vec<u8>,
    otlp: String,
    otlp_spans: Vec<Value>,
    log: Vec<String>,
}

/// Sends raw bytes on a fresh connection, half-closes, and drains the answer.
fn send_raw(port: u16, bytes: &[u8]) {
    let mut conn = HttpConn::open(port);
    conn.write_raw(bytes);
    let _ = conn.stream().shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = conn.stream().read_to_end(&mut sink);
}

/// Runs `sonde` with `printer` and, when `query` is set, `attributes.url_query: true` (from
/// the configuration file); stdout goes byte for byte to a file; spans are exported over
/// OTLP/gRPC. Sends the three hostile requests and returns everything that came out.
fn run(printer: &str, query: bool) -> Outcome {
    let _guard = serial();
    let dir = TempDir::new(&format!("secrets-{printer}-{query}"));
    let port = free_port();
    let receiver = Receiver::start(&dir, free_port(), 0);
    let server = start_server(ServerKind::Python, port, &dir);
    let config = dir.path("sonde.yaml");
    let yaml = if query {
        "attributes:\n  url_query: true\n"
    } else {
        "service_namespace: secrets\n"
    };
    std::fs::write(&config, yaml).expect("writing the test configuration");
    let stdout = dir.path("stdout.raw");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    // `exec` keeps the pid; stdout (sonde's and the processor's, which inherits it) goes to
    // the file untouched, stderr to the harness's log collector.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec \"$0\" \"$@\" > '{}'", stdout.display()))
        .arg(binary("sonde"))
        .args(["--config", config.to_str().expect("utf-8 path")])
        .args(["--open-port", &port.to_string()]);
    let sonde = Sonde::attach(
        "sonde",
        cmd,
        &[
            ("BEYLA_TRACE_PRINTER", printer),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        dir.path("control.sock"),
    );
    sonde.wait_log("processor connected", Duration::from_secs(30));
    sonde.wait_selected(server.pid());

    // A request line with a space in the target: the next header line must not become path.
    send_raw(
        port,
        format!("GET /a b HTTP/1.1\r\nAuthorization: Bearer {SECRET}\r\nHost: x\r\n\r\n")
            .as_bytes(),
    );
    // Credentials in the query.
    let mut conn = HttpConn::open(port);
    conn.request(
        "GET",
        &format!("/p?X-Amz-Signature={SECRET}&password={SECRET}&ok=1"),
        None,
        true,
    );
    // A Host header carrying ESC and a bare CR.
    send_raw(
        port,
        b"GET /esc HTTP/1.1\r\nHost: evil\x1b[2J\rX\r\nConnection: close\r\n\r\n",
    );

    let spans = receiver.wait_spans(3, Duration::from_secs(20), |s| {
        s["attributes"]["server.port"] == port
    });
    assert_eq!(spans.len(), 3, "{spans:#?}");
    // Metrics too, so their bytes are checked as well.
    receiver.wait_points(
        "http.server.request.duration",
        3,
        Duration::from_secs(20),
        |p| p["resource"]["process.pid"] == server.pid(),
    );
    let mut sonde = sonde;
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    Outcome {
        stdout: std::fs::read(&stdout).expect("stdout file"),
        otlp: std::fs::read_to_string(&receiver.out).expect("receiver output"),
        otlp_spans: spans,
        log: sonde.log_lines(),
    }
}

/// The checks that hold whatever the printer and the query setting.
fn assert_no_secret(o: &Outcome) {
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let stdout = String::from_utf8_lossy(&o.stdout);
    for needle in [SECRET, "Authorization", "Bearer"] {
        assert!(
            !contains(&o.stdout, needle),
            "{needle} on stdout:\n{stdout}"
        );
        assert!(!o.otlp.contains(needle), "{needle} in OTLP:\n{}", o.otlp);
        assert!(
            !o.log.iter().any(|l| l.contains(needle)),
            "{needle} in the log:\n{}",
            o.log.join("\n")
        );
    }
    // No raw control character on stdout but the line ends.
    assert!(
        !o.stdout
            .iter()
            .any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f),
        "raw control bytes on stdout:\n{stdout:?}"
    );
    // The malformed request is reported with the path up to the space.
    let malformed = o
        .otlp_spans
        .iter()
        .find(|s| s["attributes"]["sonde.malformed"].is_string())
        .unwrap_or_else(|| panic!("no malformed span: {:#?}", o.otlp_spans));
    assert_eq!(malformed["attributes"]["url.path"], "/a", "{malformed}");
    assert_eq!(
        malformed["attributes"]["sonde.malformed"], "malformed request line",
        "{malformed}"
    );
}

/// The OTLP span of `/p` and what it says about the query.
fn otlp_query(o: &Outcome) -> Value {
    let p = o
        .otlp_spans
        .iter()
        .find(|s| s["attributes"]["url.path"] == "/p")
        .unwrap_or_else(|| panic!("no span for /p: {:#?}", o.otlp_spans));
    p["attributes"]["url.query"].clone()
}

const REDACTED_QUERY: &str = "X-Amz-Signature=REDACTED&password=REDACTED&ok=1";

#[test]
fn json_printer_and_otlp_export_no_query_by_default() {
    let o = run("json", false);
    assert_no_secret(&o);
    assert_eq!(otlp_query(&o), Value::Null, "no url.query by default");
    let spans: Vec<Value> = String::from_utf8(o.stdout.clone())
        .expect("utf-8 stdout")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON span"))
        .collect();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| s.get("query").is_none()), "{spans:#?}");
    let malformed = spans
        .iter()
        .find(|s| s.get("malformed").is_some())
        .expect("malformed span");
    assert_eq!(malformed["path"], "/a", "{malformed}");
    // JSON escapes the header's control characters.
    let esc = spans
        .iter()
        .find(|s| s["path"] == "/esc")
        .expect("span of /esc");
    assert_eq!(esc["host"], "evil\u{1b}[2J\rX", "{esc}");
    assert!(!o.otlp.contains("ok=1"), "{}", o.otlp);
}

#[test]
fn json_printer_and_otlp_export_redacted_query_when_enabled() {
    let o = run("json", true);
    assert_no_secret(&o);
    assert_eq!(otlp_query(&o), REDACTED_QUERY);
    let stdout = String::from_utf8(o.stdout.clone()).expect("utf-8 stdout");
    let p: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON span"))
        .find(|s| s["path"] == "/p")
        .unwrap_or_else(|| panic!("no span for /p: {stdout}"));
    assert_eq!(p["query"], REDACTED_QUERY, "{p}");
}

#[test]
fn text_printer_no_query_by_default_and_escaped_controls() {
    let o = run("text", false);
    assert_no_secret(&o);
    let stdout = String::from_utf8(o.stdout.clone()).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let p = lines
        .iter()
        .find(|l| l.contains(" GET /p "))
        .unwrap_or_else(|| panic!("no line for /p: {stdout}"));
    assert!(!p.contains('?'), "no query by default: {p}");
    // The header's ESC and CR are shown escaped.
    let esc = lines
        .iter()
        .find(|l| l.contains(" GET /esc "))
        .unwrap_or_else(|| panic!("no line for /esc: {stdout}"));
    assert!(esc.contains(" host=evil\\x1b[2J\\rX "), "{esc}");
    // A readable UTC time starts every line: 2026-12-01T09:30:05.123456789Z.
    for l in &lines {
        let t = l.split(' ').next().unwrap_or_default();
        assert_eq!(t.len(), 30, "{l}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{l}");
    }
    let malformed = lines
        .iter()
        .find(|l| l.contains("malformed="))
        .unwrap_or_else(|| panic!("no malformed line: {stdout}"));
    assert!(malformed.contains(" GET /a ["), "{malformed}");
}

#[test]
fn text_printer_redacted_query_when_enabled() {
    let o = run("text", true);
    assert_no_secret(&o);
    assert_eq!(otlp_query(&o), REDACTED_QUERY);
    let stdout = String::from_utf8(o.stdout.clone()).expect("utf-8 stdout");
    assert!(
        stdout.contains(&format!(" GET /p?{REDACTED_QUERY} [")),
        "{stdout}"
    );
}
