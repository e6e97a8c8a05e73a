//! Tracker tests: real traffic captured from MariaDB 10.11 (the `mariadb` CLI,
//! mysql-connector-python with server-side prepared statements, PyMySQL) through a logging
//! TCP proxy, replayed chunk by chunk, and hand-built packets for the edges (MySQL 8
//! greetings, `CLIENT_DEPRECATE_EOF`, truncation, loss, old connections, garbage).

use proptest::prelude::*;

use super::*;

const IN: Flow = Flow::Inbound;
const OUT: Flow = Flow::Outbound;

// === Fixtures ===
//
// One line per `recv` of the proxy: `C` client → server, `S` server → client, then the
// bytes in hex. Captured 2026-12-01 from MariaDB 10.11.19 (Debian) on 127.0.0.1, database
// `app`, user root without password.
//
// `CLI`: `mariadb -D app -e "CREATE TABLE orders (id INT, email VARCHAR(64)); INSERT INTO
// orders VALUES (1, 'alice@example.com'); SELECT id FROM orders WHERE email =
// 'alice@example.com'; SELECT * FROM missing_table"` (the last fails with 1146).
//
// `CONNECTOR_PREPARED`: mysql-connector-python 26.10 (`cursor(prepared=True)`): two
// executes of one prepared SELECT (id 1, with a `COM_STMT_RESET` before each), a prepared
// INSERT, COMMIT, `COM_STMT_CLOSE`s.
//
// `PYMYSQL`: PyMySQL (client-side interpolation): `SELECT email FROM orders WHERE id = 2`
// and a failing `SELECT * FROM nope`.

const CLI: &str = "\
S 640000000a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000400000044336e553e734d6200fef7080200ff81150000000000001d0000002a466138312d2d3871522768006d7973716c5f6e61746976655f70617373776f726400\n\
C bf0000018ca2bf000000100021000000000000000000000000000000000000001d000000726f6f740000617070006d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404323732360f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31\n\
S 0f000002000000024000000006010403617070\n\
C 3000000003435245415445205441424c45206f72646572732028696420494e542c20656d61696c20564152434841522836342929\n\
S 0700000100000002000000\n\
C 3300000003494e5345525420494e544f206f72646572732056414c5545532028312c2027616c696365406578616d706c652e636f6d2729\n\
S 0700000100010002000000\n\
C 380000000353454c4543542069642046524f4d206f726465727320574845524520656d61696c203d2027616c696365406578616d706c652e636f6d27\n\
S 0200000101012a0000020364656603617070066f7264657273066f7264657273026964026964000c3f000b00000003000000000005000003fe0000220002000004013105000005fe00002200\n\
C 1c0000000353454c454354202a2046524f4d206d697373696e675f7461626c65\n\
S 30000001ff7a042334325330325461626c6520276170702e6d697373696e675f7461626c652720646f65736e2774206578697374\n\
C 0100000001";

const CONNECTOR_PREPARED: &str = "\
S 640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100050000007167315a53705b5800fef7080200ff81150000000000001d0000002653522351532c22634e3c24006d7973716c5f6e61746976655f70617373776f726400\n\
C ce0000010da23b00000000402d0000000000000000000000000000000000000000000000726f6f740000617070006d7973716c5f6e61746976655f70617373776f7264008d045f7069640432383036095f706c6174666f726d067838365f36340c5f736f757263655f686f737402766d0c5f636c69656e745f6e616d65166d7973716c2d636f6e6e6563746f722d707974686f6e0f5f636c69656e745f6c6963656e73650747504c2d322e300f5f636c69656e745f76657273696f6e0732362e31302e30035f6f730944656269616e2d3132\n\
S 0700000200000002000000\n\
C 3100000003534554204e414d45532027757466386d62342720434f4c4c4154452027757466386d62345f67656e6572616c5f636927\n\
S 0700000100000002000000\n\
C 1f0000000353455420404073657373696f6e2e6175746f636f6d6d6974203d204f4646\n\
S 0700000100000000000000\n\
C 010000000e\n\
S 0700000100000000000000\n\
C 2a0000001653454c4543542069642c20656d61696c2046524f4d206f7264657273205748455245206964203d203f\n\
S 0c0000010001000000020001000000001700000203646566000000013f000c3f000000000006800000000005000003fe00000000290000040364656603617070066f7264657273066f72646572730269640269640c3f000b0000000300000000002f0000050364656603617070066f7264657273066f726465727305656d61696c05656d61696c0c2d0000010000fd000000000005000006fe00000000\n\
C 050000001a01000000\n\
S 0700000100000000000000\n\
C 0f000000170100000000010000000001018001\n\
S 0100000102290000020364656603617070066f7264657273066f72646572730269640269640c3f000b0000000300000000002f0000030364656603617070066f7264657273066f726465727305656d61696c05656d61696c0c2d0000010000fd000000000005000004fe000021001800000500000100000011616c696365406578616d706c652e636f6d05000006fe00002100\n\
C 050000001a01000000\n\
S 0700000100000001000000\n\
C 0f000000170100000000010000000001018002\n\
S 0100000102290000020364656603617070066f7264657273066f72646572730269640269640c3f000b0000000300000000002f0000030364656603617070066f7264657273066f726465727305656d61696c05656d61696c0c2d0000010000fd000000000005000004fe0000210005000005fe00002100\n\
C 050000001901000000\n\
C 2100000016494e5345525420494e544f206f72646572732056414c55455320283f2c203f29\n\
S 0c0000010002000000000002000000001700000203646566000000013f000c3f00000000000680000000001700000303646566000000013f000c3f000000000006800000000005000004fe00000100\n\
C 050000001a02000000\n\
S 0700000100000001000000\n\
C 210000001702000000000100000000010180fe00020f626f62406578616d706c652e636f6d\n\
S 0700000100010001000000\n\
C 0700000003434f4d4d4954\n\
S 0700000100000000000000\n\
C 050000001902000000\n\
C 0100000001";

const PYMYSQL: &str = "\
S 640000000a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000600000057682623795e472c00fef7080200ff81150000000000001d000000424a2b3979797250772b6a57006d7973716c5f6e61746976655f70617373776f726400\n\
C 760000010da23a00ffffff002d0000000000000000000000000000000000000000000000726f6f740000617070006d7973716c5f6e61746976655f70617373776f726400350c5f636c69656e745f6e616d650770796d7973716c0f5f636c69656e745f76657273696f6e05312e312e31045f7069640432383036\n\
S 0700000200000002000000\n\
C 1200000003534554204e414d455320757466386d6234\n\
S 0700000100000002000000\n\
C 1300000003534554204155544f434f4d4d4954203d2030\n\
S 0700000100000000000000\n\
C 260000000353454c45435420656d61696c2046524f4d206f7264657273205748455245206964203d2032\n\
S 01000001012f0000020364656603617070066f7264657273066f726465727305656d61696c05656d61696c0c2d0000010000fd000000000005000003fe00002100100000040f626f62406578616d706c652e636f6d05000005fe00002100\n\
C 130000000353454c454354202a2046524f4d206e6f7065\n\
S 27000001ff7a042334325330325461626c6520276170702e6e6f70652720646f65736e2774206578697374\n\
C 0100000001";

fn chunks(fixture: &str) -> Vec<(bool, Vec<u8>)> {
    fixture
        .lines()
        .map(|l| {
            let (dir, hex) = l.split_once(' ').expect("direction");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (dir == "C", bytes)
        })
        .collect()
}

fn replay(fixture: &str, request_flow: Flow) -> (Vec<DbExchange>, Counters) {
    let mut conn = Connection::new(request_flow, true);
    let mut out = Vec::new();
    for (i, (client, bytes)) in chunks(fixture).into_iter().enumerate() {
        let flow = if client {
            request_flow
        } else {
            request_flow.opposite()
        };
        conn.feed(flow, &bytes, bytes.len() as u64, i as u64 + 1, &mut out);
    }
    conn.close(10_000, &mut out);
    (out, conn.counters().clone())
}

/// A packet: 3-byte length, sequence id, payload.
fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
    v.extend_from_slice(payload);
    v
}

fn query(text: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(text.as_bytes());
    pkt(0, &p)
}

fn ok(seq: u8) -> Vec<u8> {
    pkt(seq, &[0, 0, 0, 2, 0, 0, 0])
}

fn err(seq: u8, code: u16, state: &str, msg: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(msg.as_bytes());
    pkt(seq, &p)
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    pkt(seq, &p)
}

/// A column definition packet (catalog `def`).
fn coldef(seq: u8, name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "app", "t", "t", name, name] {
        p.push(s.len() as u8);
        p.extend_from_slice(s.as_bytes());
    }
    p.extend_from_slice(&[0x0c, 0x3f, 0, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
    pkt(seq, &p)
}

/// A text row of one value.
fn row(seq: u8, value: &str) -> Vec<u8> {
    let mut p = vec![value.len() as u8];
    p.extend_from_slice(value.as_bytes());
    pkt(seq, &p)
}

/// A server greeting with `version` and capability flags `caps`.
fn greeting(version: &str, caps: u32) -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&[7, 0, 0, 0]);
    p.extend_from_slice(b"abcdefgh");
    p.push(0);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(0x21);
    p.extend_from_slice(&[2, 0]);
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
    pkt(0, &p)
}

/// A `HandshakeResponse41` with `caps`, user `app`, an empty password and database `db`.
fn handshake_response(caps: u32, db: &str) -> Vec<u8> {
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 1, 0x21]);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(b"app\0");
    p.push(0);
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    p.extend_from_slice(b"mysql_native_password\0");
    pkt(1, &p)
}

const BASE_CAPS: u32 = 0x0008_a20d | CLIENT_SECURE_CONNECTION | CLIENT_PROTOCOL_41;

/// A connection through its handshake with a MySQL 8 server; `deprecate`: both ends set
/// `CLIENT_DEPRECATE_EOF`.
fn mysql8(request_flow: Flow, deprecate: bool) -> (Connection, Vec<DbExchange>) {
    let extra = if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
    let mut c = Connection::new(request_flow, true);
    let mut out = Vec::new();
    let server = request_flow.opposite();
    let g = greeting("8.0.36", BASE_CAPS | CLIENT_DEPRECATE_EOF | CLIENT_SSL);
    c.feed(server, &g, g.len() as u64, 1, &mut out);
    let r = handshake_response(BASE_CAPS | extra | CLIENT_CONNECT_WITH_DB, "shop");
    c.feed(request_flow, &r, r.len() as u64, 2, &mut out);
    let o = ok(2);
    c.feed(server, &o, o.len() as u64, 3, &mut out);
    assert!(out.is_empty());
    (c, out)
}

fn feed(c: &mut Connection, flow: Flow, bytes: &[u8], ts: u64, out: &mut Vec<DbExchange>) {
    c.feed(flow, bytes, bytes.len() as u64, ts, out);
}

fn summary(x: &DbExchange) -> (Option<&str>, Option<&str>, Option<&str>, Option<&str>) {
    (
        x.operation.as_deref(),
        x.collection.as_deref(),
        x.query_text.as_deref(),
        x.error_code.as_deref(),
    )
}

// === Real traffic ===

#[test]
fn cli_session_on_mariadb() {
    let (out, counters) = replay(CLI, OUT);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            (
                Some("CREATE"),
                Some("orders"),
                Some("CREATE TABLE orders (id INT, email VARCHAR(?))"),
                None
            ),
            (
                Some("INSERT"),
                Some("orders"),
                Some("INSERT INTO orders VALUES (?, ?)"),
                None
            ),
            (
                Some("SELECT"),
                Some("orders"),
                Some("SELECT id FROM orders WHERE email = ?"),
                None
            ),
            (
                Some("SELECT"),
                Some("missing_table"),
                Some("SELECT * FROM missing_table"),
                Some("1146")
            ),
        ]
    );
    for (i, x) in out.iter().enumerate() {
        assert_eq!(x.system, "mariadb");
        assert_eq!(x.namespace.as_deref(), Some("app"));
        assert_eq!(x.request_flow, OUT);
        assert!(!x.partial && !x.no_response, "{x:?}");
        // Each command's line, then its reply's.
        assert_eq!((x.start_ns, x.end_ns), (4 + 2 * i as u64, 5 + 2 * i as u64));
    }
    // The SELECT's reply: column count (with MariaDB's metadata flag), one definition, EOF,
    // one row, EOF.
    assert_eq!(out[2].response_bytes, 6 + 46 + 9 + 6 + 9);
    assert_eq!(out[2].request_bytes, 0x38 + 4);
    assert!(
        out[1]
            .raw_query_text
            .as_deref()
            .unwrap()
            .contains("alice@example.com")
    );
    assert!(!out[1].query_text.as_deref().unwrap().contains("alice"));
    assert_eq!(counters.commands, 5);
    assert_eq!(counters.utility_commands, 1);
    assert_eq!(counters.replies, 4);
    assert_eq!(counters.errors, 1);
    assert_eq!(counters.handshakes, 1);
    assert_eq!(
        counters.desync + counters.orphan_replies + counters.partial,
        0
    );
}

#[test]
fn server_side_prepared_statements_resolve_their_text() {
    let (out, counters) = replay(CONNECTOR_PREPARED, IN);
    let got: Vec<_> = out.iter().map(summary).collect();
    const SELECT: &str = "SELECT id, email FROM orders WHERE id = ?";
    assert_eq!(
        got,
        [
            (Some("SET"), None, Some("SET NAMES ? COLLATE ?"), None),
            (
                Some("SET"),
                None,
                Some("SET @@session.autocommit = OFF"),
                None
            ),
            (Some("SELECT"), Some("orders"), Some(SELECT), None),
            (Some("SELECT"), Some("orders"), Some(SELECT), None),
            (
                Some("INSERT"),
                Some("orders"),
                Some("INSERT INTO orders VALUES (?, ?)"),
                None
            ),
            (Some("COMMIT"), None, Some("COMMIT"), None),
        ]
    );
    for x in &out {
        assert_eq!(x.system, "mariadb");
        assert_eq!(x.request_flow, IN);
        assert_eq!(x.namespace.as_deref(), Some("app"));
        assert!(!x.partial && !x.no_response, "{x:?}");
    }
    // The first execute: its command line, then the reply with one row.
    assert_eq!((out[2].start_ns, out[2].end_ns), (14, 15));
    assert_eq!(counters.statements_cached, 2);
    assert_eq!(counters.unknown_statements, 0);
    // Ping, 2 prepares, 3 resets, 2 closes, quit.
    assert_eq!(counters.utility_commands, 9);
    assert_eq!(counters.commands, 15);
    assert_eq!(counters.replies, 12);
    assert_eq!(counters.desync + counters.orphan_replies, 0);
}

#[test]
fn pymysql_session_with_an_error() {
    let (out, counters) = replay(PYMYSQL, OUT);
    let got: Vec<_> = out.iter().map(summary).collect();
    assert_eq!(
        got,
        [
            (Some("SET"), None, Some("SET NAMES utf8mb4"), None),
            (Some("SET"), None, Some("SET AUTOCOMMIT = ?"), None),
            (
                Some("SELECT"),
                Some("orders"),
                Some("SELECT email FROM orders WHERE id = ?"),
                None
            ),
            (
                Some("SELECT"),
                Some("nope"),
                Some("SELECT * FROM nope"),
                Some("1146")
            ),
        ]
    );
    assert_eq!(counters.errors, 1);
}

/// Any split of every read and write into smaller chunks pairs the same way.
#[test]
fn byte_by_byte_pairs_the_same() {
    for fixture in [CLI, CONNECTOR_PREPARED, PYMYSQL] {
        let (want, _) = replay(fixture, OUT);
        let mut conn = Connection::new(OUT, true);
        let mut out = Vec::new();
        for (i, (client, bytes)) in chunks(fixture).into_iter().enumerate() {
            let flow = if client { OUT } else { IN };
            for b in bytes.chunks(1) {
                conn.feed(flow, b, 1, i as u64 + 1, &mut out);
            }
        }
        conn.close(10_000, &mut out);
        assert_eq!(out, want);
    }
}

// === Detection ===

#[test]
fn detects_greetings_and_commands_only() {
    let (_, bytes) = &chunks(CLI)[0];
    assert_eq!(Connection::detect(IN, bytes), Some(OUT));
    let g = greeting("8.0.36", BASE_CAPS);
    assert_eq!(Connection::detect(OUT, &g), Some(IN));
    // Commands of a connection older than Sonde.
    assert_eq!(Connection::detect(OUT, &query("SELECT 1")), Some(OUT));
    let exec = pkt(0, &[COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(Connection::detect(IN, &exec), Some(IN));
    let mut two = pkt(0, &[0x0e]);
    two.extend(pkt(0, &[0x0e]));
    assert_eq!(Connection::detect(OUT, &two), Some(OUT));
    // A long query cut by capture.
    let long = query(&format!("SELECT {}", "x, ".repeat(1000)));
    assert_eq!(Connection::detect(OUT, &long[..2048]), Some(OUT));
    let not_mysql: &[&[u8]] = &[
        // PostgreSQL startup, SSLRequest, simple query.
        b"\x00\x00\x00\x3c\x00\x03\x00\x00user\x00postgres\x00database\x00bench\x00\x00",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"Q\x00\x00\x00\x0dSELECT 1\x00",
        // Redis, HTTP, TLS ClientHello.
        b"*1\r\n$4\r\nPING\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        // Kafka ApiVersions request.
        b"\x00\x00\x00\x14\x00\x12\x00\x03\x00\x00\x00\x01\x00\x07client1\x00",
        // A lone ping, an OK packet, a query whose text is binary, a wrong length.
        b"\x01\x00\x00\x00\x0e",
        b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00",
        b"\x05\x00\x00\x00\x03\x01\x02\x03\x04",
        b"\x0a\x00\x00\x00\x03SELECT 1",
        // Text after a command byte that is not SQL.
        b"\x03hello world",
        // A greeting-like packet with a non-numeric version.
        b"\x10\x00\x00\x00\x0ahello\x00",
    ];
    for b in not_mysql {
        assert_eq!(Connection::detect(OUT, b), None, "{b:?}");
        assert_eq!(Connection::detect(IN, b), None, "{b:?}");
    }
}

#[test]
fn mysql_greeting_gives_mysql_and_the_database() {
    let (mut c, mut out) = mysql8(OUT, false);
    feed(&mut c, OUT, &query("SELECT 1"), 4, &mut out);
    let mut reply = pkt(1, &[1]);
    reply.extend(coldef(2, "1"));
    reply.extend(eof(3, 2));
    reply.extend(row(4, "1"));
    reply.extend(eof(5, 2));
    feed(&mut c, IN, &reply, 5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].system, "mysql");
    assert_eq!(out[0].namespace.as_deref(), Some("shop"));
    assert_eq!(out[0].end_ns, 5);
    assert!(!out[0].partial);
}

// === Result sets ===

#[test]
fn result_sets_with_deprecate_eof() {
    let (mut c, mut out) = mysql8(OUT, true);
    // One row: column count, definition, row, OK-as-EOF.
    feed(&mut c, OUT, &query("SELECT a FROM t"), 4, &mut out);
    feed(
        &mut c,
        IN,
        &[pkt(1, &[1]), coldef(2, "a")].concat(),
        5,
        &mut out,
    );
    assert!(out.is_empty());
    feed(&mut c, IN, &row(3, "x"), 6, &mut out);
    assert!(out.is_empty());
    let terminator = pkt(4, &[0xfe, 0, 0, 2, 0, 0, 0]);
    feed(&mut c, IN, &terminator, 7, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 7);
    // No rows: the terminator follows the definitions.
    feed(
        &mut c,
        OUT,
        &query("SELECT a FROM t WHERE a = 'no'"),
        8,
        &mut out,
    );
    let reply = [
        pkt(1, &[1]),
        coldef(2, "a"),
        pkt(3, &[0xfe, 0, 0, 2, 0, 0, 0]),
    ]
    .concat();
    feed(&mut c, IN, &reply, 9, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[1].query_text.as_deref(),
        Some("SELECT a FROM t WHERE a = ?")
    );
    assert_eq!(out[1].end_ns, 9);
    assert_eq!(c.pending(), 0);
}

#[test]
fn result_sets_with_eof_packets_and_unknown_capabilities() {
    // Picked up mid-stream: whether EOF packets are sent is read from the structure.
    let mut c = Connection::new(OUT, false);
    let mut out = Vec::new();
    feed(&mut c, OUT, &query("SELECT a FROM t"), 1, &mut out);
    // Empty result: definitions, EOF, EOF.
    let reply = [pkt(1, &[1]), coldef(2, "a"), eof(3, 2)].concat();
    feed(&mut c, IN, &reply, 2, &mut out);
    assert!(out.is_empty());
    feed(&mut c, IN, &eof(4, 2), 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 3);
    // Multiple results (a procedure call): the first terminator says more follow.
    feed(&mut c, OUT, &query("CALL p()"), 4, &mut out);
    let first = [
        pkt(1, &[1]),
        coldef(2, "a"),
        eof(3, 2),
        row(4, "1"),
        eof(5, 0x0a),
    ]
    .concat();
    feed(&mut c, IN, &first, 5, &mut out);
    assert_eq!(out.len(), 1);
    feed(&mut c, IN, &pkt(6, &[0, 0, 0, 2, 0, 0, 0]), 6, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].end_ns, 6);
    assert_eq!(out[1].operation.as_deref(), Some("CALL"));
    // Not the handshake: the namespace is unknown.
    assert!(
        out.iter()
            .all(|x| x.partial && x.system == "mysql" && x.namespace.is_none())
    );
}

#[test]
fn errors_give_the_error_number_and_progress_reports_do_not_end() {
    let (mut c, mut out) = mysql8(IN, false);
    feed(
        &mut c,
        IN,
        &query("ALTER TABLE t ADD COLUMN b INT"),
        4,
        &mut out,
    );
    // MariaDB progress report: ERR 0xffff, then the OK.
    feed(
        &mut c,
        OUT,
        &pkt(1, &[0xff, 0xff, 0xff, 1, 1, 3, 0x10, 0, 0]),
        5,
        &mut out,
    );
    assert!(out.is_empty());
    feed(&mut c, OUT, &ok(2), 6, &mut out);
    feed(&mut c, IN, &query("SELECT * FROM nope"), 7, &mut out);
    feed(
        &mut c,
        OUT,
        &err(1, 1146, "42S02", "Table 'shop.nope' doesn't exist"),
        8,
        &mut out,
    );
    // An error in the middle of rows.
    feed(&mut c, IN, &query("SELECT a FROM t"), 9, &mut out);
    let reply = [pkt(1, &[1]), coldef(2, "a"), eof(3, 2), row(4, "1")].concat();
    feed(&mut c, OUT, &reply, 10, &mut out);
    feed(
        &mut c,
        OUT,
        &err(5, 1317, "70100", "Query execution was interrupted"),
        11,
        &mut out,
    );
    let codes: Vec<_> = out.iter().map(|x| x.error_code.as_deref()).collect();
    assert_eq!(codes, [None, Some("1146"), Some("1317")]);
    assert_eq!((out[0].end_ns, out[1].end_ns, out[2].end_ns), (6, 8, 11));
    assert_eq!(c.counters().errors, 2);
}

// === Prepared statements ===

fn prepare_ok(id: u32, columns: u16, params: u16) -> Vec<u8> {
    let mut p = vec![0];
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&columns.to_le_bytes());
    p.extend_from_slice(&params.to_le_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    pkt(1, &p)
}

fn execute(id: u32) -> Vec<u8> {
    let mut p = vec![COM_STMT_EXECUTE];
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 0]);
    pkt(0, &p)
}

#[test]
fn prepare_and_execute_with_deprecate_eof() {
    let (mut c, mut out) = mysql8(OUT, true);
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"UPDATE t SET a = ? WHERE id = 42");
    feed(&mut c, OUT, &pkt(0, &prepare), 4, &mut out);
    // One parameter, no columns, no EOF.
    let reply = [prepare_ok(9, 0, 1), coldef(2, "?")].concat();
    feed(&mut c, IN, &reply, 5, &mut out);
    assert_eq!(c.pending(), 0);
    feed(&mut c, OUT, &execute(9), 6, &mut out);
    feed(&mut c, IN, &pkt(1, &[0, 1, 0, 2, 0, 0, 0]), 7, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        summary(&out[0]),
        (
            Some("UPDATE"),
            Some("t"),
            Some("UPDATE t SET a = ? WHERE id = ?"),
            None
        )
    );
    assert_eq!((out[0].start_ns, out[0].end_ns), (6, 7));
    // Closed: a later execute of the same id is unknown.
    feed(
        &mut c,
        OUT,
        &pkt(0, &[COM_STMT_CLOSE, 9, 0, 0, 0]),
        8,
        &mut out,
    );
    feed(&mut c, OUT, &execute(9), 9, &mut out);
    feed(&mut c, IN, &ok(1), 10, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out[1].query_text.is_none() && out[1].operation.is_none() && out[1].partial);
}

#[test]
fn execute_of_a_statement_prepared_before_capture_is_partial() {
    let mut c = Connection::new(IN, false);
    let mut out = Vec::new();
    feed(&mut c, IN, &execute(3), 1, &mut out);
    // A binary result set: count, definition, EOF, a binary row, EOF.
    let reply = [
        pkt(1, &[1]),
        coldef(2, "a"),
        eof(3, 2),
        pkt(4, &[0, 0, 7, 0, 0, 0]),
        eof(5, 2),
    ]
    .concat();
    feed(&mut c, OUT, &reply, 2, &mut out);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert!(x.partial && !x.no_response);
    assert_eq!(summary(x), (None, None, None, None));
    assert_eq!(x.end_ns, 2);
    assert_eq!(c.counters().unknown_statements, 1);
    assert_eq!(c.counters().midstream_pickups, 1);
}

/// MariaDB's `MARIADB_CLIENT_CACHE_METADATA`: an execute's result may skip the column
/// definitions (flag byte 0 after the column count), and with them the EOF that ends them.
#[test]
fn mariadb_cached_metadata_skips_the_definitions() {
    let mut c = Connection::new(OUT, false);
    let mut out = Vec::new();
    // No rows: the EOF right after the count ends the result.
    feed(&mut c, OUT, &execute(1), 1, &mut out);
    feed(
        &mut c,
        IN,
        &[pkt(1, &[1, 0]), eof(2, 2)].concat(),
        2,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 2);
    // Rows, then the EOF.
    feed(&mut c, OUT, &execute(1), 3, &mut out);
    let reply = [pkt(1, &[1, 0]), pkt(2, &[0, 0, 1, 0, 0, 0]), eof(3, 2)].concat();
    feed(&mut c, IN, &reply, 4, &mut out);
    // Definitions sent (flag 1).
    feed(&mut c, OUT, &execute(1), 5, &mut out);
    let reply = [pkt(1, &[1, 1]), coldef(2, "a"), eof(3, 2), eof(4, 2)].concat();
    feed(&mut c, IN, &reply, 6, &mut out);
    let ends: Vec<_> = out.iter().map(|x| (x.end_ns, x.no_response)).collect();
    assert_eq!(ends, [(2, false), (4, false), (6, false)]);
    assert_eq!(c.pending(), 0);
}

#[test]
fn mariadb_pipelined_prepare_and_execute_of_the_last_statement() {
    let mut c = Connection::new(OUT, false);
    let mut out = Vec::new();
    let mut prepare = vec![COM_STMT_PREPARE];
    prepare.extend_from_slice(b"DELETE FROM t WHERE id = ?");
    let batch = [pkt(0, &prepare), execute(LAST_PREPARED)].concat();
    feed(&mut c, OUT, &batch, 1, &mut out);
    // Prepare reply with EOF after the parameter, then the execute's OK.
    let reply = [prepare_ok(4, 0, 1), coldef(2, "?"), eof(3, 2)].concat();
    feed(&mut c, IN, &reply, 2, &mut out);
    feed(&mut c, IN, &ok(1), 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].query_text.as_deref(),
        Some("DELETE FROM t WHERE id = ?")
    );
    assert_eq!(out[0].end_ns, 3);
    assert_eq!(c.counters().orphan_replies, 0);
    // The statement is cached under the id the server gave.
    feed(&mut c, OUT, &execute(4), 4, &mut out);
    feed(&mut c, IN, &ok(1), 5, &mut out);
    assert_eq!(out[1].operation.as_deref(), Some("DELETE"));
}

// === Pipelining, splits, gaps ===

#[test]
fn pipelined_commands_pair_in_order() {
    let (mut c, mut out) = mysql8(OUT, false);
    let batch = [
        query("INSERT INTO t VALUES (1)"),
        query("SELECT * FROM missing"),
    ]
    .concat();
    feed(&mut c, OUT, &batch, 4, &mut out);
    assert_eq!(c.pending(), 2);
    let replies = [ok(1), err(1, 1146, "42S02", "no")].concat();
    // Split in the middle of the second header.
    feed(&mut c, IN, &replies[..13], 5, &mut out);
    assert_eq!(out.len(), 1);
    feed(&mut c, IN, &replies[13..], 6, &mut out);
    let codes: Vec<_> = out
        .iter()
        .map(|x| (x.operation.as_deref(), x.error_code.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [(Some("INSERT"), None), (Some("SELECT"), Some("1146"))]
    );
    assert_eq!(out[1].end_ns, 6);
}

#[test]
fn long_query_cut_by_capture_is_skipped_by_its_length() {
    let (mut c, mut out) = mysql8(OUT, false);
    let text = format!("INSERT INTO big VALUES ('{}')", "s".repeat(5000));
    let q = query(&text);
    c.feed(OUT, &q[..2048], q.len() as u64, 4, &mut out);
    feed(&mut c, IN, &ok(1), 5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].operation.as_deref(), Some("INSERT"));
    assert_eq!(out[0].collection.as_deref(), Some("big"));
    assert_eq!(
        out[0].query_text.as_deref(),
        Some("INSERT INTO big VALUES (?")
    );
    assert_eq!(out[0].request_bytes, q.len() as u64);
    assert_eq!(c.counters().truncated_packets, 1);
    assert_eq!(c.counters().desync, 0);
}

/// A large result set read or written at once: its packet headers fall into uncaptured bytes.
fn big_result(rows: usize) -> Vec<u8> {
    let mut r = [pkt(1, &[1]), coldef(2, "a"), eof(3, 2)].concat();
    let mut seq = 4u8;
    for _ in 0..rows {
        r.extend(row(seq, &"v".repeat(100)));
        seq = seq.wrapping_add(1);
    }
    r.extend(eof(seq, 2));
    r
}

#[test]
fn large_result_ends_at_its_captured_terminator() {
    let (mut c, mut out) = mysql8(OUT, false);
    feed(&mut c, OUT, &query("SELECT a FROM t"), 4, &mut out);
    let r = big_result(300);
    // First read: 2048 of 20000 bytes captured; headers lost.
    c.feed(IN, &r[..2048], 20_000, 5, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.counters().desync, 1);
    c.feed(IN, &r[20_000..30_000][..2048], 10_000, 6, &mut out);
    // The last read, wholly captured, ends with the EOF.
    let tail = &r[30_000..];
    feed(&mut c, IN, tail, 7, &mut out);
    assert_eq!(out.len(), 1);
    assert!(!out[0].no_response && out[0].error_code.is_none());
    assert_eq!(out[0].end_ns, 7);
    assert_eq!(out[0].response_bytes, r.len() as u64);
    // In sync again.
    feed(&mut c, OUT, &query("SELECT 2"), 8, &mut out);
    feed(&mut c, IN, &ok(1), 9, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].end_ns, 9);
}

#[test]
fn large_result_whose_end_was_not_captured_ends_at_the_next_command() {
    let (mut c, mut out) = mysql8(IN, false);
    feed(&mut c, IN, &query("SELECT a FROM t"), 4, &mut out);
    let r = big_result(300);
    c.feed(OUT, &r[..2048], r.len() as u64, 5, &mut out);
    assert!(out.is_empty());
    // The client read it all and sends its next command: the reply is over.
    feed(&mut c, IN, &query("SELECT 2"), 6, &mut out);
    assert_eq!(out.len(), 1);
    assert!(!out[0].no_response, "{:?}", out[0]);
    assert_eq!(out[0].end_ns, 5);
    assert_eq!(c.counters().replies_cut, 1);
    // The next reply pairs with the next command.
    feed(&mut c, OUT, &err(1, 1064, "42000", "syntax"), 7, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].error_code.as_deref(), Some("1064"));
    assert_eq!(out[1].query_text.as_deref(), Some("SELECT ?"));
}

#[test]
fn lost_command_headers_never_pair_replies_with_the_wrong_command() {
    let (mut c, mut out) = mysql8(OUT, false);
    // Two commands in one write; the second header falls into uncaptured bytes.
    let first = query(&format!("SELECT '{}'", "a".repeat(3000)));
    let batch = [first.clone(), query("DELETE FROM t")].concat();
    c.feed(OUT, &batch[..2048], batch.len() as u64, 4, &mut out);
    assert_eq!(c.counters().desync, 1);
    // Pending commands end without a response.
    assert_eq!(out.len(), 1);
    assert!(out[0].no_response);
    // The replies to the lost commands go to nobody.
    feed(&mut c, IN, &[ok(1), ok(1)].concat(), 5, &mut out);
    assert_eq!(out.len(), 1);
    // A later write that starts with a command: in sync again.
    feed(&mut c, OUT, &query("UPDATE t SET a = 1"), 6, &mut out);
    feed(&mut c, IN, &ok(1), 7, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].operation.as_deref(), Some("UPDATE"));
    assert!(!out[1].no_response);
    assert_eq!(out[1].end_ns, 7);
}

#[test]
fn reply_with_a_foreign_sequence_id_is_not_attributed() {
    let (mut c, mut out) = mysql8(OUT, false);
    feed(&mut c, OUT, &query("SELECT 1"), 4, &mut out);
    feed(&mut c, IN, &ok(5), 5, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.counters().orphan_replies, 1);
    c.close(6, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].no_response);
}

#[test]
fn midstream_pickup_starts_at_the_first_command() {
    let mut c = Connection::new(OUT, false);
    let mut out = Vec::new();
    // The tail of an earlier command, and of a reply: ignored.
    feed(&mut c, OUT, b"ORDER BY id", 1, &mut out);
    feed(&mut c, IN, &row(9, "x"), 2, &mut out);
    feed(&mut c, OUT, &query("SELECT 1"), 3, &mut out);
    feed(
        &mut c,
        IN,
        &[
            pkt(1, &[1]),
            coldef(2, "1"),
            eof(3, 2),
            row(4, "1"),
            eof(5, 2),
        ]
        .concat(),
        4,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].start_ns, out[0].end_ns), (3, 4));
    assert!(out[0].partial);
    // COM_INIT_DB sets the namespace: no longer partial.
    feed(&mut c, OUT, &pkt(0, b"\x02inventory"), 5, &mut out);
    feed(&mut c, IN, &ok(1), 6, &mut out);
    feed(&mut c, OUT, &query("DELETE FROM items"), 7, &mut out);
    feed(&mut c, IN, &ok(1), 8, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].namespace.as_deref(), Some("inventory"));
    assert!(!out[1].partial);
}

#[test]
fn greeting_of_a_connection_taken_as_older_starts_the_handshake() {
    let mut c = Connection::new(IN, false);
    let mut out = Vec::new();
    for (i, (client, bytes)) in chunks(PYMYSQL).into_iter().enumerate() {
        let flow = if client { IN } else { OUT };
        feed(&mut c, flow, &bytes, i as u64 + 1, &mut out);
    }
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|x| !x.partial && x.system == "mariadb"));
    assert_eq!(c.counters().midstream_pickups, 0);
}

/// A server reads each packet's header, then its payload: an older connection seen from the
/// server starts at a payload or a lone header.
#[test]
fn server_reads_of_headers_and_payloads_apart() {
    let payload = b"\x03SELECT a FROM t WHERE b = 'secret'";
    assert_eq!(Connection::detect(IN, payload), Some(IN));
    let mut c = Connection::new(IN, false);
    let mut out = Vec::new();
    feed(&mut c, IN, payload, 1, &mut out);
    let reply = [
        pkt(1, &[1]),
        coldef(2, "a"),
        eof(3, 2),
        row(4, "1"),
        eof(5, 2),
    ]
    .concat();
    feed(&mut c, OUT, &reply, 2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].query_text.as_deref(),
        Some("SELECT a FROM t WHERE b = ?")
    );
    assert_eq!(out[0].end_ns, 2);
    // Header, then payload, in sync.
    let q = query("DELETE FROM t");
    feed(&mut c, IN, &q[..4], 3, &mut out);
    feed(&mut c, IN, &q[4..], 4, &mut out);
    feed(&mut c, OUT, &ok(1), 5, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[1].start_ns, out[1].end_ns), (3, 5));

    // Out of sync (a payload of unknown commands), then a lone header and its payload.
    let mut c = Connection::new(IN, false);
    let mut out = Vec::new();
    feed(&mut c, IN, b"\x03RANDOM words here", 1, &mut out);
    feed(&mut c, OUT, &ok(1), 2, &mut out);
    feed(&mut c, IN, &q[..4], 3, &mut out);
    feed(&mut c, IN, &q[4..], 4, &mut out);
    feed(&mut c, OUT, &ok(1), 5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].operation.as_deref(), Some("DELETE"));
    // Out of sync again (a header not captured); a lone header whose payload is no
    // command: no exchange, still out of sync.
    c.feed(IN, &[9], 50, 6, &mut out);
    assert_eq!(c.counters().desync, 1);
    feed(&mut c, IN, &[5, 0, 0, 0], 7, &mut out);
    feed(&mut c, IN, b"\x99abcd", 8, &mut out);
    feed(&mut c, OUT, &ok(1), 9, &mut out);
    c.close(10, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(c.counters().desync, 2);
}

/// A client that reads each packet's header, then its payload (mysql-connector-python):
/// classified at the greeting's payload, which starts the handshake.
#[test]
fn client_reads_of_headers_and_payloads_apart() {
    let mut c = None;
    let mut out = Vec::new();
    for (i, (client, bytes)) in chunks(CLI).into_iter().enumerate() {
        let flow = if client { OUT } else { IN };
        let parts: Vec<&[u8]> = if client || bytes.len() < 4 {
            vec![&bytes]
        } else {
            vec![&bytes[..4], &bytes[4..]]
        };
        for part in parts {
            let conn = match &mut c {
                Some(conn) => conn,
                None => match Connection::detect(flow, part) {
                    Some(request_flow) => c.insert(Connection::new(request_flow, false)),
                    None => continue,
                },
            };
            feed(conn, flow, part, i as u64 + 1, &mut out);
        }
    }
    let c = c.expect("classified");
    assert_eq!(out.len(), 4);
    assert!(
        out.iter().all(|x| !x.partial && x.system == "mariadb"),
        "{out:?}"
    );
    assert!(out.iter().all(|x| x.namespace.as_deref() == Some("app")));
    assert_eq!(c.counters().midstream_pickups, 0);
}

#[test]
fn ssl_request_stops_parsing() {
    let mut c = Connection::new(OUT, true);
    let mut out = Vec::new();
    feed(
        &mut c,
        IN,
        &greeting("8.0.36", BASE_CAPS | CLIENT_SSL),
        1,
        &mut out,
    );
    let mut ssl = (BASE_CAPS | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0, 0, 0, 1, 0x21]);
    ssl.extend_from_slice(&[0; 23]);
    feed(&mut c, OUT, &pkt(1, &ssl), 2, &mut out);
    feed(&mut c, OUT, &query("SELECT 1"), 3, &mut out);
    feed(&mut c, IN, &ok(1), 4, &mut out);
    c.close(5, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.counters().tls_upgrades, 1);
}

#[test]
fn compressed_protocol_stops_parsing() {
    let mut c = Connection::new(OUT, true);
    let mut out = Vec::new();
    let caps = BASE_CAPS | CLIENT_COMPRESS;
    feed(&mut c, IN, &greeting("8.0.36", caps), 1, &mut out);
    feed(&mut c, OUT, &handshake_response(caps, ""), 2, &mut out);
    feed(&mut c, IN, &ok(2), 3, &mut out);
    feed(&mut c, OUT, &query("SELECT 1"), 4, &mut out);
    feed(&mut c, IN, &ok(1), 5, &mut out);
    c.close(6, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.counters().compressed, 1);
}

#[test]
fn local_infile_data_is_skipped() {
    let (mut c, mut out) = mysql8(OUT, false);
    feed(
        &mut c,
        OUT,
        &query("LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"),
        4,
        &mut out,
    );
    feed(&mut c, IN, &pkt(1, b"\xfb/tmp/x"), 5, &mut out);
    feed(
        &mut c,
        OUT,
        &[pkt(2, b"1\n2\n"), pkt(3, b"")].concat(),
        6,
        &mut out,
    );
    feed(&mut c, IN, &pkt(4, &[0, 2, 0, 2, 0, 0, 0]), 7, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_ns, 7);
    assert!(out[0].error_code.is_none() && !out[0].no_response);
    assert_eq!(c.counters().local_infile, 1);
}

#[test]
fn statement_cache_is_bounded() {
    let mut c = Connection::new(OUT, false);
    let mut out = Vec::new();
    for id in 0..(MAX_STATEMENTS as u32 + 10) {
        let mut prepare = vec![COM_STMT_PREPARE];
        prepare.extend_from_slice(format!("SELECT {id}").as_bytes());
        feed(&mut c, OUT, &pkt(0, &prepare), 1, &mut out);
        feed(&mut c, IN, &prepare_ok(id, 0, 0), 2, &mut out);
    }
    assert_eq!(c.cached_statements(), MAX_STATEMENTS);
    assert_eq!(c.counters().statements_evicted, 10);
}

#[test]
fn pending_commands_are_bounded() {
    let (mut c, mut out) = mysql8(OUT, false);
    let many: Vec<u8> = (0..MAX_PENDING + 5).flat_map(|_| pkt(0, &[0x0e])).collect();
    feed(&mut c, OUT, &many, 4, &mut out);
    assert!(c.pending() <= MAX_PENDING);
    assert!(c.counters().untracked > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of every read and write into smaller chunks pairs the same way.
    #[test]
    fn split_anyhow_pairs_the_same(
        which in 0usize..3,
        cuts in prop::collection::vec(0usize..600, 0..30),
    ) {
        let fixture = [CLI, CONNECTOR_PREPARED, PYMYSQL][which];
        let (want, _) = replay(fixture, OUT);
        let mut conn = Connection::new(OUT, true);
        let mut out = Vec::new();
        let mut cuts = cuts.into_iter().cycle();
        for (i, (client, bytes)) in chunks(fixture).into_iter().enumerate() {
            let flow = if client { OUT } else { IN };
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).clamp(1, rest.len());
                let (now, later) = rest.split_at(n);
                conn.feed(flow, now, n as u64, i as u64 + 1, &mut out);
                rest = later;
            }
        }
        conn.close(10_000, &mut out);
        prop_assert_eq!(out, want);
    }

    /// Garbage, arbitrary flows and uncaptured tails: never a panic, bounded state, and
    /// nothing open after close.
    #[test]
    fn garbage_never_panics(
        fresh in any::<bool>(),
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), 0u64..5000),
            0..40,
        ),
    ) {
        let mut c = Connection::new(OUT, fresh);
        let mut out = Vec::new();
        for (i, (client, bytes, gap)) in chunks.iter().enumerate() {
            let _ = Connection::detect(OUT, bytes);
            let flow = if *client { OUT } else { IN };
            c.feed(flow, bytes, bytes.len() as u64 + gap, i as u64, &mut out);
            prop_assert!(c.pending() <= MAX_PENDING);
            prop_assert!(c.buffered_bytes() <= MAX_CLIENT_KEEP + MAX_SERVER_KEEP);
        }
        c.close(1_000, &mut out);
        prop_assert_eq!(c.pending(), 0);
        for x in &out {
            prop_assert!(x.start_ns <= x.end_ns);
            if x.query_text.is_none() {
                prop_assert!(x.operation.is_none() && x.partial);
            }
        }
    }
}
