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
    /// A YAML sequence holding mappings (discovery selectors), for the setting to read.
    Yaml(Value),
    /// A key Beyla defines that Sonde accepts without applying (`UNIMPLEMENTED_KEYS`): no
    /// setting reads it; the loader warns about it once.
    Unimplemented,
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

/// Environment variables that carry secrets (OTLP authentication headers). `sonde` never
/// passes them to the processor it starts through the environment, where any process of the
/// processor's uid could read them (`/proc/<pid>/environ`): they travel on its standard input,
/// ahead of the configuration file's text (`with_secret_env`, `FileText::take_secret_env`).
pub const SECRET_ENV_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
];

/// True for a variable of `SECRET_ENV_VARS`.
pub fn is_secret_var(name: &str) -> bool {
    SECRET_ENV_VARS.contains(&name)
}

/// First line of the block of secret variables on the processor's standard input.
const SECRET_BLOCK_START: &str = "#sonde-secret-env v1\n";
/// Last line of that block; the configuration file's text follows.
const SECRET_BLOCK_END: &str = "#end sonde-secret-env\n";

/// `file_text` preceded by the secret variables of `env` (`SECRET_ENV_VARS`), one
/// `NAME=value` line each (`\\`, `\n`, `\r` escaped), between two marker lines; `file_text`
/// alone when none is set. What `sonde` writes to the processor's standard input.
pub fn with_secret_env(env: &BTreeMap<String, String>, file_text: &str) -> String {
    let secrets: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| is_secret_var(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prepend_secret_env(&secrets, file_text)
}

fn prepend_secret_env(secrets: &[(String, String)], file_text: &str) -> String {
    if secrets.is_empty() {
        return file_text.to_string();
    }
    let mut out = String::from(SECRET_BLOCK_START);
    for (k, v) in secrets {
        let v = v
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(SECRET_BLOCK_END);
    out.push_str(file_text);
    out
}

fn unescape_secret(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

impl FileText {
    /// Takes the block `with_secret_env` wrote off the front of standard input's text and
    /// returns its variables (none for a file, or text without the block). Only the variables
    /// of `SECRET_ENV_VARS` are accepted.
    pub fn take_secret_env(&mut self) -> Result<Vec<(String, String)>, ConfigError> {
        let malformed = |what: &str| ConfigError::Read {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("secret variables block on standard input: {what}"),
            ),
        };
        if self.path.as_os_str() != "-" {
            return Ok(Vec::new());
        }
        let Some(rest) = self.text.strip_prefix(SECRET_BLOCK_START) else {
            return Ok(Vec::new());
        };
        let Some(end) = rest.find(SECRET_BLOCK_END) else {
            return Err(malformed("no end marker"));
        };
        let mut vars = Vec::new();
        for line in rest[..end].lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| malformed("a line without ="))?;
            if !is_secret_var(k) {
                return Err(malformed("a variable that is not a secret one"));
            }
            let v = unescape_secret(v).ok_or_else(|| malformed("a bad escape"))?;
            vars.push((k.to_string(), v));
        }
        self.text = rest[end + SECRET_BLOCK_END.len()..].to_string();
        Ok(vars)
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
    /// A key Beyla defines that Sonde accepts without applying yet (`UNIMPLEMENTED_KEYS`).
    Unimplemented,
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
            KeyKind::Foreign => {
                // Skipped whole, except for the keys Beyla defines that nobody applies: named
                // in the loader's warning too.
                let mut found = Vec::new();
                crate::discovery::unimplemented_in(v, &key, &mut found);
                out.extend(found.into_iter().map(|k| (k, Raw::Unimplemented)));
            }
            KeyKind::Unimplemented => out.push((key, Raw::Unimplemented)),
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
        Value::Sequence(items) if items.iter().any(|i| i.is_mapping()) => Raw::Yaml(v.clone()),
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
            Raw::Yaml(_) | Raw::Unimplemented => {
                Err(invalid(self.key, "<list of mappings>", expected))
            }
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
            Raw::Yaml(_) | Raw::Unimplemented => {
                Err(invalid(self.key, "<list of mappings>", expected))
            }
        }
    }

    /// The `Invalid` error for this input's key.
    pub fn invalid(&self, value: impl std::fmt::Display, expected: &'static str) -> ConfigError {
        invalid(self.key, value, expected)
    }
}

#[cfg(test)]
mod secret_env_tests {
    use super::*;

    #[test]
    fn secret_variables_round_trip_ahead_of_the_file_and_nothing_else_is_accepted() {
        let secrets = vec![
            (
                "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
                "a=b\\c\nd\r".to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS".to_string(),
                "x=%20y".to_string(),
            ),
        ];
        let file = "#sonde-secret-env v1\nopen_port: 80\n";
        let mut t = FileText {
            path: "-".into(),
            text: prepend_secret_env(&secrets, file),
        };
        assert_eq!(t.take_secret_env().expect("block"), secrets);
        assert_eq!(t.text, file);
        // Without secrets the text is the file alone; a named file never carries a block.
        assert_eq!(prepend_secret_env(&[], file), file);
        let mut named = FileText {
            path: "/etc/sonde.yaml".into(),
            text: prepend_secret_env(&secrets, file),
        };
        assert!(named.take_secret_env().expect("file").is_empty());
        let mut other = FileText {
            path: "-".into(),
            text: prepend_secret_env(&[("BEYLA_X".into(), "1".into())], file),
        };
        assert!(other.take_secret_env().is_err());
    }
}
