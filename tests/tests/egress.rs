//! What a compromised processor could read or leak through its own process (issue 13), with
//! the real single-host `sonde` starting the real processor: the processor is not dumpable, so
//! neither its `/proc/<pid>/environ` nor its `/proc/<pid>/mem` opens for another process of
//! its uid (a control process of that uid shows the same reads work on a dumpable process);
//! and OTLP headers reach it on its standard input, never through its environment, while
//! export with those headers still works. (The in-process egress denials are probes of
//! `sonde-processor --check-sandbox`, in `sandbox.rs`.)

use std::{
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    time::Duration,
};

use sonde_e2e::{otlp::*, *};

/// Starts single-host `sonde` selecting `server` on `port`, with `env`; returns it and the
/// processor's pid.
fn start(dir: &TempDir, port: u16, server: u32, env: &[(&str, &str)]) -> (Sonde, u32) {
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, "service_namespace: egress\n").expect("config");
    let mut env = env.to_vec();
    env.push(("BEYLA_TRACE_PRINTER", "disabled"));
    let sonde = Sonde::start(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            &port.to_string(),
        ],
        &env,
        dir,
        &[server],
    );
    let started = sonde.wait_log("processor started", Duration::from_secs(10));
    let pid = log_field(&started, "pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started}"));
    (sonde, pid)
}

/// The uid a process runs as (real).
fn uid_of(pid: u32) -> u32 {
    status_field(pid, "Uid")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

/// Tries to read one byte of `path` as `uid` (no capability, no supplementary group): Ok, or
/// the reader's error message.
fn read_as(uid: u32, path: &str) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "head",
            "-c1",
            path,
        ])
        .stdout(Stdio::null())
        .output()
        .expect("setpriv head");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The Yama ptrace scope, if the kernel has Yama.
const YAMA: &str = "/proc/sys/kernel/yama/ptrace_scope";

/// Runs `check` with each Yama ptrace scope this kernel offers (0 and 1), restoring the
/// original; without Yama, once.
fn with_each_yama_scope(check: impl Fn(&str)) {
    let Ok(original) = std::fs::read_to_string(YAMA) else {
        check("no Yama");
        return;
    };
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(YAMA, &self.0);
        }
    }
    let _restore = Restore(original);
    for scope in ["0", "1"] {
        if std::fs::write(YAMA, scope).is_ok() {
            check(&format!("Yama ptrace_scope {scope}"));
        }
    }
}

#[test]
fn the_processor_is_not_dumpable_so_its_environ_and_mem_are_closed_to_its_own_uid() {
    let _guard = serial();
    let dir = TempDir::new("egress-dumpable");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let (_sonde, pid) = start(&dir, port, server.pid(), &[]);
    let uid = uid_of(pid);
    assert_ne!(uid, 0);
    // Non-dumpable: the kernel gives the process's /proc files to root.
    for file in ["environ", "mem"] {
        let meta = std::fs::metadata(format!("/proc/{pid}/{file}")).expect("proc file");
        assert_eq!(
            meta.uid(),
            0,
            "/proc/{pid}/{file} owner: the processor is dumpable"
        );
    }
    // The control: a dumpable process of the same uid is readable by that uid.
    let mut control = Proc::spawn(
        "same-uid control",
        Command::new("setpriv").args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sleep",
            "30",
        ]),
    );
    std::thread::sleep(Duration::from_millis(200));
    with_each_yama_scope(|yama| {
        // Yama 1 restricts ptrace (and /proc/<pid>/mem) to descendants; environ is a
        // PTRACE_MODE_READ check Yama does not restrict, so the control reads it either way.
        read_as(uid, &format!("/proc/{}/environ", control.pid()))
            .unwrap_or_else(|e| panic!("{yama}: control environ unreadable: {e}"));
        for file in ["environ", "mem"] {
            let path = format!("/proc/{pid}/{file}");
            let err = read_as(uid, &path)
                .expect_err(&format!("{yama}: uid {uid} read the processor's {file}"));
            assert!(err.contains("Permission denied"), "{yama}: {path}: {err}");
        }
    });
    // Without Yama (or at scope 0) the control's memory opens too: same uid is all it takes.
    if std::fs::read_to_string(YAMA).map_or(true, |s| s.trim() == "0") {
        let open = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "sh",
                "-c",
                &format!("exec 3</proc/{}/mem", control.pid()),
            ])
            .output()
            .expect("open control mem");
        assert!(
            open.status.success(),
            "control mem did not open: {}",
            String::from_utf8_lossy(&open.stderr)
        );
    }
    control.stop(Duration::from_secs(1));
}

#[test]
fn otlp_headers_never_reach_the_processor_environment_and_still_reach_the_collector() {
    let _guard = serial();
    let dir = TempDir::new("egress-headers");
    let port = free_port();
    let receiver = Receiver::start(&dir, free_port(), free_port());
    let server = start_server(ServerKind::Python, port, &dir);
    let traces = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let (_sonde, pid) = start(
        &dir,
        port,
        server.pid(),
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-sonde-test=s3cr3t%20token"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-sonde-tenant=t1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ (as root)");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    // The non-secret configuration still comes through the environment...
    assert!(
        vars.iter()
            .any(|v| v.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=")),
        "{vars:?}"
    );
    // ...the headers do not.
    for v in &vars {
        assert!(!v.contains("HEADERS"), "secret variable in environ: {v}");
        assert!(
            !v.contains("s3cr3t") && !v.contains("t1,"),
            "secret in environ: {v}"
        );
    }
    let sent = send_standard_traffic(port);
    receiver.wait_spans(sent.len(), Duration::from_secs(20), |s| {
        s["attributes"]["server.port"] == port
    });
    let requests = receiver.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["headers"]["x-sonde-test"], "s3cr3t token", "{r}");
        assert_eq!(r["headers"]["x-sonde-tenant"], "t1", "{r}");
    }
}
