//! PostgreSQL connection tracking for a passive observer: turns the bytes one endpoint of a
//! connection read and wrote (frontend/backend protocol 3.0) into one [`DbExchange`] per
//! executed statement — a simple `Query`, or an extended-protocol `Execute` — whichever end
//! of the connection the instrumented process is.
//!
//! Pairing is a FIFO of what the frontend asked for (queries, executes, syncs), completed in
//! order by the backend's replies, so several messages per packet and pipelined batches pair
//! exactly. Prepared statements are resolved to their text through a bounded per-connection
//! cache; a statement prepared before capture started gives an exchange without text, marked
//! partial, never a guess. Query text is sanitized ([`sql::sanitize`]) before it leaves.
//!
//! Capture may miss bytes (only the first bytes of a read or write are kept, or the
//! connection is older than Sonde). Every message carries its length, so uncaptured bytes
//! inside a message are skipped by count; sync is lost only when a message header falls into
//! uncaptured bytes, and found again at a later chunk whose bytes parse as plausible messages.
//! What is lost is counted in [`Counters`]. Memory per connection is bounded by [`Limits`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::db::DbExchange;
use super::http2::Flow;
use super::sql;

#[cfg(test)]
mod tests;

/// `db.system.name` of every exchange.
pub const SYSTEM: &str = "postgresql";

/// `error_code` of an `ErrorResponse` whose SQLSTATE was not captured or not valid.
pub const UNKNOWN_SQLSTATE: &str = "_OTHER";

/// StartupMessage protocol version 3.0 (`3 << 16`); 3.2 (PostgreSQL 18) is accepted too.
const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// The server rejects longer startup packets (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_LEN: u32 = 10_000;
/// Longest message length accepted (and skipped); the server's own limit for most messages.
const MAX_MESSAGE_LEN: u32 = 1 << 30;
/// Longest database name kept (PostgreSQL names are at most 63 bytes).
const MAX_NAMESPACE_LEN: usize = 64;
/// Longest statement or portal name used as a cache key (longer names are cut).
const MAX_NAME_LEN: usize = 128;
/// How far from a chunk's end a reply run ending in `ReadyForQuery` is looked for when the
/// backend direction is out of sync.
const SUFFIX_SCAN: usize = 512;

/// Per-connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Prepared statements remembered (least recently used evicted first).
    pub max_statements: usize,
    /// Sanitized text bytes held by the statement cache, all statements together.
    pub max_statement_bytes: usize,
    /// Named portals remembered (the map is cleared when full).
    pub max_portals: usize,
    /// Requests awaiting their reply. Past it pairing is given up until the backend is idle.
    pub max_pending: usize,
    /// Bytes of one message kept to read it (a query's text); the rest is skipped.
    pub max_buffer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_statements: 1024,
            max_statement_bytes: 256 * 1024,
            max_portals: 64,
            max_pending: 1024,
            max_buffer: 64 * 1024,
        }
    }
}

/// Everything a connection lost or skipped, and what it saw. Plain counters, summed by the
/// caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Message headers parsed, both directions.
    pub messages: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Of those, marked partial: a prepared statement never seen, or the startup message
    /// (the database name) not seen.
    pub partial: u64,
    /// Of those, without a reply (connection closed, capture lost it, or its end was cut).
    pub no_response: u64,
    /// Of those, ended because the frontend sent its next request while the reply's end was
    /// not captured (a large result read at once): the end is the reply's last captured
    /// chunk, the status unknown.
    pub replies_cut: u64,
    /// Executes of statements whose text was never seen (prepared before capture started,
    /// or evicted from the cache).
    pub unknown_statements: u64,
    /// Executes the server skipped because an earlier message of the same batch failed
    /// (it sends nothing for them until `Sync`): dropped, no exchange.
    pub not_executed: u64,
    /// Requests not tracked: the pending queue was full, or pairing was given up after a
    /// loss and the backend had not yet been idle again.
    pub untracked: u64,
    /// Replies with no request pending to pair with.
    pub orphan_replies: u64,
    /// Statements cached from `Parse` messages.
    pub statements_cached: u64,
    /// Statements evicted from the cache by its bounds.
    pub statements_evicted: u64,
    /// Message boundaries lost: a header fell into uncaptured bytes, or a message had an
    /// impossible type or length.
    pub desync: u64,
    /// Message boundaries found again (including a mid-stream connection's first).
    pub resyncs: u64,
    /// Messages with an impossible type or length (also counted in `desync`).
    pub malformed: u64,
    /// Messages partly uncaptured, skipped by their length without losing sync.
    pub truncated_messages: u64,
    /// Uncaptured bytes skipped inside messages.
    pub uncaptured_bytes_skipped: u64,
    /// Connections tracked without their start (older than Sonde).
    pub midstream_pickups: u64,
    /// Connections that turned to TLS or GSSAPI encryption after `SSLRequest` /
    /// `GSSENCRequest`: not parsed further here (TLS plaintext arrives through the uprobes).
    pub encrypted: u64,
    /// `CancelRequest` connections.
    pub cancel_requests: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            messages,
            exchanges,
            partial,
            no_response,
            replies_cut,
            unknown_statements,
            not_executed,
            untracked,
            orphan_replies,
            statements_cached,
            statements_evicted,
            desync,
            resyncs,
            malformed,
            truncated_messages,
            uncaptured_bytes_skipped,
            midstream_pickups,
            encrypted,
            cancel_requests,
        } = other;
        self.messages += messages;
        self.exchanges += exchanges;
        self.partial += partial;
        self.no_response += no_response;
        self.replies_cut += replies_cut;
        self.unknown_statements += unknown_statements;
        self.not_executed += not_executed;
        self.untracked += untracked;
        self.orphan_replies += orphan_replies;
        self.statements_cached += statements_cached;
        self.statements_evicted += statements_evicted;
        self.desync += desync;
        self.resyncs += resyncs;
        self.malformed += malformed;
        self.truncated_messages += truncated_messages;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
        self.midstream_pickups += midstream_pickups;
        self.encrypted += encrypted;
        self.cancel_requests += cancel_requests;
    }
}

/// Which end of the protocol a direction's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Frontend,
    Backend,
}

/// How the next message of a direction is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// An untyped startup-phase packet (frontend): int32 length, int32 code, body.
    Startup,
    /// The backend's single-byte answer to `SSLRequest` / `GSSENCRequest`.
    Answer,
    /// Type byte, int32 length (counting itself), body.
    Typed,
}

impl Framing {
    fn header_len(self) -> usize {
        match self {
            Framing::Startup => 8,
            Framing::Answer => 1,
            Framing::Typed => 5,
        }
    }
}

/// A message being read.
#[derive(Debug, Clone, Copy)]
struct Body {
    /// The type byte; 0 for a startup-phase packet.
    tag: u8,
    /// A startup-phase packet's code (protocol version or request code).
    code: u32,
    /// Body bytes (after the header).
    len: u32,
    /// Body bytes passed so far, captured or skipped.
    pos: u32,
    /// Body bytes worth keeping.
    keep: u32,
    /// Some body bytes were not captured.
    truncated: bool,
    /// The chunk that carried the message's first byte.
    ts: u64,
}

#[derive(Debug, Clone, Copy)]
enum Parse {
    Header {
        buf: [u8; 8],
        len: usize,
        ts: u64,
    },
    Body(Body),
    /// Boundary lost: waiting for a chunk that starts (or, backend, ends) plausibly.
    Lost,
    /// Encrypted from here on: nothing more to read.
    Stopped,
}

const HEADER_START: Parse = Parse::Header {
    buf: [0; 8],
    len: 0,
    ts: 0,
};

struct Direction {
    framing: Framing,
    parse: Parse,
    /// The kept prefix of the current message's body.
    body: Vec<u8>,
}

/// What a cached statement contributes to an exchange, computed once at `Parse`.
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
            query_text: sql::sanitize(&text),
            raw_text,
            operation: sql::operation(&text),
            collection: sql::collection(&text),
        }
    }
}

struct Cached {
    statement: Arc<Statement>,
    last_used: u64,
}

/// A statement run: a simple query or an execute.
struct Call {
    statement: Option<Arc<Statement>>,
    partial: bool,
    start_ns: u64,
    request_bytes: u64,
    response_bytes: u64,
    error_code: Option<String>,
}

/// What the frontend asked for, in order; the backend answers in the same order.
enum Pending {
    /// `Query`: ends at `ReadyForQuery`.
    Simple(Call),
    /// `Execute`: ends at `CommandComplete`, `EmptyQueryResponse`, `PortalSuspended` or
    /// `ErrorResponse`.
    Execute(Call),
    /// `Sync`: ends at `ReadyForQuery`.
    Sync,
    /// `FunctionCall`: ends at `ReadyForQuery`, no exchange.
    Function,
}

impl Pending {
    /// Whether `ReadyForQuery` ends this item (and the batch it closes).
    fn ends_batch(&self) -> bool {
        !matches!(self, Pending::Execute(_))
    }
}

/// A complete (or skipped-to-its-end) message handed to the protocol logic.
struct Msg<'b> {
    tag: u8,
    code: u32,
    /// The kept prefix of its body.
    body: &'b [u8],
    /// Bytes on the wire, header included.
    size: u64,
    /// The chunk that carried its first byte.
    ts: u64,
}

/// One PostgreSQL connection as seen from one of its endpoints.
pub struct Connection {
    limits: Limits,
    /// The flow that carries the frontend's bytes.
    request_flow: Flow,
    frontend: Direction,
    backend: Direction,
    pending: VecDeque<Pending>,
    statements: HashMap<Box<[u8]>, Cached>,
    statement_bytes: usize,
    clock: u64,
    portals: HashMap<Box<[u8]>, Option<Arc<Statement>>>,
    /// `db.namespace`, from the startup message.
    namespace: Option<String>,
    /// The startup message was seen (so a missing namespace is not the connection's past).
    startup_seen: bool,
    /// The first `ReadyForQuery` after the startup message is expected without a request.
    startup_ready: bool,
    /// An `ErrorResponse` ended an execute: the rest of its batch is skipped by the server.
    aborted: bool,
    /// Pairing was given up: requests are not tracked until the backend is idle again.
    await_ready: bool,
    /// The frontend was seen sending a batch before the previous one's `ReadyForQuery`.
    pipelined: bool,
    /// Frontend bytes and first chunk since the last execute, query or sync.
    group_bytes: u64,
    group_start: Option<u64>,
    /// The latest backend chunk: where a reply whose end was not captured ends.
    last_reply_ns: u64,
    counters: Counters,
}

impl Connection {
    /// A tracker for a connection whose frontend writes on `request_flow` (`Outbound` when
    /// the instrumented process is the client). `fresh`: the connection's first bytes are
    /// going to be fed (otherwise it is older than Sonde, and each direction starts at its
    /// first chunk that parses as plausible messages).
    pub fn new(request_flow: Flow, fresh: bool) -> Connection {
        Connection::with_limits(request_flow, fresh, Limits::default())
    }

    pub fn with_limits(request_flow: Flow, fresh: bool, limits: Limits) -> Connection {
        let (frontend, backend, midstream) = if fresh {
            (HEADER_START, HEADER_START, 0)
        } else {
            (Parse::Lost, Parse::Lost, 1)
        };
        Connection {
            limits,
            request_flow,
            frontend: Direction {
                framing: if fresh {
                    Framing::Startup
                } else {
                    Framing::Typed
                },
                parse: frontend,
                body: Vec::new(),
            },
            backend: Direction {
                framing: Framing::Typed,
                parse: backend,
                body: Vec::new(),
            },
            pending: VecDeque::new(),
            statements: HashMap::new(),
            statement_bytes: 0,
            clock: 0,
            portals: HashMap::new(),
            namespace: None,
            startup_seen: false,
            startup_ready: false,
            aborted: false,
            await_ready: false,
            pipelined: false,
            group_bytes: 0,
            group_start: None,
            last_reply_ns: 0,
            counters: Counters {
                midstream_pickups: midstream,
                ..Counters::default()
            },
        }
    }

    /// Whether the first captured bytes of a connection, carried by `flow`, are PostgreSQL's;
    /// if so, the flow that carries the frontend's bytes (the request flow).
    ///
    /// A frontend's start: a StartupMessage (protocol 3.x), `SSLRequest`, `GSSENCRequest` or
    /// `CancelRequest`; or, for a connection older than Sonde, typed frontend messages (`Q`,
    /// `P`, `B`, `E`, `S`, `D`, `C`, `H`, `X`, …) whose lengths chain to the end of the bytes,
    /// with two or more messages or one whose body checks out (a `Query` ending in its only
    /// NUL, an `Execute`, a `Sync`). Then `flow` is the request flow.
    ///
    /// A backend's start means the other flow is the request flow: an authentication request
    /// (`R` of length 8 with code 0 or 3, length 12 with code 5 (MD5), or SASL (10) with its
    /// mechanism list), or, for an older connection, backend messages chaining to the end of
    /// the bytes and ending with `ReadyForQuery`. A lone `S`/`N` (the answer to an
    /// `SSLRequest`) is too ambiguous and gives None.
    pub fn detect(flow: Flow, first: &[u8]) -> Option<Flow> {
        if startup_like(first) || walk(Side::Frontend, first, None).plausible() {
            return Some(flow);
        }
        if auth_request_like(first) {
            return Some(flow.opposite());
        }
        let w = walk(Side::Backend, first, Some(first.len() as u64));
        (w.plausible() && w.last == Some(b'Z')).then_some(flow.opposite())
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests awaiting their reply.
    pub fn open_exchanges(&self) -> usize {
        self.pending.len()
    }

    /// Statements in the cache.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }

    /// Bytes buffered for incomplete messages, both directions.
    pub fn buffered_bytes(&self) -> usize {
        self.frontend.body.len() + self.backend.body.len()
    }

    fn side(&self, flow: Flow) -> Side {
        if flow == self.request_flow {
            Side::Frontend
        } else {
            Side::Backend
        }
    }

    fn dir(&self, side: Side) -> &Direction {
        match side {
            Side::Frontend => &self.frontend,
            Side::Backend => &self.backend,
        }
    }

    fn dir_mut(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Frontend => &mut self.frontend,
            Side::Backend => &mut self.backend,
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
        if side == Side::Backend {
            self.last_reply_ns = self.last_reply_ns.max(ts_ns);
        }
        let mut input = captured;
        match self.dir(side).parse {
            Parse::Stopped => return,
            Parse::Lost => {
                let Some(offset) = resync_point(side, captured, total) else {
                    if side == Side::Backend {
                        self.add_reply_bytes(total);
                    }
                    return;
                };
                self.counters.resyncs += 1;
                let dir = self.dir_mut(side);
                dir.framing = Framing::Typed;
                dir.parse = HEADER_START;
                dir.body.clear();
                input = &captured[offset..];
            }
            Parse::Header { len: 0, .. }
                if side == Side::Frontend
                    && self.frontend.framing == Framing::Startup
                    && input.len() >= 8
                    && !startup_like(input)
                    && walk(Side::Frontend, input, Some(total)).plausible() =>
            {
                // Said to be fresh, but typed messages come first: the start was missed after
                // all.
                self.counters.midstream_pickups += 1;
                self.frontend.framing = Framing::Typed;
            }
            _ => {}
        }

        while !input.is_empty() {
            match self.dir(side).parse {
                Parse::Header { mut buf, len, ts } => {
                    let ts = if len == 0 { ts_ns } else { ts };
                    let framing = self.dir(side).framing;
                    let want = framing.header_len();
                    let n = (want - len).min(input.len());
                    buf[len..len + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if len + n < want {
                        self.dir_mut(side).parse = Parse::Header {
                            buf,
                            len: len + n,
                            ts,
                        };
                    } else {
                        self.begin_message(side, framing, &buf[..want], ts, ts_ns, out);
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
                    if body.pos == body.len {
                        self.complete(side, body, ts_ns, out);
                    } else {
                        self.dir_mut(side).parse = Parse::Body(body);
                    }
                }
                Parse::Lost | Parse::Stopped => break,
            }
        }

        let gap = total - captured.len() as u64;
        if gap > 0 {
            self.skip_uncaptured(side, gap, ts_ns, out);
        }
    }

    /// The connection closed: every request still waiting is emitted without a reply.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        self.flush(ts_ns, out);
        self.statements = HashMap::new();
        self.statement_bytes = 0;
        self.portals = HashMap::new();
        for side in [Side::Frontend, Side::Backend] {
            self.dir_mut(side).body = Vec::new();
        }
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
                    if side == Side::Backend {
                        self.add_reply_bytes(gap - remaining);
                    }
                    self.desync(side, out);
                }
            }
            Parse::Header { .. } => {
                if side == Side::Backend {
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

    /// A header is complete: check it and start its body.
    fn begin_message(
        &mut self,
        side: Side,
        framing: Framing,
        header: &[u8],
        msg_ts: u64,
        ts_ns: u64,
        out: &mut Vec<DbExchange>,
    ) {
        let (tag, code, body_len) = match framing {
            Framing::Answer => {
                self.encryption_answer(header[0], out);
                return;
            }
            Framing::Startup => {
                let len = be32(&header[0..4]);
                let code = be32(&header[4..8]);
                if !startup_header_ok(len, code) {
                    self.counters.malformed += 1;
                    self.desync(side, out);
                    return;
                }
                (0, code, len - 8)
            }
            Framing::Typed => {
                let tag = header[0];
                let len = be32(&header[1..5]);
                if !header_ok(side, tag, len) {
                    self.counters.malformed += 1;
                    self.desync(side, out);
                    return;
                }
                (tag, 0, len - 4)
            }
        };
        self.counters.messages += 1;
        let keep = keep_len(side, tag).min(self.limits.max_buffer);
        self.dir_mut(side).body.clear();
        let body = Body {
            tag,
            code,
            len: body_len,
            pos: 0,
            // keep <= max_buffer; a message body is at most 1 GiB.
            keep: keep.min(body_len as usize) as u32,
            truncated: false,
            ts: msg_ts,
        };
        self.complete_or_keep(side, body, ts_ns, out);
    }

    /// A message's last byte passed: hand it to the protocol logic.
    fn complete(&mut self, side: Side, body: Body, ts_ns: u64, out: &mut Vec<DbExchange>) {
        if body.truncated {
            self.counters.truncated_messages += 1;
        }
        self.dir_mut(side).parse = HEADER_START;
        let buf = std::mem::take(&mut self.dir_mut(side).body);
        let header_len = if body.tag == 0 { 8 } else { 5 };
        let msg = Msg {
            tag: body.tag,
            code: body.code,
            body: &buf,
            size: u64::from(body.len) + header_len,
            ts: body.ts,
        };
        match side {
            Side::Frontend => self.on_request(&msg, out),
            Side::Backend => self.on_reply(&msg, ts_ns, out),
        }
        let mut buf = buf;
        buf.clear();
        self.dir_mut(side).body = buf;
    }

    fn encryption_answer(&mut self, answer: u8, out: &mut Vec<DbExchange>) {
        match answer {
            b'N' => {
                // Refused: the frontend goes on in cleartext with another startup packet.
                self.backend.framing = Framing::Typed;
                self.backend.parse = HEADER_START;
            }
            b'S' | b'G' => {
                self.counters.encrypted += 1;
                self.frontend.parse = Parse::Stopped;
                self.backend.parse = Parse::Stopped;
            }
            _ => {
                self.counters.malformed += 1;
                self.backend.framing = Framing::Typed;
                self.desync(Side::Backend, out);
            }
        }
    }

    fn on_request(&mut self, msg: &Msg, out: &mut Vec<DbExchange>) {
        if msg.tag == 0 {
            self.on_startup(msg, out);
            return;
        }
        if matches!(msg.tag, b'X' | b'd' | b'c' | b'f' | b'p') {
            // Terminate, COPY data, passwords: part of no statement's request.
            return;
        }
        self.before_request(out);
        self.group_bytes += msg.size;
        let group_start = *self.group_start.get_or_insert(msg.ts);
        let body = msg.body;
        match msg.tag {
            b'Q' => {
                let statement = Arc::new(Statement::from_text(cstr(body).0));
                let call = self.call(Some(statement), group_start);
                self.push(Pending::Simple(call), out);
            }
            b'P' => {
                // A name cut by capture is not cached: it would shadow another statement.
                if let Some((name, rest)) = cstr_whole(body) {
                    self.cache_statement(name, Statement::from_text(cstr(rest).0));
                }
            }
            b'B' => {
                let names =
                    cstr_whole(body).and_then(|(portal, rest)| Some((portal, cstr_whole(rest)?.0)));
                let Some((portal, name)) = names else {
                    // Which portal this binds is unknown: forget them all rather than let an
                    // Execute find a stale one.
                    self.portals.clear();
                    return;
                };
                let statement = self.lookup_statement(name);
                if self.portals.len() >= self.limits.max_portals
                    && !self.portals.contains_key(name_key(portal))
                {
                    self.portals.clear();
                }
                self.portals.insert(name_key(portal).into(), statement);
            }
            b'E' => {
                let statement = cstr_whole(body)
                    .and_then(|(portal, _)| self.portals.get(name_key(portal)).cloned().flatten());
                if statement.is_none() {
                    self.counters.unknown_statements += 1;
                }
                let call = self.call(statement, group_start);
                self.push(Pending::Execute(call), out);
            }
            b'S' => {
                self.end_group();
                self.push(Pending::Sync, out);
            }
            b'F' => {
                self.end_group();
                self.push(Pending::Function, out);
            }
            b'C' => {
                if let Some((name, _)) = cstr_whole(body.get(1..).unwrap_or_default()) {
                    match body.first() {
                        Some(b'S') => self.uncache_statement(name),
                        Some(b'P') => {
                            self.portals.remove(name_key(name));
                        }
                        _ => {}
                    }
                }
            }
            // Describe, Flush: replies are counted into the pending request's bytes.
            _ => {}
        }
    }

    fn on_startup(&mut self, msg: &Msg, out: &mut Vec<DbExchange>) {
        match msg.code {
            SSL_REQUEST | GSSENC_REQUEST => {
                self.backend.framing = Framing::Answer;
            }
            CANCEL_REQUEST => self.counters.cancel_requests += 1,
            _ if protocol_3(msg.code) => {
                self.frontend.framing = Framing::Typed;
                self.startup_seen = true;
                self.startup_ready = true;
                let mut rest = msg.body;
                while !rest.is_empty() && rest[0] != 0 {
                    let (name, after) = cstr(rest);
                    let (value, after) = cstr(after);
                    // The user name is deliberately not kept: it is not exported.
                    if name == b"database" && !value.is_empty() {
                        let cut = &value[..value.len().min(MAX_NAMESPACE_LEN)];
                        self.namespace = Some(String::from_utf8_lossy(cut).into_owned());
                    }
                    rest = after;
                }
            }
            _ => {
                self.counters.malformed += 1;
                self.desync(Side::Frontend, out);
            }
        }
    }

    /// Bookkeeping before a request message: pipelining seen, replies whose end was cut.
    fn before_request(&mut self, out: &mut Vec<DbExchange>) {
        let batch_pending = self.pending.iter().any(Pending::ends_batch);
        if !batch_pending {
            return;
        }
        if !matches!(self.backend.parse, Parse::Lost) {
            // A new request while an earlier batch awaits its ReadyForQuery.
            self.pipelined = true;
            return;
        }
        if self.pipelined {
            return;
        }
        // The frontend waits for ReadyForQuery before sending more (it never pipelined), so
        // every batch it sent is answered: the ends of those replies were not captured.
        while let Some(item) = self.pending.pop_front() {
            let last = item.ends_batch() && !self.pending.iter().any(Pending::ends_batch);
            match item {
                Pending::Simple(call) | Pending::Execute(call) => {
                    self.counters.replies_cut += 1;
                    let end = self.last_reply_ns;
                    self.emit(call, end, true, out);
                }
                Pending::Sync | Pending::Function => {}
            }
            if last {
                break;
            }
        }
        self.aborted = false;
    }

    fn end_group(&mut self) {
        self.group_bytes = 0;
        self.group_start = None;
    }

    fn call(&mut self, statement: Option<Arc<Statement>>, start_ns: u64) -> Call {
        let call = Call {
            partial: statement.is_none(),
            statement,
            start_ns,
            request_bytes: self.group_bytes,
            response_bytes: 0,
            error_code: None,
        };
        self.end_group();
        call
    }

    fn push(&mut self, item: Pending, out: &mut Vec<DbExchange>) {
        if self.await_ready {
            if matches!(item, Pending::Simple(_) | Pending::Execute(_)) {
                self.counters.untracked += 1;
            }
            return;
        }
        if self.pending.len() >= self.limits.max_pending {
            // Dropping one item would shift every later pairing: give up on all of them.
            self.counters.untracked += 1;
            let ts = self.last_reply_ns;
            self.flush(ts, out);
            self.await_ready = true;
            return;
        }
        self.pending.push_back(item);
    }

    fn on_reply(&mut self, msg: &Msg, ts_ns: u64, out: &mut Vec<DbExchange>) {
        if let Some(Pending::Simple(call) | Pending::Execute(call)) = self.pending.front_mut() {
            call.response_bytes += msg.size;
        }
        match msg.tag {
            b'Z' => self.ready(ts_ns, out),
            b'C' | b'I' | b's' => match self.pending.front() {
                Some(Pending::Execute(_)) => {
                    if let Some(Pending::Execute(call)) = self.pending.pop_front() {
                        self.emit(call, ts_ns, false, out);
                    }
                }
                Some(Pending::Simple(_)) => {}
                _ => self.counters.orphan_replies += 1,
            },
            b'E' => {
                let code = sqlstate(msg.body);
                match self.pending.front_mut() {
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut call)) = self.pending.pop_front() {
                            call.error_code = Some(code);
                            self.emit(call, ts_ns, false, out);
                        }
                        // The server skips the rest of the batch up to its Sync.
                        self.aborted = true;
                    }
                    Some(Pending::Simple(call)) => {
                        call.error_code.get_or_insert(code);
                    }
                    // A Parse, Bind or Describe failed with no Execute after it in the batch,
                    // or a FunctionCall failed: no statement ran.
                    Some(Pending::Sync | Pending::Function) => self.aborted = true,
                    // Authentication failures and fatal errors outside any request.
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// `ReadyForQuery`: the batch at the head of the queue is over.
    fn ready(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        if self.await_ready {
            // Idle: what the frontend sends from now on pairs with what follows.
            self.await_ready = false;
            self.aborted = false;
            return;
        }
        if std::mem::take(&mut self.startup_ready) && self.pending.is_empty() {
            return;
        }
        loop {
            match self.pending.pop_front() {
                Some(Pending::Execute(call)) => {
                    if self.aborted {
                        self.counters.not_executed += 1;
                    } else {
                        // Its completion was never seen.
                        self.emit(call, ts_ns, true, out);
                    }
                }
                Some(Pending::Simple(call)) => {
                    self.emit(call, ts_ns, false, out);
                    break;
                }
                Some(Pending::Sync | Pending::Function) => break,
                None => {
                    self.counters.orphan_replies += 1;
                    break;
                }
            }
        }
        self.aborted = false;
    }

    /// A direction lost its message boundaries.
    fn desync(&mut self, side: Side, out: &mut Vec<DbExchange>) {
        self.counters.desync += 1;
        let dir = self.dir_mut(side);
        dir.parse = Parse::Lost;
        dir.body.clear();
        let ts = self.last_reply_ns;
        match side {
            Side::Frontend => {
                // Requests were lost: the replies to them would pair with later requests.
                self.end_group();
                self.flush(ts, out);
                self.await_ready = true;
            }
            Side::Backend => {
                let batches = self.pending.iter().filter(|p| p.ends_batch()).count();
                let first_batch_end = self
                    .pending
                    .iter()
                    .position(Pending::ends_batch)
                    .map_or(self.pending.len(), |i| i + 1);
                let executes = self
                    .pending
                    .iter()
                    .take(first_batch_end)
                    .filter(|p| matches!(p, Pending::Execute(_)))
                    .count();
                let more_after = self.pending.len() > first_batch_end;
                if self.pipelined || batches > 1 || more_after {
                    // Which of several batches the lost replies belonged to is unknown.
                    self.flush(ts, out);
                    self.await_ready = true;
                } else if executes > 1 {
                    // One batch: its ReadyForQuery still ends it, but which of its executes
                    // completed in the lost bytes is unknown.
                    let mut kept = VecDeque::new();
                    while let Some(item) = self.pending.pop_front() {
                        match item {
                            Pending::Execute(call) => self.emit(call, ts, true, out),
                            other => kept.push_back(other),
                        }
                    }
                    self.pending = kept;
                }
                // Otherwise the one request waiting is the only one the next reply can be
                // for: keep it.
            }
        }
    }

    /// Emits every waiting request without a reply.
    fn flush(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        while let Some(item) = self.pending.pop_front() {
            if let Pending::Simple(call) | Pending::Execute(call) = item {
                self.emit(call, ts_ns, true, out);
            }
        }
        self.aborted = false;
    }

    fn add_reply_bytes(&mut self, n: u64) {
        if let Some(Pending::Simple(call) | Pending::Execute(call)) = self.pending.front_mut() {
            call.response_bytes += n;
        }
    }

    fn emit(&mut self, call: Call, end_ns: u64, no_response: bool, out: &mut Vec<DbExchange>) {
        let partial = call.partial || !self.startup_seen;
        self.counters.exchanges += 1;
        self.counters.partial += u64::from(partial);
        self.counters.no_response += u64::from(no_response);
        let statement = call.statement.as_deref();
        out.push(DbExchange {
            system: SYSTEM,
            request_flow: self.request_flow,
            operation: statement.and_then(|s| s.operation.clone()),
            collection: statement.and_then(|s| s.collection.clone()),
            namespace: self.namespace.clone(),
            query_text: statement.map(|s| s.query_text.clone()),
            raw_query_text: statement.map(|s| s.raw_text.clone()),
            error_code: call.error_code,
            start_ns: call.start_ns,
            end_ns: end_ns.max(call.start_ns),
            request_bytes: call.request_bytes,
            response_bytes: call.response_bytes,
            no_response,
            partial,
        });
    }

    fn cache_statement(&mut self, name: &[u8], statement: Statement) {
        self.uncache_statement(name);
        let size = statement.query_text.len();
        while !self.statements.is_empty()
            && (self.statements.len() >= self.limits.max_statements
                || self.statement_bytes + size > self.limits.max_statement_bytes)
        {
            // Least recently used first; a scan is fine at these sizes and only when full.
            let Some(oldest) = self
                .statements
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.uncache_statement(&oldest);
            self.counters.statements_evicted += 1;
        }
        if self.statements.len() >= self.limits.max_statements
            || size > self.limits.max_statement_bytes
        {
            return;
        }
        self.clock += 1;
        self.statement_bytes += size;
        self.counters.statements_cached += 1;
        self.statements.insert(
            name_key(name).into(),
            Cached {
                statement: Arc::new(statement),
                last_used: self.clock,
            },
        );
    }

    fn uncache_statement(&mut self, name: &[u8]) {
        if let Some(old) = self.statements.remove(name_key(name)) {
            self.statement_bytes -= old.statement.query_text.len();
        }
    }

    fn lookup_statement(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.clock += 1;
        let cached = self.statements.get_mut(name_key(name))?;
        cached.last_used = self.clock;
        Some(cached.statement.clone())
    }
}

/// A statement or portal name as used for a key: cut at [`MAX_NAME_LEN`].
fn name_key(name: &[u8]) -> &[u8] {
    &name[..name.len().min(MAX_NAME_LEN)]
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A NUL-terminated string and what follows its NUL, if the NUL was captured.
fn cstr_whole(b: &[u8]) -> Option<(&[u8], &[u8])> {
    memchr::memchr(0, b).map(|i| (&b[..i], &b[i + 1..]))
}

/// A NUL-terminated string and what follows its NUL; without a NUL, all of `b` and nothing.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(0, b) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// The `C` field of an ErrorResponse body.
fn sqlstate(mut body: &[u8]) -> String {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        let (value, after) = cstr(rest);
        if field == b'C' {
            if value.len() == 5
                && value
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                // Checked ASCII.
                return String::from_utf8_lossy(value).into_owned();
            }
            break;
        }
        body = after;
    }
    UNKNOWN_SQLSTATE.to_string()
}

/// Body bytes worth keeping per message type: what the protocol logic reads.
fn keep_len(side: Side, tag: u8) -> usize {
    match (side, tag) {
        (Side::Frontend, 0) => MAX_STARTUP_LEN as usize,
        (Side::Frontend, b'Q' | b'P') => usize::MAX,
        (Side::Frontend, b'B') => 2 * MAX_NAME_LEN + 2,
        (Side::Frontend, b'E' | b'C') => MAX_NAME_LEN + 6,
        (Side::Backend, b'E') => 512,
        _ => 0,
    }
}

/// A StartupMessage's version: 3.0 to 3.2.
fn protocol_3(code: u32) -> bool {
    code & 0xffff_0000 == PROTOCOL_3 && code & 0xffff <= 2
}

fn startup_header_ok(len: u32, code: u32) -> bool {
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        // Protocol 3.2 allows a cancel key of up to 256 bytes.
        CANCEL_REQUEST => (16..=264).contains(&len),
        _ => protocol_3(code) && len > 8 && len <= MAX_STARTUP_LEN,
    }
}

/// Whether `b` starts with a frontend's startup-phase packet.
fn startup_like(b: &[u8]) -> bool {
    if b.len() < 8 {
        return false;
    }
    let (len, code) = (be32(&b[0..4]), be32(&b[4..8]));
    if !startup_header_ok(len, code) {
        return false;
    }
    if !protocol_3(code) {
        return true;
    }
    // Parameter names and values: printable text and NULs, ending with two NULs.
    let body = &b[8..b.len().min(len as usize)];
    let text = body.iter().all(|&c| c == 0 || c >= b' ');
    let whole = b.len() >= len as usize;
    text && body.first().is_some_and(|c| c.is_ascii_alphabetic())
        && (!whole || body.ends_with(&[0, 0]) || body == [0])
}

/// Whether `b` starts with a backend's authentication request.
fn auth_request_like(b: &[u8]) -> bool {
    if b.len() < 9 || b[0] != b'R' {
        return false;
    }
    let (len, code) = (be32(&b[1..5]), be32(&b[5..9]));
    match code {
        0 | 3 => len == 8,
        5 => len == 12,
        10 => {
            // SASL: mechanism names, each NUL-terminated, then a NUL.
            if !(10..=256).contains(&len) {
                return false;
            }
            let body = &b[9..b.len().min(len as usize + 1)];
            body.iter().all(|&c| c == 0 || c.is_ascii_graphic())
                && (b.len() < len as usize + 1 || body.ends_with(&[0, 0]))
        }
        _ => false,
    }
}

/// Whether a typed message header is possible, per direction.
fn header_ok(side: Side, tag: u8, len: u32) -> bool {
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return false;
    }
    match side {
        Side::Frontend => match tag {
            b'S' | b'H' | b'X' | b'c' => len == 4,
            b'Q' | b'f' | b'p' => len >= 5,
            b'P' => len >= 8,
            b'B' => len >= 12,
            b'E' => len >= 9,
            b'D' | b'C' => len >= 6,
            b'F' => len >= 14,
            b'd' => true,
            _ => false,
        },
        Side::Backend => match tag {
            b'Z' => len == 5,
            b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => len == 4,
            b'K' => (12..=264).contains(&len),
            b'R' | b'V' => len >= 8,
            b'S' | b'T' | b'D' | b't' => len >= 6,
            b'C' | b'E' | b'N' => len >= 5,
            b'A' => len >= 10,
            b'G' | b'H' | b'W' => len >= 7,
            b'v' => len >= 12,
            b'd' => true,
            _ => false,
        },
    }
}

/// Whether a fully captured body is well formed, and whether that is strong evidence on its
/// own (a message whose structure random bytes rarely have). None: malformed.
fn body_check(side: Side, tag: u8, body: &[u8]) -> Option<bool> {
    let one_cstr_at_end = |b: &[u8]| memchr::memchr(0, b) == Some(b.len().wrapping_sub(1));
    match (side, tag) {
        (Side::Frontend, b'Q') => one_cstr_at_end(body).then_some(true),
        (Side::Frontend, b'E') => (memchr::memchr(0, body)? + 5 == body.len()).then_some(true),
        (Side::Frontend, b'P') => {
            let (_, rest) = cstr(body);
            let text_end = memchr::memchr(0, rest)?;
            let rest = &rest[text_end + 1..];
            let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            (rest.len() == 2 + 4 * n).then_some(true)
        }
        (Side::Frontend, b'B') => bind_ok(body).then_some(true),
        (Side::Frontend, b'D' | b'C') => (matches!(body.first(), Some(b'S' | b'P'))
            && one_cstr_at_end(&body[1..]))
        .then_some(true),
        (Side::Frontend, b'S' | b'H' | b'X') => Some(true),
        (Side::Backend, b'Z') => matches!(body, [b'I' | b'T' | b'E']).then_some(true),
        (Side::Backend, b'C') => {
            (one_cstr_at_end(body) && body[0].is_ascii_uppercase()).then_some(true)
        }
        (Side::Backend, b'E' | b'N') => {
            let mut rest = body;
            while let Some((&field, after)) = rest.split_first() {
                if field == 0 {
                    return after.is_empty().then_some(true);
                }
                let i = memchr::memchr(0, after)?;
                rest = &after[i + 1..];
            }
            None
        }
        (Side::Backend, b'D') => {
            let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
            let mut rest = &body[2..];
            for _ in 0..n {
                let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                rest = &rest[4..];
                if len >= 0 {
                    rest = rest.get(len as usize..)?;
                } else if len != -1 {
                    return None;
                }
            }
            rest.is_empty().then_some(true)
        }
        (Side::Backend, b'T') => {
            let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
            let mut rest = &body[2..];
            for _ in 0..n {
                let i = memchr::memchr(0, rest)?;
                rest = rest.get(i + 1 + 18..)?;
            }
            rest.is_empty().then_some(true)
        }
        (Side::Backend, b'S') => {
            let (_, rest) = cstr(body);
            one_cstr_at_end(rest).then_some(true)
        }
        _ => Some(false),
    }
}

/// A Bind body: portal, statement, parameter formats, values, result formats — exactly.
fn bind_ok(body: &[u8]) -> bool {
    fn u16_at(b: &[u8]) -> Option<(usize, &[u8])> {
        Some((
            usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?])),
            &b[2..],
        ))
    }
    let check = || -> Option<bool> {
        let (_, rest) = cstr(body);
        let i = memchr::memchr(0, rest)?;
        let rest = &rest[i + 1..];
        let (formats, rest) = u16_at(rest)?;
        let rest = rest.get(2 * formats..)?;
        let (params, mut rest) = u16_at(rest)?;
        for _ in 0..params {
            let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            rest = &rest[4..];
            if len >= 0 {
                rest = rest.get(len as usize..)?;
            } else if len != -1 {
                return None;
            }
        }
        let (results, rest) = u16_at(rest)?;
        Some(rest.len() == 2 * results)
    };
    check() == Some(true)
}

/// What walking messages from the start of some bytes found.
#[derive(Debug, Default)]
struct Walk {
    /// Every header (and every fully captured body checked) was possible.
    valid: bool,
    /// Messages wholly inside the bytes.
    complete: usize,
    /// One of them is strong evidence on its own.
    strong: bool,
    /// The messages end exactly where the chunk does (`total`), or, total unknown, the last
    /// one runs past the captured bytes with a possible header.
    ends_at_total: bool,
    /// The last message's type.
    last: Option<u8>,
}

impl Walk {
    fn plausible(&self) -> bool {
        self.valid && self.ends_at_total && (self.complete >= 2 || self.strong)
    }
}

/// Walks typed messages from the start of `b`, a chunk that moved `total` bytes (None:
/// unknown, as for a connection's first bytes).
fn walk(side: Side, b: &[u8], total: Option<u64>) -> Walk {
    let mut w = Walk::default();
    let mut i = 0usize;
    loop {
        if i == b.len() {
            w.valid = w.complete > 0;
            w.ends_at_total = total.is_none_or(|t| t == i as u64);
            return w;
        }
        let Some(header) = b.get(i..i + 5) else {
            return w;
        };
        let (tag, len) = (header[0], be32(&header[1..5]));
        if !header_ok(side, tag, len) {
            return w;
        }
        w.last = Some(tag);
        let end = i + 1 + len as usize;
        match b.get(i + 5..end) {
            Some(body) => match body_check(side, tag, body) {
                Some(strong) => {
                    w.strong |= strong;
                    w.complete += 1;
                    i = end;
                }
                None => return w,
            },
            None => {
                // Runs past the captured bytes.
                w.valid = true;
                w.ends_at_total = match total {
                    Some(t) => end as u64 == t,
                    None => w.complete >= 2,
                };
                // A lone message cut by capture counts when it is a query or parse whose
                // length is exactly what the syscall moved.
                if w.complete == 0 && side == Side::Frontend && matches!(tag, b'Q' | b'P') {
                    w.strong = total.is_some();
                }
                return w;
            }
        }
    }
}

/// Where in a chunk of a direction that lost its boundaries parsing can start again: at its
/// start, if its bytes walk as plausible messages to its end; for the backend, also at a run
/// of messages ending the chunk with `ReadyForQuery` (the tail of a large result read at once).
fn resync_point(side: Side, b: &[u8], total: u64) -> Option<usize> {
    if walk(side, b, Some(total)).plausible() {
        return Some(0);
    }
    if side == Side::Frontend || (b.len() as u64) != total || b.len() < 6 {
        return None;
    }
    let tail = &b[b.len() - 6..];
    if tail[0] != b'Z' || be32(&tail[1..5]) != 5 || !matches!(tail[5], b'I' | b'T' | b'E') {
        return None;
    }
    let from = b.len().saturating_sub(SUFFIX_SCAN);
    (from..b.len() - 6)
        .find(|&p| {
            header_ok(side, b[p], be32(b.get(p + 1..p + 5).unwrap_or(&[0; 4])))
                && walk(side, &b[p..], Some(total - p as u64)).plausible()
        })
        .or(Some(b.len() - 6))
}
