//! The processor's configuration: the shared settings (`sonde_config`) plus the processor's
//! own sections (span output, routes, sampling, Prometheus and OTLP export), each defined once
//! in `settings`. The processor reads the operator's file itself (in single-host mode the
//! loader hands it the file's bytes on standard input) and the same environment variables,
//! so every key is checked here and an unknown one anywhere is an error.

mod otlp;
mod settings;
mod values;

use std::{collections::BTreeMap, path::Path};

use sonde_config::{ConfigError, FileText, KeyKind, SHARED, file_entries, to_yaml};

pub use otlp::{MetricsExport, OtlpEndpoint, OtlpProtocol, Signal, TracesExport};
pub use settings::OWN;
pub use values::{
    PrometheusExport, RouteIgnoreMode, RoutesConfig, Sampler, TracePrinter, UnmatchedRoutes,
};

/// The processor's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the loader reads too.
    pub shared: sonde_config::Config,
    pub trace_printer: TracePrinter,
    pub routes: RoutesConfig,
    pub sampler: Sampler,
    pub prometheus_export: PrometheusExport,
    pub traces_export: TracesExport,
    pub metrics_export: MetricsExport,
    /// Whether `url.query` is exported and which parameters are redacted.
    pub url_query: crate::protocols::http1::parse::QueryPolicy,
    /// `db.query.text` of SQL statements with literals replaced by `?` (true, the default) or
    /// as the application sent it (`attributes.db_query_sanitize: false`).
    pub db_query_sanitize: bool,
    /// `attributes.kubernetes.*` (the `kube` module reads them).
    pub kubernetes: crate::kube::Settings,
    /// `attributes.select.beyla_network_flow_{bytes,packets}.*`: the flow metrics' attributes.
    pub flow_select: crate::flows::select::FlowSelection,
    /// Values that combine with others before they mean anything (an endpoint with its
    /// protocol, a sampler with its argument), resolved once all sources are read.
    pending: Pending,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    traces: otlp::RawEndpoint,
    metrics: otlp::RawEndpoint,
    /// The sampler's name and the key it came from.
    sampler_name: (String, String),
    sampler_arg: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Config::blank();
        // The defaults are this module's own constants; a unit test proves every one valid.
        OWN.apply_defaults(&mut config)
            .and_then(|()| config.resolve())
            .expect("embedded defaults are valid");
        config
    }
}

impl Config {
    fn blank() -> Config {
        Config {
            shared: sonde_config::Config::default(),
            trace_printer: TracePrinter::Disabled,
            routes: RoutesConfig {
                patterns: Vec::new(),
                ignored_patterns: Vec::new(),
                ignore_mode: RouteIgnoreMode::All,
                unmatched: UnmatchedRoutes::Unset,
                wildcard_char: String::new(),
                max_path_segment_cardinality: 0,
            },
            sampler: Sampler::AlwaysOn,
            prometheus_export: PrometheusExport {
                port: None,
                path: String::new(),
                address: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                allow_service_graph_self_references: false,
            },
            traces_export: TracesExport {
                otlp: None,
                queue_size: 0,
                batch_max_size: 0,
                batch_timeout: std::time::Duration::ZERO,
                timeout: std::time::Duration::ZERO,
            },
            metrics_export: MetricsExport {
                otlp: None,
                interval: std::time::Duration::ZERO,
                timeout: std::time::Duration::ZERO,
                allow_service_graph_self_references: false,
            },
            url_query: crate::protocols::http1::parse::QueryPolicy::default(),
            db_query_sanitize: true,
            kubernetes: crate::kube::Settings::default(),
            flow_select: crate::flows::select::FlowSelection::default(),
            pending: Pending::default(),
        }
    }

    /// Builds the configuration from the file `file` names (else `BEYLA_CONFIG_PATH`; `-` is
    /// standard input) and the environment.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut text = FileText::locate(file, env)?;
        // Secrets `sonde` handed over on standard input rather than in the environment.
        let secrets = match text.as_mut() {
            Some(t) => t.take_secret_env()?,
            None => Vec::new(),
        };
        if secrets.is_empty() {
            return Config::from_sources(text.as_ref(), env);
        }
        let mut env = env.clone();
        env.extend(secrets);
        Config::from_sources(text.as_ref(), &env)
    }

    /// Builds the configuration from the process environment.
    pub fn from_process(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(file, &sonde_config::process_env())
    }

    /// Builds the configuration from already read file text and the environment.
    pub fn from_sources(
        file: Option<&FileText>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let kind_of = |key: &str| match SHARED.kind_of(key) {
            KeyKind::Unknown => match OWN.kind_of(key) {
                KeyKind::Unknown if sonde_config::discovery::is_unimplemented(key) => {
                    KeyKind::Unimplemented
                }
                // Selections of metrics other than the flow metrics: accepted, not applied.
                KeyKind::Unknown if key.starts_with("attributes.select.") => KeyKind::Unimplemented,
                kind => kind,
            },
            kind => kind,
        };
        let entries = match file {
            Some(f) => file_entries(f, &kind_of)?,
            None => Vec::new(),
        };
        let mut config = Config::blank();
        OWN.apply_defaults(&mut config)?;
        config.shared.apply_sources(&entries, env)?;
        OWN.apply_file(&mut config, &entries)?;
        OWN.apply_env(&mut config, env)?;
        config.resolve()?;
        Ok(config)
    }

    /// Turns the pending values into the sampler and the endpoints.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let (key, name) = &self.pending.sampler_name;
        self.sampler = Sampler::parse(key, name, self.pending.sampler_arg.as_deref())?;
        self.traces_export.otlp = otlp::resolve(&self.pending.traces, Signal::Traces)?;
        self.metrics_export.otlp = otlp::resolve(&self.pending.metrics, Signal::Metrics)?;
        Ok(())
    }

    /// The whole effective configuration as YAML (what `sonde-processor --print-config`
    /// shows), header values hidden; the output is itself a valid configuration file.
    pub fn to_yaml(&self) -> String {
        let mut all = SHARED.show(&self.shared, false);
        all.extend(OWN.show(self, false));
        to_yaml(&all)
    }

    /// Only the processor's own sections as YAML: what `sonde --print-config` adds after the
    /// loader's part.
    pub fn own_to_yaml(&self) -> String {
        to_yaml(&OWN.show(self, false))
    }
}

#[cfg(test)]
mod tests;
