//! HTTP/1.x parsing of the captured head of a request or response. Input is attacker
//! controlled and usually cut short (the kernel captures only the first bytes), so every
//! function here takes any byte slice, never panics, and reports truncation instead of
//! guessing.

/// Methods accepted on a request line.
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Why a request head could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The bytes do not start with a known method followed by a space.
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
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    pub content_length: Option<u64>,
    /// W3C `traceparent` header, when present and well formed: (trace id, parent span id, flags).
    pub traceparent: Option<([u8; 16], [u8; 8], u8)>,
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

/// Header lines after the first line, up to the blank line or the end of the capture. A last
/// line cut by the capture is skipped.
fn header_lines(bytes: &[u8], first_line_end: usize) -> impl Iterator<Item = (&[u8], &[u8])> {
    let rest = bytes.get(first_line_end..).unwrap_or(&[]);
    rest.split(|&b| b == b'\n')
        .take_while(|l| !l.is_empty() && *l != b"\r")
        .filter(|l| l.ends_with(b"\r"))
        .filter_map(|l| {
            let l = &l[..l.len() - 1];
            let colon = l.iter().position(|&b| b == b':')?;
            Some((&l[..colon], trim(&l[colon + 1..])))
        })
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

/// Parses a captured request head.
pub fn parse_request(bytes: &[u8]) -> Result<RequestHead, RequestError> {
    let sp = bytes
        .iter()
        .position(|&b| b == b' ')
        .ok_or(RequestError::NotHttp)?;
    let method = std::str::from_utf8(&bytes[..sp]).map_err(|_| RequestError::NotHttp)?;
    if !METHODS.contains(&method) {
        return Err(RequestError::NotHttp);
    }
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
    let target = String::from_utf8_lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut head = RequestHead {
        method: method.to_string(),
        path,
        query,
        ..Default::default()
    };
    if let Some(end) = line_end {
        for (name, value) in header_lines(bytes, sp + 1 + end + 2) {
            if name.eq_ignore_ascii_case(b"host") {
                head.host = Some(String::from_utf8_lossy(value).into_owned());
            } else if name.eq_ignore_ascii_case(b"content-length") {
                head.content_length = parse_u64(value);
            } else if name.eq_ignore_ascii_case(b"traceparent") {
                head.traceparent = parse_traceparent(value);
            }
        }
    }
    head.head_len = head_len(bytes);
    Ok(head)
}

/// The Content-Length of a response head, found with one byte search per line instead of
/// splitting every header (this runs once per response at full load). Same rules as
/// `header_lines`: complete CRLF lines up to the blank line, names case-insensitive.
fn response_content_length(bytes: &[u8], first_line_end: usize) -> Option<u64> {
    const NAME: &[u8] = b"content-length:";
    let rest = bytes.get(first_line_end..)?;
    let mut start = 0;
    let mut found = None;
    for nl in memchr::memchr_iter(b'\n', rest) {
        let line = &rest[start..nl];
        start = nl + 1;
        if line.is_empty() || line == b"\r" {
            break;
        }
        if line.len() > NAME.len()
            && line.ends_with(b"\r")
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
        {
            found = parse_u64(trim(&line[NAME.len()..line.len() - 1]));
        }
    }
    found
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
    if let Some(line_end) = find_crlf(bytes) {
        head.content_length = response_content_length(bytes, line_end + 2);
    }
    head.head_len = head_len(bytes);
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
            parse_request(b"FOO / HTTP/1.1\r\n"),
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

    proptest::proptest! {
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
