//! `trace_printer`: one line per span on standard output, as text or JSON.

use std::io::Write;

use sonde_config::TracePrinter;

use crate::span::{Span, SpanKind};

/// Formats one span as a text line (no trailing newline).
pub fn text_line(s: &Span) -> String {
    let kind = match s.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    let query = s
        .query
        .as_ref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut line = format!(
        "{start} ({dur:.3}ms) {kind} {status} {method} {path}{query} [{client}:{cport} -> {server}:{sport}] service={svc} pid={pid} trace_id={tid} span_id={sid}",
        start = s.start_unix_nano,
        dur = s.duration_ns as f64 / 1e6,
        status = s.status,
        method = s.method,
        path = s.path,
        client = s.client_address,
        cport = s.client_port,
        server = s.server_address,
        sport = s.server_port,
        svc = s.service_name,
        pid = s.pid,
        tid = s.trace_id,
        sid = s.span_id,
    );
    if let Some(m) = s.malformed {
        line.push_str(&format!(" malformed=\"{m}\""));
    }
    if s.no_response {
        line.push_str(" no_response");
    }
    line
}

/// Writes spans in the configured format.
pub struct Printer<W: Write> {
    format: TracePrinter,
    out: W,
}

impl<W: Write> Printer<W> {
    pub fn new(format: TracePrinter, out: W) -> Self {
        Printer { format, out }
    }

    pub fn print(&mut self, span: &Span) -> std::io::Result<()> {
        match self.format {
            TracePrinter::Disabled => Ok(()),
            TracePrinter::Text => writeln!(self.out, "{}", text_line(span)),
            TracePrinter::Json => {
                serde_json::to_writer(&mut self.out, span)?;
                self.out.write_all(b"\n")
            }
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
