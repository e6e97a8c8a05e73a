//! Unit tests of the configuration core: sources and precedence, errors naming their key,
//! and `--print-config` output read back to the same configuration for hostile values.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::discovery::{Pattern, Syntax};
use crate::test_support::hostile_text;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(yaml: &str) -> FileText {
    FileText {
        path: "test.yaml".into(),
        text: yaml.to_string(),
    }
}

fn load_yaml(yaml: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(Some(&file(yaml)), &env(e))
}

/// The fields `--print-config` shows, comparable.
fn shown(c: &Config) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {}",
        c.log_level,
        c.open_port,
        c.auto_target_exe.as_ref().map(|g| &g.pattern),
        c.target_pids,
        c.service_name,
        c.service_namespace,
        c.control_socket,
        c.processor,
        c.ebpf,
        c.stats_interval_secs
    )
}

#[test]
fn port_sets() {
    let p = PortSet::parse("k", "8080, 8000-8999,443").unwrap();
    assert!(p.contains(8080) && p.contains(8500) && p.contains(443));
    assert!(!p.contains(9000) && !p.contains(80));
    assert_eq!(p.to_string(), "8080,8000-8999,443");
    for bad in ["", "0", "80-", "x", "9000-8000", "70000", "80,,81"] {
        let err = PortSet::parse("open_port", bad).unwrap_err().to_string();
        assert!(err.contains("open_port"), "{err}");
    }
}

#[test]
fn every_embedded_default_parses() {
    let mut c = Config::blank();
    SHARED.apply_defaults(&mut c).unwrap();
    assert_eq!(c.processor.user, "nobody");
    assert_eq!(c.ebpf.ring_buffer_bytes, 8 << 20);
    assert_eq!(c.ebpf.max_connections, 16384);
    assert_eq!(c.stats_interval_secs, 10);
    assert_eq!(
        c.control_socket,
        std::path::Path::new(DEFAULT_CONTROL_SOCKET)
    );
    assert!(!c.has_selection());
}

#[test]
fn file_then_env_precedence() {
    let c = load_yaml(
        "open_port: 8080\nlog_level: debug\nservice_name: file-svc\nebpf:\n  ring_buffer_bytes: 65536\n",
        &[("BEYLA_LOG_LEVEL", "warn"), ("OTEL_SERVICE_NAME", "env-svc")],
    )
    .unwrap();
    assert_eq!(c.log_level, LogLevel::Warn);
    assert_eq!(c.service_name.as_deref(), Some("env-svc"));
    assert!(c.open_port.unwrap().contains(8080));
    assert_eq!(c.ebpf.ring_buffer_bytes, 65536);
    // OTEL_SERVICE_NAME wins over BEYLA_SERVICE_NAME, BEYLA_AUTO_TARGET_EXE over the Go one.
    let c = Config::load(
        None,
        &env(&[
            ("OTEL_SERVICE_NAME", "otel"),
            ("BEYLA_SERVICE_NAME", "beyla"),
            ("BEYLA_AUTO_TARGET_EXE", "*/a"),
            ("OTEL_GO_AUTO_TARGET_EXE", "*/b"),
            ("BEYLA_TARGET_PID", "1, 2,3"),
        ]),
    )
    .unwrap();
    assert_eq!(c.service_name.as_deref(), Some("otel"));
    assert_eq!(c.auto_target_exe.unwrap().pattern, "*/a");
    assert_eq!(c.target_pids, [1, 2, 3]);
}

#[test]
fn errors_name_the_key_and_value() {
    for (yaml, e, key, value) in [
        ("log_level: loud\n", vec![], "log_level", "loud"),
        ("open_prot: 80\n", vec![], "open_prot", ""),
        (
            "ebpf:\n  ring_bufer_bytes: 1\n",
            vec![],
            "ebpf.ring_bufer_bytes",
            "",
        ),
        (
            "ebpf:\n  ring_buffer_bytes: 1000\n",
            vec![],
            "ebpf.ring_buffer_bytes",
            "1000",
        ),
        (
            "ebpf:\n  ring_buffer_bytes: 12288\n",
            vec![],
            "ebpf.ring_buffer_bytes",
            "12288",
        ),
        (
            "ebpf:\n  max_connections: 8\n",
            vec![],
            "ebpf.max_connections",
            "8",
        ),
        (
            "stats_interval_secs: 0\n",
            vec![],
            "stats_interval_secs",
            "0",
        ),
        (
            "control_socket: run/x.sock\n",
            vec![],
            "control_socket",
            "run/x.sock",
        ),
        ("target_pids: [1, x]\n", vec![], "target_pids", "x"),
        ("processor: 3\n", vec![], "processor", ""),
        ("service_name: [a, {b: c}]\n", vec![], "service_name", ""),
        (
            "",
            vec![("BEYLA_OPEN_PORT", "80-x")],
            "BEYLA_OPEN_PORT",
            "80-x",
        ),
        (
            "",
            vec![("BEYLA_LOG_LEVEL", "loud")],
            "BEYLA_LOG_LEVEL",
            "loud",
        ),
        (
            "",
            vec![("SONDE_INSECURE_NO_LANDLOCK", "yes")],
            "SONDE_INSECURE_NO_LANDLOCK",
            "yes",
        ),
        (
            "",
            vec![("BEYLA_TARGET_PID", "12,a")],
            "BEYLA_TARGET_PID",
            "a",
        ),
    ] {
        let err = load_yaml(yaml, &e).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(value), "{key}: {err}");
    }
    let err = load_yaml("- a\n- b\n", &[]).unwrap_err().to_string();
    assert!(err.contains("mapping"), "{err}");
}

#[test]
fn the_loader_skips_processor_sections_but_not_typos() {
    let c = load_yaml(
        "open_port: 80\ntrace_printer: anything\nroutes:\n  whatever: [1]\notel_traces_export:\n  headers:\n    api-key: s3cret\n",
        &[],
    )
    .unwrap();
    assert!(c.open_port.unwrap().contains(80));
    let err = load_yaml("trace_printr: json\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("trace_printr"), "{err}");
}

#[test]
fn landlock_opt_out_is_off_unless_asked_for() {
    assert!(
        !Config::load(None, &env(&[]))
            .unwrap()
            .processor
            .insecure_no_landlock
    );
    let c = load_yaml("processor:\n  insecure_no_landlock: true\n", &[]).unwrap();
    assert!(c.processor.insecure_no_landlock);
    assert!(
        load_yaml(&c.to_yaml(), &[])
            .unwrap()
            .processor
            .insecure_no_landlock
    );
    let c = Config::load(None, &env(&[("SONDE_INSECURE_NO_LANDLOCK", "1")])).unwrap();
    assert!(c.processor.insecure_no_landlock);
}

/// `processor.landlock`: best effort unless the operator requires it; the older
/// `insecure_no_landlock` lowers `required` to `best_effort` and never turns Landlock off.
#[test]
fn landlock_mode_defaults_to_best_effort_and_the_old_name_is_an_alias() {
    use crate::LandlockMode;
    let c = Config::load(None, &env(&[])).unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::BestEffort);
    let c = load_yaml("processor:\n  landlock: required\n", &[]).unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::Required);
    assert_eq!(
        load_yaml(&c.to_yaml(), &[]).unwrap().processor.landlock,
        LandlockMode::Required
    );
    let c = load_yaml(
        "processor:\n  landlock: required\n  insecure_no_landlock: true\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::BestEffort);
    let c = load_yaml(
        "processor:\n  landlock: required\n",
        &[("SONDE_INSECURE_NO_LANDLOCK", "true")],
    )
    .unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::BestEffort);
    let c = load_yaml("processor:\n  landlock: off\n", &[]).unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::Off);
    let c = Config::load(None, &env(&[("SONDE_LANDLOCK", "required")])).unwrap();
    assert_eq!(c.processor.landlock_mode(), LandlockMode::Required);
    let e = load_yaml("processor:\n  landlock: maybe\n", &[]).unwrap_err();
    assert!(e.to_string().contains("processor.landlock"), "{e}");
}

/// `processor.scheduling`: `SCHED_BATCH` unless the operator keeps the inherited policy; a
/// policy Sonde does not set is refused with the key's name.
#[test]
fn scheduling_defaults_to_batch_and_inherit_keeps_the_started_policy() {
    use crate::Scheduling;
    let c = Config::load(None, &env(&[])).unwrap();
    assert_eq!(c.processor.scheduling, Scheduling::Batch);
    let c = load_yaml("processor:\n  scheduling: inherit\n", &[]).unwrap();
    assert_eq!(c.processor.scheduling, Scheduling::Inherit);
    assert_eq!(
        load_yaml(&c.to_yaml(), &[]).unwrap().processor.scheduling,
        Scheduling::Inherit
    );
    let c = Config::load(None, &env(&[("SONDE_PROCESSOR_SCHEDULING", "inherit")])).unwrap();
    assert_eq!(c.processor.scheduling, Scheduling::Inherit);
    for bad in ["fifo", "idle", ""] {
        let e = load_yaml(&format!("processor:\n  scheduling: '{bad}'\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("processor.scheduling"), "{bad}: {e}");
    }
}

#[test]
fn default_selection_only_when_nothing_selected() {
    let mut c = Config::load(None, &env(&[])).unwrap();
    assert!(c.apply_default_selection());
    assert!(c.open_port.as_ref().unwrap().contains(8080));
    let mut c = Config::load(None, &env(&[("BEYLA_AUTO_TARGET_EXE", "*/nginx")])).unwrap();
    assert!(!c.apply_default_selection());
    assert!(c.open_port.is_none());
}

#[test]
fn exe_glob_matches_paths() {
    let g = ExeGlob::parse("k", "*/nginx").unwrap();
    assert!(g.is_match("/usr/sbin/nginx"));
    assert!(!g.is_match("/usr/bin/python3"));
}

#[test]
fn print_config_round_trips() {
    let c = load_yaml(
        "open_port: \"8080,9000-9001\"\nauto_target_exe: \"*/node\"\ntarget_pids: [7, 8]\nprocessor:\n  allowed_uids: [1000]\n  group: sonde\n",
        &[],
    )
    .unwrap();
    let yaml = c.to_yaml();
    assert_eq!(shown(&load_yaml(&yaml, &[]).unwrap()), shown(&c), "{yaml}");
}

#[test]
fn reference_rows_name_every_key_and_variable() {
    let rows = SHARED.reference_rows();
    for s in SHARED.settings() {
        assert!(rows.contains(&format!("| `{}` |", s.key)));
        for v in s.env {
            assert!(rows.contains(v.name));
        }
    }
}

proptest! {
    #[test]
    fn printed_configuration_reads_back_the_same(
        name in hostile_text(),
        namespace in hostile_text(),
        user in hostile_text(),
        group in hostile_text(),
        binary in hostile_text(),
        socket in hostile_text(),
        pids in prop::collection::vec(any::<u32>(), 0..4),
    ) {
        let defaults = Config::default();
        let c = Config {
            service_name: Some(name),
            service_namespace: Some(namespace),
            processor: ProcessorSettings {
                user,
                group: Some(group),
                binary: Some(binary.into()),
                ..defaults.processor.clone()
            },
            control_socket: format!("/run/{socket}").into(),
            target_pids: pids,
            auto_target_exe: Some(ExeGlob::parse("k", "*/x").unwrap()),
            ..defaults
        };
        let yaml = c.to_yaml();
        let again = load_yaml(&yaml, &[]).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        prop_assert_eq!(shown(&again), shown(&c), "{}", yaml);
    }
}

mod discovery_config {
    use super::*;

    fn seed(name: &str) -> FileText {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/configs/");
        FileText {
            path: format!("{path}{name}").into(),
            text: std::fs::read_to_string(format!("{path}{name}")).unwrap(),
        }
    }

    #[test]
    fn the_reference_docs_example_loads_with_warnings() {
        let c = Config::load(Some(&seed("beyla-docs-example.yaml")), &env(&[])).unwrap();
        assert_eq!(c.log_level, LogLevel::Info);
        let s = &c.discovery.services;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name.as_deref(), Some("my-app"));
        assert!(s[0].open_ports.as_ref().unwrap().contains(8080));
        assert!(s[0].inert().is_none());
        assert!(c.has_selection());
        assert_eq!(c.listen_ports().unwrap().to_string(), "8080");
        assert_eq!(
            c.unimplemented_keys,
            [
                "ebpf.wakeup_len",
                "ebpf.track_request_headers",
                "ebpf.high_request_volume"
            ]
        );
        let w = c.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("ebpf.wakeup_len, ebpf.track_request_headers, ebpf.high_request_volume"),
            "{w:?}"
        );
        assert!(
            w[1].contains("discovery.services[0]: open_port is read as open_ports"),
            "{w:?}"
        );
        // Printed, it reads back the same (the alias is printed as open_ports).
        let printed = c.to_yaml();
        assert!(printed.contains("open_ports: '8080'"), "{printed}");
        let again = load_yaml(&printed, &[]).unwrap();
        assert_eq!(again.to_yaml(), printed);
    }

    #[test]
    fn kubernetes_selectors_are_compiled_and_select_through_the_processor() {
        let c = Config::load(Some(&seed("k8s-instrument.yaml")), &env(&[])).unwrap();
        let list = &c.discovery.instrument;
        assert_eq!(list.len(), 4);
        assert_eq!(
            list[2].k8s.pod_labels["app.kubernetes.io/part-of"].text,
            "shop*"
        );
        assert!(list[2].k8s.pod_labels["app.kubernetes.io/part-of"].is_match("shop-suite"));
        for s in list {
            assert!(s.inert().is_none(), "{}", s.key);
        }
        assert!(
            c.discovery.exclude_instrument[0]
                .inert_exclusion()
                .unwrap()
                .contains("Kubernetes")
        );
        let w = c.warnings();
        assert!(!w.iter().any(|l| l.contains("selects nothing")), "{w:?}");
        assert!(
            w.iter()
                .any(|l| l.contains("discovery.exclude_instrument[0]")
                    && l.contains("excludes nothing")),
            "{w:?}"
        );
        // Only the evaluable selector's port is watched.
        assert_eq!(c.listen_ports().unwrap().to_string(), "8080");
        assert!(c.needs_exec_notices());
        let again = load_yaml(&c.to_yaml(), &[]).unwrap();
        assert_eq!(again.to_yaml(), c.to_yaml());
    }

    #[test]
    fn globs_for_instrument_regexes_for_services() {
        let c = load_yaml(
            "discovery:\n  instrument:\n    - exe_path: '*/python3*'\n  services:\n    - exe_path: 'python3'\n",
            &[],
        )
        .unwrap();
        let glob = c.discovery.instrument[0].exe_path.as_ref().unwrap();
        assert!(glob.is_match("/usr/bin/python3.12"));
        assert!(!glob.is_match("/usr/bin/node"));
        // Unanchored: `python3` matches anywhere in the path.
        let re = c.discovery.services[0].exe_path.as_ref().unwrap();
        assert!(re.is_match("/usr/bin/python3.12"));
        assert!(
            !Pattern::parse("k", "python3", Syntax::Glob)
                .unwrap()
                .is_match("/usr/bin/python3")
        );
        // instrument set: services ignored, with a warning.
        assert_eq!(c.discovery.include().len(), 1);
        assert!(
            c.discovery.include()[0]
                .key
                .starts_with("discovery.instrument")
        );
        assert!(
            c.warnings().iter().any(
                |w| w.contains("discovery.services and discovery.exclude_services are ignored")
            )
        );
    }

    #[test]
    fn bad_selectors_fail_naming_the_key_path() {
        for (yaml, key, value) in [
            (
                "discovery:\n  services:\n    - open_ports: 80\n    - k8s_namespace: '(prod'\n",
                "discovery.services[1].k8s_namespace",
                "(prod",
            ),
            (
                "discovery:\n  instrument:\n    - exe_path: '[a'\n",
                "discovery.instrument[0].exe_path",
                "[a",
            ),
            (
                "discovery:\n  instrument:\n    - open_ports: 80-x\n",
                "discovery.instrument[0].open_ports",
                "80-x",
            ),
            (
                "discovery:\n  instrument:\n    - exe_pth: x\n",
                "discovery.instrument[0].exe_pth",
                "",
            ),
            (
                "discovery:\n  services:\n    - k8s_pod_labels:\n        app: '*('\n",
                "discovery.services[0].k8s_pod_labels.app",
                "*(",
            ),
            (
                "discovery:\n  instrument:\n    - containers_only: maybe\n",
                "discovery.instrument[0].containers_only",
                "maybe",
            ),
            ("discovery:\n  instrument: 3\n", "discovery.instrument", "3"),
            ("discovery:\n  instrumnt: []\n", "discovery.instrumnt", ""),
            ("", "BEYLA_EXECUTABLE_NAME", "("),
        ] {
            let e: Vec<(&str, &str)> = if key == "BEYLA_EXECUTABLE_NAME" {
                vec![(key, value)]
            } else {
                vec![]
            };
            let err = load_yaml(yaml, &e).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{key}: {err}");
        }
    }

    #[test]
    fn unimplemented_fields_never_widen_a_selector() {
        let c = load_yaml(
            "discovery:\n  instrument:\n    - open_ports: 80\n      languages: [java]\n    - open_ports: 81\n      exports: [traces]\n",
            &[],
        )
        .unwrap();
        let list = &c.discovery.instrument;
        assert!(list[0].inert().unwrap().contains("languages"));
        assert!(list[1].inert().is_none());
        let w = c.warnings();
        assert!(
            w.iter()
                .any(|l| l.contains("selector discovery.instrument[0] selects nothing")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|l| l.contains("discovery.instrument[1]: exports not applied yet")),
            "{w:?}"
        );
        assert_eq!(c.listen_ports().unwrap().to_string(), "81");
        // Printed back with the unimplemented fields, so it reads back as narrow.
        let again = load_yaml(&c.to_yaml(), &[]).unwrap();
        assert!(again.discovery.instrument[0].inert().is_some());
    }

    #[test]
    fn beyla_keys_not_implemented_are_accepted_and_named() {
        let c = load_yaml(
            "network:\n  enable: true\n  source: tc\ndiscovery:\n  poll_interval: 5s\notel_traces_export:\n  insecure_skip_verify: true\n  endpoint: http://x:4318\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.unimplemented_keys,
            [
                "network.source",
                "discovery.poll_interval",
                "otel_traces_export.insecure_skip_verify"
            ]
        );
        assert_eq!(c.warnings().len(), 1);
        assert!(c.network.enable);
        // Other unknown keys still fail.
        for (yaml, key) in [
            ("ebpf:\n  wakeup_lenn: 1\n", "ebpf.wakeup_lenn"),
            ("networks: {}\n", "networks"),
        ] {
            let err = load_yaml(yaml, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn top_level_selector_and_default_exclusions() {
        let c = load_yaml("open_port: 8080\nexecutable_name: 'python'\n", &[]).unwrap();
        assert!(c.has_top_level_selector() && c.has_selection());
        assert!(
            c.executable_name
                .as_ref()
                .unwrap()
                .is_match("/usr/bin/python3")
        );
        let excluded = |exe: &str| {
            c.discovery
                .exclude()
                .any(|s| s.exe_path.as_ref().is_some_and(|p| p.is_match(exe)))
        };
        for exe in [
            "/usr/bin/sonde",
            "/opt/target/debug/sonde-processor",
            "/usr/local/bin/otelcol-contrib",
            "/usr/bin/otelcol",
            "/beyla",
        ] {
            assert!(excluded(exe), "{exe}");
        }
        for exe in ["/usr/bin/python3", "/usr/sbin/nginx", "/usr/bin/sondex"] {
            assert!(!excluded(exe), "{exe}");
        }
        // An exclusion by port makes the loader watch that port too.
        let by_port = load_yaml(
            "discovery:\n  instrument:\n    - exe_path: '*/x'\n  exclude_instrument:\n    - open_ports: 9000\n",
            &[],
        )
        .unwrap();
        assert_eq!(by_port.listen_ports().unwrap().to_string(), "9000");
        let none = load_yaml("discovery:\n  default_exclude_instrument: []\n", &[]).unwrap();
        assert_eq!(none.discovery.exclude().count(), 0);
        // Discovery lists count as a selection: no default ports then.
        let mut d = load_yaml("discovery:\n  instrument:\n    - exe_path: '*/x'\n", &[]).unwrap();
        assert!(!d.apply_default_selection());
    }

    #[test]
    fn otel_ebpf_aliases_and_resource_attributes() {
        let c = Config::load(
            None,
            &env(&[
                ("BEYLA_OPEN_PORT", "80"),
                ("OTEL_EBPF_OPEN_PORT", "81"),
                ("OTEL_EBPF_AUTO_TARGET_EXE", "*/y"),
                ("OTEL_EBPF_EXECUTABLE_NAME", "y$"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=attr-name,service.namespace=attr%20ns",
                ),
            ]),
        )
        .unwrap();
        // OTEL_EBPF_* wins over BEYLA_*.
        assert_eq!(c.open_port.unwrap().to_string(), "81");
        assert_eq!(c.auto_target_exe.unwrap().pattern, "*/y");
        assert_eq!(c.executable_name.unwrap().text, "y$");
        assert_eq!(c.service_name.as_deref(), Some("attr-name"));
        assert_eq!(c.service_namespace.as_deref(), Some("attr ns"));
        // OTEL_SERVICE_NAME and BEYLA_SERVICE_NAMESPACE win over the attributes.
        let c = Config::load(
            None,
            &env(&[
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=attr,service.namespace=attr",
                ),
                ("OTEL_SERVICE_NAME", "explicit"),
                ("BEYLA_SERVICE_NAMESPACE", "ns"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.service_name.as_deref(), c.service_namespace.as_deref()),
            (Some("explicit"), Some("ns"))
        );
        let err = Config::load(None, &env(&[("OTEL_EBPF_LOG_LEVEL", "loud")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTEL_EBPF_LOG_LEVEL"), "{err}");
    }
}

#[test]
fn context_propagation_values_and_their_warnings() {
    let c = load_yaml("", &[]).unwrap();
    assert_eq!(c.ebpf.context_propagation, ContextPropagation::Disabled);
    assert!(
        c.warnings()
            .iter()
            .all(|w| !w.contains("context_propagation"))
    );
    let c = load_yaml("ebpf:\n  context_propagation: headers\n", &[]).unwrap();
    assert_eq!(c.ebpf.context_propagation, ContextPropagation::Headers);
    assert!(
        c.warnings()
            .iter()
            .all(|w| !w.contains("context_propagation"))
    );
    for (value, mode, says) in [
        (
            "all",
            ContextPropagation::Headers,
            "HTTP/1 `traceparent` headers only",
        ),
        (
            "headers,tcp",
            ContextPropagation::Headers,
            "never writes TCP or IP options",
        ),
        ("tcp", ContextPropagation::Disabled, "injection stays off"),
        ("ip", ContextPropagation::Disabled, "injection stays off"),
    ] {
        let c = load_yaml("", &[("BEYLA_BPF_CONTEXT_PROPAGATION", value)]).unwrap();
        assert_eq!(c.ebpf.context_propagation, mode, "{value}");
        let w = c.warnings();
        assert!(
            w.iter()
                .any(|w| w.contains("ebpf.context_propagation") && w.contains(says)),
            "{value}: {w:?}"
        );
    }
    let c = load_yaml("ebpf:\n  enable_context_propagation: true\n", &[]).unwrap();
    assert_eq!(c.ebpf.context_propagation, ContextPropagation::Headers);
    assert!(c.warnings().iter().any(|w| w.contains("deprecated")));
    let e = load_yaml("ebpf:\n  context_propagation: everything\n", &[]).unwrap_err();
    assert!(e.to_string().contains("ebpf.context_propagation"), "{e}");
    let c = load_yaml("ebpf:\n  cgroup_root: /host/cgroup\n", &[]).unwrap();
    assert_eq!(
        c.ebpf.cgroup_root,
        Some(std::path::PathBuf::from("/host/cgroup"))
    );
}
