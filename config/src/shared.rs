//! The settings both binaries read: process selection, service naming, the processor's
//! identity, kernel-side sizes, the control socket and logging. This is all the privileged
//! loader knows of the configuration; the processor's own sections (output, routes,
//! sampling, exporters) are defined in the processor and only travel through the loader as
//! the file's bytes.

use std::path::PathBuf;

use crate::{
    discovery::{self, Discovery, Pattern, Syntax},
    error::invalid,
    host_metrics::{HOST_METRICS, NetworkSettings, ProcessMetricsSettings},
    naming,
    setting::{Setting, Table, show, var},
    values::{
        ExeGlob, LogFormat, LogLevel, PortSet, format_duration, non_empty, parse_bool,
        parse_duration, parse_in_range,
    },
};

/// Kernel-side sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfSettings {
    /// Ring buffer data size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once (LRU beyond that).
    pub max_connections: u32,
    /// Capture HTTPS plaintext through OpenSSL uprobes (uprobe-multi links per selected
    /// process, created at run time; the seccomp policy then allows `BPF_LINK_CREATE`).
    pub tls: bool,
    /// How long the processor holds a client span of a serving process for the server span
    /// it was made in (`ebpf.max_transaction_time`; zero turns in-process linking off).
    pub max_transaction_time: std::time::Duration,
    /// `ebpf.context_propagation`: whether the kernel adds a `traceparent` to outgoing
    /// HTTP/1 requests of selected processes (sock_ops + sk_msg; needs `CAP_NET_ADMIN`).
    pub context_propagation: ContextPropagation,
    /// What the start-up warning says about a reference-system value Sonde reads differently
    /// (`all`, `tcp`, `headers,tcp`, `ip`, the deprecated `enable_context_propagation`).
    pub context_propagation_notes: Vec<String>,
    /// `ebpf.cgroup_root`: the cgroup v2 directory the injection's programs attach to;
    /// discovered from `/proc/self/mountinfo` when unset.
    pub cgroup_root: Option<PathBuf>,
}

/// `ebpf.context_propagation`: Sonde injects W3C `traceparent` headers into cleartext
/// HTTP/1 requests (`headers`) or nothing (`disabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextPropagation {
    Disabled,
    Headers,
}

impl ContextPropagation {
    /// Parses a value of `ebpf.context_propagation`: Sonde's two, and the reference system's
    /// others with the note the start-up warning prints for them.
    pub fn parse(
        key: &str,
        text: &str,
    ) -> Result<(ContextPropagation, Option<String>), crate::ConfigError> {
        const EXPECTED: &str =
            "`disabled` or `headers` (also accepted: `all`, `headers,tcp`, `tcp`, `ip`)";
        let v = text.trim().to_ascii_lowercase().replace(' ', "");
        // Named by the key even when the value came from its environment variable.
        let name = if key == "ebpf.context_propagation" {
            key.to_string()
        } else {
            format!("ebpf.context_propagation ({key})")
        };
        let note = |what: &str| Some(format!("{name}: {text}: {what}"));
        Ok(match v.as_str() {
            "disabled" | "" => (ContextPropagation::Disabled, None),
            "headers" => (ContextPropagation::Headers, None),
            "all" | "headers,tcp" | "tcp,headers" => (
                ContextPropagation::Headers,
                note(
                    "Sonde injects HTTP/1 `traceparent` headers only (as `headers`); it never writes TCP or IP options",
                ),
            ),
            "tcp" | "ip" => (
                ContextPropagation::Disabled,
                note(
                    "Sonde does not propagate context in TCP or IP options; injection stays off (use `headers`)",
                ),
            ),
            _ => return Err(invalid(key, text, EXPECTED)),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContextPropagation::Disabled => "disabled",
            ContextPropagation::Headers => "headers",
        }
    }
}

/// Who the processor is and how single-host mode runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorSettings {
    /// Unprivileged user the processor runs as (name or numeric uid).
    pub user: String,
    /// Group (name or numeric gid); the user's primary group when unset.
    pub group: Option<String>,
    /// Path of the `sonde-processor` binary; next to the loader's own binary when unset.
    pub binary: Option<PathBuf>,
    /// Split mode: the cgroup a connecting processor must be in (or below).
    pub cgroup: Option<String>,
    /// Uids (besides the processor user's) allowed to connect to the control socket.
    pub allowed_uids: Vec<u32>,
    /// How strictly the processor's Landlock ruleset is enforced (`processor.landlock`).
    pub landlock: LandlockMode,
    /// The older name of `landlock: best_effort` (true: start even when the kernel cannot
    /// enforce the whole ruleset). seccomp, NO_NEW_PRIVS and the empty capability sets stay in
    /// force either way.
    pub insecure_no_landlock: bool,
    /// The scheduling policy the processor's threads run under (`processor.scheduling`).
    pub scheduling: Scheduling,
}

impl ProcessorSettings {
    /// The Landlock mode in effect: `insecure_no_landlock: true` lowers `required` to
    /// `best_effort` (it never turns Landlock off).
    pub fn landlock_mode(&self) -> LandlockMode {
        match self.landlock {
            LandlockMode::Required if self.insecure_no_landlock => LandlockMode::BestEffort,
            mode => mode,
        }
    }
}

/// The scheduling policy of the processor's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// `SCHED_BATCH`: the same CPU share as a normal process, but its wake-ups never preempt
    /// the task running on the CPU, so on a busy host it takes the ring's records in larger
    /// batches instead of interrupting the instrumented applications. Needs no privilege.
    #[default]
    Batch,
    /// Whatever the processor was started with (e.g. systemd's `CPUSchedulingPolicy=`).
    Inherit,
}

impl Scheduling {
    pub const VALUES: &str = "`batch` or `inherit`";

    pub fn parse(key: &str, text: &str) -> Result<Scheduling, crate::ConfigError> {
        match text.trim() {
            "batch" => Ok(Scheduling::Batch),
            "inherit" => Ok(Scheduling::Inherit),
            other => Err(invalid(key, other, Scheduling::VALUES)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheduling::Batch => "batch",
            Scheduling::Inherit => "inherit",
        }
    }
}

/// How the processor treats a kernel that cannot enforce its whole Landlock ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandlockMode {
    /// Refuse to start unless every right of the ruleset (Landlock ABI 6) is enforced.
    Required,
    /// Enforce what the kernel supports (down to ABI 1, or none), log what is not, start.
    #[default]
    BestEffort,
    /// No Landlock ruleset at all (insecure; `--audit` flags it). For diagnosis: shows what
    /// Landlock stops that seccomp does not.
    Off,
}

impl LandlockMode {
    pub const VALUES: &str = "`required`, `best_effort` or `off`";

    pub fn parse(key: &str, text: &str) -> Result<LandlockMode, crate::ConfigError> {
        match text.trim() {
            "required" => Ok(LandlockMode::Required),
            "best_effort" | "best-effort" => Ok(LandlockMode::BestEffort),
            "off" => Ok(LandlockMode::Off),
            other => Err(invalid(key, other, LandlockMode::VALUES)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LandlockMode::Required => "required",
            LandlockMode::BestEffort => "best_effort",
            LandlockMode::Off => "off",
        }
    }
}

/// The shared configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub open_port: Option<PortSet>,
    pub auto_target_exe: Option<ExeGlob>,
    /// `executable_name` / `BEYLA_EXECUTABLE_NAME`: Beyla's older regular expression on the
    /// executable path; ANDed with `open_port` and `auto_target_exe` in the top-level selector.
    pub executable_name: Option<Pattern>,
    pub target_pids: Vec<u32>,
    /// `discovery.*`: the selector lists.
    pub discovery: Discovery,
    /// Keys Beyla defines that the file sets and Sonde does not apply yet (one warning).
    pub unimplemented_keys: Vec<String>,
    /// Ports of the OTLP endpoints on this host (`discovery::local_collector_ports`): a
    /// process listening on one is the collector Sonde exports to, never selected by
    /// discovery.
    pub collector_ports: Vec<u16>,
    /// Discovery (by port or executable) only selects processes whose real and effective uid
    /// are both in this list; empty: any uid.
    pub discovery_uids: Vec<u32>,
    /// Discovery never selects processes whose real or effective uid is in this list.
    pub discovery_exclude_uids: Vec<u32>,
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub control_socket: PathBuf,
    /// Single-host mode: the user (name or uid) `sonde` switches to after start-up, keeping
    /// only its run-time capabilities (`loader.user`).
    pub loader_user: String,
    pub processor: ProcessorSettings,
    pub ebpf: EbpfSettings,
    /// Seconds between kernel counter reports.
    pub stats_interval_secs: u32,
    /// `metrics.features` as written (the families it turns on are in `network` and
    /// `processes`).
    pub metrics_features: Vec<String>,
    /// `network.*`: flow metrics.
    pub network: NetworkSettings,
    /// `processes.*`: process metrics.
    pub processes: ProcessMetricsSettings,
    /// `discovery.exclude_otel_instrumented_services`: stop capturing a process once it is
    /// seen exporting its own OpenTelemetry telemetry (OTLP calls from its SDK).
    pub exclude_otel_instrumented_services: bool,
}

/// `discovery.default_exclude_instrument`: Sonde's binaries, OpenTelemetry collectors and the
/// reference system's agents.
pub const DEFAULT_EXCLUDE: &str = "[{exe_path: '{*/sonde,*/sonde-loader,*/sonde-processor,*/otelcol*,*/beyla,*/obi,*/alloy,*/ebpf-instrument}'}]";

/// Ports selected when the configuration selects nothing.
pub const DEFAULT_OPEN_PORTS: &str = "80,443,3000,5000,8000-8999";

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sonde/control.sock";

impl Config {
    /// Every field unset; `SHARED.apply_defaults` fills in the embedded defaults.
    pub(crate) fn blank() -> Config {
        Config {
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            open_port: None,
            auto_target_exe: None,
            executable_name: None,
            target_pids: Vec::new(),
            discovery: Discovery::default(),
            unimplemented_keys: Vec::new(),
            collector_ports: Vec::new(),
            discovery_uids: Vec::new(),
            discovery_exclude_uids: Vec::new(),
            service_name: None,
            service_namespace: None,
            control_socket: PathBuf::new(),
            loader_user: String::new(),
            processor: ProcessorSettings {
                user: String::new(),
                group: None,
                binary: None,
                cgroup: None,
                allowed_uids: Vec::new(),
                landlock: LandlockMode::BestEffort,
                insecure_no_landlock: false,
                scheduling: Scheduling::Batch,
            },
            ebpf: EbpfSettings {
                ring_buffer_bytes: 0,
                max_connections: 0,
                tls: false,
                max_transaction_time: std::time::Duration::ZERO,
                context_propagation: ContextPropagation::Disabled,
                context_propagation_notes: Vec::new(),
                cgroup_root: None,
            },
            stats_interval_secs: 0,
            metrics_features: Vec::new(),
            network: NetworkSettings::blank(),
            processes: ProcessMetricsSettings {
                enable: false,
                interval: std::time::Duration::ZERO,
            },
            exclude_otel_instrumented_services: false,
        }
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
        self.has_top_level_selector()
            || !self.target_pids.is_empty()
            || !self.discovery.include().is_empty()
    }

    /// True when `open_port`, `auto_target_exe` or `executable_name` is set: together they
    /// form one selector (ANDed inside it), ORed with the discovery lists.
    pub fn has_top_level_selector(&self) -> bool {
        self.open_port.is_some() || self.auto_target_exe.is_some() || self.executable_name.is_some()
    }

    /// Every port a selector in force names (the top-level `open_port`, the discovery
    /// selectors' and the exclude selectors', so an exclusion by port is seen): the listeners
    /// the loader must watch. None when no selector names one.
    pub fn listen_ports(&self) -> Option<PortSet> {
        let sets = self.open_port.iter().chain(
            self.discovery
                .include()
                .iter()
                .chain(self.discovery.exclude())
                .filter(|s| s.inert().is_none())
                .filter_map(|s| s.open_ports.as_ref()),
        );
        // And the local collector's ports, so a process listening there is seen and excluded.
        let collectors: Vec<String> = self.collector_ports.iter().map(u16::to_string).collect();
        let collectors = PortSet::parse("collector ports", &collectors.join(",")).ok();
        PortSet::union(sets.chain(collectors.as_ref()))
    }

    /// True when a selector in force decides on the executable (or on anything but ports), so
    /// every `execve` must be reported, not only those of selected processes.
    pub fn needs_exec_notices(&self) -> bool {
        self.auto_target_exe.is_some()
            || self.executable_name.is_some()
            || self
                .discovery
                .include()
                .iter()
                .filter(|s| s.inert().is_none())
                .any(|s| s.exe_path.is_some() || s.open_ports.is_none())
    }

    /// What to warn about once at start: keys accepted but not applied, features accepted
    /// but not implemented, then the discovery lists' warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.unimplemented_keys.is_empty() {
            out.push(format!(
                "accepted but not implemented yet, ignored: {}",
                self.unimplemented_keys.join(", ")
            ));
        }
        let unimplemented: Vec<&str> = self
            .metrics_features
            .iter()
            .map(String::as_str)
            .filter(|f| !crate::host_metrics::IMPLEMENTED_FEATURES.contains(f))
            .collect();
        if !unimplemented.is_empty() {
            out.push(format!(
                "metrics.features: not implemented yet, ignored: {}",
                unimplemented.join(", ")
            ));
        }
        out.extend(self.ebpf.context_propagation_notes.iter().cloned());
        out.extend(self.discovery.warnings());
        out
    }
}

const PIDS: &str = "process ids (a list, or comma-separated)";
const UIDS: &str = "user ids (a list, or comma-separated)";

fn numbers(
    input: &crate::source::Input<'_>,
    expected: &'static str,
) -> Result<Vec<u32>, crate::ConfigError> {
    input
        .list(expected)?
        .iter()
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| input.invalid(p, expected))
        })
        .collect()
}

/// The shared settings, in the order `--print-config` shows them.
pub static SHARED: Table<Config> = Table(&[
    &[
        Setting {
            key: "log_level",
            env: &[var("BEYLA_LOG_LEVEL")],
            flag: "",
            default: Some("info"),
            unset: "",
            doc: "`error`, `warn`, `info`, `debug`, `trace` (`RUST_LOG` overrides with a full filter)",
            secret: false,
            apply: |c, i| {
                c.log_level = LogLevel::parse(i.key, &i.text("a log level")?)?;
                Ok(())
            },
            show: |c| show::text(c.log_level.as_str()),
        },
        Setting {
            key: "log_format",
            env: &[var("BEYLA_LOG_FORMAT")],
            flag: "",
            default: Some("text"),
            unset: "",
            doc: "`text` (ANSI colour only when stderr is a terminal) or `json` (one object per line: `timestamp`, `level`, `message`, fields)",
            secret: false,
            apply: |c, i| {
                c.log_format = LogFormat::parse(i.key, &i.text("a log format")?)?;
                Ok(())
            },
            show: |c| show::text(c.log_format.as_str()),
        },
        Setting {
            key: "open_port",
            env: &[var("BEYLA_OPEN_PORT")],
            flag: "--open-port",
            default: None,
            unset: "see below",
            doc: "instrument processes listening on these TCP ports: `8080`, `80,443`, `8000-8999`",
            secret: false,
            apply: |c, i| {
                c.open_port = Some(PortSet::parse(i.key, &i.text("ports")?)?);
                Ok(())
            },
            show: |c| c.open_port.as_ref().and_then(show::text),
        },
        Setting {
            key: "auto_target_exe",
            env: &[var("OTEL_GO_AUTO_TARGET_EXE"), var("BEYLA_AUTO_TARGET_EXE")],
            flag: "--exe",
            default: None,
            unset: "none",
            doc: "glob on the executable path, e.g. `*/nginx`",
            secret: false,
            apply: |c, i| {
                c.auto_target_exe = Some(ExeGlob::parse(i.key, &i.text("a glob")?)?);
                Ok(())
            },
            show: |c| {
                c.auto_target_exe
                    .as_ref()
                    .and_then(|g| show::text(&g.pattern))
            },
        },
        Setting {
            key: "executable_name",
            env: &[var("BEYLA_EXECUTABLE_NAME")],
            flag: "",
            default: None,
            unset: "none",
            doc: "Beyla's older form of `auto_target_exe`: an unanchored regular expression on the executable path",
            secret: false,
            apply: |c, i| {
                c.executable_name = Some(Pattern::parse(
                    i.key,
                    &i.text("a regular expression")?,
                    Syntax::Regex,
                )?);
                Ok(())
            },
            show: |c| c.executable_name.as_ref().and_then(|p| show::text(&p.text)),
        },
        Setting {
            key: "target_pids",
            env: &[var("BEYLA_TARGET_PID")],
            flag: "--pid (repeatable)",
            default: None,
            unset: "none",
            doc: "instrument these process ids (the variable: comma-separated)",
            secret: false,
            apply: |c, i| {
                c.target_pids = numbers(&i, PIDS)?;
                Ok(())
            },
            show: |c| show::numbers(&c.target_pids),
        },
        Setting {
            key: "discovery_uids",
            env: &[var("SONDE_DISCOVERY_UIDS")],
            flag: "",
            default: None,
            unset: "any uid",
            doc: "`open_port` and `auto_target_exe` select only processes whose real and effective uid are both listed (e.g. `[0, 33]`); `target_pids` is not filtered",
            secret: false,
            apply: |c, i| {
                c.discovery_uids = numbers(&i, UIDS)?;
                Ok(())
            },
            show: |c| show::numbers(&c.discovery_uids),
        },
        Setting {
            key: "discovery_exclude_uids",
            env: &[var("SONDE_DISCOVERY_EXCLUDE_UIDS")],
            flag: "",
            default: None,
            unset: "none",
            doc: "`open_port` and `auto_target_exe` never select a process whose real or effective uid is listed (e.g. local users, so their listeners on a default port are not captured)",
            secret: false,
            apply: |c, i| {
                c.discovery_exclude_uids = numbers(&i, UIDS)?;
                Ok(())
            },
            show: |c| show::numbers(&c.discovery_exclude_uids),
        },
        Setting {
            key: "discovery.instrument",
            env: &[],
            flag: "",
            default: None,
            unset: "none",
            doc: "selectors of the processes to instrument (see \"Discovery and service names\"): `name`, `namespace`, `open_ports`, `exe_path` (glob), `containers_only`, `k8s_*` (globs, evaluated by the processor within the loader's candidates); fields ANDed, selectors ORed",
            secret: false,
            apply: |c, i| {
                c.discovery.instrument = discovery::parse_list(&i, Syntax::Glob)?;
                Ok(())
            },
            show: |c| discovery::show_list(&c.discovery.instrument),
        },
        Setting {
            key: "discovery.exclude_instrument",
            env: &[],
            flag: "",
            default: None,
            unset: "none",
            doc: "selectors (globs) of processes never instrumented by discovery",
            secret: false,
            apply: |c, i| {
                c.discovery.exclude_instrument = discovery::parse_list(&i, Syntax::Glob)?;
                Ok(())
            },
            show: |c| discovery::show_list(&c.discovery.exclude_instrument),
        },
        Setting {
            key: "discovery.services",
            env: &[],
            flag: "",
            default: None,
            unset: "none",
            doc: "the older form of `instrument`: string fields are unanchored regular expressions; ignored (with a warning) when `instrument` is set",
            secret: false,
            apply: |c, i| {
                c.discovery.services = discovery::parse_list(&i, Syntax::Regex)?;
                Ok(())
            },
            show: |c| discovery::show_list(&c.discovery.services),
        },
        Setting {
            key: "discovery.exclude_services",
            env: &[],
            flag: "",
            default: None,
            unset: "none",
            doc: "the older form of `exclude_instrument` (regular expressions); ignored when `instrument` is set",
            secret: false,
            apply: |c, i| {
                c.discovery.exclude_services = discovery::parse_list(&i, Syntax::Regex)?;
                Ok(())
            },
            show: |c| discovery::show_list(&c.discovery.exclude_services),
        },
        Setting {
            key: "discovery.default_exclude_instrument",
            env: &[],
            flag: "",
            default: Some(DEFAULT_EXCLUDE),
            unset: "",
            doc: "selectors (globs) always excluded from discovery: Sonde itself, OpenTelemetry collectors and other agents; `[]` excludes nothing",
            secret: false,
            apply: |c, i| {
                c.discovery.default_exclude_instrument = discovery::parse_list(&i, Syntax::Glob)?;
                Ok(())
            },
            show: |c| {
                Some(
                    discovery::show_list(&c.discovery.default_exclude_instrument)
                        .unwrap_or(serde_yaml_ng::Value::Sequence(Vec::new())),
                )
            },
        },
        Setting {
            key: "service_name",
            env: &[
                var(naming::RESOURCE_ATTRIBUTES),
                var("BEYLA_SERVICE_NAME"),
                var("OTEL_SERVICE_NAME"),
            ],
            flag: "",
            default: None,
            unset: "see \"Discovery and service names\"",
            doc: "the service name of the processes `open_port`, `auto_target_exe` and `target_pids` select (the `name` of that top-level selector); `OTEL_RESOURCE_ATTRIBUTES`: its `service.name`",
            secret: false,
            apply: |c, i| {
                if i.key == naming::RESOURCE_ATTRIBUTES {
                    let attrs = naming::parse_resource_attributes(&i.text("attributes")?);
                    if let Some(n) = naming::attribute(&attrs, "service.name") {
                        c.service_name = Some(n);
                    }
                    return Ok(());
                }
                c.service_name = Some(non_empty(i.key, i.text("a name")?)?);
                Ok(())
            },
            show: |c| c.service_name.as_ref().and_then(show::text),
        },
        Setting {
            key: "service_namespace",
            env: &[
                var(naming::RESOURCE_ATTRIBUTES),
                var("BEYLA_SERVICE_NAMESPACE"),
            ],
            flag: "",
            default: None,
            unset: "see \"Discovery and service names\"",
            doc: "the service namespace of the processes the top-level selector selects; `OTEL_RESOURCE_ATTRIBUTES`: its `service.namespace`",
            secret: false,
            apply: |c, i| {
                if i.key == naming::RESOURCE_ATTRIBUTES {
                    let attrs = naming::parse_resource_attributes(&i.text("attributes")?);
                    if let Some(n) = naming::attribute(&attrs, "service.namespace") {
                        c.service_namespace = Some(n);
                    }
                    return Ok(());
                }
                c.service_namespace = Some(non_empty(i.key, i.text("a name")?)?);
                Ok(())
            },
            show: |c| c.service_namespace.as_ref().and_then(show::text),
        },
        Setting {
            key: "control_socket",
            env: &[var("SONDE_CONTROL_SOCKET")],
            flag: "--control (processor)",
            default: Some(DEFAULT_CONTROL_SOCKET),
            unset: "",
            doc: "the loader's `SOCK_SEQPACKET` control socket (absolute path)",
            secret: false,
            apply: |c, i| {
                let path = PathBuf::from(i.text("a path")?);
                if !path.is_absolute() {
                    return Err(i.invalid(path.display(), "an absolute path"));
                }
                c.control_socket = path;
                Ok(())
            },
            show: |c| show::text(c.control_socket.display()),
        },
        Setting {
            key: "loader.user",
            env: &[var("SONDE_LOADER_USER")],
            flag: "",
            default: Some("sonde-loader"),
            unset: "",
            doc: "single-host mode: the user (name or uid) `sonde` switches to once the programs are attached, keeping only its run-time capabilities; it must exist and differ from `processor.user`. `root` keeps uid 0 (insecure; `--audit` flags it)",
            secret: false,
            apply: |c, i| {
                c.loader_user = non_empty(i.key, i.text("a user")?)?;
                Ok(())
            },
            show: |c| show::text(&c.loader_user),
        },
        Setting {
            key: "processor.user",
            env: &[var("SONDE_PROCESSOR_USER")],
            flag: "",
            default: Some("nobody"),
            unset: "",
            doc: "user (name or uid) the processor runs as in single-host mode, and the uid allowed to connect; root is refused. `\"*\"`: any uid whose gid is `processor.group` may connect (systemd `DynamicUser=`, pods); the socket is then mode 0660 with that group; not valid in single-host mode",
            secret: false,
            apply: |c, i| {
                c.processor.user = non_empty(i.key, i.text("a user")?)?;
                Ok(())
            },
            show: |c| show::text(&c.processor.user),
        },
        Setting {
            key: "processor.group",
            env: &[],
            flag: "",
            default: None,
            unset: "the user's primary group",
            doc: "group (name or gid); when set, the connecting peer's gid must match",
            secret: false,
            apply: |c, i| {
                c.processor.group = Some(non_empty(i.key, i.text("a group")?)?);
                Ok(())
            },
            show: |c| c.processor.group.as_ref().and_then(show::text),
        },
        Setting {
            key: "processor.binary",
            env: &[],
            flag: "",
            default: None,
            unset: "`sonde-processor` next to the loader",
            doc: "processor binary for single-host mode; in split mode, when set, a connecting peer's executable must be this file (device and inode)",
            secret: false,
            apply: |c, i| {
                c.processor.binary = Some(PathBuf::from(non_empty(i.key, i.text("a path")?)?));
                Ok(())
            },
            show: |c| {
                c.processor
                    .binary
                    .as_ref()
                    .and_then(|p| show::text(p.display()))
            },
        },
        Setting {
            key: "processor.cgroup",
            env: &[],
            flag: "",
            default: None,
            unset: "not checked",
            doc: "split mode: a connecting peer's cgroup (v2 path as `/proc/<pid>/cgroup` shows it) must be this one or lie below it, e.g. `/system.slice/sonde-processor.service`",
            secret: false,
            apply: |c, i| {
                let v = i.text("a cgroup path")?;
                if !v.starts_with('/') || v.contains(char::is_whitespace) {
                    return Err(i.invalid(v, "an absolute cgroup path without spaces"));
                }
                c.processor.cgroup = Some(v.trim_end_matches('/').to_string());
                Ok(())
            },
            show: |c| c.processor.cgroup.as_ref().and_then(show::text),
        },
        Setting {
            key: "processor.allowed_uids",
            env: &[],
            flag: "",
            default: None,
            unset: "`[]`",
            doc: "further uids allowed to connect (e.g. a systemd `DynamicUser`)",
            secret: false,
            apply: |c, i| {
                c.processor.allowed_uids = numbers(&i, UIDS)?;
                Ok(())
            },
            show: |c| show::numbers(&c.processor.allowed_uids),
        },
        Setting {
            key: "processor.landlock",
            env: &[var("SONDE_LANDLOCK")],
            flag: "--landlock (processor)",
            default: Some("best_effort"),
            unset: "",
            doc: "`best_effort`: enforce the Landlock rights the kernel has (down to ABI 1; on a kernel without Landlock the processor starts under seccomp alone with one warning) and log once what is and is not enforced; `required`: refuse to start unless the whole ruleset (ABI 6, Linux 6.12) is enforced; `off`: no ruleset (insecure, flagged by `--audit`; processor flag `--insecure-no-landlock`). See `security.md`",
            secret: false,
            apply: |c, i| {
                c.processor.landlock = LandlockMode::parse(i.key, &i.text("a Landlock mode")?)?;
                Ok(())
            },
            show: |c| show::text(c.processor.landlock.as_str()),
        },
        Setting {
            key: "processor.insecure_no_landlock",
            env: &[var("SONDE_INSECURE_NO_LANDLOCK")],
            flag: "",
            default: Some("false"),
            unset: "",
            doc: "older name of `processor.landlock: best_effort`: `true` lowers `required` to `best_effort` (it does not turn Landlock off)",
            secret: false,
            apply: |c, i| {
                c.processor.insecure_no_landlock = parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.processor.insecure_no_landlock),
        },
        Setting {
            key: "processor.scheduling",
            env: &[var("SONDE_PROCESSOR_SCHEDULING")],
            flag: "",
            default: Some("batch"),
            unset: "",
            doc: "the processor's scheduling policy. `batch`: its threads run under `SCHED_BATCH`, the same CPU share as any process, but a wake-up never preempts the task on the CPU (the instrumented application), so on a busy host it takes the ring's records in larger batches (no privilege needed; see BENCHMARKS.md). `inherit`: the policy it was started with (e.g. systemd's `CPUSchedulingPolicy=`)",
            secret: false,
            apply: |c, i| {
                c.processor.scheduling = Scheduling::parse(i.key, &i.text("a scheduling policy")?)?;
                Ok(())
            },
            show: |c| show::text(c.processor.scheduling.as_str()),
        },
        Setting {
            key: "ebpf.ring_buffer_bytes",
            env: &[],
            flag: "",
            default: Some("8388608"),
            unset: "",
            doc: "event ring buffer size: a power of two, 4096 … 1073741824",
            secret: false,
            apply: |c, i| {
                const EXPECTED: &str = "a power of two between 4096 and 1073741824";
                let text = i.text(EXPECTED)?;
                let n: u32 = parse_in_range(i.key, &text, 4096..=1 << 30, EXPECTED)?;
                if !n.is_power_of_two() {
                    return Err(invalid(i.key, text, EXPECTED));
                }
                c.ebpf.ring_buffer_bytes = n;
                Ok(())
            },
            show: |c| show::number(c.ebpf.ring_buffer_bytes),
        },
        Setting {
            key: "ebpf.max_connections",
            env: &[],
            flag: "",
            default: Some("16384"),
            unset: "",
            doc: "connections tracked at once (LRU beyond), 64 … 1048576; also sizes the close path's filter (four 8-byte slots per connection, 65,536 … 1,048,576 slots)",
            secret: false,
            apply: |c, i| {
                const EXPECTED: &str = "a number between 64 and 1048576";
                c.ebpf.max_connections =
                    parse_in_range(i.key, &i.text(EXPECTED)?, 64..=1 << 20, EXPECTED)?;
                Ok(())
            },
            show: |c| show::number(c.ebpf.max_connections),
        },
        Setting {
            key: "ebpf.tls",
            env: &[var("SONDE_TLS")],
            flag: "",
            default: Some("true"),
            unset: "",
            doc: "capture HTTPS through OpenSSL uprobes (`libssl.so*`, and executables that export `SSL_write` such as `node`), attached per selected process with uprobe-multi links; the loader's run-time seccomp policy then allows `BPF_LINK_CREATE` (see security.md)",
            secret: false,
            apply: |c, i| {
                c.ebpf.tls = parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.ebpf.tls),
        },
        Setting {
            key: "ebpf.max_transaction_time",
            env: &[var("BEYLA_BPF_MAX_TRANSACTION_TIME")],
            flag: "",
            default: Some("5s"),
            unset: "",
            doc: "how long the processor holds a client span of a serving process for the server span it was made in (parent and child inside one process, see \"Connected traces\"); `0s` turns that linking off",
            secret: false,
            apply: |c, i| {
                c.ebpf.max_transaction_time = parse_duration(i.key, &i.text("a duration")?)?;
                Ok(())
            },
            show: |c| show::text(format_duration(c.ebpf.max_transaction_time)),
        },
        Setting {
            key: "ebpf.context_propagation",
            env: &[var("BEYLA_BPF_CONTEXT_PROPAGATION")],
            flag: "",
            default: Some("disabled"),
            unset: "",
            doc: "`headers`: the kernel adds a W3C `traceparent` (the client span's ids) to cleartext HTTP/1 requests of selected processes that carry none, through `sock_ops` + `sk_msg` programs on the cgroup v2 root; the loader then holds `CAP_NET_ADMIN` (see security.md, \"Context propagation\"). `disabled`: nothing is attached. The reference system's `all` and `headers,tcp` act as `headers`, `tcp` and `ip` as `disabled`, each with a warning",
            secret: false,
            apply: |c, i| {
                let (mode, note) = ContextPropagation::parse(i.key, &i.text("a mode")?)?;
                c.ebpf.context_propagation = mode;
                c.ebpf
                    .context_propagation_notes
                    .retain(|n| !n.starts_with("ebpf.context_propagation"));
                c.ebpf.context_propagation_notes.extend(note);
                Ok(())
            },
            show: |c| show::text(c.ebpf.context_propagation.as_str()),
        },
        Setting {
            key: "ebpf.enable_context_propagation",
            env: &[var("BEYLA_BPF_ENABLE_CONTEXT_PROPAGATION")],
            flag: "",
            default: None,
            unset: "not set",
            doc: "deprecated (the reference system's older switch): `true` acts as `ebpf.context_propagation: headers`, with a warning; `false` changes nothing",
            secret: false,
            apply: |c, i| {
                if parse_bool(i.key, &i.text("a boolean")?)? {
                    c.ebpf.context_propagation = ContextPropagation::Headers;
                    c.ebpf.context_propagation_notes.push(format!(
                        "{}: deprecated; read as `ebpf.context_propagation: headers` (HTTP/1 `traceparent` headers only)",
                        i.key
                    ));
                }
                Ok(())
            },
            show: |_| None,
        },
        Setting {
            key: "ebpf.cgroup_root",
            env: &[var("SONDE_CGROUP_ROOT")],
            flag: "",
            default: None,
            unset: "the cgroup v2 mount found in `/proc/self/mountinfo`",
            doc: "the cgroup v2 directory the context-propagation programs attach to (only with `ebpf.context_propagation: headers`); the host's root, so every process's connections are seen (in Kubernetes: the host's `/sys/fs/cgroup` mounted into the loader's container)",
            secret: false,
            apply: |c, i| {
                c.ebpf.cgroup_root = Some(PathBuf::from(non_empty(i.key, i.text("a directory")?)?));
                Ok(())
            },
            show: |c| {
                c.ebpf
                    .cgroup_root
                    .as_ref()
                    .and_then(|p| show::text(p.display()))
            },
        },
        Setting {
            key: "discovery.exclude_otel_instrumented_services",
            env: &[var("BEYLA_EXCLUDE_OTEL_INSTRUMENTED_SERVICES")],
            flag: "",
            default: Some("true"),
            unset: "",
            doc: "stop capturing a process once it is seen sending its own OTLP export calls (an OpenTelemetry SDK in it reports its requests already; the processor asks the loader to narrow it, logged once). Its export calls never become spans either way",
            secret: false,
            apply: |c, i| {
                c.exclude_otel_instrumented_services = parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.exclude_otel_instrumented_services),
        },
        Setting {
            key: "stats_interval_secs",
            env: &[],
            flag: "",
            default: Some("10"),
            unset: "",
            doc: "seconds between kernel counter reports (loader log, processor stats), ≥ 1",
            secret: false,
            apply: |c, i| {
                const EXPECTED: &str = "a number of seconds >= 1";
                c.stats_interval_secs =
                    parse_in_range(i.key, &i.text(EXPECTED)?, 1..=u32::MAX, EXPECTED)?;
                Ok(())
            },
            show: |c| show::number(c.stats_interval_secs),
        },
    ],
    HOST_METRICS,
]);
