//! Sonde's configuration core: how a setting is defined once (`setting`), where values come
//! from (`source`: the YAML file, then the environment with the reference system's names),
//! the value types both binaries share (`values`) and the settings both read (`shared`:
//! selection, service naming, the processor's identity, kernel sizes, the control socket).
//!
//! The privileged loader links only this. The processor's own settings (output, routes,
//! sampling, OTLP and Prometheus export) are defined in the processor with the same
//! machinery; the loader skips their sections (`PROCESSOR_SECTIONS`) and hands the file's
//! bytes to the processor it starts, so nothing it does not understand is rewritten on the
//! way. Every invalid value fails with the key, the value and what was expected.

pub mod discovery;
mod error;
pub mod host_metrics;
pub mod naming;
mod setting;
mod shared;
mod source;
mod values;

use std::collections::BTreeMap;

pub use error::{ConfigError, invalid};
pub use host_metrics::{Cidr, NetworkSettings, ProcessMetricsSettings};
pub use setting::{EnvVar, HIDDEN, Setting, Table, show, to_yaml, var, var_millis};
pub use shared::{
    Config, ContextPropagation, DEFAULT_CONTROL_SOCKET, DEFAULT_EXCLUDE, DEFAULT_OPEN_PORTS,
    EbpfSettings, LandlockMode, ProcessorSettings, SHARED, Scheduling,
};
pub use source::{
    CONFIG_PATH_VAR, FileText, Input, KeyKind, Raw, SECRET_ENV_VARS, file_entries, is_secret_var,
    with_secret_env,
};
pub use values::{
    ExeGlob, LogFormat, LogLevel, PortSet, format_duration, non_empty, parse_bool, parse_duration,
    parse_duration_or_millis, parse_in_range, parse_millis,
};

/// The top-level keys of the processor's own sections. The loader skips them whole; the
/// processor checks every key inside (a test there keeps this list equal to its table).
pub const PROCESSOR_SECTIONS: &[&str] = &[
    "trace_printer",
    "routes",
    "attributes",
    "prometheus_export",
    "otel_traces_export",
    "otel_metrics_export",
];

impl Default for Config {
    fn default() -> Self {
        let mut config = Config::blank();
        // The defaults are this crate's own constants, parsed like any value; a unit test
        // proves every one valid.
        SHARED
            .apply_defaults(&mut config)
            .expect("embedded defaults are valid");
        config
    }
}

impl Config {
    /// The shared settings from an optional file and the environment, the processor's
    /// sections skipped: the loader's view of the configuration.
    pub fn load(
        file: Option<&FileText>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let kind_of = |key: &str| match SHARED.kind_of(key) {
            KeyKind::Unknown if PROCESSOR_SECTIONS.contains(&top_level(key)) => KeyKind::Foreign,
            KeyKind::Unknown if discovery::is_unimplemented(key) => KeyKind::Unimplemented,
            kind => kind,
        };
        let entries = match file {
            Some(f) => file_entries(f, &kind_of)?,
            None => Vec::new(),
        };
        let mut config = Config::default();
        config.apply_sources(&entries, env)?;
        // The file parsed as YAML already; read again for the endpoints only.
        let root = file.and_then(|f| serde_yaml_ng::from_str(&f.text).ok());
        config.collector_ports = discovery::local_collector_ports(root.as_ref(), env);
        Ok(config)
    }

    /// Applies the file's entries (keys Beyla defines and Sonde does not apply are recorded
    /// for the warning), then the environment.
    pub fn apply_sources(
        &mut self,
        entries: &[(String, Raw)],
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        self.unimplemented_keys = entries
            .iter()
            .filter(|(_, raw)| *raw == Raw::Unimplemented)
            .map(|(k, _)| k.clone())
            .collect();
        SHARED.apply_file(self, entries)?;
        SHARED.apply_env(self, env)
    }

    /// The shared settings as YAML, the way `--print-config` shows them; the output is itself
    /// a valid configuration file.
    pub fn to_yaml(&self) -> String {
        to_yaml(&SHARED.show(self, false))
    }
}

/// The first segment of a dotted key.
pub fn top_level(key: &str) -> &str {
    key.split('.').next().unwrap_or(key)
}

/// The process environment as a map (what `load` reads).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
#[cfg(test)]
mod tests;
