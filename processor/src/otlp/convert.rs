//! From Sonde's spans and process metadata to OpenTelemetry data: the resource of an
//! instrumented process, span attributes per the semantic conventions (HTTP, RPC, database,
//! messaging) and span status rules. The attributes go to an `AttrSink` with static keys and
//! borrowed values, so `encode` writes them straight into the OTLP request. Pure functions;
//! what to export and when is the worker's business.

#[cfg(test)]
use opentelemetry::InstrumentationScope;
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::{
    protocols::{
        db,
        grpc::{self, AttrValue},
        http1::parse::strip_userinfo,
        messaging,
    },
    semconv::method_value,
    span::{Db, ExportKind, Messaging, Rpc, Span, SpanKind},
};

/// What an instrumented process's OTLP resource is built from.
#[derive(Debug, Clone)]
pub struct ProcessResource {
    pub pid: u32,
    pub service_name: String,
    pub service_namespace: Option<String>,
    pub exe_path: String,
    /// The process's pod, container and owners, when it runs in Kubernetes and its pod is
    /// known (`crate::kube`).
    pub k8s: Option<std::sync::Arc<crate::kube::K8sMeta>>,
}

#[cfg(test)]
impl ProcessResource {
    /// A process known by its pid only.
    pub fn bare(pid: u32) -> ProcessResource {
        ProcessResource {
            pid,
            service_name: String::new(),
            service_namespace: None,
            exe_path: String::new(),
            k8s: None,
        }
    }
}

/// The language of a process, guessed from its executable's name (`telemetry.sdk.language`).
/// Only names that leave no doubt are mapped; anything else is `unknown`.
fn language_of(exe_path: &str) -> &'static str {
    let name = exe_path.rsplit('/').next().unwrap_or(exe_path);
    let starts = |p: &str| name.starts_with(p);
    match name {
        "java" => "java",
        "node" | "nodejs" => "nodejs",
        "dotnet" => "dotnet",
        "beam.smp" => "erlang",
        _ if starts("python") => "python",
        _ if starts("ruby") => "ruby",
        _ if starts("php") => "php",
        _ => "unknown",
    }
}

/// The resource of one instrumented process.
pub fn resource(meta: &ProcessResource, host: &str) -> Resource {
    let exe_name = meta.exe_path.rsplit('/').next().unwrap_or(&meta.exe_path);
    let mut attrs = vec![
        KeyValue::new("service.name", meta.service_name.clone()),
        KeyValue::new("service.instance.id", format!("{host}-{}", meta.pid)),
        KeyValue::new("host.name", host.to_string()),
        KeyValue::new("os.type", "linux"),
        KeyValue::new("telemetry.sdk.name", "sonde"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("telemetry.sdk.language", language_of(&meta.exe_path)),
        KeyValue::new("process.pid", i64::from(meta.pid)),
        KeyValue::new("process.executable.name", exe_name.to_string()),
        KeyValue::new("process.executable.path", meta.exe_path.clone()),
    ];
    if let Some(ns) = &meta.service_namespace {
        attrs.push(KeyValue::new("service.namespace", ns.clone()));
    }
    if let Some(k8s) = &meta.k8s {
        attrs.extend(
            k8s.attributes()
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v.to_string())),
        );
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

/// The resource of a process Sonde keeps no state for (beyond `MAX_PROCESSES`): its service,
/// pid and host only.
pub fn service_resource(service_name: String, pid: u32, host: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service_name),
            KeyValue::new("process.pid", i64::from(pid)),
            KeyValue::new("host.name", host.to_string()),
            KeyValue::new("telemetry.sdk.name", "sonde"),
        ])
        .build()
}

/// The instrumentation scope of everything Sonde exports: its name and version.
pub const SCOPE_NAME: &str = "sonde";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a span's attributes go: keys are static, values borrowed, so the encoder writes
/// them straight into the request without a `String` per key or value.
pub trait AttrSink {
    fn str(&mut self, key: &'static str, value: &str);
    fn int(&mut self, key: &'static str, value: i64);
    /// A value written with its `Display` (addresses); the sink formats it into a buffer it
    /// reuses.
    fn display(&mut self, key: &'static str, value: &dyn std::fmt::Display);
}

/// The OTLP kind of a span (`SpanKind` of the trace proto).
pub fn otlp_kind(s: &Span) -> i32 {
    match s.export_kind() {
        ExportKind::Server => 2,
        ExportKind::Client => 3,
        ExportKind::Producer => 4,
        ExportKind::Consumer => 5,
    }
}

/// A span's status: unset, or an error with its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(&'static str),
    /// A failed Kafka operation: described as `kafka error code N`.
    KafkaError(i16),
}

/// True when the span's outcome is an error under the HTTP conventions: a server span with a
/// 5xx, a client span with a 4xx or 5xx, or no response at all.
fn is_error(s: &Span) -> bool {
    match (s.kind, s.status) {
        (_, 0) => true,
        (SpanKind::Server, code) => code >= 500,
        (SpanKind::Client, code) => code >= 400,
    }
}

/// `server.address` as the semantic conventions want it: the host the client asked for
/// (the `Host` header without its port) when known, else the server's IP.
fn server_address(s: &Span, out: &mut impl AttrSink) {
    const KEY: &str = "server.address";
    if let Some(host) = s.host.as_deref() {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if !name.is_empty() {
            return out.str(KEY, name);
        }
    }
    out.display(KEY, &s.server_address);
}

/// `client.address` and `client.port` of a server span.
fn client_endpoint(s: &Span, out: &mut impl AttrSink) {
    if s.kind == SpanKind::Server {
        out.display("client.address", &s.client_address);
        out.int("client.port", i64::from(s.client_port));
    }
}

/// Writes a span's attributes, per the semantic conventions of its protocol, and returns its
/// status. `tmp` is a buffer the caller reuses for values that must be assembled (`url.full`).
pub fn span_attributes(s: &Span, tmp: &mut String, out: &mut impl AttrSink) -> Status {
    match (&s.rpc, &s.db, &s.messaging) {
        (_, _, Some(m)) => messaging_attributes(s, m, out),
        (Some(rpc), _, _) => rpc_attributes(s, rpc, out),
        (None, Some(d), _) => db_attributes(s, d, out),
        (None, None, None) => http_attributes(s, tmp, out),
    }
}

/// The attributes and error outcome of an RPC span (`protocols::grpc` names them).
fn rpc_attributes(s: &Span, rpc: &Rpc, out: &mut impl AttrSink) -> Status {
    grpc::span_attributes(s.kind, rpc, &mut |key, value| match value {
        AttrValue::Static(v) => out.str(key, v),
        AttrValue::Str(v) => out.str(key, &v),
    });
    client_endpoint(s, out);
    server_address(s, out);
    out.int("server.port", i64::from(s.server_port));
    out.str("network.protocol.version", s.protocol_version);
    if grpc::is_error(s.kind, rpc.status_code) {
        Status::Error("")
    } else {
        Status::Unset
    }
}

/// The attributes and status of a database span (the database semantic conventions).
fn db_attributes(s: &Span, d: &Db, out: &mut impl AttrSink) -> Status {
    out.str("db.system.name", d.system);
    if let Some(op) = &d.operation {
        out.str("db.operation.name", op);
    }
    if let Some(c) = &d.collection {
        out.str("db.collection.name", c);
    }
    if let Some(ns) = &d.namespace {
        out.str("db.namespace", ns);
    }
    if let Some(q) = &d.query_text {
        out.str("db.query.text", q);
    }
    if let Some(code) = &d.error_code {
        out.str("db.response.status_code", code);
    }
    client_endpoint(s, out);
    out.display("server.address", &s.server_address);
    out.int("server.port", i64::from(s.server_port));
    match db::error_type(d, s.no_response) {
        Some(e) => {
            out.str("error.type", e);
            Status::Error("")
        }
        None => Status::Unset,
    }
}

/// The attributes and status of a messaging span (the messaging semantic conventions; the
/// operation word also gives `messaging.operation.type`, as the reference system does). A
/// failed operation's status description is its Kafka error code.
fn messaging_attributes(s: &Span, m: &Messaging, out: &mut impl AttrSink) -> Status {
    out.str("messaging.system", m.system);
    out.str("messaging.operation.name", m.operation.name());
    if let Some(t) = m.operation.operation_type() {
        out.str("messaging.operation.type", t);
    }
    if let Some(d) = &m.destination {
        out.str("messaging.destination.name", d);
    }
    if let Some(id) = &m.client_id {
        out.str("messaging.client.id", id);
    }
    client_endpoint(s, out);
    out.display("server.address", &s.server_address);
    out.int("server.port", i64::from(s.server_port));
    match messaging::error_type(m, s.no_response) {
        Some(e) => {
            out.str("error.type", &e);
            match m.error_code {
                Some(code) => Status::KafkaError(code),
                None => Status::Error(""),
            }
        }
        None => Status::Unset,
    }
}

/// The HTTP attributes of a span (HTTP/1 and plain HTTP/2); returns the span status under
/// the HTTP rules.
fn http_attributes(s: &Span, tmp: &mut String, out: &mut impl AttrSink) -> Status {
    use std::fmt::Write as _;
    out.str("http.request.method", method_value(&s.method));
    if let Some(original) = &s.method_original {
        out.str("http.request.method_original", original);
    }
    if s.status > 0 {
        out.int("http.response.status_code", i64::from(s.status));
    }
    match s.kind {
        SpanKind::Server => {
            out.str("url.path", &s.path);
            if let Some(q) = &s.query {
                out.str("url.query", q);
            }
            client_endpoint(s, out);
        }
        SpanKind::Client => {
            // The query is only there when export is on, and then redacted (`QueryPolicy`);
            // the parser drops userinfo from the Host header and from absolute-form targets.
            tmp.clear();
            // Writing into a String cannot fail.
            let _ = if s.path.contains("://") {
                write!(tmp, "{}", s.path)
            } else {
                match s.host.as_deref() {
                    Some(h) if !h.is_empty() => write!(tmp, "{}://{h}{}", s.scheme, s.path),
                    _ => write!(
                        tmp,
                        "{}://{}:{}{}",
                        s.scheme, s.server_address, s.server_port, s.path
                    ),
                }
            };
            if let Some(q) = &s.query {
                tmp.push('?');
                tmp.push_str(q);
            }
            // And once more here, whatever the span holds: userinfo never leaves.
            out.str("url.full", &strip_userinfo(tmp));
        }
    }
    out.str("url.scheme", s.scheme);
    if !s.protocol_version.is_empty() {
        out.str("network.protocol.version", s.protocol_version);
    }
    if let Some(ua) = &s.user_agent {
        out.str("user_agent.original", ua);
    }
    server_address(s, out);
    out.int("server.port", i64::from(s.server_port));
    if let Some(route) = &s.route {
        out.str("http.route", route);
    }
    if let Some(n) = s.request_body_size {
        out.int("http.request.body.size", n as i64);
    }
    if let Some(n) = s.response_body_size {
        out.int("http.response.body.size", n as i64);
    }
    if let Some(reason) = s.malformed {
        out.str("sonde.malformed", reason);
    }
    if !is_error(s) {
        return Status::Unset;
    }
    if s.status == 0 {
        out.str("error.type", "no_response");
        Status::Error("no response")
    } else {
        out.display("error.type", &s.status);
        Status::Error("")
    }
}

/// The SDK's form of a span, built by the same rules as the export (`span_attributes`): for
/// tests that assert on attributes.
#[cfg(test)]
pub fn span_data(s: Span, scope: &InstrumentationScope) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::trace::{self, SpanContext, TraceFlags, TraceState};
    struct Collect(Vec<KeyValue>);
    impl AttrSink for Collect {
        fn str(&mut self, key: &'static str, value: &str) {
            self.0.push(KeyValue::new(key, value.to_string()));
        }
        fn int(&mut self, key: &'static str, value: i64) {
            self.0.push(KeyValue::new(key, value));
        }
        fn display(&mut self, key: &'static str, value: &dyn std::fmt::Display) {
            self.0.push(KeyValue::new(key, value.to_string()));
        }
    }
    let mut attrs = Collect(Vec::new());
    let status = match span_attributes(&s, &mut String::new(), &mut attrs) {
        Status::Unset => trace::Status::Unset,
        Status::Error(d) => trace::Status::error(d),
        Status::KafkaError(code) => trace::Status::error(format!("kafka error code {code}")),
    };
    let span_kind = match otlp_kind(&s) {
        2 => trace::SpanKind::Server,
        3 => trace::SpanKind::Client,
        4 => trace::SpanKind::Producer,
        _ => trace::SpanKind::Consumer,
    };
    let at = |ns: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            trace::TraceId::from_bytes(s.trace_id.0),
            trace::SpanId::from_bytes(s.span_id.0),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: s
            .parent_span_id
            .map_or(trace::SpanId::INVALID, |p| trace::SpanId::from_bytes(p.0)),
        parent_span_is_remote: s.parent_span_id.is_some(),
        span_kind,
        name: s.name.into(),
        start_time: at(s.start_unix_nano),
        end_time: at(s.end_unix_nano),
        attributes: attrs.0,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// The instrumentation scope of everything Sonde exports, in the SDK's form (tests).
#[cfg(test)]
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(SCOPE_VERSION)
        .build()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::{Value, trace};
    use opentelemetry_sdk::trace::SpanData;

    use super::*;
    use crate::span::{Address, SpanId};

    fn span(kind: SpanKind, status: u16) -> Span {
        Span {
            parent_span_id: Some(SpanId([3; 8])),
            kind,
            name: "GET /users/{id}".into(),
            path: "/users/7".into(),
            query: Some("q=1".into()),
            route: Some("/users/{id}".into()),
            status,
            host: Some("example.test:8080".into()),
            server_address: Address(Some("127.0.0.1".parse().expect("ip"))),
            server_port: 8080,
            client_address: Address(Some("127.0.0.2".parse().expect("ip"))),
            client_port: 40000,
            request_body_size: Some(0),
            response_body_size: Some(12),
            start_unix_nano: 1_000_000_000,
            end_unix_nano: 1_002_000_000,
            duration_ns: 2_000_000,
            pid: 42,
            tid: 42,
            parent_sampled: Some(true),
            ..Span::fixture()
        }
    }

    fn attr<'a>(d: &'a SpanData, key: &str) -> Option<&'a Value> {
        d.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn server_span_follows_the_http_conventions() {
        let d = span_data(span(SpanKind::Server, 200), &scope());
        assert_eq!(d.span_kind, trace::SpanKind::Server);
        assert_eq!(d.name, "GET /users/{id}");
        assert_eq!(d.parent_span_id, trace::SpanId::from_bytes([3; 8]));
        assert!(d.parent_span_is_remote);
        assert_eq!(d.status, trace::Status::Unset);
        assert_eq!(attr(&d, "http.request.method"), Some(&Value::from("GET")));
        assert_eq!(
            attr(&d, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(attr(&d, "url.path"), Some(&Value::from("/users/7")));
        assert_eq!(attr(&d, "url.query"), Some(&Value::from("q=1")));
        assert_eq!(attr(&d, "http.route"), Some(&Value::from("/users/{id}")));
        assert_eq!(
            attr(&d, "server.address"),
            Some(&Value::from("example.test"))
        );
        assert_eq!(attr(&d, "server.port"), Some(&Value::I64(8080)));
        assert_eq!(attr(&d, "client.address"), Some(&Value::from("127.0.0.2")));
        assert_eq!(attr(&d, "http.response.body.size"), Some(&Value::I64(12)));
        assert_eq!(attr(&d, "url.full"), None);
        assert_eq!(
            d.end_time.duration_since(d.start_time).expect("ordered"),
            Duration::from_millis(2)
        );
        let d = span_data(span(SpanKind::Server, 503), &scope());
        assert!(matches!(d.status, trace::Status::Error { .. }));
        assert_eq!(attr(&d, "error.type"), Some(&Value::from("503")));
        let d = span_data(span(SpanKind::Server, 404), &scope());
        assert_eq!(d.status, trace::Status::Unset);
    }

    #[test]
    fn client_span_has_the_full_url_and_errors_from_4xx() {
        let d = span_data(span(SpanKind::Client, 404), &scope());
        assert_eq!(d.span_kind, trace::SpanKind::Client);
        assert_eq!(
            attr(&d, "url.full"),
            Some(&Value::from("http://example.test:8080/users/7?q=1"))
        );
        assert!(matches!(d.status, trace::Status::Error { .. }));
        let mut no_response = span(SpanKind::Client, 0);
        no_response.no_response = true;
        let d = span_data(no_response, &scope());
        assert!(matches!(d.status, trace::Status::Error { .. }));
        assert_eq!(attr(&d, "error.type"), Some(&Value::from("no_response")));
        assert_eq!(attr(&d, "http.response.status_code"), None);
    }

    #[test]
    fn url_full_never_holds_userinfo_and_no_query_unless_the_span_has_one() {
        let mut s = span(SpanKind::Client, 200);
        s.host = Some("user:S@example.test:8080".into());
        s.query = None;
        let d = span_data(s, &scope());
        assert_eq!(
            attr(&d, "url.full"),
            Some(&Value::from("http://example.test:8080/users/7"))
        );
        let mut s = span(SpanKind::Client, 200);
        s.path = "http://u:S@proxy.test/x".into();
        s.query = Some("token=REDACTED".into());
        let d = span_data(s, &scope());
        assert_eq!(
            attr(&d, "url.full"),
            Some(&Value::from("http://proxy.test/x?token=REDACTED"))
        );
        let mut s = span(SpanKind::Server, 200);
        s.query = None;
        let d = span_data(s, &scope());
        assert_eq!(attr(&d, "url.query"), None);
    }

    #[test]
    fn resources_name_the_process() {
        let meta = ProcessResource {
            pid: 42,
            service_name: "shop".into(),
            service_namespace: Some("prod".into()),
            exe_path: "/usr/bin/python3.11".into(),
            k8s: None,
        };
        let r = resource(&meta, "node-1");
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(get("service.name"), Some(Value::from("shop")));
        assert_eq!(get("service.namespace"), Some(Value::from("prod")));
        assert_eq!(get("service.instance.id"), Some(Value::from("node-1-42")));
        assert_eq!(get("telemetry.sdk.language"), Some(Value::from("python")));
        assert_eq!(get("process.pid"), Some(Value::I64(42)));
        assert_eq!(
            get("process.executable.name"),
            Some(Value::from("python3.11"))
        );
        assert_eq!(language_of("/usr/sbin/nginx"), "unknown");
        assert_eq!(language_of("/usr/lib/jvm/bin/java"), "java");
    }
}
