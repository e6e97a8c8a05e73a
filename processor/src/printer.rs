//! `trace_printer`: one line per span on standard output, as text or JSON.

use std::io::Write;

use sonde_plumbing::logging::write_rfc3339;

use crate::config::TracePrinter;

use crate::span::{Address, ExportKind, Span, write_hex};

/// Formats one span as a text line (no trailing newline). Every string taken from traffic or
/// from the process (method, path, query, `Host`, service name) is escaped (`escape_text`), so a
/// request cannot start a line, move the cursor or change a terminal's state.
pub fn text_line(s: &Span) -> String {
    let mut line = String::with_capacity(256);
    text_line_into(s, &mut line);
    line
}

/// Appends `s`'s text line (no trailing newline) to `line`, which the printer reuses from span
/// to span: no allocation once it has grown to a line's size.
pub fn text_line_into(s: &Span, line: &mut String) {
    use std::fmt::Write as _;
    let kind = match s.export_kind() {
        ExportKind::Server => "SERVER",
        ExportKind::Client => "CLIENT",
        ExportKind::Producer => "PRODUCER",
        ExportKind::Consumer => "CONSUMER",
    };
    write_rfc3339(line, s.start_unix_nano);
    let _ = write!(
        line,
        " ({dur:.3}ms) {kind} {status} ",
        dur = s.duration_ns as f64 / 1e6,
        status = s.status,
    );
    escape_text(line, s.method_original.as_deref().unwrap_or(&s.method));
    line.push(' ');
    escape_text(line, &s.path);
    if let Some(q) = &s.query {
        line.push('?');
        escape_text(line, q);
    }
    let _ = write!(
        line,
        " [{client}:{cport} -> {server}:{sport}]",
        client = s.client_address,
        cport = s.client_port,
        server = s.server_address,
        sport = s.server_port,
    );
    if let Some(h) = &s.host {
        line.push_str(" host=");
        escape_text(line, h);
    }
    if let Some(db) = &s.db {
        let _ = write!(line, " {}", db.system);
        if let Some(q) = &db.query_text {
            line.push_str(" query=\"");
            escape_text(line, q);
            line.push('"');
        }
        if let Some(code) = &db.error_code {
            line.push_str(" db_status=");
            escape_text(line, code);
        }
    }
    if let Some(m) = &s.messaging {
        let _ = write!(line, " {} {}", m.system, m.operation.name());
        if let Some(d) = &m.destination {
            line.push_str(" topic=");
            escape_text(line, d);
        }
        if let Some(code) = m.error_code {
            let _ = write!(line, " kafka_error={code}");
        }
    }
    if let Some(rpc) = &s.rpc {
        let _ = write!(line, " {}", rpc.system);
        if let Some(code) = rpc.status_code {
            let _ = write!(line, " rpc_status={code}");
        }
    }
    if s.protocol_version == "2" {
        line.push_str(" h2");
    }
    line.push_str(" service=");
    escape_text(line, &s.service_name);
    let _ = write!(
        line,
        " pid={pid} trace_id={tid} span_id={sid}",
        pid = s.pid,
        tid = s.trace_id,
        sid = s.span_id,
    );
    if let Some(m) = s.malformed {
        line.push_str(" malformed=\"");
        escape_text(line, m);
        line.push('"');
    }
    if s.no_response {
        line.push_str(" no_response");
    }
}

/// True for characters a terminal acts on: C0 controls (CR, LF, ESC, …), DEL and the C1
/// controls (U+0080 … U+009F, e.g. U+009B, a one-character CSI for some terminals).
fn is_control(c: char) -> bool {
    c.is_control()
}

/// Appends `s` to `out` with `\` doubled and every control character escaped: `\r`, `\n`,
/// `\t`, else `\xNN` (C0, DEL) or `\u{NN}` (C1). Unambiguous: the original can be read
/// back from the escaped form.
pub fn escape_text(out: &mut String, s: &str) {
    // Almost every string needs no escaping: one scan, then one copy.
    if !s.chars().any(|c| c == '\\' || is_control(c)) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_control(c) => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\x{:02x}", c as u32));
            }
            c if is_control(c) => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// Appends `s` as a JSON string literal, escaping only what JSON requires.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escaping: one vectorisable scan, then one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn json_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    write_hex(out, bytes);
    out.push(b'"');
}

fn json_address(out: &mut Vec<u8>, a: &Address) {
    out.push(b'"');
    match a.0 {
        Some(std::net::IpAddr::V4(v4)) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                json_num(out, *octet);
            }
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => {}
    }
    out.push(b'"');
}

fn json_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// One span as a JSON object and a newline. Hand-written because it runs once per request at
/// full load: it escapes only what JSON requires and allocates nothing per field. The field
/// set and order match `Span`'s serde form (tested byte for byte against it).
pub fn json_line(s: &Span, out: &mut Vec<u8>) {
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.push(b'{');
    key(out, "trace_id");
    json_hex(out, &s.trace_id.0);
    key(out, "span_id");
    json_hex(out, &s.span_id.0);
    if let Some(p) = &s.parent_span_id {
        key(out, "parent_span_id");
        json_hex(out, &p.0);
    }
    key(out, "kind");
    json_str(
        out,
        match s.export_kind() {
            ExportKind::Server => "server",
            ExportKind::Client => "client",
            ExportKind::Producer => "producer",
            ExportKind::Consumer => "consumer",
        },
    );
    key(out, "name");
    json_str(out, &s.name);
    key(out, "method");
    json_str(out, &s.method);
    key(out, "path");
    json_str(out, &s.path);
    if let Some(q) = &s.query {
        key(out, "query");
        json_str(out, q);
    }
    if let Some(r) = &s.route {
        key(out, "route");
        json_str(out, r);
    }
    key(out, "status");
    json_num(out, s.status);
    if let Some(h) = &s.host {
        key(out, "host");
        json_str(out, h);
    }
    key(out, "protocol_version");
    json_str(out, s.protocol_version);
    key(out, "scheme");
    json_str(out, s.scheme);
    if let Some(ua) = &s.user_agent {
        key(out, "user_agent");
        json_str(out, ua);
    }
    if let Some(m) = &s.method_original {
        key(out, "method_original");
        json_str(out, m);
    }
    if let Some(db) = &s.db {
        key(out, "db_system");
        json_str(out, db.system);
        for (k, v) in [
            ("db_operation", &db.operation),
            ("db_collection", &db.collection),
            ("db_namespace", &db.namespace),
            ("db_query_text", &db.query_text),
            ("db_status", &db.error_code),
        ] {
            if let Some(v) = v {
                key(out, k);
                json_str(out, v);
            }
        }
    }
    if let Some(m) = &s.messaging {
        key(out, "messaging_system");
        json_str(out, m.system);
        key(out, "messaging_operation");
        json_str(out, m.operation.name());
        for (k, v) in [
            ("messaging_destination", &m.destination),
            ("messaging_client_id", &m.client_id),
        ] {
            if let Some(v) = v {
                key(out, k);
                json_str(out, v);
            }
        }
        if let Some(code) = m.error_code {
            key(out, "messaging_error_code");
            json_num(out, code);
        }
    }
    if let Some(rpc) = &s.rpc {
        key(out, "rpc_system");
        json_str(out, rpc.system);
        key(out, "rpc_method");
        json_str(out, &rpc.method);
        if let Some(code) = rpc.status_code {
            key(out, "rpc_status");
            json_num(out, code);
        }
    }
    key(out, "server_address");
    json_address(out, &s.server_address);
    key(out, "server_port");
    json_num(out, s.server_port);
    key(out, "client_address");
    json_address(out, &s.client_address);
    key(out, "client_port");
    json_num(out, s.client_port);
    if let Some(n) = s.request_body_size {
        key(out, "request_body_size");
        json_num(out, n);
    }
    if let Some(n) = s.response_body_size {
        key(out, "response_body_size");
        json_num(out, n);
    }
    key(out, "request_bytes");
    json_num(out, s.request_bytes);
    key(out, "response_bytes");
    json_num(out, s.response_bytes);
    key(out, "start_unix_nano");
    json_num(out, s.start_unix_nano);
    key(out, "end_unix_nano");
    json_num(out, s.end_unix_nano);
    key(out, "duration_ns");
    json_num(out, s.duration_ns);
    key(out, "service_name");
    json_str(out, &s.service_name);
    if let Some(ns) = &s.service_namespace {
        key(out, "service_namespace");
        json_str(out, ns);
    }
    key(out, "pid");
    json_num(out, s.pid);
    key(out, "tid");
    json_num(out, s.tid);
    if let Some(m) = s.malformed {
        key(out, "malformed");
        json_str(out, m);
    }
    key(out, "no_response");
    out.extend_from_slice(if s.no_response { b"true" } else { b"false" });
    out.extend_from_slice(b"}\n");
}

/// Lines are written out once this many bytes are pending (and at every `flush`, once per
/// pass): a few `write` calls per pass at full load instead of one per span.
const WRITE_AT: usize = 64 * 1024;

/// Writes spans in the configured format. Lines are formatted straight into one reused buffer
/// (no allocation per span once it has grown) and handed to `out` in large writes; `flush`,
/// which the pipeline calls at the end of every pass (at least every poll interval), writes
/// out whatever is pending, so a line never waits longer than a pass and is always written
/// whole.
pub struct Printer<W: Write> {
    format: TracePrinter,
    out: W,
    /// Complete lines not yet handed to `out`.
    pending: Vec<u8>,
    /// The text line being formatted (text format only; reused).
    text: String,
}

impl<W: Write> Printer<W> {
    pub fn new(format: TracePrinter, out: W) -> Self {
        Printer {
            format,
            out,
            pending: Vec::new(),
            text: String::new(),
        }
    }

    /// Formats one span into the pending lines; writes them out when enough are pending.
    pub fn print(&mut self, span: &Span) -> std::io::Result<()> {
        match self.format {
            TracePrinter::Disabled => return Ok(()),
            TracePrinter::Text => {
                self.text.clear();
                text_line_into(span, &mut self.text);
                self.pending.extend_from_slice(self.text.as_bytes());
                self.pending.push(b'\n');
            }
            TracePrinter::Json => json_line(span, &mut self.pending),
        }
        if self.pending.len() >= WRITE_AT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Hands the pending lines to `out`. They are dropped even when the write fails (stdout
    /// closed): the error is counted by the caller, and the buffer never grows without bound.
    fn write_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.out.write_all(&self.pending);
        self.pending.clear();
        result
    }

    /// Writes out every pending line and flushes `out`.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }
}

impl<W: Write> Drop for Printer<W> {
    /// Lines still pending are written out (as a `BufWriter` would on drop).
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanId, SpanKind, TraceId};

    fn sample(path: &str, optional: bool) -> Span {
        Span {
            trace_id: TraceId([
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c,
            ]),
            span_id: SpanId([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
            parent_span_id: optional.then_some(SpanId([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 2, 0xb7])),
            kind: SpanKind::Client,
            name: "GET".into(),
            method: "GET".into(),
            path: path.into(),
            query: optional.then(|| "a=1&b=\"2\"".into()),
            route: optional.then(|| "/we/{id}".into()),
            status: 404,
            host: optional.then(|| "h:80".into()),
            protocol_version: if optional { "2" } else { "1.1" },
            scheme: "http",
            user_agent: optional.then(|| "curl/8\n".into()),
            method_original: optional.then(|| "PURGE".into()),
            db: None,
            messaging: None,
            rpc: optional.then(|| crate::span::Rpc {
                system: "grpc",
                method: "pkg.Svc/Do".into(),
                status_code: Some(5),
            }),
            server_address: Address(Some("127.0.0.1".parse().expect("v4"))),
            server_port: 80,
            client_address: Address(optional.then(|| "::1".parse().expect("v6"))),
            client_port: 40000,
            request_body_size: optional.then_some(3),
            response_body_size: optional.then_some(u64::MAX),
            request_bytes: 100,
            response_bytes: 200,
            start_unix_nano: 1_795_000_000_000_000_000,
            end_unix_nano: 1_795_000_000_000_000_001,
            duration_ns: 1,
            service_name: "svc\u{e9}".into(),
            service_namespace: optional.then(|| "ns".into()),
            pid: 1,
            tid: 2,
            malformed: optional.then_some("request line exceeds the captured bytes"),
            no_response: optional,
            parent_sampled: optional.then_some(true),
            trace_state: None,
        }
    }

    #[test]
    fn text_line_shows_the_original_method_rpc_status_and_h2() {
        let line = text_line(&sample("/pkg.Svc/Do", true));
        assert!(line.contains(" CLIENT 404 PURGE /pkg.Svc/Do?"), "{line}");
        assert!(
            line.contains(" host=h:80 grpc rpc_status=5 h2 service="),
            "{line}"
        );
    }

    #[test]
    fn text_line_shows_utc_time_and_escapes_controls() {
        let mut span = sample("/a\r\nX-Injected: 1\x1b[31m\u{9b}2J\\", true);
        span.query = Some("q=\x7f\0".into());
        span.service_name = "svc\x1b]0;title\x07".into();
        span.method = "GET\t".into();
        span.method_original = None;
        span.rpc = None;
        span.protocol_version = "1.1";
        span.host = Some("evil\x1b[2J\rX".into());
        let line = text_line(&span);
        assert!(
            line.starts_with("2026-11-18T11:06:40.000000000Z (0.000ms) CLIENT 404 GET\\t "),
            "{line}"
        );
        assert!(
            line.contains(" /a\\r\\nX-Injected: 1\\x1b[31m\\u{9b}2J\\\\?q=\\x7f\\x00 "),
            "{line}"
        );
        assert!(
            line.contains("] host=evil\\x1b[2J\\rX service=svc\\x1b]0;title\\x07 "),
            "{line}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let plain = text_line(&sample("/plain", false));
        assert!(
            plain.contains(" GET /plain [:40000 -> 127.0.0.1:80] service=svc\u{e9} pid=1 "),
            "{plain}"
        );
    }

    #[test]
    fn json_escapes_every_c0_control() {
        let mut span = sample("/a\r\n\x1b[2J", false);
        span.service_name = "s\x00\x1f".into();
        let mut line = Vec::new();
        json_line(&span, &mut line);
        let body = &line[..line.len() - 1];
        assert!(
            !body.iter().any(|&b| b < 0x20),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        let text = String::from_utf8(line).expect("utf-8");
        assert!(text.contains("\"path\":\"/a\\r\\n\\u001b[2J\""), "{text}");
    }

    #[test]
    fn json_line_matches_the_serde_form() {
        for (path, optional) in [("/plain", false), ("/we\"ird\\\n\u{1}\u{7f}/\u{e9}", true)] {
            let span = sample(path, optional);
            let mut line = Vec::new();
            json_line(&span, &mut line);
            assert_eq!(line.last(), Some(&b'\n'));
            // Byte for byte what serde_json writes for the same span.
            let serde_line = serde_json::to_string(&span).expect("serde") + "\n";
            assert_eq!(String::from_utf8(line).expect("utf-8"), serde_line);
            assert!(serde_line.contains("\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\""));
        }
    }

    /// A writer that records each `write_all` it is given as a whole.
    #[derive(Default)]
    struct Writes {
        calls: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[test]
    fn printer_output_is_the_lines_byte_for_byte() {
        let spans = [
            sample("/plain", false),
            sample("/we\"ird\\\n\u{1}\u{7f}/\u{e9}", true),
        ];
        // The text line of the plain sample, as the printer wrote it before lines were
        // formatted into a reused buffer (one `String` per span, then `writeln!`).
        let golden = "2026-11-18T11:06:40.000000000Z (0.000ms) CLIENT 404 GET /plain \
            [:40000 -> 127.0.0.1:80] service=svc\u{e9} pid=1 \
            trace_id=0af7651916cd43dd8448eb211c80319c span_id=b7ad6b7169203331\n";
        for format in [TracePrinter::Text, TracePrinter::Json] {
            let mut printer = Printer::new(format, Writes::default());
            let mut expected = Vec::new();
            for s in &spans {
                printer.print(s).expect("print");
                match format {
                    TracePrinter::Json => {
                        expected
                            .extend_from_slice(serde_json::to_string(s).expect("serde").as_bytes());
                        expected.push(b'\n');
                    }
                    _ => {
                        expected.extend_from_slice(text_line(s).as_bytes());
                        expected.push(b'\n');
                    }
                }
            }
            // Nothing is written before the pass ends (two short lines), then all at once.
            assert!(printer.out.calls.is_empty());
            printer.flush().expect("flush");
            assert_eq!(printer.out.calls.len(), 1);
            assert_eq!(printer.out.flushes, 1);
            assert_eq!(printer.out.calls[0], expected);
            if format == TracePrinter::Text {
                let first = expected.iter().position(|&b| b == b'\n').expect("line") + 1;
                assert_eq!(String::from_utf8_lossy(&expected[..first]), golden);
            }
        }
    }

    #[test]
    fn printer_writes_whole_lines_once_64_kib_are_pending() {
        let span = sample("/plain", false);
        let mut line = Vec::new();
        json_line(&span, &mut line);
        let mut printer = Printer::new(TracePrinter::Json, Writes::default());
        let per_write = WRITE_AT.div_ceil(line.len());
        for _ in 0..per_write * 2 + 1 {
            printer.print(&span).expect("print");
        }
        // Two writes of `per_write` whole lines each; the last line waits for the flush.
        assert_eq!(printer.out.calls.len(), 2);
        for call in &printer.out.calls {
            assert_eq!(call.len(), per_write * line.len());
            assert!(call.ends_with(b"}\n"));
        }
        assert_eq!(printer.out.flushes, 0);
        printer.flush().expect("flush");
        assert_eq!(printer.out.calls.len(), 3);
        assert_eq!(printer.out.calls[2], line);
    }

    /// Standard output closed: the write fails.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_its_lines_dropped() {
        let mut printer = Printer::new(TracePrinter::Text, Closed);
        printer.print(&sample("/plain", false)).expect("buffered");
        assert!(printer.flush().is_err());
        assert!(printer.pending.is_empty());
        // Nothing pending any more: the next flush has nothing to fail on.
        assert!(printer.flush().is_ok());
    }
}
