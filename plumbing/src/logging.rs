//! The log subscriber both binaries install: `RUST_LOG` when it is set and valid, otherwise
//! the configured level, written to stderr without module paths.

use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber. `default_level` is a level or filter directive
/// (`"info"`, `"debug"`) used when `RUST_LOG` is unset or unparsable.
///
/// # Panics
/// When a global subscriber is already installed (call it once, early in `main`).
pub fn init(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(filter(
            std::env::var("RUST_LOG").ok().as_deref(),
            default_level,
        ))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// `rust_log` when it parses, else `default_level`.
fn filter(rust_log: Option<&str>, default_level: &str) -> EnvFilter {
    rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level))
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
}
