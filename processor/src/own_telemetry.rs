//! Recognises an application's own OpenTelemetry export calls (OTLP over HTTP or gRPC) among
//! its client spans. Such a call is never turned into a span: it is the application's SDK
//! talking to its collector, and tracing it would make telemetry about telemetry. Its process
//! is then known to export its own telemetry, which `discovery.exclude_otel_instrumented_services`
//! (default true, as in the reference system) turns into a narrowing request: Sonde stops
//! capturing that process instead of doubling what its SDK already reports.

use crate::span::{Span, SpanKind};

/// The OTLP/HTTP signal paths (`/v1/traces`, …), which collectors serve at the root or under
/// a prefix.
const OTLP_HTTP_PATHS: [&str; 3] = ["/v1/traces", "/v1/metrics", "/v1/logs"];

/// The OTLP/gRPC services (`rpc.method` is `service/method`).
const OTLP_GRPC_SERVICES: [&str; 3] = [
    "opentelemetry.proto.collector.trace.v1.TraceService/",
    "opentelemetry.proto.collector.metrics.v1.MetricsService/",
    "opentelemetry.proto.collector.logs.v1.LogsService/",
];

/// True for a client span that is an OTLP export: a POST to an OTLP/HTTP signal path, or a
/// call of an OTLP/gRPC collector service.
pub fn is_otlp_export(s: &Span) -> bool {
    if s.kind != SpanKind::Client {
        return false;
    }
    if let Some(rpc) = &s.rpc {
        return OTLP_GRPC_SERVICES
            .iter()
            .any(|svc| rpc.method.starts_with(svc));
    }
    s.db.is_none()
        && s.messaging.is_none()
        && s.method == "POST"
        && OTLP_HTTP_PATHS.iter().any(|p| s.path.ends_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Rpc;

    fn client(method: &str, path: &str) -> Span {
        Span {
            kind: SpanKind::Client,
            method: method.to_string().into(),
            path: path.into(),
            ..Span::fixture()
        }
    }

    #[test]
    fn otlp_exports_over_http_and_grpc_are_recognised() {
        let mut s = client("POST", "/v1/traces");
        assert!(is_otlp_export(&s));
        s.path = "/otlp/v1/metrics".into();
        assert!(is_otlp_export(&s));
        s.path = "/v1/logs".into();
        assert!(is_otlp_export(&s));
        // Not an export: another path, another method, a server span.
        s.path = "/v1/tracesx".into();
        assert!(!is_otlp_export(&s));
        let get = client("GET", "/v1/traces");
        assert!(!is_otlp_export(&get));
        let mut server = client("POST", "/v1/traces");
        server.kind = SpanKind::Server;
        assert!(!is_otlp_export(&server));
        let mut grpc = client("POST", "/ignored");
        grpc.rpc = Some(Rpc {
            system: "grpc",
            method: "opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
            status_code: Some(0),
        });
        assert!(is_otlp_export(&grpc));
        grpc.rpc = Some(Rpc {
            system: "grpc",
            method: "helloworld.Greeter/SayHello".into(),
            status_code: Some(0),
        });
        assert!(!is_otlp_export(&grpc));
    }
}
