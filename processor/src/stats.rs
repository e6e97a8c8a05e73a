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

/// The counters as one JSON object, written when the log line is (`%stats.json()` in a
/// `tracing` event): nothing is formatted when the level is filtered out, and the text goes
/// straight to the log's formatter, with no `String` in between.
pub struct StatsJson<'a>(&'a Stats);

impl Stats {
    /// See [`StatsJson`].
    pub fn json(&self) -> StatsJson<'_> {
        StatsJson(self)
    }
}

impl std::fmt::Display for StatsJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// `io::Write` onto a `fmt::Formatter`. serde_json writes UTF-8 in whole pieces: it
        /// cuts strings only at the ASCII characters it escapes, never inside a character.
        struct Adapter<'a, 'b>(&'a mut std::fmt::Formatter<'b>);

        impl std::io::Write for Adapter<'_, '_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
                self.0.write_str(text).map_err(std::io::Error::other)?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        serde_json::to_writer(Adapter(f), self.0).map_err(|_| std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_display_is_the_serde_json_text() {
        let mut stats = Stats {
            events: 12,
            spans: 11,
            otlp_spans_dropped: 1,
            ..Default::default()
        };
        stats.kernel.insert("events_lost_ringbuf_full".into(), 3);
        stats.kernel.insert("caf\u{e9}".into(), 4);
        let text = stats.json().to_string();
        assert_eq!(text, serde_json::to_string(&stats).expect("serde"));
        assert!(
            text.starts_with("{\"events\":12,\"decode_errors\":0,\"spans\":11,"),
            "{text}"
        );
        assert!(
            text.ends_with(",\"kernel\":{\"caf\u{e9}\":4,\"events_lost_ringbuf_full\":3}}"),
            "{text}"
        );
    }
}
