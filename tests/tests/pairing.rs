//! In-kernel request/response pairing: split requests, split responses, exact byte counts,
//! keep-alive, and connections that were open before Sonde started.

use std::time::Duration;

use sonde_e2e::*;

#[test]
fn split_request_split_response_and_byte_counts() {
    let _guard = serial();
    let dir = TempDir::new("pairing");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let port_arg = port.to_string();
    // The split request's query is asserted: export it (off by default).
    let env = [("SONDE_URL_QUERY", "true")];
    let sonde = Sonde::start(&["--open-port", &port_arg], &env, &dir, &[server.pid()]);

    // A request written in three pieces, with pauses so the server reads them separately.
    let mut conn = HttpConn::open(port);
    let pieces: [&[u8]; 3] = [
        b"GET /ok/sp",
        b"lit?q=1 HTTP/1.1\r\nHost: split",
        b".example\r\n\r\n",
    ];
    for p in pieces {
        conn.write_raw(p);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(conn.read_response(), 200);
    let first_response = conn.last_response_bytes;
    // Python writes the head and the body with separate send calls: a split response.
    assert_eq!(
        conn.request("POST", "/submit", Some(&[b'p'; 2000]), false),
        201
    );
    let (post_req, post_resp) = (conn.last_request_bytes, conn.last_response_bytes);
    drop(conn);

    let spans = sonde.wait_spans(2, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let split = &spans[0];
    assert_eq!(split["path"], "/ok/split", "{split}");
    assert_eq!(split["query"], "q=1", "{split}");
    assert_eq!(split["host"], "split.example", "{split}");
    let sent: usize = pieces.iter().map(|p| p.len()).sum();
    assert_eq!(split["request_bytes"], sent, "{split}");
    assert_eq!(split["response_bytes"], first_response, "{split}");
    let post = &spans[1];
    assert_eq!(post["request_bytes"], post_req, "{post}");
    assert_eq!(post["response_bytes"], post_resp, "{post}");
    assert_eq!(post["request_body_size"], 2000, "{post}");
    assert_eq!(post["status"], 201, "{post}");
}

#[test]
fn keepalive_connection_opened_before_sonde_started() {
    let _guard = serial();
    let dir = TempDir::new("preexisting");
    let port = free_port();
    let server = start_server(ServerKind::Node, port, &dir);
    let mut conn = HttpConn::open(port);
    assert_eq!(conn.request("GET", "/ok/before-sonde", None, false), 200);

    let port_arg = port.to_string();
    let sonde = Sonde::start(&["--open-port", &port_arg], &[], &dir, &[server.pid()]);
    for i in 0..5 {
        assert_eq!(
            conn.request("GET", &format!("/ok/kept{i}"), None, false),
            200
        );
    }
    assert_eq!(conn.request("GET", "/missing/kept", None, true), 404);
    let spans = sonde.wait_spans(6, Duration::from_secs(10), |_| true);
    let paths: Vec<&str> = spans.iter().filter_map(|s| s["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ok/kept0",
            "/ok/kept1",
            "/ok/kept2",
            "/ok/kept3",
            "/ok/kept4",
            "/missing/kept"
        ]
    );
    // One connection: every span has the same client port.
    assert!(
        spans
            .iter()
            .all(|s| s["client_port"] == spans[0]["client_port"])
    );
}

#[test]
fn idle_keepalive_exchange_is_emitted_without_waiting_for_the_next_request() {
    let _guard = serial();
    let dir = TempDir::new("idle");
    let port = free_port();
    // Python's handler thread blocks in recv after answering: the exchange must still be
    // emitted while the connection stays open and idle.
    let server = start_server(ServerKind::Python, port, &dir);
    let port_arg = port.to_string();
    let sonde = Sonde::start(&["--open-port", &port_arg], &[], &dir, &[server.pid()]);
    let mut conn = HttpConn::open(port);
    assert_eq!(conn.request("GET", "/ok/idle", None, false), 200);
    let spans = sonde.wait_spans(1, Duration::from_secs(3), |s| s["path"] == "/ok/idle");
    assert_eq!(
        spans.len(),
        1,
        "the span of an idle keep-alive connection was held back"
    );
    assert_eq!(spans[0]["status"], 200);
    drop(conn);
}

/// A keep-alive connection picked up between a request and its response: the first bytes
/// Sonde sees are the status line, which must not start an exchange (in the wrong direction);
/// the next requests pair exactly. The client here is this test process, selected by pid.
#[test]
fn a_connection_picked_up_at_its_response_pairs_the_next_requests() {
    let _guard = serial();
    let dir = TempDir::new("pickup-response");
    let port = free_port();
    let _server = start_server(ServerKind::Python, port, &dir);
    let mut conn = HttpConn::open(port);
    // The request goes out before Sonde starts; its response waits in the socket buffer.
    conn.write_raw(format!("GET /ok/before HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
    let me = std::process::id();
    let sonde = Sonde::start(&["--pid", &me.to_string()], &[], &dir, &[me]);
    assert_eq!(conn.read_response(), 200);
    for i in 0..3 {
        assert_eq!(
            conn.request("GET", &format!("/ok/after{i}"), None, false),
            200
        );
    }
    let spans = sonde.wait_spans(3, Duration::from_secs(10), |s| s["server_port"] == port);
    let paths: Vec<&str> = spans.iter().filter_map(|s| s["path"].as_str()).collect();
    assert_eq!(paths, ["/ok/after0", "/ok/after1", "/ok/after2"]);
    assert!(spans.iter().all(|s| s["kind"] == "client"), "{spans:#?}");
    drop(conn);
    let mut sonde = sonde;
    assert!(
        sonde.proc.stop(Duration::from_secs(10)).is_some(),
        "sonde did not stop on SIGTERM"
    );
    let stats = final_processor_stats(&sonde);
    assert_eq!(stats["not_http"], 0, "{stats}");
}

/// Requests whose connection ends without an answer (the server reads the request and closes)
/// go out at the close, marked, on each of many short connections: every close finds its
/// connection past the close path's slot filter (`CONN_SLOTS` in the kernel programs) and
/// removes it, so the next connection starts clean. Connections answered and closed by the
/// client alternate with them.
#[test]
fn requests_closed_without_an_answer_go_out_at_the_close() {
    let _guard = serial();
    let dir = TempDir::new("unanswered");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let port_arg = port.to_string();
    let sonde = Sonde::start(&["--open-port", &port_arg], &[], &dir, &[server.pid()]);
    const ROUNDS: usize = 20;
    for i in 0..ROUNDS {
        let mut answered = HttpConn::open(port);
        assert_eq!(
            answered.request("GET", &format!("/ok/short{i}"), None, true),
            200
        );
        drop(answered);
        let mut dropped = HttpConn::open(port);
        dropped.write_raw(format!("GET /drop/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let mut rest = Vec::new();
        std::io::Read::read_to_end(dropped.stream(), &mut rest).expect("read until the close");
        assert!(rest.is_empty(), "the server answered /drop: {rest:?}");
    }
    // Waits, then settles: a close reported twice would show up as an extra span.
    let spans = sonde.wait_spans(2 * ROUNDS, Duration::from_secs(15), |_| true);
    let answered: Vec<_> = spans
        .iter()
        .filter(|s| {
            s["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/ok/short"))
        })
        .collect();
    let unanswered: Vec<_> = spans
        .iter()
        .filter(|s| s["path"].as_str().is_some_and(|p| p.starts_with("/drop/")))
        .collect();
    assert_eq!(answered.len(), ROUNDS, "{spans:?}");
    assert_eq!(unanswered.len(), ROUNDS, "{spans:?}");
    for s in &answered {
        assert_eq!(s["status"], 200, "{s}");
        assert_eq!(s["no_response"], false, "{s}");
    }
    for (i, s) in unanswered.iter().enumerate() {
        assert_eq!(s["path"], format!("/drop/{i}"), "{s}");
        assert_eq!(s["no_response"], true, "{s}");
        assert_eq!(s["response_bytes"], 0, "{s}");
    }
}
