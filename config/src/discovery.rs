//! Beyla's discovery configuration: lists of selectors that choose the processes to
//! instrument, with the reference system's semantics.
//!
//! - `discovery.instrument` / `exclude_instrument`: string fields are **globs** (`*` also
//!   crosses `/`, `{a,b}` alternatives).
//! - `discovery.services` / `exclude_services` (the older form): string fields are
//!   **unanchored regular expressions**. When `instrument` is set they are ignored, with a
//!   warning.
//! - Fields inside one selector are ANDed; selectors are ORed. A process matching any exclude
//!   selector (or `default_exclude_instrument`) is not selected by discovery.
//!
//! Kubernetes fields (`k8s_*`): the loader holds no API token and cannot evaluate them. A
//! selector that has any makes *candidates* of the processes in a pod's cgroup that match its
//! other fields; the processor, which has the pod metadata, selects among them (see the
//! loader's `capture` and the processor's `kube::select`). With Kubernetes metadata off the
//! processor says so once and such a selector selects nothing.
//! Fields Beyla defines that Sonde does not evaluate yet (`languages`, `cmd_args`, …) make their
//! selector select nothing too, rather than select more than the operator asked for.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use crate::{
    error::{ConfigError, invalid},
    source::{Input, Raw},
    values::{PortSet, parse_bool},
};

/// How a selector list's string fields match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `instrument`: globs.
    Glob,
    /// `services`: unanchored regular expressions.
    Regex,
}

/// One compiled pattern, with its text.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub text: String,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Glob(globset::GlobMatcher),
    Regex(regex::Regex),
}

impl Pattern {
    pub fn parse(key: &str, text: &str, syntax: Syntax) -> Result<Pattern, ConfigError> {
        let matcher = match syntax {
            Syntax::Glob => Matcher::Glob(
                globset::GlobBuilder::new(text)
                    .literal_separator(false)
                    .build()
                    .map_err(|_| invalid(key, text, "a glob, e.g. */nginx or {a,b}*"))?
                    .compile_matcher(),
            ),
            Syntax::Regex => Matcher::Regex(
                regex::RegexBuilder::new(text)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|_| invalid(key, text, "a regular expression (unanchored)"))?,
            ),
        };
        Ok(Pattern {
            text: text.to_string(),
            matcher,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        match &self.matcher {
            Matcher::Glob(g) => g.is_match(s),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

/// The Kubernetes fields of a selector: kept, typed and compiled, not evaluated yet.
#[derive(Debug, Clone, Default)]
pub struct K8sSelector {
    /// (field name, pattern) for `k8s_namespace`, `k8s_pod_name`, `k8s_deployment_name`, ….
    pub fields: Vec<(&'static str, Pattern)>,
    pub pod_labels: BTreeMap<String, Pattern>,
    pub pod_annotations: BTreeMap<String, Pattern>,
}

impl K8sSelector {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.pod_labels.is_empty() && self.pod_annotations.is_empty()
    }
}

/// One selector: its criteria (ANDed) and the names it gives what it selects.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Its key path, e.g. `discovery.instrument[1]` (for logs and warnings).
    pub key: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub open_ports: Option<PortSet>,
    pub exe_path: Option<Pattern>,
    pub containers_only: bool,
    pub k8s: K8sSelector,
    /// Fields Beyla defines that Sonde does not evaluate or apply yet, with their values
    /// (printed back as they were).
    pub unimplemented: Vec<(String, Value)>,
    /// `open_port` written for `open_ports`.
    pub open_port_alias: bool,
}

/// Selector fields Beyla defines that would narrow the selection: a selector using one selects
/// nothing until Sonde evaluates it.
const UNEVALUATED_CRITERIA: &[&str] = &[
    "exe_path_regexp",
    "cmd_args",
    "languages",
    "target_pids",
    "container_name",
];
/// Selector fields Beyla defines that configure what is selected (per-service exports,
/// sampling, routes, metrics): ignored with a warning.
const UNAPPLIED_OPTIONS: &[&str] = &["exports", "sampler", "routes", "metrics"];

const K8S_FIELDS: &[&str] = &[
    "k8s_namespace",
    "k8s_pod_name",
    "k8s_deployment_name",
    "k8s_replicaset_name",
    "k8s_daemonset_name",
    "k8s_statefulset_name",
    "k8s_owner_name",
];

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Selector {
    /// Parses one list item at `key` (`discovery.services[0]`).
    pub fn parse(key: &str, item: &Value, syntax: Syntax) -> Result<Selector, ConfigError> {
        let Value::Mapping(map) = item else {
            return Err(invalid(
                key,
                "<not a mapping>",
                "a mapping of selector fields",
            ));
        };
        let mut s = Selector {
            key: key.to_string(),
            name: None,
            namespace: None,
            open_ports: None,
            exe_path: None,
            containers_only: false,
            k8s: K8sSelector::default(),
            unimplemented: Vec::new(),
            open_port_alias: false,
        };
        for (k, v) in map {
            let Some(field) = k.as_str() else {
                return Err(invalid(key, format!("{k:?}"), "string field names"));
            };
            let path = format!("{key}.{field}");
            let text = |expected: &'static str| {
                scalar(v)
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| invalid(&path, format!("{v:?}"), expected))
            };
            if v.is_null() {
                continue;
            }
            match field {
                "name" => s.name = Some(text("a name")?),
                "namespace" => s.namespace = Some(text("a namespace")?),
                "open_ports" | "open_port" => {
                    let ports = match v {
                        Value::Sequence(items) => items
                            .iter()
                            .map(scalar)
                            .collect::<Option<Vec<_>>>()
                            .map(|l| l.join(","))
                            .ok_or_else(|| invalid(&path, format!("{v:?}"), "ports"))?,
                        _ => text("ports")?,
                    };
                    s.open_ports = Some(PortSet::parse(&path, &ports)?);
                    s.open_port_alias |= field == "open_port";
                }
                "exe_path" => {
                    s.exe_path = Some(Pattern::parse(&path, &text("a pattern")?, syntax)?)
                }
                "containers_only" => s.containers_only = parse_bool(&path, &text("a boolean")?)?,
                "k8s_pod_labels" | "k8s_pod_annotations" => {
                    let Value::Mapping(m) = v else {
                        return Err(invalid(
                            &path,
                            format!("{v:?}"),
                            "a mapping of names to patterns",
                        ));
                    };
                    let mut out = BTreeMap::new();
                    for (lk, lv) in m {
                        let (Some(lk), Some(lv)) = (scalar(lk), scalar(lv)) else {
                            return Err(invalid(
                                &path,
                                format!("{m:?}"),
                                "a mapping of names to patterns",
                            ));
                        };
                        let p = Pattern::parse(&format!("{path}.{lk}"), &lv, syntax)?;
                        out.insert(lk, p);
                    }
                    if field == "k8s_pod_labels" {
                        s.k8s.pod_labels = out;
                    } else {
                        s.k8s.pod_annotations = out;
                    }
                }
                f if K8S_FIELDS.contains(&f) => {
                    let name = K8S_FIELDS
                        .iter()
                        .find(|&&n| n == f)
                        .copied()
                        .unwrap_or("k8s");
                    s.k8s
                        .fields
                        .push((name, Pattern::parse(&path, &text("a pattern")?, syntax)?));
                }
                f if UNEVALUATED_CRITERIA.contains(&f) || UNAPPLIED_OPTIONS.contains(&f) => {
                    s.unimplemented.push((f.to_string(), v.clone()));
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        key: path,
                        value: String::new(),
                        expected: "a selector field: name, namespace, open_ports, exe_path, containers_only, k8s_namespace, k8s_pod_name, k8s_deployment_name, k8s_replicaset_name, k8s_daemonset_name, k8s_statefulset_name, k8s_owner_name, k8s_pod_labels, k8s_pod_annotations (unknown field)",
                    });
                }
            }
        }
        Ok(s)
    }

    /// Why this selector, in an exclude list, excludes nothing yet, if it does not: as
    /// [`Self::inert`], and Kubernetes fields are not evaluated in exclusions (the loader
    /// would otherwise exclude on the selector's other fields alone, wider than written).
    pub fn inert_exclusion(&self) -> Option<String> {
        if !self.k8s.is_empty() {
            Some("needs Kubernetes metadata, not evaluated in exclusions".into())
        } else {
            self.inert()
        }
    }

    /// Why this selector selects nothing yet, if it does not. A selector with Kubernetes
    /// fields selects (through the processor's choice among the loader's candidates).
    pub fn inert(&self) -> Option<String> {
        let unevaluated: Vec<&str> = self
            .unimplemented
            .iter()
            .map(|(f, _)| f.as_str())
            .filter(|f| UNEVALUATED_CRITERIA.contains(f))
            .collect();
        if !unevaluated.is_empty() {
            Some(format!(
                "uses {}, which Sonde does not evaluate yet",
                unevaluated.join(", ")
            ))
        } else if self.open_ports.is_none()
            && self.exe_path.is_none()
            && !self.containers_only
            && self.k8s.is_empty()
        {
            Some("has no criterion (open_ports, exe_path, containers_only, k8s_*)".into())
        } else {
            None
        }
    }

    /// The selector as YAML, as it reads back.
    pub fn to_value(&self) -> Value {
        let mut m = Mapping::new();
        let mut put = |k: &str, v: Value| {
            m.insert(Value::String(k.into()), v);
        };
        if let Some(n) = &self.name {
            put("name", Value::String(n.clone()));
        }
        if let Some(n) = &self.namespace {
            put("namespace", Value::String(n.clone()));
        }
        if let Some(p) = &self.open_ports {
            put("open_ports", Value::String(p.to_string()));
        }
        if let Some(p) = &self.exe_path {
            put("exe_path", Value::String(p.text.clone()));
        }
        if self.containers_only {
            put("containers_only", Value::Bool(true));
        }
        for (f, p) in &self.k8s.fields {
            put(f, Value::String(p.text.clone()));
        }
        for (f, map) in [
            ("k8s_pod_labels", &self.k8s.pod_labels),
            ("k8s_pod_annotations", &self.k8s.pod_annotations),
        ] {
            if !map.is_empty() {
                let inner: Mapping = map
                    .iter()
                    .map(|(k, p)| (Value::String(k.clone()), Value::String(p.text.clone())))
                    .collect();
                put(f, Value::Mapping(inner));
            }
        }
        for (f, v) in &self.unimplemented {
            put(f, v.clone());
        }
        Value::Mapping(m)
    }
}

/// The discovery lists.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub instrument: Vec<Selector>,
    pub exclude_instrument: Vec<Selector>,
    pub services: Vec<Selector>,
    pub exclude_services: Vec<Selector>,
    /// Always applied (glob syntax): Sonde itself and the usual collectors and agents.
    pub default_exclude_instrument: Vec<Selector>,
}

impl Discovery {
    /// The selectors in force: `instrument` when set, else `services`.
    pub fn include(&self) -> &[Selector] {
        if self.instrument.is_empty() {
            &self.services
        } else {
            &self.instrument
        }
    }

    /// The exclude selectors in force (the list matching `include`, then the defaults).
    pub fn exclude(&self) -> impl Iterator<Item = &Selector> {
        let own = if self.instrument.is_empty() {
            &self.exclude_services
        } else {
            &self.exclude_instrument
        };
        own.iter().chain(&self.default_exclude_instrument)
    }

    /// Warnings about these lists, once at start: lists ignored, selectors that select (or
    /// exclude) nothing yet, aliases and fields accepted but not applied.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.instrument.is_empty()
            && (!self.services.is_empty() || !self.exclude_services.is_empty())
        {
            out.push(
                "discovery.instrument is set: discovery.services and discovery.exclude_services are ignored"
                    .to_string(),
            );
        }
        let ignored_lists = !self.instrument.is_empty();
        let lists: [(&[Selector], bool, bool); 5] = [
            (&self.instrument, false, false),
            (&self.exclude_instrument, true, false),
            (&self.services, false, ignored_lists),
            (&self.exclude_services, true, ignored_lists),
            (&self.default_exclude_instrument, true, false),
        ];
        for (list, exclude, ignored) in lists {
            if ignored {
                continue;
            }
            for s in list {
                if s.open_port_alias {
                    out.push(format!(
                        "{}: open_port is read as open_ports (the selector field's name)",
                        s.key
                    ));
                }
                let inert = if exclude {
                    s.inert_exclusion()
                } else {
                    s.inert()
                };
                if let Some(why) = inert {
                    let what = if exclude {
                        "excludes nothing"
                    } else {
                        "selects nothing"
                    };
                    out.push(format!("{}: {why}; selector {} {what}", s.key, s.key));
                }
                let options: Vec<&str> = s
                    .unimplemented
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .filter(|f| UNAPPLIED_OPTIONS.contains(f))
                    .collect();
                if !options.is_empty() {
                    out.push(format!(
                        "{}: {} not applied yet (accepted, ignored)",
                        s.key,
                        options.join(", ")
                    ));
                }
            }
        }
        out
    }
}

/// Parses a selector list setting: a YAML list of mappings in the file, or the same list as
/// YAML (flow) text in a variable or a default.
pub fn parse_list(i: &Input<'_>, syntax: Syntax) -> Result<Vec<Selector>, ConfigError> {
    const EXPECTED: &str = "a list of selectors (mappings of selector fields)";
    let value = match i.raw {
        Raw::Yaml(v) => v.clone(),
        Raw::Text(t) => {
            serde_yaml_ng::from_str::<Value>(t).map_err(|_| invalid(i.key, t, EXPECTED))?
        }
        Raw::List(l) if l.is_empty() => Value::Sequence(Vec::new()),
        _ => return Err(invalid(i.key, "<not a list of mappings>", EXPECTED)),
    };
    let items = match value {
        Value::Sequence(items) => items,
        Value::Null => Vec::new(),
        other => return Err(invalid(i.key, format!("{other:?}"), EXPECTED)),
    };
    items
        .iter()
        .enumerate()
        .map(|(n, item)| Selector::parse(&format!("{}[{n}]", i.key), item, syntax))
        .collect()
}

/// A selector list as YAML.
pub fn show_list(list: &[Selector]) -> Option<Value> {
    (!list.is_empty()).then(|| Value::Sequence(list.iter().map(Selector::to_value).collect()))
}

/// Beyla keys (dotted paths, each naming its whole subtree) that Sonde accepts without
/// applying them yet: one warning at start names those a file sets. Any other unknown key
/// still fails at start.
pub const UNIMPLEMENTED_KEYS: &[&str] = &[
    "shutdown_timeout",
    "enforce_sys_caps",
    "channel_buffer_len",
    "channel_send_timeout",
    "profile_port",
    "discovery.poll_interval",
    "discovery.min_process_age",
    "discovery.skip_go_specific_tracers",
    "discovery.bpf_pid_filter_off",
    "discovery.exclude_otel_instrumented_services_span_metrics",
    "discovery.default_otlp_grpc_port",
    "discovery.route_harvester_timeout",
    "discovery.disabled_route_harvesters",
    "discovery.route_harvester_advanced",
    "discovery.excluded_linux_system_paths",
    "discovery.survey",
    "ebpf.wakeup_len",
    "ebpf.batch_length",
    "ebpf.batch_timeout",
    "ebpf.http_request_timeout",
    "ebpf.go_http_client_buffer_timeout",
    "ebpf.track_request_headers",
    "ebpf.high_request_volume",
    "ebpf.heuristic_sql_detect",
    "ebpf.buffer_sizes",
    "ebpf.mysql_prepared_statements_cache_size",
    "ebpf.postgres_prepared_statements_cache_size",
    "ebpf.mongo_requests_cache_size",
    "ebpf.kafka_topic_uuid_cache_size",
    "ebpf.couchbase_db_cache_size",
    "ebpf.redis_db_cache",
    "ebpf.dns_request_timeout",
    "ebpf.traffic_control_backend",
    "ebpf.instrument_cuda",
    "ebpf.bpf_fs_path",
    "ebpf.maps_config",
    "ebpf.override_bpfloop_enabled",
    "ebpf.disable_black_box_cp",
    "ebpf.protocol_debug_print",
    "ebpf.bpf_debug",
    "ebpf.payload_extraction",
    "ebpf.log_enricher",
    "network",
    "stats",
    "processes",
    "internal_metrics",
    "grafana",
    "nodejs",
    "javaagent",
    "jvm_runtime_metrics",
    "health_check",
    "injector",
    "name_resolver",
    "filter",
    "metrics",
    "otel_traces_export.insecure_skip_verify",
    "otel_traces_export.instrumentations",
    "otel_traces_export.reporters_cache_len",
    "otel_traces_export.backoff_initial_interval",
    "otel_traces_export.backoff_max_interval",
    "otel_traces_export.backoff_max_elapsed_time",
    "otel_metrics_export.insecure_skip_verify",
    "otel_metrics_export.features",
    "otel_metrics_export.instrumentations",
    "otel_metrics_export.buckets",
    "otel_metrics_export.histogram_aggregation",
    "otel_metrics_export.ttl",
    "otel_metrics_export.reporters_cache_len",
    "prometheus_export.features",
    "prometheus_export.instrumentations",
    "prometheus_export.buckets",
    "prometheus_export.native_histogram",
    "prometheus_export.ttl",
    "prometheus_export.extra_resource_attributes",
    "prometheus_export.exemplar_filter",
    "prometheus_export.disable_build_info",
    "prometheus_export.service_cache_size",
    "attributes.kubernetes.informers_sync_timeout",
    "attributes.kubernetes.informers_resync_period",
    "attributes.kubernetes.disable_informers",
    "attributes.kubernetes.meta_restrict_local_node",
    "attributes.kubernetes.meta_cache_address",
    "attributes.kubernetes.resource_labels",
    "attributes.kubernetes.service_name_template",
    "attributes.kubernetes.reconnect_initial_interval",
    "attributes.instance_id",
    "attributes.host_id",
    "attributes.rename_unresolved_hosts",
    "attributes.rename_unresolved_hosts_outgoing",
    "attributes.rename_unresolved_hosts_incoming",
    "attributes.metric_span_names_limit",
    "attributes.extra_group_attributes",
];

/// True for a key on `UNIMPLEMENTED_KEYS` or inside one of its subtrees.
pub fn is_unimplemented(key: &str) -> bool {
    UNIMPLEMENTED_KEYS.iter().any(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The keys of `UNIMPLEMENTED_KEYS` a mapping at `prefix` sets (the loader's walk over the
/// processor's sections, which it otherwise skips).
pub fn unimplemented_in(value: &Value, prefix: &str, out: &mut Vec<String>) {
    let Value::Mapping(m) = value else {
        return;
    };
    for (k, v) in m {
        let Some(k) = k.as_str() else { continue };
        let key = format!("{prefix}.{k}");
        if UNIMPLEMENTED_KEYS.contains(&key.as_str()) {
            out.push(key);
        } else {
            unimplemented_in(v, &key, out);
        }
    }
}

/// The file keys and variables naming OTLP endpoints (the processor's sections, which the
/// loader otherwise skips).
const ENDPOINT_KEYS: [(&str, &str); 4] = [
    ("otel_traces_export", "endpoint"),
    ("otel_traces_export", "traces_endpoint"),
    ("otel_metrics_export", "endpoint"),
    ("otel_metrics_export", "metrics_endpoint"),
];
const ENDPOINT_VARS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
];

/// The ports of the OTLP endpoints on this host (loopback addresses, `localhost`) that the
/// file (`root`, its YAML) or the environment names: a process listening on one is the
/// collector Sonde exports to, and discovery never selects it.
pub fn local_collector_ports(root: Option<&Value>, env: &BTreeMap<String, String>) -> Vec<u16> {
    let mut urls: Vec<String> = ENDPOINT_VARS
        .iter()
        .filter_map(|v| env.get(*v).cloned())
        .collect();
    if let Some(root) = root {
        for (section, key) in ENDPOINT_KEYS {
            if let Some(url) = root.get(section).and_then(|s| s.get(key)).and_then(scalar) {
                urls.push(url);
            }
        }
    }
    let mut ports: Vec<u16> = urls.iter().filter_map(|u| local_port(u)).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The port of an `http://` / `https://` URL whose host is this host's loopback; the
/// scheme's port when none is written.
fn local_port(url: &str) -> Option<u16> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        return None;
    }
    match port {
        Some(p) => p.parse().ok(),
        None if scheme.eq_ignore_ascii_case("https") => Some(443),
        None => Some(80),
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;

    #[test]
    fn local_collector_ports_from_file_and_environment() {
        let root: Value = serde_yaml_ng::from_str(
            "otel_traces_export:\n  endpoint: http://127.0.0.1:4318\notel_metrics_export:\n  metrics_endpoint: http://collector.example:4317\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:14317/x"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://[::1]/v1/traces",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://user@127.0.0.1:4318",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(local_collector_ports(Some(&root), &env), [443, 4318, 14317]);
        assert!(local_collector_ports(None, &BTreeMap::new()).is_empty());
        assert_eq!(local_port("garbage"), None);
        assert_eq!(local_port("http://10.0.0.1:4318"), None);
    }
}
