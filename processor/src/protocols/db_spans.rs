//! Database and cache exchanges to spans: kind from the direction of the command (this process
//! sent it: CLIENT; it received it, a selected database server: SERVER), endpoints from the
//! connection, the database attributes from the exchange.

use super::http2::Flow;
use super::{db, db::DbExchange, streams::ConnMeta};
use crate::span::{IdSource, ServiceInfo, Span, SpanId, SpanKind, TraceId, addr};

/// Builds the span of one database operation.
pub fn build(
    meta: &ConnMeta,
    ex: &DbExchange,
    service: &ServiceInfo<'_>,
    sanitize: bool,
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
    let db = ex.db(sanitize);
    Span {
        trace_id: TraceId(ids.trace_id()),
        span_id: SpanId(ids.span_id()),
        parent_span_id: None,
        kind,
        name: db::span_name(&db),
        method: "".into(),
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
        db: Some(db),
        messaging: None,
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
        trace_state: None,
    }
}
