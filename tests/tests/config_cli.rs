//! Configuration errors stop the binaries at start with the key, the value and what was
//! expected; `--print-config` shows the effective configuration.

use std::{process::Command, time::Duration};

use sonde_e2e::*;

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary(bin))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_values_fail_at_start_naming_the_key() {
    let dir = TempDir::new("config");
    let cases: [(&str, &str, &[&str]); 5] = [
        ("trace_printer: yaml\n", "trace_printer", &["yaml", "json"]),
        ("open_port: 80-x\n", "open_port", &["80-x", "ranges"]),
        (
            "ebpf:\n  ring_buffer_bytes: 1000\n",
            "ebpf.ring_buffer_bytes",
            &["1000", "power of two"],
        ),
        ("trace_printr: text\n", "trace_printr", &["unknown field"]),
        (
            "processor:\n  scheduling: fifo\n",
            "processor.scheduling",
            &["fifo", "`batch` or `inherit`"],
        ),
    ];
    for (yaml, key, words) in cases {
        let path = dir.path("bad.yaml");
        std::fs::write(&path, yaml).expect("write");
        for bin in ["sonde", "sonde-loader", "sonde-processor"] {
            let (code, _, err) = run(bin, &["--config", path.to_str().expect("utf-8")], &[]);
            assert_eq!(code, 2, "{bin} with {yaml:?}: {err}");
            assert!(err.contains(key), "{bin}: {err}");
            for w in words {
                assert!(err.contains(w), "{bin}: {err} lacks {w}");
            }
        }
    }
    let (code, _, err) = run("sonde", &[], &[("BEYLA_LOG_LEVEL", "loud")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("BEYLA_LOG_LEVEL") && err.contains("loud"),
        "{err}"
    );
    let (code, _, err) = run("sonde", &["--open-port", "0"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--open-port"), "{err}");
}

#[test]
fn print_config_shows_file_env_and_flags() {
    let dir = TempDir::new("printcfg");
    let path = dir.path("ok.yaml");
    std::fs::write(
        &path,
        "open_port: 8080\nservice_name: from-file\nprocessor:\n  user: daemon\n",
    )
    .expect("write");
    let (code, out, err) = run(
        "sonde",
        &[
            "--config",
            path.to_str().expect("utf-8"),
            "--exe",
            "*/nginx",
            "--print-config",
        ],
        &[
            ("OTEL_SERVICE_NAME", "from-env"),
            ("BEYLA_TRACE_PRINTER", "json"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    // The output is a configuration file that prints back to itself (the flag and the
    // environment's values now come from the file).
    let printed = dir.path("printed.yaml");
    std::fs::write(&printed, &out).expect("write");
    let (code, again, err) = run(
        "sonde",
        &[
            "--config",
            printed.to_str().expect("utf-8"),
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
    for line in [
        "open_port: '8080'",
        "auto_target_exe: '*/nginx'",
        "service_name: from-env",
        "trace_printer: json",
        "  user: daemon",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn shipped_example_config_is_valid() {
    // The shipped example runs the processor as its own user, as an install creates it.
    ensure_system_user("sonde-processor");
    let path = repo_root().join("deploy/config/sonde.yaml");
    let (code, out, err) = run(
        "sonde",
        &["--config", path.to_str().expect("utf-8"), "--print-config"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "open_port: 8080,8443"), "{out}");
    assert!(
        out.lines().any(|l| l == "  ring_buffer_bytes: 16777216"),
        "{out}"
    );
}

/// `sonde` hands the processor the file's bytes, not a re-serialization: a service name with
/// YAML's special characters reaches every span whole (a printed `: ` or ` #` used to break
/// or cut it).
#[test]
fn hostile_values_reach_the_processor_intact() {
    let _guard = serial();
    let dir = TempDir::new("hostile");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let name = "shop: cart #1 'été' \"x\" * @";
    let yaml = format!(
        "service_name: {}\nrouters_are_not_a_key_here: ~\n",
        serde_yaml_ng::to_string(name).expect("yaml").trim_end()
    );
    // An unknown key stops both sides at start, naming it.
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, &yaml).expect("write");
    let (code, _, err) = run(
        "sonde",
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            &port.to_string(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("routers_are_not_a_key_here"), "{err}");

    let yaml = yaml.replace("routers_are_not_a_key_here: ~\n", "");
    let sonde = Sonde::start_with_config(&config, &yaml, port, &dir, server.pid());
    for _ in 0..2 {
        assert_eq!(HttpConn::open(port).request("GET", "/x", None, true), 404);
    }
    let spans = sonde.wait_spans(2, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(s["service_name"], name, "{s}");
    }
}

/// The file and the secret headers travel through one pipe written before the processor runs:
/// more than it holds is refused at start, naming both, instead of hanging.
#[test]
fn a_configuration_too_large_for_the_pipe_is_refused_not_hung() {
    let dir = TempDir::new("bigconfig");
    let path = dir.path("big.yaml");
    let filler = "# filler\n".repeat(50_000 / 9);
    std::fs::write(&path, format!("open_port: 8080\n{filler}")).expect("write");
    let header = format!("api-key={}", "x".repeat(12_000));
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary("sonde"))
        .args(["--config", path.to_str().expect("utf-8"), "--print-config"])
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_HEADERS", &header)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_*HEADERS") && err.contains("big.yaml"),
        "{err}"
    );
    assert!(
        !err.contains(&"x".repeat(100)),
        "the header value must not be echoed"
    );
    // The same file without the headers fits.
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary("sonde"))
        .args(["--config", path.to_str().expect("utf-8"), "--print-config"])
        .env_clear()
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
