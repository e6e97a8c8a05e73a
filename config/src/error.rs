//! The one error type of configuration: every failure names the key (YAML path, environment
//! variable or flag), the offending value and what was expected.

use std::{fmt, path::PathBuf};

/// Errors raised while building the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML, or not a mapping of known keys.
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key has a value of the right type but an invalid content.
    #[error("invalid value {value:?} for {key}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// The `Invalid` error for `key`.
pub fn invalid(key: &str, value: impl fmt::Display, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}
