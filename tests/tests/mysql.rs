//! MySQL / MariaDB from the wire protocol, with the real MariaDB 10.11 server (Debian
//! `mariadbd`) and real clients: the `mariadb` CLI, PyMySQL (text protocol) and
//! mysql-connector-python with server-side prepared statements (`COM_STMT_PREPARE` /
//! `COM_STMT_EXECUTE`). Exact span counts per operation, table and status; literals never
//! leave the processor.

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

/// `mariadb` (the CLI) with `sql` on 127.0.0.1:`port` as root, database `db` if given.
fn mariadb_cli(port: u16, db: Option<&str>, sql: &str) -> std::process::Output {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-P",
        &port.to_string(),
        "-u",
        "root",
    ]);
    if let Some(db) = db {
        cmd.args(["-D", db]);
    }
    cmd.args(["-e", sql]);
    run_bounded("mariadb", &mut cmd, Duration::from_secs(30))
}

/// A MariaDB server on `port` with database `app` and its table `orders` (one row, id 1),
/// created before Sonde starts.
fn start_with_orders(port: u16, dir: &TempDir) -> Proc {
    let server = start_mariadb(port, dir);
    let out = mariadb_cli(
        port,
        None,
        "CREATE DATABASE app; CREATE TABLE app.orders (id INT PRIMARY KEY, email VARCHAR(64)); \
         INSERT INTO app.orders VALUES (1, 'alice@example.com')",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
}

/// Spans per (kind, operation, table, status) among `spans`.
fn per_statement(spans: &[Value]) -> BTreeMap<(String, String, String, String), usize> {
    let mut out = BTreeMap::new();
    for s in spans {
        let field = |k: &str, none: &str| s[k].as_str().unwrap_or(none).to_string();
        let key = (
            field("kind", "-"),
            field("db_operation", "-"),
            field("db_collection", "-"),
            field("db_status", "ok"),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn key(kind: &str, op: &str, table: &str, status: &str) -> (String, String, String, String) {
    (kind.into(), op.into(), table.into(), status.into())
}

/// Everything the processor printed and logged, as one string.
fn everything(sonde: &Sonde) -> String {
    sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n")
}

/// `tests/peers/mysql_client.py` in `mode`: started (it prints `ready`) before Sonde, so that
/// its pid can be selected; it connects when told to go.
struct Client {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(mode: &str, port: u16, n: usize) -> Client {
        let mut cmd = Command::new(otlp_python());
        cmd.arg(peer("mysql_client.py"))
            .args([mode, &port.to_string(), &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(&format!("mysql client {mode}"), &mut cmd);
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

/// A selected MariaDB server (by `--open-port`) given the CLI's INSERT, a SELECT with a literal
/// in its WHERE clause and a SELECT from a missing table: exactly three SERVER spans, with
/// system `mariadb` (from the greeting), operation, table, the database from the handshake,
/// the sanitized text and the error number 1146; the literal reaches neither the printed
/// spans, the log nor the OTLP export.
#[test]
fn mariadb_server_spans_cli_statements_and_error() {
    let _guard = serial();
    let dir = TempDir::new("mysql-cli");
    let port = free_port();
    let server = start_with_orders(port, &dir);
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
    let out = mariadb_cli(
        port,
        Some("app"),
        "INSERT INTO orders VALUES (2, 'bob@example.com'); \
         SELECT id FROM orders WHERE email = 'alice@example.com'; \
         SELECT * FROM missing_table",
    );
    // The CLI stops at the failing statement and says so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 1146 (42S02)"), "{stderr}");
    let spans = sonde.wait_spans(3, Duration::from_secs(20), |s| {
        s["server_port"] == port && s["db_system"].is_string()
    });
    let got: Vec<(String, String, String, String)> = spans
        .iter()
        .map(|s| {
            assert_eq!(s["kind"], "server", "{s}");
            assert_eq!(s["db_system"], "mariadb", "{s}");
            assert_eq!(s["db_namespace"], "app", "{s}");
            (
                s["db_operation"].as_str().unwrap_or("-").to_string(),
                s["db_collection"].as_str().unwrap_or("-").to_string(),
                s["db_status"].as_str().unwrap_or("ok").to_string(),
                s["db_query_text"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let row = |op: &str, coll: &str, status: &str, q: &str| {
        (op.into(), coll.into(), status.into(), q.into())
    };
    assert_eq!(
        got,
        [
            row("INSERT", "orders", "ok", "INSERT INTO orders VALUES (?, ?)"),
            row(
                "SELECT",
                "orders",
                "ok",
                "SELECT id FROM orders WHERE email = ?"
            ),
            row(
                "SELECT",
                "missing_table",
                "1146",
                "SELECT * FROM missing_table"
            ),
        ]
    );
    // The same spans over OTLP.
    let exported = receiver.wait_spans(3, Duration::from_secs(20), |s| {
        s.to_string().contains("missing_table") || s.to_string().contains("orders")
    });
    assert!(exported.len() >= 3, "{exported:#?}");
    let otlp_bytes = std::fs::read(&receiver.out).expect("OTLP output");
    for secret in ["alice@example.com", "bob@example.com"] {
        assert!(
            !everything(&sonde).contains(secret),
            "{secret} left the processor"
        );
        assert!(
            !otlp_bytes
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} was exported over OTLP"
        );
    }
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    let mysql = &stats["streams"]["mysql"];
    assert_eq!(stats["streams"]["mysql_connections"], 1, "{stats}");
    assert_eq!(mysql["exchanges"], 3, "{stats}");
    assert_eq!(mysql["errors"], 1, "{stats}");
    assert_eq!(mysql["handshakes"], 1, "{stats}");
    assert_eq!(mysql["desync"], 0, "{stats}");
    assert_eq!(mysql["partial"], 0, "{stats}");
}

/// Server-side prepared statements (mysql-connector-python, `cursor(prepared=True)`), seen
/// from a selected MariaDB server and from the selected client process (which reads each
/// packet's header and payload apart): one SERVER and one CLIENT span per COM_STMT_EXECUTE,
/// its text resolved from the prepare (N executes of one SELECT, an INSERT, the same INSERT
/// failing with 1062), plus the connector's two SET statements; prepares, resets, closes and
/// pings give none.
#[test]
fn mariadb_server_spans_prepared_statements() {
    let _guard = serial();
    let dir = TempDir::new("mysql-prepared");
    let port = free_port();
    let server = start_with_orders(port, &dir);
    const N: usize = 20;
    let client = Client::start("prepared", port, N);
    let pid = client.proc.pid();
    let sonde = Sonde::start(
        &["--open-port", &port.to_string(), "--pid", &pid.to_string()],
        &[],
        &dir,
        &[server.pid(), pid],
    );
    let printed = client.go();
    assert_eq!(printed.len(), N + 2, "{printed:?}");
    assert_eq!(printed[N..], ["inserted 1", "error 1062"]);
    let spans = sonde.wait_spans(2 * (N + 4), Duration::from_secs(30), |s| {
        s["server_port"] == port && s["db_system"].is_string()
    });
    let mut want = BTreeMap::new();
    for kind in ["server", "client"] {
        want.insert(key(kind, "SET", "-", "ok"), 2);
        want.insert(key(kind, "SELECT", "orders", "ok"), N);
        want.insert(key(kind, "INSERT", "orders", "ok"), 1);
        want.insert(key(kind, "INSERT", "orders", "1062"), 1);
    }
    assert_eq!(per_statement(&spans), want, "{spans:#?}");
    for s in spans.iter().filter(|s| s["db_operation"] != "SET") {
        assert_eq!(s["db_system"], "mariadb", "{s}");
        assert_eq!(s["db_namespace"], "app", "{s}");
        let q = s["db_query_text"].as_str().unwrap_or_default();
        assert!(
            q == "SELECT email FROM orders WHERE id = ?" || q == "INSERT INTO orders VALUES (?, ?)",
            "{s}"
        );
    }
    assert!(!everything(&sonde).contains("dave@example.com"));
}

/// A PyMySQL client process selected by its pid: CLIENT spans for its N SELECTs (PyMySQL puts
/// the parameter into the text; the span has `?`), its INSERT and its failing SELECT (1146),
/// plus its `SET NAMES`; the server port is the peer's.
#[test]
fn pymysql_client_spans_by_pid() {
    let _guard = serial();
    let dir = TempDir::new("mysql-client");
    let port = free_port();
    let _server = start_with_orders(port, &dir);
    const N: usize = 10;
    let client = Client::start("pymysql", port, N);
    let pid = client.proc.pid();
    let sonde = Sonde::start(&["--pid", &pid.to_string()], &[], &dir, &[pid]);
    let printed = client.go();
    assert_eq!(printed.len(), N + 2, "{printed:?}");
    assert_eq!(printed[N..], ["inserted 1", "error 1146"]);
    let spans = sonde.wait_spans(N + 3, Duration::from_secs(30), |s| {
        s["pid"] == pid && s["db_system"].is_string()
    });
    assert_eq!(
        per_statement(&spans),
        BTreeMap::from([
            (key("client", "SET", "-", "ok"), 1),
            (key("client", "SELECT", "orders", "ok"), N),
            (key("client", "INSERT", "orders", "ok"), 1),
            (key("client", "SELECT", "missing_table", "1146"), 1),
        ])
    );
    for s in &spans {
        assert_eq!(s["db_system"], "mariadb", "{s}");
        assert_eq!(s["db_namespace"], "app", "{s}");
        assert_eq!(s["server_port"], port, "{s}");
    }
    let selects = spans
        .iter()
        .filter(|s| s["db_query_text"] == "SELECT email FROM orders WHERE id = ?")
        .count();
    assert_eq!(selects, N);
    assert!(!everything(&sonde).contains("carol@example.com"));
}

/// A PyMySQL connection opened before Sonde started, selected both ways (the client by pid,
/// the server by port): three 200 kB results (read and written in chunks whose packet
/// headers are mostly not captured) each end as one successful span, and the N SELECTs after
/// them pair exactly. The greeting was not seen: `db.system.name` is `mysql`, no namespace.
#[test]
fn large_results_on_a_connection_older_than_sonde() {
    let _guard = serial();
    let dir = TempDir::new("mysql-old");
    let port = free_port();
    let server = start_with_orders(port, &dir);
    const N: usize = 10;
    let client = Client::start("old", port, N);
    let pid = client.proc.pid();
    let sonde = Sonde::start(
        &["--open-port", &port.to_string(), "--pid", &pid.to_string()],
        &[],
        &dir,
        &[server.pid(), pid],
    );
    let printed = client.go();
    assert_eq!(printed[..3], ["rows 200", "rows 200", "rows 200"]);
    assert_eq!(printed.len(), N + 3, "{printed:?}");
    let spans = sonde.wait_spans(2 * (N + 3), Duration::from_secs(30), |s| {
        s["server_port"] == port && s["db_system"].is_string()
    });
    assert_eq!(
        per_statement(&spans),
        BTreeMap::from([
            (key("client", "SELECT", "orders", "ok"), N),
            (key("client", "SELECT", "seq_1_to_200", "ok"), 3),
            (key("server", "SELECT", "orders", "ok"), N),
            (key("server", "SELECT", "seq_1_to_200", "ok"), 3),
        ]),
        "{spans:#?}"
    );
    for s in &spans {
        assert_eq!(s["db_system"], "mysql", "{s}");
        assert!(s.get("db_namespace").is_none(), "{s}");
    }
}
