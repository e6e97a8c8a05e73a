//! The log subscriber both binaries install: `RUST_LOG` when it is set and valid, otherwise
//! the configured level, written to stderr without module paths, as text (ANSI colour only
//! when stderr is a terminal) or as one JSON object per line (`log_format: json`).

use std::{fmt::Write as _, io::IsTerminal};

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    field::Visit,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the process-wide subscriber. `default_level` is a level or filter directive
/// (`"info"`, `"debug"`) used when `RUST_LOG` is unset or unparsable. Lines are text
/// (`2026-12-01T09:30:05.123456Z  INFO message key=value`, ANSI colour only when stderr is a
/// terminal) or, with `json`, one object per line
/// (`{"timestamp":"…","level":"INFO","message":"…","key":value}`).
///
/// # Panics
/// When a global subscriber is already installed (call it once, early in `main`).
pub fn init(default_level: &str, json: bool) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.with_ansi(false).event_format(JsonLines).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// `rust_log` when it parses, else `default_level`.
fn filter(rust_log: Option<&str>, default_level: &str) -> EnvFilter {
    rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level))
}

/// Appends Unix time `ns` as RFC 3339 UTC with nanoseconds: `2026-12-01T09:30:05.123456789Z`.
pub fn write_rfc3339(out: &mut String, ns: u64) {
    let secs = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, sec) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days, for
    // non-negative day counts).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(mo <= 2);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{sec:02}.{nanos:09}Z"
    );
}

/// Appends `s` as a JSON string literal (every control character escaped).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One JSON object per event: timestamp, level, message, then the event's fields and those of
/// its spans (innermost last, so its values win for a JSON reader keeping the last key).
struct JsonLines;

/// Collects fields as `,"name":value` pairs.
struct JsonFields<'a> {
    out: &'a mut String,
    message: Option<String>,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        json_str(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
            return;
        }
        self.key(field);
        json_str(self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            json_str(self.out, &value.to_string());
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        writer.write_str(&json_line(now, event.metadata().level().as_str(), |v| {
            event.record(v)
        }))
    }
}

/// The JSON line of one event at `now_ns`; `record` feeds its fields to the visitor.
fn json_line(now_ns: u64, level: &str, record: impl FnOnce(&mut JsonFields<'_>)) -> String {
    let mut fields = String::new();
    let mut visitor = JsonFields {
        out: &mut fields,
        message: None,
    };
    record(&mut visitor);
    let message = visitor.message.take().unwrap_or_default();
    let mut line = String::with_capacity(96 + fields.len() + message.len());
    line.push_str("{\"timestamp\":\"");
    write_rfc3339(&mut line, now_ns);
    line.push_str("\",\"level\":");
    json_str(&mut line, level);
    line.push_str(",\"message\":");
    json_str(&mut line, &message);
    line.push_str(&fields);
    line.push_str("}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_when_valid() {
        assert_eq!(filter(Some("debug"), "warn").to_string(), "debug");
        assert_eq!(filter(None, "warn").to_string(), "warn");
        assert_eq!(filter(Some("=[bad"), "warn").to_string(), "warn");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |ns: u64| {
            let mut s = String::new();
            write_rfc3339(&mut s, ns);
            s
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            at(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            at(1_709_251_199_999_999_999),
            "2024-02-29T23:59:59.999999999Z"
        );
        assert_eq!(
            at(4_102_444_800_000_000_000),
            "2100-01-01T00:00:00.000000000Z"
        );
        assert_eq!(at(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    #[test]
    fn json_lines_are_escaped_json() {
        let line = json_line(0, "WARN", |v| {
            v.message = Some("bad \"peer\"\n\u{1b}[31m".into());
            v.out.push_str(",\"pid\":7");
        });
        assert_eq!(
            line,
            "{\"timestamp\":\"1970-01-01T00:00:00.000000000Z\",\"level\":\"WARN\",\"message\":\"bad \\\"peer\\\"\\n\\u001b[31m\",\"pid\":7}\n"
        );
    }

    #[test]
    fn json_events_through_a_real_subscriber() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                pid = 7u32,
                name = "a\nb",
                ok = true,
                ratio = 0.5,
                "peer refused"
            );
        });
        let out = String::from_utf8(buf.0.lock().expect("buffer").clone()).expect("utf-8");
        assert!(out.ends_with("}\n") && out.lines().count() == 1, "{out}");
        assert!(
            out.contains(
                "\"level\":\"WARN\",\"message\":\"peer refused\",\"pid\":7,\"name\":\"a\\nb\",\"ok\":true,\"ratio\":0.5}"
            ),
            "{out}"
        );
    }
}
