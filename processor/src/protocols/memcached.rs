//! Memcached connection tracking for a passive observer: turns the text-protocol commands a
//! client wrote and the replies it read on one connection into one [`DbExchange`] per command.
//!
//! Commands travel on the request flow, replies on the other, and memcached answers them in
//! order, so replies are matched to commands first in, first out: a pipeline (many commands in
//! one write) yields one exchange per command. Every command line is a command to memcached
//! (an unknown word or a malformed line is answered `ERROR`), so in sync every line is read as
//! one; a storage command's line is validated the way memcached 1.6 does, because only a valid
//! one is followed by a data block (an invalid one leaves the data to be read as a command).
//! A retrieval (`get`, `gets`, `gat`, `gats`, any number of keys) is one exchange whose reply
//! is its `VALUE` items and the `END` after them; `stats` and the `lru_crawler` dumps run to
//! their `END` likewise.
//!
//! Replies are checked against the command they would answer (`STORED` for a `set`, `DELETED`
//! for a `delete`, …): one that cannot answer it means boundaries were lost, and nothing is
//! attributed until replies are known to line up again.
//!
//! Status: `ERROR`, `CLIENT_ERROR …` and `SERVER_ERROR …` are errors, with that word as the
//! error code; `NOT_FOUND`, `NOT_STORED`, `EXISTS` and an `END` without items are ordinary
//! outcomes. Commands sent with `noreply` (and `quit`) get no reply by design: they are
//! emitted when the command is complete, as successful exchanges with no response bytes and
//! `no_response` false (that flag means a reply was expected and not seen, which the span
//! layer reports as an error; a `noreply` command expects none), so their duration is only
//! the time the command took to write (zero when it was one write). memcached suppresses
//! even the error replies of `noreply` commands, so nothing is owed to them.
//!
//! Meta commands (`mg`, `ms`, `md`, `ma`, `me`, `mn`) are read too: one exchange each, ended
//! by their one reply line or `VA` item. The quiet flag `q` suppresses the nominal replies
//! (`EN`, `HD`, …) but not the others, so whether a quiet command gets a reply cannot be
//! known: it is emitted at once like a `noreply` one. Its batch is ended the way clients do,
//! by `mn`, answered `MN`: the replies before that `MN` answer quiet commands and are skipped.
//! A reply that could answer either a quiet command or a later non-quiet one (other than
//! `mn`) cannot be attributed, and replies wait for a quiet point (see below).
//!
//! Naming: `db.operation.name` is the command word as sent (`get`, `set`, `mg`: memcached
//! commands are lower case on the wire, and the reference system names memcached spans by
//! the command); there is no collection and no namespace. Keys and values never leave this
//! module: the query text is the command followed by one `?` per argument (`set ? ? ? ?`),
//! only a trailing `noreply` kept as is (`set ? ? ? ? noreply`). A line memcached does not
//! know as a command has no operation and no query text.
//!
//! Capture loses bytes: only the first bytes of each read or write are captured, and a
//! connection may be picked up mid-stream. Data blocks carry their length (`<bytes>` of a
//! storage command, of a `VALUE` or `VA` line), so uncaptured bytes inside them are skipped by
//! count and nothing is lost. A read that holds a large value usually holds the `END` after
//! it too, in its uncaptured tail: when exactly the bytes of an `END\r\n` are missing after
//! a retrieval's items, they are taken for it (any other continuation is longer). When a
//! command or reply *line* falls into uncaptured bytes (or the bytes are not memcached) that
//! direction loses its boundaries, and the policy is the one of the Redis tracker, never to
//! attribute a reply to the wrong command. (On a server, one read can hold many commands a
//! client wrote without waiting, such as a burst of `noreply` sets: those past the captured
//! bytes are not seen.)
//! - request side: the commands read before the loss still get their replies; the replies
//!   after those belong to commands never seen, so the reply side then stops attributing.
//!   Commands are read again from a later chunk that starts with a well-formed command line.
//!   One exception: a retrieval line cut by capture (a multi-get of many keys written at
//!   once) is still one command, whose reply is the next one; it is emitted with the keys
//!   seen (`get ? ? ...`) and the loss starts after it.
//! - reply side: a multi-line reply (a multi-get of many values read at once, `stats`) cut
//!   by capture, for the only command pending on a connection never seen pipelining, is
//!   waited out: it ends when the client sends its next command, at the reply's last chunk,
//!   as successful (its end is rarely an error once values flow, and calling every large
//!   multi-get failed would be wrong far more often); the first command queued after it is
//!   then a quiet point wherever it starts in a write (a client that does not pipeline read
//!   the whole reply before writing again). Otherwise every pending command ends
//!   without a reply. Replies are attributed again only at a *quiet point*: a command that
//!   starts a write, written after the last reply chunk, with nothing else pending, on a
//!   connection never seen writing a command while an earlier one was unanswered. Its reply
//!   is then the first reply chunk that follows, when that chunk starts like a reply. `watch`
//!   turns the reply flow into a log feed for good: its replies are never attributed again.
//!
//! Not parsed: the binary protocol (deprecated; its connections stay unclassified). Detection
//! is strict (see [`Connection::detect`]), but a connection whose first command is a bare
//! `get <key>` cannot be told from a Redis inline `get`; Redis client libraries write
//! multibulk commands, so this is taken for memcached.
//!
//! Chunks must be fed in the order they happened, across both directions.
//!
//! Memory per connection is bounded: [`MAX_PENDING`] commands waiting for replies, one line
//! of at most 64 KiB per direction (memcached itself closes a connection whose non-`get`
//! line passes 2 KiB), and a short query text per pending command.

use std::collections::VecDeque;

use memchr::memchr;

use super::db::DbExchange;
use super::http2::Flow;
use super::text_lines::{Line, collect_line, recycle, take};

const SYSTEM: &str = "memcached";

/// Commands waiting for their replies; past this the oldest ends without one (counted) and its
/// reply is skipped when it comes.
pub const MAX_PENDING: usize = 1024;
/// Longest line buffered (command or reply line).
const MAX_LINE: usize = 64 * 1024;
/// memcached's `KEY_MAX_LENGTH`.
const MAX_KEY: usize = 250;
/// memcached's limit on a data block's `<bytes>`: `INT_MAX - 2`.
const MAX_DATA: u64 = i32::MAX as u64 - 2;
/// memcached's `MFLAG_MAX_OPT_LENGTH`: tokens of a meta command, its terminator included.
const MAX_META_TOKENS: usize = 20;
/// `?` placeholders written in a query text; a longer command ends in ` ...`.
const MAX_PLACEHOLDERS: usize = 64;
/// Bytes kept of a reply line's first word.
const WORD: usize = 16;

/// Everything a connection lost or skipped, and what it saw. Plain counters, summed by the
/// caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Command lines read completely (with their data block, for storage commands).
    pub commands: u64,
    /// Commands that expect no reply (`noreply`, `quit`, quiet meta commands): emitted at once
    /// as successful.
    pub noreply: u64,
    /// Replies matched to their command.
    pub replies: u64,
    /// `VALUE`/`VA` items read in replies.
    pub values: u64,
    /// Reply lines that came with no command waiting for them: ignored.
    pub orphan_replies: u64,
    /// Exchanges emitted without the reply they expected: the connection closed first, capture
    /// lost the reply, or the pending queue overflowed.
    pub no_response: u64,
    /// Commands pushed out of a full pending queue; also in `no_response`.
    pub queue_overflow: u64,
    /// Command boundaries lost: a line fell into uncaptured bytes, or was too long.
    pub request_desync: u64,
    /// Reply boundaries lost likewise, or a reply that cannot answer its command: the pending
    /// commands ended without replies.
    pub reply_desync: u64,
    /// Desyncs caused by a limit: a line over 64 KiB.
    pub over_limit: u64,
    /// Commands read again from a chunk starting with one (after a desync, or at the pickup of
    /// a connection seen mid-stream).
    pub request_resyncs: u64,
    /// Replies attributed again at a quiet point (after a loss, or at a mid-stream pickup).
    pub reply_resyncs: u64,
    /// Command lines memcached does not know (answered `ERROR`): no operation.
    pub unknown_commands: u64,
    /// Retrieval lines whose end was not captured, emitted as one command each.
    pub truncated_retrievals: u64,
    /// Meta commands with the quiet flag `q` (also in `noreply`).
    pub quiet_meta: u64,
    /// Replies to quiet meta commands (their failures and hits), skipped.
    pub quiet_replies: u64,
    /// Uncaptured bytes skipped inside data blocks without losing sync.
    pub uncaptured_bytes_skipped: u64,
    /// Retrieval replies whose `END` was in the uncaptured end of a read (after a large
    /// value): taken as read.
    pub inferred_ends: u64,
    /// Multi-line replies (a multi-get of many values, `stats`) whose end was not captured,
    /// on a connection that does not pipeline: ended when the client sent its next command,
    /// at the reply's last chunk, as successful (also in `replies`).
    pub replies_cut: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            commands,
            noreply,
            replies,
            values,
            orphan_replies,
            no_response,
            queue_overflow,
            request_desync,
            reply_desync,
            over_limit,
            request_resyncs,
            reply_resyncs,
            unknown_commands,
            truncated_retrievals,
            quiet_meta,
            quiet_replies,
            uncaptured_bytes_skipped,
            inferred_ends,
            replies_cut,
        } = other;
        self.commands += commands;
        self.noreply += noreply;
        self.replies += replies;
        self.values += values;
        self.orphan_replies += orphan_replies;
        self.no_response += no_response;
        self.queue_overflow += queue_overflow;
        self.request_desync += request_desync;
        self.reply_desync += reply_desync;
        self.over_limit += over_limit;
        self.request_resyncs += request_resyncs;
        self.reply_resyncs += reply_resyncs;
        self.unknown_commands += unknown_commands;
        self.truncated_retrievals += truncated_retrievals;
        self.quiet_meta += quiet_meta;
        self.quiet_replies += quiet_replies;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
        self.inferred_ends += inferred_ends;
        self.replies_cut += replies_cut;
    }
}

/// What reply ends a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`: `STORED`, `NOT_STORED`, `EXISTS`,
    /// `NOT_FOUND`.
    Storage,
    /// `get`, `gets`, `gat`, `gats`: `VALUE` items, then `END`.
    Retrieval,
    /// `DELETED` or `NOT_FOUND`.
    Delete,
    /// `incr`, `decr`: the new value or `NOT_FOUND`.
    Arithmetic,
    /// `TOUCHED` or `NOT_FOUND`.
    Touch,
    /// `flush_all`, `verbosity`: `OK`.
    Ok,
    /// `VERSION x`.
    Version,
    /// `stats`: lines until `END` (`RESET` or `OK` for its settings forms).
    Stats,
    /// `lru_crawler metadump|mgdump`: lines until `END` or `EN`.
    Dump,
    /// `watch`: `OK`, then a log feed.
    Watch,
    /// `mg`, `ms`, `md`, `ma`, `me`: one line, or a `VA` item.
    Meta,
    /// `mn`: `MN`.
    MetaNoop,
    /// Anything else (unknown or malformed, answered `ERROR`; rare admin commands): one line.
    Other,
}

/// Whether a command expects a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Reply,
    /// `noreply`, `quit`: none, ever.
    Nothing,
    /// A quiet meta command: maybe one, which cannot be told.
    Maybe,
}

/// A command line understood.
#[derive(Debug)]
struct CommandLine {
    operation: Option<&'static str>,
    query_text: Option<String>,
    kind: Kind,
    expect: Expect,
    /// Bytes of the data block (with its CRLF) that follows the line.
    data: Option<u64>,
}

/// The command words memcached 1.6 knows, as they are named.
const COMMANDS: &[&str] = &[
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "get",
    "gets",
    "gat",
    "gats",
    "bget",
    "delete",
    "incr",
    "decr",
    "touch",
    "flush_all",
    "version",
    "quit",
    "stats",
    "verbosity",
    "watch",
    "lru_crawler",
    "lru",
    "slabs",
    "cache_memlimit",
    "shutdown",
    "extstore",
    "refresh_certs",
    "mg",
    "ms",
    "md",
    "ma",
    "me",
    "mn",
];

/// Splits a command line the way memcached's `tokenize_command` does: on spaces, empty
/// tokens skipped. The line ending (`\n`, and a `\r` before it) is not part of it.
fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// The content of a line: without its `\n` and the `\r` before it.
fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn digits(t: &[u8]) -> bool {
    !t.is_empty() && t.len() <= 20 && t.iter().all(u8::is_ascii_digit)
}

fn parse_u64(t: &[u8]) -> Option<u64> {
    if !digits(t) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn parse_i32(t: &[u8]) -> Option<i32> {
    let (negative, rest) = match t {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, t),
    };
    let n = i64::try_from(parse_u64(rest)?).ok()?;
    i32::try_from(if negative { -n } else { n }).ok()
}

/// A key as memcached takes it: at most 250 bytes, no control characters.
fn plausible_key(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY && k.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// The query text: the command, then `?` per argument, a trailing `noreply` kept.
fn query(op: &str, args: usize, noreply: bool, truncated: bool) -> String {
    let placeholders = args - usize::from(noreply);
    let mut q = String::from(op);
    for _ in 0..placeholders.min(MAX_PLACEHOLDERS) {
        q.push_str(" ?");
    }
    if placeholders > MAX_PLACEHOLDERS || truncated {
        q.push_str(" ...");
    } else if noreply {
        q.push_str(" noreply");
    }
    q
}

/// Reads a command line (its content, without the line ending) the way memcached 1.6 does.
fn command_line(line: &[u8]) -> CommandLine {
    let mut it = tokens(line);
    let unknown = CommandLine {
        operation: None,
        query_text: None,
        kind: Kind::Other,
        expect: Expect::Reply,
        data: None,
    };
    let Some(word) = it.next() else {
        return unknown;
    };
    let Some(&op) = COMMANDS.iter().find(|c| c.as_bytes() == word) else {
        return unknown;
    };
    let args: Vec<&[u8]> = it.collect();
    let n = args.len();
    let last_noreply = args.last() == Some(&&b"noreply"[..]);
    // (kind, whether the argument count is one memcached accepts, whether `noreply` counts)
    let (kind, count_ok, takes_noreply) = match op {
        "set" | "add" | "replace" | "append" | "prepend" => (Kind::Storage, n == 4 || n == 5, true),
        "cas" => (Kind::Storage, n == 5 || n == 6, true),
        "get" | "gets" | "bget" => (Kind::Retrieval, n >= 1, false),
        "gat" | "gats" => (Kind::Retrieval, n >= 2, false),
        "delete" => (Kind::Delete, (1..=3).contains(&n), true),
        "incr" | "decr" => (Kind::Arithmetic, n == 2 || n == 3, true),
        "touch" => (Kind::Touch, n == 2 || n == 3, true),
        "flush_all" => (Kind::Ok, n <= 2, true),
        "verbosity" => (Kind::Ok, n == 1 || n == 2, true),
        "version" => (Kind::Version, true, false),
        "quit" => (Kind::Other, true, false),
        "stats" => (Kind::Stats, true, false),
        "watch" => (Kind::Watch, true, false),
        "lru_crawler" => {
            let dump = matches!(args.first(), Some(&b"metadump" | &b"mgdump"));
            (if dump { Kind::Dump } else { Kind::Other }, true, false)
        }
        "lru" | "cache_memlimit" | "extstore" | "refresh_certs" => (Kind::Other, true, true),
        "slabs" => (Kind::Other, true, args.first() == Some(&&b"automove"[..])),
        "mn" => (Kind::MetaNoop, true, false),
        "mg" | "ms" | "md" | "ma" | "me" => (Kind::Meta, n >= 1, false),
        _ => (Kind::Other, true, false),
    };
    let noreply = count_ok && takes_noreply && last_noreply;
    let quiet = kind == Kind::Meta && count_ok && args.iter().skip(1).any(|t| t[0] == b'q');
    let expect = if noreply || op == "quit" {
        Expect::Nothing
    } else if quiet {
        Expect::Maybe
    } else {
        Expect::Reply
    };
    let data = match op {
        _ if !count_ok => None,
        "set" | "add" | "replace" | "append" | "prepend" | "cas" => {
            let valid = args[0].len() <= MAX_KEY
                && parse_u64(args[1]).is_some_and(|f| f <= u64::from(u32::MAX))
                && parse_i32(args[2]).is_some()
                && (op != "cas" || parse_u64(args[4]).is_some());
            parse_i32(args[3])
                .and_then(|b| u64::try_from(b).ok())
                .filter(|&b| valid && b <= MAX_DATA)
                .map(|b| b + 2)
        }
        "ms" if n >= 2 && args[0].len() <= MAX_KEY && n + 2 <= MAX_META_TOKENS => {
            parse_i32(args[1])
                .and_then(|b| u64::try_from(b).ok())
                .filter(|&b| b <= MAX_DATA)
                .map(|b| b + 2)
        }
        _ => None,
    };
    CommandLine {
        operation: Some(op),
        query_text: Some(query(op, n, noreply, false)),
        kind: if count_ok { kind } else { Kind::Other },
        expect,
        data,
    }
}

/// Whether `line` (content without line ending) is a command line a memcached client would
/// write: a known command word, and arguments that fit it. Strict, as it decides what a
/// connection is and where commands start again.
fn well_formed(line: &[u8]) -> bool {
    let mut it = tokens(line);
    let Some(word) = it.next() else {
        return false;
    };
    // Clients separate with single spaces.
    if line.first() == Some(&b' ') || line.windows(2).any(|w| w == b"  ") {
        return false;
    }
    let args: Vec<&[u8]> = it.collect();
    // memcached closes a connection whose line ends in `HTTP/…`.
    if args.last().is_some_and(|t| t.starts_with(b"HTTP/")) {
        return false;
    }
    let opt_noreply = |rest: &[&[u8]]| match rest {
        [] => true,
        [t] => *t == b"noreply",
        _ => false,
    };
    let exptime = |t: &[u8]| parse_i32(t).is_some();
    let meta_flags = |rest: &[&[u8]]| {
        rest.iter()
            .all(|t| t[0].is_ascii_alphabetic() && t.iter().all(|&b| b > b' ' && b != 0x7f))
    };
    match (word, args.as_slice()) {
        (b"set" | b"add" | b"replace" | b"append" | b"prepend", [k, f, e, b, rest @ ..]) => {
            plausible_key(k)
                && parse_u64(f).is_some_and(|f| f <= u64::from(u32::MAX))
                && exptime(e)
                && parse_u64(b).is_some_and(|b| b <= MAX_DATA)
                && opt_noreply(rest)
        }
        (b"cas", [k, f, e, b, c, rest @ ..]) => {
            plausible_key(k)
                && parse_u64(f).is_some_and(|f| f <= u64::from(u32::MAX))
                && exptime(e)
                && parse_u64(b).is_some_and(|b| b <= MAX_DATA)
                && parse_u64(c).is_some()
                && opt_noreply(rest)
        }
        (b"get" | b"gets", keys) => !keys.is_empty() && keys.iter().all(|k| plausible_key(k)),
        (b"gat" | b"gats", [e, keys @ ..]) => {
            exptime(e) && !keys.is_empty() && keys.iter().all(|k| plausible_key(k))
        }
        (b"delete", [k, rest @ ..]) => {
            plausible_key(k)
                && match rest {
                    [] => true,
                    [t] => *t == b"noreply" || *t == b"0",
                    [z, n] => *z == b"0" && *n == b"noreply",
                    _ => false,
                }
        }
        (b"incr" | b"decr", [k, v, rest @ ..]) => {
            plausible_key(k) && parse_u64(v).is_some() && opt_noreply(rest)
        }
        (b"touch", [k, e, rest @ ..]) => plausible_key(k) && exptime(e) && opt_noreply(rest),
        (b"flush_all", rest) => match rest {
            [d, rest @ ..] if exptime(d) => opt_noreply(rest),
            rest => opt_noreply(rest),
        },
        (b"verbosity", [v, rest @ ..]) => digits(v) && opt_noreply(rest),
        (b"version" | b"quit" | b"mn", []) => true,
        (b"stats", args) => args.iter().all(|a| {
            a.len() <= 32
                && a.iter()
                    .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }),
        (b"mg" | b"md" | b"ma" | b"me", [k, flags @ ..]) => {
            plausible_key(k) && args.len() + 2 <= MAX_META_TOKENS && meta_flags(flags)
        }
        (b"ms", [k, len, flags @ ..]) => {
            plausible_key(k)
                && parse_u64(len).is_some_and(|b| b <= MAX_DATA)
                && args.len() + 2 <= MAX_META_TOKENS
                && meta_flags(flags)
        }
        _ => false,
    }
}

/// Whether `data` starts with a well-formed command line ending in CRLF.
fn looks_like_command(data: &[u8]) -> bool {
    let Some(nl) = memchr(b'\n', data) else {
        return false;
    };
    nl >= 1 && data[nl - 1] == b'\r' && well_formed(&data[..nl - 1])
}

/// The reply words memcached writes at the start of a line.
const REPLY_WORDS: &[&str] = &[
    "VALUE",
    "END",
    "STORED",
    "NOT_STORED",
    "EXISTS",
    "NOT_FOUND",
    "DELETED",
    "TOUCHED",
    "OK",
    "VERSION",
    "STAT",
    "ITEM",
    "RESET",
    "ERROR",
    "CLIENT_ERROR",
    "SERVER_ERROR",
    "VA",
    "HD",
    "EN",
    "NF",
    "NS",
    "EX",
    "MN",
    "ME",
];

/// Whether `data` starts like a reply: a reply word (or the digits of an `incr`), followed by
/// a space or the line's CRLF.
fn looks_like_reply(data: &[u8]) -> bool {
    let end = data
        .iter()
        .take(WORD + 1)
        .position(|&b| b == b' ' || b == b'\r');
    let Some(end) = end else {
        return false;
    };
    let word = &data[..end];
    let known = digits(word) || REPLY_WORDS.iter().any(|w| w.as_bytes() == word);
    known
        && match data[end] {
            b'\r' => data.get(end + 1).is_none_or(|&b| b == b'\n'),
            _ => true,
        }
}

/// What one step of a parser produced.
enum Parsed<T> {
    More,
    Done(T),
    /// Boundaries lost; `over_limit` when a limit was the reason.
    Desync {
        over_limit: bool,
    },
}

/// Where a line began.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    ts: u64,
    /// The connection-wide number of the chunk (either direction).
    chunk: u64,
    /// At the chunk's first byte.
    at_chunk_start: bool,
}

/// A command read completely.
struct Command {
    line: CommandLine,
    bytes: u64,
    start: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqStep {
    /// Collecting a command line.
    Line,
    /// Inside a storage command's data block: `left` bytes to come, its CRLF included.
    Data { left: u64 },
    /// Boundaries lost: waiting for a chunk that starts with a command.
    Lost,
}

/// The request direction's position in its byte stream.
struct Request {
    step: ReqStep,
    line: Vec<u8>,
    line_start: Position,
    /// The storage command whose data block is being read.
    cmd: Option<Command>,
}

impl Request {
    fn new(in_sync: bool) -> Request {
        Request {
            step: if in_sync {
                ReqStep::Line
            } else {
                ReqStep::Lost
            },
            line: Vec::new(),
            line_start: Position::default(),
            cmd: None,
        }
    }

    fn lose(&mut self) {
        self.step = ReqStep::Lost;
        self.line = Vec::new();
        self.cmd = None;
    }

    fn resync(&mut self) {
        self.step = ReqStep::Line;
        self.line.clear();
        self.cmd = None;
    }

    /// Reads from `data` (whose first byte is at `at`) until a command completes or `data`
    /// runs out; returns the bytes used (at least one, `data` being non-empty).
    fn parse(&mut self, data: &[u8], at: Position) -> (usize, Parsed<Command>) {
        match self.step {
            ReqStep::Lost => (data.len(), Parsed::More),
            ReqStep::Data { left } => {
                let n = take(left, data.len());
                (n, self.data_taken(n as u64))
            }
            ReqStep::Line => {
                if self.line.is_empty() {
                    self.line_start = at;
                }
                let (used, line) = match collect_line(&mut self.line, data, MAX_LINE) {
                    Err(()) => return (data.len(), Parsed::Desync { over_limit: true }),
                    Ok((used, None)) => return (used, Parsed::More),
                    Ok((used, Some(line))) => (used, line),
                };
                let parsed = match line {
                    Line::InData => self.on_line(&data[..used]),
                    Line::Buffered => {
                        let line = std::mem::take(&mut self.line);
                        let parsed = self.on_line(&line);
                        self.line = recycle(line);
                        parsed
                    }
                };
                (used, parsed)
            }
        }
    }

    /// `n` bytes of the data block went by (captured or not).
    fn data_taken(&mut self, n: u64) -> Parsed<Command> {
        let ReqStep::Data { left } = self.step else {
            return Parsed::More;
        };
        let Some(cmd) = self.cmd.as_mut() else {
            return Parsed::Desync { over_limit: false };
        };
        cmd.bytes += n;
        let left = left - n;
        if left > 0 {
            self.step = ReqStep::Data { left };
            return Parsed::More;
        }
        self.step = ReqStep::Line;
        match self.cmd.take() {
            Some(cmd) => Parsed::Done(cmd),
            None => Parsed::More,
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Parsed<Command> {
        let cmd = Command {
            line: command_line(content(line)),
            bytes: line.len() as u64,
            start: self.line_start,
        };
        match cmd.line.data {
            Some(left) => {
                self.step = ReqStep::Data { left };
                self.cmd = Some(cmd);
                Parsed::More
            }
            None => Parsed::Done(cmd),
        }
    }

    /// Skips `n` uncaptured bytes that followed the captured ones. Returns a command they
    /// completed, whether boundaries were lost, and how many bytes were skipped in sync.
    fn skip(&mut self, n: u64) -> (Option<Command>, bool, u64) {
        match self.step {
            ReqStep::Lost => (None, false, 0),
            ReqStep::Line => (self.truncated_retrieval(n), n > 0, 0),
            ReqStep::Data { left } => {
                let k = n.min(left);
                let done = match self.data_taken(k) {
                    Parsed::Done(cmd) => Some(cmd),
                    _ => None,
                };
                (done, n > k, k)
            }
        }
    }

    /// A retrieval line whose end was not captured: still one command, with the keys seen.
    fn truncated_retrieval(&mut self, uncaptured: u64) -> Option<Command> {
        let line = &self.line;
        let word_end = line.iter().position(|&b| b == b' ')?;
        let op = match &line[..word_end] {
            b"get" => "get",
            b"gets" => "gets",
            b"gat" => "gat",
            b"gats" => "gats",
            _ => return None,
        };
        // The last token may be cut: only those followed by a space count.
        let complete = &line[..line.iter().rposition(|&b| b == b' ')?];
        if !tokens(complete).skip(1).all(plausible_key) {
            return None;
        }
        let args = tokens(complete).count().saturating_sub(1);
        let cmd = Command {
            line: CommandLine {
                operation: Some(op),
                query_text: Some(query(op, args, false, true)),
                kind: Kind::Retrieval,
                expect: Expect::Reply,
                data: None,
            },
            bytes: line.len() as u64 + uncaptured,
            start: self.line_start,
        };
        self.line.clear();
        Some(cmd)
    }
}

/// One reply unit: a line, or an item (a `VALUE`/`VA` line and its data block).
#[derive(Debug, Clone, Copy)]
struct ReplyUnit {
    /// The line's first word (up to 16 bytes); `complete` false when longer.
    word: [u8; WORD],
    word_len: u8,
    complete: bool,
    item: bool,
    bytes: u64,
}

impl ReplyUnit {
    fn of(line: &[u8]) -> ReplyUnit {
        let body = content(line);
        let end = body.iter().position(|&b| b == b' ').unwrap_or(body.len());
        let n = end.min(WORD);
        let mut word = [0; WORD];
        word[..n].copy_from_slice(&body[..n]);
        ReplyUnit {
            word,
            // n <= WORD, which fits a u8.
            word_len: n as u8,
            complete: n == end,
            item: false,
            bytes: line.len() as u64,
        }
    }

    fn word(&self) -> &[u8] {
        if self.complete {
            &self.word[..usize::from(self.word_len)]
        } else {
            b""
        }
    }

    fn is(&self, w: &str) -> bool {
        self.word() == w.as_bytes()
    }

    /// The error code of an error line: `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR`.
    fn error(&self) -> Option<&'static str> {
        let prefix = &self.word[..usize::from(self.word_len)];
        ["CLIENT_ERROR", "SERVER_ERROR", "ERROR"]
            .into_iter()
            .find(|e| {
                prefix.starts_with(e.as_bytes())
                    && prefix
                        .get(e.len())
                        .is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepStep {
    Line,
    /// Inside an item's data block: `left` bytes to come, its CRLF included.
    Data {
        left: u64,
    },
    /// Replies cannot be attributed: waiting for a quiet point.
    Lost,
}

/// The reply direction's position in its byte stream.
struct Reply {
    step: RepStep,
    line: Vec<u8>,
    /// The item whose data block is being read.
    cur: Option<ReplyUnit>,
}

impl Reply {
    fn new(in_sync: bool) -> Reply {
        Reply {
            step: if in_sync {
                RepStep::Line
            } else {
                RepStep::Lost
            },
            line: Vec::new(),
            cur: None,
        }
    }

    fn lost(&self) -> bool {
        self.step == RepStep::Lost
    }

    fn lose(&mut self) {
        *self = Reply::new(false);
    }

    fn resync(&mut self) {
        *self = Reply::new(true);
    }

    fn parse(&mut self, data: &[u8]) -> (usize, Parsed<ReplyUnit>) {
        match self.step {
            RepStep::Lost => (data.len(), Parsed::More),
            RepStep::Data { left } => {
                let n = take(left, data.len());
                let payload = usize::try_from(left.saturating_sub(2)).map_or(n, |p| p.min(n));
                // The block's CRLF, where captured, must be there.
                let mut remaining = left - payload as u64;
                let crlf_ok = data[payload..n].iter().all(|&b| {
                    let ok = b == if remaining == 2 { b'\r' } else { b'\n' };
                    remaining = remaining.saturating_sub(1);
                    ok
                });
                if !crlf_ok {
                    return (n, Parsed::Desync { over_limit: false });
                }
                (n, self.data_taken(n as u64))
            }
            RepStep::Line => {
                let (used, line) = match collect_line(&mut self.line, data, MAX_LINE) {
                    Err(()) => return (data.len(), Parsed::Desync { over_limit: true }),
                    Ok((used, None)) => return (used, Parsed::More),
                    Ok((used, Some(line))) => (used, line),
                };
                let parsed = match line {
                    Line::InData => self.on_line(&data[..used]),
                    Line::Buffered => {
                        let line = std::mem::take(&mut self.line);
                        let parsed = self.on_line(&line);
                        self.line = recycle(line);
                        parsed
                    }
                };
                (used, parsed)
            }
        }
    }

    fn data_taken(&mut self, n: u64) -> Parsed<ReplyUnit> {
        let RepStep::Data { left } = self.step else {
            return Parsed::More;
        };
        let Some(cur) = self.cur.as_mut() else {
            return Parsed::Desync { over_limit: false };
        };
        cur.bytes += n;
        let left = left - n;
        if left > 0 {
            self.step = RepStep::Data { left };
            return Parsed::More;
        }
        self.step = RepStep::Line;
        match self.cur.take() {
            Some(unit) => Parsed::Done(unit),
            None => Parsed::More,
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Parsed<ReplyUnit> {
        // memcached ends reply lines with CRLF, but for the lines of an `lru_crawler metadump`
        // (LF alone); whether a line fits its command is checked by [`fit`].
        const GARBAGE: Parsed<ReplyUnit> = Parsed::Desync { over_limit: false };
        let mut unit = ReplyUnit::of(line);
        let body = content(line);
        let toks: Vec<&[u8]> = tokens(body).take(6).collect();
        let size = match toks.as_slice() {
            // VALUE <key> <flags> <bytes> [<cas>]
            [b"VALUE", _, f, b] | [b"VALUE", _, f, b, _] if digits(f) => parse_u64(b),
            [b"VALUE", ..] => return GARBAGE,
            // VA <size> <flags>*
            [b"VA", b, ..] => parse_u64(b),
            [b"VA"] => return GARBAGE,
            _ => return Parsed::Done(unit),
        };
        let Some(size) = size.filter(|&s| s <= MAX_DATA) else {
            return GARBAGE;
        };
        unit.item = true;
        self.cur = Some(unit);
        self.step = RepStep::Data { left: size + 2 };
        Parsed::More
    }

    /// Skips `n` uncaptured bytes: returns an item they completed, whether boundaries were
    /// lost, and how many bytes were skipped in sync.
    fn skip(&mut self, n: u64) -> (Option<ReplyUnit>, bool, u64) {
        match self.step {
            RepStep::Lost => (None, false, 0),
            RepStep::Line => (None, n > 0, 0),
            RepStep::Data { left } => {
                let k = n.min(left);
                let done = match self.data_taken(k) {
                    Parsed::Done(unit) => Some(unit),
                    _ => None,
                };
                (done, n > k, k)
            }
        }
    }
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Pending {
    operation: Option<&'static str>,
    query_text: Option<String>,
    kind: Kind,
    start_ns: u64,
    bytes: u64,
    /// Reply bytes so far (items and lines of a multi-line reply).
    reply_bytes: u64,
    /// The chunk it started in.
    chunk: u64,
    /// Written at a quiet point while replies could not be attributed: the first reply chunk
    /// after it starts its reply.
    candidate: bool,
}

#[derive(Debug)]
enum Entry {
    Command(Pending),
    /// Commands were lost on the request side here: the replies past this point cannot be
    /// attributed.
    Barrier {
        chunk: u64,
    },
    /// A quiet meta command (already emitted): it may get a reply or not. `candidate` as for
    /// a command.
    Quiet {
        chunk: u64,
        candidate: bool,
    },
}

impl Entry {
    fn chunk(&self) -> u64 {
        match self {
            Entry::Command(p) => p.chunk,
            Entry::Barrier { chunk } | Entry::Quiet { chunk, .. } => *chunk,
        }
    }
}

/// A command whose reply began and whose end was not captured: it ends when the client sends
/// its next command, at the reply's last chunk.
#[derive(Debug)]
struct Cut {
    p: Pending,
    end_ns: u64,
}

/// What a reply unit does to the command it would answer.
enum Fit {
    /// It ends the command's reply; with an error code when it is an error.
    Ends(Option<&'static str>),
    /// It is part of the command's reply, which goes on.
    Continues,
    /// It cannot answer this command.
    Mismatch,
}

fn fit(kind: Kind, unit: &ReplyUnit) -> Fit {
    if let Some(code) = unit.error().filter(|_| !unit.item) {
        return Fit::Ends(Some(code));
    }
    let ends = |ok: bool| if ok { Fit::Ends(None) } else { Fit::Mismatch };
    let any = |words: &[&str]| words.iter().any(|w| unit.is(w));
    if unit.item {
        return match kind {
            Kind::Retrieval if unit.is("VALUE") => Fit::Continues,
            Kind::Meta if unit.is("VA") => Fit::Ends(None),
            _ => Fit::Mismatch,
        };
    }
    match kind {
        Kind::Storage => ends(any(&["STORED", "NOT_STORED", "EXISTS", "NOT_FOUND"])),
        Kind::Retrieval => ends(unit.is("END")),
        Kind::Delete => ends(any(&["DELETED", "NOT_FOUND"])),
        Kind::Arithmetic => ends(unit.is("NOT_FOUND") || digits(unit.word())),
        Kind::Touch => ends(any(&["TOUCHED", "NOT_FOUND"])),
        Kind::Ok | Kind::Watch => ends(unit.is("OK")),
        Kind::Version => ends(unit.is("VERSION")),
        Kind::Stats if any(&["END", "RESET", "OK"]) => Fit::Ends(None),
        Kind::Dump if any(&["END", "EN"]) => Fit::Ends(None),
        Kind::Stats | Kind::Dump => Fit::Continues,
        Kind::MetaNoop => ends(unit.is("MN")),
        Kind::Meta | Kind::Other => Fit::Ends(None),
    }
}

/// One memcached connection as seen from one of its endpoints.
pub struct Connection {
    request_flow: Flow,
    request: Request,
    reply: Reply,
    queue: VecDeque<Entry>,
    /// The kinds of the commands pushed out of the full queue whose replies are still owed:
    /// skipped as they come (at most [`MAX_PENDING`]).
    skip: VecDeque<Kind>,
    /// `watch` was answered: the reply flow is a log feed, never attributed again.
    feed: bool,
    /// The command whose reply's end was cut by capture, and its last reply chunk so far.
    cut: Option<Cut>,
    /// A cut reply ended as the client wrote again: the next command queued (no reply chunk
    /// having come since) is answered by the next reply chunk, wherever it starts in a write.
    after_cut: bool,
    /// A command was once written while an earlier chunk's command was unanswered: replies
    /// lost here are never attributed again (an old reply may still be coming).
    overlap_seen: bool,
    chunks: u64,
    last_reply_chunk: u64,
    counters: Counters,
}

impl Connection {
    /// Whether the first captured bytes of a connection (carried by `flow`) are a memcached
    /// client's command: a known lower-case command word whose arguments fit it (`get k`,
    /// `set k 0 0 5`, `mg k v`), on a line ending in CRLF. Returns the flow that carried the
    /// command. Strict, as it runs before the Redis check: `get k\r\n` is also a Redis inline
    /// command (no Redis client library writes those), but a Redis `SET k v` is not a
    /// memcached `set`. A reply line is not enough: pairing starts at a command, and the
    /// classifier tries the next chunks.
    pub fn detect(flow: Flow, first: &[u8]) -> Option<Flow> {
        looks_like_command(first).then_some(flow)
    }

    /// A tracker for a connection whose commands travel on `request_flow`. `fresh`: its first
    /// bytes were seen, so both directions start in sync; otherwise (picked up mid-stream)
    /// commands are read from the first chunk that starts with one, replies from a quiet
    /// point.
    pub fn new(request_flow: Flow, fresh: bool) -> Connection {
        Connection {
            request_flow,
            request: Request::new(fresh),
            reply: Reply::new(fresh),
            queue: VecDeque::new(),
            skip: VecDeque::new(),
            feed: false,
            cut: None,
            after_cut: false,
            overlap_seen: false,
            chunks: 0,
            last_reply_chunk: 0,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Commands waiting for their replies.
    pub fn pending(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| matches!(e, Entry::Command(_)))
            .count()
    }

    /// Takes one chunk: `captured` are the first bytes that moved in one read or write,
    /// `total >= captured.len()` is how many moved. Exchanges that end are pushed to `out`.
    pub fn feed(
        &mut self,
        flow: Flow,
        captured: &[u8],
        total: u64,
        ts_ns: u64,
        out: &mut Vec<DbExchange>,
    ) {
        self.chunks += 1;
        let uncaptured = total.saturating_sub(captured.len() as u64);
        if flow == self.request_flow {
            self.feed_request(captured, uncaptured, ts_ns, out);
        } else {
            self.feed_reply(captured, uncaptured, ts_ns, out);
            self.last_reply_chunk = self.chunks;
        }
    }

    /// The connection closed: every pending command ends without a reply.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<DbExchange>) {
        self.finish_cut(out);
        self.drain(ts_ns, out);
        self.request.lose();
        self.reply.lose();
    }

    fn feed_request(
        &mut self,
        captured: &[u8],
        uncaptured: u64,
        ts: u64,
        out: &mut Vec<DbExchange>,
    ) {
        if self.cut.is_some() {
            self.finish_cut(out);
            self.after_cut = true;
        }
        if self.request.step == ReqStep::Lost {
            if !looks_like_command(captured) {
                return;
            }
            self.request.resync();
            self.counters.request_resyncs += 1;
        }
        let mut pos = 0;
        while pos < captured.len() {
            let at = Position {
                ts,
                chunk: self.chunks,
                at_chunk_start: pos == 0,
            };
            let (used, parsed) = self.request.parse(&captured[pos..], at);
            pos += used;
            match parsed {
                Parsed::More => {}
                Parsed::Done(cmd) => self.on_command(cmd, ts, out),
                Parsed::Desync { over_limit } => {
                    self.request_desync(over_limit, ts, out);
                    return;
                }
            }
        }
        if uncaptured > 0 {
            let (cmd, desync, skipped) = self.request.skip(uncaptured);
            self.counters.uncaptured_bytes_skipped += skipped;
            if let Some(cmd) = cmd {
                if cmd.line.data.is_none() && cmd.line.kind == Kind::Retrieval && desync {
                    self.counters.truncated_retrievals += 1;
                }
                self.on_command(cmd, ts, out);
            }
            if desync {
                self.request_desync(false, ts, out);
            }
        }
    }

    fn feed_reply(&mut self, captured: &[u8], uncaptured: u64, ts: u64, out: &mut Vec<DbExchange>) {
        self.after_cut = false;
        if let Some(cut) = self.cut.as_mut() {
            // More of the reply whose end was cut.
            cut.end_ns = ts;
            cut.p.reply_bytes += captured.len() as u64 + uncaptured;
            return;
        }
        if self.reply.lost() {
            let candidate = match self.queue.front() {
                Some(Entry::Command(p)) => p.candidate,
                Some(Entry::Quiet { candidate, .. }) => *candidate,
                _ => false,
            };
            if !(candidate && !self.feed && looks_like_reply(captured)) {
                // Whatever this chunk answers cannot be told: what waits ends without reply.
                self.drain(ts, out);
                return;
            }
            self.reply.resync();
            self.counters.reply_resyncs += 1;
        }
        let mut pos = 0;
        while pos < captured.len() && !self.reply.lost() {
            let (used, parsed) = self.reply.parse(&captured[pos..]);
            pos += used;
            match parsed {
                Parsed::More => {}
                Parsed::Done(unit) => self.on_reply(unit, ts, out),
                Parsed::Desync { over_limit } => self.reply_desync(over_limit, ts, out),
            }
        }
        if uncaptured > 0 && !self.reply.lost() {
            let (unit, desync, skipped) = self.reply.skip(uncaptured);
            self.counters.uncaptured_bytes_skipped += skipped;
            if let Some(unit) = unit {
                self.on_reply(unit, ts, out);
            }
            if desync && !self.reply.lost() {
                let rest = uncaptured - skipped;
                if self.end_uncaptured(rest) {
                    self.counters.inferred_ends += 1;
                    self.reply.line.clear();
                    let end = ReplyUnit::of(b"END\r\n");
                    self.on_reply(end, ts, out);
                } else if self.cut_allowed() {
                    if let Some(Entry::Command(mut p)) = self.queue.pop_front() {
                        p.reply_bytes += self.reply.line.len() as u64 + rest;
                        self.cut = Some(Cut { p, end_ns: ts });
                    }
                    self.reply.lose();
                } else {
                    self.reply_desync(false, ts, out);
                }
            }
        }
    }

    /// Whether the `rest` uncaptured bytes that end a read, after a retrieval's items, can
    /// only be its `END`: exactly what is missing of `END\r\n` (a read of a large value holds
    /// the value and the `END` after it, and only the read's first bytes are captured).
    /// Anything else a retrieval reply goes on with is longer (`VALUE …`, an error line).
    fn end_uncaptured(&self, rest: u64) -> bool {
        let partial = &self.reply.line;
        self.reply.step == RepStep::Line
            && self.skip.is_empty()
            && matches!(
                self.queue.front(),
                Some(Entry::Command(p)) if p.kind == Kind::Retrieval && p.reply_bytes > 0
            )
            && partial.len() as u64 + rest == 5
            && b"END\r\n".starts_with(partial)
    }

    /// Whether the front command's reply, begun and cut by capture, can be waited out: it is
    /// the only command pending and of a kind whose reply runs over many lines (a multi-get of
    /// many values read at once), on a connection never seen pipelining.
    fn cut_allowed(&self) -> bool {
        self.queue.len() == 1
            && self.skip.is_empty()
            && !self.overlap_seen
            && matches!(
                self.queue.front(),
                Some(Entry::Command(p))
                    if matches!(p.kind, Kind::Retrieval | Kind::Stats | Kind::Dump)
                        && p.reply_bytes > 0
            )
    }

    /// The client moved on (or the connection closed): a reply whose end was cut is complete.
    fn finish_cut(&mut self, out: &mut Vec<DbExchange>) {
        if let Some(Cut { p, end_ns }) = self.cut.take() {
            self.counters.replies += 1;
            self.counters.replies_cut += 1;
            out.push(self.exchange(p, end_ns, None, false));
        }
    }

    fn on_command(&mut self, cmd: Command, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.commands += 1;
        let line = cmd.line;
        if line.operation.is_none() {
            self.counters.unknown_commands += 1;
        }
        let mut pending = Pending {
            operation: line.operation,
            query_text: line.query_text,
            kind: line.kind,
            start_ns: cmd.start.ts,
            bytes: cmd.bytes,
            reply_bytes: 0,
            chunk: cmd.start.chunk,
            candidate: false,
        };
        if line.expect == Expect::Nothing {
            self.counters.noreply += 1;
            out.push(self.exchange(pending, ts, None, false));
            return;
        }
        if self
            .queue
            .front()
            .is_some_and(|e| e.chunk() < cmd.start.chunk)
        {
            self.overlap_seen = true;
        }
        if self.reply.lost() {
            pending.candidate = self.queue.is_empty()
                && (cmd.start.at_chunk_start || std::mem::take(&mut self.after_cut))
                && cmd.start.chunk > self.last_reply_chunk
                && !self.overlap_seen;
        }
        if line.expect == Expect::Maybe {
            self.counters.noreply += 1;
            self.counters.quiet_meta += 1;
            let (chunk, candidate) = (pending.chunk, pending.candidate);
            out.push(self.exchange(pending, ts, None, false));
            self.push(Entry::Quiet { chunk, candidate }, ts, out);
            return;
        }
        self.push(Entry::Command(pending), ts, out);
    }

    fn push(&mut self, entry: Entry, ts: u64, out: &mut Vec<DbExchange>) {
        if self.queue.len() >= MAX_PENDING {
            self.counters.queue_overflow += 1;
            match self.queue.pop_front() {
                Some(Entry::Command(p)) => {
                    let kind = p.kind;
                    self.emit_no_response(p, ts, out);
                    if self.skip.len() >= MAX_PENDING {
                        // Too much owed to keep track of: give up on the replies to come.
                        self.reply_unattributable(ts, out);
                    } else if !self.reply.lost() {
                        self.skip.push_back(kind);
                    }
                }
                Some(Entry::Barrier { .. } | Entry::Quiet { .. }) => {
                    self.reply_unattributable(ts, out)
                }
                None => {}
            }
        }
        self.queue.push_back(entry);
    }

    /// Replies past those of the commands pending now cannot be attributed.
    fn barrier(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        if self.queue.is_empty() && self.skip.is_empty() {
            if !self.reply.lost() {
                self.reply_unattributable(ts, out);
            }
        } else {
            let chunk = self.chunks;
            self.push(Entry::Barrier { chunk }, ts, out);
        }
    }

    fn request_desync(&mut self, over_limit: bool, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.request_desync += 1;
        self.counters.over_limit += u64::from(over_limit);
        self.request.lose();
        // The commands read so far still get their replies (after a quiet point too).
        self.barrier(ts, out);
    }

    fn reply_desync(&mut self, over_limit: bool, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.reply_desync += 1;
        self.counters.over_limit += u64::from(over_limit);
        self.reply_unattributable(ts, out);
    }

    /// Replies can no longer be told apart or attributed: everything pending ends without
    /// one, and the reply side waits for a quiet point.
    fn reply_unattributable(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        self.reply.lose();
        self.drain(ts, out);
    }

    fn drain(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        while let Some(entry) = self.queue.pop_front() {
            if let Entry::Command(p) = entry {
                self.emit_no_response(p, ts, out);
            }
        }
        self.skip.clear();
    }

    fn on_reply(&mut self, unit: ReplyUnit, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.values += u64::from(unit.item);
        if let Some(&kind) = self.skip.front() {
            // A reply of a command pushed out of the full queue.
            match fit(kind, &unit) {
                Fit::Continues => {}
                Fit::Ends(_) => {
                    self.skip.pop_front();
                    self.check_barrier(ts, out);
                }
                Fit::Mismatch => self.reply_desync(false, ts, out),
            }
            return;
        }
        match self.queue.front_mut() {
            Some(Entry::Command(p)) => match fit(p.kind, &unit) {
                Fit::Continues => p.reply_bytes += unit.bytes,
                Fit::Ends(error) => {
                    if let Some(Entry::Command(mut p)) = self.queue.pop_front() {
                        p.reply_bytes += unit.bytes;
                        self.counters.replies += 1;
                        let watch = p.kind == Kind::Watch && error.is_none();
                        out.push(self.exchange(p, ts, error, false));
                        if watch {
                            // A log feed follows, not replies.
                            self.feed = true;
                            self.reply_unattributable(ts, out);
                            return;
                        }
                    }
                }
                Fit::Mismatch => {
                    self.reply_desync(false, ts, out);
                    return;
                }
            },
            Some(Entry::Barrier { .. }) => {
                self.reply_unattributable(ts, out);
                return;
            }
            Some(Entry::Quiet { .. }) => {
                self.quiet_reply(unit, ts, out);
                return;
            }
            None => self.counters.orphan_replies += 1,
        }
        self.check_barrier(ts, out);
    }

    /// A reply while quiet meta commands lead the queue. `MN` ends them: it answers the `mn`
    /// after them (the way clients end a quiet batch). Any other reply answers one of them
    /// when only an `mn` (or nothing yet) follows them; which one does not matter, they are
    /// emitted already. Before any other command, whose reply it could be as well, replies
    /// can no longer be attributed.
    fn quiet_reply(&mut self, unit: ReplyUnit, ts: u64, out: &mut Vec<DbExchange>) {
        if !unit.item && unit.is("MN") {
            while matches!(self.queue.front(), Some(Entry::Quiet { .. })) {
                self.queue.pop_front();
            }
            self.on_reply(unit, ts, out);
            return;
        }
        let next = self
            .queue
            .iter()
            .find(|e| !matches!(e, Entry::Quiet { .. }));
        match next {
            None => self.counters.quiet_replies += 1,
            Some(Entry::Command(p)) if p.kind == Kind::MetaNoop => self.counters.quiet_replies += 1,
            Some(_) => self.reply_unattributable(ts, out),
        }
    }

    /// When the replies to come belong to commands never seen, stops attributing them.
    fn check_barrier(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        if self.skip.is_empty() && matches!(self.queue.front(), Some(Entry::Barrier { .. })) {
            self.reply_unattributable(ts, out);
        }
    }

    fn emit_no_response(&mut self, p: Pending, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.no_response += 1;
        let mut exchange = self.exchange(p, ts, None, true);
        exchange.response_bytes = 0;
        out.push(exchange);
    }

    fn exchange(
        &self,
        p: Pending,
        end_ns: u64,
        error_code: Option<&'static str>,
        no_response: bool,
    ) -> DbExchange {
        DbExchange {
            system: SYSTEM,
            request_flow: self.request_flow,
            operation: p.operation.map(str::to_string),
            collection: None,
            namespace: None,
            query_text: p.query_text,
            raw_query_text: None,
            error_code: error_code.map(str::to_string),
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            request_bytes: p.bytes,
            response_bytes: p.reply_bytes,
            no_response,
            partial: false,
        }
    }
}

#[cfg(test)]
mod tests;
