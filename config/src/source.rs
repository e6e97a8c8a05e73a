//! Where settings come from: the YAML file (read once, walked against the setting tables so
//! every key is either a known setting, a section another binary owns, or an error) and the
//! environment. Both reduce a value to `Raw`, the one shape every setting parses.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_yaml_ng::Value;

use crate::error::{ConfigError, invalid};

/// The environment variable naming the configuration file when no flag does.
pub const CONFIG_PATH_VAR: &str = "BEYLA_CONFIG_PATH";

/// A setting's value as a source gives it, before the setting parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    /// A scalar, or an environment variable's text (lists there are comma-separated).
    Text(String),
    /// A YAML sequence of scalars.
    List(Vec<String>),
    /// A YAML mapping of scalars (OTLP headers).
    Map(BTreeMap<String, String>),
}

/// The configuration file's text, kept as read: the loader hands exactly these bytes to the
/// processor it starts, so settings the loader does not know travel without being rewritten.
#[derive(Debug, Clone)]
pub struct FileText {
    pub path: PathBuf,
    pub text: String,
}

impl FileText {
    /// Reads the file `flag` names, else the one `BEYLA_CONFIG_PATH` names, else none.
    /// `-` reads standard input: how `sonde` hands the file to the processor it starts, which
    /// may not be allowed to read it.
    pub fn locate(
        flag: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<FileText>, ConfigError> {
        let Some(path) = flag
            .map(PathBuf::from)
            .or_else(|| env.get(CONFIG_PATH_VAR).map(PathBuf::from))
        else {
            return Ok(None);
        };
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(&path)
        }
        .map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Some(FileText { path, text }))
    }
}

/// What a setting table says about a dotted key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A setting.
    Setting,
    /// A section holding settings (`otel_traces_export`).
    Section,
    /// A section another binary owns; skipped whole.
    Foreign,
    /// Nothing anyone knows: an error, so typos never pass silently.
    Unknown,
}

/// The file's settings as (dotted key, value) pairs, in file order, null values left out
/// (null means "the default").
pub fn file_entries(
    file: &FileText,
    kind_of: &dyn Fn(&str) -> KeyKind,
) -> Result<Vec<(String, Raw)>, ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        path: file.path.clone(),
        message,
    };
    if file.text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let root: Value = serde_yaml_ng::from_str(&file.text).map_err(|e| syntax(e.to_string()))?;
    let mut out = Vec::new();
    match root {
        Value::Null => {}
        Value::Mapping(m) => walk(&m, "", kind_of, &mut out).map_err(syntax)?,
        _ => return Err(syntax("expected a mapping of settings".into())),
    }
    Ok(out)
}

fn walk(
    map: &serde_yaml_ng::Mapping,
    prefix: &str,
    kind_of: &dyn Fn(&str) -> KeyKind,
    out: &mut Vec<(String, Raw)>,
) -> Result<(), String> {
    for (k, v) in map {
        let Some(name) = k.as_str() else {
            return Err(format!("key {k:?} under {prefix:?} is not a string"));
        };
        let key = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        match kind_of(&key) {
            KeyKind::Foreign => {}
            KeyKind::Unknown => return Err(format!("unknown field `{key}`")),
            KeyKind::Section => match v {
                Value::Mapping(inner) => walk(inner, &key, kind_of, out)?,
                Value::Null => {}
                _ => return Err(format!("`{key}` is a section: expected a mapping")),
            },
            KeyKind::Setting => {
                if let Some(raw) = raw_value(&key, v)? {
                    out.push((key, raw));
                }
            }
        }
    }
    Ok(())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn raw_value(key: &str, v: &Value) -> Result<Option<Raw>, String> {
    let shape = || format!("`{key}`: expected a value, a list of values or a mapping of values");
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Sequence(items) => Raw::List(
            items
                .iter()
                .map(scalar)
                .collect::<Option<_>>()
                .ok_or_else(shape)?,
        ),
        Value::Mapping(m) => Raw::Map(
            m.iter()
                .map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                .collect::<Option<_>>()
                .ok_or_else(shape)?,
        ),
        other => Raw::Text(scalar(other).ok_or_else(shape)?),
    }))
}

/// Where one value came from, for the error that names it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The YAML key path, or the environment variable's name.
    pub key: &'a str,
    pub raw: &'a Raw,
    /// An environment variable holding milliseconds where the file takes a duration
    /// (`OTEL_BSP_SCHEDULE_DELAY` vs `batch_timeout: 5s`).
    pub millis: bool,
}

impl Input<'_> {
    /// The value as one string: a scalar, or a list joined by commas.
    pub fn text(&self, expected: &'static str) -> Result<String, ConfigError> {
        match self.raw {
            Raw::Text(t) => Ok(t.clone()),
            Raw::List(l) => Ok(l.join(",")),
            Raw::Map(_) => Err(invalid(self.key, "<mapping>", expected)),
        }
    }

    /// The value as a list: a YAML sequence, or comma-separated text.
    pub fn list(&self, expected: &'static str) -> Result<Vec<String>, ConfigError> {
        match self.raw {
            Raw::Text(t) => Ok(t
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()),
            Raw::List(l) => Ok(l.clone()),
            Raw::Map(_) => Err(invalid(self.key, "<mapping>", expected)),
        }
    }

    /// The `Invalid` error for this input's key.
    pub fn invalid(&self, value: impl std::fmt::Display, expected: &'static str) -> ConfigError {
        invalid(self.key, value, expected)
    }
}
