//! Connection-level tests: byte streams written by hand or recorded from `redis-server` 7.0
//! with `redis-benchmark`, `redis-cli` and a raw RESP2/RESP3 client (through a logging TCP
//! proxy), fed in chunks the way the kernel would deliver them.

use proptest::prelude::*;

use super::*;

const OUT: Flow = Flow::Outbound;
const IN: Flow = Flow::Inbound;

/// A multibulk command.
fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bulk(value: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

/// A client-side connection (this process writes the commands) and what it emitted.
struct Client {
    conn: Connection,
    out: Vec<DbExchange>,
    ts: u64,
}

impl Client {
    fn new() -> Client {
        Client::with(true)
    }

    fn with(fresh: bool) -> Client {
        Client {
            conn: Connection::new(OUT, fresh),
            out: Vec::new(),
            ts: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.ts += 10;
        self.ts
    }

    /// The client writes `bytes`, all captured.
    fn send(&mut self, bytes: &[u8]) -> u64 {
        self.write(bytes, bytes.len())
    }

    /// The client reads `bytes`, all captured.
    fn recv(&mut self, bytes: &[u8]) -> u64 {
        self.read(bytes, bytes.len())
    }

    /// A write of `bytes` of which only the first `captured` were captured.
    fn write(&mut self, bytes: &[u8], captured: usize) -> u64 {
        let ts = self.tick();
        let c = &bytes[..captured.min(bytes.len())];
        self.conn
            .feed(OUT, c, bytes.len() as u64, ts, &mut self.out);
        ts
    }

    fn read(&mut self, bytes: &[u8], captured: usize) -> u64 {
        let ts = self.tick();
        let c = &bytes[..captured.min(bytes.len())];
        self.conn.feed(IN, c, bytes.len() as u64, ts, &mut self.out);
        ts
    }

    fn close(&mut self) {
        let ts = self.tick();
        self.conn.close(ts, &mut self.out);
    }

    fn ops(&self) -> Vec<String> {
        self.out
            .iter()
            .map(|x| x.operation.clone().unwrap_or_else(|| "<none>".to_string()))
            .collect()
    }
}

fn check(x: &DbExchange) {
    assert_eq!(x.system, "redis");
    assert!(x.start_ns <= x.end_ns, "{x:?}");
    assert!(x.collection.is_none());
    if x.no_response {
        assert_eq!(x.response_bytes, 0);
        assert!(x.error_code.is_none());
    }
}

#[test]
fn single_set_and_get() {
    let mut c = Client::new();
    let set = cmd(&[b"SET", b"user:42", b"secret value"]);
    let t0 = c.send(&set);
    let t1 = c.recv(b"+OK\r\n");
    let get = cmd(&[b"get", b"user:42"]);
    let t2 = c.send(&get);
    let t3 = c.recv(&bulk(b"secret value"));
    assert_eq!(c.out.len(), 2);
    let (s, g) = (&c.out[0], &c.out[1]);
    assert_eq!(s.operation.as_deref(), Some("SET"));
    assert_eq!(s.query_text.as_deref(), Some("SET ? ?"));
    assert_eq!((s.start_ns, s.end_ns), (t0, t1));
    assert_eq!((s.request_bytes, s.response_bytes), (set.len() as u64, 5));
    assert_eq!(s.namespace.as_deref(), Some("0"));
    assert!(!s.partial && !s.no_response && s.error_code.is_none());
    assert_eq!(s.request_flow, OUT);
    assert_eq!(g.operation.as_deref(), Some("GET"));
    assert_eq!(g.query_text.as_deref(), Some("GET ?"));
    assert_eq!((g.start_ns, g.end_ns), (t2, t3));
    assert_eq!(g.response_bytes, 19);
    for x in &c.out {
        check(x);
        let text = format!("{x:?}");
        assert!(
            !text.contains("secret") && !text.contains("user:42"),
            "{text}"
        );
    }
    assert_eq!(c.conn.pending(), 0);
    assert_eq!(c.conn.counters().commands, 2);
    assert_eq!(c.conn.counters().replies, 2);
}

/// `redis-benchmark -P 16 -n 32 -c 1 -t get`, as recorded: 16 GETs in one write, 16
/// replies in one read, twice.
fn benchmark_get() -> (Vec<u8>, Vec<u8>) {
    let request = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n".repeat(16);
    let replies = b"$3\r\nVXK\r\n".repeat(16);
    assert_eq!((request.len(), replies.len()), (576, 144));
    (request, replies)
}

#[test]
fn pipeline_of_16_from_redis_benchmark() {
    let (request, replies) = benchmark_get();
    let mut c = Client::new();
    for _ in 0..2 {
        let t0 = c.send(&request);
        let t1 = c.recv(&replies);
        let batch = &c.out[c.out.len() - 16..];
        for x in batch {
            check(x);
            assert_eq!(x.operation.as_deref(), Some("GET"));
            assert_eq!(x.query_text.as_deref(), Some("GET ?"));
            assert_eq!((x.start_ns, x.end_ns), (t0, t1));
            assert_eq!((x.request_bytes, x.response_bytes), (36, 9));
            assert!(!x.no_response);
        }
    }
    assert_eq!(c.out.len(), 32);
    // The SET half: `*3 SET key VXK` x16, answered by 16 `+OK` in one read.
    let set = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nVXK\r\n".repeat(16);
    assert_eq!(set.len(), 720);
    c.send(&set);
    c.recv(&b"+OK\r\n".repeat(16));
    assert_eq!(c.out.len(), 48);
    assert!(
        c.out[32..]
            .iter()
            .all(|x| x.query_text.as_deref() == Some("SET ? ?"))
    );
    let n = c.conn.counters();
    assert_eq!((n.commands, n.replies, n.no_response), (48, 48, 0));
}

#[test]
fn pipelined_replies_end_at_their_own_chunk() {
    let mut c = Client::new();
    let mut request = cmd(&[b"PING"]);
    request.extend(cmd(&[b"GET", b"a"]));
    request.extend(cmd(&[b"GET", b"b"]));
    let t0 = c.send(&request);
    let t1 = c.recv(b"+PONG\r\n$1\r\nx\r\n$3\r\nab");
    let t2 = c.recv(b"c\r\n");
    let ends: Vec<_> = c.out.iter().map(|x| (x.start_ns, x.end_ns)).collect();
    assert_eq!(ends, [(t0, t1), (t0, t1), (t0, t2)]);
}

/// Feeds `request` then `replies`, each cut at the given points, every chunk of one direction
/// with the same timestamp.
fn feed_split(
    request: &[u8],
    replies: &[u8],
    cuts_a: &[usize],
    cuts_b: &[usize],
) -> Vec<DbExchange> {
    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    for (flow, bytes, cuts, ts) in [(OUT, request, cuts_a, 10), (IN, replies, cuts_b, 20)] {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let chunk = &bytes[w[0]..w[1]];
            conn.feed(flow, chunk, chunk.len() as u64, ts, &mut out);
        }
    }
    conn.close(30, &mut out);
    out
}

/// A pipeline with every reply type: RESP2, RESP3 (after HELLO 3), nested aggregates,
/// attributes, a push in the middle, an error.
fn mixed_pipeline() -> (Vec<u8>, Vec<u8>) {
    let mut request = Vec::new();
    for args in [
        &[&b"HELLO"[..], b"3"][..],
        &[b"SET", b"k", b"v"],
        &[b"GET", b"k"],
        &[b"HGETALL", b"h"],
        &[b"INCR", b"n"],
        &[b"LPUSH", b"k", b"x"],
        &[b"SMEMBERS", b"s"],
        &[b"XRANGE", b"st", b"-", b"+"],
        &[b"GET", b"missing"],
        &[b"OBJECT", b"FREQ", b"k"],
        &[b"ZSCORE", b"z", b"m"],
        &[b"EXISTS", b"k"],
        &[b"DEBUG", b"BIGNUM"],
        &[b"LCS", b"a", b"b"],
        &[b"FCALL", b"f", b"0"],
        &[b"PING"],
    ] {
        request.extend(cmd(args));
    }
    let replies = [
        &b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"[..],
        b"+OK\r\n",
        b"$1\r\nv\r\n",
        b"%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        b":7\r\n",
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        b"~2\r\n$1\r\nx\r\n$1\r\ny\r\n",
        b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
        b"_\r\n",
        b"|1\r\n+ttl\r\n:3\r\n:5\r\n",
        b",3.5\r\n",
        b"#t\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"+PONG\r\n",
    ]
    .concat();
    (request, replies)
}

#[test]
fn resp3_types_pushes_and_attributes() {
    let (request, replies) = mixed_pipeline();
    let out = feed_split(&request, &replies, &[], &[]);
    let got: Vec<_> = out
        .iter()
        .map(|x| {
            check(x);
            assert!(!x.no_response, "{x:?}");
            (x.operation.clone().unwrap(), x.error_code.clone())
        })
        .collect();
    let want = [
        ("HELLO", None),
        ("SET", None),
        ("GET", None),
        ("HGETALL", None),
        ("INCR", None),
        ("LPUSH", Some("WRONGTYPE")),
        ("SMEMBERS", None),
        ("XRANGE", None),
        ("GET", None),
        ("OBJECT FREQ", None),
        ("ZSCORE", None),
        ("EXISTS", None),
        ("DEBUG", None),
        ("LCS", None),
        ("FCALL", Some("SYNTAX")),
        ("PING", None),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(o, e)| (o.to_string(), e.map(str::to_string)))
        .collect();
    assert_eq!(got, want);
    // The attribute's bytes belong to the reply it describes.
    assert_eq!(out[9].response_bytes, 18);
    assert_eq!(out[9].query_text.as_deref(), Some("OBJECT FREQ ?"));
    assert_eq!(out[7].query_text.as_deref(), Some("XRANGE ? ? ?"));
}

proptest! {
    #[test]
    fn any_split_gives_the_same_exchanges(
        cuts_a in proptest::collection::vec(any::<usize>(), 0..40),
        cuts_b in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        for (request, replies) in [benchmark_get(), mixed_pipeline()] {
            let whole = feed_split(&request, &replies, &[], &[]);
            prop_assert_eq!(whole.len(), 16);
            prop_assert_eq!(feed_split(&request, &replies, &cuts_a, &cuts_b), whole);
        }
    }

    /// Arbitrary bytes, flows and truncation: no panic, bounded queue, consistent exchanges,
    /// nothing left after close.
    #[test]
    fn garbage_never_panics(
        chunks in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64), 0u64..300),
            0..40,
        ),
        fresh in any::<bool>(),
    ) {
        let mut conn = Connection::new(OUT, fresh);
        let mut out = Vec::new();
        let mut ts = 0;
        for (inbound, bytes, gap) in chunks {
            ts += 1;
            let flow = if inbound { IN } else { OUT };
            conn.feed(flow, &bytes, bytes.len() as u64 + gap, ts, &mut out);
            prop_assert!(conn.pending() <= MAX_PENDING);
        }
        conn.close(ts + 1, &mut out);
        prop_assert_eq!(conn.pending(), 0);
        for x in &out {
            check(x);
        }
    }

    /// RESP-shaped noise (commands and replies spliced at random points) with truncation.
    #[test]
    fn spliced_resp_never_panics(
        cuts in proptest::collection::vec((any::<usize>(), any::<bool>(), 0u64..40), 0..30),
    ) {
        let (request, replies) = mixed_pipeline();
        let mut conn = Connection::new(OUT, true);
        let mut out = Vec::new();
        for (i, (cut, inbound, gap)) in cuts.iter().enumerate() {
            let bytes = if *inbound { &replies } else { &request };
            let at = cut % bytes.len();
            let chunk = &bytes[at..(at + 37).min(bytes.len())];
            let flow = if *inbound { IN } else { OUT };
            conn.feed(flow, chunk, chunk.len() as u64 + gap, i as u64, &mut out);
        }
        conn.close(1000, &mut out);
        for x in &out {
            check(x);
        }
    }
}

/// The `redis-cli` session recorded (one command per write, one reply per read).
const CLI_SESSION: &[(&[u8], &[u8])] = &[
    (b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n", b"+OK\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", b"+OK\r\n"),
    (b"*1\r\n$5\r\nMULTI\r\n", b"+OK\r\n"),
    (b"*2\r\n$4\r\nINCR\r\n$2\r\nk2\r\n", b"+QUEUED\r\n"),
    (b"*3\r\n$5\r\nLPUSH\r\n$1\r\nk\r\n$1\r\nx\r\n", b"+QUEUED\r\n"),
    (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"+QUEUED\r\n"),
    (
        b"*1\r\n$4\r\nEXEC\r\n",
        b"*3\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n$1\r\nv\r\n",
    ),
    (
        b"*3\r\n$5\r\nLPUSH\r\n$1\r\nk\r\n$1\r\ny\r\n",
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    ),
    (
        b"*2\r\n$3\r\nFOO\r\n$3\r\nbar\r\n",
        b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n",
    ),
    (b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\n1\r\n", b":1\r\n"),
    (b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n", b"*2\r\n$1\r\nf\r\n$1\r\n1\r\n"),
    (
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
        b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
    ),
    (b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n", b"%1\r\n$1\r\nf\r\n$1\r\n1\r\n"),
    (b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$2\r\nme\r\n", b"+OK\r\n"),
];

#[test]
fn redis_cli_session_multi_exec_errors_select_hello() {
    let mut c = Client::new();
    for (command, reply) in CLI_SESSION {
        c.send(command);
        c.recv(reply);
    }
    c.close();
    let got: Vec<_> = c
        .out
        .iter()
        .map(|x| {
            check(x);
            assert!(!x.no_response);
            (
                x.query_text.clone().unwrap(),
                x.namespace.clone().unwrap(),
                x.error_code.clone(),
            )
        })
        .collect();
    let e = |s: &str| Some(s.to_string());
    let want = [
        // The SELECT ran in database 0; what follows in 2.
        ("SELECT ?", "0", None),
        ("SET ? ?", "2", None),
        ("MULTI", "2", None),
        // Queued commands end at their QUEUED; EXEC is its own exchange, and a failure
        // inside its results is not its status.
        ("INCR ?", "2", None),
        ("LPUSH ? ?", "2", None),
        ("GET ?", "2", None),
        ("EXEC", "2", None),
        ("LPUSH ? ?", "2", e("WRONGTYPE")),
        ("FOO ?", "2", e("ERR")),
        ("HSET ? ? ?", "2", None),
        ("HGETALL ?", "2", None),
        ("HELLO ?", "2", None),
        ("HGETALL ?", "2", None),
        ("CLIENT SETNAME ?", "2", None),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(q, n, e)| (q.to_string(), n.to_string(), e.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(c.out[13].operation.as_deref(), Some("CLIENT SETNAME"));
    assert_eq!(c.out[6].response_bytes, 83);
    assert!(c.conn.resp3);
}

#[test]
fn exec_abort_and_discard() {
    let mut c = Client::new();
    for (command, reply) in [
        (cmd(&[b"MULTI"]), &b"+OK\r\n"[..]),
        (
            cmd(&[b"NOPE"]),
            b"-ERR unknown command 'NOPE', with args beginning with: \r\n",
        ),
        (
            cmd(&[b"EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ),
        (cmd(&[b"WATCH", b"k"]), b"+OK\r\n"),
        (cmd(&[b"MULTI"]), b"+OK\r\n"),
        (cmd(&[b"INCR", b"k"]), b"+QUEUED\r\n"),
        (cmd(&[b"EXEC"]), b"*-1\r\n"),
    ] {
        c.send(&command);
        c.recv(reply);
    }
    let codes: Vec<_> = c.out.iter().map(|x| x.error_code.clone()).collect();
    let e = |s: &str| Some(s.to_string());
    assert_eq!(
        codes,
        [None, e("ERR"), e("EXECABORT"), None, None, None, None]
    );
}

#[test]
fn select_inside_a_transaction_takes_effect_at_exec() {
    let mut c = Client::new();
    for (command, reply) in [
        (cmd(&[b"MULTI"]), &b"+OK\r\n"[..]),
        (cmd(&[b"SELECT", b"5"]), b"+QUEUED\r\n"),
        (cmd(&[b"GET", b"k"]), b"+QUEUED\r\n"),
        (cmd(&[b"EXEC"]), b"*2\r\n+OK\r\n$-1\r\n"),
        (cmd(&[b"GET", b"k"]), b"$-1\r\n"),
        (cmd(&[b"MULTI"]), b"+OK\r\n"),
        (cmd(&[b"SELECT", b"99"]), b"+QUEUED\r\n"),
        (cmd(&[b"EXEC"]), b"*1\r\n-ERR DB index is out of range\r\n"),
        (cmd(&[b"GET", b"k"]), b"$-1\r\n"),
    ] {
        c.send(&command);
        c.recv(reply);
    }
    let ns: Vec<_> = c.out.iter().map(|x| x.namespace.as_deref()).collect();
    let five = Some("5");
    assert_eq!(
        ns,
        [
            Some("0"),
            Some("0"),
            Some("0"),
            Some("0"),
            five,
            five,
            five,
            five,
            None
        ]
    );
    // A database that may or may not have changed is unknown, and says so.
    assert!(c.out[8].partial);
}

#[test]
fn select_on_a_connection_picked_up_mid_stream() {
    let mut c = Client::with(false);
    c.send(&cmd(&[b"GET", b"k"]));
    c.recv(b"$-1\r\n");
    c.send(&cmd(&[b"SELECT", b"3"]));
    c.recv(b"+OK\r\n");
    c.send(&cmd(&[b"SELECT", b"x"]));
    c.recv(b"-ERR value is not an integer or out of range\r\n");
    c.send(&cmd(&[b"GET", b"k"]));
    c.recv(b"$-1\r\n");
    let got: Vec<_> = c
        .out
        .iter()
        .map(|x| (x.namespace.as_deref(), x.partial))
        .collect();
    assert_eq!(
        got,
        [
            (None, true),
            (None, true),
            (Some("3"), false),
            (Some("3"), false)
        ]
    );
    assert!(c.out.iter().all(|x| !x.no_response));
    assert_eq!(c.conn.counters().reply_resyncs, 1);
    assert_eq!(c.conn.counters().request_resyncs, 1);
}

#[test]
fn mid_stream_pickup_skips_an_old_reply_tail_and_continuation() {
    let mut c = Client::with(false);
    // The end of a reply and of a command that started before the capture did.
    c.recv(b"lue\r\n$3\r\nabc\r\n");
    c.send(b"ue-of-a-set\r\n");
    assert!(c.out.is_empty());
    c.send(&cmd(&[b"GET", b"k"]));
    c.recv(b"$1\r\nv\r\n");
    assert_eq!(c.ops(), ["GET"]);
    assert!(!c.out[0].no_response && c.out[0].partial);
}

/// Pub/sub as recorded with a raw RESP2 client: SUBSCRIBE ch1 ch2, a message, PING in
/// subscribed mode, UNSUBSCRIBE (all), then normal commands, inline ones included.
#[test]
fn resp2_pubsub_recorded() {
    let mut c = Client::new();
    let t0 = c.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\nch1\r\n$3\r\nch2\r\n");
    let t1 = c.recv(
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nch2\r\n:2\r\n",
    );
    c.recv(b"*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n");
    c.send(b"*1\r\n$4\r\nPING\r\n");
    c.recv(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    c.send(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n");
    c.recv(b"*3\r\n$11\r\nunsubscribe\r\n$3\r\nch2\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$3\r\nch1\r\n:0\r\n");
    c.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    c.recv(b"$-1\r\n");
    c.send(b"PING\r\nSET   k  \"a b\"\r\n");
    c.recv(b"+PONG\r\n+OK\r\n");
    assert_eq!(
        c.ops(),
        ["SUBSCRIBE", "PING", "UNSUBSCRIBE", "GET", "PING", "SET"]
    );
    assert_eq!((c.out[0].start_ns, c.out[0].end_ns), (t0, t1));
    assert_eq!(c.out[0].query_text.as_deref(), Some("SUBSCRIBE ? ?"));
    assert_eq!(c.out[5].query_text.as_deref(), Some("SET ? ?"));
    assert!(
        c.out
            .iter()
            .all(|x| !x.no_response && x.error_code.is_none())
    );
    let n = c.conn.counters();
    // The second confirmation of each, and the message.
    assert_eq!(n.pushes, 3);
    assert_eq!((n.inline_commands, n.orphan_replies), (2, 0));
    assert!(!c.conn.pubsub);
}

/// The same with RESP3 (HELLO 3): confirmations and messages are pushes, and any command may
/// be sent while subscribed.
#[test]
fn resp3_pubsub_recorded() {
    let mut c = Client::new();
    c.send(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
    c.recv(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:10\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
    c.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\nch1\r\n$3\r\nch2\r\n");
    c.recv(
        b">3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$3\r\nch2\r\n:2\r\n",
    );
    c.recv(b">3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n");
    c.send(b"*1\r\n$4\r\nPING\r\n");
    c.recv(b"+PONG\r\n");
    let t0 = c.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    // A message between the command and its reply.
    c.recv(b">3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n");
    let t1 = c.recv(b"$3\r\na b\r\n");
    c.send(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n");
    c.recv(b">3\r\n$11\r\nunsubscribe\r\n$3\r\nch2\r\n:1\r\n>3\r\n$11\r\nunsubscribe\r\n$3\r\nch1\r\n:0\r\n");
    c.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    c.recv(b"$3\r\na b\r\n");
    c.send(b"PING\r\nSET   k  \"a b\"\r\n");
    c.recv(b"+PONG\r\n+OK\r\n");
    assert_eq!(
        c.ops(),
        [
            "HELLO",
            "SUBSCRIBE",
            "PING",
            "GET",
            "UNSUBSCRIBE",
            "GET",
            "PING",
            "SET"
        ]
    );
    assert_eq!((c.out[3].start_ns, c.out[3].end_ns), (t0, t1));
    assert_eq!(c.out[3].response_bytes, 9);
    assert!(c.out.iter().all(|x| !x.no_response));
    assert_eq!(c.conn.counters().pushes, 4);
}

#[test]
fn subscribe_confirmations_of_two_commands_are_not_mixed() {
    let mut c = Client::new();
    c.send(&[cmd(&[b"SUBSCRIBE", b"a", b"b"]), cmd(&[b"SUBSCRIBE", b"c"])].concat());
    let t1 = c.recv(
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    let t2 = c.recv(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:3\r\n");
    let ends: Vec<_> = c.out.iter().map(|x| x.end_ns).collect();
    assert_eq!(ends, [t1, t2]);
}

#[test]
fn inline_commands() {
    let mut c = Client::new();
    c.send(b"PING\r\n\r\nset k 'it''s'\r\nGET \"k\\x41\"\nECHO \"unbalanced\r\n");
    c.recv(b"+PONG\r\n-ERR Protocol error: unbalanced quotes in request\r\n");
    // The line `set k 'it''s'` has a closing quote not followed by a space: unbalanced for
    // Redis too. Each line is one command; the empty line is none.
    assert_eq!(c.conn.counters().inline_commands, 4);
    assert_eq!(c.out.len(), 2);
    assert_eq!(c.out[0].query_text.as_deref(), Some("PING"));
    assert_eq!(c.out[1].operation, None);
    assert_eq!(c.out[1].error_code.as_deref(), Some("ERR"));
    c.recv(b"$-1\r\n-ERR Protocol error: unbalanced quotes in request\r\n");
    assert_eq!(c.out[2].query_text.as_deref(), Some("GET ?"));
    assert_eq!(c.out[3].operation, None);
    let mut words = [Word::ABSENT; 3];
    assert_eq!(
        split_inline(b"SET  \"a b\" 'c d' e\\x41", &mut words),
        Some(4)
    );
    assert_eq!(words[1].get(), Some(&b"a b"[..]));
    assert_eq!(split_inline(b"\"a\\x41\\n\"", &mut words), Some(1));
    assert_eq!(words[0].get(), Some(&b"aA\n"[..]));
    assert_eq!(split_inline(b"'a\\'b'", &mut words), Some(1));
    assert_eq!(words[0].get(), Some(&b"a'b"[..]));
    assert_eq!(split_inline(b"\"open", &mut words), None);
    assert_eq!(split_inline(b"  \t ", &mut words), Some(0));
    assert_eq!(split_inline(b"GET k\0ignored", &mut words), Some(2));
}

#[test]
fn error_codes() {
    let mut c = Client::new();
    for reply in [
        &b"-ERR unknown command\r\n"[..],
        b"-WRONGTYPE Operation against a key\r\n",
        b"-NOSCRIPT\r\n",
        b"-my script said secret-value\r\n",
        b"-\r\n",
        b"!10\r\nBUSY a b c\r\n",
        b"-AVERYLONGERRORCODEWITHOUTSPACESTHATGOESONANDON\r\n",
    ] {
        c.send(&cmd(&[b"EVAL", b"x", b"0"]));
        c.recv(reply);
    }
    let codes: Vec<_> = c
        .out
        .iter()
        .map(|x| x.error_code.clone().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["ERR", "WRONGTYPE", "NOSCRIPT", "ERR", "ERR", "BUSY", "ERR"]
    );
}

#[test]
fn a_100_kb_set_with_2_kib_captured_is_exact() {
    let mut c = Client::new();
    let value = vec![b'x'; 100_000];
    let set = cmd(&[b"SET", b"big", &value]);
    let t0 = c.write(&set, 2048);
    let t1 = c.recv(b"+OK\r\n");
    // The 100 KB reply of a GET, read in 16 KiB reads of which 2 KiB were captured each.
    let get = cmd(&[b"GET", b"big"]);
    let t2 = c.send(&get);
    let reply = bulk(&value);
    let mut t3 = 0;
    for piece in reply.chunks(16 * 1024) {
        t3 = c.read(piece, 2048);
    }
    c.send(&cmd(&[b"PING"]));
    c.recv(b"+PONG\r\n");
    assert_eq!(c.ops(), ["SET", "GET", "PING"]);
    let (s, g) = (&c.out[0], &c.out[1]);
    assert_eq!(
        (s.start_ns, s.end_ns, s.request_bytes),
        (t0, t1, set.len() as u64)
    );
    assert_eq!(
        (g.start_ns, g.end_ns, g.response_bytes),
        (t2, t3, reply.len() as u64)
    );
    let n = c.conn.counters();
    assert_eq!((n.request_desync, n.reply_desync, n.no_response), (0, 0, 0));
    assert!(n.uncaptured_bytes_skipped > 180_000);
}

#[test]
fn a_command_name_not_captured_is_unknown() {
    let mut c = Client::new();
    let ping = cmd(&[b"PING"]);
    // The capture ends inside the name.
    c.write(&ping, 10);
    c.recv(b"+PONG\r\n");
    assert_eq!(c.out[0].operation, None);
    assert_eq!(c.out[0].query_text, None);
    assert!(!c.out[0].no_response);
    assert_eq!(c.conn.counters().unknown_operations, 1);
}

#[test]
fn request_desync_keeps_the_commands_read_and_never_misattributes() {
    let mut c = Client::new();
    let value = vec![b'v'; 1000];
    // redis-benchmark -P 16 -d 1000 shape: 16 SETs in one 16 KB write, 2 KiB captured.
    let batch: Vec<u8> = (0..16)
        .flat_map(|i| cmd(&[b"SET", format!("key:{i:012}").as_bytes(), &value]))
        .collect();
    let replies = b"+OK\r\n".repeat(16);
    for _ in 0..3 {
        c.write(&batch, 2048);
        c.recv(&replies);
    }
    c.close();
    for x in &c.out {
        check(x);
    }
    // In each batch the first two commands were read (the third's header is past the
    // capture) and answered; the rest were never seen.
    let answered = c.out.iter().filter(|x| !x.no_response).count();
    assert_eq!(answered, 6);
    assert_eq!(c.out.len(), 6);
    let n = c.conn.counters();
    assert_eq!(
        (n.request_desync, n.request_resyncs, n.reply_resyncs),
        (3, 2, 2)
    );
}

#[test]
fn reply_desync_then_quiet_point() {
    let mut c = Client::new();
    // `COMMAND DOCS` as redis-cli sends it first: a 170 KB nested reply read in 64 KiB
    // reads, 2 KiB captured each: an element header falls past the capture.
    c.send(b"*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n");
    let mut docs = b"*480\r\n".to_vec();
    for i in 0..240 {
        docs.extend(bulk(format!("command{i}").as_bytes()));
        docs.extend(b"*4\r\n$7\r\nsummary\r\n");
        docs.extend(bulk(&vec![b's'; 600]));
        docs.extend(b"$5\r\nsince\r\n$5\r\n6.0.0\r\n");
    }
    for piece in docs.chunks(65536) {
        c.read(piece, 2048);
    }
    assert_eq!(c.out.len(), 1);
    assert!(c.out[0].no_response);
    // redis-cli then waits for the user: the next command is a quiet point.
    c.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n");
    c.recv(b"+OK\r\n");
    c.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    c.recv(b"$-1\r\n");
    assert_eq!(c.ops(), ["COMMAND DOCS", "SELECT", "GET"]);
    assert!(!c.out[1].no_response && !c.out[2].no_response);
    assert_eq!(c.out[2].namespace.as_deref(), Some("2"));
    let n = c.conn.counters();
    assert_eq!((n.reply_desync, n.reply_resyncs), (1, 1));
}

#[test]
fn no_reply_resync_once_the_client_was_seen_pipelining_asynchronously() {
    let mut c = Client::new();
    c.send(&cmd(&[b"GET", b"a"]));
    // A second command while the first is unanswered.
    c.send(&cmd(&[b"GET", b"b"]));
    c.recv(b"$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(c.out.len(), 2);
    c.send(&cmd(&[b"LRANGE", b"l", b"0", b"-1"]));
    // A reply whose element header was not captured.
    let reply = [
        b"*3\r\n".to_vec(),
        bulk(&[b'x'; 3000]),
        bulk(b"y"),
        bulk(b"z"),
    ]
    .concat();
    c.read(&reply, 2048);
    // The tail of that reply may still come after the next command: never attribute it.
    c.send(&cmd(&[b"GET", b"c"]));
    c.recv(b"$1\r\n3\r\n");
    c.close();
    assert!(c.out[2..].iter().all(|x| x.no_response), "{:?}", c.out);
    assert_eq!(c.conn.counters().reply_resyncs, 0);
}

#[test]
fn queue_overflow_skips_the_dropped_replies() {
    let mut c = Client::new();
    let n = MAX_PENDING + 5;
    let request: Vec<u8> = (0..n).flat_map(|_| cmd(&[b"GET", b"k"])).collect();
    c.send(&request);
    assert_eq!(c.out.len(), 5);
    assert!(c.out.iter().all(|x| x.no_response));
    // Reply i has i+1 bytes of value: each exchange must get its own.
    let replies: Vec<u8> = (0..n).flat_map(|i| bulk(&vec![b'v'; i + 1])).collect();
    c.recv(&replies);
    assert_eq!(c.out.len(), n);
    for (i, x) in c.out.iter().enumerate().skip(5) {
        assert_eq!(x.response_bytes, bulk(&vec![b'v'; i + 1]).len() as u64);
    }
    assert_eq!(c.conn.counters().queue_overflow, 5);
    assert_eq!(c.conn.pending(), 0);
}

#[test]
fn client_reply_off_skip_on() {
    let mut c = Client::new();
    let request = [
        cmd(&[b"CLIENT", b"REPLY", b"OFF"]),
        cmd(&[b"SET", b"a", b"1"]),
        cmd(&[b"CLIENT", b"REPLY", b"ON"]),
        cmd(&[b"CLIENT", b"REPLY", b"SKIP"]),
        cmd(&[b"SET", b"b", b"2"]),
        cmd(&[b"GET", b"a"]),
    ]
    .concat();
    c.send(&request);
    c.recv(b"+OK\r\n$1\r\n1\r\n");
    let got: Vec<_> = c
        .out
        .iter()
        .map(|x| (x.query_text.clone().unwrap(), x.no_response))
        .collect();
    let want = [
        ("CLIENT REPLY ?", true),
        ("SET ? ?", true),
        ("CLIENT REPLY ?", true),
        ("SET ? ?", true),
        ("CLIENT REPLY ?", false),
        ("GET ?", false),
    ];
    let want: Vec<_> = want.iter().map(|(q, n)| (q.to_string(), *n)).collect();
    assert_eq!(got, want);
    assert_eq!(c.conn.counters().replies_off, 4);
}

#[test]
fn monitor_feed_is_skipped() {
    let mut c = Client::new();
    c.send(&cmd(&[b"MONITOR"]));
    c.recv(b"+OK\r\n");
    c.recv(b"+1700000000.000000 [0 127.0.0.1:5000] \"GET\" \"secret\"\r\n");
    c.close();
    assert_eq!(c.out.len(), 1);
    assert_eq!(c.conn.counters().pushes, 1);
}

#[test]
fn reset_returns_to_database_0() {
    let mut c = Client::with(false);
    c.send(&cmd(&[b"RESET"]));
    c.recv(b"+RESET\r\n");
    c.send(&cmd(&[b"GET", b"k"]));
    c.recv(b"$-1\r\n");
    assert_eq!(c.out[1].namespace.as_deref(), Some("0"));
    assert!(!c.out[1].partial);
}

#[test]
fn limits_make_a_desync() {
    let cases: [(&[u8], &[u8]); 6] = [
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$536870913\r\n"),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"*1048577\r\n"),
        (
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            &[b"*1\r\n".repeat(17), b":1\r\n".to_vec()].concat(),
        ),
        (b"*1048577\r\n", b""),
        (b"*2\r\n$536870913\r\n", b""),
        (&[b"GET ".to_vec(), vec![b'k'; MAX_LINE]].concat(), b""),
    ];
    for (request, reply) in cases {
        let mut c = Client::new();
        c.send(request);
        if !reply.is_empty() {
            c.recv(reply);
        }
        c.close();
        let n = c.conn.counters();
        assert_eq!(
            n.over_limit,
            1,
            "{:?}",
            String::from_utf8_lossy(&request[..20])
        );
        assert_eq!(n.request_desync + n.reply_desync, 1);
        assert!(c.out.iter().all(|x| x.no_response));
    }
    // Sixteen levels are fine.
    let mut c = Client::new();
    c.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    c.recv(&[b"*1\r\n".repeat(16), b":1\r\n".to_vec()].concat());
    assert!(!c.out[0].no_response);
}

#[test]
fn many_arguments_are_bounded_in_the_query_text() {
    let mut c = Client::new();
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    args.extend(std::iter::repeat_n(&b"k"[..], 1000));
    c.send(&cmd(&args));
    c.recv(b"+OK\r\n");
    let q = c.out[0].query_text.clone().unwrap();
    assert!(q.starts_with("MSET ? ?") && q.ends_with(" ? ..."), "{q}");
    assert_eq!(q.matches('?').count(), MAX_PLACEHOLDERS as usize);
}

#[test]
fn detect() {
    assert_eq!(Connection::detect(OUT, b"*1\r\n$4\r\nPING\r\n"), Some(OUT));
    assert_eq!(
        Connection::detect(IN, b"*2\r\n$8\r\nJSON.GET\r\n$1\r\nk\r\n"),
        Some(IN)
    );
    assert_eq!(Connection::detect(OUT, b"PING\r\n"), Some(OUT));
    assert_eq!(Connection::detect(OUT, b"ping\n"), Some(OUT));
    assert_eq!(Connection::detect(OUT, b"SET k v\r\n"), Some(OUT));
    for not in [
        &b"+OK\r\n"[..],
        b"-ERR x\r\n",
        b"$3\r\nabc\r\n",
        b":1\r\n",
        b"*1\r\n$4\r\n1234\r\n",
        b"*1\r\n$4\r\nPI",
        b"*0\r\n",
        b"GET / HTTP/1.1\r\n",
        b"HELLOWORLD\r\n",
        b"SSH-2.0-OpenSSH\r\n",
        b"",
        b"*",
    ] {
        assert_eq!(
            Connection::detect(OUT, not),
            None,
            "{:?}",
            String::from_utf8_lossy(not)
        );
    }
}

#[test]
fn server_side_connection() {
    // A selected redis-server: commands arrive Inbound.
    let mut conn = Connection::new(IN, true);
    let mut out = Vec::new();
    conn.feed(IN, b"*1\r\n$4\r\nPING\r\n", 14, 5, &mut out);
    conn.feed(OUT, b"+PONG\r\n", 7, 6, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_flow, IN);
    assert_eq!((out[0].start_ns, out[0].end_ns), (5, 6));
}

#[test]
fn close_ends_pending_commands() {
    let mut c = Client::new();
    c.send(&cmd(&[b"BLPOP", b"q", b"0"]));
    c.close();
    assert_eq!(c.out.len(), 1);
    assert!(c.out[0].no_response);
    assert_eq!(c.out[0].end_ns, c.ts);
    let mut total = Counters::default();
    total.add(c.conn.counters());
    total.add(c.conn.counters());
    assert_eq!(total.no_response, 2);
}
