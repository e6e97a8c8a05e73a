//! HTTPS under real eBPF through the OpenSSL uprobes: Python `http.server` (libssl.so.3 through
//! `_ssl`), Node.js `https` (OpenSSL linked into `node`) and nginx (libssl.so.3) behind TLS 1.3
//! give exactly one server span per request (GET/POST, 200/201/404/500, keep-alive and new
//! connections), marked `scheme` "https", and nothing else; a selected Python client gives
//! exactly one client span per request; eight interleaved keep-alive connections on one Node
//! process keep each request on its own connection (the SSL object ↔ socket link is per
//! connection); a TLS server started after Sonde, and one loading a copy of libssl.so.3 from
//! another path, are captured; non-HTTP TLS streams give no span and break nothing; HTTP/2
//! over TLS (ALPN h2) from Node and nginx gives exact spans with protocol version 2; with
//! `ebpf.tls` off, HTTPS gives no span.
//!
//! The peers: `tests/peers/https_server.py`, `https_server.js`, `nginx_ssl.conf` and the
//! client `https_client.py` (run by the harness's Python, whose `_ssl` links libssl.so.3). The
//! certificate: a throwaway CA and a server certificate for 127.0.0.1/localhost made with the
//! `openssl` command in each test's `TempDir` (`make_certs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{peers::*, *};

/// TODO(lead): confirm. The loader's log line once the TLS uprobes are attached for a selected
/// process (followed by ` pid=<pid> `). Tests wait for it before sending traffic, since a
/// process can be selected before its TLS probes are in place. `None`: selection implies the
/// probes are attached (the tests then only wait for "process selected").
const TLS_ATTACHED_LOG: Option<&str> = Some("TLS probes attached");

/// The system's libssl (Debian bookworm, x86_64), as mapped by Python's `_ssl` and nginx.
const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

// ---- Certificates ------------------------------------------------------------------------------

/// A test CA and a server certificate (EC P-256) for 127.0.0.1 and localhost, signed by it.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a throwaway CA and a server certificate with the `openssl` command, in `dir`.
fn make_certs(dir: &TempDir) -> Certs {
    let path = |name: &str| dir.path(name).to_str().expect("utf-8 path").to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.crt"),
        path("server.key"),
        path("server.csr"),
        path("server.crt"),
        path("server-ext.cnf"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("writing the certificate extensions");
    let openssl = |args: &[&str]| {
        let out = run_bounded(
            "openssl",
            Command::new("openssl").args(args),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subj_ca = ["-subj", "/CN=sonde-e2e test CA", "-days", "2"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &subj_ca,
            &["-keyout", &ca_key, "-out", &ca],
        ]
        .concat(),
    );
    let subj = ["-subj", "/CN=localhost"];
    openssl(&[&["req"][..], &ec, &subj, &["-keyout", &key, "-out", &csr]].concat());
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    Certs {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
}

// ---- Processes ---------------------------------------------------------------------------------

/// `https_server.py PORT CERT KEY` (the harness's Python) with extra `env`, and a raw TLS echo
/// listener on `echo_port` in the same process if asked for.
fn start_python_https(
    port: u16,
    certs: &Certs,
    env: &[(&str, &str)],
    echo_port: Option<u16>,
) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(peer("https_server.py"))
        .arg(port.to_string())
        .arg(&certs.cert)
        .arg(&certs.key)
        .envs(env.iter().copied());
    if let Some(e) = echo_port {
        cmd.args(["--echo-port", &e.to_string()]);
    }
    spawn_ready("python-https", &mut cmd)
}

/// `node https_server.js PORT CERT KEY` (`--h2`: HTTP/2 over TLS).
fn start_node_https(port: u16, certs: &Certs, h2: bool) -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(peer("https_server.js"))
        .arg(port.to_string())
        .arg(&certs.cert)
        .arg(&certs.key);
    if h2 {
        cmd.arg("--h2");
    }
    spawn_ready(if h2 { "node-h2-tls" } else { "node-https" }, &mut cmd)
}

/// The pid of nginx's (only) worker, a child of `master`.
fn nginx_worker(master: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "nginx {master} has no worker");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The libssl files `pid` maps.
fn mapped_libssl(pid: u32) -> BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("libssl"))
        .map(str::to_string)
        .collect()
}

/// Starts `sonde` with `args`, waits until `pids` are selected and their TLS probes attached.
fn start_sonde(args: &[&str], dir: &TempDir, pids: &[u32]) -> Sonde {
    let sonde = Sonde::start(args, &[], dir, pids);
    for pid in pids {
        wait_tls_attached(&sonde, *pid);
    }
    sonde
}

fn wait_tls_attached(sonde: &Sonde, pid: u32) {
    if let Some(needle) = TLS_ATTACHED_LOG {
        sonde.wait_log(&format!("{needle} pid={pid} "), Duration::from_secs(20));
    }
}

// ---- The HTTPS client ------------------------------------------------------------------------

/// What `https_client.py` printed.
#[derive(Debug, Default)]
struct ClientRun {
    statuses: Vec<u16>,
    /// The client's local port for each request, in the order of `statuses`.
    ports: Vec<u16>,
    /// Per concurrent connection ("/c3"): its local port and statuses.
    conns: BTreeMap<String, (u16, Vec<u16>)>,
    echo_ok: bool,
    raw_received: u64,
    raw: Value,
}

fn parse_client(line: &str) -> ClientRun {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("client output ({e}): {line:?}"));
    assert!(v.get("errors").is_none(), "client errors: {v}");
    let nums = |x: &Value| -> Vec<u16> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_u64())
                    .map(|n| n as u16)
                    .collect()
            })
            .unwrap_or_default()
    };
    let conns = v["conns"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        (c["port"].as_u64().unwrap_or(0) as u16, nums(&c["statuses"])),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ClientRun {
        statuses: nums(&v["statuses"]),
        ports: nums(&v["ports"]),
        conns,
        echo_ok: v["echo_ok"] == true,
        raw_received: v["raw_received"].as_u64().unwrap_or(0),
        raw: v,
    }
}

fn client_cmd(port: u16, certs: &Certs, args: &[String]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(peer("https_client.py"))
        .arg(port.to_string())
        .arg(&certs.ca)
        .args(args);
    cmd
}

/// Runs the client to completion (bounded) and returns what it printed.
fn run_client(port: u16, certs: &Certs, args: &[String]) -> ClientRun {
    let out = run_bounded(
        "https-client",
        &mut client_cmd(port, certs, args),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "https client failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_client(stdout.lines().last().unwrap_or(""))
}

/// Starts the client with `--wait` (it reads a line before connecting), for selecting its pid.
fn start_waiting_client(port: u16, certs: &Certs, args: &[String]) -> Proc {
    let mut cmd = client_cmd(port, certs, args);
    cmd.arg("--wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Proc::spawn("https-client", &mut cmd)
}

/// Lets a waiting client go and returns what it printed once done (bounded).
fn release_client(client: &mut Proc) -> ClientRun {
    client
        .child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("start the client");
    let line = read_line(client, Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    parse_client(&line)
}

// ---- The standard plan -------------------------------------------------------------------------

/// One request of the plan: method, path, request body bytes, expected status.
type Req = (&'static str, &'static str, usize, u16);

/// Six requests on one keep-alive connection.
const KEEPALIVE: [Req; 6] = [
    ("GET", "/ok", 0, 200),
    ("POST", "/echo", 100, 201),
    ("GET", "/missing", 0, 404),
    ("GET", "/fail", 0, 500),
    ("POST", "/echo", 2000, 201),
    ("GET", "/ok/keepalive", 0, 200),
];

/// Four requests, each on a new connection.
const NEW: [Req; 4] = [
    ("GET", "/ok", 0, 200),
    ("POST", "/echo", 37, 201),
    ("GET", "/missing", 0, 404),
    ("GET", "/fail", 0, 500),
];

fn plan() -> Vec<Req> {
    KEEPALIVE.iter().chain(NEW.iter()).copied().collect()
}

fn spec(reqs: &[Req]) -> String {
    reqs.iter()
        .map(|(m, p, n, _)| {
            if *m == "POST" {
                format!("{m}:{p}:{n}")
            } else {
                format!("{m}:{p}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn plan_args() -> Vec<String> {
    vec![
        "--keepalive".into(),
        spec(&KEEPALIVE),
        "--new".into(),
        spec(&NEW),
    ]
}

/// Checks a client run of the standard plan: the statuses, the keep-alive part's first
/// requests on one connection (nginx closes a keep-alive connection after an error status
/// such as the 500, and the client then reconnects: each request's port is the one it really
/// went out on), a distinct connection for each other request, every echo right.
fn check_plan_run(run: &ClientRun) {
    let want: Vec<u16> = plan().iter().map(|r| r.3).collect();
    assert_eq!(run.statuses, want, "statuses the client got: {}", run.raw);
    assert!(run.echo_ok, "an echo came back wrong: {}", run.raw);
    let n = KEEPALIVE.len();
    assert_eq!(run.ports.len(), plan().len(), "{}", run.raw);
    assert!(
        run.ports[..4].iter().all(|p| *p == run.ports[0]),
        "{}",
        run.raw
    );
    // The new connections are others (the keep-alive ones, closed by the client first, sit
    // in TIME_WAIT on the client's side: their ports are not reused so soon).
    let new: std::collections::BTreeSet<u16> = run.ports[n..].iter().copied().collect();
    assert_eq!(new.len(), NEW.len(), "{}", run.raw);
    assert!(
        new.iter().all(|p| !run.ports[..n].contains(p)),
        "{}",
        run.raw
    );
}

fn brief(s: &Value) -> String {
    format!(
        "{} {} {} {} {} v{} {}:{} pid={} {:?} body={} req_bytes={}",
        s["kind"],
        s["method"],
        s["path"],
        s["status"],
        s["scheme"],
        s["protocol_version"],
        s["client_port"],
        s["server_port"],
        s["pid"],
        s.get("malformed"),
        s["request_body_size"],
        s["request_bytes"]
    )
}

/// Asserts `spans` are exactly the plan's requests as seen by `kind` ("server" or "client"):
/// one span per request, matched on method, path, status, the connection's client port and
/// the request body size, each HTTPS over HTTP/1.1 to 127.0.0.1:`port`.
fn assert_plan_spans(spans: &[Value], run: &ClientRun, kind: &str, port: u16, service: &str) {
    let listed: Vec<String> = spans.iter().map(brief).collect();
    assert_eq!(
        spans.len(),
        plan().len(),
        "expected exactly {} {kind} spans: {listed:#?}",
        plan().len()
    );
    let mut unmatched: Vec<&Value> = spans.iter().collect();
    for ((method, path, body, status), client_port) in plan().iter().zip(&run.ports) {
        let pos = unmatched
            .iter()
            .position(|s| {
                s["method"] == *method
                    && s["path"] == *path
                    && s["status"] == *status
                    && s["client_port"] == *client_port
                    && (*body == 0 || s["request_body_size"] == *body)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} span for {method} {path} -> {status} from port {client_port} \
                     ({body} body bytes); spans: {listed:#?}"
                )
            });
        let s = unmatched.remove(pos);
        assert_https_span(s, kind, port, "1.1");
        assert_eq!(s["service_name"], service, "{s}");
    }
}

/// The fields every HTTPS span must have.
fn assert_https_span(s: &Value, kind: &str, port: u16, version: &str) {
    assert_eq!(s["kind"], kind, "{s}");
    assert_eq!(s["scheme"], "https", "{s}");
    assert_eq!(s["protocol_version"], version, "{s}");
    assert_eq!(s["server_port"], port, "{s}");
    assert_eq!(s["server_address"], "127.0.0.1", "{s}");
    assert_eq!(s["client_address"], "127.0.0.1", "{s}");
    assert!(s.get("malformed").is_none(), "{s}");
    assert_eq!(s["no_response"], false, "{s}");
    assert!(s["duration_ns"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(
        s["end_unix_nano"].as_u64() >= s["start_unix_nano"].as_u64(),
        "{s}"
    );
    assert_eq!(s["trace_id"].as_str().map(str::len), Some(32), "{s}");
    assert_eq!(s["span_id"].as_str().map(str::len), Some(16), "{s}");
}

/// Waits for the plan's server spans on `port` and checks them; nothing else may have become a
/// span anywhere.
fn expect_plan_server_spans(sonde: &Sonde, run: &ClientRun, port: u16, service: &str) {
    let n = plan().len();
    let spans = sonde.wait_spans(n, Duration::from_secs(20), |s| s["server_port"] == port);
    assert_plan_spans(&spans, run, "server", port, service);
    let all: Vec<String> = sonde.spans().iter().map(brief).collect();
    assert_eq!(all.len(), n, "no other span: {all:#?}");
}

// ---- HTTP/1.1 over TLS servers -----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Tls {
    Python,
    Node,
    Nginx,
}

fn check_https_server(kind: Tls) {
    let _guard = serial();
    let dir = TempDir::new(&format!("https-{kind:?}"));
    let certs = make_certs(&dir);
    let port = free_port();
    let server = match kind {
        Tls::Python => start_python_https(port, &certs, &[], None),
        Tls::Node => start_node_https(port, &certs, false),
        Tls::Nginx => start_nginx_template(
            "nginx_ssl.conf",
            port,
            &dir,
            &[(&certs.cert, "server.crt"), (&certs.key, "server.key")],
        ),
    };
    // nginx answers from its worker (TLS included), a child of the master we started.
    let tls_pid = match kind {
        Tls::Nginx => nginx_worker(server.pid()),
        _ => server.pid(),
    };
    match kind {
        Tls::Python | Tls::Nginx => assert!(
            mapped_libssl(tls_pid).contains(SYSTEM_LIBSSL),
            "{kind:?} does not map {SYSTEM_LIBSSL}: {:?}",
            mapped_libssl(tls_pid)
        ),
        // OpenSSL is inside the node binary.
        Tls::Node => assert!(mapped_libssl(tls_pid).is_empty()),
    }
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    wait_tls_attached(&sonde, tls_pid);

    // The client is not selected: only the server's spans.
    let run = run_client(port, &certs, &plan_args());
    check_plan_run(&run);
    let service = exe_name(server.pid());
    expect_plan_server_spans(&sonde, &run, port, &service);
    let spans = sonde.spans();
    assert!(
        spans.iter().all(|s| s["pid"] == tls_pid),
        "spans from another process than {tls_pid}: {:#?}",
        spans.iter().map(brief).collect::<Vec<_>>()
    );
}

#[test]
fn python_https_server_spans() {
    check_https_server(Tls::Python);
}

#[test]
fn node_https_server_spans() {
    check_https_server(Tls::Node);
}

#[test]
fn nginx_https_server_spans() {
    check_https_server(Tls::Nginx);
}

// ---- Clients -----------------------------------------------------------------------------------

/// A Python HTTPS client selected by pid, against a Node server that is not selected: exactly
/// one client span per request.
#[test]
fn python_https_client_spans() {
    let _guard = serial();
    let dir = TempDir::new("https-client");
    let certs = make_certs(&dir);
    let port = free_port();
    let _server = start_node_https(port, &certs, false);
    let mut client = start_waiting_client(port, &certs, &plan_args());
    let pid = client.pid();
    // Read now: the client exits once released.
    let client_exe = exe_name(pid);
    let sonde = start_sonde(&["--pid", &pid.to_string()], &dir, &[pid]);

    let run = release_client(&mut client);
    check_plan_run(&run);
    let n = plan().len();
    let spans = sonde.wait_spans(n, Duration::from_secs(20), |s| s["pid"] == pid);
    assert_plan_spans(&spans, &run, "client", port, &client_exe);
    let all: Vec<String> = sonde.spans().iter().map(brief).collect();
    assert_eq!(all.len(), n, "no other span: {all:#?}");
}

/// Both ends selected and both in the same libssl.so.3 file (Python server by port, Python
/// client by pid): each request gives one server span from the server and one client span
/// from the client, never two of either.
#[test]
fn both_ends_on_one_libssl_give_one_span_each() {
    let _guard = serial();
    let dir = TempDir::new("https-both");
    let certs = make_certs(&dir);
    let port = free_port();
    let server = start_python_https(port, &certs, &[], None);
    let mut client = start_waiting_client(port, &certs, &plan_args());
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let client_exe = exe_name(client_pid);
    let sonde = start_sonde(
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &dir,
        &[server_pid, client_pid],
    );

    let run = release_client(&mut client);
    check_plan_run(&run);
    let n = plan().len();
    let server_spans = sonde.wait_spans(n, Duration::from_secs(20), |s| s["pid"] == server_pid);
    assert_plan_spans(&server_spans, &run, "server", port, &exe_name(server_pid));
    let client_spans = sonde.wait_spans(n, Duration::from_secs(20), |s| s["pid"] == client_pid);
    assert_plan_spans(&client_spans, &run, "client", port, &client_exe);
    let all: Vec<String> = sonde.spans().iter().map(brief).collect();
    assert_eq!(all.len(), 2 * n, "no other span: {all:#?}");
}

// ---- Concurrent keep-alive connections -----------------------------------------------------------

const CONNS: usize = 8;
const PER_CONN: usize = 10;

/// Checks the concurrent run's `spans` of one side: every /c<k>/r<i> exactly once, status 200,
/// and all spans of /c<k> carry connection k's client port (the eight ports distinct).
fn assert_concurrent_spans(spans: &[Value], run: &ClientRun, kind: &str, port: u16) {
    let listed: Vec<String> = spans.iter().map(brief).collect();
    assert_eq!(spans.len(), CONNS * PER_CONN, "{kind} spans: {listed:#?}");
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for s in spans {
        assert_https_span(s, kind, port, "1.1");
        assert_eq!(s["method"], "GET", "{s}");
        assert_eq!(s["status"], 200, "{s}");
        let path = s["path"].as_str().unwrap_or("").to_string();
        let conn = path
            .rsplit_once('/')
            .map(|(c, _)| c.to_string())
            .unwrap_or_default();
        let (want_port, _) = run
            .conns
            .get(&conn)
            .unwrap_or_else(|| panic!("a span for no connection of the client: {s}"));
        assert_eq!(
            s["client_port"], *want_port,
            "{path} reported on another connection than its own: {s}"
        );
        *seen.entry(path).or_default() += 1;
    }
    let want: BTreeMap<String, u64> = (0..CONNS)
        .flat_map(|k| (0..PER_CONN).map(move |i| (format!("/c{k}/r{i}"), 1)))
        .collect();
    assert_eq!(seen, want, "each path exactly once");
}

/// Eight keep-alive connections to one Node process, ten requests each, in lock step (every
/// round has a request in flight on each connection): 80 server spans and 80 client spans,
/// each on its own connection.
#[test]
fn concurrent_keepalive_connections_keep_their_own_socket() {
    let _guard = serial();
    let dir = TempDir::new("https-concurrent");
    let certs = make_certs(&dir);
    let port = free_port();
    let server = start_node_https(port, &certs, false);
    let args: Vec<String> = vec![
        "--conns".into(),
        CONNS.to_string(),
        "--requests".into(),
        PER_CONN.to_string(),
    ];
    let mut client = start_waiting_client(port, &certs, &args);
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let sonde = start_sonde(
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &dir,
        &[server_pid, client_pid],
    );

    let run = release_client(&mut client);
    assert_eq!(run.conns.len(), CONNS, "{}", run.raw);
    for (conn, (_, statuses)) in &run.conns {
        assert_eq!(statuses, &vec![200; PER_CONN], "{conn}: {}", run.raw);
    }
    let ports: BTreeSet<u16> = run.conns.values().map(|(p, _)| *p).collect();
    assert_eq!(ports.len(), CONNS, "distinct client ports: {}", run.raw);

    let n = CONNS * PER_CONN;
    let server_spans = sonde.wait_spans(n, Duration::from_secs(30), |s| s["pid"] == server_pid);
    assert_concurrent_spans(&server_spans, &run, "server", port);
    let client_spans = sonde.wait_spans(n, Duration::from_secs(30), |s| s["pid"] == client_pid);
    assert_concurrent_spans(&client_spans, &run, "client", port);
    assert_eq!(sonde.spans().len(), 2 * n, "no other span");
}

// ---- Servers started later, and a libssl elsewhere -----------------------------------------------

/// Sonde first, then a Python HTTPS server on the selected port: it is selected when it
/// listens, its libssl gets probes, and its requests become exact spans.
#[test]
fn https_server_started_after_sonde_is_captured() {
    let _guard = serial();
    let dir = TempDir::new("https-later");
    let certs = make_certs(&dir);
    let port = free_port();
    let sonde = Sonde::start(&["--open-port", &port.to_string()], &[], &dir, &[]);
    let server = start_python_https(port, &certs, &[], None);
    sonde.wait_selected(server.pid());
    wait_tls_attached(&sonde, server.pid());

    let run = run_client(port, &certs, &plan_args());
    check_plan_run(&run);
    expect_plan_server_spans(&sonde, &run, port, &exe_name(server.pid()));
}

/// A Python HTTPS server whose `_ssl` loads a copy of libssl.so.3 from the test's directory
/// (`LD_LIBRARY_PATH`; it comes before `_ssl`'s RUNPATH): the probes go on the copy the
/// process maps, and its requests become exact spans.
#[test]
fn libssl_copy_at_another_path_is_captured() {
    let _guard = serial();
    let dir = TempDir::new("https-libcopy");
    let certs = make_certs(&dir);
    let libdir = dir.path("lib");
    std::fs::create_dir_all(&libdir).expect("lib dir");
    let _ = std::fs::set_permissions(&libdir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let copy = libdir.join("libssl.so.3");
    std::fs::copy(SYSTEM_LIBSSL, &copy).expect("copy libssl.so.3");
    let port = free_port();
    let libdir_str = libdir.to_str().expect("utf-8 path");
    let server = start_python_https(port, &certs, &[("LD_LIBRARY_PATH", libdir_str)], None);
    let maps = mapped_libssl(server.pid());
    assert_eq!(
        maps,
        BTreeSet::from([copy.to_str().expect("utf-8 path").to_string()]),
        "the server must map the copy only"
    );

    let sonde = start_sonde(&["--open-port", &port.to_string()], &dir, &[server.pid()]);
    let run = run_client(port, &certs, &plan_args());
    check_plan_run(&run);
    expect_plan_server_spans(&sonde, &run, port, &exe_name(server.pid()));
    assert_eq!(
        mapped_libssl(server.pid()),
        maps,
        "the server still maps the copy"
    );
}

/// `ebpf.tls: false` (`SONDE_TLS=false`): no uprobes, and the ciphertext the socket probes see
/// is not HTTP, so the HTTPS server's requests give no span at all.
#[test]
fn tls_capture_off_gives_no_https_spans() {
    let _guard = serial();
    let dir = TempDir::new("https-off");
    let certs = make_certs(&dir);
    let port = free_port();
    let server = start_python_https(port, &certs, &[], None);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[("SONDE_TLS", "false")],
        &dir,
        &[server.pid()],
    );
    let run = run_client(port, &certs, &plan_args());
    check_plan_run(&run);
    let spans = sonde.wait_spans(1, Duration::from_secs(3), |_| true);
    let listed: Vec<String> = spans.iter().map(brief).collect();
    assert!(spans.is_empty(), "spans with TLS capture off: {listed:#?}");
    if let Some(needle) = TLS_ATTACHED_LOG {
        assert_eq!(sonde.log_count(needle), 0, "{:#?}", sonde.log_lines());
    }
}

// ---- Non-HTTP TLS ------------------------------------------------------------------------------

/// Random bytes over TLS, to a raw TLS echo listener of the selected Python process (echoed
/// back) and to its HTTPS port (Python answers 400 and closes), give no span; Sonde and the
/// server keep running, and the HTTPS requests afterwards are exact spans.
#[test]
fn non_http_tls_gives_no_span_and_breaks_nothing() {
    let _guard = serial();
    let dir = TempDir::new("https-garbage");
    let certs = make_certs(&dir);
    let (port, echo_port) = (free_port(), free_port());
    let mut server = start_python_https(port, &certs, &[], Some(echo_port));
    let mut sonde = Sonde::start_with_config(
        &dir.path("sonde.yaml"),
        "stats_interval_secs: 1\n",
        port,
        &dir,
        server.pid(),
    );
    wait_tls_attached(&sonde, server.pid());

    for size in [4096, 100_000] {
        let raw = ["--raw-tls".to_string(), size.to_string()];
        let echoed = run_client(echo_port, &certs, &raw);
        assert_eq!(echoed.raw_received, size, "echo: {}", echoed.raw);
    }
    let raw = ["--raw-tls".to_string(), "4096".to_string()];
    run_client(port, &certs, &raw);

    assert!(server.is_running(), "the server died");
    assert!(sonde.proc.is_running(), "sonde died");

    let run = run_client(port, &certs, &plan_args());
    check_plan_run(&run);
    let n = plan().len();
    let spans = sonde.wait_spans(n, Duration::from_secs(20), |s| s["server_port"] == port);
    assert_plan_spans(&spans, &run, "server", port, &exe_name(server.pid()));
    let all: Vec<String> = sonde.spans().iter().map(brief).collect();
    assert_eq!(all.len(), n, "nothing but the plan became a span: {all:#?}");

    sonde.wait_log_nth("kernel counters", 2, Duration::from_secs(10));
    assert_eq!(
        sonde.log_count("processor started"),
        1,
        "the processor must not have restarted"
    );
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["spans"], n, "{stats}");
    assert_eq!(stats["decode_errors"], 0, "{stats}");
    assert_eq!(stats["kernel"]["events_lost_ringbuf_full"], 0, "{stats}");
}

// ---- HTTP/2 over TLS ---------------------------------------------------------------------------

/// The routes the HTTP/2 runs request, with their statuses.
const H2_ROUTES: [(&str, u16); 3] = [("/ok", 200), ("/missing", 404), ("/fail", 500)];

/// Runs `h2load -n n -c 3 -m 10` over https://127.0.0.1:`port` (ALPN h2) on the three routes
/// and returns how many requests went to each path (each has its own status class).
fn h2load_tls(port: u16, n: u32) -> BTreeMap<&'static str, u64> {
    let urls: Vec<String> = H2_ROUTES
        .iter()
        .map(|(path, _)| format!("https://127.0.0.1:{port}{path}"))
        .collect();
    let run = h2load(&urls, n, 3, 10);
    let output = &run.output;
    assert_eq!(run.protocol.as_deref(), Some("h2"), "{output}");
    assert_eq!(run.done, u64::from(n), "{output}");
    assert_eq!((run.errored, run.timeout), (0, 0), "{output}");
    assert_eq!(run.classes[&3], 0, "{output}");
    let per_path: BTreeMap<&str, u64> = H2_ROUTES
        .iter()
        .map(|(path, status)| (*path, run.classes[&(status / 100)]))
        .collect();
    assert_eq!(per_path.values().sum::<u64>(), u64::from(n), "{output}");
    per_path
}

fn check_h2_over_tls(nginx: bool) {
    let _guard = serial();
    let dir = TempDir::new(if nginx { "h2tls-nginx" } else { "h2tls-node" });
    let certs = make_certs(&dir);
    let port = free_port();
    let server = if nginx {
        start_nginx_template(
            "nginx_ssl.conf",
            port,
            &dir,
            &[(&certs.cert, "server.crt"), (&certs.key, "server.key")],
        )
    } else {
        start_node_https(port, &certs, true)
    };
    let tls_pid = if nginx {
        nginx_worker(server.pid())
    } else {
        server.pid()
    };
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    wait_tls_attached(&sonde, tls_pid);

    let expected = h2load_tls(port, 300);
    let total = expected.values().sum::<u64>() as usize;
    let spans = sonde.wait_spans(total, Duration::from_secs(30), |s| s["server_port"] == port);
    let listed: Vec<String> = spans.iter().map(brief).collect();
    let mut got: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &spans {
        let (path, status) = H2_ROUTES
            .iter()
            .find(|(p, _)| s["path"] == *p)
            .unwrap_or_else(|| panic!("a span for no route: {s}"));
        assert_eq!(s["status"], *status, "path/status pairing: {s}");
        assert_eq!(s["method"], "GET", "{s}");
        assert_eq!(s["pid"], tls_pid, "{s}");
        assert!(
            s["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("h2load")),
            "{s}"
        );
        assert_https_span(s, "server", port, "2");
        *got.entry(path).or_default() += 1;
    }
    assert_eq!(got, expected, "spans per path");
    assert_eq!(spans.len(), total, "{listed:#?}");
    assert_eq!(sonde.spans().len(), total, "no other span");
}

#[test]
fn node_h2_over_tls_exact_spans() {
    check_h2_over_tls(false);
}

#[test]
fn nginx_h2_over_tls_exact_spans() {
    check_h2_over_tls(true);
}

/// A process whose TLS library Sonde cannot see into (Java's JSSE) is named once in the log,
/// and its plain HTTP still becomes spans.
#[test]
fn a_tls_library_sonde_cannot_see_into_is_named_once() {
    let _guard = serial();
    let dir = TempDir::new("https-opaque");
    let port = free_port();
    let server = start_server(ServerKind::Java, port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    let line = sonde.wait_log("TLS library not instrumentable", Duration::from_secs(20));
    assert!(line.contains("Java") || line.contains("JSSE"), "{line}");
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/java", None, true),
        200
    );
    sonde.wait_spans(1, Duration::from_secs(10), |s| s["path"] == "/ok/java");
    // Once per kind of library, not once per process scan.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sonde.log_count("TLS library not instrumentable"), 1);
}

/// curl as an HTTPS client (its `libssl.so.3`, keep-alive across the URLs of one run): curl
/// reads its configuration from standard input before it starts, so it is selected by pid
/// (and its probes attached) before the URLs arrive; exactly one client span per URL.
#[test]
fn curl_https_client_spans() {
    let _guard = serial();
    let dir = TempDir::new("https-curl");
    let certs = make_certs(&dir);
    let port = free_port();
    let _server = start_node_https(port, &certs, false);
    let mut cmd = Command::new("curl");
    cmd.args(["-K", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut curl = Proc::spawn("curl", &mut cmd);
    let pid = curl.pid();
    // curl maps libssl at start-up, before it reads its configuration.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !mapped_libssl(pid).iter().any(|p| p.contains("libssl")) {
        assert!(
            std::time::Instant::now() < deadline,
            "curl mapped no libssl"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sonde = start_sonde(&["--pid", &pid.to_string()], &dir, &[pid]);
    let paths = ["/ok/curl1", "/missing", "/fail", "/ok/curl2"];
    let mut config = format!("silent\ncacert = \"{}\"\n", certs.ca.display());
    for path in paths {
        config += &format!("url = \"https://127.0.0.1:{port}{path}\"\noutput = \"/dev/null\"\n");
    }
    {
        let mut stdin = curl.child.stdin.take().expect("curl stdin");
        stdin
            .write_all(config.as_bytes())
            .expect("write curl config");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = curl.child.try_wait() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "curl did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "curl failed: {status:?}");
    let spans = sonde.wait_spans(paths.len(), Duration::from_secs(20), |s| s["pid"] == pid);
    let got: Vec<(String, u64)> = spans
        .iter()
        .map(|s| {
            assert_https_span(s, "client", port, "1.1");
            (
                s["path"].as_str().unwrap_or_default().to_string(),
                s["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/ok/curl1".to_string(), 200),
            ("/missing".to_string(), 404),
            ("/fail".to_string(), 500),
            ("/ok/curl2".to_string(), 200)
        ]
    );
    // One connection, reused.
    assert!(
        spans
            .iter()
            .all(|s| s["client_port"] == spans[0]["client_port"])
    );
    assert_eq!(sonde.spans().len(), paths.len());
}
