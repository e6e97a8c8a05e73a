//! One definition per setting, in the spirit of ripgrep's flags: its YAML key, environment
//! variables, flag, default, documentation, how it parses (validation included) and how it
//! prints all live in one `Setting` entry. A `Table` of them applies defaults, the file and
//! the environment in that order, prints the effective values as YAML (through serde, so any
//! value survives the trip back) and renders the configuration reference's rows.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use crate::{
    error::ConfigError,
    source::{Input, KeyKind, Raw},
};

/// An environment variable feeding a setting.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    /// Holds milliseconds where the file takes a duration (the `OTEL_*` variables' unit).
    pub millis: bool,
}

/// A variable read as the file's value is.
pub const fn var(name: &'static str) -> EnvVar {
    EnvVar {
        name,
        millis: false,
    }
}

/// A variable holding milliseconds.
pub const fn var_millis(name: &'static str) -> EnvVar {
    EnvVar { name, millis: true }
}

/// One setting of a configuration `D`.
pub struct Setting<D: 'static> {
    /// The YAML key path, dotted.
    pub key: &'static str,
    /// Environment variables, lowest precedence first (a later one that is set wins).
    pub env: &'static [EnvVar],
    /// The command-line flag that overrides it, for the reference (empty when none).
    pub flag: &'static str,
    /// The value applied before any source, parsed like any other; `None` leaves it unset.
    pub default: Option<&'static str>,
    /// What an unset setting means, for the reference, when `default` is `None`.
    pub unset: &'static str,
    pub doc: &'static str,
    /// Printed with its values hidden (credentials).
    pub secret: bool,
    /// Parses and validates one value into the configuration.
    pub apply: fn(&mut D, Input<'_>) -> Result<(), ConfigError>,
    /// The effective value as YAML; `None` when unset.
    pub show: fn(&D) -> Option<Value>,
}

/// The settings of one configuration type, in groups (a group can come from a macro that
/// defines the same settings for two signals).
pub struct Table<D: 'static>(pub &'static [&'static [Setting<D>]]);

/// The prefix of the `OTEL_EBPF_*` aliases of the `BEYLA_*` variables.
pub const OTEL_EBPF_PREFIX: &str = "OTEL_EBPF_";

/// Shown in place of secret values.
pub const HIDDEN: &str = "<hidden>";

impl<D> Table<D> {
    /// Every setting, in order.
    pub fn settings(&self) -> impl Iterator<Item = &'static Setting<D>> + '_ {
        self.0.iter().flat_map(|group| group.iter())
    }

    /// Whether `key` is one of these settings or a section holding some.
    pub fn kind_of(&self, key: &str) -> KeyKind {
        if self.settings().any(|s| s.key == key) {
            KeyKind::Setting
        } else if self
            .settings()
            .any(|s| s.key.strip_prefix(key).is_some_and(|r| r.starts_with('.')))
        {
            KeyKind::Section
        } else {
            KeyKind::Unknown
        }
    }

    /// The top-level keys of these settings (`routes`, `trace_printer`, …).
    pub fn top_level_keys(&self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = Vec::new();
        for s in self.settings() {
            let top = crate::top_level(s.key);
            if !keys.contains(&top) {
                keys.push(top);
            }
        }
        keys
    }

    /// Applies every setting's embedded default.
    pub fn apply_defaults(&self, target: &mut D) -> Result<(), ConfigError> {
        for s in self.settings() {
            if let Some(d) = s.default {
                let raw = Raw::Text(d.to_string());
                (s.apply)(
                    target,
                    Input {
                        key: s.key,
                        raw: &raw,
                        millis: false,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Applies the file's entries that are settings of this table, in file order.
    pub fn apply_file(&self, target: &mut D, entries: &[(String, Raw)]) -> Result<(), ConfigError> {
        for (key, raw) in entries {
            if let Some(s) = self.settings().find(|s| s.key == key) {
                (s.apply)(
                    target,
                    Input {
                        key,
                        raw,
                        millis: false,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Applies the environment over what the file set. Empty variables count as unset.
    pub fn apply_env(
        &self,
        target: &mut D,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        for s in self.settings() {
            for var in s.env {
                // Every `BEYLA_X` is also read as `OTEL_EBPF_X`, which wins (the reference
                // system copies `BEYLA_*` to `OTEL_EBPF_*` unless that is set).
                let alias = var
                    .name
                    .strip_prefix("BEYLA_")
                    .map(|rest| format!("{OTEL_EBPF_PREFIX}{rest}"));
                for name in std::iter::once(var.name).chain(alias.as_deref()) {
                    if let Some(v) = env.get(name).filter(|v| !v.is_empty()) {
                        let raw = Raw::Text(v.clone());
                        (s.apply)(
                            target,
                            Input {
                                key: name,
                                raw: &raw,
                                millis: var.millis,
                            },
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The effective values as a nested YAML mapping, secret values hidden unless `secrets`.
    pub fn show(&self, config: &D, secrets: bool) -> Mapping {
        let mut root = Mapping::new();
        for s in self.settings() {
            let Some(mut value) = (s.show)(config) else {
                continue;
            };
            if s.secret && !secrets {
                hide(&mut value);
            }
            insert(&mut root, s.key, value);
        }
        root
    }

    /// The configuration reference's table rows for these settings (Markdown).
    pub fn reference_rows(&self) -> String {
        let mut out = String::new();
        for s in self.settings() {
            let env: Vec<String> = s
                .env
                .iter()
                .map(|v| {
                    if v.millis {
                        format!("`{}` (ms)", v.name)
                    } else {
                        format!("`{}`", v.name)
                    }
                })
                .collect();
            let flag = if s.flag.is_empty() {
                String::new()
            } else {
                format!("`{}`", s.flag)
            };
            let default = match s.default {
                Some(d) => format!("`{d}`"),
                None => s.unset.to_string(),
            };
            out += &format!(
                "| `{}` | {} | {} | {} | {} |\n",
                s.key,
                env.join(", "),
                flag,
                default,
                s.doc
            );
        }
        out
    }
}

fn hide(value: &mut Value) {
    match value {
        Value::Mapping(m) => {
            for (_, v) in m.iter_mut() {
                *v = Value::String(HIDDEN.into());
            }
        }
        other => *other = Value::String(HIDDEN.into()),
    }
}

/// Inserts `value` at the dotted `key` path, creating sections on the way.
fn insert(root: &mut Mapping, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            root.insert(Value::String(key.into()), value);
        }
        Some((section, rest)) => {
            let entry = root
                .entry(Value::String(section.into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Value::Mapping(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Renders a mapping as YAML text (serde quotes whatever needs quoting).
pub fn to_yaml(mapping: &Mapping) -> String {
    if mapping.is_empty() {
        return String::new();
    }
    serde_yaml_ng::to_string(mapping).unwrap_or_default()
}

/// Shows helpers for the `show` functions.
pub mod show {
    use serde_yaml_ng::Value;

    pub fn text(v: impl ToString) -> Option<Value> {
        Some(Value::String(v.to_string()))
    }

    pub fn number(v: impl Into<serde_yaml_ng::Number>) -> Option<Value> {
        Some(Value::Number(v.into()))
    }

    pub fn flag(v: bool) -> Option<Value> {
        Some(Value::Bool(v))
    }

    pub fn texts<T: ToString>(items: &[T]) -> Option<Value> {
        Some(Value::Sequence(
            items.iter().map(|i| Value::String(i.to_string())).collect(),
        ))
    }

    pub fn numbers<T: Copy + Into<serde_yaml_ng::Number>>(items: &[T]) -> Option<Value> {
        Some(Value::Sequence(
            items.iter().map(|&i| Value::Number(i.into())).collect(),
        ))
    }
}
