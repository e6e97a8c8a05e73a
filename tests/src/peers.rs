//! Helpers for the peers in `tests/peers/` and the tools that drive them: starting a peer that
//! says `ready`, nginx from a template, bounded runs of a command, h2load's summary, a plain
//! HTTP/1.0 GET and `promtool check metrics`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{Proc, TempDir, repo_root, wait_for_port};

/// A file in `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    repo_root().join("tests/peers").join(name)
}

/// Reads one stdout line of `proc` (spawned with piped stdout) within `timeout`.
pub fn read_line(proc: &mut Proc, timeout: Duration) -> String {
    let stdout = proc.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("{} printed nothing within {timeout:?}", proc.name))
}

/// Spawns a peer that prints `ready` once listening, and waits for it.
pub fn spawn_ready(name: &str, cmd: &mut Command) -> Proc {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut p = Proc::spawn(name, cmd);
    let line = read_line(&mut p, Duration::from_secs(30));
    assert_eq!(line.trim(), "ready", "{name} did not start");
    p
}

/// Runs `cmd` to completion with its output collected; SIGKILL and panic after `timeout`.
pub fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{name}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{name} did not finish within {timeout:?}");
        }
    }
}

/// nginx (one worker) from the template `tests/peers/<template>` (placeholders `PREFIX` and
/// `PORT`) on `port`, in its own prefix under `dir`, with `files` (source, name) copied into
/// the prefix first (certificates).
pub fn start_nginx_template(
    template: &str,
    port: u16,
    dir: &TempDir,
    files: &[(&Path, &str)],
) -> Proc {
    let conf = std::fs::read_to_string(peer(template)).expect("nginx template");
    let prefix = dir.path(template.trim_end_matches(".conf"));
    std::fs::create_dir_all(&prefix).expect("nginx prefix");
    for (source, name) in files {
        std::fs::copy(source, prefix.join(name)).expect("copy into the nginx prefix");
    }
    let conf = conf
        .replace("PREFIX", prefix.to_str().expect("utf-8 path"))
        .replace("PORT", &port.to_string());
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let p = Proc::spawn(template, &mut cmd);
    wait_for_port(port, Duration::from_secs(30));
    p
}

/// What h2load reported.
#[derive(Debug)]
pub struct H2load {
    pub done: u64,
    pub errored: u64,
    pub timeout: u64,
    /// Responses per status class (2, 3, 4, 5).
    pub classes: BTreeMap<u16, u64>,
    /// The negotiated protocol (`h2`), when h2load printed one.
    pub protocol: Option<String>,
    pub output: String,
}

/// The number before `label` in one of h2load's comma-separated summary lines.
fn field(line: &str, label: &str) -> u64 {
    line.split(',')
        .map(str::trim)
        .find_map(|part| {
            let (n, rest) = part.split_once(' ')?;
            (rest == label).then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
}

/// Runs `h2load -n n -c c -m m` over `urls` (taken round-robin per client), bounded.
pub fn h2load(urls: &[String], n: u32, c: u32, m: u32) -> H2load {
    let out = run_bounded(
        "h2load",
        Command::new("h2load")
            .args(["-n", &n.to_string(), "-c", &c.to_string()])
            .args(["-m", &m.to_string(), "-N", "10s"])
            .args(urls),
        Duration::from_secs(60),
    );
    let output = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |prefix: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in h2load's output:\n{output}"))
            .to_string()
    };
    let requests = line("requests: ");
    let codes = line("status codes: ");
    H2load {
        done: field(&requests, "done"),
        errored: field(&requests, "errored"),
        timeout: field(&requests, "timeout"),
        classes: [2u16, 3, 4, 5]
            .into_iter()
            .map(|k| (k, field(&codes, &format!("{k}xx"))))
            .collect(),
        protocol: output
            .lines()
            .find_map(|l| l.strip_prefix("Application protocol: "))
            .map(|p| p.trim().to_string()),
        output,
    }
}

/// The body of `GET target` on 127.0.0.1:`port` over HTTP/1.0, so it comes whole, never
/// chunked.
pub fn http_get(port: u16, target: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Asserts that `promtool check metrics` accepts the exposition `text`.
pub fn promtool_check(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway MariaDB server (Debian `mariadb-server`) on 127.0.0.1:`port`, data and socket in
/// `dir`, `root` without a password over TCP, binary log off. The returned pid is `mariadbd`'s.
pub fn start_mariadb(port: u16, dir: &TempDir) -> Proc {
    let data = dir.path("mariadb-data");
    std::fs::create_dir_all(&data).expect("mariadb data dir");
    let out = run_bounded(
        "mariadb-install-db",
        Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.path("mariadb.sock").display()))
        .arg(format!("--port={port}"))
        .args([
            "--user=root",
            "--bind-address=127.0.0.1",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("mariadbd", &mut cmd);
    wait_for_port(port, Duration::from_secs(60));
    p
}

/// `memcached` (Debian) on 127.0.0.1:`port`, TCP only.
pub fn start_memcached(port: u16) -> Proc {
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-u",
        "root",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    let p = Proc::spawn("memcached", &mut cmd);
    wait_for_port(port, Duration::from_secs(20));
    p
}

/// The cached tansu Kafka-protocol broker (`scripts/setup.sh` builds it): `$SONDE_TANSU`, else
/// `$HOME/.local/share/sonde/tansu-0.6.0/bin/tansu`.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SONDE_TANSU") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/sonde/tansu-0.6.0/bin/tansu")
}

/// `tansu broker` on 127.0.0.1:`port`, advertising the same address, storing in memory.
pub fn start_tansu(port: u16) -> Proc {
    let binary = tansu_binary();
    assert!(
        binary.exists(),
        "{} is missing: scripts/setup.sh builds it (or set SONDE_TANSU)",
        binary.display()
    );
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(binary);
    cmd.args(["broker", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("tansu", &mut cmd);
    wait_for_port(port, Duration::from_secs(20));
    p
}

/// A peer that prints `ready`, then waits for a line on its standard input before it does
/// anything (connects, sends): a test selects it by pid first, so Sonde sees every connection
/// from its start.
pub struct GatedPeer {
    pub proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl GatedPeer {
    /// Spawns `cmd` (stdio is set here) and waits for its `ready`.
    pub fn start(name: &str, cmd: &mut Command) -> GatedPeer {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(name, cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let peer = GatedPeer { proc, lines };
        assert_eq!(peer.line(), "ready", "{name} did not start");
        peer
    }

    /// Its next line of output (60 s at most).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} printed nothing within 60 s", self.proc.name))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Lets it take one step (writes a line it waits for) and keeps its input open.
    pub fn step(&mut self) {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to the peer");
        stdin.flush().expect("writing to the peer");
    }

    /// Lets it run; returns everything it printed, once it has exited (bounded).
    pub fn go(mut self) -> Vec<String> {
        let mut stdin = self.proc.child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to the peer");
        drop(stdin);
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(60)) {
            out.push(l);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.proc.is_running() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit",
                self.proc.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    }
}

// ---- PostgreSQL ----------------------------------------------------------------------------

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL 15 cluster (trust auth) on 127.0.0.1:`port`, run as `postgres`
/// through `setpriv` (which execs: the returned pid is the postmaster's).
pub fn start_postgres(port: u16, dir: &TempDir) -> Proc {
    start_postgres_with(port, dir, &[])
}

/// [`start_postgres`] with more `-c name=value` settings.
pub fn start_postgres_with(port: u16, dir: &TempDir, settings: &[String]) -> Proc {
    let data = dir.path("pgdata");
    std::fs::create_dir_all(&data).expect("pgdata");
    let chown = |path: &std::path::Path| {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .output()
            .expect("chown");
        assert!(out.status.success());
    };
    chown(&data);
    // The TempDir itself must be traversable by postgres.
    let _ = Command::new("chmod").arg("755").arg(&dir.0).status();
    let out = run_bounded(
        "initdb",
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/initdb"))
            .args(["--auth=trust", "-U", "postgres", "-D"])
            .arg(&data),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ])
    .arg(format!("{PG_BIN}/postgres"))
    .arg("-D")
    .arg(&data)
    .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
    .args(["-c", "fsync=off", "-c"])
    .arg(format!("unix_socket_directories={}", data.display()))
    .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn("postgres", &mut cmd);
    wait_for_port(port, Duration::from_secs(30));
    p
}
