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
        trace_state: None,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{KeyValue, Value, trace};

    use super::*;
    use crate::otlp::convert::{scope, span_data};
    use crate::protocols::messaging::Operation;
    use crate::span::ExportKind;

    fn meta() -> ConnMeta {
        let mut local_addr = [0; 16];
        local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ConnMeta {
            pid: 7,
            tid: 7,
            family: 2,
            local_addr,
            peer_addr: local_addr,
            local_port: 40_000,
            peer_port: 9092,
            tls: false,
        }
    }

    fn exchange(flow: Flow, operation: Operation, error_code: Option<i16>) -> MessagingExchange {
        MessagingExchange {
            system: "kafka",
            request_flow: flow,
            operation,
            destination: Some("orders".into()),
            client_id: Some("app-1".into()),
            error_code,
            start_ns: 1_000,
            end_ns: 3_000,
            request_bytes: 100,
            response_bytes: 50,
            no_response: false,
            fire_and_forget: false,
            partial: false,
        }
    }

    fn build_one(ex: &MessagingExchange) -> Span {
        let service = ServiceInfo {
            name: "svc",
            namespace: None,
        };
        build(&meta(), ex, &service, 0, &mut rand::rng())
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_client_publish_is_a_producer_span() {
        let s = build_one(&exchange(Flow::Outbound, Operation::Publish, None));
        assert_eq!(s.export_kind(), ExportKind::Producer);
        assert_eq!(s.name, "publish orders");
        assert_eq!((s.server_port, s.client_port), (9092, 40_000));
        assert_eq!(s.duration_ns, 2_000);
        let d = span_data(s, &scope());
        assert_eq!(d.span_kind, trace::SpanKind::Producer);
        assert_eq!(d.status, trace::Status::Unset);
        for (k, v) in [
            ("messaging.system", "kafka"),
            ("messaging.destination.name", "orders"),
            ("messaging.operation.name", "publish"),
            ("messaging.operation.type", "publish"),
            ("messaging.client.id", "app-1"),
            ("server.address", "127.0.0.1"),
        ] {
            assert_eq!(attr(&d.attributes, k), Some(&Value::from(v)), "{k}");
        }
        assert_eq!(attr(&d.attributes, "server.port"), Some(&Value::I64(9092)));
        assert_eq!(attr(&d.attributes, "error.type"), None);
    }

    #[test]
    fn a_failed_fetch_is_a_consumer_span_with_the_error_name() {
        let s = build_one(&exchange(Flow::Outbound, Operation::Process, Some(3)));
        assert_eq!(s.name, "process orders");
        let d = span_data(s, &scope());
        assert_eq!(d.span_kind, trace::SpanKind::Consumer);
        assert!(matches!(d.status, trace::Status::Error { .. }));
        assert_eq!(
            attr(&d.attributes, "error.type"),
            Some(&Value::from("UNKNOWN_TOPIC_OR_PARTITION"))
        );
    }

    #[test]
    fn a_broker_gives_server_spans() {
        let s = build_one(&exchange(Flow::Inbound, Operation::Publish, None));
        assert_eq!(s.export_kind(), ExportKind::Server);
        assert_eq!((s.server_port, s.client_port), (40_000, 9092));
        let line = crate::printer::text_line(&s);
        assert!(line.contains(" SERVER "), "{line}");
        assert!(line.contains(" kafka publish topic=orders"), "{line}");
        let d = span_data(s, &scope());
        assert_eq!(d.span_kind, trace::SpanKind::Server);
        assert_eq!(attr(&d.attributes, "client.port"), Some(&Value::I64(9092)));
    }
}
