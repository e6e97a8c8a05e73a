//! MySQL / MariaDB connection tracking for a passive observer: turns the bytes one endpoint of
//! a connection read and wrote (the client/server protocol, 4.1 and later) into one
//! [`DbExchange`] per executed statement — a `COM_QUERY`, or a `COM_STMT_EXECUTE` of a
//! prepared statement — whichever end of the connection the instrumented process is.
//!
//! Every packet carries a 3-byte length and a sequence id; a command starts a new sequence
//! (id 0) and its reply continues it (1, 2, …). Pairing is a FIFO of the commands sent,
//! completed in order by the server's replies, whose ends are read from their structure
//! (OK, ERR, or a result set's terminator, with or without `CLIENT_DEPRECATE_EOF`, following
//! `SERVER_MORE_RESULTS_EXISTS`). The sequence ids check every pairing: a reply packet whose
//! id does not continue its command's sequence is never attributed to it.
//!
//! What is emitted:
//! - `COM_QUERY`, `COM_STMT_EXECUTE` (and MariaDB's `COM_STMT_BULK_EXECUTE`): one exchange
//!   each. An execute's text comes from the `COM_STMT_PREPARE` that created its statement
//!   (cached per connection by the id of the server's `COM_STMT_PREPARE_OK`, bounded); a
//!   statement prepared before capture started gives an exchange without text, operation or
//!   table, marked partial, never a guess.
//! - Utility commands (`COM_PING`, `COM_INIT_DB`, `COM_STMT_RESET`, `COM_STMT_PREPARE`, …) are
//!   tracked so that replies pair, and counted, but give no exchange: they run no statement,
//!   and a connection pool's pings would drown the spans that matter. `COM_INIT_DB` (and
//!   `COM_CHANGE_USER`) set `db.namespace` when the server accepts them.
//! - A failed statement's `error_code` is the server's error number as text (`"1146"`), the
//!   value the semantic conventions give for MySQL's `db.response.status_code`; the SQLSTATE
//!   is not used (several numbers share one).
//! - `db.system.name` is `mariadb` when the server's greeting names MariaDB, `mysql`
//!   otherwise (also when the greeting was not seen).
//! - Not read (counted, the connection is left alone): TLS after an `SSLRequest` (its
//!   plaintext comes through the TLS uprobes), the compressed protocol, replication streams.
//!
//! Capture may miss bytes (only the first bytes of a read or write are kept, or the
//! connection is older than Sonde). Uncaptured bytes inside a packet are skipped by its
//! length; sync is lost only when a packet header falls into uncaptured bytes. The client
//! direction finds it again at a later chunk that starts with a command, or — servers read a
//! packet's header and then exactly its payload — at a lone command header (its payload must
//! then check out) or a lone statement payload. The server direction finds it at a chunk that
//! ends with a reply's last packet (the tail of a large result), or at the client's next
//! command: a client sends one only after reading the whole reply, so the server's next bytes
//! start the new reply (a pipelining client could defeat this; the sequence ids then catch
//! most mismatches). A reply that had begun and whose end was lost so ends at the last server
//! chunk, taken as successful (an error after the first rows is rare: a large result set,
//! written in many chunks, is the common case); a command whose reply was never seen ends
//! without a response. Everything lost is counted in [`Counters`]; memory per connection is
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::db::DbExchange;
use super::http2::Flow;
use super::sql::{self, Dialect};

/// `db.system.name` of a MySQL server's exchanges (and of a server whose greeting was not
/// seen).
pub const SYSTEM_MYSQL: &str = "mysql";
/// `db.system.name` when the server's greeting names MariaDB.
pub const SYSTEM_MARIADB: &str = "mariadb";

/// Commands waiting for their replies at most; past it pairing is given up until the next
/// command after the server's current reply.
pub const MAX_PENDING: usize = 1024;
/// Prepared statements remembered per connection (least recently used evicted first).
pub const MAX_STATEMENTS: usize = 1024;
/// Sanitized text bytes held by the statement cache, all statements together.
const MAX_STATEMENT_BYTES: usize = 256 * 1024;
/// Bytes of one client packet kept to read it (a query's text); the rest is skipped.
const MAX_CLIENT_KEEP: usize = 64 * 1024;
/// Bytes of one server packet kept (the greeting's version, an OK's status, an ERR's code).
const MAX_SERVER_KEEP: usize = 256;
/// Longest database name kept (MySQL names are at most 64 characters).
const MAX_NAMESPACE_LEN: usize = 64;
/// A packet's largest payload; a payload of exactly this length continues in the next packet.
const MAX_PAYLOAD: u32 = 0xff_ffff;
/// Fewest captured bytes of a connection's first chunk whose only command runs past them
/// for it to count as cut by capture (which keeps a few KiB of each read or write).
const MIN_CUT_DETECT: usize = 1024;
/// How far from a chunk's end a reply's terminator is looked for when the server direction is
/// out of sync.
const SUFFIX_SCAN: usize = 600;

// Capability flags.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_ZSTD_COMPRESSION: u32 = 0x400_0000;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
const CLIENT_QUERY_ATTRIBUTES: u32 = 0x800_0000;

// Server status flags.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x40;

// Commands.
const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_DAEMON: u8 = 0x1d;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
const COM_RESET_CONNECTION: u8 = 0x1f;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// MariaDB: `COM_STMT_EXECUTE` of the statement the same batch's `COM_STMT_PREPARE` creates.
const LAST_PREPARED: u32 = 0xffff_ffff;
/// MariaDB progress report: an ERR packet that is not the end of the reply.
const PROGRESS_REPORT: u16 = 0xffff;

/// Everything a connection saw, lost or skipped. Plain counters, summed by the caller across
/// connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Packet headers parsed, both directions.
    pub packets: u64,
    /// Commands read (sequence id 0 from the client).
    pub commands: u64,
    /// Of those, utility commands (no exchange: ping, init db, prepare, statement reset, …).
    pub utility_commands: u64,
    /// Replies completed (OK, ERR, result set, …), for any command.
    pub replies: u64,
    /// Of those, ERR replies.
    pub errors: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Of those, marked partial: a prepared statement never seen, or the handshake (the
    /// database name) not seen.
    pub partial: u64,
    /// Of those, without a reply (connection closed, capture lost it, or its end was cut).
    pub no_response: u64,
    /// Of those, ended because the client sent its next command (or the next reply began)
    /// while the reply's end was not captured: the end is the reply's last captured chunk,
    /// the status taken as successful if the reply had begun, else no response.
    pub replies_cut: u64,
    /// Executes of statements whose text was never seen (prepared before capture started, or
    /// evicted from the cache).
    pub unknown_statements: u64,
    /// Statements cached from `COM_STMT_PREPARE_OK` replies.
    pub statements_cached: u64,
    /// Statements evicted from the cache by its bounds.
    pub statements_evicted: u64,
    /// Commands not tracked: the pending queue was full.
    pub untracked: u64,
    /// Server packets with no command to pair with, or whose sequence id pairs with none.
    pub orphan_replies: u64,
    /// Packet boundaries lost: a header fell into uncaptured bytes, or a sequence id did not
    /// follow.
    pub desync: u64,
    /// Packet boundaries found again (including a mid-stream connection's first).
    pub resyncs: u64,
    /// Packets partly uncaptured, skipped by their length without losing sync.
    pub truncated_packets: u64,
    /// Uncaptured bytes skipped inside packets.
    pub uncaptured_bytes_skipped: u64,
    /// Connections tracked without their start (older than Sonde).
    pub midstream_pickups: u64,
    /// Handshakes seen (a client's `HandshakeResponse`).
    pub handshakes: u64,
    /// Authentications refused by the server.
    pub auth_failures: u64,
    /// Connections that turned to TLS after an `SSLRequest`: not parsed further here (TLS
    /// plaintext arrives through the uprobes).
    pub tls_upgrades: u64,
    /// `LOAD DATA LOCAL INFILE` transfers (the client's file is skipped).
    pub local_infile: u64,
    /// Connections that turned into a replication stream (binlog dump): not parsed further.
    pub replication_streams: u64,
    /// Connections that use the compressed protocol after the handshake: not parsed further.
    pub compressed: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            packets,
            commands,
            utility_commands,
            replies,
            errors,
            exchanges,
            partial,
            no_response,
            replies_cut,
            unknown_statements,
            statements_cached,
            statements_evicted,
            untracked,
            orphan_replies,
            desync,
            resyncs,
            truncated_packets,
            uncaptured_bytes_skipped,
            midstream_pickups,
            handshakes,
            auth_failures,
            tls_upgrades,
            local_infile,
            replication_streams,
            compressed,
        } = other;
        self.packets += packets;
        self.commands += commands;
        self.utility_commands += utility_commands;
        self.replies += replies;
        self.errors += errors;
        self.exchanges += exchanges;
        self.partial += partial;
        self.no_response += no_response;
        self.replies_cut += replies_cut;
        self.unknown_statements += unknown_statements;
        self.statements_cached += statements_cached;
        self.statements_evicted += statements_evicted;
        self.untracked += untracked;
        self.orphan_replies += orphan_replies;
        self.desync += desync;
        self.resyncs += resyncs;
        self.truncated_packets += truncated_packets;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
        self.midstream_pickups += midstream_pickups;
        self.handshakes += handshakes;
        self.auth_failures += auth_failures;
        self.tls_upgrades += tls_upgrades;
        self.local_infile += local_infile;
        self.replication_streams += replication_streams;
        self.compressed += compressed;
    }
}

/// Which end of the protocol a direction's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Waiting for the client's `HandshakeResponse` (or `SSLRequest`).
    Response,
    /// Authentication exchanges, until the server's OK or ERR.
    Auth,
    /// Commands and replies.
    Command,
    /// Encrypted or a replication stream: nothing more to read.
    Stopped,
}

/// A packet being read.
#[derive(Debug, Clone, Copy)]
struct Body {
    seq: u8,
    /// Payload bytes.
    len: u32,
    /// Payload bytes passed so far, captured or skipped.
    pos: u32,
    /// Payload bytes worth keeping.
    keep: u32,
    /// Some payload bytes were not captured.
    truncated: bool,
    /// This packet continues the previous one (which had the maximal payload length).
    continued: bool,
    /// The chunk that carried the packet's first byte.
    ts: u64,
}

#[derive(Debug, Clone, Copy)]
enum Parse {
    Header {
        buf: [u8; 4],
        len: usize,
        ts: u64,
    },
    Body(Body),
    /// Boundary lost: waiting for a chunk where parsing can start again.
    Lost,
    /// Nothing more to read.
    Stopped,
}

const HEADER_START: Parse = Parse::Header {
    buf: [0; 4],
    len: 0,
    ts: 0,
};

struct Direction {
    parse: Parse,
    /// The kept prefix of the current packet's payload.
    body: Vec<u8>,
    /// The last packet had the maximal payload length: the next one continues it.
    continues: bool,
}

impl Direction {
    fn new(parse: Parse) -> Direction {
        Direction {
            parse,
            body: Vec::new(),
            continues: false,
        }
    }
}

/// A complete (or skipped-to-its-end) packet handed to the protocol logic.
struct Pkt<'b> {
    seq: u8,
    /// Payload length on the wire.
    len: u32,
    /// The kept prefix of its payload.
    body: &'b [u8],
    /// It continues the previous packet: its first byte means nothing.
    continued: bool,
    /// The chunk that carried its first byte.
    ts: u64,
}

impl Pkt<'_> {
    fn size(&self) -> u64 {
        u64::from(self.len) + 4
    }

    fn first(&self) -> Option<u8> {
        self.body.first().copied()
    }

    /// An EOF packet, or (`CLIENT_DEPRECATE_EOF`) an OK packet ending a result set.
    fn is_terminator(&self) -> bool {
        self.first() == Some(0xfe) && self.len < MAX_PAYLOAD
    }

    /// A classic EOF packet (0xFE, warnings, status).
    fn is_eof(&self) -> bool {
        self.first() == Some(0xfe) && self.len < 9
    }

    /// Status flags of an OK, EOF or OK-as-EOF packet; 0 when not captured.
    fn status(&self) -> u16 {
        let b = self.body;
        if self.first() == Some(0xfe) && self.len == 5 {
            return le16(b.get(3..5)).unwrap_or(0);
        }
        let Some((_, rest)) = lenenc(b.get(1..).unwrap_or_default()) else {
            return 0;
        };
        let Some((_, rest)) = lenenc(rest) else {
            return 0;
        };
        le16(rest.get(..2)).unwrap_or(0)
    }

    /// An ERR packet's error number; None when not an ERR.
    fn error_number(&self) -> Option<u16> {
        (self.first() == Some(0xff)).then(|| le16(self.body.get(1..3)).unwrap_or(0))
    }
}

/// What a cached statement contributes to an exchange, computed once.
#[derive(Debug)]
struct Statement {
    query_text: String,
    /// The text as sent, bounded like the sanitized one.
    raw_text: String,
    operation: Option<String>,
    collection: Option<String>,
}

impl Statement {
    fn from_text(raw: &[u8]) -> Statement {
        let text = String::from_utf8_lossy(raw);
        let mut raw_text = text.to_string();
        if raw_text.len() > sql::MAX_SANITIZED_LEN {
            let mut cut = sql::MAX_SANITIZED_LEN;
            while !raw_text.is_char_boundary(cut) {
                cut -= 1;
            }
            raw_text.truncate(cut);
        }
        Statement {
            query_text: sql::sanitize_with(&text, Dialect::MySql),
            raw_text,
            operation: sql::operation_with(&text, Dialect::MySql),
            collection: sql::collection_with(&text, Dialect::MySql),
        }
    }
}

struct Cached {
    statement: Arc<Statement>,
    last_used: u64,
}

/// How a reply is read, by where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The first packet (or a further result's, after `SERVER_MORE_RESULTS_EXISTS`): OK, ERR,
    /// `LOCAL INFILE` request or a result set's column count.
    Start,
    /// A result set's column definitions, `left` still to come.
    Columns { left: u64 },
    /// After the column definitions: an EOF (unless deprecated) or the first row.
    AfterColumns,
    /// Rows, until the terminator or an ERR.
    Rows,
    /// `COM_STMT_PREPARE_OK`'s parameter and column definitions still to come.
    PrepareDefs { left: u32 },
    /// The last EOF of a prepare reply (EOF packets known to be sent).
    PrepareEof,
    /// Packets until an EOF or ERR (`COM_FIELD_LIST`).
    UntilEof,
    /// Authentication exchanges until OK or ERR (`COM_CHANGE_USER`).
    UntilOk,
    /// One packet, whatever it is (OK, ERR, EOF, `COM_STATISTICS`'s text).
    Single,
}

/// What a command is, for the protocol logic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    /// A statement: one exchange.
    Statement,
    /// `COM_STMT_PREPARE`: its statement is cached under the id of the reply.
    Prepare,
    /// `COM_INIT_DB` / `COM_CHANGE_USER`: the database (if any) becomes the namespace on OK.
    SetDb(Option<String>),
    /// `COM_RESET_CONNECTION`: prepared statements are gone on OK.
    Reset,
    /// Anything else: no exchange.
    Utility,
}

/// A command awaiting its reply.
struct Pending {
    what: What,
    reply: Reply,
    /// Results are binary rows (`COM_STMT_EXECUTE`, `COM_STMT_FETCH`).
    binary: bool,
    /// The sequence id the next reply packet must carry.
    next_seq: u8,
    /// Sequence ids are checked (not after a `LOCAL INFILE` or an authentication switch,
    /// whose client packets continue the sequence).
    check_seq: bool,
    /// A reply packet was seen.
    started: bool,
    statement: Option<Arc<Statement>>,
    /// The id `COM_STMT_PREPARE_OK` gave the statement.
    stmt_id: Option<u32>,
    partial: bool,
    start_ns: u64,
    request_bytes: u64,
    response_bytes: u64,
}

/// What a reply packet did to its command.
enum Outcome {
    More,
    Ok,
    Err(u16),
}

/// One MySQL or MariaDB connection as seen from one of its endpoints.
pub struct Connection {
    /// The flow that carries the client's bytes.
    request_flow: Flow,
    client: Direction,
    server: Direction,
    phase: Phase,
    system: &'static str,
    /// Capability flags of the server's greeting and of the client's response, when seen.
    server_caps: Option<u32>,
    client_caps: Option<u32>,
    pending: VecDeque<Pending>,
    statements: HashMap<u32, Cached>,
    statement_bytes: usize,
    clock: u64,
    /// The text of the latest `COM_STMT_PREPARE` (MariaDB's execute of id `0xffffffff`).
    last_prepare: Option<Arc<Statement>>,
    /// `db.namespace`, from the handshake or `COM_INIT_DB`.
    namespace: Option<String>,
    /// The namespace is known (the handshake or a `COM_INIT_DB` was seen).
    namespace_known: bool,
    /// A prepare reply was taken as complete without its trailing EOF, which may follow.
    trailing_eof: Option<u8>,
    /// The latest server chunk: where a reply whose end was not captured ends.
    last_reply_ns: u64,
    /// The client direction resynced at a lone header: its payload must be a command.
    verify_command: bool,
    counters: Counters,
}

impl Connection {
    /// A tracker for a connection whose client writes on `request_flow` (`Outbound` when the
    /// instrumented process is the client). `fresh`: the connection's first bytes are going to
    /// be fed (otherwise it is older than Sonde, and commands are read from the first client
    /// chunk that starts with one).
    pub fn new(request_flow: Flow, fresh: bool) -> Connection {
        let (parse, phase) = if fresh {
            (HEADER_START, Phase::Greeting)
        } else {
            (Parse::Lost, Phase::Command)
        };
        Connection {
            request_flow,
            client: Direction::new(parse),
            server: Direction::new(parse),
            phase,
            system: SYSTEM_MYSQL,
            server_caps: None,
            client_caps: None,
            pending: VecDeque::new(),
            statements: HashMap::new(),
            statement_bytes: 0,
            clock: 0,
            last_prepare: None,
            namespace: None,
            namespace_known: false,
            trailing_eof: None,
            last_reply_ns: 0,
            verify_command: false,
            counters: Counters {
                midstream_pickups: u64::from(!fresh),
                ..Counters::default()
            },
        }
    }

    /// Whether the first captured bytes of a connection, carried by `flow`, are MySQL's; if
    /// so, the flow that carries the client's commands (the request flow).
    ///
    /// The server's greeting (sequence id 0, protocol version 10, a printable version string
    /// starting with a digit and ending in NUL, then the thread id, 8 bytes of scramble and a
    /// NUL filler) means the other flow carries the commands. For a connection older than
    /// Sonde, client commands (sequence id 0, a known command byte, a body that fits it) whose
    /// lengths chain exactly to the end of the bytes, one of them a statement (`COM_QUERY` or
    /// `COM_STMT_PREPARE` with SQL text, `COM_STMT_EXECUTE` with iteration count 1,
    /// `COM_INIT_DB` with a name) or two or more commands; then `flow` is the request flow.
    pub fn detect(flow: Flow, first: &[u8]) -> Option<Flow> {
        if greeting_like(first) || greeting_payload_alone(first, first.len() as u64) {
            return Some(flow.opposite());
        }
        if bare_command_like(first, first.len() as u64) {
            return Some(flow);
        }
        let w = walk_commands(first, None);
        (w.plausible && (w.strong || w.complete >= 2)).then_some(flow)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Commands awaiting their reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Statements in the cache.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }

    /// Bytes buffered for incomplete packets, both directions.
    pub fn buffered_bytes(&self) -> usize {
        self.client.body.len() + self.server.body.len()
    }

    fn side(&self, flow: Flow) -> Side {
        if flow == self.request_flow {
            Side::Client
        } else {
            Side::Server
        }
    }

    fn dir(&self, side: Side) -> &Direction {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    fn dir_mut(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Takes one chunk: `captured` are the first bytes that moved in one read or write on
    /// `flow`, `total >= captured.len()` is how many moved. Exchanges that end are pushed to
    /// `out`.
    pub fn feed(
        &mut self,
        flow: Flow,
        captured: &[u8],
        total: u64,
        ts_ns: u64,
        out: &mut Vec<DbExchange>,
    ) {
        let side = self.side(flow);
        let total = total.max(captured.len() as u64);
        if side == Side::Server {
            self.last_reply_ns = self.last_reply_ns.max(ts_ns);
        }
        let mut input = captured;
        match self.dir(side).parse {
            Parse::Stopped => return,
            Parse::Lost => match side {
                Side::Client => {
                    if walk_commands(captured, Some(total)).plausible {
                        self.counters.resyncs += 1;
                        self.client.parse = HEADER_START;
                        self.client.continues = false;
                    } else if header_only(captured, total) {
                        // A server reads a packet's header, then its payload: the payload
                        // (next chunk) must check out as a command.
                        self.counters.resyncs += 1;
                        self.client.parse = HEADER_START;
                        self.client.continues = false;
                        self.verify_command = true;
                    } else if bare_command_like(captured, total) {
                        // The payload of such a read, its header read before.
                        self.counters.resyncs += 1;
                        self.counters.packets += 1;
                        self.client.parse = HEADER_START;
                        self.client.continues = false;
                        let keep = captured.len().min(MAX_CLIENT_KEEP);
                        let pkt = Pkt {
                            seq: 0,
                            // Below MAX_PAYLOAD.
                            len: total as u32,
                            body: &captured[..keep],
                            continued: false,
                            ts: ts_ns,
                        };
                        self.on_client(&pkt, out);
                        return;
                    } else {
                        return;
                    }
                }
                Side::Server if self.counters.commands == 0 && greeting_like(captured) => {
                    // Taken for an older connection, but this is its start after all.
                    self.counters.midstream_pickups =
                        self.counters.midstream_pickups.saturating_sub(1);
                    self.phase = Phase::Greeting;
                    self.server.parse = HEADER_START;
                    self.client.parse = HEADER_START;
                }
                Side::Server
                    if self.counters.commands == 0 && greeting_payload_alone(captured, total) =>
                {
                    // The same, read by a client as header, then payload (this).
                    self.counters.midstream_pickups =
                        self.counters.midstream_pickups.saturating_sub(1);
                    self.counters.packets += 1;
                    self.greeting(captured);
                    self.phase = Phase::Response;
                    self.server.parse = HEADER_START;
                    self.client.parse = HEADER_START;
                    return;
                }
                Side::Server => {
                    self.add_reply_bytes(total);
                    self.server_suffix_resync(captured, total, ts_ns, out);
                    return;
                }
            },
            _ => {}
        }

        while !input.is_empty() {
            match self.dir(side).parse {
                Parse::Header { mut buf, len, ts } => {
                    let ts = if len == 0 { ts_ns } else { ts };
                    let n = (4 - len).min(input.len());
                    buf[len..len + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if len + n < 4 {
                        self.dir_mut(side).parse = Parse::Header {
                            buf,
                            len: len + n,
                            ts,
                        };
                    } else {
                        self.begin_packet(side, buf, ts, ts_ns, out);
                    }
                }
                Parse::Body(mut body) => {
                    let n = ((body.len - body.pos) as usize).min(input.len());
                    let dir = self.dir_mut(side);
                    let want = (body.keep as usize).saturating_sub(dir.body.len()).min(n);
                    dir.body.extend_from_slice(&input[..want]);
                    input = &input[n..];
                    // n <= len - pos, a u32.
                    body.pos += n as u32;
                    self.complete_or_keep(side, body, ts_ns, out);
                }
                Parse::Lost | Parse::Stopped => break,
            }
        }

        let gap = total - captured.len() as u64;
        if gap > 0 {
            self.skip_uncaptured(side, gap, ts_ns, out);
        }
    }

    /// The connection closed: every command still waiting is emitted without a reply.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        self.flush(ts_ns, out);
        self.statements = HashMap::new();
        self.statement_bytes = 0;
        self.last_prepare = None;
        self.client.body = Vec::new();
        self.server.body = Vec::new();
    }

    /// `gap` bytes moved after the captured ones.
    fn skip_uncaptured(&mut self, side: Side, gap: u64, ts_ns: u64, out: &mut Vec<DbExchange>) {
        match self.dir(side).parse {
            Parse::Body(mut body) => {
                let remaining = u64::from(body.len - body.pos);
                let n = remaining.min(gap);
                // n <= remaining, a u32.
                body.pos += n as u32;
                body.truncated = true;
                self.counters.uncaptured_bytes_skipped += n;
                self.complete_or_keep(side, body, ts_ns, out);
                if gap > remaining {
                    if side == Side::Server {
                        self.add_reply_bytes(gap - remaining);
                    }
                    self.desync(side, out);
                }
            }
            Parse::Header { .. } => {
                if side == Side::Server {
                    self.add_reply_bytes(gap);
                }
                self.desync(side, out);
            }
            Parse::Lost | Parse::Stopped => {}
        }
    }

    fn complete_or_keep(&mut self, side: Side, body: Body, ts_ns: u64, out: &mut Vec<DbExchange>) {
        if body.pos == body.len {
            self.complete(side, body, ts_ns, out);
        } else {
            self.dir_mut(side).parse = Parse::Body(body);
        }
    }

    /// A header is complete: start its payload.
    fn begin_packet(
        &mut self,
        side: Side,
        header: [u8; 4],
        msg_ts: u64,
        ts_ns: u64,
        out: &mut Vec<DbExchange>,
    ) {
        let len = le24(&header);
        let seq = header[3];
        self.counters.packets += 1;
        let dir = self.dir_mut(side);
        let continued = std::mem::replace(&mut dir.continues, len == MAX_PAYLOAD);
        dir.body.clear();
        let keep = match side {
            _ if continued => 0,
            Side::Client if seq == 0 || self.phase != Phase::Command => MAX_CLIENT_KEEP,
            Side::Client => 0,
            Side::Server => MAX_SERVER_KEEP,
        };
        let body = Body {
            seq,
            len,
            pos: 0,
            // keep is small; len is at most 2^24 - 1.
            keep: keep.min(len as usize) as u32,
            truncated: false,
            continued,
            ts: msg_ts,
        };
        self.complete_or_keep(side, body, ts_ns, out);
    }

    /// A packet's last byte passed: hand it to the protocol logic.
    fn complete(&mut self, side: Side, body: Body, ts_ns: u64, out: &mut Vec<DbExchange>) {
        if body.truncated {
            self.counters.truncated_packets += 1;
        }
        self.dir_mut(side).parse = HEADER_START;
        let buf = std::mem::take(&mut self.dir_mut(side).body);
        let pkt = Pkt {
            seq: body.seq,
            len: body.len,
            body: &buf,
            continued: body.continued,
            ts: body.ts,
        };
        match side {
            Side::Client if std::mem::take(&mut self.verify_command) => {
                let whole = !body.truncated && buf.len() as u64 == u64::from(body.len);
                if body.seq == 0 && command_check(&buf, body.len as usize, whole).is_some() {
                    self.on_client(&pkt, out);
                } else {
                    self.desync(Side::Client, out);
                }
            }
            Side::Client => self.on_client(&pkt, out),
            Side::Server => self.on_server(&pkt, ts_ns, out),
        }
        let mut buf = buf;
        buf.clear();
        // Not while stopped (the body was dropped by `stop`).
        if !matches!(self.dir(side).parse, Parse::Stopped) {
            self.dir_mut(side).body = buf;
        }
    }

    // ---- Client --------------------------------------------------------------------------

    fn on_client(&mut self, p: &Pkt, out: &mut Vec<DbExchange>) {
        match self.phase {
            Phase::Stopped => return,
            Phase::Auth if p.seq == 0 && !p.continued => {
                // The server's OK was not seen (authentication data never has sequence id 0).
                self.phase = Phase::Command;
            }
            Phase::Auth => return,
            Phase::Greeting | Phase::Response if p.seq == 0 && !p.continued => {
                // Said to be fresh, but a command comes first: the start was missed.
                self.counters.midstream_pickups += 1;
                self.phase = Phase::Command;
            }
            Phase::Greeting | Phase::Response => {
                self.handshake_response(p);
                return;
            }
            Phase::Command => {}
        }
        if p.continued || p.seq != 0 {
            // A long command's continuation, a LOCAL INFILE's data, authentication data.
            if let Some(last) = self.pending.back_mut() {
                last.request_bytes += p.size();
            }
            return;
        }
        let Some((&cmd, body)) = p.body.split_first() else {
            return;
        };
        self.counters.commands += 1;
        if self.server_lost() {
            self.realign(out);
        }
        let mut what = What::Utility;
        let mut reply = Reply::Single;
        let mut binary = false;
        let mut statement = None;
        let mut partial = false;
        match cmd {
            COM_QUERY => {
                what = What::Statement;
                reply = Reply::Start;
                match self.query_text(body) {
                    Some(text) => statement = Some(Arc::new(Statement::from_text(text))),
                    None => partial = true,
                }
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                what = What::Statement;
                reply = Reply::Start;
                binary = true;
                statement = match le32(body.get(..4)) {
                    Some(LAST_PREPARED) => self.last_prepare.clone(),
                    Some(id) => self.lookup_statement(id),
                    None => None,
                };
                if statement.is_none() {
                    self.counters.unknown_statements += 1;
                    partial = true;
                }
            }
            COM_STMT_PREPARE => {
                what = What::Prepare;
                reply = Reply::Start;
                let s = Arc::new(Statement::from_text(body));
                self.last_prepare = Some(s.clone());
                statement = Some(s);
            }
            COM_STMT_CLOSE => {
                if let Some(id) = le32(body.get(..4)) {
                    self.uncache_statement(id);
                }
                self.counters.utility_commands += 1;
                return;
            }
            COM_QUIT | COM_STMT_SEND_LONG_DATA => {
                // No reply.
                self.counters.utility_commands += 1;
                return;
            }
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_DAEMON => {
                self.counters.utility_commands += 1;
                self.counters.replication_streams += 1;
                let ts = self.last_reply_ns.max(p.ts);
                self.flush(ts, out);
                self.stop();
                return;
            }
            COM_INIT_DB => what = What::SetDb(Some(bounded_name(body))),
            COM_CHANGE_USER => {
                what = What::SetDb(self.change_user_db(body));
                reply = Reply::UntilOk;
            }
            COM_RESET_CONNECTION => what = What::Reset,
            COM_STMT_FETCH => {
                reply = Reply::Rows;
                binary = true;
            }
            COM_FIELD_LIST => reply = Reply::UntilEof,
            COM_PROCESS_INFO => reply = Reply::Start,
            COM_STATISTICS => {}
            _ => {}
        }
        if what != What::Statement {
            self.counters.utility_commands += 1;
        }
        if self.pending.len() >= MAX_PENDING {
            // Dropping one command would shift every later pairing: give up on all of them
            // until the server's current reply is over.
            self.counters.untracked += 1;
            let ts = self.last_reply_ns.max(p.ts);
            self.flush(ts, out);
            self.server_desync_quiet();
            return;
        }
        self.pending.push_back(Pending {
            what,
            reply,
            binary,
            next_seq: p.seq.wrapping_add(1),
            check_seq: cmd != COM_CHANGE_USER,
            started: false,
            statement,
            stmt_id: None,
            partial,
            start_ns: p.ts,
            request_bytes: p.size(),
            response_bytes: 0,
        });
    }

    /// A `COM_QUERY` body's SQL text: after the query attributes when the client sends them.
    /// None when attributes with values precede the text (not read).
    fn query_text<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        let attributes = match self.client_caps {
            Some(caps) => caps & CLIENT_QUERY_ATTRIBUTES != 0,
            // Unknown: SQL text never starts with a NUL; "no attributes, one set" does.
            None => body.starts_with(&[0, 1]),
        };
        if !attributes {
            return Some(body);
        }
        let (count, rest) = lenenc(body)?;
        let (_sets, rest) = lenenc(rest)?;
        (count == 0).then_some(rest)
    }

    fn change_user_db(&self, body: &[u8]) -> Option<String> {
        let (_user, rest) = cstr_whole(body)?;
        let rest = if self
            .client_caps
            .is_none_or(|c| c & CLIENT_SECURE_CONNECTION != 0)
        {
            let (&n, rest) = rest.split_first()?;
            rest.get(usize::from(n)..)?
        } else {
            cstr_whole(rest)?.1
        };
        let (db, _) = cstr_whole(rest)?;
        (!db.is_empty()).then(|| bounded_name(db))
    }

    /// The client's first packet: `HandshakeResponse41` or `SSLRequest`.
    fn handshake_response(&mut self, p: &Pkt) {
        let b = p.body;
        let Some(caps) = le32(b.get(..4)) else {
            return;
        };
        if caps & CLIENT_SSL != 0 && p.len == 32 {
            self.counters.tls_upgrades += 1;
            self.stop();
            return;
        }
        self.counters.handshakes += 1;
        self.phase = Phase::Auth;
        self.namespace_known = true;
        if caps & CLIENT_PROTOCOL_41 == 0 {
            // Pre-4.1 clients: no database read.
            return;
        }
        self.client_caps = Some(caps);
        let Some((_user, rest)) = b.get(32..).and_then(cstr_whole) else {
            return;
        };
        let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
            lenenc(rest).and_then(|(n, r)| r.get(usize::try_from(n).ok()?..))
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.split_first()
                .and_then(|(&n, r)| r.get(usize::from(n)..))
        } else {
            cstr_whole(rest).map(|(_, r)| r)
        };
        if caps & CLIENT_CONNECT_WITH_DB != 0
            && let Some((db, _)) = rest.and_then(cstr_whole)
            && !db.is_empty()
        {
            self.namespace = Some(bounded_name(db));
        }
    }

    // ---- Server --------------------------------------------------------------------------

    fn on_server(&mut self, p: &Pkt, ts_ns: u64, out: &mut Vec<DbExchange>) {
        match self.phase {
            Phase::Stopped | Phase::Response => return,
            Phase::Greeting => {
                if !p.continued && p.first() == Some(0x0a) {
                    self.greeting(p.body);
                    self.phase = Phase::Response;
                }
                return;
            }
            Phase::Auth => {
                match p.first() {
                    Some(0x00) if !p.continued && self.compression() => {
                        // Compressed packets from here on: not read.
                        self.counters.compressed += 1;
                        self.stop();
                    }
                    Some(0x00) if !p.continued => self.phase = Phase::Command,
                    Some(0xff) if !p.continued => self.counters.auth_failures += 1,
                    _ => {}
                }
                return;
            }
            Phase::Command => {}
        }
        loop {
            let Some(front) = self.pending.front() else {
                if !self.absorb_trailing(p) {
                    self.counters.orphan_replies += 1;
                }
                return;
            };
            if !front.check_seq || p.seq == front.next_seq {
                break;
            }
            let started = front.started;
            if !started && self.absorb_trailing(p) {
                return;
            }
            if started && p.seq == 1 && !p.continued && self.pending.len() > 1 {
                // The front's reply ended without the end this parser expected, and the next
                // command's reply begins: end it where its last packet was, as a reply of
                // unknown status (taken as successful).
                if let Some(done) = self.pending.pop_front() {
                    self.counters.replies_cut += 1;
                    let end = self.last_reply_ns;
                    self.finish(done, None, end, false, out);
                }
                continue;
            }
            // Not this command's reply: boundaries or pairing are wrong.
            self.counters.orphan_replies += 1;
            self.desync(Side::Server, out);
            return;
        }
        self.trailing_eof = None;
        let deprecate_eof = self.deprecate_eof();
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        front.started = true;
        front.next_seq = p.seq.wrapping_add(1);
        front.response_bytes += p.size();
        if p.continued {
            return;
        }
        let outcome = step(front, p, deprecate_eof);
        if let Outcome::More = outcome {
            if front.reply == Reply::Start && p.first() == Some(0xfb) && !front.binary {
                // LOCAL INFILE: the client's data packets continue the sequence.
                self.counters.local_infile += 1;
                front.check_seq = false;
            }
            return;
        }
        let Some(done) = self.pending.pop_front() else {
            return;
        };
        let error = match outcome {
            Outcome::Err(code) => Some(code),
            _ => None,
        };
        if done.what == What::Prepare && error.is_none() {
            if let (Some(id), Some(statement)) = (done.stmt_id, &done.statement) {
                self.cache_statement(id, statement.clone());
            }
            // Its trailing EOF, if EOF packets are sent after all.
            if deprecate_eof.is_none() && column_def_like(p.body) {
                self.trailing_eof = Some(p.seq);
            }
        }
        self.finish(done, error, ts_ns, false, out);
    }

    /// An EOF continuing the sequence of a prepare reply taken as complete.
    fn absorb_trailing(&mut self, p: &Pkt) -> bool {
        match self.trailing_eof {
            Some(seq) if p.is_eof() && p.seq == seq.wrapping_add(1) => {
                self.trailing_eof = Some(p.seq);
                true
            }
            _ => false,
        }
    }

    /// Whether both ends asked for the compressed protocol (after authentication).
    fn compression(&self) -> bool {
        let both = self.client_caps.unwrap_or(0) & self.server_caps.unwrap_or(u32::MAX);
        both & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) != 0
    }

    /// Whether result sets end without EOF packets: known when both capability sets were seen.
    fn deprecate_eof(&self) -> Option<bool> {
        let client = self.client_caps?;
        let server = self.server_caps.unwrap_or(u32::MAX);
        Some(client & server & CLIENT_DEPRECATE_EOF != 0)
    }

    fn greeting(&mut self, b: &[u8]) {
        let Some((version, rest)) = b.get(1..).and_then(cstr_whole) else {
            return;
        };
        if memchr::memmem::find(version, b"MariaDB").is_some() {
            self.system = SYSTEM_MARIADB;
        }
        // Thread id (4), scramble (8), filler (1), capabilities low (2), charset (1),
        // status (2), capabilities high (2).
        if let (Some(low), Some(high)) = (le16(rest.get(13..15)), le16(rest.get(18..20))) {
            self.server_caps = Some(u32::from(low) | (u32::from(high) << 16));
        }
    }

    /// A reply ended: its command is done.
    fn finish(
        &mut self,
        done: Pending,
        error: Option<u16>,
        end_ns: u64,
        no_response: bool,
        out: &mut Vec<DbExchange>,
    ) {
        if !no_response {
            self.counters.replies += 1;
            self.counters.errors += u64::from(error.is_some());
        }
        match &done.what {
            What::Statement => self.emit(done, error, end_ns, no_response, out),
            What::SetDb(db) if error.is_none() && !no_response => {
                self.namespace = db.clone();
                self.namespace_known = true;
            }
            What::Reset if error.is_none() && !no_response => {
                self.statements.clear();
                self.statement_bytes = 0;
            }
            _ => {}
        }
    }

    fn emit(
        &mut self,
        call: Pending,
        error: Option<u16>,
        end_ns: u64,
        no_response: bool,
        out: &mut Vec<DbExchange>,
    ) {
        let partial = call.partial || !self.namespace_known;
        self.counters.exchanges += 1;
        self.counters.partial += u64::from(partial);
        self.counters.no_response += u64::from(no_response);
        let statement = call.statement.as_deref();
        out.push(DbExchange {
            system: self.system,
            request_flow: self.request_flow,
            operation: statement.and_then(|s| s.operation.clone()),
            collection: statement.and_then(|s| s.collection.clone()),
            namespace: self.namespace.clone(),
            query_text: statement.map(|s| s.query_text.clone()),
            raw_query_text: statement.map(|s| s.raw_text.clone()),
            error_code: error.map(|code| code.to_string()),
            start_ns: call.start_ns,
            end_ns: end_ns.max(call.start_ns),
            request_bytes: call.request_bytes,
            response_bytes: call.response_bytes,
            no_response,
            partial,
        });
    }

    fn add_reply_bytes(&mut self, n: u64) {
        if let Some(front) = self.pending.front_mut() {
            front.response_bytes += n;
        }
    }

    fn server_lost(&self) -> bool {
        matches!(self.server.parse, Parse::Lost)
    }

    /// A command arrives while the server direction is out of sync: the client read every
    /// earlier reply before sending it, so those replies ended in the lost bytes, and the
    /// server's next bytes start this command's reply. A reply that had begun (a large result
    /// set whose end was not captured) ends at the last server chunk, taken as successful (an
    /// error after the first rows is rare); one never seen ends without a response.
    fn realign(&mut self, out: &mut Vec<DbExchange>) {
        while let Some(done) = self.pending.pop_front() {
            self.counters.replies_cut += u64::from(done.what == What::Statement);
            let end = self.last_reply_ns.max(done.start_ns);
            let seen = done.started;
            self.finish(done, None, end, !seen, out);
        }
        self.counters.resyncs += 1;
        self.server.parse = HEADER_START;
        self.server.continues = false;
        self.trailing_eof = None;
    }

    /// The server direction, out of sync, shows a chunk: if the chunk ends with a reply's
    /// terminator (the tail of a large result set), the waiting command's reply ends there.
    fn server_suffix_resync(
        &mut self,
        b: &[u8],
        total: u64,
        ts_ns: u64,
        out: &mut Vec<DbExchange>,
    ) {
        if self.pending.len() != 1 || b.len() as u64 != total {
            return;
        }
        let Some(error) = terminator_suffix(b) else {
            return;
        };
        self.counters.resyncs += 1;
        self.server.parse = HEADER_START;
        self.server.continues = false;
        if let Some(done) = self.pending.pop_front() {
            self.finish(done, error, ts_ns, false, out);
        }
    }

    /// A direction lost its packet boundaries.
    fn desync(&mut self, side: Side, out: &mut Vec<DbExchange>) {
        self.counters.desync += 1;
        let dir = self.dir_mut(side);
        dir.parse = Parse::Lost;
        dir.body.clear();
        dir.continues = false;
        let ts = self.last_reply_ns;
        match side {
            Side::Client => {
                // Commands were lost: the replies to them would pair with later commands.
                self.flush(ts, out);
                self.server_desync_quiet();
            }
            Side::Server => {
                if self.pending.len() > 1 {
                    // Which of several commands the lost replies belonged to is unknown.
                    self.flush(ts, out);
                }
                // Otherwise the one command waiting is the only one the lost bytes can be a
                // reply to: keep it.
            }
        }
    }

    /// The server direction stops being read until the next command realigns it.
    fn server_desync_quiet(&mut self) {
        if !matches!(self.server.parse, Parse::Stopped) {
            self.server.parse = Parse::Lost;
            self.server.body.clear();
            self.server.continues = false;
        }
    }

    /// Emits every waiting statement without a reply.
    fn flush(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        while let Some(done) = self.pending.pop_front() {
            let end = ts_ns.max(done.start_ns);
            self.finish(done, None, end, true, out);
        }
        self.trailing_eof = None;
    }

    /// Encrypted or not this protocol any more: nothing more is read.
    fn stop(&mut self) {
        self.phase = Phase::Stopped;
        for side in [Side::Client, Side::Server] {
            let dir = self.dir_mut(side);
            dir.parse = Parse::Stopped;
            dir.body = Vec::new();
        }
    }

    fn cache_statement(&mut self, id: u32, statement: Arc<Statement>) {
        self.uncache_statement(id);
        let size = statement.query_text.len();
        while !self.statements.is_empty()
            && (self.statements.len() >= MAX_STATEMENTS
                || self.statement_bytes + size > MAX_STATEMENT_BYTES)
        {
            // Least recently used first; a scan is fine at these sizes and only when full.
            let Some(oldest) = self
                .statements
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.uncache_statement(oldest);
            self.counters.statements_evicted += 1;
        }
        if size > MAX_STATEMENT_BYTES {
            return;
        }
        self.clock += 1;
        self.statement_bytes += size;
        self.counters.statements_cached += 1;
        self.statements.insert(
            id,
            Cached {
                statement,
                last_used: self.clock,
            },
        );
    }

    fn uncache_statement(&mut self, id: u32) {
        if let Some(old) = self.statements.remove(&id) {
            self.statement_bytes -= old.statement.query_text.len();
        }
    }

    fn lookup_statement(&mut self, id: u32) -> Option<Arc<Statement>> {
        self.clock += 1;
        let cached = self.statements.get_mut(&id)?;
        cached.last_used = self.clock;
        Some(cached.statement.clone())
    }
}

/// Reads one reply packet of `front` (not a continuation).
fn step(front: &mut Pending, p: &Pkt, deprecate_eof: Option<bool>) -> Outcome {
    let first = p.first();
    let end_of_result = |front: &mut Pending, status: u16| {
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            front.reply = Reply::Start;
            Outcome::More
        } else {
            Outcome::Ok
        }
    };
    match front.reply {
        Reply::Single => match p.error_number() {
            Some(code) => Outcome::Err(code),
            None => Outcome::Ok,
        },
        Reply::UntilOk => match first {
            Some(0x00) => Outcome::Ok,
            Some(0xff) => Outcome::Err(p.error_number().unwrap_or(0)),
            _ => Outcome::More,
        },
        Reply::UntilEof => match first {
            Some(0xff) => Outcome::Err(p.error_number().unwrap_or(0)),
            _ if p.is_eof() => Outcome::Ok,
            _ => Outcome::More,
        },
        Reply::Start if front.what == What::Prepare => match first {
            Some(0x00) if p.len >= 12 => {
                front.stmt_id = le32(p.body.get(1..5));
                let columns = le16(p.body.get(5..7)).unwrap_or(0);
                let params = le16(p.body.get(7..9)).unwrap_or(0);
                let left = u32::from(columns) + u32::from(params);
                if left == 0 {
                    Outcome::Ok
                } else {
                    front.reply = Reply::PrepareDefs { left };
                    Outcome::More
                }
            }
            Some(0xff) => Outcome::Err(p.error_number().unwrap_or(0)),
            _ => Outcome::Ok,
        },
        Reply::PrepareDefs { left } => {
            if column_def_like(p.body) {
                if left <= 1 {
                    if deprecate_eof == Some(false) {
                        front.reply = Reply::PrepareEof;
                        return Outcome::More;
                    }
                    return Outcome::Ok;
                }
                front.reply = Reply::PrepareDefs { left: left - 1 };
            }
            // An EOF between the parameters and the columns, or something unreadable.
            Outcome::More
        }
        Reply::PrepareEof => {
            if p.is_eof() {
                Outcome::Ok
            } else {
                Outcome::More
            }
        }
        Reply::Start => match first {
            None => Outcome::Ok,
            Some(0x00) => end_of_result(front, p.status()),
            Some(0xff) => match p.error_number() {
                Some(PROGRESS_REPORT) => Outcome::More,
                code => Outcome::Err(code.unwrap_or(0)),
            },
            // LOCAL INFILE: the client sends the file, then the server its OK or ERR.
            Some(0xfb) if !front.binary => Outcome::More,
            Some(0xfe) if p.len < 9 => Outcome::Ok,
            Some(_) => {
                let Some((count, rest)) = lenenc(p.body) else {
                    return Outcome::Ok;
                };
                // MariaDB's cached metadata: a flag byte says whether definitions (and the EOF
                // after them) follow; without them the rows come at once.
                front.reply = if count == 0 {
                    return Outcome::Ok;
                } else if rest.first() == Some(&0) {
                    Reply::Rows
                } else {
                    Reply::Columns { left: count }
                };
                Outcome::More
            }
        },
        Reply::Columns { left } if column_def_like(p.body) => {
            front.reply = if left <= 1 {
                Reply::AfterColumns
            } else {
                Reply::Columns { left: left - 1 }
            };
            Outcome::More
        }
        Reply::Columns { .. } | Reply::AfterColumns => {
            if let Some(code) = p.error_number() {
                return Outcome::Err(code);
            }
            if p.is_terminator() {
                if p.len == 5 && deprecate_eof != Some(true) {
                    // The EOF after the column definitions: rows follow, unless a cursor was
                    // opened (they come with COM_STMT_FETCH).
                    if p.status() & SERVER_STATUS_CURSOR_EXISTS != 0 {
                        return Outcome::Ok;
                    }
                    front.reply = Reply::Rows;
                    return Outcome::More;
                }
                return end_of_result(front, p.status());
            }
            front.reply = Reply::Rows;
            Outcome::More
        }
        Reply::Rows => {
            if let Some(code) = p.error_number() {
                return Outcome::Err(code);
            }
            if p.is_terminator() {
                return end_of_result(front, p.status());
            }
            Outcome::More
        }
    }
}

/// Whether a payload starts like a column definition (`catalog` is always `def`).
fn column_def_like(b: &[u8]) -> bool {
    b.starts_with(b"\x03def")
}

/// Whether `b`, a whole chunk, ends with a reply's last packet: an EOF or OK-as-EOF without
/// more results, or an ERR. Some(error number) if so.
fn terminator_suffix(b: &[u8]) -> Option<Option<u16>> {
    let from = b.len().saturating_sub(SUFFIX_SCAN);
    (from..b.len().saturating_sub(4)).find_map(|p| {
        let len = le24(&b[p..p + 3]) as usize;
        if p + 4 + len != b.len() || len == 0 {
            return None;
        }
        let payload = &b[p + 4..];
        let pkt = Pkt {
            seq: b[p + 3],
            len: len as u32,
            body: payload,
            continued: false,
            ts: 0,
        };
        if pkt.is_terminator() && (len == 5 || len >= 7) {
            return (pkt.status() & SERVER_MORE_RESULTS_EXISTS == 0).then_some(None);
        }
        let code = pkt.error_number()?;
        // ERR: number, '#', SQLSTATE, a printable message.
        let state = payload.get(3..9)?;
        (state[0] == b'#'
            && state[1..].iter().all(u8::is_ascii_alphanumeric)
            && payload[9..]
                .iter()
                .all(|&c| c >= b' ' || c == b'\n' || c == b'\t'))
        .then_some(Some(code))
    })
}

/// What walking client packets from the start of some bytes found.
#[derive(Debug, Default)]
struct Walk {
    /// Every packet was a possible command, and they end where the bytes (or `total`) do.
    plausible: bool,
    /// Commands wholly inside the bytes (or cut by capture at `total`).
    complete: usize,
    /// One of them is a statement or database name whose body checks out.
    strong: bool,
}

/// Walks client command packets from the start of `b`, a chunk that moved `total` bytes (None:
/// unknown, as for a connection's first bytes).
fn walk_commands(b: &[u8], total: Option<u64>) -> Walk {
    let mut w = Walk::default();
    let mut i = 0usize;
    loop {
        if i == b.len() {
            w.plausible = w.complete > 0 && total.is_none_or(|t| t == i as u64);
            return w;
        }
        let Some(header) = b.get(i..i + 4) else {
            return w;
        };
        let len = le24(header) as usize;
        if header[3] != 0 || len == 0 || len >= MAX_PAYLOAD as usize {
            return w;
        }
        let end = i + 4 + len;
        let body = &b[i + 4..end.min(b.len())];
        let whole = end <= b.len();
        match command_check(body, len, whole) {
            Some(strong) => {
                w.strong |= strong;
                w.complete += 1;
            }
            None => return w,
        }
        if !whole {
            // Cut by capture: the syscall must have moved exactly up to the packet's end; the
            // first bytes of a connection (total unknown) only for a statement's text.
            w.plausible = match total {
                Some(t) => end as u64 == t,
                None => w.complete == 1 && w.strong && b.len() >= MIN_CUT_DETECT,
            };
            return w;
        }
        i = end;
    }
}

/// Whether a client packet (its captured payload `b` of `len` bytes, `whole` if all of it was
/// captured) is a possible command; Some(strong) if so.
fn command_check(b: &[u8], len: usize, whole: bool) -> Option<bool> {
    let (&cmd, body) = b.split_first()?;
    match cmd {
        // MySQL 8 query attributes: none, one set.
        COM_QUERY => sql_like(body.strip_prefix(&[0, 1]).unwrap_or(body)).then_some(true),
        COM_STMT_PREPARE => sql_like(body).then_some(true),
        COM_STMT_EXECUTE => {
            // Statement id, flags (cursor type), iteration count 1.
            (len >= 10
                && body.get(4).is_none_or(|&f| f <= 0x0f)
                && body.get(5..9).is_none_or(|n| n == [1, 0, 0, 0]))
            .then_some(whole)
        }
        COM_INIT_DB => ((2..=1 + MAX_NAMESPACE_LEN * 4).contains(&len)
            && body.iter().all(|&c| c > b' ' && c != 0x7f))
        .then_some(whole),
        COM_STMT_CLOSE | COM_STMT_FETCH | 0x1a | 0x0c => {
            (len == if cmd == COM_STMT_FETCH { 9 } else { 5 }).then_some(false)
        }
        COM_QUIT | 0x0e | COM_RESET_CONNECTION | COM_STATISTICS => (len == 1).then_some(false),
        0x1b => (len == 3 && body.get(1) == Some(&0)).then_some(false),
        COM_STMT_SEND_LONG_DATA => (len >= 7).then_some(false),
        _ => None,
    }
}

/// Whether a chunk is a lone packet header of a command (sequence id 0), as servers read
/// them (the header, then exactly the payload).
fn header_only(b: &[u8], total: u64) -> bool {
    b.len() == 4 && total == 4 && b[3] == 0 && (1..MAX_PAYLOAD).contains(&le24(b))
}

/// Whether a chunk is a statement command's payload without its header (a server's read of
/// the payload after the header): `COM_QUERY` or `COM_STMT_PREPARE` with SQL text starting
/// with a known statement keyword, or `COM_STMT_EXECUTE` with its iteration count of 1.
fn bare_command_like(b: &[u8], total: u64) -> bool {
    if b.len() < 2 || total >= u64::from(MAX_PAYLOAD) {
        return false;
    }
    match b[0] {
        COM_QUERY | COM_STMT_PREPARE => {
            let text = &b[1..];
            let text = if b[0] == COM_QUERY {
                text.strip_prefix(&[0, 1]).unwrap_or(text)
            } else {
                text
            };
            sql_like(text)
                && sql::operation_with(&String::from_utf8_lossy(text), Dialect::MySql).is_some()
        }
        COM_STMT_EXECUTE => b.len() >= 10 && b[5] <= 0x0f && b[6..10] == [1, 0, 0, 0],
        _ => false,
    }
}

/// Whether bytes look like the start of SQL text: printable (UTF-8 allowed) with ordinary
/// whitespace, starting (after whitespace) with a letter, `(` or a comment.
fn sql_like(b: &[u8]) -> bool {
    let text = b
        .iter()
        .all(|&c| c >= b' ' && c != 0x7f || matches!(c, b'\t' | b'\n' | b'\r'));
    let first = b.iter().find(|c| !c.is_ascii_whitespace());
    text && first
        .is_some_and(|&c| c.is_ascii_alphabetic() || matches!(c, b'(' | b'/' | b'-' | b'#'))
}

/// Whether `b` starts with a server greeting: length, sequence id 0, protocol version 10, a
/// printable version string starting with a digit, its NUL, thread id, 8 scramble bytes and a
/// NUL filler.
fn greeting_like(b: &[u8]) -> bool {
    if b.len() < 5 || b[3] != 0 || b[4] != 0x0a {
        return false;
    }
    let len = le24(b) as usize;
    if !(32..=1024).contains(&len) {
        return false;
    }
    b.len() <= 4 + len && greeting_payload_like(&b[4..])
}

/// Whether `p` starts like a greeting's payload (from protocol version 10 on).
fn greeting_payload_like(p: &[u8]) -> bool {
    let Some((&0x0a, body)) = p.split_first() else {
        return false;
    };
    let Some(nul) = memchr::memchr(0, body) else {
        return false;
    };
    let version = &body[..nul];
    (1..=100).contains(&version.len())
        && version[0].is_ascii_digit()
        && version.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
        && body.get(nul + 13) == Some(&0)
}

/// Whether a chunk is a whole greeting payload without its header (a client's read of it
/// after reading the header apart).
fn greeting_payload_alone(b: &[u8], total: u64) -> bool {
    (32..=1024).contains(&b.len()) && b.len() as u64 == total && greeting_payload_like(b)
}

/// A database name as kept: cut at [`MAX_NAMESPACE_LEN`] bytes.
fn bounded_name(name: &[u8]) -> String {
    let name = &name[..name.len().min(MAX_NAMESPACE_LEN)];
    String::from_utf8_lossy(name).into_owned()
}

fn le16(b: Option<&[u8]>) -> Option<u16> {
    let b = b?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

fn le24(b: &[u8]) -> u32 {
    u32::from(b[0]) | (u32::from(b[1]) << 8) | (u32::from(b[2]) << 16)
}

fn le32(b: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_le_bytes(b?.get(..4)?.try_into().ok()?))
}

/// A length-encoded integer and what follows it.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    let mut v = 0u64;
    for (i, &c) in bytes.iter().enumerate() {
        v |= u64::from(c) << (8 * i);
    }
    Some((v, &rest[n..]))
}

/// A NUL-terminated string and what follows its NUL, if the NUL was captured.
fn cstr_whole(b: &[u8]) -> Option<(&[u8], &[u8])> {
    memchr::memchr(0, b).map(|i| (&b[..i], &b[i + 1..]))
}

#[cfg(test)]
mod tests;
