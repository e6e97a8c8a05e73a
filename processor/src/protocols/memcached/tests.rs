//! Connection-level tests: byte streams written by hand after the ones `memcached` 1.6.18
//! answered (recorded with a raw socket client: every reply below is what it sent), fed in
//! chunks the way the kernel would deliver them.

use proptest::prelude::*;

use super::*;

const OUT: Flow = Flow::Outbound;
const IN: Flow = Flow::Inbound;

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

    fn send(&mut self, bytes: &[u8]) -> u64 {
        self.write(bytes, bytes.len())
    }

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

    /// (operation, query text, error code, no_response) of every exchange.
    fn summary(&self) -> Vec<(String, String, String, bool)> {
        self.out
            .iter()
            .map(|x| {
                (
                    x.operation.clone().unwrap_or_else(|| "<none>".into()),
                    x.query_text.clone().unwrap_or_else(|| "<none>".into()),
                    x.error_code.clone().unwrap_or_default(),
                    x.no_response,
                )
            })
            .collect()
    }

    fn ops(&self) -> Vec<String> {
        self.summary().into_iter().map(|s| s.0).collect()
    }
}

fn row(op: &str, q: &str, err: &str, no_response: bool) -> (String, String, String, bool) {
    (op.into(), q.into(), err.into(), no_response)
}

fn check(x: &DbExchange) {
    assert_eq!(x.system, "memcached");
    assert!(x.start_ns <= x.end_ns, "{x:?}");
    assert!(x.collection.is_none() && x.namespace.is_none() && x.raw_query_text.is_none());
    assert!(!x.partial);
    if x.no_response {
        assert_eq!(x.response_bytes, 0);
        assert!(x.error_code.is_none());
    }
    match (&x.operation, &x.query_text) {
        (Some(op), Some(q)) => {
            let rest = q.strip_prefix(op.as_str()).expect("starts with the op");
            let rest = rest
                .strip_suffix(" ...")
                .or_else(|| rest.strip_suffix(" noreply"))
                .unwrap_or(rest);
            assert!(rest.as_bytes().chunks(2).all(|p| p == b" ?"), "{x:?}");
        }
        (None, None) => {}
        _ => panic!("{x:?}"),
    }
    if let Some(code) = &x.error_code {
        assert!(["ERROR", "CLIENT_ERROR", "SERVER_ERROR"].contains(&code.as_str()));
    }
}

fn no_secrets(c: &Client, secrets: &[&str]) {
    for x in &c.out {
        check(x);
        let text = format!("{x:?}");
        for s in secrets {
            assert!(!text.contains(s), "{s} in {text}");
        }
    }
}

#[test]
fn set_then_get() {
    let mut c = Client::new();
    let set = b"set user:42 0 0 12\r\nsecret value\r\n";
    let t0 = c.send(set);
    let t1 = c.recv(b"STORED\r\n");
    let t2 = c.send(b"get user:42\r\n");
    let reply = b"VALUE user:42 0 12\r\nsecret value\r\nEND\r\n";
    let t3 = c.recv(reply);
    assert_eq!(
        c.summary(),
        [
            row("set", "set ? ? ? ?", "", false),
            row("get", "get ?", "", false)
        ]
    );
    let (s, g) = (&c.out[0], &c.out[1]);
    assert_eq!((s.start_ns, s.end_ns), (t0, t1));
    assert_eq!((s.request_bytes, s.response_bytes), (set.len() as u64, 8));
    assert_eq!(s.request_flow, OUT);
    assert_eq!((g.start_ns, g.end_ns), (t2, t3));
    assert_eq!(
        (g.request_bytes, g.response_bytes),
        (13, reply.len() as u64)
    );
    no_secrets(&c, &["secret", "user:42"]);
    let n = c.conn.counters();
    assert_eq!(
        (n.commands, n.replies, n.values, n.no_response),
        (2, 2, 1, 0)
    );
    assert_eq!(c.conn.pending(), 0);
}

/// Every classic reply kind, as memcached 1.6.18 sent them to one pipelined write.
#[test]
fn every_reply_kind() {
    let mut c = Client::new();
    c.send(
        b"set n 0 0 1\r\n5\r\nadd n 0 0 1\r\n6\r\nreplace zz 0 0 1\r\n7\r\n\
          cas n 0 0 1 99\r\n8\r\nappend n 0 0 1\r\n0\r\nprepend n 0 0 1\r\n1\r\n\
          incr n 3\r\ndecr n 100\r\nincr zz 1\r\ntouch n 10\r\ntouch zz 10\r\n\
          delete n\r\ndelete n\r\nflush_all\r\nverbosity 1\r\nversion\r\n\
          gets n\r\ngat 100 a b\r\ngats 100 a\r\nincr s 1\r\nbogus\r\n",
    );
    c.recv(
        b"STORED\r\nNOT_STORED\r\nNOT_STORED\r\nEXISTS\r\nSTORED\r\nSTORED\r\n\
          8\r\n0\r\nNOT_FOUND\r\nTOUCHED\r\nNOT_FOUND\r\n\
          DELETED\r\nNOT_FOUND\r\nOK\r\nOK\r\nVERSION 1.6.18\r\n\
          VALUE n 0 3 12\r\n150\r\nEND\r\nVALUE a 0 2\r\nhi\r\nEND\r\nEND\r\n\
          CLIENT_ERROR cannot increment or decrement non-numeric value\r\nERROR\r\n",
    );
    assert_eq!(
        c.summary(),
        [
            row("set", "set ? ? ? ?", "", false),
            row("add", "add ? ? ? ?", "", false),
            row("replace", "replace ? ? ? ?", "", false),
            row("cas", "cas ? ? ? ? ?", "", false),
            row("append", "append ? ? ? ?", "", false),
            row("prepend", "prepend ? ? ? ?", "", false),
            row("incr", "incr ? ?", "", false),
            row("decr", "decr ? ?", "", false),
            row("incr", "incr ? ?", "", false),
            row("touch", "touch ? ?", "", false),
            row("touch", "touch ? ?", "", false),
            row("delete", "delete ?", "", false),
            row("delete", "delete ?", "", false),
            row("flush_all", "flush_all", "", false),
            row("verbosity", "verbosity ?", "", false),
            row("version", "version", "", false),
            row("gets", "gets ?", "", false),
            row("gat", "gat ? ? ?", "", false),
            row("gats", "gats ? ?", "", false),
            row("incr", "incr ? ?", "CLIENT_ERROR", false),
            row("<none>", "<none>", "ERROR", false),
        ]
    );
    let n = c.conn.counters();
    assert_eq!((n.commands, n.replies, n.unknown_commands), (21, 21, 1));
    assert_eq!((n.reply_desync, n.request_desync, n.no_response), (0, 0, 0));
    no_secrets(&c, &["150", "zz"]);
}

#[test]
fn server_error_and_stats() {
    let mut c = Client::new();
    c.send(b"set big 0 0 2000000\r\n");
    // The data block is skipped by count, most of it uncaptured.
    let data = vec![b'x'; 2_000_002];
    c.write(&data, 100);
    c.recv(b"SERVER_ERROR object too large for cache\r\n");
    c.send(b"stats\r\n");
    let t = c.recv(b"STAT pid 1\r\nSTAT uptime 2\r\n");
    assert_eq!(c.out.len(), 1);
    let t2 = c.recv(b"STAT version 1.6.18\r\nEND\r\n");
    c.send(b"stats reset\r\nstats detail on\r\n");
    c.recv(b"RESET\r\nOK\r\n");
    assert_eq!(
        c.summary(),
        [
            row("set", "set ? ? ? ?", "SERVER_ERROR", false),
            row("stats", "stats", "", false),
            row("stats", "stats ?", "", false),
            row("stats", "stats ? ?", "", false),
        ]
    );
    assert_eq!(c.out[0].request_bytes, 21 + 2_000_002);
    assert!(t < t2 && c.out[1].end_ns == t2);
    assert_eq!(c.out[1].response_bytes, 27 + 26);
    assert_eq!(c.conn.counters().uncaptured_bytes_skipped, 2_000_002 - 100);
}

#[test]
fn noreply_commands_are_emitted_at_once_without_error() {
    let mut c = Client::new();
    let t0 = c.send(b"set a 0 0 5 noreply\r\nhello\r\ndelete b noreply\r\nincr c 1 noreply\r\n");
    assert_eq!(
        c.summary(),
        [
            row("set", "set ? ? ? ? noreply", "", false),
            row("delete", "delete ? noreply", "", false),
            row("incr", "incr ? ? noreply", "", false),
        ]
    );
    assert!(c.out.iter().all(|x| x.start_ns == t0 && x.end_ns == t0));
    assert!(c.out.iter().all(|x| x.response_bytes == 0));
    assert_eq!(c.conn.pending(), 0);
    // A get after them gets its own reply.
    c.send(b"set d 0 0 1 noreply\r\nx\r\nget a\r\n");
    c.recv(b"VALUE a 0 5\r\nhello\r\nEND\r\n");
    assert_eq!(c.ops(), ["set", "delete", "incr", "set", "get"]);
    assert!(!c.out[4].no_response && c.out[4].response_bytes == 25);
    // A noreply storage command whose line is malformed reads no data: memcached answers
    // the data line as a command (`ERROR`), not the set.
    c.send(b"set k 0 0 x noreply\r\nhello\r\nversion\r\n");
    c.recv(b"ERROR\r\nVERSION 1.6.18\r\n");
    assert_eq!(
        c.summary()[5..],
        [
            row("set", "set ? ? ? ? noreply", "", false),
            row("<none>", "<none>", "ERROR", false),
            row("version", "version", "", false),
        ]
    );
    let n = c.conn.counters();
    assert_eq!((n.noreply, n.no_response, n.reply_desync), (5, 0, 0));
    no_secrets(&c, &["hello"]);
}

#[test]
fn quit_expects_nothing() {
    let mut c = Client::new();
    c.send(b"quit\r\n");
    c.close();
    assert_eq!(c.summary(), [row("quit", "quit", "", false)]);
}

#[test]
fn multi_get_is_one_exchange_ending_at_end() {
    let mut c = Client::new();
    let t0 = c.send(b"get k nokey k2\r\n");
    c.recv(b"VALUE k 0 5\r\nhello\r\n");
    c.recv(b"VALUE k2 3 2\r\nhi\r\n");
    assert!(c.out.is_empty());
    let t1 = c.recv(b"END\r\n");
    assert_eq!(c.summary(), [row("get", "get ? ? ?", "", false)]);
    assert_eq!((c.out[0].start_ns, c.out[0].end_ns), (t0, t1));
    assert_eq!(c.out[0].response_bytes, 20 + 18 + 5);
    assert_eq!(c.conn.counters().values, 2);
    // A miss is an END alone: not an error.
    c.send(b"get nope\r\n");
    c.recv(b"END\r\n");
    assert!(c.out[1].error_code.is_none() && !c.out[1].no_response);
    no_secrets(&c, &["hello", "nokey", "k2"]);
}

#[test]
fn pipelined_replies_end_at_their_own_chunk() {
    let mut c = Client::new();
    let t0 = c.send(b"get a\r\nset b 0 0 1\r\nx\r\nget c\r\n");
    let t1 = c.recv(b"VALUE a 0 1\r\n1\r\nEND\r\nSTO");
    let t2 = c.recv(b"RED\r\nVALUE c 0 3\r\nab");
    let t3 = c.recv(b"c\r\nEND\r\n");
    let ends: Vec<_> = c.out.iter().map(|x| (x.start_ns, x.end_ns)).collect();
    assert_eq!(ends, [(t0, t1), (t0, t2), (t0, t3)]);
    assert_eq!(c.ops(), ["get", "set", "get"]);
}

#[test]
fn bad_data_chunk_keeps_sync() {
    let mut c = Client::new();
    // memcached reads exactly <bytes>+2 and answers CLIENT_ERROR; the CRLF left over is an
    // empty command line, answered ERROR.
    c.send(b"set k 0 0 3\r\nabcde\r\n");
    c.recv(b"CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    c.send(b"get k\r\n");
    c.recv(b"END\r\n");
    assert_eq!(
        c.summary(),
        [
            row("set", "set ? ? ? ?", "CLIENT_ERROR", false),
            row("<none>", "<none>", "ERROR", false),
            row("get", "get ?", "", false),
        ]
    );
    // A malformed storage line reads no data block: the data is a command of its own.
    c.send(b"set k x 0 5\r\nhello\r\n");
    c.recv(b"CLIENT_ERROR bad command line format\r\nERROR\r\n");
    assert_eq!(c.summary()[3].2, "CLIENT_ERROR");
    assert_eq!(c.summary()[4].2, "ERROR");
    assert_eq!(c.conn.counters().reply_desync, 0);
    no_secrets(&c, &["abcde", "hello"]);
}

#[test]
fn meta_commands() {
    let mut c = Client::new();
    c.send(b"ms k2 2 T0\r\nhi\r\nmg k2 v\r\nmg missing v\r\nmd k2\r\nma nope\r\nme k2\r\nmn\r\n");
    c.recv(b"HD\r\nVA 2\r\nhi\r\nEN\r\nHD\r\nNF\r\nME k2 exp=-1 la=0 cas=8 fetch=yes cls=1 size=62\r\nMN\r\n");
    assert_eq!(
        c.summary(),
        [
            row("ms", "ms ? ? ?", "", false),
            row("mg", "mg ? ?", "", false),
            row("mg", "mg ? ?", "", false),
            row("md", "md ?", "", false),
            row("ma", "ma ?", "", false),
            row("me", "me ?", "", false),
            row("mn", "mn", "", false),
        ]
    );
    assert_eq!(c.out[1].response_bytes, 10);
    let n = c.conn.counters();
    assert_eq!((n.replies, n.reply_desync), (7, 0));
}

#[test]
fn quiet_meta_batch_ends_at_mn() {
    let mut c = Client::new();
    // As memcached 1.6.18 answered: the miss is suppressed, the hit is not.
    c.send(b"get a\r\nmg missing v q\r\nmg k v q\r\nmn\r\n");
    c.recv(b"END\r\nVA 2\r\nhi\r\nMN\r\n");
    // The quiet ones are emitted at once; the get and mn get their replies, the hit is
    // skipped.
    assert_eq!(
        c.summary(),
        [
            row("mg", "mg ? ? ?", "", false),
            row("mg", "mg ? ? ?", "", false),
            row("get", "get ?", "", false),
            row("mn", "mn", "", false),
        ]
    );
    c.send(b"version\r\n");
    c.recv(b"VERSION 1.6.18\r\n");
    assert_eq!(c.summary()[4], row("version", "version", "", false));
    let n = c.conn.counters();
    assert_eq!((n.quiet_meta, n.quiet_replies, n.reply_desync), (2, 1, 0));
    assert_eq!(c.conn.pending(), 0);
}

#[test]
fn quiet_meta_batch_at_a_quiet_point() {
    let mut c = Client::new();
    c.send(b"get a\r\n");
    c.recv(b"garbage\r\n");
    assert_eq!(c.conn.counters().reply_desync, 1);
    c.send(b"mg a v q\r\nmn\r\n");
    c.recv(b"VA 1\r\nx\r\nMN\r\n");
    assert_eq!(c.ops(), ["get", "mg", "mn"]);
    assert!(!c.out[2].no_response);
    assert_eq!(c.conn.counters().reply_resyncs, 1);
}

#[test]
fn quiet_meta_before_another_command_stops_attribution() {
    let mut c = Client::new();
    // `EN` could be the quiet ms's failure or the mg's miss: not attributed.
    c.send(b"ms a 2 q\r\nhi\r\nmg b v\r\n");
    c.recv(b"EN\r\n");
    assert_eq!(
        c.summary(),
        [
            row("ms", "ms ? ? ?", "", false),
            row("mg", "mg ? ?", "", true)
        ]
    );
    // A quiet point later.
    c.send(b"mg b v\r\n");
    c.recv(b"EN\r\n");
    assert_eq!(c.summary()[2], row("mg", "mg ? ?", "", false));
}

#[test]
fn lru_crawler_dump_and_watch() {
    let mut c = Client::new();
    c.send(b"lru_crawler metadump all\r\n");
    c.recv(b"key=a exp=1 la=2 cas=8 fetch=yes cls=1 size=62\nEND\r\n");
    c.send(b"watch\r\n");
    c.recv(b"OK\r\n");
    c.recv(b"ts=1.2 gid=3 type=item_get key=a status=found\n");
    c.send(b"version\r\n");
    c.recv(b"ts=1.3 gid=4 type=item_get key=b status=found\n");
    assert_eq!(
        c.summary(),
        [
            row("lru_crawler", "lru_crawler ? ?", "", false),
            row("watch", "watch", "", false),
            row("version", "version", "", true),
        ]
    );
}

#[test]
fn large_value_with_capture_gaps() {
    let mut c = Client::new();
    let value = vec![b'v'; 100_000];
    let mut set = b"set big 0 0 100000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    // One write, 2 KiB captured.
    let t0 = c.write(&set, 2048);
    c.recv(b"STORED\r\n");
    c.send(b"get big\r\n");
    let mut reply = b"VALUE big 0 100000\r\n".to_vec();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\nEND\r\n");
    // Read in pieces of 64 KiB, 2 KiB of each captured.
    let (a, b) = reply.split_at(65536);
    c.read(a, 2048);
    let t2 = c.read(b, 2048);
    assert_eq!(c.ops(), ["set", "get"]);
    assert_eq!(
        (c.out[0].start_ns, c.out[0].request_bytes),
        (t0, set.len() as u64)
    );
    assert_eq!(
        (c.out[1].end_ns, c.out[1].response_bytes),
        (t2, reply.len() as u64)
    );
    let n = c.conn.counters();
    assert_eq!((n.request_desync, n.reply_desync, n.no_response), (0, 0, 0));
    assert_eq!(n.inferred_ends, 1);
    // Write and read again, the data block cut across writes.
    c.write(&set[..50_000], 2048);
    c.write(&set[50_000..], 2048);
    c.recv(b"STORED\r\n");
    assert_eq!(c.ops(), ["set", "get", "set"]);
    assert!(!c.out[2].no_response);
}

#[test]
fn line_lost_in_capture_ends_pending_without_misattribution() {
    let mut c = Client::new();
    // A pipeline whose second command line falls in uncaptured bytes.
    let request = b"set a 0 0 1\r\n1\r\ndelete b\r\nversion\r\n";
    c.write(request, 20);
    c.recv(b"STORED\r\nDELETED\r\nVERSION 1.6.18\r\n");
    // The set has its reply; then the replies belong to commands not seen.
    assert_eq!(c.summary(), [row("set", "set ? ? ? ?", "", false)]);
    assert_eq!(c.conn.counters().request_desync, 1);
    // Resync: a later write starting with a command, replies at a quiet point.
    c.send(b"get a\r\n");
    c.recv(b"VALUE a 0 1\r\n1\r\nEND\r\n");
    assert_eq!(c.summary()[1], row("get", "get ?", "", false));
    let n = c.conn.counters();
    assert_eq!((n.request_resyncs, n.reply_resyncs), (1, 1));
}

#[test]
fn reply_line_lost_in_capture() {
    let mut c = Client::new();
    c.send(b"get a\r\nget b\r\n");
    // The reply read is cut inside the second VALUE header.
    let reply = b"VALUE a 0 1\r\n1\r\nEND\r\nVALUE b 0 1\r\n2\r\nEND\r\n";
    c.read(reply, 25);
    assert_eq!(
        c.summary(),
        [
            row("get", "get ?", "", false),
            row("get", "get ?", "", true)
        ]
    );
    assert_eq!(c.conn.counters().reply_desync, 1);
    // A pipelined command while replies were unattributable is not a quiet point when it
    // shares its write; a command alone in a write after the last reply is.
    c.send(b"version\r\n");
    c.recv(b"VERSION 1.6.18\r\n");
    assert!(!c.out[2].no_response);
}

#[test]
fn truncated_multi_get_is_one_command() {
    let mut c = Client::new();
    let mut line = b"get".to_vec();
    for i in 0..300 {
        line.extend_from_slice(format!(" key:{i:04}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    c.write(&line, 2048);
    c.recv(b"VALUE key:0001 0 1\r\n1\r\nEND\r\n");
    assert_eq!(c.out.len(), 1);
    let x = &c.out[0];
    assert_eq!(x.operation.as_deref(), Some("get"));
    let q = x.query_text.as_deref().unwrap();
    assert!(q.starts_with("get ? ?") && q.ends_with(" ..."), "{q}");
    assert!(!x.no_response && x.error_code.is_none());
    assert_eq!(c.conn.counters().truncated_retrievals, 1);
    no_secrets(&c, &["key:"]);
}

/// A multi-get of many values read at once: the reply's end is not captured.
fn big_multi_get() -> (Vec<u8>, Vec<u8>) {
    let mut line = b"get".to_vec();
    let mut reply = Vec::new();
    for i in 0..100 {
        line.extend_from_slice(format!(" key:{i:03}").as_bytes());
        reply.extend_from_slice(format!("VALUE key:{i:03} 0 50\r\n").as_bytes());
        reply.extend_from_slice(&[b'v'; 50]);
        reply.extend_from_slice(b"\r\n");
    }
    line.extend_from_slice(b"\r\n");
    reply.extend_from_slice(b"END\r\n");
    (line, reply)
}

#[test]
fn cut_multi_get_reply_ends_at_the_next_command() {
    let mut c = Client::new();
    let (line, reply) = big_multi_get();
    assert!(line.len() < 2048 && reply.len() > 7000);
    let t0 = c.send(&line);
    let (a, b) = reply.split_at(4096);
    c.read(a, 2048);
    let t1 = c.read(b, 2048);
    assert!(c.out.is_empty());
    c.send(b"get k\r\n");
    // The multi-get ends at its last reply chunk, successful; the next get is a quiet point.
    assert_eq!(
        c.summary(),
        [row(
            "get",
            &format!("get{} ...", " ?".repeat(64)),
            "",
            false
        )]
    );
    assert_eq!((c.out[0].start_ns, c.out[0].end_ns), (t0, t1));
    assert_eq!(c.out[0].response_bytes, reply.len() as u64);
    c.recv(b"END\r\n");
    assert_eq!(c.summary()[1], row("get", "get ?", "", false));
    let n = c.conn.counters();
    assert_eq!((n.replies_cut, n.replies, n.reply_resyncs), (1, 2, 1));
    assert_eq!((n.no_response, n.reply_desync), (0, 0));
    // Cut again; the next write starts with noreply commands: the first command queued is
    // still answered by the next reply.
    c.send(&line);
    c.read(&reply, 2048);
    c.send(b"set q 0 0 1 noreply\r\nx\r\nget k\r\n");
    c.recv(b"END\r\n");
    assert_eq!(c.ops()[2..], ["get", "set", "get"]);
    assert!(c.out.iter().all(|x| !x.no_response));
    assert_eq!(c.conn.counters().replies_cut, 2);
    // Closed while cut: it ends at close.
    let mut c = Client::new();
    c.send(&line);
    c.read(&reply, 2048);
    c.close();
    assert_eq!(c.out.len(), 1);
    assert!(!c.out[0].no_response);
}

#[test]
fn cut_reply_with_pipelined_commands_is_a_desync() {
    let mut c = Client::new();
    let (mut line, reply) = big_multi_get();
    line.extend_from_slice(b"get k\r\n");
    c.send(&line);
    c.read(&reply, 2048);
    c.recv(b"END\r\n");
    assert_eq!(c.out.len(), 2);
    assert!(c.out.iter().all(|x| x.no_response));
    assert_eq!(c.conn.counters().replies_cut, 0);
}

#[test]
fn mismatched_reply_is_a_desync_not_an_answer() {
    let mut c = Client::new();
    c.send(b"set a 0 0 1\r\n1\r\n");
    c.recv(b"VALUE a 0 1\r\n1\r\nEND\r\n");
    assert_eq!(c.summary(), [row("set", "set ? ? ? ?", "", true)]);
    assert_eq!(c.conn.counters().reply_desync, 1);
}

#[test]
fn midstream_pickup_waits_for_a_command_and_a_quiet_point() {
    let mut c = Client::with(false);
    // The tail of a value, then a reply: nothing to attribute.
    c.send(b"lue\r\n");
    c.recv(b"STORED\r\n");
    assert!(c.out.is_empty());
    c.send(b"get k\r\n");
    c.recv(b"END\r\n");
    assert_eq!(c.summary(), [row("get", "get ?", "", false)]);
    assert!(!c.out[0].partial);
}

#[test]
fn close_ends_pending_without_response() {
    let mut c = Client::new();
    c.send(b"get a\r\nget b\r\n");
    c.recv(b"END\r\n");
    c.close();
    assert_eq!(
        c.summary(),
        [
            row("get", "get ?", "", false),
            row("get", "get ?", "", true)
        ]
    );
    assert_eq!(c.conn.pending(), 0);
}

#[test]
fn server_side_flows() {
    // On the server, commands are inbound.
    let mut conn = Connection::new(IN, true);
    let mut out = Vec::new();
    conn.feed(IN, b"get a\r\n", 7, 1, &mut out);
    conn.feed(OUT, b"END\r\n", 5, 2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_flow, IN);
    assert_eq!((out[0].start_ns, out[0].end_ns), (1, 2));
}

#[test]
fn queue_overflow_skips_the_replies_owed() {
    let mut c = Client::new();
    let request = b"get k\r\n".repeat(MAX_PENDING + 3);
    c.send(&request);
    assert_eq!(c.conn.pending(), MAX_PENDING);
    assert_eq!(c.out.len(), 3);
    assert!(c.out.iter().all(|x| x.no_response));
    c.recv(&b"VALUE k 0 1\r\n1\r\nEND\r\n".repeat(MAX_PENDING + 3));
    assert_eq!(c.out.len(), MAX_PENDING + 3);
    assert!(c.out[3..].iter().all(|x| !x.no_response));
    assert_eq!(c.conn.counters().queue_overflow, 3);
}

#[test]
fn detect() {
    let yes: &[&[u8]] = &[
        b"get k\r\n",
        b"get a b c\r\n",
        b"gets k\r\n",
        b"set k 0 0 5\r\nhello\r\n",
        b"set k 4294967295 -1 0 noreply\r\n\r\n",
        b"cas k 0 0 1 123\r\nx\r\n",
        b"gat 100 k\r\n",
        b"delete k\r\n",
        b"delete k 0 noreply\r\n",
        b"incr k 1\r\n",
        b"touch k 10\r\n",
        b"flush_all\r\n",
        b"flush_all 10 noreply\r\n",
        b"version\r\n",
        b"stats\r\n",
        b"stats slabs\r\n",
        b"verbosity 1\r\n",
        b"quit\r\n",
        b"mg k v t\r\n",
        b"ms k 2 T0\r\nhi\r\n",
        b"mn\r\n",
    ];
    for y in yes {
        assert_eq!(
            Connection::detect(OUT, y),
            Some(OUT),
            "{}",
            String::from_utf8_lossy(y)
        );
    }
    let no: &[&[u8]] = &[
        // Redis: multibulk, inline upper case, inline forms memcached would not take.
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"GET k\r\n",
        b"PING\r\n",
        b"set k v\r\n",
        b"incr k\r\n",
        b"SET k 0 0 5\r\n",
        // HTTP.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get / HTTP/1.1\r\n",
        // PostgreSQL startup and SSL request, MySQL greeting, Kafka.
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00db\x00\x00",
        b"\x4a\x00\x00\x00\x0a8.0.36\x00",
        b"\x00\x00\x00\x1e\x00\x12\x00\x03",
        // Replies, partial lines, odd spacing, keys memcached refuses.
        b"STORED\r\n",
        b"VALUE k 0 5\r\nhello\r\nEND\r\n",
        b"get k",
        b"get k\n",
        b"get  k\r\n",
        b" get k\r\n",
        b"get\r\n",
        b"set k 0 0 -1\r\n",
        b"set k 0 0\r\n",
        b"delete k 5\r\n",
        b"",
    ];
    for n in no {
        assert_eq!(
            Connection::detect(OUT, n),
            None,
            "{}",
            String::from_utf8_lossy(n)
        );
    }
    let long_key = format!("get {}\r\n", "k".repeat(251));
    assert_eq!(Connection::detect(OUT, long_key.as_bytes()), None);
}

#[test]
fn counters_add() {
    let mut a = Counters {
        commands: 1,
        values: 2,
        ..Counters::default()
    };
    let b = Counters {
        commands: 3,
        uncaptured_bytes_skipped: 5,
        ..Counters::default()
    };
    a.add(&b);
    assert_eq!(
        (a.commands, a.values, a.uncaptured_bytes_skipped),
        (4, 2, 5)
    );
}

/// A pipeline and its replies, fed whole or cut anywhere.
fn pipeline() -> (Vec<u8>, Vec<u8>) {
    (
        b"set a 0 0 5\r\nhello\r\nget a b\r\nset c 0 0 1 noreply\r\nx\r\nincr n 1\r\n\
          delete a\r\nstats\r\nmg a v\r\nversion\r\n"
            .to_vec(),
        b"STORED\r\nVALUE a 0 5\r\nhello\r\nEND\r\n5\r\nDELETED\r\nSTAT pid 1\r\nEND\r\n\
          EN\r\nVERSION 1.6.18\r\n"
            .to_vec(),
    )
}

fn feed_split(request: &[u8], replies: &[u8], cuts_a: &[usize], cuts_b: &[usize]) -> Vec<String> {
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            if p > last {
                out.push(&bytes[last..p]);
                last = p;
            }
        }
        out
    }
    let mut conn = Connection::new(OUT, true);
    let mut out = Vec::new();
    for p in pieces(request, cuts_a) {
        conn.feed(OUT, p, p.len() as u64, 1, &mut out);
    }
    for p in pieces(replies, cuts_b) {
        conn.feed(IN, p, p.len() as u64, 2, &mut out);
    }
    out.iter()
        .map(|x| {
            check(x);
            format!(
                "{:?} {:?} {:?} {} {}",
                x.operation, x.query_text, x.error_code, x.no_response, x.response_bytes
            )
        })
        .collect()
}

proptest! {
    #[test]
    fn any_split_gives_the_same_exchanges(
        cuts_a in proptest::collection::vec(any::<usize>(), 0..40),
        cuts_b in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let (request, replies) = pipeline();
        let whole = feed_split(&request, &replies, &[], &[]);
        prop_assert_eq!(whole.len(), 8);
        prop_assert!(whole.iter().all(|x| x.contains(" false ")));
        prop_assert_eq!(feed_split(&request, &replies, &cuts_a, &cuts_b), whole);
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

    /// Protocol-shaped noise: pieces of the pipeline spliced at random, with truncation.
    #[test]
    fn spliced_protocol_never_panics(
        picks in proptest::collection::vec((any::<bool>(), any::<usize>(), any::<usize>(), 0u64..200), 0..40),
    ) {
        let (request, replies) = pipeline();
        let mut conn = Connection::new(OUT, true);
        let mut out = Vec::new();
        for (ts, (inbound, a, b, gap)) in picks.into_iter().enumerate() {
            let src = if inbound { &replies } else { &request };
            let (a, b) = (a % src.len(), b % src.len());
            let piece = &src[a.min(b)..a.max(b)];
            let flow = if inbound { IN } else { OUT };
            conn.feed(flow, piece, piece.len() as u64 + gap, ts as u64, &mut out);
        }
        conn.close(1000, &mut out);
        for x in &out {
            check(x);
            let text = format!("{x:?}");
            prop_assert!(!text.contains("hello"));
        }
    }
}
