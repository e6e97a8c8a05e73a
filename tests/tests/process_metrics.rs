//! Process metrics (`metrics.features: [application_process]`) end to end: real loader and
//! processor, real eBPF. A Python workload selected by its port echoes a known number of
//! socket bytes (TCP, then UDP datagrams to itself, then uncounted Unix-domain bytes), burns a known amount of CPU, touches 200 MiB of memory and writes 8 MiB to a
//! file with fsync; the Prometheus series (and the OTLP points) carry those amounts within
//! the tolerances stated below, only grow, and disappear once the process exits. With the
//! feature on, the processor still runs under its full sandbox (`--audit`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{
    otlp::Receiver,
    peers::{http_get, promtool_check},
    *,
};

/// Bytes the client sends and the workload echoes back.
const ECHO_BYTES: usize = 1_000_000;
/// 1,000-byte datagrams the workload sends itself over UDP after the echo (counted as well).
const UDP_DATAGRAMS: usize = 3;
/// IP socket bytes the workload moves each way.
const NETWORK_BYTES: usize = ECHO_BYTES + UDP_DATAGRAMS * 1000;
/// Memory the workload allocates and touches.
const MEMORY_BYTES: u64 = 200 << 20;
/// Slack above it: the interpreter itself (~10 MiB) and allocator rounding.
const MEMORY_SLACK: u64 = 64 << 20;
/// Bytes written (and fsynced) to a file.
const DISK_BYTES: u64 = 8 << 20;
/// CPU seconds the workload burns in user mode (at least).
const CPU_SECONDS: f64 = 1.0;
/// |Prometheus user CPU − what the process measured| at most this: both come from the same
/// scheduler accounting, `/proc/<pid>/stat` in clock ticks (10 ms) and the reading happens
/// after the process went idle.
const CPU_TOLERANCE: f64 = 0.05;
/// `processes.interval` in these tests.
const INTERVAL: Duration = Duration::from_secs(1);

const WORKLOAD: &str = r#"
import json, os, resource, socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(8)
print("ready", flush=True)
sys.stdin.readline()  # selected: go
conn, _ = srv.accept()
got = 0
while got < n:
    b = conn.recv(65536)
    if not b:
        break
    got += len(b)
    conn.sendall(b)
conn.close()
# Datagrams to itself over UDP (IPv4: counted, each byte once sent and once received), then
# bytes over a Unix-domain pair (not an IP socket: never counted).
a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.bind(("127.0.0.1", 0))
for _ in range(int(sys.argv[7])):
    a.sendto(b"u" * 1000, b.getsockname())
    assert len(b.recv(2000)) == 1000
u, v = socket.socketpair()
for _ in range(10):
    u.sendall(b"v" * 1000)
    assert len(v.recv(2000)) == 1000
while resource.getrusage(resource.RUSAGE_SELF).ru_utime < float(sys.argv[4]):
    pass
buf = bytearray(b"\x01") * int(sys.argv[5])
with open(path, "wb") as f:
    f.write(b"\x02" * int(sys.argv[6]))
    f.flush()
    os.fsync(f.fileno())
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"echoed": got, "user": ru.ru_utime, "system": ru.ru_stime}), flush=True)
sys.stdin.readline()  # until the test says stop
"#;

/// The workload, its stdout lines, and its stdin (a line lets it go on; closing ends it).
struct Workload {
    proc: Proc,
    port: u16,
    lines: mpsc::Receiver<String>,
    stdin: std::process::ChildStdin,
}

impl Workload {
    fn start(dir: &TempDir) -> Workload {
        let script = dir.path("workload.py");
        std::fs::write(&script, WORKLOAD).expect("workload script");
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .arg(port.to_string())
            .arg(dir.path("written.bin"))
            .arg(ECHO_BYTES.to_string())
            .arg(CPU_SECONDS.to_string())
            .arg(MEMORY_BYTES.to_string())
            .arg(DISK_BYTES.to_string())
            .arg(UDP_DATAGRAMS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("workload", &mut cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let stdin = proc.child.stdin.take().expect("stdin");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let w = Workload {
            proc,
            port,
            lines,
            stdin,
        };
        assert_eq!(w.line(Duration::from_secs(20)), "ready");
        w
    }

    fn line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("the workload printed nothing within {timeout:?}"))
    }

    /// Lets it run: echoes `ECHO_BYTES`, burns CPU, allocates, writes; returns its report.
    fn run(&mut self) -> Value {
        writeln!(self.stdin, "go").expect("go");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let payload = vec![b'x'; ECHO_BYTES];
        let writer = {
            let mut w = s.try_clone().expect("clone");
            std::thread::spawn(move || w.write_all(&payload).expect("send"))
        };
        let mut back = vec![0u8; ECHO_BYTES];
        s.read_exact(&mut back).expect("echo");
        writer.join().expect("writer");
        drop(s);
        let report: Value =
            serde_json::from_str(&self.line(Duration::from_secs(60))).expect("report");
        assert_eq!(report["echoed"], ECHO_BYTES as u64);
        report
    }

    /// Ends it (stdin closed) and waits for its exit.
    fn finish(self) {
        let Workload {
            mut proc, stdin, ..
        } = self;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!proc.is_running(), "the workload did not exit");
    }
}

fn config(metrics_port: u16, extra: &str) -> String {
    format!(
        "prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\nmetrics:\n  features: [application, application_process]\nprocesses:\n  interval: {}s\n{extra}",
        INTERVAL.as_secs()
    )
}

/// Samples of `metric` for process `pid`, by the value of `label` (`cpu_mode`, …; "" for
/// none).
fn samples(text: &str, metric: &str, pid: u32, label: &str) -> BTreeMap<String, f64> {
    let pid_label = format!("process_pid=\"{pid}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&pid_label))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let key = if label.is_empty() {
                String::new()
            } else {
                let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
                labels[start..].split('"').next()?.to_string()
            };
            Some((key, value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, metric: &str, pid: u32, label: &str, key: &str) -> Option<f64> {
    samples(text, metric, pid, label).get(key).copied()
}

/// Scrapes until `done` holds (bounded); returns the last exposition.
fn scrape_until(port: u16, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = http_get(port, "/metrics");
        if done(&text) || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const CPU: &str = "process_cpu_time_seconds_total";
const UTILIZATION: &str = "process_cpu_utilization_ratio";
const MEMORY: &str = "process_memory_usage_bytes";
const VIRTUAL: &str = "process_memory_virtual_bytes";
const DISK: &str = "process_disk_io_bytes_total";
const NETWORK: &str = "process_network_io_bytes_total";

#[test]
fn prometheus_process_metrics_match_what_the_process_did_and_go_with_it() {
    let _guard = serial();
    let dir = TempDir::new("process-metrics");
    let mut workload = Workload::start(&dir);
    let pid = workload.proc.pid();
    let metrics_port = free_port();
    let sonde = Sonde::start_with_config(
        &dir.path("sonde.yaml"),
        &config(metrics_port, ""),
        workload.port,
        &dir,
        pid,
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    // Series appear within an interval of selection, before the workload did anything.
    let text = scrape_until(metrics_port, Duration::from_secs(10), |t| {
        value(t, MEMORY, pid, "", "").is_some()
    });
    assert!(value(&text, MEMORY, pid, "", "").is_some(), "{text}");
    let report = workload.run();
    let user = report["user"].as_f64().expect("user");
    assert!(user >= CPU_SECONDS);

    // After an interval (+ slack) the readings include everything the workload did.
    let text = scrape_until(metrics_port, Duration::from_secs(10), |t| {
        value(t, DISK, pid, "disk_io_direction", "write").unwrap_or(0.0) >= DISK_BYTES as f64
            && value(t, CPU, pid, "cpu_mode", "user").unwrap_or(0.0) >= user - CPU_TOLERANCE
            && value(t, MEMORY, pid, "", "").unwrap_or(0.0) >= MEMORY_BYTES as f64
    });
    let cpu_user = value(&text, CPU, pid, "cpu_mode", "user").expect("user cpu");
    assert!(
        (cpu_user - user).abs() <= CPU_TOLERANCE,
        "cpu user {cpu_user} s, the process measured {user} s\n{text}"
    );
    let cpu_system = value(&text, CPU, pid, "cpu_mode", "system").expect("system cpu");
    let system = report["system"].as_f64().expect("system");
    assert!(
        (cpu_system - system).abs() <= CPU_TOLERANCE,
        "cpu system {cpu_system} s, the process measured {system} s"
    );
    eprintln!(
        "measured by the process: user {user} s, system {system} s; exported: user {cpu_user} s, system {cpu_system} s"
    );
    let memory = value(&text, MEMORY, pid, "", "").expect("memory");
    assert!(
        memory >= MEMORY_BYTES as f64 && memory < (MEMORY_BYTES + MEMORY_SLACK) as f64,
        "memory {memory}"
    );
    let virt = value(&text, VIRTUAL, pid, "", "").expect("virtual");
    assert!(virt >= memory, "virtual {virt} < resident {memory}");
    let written = value(&text, DISK, pid, "disk_io_direction", "write").expect("disk write");
    eprintln!("exported: memory {memory} B, virtual {virt} B, disk write {written} B");
    assert!(written >= DISK_BYTES as f64, "disk write {written}");
    assert!(value(&text, DISK, pid, "disk_io_direction", "read").is_some());
    // Socket bytes are counted exactly: every byte of the echo went through recv/send on its
    // one connection, the datagrams through UDP sockets, and the Unix-domain bytes are not
    // counted (the kernel side turns non-IP sockets away before the process is looked at).
    assert_eq!(
        samples(&text, NETWORK, pid, "network_io_direction"),
        BTreeMap::from([
            ("receive".to_string(), NETWORK_BYTES as f64),
            ("transmit".to_string(), NETWORK_BYTES as f64)
        ]),
        "{text}"
    );
    // Utilization: the burn (≥ 1 s of CPU) happened within a few intervals; its gauge is a
    // share of all CPUs, between 0 and 1.
    let util = samples(&text, UTILIZATION, pid, "cpu_mode");
    assert_eq!(util.len(), 2, "{text}");
    assert!(util.values().all(|u| (0.0..=1.0).contains(u)), "{util:?}");
    // The resource attributes of RED metrics are there too.
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!("{MEMORY}{{")) && l.contains(&format!("process_pid=\"{pid}\""))
        })
        .expect("memory line");
    for label in [
        "service_name=\"python3",
        "process_command=\"python3",
        "process_owner=\"0\"",
        &format!("process_parent_pid=\"{}\"", std::process::id()),
    ] {
        assert!(line.contains(label), "{label} missing: {line}");
    }
    promtool_check(&text);

    // Counters only grow: two more scrapes an interval apart.
    let counters = |t: &str| {
        [CPU, DISK, NETWORK]
            .iter()
            .flat_map(|m| {
                let label = match *m {
                    CPU => "cpu_mode",
                    DISK => "disk_io_direction",
                    _ => "network_io_direction",
                };
                samples(t, m, pid, label)
                    .into_iter()
                    .map(move |(k, v)| (format!("{m}/{k}"), v))
            })
            .collect::<BTreeMap<String, f64>>()
    };
    let first = counters(&text);
    assert_eq!(first.len(), 6, "{first:?}");
    std::thread::sleep(INTERVAL + Duration::from_millis(500));
    let second = counters(&http_get(metrics_port, "/metrics"));
    std::thread::sleep(INTERVAL + Duration::from_millis(500));
    let third = counters(&http_get(metrics_port, "/metrics"));
    for (k, v) in &first {
        assert!(
            second[k] >= *v && third[k] >= second[k],
            "{k}: {v} {} {}",
            second[k],
            third[k]
        );
    }

    // The process exits: its series go within an interval and the removal (slack 5 s).
    let exited = Instant::now();
    workload.finish();
    let text = scrape_until(metrics_port, INTERVAL + Duration::from_secs(5), |t| {
        !t.contains(&format!("process_pid=\"{pid}\""))
    });
    assert!(
        !text.contains(&format!("process_pid=\"{pid}\"")),
        "series left {:?} after exit:\n{text}",
        exited.elapsed()
    );
    drop(sonde);
}

#[test]
fn otlp_process_metrics_arrive_with_their_names_and_attributes() {
    let _guard = serial();
    let dir = TempDir::new("process-metrics-otlp");
    let receiver = Receiver::start(&dir, 0, free_port());
    let mut workload = Workload::start(&dir);
    let pid = workload.proc.pid();
    let extra = format!(
        "otel_metrics_export:\n  endpoint: http://127.0.0.1:{}\n  protocol: http/protobuf\n  interval: 500ms\n",
        receiver.http_port
    );
    let sonde = Sonde::start_with_config(
        &dir.path("sonde.yaml"),
        &config(free_port(), &extra),
        workload.port,
        &dir,
        pid,
    );
    workload.run();
    let ours = |p: &Value| p["resource"]["process.pid"] == pid;
    let points = || -> Vec<Value> {
        receiver
            .requests()
            .iter()
            .filter(|r| r["signal"] == "metrics")
            .flat_map(|r| r["points"].as_array().cloned().unwrap_or_default())
            .filter(ours)
            .collect()
    };
    // (name, kind, one attribute a point of it carries)
    type Wanted<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let wanted: [Wanted; 6] = [
        ("process.cpu.time", "sum", Some(("cpu.mode", "user"))),
        (
            "process.cpu.utilization",
            "gauge",
            Some(("cpu.mode", "system")),
        ),
        ("process.memory.usage", "gauge", None),
        ("process.memory.virtual", "gauge", None),
        (
            "process.disk.io",
            "sum",
            Some(("disk.io.direction", "write")),
        ),
        (
            "process.network.io",
            "sum",
            Some(("network.io.direction", "receive")),
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = |pts: &[Value]| {
        wanted.iter().all(|(name, kind, attr)| {
            pts.iter().any(|p| {
                p["name"] == *name
                    && p["kind"] == *kind
                    && attr.is_none_or(|(k, v)| p["attributes"][k] == v)
            })
        })
    };
    let mut pts = points();
    while !seen(&pts) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        pts = points();
    }
    assert!(seen(&pts), "{pts:#?}");
    let net = pts
        .iter()
        .rev()
        .find(|p| {
            p["name"] == "process.network.io"
                && p["attributes"]["network.io.direction"] == "transmit"
        })
        .expect("network transmit");
    assert_eq!(net["value"], NETWORK_BYTES as u64, "{net}");
    assert_eq!(net["is_monotonic"], true);
    assert_eq!(net["temporality"], 2, "cumulative");
    let cpu = pts
        .iter()
        .find(|p| p["name"] == "process.cpu.time")
        .expect("cpu");
    assert_eq!(cpu["unit"], "s");
    for key in [
        "process.command",
        "process.owner",
        "process.parent_pid",
        "service.name",
    ] {
        assert!(!cpu["attributes"][key].is_null(), "{key} missing: {cpu}");
    }
    let exe = python();
    let command = exe.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(cpu["attributes"]["process.command"], command);
    assert!(!cpu["resource"]["service.name"].is_null(), "{cpu}");

    // Exit: the process's points stop (the next exports carry none of them).
    workload.finish();
    std::thread::sleep(INTERVAL + Duration::from_secs(2));
    let before = receiver.requests().len();
    std::thread::sleep(Duration::from_secs(2));
    let later: Vec<Value> = receiver.requests()[before..]
        .iter()
        .flat_map(|r| r["points"].as_array().cloned().unwrap_or_default())
        .filter(|p| {
            ours(p)
                && p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("process."))
        })
        .collect();
    assert!(later.is_empty(), "points after exit: {later:#?}");
    drop(sonde);
}

/// With the feature on, the single-host pair still passes `--audit`: the loader holds the
/// same capabilities (CAP_SYS_PTRACE already covers `/proc/<pid>/io`), the processor runs
/// with Landlock, seccomp, no capability, as nobody — and produces process metrics there.
#[test]
fn processor_stays_sandboxed_with_process_and_flow_metrics_on() {
    let _guard = serial();
    let dir = TempDir::new("process-metrics-sandbox");
    let workload = Workload::start(&dir);
    let pid = workload.proc.pid();
    let metrics_port = free_port();
    // Both host-metric families on, flows on loopback too (the scrapes are the traffic).
    let sonde = Sonde::start_with_config(
        &dir.path("sonde.yaml"),
        &config(
            metrics_port,
            "network:\n  enable: true\n  exclude_interfaces: []\n  cache_active_timeout: 1s\n",
        ),
        workload.port,
        &dir,
        pid,
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    let flows = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("beyla_network_flow_bytes_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let text = scrape_until(metrics_port, Duration::from_secs(15), |t| {
        value(t, CPU, pid, "cpu_mode", "user").is_some() && flows(t) > 0.0
    });
    assert!(
        value(&text, CPU, pid, "cpu_mode", "user").is_some(),
        "{text}"
    );
    // The sandboxed processor produced flow series as well.
    assert!(flows(&text) > 0.0, "{text}");
    let out = Command::new(binary("sonde-loader"))
        .args(["--audit", "--json", "--open-port", "1"])
        .env("SONDE_CONTROL_SOCKET", &sonde.control_socket)
        .output()
        .expect("sonde-loader --audit");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // `--audit` looks at every Sonde process on the machine; other tests may run their own
    // pairs meanwhile (some deliberately out of policy), so only this pair's entries count.
    let loader_pid = sonde.proc.pid();
    let processor_pid: u32 =
        std::fs::read_to_string(format!("/proc/{loader_pid}/task/{loader_pid}/children"))
            .expect("children")
            .split_whitespace()
            .find_map(|c| c.parse().ok())
            .expect("processor pid");
    let ours = |v: &Value| v["pid"] == loader_pid || v["pid"] == processor_pid;
    let problems: Vec<&Value> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| {
            let p = p.as_str().unwrap_or_default();
            p.contains(&format!(" {loader_pid} ")) || p.contains(&format!(" {processor_pid} "))
        })
        .collect();
    assert!(problems.is_empty(), "audit problems: {problems:#?}");
    if report["problems"] == Value::Array(vec![]) {
        assert!(out.status.success(), "audit failed: {report:#}");
    }
    let nf = report["network_flows"].as_str().expect("network_flows");
    assert!(nf.starts_with("on"), "{nf}");
    let pm = report["process_metrics"].as_str().expect("process_metrics");
    assert!(
        pm.starts_with("on: every 1s") && pm.contains("captured processes only"),
        "{pm}"
    );
    let loader = report["loaders"]
        .as_array()
        .expect("loaders")
        .iter()
        .find(|l| ours(l))
        .expect("this loader in the report");
    let effective: Vec<(String, String)> =
        serde_json::from_value(loader["capabilities"]["effective"].clone()).expect("caps");
    let names: Vec<&str> = effective.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "CAP_DAC_READ_SEARCH",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_PTRACE"
        ]
    );
    let p = report["processors"]
        .as_array()
        .expect("processors")
        .iter()
        .find(|p| ours(p))
        .expect("this processor in the report");
    assert_eq!(p["landlock"], true);
    assert_eq!(p["seccomp_mode"], 2);
    assert_eq!(p["seccomp_filters"], 5);
    assert_eq!(p["no_new_privs"], true);
    assert_eq!(p["uid"], "65534 65534 65534 65534");
    assert_eq!(p["capabilities"]["effective"], Value::Array(vec![]));
    // Nothing was unreadable: /proc/<pid>/io of a root process read under CAP_SYS_PTRACE.
    assert_eq!(sonde.log_count("/proc/<pid>/io unreadable"), 0);
    drop(sonde);
    // Never told to go: killed with its process group.
    drop(workload);
}

/// Off by default: no reading, no series, and the loader says nothing about process metrics.
#[test]
fn process_metrics_are_off_by_default() {
    let _guard = serial();
    let dir = TempDir::new("process-metrics-off");
    let mut workload = Workload::start(&dir);
    let pid = workload.proc.pid();
    let metrics_port = free_port();
    let sonde = Sonde::start_with_config(
        &dir.path("sonde.yaml"),
        &format!("prometheus_export:\n  port: {metrics_port}\n  address: 127.0.0.1\n"),
        workload.port,
        &dir,
        pid,
    );
    sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(5));
    workload.run();
    // On, the first reading goes out as soon as the processor connects.
    std::thread::sleep(Duration::from_secs(2));
    let text = http_get(metrics_port, "/metrics");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("process_") && l.contains("process_pid=")),
        "{text}"
    );
    assert_eq!(sonde.log_count("process metrics on"), 0);
    workload.finish();
    drop(sonde);
}
