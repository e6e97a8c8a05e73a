//! The span conversion as it was before spans were encoded straight to OTLP (commit e9824b3):
//! `Span` → the SDK's `SpanData`, which `opentelemetry-proto` turned into its prost structs.
//! Kept, frozen, for tests only: the encoder's output is decoded and compared with what this
//! produced, so the direct encoding cannot drift from what collectors used to receive.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, KeyValue, Value,
    trace::{self, SpanContext, TraceFlags, TraceState},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

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

/// The instrumentation scope of everything Sonde exports.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("sonde")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
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
fn server_address(s: &Span) -> String {
    if let Some(host) = s.host.as_deref() {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if !name.is_empty() {
            return name.to_string();
        }
    }
    s.server_address.to_string()
}

/// The attributes and error outcome of an RPC span (`protocols::grpc` names them).
fn rpc_attributes(s: &Span, rpc: &Rpc, attrs: &mut Vec<KeyValue>) -> Option<&'static str> {
    grpc::span_attributes(s.kind, rpc, &mut |key, value| {
        attrs.push(KeyValue::new(
            key,
            match value {
                AttrValue::Static(v) => Value::from(v),
                AttrValue::Str(v) => Value::from(v),
            },
        ))
    });
    if s.kind == SpanKind::Server {
        attrs.push(KeyValue::new(
            "client.address",
            s.client_address.to_string(),
        ));
        attrs.push(KeyValue::new("client.port", i64::from(s.client_port)));
    }
    attrs.push(KeyValue::new("server.address", server_address(s)));
    attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        s.protocol_version,
    ));
    grpc::is_error(s.kind, rpc.status_code).then_some("")
}

/// The attributes and status of a database span (the database semantic conventions).
fn db_attributes(s: &Span, d: Db, attrs: &mut Vec<KeyValue>) -> trace::Status {
    let error = db::error_type(&d, s.no_response).map(str::to_string);
    attrs.push(KeyValue::new("db.system.name", d.system));
    if let Some(op) = d.operation {
        attrs.push(KeyValue::new("db.operation.name", op));
    }
    if let Some(c) = d.collection {
        attrs.push(KeyValue::new("db.collection.name", c));
    }
    if let Some(ns) = d.namespace {
        attrs.push(KeyValue::new("db.namespace", ns));
    }
    if let Some(q) = d.query_text {
        attrs.push(KeyValue::new("db.query.text", q));
    }
    if let Some(code) = d.error_code {
        attrs.push(KeyValue::new("db.response.status_code", code));
    }
    if s.kind == SpanKind::Server {
        attrs.push(KeyValue::new(
            "client.address",
            s.client_address.to_string(),
        ));
        attrs.push(KeyValue::new("client.port", i64::from(s.client_port)));
    }
    attrs.push(KeyValue::new(
        "server.address",
        s.server_address.to_string(),
    ));
    attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    match error {
        Some(e) => {
            attrs.push(KeyValue::new("error.type", e));
            trace::Status::Error {
                description: Cow::Borrowed(""),
            }
        }
        None => trace::Status::Unset,
    }
}

/// The attributes and status of a messaging span (the messaging semantic conventions; the
/// operation word also gives `messaging.operation.type`, as the reference system does). A
/// failed operation's status description is its Kafka error code.
fn messaging_attributes(s: &Span, m: Messaging, attrs: &mut Vec<KeyValue>) -> trace::Status {
    let error = messaging::error_type(&m, s.no_response);
    attrs.push(KeyValue::new("messaging.system", m.system));
    attrs.push(KeyValue::new(
        "messaging.operation.name",
        m.operation.name(),
    ));
    if let Some(t) = m.operation.operation_type() {
        attrs.push(KeyValue::new("messaging.operation.type", t));
    }
    if let Some(d) = m.destination {
        attrs.push(KeyValue::new("messaging.destination.name", d));
    }
    if let Some(id) = m.client_id {
        attrs.push(KeyValue::new("messaging.client.id", id));
    }
    if s.kind == SpanKind::Server {
        attrs.push(KeyValue::new(
            "client.address",
            s.client_address.to_string(),
        ));
        attrs.push(KeyValue::new("client.port", i64::from(s.client_port)));
    }
    attrs.push(KeyValue::new(
        "server.address",
        s.server_address.to_string(),
    ));
    attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    match error {
        Some(e) => {
            attrs.push(KeyValue::new("error.type", e));
            trace::Status::Error {
                description: match m.error_code {
                    Some(code) => Cow::Owned(format!("kafka error code {code}")),
                    None => Cow::Borrowed(""),
                },
            }
        }
        None => trace::Status::Unset,
    }
}

/// Converts a span into the SDK's export form, moving its strings rather than copying them.
pub fn span_data(mut s: Span, scope: &InstrumentationScope) -> SpanData {
    let mut attrs = Vec::with_capacity(16);
    let span_kind = match s.export_kind() {
        ExportKind::Server => trace::SpanKind::Server,
        ExportKind::Client => trace::SpanKind::Client,
        ExportKind::Producer => trace::SpanKind::Producer,
        ExportKind::Consumer => trace::SpanKind::Consumer,
    };
    let status = match (s.rpc.take(), s.db.take(), s.messaging.take()) {
        (_, _, Some(m)) => messaging_attributes(&s, m, &mut attrs),
        (Some(rpc), _, _) => match rpc_attributes(&s, &rpc, &mut attrs) {
            Some(description) => trace::Status::Error {
                description: Cow::Borrowed(description),
            },
            None => trace::Status::Unset,
        },
        (None, Some(d), _) => db_attributes(&s, d, &mut attrs),
        (None, None, None) => http_attributes(&mut s, &mut attrs),
    };
    let at = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
    SpanData {
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
        name: Cow::Owned(s.name),
        start_time: at(s.start_unix_nano),
        end_time: at(s.end_unix_nano),
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// The HTTP attributes of a span (HTTP/1 and plain HTTP/2), moving its strings out; returns
/// the span status under the HTTP rules.
fn http_attributes(s: &mut Span, attrs: &mut Vec<KeyValue>) -> trace::Status {
    let error = is_error(s);
    let server_address = server_address(s);
    let method = std::mem::take(&mut s.method);
    let method: Value = match method_value(&method) {
        "_OTHER" => "_OTHER".into(),
        known => known.into(),
    };
    attrs.push(KeyValue::new("http.request.method", method));
    if let Some(original) = s.method_original.take() {
        attrs.push(KeyValue::new("http.request.method_original", original));
    }
    if s.status > 0 {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(s.status),
        ));
    }
    match s.kind {
        SpanKind::Server => {
            attrs.push(KeyValue::new("url.path", std::mem::take(&mut s.path)));
            if let Some(q) = s.query.take() {
                attrs.push(KeyValue::new("url.query", q));
            }
            attrs.push(KeyValue::new(
                "client.address",
                s.client_address.to_string(),
            ));
            attrs.push(KeyValue::new("client.port", i64::from(s.client_port)));
        }
        SpanKind::Client => {
            let query = s
                .query
                .as_deref()
                .map_or(String::new(), |q| format!("?{q}"));
            // The query is only there when export is on, and then redacted (`QueryPolicy`);
            // the parser drops userinfo from the Host header and from absolute-form targets.
            let full = if s.path.contains("://") {
                format!("{}{query}", s.path)
            } else {
                let authority = match s.host.as_deref() {
                    Some(h) if !h.is_empty() => h.to_string(),
                    _ => format!("{}:{}", s.server_address, s.server_port),
                };
                format!("{}://{authority}{}{query}", s.scheme, s.path)
            };
            // And once more here, whatever the span holds: userinfo never leaves.
            let full = match strip_userinfo(&full) {
                Cow::Borrowed(_) => full,
                Cow::Owned(stripped) => stripped,
            };
            attrs.push(KeyValue::new("url.full", full));
        }
    }
    attrs.push(KeyValue::new("url.scheme", s.scheme));
    if !s.protocol_version.is_empty() {
        attrs.push(KeyValue::new(
            "network.protocol.version",
            s.protocol_version,
        ));
    }
    if let Some(ua) = s.user_agent.take() {
        attrs.push(KeyValue::new("user_agent.original", ua));
    }
    attrs.push(KeyValue::new("server.address", server_address));
    attrs.push(KeyValue::new("server.port", i64::from(s.server_port)));
    if let Some(route) = s.route.take() {
        attrs.push(KeyValue::new("http.route", route));
    }
    if let Some(n) = s.request_body_size {
        attrs.push(KeyValue::new("http.request.body.size", n as i64));
    }
    if let Some(n) = s.response_body_size {
        attrs.push(KeyValue::new("http.response.body.size", n as i64));
    }
    if let Some(reason) = s.malformed {
        attrs.push(KeyValue::new("sonde.malformed", reason));
    }
    if error {
        let (description, error_type): (&'static str, Value) = if s.status == 0 {
            ("no response", "no_response".into())
        } else {
            ("", i64::from(s.status).to_string().into())
        };
        attrs.push(KeyValue::new("error.type", error_type));
        trace::Status::Error {
            description: Cow::Borrowed(description),
        }
    } else {
        trace::Status::Unset
    }
}
