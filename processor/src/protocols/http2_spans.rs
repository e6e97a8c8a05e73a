//! HTTP/2 exchanges to spans: one span per stream, from the request's first HEADERS to the
//! END_STREAM of its response (for gRPC, the trailers). A stream is an RPC span when its
//! `content-type` is `application/grpc*` (`grpc`), else an HTTP span with
//! `network.protocol.version` 2.

use super::{
    grpc,
    http1::{
        InvalidContext,
        parse::{QueryPolicy, parse_traceparent, tracestate_value},
    },
    http2::{Exchange, Flow, Outcome},
    streams::ConnMeta,
};
use crate::span::{IdSource, ServiceInfo, Span, SpanId, SpanKind, TraceId, addr};

/// Why an exchange gives no span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSpan {
    /// The request's headers could not be decoded (header compression state unknown after a
    /// mid-stream pick-up or a capture gap): its method and path are unknown and never guessed.
    HeadersUnknown,
}

/// Splits `:path` into path and query.
fn split_path(path: &str) -> (String, Option<String>) {
    match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    }
}

/// Builds the span of one completed stream.
pub fn build(
    meta: &ConnMeta,
    ex: &Exchange,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    mono_to_unix: i128,
    ids: &mut impl IdSource,
) -> Result<(Span, InvalidContext), NoSpan> {
    if matches!(ex.outcome, Outcome::HeadersUnknown) {
        return Err(NoSpan::HeadersUnknown);
    }
    let kind = match ex.request_flow {
        Flow::Inbound => SpanKind::Server,
        Flow::Outbound => SpanKind::Client,
    };
    let local = addr(meta.family, &meta.local_addr);
    let peer = addr(meta.family, &meta.peer_addr);
    let (server_address, server_port, client_address, client_port) = match kind {
        SpanKind::Server => (local, meta.local_port, peer, meta.peer_port),
        SpanKind::Client => (peer, meta.peer_port, local, meta.local_port),
    };
    let req = &ex.request;
    let traceparent = req
        .traceparent
        .as_deref()
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let invalid = InvalidContext(req.traceparent.is_some() && traceparent.is_none());
    let trace_state = match traceparent {
        Some(_) => req
            .tracestate
            .as_deref()
            .and_then(|v| tracestate_value(v.as_bytes())),
        None => None,
    };
    // As on HTTP/1: the incoming context for a server span, the application's own outgoing
    // context (an OpenTelemetry SDK) for a client span.
    let (trace_id, parent, parent_sampled) = match traceparent {
        Some((trace, parent, flags)) => (trace, Some(parent), Some(flags & 1 == 1)),
        None => (ids.trace_id(), None, None),
    };
    let method = req.method.clone().unwrap_or_default();
    let (path, raw_query) = split_path(req.path.as_deref().unwrap_or(""));
    let rpc = grpc::rpc_of(ex);
    let status = ex.response.status.unwrap_or(0);
    let to_unix =
        |mono: u64| -> u64 { (mono as i128 + mono_to_unix).clamp(0, u64::MAX as i128) as u64 };
    let start = ex.request_start_ns;
    let end = ex.end_ns.max(start);
    let (method, method_original) = match crate::semconv::method_value(&method) {
        "_OTHER" if !method.is_empty() => ("_OTHER".to_string(), Some(method)),
        _ => (method, None),
    };
    let name = match &rpc {
        Some(r) => r.method.clone(),
        None if method.is_empty() || method_original.is_some() => "HTTP".into(),
        None => method.clone(),
    };
    let span = Span {
        trace_id: TraceId(trace_id),
        span_id: SpanId(ids.span_id()),
        parent_span_id: parent.map(SpanId),
        kind,
        name,
        method: method.into(),
        path,
        query: query.apply(raw_query),
        route: None,
        status,
        host: req.authority.clone(),
        protocol_version: "2",
        scheme: if meta.tls { "https" } else { "http" },
        user_agent: req.user_agent.clone(),
        method_original,
        rpc,
        db: None,
        messaging: None,
        server_address,
        server_port,
        client_address,
        client_port,
        request_body_size: Some(ex.request_body_bytes),
        response_body_size: ex.response.status.map(|_| ex.response_body_bytes),
        request_bytes: ex.request_body_bytes,
        response_bytes: ex.response_body_bytes,
        start_unix_nano: to_unix(start),
        end_unix_nano: to_unix(end),
        duration_ns: end - start,
        service_name: service.name.to_string(),
        service_namespace: service.namespace.map(str::to_string),
        pid: meta.pid,
        tid: meta.tid,
        malformed: match ex.outcome {
            Outcome::Reset(_) => Some("stream reset"),
            _ => None,
        },
        no_response: ex.response.status.is_none(),
        parent_sampled,
        trace_state,
    };
    Ok((span, invalid))
}
