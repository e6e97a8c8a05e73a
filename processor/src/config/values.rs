//! The value types of the processor's own settings: span output, route decoration, sampling
//! and the Prometheus endpoint.

use sonde_config::{ConfigError, invalid};

/// Where spans are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracePrinter {
    Disabled,
    Text,
    Json,
}

impl TracePrinter {
    pub fn parse(key: &str, v: &str) -> Result<TracePrinter, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "disabled" | "" => Ok(TracePrinter::Disabled),
            "text" => Ok(TracePrinter::Text),
            "json" => Ok(TracePrinter::Json),
            _ => Err(invalid(key, v, "one of disabled, text, json")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TracePrinter::Disabled => "disabled",
            TracePrinter::Text => "text",
            TracePrinter::Json => "json",
        }
    }
}

/// Where spans of ignored routes are dropped (`routes.ignore_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteIgnoreMode {
    All,
    Traces,
    Metrics,
}

impl RouteIgnoreMode {
    pub fn parse(key: &str, v: &str) -> Result<RouteIgnoreMode, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(RouteIgnoreMode::All),
            "traces" => Ok(RouteIgnoreMode::Traces),
            "metrics" => Ok(RouteIgnoreMode::Metrics),
            _ => Err(invalid(key, v, "one of all, traces, metrics")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RouteIgnoreMode::All => "all",
            RouteIgnoreMode::Traces => "traces",
            RouteIgnoreMode::Metrics => "metrics",
        }
    }
    /// True when spans (traces) of ignored routes are dropped.
    pub fn drops_traces(self) -> bool {
        matches!(self, RouteIgnoreMode::All | RouteIgnoreMode::Traces)
    }
    /// True when ignored routes are left out of the metrics.
    pub fn drops_metrics(self) -> bool {
        matches!(self, RouteIgnoreMode::All | RouteIgnoreMode::Metrics)
    }
}

/// What `http.route` is for a path no pattern matches (`routes.unmatched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedRoutes {
    /// No route.
    Unset,
    /// The path itself (unbounded: only for known, small URL spaces).
    Path,
    /// `/**`.
    Wildcard,
    /// Segments holding a digit become `*`.
    Heuristic,
    /// A learned per-service tree collapsing busy positions into `*` (bounded).
    LowCardinality,
}

impl UnmatchedRoutes {
    pub fn parse(key: &str, v: &str) -> Result<UnmatchedRoutes, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "unset" => Ok(UnmatchedRoutes::Unset),
            "path" => Ok(UnmatchedRoutes::Path),
            "wildcard" => Ok(UnmatchedRoutes::Wildcard),
            "heuristic" => Ok(UnmatchedRoutes::Heuristic),
            "low-cardinality" | "low_cardinality" => Ok(UnmatchedRoutes::LowCardinality),
            _ => Err(invalid(
                key,
                v,
                "one of unset, path, wildcard, heuristic, low-cardinality",
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            UnmatchedRoutes::Unset => "unset",
            UnmatchedRoutes::Path => "path",
            UnmatchedRoutes::Wildcard => "wildcard",
            UnmatchedRoutes::Heuristic => "heuristic",
            UnmatchedRoutes::LowCardinality => "low-cardinality",
        }
    }
}

/// Which traces are kept (`otel_traces_export.sampler`, `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG`, with OpenTelemetry's names and semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keep this fraction of traces, decided from the trace id.
    TraceIdRatio(f64),
    /// Follow the caller's decision when there is one, else keep everything.
    ParentBasedAlwaysOn,
    /// Follow the caller's decision when there is one, else the ratio.
    ParentBasedTraceIdRatio(f64),
}

impl Sampler {
    /// Parses a sampler name and its argument (the ratio; 1.0 when absent). `key` names the
    /// setting in errors.
    pub fn parse(key: &str, name: &str, arg: Option<&str>) -> Result<Sampler, ConfigError> {
        let ratio = |arg_key: String| -> Result<f64, ConfigError> {
            match arg {
                None => Ok(1.0),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(ConfigError::Invalid {
                        key: arg_key,
                        value: a.to_string(),
                        expected: "a ratio from 0 to 1",
                    }),
                },
            }
        };
        let arg_key = format!("{key} argument");
        match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => Ok(Sampler::AlwaysOn),
            "always_off" => Ok(Sampler::AlwaysOff),
            "traceidratio" => Ok(Sampler::TraceIdRatio(ratio(arg_key)?)),
            "parentbased_always_on" => Ok(Sampler::ParentBasedAlwaysOn),
            "parentbased_traceidratio" => Ok(Sampler::ParentBasedTraceIdRatio(ratio(arg_key)?)),
            _ => Err(invalid(
                key,
                name,
                "one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_traceidratio",
            )),
        }
    }

    /// (name, argument) as configured.
    pub fn describe(self) -> (&'static str, Option<f64>) {
        match self {
            Sampler::AlwaysOn => ("always_on", None),
            Sampler::AlwaysOff => ("always_off", None),
            Sampler::TraceIdRatio(r) => ("traceidratio", Some(r)),
            Sampler::ParentBasedAlwaysOn => ("parentbased_always_on", None),
            Sampler::ParentBasedTraceIdRatio(r) => ("parentbased_traceidratio", Some(r)),
        }
    }
}

/// The Prometheus endpoint (`prometheus_export`); off unless a port is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusExport {
    pub port: Option<u16>,
    pub path: String,
    /// Address the endpoint binds (all interfaces by default, for a scraper elsewhere).
    pub address: std::net::IpAddr,
    /// Service graph edges from a service to itself count (`crate::service_graph`).
    pub allow_service_graph_self_references: bool,
}

impl Default for PrometheusExport {
    fn default() -> Self {
        super::Config::default().prometheus_export
    }
}

/// Route decoration (`routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesConfig {
    /// `/user/{id}`, `/api/v1/items/:id`, `/static/*`.
    pub patterns: Vec<String>,
    pub ignored_patterns: Vec<String>,
    pub ignore_mode: RouteIgnoreMode,
    pub unmatched: UnmatchedRoutes,
    pub wildcard_char: String,
    pub max_path_segment_cardinality: u32,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        super::Config::default().routes
    }
}
