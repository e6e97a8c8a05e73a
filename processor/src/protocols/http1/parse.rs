//! HTTP/1.x parsing of the captured head of a request or response. Input is attacker
//! controlled and usually cut short (the kernel captures only the first bytes), so every
//! function here takes any byte slice, never panics, and reports truncation instead of
//! guessing.

use crate::span::SpanUse;
use std::borrow::Cow;

/// Longest method token accepted (`VERSION-CONTROL`, `BASELINE-CONTROL` fit).
const MAX_METHOD_LEN: usize = 20;
/// Longest `User-Agent` value kept.
const MAX_USER_AGENT_LEN: usize = 256;

/// True for a method token: upper-case letters, `-` and `_` (standard methods and the WebDAV
/// and cache ones servers see, such as `PROPFIND` or `PURGE`).
fn is_method_token(m: &[u8]) -> bool {
    !m.is_empty()
        && m.len() <= MAX_METHOD_LEN
        && m[0].is_ascii_uppercase()
        && m.iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Why a request head could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The bytes do not start with a method token followed by a space.
    NotHttp,
    /// The request line has no target or no `HTTP/1.x` version where one must be.
    BadRequestLine,
    /// The request line is longer than the captured bytes, so the target is incomplete.
    RequestLineTruncated,
}

impl RequestError {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestError::NotHttp => "not an HTTP/1.x request",
            RequestError::BadRequestLine => "malformed request line",
            RequestError::RequestLineTruncated => "request line exceeds the captured bytes",
        }
    }
}

/// What a request head tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// Borrowed from `semconv::known_method`'s table when it is a standard method.
    pub method: Cow<'static, str>,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    /// `1.0` or `1.1`, from the request line.
    pub version: &'static str,
    pub user_agent: Option<String>,
    pub content_length: Option<u64>,
    /// W3C `traceparent` header, when present and well formed: (trace id, parent span id, flags).
    pub traceparent: Option<([u8; 16], [u8; 8], u8)>,
    /// A complete `traceparent` header line was captured but its value is not a valid
    /// version-00 context (ignored, counted).
    pub traceparent_invalid: bool,
    /// W3C `tracestate` header (at most `MAX_TRACESTATE_LEN` bytes; longer ones are dropped,
    /// as W3C lets a receiver do).
    pub tracestate: Option<String>,
    /// Length of the head including the blank line, when it ended inside the capture.
    pub head_len: Option<usize>,
}

/// What a response head tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHead {
    pub status: u16,
    pub content_length: Option<u64>,
    pub head_len: Option<usize>,
}

/// Offset of the first CRLF.
fn find_crlf(haystack: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\r', haystack).find(|&i| haystack.get(i + 1) == Some(&b'\n'))
}

/// The searcher for the blank line ending a head, built once: building a searcher costs more
/// than running it on a few hundred bytes.
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// Walks the complete CRLF header lines after the first line (ending at `first_line_end`), up
/// to the blank line, and passes each to `line` without its CR; with `cut_last_line`, also a
/// last line the capture cut right after its CR. Returns the head's length as `head_len` gives
/// it, found by the same walk: one pass over the head instead of a line split and then a
/// search for the blank line (both ran on every request and response).
fn walk_head(
    bytes: &[u8],
    first_line_end: usize,
    cut_last_line: bool,
    mut line: impl FnMut(&[u8]),
) -> Option<usize> {
    let Some(rest) = bytes.get(first_line_end..) else {
        return head_len(bytes);
    };
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', rest) {
        let this = &rest[start..nl];
        let at = first_line_end + start;
        start = nl + 1;
        if this.is_empty() || this == b"\r" {
            // A CRLF line after a CRLF is the first `\r\n\r\n` of the bytes (a line holds no
            // LF, and the first line ends at the first CRLF). A bare LF before or as the blank
            // line is no head end: searched as `head_len` searches.
            return if this == b"\r" && bytes.get(at.wrapping_sub(2)..at) == Some(b"\r\n") {
                Some(at + 2)
            } else {
                head_len(bytes)
            };
        }
        if let Some(l) = this.strip_suffix(b"\r") {
            line(l);
        }
    }
    if cut_last_line
        && let Some(l) = rest[start..].strip_suffix(b"\r")
        && !l.is_empty()
    {
        line(l);
    }
    // No blank line: no `\r\n\r\n` either (its second CRLF would be a complete blank line).
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn head_len(bytes: &[u8]) -> Option<usize> {
    HEAD_END.find(bytes).map(|i| i + 4)
}

/// Longest `tracestate` kept: W3C asks receivers to propagate at least 512 characters.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A `tracestate` value to carry: printable ASCII, not empty, at most `MAX_TRACESTATE_LEN`.
pub fn tracestate_value(v: &[u8]) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_TRACESTATE_LEN
        && v.iter().all(|b| (0x20..0x7f).contains(b));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid per W3C.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    hex_decode(&v[3..35], &mut trace)?;
    hex_decode(&v[36..52], &mut span)?;
    let mut flags = [0u8; 1];
    hex_decode(&v[53..55], &mut flags)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0]))
}

fn hex_decode(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (i, pair) in src.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        dst[i] = (hi * 16 + lo) as u8;
    }
    Some(())
}

/// Splits a request target into path and query. An absolute-form target
/// (`http://user:pass@host/p`, sent to proxies) loses its userinfo: credentials are never part
/// of a span.
fn split_target(target: &[u8]) -> (String, Option<String>) {
    split_target_into(target, String::new())
}

/// `split_target` writing the path into `path` (cleared first): a recycled span's buffer.
fn split_target_into(target: &[u8], mut path: String) -> (String, Option<String>) {
    let target = lossy(target);
    let target = strip_userinfo(&target);
    path.clear();
    match target.split_once('?') {
        Some((p, q)) => {
            path.push_str(p);
            (path, Some(q.to_string()))
        }
        None => {
            path.push_str(&target);
            (path, None)
        }
    }
}

/// `String::from_utf8_lossy`, with the check for valid UTF-8 (nearly every header value)
/// done first: `from_utf8` has an ASCII fast path the lossy decoder lacks.
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `scheme://user:pass@host/rest` without `user:pass@`; anything else unchanged.
pub fn strip_userinfo(target: &str) -> std::borrow::Cow<'_, str> {
    // The scheme is the run of scheme characters the target starts with, when `://` follows
    // it (a `://` further on has a non-scheme character before it): read once up to its end
    // instead of searching the whole target for `://` (an origin-form target stops at its
    // first `/`).
    let scheme_end = target
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(target.len());
    if scheme_end == 0 || !target[scheme_end..].starts_with("://") {
        return target.into();
    }
    let authority_start = scheme_end + 3;
    let rest = &target[authority_start..];
    // Byte searches: the delimiters are ASCII, so their positions are character boundaries
    // (`str::find` with a set of chars walks it char by char: ~a third of a client span's
    // encoding in `encode_cost`).
    let authority_len = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    match rest.as_bytes()[..authority_len]
        .iter()
        .rposition(|&b| b == b'@')
    {
        Some(at) => format!("{}{}", &target[..authority_start], &rest[at + 1..]).into(),
        None => target.into(),
    }
}

/// What is shown of a request whose line did not parse: the method and the start of the
/// target, which ends at the first space or control byte (a request line cut short by the
/// capture or a bare CR/LF must not carry the next header line, `Authorization: …`, into the
/// path) and at 64 characters. The query is split off so the query policy applies to it.
pub fn malformed_request_start(bytes: &[u8]) -> (String, String, Option<String>) {
    const MAX_CHARS: usize = 64;
    let sp = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    let method = String::from_utf8_lossy(&bytes[..sp]).into_owned();
    let after = bytes.get(sp + 1..).unwrap_or(&[]);
    let end = after
        .iter()
        .position(|&b| b == b' ' || b.is_ascii_control())
        .unwrap_or(after.len());
    let target: String = String::from_utf8_lossy(&after[..end])
        .chars()
        .take(MAX_CHARS)
        .collect();
    let (path, query) = split_target(target.as_bytes());
    (method, path, query)
}

/// Query parameters whose values are credentials: signed-URL signatures and keys (AWS S3
/// v2/v4, Azure SAS, Google Cloud Storage), OAuth tokens and codes, passwords and API keys.
/// Matched case-insensitively on the percent-decoded name.
pub const SENSITIVE_QUERY_PARAMS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "sig",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "key",
    "client_secret",
    "code",
];

/// What replaces the value of a sensitive query parameter.
pub const REDACTED: &str = "REDACTED";

/// Whether and how `url.query` leaves the processor (printed spans, OTLP `url.query` and the
/// query part of `url.full`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryPolicy {
    /// Off by default: no query at all.
    pub export: bool,
    /// Names redacted besides `SENSITIVE_QUERY_PARAMS`.
    pub extra_sensitive: Vec<String>,
}

impl QueryPolicy {
    /// The query as it may leave: none when export is off, else with every sensitive
    /// parameter's value replaced by `REDACTED`.
    pub fn apply(&self, query: Option<String>) -> Option<String> {
        let q = query.filter(|_| self.export)?;
        Some(match redact_query(&q, &self.extra_sensitive) {
            std::borrow::Cow::Borrowed(_) => q,
            std::borrow::Cow::Owned(r) => r,
        })
    }
}

/// `name` percent-decoded (`+` is a space); invalid escapes are kept as they are.
fn decode_name(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.bytes().any(|b| b == b'%' || b == b'+') {
        return name.into();
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// True when `name` is a credential parameter.
fn is_sensitive(name: &str, extra: &[String]) -> bool {
    let name = decode_name(name);
    let name = name.trim();
    SENSITIVE_QUERY_PARAMS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
        || extra.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `query` with the value of every sensitive parameter (`SENSITIVE_QUERY_PARAMS`, `extra`)
/// replaced by `REDACTED`; names, order, separators (`&`, and `;` which some servers accept)
/// and other values are kept.
pub fn redact_query<'q>(query: &'q str, extra: &[String]) -> std::borrow::Cow<'q, str> {
    const SEPARATORS: [char; 2] = ['&', ';'];
    let sensitive_name = |pair: &'q str| -> Option<&'q str> {
        let (name, value) = pair.split_once('=')?;
        (!value.is_empty() && is_sensitive(name, extra)).then_some(name)
    };
    // Almost every query has nothing to redact: no allocation then.
    if !query.split(SEPARATORS).any(|p| sensitive_name(p).is_some()) {
        return query.into();
    }
    let mut out = String::with_capacity(query.len());
    let mut pos = 0;
    for pair in query.split(SEPARATORS) {
        match sensitive_name(pair) {
            Some(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            None => out.push_str(pair),
        }
        pos += pair.len();
        // The separator that ended this pair, if any (both are one byte).
        if let Some(sep) = query.get(pos..pos + 1) {
            out.push_str(sep);
            pos += 1;
        }
    }
    out.into()
}

/// Parses a captured request head.
pub fn parse_request(bytes: &[u8]) -> Result<RequestHead, RequestError> {
    parse_request_for(bytes, SpanUse::Everything, HeadBuffers::default())
}

/// Buffers a recycled span lends to the parse of the next request head: each is cleared and
/// written over instead of a new `String` allocated (empty ones allocate as before).
#[derive(Debug, Default)]
pub struct HeadBuffers {
    pub path: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
}

/// `value` in `buffer` (cleared first) or in a new `String`.
fn written_into(buffer: Option<String>, value: &str) -> String {
    match buffer {
        Some(mut b) => {
            b.clear();
            b.push_str(value);
            b
        }
        None => value.to_owned(),
    }
}

/// `parse_request` for a span used as `span_use` says: unless every field is wanted, the
/// `Host` and `User-Agent` values (an allocation each, read by no metric) are left out (a
/// sampled span reads them again once it is kept: `request_details`). The strings are written
/// into `buffers` (a recycled span's).
pub fn parse_request_for(
    bytes: &[u8],
    span_use: SpanUse,
    buffers: HeadBuffers,
) -> Result<RequestHead, RequestError> {
    let HeadBuffers {
        path,
        host: mut host_buffer,
        user_agent: mut user_agent_buffer,
    } = buffers;
    let details = span_use == SpanUse::Everything;
    let sp = bytes
        .iter()
        .position(|&b| b == b' ')
        .ok_or(RequestError::NotHttp)?;
    if !is_method_token(&bytes[..sp]) {
        return Err(RequestError::NotHttp);
    }
    let method = std::str::from_utf8(&bytes[..sp]).map_err(|_| RequestError::NotHttp)?;
    let after_method = &bytes[sp + 1..];
    let line_end = find_crlf(after_method);
    let line = match line_end {
        Some(end) => &after_method[..end],
        None => after_method,
    };
    let (target, version) = match line.iter().rposition(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None if line_end.is_none() => return Err(RequestError::RequestLineTruncated),
        None => return Err(RequestError::BadRequestLine),
    };
    if !version.starts_with(b"HTTP/1.") {
        return Err(if line_end.is_none() {
            RequestError::RequestLineTruncated
        } else {
            RequestError::BadRequestLine
        });
    }
    if target.is_empty() || target.iter().any(|&b| b.is_ascii_control() || b == b' ') {
        return Err(RequestError::BadRequestLine);
    }
    let (path, query) = split_target_into(target, path);
    let mut head = RequestHead {
        method: crate::semconv::known_method(method)
            .map_or_else(|| Cow::Owned(method.to_string()), Cow::Borrowed),
        path,
        query,
        version: if version == b"HTTP/1.0" { "1.0" } else { "1.1" },
        ..Default::default()
    };
    let Some(end) = line_end else {
        head.head_len = head_len(bytes);
        return Ok(head);
    };
    head.head_len = walk_head(bytes, sp + 1 + end + 2, true, |l| {
        let Some(colon) = memchr::memchr(b':', l) else {
            return;
        };
        let (name, value) = (&l[..colon], trim(&l[colon + 1..]));
        if details && name.eq_ignore_ascii_case(b"host") {
            // `user:password@host` is not a valid Host, but whatever a client sends, the
            // credentials part never leaves.
            let value = match value.iter().rposition(|&b| b == b'@') {
                Some(at) => &value[at + 1..],
                None => value,
            };
            head.host = Some(written_into(host_buffer.take(), &lossy(value)));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            head.content_length = parse_u64(value);
        } else if name.eq_ignore_ascii_case(b"traceparent") {
            head.traceparent = parse_traceparent(value);
            head.traceparent_invalid = head.traceparent.is_none();
        } else if name.eq_ignore_ascii_case(b"tracestate") {
            head.tracestate = tracestate_value(value);
        } else if details && name.eq_ignore_ascii_case(b"user-agent") {
            let value = &value[..value.len().min(MAX_USER_AGENT_LEN)];
            head.user_agent = Some(written_into(user_agent_buffer.take(), &lossy(value)));
        }
    });
    Ok(head)
}

/// The `Host` and `User-Agent` values of a request head `parse_request_for` has read without
/// them; `None` for what is not a well-formed request head.
pub fn request_details(bytes: &[u8]) -> Option<(Option<String>, Option<String>)> {
    parse_request_for(bytes, SpanUse::Everything, HeadBuffers::default())
        .ok()
        .map(|h| (h.host, h.user_agent))
}

/// Parses a captured response head; None when it is not an HTTP/1.x status line.
pub fn parse_response(bytes: &[u8]) -> Option<ResponseHead> {
    let rest = bytes.strip_prefix(b"HTTP/1.")?;
    // "HTTP/1.1 200" at minimum: version digit, space, three status digits.
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status =
        (code[0] - b'0') as u16 * 100 + (code[1] - b'0') as u16 * 10 + (code[2] - b'0') as u16;
    let mut head = ResponseHead {
        status,
        ..Default::default()
    };
    head.head_len = match find_crlf(bytes) {
        // The Content-Length by one prefix comparison per line (no split at the colon): this
        // runs once per response at full load. Complete CRLF lines only.
        Some(line_end) => walk_head(bytes, line_end + 2, false, |l| {
            const NAME: &[u8] = b"content-length:";
            if l.len() >= NAME.len() && l[..NAME.len()].eq_ignore_ascii_case(NAME) {
                head.content_length = parse_u64(trim(&l[NAME.len()..]));
            }
        }),
        None => head_len(bytes),
    };
    Some(head)
}

/// Body size from the total bytes that moved and what the head tells: exact when the head
/// ended inside the capture, else the declared Content-Length.
pub fn body_size(total: u64, head_len: Option<usize>, content_length: Option<u64>) -> Option<u64> {
    match head_len {
        Some(h) => Some(total.saturating_sub(h as u64)),
        None => content_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_walk_finds_the_head_end_the_search_finds_at_every_cut() {
        let heads: [&[u8]; 6] = [
            b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: h\n\r\nbody\r\n\r\nmore",
            b"GET /c HTTP/1.1\r\nX: y\r\n\nbody\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 204 No Content\r\nA: b\n\r\n\r\n",
        ];
        for head in heads {
            for cut in 0..=head.len() {
                let bytes = &head[..cut];
                let expected = head_len(bytes);
                if let Ok(r) = parse_request(bytes) {
                    assert_eq!(
                        r.head_len,
                        expected,
                        "request {:?}",
                        String::from_utf8_lossy(bytes)
                    );
                }
                if let Some(r) = parse_response(bytes) {
                    assert_eq!(
                        r.head_len,
                        expected,
                        "response {:?}",
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
        }
        let r = parse_request(heads[0]).unwrap();
        assert_eq!((r.host.as_deref(), r.content_length), (Some("h"), Some(4)));
        assert_eq!(parse_response(heads[4]).unwrap().content_length, Some(2));
    }

    #[test]
    fn request_with_query_host_and_body() {
        let r = parse_request(b"POST /api/items?id=7&x=y HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 12\r\n\r\nhello world!")
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/items");
        assert_eq!(r.query.as_deref(), Some("id=7&x=y"));
        assert_eq!(r.host.as_deref(), Some("example.com:8080"));
        assert_eq!(r.content_length, Some(12));
        assert_eq!(r.head_len, Some(81));
    }

    #[test]
    fn request_cut_inside_headers_keeps_complete_ones() {
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Ag").unwrap();
        assert_eq!(r.host.as_deref(), Some("a"));
        assert_eq!(r.head_len, None);
    }

    #[test]
    fn request_errors() {
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00"),
            Err(RequestError::NotHttp)
        );
        assert_eq!(
            parse_request(b"foo / HTTP/1.1\r\n"),
            Err(RequestError::NotHttp)
        );
        // A non-standard method token is HTTP (reported as `_OTHER`); a space-less blob is not.
        assert_eq!(
            parse_request(b"FOO / HTTP/1.1\r\n").map(|h| h.method),
            Ok("FOO".into())
        );
        assert_eq!(
            parse_request(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA / HTTP/1.1\r\n"),
            Err(RequestError::NotHttp)
        );
        assert_eq!(
            parse_request(b"GET /aaaaaaaaaaaaaaaaa"),
            Err(RequestError::RequestLineTruncated)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1"),
            Ok(RequestHead {
                method: "GET".into(),
                path: "/".into(),
                version: "1.1",
                ..Default::default()
            })
        );
        assert_eq!(
            parse_request(b"GET / SPDY/3\r\n\r\n"),
            Err(RequestError::BadRequestLine)
        );
        assert_eq!(
            parse_request(b"GET \r\n\r\n"),
            Err(RequestError::BadRequestLine)
        );
        assert_eq!(parse_request(b""), Err(RequestError::NotHttp));
    }

    #[test]
    fn response_status_and_length() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.content_length, Some(9));
        assert_eq!(r.head_len, Some(45));
        assert_eq!(parse_response(b"HTTP/1.0 500").unwrap().status, 500);
        assert!(parse_response(b"HTTP/1.1 2").is_none());
        assert!(parse_response(b"HTTP/2 200").is_none());
        assert!(parse_response(b"SSH-2.0").is_none());
    }

    #[test]
    fn body_sizes() {
        assert_eq!(body_size(100, Some(40), Some(999)), Some(60));
        assert_eq!(body_size(100, None, Some(7)), Some(7));
        assert_eq!(body_size(10, Some(40), None), Some(0));
        assert_eq!(body_size(10, None, None), None);
    }

    #[test]
    fn traceparent() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(v).unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(s[7], 0xb7);
        assert_eq!(f, 1);
        assert!(
            parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7").is_none()
        );
        let r = parse_request(b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n").unwrap();
        assert!(r.traceparent.is_some());
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_well_known_credential_is_redacted_and_its_name_kept() {
        for name in SENSITIVE_QUERY_PARAMS {
            let q = format!("ok=1&{name}=S3CRET&z=2");
            assert_eq!(
                redact_query(&q, &[]),
                format!("ok=1&{name}=REDACTED&z=2"),
                "{name}"
            );
            let upper = format!("{}=S3CRET", name.to_ascii_uppercase());
            assert!(!redact_query(&upper, &[]).contains("S3CRET"), "{upper}");
        }
    }

    #[test]
    fn redaction_rules() {
        // The issue's example: both redacted, ok=1 kept.
        assert_eq!(
            redact_query("X-Amz-Signature=S&password=S&ok=1", &[]),
            "X-Amz-Signature=REDACTED&password=REDACTED&ok=1"
        );
        // Nothing to redact: borrowed, unchanged.
        assert!(matches!(
            redact_query("a=1&b=&token&keys=2", &[]),
            std::borrow::Cow::Borrowed("a=1&b=&token&keys=2")
        ));
        // Percent-encoded names, `;` separators, repeated names, values holding `=`.
        assert_eq!(
            redact_query("pass%77ord=S;sig=a=b&sig=c&%73ecret=S", &[]),
            "pass%77ord=REDACTED;sig=REDACTED&sig=REDACTED&%73ecret=REDACTED"
        );
        // Configured extra names, case-insensitive.
        assert_eq!(
            redact_query("session=S&ok=1", &strings(&["SESSION"])),
            "session=REDACTED&ok=1"
        );
        assert_eq!(redact_query("session=S", &[]), "session=S");
        // Broken escapes do not panic and are kept.
        assert_eq!(redact_query("%=1&%G1=2&%7=3", &[]), "%=1&%G1=2&%7=3");
    }

    #[test]
    fn query_policy_is_off_by_default() {
        let off = QueryPolicy::default();
        assert_eq!(off.apply(Some("ok=1".into())), None);
        let on = QueryPolicy {
            export: true,
            extra_sensitive: strings(&["session"]),
        };
        assert_eq!(
            on.apply(Some("token=S&session=S&ok=1".into())).as_deref(),
            Some("token=REDACTED&session=REDACTED&ok=1")
        );
        assert_eq!(on.apply(None), None);
    }

    #[test]
    fn userinfo_never_reaches_path_or_host() {
        let r = parse_request(
            b"GET http://user:S@example.com:80/p?x=1 HTTP/1.1\r\nHost: admin:S@example.com\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.path, "http://example.com:80/p");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.host.as_deref(), Some("example.com"));
        assert_eq!(strip_userinfo("/a@b/c"), "/a@b/c");
        assert_eq!(strip_userinfo("https://u@h"), "https://h");
        assert_eq!(strip_userinfo("http://h/p@q"), "http://h/p@q");
        assert_eq!(strip_userinfo("/x?u=http://a:b@c"), "/x?u=http://a:b@c");
    }

    #[test]
    fn malformed_targets_stop_at_space_and_line_ends() {
        let (m, p, q) =
            malformed_request_start(b"GET /a b HTTP/1.1\r\nAuthorization: Bearer S\r\n\r\n");
        assert_eq!((m.as_str(), p.as_str(), q), ("GET", "/a", None));
        let (_, p, _) = malformed_request_start(b"GET /x\r\nAuthorization: Bearer S");
        assert_eq!(p, "/x");
        let (_, p, _) = malformed_request_start(b"GET /x\nCookie: S");
        assert_eq!(p, "/x");
        let (_, p, _) = malformed_request_start(b"GET /x\x1b[2J");
        assert_eq!(p, "/x");
        let (_, p, q) = malformed_request_start(b"GET /p?password=S&ok=1");
        assert_eq!((p.as_str(), q.as_deref()), ("/p", Some("password=S&ok=1")));
        let long = format!("GET /{}", "\u{e9}".repeat(100));
        let (_, p, _) = malformed_request_start(long.as_bytes());
        assert_eq!(p.chars().count(), 64);
        assert_eq!(malformed_request_start(b"GET").1, "");
    }

    proptest::proptest! {
        #[test]
        fn redaction_never_panics_and_keeps_no_sensitive_value(
            q in "[a-zA-Z%&;=_0-9-]{0,80}",
        ) {
            let r = redact_query(&q, &[]);
            let _ = redact_query(&format!("token=S&{q}"), &[]);
            // Redaction never makes a query longer than replacing every value could.
            proptest::prop_assert!(r.len() <= q.len() + q.len() * REDACTED.len() + 8);
        }

        #[test]
        fn malformed_paths_hold_no_line_end(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let (_, p, q) = malformed_request_start(&bytes);
            proptest::prop_assert!(!p.contains(['\r', '\n', ' ']));
            proptest::prop_assert!(!q.unwrap_or_default().contains(['\r', '\n', ' ']));
        }

        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
            let _ = parse_traceparent(&bytes);
        }

        #[test]
        fn never_panics_on_http_like_bytes(tail in "[ -~\r\n]{0,300}") {
            let _ = parse_request(format!("GET {tail}").as_bytes());
            let _ = parse_response(format!("HTTP/1.1 {tail}").as_bytes());
        }
    }
}
