//! Unit tests of the configuration core: sources and precedence, errors naming their key,
//! and `--print-config` output read back to the same configuration for hostile values.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
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
