//! The OTLP receiver the tests assert on (`tests/peers/otlp_receiver.py`, built on the
//! official `opentelemetry-proto` definitions and `grpcio`): what Sonde exported, request by
//! request, as flattened JSON.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Proc, TempDir, repo_root};

/// The Python interpreter of the test virtualenv holding `grpcio` and `opentelemetry-proto`
/// (`scripts/setup.sh` creates it; `SONDE_TEST_VENV` overrides its location).
pub fn otlp_python() -> PathBuf {
    let venv = std::env::var_os("SONDE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".local/share/sonde/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it creates the test virtualenv)",
        python.display()
    );
    python
}

/// A running OTLP receiver.
pub struct Receiver {
    pub proc: Proc,
    pub out: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Receiver {
    /// Starts the receiver on the given ports (0 disables a transport) and waits until it
    /// accepts. Requests are appended to `out`, which survives restarts.
    pub fn start(dir: &TempDir, grpc_port: u16, http_port: u16) -> Receiver {
        Receiver::start_with(dir, grpc_port, http_port, None)
    }

    /// As `start`, speaking TLS with `tls` = (certificate, key) PEM files when given.
    pub fn start_with(
        dir: &TempDir,
        grpc_port: u16,
        http_port: u16,
        tls: Option<(&Path, &Path)>,
    ) -> Receiver {
        let out = dir.path("otlp.jsonl");
        let mut cmd = Command::new(otlp_python());
        cmd.arg(repo_root().join("tests/peers/otlp_receiver.py"))
            .arg(&out)
            .arg(grpc_port.to_string())
            .arg(http_port.to_string());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut proc = Proc::spawn("otlp-receiver", &mut cmd);
        let stdout = proc.child.stdout.take().expect("receiver stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("receiver start");
        assert_eq!(first.trim(), "ready", "the OTLP receiver did not start");
        Receiver {
            proc,
            out,
            grpc_port,
            http_port,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every span received so far, each with the `transport` it came over.
    pub fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for r in self.requests().iter().filter(|r| r["signal"] == "traces") {
            for s in r["spans"].as_array().into_iter().flatten() {
                let mut s = s.clone();
                s["transport"] = r["transport"].clone();
                out.push(s);
            }
        }
        out
    }

    /// The latest value of every histogram series received so far, each with its
    /// `transport`. A series is (process instance, metric, attributes); metrics are
    /// cumulative, so the latest point is the one with the largest count, however a collector
    /// in between batched or split the exports.
    pub fn latest_points(&self) -> Vec<Value> {
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        for r in self.requests().iter().filter(|r| r["signal"] == "metrics") {
            for p in r["points"].as_array().into_iter().flatten() {
                let key = format!(
                    "{}|{}|{}",
                    p["resource"]["service.instance.id"], p["name"], p["attributes"]
                );
                let newer = latest
                    .get(&key)
                    .is_none_or(|old| p["count"].as_u64() >= old["count"].as_u64());
                if newer {
                    let mut p = p.clone();
                    p["transport"] = r["transport"].clone();
                    latest.insert(key, p);
                }
            }
        }
        latest.into_values().collect()
    }

    /// Waits until at least `n` spans satisfy `pred` (bounded), then a settle period so
    /// extras would show; returns the matching spans.
    pub fn wait_spans(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.spans().iter().filter(|s| pred(s)).count() < n {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(800));
        self.spans().into_iter().filter(|s| pred(s)).collect()
    }

    /// Waits until the latest metrics count at least `n` requests of `metric` whose points
    /// satisfy `pred`; returns those points.
    pub fn wait_points(
        &self,
        metric: &str,
        n: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let points: Vec<Value> = self
                .latest_points()
                .into_iter()
                .filter(|p| p["name"] == metric && pred(p))
                .collect();
            let total: u64 = points.iter().filter_map(|p| p["count"].as_u64()).sum();
            if total >= n || Instant::now() >= deadline {
                return points;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sum of `count` over points whose attributes include every `(key, value)` of `attrs`.
pub fn count_where(points: &[Value], metric: &str, attrs: &[(&str, Value)]) -> u64 {
    points
        .iter()
        .filter(|p| p["name"] == metric)
        .filter(|p| attrs.iter().all(|(k, v)| p["attributes"][*k] == *v))
        .filter_map(|p| p["count"].as_u64())
        .sum()
}

/// The rotel OTLP collector (PyPI `rotel`, a real collector written in Rust) from the test
/// virtualenv, receiving on `grpc_port`/`http_port` and forwarding everything over OTLP/gRPC
/// to `forward_to` (an `http://host:port` gRPC endpoint).
pub fn start_rotel(grpc_port: u16, http_port: u16, forward_to: &str) -> Proc {
    let python = otlp_python();
    let venv = python
        .parent()
        .and_then(|bin| bin.parent())
        .expect("virtualenv root")
        .to_path_buf();
    let agent = std::fs::read_dir(venv.join("lib"))
        .expect("virtualenv lib")
        .flatten()
        .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.exists())
        .expect("rotel-agent in the test virtualenv (scripts/setup.sh installs rotel)");
    let mut cmd = Command::new(agent);
    cmd.args([
        "start",
        "--otlp-grpc-endpoint",
        &format!("127.0.0.1:{grpc_port}"),
        "--otlp-http-endpoint",
        &format!("127.0.0.1:{http_port}"),
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        forward_to,
        "--otlp-exporter-protocol",
        "grpc",
        "--batch-timeout",
        "200ms",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn("rotel", &mut cmd);
    crate::wait_for_port(grpc_port, Duration::from_secs(20));
    crate::wait_for_port(http_port, Duration::from_secs(20));
    p
}

/// A throwaway certificate authority and a server certificate it signed for `localhost` and
/// 127.0.0.1, made with the openssl command: (CA certificate, server certificate, server key).
pub fn test_certificates(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.path("ca.key"),
        dir.path("ca.pem"),
        dir.path("server.key"),
        dir.path("server.csr"),
        dir.path("server.pem"),
        dir.path("san.ext"),
    );
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("san.ext");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |v: &str| std::ffi::OsString::from(v);
    openssl(&[
        &s("req"),
        &s("-x509"),
        &s("-newkey"),
        &s("rsa:2048"),
        &s("-nodes"),
        &s("-days"),
        &s("1"),
        &s("-subj"),
        &s("/CN=sonde-test-ca"),
        &s("-keyout"),
        ca_key.as_os_str(),
        &s("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        &s("req"),
        &s("-newkey"),
        &s("rsa:2048"),
        &s("-nodes"),
        &s("-subj"),
        &s("/CN=localhost"),
        &s("-keyout"),
        key.as_os_str(),
        &s("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        &s("x509"),
        &s("-req"),
        &s("-in"),
        csr.as_os_str(),
        &s("-CA"),
        ca.as_os_str(),
        &s("-CAkey"),
        ca_key.as_os_str(),
        &s("-CAcreateserial"),
        &s("-days"),
        &s("1"),
        &s("-extfile"),
        ext.as_os_str(),
        &s("-out"),
        cert.as_os_str(),
    ]);
    for p in [&ca, &cert] {
        let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    }
    (ca, cert, key)
}
