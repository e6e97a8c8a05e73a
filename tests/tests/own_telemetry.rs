//! The application's own OpenTelemetry context and export calls: an app instrumented with the
//! OpenTelemetry Python SDK (urllib instrumentation) calls a server; Sonde's client span joins
//! the SDK's trace under the SDK's span instead of starting a second trace, the server span
//! continues the same trace, and the app's OTLP export call never becomes a span. With
//! `discovery.exclude_otel_instrumented_services` (default true) the app is then no longer
//! captured; with it off, capture goes on.

use std::{process::Command, time::Duration};

use serde_json::Value;
use sonde_e2e::{peers::GatedPeer, *};

const N: usize = 3;

/// (trace id, span id) of each SDK client span, in request order.
fn sdk_spans(client: &GatedPeer) -> Vec<(String, String)> {
    (0..N)
        .map(|i| {
            let line = client.line();
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 4, "{line}");
            assert_eq!((f[0], f[1]), ("span", i.to_string().as_str()), "{line}");
            (f[2].to_string(), f[3].to_string())
        })
        .collect()
}

fn by_path<'a>(spans: &'a [Value], kind: &str, pid: u32, path: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["kind"] == kind && s["pid"] == pid && s["path"] == path)
        .collect()
}

/// Runs the SDK app against a selected server; returns what the test checks afterwards.
fn run(exclude: bool) -> (Sonde, u32, u32, Vec<String>) {
    let dir = TempDir::new("own-telemetry");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    // The test virtualenv holds the OpenTelemetry SDK (scripts/setup.sh).
    let mut cmd = Command::new(otlp::otlp_python());
    cmd.arg(peers::peer("otel_sdk_client.py")).args([
        port.to_string(),
        N.to_string(),
        port.to_string(),
    ]);
    let mut client = GatedPeer::start("otel_sdk_client", &mut cmd);
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let env: Vec<(&str, &str)> = if exclude {
        vec![]
    } else {
        vec![("BEYLA_EXCLUDE_OTEL_INSTRUMENTED_SERVICES", "false")]
    };
    let sonde = Sonde::start(
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &env,
        &dir,
        &[server_pid, client_pid],
    );
    client.step();
    let sdk = sdk_spans(&client);
    let spans = sonde.wait_spans(2 * N, Duration::from_secs(20), |s| {
        s["path"].as_str().is_some_and(|p| p.starts_with("/ok/sdk"))
    });
    assert_eq!(spans.len(), 2 * N, "{spans:#?}");
    for (i, (trace, parent)) in sdk.iter().enumerate() {
        let path = format!("/ok/sdk{i}");
        let clients = by_path(&spans, "client", client_pid, &path);
        let servers = by_path(&spans, "server", server_pid, &path);
        assert_eq!((clients.len(), servers.len()), (1, 1), "{path}: {spans:#?}");
        // Sonde's client span is in the SDK's trace, under the SDK's client span; the server
        // span continues the same trace (the header's parent is the SDK's span).
        for s in [clients[0], servers[0]] {
            assert_eq!(s["trace_id"], trace.as_str(), "{s}");
            assert_eq!(s["parent_span_id"], parent.as_str(), "{s}");
        }
        assert_ne!(clients[0]["span_id"], servers[0]["span_id"]);
    }
    assert_eq!(client.line(), "exported 201");
    if exclude {
        let line = sonde.wait_log("no longer instrumented", Duration::from_secs(10));
        assert_eq!(
            log_field(&line, "pid"),
            Some(client_pid.to_string()),
            "{line}"
        );
    } else {
        let line = sonde.wait_log("its OTLP calls are not made spans", Duration::from_secs(10));
        assert_eq!(
            log_field(&line, "pid"),
            Some(client_pid.to_string()),
            "{line}"
        );
    }
    // The server saw the export request; let the narrowing reach the loader first.
    sonde.wait_spans(1, Duration::from_secs(10), |s| {
        s["kind"] == "server" && s["path"] == "/v1/traces"
    });
    std::thread::sleep(Duration::from_millis(500));
    client.step();
    let after: Vec<String> = (0..N).map(|_| client.line()).collect();
    for (i, l) in after.iter().enumerate() {
        assert_eq!(l, &format!("after {i} 200"));
    }
    drop(server);
    (sonde, server_pid, client_pid, after)
}

#[test]
fn an_sdk_instrumented_app_keeps_its_trace_and_is_excluded_after_exporting() {
    let _guard = serial();
    let (mut sonde, server_pid, client_pid, _) = run(true);
    let spans = sonde.wait_spans(N, Duration::from_secs(15), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/after"))
    });
    // The server is still captured; the app is not, after its first export.
    assert_eq!(spans.len(), N, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s["kind"] == "server" && s["pid"] == server_pid)
    );
    // Its export call was never a client span.
    let all = sonde.spans();
    assert!(
        all.iter()
            .all(|s| !(s["kind"] == "client" && s["path"] == "/v1/traces")),
        "{all:#?}"
    );
    assert!(
        all.iter().all(|s| s["pid"] != client_pid
            || s["path"].as_str().is_some_and(|p| p.starts_with("/ok/sdk")))
    );
    sonde.proc.stop(Duration::from_secs(10));
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["own_telemetry_exports"], 1, "{stats}");
}

#[test]
fn with_exclusion_off_the_app_stays_captured_without_export_spans() {
    let _guard = serial();
    let (mut sonde, server_pid, client_pid, _) = run(false);
    let spans = sonde.wait_spans(2 * N, Duration::from_secs(15), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/after"))
    });
    assert_eq!(spans.len(), 2 * N, "{spans:#?}");
    for i in 0..N {
        let path = format!("/ok/after{i}");
        assert_eq!(by_path(&spans, "client", client_pid, &path).len(), 1);
        assert_eq!(by_path(&spans, "server", server_pid, &path).len(), 1);
    }
    // The requests after the SDK was removed carry no context: fresh traces, no parent.
    assert!(
        spans
            .iter()
            .filter(|s| s["kind"] == "client")
            .all(|s| s.get("parent_span_id").is_none())
    );
    let all = sonde.spans();
    assert!(
        all.iter()
            .all(|s| !(s["kind"] == "client" && s["path"] == "/v1/traces")),
        "{all:#?}"
    );
    sonde.proc.stop(Duration::from_secs(10));
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["own_telemetry_exports"], 1, "{stats}");
}
