//! Memcached from the text protocol, with the real server (Debian `memcached` 1.6) and a real
//! client (pymemcache 4.0, `tests/peers/memcached_client.py`): exact span counts per operation,
//! query text and status, on the server (selected by `--open-port`) and on the client
//! (selected by pid); keys and values never leave the processor.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{
    otlp::{Receiver, otlp_python},
    peers::*,
    *,
};

/// Sets answered, gets, and sets sent with `noreply`, in the client's plan.
const N: usize = 20;
const M: usize = 5;

/// Spans per (kind, operation, query text, status) among `spans`.
fn per_operation(spans: &[Value]) -> BTreeMap<(String, String, String, String), usize> {
    let mut out = BTreeMap::new();
    for s in spans {
        let field = |k: &str, default: &str| s[k].as_str().unwrap_or(default).to_string();
        let key = (
            field("kind", "-"),
            field("db_operation", "-"),
            field("db_query_text", "-"),
            if s["no_response"] == true {
                "no_response".to_string()
            } else {
                field("db_status", "ok")
            },
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// What the plan gives, per (operation, query text, status), for spans of `kind`.
fn expected(kind: &str) -> BTreeMap<(String, String, String, String), usize> {
    let key = |op: &str, q: &str, status: &str| {
        (
            kind.to_string(),
            op.to_string(),
            q.to_string(),
            status.to_string(),
        )
    };
    BTreeMap::from([
        // N sets and the large one, answered; M with noreply, not errors.
        (key("set", "set ? ? ? ?", "ok"), N + 1),
        (key("set", "set ? ? ? ? noreply", "ok"), M),
        // N hits and the large value read back.
        (key("get", "get ?", "ok"), N + 1),
        // The multi-gets: one command, one span each; past 64 keys the text is cut.
        (key("get", "get ? ? ? ? ? ?", "ok"), 1),
        (key("get", &format!("get{}", " ?".repeat(N)), "ok"), 1),
        // The quiet meta batch: emitted at once, and its `mn`.
        (key("mg", "mg ? ? ?", "ok"), 2),
        (key("mn", "mn", "ok"), 1),
        (key("incr", "incr ? ?", "CLIENT_ERROR"), 1),
        // NOT_FOUND is an outcome, not an error.
        (key("delete", "delete ?", "ok"), 1),
        (key("version", "version", "ok"), 1),
        (key("quit", "quit", "ok"), 1),
    ])
}

const SPANS: usize = 2 * N + M + 11;

fn everything(sonde: &Sonde) -> String {
    sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n")
}

/// The client peer: started (it prints `ready`) before Sonde, so that its pid can be
/// selected; it connects when told to go.
struct Client {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(port: u16) -> Client {
        let mut cmd = Command::new(otlp_python());
        cmd.arg(peer("memcached_client.py"))
            .args(["plan", &port.to_string(), &N.to_string(), &M.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("memcached client", &mut cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let c = Client { proc, lines };
        assert_eq!(c.line(), "ready");
        c
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} printed nothing within 60 s", self.proc.name))
    }

    /// Lets it run; returns what it printed up to `done`, and waits for it to exit.
    fn go(mut self) -> Vec<String> {
        let mut stdin = self.proc.child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to the client");
        drop(stdin);
        let mut out = Vec::new();
        loop {
            let line = self.line();
            if line == "done" {
                break;
            }
            out.push(line);
        }
        self.proc.stop(Duration::from_secs(10));
        out
    }
}

fn check_printed(printed: &[String]) {
    let want = [
        format!("set {N}"),
        format!("hits {N}"),
        "many 5".to_string(),
        format!("every {N}"),
        "meta VA 300".to_string(),
        "big 100000".to_string(),
        "incr error MemcacheClientError".to_string(),
        "delete False".to_string(),
    ];
    assert_eq!(printed[..want.len()], want, "{printed:?}");
    assert!(
        printed[want.len()].starts_with("version 1.6"),
        "{printed:?}"
    );
}

fn assert_no_secrets(sonde: &Sonde, otlp: Option<&[u8]>) {
    let text = everything(sonde);
    for secret in [
        "secretkey",
        "topsecretvalue",
        "secretquiet",
        "secretbig",
        "BBBBBBBB",
    ] {
        assert!(!text.contains(secret), "{secret} left the processor");
        if let Some(bytes) = otlp {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} was exported over OTLP"
            );
        }
    }
}

/// A selected memcached server (`--open-port`) given pymemcache's plan on one connection:
/// exactly one SERVER span per command, by operation, sanitized text and status (noreply sets
/// are not errors, a miss is not an error, the non-numeric `incr` is `CLIENT_ERROR`); the
/// 100 000-byte value is skipped by count without losing a span; nothing of the keys or values
/// reaches the printed spans, the log or the OTLP export; the stats say nothing was lost.
#[test]
fn memcached_server_spans() {
    let _guard = serial();
    let dir = TempDir::new("memcached-server");
    let port = free_port();
    let server = start_memcached(port);
    let receiver = Receiver::start(&dir, free_port(), 0);
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let mut sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
        &dir,
        &[server.pid()],
    );
    let client = Client::start(port);
    check_printed(&client.go());
    let spans = sonde.wait_spans(SPANS, Duration::from_secs(30), |s| {
        s["server_port"] == port && s["db_system"] == "memcached"
    });
    assert_eq!(per_operation(&spans), expected("server"));
    for s in &spans {
        assert_eq!(s["pid"], server.pid(), "{s}");
    }
    let exported = receiver.wait_spans(SPANS, Duration::from_secs(20), |s| {
        s.to_string().contains("memcached")
    });
    assert!(exported.len() >= SPANS, "{}", exported.len());
    let otlp_bytes = std::fs::read(&receiver.out).expect("OTLP output");
    assert_no_secrets(&sonde, Some(&otlp_bytes));
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    let mc = &stats["streams"]["memcached"];
    // pymemcache closes its socket on the CLIENT_ERROR and connects again for the `delete`.
    assert_eq!(stats["streams"]["memcached_connections"], 2, "{stats}");
    assert_eq!(stats["streams"]["unclassified_connections"], 0, "{stats}");
    assert_eq!(mc["commands"], SPANS, "{stats}");
    // M sets, quit, the two quiet mg.
    assert_eq!(mc["noreply"], M + 3, "{stats}");
    assert_eq!(mc["replies"], SPANS - M - 3, "{stats}");
    assert_eq!(mc["quiet_replies"], 1, "{stats}");
    // The 6.5 KB reply of the second multi-get was written in one syscall.
    assert_eq!(mc["replies_cut"], 1, "{stats}");
    // The N hits, five of the first multi-get, the large value, and of the second multi-get
    // those before its reply was cut (the first 2 KiB of the syscall that wrote it).
    let values = mc["values"].as_u64().unwrap_or_default() as usize;
    assert!(values > N + 6 && values < N + 6 + N, "{stats}");
    // The 100 000-byte value went by in syscalls of which only the first bytes were captured.
    assert!(
        mc["uncaptured_bytes_skipped"].as_u64() > Some(190_000),
        "{stats}"
    );
    for lost in [
        "no_response",
        "request_desync",
        "reply_desync",
        "orphan_replies",
    ] {
        assert_eq!(mc[lost], 0, "{lost}: {stats}");
    }
}

/// The same plan seen from the client (the Python process selected by pid): one CLIENT span
/// per command, with the same counts.
#[test]
fn memcached_client_spans_by_pid() {
    let _guard = serial();
    let dir = TempDir::new("memcached-client");
    let port = free_port();
    let _server = start_memcached(port);
    let client = Client::start(port);
    let pid = client.proc.pid();
    let sonde = Sonde::start(&["--pid", &pid.to_string()], &[], &dir, &[pid]);
    check_printed(&client.go());
    let spans = sonde.wait_spans(SPANS, Duration::from_secs(30), |s| {
        s["pid"] == pid && s["db_system"].is_string()
    });
    assert_eq!(per_operation(&spans), expected("client"));
    for s in &spans {
        assert_eq!(s["db_system"], "memcached", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
    }
    assert_no_secrets(&sonde, None);
}
