//! gRPC over HTTP/2: which streams are RPCs (`content-type: application/grpc*`), their method
//! and status, when a call is an error, and the names of their span attributes and metrics.
//! Names follow what the reference system's current code emits (OBI `tracesgen.go` and its
//! metric attributes): `rpc.system.name`, `rpc.method` as `pkg.Service/Method`, the status as
//! the string `rpc.response.status_code`, `rpc.server.call.duration` /
//! `rpc.client.call.duration` in seconds.

use super::http2::Exchange;
use crate::{
    semconv::Instrument,
    span::{Rpc, SpanKind},
};

/// `rpc.system` value.
pub const SYSTEM: &str = "grpc";

/// The RPC part of a stream's span; None for streams that are not gRPC.
pub fn rpc_of(ex: &Exchange) -> Option<Rpc> {
    let content_type = ex.request.content_type.as_deref()?;
    if !content_type.starts_with("application/grpc") {
        return None;
    }
    let path = ex.request.path.as_deref().unwrap_or("");
    Some(Rpc {
        system: SYSTEM,
        method: path.strip_prefix('/').unwrap_or(path).to_string(),
        status_code: ex.response.grpc_status,
    })
}

/// The canonical name of a gRPC status code (`grpc/doc/statuscodes.md`).
pub fn status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

/// Whether an RPC span is an error under the RPC conventions: a server call ending in
/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or DATA_LOSS; a client
/// call ending in anything but OK; any call that ended without a status.
pub fn is_error(kind: SpanKind, status: Option<u32>) -> bool {
    match (kind, status) {
        (_, None) => true,
        (SpanKind::Server, Some(code)) => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        (SpanKind::Client, Some(code)) => code != 0,
    }
}

/// Span attributes of an RPC span, after the endpoint attributes every span has:
/// `rpc.system.name`, `rpc.method` (`pkg.Service/Method`), `rpc.response.status_code` (the
/// status name, as a string) and, when the span is an error, `error.type` (the status name,
/// or `no_status`).
pub fn span_attributes(kind: SpanKind, rpc: &Rpc, push: &mut impl FnMut(&'static str, AttrValue)) {
    push(SYSTEM_KEY, AttrValue::Static(rpc.system));
    push(METHOD_KEY, AttrValue::Str(rpc.method.clone()));
    if let Some(code) = rpc.status_code.filter(|c| *c <= 16) {
        push(STATUS_KEY, AttrValue::Static(status_name(code)));
    }
    if is_error(kind, rpc.status_code) {
        push("error.type", AttrValue::Static(error_type(rpc.status_code)));
    }
}

/// `error.type` of a failed call: the status name, `_OTHER` for codes outside the enum,
/// `no_status` when the call ended without one (reset, connection closed).
pub fn error_type(status: Option<u32>) -> &'static str {
    status.map_or("no_status", status_name)
}

/// Attribute keys, shared by spans and metrics.
pub const SYSTEM_KEY: &str = "rpc.system.name";
pub const METHOD_KEY: &str = "rpc.method";
pub const STATUS_KEY: &str = "rpc.response.status_code";

/// The RPC duration histograms (seconds, the HTTP duration buckets).
pub const SERVER_DURATION: Instrument = Instrument {
    name: "rpc.server.call.duration",
    description: "Duration of RPC server calls",
};
pub const CLIENT_DURATION: Instrument = Instrument {
    name: "rpc.client.call.duration",
    description: "Duration of RPC client calls",
};

/// An attribute value, so this module needs neither the OTLP types nor the printer's.
pub enum AttrValue {
    Static(&'static str),
    Str(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rules_differ_by_kind() {
        assert!(!is_error(SpanKind::Server, Some(5)));
        assert!(is_error(SpanKind::Client, Some(5)));
        assert!(is_error(SpanKind::Server, Some(13)));
        assert!(!is_error(SpanKind::Client, Some(0)));
        assert!(is_error(SpanKind::Server, None));
        assert_eq!(status_name(5), "NOT_FOUND");
        assert_eq!(status_name(99), "_OTHER");
    }
}
