//! Messaging exchanges to spans: the direction of the request gives the span's direction
//! (this process sent it: a client, exported as PRODUCER for `publish` and CONSUMER for
//! `process`; it received it, a selected broker: SERVER), endpoints from the connection, the
//! messaging attributes from the exchange. Payload bytes never reach a span: the exchange
//! carries only topic, client id and error code.

use super::http2::Flow;
use super::{messaging, messaging::MessagingExchange, streams::ConnMeta};
use crate::span::{IdSource, ServiceInfo, Span, SpanId, SpanKind, TraceId, addr};

/// Builds the span of one messaging operation.
pub fn build(
    meta: &ConnMeta,
    ex: &MessagingExchange,
    service: &ServiceInfo<'_>,
    mono_to_unix: i128,
    ids: &mut impl IdSource,
) -> Span {
    let kind = match ex.request_flow {
        Flow::Outbound => SpanKind::Client,
        Flow::Inbound => SpanKind::Server,
    };
    let local = addr(meta.family, &meta.local_addr);
    let peer = addr(meta.family, &meta.peer_addr);
    let (server_address, server_port, client_address, client_port) = match kind {
        SpanKind::Server => (local, meta.local_port, peer, meta.peer_port),
        SpanKind::Client => (peer, meta.peer_port, local, meta.local_port),
    };
    let to_unix =
        |mono: u64| -> u64 { (mono as i128 + mono_to_unix).clamp(0, u64::MAX as i128) as u64 };
    let start = ex.start_ns;
    let end = ex.end_ns.max(start);
    let m = ex.messaging();
    Span {
        trace_id: TraceId(ids.trace_id()),
        span_id: SpanId(ids.span_id()),
        parent_span_id: None,
        kind,
        name: messaging::span_name(&m),
        method: String::new(),
        path: String::new(),
        query: None,
        route: None,
        status: 0,
        host: None,
        protocol_version: "",
        scheme: "",
        user_agent: None,
        method_original: None,
        rpc: None,
        db: None,
        messaging: Some(m),
        server_address,
        server_port,
        client_address,
        client_port,
        request_body_size: None,
        response_body_size: None,
        request_bytes: ex.request_bytes,
        response_bytes: ex.response_bytes,
        start_unix_nano: to_unix(start),
        end_unix_nano: to_unix(end),
        duration_ns: end - start,
        service_name: service.name.to_string(),
        service_namespace: service.namespace.map(str::to_string),
        pid: meta.pid,
        tid: meta.tid,
        malformed: None,
        no_response: ex.no_response,
        parent_sampled: None,
    }
}
