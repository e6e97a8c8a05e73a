//! One trace across three services with context propagation on (issue 12 items 2 and 4
//! together), end to end with the real loader, processor and kernel programs: a selected Python
//! client (A) calls a selected front (B), whose serving thread calls a selected downstream (C).
//! The kernel injects A's client span ids into A's request, gives B's server span the caller's
//! trace id and its own span id, and injects that trace with B's client span into the request
//! B's serving thread sends; so A's client span, B's server and client spans and C's server
//! span are one trace, each the parent of the next, for every request under 16 at a time. A
//! request from A that carries its own `traceparent` (an SDK) keeps that trace through B to C.
//!
//! B as a Node.js event loop serves overlapping requests on one thread: the kernel marks the
//! thread ambiguous at the first overlap and from then on B's downstream requests start traces
//! of their own; a downstream request is never put in another request's trace.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{peers::*, *};

/// Requests per run, and how many are in flight at once.
const N: u32 = 64;
const PARALLEL: u32 = 16;

/// `linking_app.py client`: sends the requests it is told to, from its own process.
struct Caller {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Caller {
    fn start(port: u16) -> Caller {
        let mut cmd = Command::new(python());
        cmd.arg(peer("linking_app.py"))
            .args(["client", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("caller", &mut cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let c = Caller { proc, lines };
        c.expect("ready");
        c
    }

    fn expect(&self, want: &str) {
        let got = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the caller did not print {want:?} in time"));
        assert_eq!(got, want);
    }

    /// GETs /req/<id> for ids `first..=last`, `parallel` at a time; each answer is checked.
    fn send(&mut self, first: u32, last: u32, parallel: u32) {
        self.send_with(first, last, parallel, "");
    }

    /// As `send`, each request carrying `traceparent` (none when empty).
    fn send_with(&mut self, first: u32, last: u32, parallel: u32, traceparent: &str) {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{first} {last} {parallel} {traceparent}").expect("writing to the caller");
        stdin.flush().expect("flush");
        self.expect("done");
    }
}

fn python_server(args: &[&str], name: &str) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(peer("linking_app.py")).args(args);
    spawn_ready(name, &mut cmd)
}

fn start_sonde(dir: &TempDir, pids: &[u32]) -> Sonde {
    std::fs::write(
        dir.path("sonde.yaml"),
        "ebpf:\n  context_propagation: headers\nstats_interval_secs: 1\n",
    )
    .expect("config");
    let config = dir.path("sonde.yaml").display().to_string();
    let mut args = vec!["--config".to_string(), config];
    for p in pids {
        args.push("--pid".into());
        args.push(p.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sonde = Sonde::start(&args, &[], dir, pids);
    sonde.wait_log("context propagation on", Duration::from_secs(5));
    sonde
}

/// The loader's last report of the counter `name` (logged every second here).
fn loader_counter(sonde: &Sonde, name: &str) -> Option<u64> {
    let needle = format!("(\"{name}\", ");
    sonde.log_lines().iter().rev().find_map(|l| {
        let at = l.find(&needle)? + needle.len();
        l[at..].split(')').next()?.trim().parse().ok()
    })
}

/// Waits until the loader reports `name` at `want` or more; returns the last report.
fn wait_loader_counter(sonde: &Sonde, name: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = loader_counter(sonde, name).unwrap_or(0);
        if got >= want || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The request id at the end of a span's path (`/down/17` → 17).
fn id_of(span: &Value) -> Option<u32> {
    span["path"].as_str()?.rsplit('/').next()?.parse().ok()
}

/// The spans of `pid` of `kind` whose path starts with `prefix`, by request id; a request id
/// seen twice fails the test.
fn by_id<'a>(spans: &'a [Value], pid: u32, kind: &str, prefix: &str) -> HashMap<u32, &'a Value> {
    let mut out = HashMap::new();
    for s in spans.iter().filter(|s| {
        s["pid"] == pid
            && s["kind"] == kind
            && s["path"].as_str().is_some_and(|p| p.starts_with(prefix))
    }) {
        let id = id_of(s).expect("request id");
        assert!(
            out.insert(id, s).is_none(),
            "two {kind} spans for {prefix}{id}"
        );
    }
    out
}

/// The spans of one run of the chain, by request id.
struct Chain {
    a_client: HashMap<u32, Value>,
    b_server: HashMap<u32, Value>,
    b_client: HashMap<u32, Value>,
    c_server: HashMap<u32, Value>,
}

/// Waits for the 4N spans of N requests through A → B → C, and sorts them.
fn chain_spans(sonde: &Sonde, [a, b, c]: [u32; 3]) -> Chain {
    let ours = |s: &Value| {
        [a, b, c].iter().any(|p| s["pid"] == *p)
            && s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/req/") || p.starts_with("/down/"))
    };
    let spans = sonde.wait_spans(4 * N as usize, Duration::from_secs(60), ours);
    let owned = |m: HashMap<u32, &Value>| m.into_iter().map(|(k, v)| (k, v.clone())).collect();
    Chain {
        a_client: owned(by_id(&spans, a, "client", "/req/")),
        b_server: owned(by_id(&spans, b, "server", "/req/")),
        b_client: owned(by_id(&spans, b, "client", "/down/")),
        c_server: owned(by_id(&spans, c, "server", "/down/")),
    }
}

fn is_child(child: &Value, parent: &Value) -> bool {
    child["trace_id"] == parent["trace_id"] && child["parent_span_id"] == parent["span_id"]
}

#[test]
fn three_services_make_one_trace_per_request() {
    let _guard = serial();
    let dir = TempDir::new("connected-python");
    let c_port = free_port();
    let c = python_server(&["down", &c_port.to_string()], "service_c");
    let b_port = free_port();
    let b = python_server(
        &["relay", &b_port.to_string(), &c_port.to_string()],
        "service_b",
    );
    let mut a = Caller::start(b_port);
    let (a_pid, b_pid, c_pid) = (a.proc.pid(), b.pid(), c.pid());
    let sonde = start_sonde(&dir, &[a_pid, b_pid, c_pid]);

    a.send(1, N, PARALLEL);
    let Chain {
        a_client,
        b_server,
        b_client,
        c_server,
    } = chain_spans(&sonde, [a_pid, b_pid, c_pid]);
    for (name, set) in [
        ("A client", &a_client),
        ("B server", &b_server),
        ("B client", &b_client),
        ("C server", &c_server),
    ] {
        assert_eq!(set.len(), N as usize, "{name} spans");
    }
    for id in 1..=N {
        let (ac, bs, bc, cs) = (
            &a_client[&id],
            &b_server[&id],
            &b_client[&id],
            &c_server[&id],
        );
        assert!(
            ac.get("parent_span_id").is_none(),
            "A's span is the root: {ac}"
        );
        assert!(
            is_child(bs, ac),
            "request {id}: B server {bs} under A client {ac}"
        );
        assert!(
            is_child(bc, bs),
            "request {id}: B client {bc} under B server {bs}"
        );
        assert!(
            is_child(cs, bc),
            "request {id}: C server {cs} under B client {bc}"
        );
    }
    // A's N requests and B's N downstream requests got a header; B's all under its server
    // span; no thread of B was seen serving two requests at once.
    assert_eq!(
        wait_loader_counter(&sonde, "inject_headers_added", 2 * N as u64),
        2 * N as u64
    );
    assert_eq!(
        loader_counter(&sonde, "inject_headers_under_server_span"),
        Some(N as u64)
    );
    assert_eq!(
        loader_counter(&sonde, "inject_overlapping_server_requests"),
        Some(0)
    );
    assert_eq!(
        loader_counter(&sonde, "inject_headers_ambiguous_thread"),
        Some(0)
    );

    // A caller with a context of its own (an SDK in A): its trace id, whose last byte is even
    // (the kernel never draws one), goes through B to C unchanged, under A's span.
    let own_trace = "0af7651916cd43dd8448eb211c803190";
    let own_span = "b7ad6b7169203330";
    let id = N + 1;
    a.send_with(id, id, 1, &format!("00-{own_trace}-{own_span}-01"));
    let own = sonde.wait_spans(4, Duration::from_secs(30), |s| s["trace_id"] == own_trace);
    let one = |pid: u32, kind: &str, path: &str| -> Value {
        let found: Vec<&Value> = own
            .iter()
            .filter(|s| s["pid"] == pid && s["kind"] == kind && s["path"] == path)
            .collect();
        assert_eq!(found.len(), 1, "{kind} {path} of {pid} in {own:?}");
        found[0].clone()
    };
    let ac = one(a_pid, "client", &format!("/req/{id}"));
    let bs = one(b_pid, "server", &format!("/req/{id}"));
    let bc = one(b_pid, "client", &format!("/down/{id}"));
    let cs = one(c_pid, "server", &format!("/down/{id}"));
    assert_eq!(own.len(), 4, "{own:?}");
    // A's span and B's server span both name the span on the wire (the SDK's own client
    // span, which a real SDK exports itself) as their parent.
    assert_eq!(ac["parent_span_id"], own_span);
    assert_eq!(bs["parent_span_id"], own_span);
    assert!(is_child(&bc, &bs) && is_child(&cs, &bc), "{own:?}");
    // Only B's downstream request got a header: A's carried its own.
    assert_eq!(
        wait_loader_counter(&sonde, "inject_headers_added", 2 * N as u64 + 1),
        2 * N as u64 + 1
    );
    assert_eq!(
        wait_loader_counter(&sonde, "inject_headers_under_server_span", N as u64 + 1),
        N as u64 + 1
    );
}

#[test]
fn an_event_loop_never_puts_a_downstream_request_in_another_requests_trace() {
    let _guard = serial();
    let dir = TempDir::new("connected-node");
    let c_port = free_port();
    let c = python_server(&["down", &c_port.to_string()], "service_c");
    let b_port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(peer("linking_app.js"))
        .args([&b_port.to_string(), &c_port.to_string()]);
    let b = spawn_ready("service_b_node", &mut cmd);
    let mut a = Caller::start(b_port);
    let (a_pid, b_pid, c_pid) = (a.proc.pid(), b.pid(), c.pid());
    let sonde = start_sonde(&dir, &[a_pid, b_pid, c_pid]);

    // Five requests one at a time (the loop serves one request at a time: provably linked),
    // then N - 5 with 16 in flight.
    a.send(1, 5, 1);
    a.send(6, N, PARALLEL);
    let Chain {
        a_client,
        b_server,
        b_client,
        c_server,
    } = chain_spans(&sonde, [a_pid, b_pid, c_pid]);
    assert_eq!(b_server.len(), N as usize);
    assert_eq!(c_server.len(), N as usize);
    let mut linked = 0;
    for id in 1..=N {
        // A → B always holds: A's client spans are no server's children.
        assert!(is_child(&b_server[&id], &a_client[&id]), "request {id}");
        let (bc, cs) = (&b_client[&id], &c_server[&id]);
        assert!(
            is_child(cs, bc),
            "request {id}: C server {cs} under B client {bc}"
        );
        // B's downstream request is either in its own request's trace, under its server
        // span, or a trace of its own; never in another request's trace.
        if let Some(parent) = bc.get("parent_span_id") {
            assert!(
                is_child(bc, &b_server[&id]),
                "request {id}: {bc} has parent {parent}"
            );
            linked += 1;
        } else {
            for (other, s) in &b_server {
                assert_ne!(
                    bc["trace_id"], s["trace_id"],
                    "request {id} in {other}'s trace"
                );
            }
        }
    }
    eprintln!("Node.js downstream requests in their request's trace: {linked} of {N}");
    assert!(linked >= 5, "the five requests served alone: {linked}");
    assert_eq!(
        wait_loader_counter(&sonde, "inject_headers_under_server_span", linked as u64),
        linked as u64
    );
    assert!(wait_loader_counter(&sonde, "inject_overlapping_server_requests", 1) >= 1);
}
