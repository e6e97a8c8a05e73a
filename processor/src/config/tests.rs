//! Unit tests of the processor's configuration: its sections from the file and the
//! environment, errors naming their key, `--print-config` read back to the same values, the
//! reference documentation generated from the same definitions.

use std::{collections::BTreeMap, time::Duration};

use proptest::prelude::*;
use sonde_config::{FileText, PROCESSOR_SECTIONS, SHARED, test_support::hostile_text};

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_yaml(yaml: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = FileText {
        path: "test.yaml".into(),
        text: yaml.to_string(),
    };
    Config::from_sources(Some(&file), &env(e))
}

#[test]
fn defaults_without_sources() {
    let c = Config::load(None, &env(&[])).unwrap();
    assert_eq!(c.trace_printer, TracePrinter::Text);
    assert_eq!(c.shared.processor.user, "nobody");
    assert_eq!(c.sampler, Sampler::ParentBasedAlwaysOn);
    assert_eq!(c.routes.unmatched, UnmatchedRoutes::LowCardinality);
    assert_eq!(c.traces_export.queue_size, 16384);
    assert_eq!(c.metrics_export.interval, Duration::from_secs(60));
    assert_eq!(c.prometheus_export.path, "/metrics");
    assert!(c.traces_export.otlp.is_none() && c.prometheus_export.port.is_none());
}

#[test]
fn own_sections_are_exactly_the_ones_the_loader_skips() {
    assert_eq!(OWN.top_level_keys(), PROCESSOR_SECTIONS);
    for key in SHARED.top_level_keys() {
        assert!(!PROCESSOR_SECTIONS.contains(&key), "{key}");
    }
}

#[test]
fn file_then_env_precedence() {
    let c = load_yaml(
        "open_port: 8080\ntrace_printer: text\nservice_name: file-svc\n",
        &[
            ("BEYLA_TRACE_PRINTER", "json"),
            ("OTEL_SERVICE_NAME", "env-svc"),
        ],
    )
    .unwrap();
    assert_eq!(c.trace_printer, TracePrinter::Json);
    assert_eq!(c.shared.service_name.as_deref(), Some("env-svc"));
    assert!(c.shared.open_port.unwrap().contains(8080));
}

#[test]
fn errors_name_the_key_and_value() {
    let e = load_yaml("trace_printer: yaml\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trace_printer") && e.contains("yaml") && e.contains("json"),
        "{e}"
    );
    for (yaml, key) in [
        ("routes:\n  unmatched: smart\n", "routes.unmatched"),
        ("routes:\n  ignore_mode: some\n", "routes.ignore_mode"),
        ("routes:\n  patterns: [user]\n", "routes.patterns"),
        ("routes:\n  wildcard_char: a/b\n", "routes.wildcard_char"),
        (
            "routes:\n  max_path_segment_cardinality: 0\n",
            "routes.max_path_segment_cardinality",
        ),
        ("routes:\n  patern: [/a]\n", "routes.patern"),
        (
            "otel_traces_export:\n  sampler:\n    nme: x\n",
            "otel_traces_export.sampler.nme",
        ),
        ("log_levl: info\n", "log_levl"),
    ] {
        let e = load_yaml(yaml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn routes_parse_and_round_trip() {
    let c = load_yaml(
        "routes:\n  patterns: [\"/user/{id}\", \"/items/:id\"]\n  ignored_patterns: [/health]\n  ignore_mode: traces\n  unmatched: heuristic\n  max_path_segment_cardinality: 5\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.routes.patterns, ["/user/{id}", "/items/:id"]);
    assert_eq!(c.routes.ignore_mode, RouteIgnoreMode::Traces);
    assert_eq!(c.routes.unmatched, UnmatchedRoutes::Heuristic);
    assert_eq!(load_yaml(&c.to_yaml(), &[]).unwrap().routes, c.routes);
}

#[test]
fn prometheus_export_keys() {
    let c = load_yaml(
        "prometheus_export:\n  port: 9400\n  path: /m\n  address: 127.0.0.1\n",
        &[("BEYLA_PROMETHEUS_PATH", "/metrics2")],
    )
    .unwrap();
    assert_eq!(c.prometheus_export.port, Some(9400));
    assert_eq!(c.prometheus_export.path, "/metrics2");
    assert_eq!(
        load_yaml(&c.to_yaml(), &[]).unwrap().prometheus_export,
        c.prometheus_export
    );
    for (yaml, envs, key) in [
        (
            "prometheus_export:\n  port: 70000\n",
            vec![],
            "prometheus_export.port",
        ),
        (
            "prometheus_export:\n  path: metrics\n",
            vec![],
            "prometheus_export.path",
        ),
        (
            "prometheus_export:\n  address: here\n",
            vec![],
            "prometheus_export.address",
        ),
        (
            "",
            vec![("BEYLA_PROMETHEUS_PORT", "x")],
            "BEYLA_PROMETHEUS_PORT",
        ),
    ] {
        let e = load_yaml(yaml, &envs).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}

#[test]
fn samplers_from_file_and_environment() {
    let c = load_yaml(
        "otel_traces_export:\n  sampler:\n    name: traceidratio\n    arg: \"0.25\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.sampler, Sampler::TraceIdRatio(0.25));
    assert_eq!(load_yaml(&c.to_yaml(), &[]).unwrap().sampler, c.sampler);
    let c = load_yaml(
        "",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    )
    .unwrap();
    assert_eq!(c.sampler, Sampler::ParentBasedTraceIdRatio(0.5));
    let e = Config::load(None, &env(&[("OTEL_TRACES_SAMPLER", "sometimes")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("OTEL_TRACES_SAMPLER") && e.contains("sometimes"),
        "{e}"
    );
    let e = Config::load(
        None,
        &env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("OTEL_TRACES_SAMPLER argument") && e.contains('2'),
        "{e}"
    );
}

#[test]
fn otlp_exports_from_file_and_environment() {
    let yaml = "otel_traces_export:\n  endpoint: http://127.0.0.1:4318\n  headers:\n    api-key: s3cret\n  queue_size: 100\n  batch_timeout: 250ms\notel_metrics_export:\n  endpoint: http://127.0.0.1:4317\n  interval: 2s\n";
    let c = load_yaml(yaml, &[]).unwrap();
    let t = c.traces_export.otlp.clone().unwrap();
    assert_eq!(t.url, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.headers, vec![("api-key".into(), "s3cret".into())]);
    assert_eq!(c.traces_export.queue_size, 100);
    assert_eq!(c.traces_export.batch_timeout, Duration::from_millis(250));
    let m = c.metrics_export.otlp.clone().unwrap();
    assert_eq!(
        (m.url.as_str(), m.protocol),
        ("http://127.0.0.1:4317", OtlpProtocol::Grpc)
    );
    assert_eq!(c.metrics_export.interval, Duration::from_secs(2));
    // Printed without the secret, and read back to the same endpoints.
    let printed = c.to_yaml();
    assert!(!printed.contains("s3cret"), "{printed}");
    let again = load_yaml(&printed, &[]).unwrap();
    assert_eq!(again.traces_export.otlp.unwrap().url, t.url);
    assert_eq!(again.metrics_export, c.metrics_export);

    // The environment wins; a signal endpoint is used as given.
    let c = load_yaml(
        yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:9411/otlp",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=other"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
            ("OTEL_BSP_SCHEDULE_DELAY", "300"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1200"),
        ],
    )
    .unwrap();
    let t = c.traces_export.otlp.clone().unwrap();
    assert_eq!((t.url.as_str(), t.port), ("http://tempo:9411/otlp", 9411));
    assert_eq!(t.headers, vec![("api-key".into(), "other".into())]);
    let m = c.metrics_export.otlp.clone().unwrap();
    assert_eq!(
        (m.url.as_str(), m.protocol),
        ("http://collector:4317", OtlpProtocol::Grpc)
    );
    assert_eq!(c.metrics_export.interval, Duration::from_millis(1500));
    assert_eq!(c.traces_export.batch_timeout, Duration::from_millis(300));
    assert_eq!(c.traces_export.timeout, Duration::from_millis(1200));
    assert_eq!(c.metrics_export.timeout, Duration::from_millis(1200));
    assert!(m.gzip && !t.gzip);

    for (yaml, env, key) in [
        (
            "otel_traces_export:\n  protocol: http/json\n",
            vec![],
            "otel_traces_export.protocol",
        ),
        (
            "otel_metrics_export:\n  interval: soon\n",
            vec![],
            "otel_metrics_export.interval",
        ),
        (
            "otel_traces_export:\n  compression: zstd\n",
            vec![],
            "otel_traces_export.compression",
        ),
        (
            "otel_traces_export:\n  queue_size: 0\n",
            vec![],
            "otel_traces_export.queue_size",
        ),
        (
            "otel_traces_export:\n  headers:\n    \"bad key\": v\n",
            vec![],
            "otel_traces_export.headers",
        ),
        (
            "",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            "",
            vec![("OTEL_METRIC_EXPORT_INTERVAL", "5s")],
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (
            "",
            vec![("OTEL_BSP_MAX_QUEUE_SIZE", "x")],
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        (
            "otel_metrics_export:\n  metrics_endpoint: https://c:4318/v1/metrics\n  certificate: /nonexistent/ca.pem\n",
            vec![],
            "otel_metrics_export.certificate",
        ),
    ] {
        let e = load_yaml(yaml, &env).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

/// The configuration reference's key table is generated from the same definitions; this
/// fails when the two part, and writes the table as it should be next to the build output.
#[test]
fn configuration_reference_matches_the_definitions() {
    let rows = format!("{}{}", SHARED.reference_rows(), OWN.reference_rows());
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    if !doc.contains(&rows) {
        let out = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/configuration-keys.md"
        );
        let _ = std::fs::write(out, &rows);
        panic!(
            "docs/configuration.md's key table differs from the definitions; the generated rows are in {out}"
        );
    }
}

proptest! {
    #[test]
    fn printed_configuration_reads_back_the_same(
        name in hostile_text(),
        pattern in hostile_text(),
        wildcard in hostile_text(),
        header in hostile_text(),
        ratio in 0.0f64..=1.0,
    ) {
        let mut c = Config::default();
        c.shared.service_name = Some(name);
        c.routes.patterns = vec![format!("/{pattern}")];
        c.routes.wildcard_char = wildcard.replace('/', "-");
        c.sampler = Sampler::TraceIdRatio(ratio);
        c.traces_export.otlp = Some(OtlpEndpoint {
            url: "http://127.0.0.1:4318/a".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            port: 4318,
            headers: vec![("x-key".into(), header.clone())],
            gzip: true,
            tls: false,
            ca_file: None,
        });
        let printed = c.to_yaml();
        let again = load_yaml(&printed, &[]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        prop_assert_eq!(&again.shared.service_name, &c.shared.service_name);
        prop_assert_eq!(&again.routes, &c.routes);
        prop_assert_eq!(again.sampler, c.sampler);
        prop_assert_eq!(&again.trace_printer, &c.trace_printer);
        // Header values are hidden when printed (secret); everything else of the endpoint
        // reads back the same.
        let (a, b) = (again.traces_export.otlp.unwrap(), c.traces_export.otlp.clone().unwrap());
        prop_assert_eq!((&a.url, a.protocol, a.gzip), (&b.url, b.protocol, b.gzip));
        prop_assert_eq!(&b.headers, &vec![("x-key".to_string(), header.clone())]);
        prop_assert_eq!(&a.headers, &vec![("x-key".to_string(), sonde_config::HIDDEN.to_string())]);
    }
}

#[test]
fn kubernetes_settings_from_file_and_environment() {
    let c = load_yaml(
        "attributes:\n  kubernetes:\n    enable: true\n    cluster_name: prod-eu\n    kubeconfig_path: /etc/kube/config\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.kubernetes.enable, crate::kube::Enable::True);
    assert_eq!(c.kubernetes.cluster_name.as_deref(), Some("prod-eu"));
    assert_eq!(
        c.kubernetes.kubeconfig_path.as_deref(),
        Some(std::path::Path::new("/etc/kube/config"))
    );
    assert_eq!(
        load_yaml(&c.to_yaml(), &[]).unwrap().kubernetes,
        c.kubernetes
    );
    // Defaults, the environment and its OTEL_EBPF_* alias (which wins).
    assert_eq!(
        Config::load(None, &env(&[])).unwrap().kubernetes.enable,
        crate::kube::Enable::Autodetect
    );
    let c = Config::load(
        None,
        &env(&[
            ("BEYLA_KUBE_METADATA_ENABLE", "true"),
            ("OTEL_EBPF_KUBE_METADATA_ENABLE", "false"),
            ("OTEL_EBPF_KUBE_CLUSTER_NAME", "c1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kubernetes.enable, crate::kube::Enable::False);
    assert_eq!(c.kubernetes.cluster_name.as_deref(), Some("c1"));
    let e = load_yaml("attributes:\n  kubernetes:\n    enable: maybe\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attributes.kubernetes.enable") && e.contains("maybe"),
        "{e}"
    );
    // Keys of the reference system not applied yet are accepted; typos are not.
    assert!(
        load_yaml(
            "attributes:\n  kubernetes:\n    informers_sync_timeout: 30s\n",
            &[]
        )
        .is_ok()
    );
    assert!(load_yaml("attributes:\n  kubernetes:\n    enabel: true\n", &[]).is_err());
}
