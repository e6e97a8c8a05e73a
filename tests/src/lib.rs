//! End-to-end test harness: starts real servers and the real `sonde` binaries (real eBPF, so
//! tests run as root), drives traffic with a small raw-socket HTTP client, and collects the
//! JSON spans the processor prints. Every child process is killed when its guard drops, and
//! every wait is bounded.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod kube;
pub mod otlp;
pub mod peers;

/// e2e tests share the kernel, the machine's two cores and tracefs: run them one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A built binary of the workspace (`cargo build` must have run; the test script does it).
pub fn binary(name: &str) -> PathBuf {
    let profile = std::env::var("SONDE_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = repo_root().join("target").join(profile).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A copy of a workspace binary in `dir` (mode 0755 under /tmp), for running it as another
/// user: the build tree may sit under a directory only root can search, as an install prefix
/// would not.
pub fn installed_binary(name: &str, dir: &TempDir) -> PathBuf {
    let to = dir.path(name);
    std::fs::copy(binary(name), &to).unwrap_or_else(|e| panic!("copying {name}: {e}"));
    to
}

/// The real Python interpreter (not a pyenv shim script), so the pid we start is Python's.
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import os, sys; print(os.path.realpath(sys.executable))",
                ])
                .output()
                .expect("python3 is required (scripts/setup.sh installs it)");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

pub fn server_script(name: &str) -> PathBuf {
    repo_root().join("tests/servers").join(name)
}

/// A fresh scratch directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p =
            std::env::temp_dir().join(format!("sonde-e2e-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        // Readable by the processor's user (nobody) for config files.
        let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts on the port.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// A child process killed (SIGKILL to its process group) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// SIGTERM, then wait (bounded) for exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers the tests instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Nginx,
    Python,
    Node,
    Java,
}

/// Starts a test server on `port` and waits until it accepts.
pub fn start_server(kind: ServerKind, port: u16, dir: &TempDir) -> Proc {
    let mut cmd = match kind {
        ServerKind::Nginx => {
            let conf = std::fs::read_to_string(server_script("nginx.conf")).expect("nginx.conf");
            let prefix = dir.path("nginx");
            std::fs::create_dir_all(&prefix).expect("nginx prefix");
            let conf = conf
                .replace("PREFIX", prefix.to_str().expect("utf-8 path"))
                .replace("PORT", &port.to_string());
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut c = Command::new("/usr/sbin/nginx");
            c.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
            c
        }
        ServerKind::Python => {
            let mut c = Command::new(python());
            c.arg(server_script("python_server.py"))
                .arg(port.to_string());
            c
        }
        ServerKind::Node => {
            let mut c = Command::new("node");
            c.arg(server_script("node_server.js")).arg(port.to_string());
            c
        }
        ServerKind::Java => {
            let mut c = Command::new("java");
            c.arg(server_script("JavaServer.java"))
                .arg(port.to_string());
            c
        }
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let p = Proc::spawn(&format!("{kind:?}"), &mut cmd);
    wait_for_port(port, Duration::from_secs(60));
    p
}

/// The standard client plan: GET 200, POST with a 321-byte body (201), GET 404, GET 500.
pub const CLIENT_PLAN: [&str; 4] = [
    "GET:/ok/one",
    "POST:/submit:321",
    "GET:/missing/two",
    "GET:/error/three",
];

/// Starts `tests/servers/python_client.py` against `port` with `plan`; it waits for `go`.
pub fn start_python_client(port: u16, plan: &[&str]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(server_script("python_client.py"))
        .arg(port.to_string())
        .args(plan)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Proc::spawn("python-client", &mut cmd)
}

/// Lets a client from `start_python_client` go and returns the statuses it saw.
pub fn run_python_client(client: &mut Proc) -> Vec<u16> {
    client
        .child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("start client");
    let out = BufReader::new(client.child.stdout.take().expect("stdout"));
    out.lines()
        .map_while(Result::ok)
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The user single-host `sonde` switches to after start-up (`loader.user`'s default).
pub const LOADER_USER: &str = "sonde-loader";

/// Creates a system user (no home, no login shell) unless it exists, as an install would.
pub fn ensure_system_user(name: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {name}");
    }
}

/// A Python test server and single-host `sonde` selecting it by its port: the opening most
/// end-to-end tests share.
pub struct Served {
    pub dir: TempDir,
    pub port: u16,
    pub server: Proc,
    pub sonde: Sonde,
}

/// Starts a Python test server in a fresh `TempDir` tagged `tag`, then `sonde --open-port`
/// on its port, and waits until the server is selected.
pub fn serve_python_with_sonde(tag: &str) -> Served {
    let dir = TempDir::new(tag);
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    Served {
        dir,
        port,
        server,
        sonde,
    }
}

/// Running `sonde` (single host) with its span output collected.
pub struct Sonde {
    pub proc: Proc,
    spans: Arc<Mutex<Vec<Value>>>,
    log: Arc<Mutex<Vec<String>>>,
    pub control_socket: PathBuf,
}

/// Strips ANSI colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Sonde {
    /// Starts `binary` (sonde or sonde-loader) with JSON spans and a private control socket.
    pub fn start_binary(
        binary_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &TempDir,
    ) -> Sonde {
        let control_socket = dir.path("control.sock");
        if binary_name == "sonde" {
            ensure_system_user(LOADER_USER);
        }
        let mut cmd = Command::new(binary(binary_name));
        cmd.args(args);
        Sonde::attach(binary_name, cmd, env, control_socket)
    }

    /// Runs `cmd` with a clean environment (PATH, JSON spans, `env`), collecting its stdout as
    /// spans and its stderr as log lines.
    pub fn attach(
        name: &str,
        mut cmd: Command,
        env: &[(&str, &str)],
        control_socket: PathBuf,
    ) -> Sonde {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BEYLA_TRACE_PRINTER", "json")
            // The periodic kernel counters are a debug line unless something was lost; tests
            // wait on them to know a report went out.
            .env("RUST_LOG", "info,sonde_loader::serve=debug")
            .env("SONDE_CONTROL_SOCKET", &control_socket)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(name, &mut cmd);
        let spans = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = proc.child.stdout.take().expect("stdout");
        let stderr = proc.child.stderr.take().expect("stderr");
        let s = spans.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => s.lock().expect("spans").push(v),
                    Err(_) => eprintln!("[stdout, not JSON] {line}"),
                }
            }
        });
        let l = log.clone();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = plain(&line);
                if std::env::var_os("SONDE_TEST_VERBOSE").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                l.lock().expect("log").push(line);
            }
        });
        Sonde {
            proc,
            spans,
            log,
            control_socket,
        }
    }

    /// Starts single-host `sonde`, waits until the processor is connected and `pids` are
    /// selected.
    pub fn start(args: &[&str], env: &[(&str, &str)], dir: &TempDir, pids: &[u32]) -> Sonde {
        let s = Sonde::start_binary("sonde", args, env, dir);
        // Start-up (kernel BTF parse, verification of every program) takes 2–3 s on a quiet
        // machine and was seen at 16 s under a load average of 10: the wait returns as soon
        // as the processor is connected, so a long bound costs a healthy run nothing.
        s.wait_log("processor connected", Duration::from_secs(90));
        for pid in pids {
            s.wait_selected(*pid);
        }
        s
    }

    /// Writes `yaml` to `config` and starts `sonde --config <config> --open-port <port>`,
    /// waiting until `server` is selected.
    pub fn start_with_config(
        config: &Path,
        yaml: &str,
        port: u16,
        dir: &TempDir,
        server: u32,
    ) -> Sonde {
        Sonde::start_with_config_env(config, yaml, port, dir, server, &[])
    }

    /// `start_with_config` with `env` added (it wins over the file, and over the harness's
    /// own `BEYLA_TRACE_PRINTER=json`).
    pub fn start_with_config_env(
        config: &Path,
        yaml: &str,
        port: u16,
        dir: &TempDir,
        server: u32,
        env: &[(&str, &str)],
    ) -> Sonde {
        std::fs::write(config, yaml).expect("writing the test configuration");
        let config_arg = config.to_str().expect("utf-8 path");
        Sonde::start(
            &["--config", config_arg, "--open-port", &port.to_string()],
            env,
            dir,
            &[server],
        )
    }

    pub fn wait_selected(&self, pid: u32) {
        self.wait_log(
            &format!("process selected pid={pid} "),
            Duration::from_secs(20),
        );
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Number of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_nth(needle, 1, timeout)
    }

    /// Waits for the n-th log line containing `needle`; returns it.
    pub fn wait_log_nth(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .filter(|l| l.contains(needle))
                .nth(n - 1)
            {
                return l.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line #{n} containing {needle:?} after {timeout:?}; log:\n{}",
                    self.log_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits until `pred` holds for at least `n` spans, then a settle period so late extras
    /// show up too; returns all matching spans.
    pub fn wait_spans(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.spans().iter().filter(|s| pred(s)).count();
            if count >= n || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(700));
        self.spans().into_iter().filter(|s| pred(s)).collect()
    }
}

/// The JSON of the processor's `final processor stats` log line (after it stopped).
pub fn final_processor_stats(sonde: &Sonde) -> Value {
    let line = sonde.wait_log("final processor stats", Duration::from_secs(10));
    let json = line
        .split_once("stats=")
        .map(|(_, j)| j.trim())
        .expect("stats field");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("stats not JSON ({e}): {json}"))
}

/// Value of `key=value` in a log line (value up to the next space; quotes stripped).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// One HTTP/1.1 exchange on an open connection.
pub struct HttpConn {
    stream: TcpStream,
    port: u16,
    /// Bytes of the last request written and of the last response read.
    pub last_request_bytes: usize,
    pub last_response_bytes: usize,
}

impl HttpConn {
    pub fn open(port: u16) -> HttpConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        HttpConn {
            stream,
            port,
            last_request_bytes: 0,
            last_response_bytes: 0,
        }
    }

    /// Sends a request and reads the whole response; returns the status.
    pub fn request(&mut self, method: &str, target: &str, body: Option<&[u8]>, close: bool) -> u16 {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: sonde-e2e\r\n",
            self.port
        );
        if let Some(b) = body {
            req += &format!("Content-Length: {}\r\n", b.len());
        }
        if close {
            req += "Connection: close\r\n";
        }
        req += "\r\n";
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.stream.write_all(&bytes).expect("send request");
        self.last_request_bytes = bytes.len();
        self.read_response()
    }

    /// Reads one whole response (Content-Length framed); returns its status.
    pub fn read_response(&mut self) -> u16 {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "connection closed inside the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        self.last_response_bytes = buf.len();
        status
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// One request of the standard traffic set.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: &'static str,
    pub path: &'static str,
    pub query: Option<&'static str>,
    pub body: Option<usize>,
    pub status: u16,
}

/// Sends the standard set: three requests over one keep-alive connection, then five over new
/// connections (GET/POST with bodies; 200, 201, 404, 500). Returns what was sent with the
/// statuses the server answered.
pub fn send_standard_traffic(port: u16) -> Vec<Sent> {
    let plan: [(&str, &str, Option<&str>, Option<usize>); 8] = [
        ("GET", "/ok/alpha", Some("x=1"), None),
        ("POST", "/submit", None, Some(37)),
        ("GET", "/missing/beta", None, None),
        ("GET", "/error/gamma", None, None),
        ("GET", "/ok/delta", None, None),
        ("POST", "/submit/big", Some("y=2"), Some(1500)),
        ("GET", "/missing", None, None),
        ("GET", "/ok/epsilon", None, None),
    ];
    let mut sent = Vec::new();
    let mut keepalive = HttpConn::open(port);
    for (i, (method, path, query, body)) in plan.iter().enumerate() {
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let body_bytes = body.map(|n| vec![b'b'; n]);
        let status = if i < 3 {
            keepalive.request(method, &target, body_bytes.as_deref(), false)
        } else {
            HttpConn::open(port).request(method, &target, body_bytes.as_deref(), true)
        };
        sent.push(Sent {
            method,
            path,
            query: *query,
            body: *body,
            status,
        });
    }
    drop(keepalive);
    sent
}

/// Asserts that `spans` holds exactly one server span per sent request, with the right
/// method, path, query, status, service name, body size and a positive duration.
pub fn assert_server_spans(spans: &[Value], sent: &[Sent], service: &str, port: u16) {
    let summary = |s: &Value| format!("{} {} {}", s["method"], s["path"], s["status"]);
    assert_eq!(
        spans.len(),
        sent.len(),
        "expected exactly {} server spans, got {}: {:?}",
        sent.len(),
        spans.len(),
        spans.iter().map(summary).collect::<Vec<_>>()
    );
    let mut unmatched: Vec<&Value> = spans.iter().collect();
    for r in sent {
        let pos = unmatched
            .iter()
            .position(|s| s["method"] == r.method && s["path"] == r.path && s["status"] == r.status)
            .unwrap_or_else(|| {
                panic!(
                    "no span for {} {} -> {}; spans: {:?}",
                    r.method,
                    r.path,
                    r.status,
                    spans.iter().map(summary).collect::<Vec<_>>()
                )
            });
        let s = unmatched.remove(pos);
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(s["service_name"], service, "{s}");
        assert_eq!(s["server_port"], port, "{s}");
        assert_eq!(s["server_address"], "127.0.0.1", "{s}");
        assert_eq!(s["client_address"], "127.0.0.1", "{s}");
        assert_eq!(s["query"].as_str(), r.query, "{s}");
        assert!(
            s["duration_ns"].as_u64().unwrap_or(0) > 0,
            "non-positive duration: {s}"
        );
        assert!(
            s["end_unix_nano"].as_u64() >= s["start_unix_nano"].as_u64(),
            "{s}"
        );
        assert_eq!(s["trace_id"].as_str().map(str::len), Some(32), "{s}");
        assert_eq!(s["span_id"].as_str().map(str::len), Some(16), "{s}");
        assert!(s.get("malformed").is_none(), "{s}");
        assert_eq!(s["no_response"], false, "{s}");
        if let Some(n) = r.body {
            assert_eq!(s["request_body_size"], n, "request body size: {s}");
        }
    }
}

/// The executable name of a process (what Sonde uses as its default service name).
pub fn exe_name(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    exe.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Parses a `/proc/<pid>/status` field.
pub fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
