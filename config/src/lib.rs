//! Sonde's configuration, parsed once into a typed `Config` shared by the loader and the
//! processor. Sources, lowest precedence first: embedded defaults, the YAML file
//! (`--config` or `BEYLA_CONFIG_PATH`), then environment variables with the reference
//! system's names. Every invalid value fails with the key, the value and what was expected.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::Deserialize;

mod otlp;
use otlp::RawEndpoint;
pub use otlp::{MetricsExport, OtlpEndpoint, OtlpProtocol, Signal, TracesExport, format_duration};

/// Errors raised while building the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (unknown keys included).
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

fn invalid(key: &str, value: impl fmt::Display, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

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
}

impl Default for PrometheusExport {
    fn default() -> Self {
        PrometheusExport {
            port: None,
            path: "/metrics".into(),
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
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
        RoutesConfig {
            patterns: Vec::new(),
            ignored_patterns: Vec::new(),
            ignore_mode: RouteIgnoreMode::All,
            unmatched: UnmatchedRoutes::LowCardinality,
            wildcard_char: "*".into(),
            max_path_segment_cardinality: 10,
        }
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

/// Kernel-side sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfSettings {
    /// Ring buffer data size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once (LRU beyond that).
    pub max_connections: u32,
}

/// How the loader runs the processor in single-host mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorSettings {
    /// Unprivileged user the processor runs as (name or numeric uid).
    pub user: String,
    /// Group (name or numeric gid); the user's primary group when unset.
    pub group: Option<String>,
    /// Path of the `sonde-processor` binary; next to the loader's own binary when unset.
    pub binary: Option<PathBuf>,
    /// Uids (besides the processor user's) allowed to connect to the control socket.
    pub allowed_uids: Vec<u32>,
    /// Run the processor without its Landlock ruleset when the kernel cannot enforce it
    /// (otherwise it refuses to start). seccomp, NO_NEW_PRIVS and the empty capability sets
    /// stay in force either way.
    pub insecure_no_landlock: bool,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub log_level: LogLevel,
    pub open_port: Option<PortSet>,
    pub auto_target_exe: Option<ExeGlob>,
    pub target_pids: Vec<u32>,
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub trace_printer: TracePrinter,
    pub control_socket: PathBuf,
    pub processor: ProcessorSettings,
    pub ebpf: EbpfSettings,
    pub routes: RoutesConfig,
    pub sampler: Sampler,
    pub prometheus_export: PrometheusExport,
    pub traces_export: TracesExport,
    pub metrics_export: MetricsExport,
    /// Seconds between kernel counter reports.
    pub stats_interval_secs: u32,
}

/// Ports selected when the configuration selects nothing.
pub const DEFAULT_OPEN_PORTS: &str = "80,443,3000,5000,8000-8999";

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sonde/control.sock";

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: LogLevel::Info,
            open_port: None,
            auto_target_exe: None,
            target_pids: Vec::new(),
            service_name: None,
            service_namespace: None,
            trace_printer: TracePrinter::Text,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            processor: ProcessorSettings {
                user: "nobody".into(),
                group: None,
                binary: None,
                allowed_uids: Vec::new(),
                insecure_no_landlock: false,
            },
            routes: RoutesConfig::default(),
            sampler: Sampler::ParentBasedAlwaysOn,
            prometheus_export: PrometheusExport::default(),
            traces_export: TracesExport::default(),
            metrics_export: MetricsExport::default(),
            ebpf: EbpfSettings {
                ring_buffer_bytes: 8 << 20,
                max_connections: 16384,
            },
            stats_interval_secs: 10,
        }
    }
}

/// The YAML schema. Unknown keys are errors so typos never pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_level: Option<String>,
    open_port: Option<PortsValue>,
    auto_target_exe: Option<String>,
    target_pids: Option<Vec<u32>>,
    service_name: Option<String>,
    service_namespace: Option<String>,
    trace_printer: Option<String>,
    control_socket: Option<PathBuf>,
    processor: Option<FileProcessor>,
    ebpf: Option<FileEbpf>,
    routes: Option<FileRoutes>,
    otel_traces_export: Option<FileTracesExport>,
    otel_metrics_export: Option<FileMetricsExport>,
    prometheus_export: Option<FilePrometheus>,
    stats_interval_secs: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrometheus {
    port: Option<u32>,
    path: Option<String>,
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTracesExport {
    sampler: Option<FileSampler>,
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    compression: Option<String>,
    certificate: Option<PathBuf>,
    queue_size: Option<usize>,
    batch_max_size: Option<usize>,
    batch_timeout: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetricsExport {
    endpoint: Option<String>,
    metrics_endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    compression: Option<String>,
    certificate: Option<PathBuf>,
    interval: Option<String>,
    timeout: Option<String>,
}

/// Endpoint settings of both signals while the sources are applied.
#[derive(Debug, Default)]
struct RawExports {
    traces: RawEndpoint,
    metrics: RawEndpoint,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSampler {
    name: String,
    arg: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoutes {
    patterns: Option<Vec<String>>,
    ignored_patterns: Option<Vec<String>>,
    ignore_mode: Option<String>,
    unmatched: Option<String>,
    wildcard_char: Option<String>,
    max_path_segment_cardinality: Option<u32>,
}

/// `open_port: 8080` and `open_port: "8080,9000-9100"` are both accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortsValue {
    Number(u32),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProcessor {
    user: Option<String>,
    group: Option<String>,
    binary: Option<PathBuf>,
    allowed_uids: Option<Vec<u32>>,
    insecure_no_landlock: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEbpf {
    ring_buffer_bytes: Option<u32>,
    max_connections: Option<u32>,
}

impl Config {
    /// Builds the configuration from an optional file and the given environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let path = file
            .map(PathBuf::from)
            .or_else(|| env.get("BEYLA_CONFIG_PATH").map(PathBuf::from));
        let parsed = match &path {
            Some(path) => {
                // `-` reads standard input: how `sonde` hands its effective configuration to
                // the processor it starts, which may not be allowed to read the file itself.
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(path)
                }
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::parse_yaml(path, &text)?
            }
            None => FileConfig::default(),
        };
        let mut config = Config::default();
        let mut raw = RawExports::default();
        config.apply_file(parsed, &mut raw)?;
        config.apply_env(env, &mut raw)?;
        config.traces_export.otlp = otlp::resolve(&raw.traces, Signal::Traces)?;
        config.metrics_export.otlp = otlp::resolve(&raw.metrics, Signal::Metrics)?;
        config.validate()?;
        Ok(config)
    }

    /// Builds the configuration from the process environment.
    pub fn from_process(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load(file, &env)
    }

    fn parse_yaml(path: &std::path::Path, text: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    fn apply_file(&mut self, f: FileConfig, raw: &mut RawExports) -> Result<(), ConfigError> {
        if let Some(v) = f.log_level {
            self.log_level = LogLevel::parse("log_level", &v)?;
        }
        if let Some(v) = f.open_port {
            let text = match v {
                PortsValue::Number(n) => n.to_string(),
                PortsValue::Text(t) => t,
            };
            self.open_port = Some(PortSet::parse("open_port", &text)?);
        }
        if let Some(v) = f.auto_target_exe {
            self.auto_target_exe = Some(ExeGlob::parse("auto_target_exe", &v)?);
        }
        if let Some(v) = f.target_pids {
            self.target_pids = v;
        }
        if let Some(v) = f.service_name {
            self.service_name = Some(non_empty("service_name", v)?);
        }
        if let Some(v) = f.service_namespace {
            self.service_namespace = Some(non_empty("service_namespace", v)?);
        }
        if let Some(v) = f.trace_printer {
            self.trace_printer = TracePrinter::parse("trace_printer", &v)?;
        }
        if let Some(v) = f.control_socket {
            self.control_socket = v;
        }
        if let Some(p) = f.processor {
            if let Some(v) = p.user {
                self.processor.user = non_empty("processor.user", v)?;
            }
            if let Some(v) = p.group {
                self.processor.group = Some(non_empty("processor.group", v)?);
            }
            if let Some(v) = p.binary {
                self.processor.binary = Some(v);
            }
            if let Some(v) = p.allowed_uids {
                self.processor.allowed_uids = v;
            }
            if let Some(v) = p.insecure_no_landlock {
                self.processor.insecure_no_landlock = v;
            }
        }
        if let Some(t) = f.otel_traces_export {
            if let Some(sm) = t.sampler {
                self.sampler = Sampler::parse(
                    "otel_traces_export.sampler.name",
                    &sm.name,
                    sm.arg.as_deref(),
                )?;
            }
            let p = "otel_traces_export";
            file_endpoint(
                &mut raw.traces,
                p,
                t.endpoint,
                t.traces_endpoint,
                "traces_endpoint",
            )?;
            file_protocol_headers(&mut raw.traces, p, t.protocol, t.headers, t.compression)?;
            if let Some(v) = t.certificate {
                raw.traces.ca_file = Some((format!("{p}.certificate"), v));
            }
            let te = &mut self.traces_export;
            if let Some(v) = t.queue_size {
                te.queue_size = bounded_count(&format!("{p}.queue_size"), v, 1 << 20)?;
            }
            if let Some(v) = t.batch_max_size {
                te.batch_max_size = bounded_count(&format!("{p}.batch_max_size"), v, 1 << 16)?;
            }
            if let Some(v) = t.batch_timeout {
                te.batch_timeout = otlp::parse_duration(&format!("{p}.batch_timeout"), &v)?;
            }
            if let Some(v) = t.timeout {
                te.timeout = otlp::parse_duration(&format!("{p}.timeout"), &v)?;
            }
        }
        if let Some(m) = f.otel_metrics_export {
            let p = "otel_metrics_export";
            file_endpoint(
                &mut raw.metrics,
                p,
                m.endpoint,
                m.metrics_endpoint,
                "metrics_endpoint",
            )?;
            file_protocol_headers(&mut raw.metrics, p, m.protocol, m.headers, m.compression)?;
            if let Some(v) = m.certificate {
                raw.metrics.ca_file = Some((format!("{p}.certificate"), v));
            }
            if let Some(v) = m.interval {
                self.metrics_export.interval = otlp::parse_duration(&format!("{p}.interval"), &v)?;
            }
            if let Some(v) = m.timeout {
                self.metrics_export.timeout = otlp::parse_duration(&format!("{p}.timeout"), &v)?;
            }
        }
        if let Some(p) = f.prometheus_export {
            if let Some(v) = p.port {
                self.prometheus_export.port = Some(prometheus_port("prometheus_export.port", v)?);
            }
            if let Some(v) = p.path {
                self.prometheus_export.path = prometheus_path("prometheus_export.path", v)?;
            }
            if let Some(v) = p.address {
                self.prometheus_export.address = v.parse().map_err(|_| {
                    invalid("prometheus_export.address", &v, "an IPv4 or IPv6 address")
                })?;
            }
        }
        if let Some(r) = f.routes {
            let check = |key: &str, list: Vec<String>| -> Result<Vec<String>, ConfigError> {
                for p in &list {
                    if !p.starts_with('/') {
                        return Err(invalid(key, p, "patterns starting with /"));
                    }
                }
                Ok(list)
            };
            if let Some(v) = r.patterns {
                self.routes.patterns = check("routes.patterns", v)?;
            }
            if let Some(v) = r.ignored_patterns {
                self.routes.ignored_patterns = check("routes.ignored_patterns", v)?;
            }
            if let Some(v) = r.ignore_mode {
                self.routes.ignore_mode = RouteIgnoreMode::parse("routes.ignore_mode", &v)?;
            }
            if let Some(v) = r.unmatched {
                self.routes.unmatched = UnmatchedRoutes::parse("routes.unmatched", &v)?;
            }
            if let Some(v) = r.wildcard_char {
                if v.is_empty() || v.contains('/') {
                    return Err(invalid(
                        "routes.wildcard_char",
                        v,
                        "a non-empty string without /",
                    ));
                }
                self.routes.wildcard_char = v;
            }
            if let Some(v) = r.max_path_segment_cardinality {
                if !(1..=10_000).contains(&v) {
                    return Err(invalid(
                        "routes.max_path_segment_cardinality",
                        v,
                        "a number from 1 to 10000",
                    ));
                }
                self.routes.max_path_segment_cardinality = v;
            }
        }
        if let Some(e) = f.ebpf {
            if let Some(v) = e.ring_buffer_bytes {
                self.ebpf.ring_buffer_bytes = v;
            }
            if let Some(v) = e.max_connections {
                self.ebpf.max_connections = v;
            }
        }
        if let Some(v) = f.stats_interval_secs {
            self.stats_interval_secs = v;
        }
        Ok(())
    }

    fn apply_env(
        &mut self,
        env: &BTreeMap<String, String>,
        raw: &mut RawExports,
    ) -> Result<(), ConfigError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
        otlp::apply_env(&mut raw.traces, env, "TRACES")?;
        otlp::apply_env(&mut raw.metrics, env, "METRICS")?;
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            let t = otlp::parse_millis("OTEL_EXPORTER_OTLP_TIMEOUT", v)?;
            self.traces_export.timeout = t;
            self.metrics_export.timeout = t;
        }
        if let Some(v) = get("OTEL_BSP_MAX_QUEUE_SIZE") {
            let n = v
                .trim()
                .parse()
                .map_err(|_| invalid("OTEL_BSP_MAX_QUEUE_SIZE", v, "a number"))?;
            self.traces_export.queue_size = bounded_count("OTEL_BSP_MAX_QUEUE_SIZE", n, 1 << 20)?;
        }
        if let Some(v) = get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            let n = v
                .trim()
                .parse()
                .map_err(|_| invalid("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", v, "a number"))?;
            self.traces_export.batch_max_size =
                bounded_count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", n, 1 << 16)?;
        }
        if let Some(v) = get("OTEL_BSP_SCHEDULE_DELAY") {
            self.traces_export.batch_timeout = otlp::parse_millis("OTEL_BSP_SCHEDULE_DELAY", v)?;
        }
        if let Some(v) = get("BEYLA_METRICS_INTERVAL") {
            self.metrics_export.interval = otlp::parse_duration("BEYLA_METRICS_INTERVAL", v)?;
        }
        if let Some(v) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            self.metrics_export.interval = otlp::parse_millis("OTEL_METRIC_EXPORT_INTERVAL", v)?;
        }
        if let Some(v) = get("BEYLA_LOG_LEVEL") {
            self.log_level = LogLevel::parse("BEYLA_LOG_LEVEL", v)?;
        }
        if let Some(v) = get("BEYLA_OPEN_PORT") {
            self.open_port = Some(PortSet::parse("BEYLA_OPEN_PORT", v)?);
        }
        for key in ["BEYLA_AUTO_TARGET_EXE", "OTEL_GO_AUTO_TARGET_EXE"] {
            if let Some(v) = get(key) {
                self.auto_target_exe = Some(ExeGlob::parse(key, v)?);
                break;
            }
        }
        if let Some(v) = get("BEYLA_TARGET_PID") {
            self.target_pids = v
                .split(',')
                .map(|p| p.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| invalid("BEYLA_TARGET_PID", v, "comma-separated process ids"))?;
        }
        for key in ["BEYLA_SERVICE_NAME", "OTEL_SERVICE_NAME"] {
            if let Some(v) = get(key) {
                self.service_name = Some(v.clone());
            }
        }
        if let Some(v) = get("BEYLA_SERVICE_NAMESPACE") {
            self.service_namespace = Some(v.clone());
        }
        if let Some(v) = get("BEYLA_TRACE_PRINTER") {
            self.trace_printer = TracePrinter::parse("BEYLA_TRACE_PRINTER", v)?;
        }
        if let Some(v) = get("SONDE_CONTROL_SOCKET") {
            self.control_socket = PathBuf::from(v);
        }
        if let Some(v) = get("SONDE_PROCESSOR_USER") {
            self.processor.user = v.clone();
        }
        if let Some(v) = get("BEYLA_PROMETHEUS_PORT") {
            let n = v
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid("BEYLA_PROMETHEUS_PORT", v, "a TCP port, 1 to 65535"))?;
            self.prometheus_export.port = Some(prometheus_port("BEYLA_PROMETHEUS_PORT", n)?);
        }
        if let Some(v) = get("BEYLA_PROMETHEUS_PATH") {
            self.prometheus_export.path = prometheus_path("BEYLA_PROMETHEUS_PATH", v.clone())?;
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER") {
            let arg = get("OTEL_TRACES_SAMPLER_ARG");
            self.sampler = Sampler::parse("OTEL_TRACES_SAMPLER", v, arg.map(String::as_str))?;
        }
        if let Some(v) = get("SONDE_INSECURE_NO_LANDLOCK") {
            self.processor.insecure_no_landlock = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(invalid(
                        "SONDE_INSECURE_NO_LANDLOCK",
                        v,
                        "true, false, 1 or 0",
                    ));
                }
            };
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rb = self.ebpf.ring_buffer_bytes;
        if !rb.is_power_of_two() || !(4096..=(1 << 30)).contains(&rb) {
            return Err(invalid(
                "ebpf.ring_buffer_bytes",
                rb,
                "a power of two between 4096 and 1073741824",
            ));
        }
        if !(64..=1 << 20).contains(&self.ebpf.max_connections) {
            return Err(invalid(
                "ebpf.max_connections",
                self.ebpf.max_connections,
                "a number between 64 and 1048576",
            ));
        }
        if self.stats_interval_secs == 0 {
            return Err(invalid(
                "stats_interval_secs",
                0,
                "a number of seconds >= 1",
            ));
        }
        if !self.control_socket.is_absolute() {
            return Err(invalid(
                "control_socket",
                self.control_socket.display(),
                "an absolute path",
            ));
        }
        Ok(())
    }

    /// When nothing selects a process, select the usual HTTP ports (`DEFAULT_OPEN_PORTS`), so
    /// `sonde` with embedded defaults instruments local web servers. Returns true if applied.
    pub fn apply_default_selection(&mut self) -> bool {
        if self.has_selection() {
            return false;
        }
        self.open_port = PortSet::parse("open_port", DEFAULT_OPEN_PORTS).ok();
        true
    }

    /// True when the configuration selects any process.
    pub fn has_selection(&self) -> bool {
        self.open_port.is_some() || self.auto_target_exe.is_some() || !self.target_pids.is_empty()
    }

    /// The effective configuration as YAML (what `--print-config` shows), OTLP header
    /// values hidden.
    pub fn to_yaml(&self) -> String {
        self.yaml(false)
    }

    /// The effective configuration as YAML with OTLP header values, for handing to the
    /// processor `sonde` starts (through a pipe, never a file).
    pub fn to_yaml_with_secrets(&self) -> String {
        self.yaml(true)
    }

    fn yaml(&self, secrets: bool) -> String {
        let mut out = String::new();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "~".into());
        out += &format!("log_level: {}\n", self.log_level.as_str());
        out += &format!(
            "open_port: {}\n",
            self.open_port
                .as_ref()
                .map_or("~".into(), |p| format!("\"{p}\""))
        );
        out += &format!(
            "auto_target_exe: {}\n",
            self.auto_target_exe
                .as_ref()
                .map_or("~".into(), |g| format!("\"{}\"", g.pattern))
        );
        out += &format!("target_pids: {:?}\n", self.target_pids);
        out += &format!("service_name: {}\n", opt(&self.service_name));
        out += &format!("service_namespace: {}\n", opt(&self.service_namespace));
        out += &format!("trace_printer: {}\n", self.trace_printer.as_str());
        out += &format!("control_socket: {}\n", self.control_socket.display());
        out += "processor:\n";
        out += &format!("  user: {}\n", self.processor.user);
        out += &format!("  group: {}\n", opt(&self.processor.group));
        out += &format!(
            "  binary: {}\n",
            self.processor
                .binary
                .as_ref()
                .map_or("~".into(), |p| p.display().to_string())
        );
        out += &format!("  allowed_uids: {:?}\n", self.processor.allowed_uids);
        out += &format!(
            "  insecure_no_landlock: {}\n",
            self.processor.insecure_no_landlock
        );
        out += "ebpf:\n";
        out += &format!("  ring_buffer_bytes: {}\n", self.ebpf.ring_buffer_bytes);
        out += &format!("  max_connections: {}\n", self.ebpf.max_connections);
        out += "routes:\n";
        out += &format!("  patterns: {:?}\n", self.routes.patterns);
        out += &format!("  ignored_patterns: {:?}\n", self.routes.ignored_patterns);
        out += &format!("  ignore_mode: {}\n", self.routes.ignore_mode.as_str());
        out += &format!("  unmatched: {}\n", self.routes.unmatched.as_str());
        out += &format!("  wildcard_char: {:?}\n", self.routes.wildcard_char);
        out += &format!(
            "  max_path_segment_cardinality: {}\n",
            self.routes.max_path_segment_cardinality
        );
        out += "prometheus_export:\n";
        if let Some(p) = self.prometheus_export.port {
            out += &format!("  port: {p}\n");
        }
        out += &format!("  path: {}\n", self.prometheus_export.path);
        out += &format!("  address: \"{}\"\n", self.prometheus_export.address);
        let (name, arg) = self.sampler.describe();
        out += "otel_traces_export:\n  sampler:\n";
        out += &format!("    name: {name}\n");
        if let Some(a) = arg {
            out += &format!("    arg: \"{a}\"\n");
        }
        out += &otlp_yaml("traces_endpoint", &self.traces_export.otlp, secrets);
        let te = &self.traces_export;
        out += &format!("  queue_size: {}\n", te.queue_size);
        out += &format!("  batch_max_size: {}\n", te.batch_max_size);
        out += &format!("  batch_timeout: {}\n", format_duration(te.batch_timeout));
        out += &format!("  timeout: {}\n", format_duration(te.timeout));
        out += "otel_metrics_export:\n";
        out += &otlp_yaml("metrics_endpoint", &self.metrics_export.otlp, secrets);
        let me = &self.metrics_export;
        out += &format!("  interval: {}\n", format_duration(me.interval));
        out += &format!("  timeout: {}\n", format_duration(me.timeout));
        out += &format!("stats_interval_secs: {}\n", self.stats_interval_secs);
        out
    }
}

/// The endpoint lines of one `otel_*_export` section; header values are hidden because they
/// usually carry credentials.
fn otlp_yaml(exact_key: &str, e: &Option<OtlpEndpoint>, secrets: bool) -> String {
    let Some(e) = e else {
        return String::new();
    };
    let mut out = format!(
        "  {exact_key}: \"{}\"\n  protocol: {}\n  compression: {}\n",
        e.url,
        e.protocol.as_str(),
        if e.gzip { "gzip" } else { "none" }
    );
    if let Some(ca) = &e.ca_file {
        out += &format!("  certificate: {}\n", ca.display());
    }
    if !e.headers.is_empty() {
        out += "  headers:\n";
        for (k, v) in &e.headers {
            // A JSON string is a valid YAML double-quoted scalar.
            let shown = if secrets {
                serde_json::to_string(v).unwrap_or_default()
            } else {
                "\"<hidden>\"".into()
            };
            out += &format!("    {k}: {shown}\n");
        }
    }
    out
}

fn file_endpoint(
    raw: &mut RawEndpoint,
    prefix: &str,
    base: Option<String>,
    exact: Option<String>,
    exact_name: &str,
) -> Result<(), ConfigError> {
    if let Some(v) = base {
        raw.base = Some((format!("{prefix}.endpoint"), v));
    }
    if let Some(v) = exact {
        raw.exact = Some((format!("{prefix}.{exact_name}"), v));
    }
    Ok(())
}

fn file_protocol_headers(
    raw: &mut RawEndpoint,
    prefix: &str,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    compression: Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = protocol {
        raw.protocol = Some(OtlpProtocol::parse(&format!("{prefix}.protocol"), &v)?);
    }
    if let Some(v) = compression {
        raw.gzip = Some(otlp::parse_compression(
            &format!("{prefix}.compression"),
            &v,
        )?);
    }
    if let Some(h) = headers {
        let key = format!("{prefix}.headers");
        raw.headers = h
            .into_iter()
            .map(|(k, v)| Ok((otlp::header_name(&key, &k)?, v)))
            .collect::<Result<_, ConfigError>>()?;
    }
    Ok(())
}

fn bounded_count(key: &str, v: usize, max: usize) -> Result<usize, ConfigError> {
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            key: key.to_string(),
            value: v.to_string(),
            expected: "a count from 1 to the documented maximum (queue 1048576, batch 65536)",
        })
    }
}

fn prometheus_port(key: &str, v: u32) -> Result<u16, ConfigError> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(key, v, "a TCP port, 1 to 65535")),
    }
}

fn prometheus_path(key: &str, v: String) -> Result<String, ConfigError> {
    if v.starts_with('/') && !v.contains(char::is_whitespace) {
        Ok(v)
    } else {
        Err(invalid(key, v, "a path starting with / and without spaces"))
    }
}

fn non_empty(key: &str, v: String) -> Result<String, ConfigError> {
    if v.trim().is_empty() {
        Err(invalid(key, v, "a non-empty string"))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_yaml(yaml: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sonde-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.yaml", yaml.len()));
        std::fs::write(&path, yaml).unwrap();
        let r = Config::load(Some(&path), &env(e));
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn port_sets() {
        let p = PortSet::parse("k", "8080, 8000-8999,443").unwrap();
        assert!(p.contains(8080) && p.contains(8500) && p.contains(443));
        assert!(!p.contains(9000) && !p.contains(80));
        assert_eq!(p.to_string(), "8080,8000-8999,443");
        for bad in ["", "0", "80-", "x", "9000-8000", "70000", "80,,81"] {
            let err = PortSet::parse("open_port", bad).unwrap_err().to_string();
            assert!(err.contains("open_port"), "{err}");
        }
    }

    #[test]
    fn defaults_without_sources() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.trace_printer, TracePrinter::Text);
        assert_eq!(c.processor.user, "nobody");
        assert!(!c.has_selection());
    }

    #[test]
    fn file_then_env_precedence() {
        let c = load_yaml(
            "open_port: 8080\ntrace_printer: text\nservice_name: file-svc\nebpf:\n  ring_buffer_bytes: 65536\n",
            &[("BEYLA_TRACE_PRINTER", "json"), ("OTEL_SERVICE_NAME", "env-svc")],
        )
        .unwrap();
        assert_eq!(c.trace_printer, TracePrinter::Json);
        assert_eq!(c.service_name.as_deref(), Some("env-svc"));
        assert!(c.open_port.unwrap().contains(8080));
        assert_eq!(c.ebpf.ring_buffer_bytes, 65536);
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let e = load_yaml("trace_printer: yaml\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("trace_printer") && e.contains("yaml") && e.contains("json"),
            "{e}"
        );
        let e = load_yaml("open_prot: 80\n", &[]).unwrap_err().to_string();
        assert!(e.contains("open_prot"), "{e}");
        let e = load_yaml("ebpf:\n  ring_buffer_bytes: 1000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ebpf.ring_buffer_bytes") && e.contains("1000"),
            "{e}"
        );
        let e = Config::load(None, &env(&[("BEYLA_OPEN_PORT", "80-x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BEYLA_OPEN_PORT") && e.contains("80-x"), "{e}");
        let e = Config::load(None, &env(&[("BEYLA_LOG_LEVEL", "loud")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BEYLA_LOG_LEVEL") && e.contains("loud"), "{e}");
        let e = Config::load(None, &env(&[("SONDE_INSECURE_NO_LANDLOCK", "yes")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SONDE_INSECURE_NO_LANDLOCK") && e.contains("yes"),
            "{e}"
        );
    }

    #[test]
    fn routes_parse_validate_and_round_trip() {
        let c = load_yaml(
            "routes:\n  patterns: [\"/user/{id}\", \"/items/:id\"]\n  ignored_patterns: [/health]\n  ignore_mode: traces\n  unmatched: heuristic\n  max_path_segment_cardinality: 5\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.routes.patterns, ["/user/{id}", "/items/:id"]);
        assert_eq!(c.routes.ignore_mode, RouteIgnoreMode::Traces);
        assert_eq!(c.routes.unmatched, UnmatchedRoutes::Heuristic);
        let again = load_yaml(&c.to_yaml(), &[]).unwrap();
        assert_eq!(again.routes, c.routes);
        assert_eq!(
            Config::load(None, &env(&[])).unwrap().routes.unmatched,
            UnmatchedRoutes::LowCardinality
        );
        for (yaml, key) in [
            ("routes:\n  unmatched: smart\n", "routes.unmatched"),
            ("routes:\n  ignore_mode: some\n", "routes.ignore_mode"),
            ("routes:\n  patterns: [user]\n", "routes.patterns"),
            (
                "routes:\n  max_path_segment_cardinality: 0\n",
                "routes.max_path_segment_cardinality",
            ),
        ] {
            let e = load_yaml(yaml, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn prometheus_export_keys() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.prometheus_export.port, None);
        let c = load_yaml(
            "prometheus_export:\n  port: 9400\n  path: /m\n  address: 127.0.0.1\n",
            &[("BEYLA_PROMETHEUS_PATH", "/metrics2")],
        )
        .unwrap();
        assert_eq!(c.prometheus_export.port, Some(9400));
        assert_eq!(c.prometheus_export.path, "/metrics2");
        assert_eq!(
            load_yaml(&c.to_yaml(), &[]).unwrap().prometheus_export,
            c.prometheus_export
        );
        for (yaml, envs, key) in [
            (
                "prometheus_export:\n  port: 70000\n",
                vec![],
                "prometheus_export.port",
            ),
            (
                "prometheus_export:\n  path: metrics\n",
                vec![],
                "prometheus_export.path",
            ),
            (
                "",
                vec![("BEYLA_PROMETHEUS_PORT", "x")],
                "BEYLA_PROMETHEUS_PORT",
            ),
        ] {
            let e = load_yaml(yaml, &envs).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn samplers_from_file_and_environment() {
        assert_eq!(
            Config::load(None, &env(&[])).unwrap().sampler,
            Sampler::ParentBasedAlwaysOn
        );
        let c = load_yaml(
            "otel_traces_export:\n  sampler:\n    name: traceidratio\n    arg: \"0.25\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.sampler, Sampler::TraceIdRatio(0.25));
        assert_eq!(load_yaml(&c.to_yaml(), &[]).unwrap().sampler, c.sampler);
        let c = load_yaml(
            "",
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ],
        )
        .unwrap();
        assert_eq!(c.sampler, Sampler::ParentBasedTraceIdRatio(0.5));
        let e = Config::load(None, &env(&[("OTEL_TRACES_SAMPLER", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("OTEL_TRACES_SAMPLER") && e.contains("sometimes"),
            "{e}"
        );
        let e = Config::load(
            None,
            &env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("OTEL_TRACES_SAMPLER argument") && e.contains('2'),
            "{e}"
        );
    }

    #[test]
    fn landlock_opt_out_is_off_unless_asked_for() {
        assert!(
            !Config::load(None, &env(&[]))
                .unwrap()
                .processor
                .insecure_no_landlock
        );
        let c = load_yaml("processor:\n  insecure_no_landlock: true\n", &[]).unwrap();
        assert!(c.processor.insecure_no_landlock);
        let again = load_yaml(&c.to_yaml(), &[]).unwrap();
        assert!(again.processor.insecure_no_landlock);
        let c = Config::load(None, &env(&[("SONDE_INSECURE_NO_LANDLOCK", "1")])).unwrap();
        assert!(c.processor.insecure_no_landlock);
    }

    #[test]
    fn default_selection_only_when_nothing_selected() {
        let mut c = Config::load(None, &env(&[])).unwrap();
        assert!(c.apply_default_selection());
        assert!(c.open_port.as_ref().unwrap().contains(8080));
        let mut c = Config::load(None, &env(&[("BEYLA_AUTO_TARGET_EXE", "*/nginx")])).unwrap();
        assert!(!c.apply_default_selection());
        assert!(c.open_port.is_none());
    }

    #[test]
    fn exe_glob_matches_paths() {
        let g = ExeGlob::parse("k", "*/nginx").unwrap();
        assert!(g.is_match("/usr/sbin/nginx"));
        assert!(!g.is_match("/usr/bin/python3"));
    }

    #[test]
    fn otlp_exports_from_file_and_environment() {
        let yaml = "otel_traces_export:\n  endpoint: http://127.0.0.1:4318\n  headers:\n    api-key: s3cret\n  queue_size: 100\n  batch_timeout: 250ms\notel_metrics_export:\n  endpoint: http://127.0.0.1:4317\n  interval: 2s\n";
        let c = load_yaml(yaml, &[]).unwrap();
        let t = c.traces_export.otlp.clone().unwrap();
        assert_eq!(t.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.headers, vec![("api-key".into(), "s3cret".into())]);
        assert_eq!(c.traces_export.queue_size, 100);
        assert_eq!(c.traces_export.batch_timeout, Duration::from_millis(250));
        let m = c.metrics_export.otlp.clone().unwrap();
        assert_eq!(
            (m.url.as_str(), m.protocol),
            ("http://127.0.0.1:4317", OtlpProtocol::Grpc)
        );
        assert_eq!(c.metrics_export.interval, Duration::from_secs(2));
        // Printed without the secret, and read back to the same endpoints.
        let printed = c.to_yaml();
        assert!(!printed.contains("s3cret"), "{printed}");
        let again = load_yaml(&printed, &[]).unwrap();
        assert_eq!(again.traces_export.otlp.unwrap().url, t.url);
        assert_eq!(again.metrics_export, c.metrics_export);
        let handed = load_yaml(&c.to_yaml_with_secrets(), &[]).unwrap();
        assert_eq!(handed.traces_export, c.traces_export);

        // The environment wins; a signal endpoint is used as given.
        let c = load_yaml(
            yaml,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://tempo:9411/otlp",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=other"),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
            ],
        )
        .unwrap();
        let t = c.traces_export.otlp.unwrap();
        assert_eq!((t.url.as_str(), t.port), ("http://tempo:9411/otlp", 9411));
        assert_eq!(t.headers, vec![("api-key".into(), "other".into())]);
        let m = c.metrics_export.otlp.unwrap();
        assert_eq!(
            (m.url.as_str(), m.protocol),
            ("http://collector:4317", OtlpProtocol::Grpc)
        );
        assert_eq!(c.metrics_export.interval, Duration::from_millis(1500));
        assert!(m.gzip && !t.gzip);

        for (yaml, env, key) in [
            (
                "otel_traces_export:\n  protocol: http/json\n",
                vec![],
                "otel_traces_export.protocol",
            ),
            (
                "otel_metrics_export:\n  interval: soon\n",
                vec![],
                "otel_metrics_export.interval",
            ),
            (
                "otel_traces_export:\n  compression: zstd\n",
                vec![],
                "otel_traces_export.compression",
            ),
            (
                "otel_traces_export:\n  queue_size: 0\n",
                vec![],
                "otel_traces_export.queue_size",
            ),
            (
                "",
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                "",
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "5s")],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                "otel_metrics_export:\n  metrics_endpoint: https://c:4318/v1/metrics\n  certificate: /nonexistent/ca.pem\n",
                vec![],
                "otel_metrics_export.certificate",
            ),
        ] {
            let e = load_yaml(yaml, &env).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn print_config_round_trips() {
        let c = load_yaml(
            "open_port: \"8080,9000-9001\"\nauto_target_exe: \"*/node\"\n",
            &[],
        )
        .unwrap();
        let yaml = c.to_yaml();
        let again = load_yaml(&yaml, &[]).unwrap();
        assert_eq!(again.open_port, c.open_port);
        assert_eq!(again.auto_target_exe.unwrap().pattern, "*/node");
        assert_eq!(again.ebpf, c.ebpf);
    }
}
