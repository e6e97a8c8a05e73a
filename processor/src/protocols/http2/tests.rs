//! Connection-level tests: byte streams built with a small frame writer and HPACK encoder,
//! fed in chunks the way the kernel would deliver them.

use proptest::prelude::*;

use super::frame::{self, PREFACE};
use super::hpack::test_encode as enc;
use super::*;

const IN: Flow = Flow::Inbound;
const OUT: Flow = Flow::Outbound;
const EH: u8 = frame::FLAG_END_HEADERS;
const ES: u8 = frame::FLAG_END_STREAM;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]];
    f.extend_from_slice(payload);
    f
}

fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in entries {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(frame::SETTINGS, 0, 0, &p)
}

/// A test HPACK encoder with its own dynamic table (4096 bytes, no size updates): every
/// field not in a table is added to it, so later blocks use dynamic references.
#[derive(Default)]
struct Encoder {
    table: Vec<(String, String)>,
}

impl Encoder {
    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(n, v) in fields {
            if let Some(i) = hpack::STATIC_TABLE
                .iter()
                .position(|&(sn, sv)| sn == n && sv == v)
            {
                enc::indexed(&mut out, i as u64 + 1);
            } else if let Some(i) = self.table.iter().position(|(tn, tv)| tn == n && tv == v) {
                enc::indexed(&mut out, i as u64 + 62);
            } else {
                enc::literal(&mut out, n, v, true, true);
                self.table.insert(0, (n.to_string(), v.to_string()));
                while self
                    .table
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 32)
                    .sum::<usize>()
                    > 4096
                {
                    self.table.pop();
                }
            }
        }
        out
    }
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "https".into()),
        (":path", path.into()),
        (":authority", "example.com".into()),
        ("user-agent", "test/1.0".into()),
    ]
}

fn fields<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    list.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// Both directions of one connection, built frame by frame.
struct Script {
    client: Vec<u8>,
    server: Vec<u8>,
    client_enc: Encoder,
    server_enc: Encoder,
}

impl Script {
    fn new() -> Script {
        let mut s = Script {
            client: PREFACE.to_vec(),
            server: Vec::new(),
            client_enc: Encoder::default(),
            server_enc: Encoder::default(),
        };
        s.client
            .extend(settings(&[(frame::SETTING_HEADER_TABLE_SIZE, 4096)]));
        s.server.extend(settings(&[]));
        s.server
            .extend(frame(frame::SETTINGS, frame::FLAG_ACK, 0, &[]));
        s.client
            .extend(frame(frame::SETTINGS, frame::FLAG_ACK, 0, &[]));
        s
    }

    fn request(&mut self, id: u32, list: &[(&str, &str)], flags: u8) {
        let block = self.client_enc.block(list);
        self.client
            .extend(frame(frame::HEADERS, EH | flags, id, &block));
    }

    fn response(&mut self, id: u32, list: &[(&str, &str)], flags: u8) {
        let block = self.server_enc.block(list);
        self.server
            .extend(frame(frame::HEADERS, EH | flags, id, &block));
    }
}

/// Feeds the client bytes on `client_flow` and then the server bytes, each as one chunk.
fn run(script: &Script, client_flow: Flow) -> (Vec<Exchange>, Connection) {
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    let c = &script.client;
    let s = &script.server;
    conn.feed(client_flow, c, c.len() as u64, 10, &mut out);
    conn.feed(client_flow.opposite(), s, s.len() as u64, 20, &mut out);
    (out, conn)
}

#[test]
fn get_with_response_body() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/hello")), ES);
    s.response(1, &[(":status", "200"), ("content-type", "text/plain")], 0);
    s.server.extend(frame(frame::DATA, 0, 1, b"hello "));
    s.server.extend(frame(frame::DATA, ES, 1, b"world"));

    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    // The process is the client: it writes the request, then reads the response.
    conn.feed(OUT, &s.client, s.client.len() as u64, 100, &mut out);
    assert!(out.is_empty());
    assert_eq!(conn.open_streams(), 1);
    conn.feed(IN, &s.server, s.server.len() as u64, 250, &mut out);
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert_eq!(x.stream_id, 1);
    assert_eq!(x.request_flow, OUT);
    assert_eq!(x.request.method.as_deref(), Some("GET"));
    assert_eq!(x.request.path.as_deref(), Some("/hello"));
    assert_eq!(x.request.authority.as_deref(), Some("example.com"));
    assert_eq!(x.request.scheme.as_deref(), Some("https"));
    assert_eq!(x.request.user_agent.as_deref(), Some("test/1.0"));
    assert_eq!(x.response.status, Some(200));
    assert_eq!(x.response.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        (x.request_start_ns, x.response_start_ns, x.end_ns),
        (100, Some(250), 250)
    );
    assert_eq!((x.request_body_bytes, x.response_body_bytes), (0, 11));
    assert_eq!(x.outcome, Outcome::Complete);
    assert_eq!(conn.open_streams(), 0);
    let c = conn.counters();
    assert_eq!(c.frames, 8);
    assert_eq!(c.headers_blocks, 2);
    assert_eq!((c.desync, c.hpack_errors, c.malformed_frames), (0, 0, 0));
}

#[test]
fn preface_split_across_chunks() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/split")), ES);
    s.response(1, &[(":status", "204")], ES);
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    // The process is the server: it reads the preface a few bytes at a time.
    for (i, piece) in s.client.chunks(5).enumerate() {
        conn.feed(IN, piece, piece.len() as u64, i as u64, &mut out);
    }
    conn.feed(OUT, &s.server, s.server.len() as u64, 99, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_flow, IN);
    assert_eq!(out[0].request.path.as_deref(), Some("/split"));
    assert_eq!(out[0].response.status, Some(204));
    assert_eq!(conn.counters().desync, 0);
}

/// The stream, ids 1, 3, ..., 39: distinct paths and statuses, frames of all streams
/// interleaved, and header blocks that lean on each direction's dynamic table.
fn interleaved() -> (Script, Vec<usize>, Vec<(usize, u32)>) {
    let mut s = Script::new();
    let ids: Vec<u32> = (0..20).map(|i| 2 * i + 1).collect();
    // Where each request ends in the client bytes (the server answers complete requests).
    let mut request_ends = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let path = format!("/item/{i}");
        let mut list = get(&path);
        list.push((
            "traceparent",
            format!("00-{:032x}-{:016x}-01", i + 1, i + 7),
        ));
        s.request(id, &fields(&list), if i % 2 == 0 { ES } else { 0 });
        request_ends.push(s.client.len());
    }
    for (i, &id) in ids.iter().enumerate() {
        if i % 2 == 1 {
            s.client.extend(frame(frame::DATA, ES, id, &vec![b'q'; i]));
            request_ends[i] = s.client.len();
        }
    }
    // Responses: headers for all, then bodies, in a scrambled stream order.
    let mut server_marks = Vec::new();
    for k in 0..20 {
        let i = (k * 7) % 20;
        let status = (200 + i).to_string();
        s.response(
            ids[i],
            &[(":status", &status), ("content-type", "text/plain")],
            0,
        );
        server_marks.push((s.server.len(), ids[i]));
    }
    for k in 0..20 {
        let i = (k * 13) % 20;
        s.server
            .extend(frame(frame::DATA, 0, ids[i], &vec![b'a'; i + 1]));
    }
    for k in 0..20 {
        let i = (k * 3) % 20;
        s.server.extend(frame(frame::DATA, ES, ids[i], &[b'b'; 10]));
    }
    (s, request_ends, server_marks)
}

/// What an exchange says, minus timestamps (which depend on the chunking).
fn summary(x: &Exchange) -> (u32, RequestHeaders, ResponseHeaders, u64, u64, Outcome) {
    (
        x.stream_id,
        x.request.clone(),
        x.response.clone(),
        x.request_body_bytes,
        x.response_body_bytes,
        x.outcome,
    )
}

fn check_interleaved(out: &[Exchange]) {
    assert_eq!(out.len(), 20);
    let mut sorted: Vec<&Exchange> = out.iter().collect();
    sorted.sort_by_key(|x| x.stream_id);
    for (i, x) in sorted.iter().enumerate() {
        assert_eq!(x.stream_id, 2 * i as u32 + 1);
        assert_eq!(x.request.path, Some(format!("/item/{i}")));
        assert_eq!(x.request.method.as_deref(), Some("GET"));
        assert_eq!(
            x.request.traceparent,
            Some(format!("00-{:032x}-{:016x}-01", i + 1, i + 7))
        );
        assert_eq!(x.response.status, Some(200 + i as u16));
        assert_eq!(x.request_body_bytes, if i % 2 == 1 { i as u64 } else { 0 });
        assert_eq!(x.response_body_bytes, i as u64 + 1 + 10);
        assert_eq!(x.outcome, Outcome::Complete);
    }
}

#[test]
fn twenty_interleaved_streams() {
    let (s, _, _) = interleaved();
    let (out, conn) = run(&s, IN);
    check_interleaved(&out);
    assert_eq!(conn.open_streams(), 0);
    assert_eq!(conn.counters().hpack_state_unknown, 0);
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<(usize, &'a [u8])> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len().max(1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| (w[1], &bytes[w[0]..w[1]]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any chunking of either direction, and any interleaving of the two that keeps each
    /// response after its request, yields the same exchanges.
    #[test]
    fn any_chunking_gives_the_same_exchanges(
        client_cuts in prop::collection::vec(any::<usize>(), 0..60),
        server_cuts in prop::collection::vec(any::<usize>(), 0..60),
        choices in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let (s, request_ends, server_marks) = interleaved();
        let client = split(&s.client, &client_cuts);
        let server = split(&s.server, &server_cuts);
        // The client bytes a server chunk needs delivered first: every request whose
        // response headers end in or before it.
        let need = |end: usize| -> usize {
            server_marks
                .iter()
                .filter(|(mark, _)| *mark <= end)
                .map(|(_, id)| request_ends[(*id as usize - 1) / 2])
                .max()
                .unwrap_or(0)
        };
        let mut conn = Connection::new(Limits::default());
        let mut out = Vec::new();
        let (mut ci, mut si, mut ts) = (0, 0, 0u64);
        let mut choice = choices.iter().cycle();
        while ci < client.len() || si < server.len() {
            let delivered = if ci == 0 { 0 } else { client[ci - 1].0 };
            let server_ok = si < server.len() && need(server[si].0) <= delivered;
            let take_server = server_ok && (ci == client.len() || *choice.next().unwrap_or(&true));
            ts += 1;
            if take_server {
                let (_, bytes) = server[si];
                conn.feed(OUT, bytes, bytes.len() as u64, ts, &mut out);
                si += 1;
            } else {
                let (_, bytes) = client[ci];
                conn.feed(IN, bytes, bytes.len() as u64, ts, &mut out);
                ci += 1;
            }
        }
        check_interleaved(&out);
        let (reference, _) = run(&s, IN);
        let mut a: Vec<_> = out.iter().map(summary).collect();
        let mut b: Vec<_> = reference.iter().map(summary).collect();
        a.sort_by_key(|x| x.0);
        b.sort_by_key(|x| x.0);
        prop_assert_eq!(a, b);
        prop_assert_eq!(conn.counters().desync, 0);
    }

    /// Chunks captured only in part lose information, but what is reported is never wrong:
    /// each path, status and traceparent is the one its stream carried, or absent.
    #[test]
    fn truncated_capture_never_guesses(
        client_cuts in prop::collection::vec(any::<usize>(), 0..60),
        server_cuts in prop::collection::vec(any::<usize>(), 0..60),
        keep in prop::collection::vec(any::<Option<u8>>(), 1..60),
    ) {
        let (s, _, _) = interleaved();
        let mut conn = Connection::new(Limits::default());
        let mut out = Vec::new();
        let mut keep = keep.iter().cycle();
        let mut ts = 0;
        // All requests first, then all responses: the order is not what is tested here.
        for (flow, bytes, cuts) in [(IN, &s.client, &client_cuts), (OUT, &s.server, &server_cuts)] {
            for (_, chunk) in split(bytes, cuts) {
                let captured = match keep.next().copied().flatten() {
                    Some(n) => &chunk[..usize::from(n).min(chunk.len())],
                    None => chunk,
                };
                ts += 1;
                conn.feed(flow, captured, chunk.len() as u64, ts, &mut out);
            }
        }
        conn.close(ts + 1, &mut out);
        prop_assert_eq!(conn.open_streams(), 0);
        for x in &out {
            prop_assert!(x.stream_id % 2 == 1 && x.stream_id < 40, "{:?}", x);
            let i = (x.stream_id as usize - 1) / 2;
            if let Some(path) = &x.request.path {
                prop_assert_eq!(path, &format!("/item/{i}"));
            }
            if let Some(method) = &x.request.method {
                prop_assert_eq!(method, "GET");
            }
            if let Some(tp) = &x.request.traceparent {
                prop_assert_eq!(tp, &format!("00-{:032x}-{:016x}-01", i + 1, i + 7));
            }
            if let Some(status) = x.response.status {
                prop_assert_eq!(status, 200 + i as u16);
            }
            prop_assert!(x.response_body_bytes <= i as u64 + 1 + 10, "{:?}", x);
            prop_assert!(x.request_body_bytes <= i as u64, "{:?} {:?}", x, conn.counters());
        }
    }

    /// Whatever the bytes after a preface, in whatever chunks and with whatever truncation:
    /// no panic, bounded state, and close empties the connection.
    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64), 0u64..100),
            0..40,
        ),
    ) {
        let limits = Limits { max_streams: 8, ..Limits::default() };
        let mut conn = Connection::new(limits);
        let mut out = Vec::new();
        conn.feed(IN, PREFACE, 24, 0, &mut out);
        for (i, (inbound, bytes, extra)) in chunks.iter().enumerate() {
            let flow = if *inbound { IN } else { OUT };
            conn.feed(flow, bytes, bytes.len() as u64 + extra, i as u64, &mut out);
            prop_assert!(conn.open_streams() <= 8);
        }
        conn.close(1000, &mut out);
        prop_assert_eq!(conn.open_streams(), 0);
    }
}

#[test]
fn random_bytes_after_preface_are_counted() {
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    let mut bytes = PREFACE.to_vec();
    // A deterministic scramble: xorshift.
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x as u8);
    }
    for piece in bytes.chunks(97) {
        conn.feed(IN, piece, piece.len() as u64 + 3, 1, &mut out);
    }
    conn.close(2, &mut out);
    let c = conn.counters();
    assert!(
        c.desync + c.malformed_frames + c.hpack_errors + c.header_blocks_lost > 0,
        "{c:?}"
    );
}

#[test]
fn grpc_unary_status_comes_from_trailers() {
    let mut s = Script::new();
    let req = |path: &'static str| {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "svc:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    };
    s.request(1, &req("/pkg.Svc/Get"), 0);
    s.client
        .extend(frame(frame::DATA, ES, 1, &[0, 0, 0, 0, 3, 1, 2, 3]));
    s.request(3, &req("/pkg.Svc/Find"), 0);
    s.client
        .extend(frame(frame::DATA, ES, 3, &[0, 0, 0, 0, 1, 9]));
    for (id, code, message) in [(1, "0", None), (3, "5", Some("not%20found"))] {
        s.response(
            id,
            &[(":status", "200"), ("content-type", "application/grpc")],
            0,
        );
        if id == 1 {
            s.server
                .extend(frame(frame::DATA, 0, id, &[0, 0, 0, 0, 2, 7, 7]));
        }
        let mut trailers = vec![("grpc-status", code)];
        if let Some(m) = message {
            trailers.push(("grpc-message", m));
        }
        s.response(id, &trailers, ES);
    }
    let (out, _) = run(&s, OUT);
    assert_eq!(out.len(), 2);
    let ok = &out[0];
    assert_eq!(ok.request.method.as_deref(), Some("POST"));
    assert_eq!(ok.request.path.as_deref(), Some("/pkg.Svc/Get"));
    assert_eq!(ok.request.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(
        ok.response.content_type.as_deref(),
        Some("application/grpc")
    );
    assert_eq!(ok.response.status, Some(200));
    assert_eq!(ok.response.grpc_status, Some(0));
    assert_eq!((ok.request_body_bytes, ok.response_body_bytes), (8, 7));
    let not_found = &out[1];
    assert_eq!(not_found.stream_id, 3);
    assert_eq!(not_found.response.grpc_status, Some(5));
    assert_eq!(
        not_found.response.grpc_message.as_deref(),
        Some("not%20found")
    );
    assert_eq!(not_found.outcome, Outcome::Complete);
}

#[test]
fn grpc_trailers_only() {
    let mut s = Script::new();
    s.request(1, &[(":method", "POST"), (":path", "/pkg.Svc/Nope")], 0);
    s.client.extend(frame(frame::DATA, ES, 1, &[0, 0, 0, 0, 0]));
    s.response(
        1,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
        ],
        ES,
    );
    let (out, _) = run(&s, OUT);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.status, Some(200));
    assert_eq!(out[0].response.grpc_status, Some(12));
    assert_eq!(out[0].response_body_bytes, 0);
    assert_eq!(out[0].outcome, Outcome::Complete);
}

#[test]
fn server_streaming_ends_at_the_trailers() {
    let mut s = Script::new();
    s.request(1, &[(":method", "POST"), (":path", "/pkg.Svc/Watch")], ES);
    s.response(1, &[(":status", "200")], 0);
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(IN, &s.client, s.client.len() as u64, 1, &mut out);
    conn.feed(OUT, &s.server, s.server.len() as u64, 2, &mut out);
    for i in 0..50 {
        let data = frame(frame::DATA, 0, 1, &[0, 0, 0, 0, 4, 1, 2, 3, 4]);
        conn.feed(OUT, &data, data.len() as u64, 3 + i, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(conn.open_streams(), 1);
    let trailers = frame(
        frame::HEADERS,
        EH | ES,
        1,
        &s.server_enc.block(&[("grpc-status", "0")]),
    );
    conn.feed(OUT, &trailers, trailers.len() as u64, 500, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body_bytes, 50 * 9);
    assert_eq!(out[0].response.grpc_status, Some(0));
    assert_eq!((out[0].response_start_ns, out[0].end_ns), (Some(2), 500));
}

#[test]
fn informational_status_is_skipped() {
    let mut s = Script::new();
    s.request(
        1,
        &[
            (":method", "PUT"),
            (":path", "/up"),
            ("expect", "100-continue"),
        ],
        0,
    );
    s.response(1, &[(":status", "100")], 0);
    s.client.extend(frame(frame::DATA, ES, 1, b"payload"));
    s.response(1, &[(":status", "201")], ES);
    let (out, _) = run(&s, OUT);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.status, Some(201));
    assert_eq!(out[0].request_body_bytes, 7);
}

#[test]
fn rst_stream_ends_the_exchange() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/slow")), ES);
    s.request(3, &fields(&get("/fast")), ES);
    s.server
        .extend(frame(frame::RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    s.response(3, &[(":status", "200")], ES);
    let (mut out, mut conn) = run(&s, OUT);
    // A late RST for a finished stream changes nothing.
    let late = frame(frame::RST_STREAM, 0, 3, &0u32.to_be_bytes());
    conn.feed(OUT, &late, late.len() as u64, 30, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].stream_id, 1);
    assert_eq!(out[0].outcome, Outcome::Reset(Some(8)));
    assert_eq!(out[0].response.status, None);
    assert_eq!(out[1].outcome, Outcome::Complete);
    assert_eq!(conn.counters().resets, 2);
}

#[test]
fn goaway_ends_unprocessed_streams() {
    let mut s = Script::new();
    for id in [1, 3, 5] {
        s.request(id, &fields(&get(&format!("/{id}"))), ES);
    }
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(b"shutting down");
    s.server.extend(frame(frame::GOAWAY, 0, 0, &goaway));
    s.response(1, &[(":status", "200")], ES);
    let (mut out, mut conn) = run(&s, IN);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].stream_id, out[0].outcome), (5, Outcome::GoAway));
    assert_eq!((out[1].stream_id, out[1].outcome), (1, Outcome::Complete));
    conn.close(77, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(
        (out[2].stream_id, out[2].outcome, out[2].end_ns),
        (3, Outcome::ConnectionClosed, 77)
    );
    assert_eq!(conn.counters().goaways, 1);
}

#[test]
fn continuation_frames_carry_one_block() {
    let mut s = Script::new();
    let block = s
        .client_enc
        .block(&fields(&get("/a/rather/long/path/split/over/frames")));
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(7);
    s.client.extend(frame(frame::HEADERS, ES, 1, a));
    s.client.extend(frame(frame::CONTINUATION, 0, 1, b));
    s.client.extend(frame(frame::CONTINUATION, EH, 1, c));
    s.response(1, &[(":status", "200")], ES);
    let (out, conn) = run(&s, OUT);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].request.path.as_deref(),
        Some("/a/rather/long/path/split/over/frames")
    );
    assert_eq!(conn.counters().headers_blocks, 2);
    assert_eq!(conn.counters().malformed_frames, 0);
}

#[test]
fn a_frame_inside_a_block_loses_it() {
    let mut s = Script::new();
    let block = s.client_enc.block(&fields(&get("/x")));
    s.client.extend(frame(frame::HEADERS, ES, 1, &block[..4]));
    s.client.extend(frame(frame::PING, 0, 0, &[0; 8]));
    s.client
        .extend(frame(frame::CONTINUATION, EH, 1, &block[4..]));
    let (out, mut conn) = run(&s, OUT);
    assert!(out.is_empty());
    let c = conn.counters();
    assert_eq!((c.malformed_frames, c.header_blocks_lost), (2, 1));
    let mut out = Vec::new();
    conn.close(5, &mut out);
    assert_eq!(out[0].outcome, Outcome::HeadersUnknown);
}

#[test]
fn padding_is_not_body() {
    let mut s = Script::new();
    let block = s.client_enc.block(&fields(&get("/padded")));
    // HEADERS with PADDED and PRIORITY: pad length, 5 priority bytes, block, padding.
    let mut payload = vec![3u8, 0, 0, 0, 0, 16];
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    s.client.extend(frame(
        frame::HEADERS,
        EH | frame::FLAG_PADDED | frame::FLAG_PRIORITY,
        1,
        &payload,
    ));
    let mut data = vec![10u8];
    data.extend_from_slice(b"body");
    data.extend_from_slice(&[0; 10]);
    s.client
        .extend(frame(frame::DATA, ES | frame::FLAG_PADDED, 1, &data));
    s.response(1, &[(":status", "200")], 0);
    s.server.extend(frame(
        frame::DATA,
        ES | frame::FLAG_PADDED,
        1,
        &[0, b'o', b'k'],
    ));
    let (out, conn) = run(&s, OUT);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.path.as_deref(), Some("/padded"));
    assert_eq!(
        (out[0].request_body_bytes, out[0].response_body_bytes),
        (4, 2)
    );
    // Padding longer than the frame is malformed.
    let mut conn2 = Connection::new(Limits::default());
    let mut s2 = Script::new();
    s2.request(1, &fields(&get("/p")), 0);
    s2.client
        .extend(frame(frame::DATA, ES | frame::FLAG_PADDED, 1, &[9, 1, 2]));
    conn2.feed(OUT, &s2.client, s2.client.len() as u64, 1, &mut Vec::new());
    assert_eq!(conn2.counters().malformed_frames, 1);
    assert_eq!(conn.counters().malformed_frames, 0);
}

#[test]
fn truncated_capture_inside_data_keeps_sync() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/big")), ES);
    s.response(1, &[(":status", "200")], 0);
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(OUT, &s.client, s.client.len() as u64, 1, &mut out);
    conn.feed(IN, &s.server, s.server.len() as u64, 2, &mut out);
    // A 10000-byte DATA frame of which only the first 100 bytes (header included) were
    // captured, in a read that moved exactly that frame.
    let data = frame(frame::DATA, 0, 1, &[7; 10_000]);
    conn.feed(IN, &data[..100], data.len() as u64, 3, &mut out);
    // A frame over two reads, the second captured only in part; then a whole frame and
    // the trailers.
    let data2 = frame(frame::DATA, 0, 1, &[8; 300]);
    conn.feed(IN, &data2[..50], 50, 4, &mut out);
    let rest = &data2[50..];
    conn.feed(IN, &rest[..10], rest.len() as u64, 5, &mut out);
    let data3 = frame(frame::DATA, 0, 1, &[9; 5]);
    conn.feed(IN, &data3, data3.len() as u64, 5, &mut out);
    let trailers = frame(
        frame::HEADERS,
        EH | ES,
        1,
        &s.server_enc.block(&[("grpc-status", "0")]),
    );
    conn.feed(IN, &trailers, trailers.len() as u64, 6, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body_bytes, 10_000 + 300 + 5);
    assert_eq!(out[0].response.grpc_status, Some(0));
    let c = conn.counters();
    assert_eq!(c.desync, 0);
    assert_eq!(
        c.uncaptured_bytes_skipped,
        10_009 - 100 + (rest.len() as u64 - 10)
    );
}

#[test]
fn truncated_capture_over_a_frame_header_resyncs_later() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/one")), ES);
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(IN, &s.client, s.client.len() as u64, 1, &mut out);
    // A read that moved a whole DATA frame and a HEADERS frame, captured only into the
    // second frame's header: the rest of that header is lost.
    let mut write = frame(frame::DATA, 0, 99, &[1; 20]);
    let lost_block = s.client_enc.block(&fields(&get("/lost")));
    write.extend(frame(frame::HEADERS, EH | ES, 3, &lost_block));
    conn.feed(IN, &write[..33], write.len() as u64, 2, &mut out);
    assert_eq!(conn.counters().desync, 1);
    // Garbage at the start of a chunk does not resync.
    conn.feed(
        IN,
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        10,
        3,
        &mut out,
    );
    assert_eq!(conn.counters().resyncs, 0);
    // A chunk starting with a plausible frame does. A block using only static entries and
    // literals decodes; one that refers to the (lost) dynamic table does not.
    let mut block = Vec::new();
    enc::indexed(&mut block, 3);
    enc::literal_indexed_name(&mut block, 4, "/static-only", false);
    let fine = frame(frame::HEADERS, EH | ES, 5, &block);
    conn.feed(IN, &fine, fine.len() as u64, 4, &mut out);
    assert_eq!(conn.counters().resyncs, 1);
    let mut block = Vec::new();
    enc::indexed(&mut block, 2);
    enc::indexed(&mut block, 62);
    enc::literal_indexed_name(&mut block, 4, "/dyn", false);
    let unknown = frame(frame::HEADERS, EH | ES, 7, &block);
    conn.feed(IN, &unknown, unknown.len() as u64, 5, &mut out);
    assert_eq!(conn.counters().hpack_state_unknown, 1);
    // Responses for all three.
    let mut enc2 = Encoder::default();
    for id in [1, 5, 7] {
        let r = frame(
            frame::HEADERS,
            EH | ES,
            id,
            &enc2.block(&[(":status", "200")]),
        );
        conn.feed(OUT, &r, r.len() as u64, 6, &mut out);
    }
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].request.path.as_deref(), Some("/one"));
    assert_eq!(out[0].outcome, Outcome::Complete);
    assert_eq!(out[1].request.path.as_deref(), Some("/static-only"));
    assert_eq!(out[1].request.method.as_deref(), Some("POST"));
    assert_eq!(out[1].outcome, Outcome::Complete);
    // :method was static, :path a literal: both known although a field was not.
    assert_eq!(out[2].request.path.as_deref(), Some("/dyn"));
    assert_eq!(out[2].outcome, Outcome::Complete);
}

#[test]
fn truncated_capture_inside_a_header_block_loses_the_block_only() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/first")), ES);
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    conn.feed(IN, &s.client, s.client.len() as u64, 1, &mut out);
    let block = s
        .client_enc
        .block(&fields(&get("/second-with-a-longer-path")));
    let headers = frame(frame::HEADERS, EH | ES, 3, &block);
    conn.feed(IN, &headers[..12], headers.len() as u64, 2, &mut out);
    // The next block refers to entries the lost block added: unknown, not guessed.
    let next = frame(
        frame::HEADERS,
        EH | ES,
        5,
        &s.client_enc
            .block(&fields(&get("/second-with-a-longer-path"))),
    );
    conn.feed(IN, &next, next.len() as u64, 3, &mut out);
    let c = conn.counters().clone();
    assert_eq!(
        (c.desync, c.header_blocks_lost, c.hpack_state_unknown),
        (0, 1, 1)
    );
    conn.close(9, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].outcome, Outcome::ConnectionClosed);
    assert_eq!(out[1].outcome, Outcome::HeadersUnknown);
    assert_eq!(out[1].request.path, None);
    assert_eq!(out[2].outcome, Outcome::HeadersUnknown);
    assert_eq!(out[2].request.path, None);
}

#[test]
fn midstream_pickup_never_guesses() {
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    // No preface: the first chunk is a HEADERS frame that uses a dynamic entry for :path.
    let mut block = Vec::new();
    enc::indexed(&mut block, 2);
    enc::indexed(&mut block, 63);
    let h = frame(frame::HEADERS, EH | ES, 101, &block);
    conn.feed(IN, &h, h.len() as u64, 1, &mut out);
    // The response uses only static entries: decodable.
    let r = frame(frame::HEADERS, EH | ES, 101, &[0x88]);
    conn.feed(OUT, &r, r.len() as u64, 2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::HeadersUnknown);
    assert_eq!(out[0].request.method.as_deref(), Some("GET"));
    assert_eq!(out[0].request.path, None);
    assert_eq!(out[0].response.status, Some(200));
    let c = conn.counters();
    assert_eq!((c.midstream_pickups, c.hpack_state_unknown), (2, 1));
    // Response headers for a request never seen are not an exchange.
    let r = frame(frame::HEADERS, EH | ES, 99, &[0x88]);
    conn.feed(OUT, &r, r.len() as u64, 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(conn.counters().orphan_frames, 1);
}

#[test]
fn hpack_bomb_is_stopped_and_counted() {
    let limits = Limits {
        max_header_list: 16 * 1024,
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    let mut out = Vec::new();
    let mut client = PREFACE.to_vec();
    let mut block = Vec::new();
    enc::literal(&mut block, "x-big", &"a".repeat(3000), true, false);
    for _ in 0..2000 {
        enc::indexed(&mut block, 62);
    }
    client.extend(frame(frame::HEADERS, EH | ES, 1, &block));
    conn.feed(IN, &client, client.len() as u64, 1, &mut out);
    let c = conn.counters();
    assert_eq!((c.hpack_errors, c.header_list_too_large), (1, 1));
    conn.close(2, &mut out);
    assert_eq!(out[0].outcome, Outcome::HeadersUnknown);
    // A block larger than the limit is not even buffered.
    let mut conn = Connection::new(limits);
    let mut client = PREFACE.to_vec();
    let block = vec![0x82; 8 * 1024];
    client.extend(frame(frame::HEADERS, ES, 1, &block));
    client.extend(frame(frame::CONTINUATION, ES, 1, &block));
    client.extend(frame(frame::CONTINUATION, EH, 1, &block));
    conn.feed(IN, &client, client.len() as u64, 1, &mut out);
    let c = conn.counters();
    assert_eq!((c.header_list_too_large, c.header_blocks_lost), (1, 1));
}

#[test]
fn table_size_above_the_announced_bound_is_an_error() {
    let mut conn = Connection::new(Limits::default());
    let mut out = Vec::new();
    // The server (this process, Outbound) announces 1024 for the client's blocks.
    let s = settings(&[(frame::SETTING_HEADER_TABLE_SIZE, 1024)]);
    let mut client = PREFACE.to_vec();
    client.extend(settings(&[]));
    conn.feed(IN, &client, client.len() as u64, 1, &mut out);
    conn.feed(OUT, &s, s.len() as u64, 2, &mut out);
    let mut block = Vec::new();
    enc::size_update(&mut block, 1024);
    enc::indexed(&mut block, 2);
    enc::literal_indexed_name(&mut block, 4, "/ok", false);
    let h = frame(frame::HEADERS, EH | ES, 1, &block);
    conn.feed(IN, &h, h.len() as u64, 3, &mut out);
    let mut block = Vec::new();
    enc::size_update(&mut block, 4096);
    enc::indexed(&mut block, 2);
    let h = frame(frame::HEADERS, EH | ES, 3, &block);
    conn.feed(IN, &h, h.len() as u64, 4, &mut out);
    assert_eq!(conn.counters().hpack_errors, 1);
    conn.close(5, &mut out);
    assert_eq!(out[0].request.path.as_deref(), Some("/ok"));
    assert_eq!(out[0].outcome, Outcome::ConnectionClosed);
    assert_eq!(out[1].outcome, Outcome::HeadersUnknown);
}

#[test]
fn streams_over_the_limit_are_counted() {
    let limits = Limits {
        max_streams: 2,
        ..Limits::default()
    };
    let mut s = Script::new();
    for id in [1, 3, 5] {
        s.request(id, &fields(&get("/s")), ES);
    }
    for id in [1, 3, 5] {
        s.response(id, &[(":status", "200")], ES);
    }
    let mut conn = Connection::new(limits);
    let mut out = Vec::new();
    conn.feed(IN, &s.client, s.client.len() as u64, 1, &mut out);
    conn.feed(OUT, &s.server, s.server.len() as u64, 2, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(conn.counters().streams_over_limit, 1);
    assert_eq!(conn.counters().orphan_frames, 1);
}

#[test]
fn push_promise_keeps_the_table_in_sync() {
    let mut s = Script::new();
    s.request(1, &fields(&get("/page")), ES);
    // The promise's block adds entries to the server's table.
    let promised = s.server_enc.block(&fields(&get("/style.css")));
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&promised);
    s.server.extend(frame(frame::PUSH_PROMISE, EH, 1, &payload));
    // The pushed response on stream 2 is not an exchange of its own.
    s.response(2, &[(":status", "200"), ("content-type", "text/css")], ES);
    // The page's response refers to entries the promise inserted.
    s.response(
        1,
        &[
            (":status", "200"),
            ("user-agent", "test/1.0"),
            (":authority", "example.com"),
        ],
        ES,
    );
    let (out, conn) = run(&s, OUT);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].stream_id, 1);
    assert_eq!(out[0].response.status, Some(200));
    let c = conn.counters();
    assert_eq!(
        (
            c.push_promises,
            c.hpack_errors,
            c.hpack_state_unknown,
            c.orphan_frames
        ),
        (1, 0, 0, 1)
    );
}

#[test]
fn long_values_are_cut() {
    let mut s = Script::new();
    let path = format!("/{}", "é".repeat(1000));
    s.request(1, &[(":method", "GET"), (":path", &path)], ES);
    s.response(1, &[(":status", "200")], ES);
    let (out, _) = run(&s, OUT);
    let kept = out[0].request.path.as_deref().unwrap();
    assert!(kept.len() <= MAX_VALUE_LEN && kept.len() >= MAX_VALUE_LEN - 3);
    assert!(path.starts_with(kept));
}
