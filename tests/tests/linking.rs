//! Parent and child inside one process (issue 12 item 2), end to end with real servers: the
//! client spans (downstream HTTP, PostgreSQL) a thread makes while serving a request are
//! children of that request's server span, exactly, under 16 parallel requests; clients that
//! send from their own threads (`java.net.http.HttpClient`) and event loops (Node.js) are
//! never linked to the wrong request; a linked trace is sampled whole. Every request's id
//! travels in its path and in what the app forwards (the downstream path, the SQL literal),
//! so each span is matched to the request that made it without trusting Sonde.

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{otlp::otlp_python, peers::*, *};

/// Requests per run (after the warm-up).
const N: u32 = 200;
/// Requests in flight at once.
const PARALLEL: u32 = 16;

/// The downstream HTTP server (not selected).
fn start_downstream() -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(peer("linking_app.py"))
        .args(["down", &port.to_string()]);
    (spawn_ready("linking_down", &mut cmd), port)
}

/// GET `target(id)` for every id in `ids`, `PARALLEL` at a time; each answer must be
/// `done <id>`.
fn load(port: u16, ids: std::ops::RangeInclusive<u32>, target: fn(u32) -> String) {
    let next = Arc::new(AtomicU32::new(*ids.start()));
    let last = *ids.end();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id > last {
                        break;
                    }
                    let body = http_get(port, &target(id));
                    assert_eq!(body, format!("done {id}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("load thread");
    }
}

/// The request id at the end of `path` (`/req/17` → 17).
fn id_of(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.parse().ok()
}

/// The server spans of `pid` by request id; exactly one per id.
fn servers_by_id(spans: &[Value], pid: u32) -> HashMap<u32, &Value> {
    let mut out = HashMap::new();
    for s in spans
        .iter()
        .filter(|s| s["kind"] == "server" && s["pid"] == pid)
    {
        let Some(id) = s["path"].as_str().and_then(id_of) else {
            continue;
        };
        assert!(out.insert(id, s).is_none(), "two server spans for {id}");
    }
    out
}

/// True when `child` is the child of `server` (same trace, parent = its span).
fn is_child(child: &Value, server: &Value) -> bool {
    child["trace_id"] == server["trace_id"] && child["parent_span_id"] == server["span_id"]
}

/// Asserts no client span of `pid` has a parent other than the server span of its own
/// request; returns (linked, unlinked) among client spans whose path starts with `prefix`,
/// the warm-up's (id 0: made before the process was known to serve) left out.
fn no_wrong_link(
    spans: &[Value],
    servers: &HashMap<u32, &Value>,
    pid: u32,
    prefix: &str,
) -> (usize, usize) {
    let (mut linked, mut unlinked) = (0, 0);
    for c in spans.iter().filter(|s| {
        s["kind"] == "client"
            && s["pid"] == pid
            && s["path"].as_str().is_some_and(|p| p.starts_with(prefix))
    }) {
        let id = c["path"].as_str().and_then(id_of).expect("id in the path");
        if id == 0 {
            continue;
        }
        if c.get("parent_span_id").is_none() {
            unlinked += 1;
            continue;
        }
        let own = servers
            .get(&id)
            .unwrap_or_else(|| panic!("no server span {id}"));
        assert!(
            is_child(c, own),
            "wrongly linked:\n{c:#}\nits request:\n{own:#}"
        );
        linked += 1;
    }
    (linked, unlinked)
}

/// The client spans of `pid` under `prefix` whose request id has other than exactly one,
/// printed whole: what a count mismatch needs to be understood.
fn not_once(spans: &[Value], pid: u32, prefix: &str) -> String {
    let mut by_id: HashMap<u32, Vec<&Value>> = HashMap::new();
    for c in spans.iter().filter(|s| {
        s["kind"] == "client"
            && s["pid"] == pid
            && s["path"].as_str().is_some_and(|p| p.starts_with(prefix))
    }) {
        let id = c["path"].as_str().and_then(id_of).unwrap_or(u32::MAX);
        by_id.entry(id).or_default().push(c);
    }
    let expected: Vec<u32> = (1..=N).filter(|id| id % 2 == 0).collect();
    let mut ids: Vec<u32> = by_id
        .keys()
        .copied()
        .chain(expected.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = String::new();
    for id in ids.into_iter().filter(|&id| id != 0) {
        let found = by_id.get(&id).map_or(&[][..], Vec::as_slice);
        let wanted = usize::from(expected.contains(&id));
        if found.len() != wanted {
            out.push_str(&format!("id {id}: {} spans {found:#?}\n", found.len()));
        }
    }
    out
}

/// Waits for the warm-up request's server span: from then on the process is known to serve.
fn warm_up(sonde: &Sonde, pid: u32, port: u16, target: &str) {
    let body = http_get(port, target);
    assert!(body.starts_with("done"), "{body}");
    sonde.wait_spans(1, Duration::from_secs(20), |s| {
        s["kind"] == "server" && s["pid"] == pid && s["path"] == target
    });
}

/// The linker's counters from the final processor stats (after stopping `sonde`).
fn final_linking(sonde: &mut Sonde) -> Value {
    sonde.proc.stop(Duration::from_secs(10));
    let stats = final_processor_stats(sonde);
    eprintln!("linking stats: {}", stats["linking"]);
    stats["linking"].clone()
}

/// The Python front, its downstream and PostgreSQL, with `sonde` selecting the front.
struct PythonApp {
    _pg: Proc,
    _down: Proc,
    _app: Proc,
    sonde: Sonde,
    pid: u32,
    port: u16,
}

fn python_app(dir: &TempDir, env: &[(&str, &str)]) -> PythonApp {
    let pg_port = free_port();
    let pg = start_postgres(pg_port, dir);
    let (down, down_port) = start_downstream();
    let port = free_port();
    let mut cmd = Command::new(otlp_python());
    cmd.arg(peer("linking_app.py")).args([
        "app",
        &port.to_string(),
        &down_port.to_string(),
        &pg_port.to_string(),
    ]);
    let app = spawn_ready("linking_app", &mut cmd);
    let pid = app.pid();
    // The SQL literal carries the request id.
    let mut all_env = vec![("SONDE_DB_QUERY_SANITIZE", "false")];
    all_env.extend_from_slice(env);
    let sonde = Sonde::start(&["--pid", &pid.to_string()], &all_env, dir, &[pid]);
    PythonApp {
        _pg: pg,
        _down: down,
        _app: app,
        sonde,
        pid,
        port,
    }
}

/// A Python ThreadingHTTPServer calling a downstream HTTP server (urllib) and PostgreSQL
/// (psycopg2) on the thread serving each request: every one of the 2N client spans is the
/// child of the server span of its own request.
#[test]
fn python_threading_server_children_are_exact() {
    let _guard = serial();
    let dir = TempDir::new("linking-python");
    let py = python_app(&dir, &[]);
    let (pid, port, mut sonde) = (py.pid, py.port, py.sonde);
    warm_up(&sonde, pid, port, "/req/0");
    load(port, 1..=N, |id| format!("/req/{id}"));
    let is_ours = |s: &Value| {
        s["pid"] == pid
            && (s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/req/") || p.starts_with("/down/"))
                || s["db_query_text"]
                    .as_str()
                    .is_some_and(|q| q.starts_with("SELECT ")))
    };
    // Warm-up's three spans and three per request.
    let spans = sonde.wait_spans(3 * (N as usize + 1), Duration::from_secs(60), is_ours);
    let servers = servers_by_id(&spans, pid);
    let mut linked = 0;
    for id in 1..=N {
        let server = servers
            .get(&id)
            .unwrap_or_else(|| panic!("no server span {id}"));
        let down: Vec<_> = spans
            .iter()
            .filter(|s| s["kind"] == "client" && s["path"] == format!("/down/{id}"))
            .collect();
        let sql: Vec<_> = spans
            .iter()
            .filter(|s| s["db_query_text"] == format!("SELECT {id} AS req"))
            .collect();
        assert_eq!((down.len(), sql.len()), (1, 1), "request {id}");
        for c in [down[0], sql[0]] {
            assert!(
                is_child(c, server),
                "not the child of {id}:\n{c:#}\n{server:#}"
            );
            linked += 1;
        }
    }
    assert_eq!(linked, 2 * N as usize);
    let stats = final_linking(&mut sonde);
    assert!(
        stats["linked"].as_u64() >= Some(2 * u64::from(N)),
        "{stats}"
    );
    assert_eq!(stats["unlinked_multiplexed"], 0, "{stats}");
}

/// Threads the serving thread starts: a request handler that makes its downstream and SQL
/// calls on a thread it starts and joins has both calls linked to it, N of N each; calls made
/// on a shared pool (threads started by an earlier request, alive after it) are never
/// linked to a wrong request.
#[test]
fn python_threads_started_for_a_request_are_its_children() {
    let _guard = serial();
    let dir = TempDir::new("linking-python-threads");
    let py = python_app(&dir, &[]);
    let (pid, port, mut sonde) = (py.pid, py.port, py.sonde);
    warm_up(&sonde, pid, port, "/spawn/0");
    const M: u32 = 100;
    load(port, 1..=M, |id| format!("/spawn/{id}"));
    load(port, M + 1..=2 * M, |id| format!("/pool/{id}"));
    let is_ours = |s: &Value| {
        s["pid"] == pid
            && (s["path"].as_str().is_some_and(|p| {
                ["/spawn/", "/pool/", "/down/", "/pooled/"]
                    .iter()
                    .any(|x| p.starts_with(x))
            }) || s["db_query_text"]
                .as_str()
                .is_some_and(|q| q.starts_with("SELECT ")))
    };
    // Warm-up: server, down, SQL; /spawn: three each; /pool: two each.
    let want = 3 + 3 * M as usize + 2 * M as usize;
    let spans = sonde.wait_spans(want, Duration::from_secs(60), is_ours);
    let servers = servers_by_id(&spans, pid);
    let mut not_children = Vec::new();
    for id in 1..=M {
        let server = servers
            .get(&id)
            .unwrap_or_else(|| panic!("no server span {id}"));
        let down: Vec<_> = spans
            .iter()
            .filter(|s| s["kind"] == "client" && s["path"] == format!("/down/{id}"))
            .collect();
        let sql: Vec<_> = spans
            .iter()
            .filter(|s| s["db_query_text"] == format!("SELECT {id} AS req"))
            .collect();
        assert_eq!((down.len(), sql.len()), (1, 1), "request {id}");
        for c in [down[0], sql[0]] {
            if !is_child(c, server) {
                // A wrong parent is never tolerated; a missing one is reported below.
                assert!(c.get("parent_span_id").is_none(), "wrongly linked:\n{c:#}");
                not_children.push(format!(
                    "{id}: client {}..{} tid {}, server {}..{} tid {}",
                    c["start_unix_nano"],
                    c["end_unix_nano"],
                    c["tid"],
                    server["start_unix_nano"],
                    server["end_unix_nano"],
                    server["tid"]
                ));
            }
        }
    }
    let (pooled_linked, pooled_unlinked) = no_wrong_link(&spans, &servers, pid, "/pooled/");
    let stats = final_linking(&mut sonde);
    assert!(not_children.is_empty(), "{stats}\n{not_children:#?}");
    assert_eq!(
        (pooled_linked, pooled_unlinked),
        (0, M as usize),
        "pool threads outlive their requests"
    );
    assert_eq!(stats["linked_started_threads"], 2 * u64::from(M), "{stats}");
    assert_eq!(stats["threads_not_tracked"], 0, "{stats}");
}

/// A Java com.sun.net.httpserver front on a fixed pool of 8 threads: HttpURLConnection calls
/// (made on the serving thread) are the children of their request, N/2 of N/2; HttpClient
/// calls (sent from the client's own threads) are never linked to another request.
#[test]
fn java_thread_pool_links_same_thread_calls_and_never_misplaces_http_client() {
    let _guard = serial();
    let dir = TempDir::new("linking-java");
    let out = run_bounded(
        "javac",
        Command::new("javac")
            .arg("-d")
            .arg(&dir.0)
            .arg(peer("LinkingApp.java")),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_down, down_port) = start_downstream();
    let port = free_port();
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(&dir.0)
        .args(["LinkingApp", &port.to_string(), &down_port.to_string()]);
    let app = spawn_ready("linking_java", &mut cmd);
    let pid = app.pid();
    let mut sonde = Sonde::start(&["--pid", &pid.to_string()], &[], &dir, &[pid]);
    warm_up(&sonde, pid, port, "/url/0");
    // Odd ids through HttpURLConnection, even ones through HttpClient.
    load(port, 1..=N, |id| {
        if id % 2 == 1 {
            format!("/url/{id}")
        } else {
            format!("/hc/{id}")
        }
    });
    let is_ours = |s: &Value| {
        s["pid"] == pid
            && s["path"].as_str().is_some_and(|p| {
                p.starts_with("/url/") || p.starts_with("/down/") || p.starts_with("/hc/")
            })
    };
    // Unlinked HttpClient spans wait for the full window (5 s) before they go out.
    let spans = sonde.wait_spans(2 * (N as usize + 1), Duration::from_secs(60), is_ours);
    let servers = servers_by_id(&spans, pid);
    assert_eq!(servers.len(), N as usize + 1);
    for id in (1..=N).filter(|id| id % 2 == 1) {
        let down: Vec<_> = spans
            .iter()
            .filter(|s| s["kind"] == "client" && s["path"] == format!("/down/{id}"))
            .collect();
        assert_eq!(down.len(), 1, "request {id}");
        assert!(is_child(down[0], servers[&id]), "{:#}", down[0]);
    }
    let (url_linked, url_unlinked) = no_wrong_link(&spans, &servers, pid, "/down/");
    assert_eq!((url_linked, url_unlinked), (N as usize / 2, 0));
    let (hc_linked, hc_unlinked) = no_wrong_link(&spans, &servers, pid, "/hc/");
    eprintln!("HttpClient spans: {hc_linked} linked to their own request, {hc_unlinked} unlinked");
    assert_eq!(
        hc_linked + hc_unlinked,
        N as usize / 2,
        "ids with other than one HttpClient span:\n{}",
        not_once(&spans, pid, "/hc/")
    );
    final_linking(&mut sonde);
}

/// A Node.js server (one event loop) calling a downstream per request, first one request at
/// a time, then 16 in parallel: the calls of the requests served alone are linked, the loop
/// is then seen serving concurrently, and no client span is ever the child of another
/// request's server span.
#[test]
fn node_event_loop_is_never_linked_to_the_wrong_request() {
    let _guard = serial();
    let dir = TempDir::new("linking-node");
    let (_down, down_port) = start_downstream();
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(peer("linking_app.js"))
        .args([&port.to_string(), &down_port.to_string()]);
    let app = spawn_ready("linking_node", &mut cmd);
    let pid = app.pid();
    let mut sonde = Sonde::start(&["--pid", &pid.to_string()], &[], &dir, &[pid]);
    warm_up(&sonde, pid, port, "/req/0");
    for id in 1..=5 {
        assert_eq!(http_get(port, &format!("/req/{id}")), format!("done {id}"));
    }
    load(port, 6..=N, |id| format!("/req/{id}"));
    let is_ours = |s: &Value| {
        s["pid"] == pid
            && s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/req/") || p.starts_with("/down/"))
    };
    let spans = sonde.wait_spans(2 * (N as usize + 1), Duration::from_secs(60), is_ours);
    let servers = servers_by_id(&spans, pid);
    assert_eq!(servers.len(), N as usize + 1);
    let (linked, unlinked) = no_wrong_link(&spans, &servers, pid, "/down/");
    eprintln!("Node.js client spans: {linked} linked to their own request, {unlinked} unlinked");
    assert_eq!(linked + unlinked, N as usize);
    // The five requests served one at a time are provably alone on the loop.
    assert!(linked >= 5, "{linked}");
    let stats = final_linking(&mut sonde);
    assert!(stats["multiplexed_threads"].as_u64() >= Some(1), "{stats}");
}

/// With `parentbased_traceidratio` at 0.5, a linked trace is kept or dropped whole: a request
/// whose server span is printed has both its client spans printed as its children, one whose
/// server span was dropped has none.
#[test]
fn python_linked_traces_are_sampled_together() {
    let _guard = serial();
    let dir = TempDir::new("linking-sampled");
    let py = python_app(
        &dir,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    let (pid, port, mut sonde) = (py.pid, py.port, py.sonde);
    // The warm-up's server span may be sampled out: wait for it to be processed instead.
    assert_eq!(http_get(port, "/req/0"), "done 0");
    std::thread::sleep(Duration::from_millis(1500));
    load(port, 1..=N, |id| format!("/req/{id}"));
    let spans = sonde.wait_spans(usize::MAX, Duration::from_secs(8), |s| s["pid"] == pid);
    let servers = servers_by_id(&spans, pid);
    let (mut kept, mut dropped) = (0, 0);
    for id in 1..=N {
        let children: Vec<_> = spans
            .iter()
            .filter(|s| {
                s["kind"] == "client"
                    && (s["path"] == format!("/down/{id}")
                        || s["db_query_text"] == format!("SELECT {id} AS req"))
            })
            .collect();
        match servers.get(&id) {
            Some(server) => {
                assert_eq!(children.len(), 2, "request {id}: {children:#?}");
                assert!(children.iter().all(|c| is_child(c, server)), "{id}");
                kept += 1;
            }
            None => {
                assert!(children.is_empty(), "request {id} dropped, children kept");
                dropped += 1;
            }
        }
    }
    eprintln!("sampled: {kept} traces kept whole, {dropped} dropped whole");
    assert!(kept > 0 && dropped > 0, "{kept} kept, {dropped} dropped");
    final_linking(&mut sonde);
}
