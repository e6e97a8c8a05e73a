//! The value types and parsers both binaries share: port sets, executable globs, log levels,
//! durations and the small checks settings use. Each parser takes the key it reads so its
//! error names it.

use std::{fmt, time::Duration};

use crate::error::{ConfigError, invalid};

/// Ports and inclusive port ranges, as in `80,443,8000-8999`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// Parses a port list; `key` names the setting in errors.
    pub fn parse(key: &str, text: &str) -> Result<PortSet, ConfigError> {
        const EXPECTED: &str = "comma-separated ports or ranges in 1-65535, e.g. 8080,8000-8999";
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(invalid(key, text, EXPECTED));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo.parse().map_err(|_| invalid(key, text, EXPECTED))?;
            let hi: u16 = hi.parse().map_err(|_| invalid(key, text, EXPECTED))?;
            if lo == 0 || hi < lo {
                return Err(invalid(key, text, EXPECTED));
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Every port of every set; None when there is no set.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a PortSet>) -> Option<PortSet> {
        let mut ranges = Vec::new();
        let mut any = false;
        for s in sets {
            any = true;
            ranges.extend_from_slice(&s.0);
        }
        any.then_some(PortSet(ranges))
    }

    /// The inclusive ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A glob on the executable path, as `BEYLA_AUTO_TARGET_EXE`.
#[derive(Debug, Clone)]
pub struct ExeGlob {
    pub pattern: String,
    matcher: globset::GlobMatcher,
}

impl ExeGlob {
    pub fn parse(key: &str, pattern: &str) -> Result<ExeGlob, ConfigError> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|_| invalid(key, pattern, "a glob on the executable path, e.g. */nginx"))?;
        Ok(ExeGlob {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(key: &str, v: &str) -> Result<LogLevel, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(invalid(key, v, "one of error, warn, info, debug, trace")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (ANSI colour only when stderr is a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn parse(key: &str, v: &str) -> Result<LogFormat, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(invalid(key, v, "text or json")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
    pub fn is_json(self) -> bool {
        self == LogFormat::Json
    }
}

/// Parses a duration such as `500ms`, `5s`, `1m` or `1h`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    const EXPECTED: &str = "a positive duration such as 500ms, 5s, 1m";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| invalid(key, text, EXPECTED))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(invalid(key, text, EXPECTED)),
    };
    if d.is_zero() {
        return Err(invalid(key, text, EXPECTED));
    }
    Ok(d)
}

/// Parses a number of milliseconds (the `OTEL_*` variables' unit).
pub fn parse_millis(key: &str, text: &str) -> Result<Duration, ConfigError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
        _ => Err(invalid(key, text, "a positive number of milliseconds")),
    }
}

/// Shows a duration the way `parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A non-blank string.
pub fn non_empty(key: &str, v: String) -> Result<String, ConfigError> {
    if v.trim().is_empty() {
        Err(invalid(key, v, "a non-empty string"))
    } else {
        Ok(v)
    }
}

/// `true`, `false`, `1` or `0`.
pub fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(key, v, "true, false, 1 or 0")),
    }
}

/// An unsigned number within `range`.
pub fn parse_in_range<T>(
    key: &str,
    v: &str,
    range: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd,
{
    match v.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(invalid(key, v, expected)),
    }
}

/// A duration from a file value (`5s`) or, for an `OTEL_*` variable, milliseconds.
pub fn parse_duration_or_millis(key: &str, v: &str, millis: bool) -> Result<Duration, ConfigError> {
    if millis {
        parse_millis(key, v)
    } else {
        parse_duration(key, v)
    }
}
