//! Kafka from the wire protocol, with a real broker (`tansu` 0.6.0, in-memory storage) and a
//! real client (kafka-python 2.0.2): PRODUCER spans per Produce, CONSUMER spans per Fetch,
//! SERVER spans on a broker selected by its port, the error code of a failed request, the
//! messaging metrics over Prometheus and OTLP, and no record bytes in any output.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sonde_e2e::{otlp::*, peers::*, *};

/// What the records carry; must never reach any output.
const MARKER: &str = "sonde-secret-payload";

/// A `tests/peers/kafka_client.py` run: started (it says `ready` and waits), then told to go.
fn client(mode: &str, port: u16, topic: &str, n: usize) -> GatedPeer {
    let mut cmd = Command::new(otlp_python());
    cmd.arg(peer("kafka_client.py")).args([
        mode,
        &format!("127.0.0.1:{port}"),
        topic,
        &n.to_string(),
    ]);
    GatedPeer::start(&format!("kafka {mode}"), &mut cmd)
}

/// Runs a client nobody watches (topic creation) to completion.
fn run_unwatched(mode: &str, port: u16, topic: &str, n: usize) -> Vec<String> {
    client(mode, port, topic, n).go()
}

/// The messaging spans of `pid`.
fn messaging_of(spans: &[Value], pid: u32) -> Vec<Value> {
    spans
        .iter()
        .filter(|s| s["pid"] == pid && s["messaging_system"] == "kafka")
        .cloned()
        .collect()
}

fn prom_count(text: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A producer and a consumer selected by pid: one PRODUCER span `publish <topic>` per record
/// sent (each flushed), CONSUMER spans `process <topic>` for the fetches, no span for the
/// other requests (ApiVersions, Metadata, …), the metrics over Prometheus and OTLP with the
/// messaging labels, and no record bytes anywhere.
#[test]
fn kafka_client_spans_and_metrics() {
    let _guard = serial();
    let dir = TempDir::new("kafka-client");
    let port = free_port();
    let metrics_port = free_port();
    let _broker = start_tansu(port);
    let topic = "sonde-orders";
    let created = run_unwatched("create", port, topic, 0);
    assert_eq!(created, ["created"]);
    let receiver = Receiver::start(&dir, free_port(), 0);
    let n = 5;
    let producer = client("produce", port, topic, n);
    let consumer = client("consume", port, topic, n);
    let (ppid, cpid) = (producer.pid(), consumer.pid());
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
            "--pid",
            &ppid.to_string(),
            "--pid",
            &cpid.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &dir,
        &[ppid, cpid],
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    assert_eq!(producer.go(), [format!("sent {n}")]);
    assert_eq!(consumer.go(), [format!("received {n}")]);

    let spans = sonde.wait_spans(n, Duration::from_secs(20), |s| {
        s["pid"] == ppid && s["messaging_system"] == "kafka"
    });
    assert_eq!(spans.len(), n, "{spans:#?}");
    for s in &spans {
        assert_eq!(s["kind"], "producer", "{s}");
        assert_eq!(s["name"], format!("publish {topic}"), "{s}");
        assert_eq!(s["messaging_operation"], "publish", "{s}");
        assert_eq!(s["messaging_destination"], topic, "{s}");
        assert_eq!(s["messaging_client_id"], "sonde-producer", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
        assert_eq!(s["server_address"], "127.0.0.1", "{s}");
        assert!(s.get("messaging_error_code").is_none(), "{s}");
        assert_eq!(s["no_response"], false, "{s}");
    }
    let all = sonde.spans();
    let fetches = messaging_of(&all, cpid);
    assert!(!fetches.is_empty(), "no consumer spans: {all:#?}");
    for s in &fetches {
        assert_eq!(s["kind"], "consumer", "{s}");
        assert_eq!(s["name"], format!("process {topic}"), "{s}");
        assert_eq!(s["messaging_destination"], topic, "{s}");
        assert_eq!(s["messaging_client_id"], "sonde-consumer", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
    }
    // Only Produce and Fetch make spans; nothing of the records leaves.
    for s in all.iter().filter(|s| s["pid"] == ppid || s["pid"] == cpid) {
        assert_eq!(s["messaging_system"], "kafka", "{s}");
        assert!(!s.to_string().contains(MARKER), "{s}");
    }

    // Prometheus: publish counted per topic; the fetches in the process histogram.
    let deadline = Instant::now() + Duration::from_secs(10);
    let publish = [
        ("messaging_system", "kafka"),
        ("messaging_destination_name", topic),
        ("messaging_operation_name", "publish"),
    ];
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(metrics_port, "/metrics");
        if prom_count(
            &text,
            "messaging_client_operation_duration_seconds_count",
            &publish,
        ) >= n as u64
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        prom_count(
            &text,
            "messaging_client_operation_duration_seconds_count",
            &publish
        ),
        n as u64,
        "{text}"
    );
    assert_eq!(
        prom_count(
            &text,
            "messaging_process_duration_seconds_count",
            &[
                ("messaging_system", "kafka"),
                ("messaging_destination_name", topic),
                ("messaging_operation_name", "process"),
            ]
        ),
        fetches.len() as u64,
        "{text}"
    );
    assert!(!text.contains(MARKER));
    promtool_check(&text);

    // OTLP: the same spans with the semantic-convention attributes and kinds (4 PRODUCER,
    // 5 CONSUMER), and the duration histograms.
    let otlp = receiver.wait_spans(n + fetches.len(), Duration::from_secs(30), |s| {
        s["resource"]["process.pid"] == ppid || s["resource"]["process.pid"] == cpid
    });
    assert_eq!(otlp.len(), n + fetches.len(), "{otlp:#?}");
    for s in &otlp {
        let a = &s["attributes"];
        let producer = s["resource"]["process.pid"] == ppid;
        assert_eq!(s["kind"], if producer { 4 } else { 5 }, "{s}");
        assert_eq!(a["messaging.system"], "kafka", "{s}");
        assert_eq!(a["messaging.destination.name"], topic, "{s}");
        let op = if producer { "publish" } else { "process" };
        assert_eq!(a["messaging.operation.name"], op, "{s}");
        assert_eq!(a["messaging.operation.type"], op, "{s}");
        assert_eq!(s["name"], format!("{op} {topic}"), "{s}");
        assert_eq!(a["server.port"], port, "{s}");
        let client_id = if producer {
            "sonde-producer"
        } else {
            "sonde-consumer"
        };
        assert_eq!(a["messaging.client.id"], client_id, "{s}");
        assert_eq!(s["status_code"], 0, "{s}");
        assert!(!s.to_string().contains(MARKER), "{s}");
    }
    let points = receiver.wait_points(
        "messaging.client.operation.duration",
        n as u64,
        Duration::from_secs(20),
        |p| p["resource"]["process.pid"] == ppid,
    );
    assert_eq!(
        count_where(
            &points,
            "messaging.client.operation.duration",
            &[
                ("messaging.system", json!("kafka")),
                ("messaging.destination.name", json!(topic)),
                ("messaging.operation.name", json!("publish")),
            ]
        ),
        n as u64,
        "{points:#?}"
    );
    let points = receiver.wait_points(
        "messaging.process.duration",
        fetches.len() as u64,
        Duration::from_secs(20),
        |p| p["resource"]["process.pid"] == cpid,
    );
    assert_eq!(
        count_where(&points, "messaging.process.duration", &[]),
        fetches.len() as u64,
        "{points:#?}"
    );
    drop(sonde);
}

/// The broker selected by its port: one SERVER span per Produce it answers, with the topic.
/// The failing request: tansu 0.6 accepts a raw Produce to a topic that does not exist
/// (error 0, so a span without error), and answers the Metadata request for it with
/// UNKNOWN_TOPIC_OR_PARTITION (3): a `metadata <topic>` span with status ERROR and that code,
/// on the client (CLIENT) and on the broker (SERVER) alike, in the printer and over OTLP.
#[test]
fn kafka_broker_server_spans_and_a_failed_request() {
    let _guard = serial();
    let dir = TempDir::new("kafka-broker");
    let port = free_port();
    let broker = start_tansu(port);
    let topic = "sonde-events";
    let missing = "sonde-no-such-topic";
    assert_eq!(run_unwatched("create", port, topic, 0), ["created"]);
    let receiver = Receiver::start(&dir, free_port(), 0);
    let raw = client("raw", port, missing, 0);
    let (rpid, bpid) = (raw.pid(), broker.pid());
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string(), "--pid", &rpid.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &dir,
        &[bpid, rpid],
    );
    let n = 4;
    assert_eq!(
        run_unwatched("produce", port, topic, n),
        [format!("sent {n}")]
    );
    // What tansu answers: Produce accepted, Metadata UNKNOWN_TOPIC_OR_PARTITION.
    assert_eq!(
        raw.go(),
        [
            "produce_error 0".to_string(),
            format!("metadata_error {UNKNOWN_TOPIC_OR_PARTITION}")
        ]
    );

    // A consumer the broker serves: SERVER spans `process <topic>`.
    assert_eq!(
        run_unwatched("consume", port, topic, n),
        [format!("received {n}")]
    );
    let fetches = sonde.wait_spans(1, Duration::from_secs(20), |s| {
        s["pid"] == bpid && s["messaging_operation"] == "process"
    });
    assert!(!fetches.is_empty());
    for s in &fetches {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(s["name"], format!("process {topic}"), "{s}");
        assert_eq!(s["messaging_client_id"], "sonde-consumer", "{s}");
    }
    let fetches_unanswered = fetches.iter().filter(|s| s["no_response"] == true).count();

    let spans = sonde.wait_spans(n + 2, Duration::from_secs(20), |s| {
        s["pid"] == bpid
            && s["messaging_system"] == "kafka"
            && s["messaging_operation"] != "process"
    });
    let ok: Vec<&Value> = spans
        .iter()
        .filter(|s| s["messaging_destination"] == topic)
        .collect();
    assert_eq!(ok.len(), n, "{spans:#?}");
    for s in &ok {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(s["name"], format!("publish {topic}"), "{s}");
        assert_eq!(s["messaging_client_id"], "sonde-producer", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
        assert!(s.get("messaging_error_code").is_none(), "{s}");
    }
    let on_missing: Vec<(String, String, Value)> = spans
        .iter()
        .filter(|s| s["messaging_destination"] == missing)
        .map(|s| {
            assert_eq!(s["kind"], "server", "{s}");
            assert_eq!(s["messaging_client_id"], "sonde-raw", "{s}");
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["messaging_operation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["messaging_error_code"].clone(),
            )
        })
        .collect();
    let expected = vec![
        (format!("publish {missing}"), "publish".into(), Value::Null),
        (
            format!("metadata {missing}"),
            "metadata".into(),
            json!(UNKNOWN_TOPIC_OR_PARTITION),
        ),
    ];
    assert_eq!(on_missing, expected, "{spans:#?}");
    assert_eq!(spans.len(), n + 2, "{spans:#?}");

    let client = sonde.wait_spans(2, Duration::from_secs(20), |s| s["pid"] == rpid);
    let got: Vec<(String, String, Value)> = client
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or_default().to_string(),
                s["name"].as_str().unwrap_or_default().to_string(),
                s["messaging_error_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("producer".into(), format!("publish {missing}"), Value::Null),
            (
                "client".into(),
                format!("metadata {missing}"),
                json!(UNKNOWN_TOPIC_OR_PARTITION)
            ),
        ],
        "{client:#?}"
    );

    // OTLP: the failed request has status ERROR and the Kafka error's name.
    let otlp = receiver.wait_spans(2, Duration::from_secs(30), |s| {
        (s["resource"]["process.pid"] == rpid || s["resource"]["process.pid"] == bpid)
            && s["name"] == format!("metadata {missing}")
    });
    assert_eq!(otlp.len(), 2, "{otlp:#?}");
    for s in &otlp {
        let a = &s["attributes"];
        assert_eq!(s["status_code"], 2, "{s}");
        assert_eq!(a["error.type"], "UNKNOWN_TOPIC_OR_PARTITION", "{s}");
        assert_eq!(a["messaging.operation.name"], "metadata", "{s}");
        assert_eq!(a["messaging.destination.name"], missing, "{s}");
        let kind = if s["resource"]["process.pid"] == rpid {
            3
        } else {
            2
        };
        assert_eq!(s["kind"], kind, "{s}");
    }
    for s in sonde.spans() {
        assert!(!s.to_string().contains(MARKER), "{s}");
    }
    for s in receiver.spans() {
        assert!(!s.to_string().contains(MARKER), "{s}");
    }
    // The parser's own account: every message framed, every response paired.
    let mut sonde = sonde;
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    let k = &stats["streams"]["kafka"];
    eprintln!("kafka parser counters: {k}");
    // Broker: n + 2 (publish, and the failed metadata, for the missing topic) and the
    // fetches; client: 2.
    let total = n + 4 + fetches.len();
    assert_eq!(stats["streams"]["messaging_exchanges"], total, "{stats}");
    assert_eq!(k["exchanges"], total, "{k}");
    // A fetch still waiting when the consumer closed is the only request without response.
    assert_eq!(k["no_response"], fetches_unanswered, "{k}");
    assert_eq!(k["metadata_errors"], 2, "{k}");
    for zero in [
        "desync",
        "malformed",
        "orphan_responses",
        "responses_lost",
        "partial",
        "untracked",
    ] {
        assert_eq!(k[zero], 0, "{zero}: {k}");
    }
}

/// Kafka's `UNKNOWN_TOPIC_OR_PARTITION`.
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;
