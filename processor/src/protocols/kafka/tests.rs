//! Requests as kafka-python 2.0.2 encodes them (byte-exact), responses as the protocol
//! defines them (non-flexible and flexible versions), and what capture does to them.

use super::*;

const CLIENT: &str = "kafka-python-producer-1";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// kafka-python 2.0.2: `ProduceRequest[3]`, acks=1, topic `t1`, partition 0, correlation id 1.
fn kp_produce_v3() -> Vec<u8> {
    unhex(
        "00000044000000030000000100176b61666b612d707974686f6e2d70726f64756365722d31ffff000100007530\
         00000001000274310000000100000000000000075245434f524453",
    )
}

/// kafka-python 2.0.2: `FetchRequest[4]`, topic `t1`, partition 0 at offset 5, correlation id 2.
fn kp_fetch_v4() -> Vec<u8> {
    unhex(
        "0000004e000100040000000200176b61666b612d707974686f6e2d70726f64756365722d31ffffffff000001f4\
         00000001032000000000000001000274310000000100000000000000000000000500100000",
    )
}

/// kafka-python 2.0.2: `MetadataRequest[1]` for `t1`, correlation id 3.
fn kp_metadata_v1() -> Vec<u8> {
    unhex(
        "00000029000300010000000300176b61666b612d707974686f6e2d70726f64756365722d310000000100027431",
    )
}

/// A message writer for the protocol's primitive types.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn i8(mut self, v: i8) -> W {
        self.0.push(v as u8);
        self
    }
    fn i16(mut self, v: i16) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn uvar(mut self, mut v: u64) -> W {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }
    /// A string (compact when `flex`), None for null.
    fn s(self, v: Option<&str>, flex: bool) -> W {
        match (v, flex) {
            (None, true) => self.uvar(0),
            (None, false) => self.i16(-1),
            (Some(s), true) => self.uvar(s.len() as u64 + 1).raw(s.as_bytes()),
            (Some(s), false) => self.i16(s.len() as i16).raw(s.as_bytes()),
        }
    }
    fn arr(self, n: usize, flex: bool) -> W {
        if flex {
            self.uvar(n as u64 + 1)
        } else {
            self.i32(n as i32)
        }
    }
    fn bytes(self, v: &[u8], flex: bool) -> W {
        if flex {
            self.uvar(v.len() as u64 + 1).raw(v)
        } else {
            self.i32(v.len() as i32).raw(v)
        }
    }
    /// An empty tagged-field section (flexible versions only).
    fn tags(self, flex: bool) -> W {
        if flex { self.uvar(0) } else { self }
    }
    fn raw(mut self, b: &[u8]) -> W {
        self.0.extend_from_slice(b);
        self
    }
    /// The message: size, then the bytes.
    fn frame(self) -> Vec<u8> {
        let mut m = (self.0.len() as i32).to_be_bytes().to_vec();
        m.extend_from_slice(&self.0);
        m
    }
}

fn header(key: i16, version: i16, corr: i32) -> W {
    W::default()
        .i16(key)
        .i16(version)
        .i32(corr)
        .s(Some(CLIENT), false)
        .tags(flexible(key, version))
}

fn produce(version: i16, corr: i32, acks: i16, topic: &str) -> Vec<u8> {
    let flex = version >= 9;
    let mut w = header(PRODUCE, version, corr);
    if version >= 3 {
        w = w.s(None, flex);
    }
    w.i16(acks)
        .i32(30_000)
        .arr(1, flex)
        .s(Some(topic), flex)
        .arr(1, flex)
        .i32(0)
        .bytes(b"RECORDS", flex)
        .tags(flex)
        .tags(flex)
        .tags(flex)
        .frame()
}

fn produce_response(version: i16, corr: i32, topic: &str, code: i16) -> Vec<u8> {
    let flex = version >= 9;
    let mut w = W::default()
        .i32(corr)
        .tags(flex)
        .arr(1, flex)
        .s(Some(topic), flex)
        .arr(1, flex)
        .i32(0)
        .i16(code)
        .i64(if code == 0 { 7 } else { -1 });
    if version >= 2 {
        w = w.i64(-1);
    }
    if version >= 5 {
        w = w.i64(0);
    }
    if version >= 8 {
        w = w.arr(0, flex).s(None, flex);
    }
    w = w.tags(flex).tags(flex);
    if version >= 1 {
        w = w.i32(0);
    }
    w.tags(flex).frame()
}

/// A Fetch request for `topic` (a name, or an id from v13).
fn fetch(version: i16, corr: i32, topic: Result<&str, [u8; 16]>) -> Vec<u8> {
    let flex = version >= 12;
    let mut w = header(FETCH, version, corr);
    if version < 15 {
        w = w.i32(-1);
    }
    w = w.i32(500).i32(1);
    if version >= 3 {
        w = w.i32(52_428_800);
    }
    if version >= 4 {
        w = w.i8(0);
    }
    if version >= 7 {
        w = w.i32(0).i32(-1);
    }
    w = w.arr(1, flex);
    w = match topic {
        Ok(name) => w.s(Some(name), flex),
        Err(id) => w.raw(&id),
    };
    w.arr(1, flex)
        .i32(0)
        .i32(-1)
        .i64(5)
        .i32(-1)
        .i64(0)
        .i32(1 << 20)
        .tags(flex)
        .tags(flex)
        .arr(0, flex)
        .s(Some(""), flex)
        .tags(flex)
        .frame()
}

fn fetch_response(
    version: i16,
    corr: i32,
    topic: Result<&str, [u8; 16]>,
    top_code: i16,
    code: i16,
    records: &[u8],
) -> Vec<u8> {
    let flex = version >= 12;
    let mut w = W::default().i32(corr).tags(flex);
    if version >= 1 {
        w = w.i32(0);
    }
    if version >= 7 {
        w = w.i16(top_code).i32(0);
    }
    w = w.arr(1, flex);
    w = match topic {
        Ok(name) => w.s(Some(name), flex),
        Err(id) => w.raw(&id),
    };
    w = w.arr(1, flex).i32(0).i16(code).i64(10);
    if version >= 4 {
        w = w.i64(10);
    }
    if version >= 5 {
        w = w.i64(0);
    }
    if version >= 4 {
        w = w.arr(0, flex);
    }
    if version >= 11 {
        w = w.i32(-1);
    }
    w.bytes(records, flex)
        .tags(flex)
        .tags(flex)
        .tags(flex)
        .frame()
}

fn metadata_request(version: i16, corr: i32) -> Vec<u8> {
    let flex = version >= 9;
    header(METADATA, version, corr)
        .arr(1, flex)
        .raw(&if version >= 10 {
            [0; 16].to_vec()
        } else {
            Vec::new()
        })
        .s(Some("t1"), flex)
        .tags(flex)
        .frame()
}

/// A Metadata response (v10+) naming `topics` (name, id) on one broker.
fn metadata_response(version: i16, corr: i32, topics: &[(&str, [u8; 16])]) -> Vec<u8> {
    let flex = version >= 9;
    let mut w = W::default()
        .i32(corr)
        .tags(flex)
        .i32(0)
        .arr(1, flex)
        .i32(1)
        .s(Some("127.0.0.1"), flex)
        .i32(9092)
        .s(None, flex)
        .tags(flex)
        .s(Some("cluster"), flex)
        .i32(1)
        .arr(topics.len(), flex);
    for (name, id) in topics {
        w = w
            .i16(0)
            .s(Some(name), flex)
            .raw(id)
            .i8(0)
            .arr(1, flex)
            .i16(0)
            .i32(0)
            .i32(1)
            .i32(0)
            .arr(1, flex)
            .i32(1)
            .arr(1, flex)
            .i32(1)
            .arr(0, flex)
            .tags(flex);
        if version >= 8 {
            w = w.i32(-2147483648);
        }
        w = w.tags(flex);
    }
    w.tags(flex).frame()
}

/// A connection fed whole chunks, the client's side (requests outbound).
struct Harness {
    conn: Connection,
    out: Vec<MessagingExchange>,
    ts: u64,
    flow: Flow,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Flow::Outbound, true)
    }
    fn with(flow: Flow, fresh: bool) -> Harness {
        Harness {
            conn: Connection::new(flow, fresh),
            out: Vec::new(),
            ts: 100,
            flow,
        }
    }
    fn send(&mut self, b: &[u8]) {
        self.ts += 10;
        self.conn
            .feed(self.flow, b, b.len() as u64, self.ts, &mut self.out);
    }
    fn recv(&mut self, b: &[u8]) {
        self.ts += 10;
        self.conn.feed(
            self.flow.opposite(),
            b,
            b.len() as u64,
            self.ts,
            &mut self.out,
        );
    }
    /// A chunk of which only the first `captured` bytes were kept.
    fn chunk(&mut self, request: bool, b: &[u8], captured: usize) {
        self.ts += 10;
        let flow = if request {
            self.flow
        } else {
            self.flow.opposite()
        };
        self.conn
            .feed(flow, &b[..captured], b.len() as u64, self.ts, &mut self.out);
    }
}

#[test]
fn kafka_python_produce_pairs_with_its_response() {
    let req = kp_produce_v3();
    assert_eq!(
        Connection::detect(Flow::Outbound, &req),
        Some(Flow::Outbound)
    );
    let mut h = Harness::new();
    h.send(&req);
    assert_eq!(h.conn.pending(), 1);
    assert!(h.out.is_empty());
    let resp = produce_response(3, 1, "t1", 0);
    h.recv(&resp);
    assert_eq!(h.conn.pending(), 0);
    assert_eq!(
        h.out,
        vec![MessagingExchange {
            system: "kafka",
            request_flow: Flow::Outbound,
            operation: Operation::Publish,
            destination: Some("t1".into()),
            client_id: Some(CLIENT.into()),
            error_code: None,
            start_ns: 110,
            end_ns: 120,
            request_bytes: req.len() as u64,
            response_bytes: resp.len() as u64,
            no_response: false,
            fire_and_forget: false,
            partial: false,
        }]
    );
}

#[test]
fn kafka_python_fetch_and_metadata() {
    let mut h = Harness::new();
    h.send(&kp_metadata_v1());
    h.send(&kp_fetch_v4());
    assert_eq!(h.conn.pending(), 2);
    // Metadata v1 response: no span; learns nothing (no topic ids before v10).
    let md = W::default()
        .i32(3)
        .arr(0, false)
        .i32(1)
        .arr(0, false)
        .frame();
    h.recv(&md);
    assert!(h.out.is_empty());
    h.recv(&fetch_response(4, 2, Ok("t1"), 0, 0, b"RECORDBATCH"));
    assert_eq!(h.out.len(), 1);
    let x = &h.out[0];
    assert_eq!(x.operation, Operation::Process);
    assert_eq!(x.destination.as_deref(), Some("t1"));
    assert_eq!(x.error_code, None);
    assert!(!x.no_response && !x.partial);
    assert_eq!(h.conn.counters().requests, 2);
    assert_eq!(h.conn.counters().responses, 2);
}

#[test]
fn every_fetch_is_an_exchange_also_without_records() {
    let mut h = Harness::new();
    for (i, v) in [0i16, 1, 4, 7, 11, 12].into_iter().enumerate() {
        let corr = i as i32 + 10;
        h.send(&fetch(v, corr, Ok("events")));
        h.recv(&fetch_response(v, corr, Ok("events"), 0, 0, b""));
    }
    assert_eq!(h.out.len(), 6);
    assert!(
        h.out
            .iter()
            .all(|x| x.destination.as_deref() == Some("events")
                && x.error_code.is_none()
                && x.operation == Operation::Process)
    );
}

#[test]
fn produce_every_version_and_its_error_code() {
    for v in 0..=12i16 {
        let mut h = Harness::new();
        let req = produce(v, 7, -1, "missing");
        assert!(Connection::detect(Flow::Outbound, &req).is_some(), "v{v}");
        h.send(&req);
        h.recv(&produce_response(v, 7, "missing", 3));
        assert_eq!(h.out.len(), 1, "v{v}");
        assert_eq!(h.out[0].destination.as_deref(), Some("missing"), "v{v}");
        assert_eq!(h.out[0].error_code, Some(3), "v{v}");
    }
    assert_eq!(error_name(3), Some("UNKNOWN_TOPIC_OR_PARTITION"));
    assert_eq!(error_name(-1), Some("UNKNOWN_SERVER_ERROR"));
    assert_eq!(error_name(0), None);
    assert_eq!(error_name(999), None);
}

#[test]
fn fetch_errors_top_level_then_partition() {
    let mut h = Harness::new();
    h.send(&fetch(11, 1, Ok("t")));
    h.recv(&fetch_response(11, 1, Ok("t"), 0, 1, b""));
    h.send(&fetch(12, 2, Ok("t")));
    h.recv(&fetch_response(12, 2, Ok("t"), 70, 0, b""));
    let codes: Vec<_> = h.out.iter().map(|x| x.error_code).collect();
    assert_eq!(codes, vec![Some(1), Some(70)]);
}

#[test]
fn acks_zero_ends_with_the_request() {
    let mut h = Harness::new();
    h.send(&produce(7, 1, 0, "fire"));
    assert_eq!(h.conn.pending(), 0);
    assert_eq!(h.out.len(), 1);
    let x = &h.out[0];
    assert!(x.fire_and_forget && !x.no_response && !x.partial);
    assert_eq!((x.start_ns, x.end_ns, x.response_bytes), (110, 110, 0));
    // The next request's response still pairs.
    h.send(&produce(7, 2, 1, "fire"));
    h.recv(&produce_response(7, 2, "fire", 0));
    assert_eq!(h.out.len(), 2);
    assert!(!h.out[1].fire_and_forget && !h.out[1].no_response);
    assert_eq!(h.conn.counters().orphan_responses, 0);
}

#[test]
fn pipelined_requests_pair_by_correlation_id() {
    let mut h = Harness::new();
    // ApiVersions v0 (no span), two produces and a fetch in one write.
    let api_versions = W::default()
        .i16(18)
        .i16(0)
        .i32(0)
        .s(Some(CLIENT), false)
        .frame();
    let mut write = api_versions.clone();
    write.extend(produce(8, 1, 1, "a"));
    write.extend(produce(8, 2, -1, "b"));
    write.extend(fetch(11, 3, Ok("c")));
    h.send(&write);
    assert_eq!(h.conn.pending(), 4);
    let api_resp = W::default().i32(0).i16(0).arr(0, false).i32(0).frame();
    let mut read = api_resp;
    read.extend(produce_response(8, 1, "a", 0));
    read.extend(produce_response(8, 2, "b", 0));
    read.extend(fetch_response(11, 3, Ok("c"), 0, 0, b"xyz"));
    // Read back in two syscalls split inside a message.
    let (a, b) = read.split_at(37);
    h.recv(a);
    h.recv(b);
    let got: Vec<_> = h
        .out
        .iter()
        .map(|x| (x.operation, x.destination.clone().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Operation::Publish, "a".to_string()),
            (Operation::Publish, "b".to_string()),
            (Operation::Process, "c".to_string()),
        ]
    );
    assert_eq!(h.conn.pending(), 0);
}

#[test]
fn a_response_lost_to_capture_is_given_up_at_the_next() {
    let mut h = Harness::new();
    h.send(&produce(8, 1, 1, "a"));
    h.send(&produce(8, 2, 1, "b"));
    // The first response's size fell into uncaptured bytes: sync lost...
    let r1 = produce_response(8, 1, "a", 0);
    let mut read = vec![0u8; 10];
    read.extend(&r1);
    h.chunk(false, &read, 2);
    assert_eq!(h.conn.counters().desync, 1);
    // ... and found again at the next response.
    h.recv(&produce_response(8, 2, "b", 0));
    assert_eq!(h.out.len(), 2);
    assert!(h.out[0].no_response && h.out[0].partial);
    assert_eq!(h.out[0].destination.as_deref(), Some("a"));
    assert!(!h.out[1].no_response && !h.out[1].partial);
    assert_eq!(h.conn.counters().responses_lost, 1);
    // The requests' first sync, and the responses' after the loss.
    assert_eq!(h.conn.counters().resyncs, 2);
}

#[test]
fn uncaptured_bytes_inside_a_message_are_skipped_by_count() {
    let mut h = Harness::new();
    // A 3000-byte record batch: only the first 2048 bytes of the write are captured.
    let big = {
        let flex = false;
        header(PRODUCE, 7, 1)
            .s(None, flex)
            .i16(-1)
            .i32(30_000)
            .arr(1, flex)
            .s(Some("big"), flex)
            .arr(1, flex)
            .i32(0)
            .bytes(&[0xAB; 3000], flex)
            .frame()
    };
    h.chunk(true, &big, 2048);
    // A fetch response with a large record set, read in 4096-byte reads of which 2048 each
    // are captured.
    h.send(&fetch(11, 2, Ok("big")));
    let resp = produce_response(7, 1, "big", 0);
    h.recv(&resp);
    let fr = fetch_response(11, 2, Ok("big"), 0, 0, &[0xCD; 9000]);
    for part in fr.chunks(4096) {
        h.chunk(false, part, part.len().min(2048));
    }
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.out[0].destination.as_deref(), Some("big"));
    assert_eq!(h.out[1].destination.as_deref(), Some("big"));
    assert_eq!(h.out[1].response_bytes, fr.len() as u64);
    assert_eq!(h.conn.counters().desync, 0);
    assert!(h.conn.counters().uncaptured_bytes_skipped > 0);
    // Record bytes are never kept past the message.
    assert_eq!(h.conn.buffered_bytes(), 0);
}

#[test]
fn a_gap_across_requests_resyncs_at_the_next_plausible_request() {
    let mut h = Harness::new();
    h.send(&produce(8, 0, 1, "z"));
    h.recv(&produce_response(8, 0, "z", 0));
    let mut w = produce(8, 1, 1, "a");
    w.extend(produce(8, 2, 1, "b"));
    // Only 10 bytes captured: the second request's size is lost.
    h.chunk(true, &w, 10);
    assert_eq!(h.conn.counters().desync, 1);
    // Garbage is skipped; the next request is found.
    h.send(b"\xff\xff\xff\xff garbage");
    h.send(&produce(8, 3, 1, "c"));
    h.recv(&produce_response(8, 3, "c", 0));
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.out[1].destination.as_deref(), Some("c"));
    assert_eq!(h.conn.counters().chunks_skipped, 1);
}

#[test]
fn picked_up_mid_stream() {
    let mut h = Harness::with(Flow::Outbound, false);
    // A response to a request Sonde never saw, then the tail of a request.
    h.recv(&produce_response(8, 1, "a", 0));
    h.send(&produce(8, 2, 1, "b")[20..]);
    h.send(&produce(8, 3, 1, "b"));
    h.recv(&produce_response(8, 3, "b", 0));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].destination.as_deref(), Some("b"));
    assert_eq!(h.conn.counters().midstream_pickups, 1);
    assert_eq!(h.conn.counters().chunks_skipped, 2);
}

#[test]
fn topic_ids_resolve_through_metadata() {
    let id = [0x5a; 16];
    let unknown = [0x77; 16];
    let mut h = Harness::new();
    // Not yet learned: the destination is absent, the exchange partial.
    h.send(&fetch(13, 1, Err(unknown)));
    h.recv(&fetch_response(13, 1, Err(unknown), 0, 0, b""));
    assert_eq!(h.out[0].destination, None);
    assert!(h.out[0].partial);
    h.send(&metadata_request(12, 2));
    h.recv(&metadata_response(12, 2, &[("orders", id)]));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.conn.counters().topic_ids_learned, 1);
    // Learned on one connection, used on another.
    let mut g = Harness::new();
    g.send(&fetch(16, 1, Err(id)));
    g.recv(&fetch_response(16, 1, Err(id), 0, 0, b"r"));
    assert_eq!(g.out[0].destination.as_deref(), Some("orders"));
    assert!(!g.out[0].partial);
    assert_eq!(h.conn.counters().topic_ids_unknown, 1);
    // Metadata v10 (flexible) too.
    let id2 = [0x33; 16];
    h.send(&metadata_request(10, 3));
    h.recv(&metadata_response(
        10,
        3,
        &[("a", [0; 16]), ("payments", id2)],
    ));
    h.send(&fetch(13, 4, Err(id2)));
    h.recv(&fetch_response(13, 4, Err(id2), 0, 0, b""));
    assert_eq!(
        h.out.last().unwrap().destination.as_deref(),
        Some("payments")
    );
    assert!(topic_ids_len() <= TOPIC_IDS);
}

#[test]
fn topic_id_cache_is_bounded() {
    let mut c = TopicIdCache {
        map: HashMap::new(),
        tick: 0,
    };
    for i in 0..(TOPIC_IDS as u32 + 10) {
        let mut id = [0; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        c.learn(id, &format!("t{i}"));
        if i as usize == TOPIC_IDS - 1 {
            // Used recently: survives the evictions that follow.
            assert!(c.lookup(&[0; 16]).is_some());
        }
    }
    assert_eq!(c.map.len(), TOPIC_IDS);
    assert!(c.lookup(&[0; 16]).is_some());
    let mut one = [0; 16];
    one[3] = 1;
    assert!(c.lookup(&one).is_none());
}

#[test]
fn close_ends_pending_requests_without_response() {
    let mut h = Harness::new();
    h.send(&produce(8, 1, 1, "a"));
    h.send(&kp_metadata_v1());
    h.conn.close(999, &mut h.out);
    assert_eq!(h.out.len(), 1);
    assert!(h.out[0].no_response && !h.out[0].partial);
    assert_eq!(h.out[0].end_ns, 999);
    assert_eq!(h.conn.pending(), 0);
}

#[test]
fn a_selected_broker_sees_requests_inbound() {
    let req = produce(8, 1, 1, "t");
    assert_eq!(Connection::detect(Flow::Inbound, &req), Some(Flow::Inbound));
    let mut h = Harness::with(Flow::Inbound, true);
    h.send(&req);
    h.recv(&produce_response(8, 1, "t", 0));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].request_flow, Flow::Inbound);
}

#[test]
fn pending_is_bounded() {
    let mut h = Harness::new();
    for corr in 0..(MAX_PENDING as i32 + 5) {
        h.send(&produce(8, corr, 1, "t"));
    }
    assert_eq!(h.conn.pending(), MAX_PENDING);
    assert_eq!(h.conn.counters().untracked, 5);
}

#[test]
fn detection_is_strict() {
    for not in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"",
        b"\x00\x00",
        // Unknown api key 200.
        b"\x00\x00\x00\x20\x00\xc8\x00\x00\x00\x00\x00\x01\x00\x01x",
        // Version out of range for Produce.
        b"\x00\x00\x00\x20\x00\x00\x00\x63\x00\x00\x00\x01\x00\x01x",
        // Negative correlation id.
        b"\x00\x00\x00\x20\x00\x00\x00\x03\xff\x00\x00\x01\x00\x01x",
        // Client id not printable.
        b"\x00\x00\x00\x20\x00\x00\x00\x03\x00\x00\x00\x01\x00\x02\x01\x02",
        // Client id longer than the request.
        b"\x00\x00\x00\x0c\x00\x00\x00\x03\x00\x00\x00\x01\x00\x09abcdefghi",
    ] {
        assert_eq!(Connection::detect(Flow::Outbound, not), None, "{not:?}");
    }
    // A response first is not recognised as such (a Produce response can look like a
    // request, one reason mid-stream detection is left to requests).
    // A null client id is fine.
    let null_id = W::default().i16(18).i16(3).i32(1).i16(-1).i8(0).frame();
    assert!(Connection::detect(Flow::Outbound, &null_id).is_some());
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid: Vec<Vec<u8>> = vec![
        kp_produce_v3(),
        kp_fetch_v4(),
        produce_response(9, 1, "t", 3),
        fetch_response(13, 2, Err([1; 16]), 0, 0, b"r"),
        metadata_response(12, 3, &[("x", [2; 16])]),
    ];
    for round in 0..2000 {
        let mut conn = Connection::new(
            if round % 2 == 0 {
                Flow::Outbound
            } else {
                Flow::Inbound
            },
            round % 3 != 0,
        );
        let mut out = Vec::new();
        for i in 0..20u64 {
            let mut b = valid[(next() % valid.len() as u64) as usize].clone();
            // Mutate some bytes, cut, or replace entirely.
            for _ in 0..(next() % 4) {
                let at = (next() % b.len() as u64) as usize;
                b[at] = next() as u8;
            }
            if next() % 4 == 0 {
                b = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            let cut = (next() % (b.len() as u64 + 1)) as usize;
            let total = b.len() as u64 + if next() % 3 == 0 { next() % 5000 } else { 0 };
            let flow = if next() % 2 == 0 {
                Flow::Outbound
            } else {
                Flow::Inbound
            };
            let _ = Connection::detect(flow, &b[..cut]);
            conn.feed(flow, &b[..cut], total, i, &mut out);
            assert!(conn.pending() <= MAX_PENDING);
            assert!(conn.buffered_bytes() <= 2 * MAX_KEEP);
        }
        conn.close(100, &mut out);
        assert_eq!(conn.pending(), 0);
        for x in &out {
            assert!(x.start_ns <= x.end_ns);
            assert!(
                x.destination
                    .as_ref()
                    .is_none_or(|d| d.len() <= 4 * MAX_TOPIC_LEN)
            );
        }
    }
}

/// The capture replayed, each recv as one chunk, client side: exactly the exchanges the
/// clients made, from the bytes kafka-python and tansu really exchanged.
#[test]
fn kafka_python_and_tansu_replayed() {
    let capture = include_str!("tansu_capture.txt");
    let mut conns: std::collections::BTreeMap<u32, Harness> = Default::default();
    for line in capture.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(' ');
        let (Some(id), Some(dir), Some(hex)) = (f.next(), f.next(), f.next()) else {
            panic!("bad line {line}");
        };
        let h = conns
            .entry(id.parse().unwrap())
            .or_insert_with(Harness::new);
        let bytes = unhex(hex);
        if dir == "C" {
            assert!(h.conn.pending() > 0 || Connection::detect(Flow::Outbound, &bytes).is_some());
            h.send(&bytes);
        } else {
            h.recv(&bytes);
        }
    }
    let summary: Vec<(u32, &str, Option<String>, Option<i16>)> = conns
        .iter()
        .flat_map(|(id, h)| {
            assert_eq!(h.conn.pending(), 0, "connection {id}");
            assert_eq!(h.conn.counters().orphan_responses, 0);
            assert_eq!(h.conn.counters().desync, 0);
            h.out
                .iter()
                .map(|x| (*id, x.operation.name(), x.destination.clone(), x.error_code))
        })
        .collect();
    let t1 = || Some("t1".to_string());
    let nosuch = || Some("nosuch".to_string());
    assert_eq!(
        summary,
        vec![
            (4, "publish", t1(), None),
            (4, "publish", t1(), None),
            (4, "publish", t1(), None),
            (6, "process", t1(), None),
            // tansu accepts a Produce to a topic it does not know (error 0)...
            (7, "publish", nosuch(), None),
            // ... and its Metadata answers UNKNOWN_TOPIC_OR_PARTITION.
            (7, "metadata", nosuch(), Some(3)),
        ]
    );
    let producer = &conns[&4].out[0];
    assert_eq!(producer.client_id.as_deref(), Some("sonde-producer"));
    assert_eq!((producer.request_bytes, producer.response_bytes), (146, 54));
    assert_eq!(
        conns[&6].out[0].client_id.as_deref(),
        Some("sonde-consumer")
    );
}

#[test]
fn a_failed_metadata_request_is_an_exchange_a_successful_one_is_not() {
    let mut h = Harness::new();
    // Metadata v1 for `nosuch` (kafka-python's encoding), answered with error 3 by tansu.
    h.send(&unhex(
        "0000001f00030001000000020009736f6e64652d7261770000000100066e6f73756368",
    ));
    h.recv(&unhex(
        "0000003400000002000000010000006f00093132372e302e302e31000098b5ffff0000006f000000010003\
         00066e6f737563680000000000",
    ));
    assert_eq!(h.out.len(), 1);
    let x = &h.out[0];
    assert_eq!(x.operation, Operation::Metadata);
    assert_eq!(x.destination.as_deref(), Some("nosuch"));
    assert_eq!(x.error_code, Some(3));
    assert_eq!(h.conn.counters().metadata_errors, 1);
    // Flexible v12 with no error: nothing.
    h.send(&metadata_request(12, 3));
    h.recv(&metadata_response(12, 3, &[("t1", [9; 16])]));
    assert_eq!(h.out.len(), 1);
}

/// How tansu (and the Java broker) read: the 4-byte size, then the rest. The connection is
/// classified at the header (its size went by during classification), and every later
/// request is framed from its size chunk.
#[test]
fn a_broker_reading_sizes_apart() {
    let mut h = Harness::with(Flow::Inbound, true);
    let reqs: Vec<Vec<u8>> = (1..=3).map(|c| produce(7, c, 1, "t")).collect();
    // The first size went to classification: the tracker starts at the header.
    assert_eq!(Connection::detect(Flow::Inbound, &reqs[0][..4]), None);
    assert_eq!(
        Connection::detect(Flow::Inbound, &reqs[0][4..]),
        Some(Flow::Inbound)
    );
    // Nor is the broker's response taken for a request: it comes after.
    h.send(&reqs[0][4..]);
    h.recv(&produce_response(7, 1, "t", 0));
    for (i, r) in reqs.iter().enumerate().skip(1) {
        h.send(&r[..4]);
        h.send(&r[4..]);
        h.recv(&produce_response(7, i as i32 + 1, "t", 0));
    }
    assert_eq!(h.out.len(), 3);
    assert!(h.out.iter().all(|x| x.destination.as_deref() == Some("t")
        && !x.no_response
        && x.request_flow == Flow::Inbound));
    // The first request's span starts at its header, the others at their size.
    assert_eq!(h.out[1].request_bytes, reqs[1].len() as u64);
    assert_eq!(h.conn.counters().chunks_skipped, 0);
}

/// A client reading responses size first (the Java client), picked up mid-stream.
#[test]
fn a_client_reading_sizes_apart_mid_stream() {
    let mut h = Harness::with(Flow::Outbound, false);
    h.send(&produce(7, 5, 1, "t"));
    let r = produce_response(7, 5, "t", 0);
    h.recv(&r[..4]);
    h.recv(&r[4..]);
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].response_bytes, r.len() as u64);
}
