//! The processor's own settings, each defined once (key, variables, default, docs, parsing,
//! printing) with the configuration core's `Setting`: span output, routes, the Prometheus
//! endpoint, sampling and OTLP export. The two OTLP signals share one definition
//! (`endpoint_settings!`), so a fix to one is a fix to both.

use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};
use sonde_config::{
    ConfigError, Input, Raw, Setting, Table, format_duration, non_empty, parse_duration_or_millis,
    parse_in_range, show, var, var_millis,
};

use super::{
    Config,
    otlp::{self, OtlpProtocol},
    values::{RouteIgnoreMode, TracePrinter, UnmatchedRoutes},
};

const QUEUE_MAX: usize = 1 << 20;
const BATCH_MAX: usize = 1 << 16;

fn route_patterns(i: &Input<'_>) -> Result<Vec<String>, ConfigError> {
    const EXPECTED: &str = "patterns starting with /";
    let list = match i.raw {
        Raw::List(l) => l.clone(),
        _ => vec![i.text(EXPECTED)?],
    };
    for p in &list {
        if !p.starts_with('/') {
            return Err(i.invalid(p, EXPECTED));
        }
    }
    Ok(list)
}

fn count(i: &Input<'_>, max: usize) -> Result<usize, ConfigError> {
    const EXPECTED: &str = "a count from 1 to the documented maximum (queue 1048576, batch 65536)";
    parse_in_range(i.key, &i.text(EXPECTED)?, 1..=max, EXPECTED)
}

fn duration(i: &Input<'_>) -> Result<std::time::Duration, ConfigError> {
    parse_duration_or_millis(i.key, &i.text("a duration")?, i.millis)
}

/// Headers from a YAML mapping or `k=v,k2=v2` text, merged over earlier sources by name.
fn merge_headers(into: &mut Vec<(String, String)>, i: &Input<'_>) -> Result<(), ConfigError> {
    let parsed = match i.raw {
        Raw::Map(m) => m
            .iter()
            .map(|(k, v)| Ok((otlp::header_name(i.key, k)?, v.clone())))
            .collect::<Result<Vec<_>, ConfigError>>()?,
        _ => otlp::parse_headers(i.key, &i.text("key=value pairs")?)?,
    };
    for (k, v) in parsed {
        into.retain(|(old, _)| *old != k);
        into.push((k, v));
    }
    Ok(())
}

fn show_headers(headers: &[(String, String)]) -> Option<Value> {
    if headers.is_empty() {
        return None;
    }
    let mut m = Mapping::new();
    for (k, v) in headers {
        m.insert(Value::String(k.clone()), Value::String(v.clone()));
    }
    Some(Value::Mapping(m))
}

/// The endpoint settings of one OTLP signal: `$section` is the YAML section,
/// `$signal` the `OTEL_EXPORTER_OTLP_<SIGNAL>_*` infix, `$path` the HTTP path's last
/// segment, `$exact` the signal endpoint's key,
/// `$export` and `$raw` the `Config` fields it fills.
macro_rules! endpoint_settings {
    ($section:literal, $signal:literal, $path:literal, $exact:literal, $export:ident, $raw:ident) => {
        &[
            Setting {
                key: concat!($section, ".endpoint"),
                env: &[var("OTEL_EXPORTER_OTLP_ENDPOINT")],
                flag: "",
                default: None,
                unset: "off",
                doc: concat!(
                    "OTLP base endpoint: `http://host:port[/prefix]` or `https://…` (TLS; port 443 by default); for HTTP `/v1/",
                    $path,
                    "` is appended. Setting it turns this signal's export on"
                ),
                secret: false,
                apply: |c, i| {
                    c.pending.$raw.base = Some((i.key.to_string(), i.text("a URL")?));
                    Ok(())
                },
                show: |_| None,
            },
            Setting {
                key: concat!($section, ".", $exact),
                env: &[var(concat!("OTEL_EXPORTER_OTLP_", $signal, "_ENDPOINT"))],
                flag: "",
                default: None,
                unset: "none",
                doc: "endpoint used exactly as given (wins over `endpoint`); `--print-config` shows the resolved URL here",
                secret: false,
                apply: |c, i| {
                    c.pending.$raw.exact = Some((i.key.to_string(), i.text("a URL")?));
                    Ok(())
                },
                show: |c| c.$export.otlp.as_ref().and_then(|e| show::text(&e.url)),
            },
            Setting {
                key: concat!($section, ".protocol"),
                env: &[
                    var("OTEL_EXPORTER_OTLP_PROTOCOL"),
                    var(concat!("OTEL_EXPORTER_OTLP_", $signal, "_PROTOCOL")),
                ],
                flag: "",
                default: None,
                unset: "from the port",
                doc: "`grpc` or `http/protobuf`; when unset, a port ending in 4317 means `grpc`, anything else `http/protobuf`",
                secret: false,
                apply: |c, i| {
                    c.pending.$raw.protocol = Some(OtlpProtocol::parse(i.key, &i.text("a protocol")?)?);
                    Ok(())
                },
                show: |c| c.$export.otlp.as_ref().and_then(|e| show::text(e.protocol.as_str())),
            },
            Setting {
                key: concat!($section, ".headers"),
                env: &[
                    var("OTEL_EXPORTER_OTLP_HEADERS"),
                    var(concat!("OTEL_EXPORTER_OTLP_", $signal, "_HEADERS")),
                ],
                flag: "",
                default: None,
                unset: "none",
                doc: "request headers / gRPC metadata (tokens, tenant ids); variables take `k=v,k2=v2` with percent-encoded values; `--print-config` hides the values",
                secret: true,
                apply: |c, i| merge_headers(&mut c.pending.$raw.headers, &i),
                show: |c| c.$export.otlp.as_ref().and_then(|e| show_headers(&e.headers)),
            },
            Setting {
                key: concat!($section, ".certificate"),
                env: &[
                    var("OTEL_EXPORTER_OTLP_CERTIFICATE"),
                    var(concat!("OTEL_EXPORTER_OTLP_", $signal, "_CERTIFICATE")),
                ],
                flag: "",
                default: None,
                unset: "system trust store",
                doc: "absolute path of PEM CA certificates to trust instead of the system's, for `https://` endpoints; checked at start (readable, PEM)",
                secret: false,
                apply: |c, i| {
                    c.pending.$raw.ca_file = Some((i.key.to_string(), PathBuf::from(i.text("a path")?)));
                    Ok(())
                },
                show: |c| {
                    c.$export
                        .otlp
                        .as_ref()
                        .and_then(|e| e.ca_file.as_ref())
                        .and_then(|p| show::text(p.display()))
                },
            },
            Setting {
                key: concat!($section, ".compression"),
                env: &[
                    var("OTEL_EXPORTER_OTLP_COMPRESSION"),
                    var(concat!("OTEL_EXPORTER_OTLP_", $signal, "_COMPRESSION")),
                ],
                flag: "",
                default: None,
                unset: "`none`",
                doc: "`gzip` or `none`",
                secret: false,
                apply: |c, i| {
                    c.pending.$raw.gzip = Some(otlp::parse_compression(i.key, &i.text("gzip or none")?)?);
                    Ok(())
                },
                show: |c| {
                    c.$export
                        .otlp
                        .as_ref()
                        .and_then(|e| show::text(if e.gzip { "gzip" } else { "none" }))
                },
            },
            Setting {
                key: concat!($section, ".timeout"),
                env: &[var_millis("OTEL_EXPORTER_OTLP_TIMEOUT")],
                flag: "",
                default: Some("10s"),
                unset: "",
                doc: "one export request including the exporter's retries (3, exponential backoff); then its data is dropped and counted",
                secret: false,
                apply: |c, i| {
                    c.$export.timeout = duration(&i)?;
                    Ok(())
                },
                show: |c| show::text(format_duration(c.$export.timeout)),
            },
        ]
    };
}

/// One `attributes.select.<metric>.include` or `.exclude` setting of a flow metric: first
/// `include` or `exclude`, then `$field` the metric (`bytes`, `packets`), `$metric` the key's
/// metric name (canonical or alias), `$shown` whether `--print-config` shows it (canonical
/// names only), `$doc` its documentation.
macro_rules! flow_select {
    (include, $field:ident, $metric:literal, $shown:literal, $doc:expr) => {
        Setting {
            key: concat!("attributes.select.", $metric, ".include"),
            env: &[],
            flag: "",
            default: None,
            unset: "the defaults",
            doc: $doc,
            secret: false,
            apply: |c, i| {
                c.flow_select.$field.include = Some(i.list("attribute names or globs")?);
                Ok(())
            },
            show: |c| {
                if $shown {
                    c.flow_select
                        .$field
                        .include
                        .as_deref()
                        .and_then(show::texts)
                } else {
                    None
                }
            },
        }
    };
    (exclude, $field:ident, $metric:literal, $shown:literal, $doc:expr) => {
        Setting {
            key: concat!("attributes.select.", $metric, ".exclude"),
            env: &[],
            flag: "",
            default: None,
            unset: "`[]`",
            doc: $doc,
            secret: false,
            apply: |c, i| {
                c.flow_select.$field.exclude = i.list("attribute names or globs")?;
                Ok(())
            },
            show: |c| {
                if $shown {
                    show::texts(&c.flow_select.$field.exclude)
                } else {
                    None
                }
            },
        }
    };
}

const INCLUDE_DOC: &str = "attributes of the network flow metric (`beyla_network_flow_bytes_total` / `beyla.network.flow.bytes`; `…_packets` for packets): names or `*` globs, dots or underscores, among `direction`, `src.address`, `dst.address`, `src.port`, `dst.port`, `transport`, `iface`, `src.name`, `dst.name`, `src.cidr`, `dst.cidr`, `k8s.src.owner.name`, `k8s.src.owner.type`, `k8s.src.namespace`, `k8s.dst.owner.name`, `k8s.dst.owner.type`, `k8s.dst.namespace` (an end that is a pod of this node), `k8s.cluster.name`. Unset: the reference system's low-cardinality defaults (`direction`; `src.cidr`, `dst.cidr` with `network.cidrs`; the six `k8s.src.*` / `k8s.dst.*` and `k8s.cluster.name` with Kubernetes metadata). A metric without a selection of its own uses the other's. Selections of other metrics are accepted and not applied";
const EXCLUDE_DOC: &str =
    "attributes removed from the included (or default) ones: names or `*` globs";
const ALIAS_DOC: &str = "alias of the same key under `beyla_network_flow_bytes` / `beyla_network_flow_packets` (the `beyla.network.flow.*` and `obi_` / `obi.` spellings)";

/// `attributes.select` of the flow metrics, under every spelling the reference system accepts.
static FLOW_SELECT: &[Setting<Config>] = &[
    flow_select!(
        include,
        bytes,
        "beyla_network_flow_bytes",
        true,
        INCLUDE_DOC
    ),
    flow_select!(
        exclude,
        bytes,
        "beyla_network_flow_bytes",
        true,
        EXCLUDE_DOC
    ),
    flow_select!(
        include,
        packets,
        "beyla_network_flow_packets",
        true,
        INCLUDE_DOC
    ),
    flow_select!(
        exclude,
        packets,
        "beyla_network_flow_packets",
        true,
        EXCLUDE_DOC
    ),
    flow_select!(include, bytes, "beyla.network.flow.bytes", false, ALIAS_DOC),
    flow_select!(exclude, bytes, "beyla.network.flow.bytes", false, ALIAS_DOC),
    flow_select!(
        include,
        packets,
        "beyla.network.flow.packets",
        false,
        ALIAS_DOC
    ),
    flow_select!(
        exclude,
        packets,
        "beyla.network.flow.packets",
        false,
        ALIAS_DOC
    ),
    flow_select!(include, bytes, "obi_network_flow_bytes", false, ALIAS_DOC),
    flow_select!(exclude, bytes, "obi_network_flow_bytes", false, ALIAS_DOC),
    flow_select!(
        include,
        packets,
        "obi_network_flow_packets",
        false,
        ALIAS_DOC
    ),
    flow_select!(
        exclude,
        packets,
        "obi_network_flow_packets",
        false,
        ALIAS_DOC
    ),
    flow_select!(include, bytes, "obi.network.flow.bytes", false, ALIAS_DOC),
    flow_select!(exclude, bytes, "obi.network.flow.bytes", false, ALIAS_DOC),
    flow_select!(
        include,
        packets,
        "obi.network.flow.packets",
        false,
        ALIAS_DOC
    ),
    flow_select!(
        exclude,
        packets,
        "obi.network.flow.packets",
        false,
        ALIAS_DOC
    ),
];

/// The processor's settings, in the order `--print-config` shows them.
pub static OWN: Table<Config> = Table(&[
    &[
        Setting {
            key: "trace_printer",
            env: &[var("BEYLA_TRACE_PRINTER")],
            flag: "--trace-printer (processor)",
            default: Some("text"),
            unset: "",
            doc: "`disabled`, `text` or `json`: one line per span on standard output",
            secret: false,
            apply: |c, i| {
                c.trace_printer = TracePrinter::parse(i.key, &i.text("a printer")?)?;
                Ok(())
            },
            show: |c| show::text(c.trace_printer.as_str()),
        },
        Setting {
            key: "routes.patterns",
            env: &[],
            flag: "",
            default: None,
            unset: "`[]`",
            doc: "routes to recognise: `/user/{id}`, `/api/v1/items/:id` (`{name}` or `:name`: one segment), `/static/*` (`*` last: the rest of the path); the first match is `http.route`",
            secret: false,
            apply: |c, i| {
                c.routes.patterns = route_patterns(&i)?;
                Ok(())
            },
            show: |c| show::texts(&c.routes.patterns),
        },
        Setting {
            key: "routes.ignored_patterns",
            env: &[],
            flag: "",
            default: None,
            unset: "`[]`",
            doc: "routes to drop, same syntax",
            secret: false,
            apply: |c, i| {
                c.routes.ignored_patterns = route_patterns(&i)?;
                Ok(())
            },
            show: |c| show::texts(&c.routes.ignored_patterns),
        },
        Setting {
            key: "routes.ignore_mode",
            env: &[],
            flag: "",
            default: Some("all"),
            unset: "",
            doc: "where ignored routes are dropped: `all`, `traces`, `metrics` (spans are dropped from output and OTLP with `all` and `traces`; metrics, Prometheus and OTLP, with `all` and `metrics`)",
            secret: false,
            apply: |c, i| {
                c.routes.ignore_mode = RouteIgnoreMode::parse(i.key, &i.text("a mode")?)?;
                Ok(())
            },
            show: |c| show::text(c.routes.ignore_mode.as_str()),
        },
        Setting {
            key: "routes.unmatched",
            env: &[],
            flag: "",
            default: Some("low-cardinality"),
            unset: "",
            doc: "route of paths no pattern matches: `unset` (none), `path` (the path itself: unbounded), `wildcard` (`/**`), `heuristic` (segments holding a digit become `*`), `low-cardinality` (a learned per-service tree: a path position keeps its values until it has seen more than `max_path_segment_cardinality` of them, then becomes `*` for good)",
            secret: false,
            apply: |c, i| {
                c.routes.unmatched = UnmatchedRoutes::parse(i.key, &i.text("a mode")?)?;
                Ok(())
            },
            show: |c| show::text(c.routes.unmatched.as_str()),
        },
        Setting {
            key: "routes.wildcard_char",
            env: &[],
            flag: "",
            default: Some("*"),
            unset: "",
            doc: "what replaces collapsed or id-like segments",
            secret: false,
            apply: |c, i| {
                let v = i.text("a string")?;
                if v.is_empty() || v.contains('/') {
                    return Err(i.invalid(v, "a non-empty string without /"));
                }
                c.routes.wildcard_char = v;
                Ok(())
            },
            show: |c| show::text(&c.routes.wildcard_char),
        },
        Setting {
            key: "routes.max_path_segment_cardinality",
            env: &[],
            flag: "",
            default: Some("10"),
            unset: "",
            doc: "distinct values one path position may keep in `low-cardinality` mode, 1 … 10000",
            secret: false,
            apply: |c, i| {
                const EXPECTED: &str = "a number from 1 to 10000";
                c.routes.max_path_segment_cardinality =
                    parse_in_range(i.key, &i.text(EXPECTED)?, 1..=10_000, EXPECTED)?;
                Ok(())
            },
            show: |c| show::number(c.routes.max_path_segment_cardinality),
        },
        Setting {
            key: "attributes.url_query",
            env: &[var("SONDE_URL_QUERY")],
            flag: "",
            default: Some("false"),
            unset: "",
            doc: "export the query string (`url.query`, the query part of a client span's `url.full`, printed spans); off by default because queries carry credentials. When on, values of well-known credential parameters (`AWSAccessKeyId`, `Signature`, `X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`, `sig`, `X-Goog-Signature`, `X-Goog-Credential`, `token`, `access_token`, `refresh_token`, `id_token`, `password`, `passwd`, `secret`, `api_key`, `apikey`, `key`, `client_secret`, `code`) and of `attributes.sensitive_query_params` become `REDACTED`",
            secret: false,
            apply: |c, i| {
                c.url_query.export = sonde_config::parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.url_query.export),
        },
        Setting {
            key: "attributes.db_query_sanitize",
            env: &[var("SONDE_DB_QUERY_SANITIZE")],
            flag: "",
            default: Some("true"),
            unset: "",
            doc: "replace every literal of a SQL statement's `db.query.text` with `?` (on by default). `false` exports statements as the application sent them, values included (passwords, e-mail addresses, card numbers: a risk to weigh before turning it off). Redis commands never show keys or values, whatever this says",
            secret: false,
            apply: |c, i| {
                c.db_query_sanitize = sonde_config::parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.db_query_sanitize),
        },
        Setting {
            key: "attributes.sensitive_query_params",
            env: &[],
            flag: "",
            default: None,
            unset: "`[]`",
            doc: "further query parameter names (case-insensitive) whose values are replaced by `REDACTED`",
            secret: false,
            apply: |c, i| {
                let names = i.list("parameter names")?;
                if let Some(bad) = names.iter().find(|n| n.trim().is_empty()) {
                    return Err(i.invalid(bad, "non-empty parameter names"));
                }
                c.url_query.extra_sensitive = names.iter().map(|n| n.trim().to_string()).collect();
                Ok(())
            },
            show: |c| show::texts(&c.url_query.extra_sensitive),
        },
        Setting {
            key: "attributes.kubernetes.enable",
            env: &[var("BEYLA_KUBE_METADATA_ENABLE")],
            flag: "",
            default: Some("autodetect"),
            unset: "",
            doc: "Kubernetes metadata (pods, owners, `k8s.*` attributes, the service-name ladder's Kubernetes rungs): `true`, `false` or `autodetect` (on in a cluster, or with a kubeconfig)",
            secret: false,
            apply: |c, i| {
                let text = i.text("true, false or autodetect")?;
                c.kubernetes.enable = crate::kube::Enable::parse(&text)
                    .ok_or_else(|| i.invalid(&text, "true, false or autodetect"))?;
                Ok(())
            },
            show: |c| {
                show::text(match c.kubernetes.enable {
                    crate::kube::Enable::True => "true",
                    crate::kube::Enable::False => "false",
                    crate::kube::Enable::Autodetect => "autodetect",
                })
            },
        },
        Setting {
            key: "attributes.kubernetes.cluster_name",
            env: &[var("BEYLA_KUBE_CLUSTER_NAME")],
            flag: "",
            default: None,
            unset: "none",
            doc: "`k8s.cluster.name` of every resource",
            secret: false,
            apply: |c, i| {
                c.kubernetes.cluster_name = Some(non_empty(i.key, i.text("a name")?)?);
                Ok(())
            },
            show: |c| c.kubernetes.cluster_name.as_ref().and_then(show::text),
        },
        Setting {
            key: "attributes.kubernetes.kubeconfig_path",
            env: &[var("KUBECONFIG")],
            flag: "",
            default: None,
            unset: "in-cluster service account",
            doc: "a kubeconfig file to reach the API server with, instead of the pod's service account",
            secret: false,
            apply: |c, i| {
                c.kubernetes.kubeconfig_path = Some(std::path::PathBuf::from(non_empty(
                    i.key,
                    i.text("a path")?,
                )?));
                Ok(())
            },
            show: |c| {
                c.kubernetes
                    .kubeconfig_path
                    .as_ref()
                    .and_then(|p| show::text(p.display()))
            },
        },
        Setting {
            key: "prometheus_export.port",
            env: &[var("BEYLA_PROMETHEUS_PORT")],
            flag: "",
            default: None,
            unset: "off",
            doc: "serve metrics for Prometheus on this TCP port (the processor's Landlock ruleset allows binding exactly this port)",
            secret: false,
            apply: |c, i| {
                const EXPECTED: &str = "a TCP port, 1 to 65535";
                c.prometheus_export.port = Some(parse_in_range(
                    i.key,
                    &i.text(EXPECTED)?,
                    1..=u16::MAX,
                    EXPECTED,
                )?);
                Ok(())
            },
            show: |c| c.prometheus_export.port.and_then(show::number),
        },
        Setting {
            key: "prometheus_export.path",
            env: &[var("BEYLA_PROMETHEUS_PATH")],
            flag: "",
            default: Some("/metrics"),
            unset: "",
            doc: "path of the exposition",
            secret: false,
            apply: |c, i| {
                let v = i.text("a path")?;
                if !v.starts_with('/') || v.contains(char::is_whitespace) {
                    return Err(i.invalid(v, "a path starting with / and without spaces"));
                }
                c.prometheus_export.path = v;
                Ok(())
            },
            show: |c| show::text(&c.prometheus_export.path),
        },
        Setting {
            key: "prometheus_export.allow_service_graph_self_references",
            env: &[var("BEYLA_PROMETHEUS_ALLOW_SERVICE_GRAPH_SELF_REFERENCES")],
            flag: "",
            default: Some("false"),
            unset: "",
            doc: "service graph metrics (`application_service_graph`) in Prometheus also count edges whose client and server are the same service in the same namespace",
            secret: false,
            apply: |c, i| {
                c.prometheus_export.allow_service_graph_self_references =
                    sonde_config::parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.prometheus_export.allow_service_graph_self_references),
        },
        Setting {
            key: "prometheus_export.address",
            env: &[var("BEYLA_PROMETHEUS_ADDRESS")],
            flag: "",
            default: Some("127.0.0.1"),
            unset: "",
            doc: "address the endpoint binds: loopback by default (a scraper on the same host); the Kubernetes manifest sets the pod IP (`status.podIP`) so only in-cluster scrapers of the pod reach it, never `0.0.0.0` on a host network",
            secret: false,
            apply: |c, i| {
                let v = i.text("an address")?;
                c.prometheus_export.address = v
                    .trim()
                    .parse()
                    .map_err(|_| i.invalid(&v, "an IPv4 or IPv6 address"))?;
                Ok(())
            },
            show: |c| show::text(c.prometheus_export.address),
        },
        Setting {
            key: "otel_traces_export.sampler.name",
            env: &[var("OTEL_TRACES_SAMPLER")],
            flag: "",
            default: Some("parentbased_always_on"),
            unset: "",
            doc: "which traces are kept: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_traceidratio` (OpenTelemetry's samplers: the ratio is decided from the trace id, parent-based ones follow an incoming `traceparent`'s sampled flag). Unsampled spans are built and counted, not printed",
            secret: false,
            apply: |c, i| {
                c.pending.sampler_name =
                    (i.key.to_string(), non_empty(i.key, i.text("a sampler")?)?);
                Ok(())
            },
            show: |c| show::text(c.sampler.describe().0),
        },
        Setting {
            key: "otel_traces_export.sampler.arg",
            env: &[var("OTEL_TRACES_SAMPLER_ARG")],
            flag: "",
            default: None,
            unset: "`1.0`",
            doc: "the ratio for the `traceidratio` samplers, 0 … 1",
            secret: false,
            apply: |c, i| {
                c.pending.sampler_arg = Some(i.text("a ratio")?);
                Ok(())
            },
            show: |c| c.sampler.describe().1.and_then(show::text),
        },
    ],
    FLOW_SELECT,
    endpoint_settings!(
        "otel_traces_export",
        "TRACES",
        "traces",
        "traces_endpoint",
        traces_export,
        traces
    ),
    &[
        Setting {
            key: "otel_traces_export.queue_size",
            env: &[var("OTEL_BSP_MAX_QUEUE_SIZE")],
            flag: "",
            default: Some("16384"),
            unset: "",
            doc: "spans waiting for export, 1 … 1048576; beyond it spans are dropped and counted (`sonde_otlp_spans_dropped_queue_full_total`)",
            secret: false,
            apply: |c, i| {
                c.traces_export.queue_size = count(&i, QUEUE_MAX)?;
                Ok(())
            },
            show: |c| show::number(c.traces_export.queue_size as u64),
        },
        Setting {
            key: "otel_traces_export.batch_max_size",
            env: &[var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")],
            flag: "",
            default: Some("2048"),
            unset: "",
            doc: "spans per export request at most, 1 … 65536 (a span is at most about 1 KiB, so a request stays under collectors' usual 4 MiB message limit)",
            secret: false,
            apply: |c, i| {
                c.traces_export.batch_max_size = count(&i, BATCH_MAX)?;
                Ok(())
            },
            show: |c| show::number(c.traces_export.batch_max_size as u64),
        },
        Setting {
            key: "otel_traces_export.batch_timeout",
            env: &[var_millis("OTEL_BSP_SCHEDULE_DELAY")],
            flag: "",
            default: Some("5s"),
            unset: "",
            doc: "a partial batch is sent after this long (`500ms`, `5s`, `1m`), plus the up to 20 ms the reader gathers spans before handing them to the exporter thread",
            secret: false,
            apply: |c, i| {
                c.traces_export.batch_timeout = duration(&i)?;
                Ok(())
            },
            show: |c| show::text(format_duration(c.traces_export.batch_timeout)),
        },
    ],
    endpoint_settings!(
        "otel_metrics_export",
        "METRICS",
        "metrics",
        "metrics_endpoint",
        metrics_export,
        metrics
    ),
    &[
        Setting {
            key: "otel_metrics_export.interval",
            env: &[
                var("BEYLA_METRICS_INTERVAL"),
                var_millis("OTEL_METRIC_EXPORT_INTERVAL"),
            ],
            flag: "",
            default: Some("60s"),
            unset: "",
            doc: "how often the cumulative histograms are sent",
            secret: false,
            apply: |c, i| {
                c.metrics_export.interval = duration(&i)?;
                Ok(())
            },
            show: |c| show::text(format_duration(c.metrics_export.interval)),
        },
        Setting {
            key: "otel_metrics_export.allow_service_graph_self_references",
            env: &[var("BEYLA_OTEL_ALLOW_SERVICE_GRAPH_SELF_REFERENCES")],
            flag: "",
            default: Some("false"),
            unset: "",
            doc: "service graph metrics (`application_service_graph`) exported over OTLP also count edges whose client and server are the same service in the same namespace",
            secret: false,
            apply: |c, i| {
                c.metrics_export.allow_service_graph_self_references =
                    sonde_config::parse_bool(i.key, &i.text("a boolean")?)?;
                Ok(())
            },
            show: |c| show::flag(c.metrics_export.allow_service_graph_self_references),
        },
    ],
]);
