//! Redis connection tracking for a passive observer: turns the commands a client wrote and the
//! replies it read on one connection (RESP2 or RESP3) into one [`DbExchange`] per command.
//!
//! Commands travel on the request flow, replies on the other, and Redis answers them in order,
//! so replies are matched to commands first in, first out: a pipeline (many commands in one
//! write, many replies in one read) yields one exchange per command, each starting at the
//! chunk that carried the command's first byte and ending at the chunk that carried the last
//! byte of its reply. What is not a reply to a command is recognised and skipped (counted):
//! RESP3 pushes (`>`), RESP2 pub/sub messages, the extra confirmations of a multi-channel
//! (UN)SUBSCRIBE, the MONITOR feed. Commands sent with replies switched off
//! (`CLIENT REPLY OFF|SKIP`) are emitted at once without one.
//!
//! `MULTI` … `EXEC`: Redis answers each queued command with `+QUEUED` and EXEC with the array
//! of their results; each queued command's exchange ends at its `QUEUED` (that is its reply
//! on the wire, and an error there, such as an unknown command, is its error), and EXEC is an
//! exchange of its own whose status is that of its reply (`EXECABORT`), not of the results
//! inside it.
//!
//! Keys and values never leave this module: the query text is the command name followed by
//! one `?` per argument (`SET ? ?`). Container commands keep their subcommand
//! (`CLIENT SETNAME ?`, operation `CLIENT SETNAME`) when it is a plausible keyword.
//!
//! Capture loses bytes: only the first bytes of each read or write are captured, and a
//! connection may be picked up mid-stream. Bulk strings carry their length, so uncaptured
//! bytes inside them are skipped by count and nothing is lost. When a command or reply
//! *header* falls into uncaptured bytes (or the bytes are not RESP) that direction loses its
//! boundaries, and the policy is never to attribute a reply to the wrong command:
//! - request side: the commands read before the loss still get their replies; the replies
//!   after those belong to commands never seen, so the reply side then stops attributing.
//!   Commands are read again from a later chunk that starts with one.
//! - reply side: every pending command ends without a reply. Replies are attributed again
//!   only at a *quiet point*: a command that starts a write, written after the last reply
//!   chunk, with nothing else pending, on a connection never seen writing a command while an
//!   earlier one was unanswered. Its reply is then the first reply chunk that follows. A
//!   client that pipelines asynchronously could still be reading an old reply then, which is
//!   why such connections (once seen) never resync their replies. A connection picked up
//!   mid-stream starts this way too, so an asynchronous pipeliner picked up mid-stream is
//!   the one residual risk.
//!
//! Chunks must be fed in the order they happened, across both directions.
//!
//! Memory per connection is bounded: [`MAX_PENDING`] commands waiting for replies, one line
//! of at most 64 KiB per direction (inline commands and RESP headers), RESP nesting of 16,
//! and a few 32-byte words per command and reply.

use std::collections::VecDeque;

use memchr::memchr;

use super::db::DbExchange;
use super::http2::Flow;
use super::text_lines::{Line, collect_line, recycle, take};

const SYSTEM: &str = "redis";

/// Commands waiting for their replies; past this the oldest ends without one (counted) and its
/// reply is skipped when it comes.
pub const MAX_PENDING: usize = 1024;
/// Redis' default `proto-max-bulk-len`: a longer bulk string is not Redis talking.
const MAX_BULK: u64 = 512 * 1024 * 1024;
/// More elements than this in one aggregate is taken for garbage.
const MAX_ELEMENTS: u64 = 1024 * 1024;
/// Aggregates nested deeper than this are taken for garbage.
const MAX_DEPTH: usize = 16;
/// Longest line buffered: Redis' own limit for an inline command (`PROTO_INLINE_MAX_SIZE`).
const MAX_LINE: usize = 64 * 1024;
/// Bytes kept of a command name, argument or reply text: enough for any command or error
/// code, small enough to keep per pending command.
const WORD: usize = 32;
/// `?` placeholders written in a query text; a longer command ends in ` ...`.
const MAX_PLACEHOLDERS: u64 = 64;

/// Everything a connection lost or skipped, and what it saw. Plain counters, summed by the
/// caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Commands read completely (multibulk or inline).
    pub commands: u64,
    /// Inline commands among them (`PING\r\n`).
    pub inline_commands: u64,
    /// Replies matched to their command.
    pub replies: u64,
    /// Out-of-band replies skipped: RESP3 pushes, RESP2 pub/sub messages, extra (un)subscribe
    /// confirmations, the MONITOR feed.
    pub pushes: u64,
    /// Replies that came with no command waiting for them: ignored.
    pub orphan_replies: u64,
    /// Exchanges emitted without a reply: the connection closed first, capture lost the
    /// reply, the pending queue overflowed, or replies were switched off.
    pub no_response: u64,
    /// Commands sent with replies switched off (`CLIENT REPLY OFF|SKIP`); also in
    /// `no_response`.
    pub replies_off: u64,
    /// Commands pushed out of a full pending queue; also in `no_response`.
    pub queue_overflow: u64,
    /// Command boundaries lost: a header fell into uncaptured bytes, or the bytes are not RESP.
    pub request_desync: u64,
    /// Reply boundaries lost likewise: the pending commands ended without replies.
    pub reply_desync: u64,
    /// Desyncs caused by a limit: a line over 64 KiB, a bulk string over 512 MiB, an aggregate
    /// over 1Mi elements, nesting over 16.
    pub over_limit: u64,
    /// Commands read again from a chunk starting with one (after a desync, or at the pickup of
    /// a connection seen mid-stream).
    pub request_resyncs: u64,
    /// Replies attributed again at a quiet point (after a loss, or at a mid-stream pickup).
    pub reply_resyncs: u64,
    /// Commands whose name was not captured or is not a plausible name: no operation.
    pub unknown_operations: u64,
    /// Uncaptured bytes skipped inside bulk strings without losing sync.
    pub uncaptured_bytes_skipped: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            commands,
            inline_commands,
            replies,
            pushes,
            orphan_replies,
            no_response,
            replies_off,
            queue_overflow,
            request_desync,
            reply_desync,
            over_limit,
            request_resyncs,
            reply_resyncs,
            unknown_operations,
            uncaptured_bytes_skipped,
        } = other;
        self.commands += commands;
        self.inline_commands += inline_commands;
        self.replies += replies;
        self.pushes += pushes;
        self.orphan_replies += orphan_replies;
        self.no_response += no_response;
        self.replies_off += replies_off;
        self.queue_overflow += queue_overflow;
        self.request_desync += request_desync;
        self.reply_desync += reply_desync;
        self.over_limit += over_limit;
        self.request_resyncs += request_resyncs;
        self.reply_resyncs += reply_resyncs;
        self.unknown_operations += unknown_operations;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
    }
}

/// The first bytes of a string: the command name, an argument, an error line, a reply's first
/// element. `get` answers only when all of it was captured and fit.
#[derive(Debug, Clone, Copy)]
struct Word {
    buf: [u8; WORD],
    len: u8,
    /// Every byte was captured and fit.
    complete: bool,
    /// Bytes may still be appended (no gap and no overflow so far).
    open: bool,
}

impl Word {
    const ABSENT: Word = Word {
        buf: [0; WORD],
        len: 0,
        complete: false,
        open: false,
    };

    fn started() -> Word {
        Word {
            complete: true,
            open: true,
            ..Word::ABSENT
        }
    }

    fn of(bytes: &[u8]) -> Word {
        let mut word = Word::started();
        word.push(bytes);
        word
    }

    fn push(&mut self, bytes: &[u8]) {
        if !self.open {
            return;
        }
        let len = usize::from(self.len);
        let n = bytes.len().min(WORD - len);
        self.buf[len..len + n].copy_from_slice(&bytes[..n]);
        // len + n <= WORD, which fits a u8.
        self.len = (len + n) as u8;
        if n < bytes.len() {
            self.complete = false;
            self.open = false;
        }
    }

    /// Some of its bytes were not captured: what follows the gap is unknown.
    fn lose(&mut self) {
        self.complete = false;
        self.open = false;
    }

    fn get(&self) -> Option<&[u8]> {
        self.complete.then(|| self.prefix())
    }

    fn prefix(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
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

/// Where a line or command began.
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
    /// Name and first two arguments.
    words: [Word; 3],
    argc: u64,
    bytes: u64,
    start: Position,
    inline: bool,
}

/// A command being read: the multibulk header was seen, `next` of `argc` bulk headers too.
struct Building {
    argc: u64,
    next: u64,
    words: [Word; 3],
    bytes: u64,
    start: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqStep {
    /// Collecting a line: a multibulk or bulk header, or an inline command.
    Line,
    /// Inside argument `index`'s payload; `left` counts its bytes and the CRLF still to come.
    Bulk { left: u64, index: u64 },
    /// Boundaries lost: waiting for a chunk that starts with a command.
    Lost,
}

/// The request direction's position in its byte stream.
struct Request {
    step: ReqStep,
    line: Vec<u8>,
    line_start: Position,
    cmd: Option<Building>,
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
            ReqStep::Bulk { left, index } => {
                let Some(cmd) = self.cmd.as_mut() else {
                    return (data.len(), Parsed::Desync { over_limit: false });
                };
                let n = take(left, data.len());
                let payload = bulk_payload(left, n);
                if let Some(word) = usize::try_from(index)
                    .ok()
                    .and_then(|i| cmd.words.get_mut(i))
                {
                    word.push(&data[..payload]);
                }
                if !crlf_ok(left, &data[payload..n], payload) {
                    return (n, Parsed::Desync { over_limit: false });
                }
                cmd.bytes += n as u64;
                let left = left - n as u64;
                if left > 0 {
                    self.step = ReqStep::Bulk { left, index };
                    return (n, Parsed::More);
                }
                self.step = ReqStep::Line;
                (n, self.finish_if_complete())
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

    fn finish_if_complete(&mut self) -> Parsed<Command> {
        match self.cmd.take() {
            Some(cmd) if cmd.next >= cmd.argc => Parsed::Done(Command {
                words: cmd.words,
                argc: cmd.argc,
                bytes: cmd.bytes,
                start: cmd.start,
                inline: false,
            }),
            cmd => {
                self.cmd = cmd;
                Parsed::More
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Parsed<Command> {
        let start = self.line_start;
        let Some(cmd) = self.cmd.as_mut() else {
            if line.first() != Some(&b'*') {
                return inline_command(line, start);
            }
            let Some(n) = crlf_body(line).and_then(parse_int) else {
                return Parsed::Desync { over_limit: false };
            };
            if n <= 0 {
                // Redis ignores an empty multibulk: no command, no reply.
                return Parsed::More;
            }
            if n.unsigned_abs() > MAX_ELEMENTS {
                return Parsed::Desync { over_limit: true };
            }
            self.cmd = Some(Building {
                argc: n.unsigned_abs(),
                next: 0,
                words: [Word::ABSENT; 3],
                bytes: line.len() as u64,
                start,
            });
            return Parsed::More;
        };
        if line.first() != Some(&b'$') {
            return Parsed::Desync { over_limit: false };
        }
        let Some(n) = crlf_body(line).and_then(parse_int) else {
            return Parsed::Desync { over_limit: false };
        };
        if n < 0 {
            return Parsed::Desync { over_limit: false };
        }
        if n.unsigned_abs() > MAX_BULK {
            return Parsed::Desync { over_limit: true };
        }
        cmd.bytes += line.len() as u64;
        let index = cmd.next;
        cmd.next += 1;
        if let Some(word) = usize::try_from(index)
            .ok()
            .and_then(|i| cmd.words.get_mut(i))
        {
            *word = Word::started();
        }
        self.step = ReqStep::Bulk {
            left: n.unsigned_abs() + 2,
            index,
        };
        Parsed::More
    }

    /// Skips `n` uncaptured bytes that followed the captured ones. Returns a command they
    /// completed, whether boundaries were lost, and how many bytes were skipped in sync.
    fn skip(&mut self, n: u64) -> (Option<Command>, bool, u64) {
        match self.step {
            ReqStep::Lost => (None, false, 0),
            ReqStep::Line => (None, n > 0, 0),
            ReqStep::Bulk { left, index } => {
                let Some(cmd) = self.cmd.as_mut() else {
                    return (None, true, 0);
                };
                let k = n.min(left);
                if k.min(left.saturating_sub(2)) > 0
                    && let Some(word) = usize::try_from(index)
                        .ok()
                        .and_then(|i| cmd.words.get_mut(i))
                {
                    word.lose();
                }
                cmd.bytes += k;
                let left = left - k;
                let mut done = None;
                if left > 0 {
                    self.step = ReqStep::Bulk { left, index };
                } else {
                    self.step = ReqStep::Line;
                    if let Parsed::Done(cmd) = self.finish_if_complete() {
                        done = Some(cmd);
                    }
                }
                (done, n > k, k)
            }
        }
    }
}

/// An inline command (`SET k v\r\n`): split like Redis does.
fn inline_command(line: &[u8], start: Position) -> Parsed<Command> {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    let mut words = [Word::ABSENT; 3];
    let argc = match split_inline(content, &mut words) {
        // Redis skips an empty line.
        Some(0) => return Parsed::More,
        Some(argc) => argc,
        // Unbalanced quotes: Redis answers with an error (then closes); the command is
        // unknown.
        None => {
            words = [Word::ABSENT; 3];
            1
        }
    };
    Parsed::Done(Command {
        words,
        argc,
        bytes: line.len() as u64,
        start,
        inline: true,
    })
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits an inline command the way Redis' `sdssplitargs` does (quotes, escapes), keeping the
/// first three arguments in `words`; returns the argument count, None for unbalanced quotes.
fn split_inline(line: &[u8], words: &mut [Word; 3]) -> Option<u64> {
    let mut i = 0;
    let mut argc = 0u64;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() || line[i] == 0 {
            return Some(argc);
        }
        let mut word = Word::started();
        let (mut double, mut single) = (false, false);
        loop {
            let Some(&c) = line.get(i) else {
                if double || single {
                    return None;
                }
                break;
            };
            if double || single {
                if c == 0 {
                    return None;
                }
                let quote = if double { b'"' } else { b'\'' };
                if c == quote {
                    // A closing quote must end the argument.
                    if line.get(i + 1).is_some_and(|&b| b != 0 && !is_space(b)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                if c == b'\\' && i + 1 < line.len() {
                    let next = line[i + 1];
                    if double
                        && next == b'x'
                        && let Some(byte) = line.get(i + 2..i + 4).and_then(hex_byte)
                    {
                        word.push(&[byte]);
                        i += 4;
                        continue;
                    }
                    if double || next == b'\'' {
                        let unescaped = match (double, next) {
                            (true, b'n') => b'\n',
                            (true, b'r') => b'\r',
                            (true, b't') => b'\t',
                            (true, b'b') => 0x08,
                            (true, b'a') => 0x07,
                            _ => next,
                        };
                        word.push(&[unescaped]);
                        i += 2;
                        continue;
                    }
                }
                word.push(&[c]);
                i += 1;
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => double = true,
                    b'\'' => single = true,
                    _ => word.push(&[c]),
                }
                i += 1;
            }
        }
        if let Some(slot) = usize::try_from(argc).ok().and_then(|a| words.get_mut(a)) {
            *slot = word;
        }
        argc += 1;
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    match pair {
        [h, l] => Some((digit(*h)? * 16 + digit(*l)?) as u8),
        _ => None,
    }
}

/// A reply read completely.
#[derive(Debug, Clone, Copy)]
struct ReplyDone {
    /// The type byte of the reply's own value (after any attribute): `+`, `*`, `>`, ….
    kind: u8,
    /// The reply's simple string, error line or blob error; for an aggregate, its first
    /// element when that is a string (a pub/sub message's kind).
    text: Word,
    /// Direct elements that are errors (EXEC's results).
    error_children: u64,
    /// The last direct element that is an integer (a subscription count).
    last_int: Option<i64>,
    /// A null (`$-1`, `*-1`, `_`).
    null: bool,
    bytes: u64,
}

impl ReplyDone {
    fn new() -> ReplyDone {
        ReplyDone {
            kind: 0,
            text: Word::ABSENT,
            error_children: 0,
            last_int: None,
            null: false,
            bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepStep {
    /// Collecting a header line.
    Line,
    /// Inside a bulk payload; `keep` copies it into the reply's text.
    Bulk { left: u64, keep: bool },
    /// Replies cannot be attributed: waiting for a quiet point.
    Lost,
}

/// An aggregate being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    left: u64,
    total: u64,
    /// An attribute (`|`): metadata before a value, not a value itself.
    attribute: bool,
}

/// The reply direction's position in its byte stream.
struct Reply {
    step: RepStep,
    line: Vec<u8>,
    stack: Vec<Frame>,
    /// Attribute frames on the stack.
    attributes: usize,
    cur: Option<ReplyDone>,
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
            stack: Vec::new(),
            attributes: 0,
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

    /// Reads from `data` until a reply completes or `data` runs out; returns the bytes used
    /// (at least one, `data` being non-empty).
    fn parse(&mut self, data: &[u8]) -> (usize, Parsed<ReplyDone>) {
        match self.step {
            RepStep::Lost => (data.len(), Parsed::More),
            RepStep::Bulk { left, keep } => {
                let n = take(left, data.len());
                let payload = bulk_payload(left, n);
                let cur = self.cur.get_or_insert_with(ReplyDone::new);
                if keep {
                    cur.text.push(&data[..payload]);
                }
                if !crlf_ok(left, &data[payload..n], payload) {
                    return (n, Parsed::Desync { over_limit: false });
                }
                cur.bytes += n as u64;
                let left = left - n as u64;
                if left > 0 {
                    self.step = RepStep::Bulk { left, keep };
                    return (n, Parsed::More);
                }
                self.step = RepStep::Line;
                (n, self.value_done())
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

    fn on_line(&mut self, line: &[u8]) -> Parsed<ReplyDone> {
        const GARBAGE: Parsed<ReplyDone> = Parsed::Desync { over_limit: false };
        let Some(body) = crlf_body(line) else {
            return GARBAGE;
        };
        let t = line[0];
        // The reply's own value, or one of its direct elements (outside attributes).
        let main = self.stack.is_empty();
        let child = self.attributes == 0 && self.stack.len() == 1;
        let first_child = child && self.stack[0].left == self.stack[0].total;
        let cur = self.cur.get_or_insert_with(ReplyDone::new);
        cur.bytes += line.len() as u64;
        if main && t != b'|' {
            cur.kind = t;
        }
        match t {
            b'+' | b'-' => {
                if main || (first_child && t == b'+') {
                    cur.text = Word::of(body);
                }
                if child && t == b'-' {
                    cur.error_children += 1;
                }
            }
            b':' => {
                let Some(v) = parse_int(body) else {
                    return GARBAGE;
                };
                if child {
                    cur.last_int = Some(v);
                }
            }
            b'_' if body.is_empty() => cur.null |= main,
            b'#' if body == b"t" || body == b"f" => {}
            b',' if plausible_double(body) => {}
            b'(' if parse_big(body) => {}
            b'$' if body == b"-1" => cur.null |= main,
            b'$' | b'=' | b'!' => {
                let Some(n) = parse_int(body).filter(|&n| n >= 0) else {
                    return GARBAGE;
                };
                if n.unsigned_abs() > MAX_BULK {
                    return Parsed::Desync { over_limit: true };
                }
                let keep = (main && t == b'!') || (first_child && t == b'$');
                if keep {
                    cur.text = Word::started();
                }
                if child && t == b'!' {
                    cur.error_children += 1;
                }
                self.step = RepStep::Bulk {
                    left: n.unsigned_abs() + 2,
                    keep,
                };
                return Parsed::More;
            }
            b'*' if body == b"-1" => cur.null |= main,
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some(n) = parse_int(body).filter(|&n| n >= 0) else {
                    return GARBAGE;
                };
                if n.unsigned_abs() > MAX_ELEMENTS {
                    return Parsed::Desync { over_limit: true };
                }
                let children = n.unsigned_abs() * if matches!(t, b'%' | b'|') { 2 } else { 1 };
                if children == 0 {
                    // An empty attribute is not a value; an empty aggregate is a complete one.
                    return if t == b'|' {
                        Parsed::More
                    } else {
                        self.value_done()
                    };
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Parsed::Desync { over_limit: true };
                }
                let attribute = t == b'|';
                self.attributes += usize::from(attribute);
                self.stack.push(Frame {
                    left: children,
                    total: children,
                    attribute,
                });
                return Parsed::More;
            }
            // Streamed strings and aggregates (`$?`, `*?`) are never sent by Redis.
            _ => return GARBAGE,
        }
        self.value_done()
    }

    /// A value ended: counts it against the aggregates it completes.
    fn value_done(&mut self) -> Parsed<ReplyDone> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return match self.cur.take() {
                    Some(reply) => Parsed::Done(reply),
                    None => Parsed::More,
                };
            };
            top.left = top.left.saturating_sub(1);
            if top.left > 0 {
                return Parsed::More;
            }
            let attribute = top.attribute;
            self.stack.pop();
            if attribute {
                // The value the attribute describes is still to come.
                self.attributes = self.attributes.saturating_sub(1);
                return Parsed::More;
            }
        }
    }

    /// Skips `n` uncaptured bytes: returns a reply they completed, whether boundaries were
    /// lost, and how many bytes were skipped in sync.
    fn skip(&mut self, n: u64) -> (Option<ReplyDone>, bool, u64) {
        match self.step {
            RepStep::Lost => (None, false, 0),
            RepStep::Line => (None, n > 0, 0),
            RepStep::Bulk { left, keep } => {
                let k = n.min(left);
                let cur = self.cur.get_or_insert_with(ReplyDone::new);
                if keep && k.min(left.saturating_sub(2)) > 0 {
                    cur.text.lose();
                }
                cur.bytes += k;
                let left = left - k;
                let mut done = None;
                if left > 0 {
                    self.step = RepStep::Bulk { left, keep };
                } else {
                    self.step = RepStep::Line;
                    if let Parsed::Done(reply) = self.value_done() {
                        done = Some(reply);
                    }
                }
                (done, n > k, k)
            }
        }
    }
}

/// How many of the `taken` bytes are payload rather than the final CRLF.
fn bulk_payload(left: u64, taken: usize) -> usize {
    usize::try_from(left.saturating_sub(2)).map_or(taken, |payload| payload.min(taken))
}

/// Whether `tail` (bytes of a bulk string's final CRLF; `left - payload` of the string were
/// still to come before it) are the CRLF expected there.
fn crlf_ok(left: u64, tail: &[u8], payload: usize) -> bool {
    let mut remaining = left - payload as u64;
    tail.iter().all(|&b| {
        let ok = b == if remaining == 2 { b'\r' } else { b'\n' };
        remaining = remaining.saturating_sub(1);
        ok
    })
}

/// The text of a RESP line between its type byte and its CRLF.
fn crlf_body(line: &[u8]) -> Option<&[u8]> {
    line.strip_suffix(b"\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| &l[1..])
}

/// A RESP integer: optional `-`, then digits, within i64.
fn parse_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

fn parse_big(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

fn plausible_double(s: &[u8]) -> bool {
    matches!(s, b"inf" | b"-inf" | b"nan")
        || (!s.is_empty()
            && s.iter()
                .all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
}

/// A command name as Redis and its modules spell them (`GET`, `JSON.SET`).
fn plausible_name(name: &[u8]) -> bool {
    name.first().is_some_and(u8::is_ascii_alphabetic)
        && name.len() <= WORD
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A container command's subcommand keyword (`SETNAME`, `NO-EVICT`).
fn plausible_subcommand(sub: &[u8]) -> bool {
    sub.first().is_some_and(u8::is_ascii_alphabetic)
        && sub.len() <= 24
        && sub.iter().all(|&b| b.is_ascii_alphabetic() || b == b'-')
}

fn upper(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| char::from(b.to_ascii_uppercase()))
        .collect()
}

fn is_listed(list: &str, name: &str) -> bool {
    list.split_ascii_whitespace().any(|w| w == name)
}

/// Commands whose first argument is a subcommand keyword, named with it.
const CONTAINERS: &str = "\
    ACL CLIENT CLUSTER COMMAND CONFIG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB SCRIPT \
    SLOWLOG XGROUP XINFO";

/// Commands recognised in inline form when detecting a connection or finding commands again:
/// a line of text starting with any word is not enough.
const INLINE_COMMANDS: &str = "\
    APPEND AUTH BLPOP BRPOP CLIENT COMMAND CONFIG DBSIZE DECR DECRBY DEL DISCARD ECHO EVAL \
    EVALSHA EXEC EXISTS EXPIRE FLUSHALL FLUSHDB GET GETDEL GETEX GETSET HDEL HELLO HEXISTS \
    HGET HGETALL HINCRBY HKEYS HLEN HMGET HMSET HSET HVALS INCR INCRBY INFO KEYS LINDEX LLEN \
    LPOP LPUSH LRANGE LREM LTRIM MGET MONITOR MSET MULTI PERSIST PEXPIRE PING PSUBSCRIBE PTTL \
    PUBLISH QUIT RESET RPOP RPUSH SADD SCAN SCARD SELECT SET SETEX SETNX SISMEMBER SMEMBERS \
    SREM STRLEN SUBSCRIBE TIME TTL TYPE UNLINK UNSUBSCRIBE UNWATCH WATCH XADD XLEN XRANGE \
    XREAD ZADD ZCARD ZINCRBY ZRANGE ZRANGEBYSCORE ZREM ZSCORE";

/// The (un)subscribe commands and the word their confirmations carry.
const SUBSCRIBE_COMMANDS: &[(&str, &str)] = &[
    ("SUBSCRIBE", "subscribe"),
    ("PSUBSCRIBE", "psubscribe"),
    ("SSUBSCRIBE", "ssubscribe"),
    ("UNSUBSCRIBE", "unsubscribe"),
    ("PUNSUBSCRIBE", "punsubscribe"),
    ("SUNSUBSCRIBE", "sunsubscribe"),
];

/// What a pub/sub event's first element says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubSub {
    /// A (un)subscribe confirmation: the word, and whether it unsubscribes.
    Confirmation(&'static str, bool),
    Message,
}

fn pubsub_word(word: &[u8]) -> Option<PubSub> {
    if matches!(word, b"message" | b"pmessage" | b"smessage") {
        return Some(PubSub::Message);
    }
    SUBSCRIBE_COMMANDS
        .iter()
        .find(|(_, w)| w.as_bytes() == word)
        .map(|&(_, w)| PubSub::Confirmation(w, w.contains("unsub")))
}

/// What a command does to the connection's state, as far as pairing and naming care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Plain,
    /// `SELECT n`, with n when it is a number.
    Select(Option<String>),
    /// `HELLO protover`.
    Hello(Option<u8>),
    /// A (un)subscribe: the word its confirmations carry, and the channels named.
    Subscribe {
        word: &'static str,
        channels: u64,
    },
    Exec,
    Discard,
    Monitor,
    Reset,
    ReplyOn,
    ReplyOff,
    ReplySkip,
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Pending {
    operation: Option<String>,
    query_text: Option<String>,
    kind: Kind,
    start_ns: u64,
    bytes: u64,
    /// The chunk it started in.
    chunk: u64,
    /// Written at a quiet point while replies could not be attributed: the first reply chunk
    /// after it starts its reply.
    candidate: bool,
}

#[derive(Debug)]
enum Entry {
    Command(Pending),
    /// Commands were lost on the request side here: the replies past this point belong to
    /// commands never seen.
    Barrier {
        chunk: u64,
    },
}

impl Entry {
    fn chunk(&self) -> u64 {
        match self {
            Entry::Command(p) => p.chunk,
            Entry::Barrier { chunk } => *chunk,
        }
    }
}

/// Names a command: operation, sanitized query text and kind.
fn describe(words: &[Word; 3], argc: u64) -> (Option<String>, Option<String>, Kind) {
    let Some(name) = words[0].get().filter(|n| plausible_name(n)) else {
        return (None, None, Kind::Plain);
    };
    let name = upper(name);
    let sub = (argc >= 2 && is_listed(CONTAINERS, &name))
        .then(|| {
            words[1]
                .get()
                .filter(|s| plausible_subcommand(s))
                .map(upper)
        })
        .flatten();
    let arg = |i: usize| words[i].get().filter(|_| argc > i as u64);
    let kind = match name.as_str() {
        "SELECT" if argc == 2 => Kind::Select(
            arg(1)
                .filter(|a| a.len() <= 10 && a.iter().all(u8::is_ascii_digit))
                .map(|a| String::from_utf8_lossy(a).into_owned()),
        ),
        "HELLO" if argc >= 2 => Kind::Hello(match arg(1) {
            Some(b"2") => Some(2),
            Some(b"3") => Some(3),
            _ => None,
        }),
        "EXEC" => Kind::Exec,
        "DISCARD" => Kind::Discard,
        "MONITOR" => Kind::Monitor,
        "RESET" => Kind::Reset,
        "CLIENT" if argc == 3 && sub.as_deref() == Some("REPLY") => {
            match arg(2).map(upper).as_deref() {
                Some("ON") => Kind::ReplyOn,
                Some("OFF") => Kind::ReplyOff,
                Some("SKIP") => Kind::ReplySkip,
                _ => Kind::Plain,
            }
        }
        n => SUBSCRIBE_COMMANDS
            .iter()
            .find(|(c, _)| *c == n)
            .map_or(Kind::Plain, |&(_, word)| Kind::Subscribe {
                word,
                channels: argc - 1,
            }),
    };
    let (operation, named) = match sub {
        Some(sub) => (format!("{name} {sub}"), 2),
        None => (name, 1),
    };
    let placeholders = argc.saturating_sub(named);
    let mut query = operation.clone();
    for _ in 0..placeholders.min(MAX_PLACEHOLDERS) {
        query.push_str(" ?");
    }
    if placeholders > MAX_PLACEHOLDERS {
        query.push_str(" ...");
    }
    (Some(operation), Some(query), kind)
}

/// The error code of an error reply: its first word when it is one (`ERR`, `WRONGTYPE`),
/// else `ERR`, as Redis itself prefixes errors that carry no code (a script's message could
/// carry a value).
fn error_code(text: &Word) -> String {
    let prefix = text.prefix();
    let word = match prefix.iter().position(|&b| b == b' ') {
        Some(i) => Some(&prefix[..i]),
        None => text.get(),
    };
    match word {
        Some(w)
            if w.first().is_some_and(u8::is_ascii_uppercase)
                && w.iter()
                    .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
        {
            String::from_utf8_lossy(w).into_owned()
        }
        _ => "ERR".to_string(),
    }
}

/// Whether `data` starts with a command: a multibulk whose first element is a plausible
/// command name, or an inline command with a known name.
fn looks_like_command(data: &[u8]) -> bool {
    fn header(data: &[u8], t: u8) -> Option<(i64, &[u8])> {
        let rest = data.strip_prefix(&[t])?;
        let end = rest.iter().take(21).position(|&b| b == b'\r')?;
        if rest.get(end + 1) != Some(&b'\n') {
            return None;
        }
        Some((parse_int(&rest[..end])?, &rest[end + 2..]))
    }
    if data.first() == Some(&b'*') {
        let Some((n, rest)) = header(data, b'*') else {
            return false;
        };
        if n < 1 || n.unsigned_abs() > MAX_ELEMENTS {
            return false;
        }
        let Some((len, rest)) = header(rest, b'$') else {
            return false;
        };
        let Some(len) = usize::try_from(len).ok().filter(|l| (1..=WORD).contains(l)) else {
            return false;
        };
        return rest
            .get(..len)
            .is_some_and(|name| plausible_name(name) && rest.get(len..len + 2) == Some(b"\r\n"));
    }
    let Some(end) = data.iter().take(WORD + 1).position(|&b| is_space(b)) else {
        return false;
    };
    let well_ended = match data[end] {
        b' ' | b'\n' => true,
        b'\r' => data.get(end + 1) == Some(&b'\n'),
        _ => false,
    };
    // An HTTP/1 request line starts with GET too.
    let line = &data[..memchr(b'\n', data).unwrap_or(data.len())];
    well_ended
        && is_listed(INLINE_COMMANDS, &upper(&data[..end]))
        && memchr::memmem::find(line, b" HTTP/").is_none()
}

/// Whether `data` starts like a reply: a RESP type byte, and a CRLF-ended first line if it
/// is there.
fn looks_like_reply(data: &[u8]) -> bool {
    let typed = data.first().is_some_and(|b| b"+-:$*_#,(!=%~>|".contains(b));
    typed
        && match memchr(b'\n', data) {
            Some(i) => i >= 2 && data[i - 1] == b'\r',
            None => true,
        }
}

/// One Redis connection as seen from one of its endpoints.
pub struct Connection {
    request_flow: Flow,
    request: Request,
    reply: Reply,
    queue: VecDeque<Entry>,
    /// Replies still owed to commands pushed out of the full queue: skipped as they come.
    skip_replies: u64,
    /// Confirmations still owed for the channels after the first of an (un)subscribe.
    skip_confirmations: u64,
    /// `db.namespace`: the database index; None when unknown.
    namespace: Option<String>,
    /// A `SELECT` queued in a transaction: it takes effect at EXEC.
    queued_select: Option<Option<String>>,
    /// HELLO 3 was answered: pub/sub messages come as pushes.
    resp3: bool,
    /// Subscribed (RESP2): arrays of pub/sub words are messages and confirmations.
    pubsub: bool,
    /// MONITOR was answered: simple strings are its feed.
    monitor: bool,
    replies_off: bool,
    skip_next_reply: bool,
    /// A command was once written while an earlier chunk's command was unanswered: replies
    /// lost here are never attributed again (an old reply may still be coming).
    overlap_seen: bool,
    chunks: u64,
    last_reply_chunk: u64,
    counters: Counters,
}

impl Connection {
    /// Whether the first captured bytes of a connection (carried by `flow`) look like a Redis
    /// client's command: a multibulk (`*<n>\r\n$<len>\r\n<CMD>\r\n…`) whose first element is
    /// a plausible command name, or an inline command with a known name (`PING\r\n`,
    /// `SET k v\r\n`). Returns the flow that carried the command. A reply (`+OK`, `-ERR`, `$`,
    /// `:`, …) is not enough: pairing starts at a command.
    pub fn detect(flow: Flow, first: &[u8]) -> Option<Flow> {
        looks_like_command(first).then_some(flow)
    }

    /// A tracker for a connection whose commands travel on `request_flow`. `fresh`: its first
    /// bytes were seen, so both directions start in sync and the database is 0 until a
    /// `SELECT`; otherwise (picked up mid-stream) commands are read from the first chunk that
    /// starts with one, replies from a quiet point, and the database is unknown (exchanges
    /// say `partial`) until a `SELECT`.
    pub fn new(request_flow: Flow, fresh: bool) -> Connection {
        Connection {
            request_flow,
            request: Request::new(fresh),
            reply: Reply::new(fresh),
            queue: VecDeque::new(),
            skip_replies: 0,
            skip_confirmations: 0,
            namespace: fresh.then(|| "0".to_string()),
            queued_select: None,
            resp3: false,
            pubsub: false,
            monitor: false,
            replies_off: false,
            skip_next_reply: false,
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
                self.on_command(cmd, ts, out);
            }
            if desync {
                self.request_desync(false, ts, out);
            }
        }
    }

    fn feed_reply(&mut self, captured: &[u8], uncaptured: u64, ts: u64, out: &mut Vec<DbExchange>) {
        if self.reply.lost() {
            let candidate = matches!(self.queue.front(), Some(Entry::Command(p)) if p.candidate);
            if !(candidate && looks_like_reply(captured)) {
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
                Parsed::Done(reply) => self.on_reply(reply, ts, out),
                Parsed::Desync { over_limit } => self.reply_desync(over_limit, ts, out),
            }
        }
        if uncaptured > 0 && !self.reply.lost() {
            let (reply, desync, skipped) = self.reply.skip(uncaptured);
            self.counters.uncaptured_bytes_skipped += skipped;
            if let Some(reply) = reply {
                self.on_reply(reply, ts, out);
            }
            if desync && !self.reply.lost() {
                self.reply_desync(false, ts, out);
            }
        }
    }

    fn on_command(&mut self, cmd: Command, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.commands += 1;
        self.counters.inline_commands += u64::from(cmd.inline);
        if self
            .queue
            .front()
            .is_some_and(|e| e.chunk() < cmd.start.chunk)
        {
            self.overlap_seen = true;
        }
        let (operation, query_text, kind) = describe(&cmd.words, cmd.argc);
        if operation.is_none() {
            self.counters.unknown_operations += 1;
        }
        let silent = match kind {
            Kind::ReplyOff => {
                self.replies_off = true;
                true
            }
            Kind::ReplySkip => {
                self.skip_next_reply = !self.replies_off;
                true
            }
            // Both turn replies back on, and are answered.
            Kind::ReplyOn | Kind::Reset => {
                self.replies_off = false;
                self.skip_next_reply = false;
                false
            }
            _ if self.replies_off => true,
            _ => std::mem::take(&mut self.skip_next_reply),
        };
        let mut pending = Pending {
            operation,
            query_text,
            kind,
            start_ns: cmd.start.ts,
            bytes: cmd.bytes,
            chunk: cmd.start.chunk,
            candidate: false,
        };
        if silent {
            self.counters.replies_off += 1;
            self.emit_no_response(pending, ts, out);
            return;
        }
        if self.reply.lost() {
            pending.candidate = self.queue.is_empty()
                && cmd.start.at_chunk_start
                && cmd.start.chunk > self.last_reply_chunk
                && !self.overlap_seen;
        }
        self.push(Entry::Command(pending), ts, out);
    }

    fn push(&mut self, entry: Entry, ts: u64, out: &mut Vec<DbExchange>) {
        if self.queue.len() >= MAX_PENDING {
            self.counters.queue_overflow += 1;
            match self.queue.pop_front() {
                Some(Entry::Command(p)) => {
                    if matches!(p.kind, Kind::Subscribe { .. }) {
                        // How many confirmations it would get is not known: stop attributing.
                        self.emit_no_response(p, ts, out);
                        self.reply_unattributable(ts, out);
                    } else {
                        if !self.reply.lost() {
                            self.skip_replies += 1;
                        }
                        self.emit_no_response(p, ts, out);
                    }
                }
                Some(Entry::Barrier { .. }) => self.reply_unattributable(ts, out),
                None => {}
            }
        }
        self.queue.push_back(entry);
    }

    fn request_desync(&mut self, over_limit: bool, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.request_desync += 1;
        self.counters.over_limit += u64::from(over_limit);
        self.request.lose();
        if self.queue.is_empty() && self.skip_replies == 0 {
            if !self.reply.lost() {
                self.reply_unattributable(ts, out);
            }
        } else {
            // The commands read so far still get their replies (after a quiet point too);
            // the replies after theirs answer commands never seen.
            let chunk = self.chunks;
            self.push(Entry::Barrier { chunk }, ts, out);
        }
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
        self.skip_replies = 0;
        self.skip_confirmations = 0;
    }

    fn on_reply(&mut self, reply: ReplyDone, ts: u64, out: &mut Vec<DbExchange>) {
        let push = reply.kind == b'>';
        let event = if push || (reply.kind == b'*' && !self.resp3) {
            reply.text.get().and_then(pubsub_word)
        } else {
            None
        };
        if let Some(PubSub::Confirmation(word, unsubscribes)) = event {
            // A subscription count of 0 after unsubscribing leaves RESP2's subscribed mode.
            let subscribed = !(unsubscribes && reply.last_int == Some(0));
            if self.skip_confirmations > 0 {
                self.skip_confirmations -= 1;
                self.counters.pushes += 1;
                self.pubsub = subscribed;
                return;
            }
            if let Some(Entry::Command(p)) = self.queue.front()
                && matches!(p.kind, Kind::Subscribe { word: w, .. } if w == word)
                && let Some(Entry::Command(p)) = self.queue.pop_front()
            {
                if let Kind::Subscribe { channels, .. } = p.kind {
                    self.skip_confirmations = channels.saturating_sub(1);
                }
                self.pubsub = subscribed;
                self.complete(p, reply, ts, out);
                self.check_barrier(ts, out);
                return;
            }
            if push || self.pubsub {
                self.counters.pushes += 1;
                self.pubsub = subscribed;
                return;
            }
        }
        if push || (event == Some(PubSub::Message) && self.pubsub) {
            self.counters.pushes += 1;
            return;
        }
        if self.monitor && reply.kind == b'+' {
            self.counters.pushes += 1;
            return;
        }
        if self.skip_replies > 0 {
            // The reply of a command pushed out of the full queue.
            self.skip_replies -= 1;
        } else {
            match self.queue.pop_front() {
                Some(Entry::Command(p)) => self.complete(p, reply, ts, out),
                Some(Entry::Barrier { .. }) => self.reply_unattributable(ts, out),
                None => self.counters.orphan_replies += 1,
            }
        }
        self.check_barrier(ts, out);
    }

    /// When the replies to come belong to commands never seen, stops attributing them.
    fn check_barrier(&mut self, ts: u64, out: &mut Vec<DbExchange>) {
        if self.skip_replies == 0 && matches!(self.queue.front(), Some(Entry::Barrier { .. })) {
            self.reply_unattributable(ts, out);
        }
    }

    fn complete(&mut self, mut p: Pending, reply: ReplyDone, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.replies += 1;
        let error = matches!(reply.kind, b'-' | b'!');
        let status = |s: &[u8]| reply.kind == b'+' && reply.text.get() == Some(s);
        let kind = std::mem::replace(&mut p.kind, Kind::Plain);
        // The exchange carries the database the command ran in, before it changes.
        let exchange = self.exchange(
            p,
            ts,
            reply.bytes,
            error.then(|| error_code(&reply.text)),
            false,
        );
        out.push(exchange);
        match kind {
            Kind::Select(db) if status(b"OK") => self.namespace = db,
            Kind::Select(db) if status(b"QUEUED") => self.queued_select = Some(db),
            Kind::Exec => {
                if let Some(db) = self.queued_select.take()
                    && matches!(reply.kind, b'*' | b'~')
                    && !reply.null
                {
                    // A queued SELECT that may have failed leaves the database unknown.
                    self.namespace = db.filter(|_| reply.error_children == 0);
                }
            }
            Kind::Discard => self.queued_select = None,
            Kind::Hello(Some(version)) if !error => self.resp3 = version == 3,
            Kind::Monitor if status(b"OK") => self.monitor = true,
            Kind::Reset if status(b"RESET") => {
                self.namespace = Some("0".to_string());
                self.queued_select = None;
                self.resp3 = false;
                self.pubsub = false;
                self.monitor = false;
            }
            _ => {}
        }
    }

    fn emit_no_response(&mut self, p: Pending, ts: u64, out: &mut Vec<DbExchange>) {
        self.counters.no_response += 1;
        let exchange = self.exchange(p, ts, 0, None, true);
        out.push(exchange);
    }

    fn exchange(
        &self,
        p: Pending,
        end_ns: u64,
        response_bytes: u64,
        error_code: Option<String>,
        no_response: bool,
    ) -> DbExchange {
        DbExchange {
            system: SYSTEM,
            request_flow: self.request_flow,
            operation: p.operation,
            collection: None,
            namespace: self.namespace.clone(),
            query_text: p.query_text,
            raw_query_text: None,
            error_code,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            request_bytes: p.bytes,
            response_bytes,
            no_response,
            partial: self.namespace.is_none(),
        }
    }
}

#[cfg(test)]
mod tests;
