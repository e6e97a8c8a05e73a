//! Context propagation (issue 12 item 4), end to end with the real loader, processor and
//! kernel programs: with `ebpf.context_propagation: headers`, a selected Python client's
//! cleartext HTTP/1 requests reach an echo server (tests/peers/echo_request.py, which answers
//! with the exact bytes it received) with exactly one added `traceparent` line whose ids are
//! the client span's, and are otherwise byte-identical; requests that already carry one, a
//! non-HTTP payload, and every request of a process that is not selected come back
//! byte-identical; the server span (the echo server is selected too) is the child of the
//! client span; the socket map holds the selected client's connections and no one else's; a
//! load run (keep-alive, bodies, pipelining) sees no corrupted response and no connection
//! error, with the feature on and off.
//!
//! HTTPS: the kernel sees only ciphertext on the socket, and a TLS connection's first message
//! (the ClientHello) is not a request line, so the `sk_msg` program gives the connection up and
//! leaves it alone. The selected client's HTTPS requests (keep-alive and a new connection, to
//! the echo server's TLS mode) come back byte-identical, the loader counts each TLS connection
//! given up and no header added, and the client spans Sonde still makes through its OpenSSL
//! uprobes carry ids found nowhere in what the server received; the same client's cleartext
//! requests right after are injected into, so the feature was on for it.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{kube::make_certs, peers::*, *};

/// The echo server (prints `ready`).
fn start_echo_server() -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(peer("echo_request.py")).arg(port.to_string());
    (spawn_ready("echo_server", &mut cmd), port)
}

/// The echo server's TLS mode, with `cert` and `key` (prints `ready`).
fn start_tls_echo_server(cert: &std::path::Path, key: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(peer("echo_request.py"))
        .arg(port.to_string())
        .arg("--tls")
        .arg(cert)
        .arg(key);
    (spawn_ready("tls_echo_server", &mut cmd), port)
}

/// A running `echo_client.py`, driven one command at a time.
struct Client {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(name: &str) -> Client {
        let mut cmd = Command::new(python());
        cmd.arg(peer("echo_client.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(name, &mut cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let c = Client { proc, lines };
        assert_eq!(c.next(Duration::from_secs(20)), "ready");
        c
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn next(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("{} printed nothing within {timeout:?}", self.proc.name))
    }

    /// Runs one command; returns its JSON lines.
    fn run(&mut self, command: &str, timeout: Duration) -> Vec<Value> {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("writing to the client");
        stdin.flush().expect("writing to the client");
        let mut out = Vec::new();
        loop {
            let line = self.next(timeout);
            if line == "done" {
                return out;
            }
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
}

fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `echo` is `sent` with exactly one `traceparent: 00-<trace>-<span>-01\r\n` line added just
/// before the blank line that ends the header block; returns (trace, span) as hex.
fn injected_ids(sent: &[u8], echo: &[u8]) -> (String, String) {
    let (trace, span, flags) = injected(sent, echo);
    assert_eq!(flags, "01", "the default sampler keeps every trace");
    (trace, span)
}

/// `echo` is `sent` with exactly one `traceparent: 00-<trace>-<span>-<flags>\r\n` line added
/// just before the blank line that ends the header block; returns (trace, span, flags) as hex.
fn injected(sent: &[u8], echo: &[u8]) -> (String, String, String) {
    let hend = sent
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block")
        + 2;
    const LINE: usize = 13 + 55 + 2;
    assert_eq!(
        echo.len(),
        sent.len() + LINE,
        "not one added line: {:?}",
        String::from_utf8_lossy(echo)
    );
    assert_eq!(
        &echo[..hend],
        &sent[..hend],
        "bytes before the header changed"
    );
    assert_eq!(
        &echo[hend + LINE..],
        &sent[hend..],
        "bytes after the header changed"
    );
    let line = std::str::from_utf8(&echo[hend..hend + LINE]).expect("ascii line");
    let value = line
        .strip_prefix("traceparent: 00-")
        .and_then(|v| v.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not a traceparent line: {line:?}"));
    let (value, flags) = value.rsplit_once('-').expect("ids-flags");
    assert!(
        flags == "01" || flags == "00",
        "flags {flags:?} in {line:?}"
    );
    let (trace, span) = value.split_once('-').expect("trace-span");
    assert_eq!(trace.len(), 32);
    assert_eq!(span.len(), 16);
    assert!(
        trace
            .bytes()
            .chain(span.bytes())
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    (trace.to_string(), span.to_string(), flags.to_string())
}

/// The loader's last report of `name` (its counters are logged every `stats_interval_secs`).
fn last_counter(sonde: &Sonde, name: &str) -> Option<u64> {
    let needle = format!("(\"{name}\", ");
    sonde.log_lines().iter().rev().find_map(|l| {
        let at = l.find(&needle)? + needle.len();
        l[at..].split(')').next()?.trim().parse().ok()
    })
}

/// Waits until the loader reports `name` = `want` (the counters go out every second here).
fn wait_counter(sonde: &Sonde, name: &str, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = last_counter(sonde, name);
        if got == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: want {want}, last reported {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_sonde(dir: &TempDir, pids: &[u32], propagation: &str) -> Sonde {
    start_sonde_with(dir, pids, propagation, &[])
}

fn start_sonde_with(dir: &TempDir, pids: &[u32], propagation: &str, env: &[(&str, &str)]) -> Sonde {
    let mut args = vec![
        "--config".to_string(),
        dir.path("sonde.yaml").display().to_string(),
    ];
    std::fs::write(
        dir.path("sonde.yaml"),
        format!("ebpf:\n  context_propagation: {propagation}\nstats_interval_secs: 1\n"),
    )
    .expect("config");
    for p in pids {
        args.push("--pid".into());
        args.push(p.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sonde::start(&args, env, dir, pids)
}

/// The injected flags carry the processor's decision: with `traceidratio` 0.5, a client span
/// is printed (sampled) exactly when the `traceparent` sent with its request says `01`.
#[test]
fn injected_flags_carry_the_processors_sampling_decision() {
    let _guard = serial();
    let dir = TempDir::new("inject-sampling");
    let (server, port) = start_echo_server();
    let mut client = Client::start("sampled_client");
    let sonde = start_sonde_with(
        &dir,
        &[client.pid(), server.pid()],
        "headers",
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    sonde.wait_log("context propagation on", Duration::from_secs(5));
    let long = Duration::from_secs(30);
    // 25 rounds of the client's request set: 100 requests without a traceparent of their own.
    let mut flags_by_trace = std::collections::BTreeMap::new();
    for _ in 0..25 {
        for (i, c) in client
            .run(&format!("requests {port}"), long)
            .iter()
            .enumerate()
        {
            if i != 2 {
                let (trace, _, flags) = injected(&hex(&c["sent"]), &hex(&c["echo"]));
                flags_by_trace.insert(trace, flags);
            }
        }
    }
    assert_eq!(flags_by_trace.len(), 100);
    let sampled: std::collections::BTreeSet<String> = flags_by_trace
        .iter()
        .filter(|(_, f)| *f == "01")
        .map(|(t, _)| t.clone())
        .collect();
    // 100 draws at one half: fewer than 20 or more than 80 would be 6 standard deviations off.
    assert!(
        (20..=80).contains(&sampled.len()),
        "{} of 100 marked sampled",
        sampled.len()
    );
    // Every sampled client span is printed, and no other: wait for them, then for stragglers.
    let is_injected_client = |s: &Value| {
        s["kind"] == "client"
            && s["pid"] == client.pid()
            && s["trace_id"]
                .as_str()
                .is_some_and(|t| flags_by_trace.contains_key(t))
    };
    sonde.wait_spans(sampled.len(), long, is_injected_client);
    std::thread::sleep(Duration::from_secs(1));
    let printed: std::collections::BTreeSet<String> = sonde
        .spans()
        .iter()
        .filter(|s| is_injected_client(s))
        .filter_map(|s| s["trace_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(printed, sampled);
}

#[test]
fn selected_requests_get_the_client_spans_ids_and_nothing_else_changes() {
    let _guard = serial();
    let dir = TempDir::new("inject-ids");
    let (server, port) = start_echo_server();
    let mut selected = Client::start("selected_client");
    let mut other = Client::start("other_client");
    let sonde = start_sonde(&dir, &[selected.pid(), server.pid()], "headers");
    sonde.wait_log("context propagation on", Duration::from_secs(5));
    let long = Duration::from_secs(30);

    // The selected client: four requests without traceparent get one, the fifth keeps its own.
    let cases = selected.run(&format!("requests {port}"), long);
    assert_eq!(cases.len(), 5);
    let mut ids = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let (sent, echo) = (hex(&c["sent"]), hex(&c["echo"]));
        if i == 2 {
            assert_eq!(echo, sent, "a request with its own traceparent changed");
        } else {
            ids.push(injected_ids(&sent, &echo));
        }
    }
    // Case 3's body (sent in its own write) looks like a request and came back untouched: the
    // comparison above covers every byte after the header.
    let raw = selected.run(&format!("raw {port}"), long);
    assert_eq!(
        hex(&raw[0]["echo"]),
        hex(&raw[0]["sent"]),
        "non-HTTP payload changed"
    );

    // A process that is not selected: byte-identical, always.
    for c in other.run(&format!("requests {port}"), long) {
        assert_eq!(
            hex(&c["echo"]),
            hex(&c["sent"]),
            "a non-selected request changed"
        );
    }
    let raw = other.run(&format!("raw {port}"), long);
    assert_eq!(hex(&raw[0]["echo"]), hex(&raw[0]["sent"]));

    // The client spans carry the injected ids; the server spans are their children.
    let paths = [
        "/inject/get",
        "/inject/post",
        "/inject/body-looks-like-request",
        "/inject/after-body",
    ];
    let spans = sonde.wait_spans(10, long, |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/inject/"))
    });
    let of = |kind: &str, pid: u32, path: &str| -> Vec<Value> {
        spans
            .iter()
            .filter(|s| s["kind"] == kind && s["pid"] == pid && s["path"] == path)
            .cloned()
            .collect()
    };
    for (path, (trace, span)) in paths.iter().zip(&ids) {
        let clients = of("client", selected.pid(), path);
        assert_eq!(clients.len(), 1, "client spans for {path}: {clients:?}");
        assert_eq!(clients[0]["trace_id"], trace.as_str(), "{path}");
        assert_eq!(clients[0]["span_id"], span.as_str(), "{path}");
        assert!(clients[0].get("parent_span_id").is_none(), "{path}");
        // Two server spans: the selected client's (a child) and the other client's (a root).
        let servers = of("server", server.pid(), path);
        assert_eq!(servers.len(), 2, "server spans for {path}: {servers:?}");
        let children: Vec<_> = servers
            .iter()
            .filter(|s| s["parent_span_id"] == span.as_str())
            .collect();
        assert_eq!(children.len(), 1, "{path}: {servers:?}");
        assert_eq!(children[0]["trace_id"], trace.as_str());
    }
    // The request that carried its own traceparent: both spans in the application's trace.
    let own = "0af7651916cd43dd8448eb211c80319c";
    let clients = of("client", selected.pid(), "/inject/has-traceparent");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["trace_id"], own);
    assert_eq!(clients[0]["parent_span_id"], "b7ad6b7169203331");

    // Nagle's algorithm stays on for many clients (nginx's upstream connections): an added
    // header must not split a request into segments Nagle holds until a delayed ACK (40 ms
    // each); 100 requests take well under a second.
    let nagle = selected.run(&format!("nagle {port} 100"), long);
    let seconds = nagle[0]["seconds"].as_f64().expect("seconds");
    assert!(seconds < 1.0, "100 requests took {seconds} s");

    wait_counter(&sonde, "inject_headers_added", 104);
    wait_counter(&sonde, "inject_skipped_had_traceparent", 1);

    // The socket map holds the selected client's open connections only: 7 held by it while
    // 5 are held by the other client (and the server's accepted ends) at the same time.
    let held = selected.run(&format!("hold {port} 7"), long);
    assert_eq!(held[0]["held"], 7);
    let held = other.run(&format!("hold {port} 5"), long);
    assert_eq!(held[0]["held"], 5);
    // The loader counts the map's keys (socket cookies): the selected client's 7, none of the
    // other client's 5 or the server's 12 accepted ends.
    wait_counter(&sonde, "inject_sockets_open", 7);
    selected.run("hold 0 0", long);
    other.run("hold 0 0", long);
    wait_counter(&sonde, "inject_sockets_open", 0);
}

#[test]
fn load_run_corrupts_nothing_with_injection_on_and_off() {
    let _guard = serial();
    for propagation in ["headers", "disabled"] {
        let dir = TempDir::new("inject-load");
        let (_server, port) = start_echo_server();
        let mut selected = Client::start("selected_client");
        let mut other = Client::start("other_client");
        let sonde = start_sonde(&dir, &[selected.pid()], propagation);
        let long = Duration::from_secs(120);
        // The non-selected client loads the same server at the same time.
        let other_port = port;
        let other_run = std::thread::spawn(move || {
            let r = other.run(&format!("load {other_port} 20000 4 1"), long);
            (other, r)
        });
        // Keep-alive, one request per write: every request is injected into.
        let keepalive = selected.run(&format!("load {port} 80000 8 1"), long);
        // Pipelined, four requests per write: a connection is left alone after its first.
        let pipelined = selected.run(&format!("load {port} 24000 4 4"), long);
        let (_other, other_result) = other_run.join().expect("other client");
        let k = &keepalive[0];
        let p = &pipelined[0];
        let o = &other_result[0];
        for (name, r, n) in [
            ("keep-alive", k, 80000),
            ("pipelined", p, 24000),
            ("other", o, 20000),
        ] {
            assert_eq!(r["corrupt"], 0, "{propagation} {name}: {r}");
            assert_eq!(r["errors"], 0, "{propagation} {name}: {r}");
            assert_eq!(r["ok"], n, "{propagation} {name}: {r}");
        }
        assert_eq!(o["injected"], 0, "the other client's requests were touched");
        if propagation == "headers" {
            assert_eq!(k["injected"], 80000, "{k}");
            // The first request of each pipelined connection; the rest pass untouched.
            assert_eq!(p["injected"], 4, "{p}");
            wait_counter(&sonde, "inject_headers_added", 80004);
        } else {
            assert_eq!(k["injected"], 0);
            assert_eq!(p["injected"], 0);
            assert!(sonde.log_count("context propagation on") == 0);
            assert_eq!(last_counter(&sonde, "inject_headers_added"), None);
        }
    }
}

/// HTTPS from a selected client with injection on: every request (a GET, a POST with a body, a
/// POST whose body is its own write, one carrying its own traceparent, one more on the same
/// keep-alive connection, a GET on a new connection) reaches the TLS echo server
/// byte-identical; the loader counts both TLS connections given up at their first message and
/// no header added; the client spans (through the OpenSSL uprobes) are exactly one per request
/// with ids the server never received. The same client's cleartext requests afterwards get
/// their header: injection was on for it all along.
#[test]
fn https_requests_pass_byte_identical_with_injection_on() {
    let _guard = serial();
    let dir = TempDir::new("inject-https");
    let certs = make_certs(&dir.0);
    let (_tls_server, tls_port) = start_tls_echo_server(&certs.cert, &certs.key);
    let (_server, port) = start_echo_server();
    let mut client = Client::start("https_client");
    let pid = client.pid();
    let sonde = start_sonde(&dir, &[pid], "headers");
    sonde.wait_log("context propagation on", Duration::from_secs(5));
    sonde.wait_log(
        &format!("TLS probes attached pid={pid} "),
        Duration::from_secs(20),
    );
    let long = Duration::from_secs(30);

    // 1. What the server decrypted is exactly what the client's TLS library was given.
    let tls = client.run(&format!("tls {tls_port} {}", certs.ca.display()), long);
    let paths: Vec<&str> = tls.iter().filter_map(|c| c["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/tls/get",
            "/tls/post",
            "/tls/body-looks-like-request",
            "/tls/has-traceparent",
            "/tls/after-body",
            "/tls/fresh",
        ]
    );
    for c in &tls {
        assert_eq!(hex(&c["echo"]), hex(&c["sent"]), "{} changed", c["path"]);
    }
    let ports: Vec<u64> = tls.iter().filter_map(|c| c["port"].as_u64()).collect();
    assert_eq!(ports.len(), 6);
    assert!(ports[..5].iter().all(|p| *p == ports[0]), "{ports:?}");
    assert_ne!(
        ports[5], ports[0],
        "the last request must use a new connection"
    );

    // 2. The kernel side: two sockets of the selected client entered the map, each was given
    // up at its ClientHello (not a request line), and nothing else was counted.
    wait_counter(&sonde, "inject_connections_given_up", 2);
    for (name, want) in [
        ("inject_sockets_added", 2),
        ("inject_sockhash_full", 0),
        ("inject_headers_added", 0),
        ("inject_skipped_had_traceparent", 0),
        ("inject_skipped_not_whole_header", 0),
        ("inject_failed", 0),
    ] {
        assert_eq!(last_counter(&sonde, name), Some(want), "{name}");
    }

    // 3. One client span per HTTPS request, through the TLS uprobes; none carries ids that
    // reached the server (nothing was injected): only the request with its own traceparent
    // continues that trace.
    let own = "0af7651916cd43dd8448eb211c80319c";
    let received: String = tls
        .iter()
        .map(|c| String::from_utf8_lossy(&hex(&c["echo"])).into_owned())
        .collect();
    assert_eq!(received.matches("traceparent:").count(), 1, "{received}");
    let is_tls_client = |s: &Value| {
        s["kind"] == "client"
            && s["pid"] == pid
            && s["path"].as_str().is_some_and(|p| p.starts_with("/tls/"))
    };
    let spans = sonde.wait_spans(tls.len(), long, is_tls_client);
    assert_eq!(spans.len(), tls.len(), "client spans: {spans:#?}");
    for c in &tls {
        let path = c["path"].as_str().expect("path");
        let of: Vec<&Value> = spans.iter().filter(|s| s["path"] == path).collect();
        assert_eq!(of.len(), 1, "client spans for {path}: {of:#?}");
        let s = of[0];
        assert_eq!(s["method"], c["method"], "{s}");
        assert_eq!(s["scheme"], "https", "{s}");
        assert_eq!(s["status"], 200, "{s}");
        assert_eq!(s["server_port"], tls_port, "{s}");
        assert_eq!(s["client_port"], c["port"], "{s}");
        let trace = s["trace_id"].as_str().expect("trace id");
        let span = s["span_id"].as_str().expect("span id");
        assert!(
            !received.contains(span),
            "span id {span} reached the server"
        );
        if path == "/tls/has-traceparent" {
            assert_eq!(trace, own, "{s}");
            assert_eq!(s["parent_span_id"], "b7ad6b7169203331", "{s}");
        } else {
            assert!(
                !received.contains(trace),
                "trace id {trace} reached the server"
            );
            assert!(s.get("parent_span_id").is_none(), "{s}");
        }
    }

    // The same process in cleartext: four requests get the header, the fifth keeps its own.
    let cases = client.run(&format!("requests {port}"), long);
    assert_eq!(cases.len(), 5);
    for (i, c) in cases.iter().enumerate() {
        let (sent, echo) = (hex(&c["sent"]), hex(&c["echo"]));
        if i == 2 {
            assert_eq!(echo, sent, "a request with its own traceparent changed");
        } else {
            injected_ids(&sent, &echo);
        }
    }
    wait_counter(&sonde, "inject_headers_added", 4);
    wait_counter(&sonde, "inject_skipped_had_traceparent", 1);
    assert_eq!(last_counter(&sonde, "inject_sockets_added"), Some(3));
    assert_eq!(last_counter(&sonde, "inject_connections_given_up"), Some(2));
    // Every connection closed: the map is empty again.
    wait_counter(&sonde, "inject_sockets_open", 0);
    // Nothing else of this client became a span: the six HTTPS and five cleartext requests.
    let cleartext = sonde.wait_spans(5, long, |s| {
        s["kind"] == "client"
            && s["pid"] == pid
            && s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/inject/"))
    });
    assert_eq!(cleartext.len(), 5, "{cleartext:#?}");
    let all = sonde.spans().iter().filter(|s| s["pid"] == pid).count();
    assert_eq!(all, 11, "spans of the client: {:#?}", sonde.spans());
}
