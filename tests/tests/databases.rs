//! Databases and caches from the wire protocol, with real servers and real clients: Redis
//! (`redis-server`, `redis-benchmark` pipelining, `redis-cli`) and PostgreSQL 15 (`postgres`,
//! `psql`, `pgbench` with the simple, extended and prepared protocols). Exact span counts per
//! operation and status; literals never leave the processor.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{otlp::otlp_python, peers::*, *};

// ---- Redis -------------------------------------------------------------------------------------

/// `redis-server` on 127.0.0.1:`port`, no persistence.
fn start_redis(port: u16) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let p = Proc::spawn("redis-server", &mut cmd);
    wait_for_port(port, Duration::from_secs(20));
    p
}

/// Spans per (operation, status) among `spans`.
fn per_operation(spans: &[Value]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for s in spans {
        let op = s["db_operation"].as_str().unwrap_or("-").to_string();
        let status = s["db_status"].as_str().unwrap_or("ok").to_string();
        *out.entry((op, status)).or_insert(0) += 1;
    }
    out
}

/// `redis-benchmark -P 16` (16 commands per write, 16 replies per read) against a selected
/// `redis-server`: one SERVER span per GET and per SET, exactly.
#[test]
fn redis_server_spans_under_pipelining() {
    let _guard = serial();
    let dir = TempDir::new("redis-pipe");
    let port = free_port();
    let server = start_redis(port);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    let out = run_bounded(
        "redis-benchmark",
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            "2000",
            "-c",
            "4",
            "-P",
            "16",
            "-t",
            "set,get",
            "-q",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = 4000;
    let spans = sonde.wait_spans(want, Duration::from_secs(30), |s| {
        s["server_port"] == port && (s["db_operation"] == "GET" || s["db_operation"] == "SET")
    });
    let counts = per_operation(&spans);
    assert_eq!(
        counts,
        BTreeMap::from([
            (("GET".into(), "ok".into()), 2000),
            (("SET".into(), "ok".into()), 2000)
        ])
    );
    for s in &spans {
        assert_eq!(s["kind"], "server", "{s}");
        assert_eq!(s["db_system"], "redis", "{s}");
        // Every argument is a `?`: no key, no value.
        let q = s["db_query_text"].as_str().unwrap_or_default();
        assert!(q == "GET ?" || q == "SET ? ?", "{s}");
        assert!(!s.to_string().contains("key:__rand_int__"), "{s}");
    }
}

/// `redis-cli` as a client, selected by pid before its commands arrive on standard input:
/// one CLIENT span per command, errors with their prefix, the database index after SELECT,
/// and no key or value in any output.
#[test]
fn redis_client_spans_errors_and_select() {
    let _guard = serial();
    let dir = TempDir::new("redis-cli");
    let port = free_port();
    let _server = start_redis(port);
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut cli = Proc::spawn("redis-cli", &mut cmd);
    let pid = cli.pid();
    let sonde = Sonde::start(&["--pid", &pid.to_string()], &[], &dir, &[pid]);
    let script = "SET secretkey1 topsecretvalue\nGET secretkey1\nINCR secretkey1\n\
                  SELECT 3\nSET k2 v2\nLPUSH secretkey1 x\nDEL k2\n";
    {
        let mut stdin = cli.child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("write commands");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cli.child.try_wait().ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-cli did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let spans = sonde.wait_spans(7, Duration::from_secs(20), |s| s["pid"] == pid);
    let got: Vec<(String, String, String)> = spans
        .iter()
        .map(|s| {
            assert_eq!(s["kind"], "client", "{s}");
            assert_eq!(s["server_port"], port, "{s}");
            (
                s["db_operation"].as_str().unwrap_or("-").to_string(),
                s["db_status"].as_str().unwrap_or("ok").to_string(),
                s["db_namespace"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let row =
        |op: &str, status: &str, ns: &str| (op.to_string(), status.to_string(), ns.to_string());
    assert_eq!(
        got,
        [
            row("SET", "ok", "0"),
            row("GET", "ok", "0"),
            row("INCR", "ERR", "0"),
            row("SELECT", "ok", "0"),
            row("SET", "ok", "3"),
            row("LPUSH", "ok", "3"),
            row("DEL", "ok", "3"),
        ]
    );
    let everything = sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n");
    for secret in ["secretkey1", "topsecretvalue"] {
        assert!(!everything.contains(secret), "{secret} left the processor");
    }
}

// ---- PostgreSQL --------------------------------------------------------------------------------

/// `psql -c` for each statement (the simple query protocol), on 127.0.0.1:`port`.
fn psql(port: u16, statements: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-q"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    run_bounded("psql", &mut cmd, Duration::from_secs(30))
}

/// A selected PostgreSQL server (its backends are forks of the postmaster): one SERVER span
/// per simple query, with operation, table, database, the sanitized text, and the SQLSTATE of
/// a failing statement; the literal never leaves the processor.
#[test]
fn postgres_server_spans_simple_queries_and_errors() {
    let _guard = serial();
    let dir = TempDir::new("pg-simple");
    let port = free_port();
    let server = start_postgres(port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    let out = psql(
        port,
        &[
            "CREATE TABLE orders (id int, email text)",
            "INSERT INTO orders VALUES (1, 'alice@example.com')",
            "SELECT id FROM orders WHERE email = 'alice@example.com'",
            "SELECT * FROM missing_table",
        ],
    );
    // psql stops at the failing statement and says so.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing_table"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = sonde.wait_spans(4, Duration::from_secs(20), |s| {
        s["server_port"] == port && s["db_system"] == "postgresql"
    });
    let got: Vec<(String, String, String, String)> = spans
        .iter()
        .map(|s| {
            assert_eq!(s["kind"], "server", "{s}");
            assert_eq!(s["db_namespace"], "postgres", "{s}");
            (
                s["db_operation"].as_str().unwrap_or("-").to_string(),
                s["db_collection"].as_str().unwrap_or("-").to_string(),
                s["db_status"].as_str().unwrap_or("ok").to_string(),
                s["db_query_text"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let row = |op: &str, coll: &str, status: &str, q: &str| {
        (
            op.to_string(),
            coll.to_string(),
            status.to_string(),
            q.to_string(),
        )
    };
    assert_eq!(
        got,
        [
            row(
                "CREATE",
                "orders",
                "ok",
                "CREATE TABLE orders (id int, email text)"
            ),
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
                "42P01",
                "SELECT * FROM missing_table"
            ),
        ]
    );
    let everything = sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n");
    assert!(
        !everything.contains("alice@example.com"),
        "a literal left the processor"
    );
}

/// pgbench's select-only transaction over the extended protocol (`-M extended`: Parse, Bind,
/// Execute per statement) and with prepared statements (`-M prepared`: parsed once, then
/// Bind/Execute): one SERVER span per executed statement, its text resolved.
#[test]
fn postgres_server_spans_extended_and_prepared() {
    let _guard = serial();
    let dir = TempDir::new("pg-bench");
    let port = free_port();
    let server = start_postgres(port, &dir);
    let bench = |args: &[&str]| {
        let out = run_bounded(
            "pgbench",
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(args)
                .arg("postgres"),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The tables exist before Sonde starts: only the measured runs are captured.
    bench(&["-i", "-s", "1", "-q"]);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    for mode in ["extended", "prepared"] {
        bench(&["-M", mode, "-S", "-c", "2", "-t", "25", "-n"]);
    }
    let spans = sonde.wait_spans(100, Duration::from_secs(30), |s| {
        s["server_port"] == port
            && s["db_query_text"]
                .as_str()
                .is_some_and(|q| q.starts_with(SELECT))
    });
    assert_eq!(spans.len(), 100);
    for s in &spans {
        assert_eq!(s["db_operation"], "SELECT", "{s}");
        assert_eq!(s["db_collection"], "pgbench_accounts", "{s}");
        assert!(s.get("db_status").is_none(), "{s}");
    }
}

/// `attributes.db_query_sanitize: false` (documented as a risk): the statement goes out as
/// sent, literal included; Redis arguments stay hidden whatever it says.
#[test]
fn postgres_query_text_as_sent_when_sanitizing_is_off() {
    let _guard = serial();
    let dir = TempDir::new("pg-raw");
    let port = free_port();
    let server = start_postgres(port, &dir);
    let sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[("SONDE_DB_QUERY_SANITIZE", "false")],
        &dir,
        &[server.pid()],
    );
    let out = psql(port, &["SELECT 'bob@example.com' AS email"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = sonde.wait_spans(1, Duration::from_secs(20), |s| {
        s["server_port"] == port && s["db_system"] == "postgresql"
    });
    assert_eq!(
        spans[0]["db_query_text"], "SELECT 'bob@example.com' AS email",
        "{}",
        spans[0]
    );
}

/// A Python web app (selected by its HTTP port) that per request runs a PostgreSQL SELECT and
/// INSERT through psycopg2, a Redis SET and GET through redis-py, a MariaDB SELECT through
/// PyMySQL and a Kafka produce through kafka-python, on connections it opened before Sonde
/// started: for N requests, exactly N server spans and N client spans of each database
/// operation and N producer spans, with system, operation, table or topic and status; the
/// e-mail literals the drivers put on the wire leave the processor nowhere.
#[test]
fn web_app_database_client_spans() {
    let _guard = serial();
    let dir = TempDir::new("db-app");
    let (pg_port, redis_port, http_port) = (free_port(), free_port(), free_port());
    let (mysql_port, kafka_port) = (free_port(), free_port());
    let _pg = start_postgres(pg_port, &dir);
    let _redis = start_redis(redis_port);
    let _mariadb = start_mariadb(mysql_port, &dir);
    let _kafka = start_tansu(kafka_port);
    let mut cmd = Command::new(otlp_python());
    cmd.arg(peer("db_app.py"))
        .args([http_port, pg_port, redis_port, mysql_port, kafka_port].map(|p| p.to_string()));
    let app = spawn_ready("db_app", &mut cmd);
    let sonde = Sonde::start(
        &["--open-port", &http_port.to_string()],
        &[],
        &dir,
        &[app.pid()],
    );
    const N: usize = 10;
    for n in 0..N {
        assert_eq!(
            HttpConn::open(http_port).request("GET", &format!("/order/{n}"), None, true),
            200
        );
    }
    let spans = sonde.wait_spans(7 * N, Duration::from_secs(30), |s| s["pid"] == app.pid());
    let mut counts: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for s in &spans {
        let key = (
            s["kind"].as_str().unwrap_or("-").to_string(),
            s["db_system"]
                .as_str()
                .or(s["messaging_system"].as_str())
                .unwrap_or("http")
                .to_string(),
            s["db_operation"]
                .as_str()
                .or(s["messaging_operation"].as_str())
                .or(s["method"].as_str())
                .unwrap_or("-")
                .to_string(),
            s["db_collection"]
                .as_str()
                .or(s["messaging_destination"].as_str())
                .unwrap_or("-")
                .to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
        assert!(s.get("db_status").is_none(), "{s}");
        assert!(s.get("messaging_error_code").is_none(), "{s}");
    }
    let key = |k: &str, sys: &str, op: &str, coll: &str| {
        (
            k.to_string(),
            sys.to_string(),
            op.to_string(),
            coll.to_string(),
        )
    };
    assert_eq!(
        counts,
        BTreeMap::from([
            (key("server", "http", "GET", "-"), N),
            (key("client", "postgresql", "SELECT", "orders"), N),
            (key("client", "postgresql", "INSERT", "orders"), N),
            (key("client", "redis", "SET", "-"), N),
            (key("client", "redis", "GET", "-"), N),
            // The connection's greeting (which names MariaDB) came before Sonde started: a
            // MySQL-protocol server whose handshake was not seen is `mysql`.
            (key("client", "mysql", "SELECT", "app.customers"), N),
            (key("producer", "kafka", "publish", "orders"), N),
        ])
    );
    for s in spans.iter().filter(|s| s["db_system"] == "mysql") {
        assert_eq!(s["server_port"], mysql_port, "{s}");
        assert_eq!(
            s["db_query_text"], "SELECT id FROM app.customers WHERE email = ?",
            "{s}"
        );
    }
    for s in spans.iter().filter(|s| s["messaging_system"] == "kafka") {
        assert_eq!(s["server_port"], kafka_port, "{s}");
        assert_eq!(s["messaging_client_id"], "db-app", "{s}");
    }
    for s in spans.iter().filter(|s| s["db_system"] == "postgresql") {
        assert_eq!(s["server_port"], pg_port, "{s}");
        let q = s["db_query_text"].as_str().unwrap_or_default();
        assert!(
            q == "SELECT id FROM orders WHERE email = ?" || q == "INSERT INTO orders VALUES (?, ?)",
            "{s}"
        );
    }
    let everything = sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n");
    assert!(
        !everything.contains("@example.com"),
        "a literal left the processor"
    );
}

/// PostgreSQL over TLS, seen through the OpenSSL uprobes on both ends: a server (system
/// `libssl.so.3`; its per-connection backends are forks of the selected postmaster) and a
/// psycopg2-binary client selected by pid (its wheel's own `libssl-<hash>.so.1.1`, found by
/// its exported symbols). Exactly N SELECTs and one failing statement on each side, the
/// sanitized text and the SQLSTATE; the literal inside the TLS records leaves the processor
/// nowhere.
#[test]
fn postgres_over_tls_client_and_server_spans() {
    let _guard = serial();
    let dir = TempDir::new("pg-tls");
    let port = free_port();
    let (crt, key) = (dir.path("server.crt"), dir.path("server.key"));
    let out = run_bounded(
        "openssl",
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [&crt, &key] {
        let ok = Command::new("chown")
            .arg("postgres:postgres")
            .arg(f)
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    let ok = Command::new("chmod")
        .arg("600")
        .arg(&key)
        .status()
        .expect("chmod");
    assert!(ok.success());
    let server = start_postgres_with(
        port,
        &dir,
        &[
            "ssl=on".into(),
            format!("ssl_cert_file={}", crt.display()),
            format!("ssl_key_file={}", key.display()),
        ],
    );
    let mut cmd = Command::new(otlp_python());
    cmd.arg(peer("pg_tls_client.py"))
        .args([port.to_string(), "10".into()]);
    let mut client = GatedPeer::start("pg_tls_client", &mut cmd);
    let client_pid = client.pid();
    let sonde = Sonde::start(
        &[
            "--open-port",
            &port.to_string(),
            "--pid",
            &client_pid.to_string(),
        ],
        &[],
        &dir,
        &[server.pid(), client_pid],
    );
    sonde.wait_log(
        &format!("TLS probes attached pid={client_pid} "),
        Duration::from_secs(20),
    );
    // A PostgreSQL backend is a fork made at connect time: its probes are attached when the
    // loader hears of the fork, which can be after the client's first statement (README,
    // known limits). The client waits until they are.
    client.step();
    let backend = client.line();
    let backend = backend.strip_prefix("backend ").expect("backend pid");
    sonde.wait_log(
        &format!("TLS probes attached pid={backend} "),
        Duration::from_secs(20),
    );
    const N: usize = 10;
    assert_eq!(client.go(), vec![format!("done {N}")]);
    let is_db = |s: &Value| s["db_system"] == "postgresql" && s["db_operation"] == "SELECT";
    let spans = sonde.wait_spans(2 * (N + 1), Duration::from_secs(30), is_db);
    let mut counts: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for s in &spans {
        let side = if s["pid"] == client_pid {
            "client-process"
        } else {
            "server-process"
        };
        let key = (
            side.to_string(),
            s["kind"].as_str().unwrap_or("-").to_string(),
            s["db_status"].as_str().unwrap_or("ok").to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
        if s.get("db_status").is_none() {
            assert_eq!(s["db_query_text"], "SELECT ? AS email", "{s}");
        } else {
            assert_eq!(s["db_collection"], "no_such_table", "{s}");
        }
    }
    let key = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        counts,
        BTreeMap::from([
            (key("client-process", "client", "ok"), N),
            (key("client-process", "client", "42P01"), 1),
            (key("server-process", "server", "ok"), N),
            (key("server-process", "server", "42P01"), 1),
        ])
    );
    let everything = sonde
        .spans()
        .iter()
        .map(Value::to_string)
        .collect::<String>()
        + &sonde.log_lines().join("\n");
    assert!(
        !everything.contains("tls-secret"),
        "a literal left the processor"
    );
}
