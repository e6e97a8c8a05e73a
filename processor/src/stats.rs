//! The processor's own counters: what it received, built, dropped and why. Logged
//! periodically and at exit, next to the kernel counters the loader forwards.

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Ring buffer records read.
    pub events: u64,
    /// Records that failed to decode (wrong size or kind, bad lengths).
    pub decode_errors: u64,
    /// Spans built.
    pub spans: u64,
    /// Spans whose request or response did not parse as HTTP/1.x (still emitted, marked).
    pub malformed: u64,
    /// Exchanges whose request bytes were not HTTP at all (no span).
    pub not_http: u64,
    /// Exchanges with no response (connection closed first).
    pub no_response: u64,
    /// Events from a pid the loader never announced (service name from /proc instead).
    pub unknown_process: u64,
    /// Ring buffer records with an inconsistent header.
    pub ring_corrupt: u64,
    /// Response-byte or close records for an exchange no longer held (it had already been
    /// completed after a pause longer than the hold time).
    pub late_updates: u64,
    /// Exchanges completed before their response was known to be over, because the table of
    /// held exchanges was full.
    pub completed_early: u64,
    /// Spans not emitted because their route is ignored (`routes.ignored_patterns` with
    /// `ignore_mode` all or traces).
    pub ignored_routes: u64,
    /// Spans the sampler did not keep (neither printed nor exported; still counted in the RED
    /// metrics).
    pub unsampled: u64,
    /// Span output failures (stdout closed).
    pub print_errors: u64,
    /// Requests whose `traceparent` header was not a valid version-00 trace context (HTTP/1,
    /// HTTP/2, gRPC): ignored, the span starts a trace of its own.
    pub traceparent_invalid: u64,
    /// The applications' own OTLP export calls (their SDKs'), never made spans.
    pub own_telemetry_exports: u64,
    /// Spans an OTLP collector accepted.
    pub otlp_spans_exported: u64,
    /// Spans dropped on the way to the collector: queue full or export failed.
    pub otlp_spans_dropped: u64,
    /// Multiplexed connections (HTTP/2) and their parser's counters.
    pub streams: crate::protocols::streams::StreamStats,
    /// HTTP/2 streams with no span: their request headers could not be decoded.
    pub h2_headers_unknown: u64,
    /// Database spans missing a field the connection's past would have given (a statement
    /// prepared, or a database selected, before Sonde started): emitted with what is known.
    pub db_partial: u64,
    /// Parent and child inside one process: client spans linked to their server span, and
    /// those left unlinked, by reason.
    pub linking: crate::pipeline::LinkStats,
    /// Last kernel counters reported by the loader.
    pub kernel: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Everything counted as lost so far: undecodable or corrupt records, spans that could not
    /// be printed or exported, exchanges completed early or updated too late, and the kernel's
    /// own loss counters.
    pub fn lost(&self) -> u64 {
        let kernel: u64 = self
            .kernel
            .iter()
            .filter(|(name, _)| sonde_schema::counters::is_loss_name(name))
            .map(|(_, v)| *v)
            .sum();
        self.decode_errors
            + self.ring_corrupt
            + self.print_errors
            + self.otlp_spans_dropped
            + self.completed_early
            + self.late_updates
            + kernel
    }
}
