//! Incoming trace context wherever it is in an HTTP/1 header block: a `traceparent` after
//! kilobytes of other headers (past the 256 bytes the kernel captures), split across two
//! writes, after more than one read's worth of headers; never one that sits in a body; an
//! invalid one is ignored and counted. Against the Python server (reads up to 8 KiB at once)
//! and nginx (reads 1 KiB first, then the rest), and over HTTPS (the Python `ssl` server,
//! plaintext from the OpenSSL uprobes).

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{peers::*, *};

/// A valid context per request: distinct trace ids, so a span can only match its own.
fn context(n: u8) -> (String, String, String) {
    let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{n:02x}");
    let span = format!("00f067aa0ba902{n:02x}");
    let header = format!("traceparent: 00-{trace}-{span}-01\r\n");
    (trace, span, header)
}

/// `count` filler headers of about `width` bytes each.
fn padding(count: usize, width: usize) -> String {
    (0..count)
        .map(|i| format!("X-Pad-{i:03}: {}\r\n", "p".repeat(width.saturating_sub(14))))
        .collect()
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").into_bytes()
}

/// Sends `parts` on one connection with a pause between them (each part is a write of its
/// own, so the server reads them apart), then reads the response.
fn send(port: u16, parts: &[&[u8]]) -> u16 {
    let mut conn = HttpConn::open(port);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        conn.stream().write_all(part).expect("send");
        conn.stream().flush().expect("flush");
    }
    conn.read_response()
}

fn span_at<'a>(spans: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| s["path"] == path).collect();
    assert_eq!(found.len(), 1, "spans at {path}: {found:?}");
    found[0]
}

fn assert_child_of(spans: &[Value], path: &str, n: u8) {
    let (trace, parent, _) = context(n);
    let s = span_at(spans, path);
    assert_eq!(s["trace_id"], trace.as_str(), "{path}: {s}");
    assert_eq!(s["parent_span_id"], parent.as_str(), "{path}: {s}");
}

/// A kernel counter from the loader's last report (logged as `("name", value)` pairs).
fn final_kernel_counter(sonde: &Sonde, name: &str) -> u64 {
    let line = sonde.wait_log("final kernel counters", Duration::from_secs(15));
    let key = format!("(\"{name}\", ");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("{name} not in {line}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e} in {line}"))
}

fn assert_root(spans: &[Value], path: &str, not_trace: &str) {
    let s = span_at(spans, path);
    assert!(s.get("parent_span_id").is_none(), "{path}: {s}");
    assert_ne!(s["trace_id"], not_trace, "{path}: {s}");
}

#[test]
fn python_server_finds_traceparent_anywhere_in_the_header_block() {
    let _guard = serial();
    let Served {
        dir: _dir,
        port,
        server: _server,
        mut sonde,
    } = serve_python_with_sonde("trace-context-python");

    // 1. After 1.6 KiB of other headers, in one write.
    let (_, _, h1) = context(1);
    assert_eq!(
        send(port, &[&get("/ok/far", &(padding(40, 40) + &h1))]),
        200
    );
    // 2. Split across two writes inside the traceparent line itself.
    let (_, _, h2) = context(2);
    let whole = get("/ok/split", &(padding(20, 40) + &h2 + "X-After: 1\r\n"));
    let cut = whole.len() - h2.len() / 2 - "X-After: 1\r\n\r\n".len();
    assert_eq!(send(port, &[&whole[..cut], &whole[cut..]]), 200);
    // 3. After 12 KiB of headers: more than one 8 KiB read.
    let (_, _, h3) = context(3);
    assert_eq!(
        send(port, &[&get("/ok/deep", &(padding(60, 200) + &h3))]),
        200
    );
    // 4. In the body of a request whose header block ended first: not a header.
    let (t4, _, h4) = context(4);
    let body = format!("{}\r\n{h4}{}", "b".repeat(120), "b".repeat(200));
    let post = format!(
        "POST /submit/body HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Length: {}\r\n\r\n{body}",
        padding(3, 40),
        body.len()
    );
    assert_eq!(send(port, &[post.as_bytes()]), 201);
    // 5. Invalid (not hex) past the capture: ignored and counted.
    let bad = format!("traceparent: 00-{}-00f067aa0ba902b7-01\r\n", "z".repeat(32));
    assert_eq!(
        send(port, &[&get("/ok/invalid", &(padding(20, 40) + &bad))]),
        200
    );
    // 6. Short request, context in the capture: still read there.
    let (_, _, h6) = context(6);
    assert_eq!(send(port, &[&get("/ok/near", &h6)]), 200);

    let spans = sonde.wait_spans(6, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), 6, "{spans:?}");
    assert_child_of(&spans, "/ok/far", 1);
    assert_child_of(&spans, "/ok/split", 2);
    assert_child_of(&spans, "/ok/deep", 3);
    assert_root(&spans, "/submit/body", &t4);
    assert_root(&spans, "/ok/invalid", "");
    assert_child_of(&spans, "/ok/near", 6);

    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["traceparent_invalid"], 1, "{stats}");
    // Searched: every request whose capture filled (all but the short one); found: the three
    // valid ones and the invalid one (checked in user space).
    assert_eq!(final_kernel_counter(&sonde, "header_scans"), 5);
    assert_eq!(final_kernel_counter(&sonde, "header_scan_traceparents"), 4);
    assert_eq!(final_kernel_counter(&sonde, "header_scans_cut"), 0);
}

#[test]
fn nginx_reads_in_pieces_and_the_context_is_still_found() {
    let _guard = serial();
    let dir = TempDir::new("trace-context-nginx");
    let port = free_port();
    let server = start_server(ServerKind::Nginx, port, &dir);
    let mut sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    // nginx reads the first 1 KiB, then the rest into a larger buffer: the line below
    // straddles the first read's end (the padding is 990 bytes after the request line).
    let (_, _, h1) = context(11);
    assert_eq!(
        send(port, &[&get("/ok/straddle", &(padding(22, 45) + &h1))]),
        200
    );
    // A 5 KiB block: several reads.
    let (_, _, h2) = context(12);
    assert_eq!(
        send(port, &[&get("/ok/long", &(padding(50, 100) + &h2))]),
        200
    );
    // Without a traceparent: a root span, the search ends at the blank line.
    assert_eq!(send(port, &[&get("/ok/none", &padding(30, 60))]), 200);

    let spans = sonde.wait_spans(3, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), 3, "{spans:?}");
    assert_child_of(&spans, "/ok/straddle", 11);
    assert_child_of(&spans, "/ok/long", 12);
    assert_root(&spans, "/ok/none", "");
    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["traceparent_invalid"], 0, "{stats}");
    assert_eq!(final_kernel_counter(&sonde, "header_scans"), 3);
    assert_eq!(final_kernel_counter(&sonde, "header_scan_traceparents"), 2);
}

/// A self-signed certificate for 127.0.0.1 (the client below does not verify it: what is
/// tested is the server's plaintext).
fn self_signed(dir: &TempDir) -> (String, String) {
    let path = |name: &str| dir.path(name).to_str().expect("utf-8 path").to_string();
    let (cert, key) = (path("server.crt"), path("server.key"));
    let out = run_bounded(
        "openssl",
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-days",
            "2",
            "-keyout",
            &key,
            "-out",
            &cert,
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Python over TLS (the harness's Python, so libssl.so.3): each request on its own
/// connection, its parts written apart (`SSL_write` each, 150 ms between), the status line
/// read back. Requests come as hex on stdin, one per line, parts separated by commas.
const TLS_SENDER: &str = r#"
import socket, ssl, sys, time
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
port = int(sys.argv[1])
for line in sys.stdin:
    parts = [bytes.fromhex(p) for p in line.strip().split(",")]
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.15)
            s.sendall(part)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.split(b" ")[1].decode(), flush=True)
"#;

#[test]
fn https_server_finds_traceparent_past_the_capture() {
    let _guard = serial();
    let dir = TempDir::new("trace-context-https");
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let server = spawn_ready(
        "python-https",
        Command::new(python())
            .arg(peer("https_server.py"))
            .arg(port.to_string())
            .args([&cert, &key]),
    );
    let mut sonde = Sonde::start(
        &["--open-port", &port.to_string()],
        &[],
        &dir,
        &[server.pid()],
    );
    sonde.wait_log(
        &format!("TLS probes attached pid={} ", server.pid()),
        Duration::from_secs(20),
    );

    let (_, _, h1) = context(21);
    let (_, _, h2) = context(22);
    let (_, _, h3) = context(23);
    let (_, _, h4) = context(24);
    let far = get("/ok/tls-far", &(padding(40, 40) + &h1));
    let split = get("/ok/tls-split", &(padding(20, 40) + &h2 + "X-After: 1\r\n"));
    let cut = split.len() - h2.len() / 2 - "X-After: 1\r\n\r\n".len();
    let deep = get("/ok/tls-deep", &(padding(60, 200) + &h4));
    let near = get("/ok/tls-near", &h3);
    assert!(far.len() > 1500 && deep.len() > 12_000 && near.len() < 200);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let requests = [
        hex(&far),
        format!("{},{}", hex(&split[..cut]), hex(&split[cut..])),
        hex(&deep),
        hex(&near),
        // Past the capture without a traceparent: a root span.
        hex(&get("/ok/tls-none", &padding(30, 60))),
    ];
    let mut cmd = Command::new(python());
    cmd.args(["-c", TLS_SENDER, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("starting the TLS sender");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all((requests.join("\n") + "\n").as_bytes())
        .expect("requests to the TLS sender");
    let out = child.wait_with_output().expect("the TLS sender ends");
    assert!(out.status.success(), "TLS sender failed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["200"; 5],
    );

    let spans = sonde.wait_spans(5, Duration::from_secs(15), |_| true);
    assert_eq!(spans.len(), 5, "{spans:?}");
    assert!(spans.iter().all(|s| s["scheme"] == "https"), "{spans:?}");
    assert_child_of(&spans, "/ok/tls-far", 21);
    assert_child_of(&spans, "/ok/tls-split", 22);
    assert_child_of(&spans, "/ok/tls-deep", 24);
    assert_child_of(&spans, "/ok/tls-near", 23);
    assert_root(&spans, "/ok/tls-none", "");
    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["traceparent_invalid"], 0, "{stats}");
    // Searched: the four requests whose capture filled; found past the capture: three.
    assert_eq!(final_kernel_counter(&sonde, "header_scans"), 4);
    assert_eq!(final_kernel_counter(&sonde, "header_scan_traceparents"), 3);
    assert_eq!(final_kernel_counter(&sonde, "header_scans_cut"), 0);
}
