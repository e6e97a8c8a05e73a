//! HTTP/1.x: the kernel pairs each request with the start of its response (`HttpEvent`),
//! `exchange` completes the exchange from later records, `parse` reads the captured heads, and
//! `build` turns a completed exchange into a span.

pub mod exchange;
pub mod parse;

use sonde_schema::{DIRECTION_CLIENT, FLAG_NO_RESPONSE, FLAG_TLS, HttpEvent};

use self::parse::{QueryPolicy, RequestError};
use crate::{
    semconv::method_value,
    span::{IdSource, ServiceInfo, Span, SpanId, SpanKind, SpanUse, TraceId, addr},
};

/// Outcome of building a span.
pub enum Built {
    /// The span, and whether the request carried a `traceparent` that was not valid (ignored:
    /// the span starts a trace of its own).
    Span(Box<Span>, InvalidContext),
    /// The request bytes are not HTTP at all: no span, counted by the caller.
    NotHttp,
}

/// True when the request carried a `traceparent` header whose value is not a valid
/// version-00 trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidContext(pub bool);

/// Builds the span for `ev`. `mono_to_unix` converts CLOCK_MONOTONIC ns to Unix ns; `query`
/// decides whether the query is kept and what of it is redacted.
pub fn build(
    ev: &HttpEvent,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    mono_to_unix: i128,
    ids: &mut impl IdSource,
) -> Built {
    build_for(
        ev,
        service,
        query,
        mono_to_unix,
        ids,
        SpanUse::Everything,
        None,
    )
}

/// `build` for a span used as `span_use` says: for metrics only, no random ids are drawn and
/// no name is made (what only a span's reader needs); a server span its sampler drops keeps
/// its ids and goes without the name, `Host` and `User-Agent`.
pub fn build_for(
    ev: &HttpEvent,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    mono_to_unix: i128,
    ids: &mut impl IdSource,
    span_use: SpanUse,
    spare: Option<Box<Span>>,
) -> Built {
    let read = span_use.draws_ids();
    // The spare's allocation and its string buffers are written over: no allocation for them
    // per span once spans go round (the sink's spare, the exporter's spans handed back).
    let (spare, buffers, mut service_name, name_buffer) = match spare {
        Some(mut b) => {
            let buffers = parse::HeadBuffers {
                path: std::mem::take(&mut b.path),
                host: b.host.take(),
                user_agent: b.user_agent.take(),
            };
            let service_name = std::mem::take(&mut b.service_name);
            let name = std::mem::take(&mut b.name);
            (Some(b), buffers, service_name, name)
        }
        None => (
            None,
            parse::HeadBuffers::default(),
            String::new(),
            String::new(),
        ),
    };
    // A client span is kept whole behind a sampler (below): read whole at once.
    let span_use = match span_use {
        SpanUse::Sampled(_) if ev.direction == DIRECTION_CLIENT => SpanUse::Everything,
        other => other,
    };
    let request = parse::parse_request_for(ev.request(), span_use, buffers);
    let (mut head, malformed) = match request {
        Ok(h) => (h, None),
        Err(RequestError::NotHttp) => return Built::NotHttp,
        Err(e) => {
            // Keep what is readable (the method and the start of the target) for the operator,
            // never more than the request line.
            let (method, path, query) = parse::malformed_request_start(ev.request());
            (
                parse::RequestHead {
                    method: method.into(),
                    path,
                    query,
                    ..Default::default()
                },
                Some(e.as_str()),
            )
        }
    };
    let response = parse::parse_response(ev.response());
    let no_response = ev.flags & FLAG_NO_RESPONSE != 0 || ev.response_bytes == 0;
    let status = response.as_ref().map_or(0, |r| r.status);
    let malformed = malformed.or(if !no_response && response.is_none() {
        Some("response is not HTTP/1.x")
    } else {
        None
    });

    let kind = if ev.direction == DIRECTION_CLIENT {
        SpanKind::Client
    } else {
        SpanKind::Server
    };
    let local = addr(ev.family, &ev.local_addr);
    let peer = addr(ev.family, &ev.peer_addr);
    let (server_address, server_port, client_address, client_port) = match kind {
        SpanKind::Server => (local, ev.local_port, peer, ev.peer_port),
        SpanKind::Client => (peer, ev.peer_port, local, ev.local_port),
    };

    // A server span continues the caller's trace when the request carried traceparent; a
    // client span whose request already carries one (an OpenTelemetry SDK in the application)
    // joins the application's trace under the application's span, so the SDK and Sonde never
    // make two traces of one call. The header is read from the captured bytes, else from
    // what the kernel found further on in the header block.
    let (context, invalid) = match (head.traceparent, ev.extra_traceparent()) {
        (Some(tp), _) => (Some(tp), InvalidContext(false)),
        (None, Some((value, _source))) => match parse::parse_traceparent(value) {
            Some(tp) => (Some(tp), InvalidContext(false)),
            None => (None, InvalidContext(true)),
        },
        (None, None) => (None, InvalidContext(head.traceparent_invalid)),
    };
    let (trace_id, parent, parent_sampled) = match context {
        Some((trace, parent, flags)) => (trace, Some(parent), Some(flags & 1 == 1)),
        None if read => (ids.trace_id(), None, None),
        None => ([0; 16], None, None),
    };
    // The trace state travels with the context it belongs to, never alone.
    let trace_state = context.and(head.tracestate.clone());
    let span_id = if read { ids.span_id() } else { [0; 8] };
    // Context propagation: Sonde put this `traceparent` into the request on its way out; its
    // ids are this client span's own (the root of its trace), and its flags the sampling
    // decision already sent downstream (kept in `parent_sampled`, which also tells the
    // linker the span's trace is settled).
    // Sent while its thread served a request, the injected ids continue that request's
    // trace, and the client span is the server span's child (`injected_parent`).
    let (trace_id, span_id, parent, parent_sampled) = match injected_context(ev, &head) {
        Some((trace, span, flags)) => (
            trace,
            span,
            ev.kernel_injected_parent(),
            Some(flags & 1 == 1),
        ),
        None => (trace_id, span_id, parent, parent_sampled),
    };
    // Context propagation on: the kernel gave this server span its ids (the caller's trace
    // id when its traceparent is valid), and the requests the serving thread sent carry them
    // downstream; the span takes exactly those. The caller stays its parent when the kernel
    // took the same trace id (both judge validity alike; a differing one is not a parent).
    let (trace_id, span_id, parent, parent_sampled) = match server_context(ev) {
        Some((trace, span)) => {
            let continues = trace == trace_id;
            (
                trace,
                span,
                parent.filter(|_| continues),
                parent_sampled.filter(|_| continues),
            )
        }
        None => (trace_id, span_id, parent, parent_sampled),
    };

    // Whether anything reads the span past the metrics: a sampled server span's decision
    // follows from its ids, settled now (the sink makes the same one with the same inputs).
    let kept = match span_use {
        SpanUse::Everything => true,
        SpanUse::MetricsOnly => false,
        SpanUse::Sampled(sampler) => crate::sampling::keeps(sampler, &trace_id, parent_sampled),
    };
    if kept
        && span_use != SpanUse::Everything
        && let Some((host, user_agent)) = parse::request_details(ev.request())
    {
        head.host = host;
        head.user_agent = user_agent;
    }

    let to_unix =
        |mono: u64| -> u64 { (mono as i128 + mono_to_unix).clamp(0, u64::MAX as i128) as u64 };
    let end_ns = ev.end_ns.max(ev.start_ns);
    let request_body_size = parse::body_size(ev.request_bytes, head.head_len, head.content_length);
    let response_body_size = response
        .as_ref()
        .and_then(|r| parse::body_size(ev.response_bytes, r.head_len, r.content_length));

    // Methods outside the standard set are `_OTHER`, named `HTTP`, with the original kept
    // apart, as the HTTP conventions ask.
    let (method, method_original) = match method_value(&head.method) {
        "_OTHER" if !head.method.is_empty() => ("_OTHER".into(), Some(head.method.into_owned())),
        _ => (head.method, None),
    };
    // The name has room for ` route` too: the route decorator names most spans again
    // (`Span::set_route`), in the same buffer when the route is no longer than the path.
    let name = if !kept {
        String::new()
    } else if method.is_empty() || method_original.is_some() {
        "HTTP".into()
    } else {
        let mut name = name_buffer;
        name.clear();
        name.reserve(method.len() + 1 + head.path.len());
        name.push_str(&method);
        name
    };
    service_name.clear();
    service_name.push_str(service.name);
    let span = Span {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        parent_span_id: parent.map(SpanId),
        kind,
        name,
        method,
        path: head.path,
        query: query.apply(head.query),
        route: None,
        status,
        host: head.host,
        protocol_version: head.version,
        scheme: if ev.flags & FLAG_TLS != 0 {
            "https"
        } else {
            "http"
        },
        user_agent: head.user_agent,
        method_original,
        rpc: None,
        db: None,
        messaging: None,
        server_address,
        server_port,
        client_address,
        client_port,
        request_body_size,
        response_body_size,
        request_bytes: ev.request_bytes,
        response_bytes: ev.response_bytes,
        start_unix_nano: to_unix(ev.start_ns),
        end_unix_nano: to_unix(end_ns),
        duration_ns: end_ns - ev.start_ns,
        service_name,
        service_namespace: service.namespace.map(str::to_string),
        pid: ev.pid,
        tid: ev.tid,
        malformed,
        no_response,
        parent_sampled,
        trace_state,
    };
    let span = match spare {
        Some(mut b) => {
            *b = span;
            b
        }
        None => Box::new(span),
    };
    Built::Span(span, invalid)
}

/// The ids Sonde's kernel side injected into this client request (`TRACEPARENT_INJECTED`),
/// when the application's own bytes carry no `traceparent`.
fn injected_context(ev: &HttpEvent, head: &parse::RequestHead) -> Option<([u8; 16], [u8; 8], u8)> {
    match ev.extra_traceparent() {
        Some((value, sonde_schema::TRACEPARENT_INJECTED))
            if ev.direction == DIRECTION_CLIENT && head.traceparent.is_none() =>
        {
            parse::parse_traceparent(value)
        }
        _ => None,
    }
}

/// The ids the kernel gave this server span (context propagation on).
fn server_context(ev: &HttpEvent) -> Option<([u8; 16], [u8; 8])> {
    if ev.direction == DIRECTION_CLIENT {
        return None;
    }
    ev.kernel_server_ids()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sampler;
    use sonde_schema::{DIRECTION_SERVER, EVENT_HTTP};

    struct FixedIds;
    impl IdSource for FixedIds {
        fn trace_id(&mut self) -> [u8; 16] {
            [1; 16]
        }
        fn span_id(&mut self) -> [u8; 8] {
            [2; 8]
        }
    }

    fn event(req: &[u8], resp: &[u8]) -> HttpEvent {
        let mut e = HttpEvent::zeroed();
        e.kind = EVENT_HTTP;
        e.direction = DIRECTION_SERVER;
        e.family = 2;
        e.pid = 10;
        e.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.peer_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        e.local_port = 8080;
        e.peer_port = 40000;
        e.start_ns = 1_000;
        e.end_ns = 5_000;
        e.request_len = req.len() as u16;
        e.request[..req.len()].copy_from_slice(req);
        e.response_len = resp.len() as u16;
        e.response[..resp.len()].copy_from_slice(resp);
        e.request_bytes = req.len() as u64;
        e.response_bytes = resp.len() as u64;
        e
    }

    fn span(e: &HttpEvent) -> Span {
        span_with(
            e,
            &QueryPolicy {
                export: true,
                extra_sensitive: Vec::new(),
            },
        )
    }

    fn span_with(e: &HttpEvent, query: &QueryPolicy) -> Span {
        match build(
            e,
            &ServiceInfo {
                name: "svc",
                namespace: None,
            },
            query,
            1_000_000,
            &mut FixedIds,
        ) {
            Built::Span(s, _) => *s,
            Built::NotHttp => panic!("expected a span"),
        }
    }

    #[test]
    fn a_span_for_metrics_only_draws_no_ids_and_takes_no_name() {
        let e = event(
            b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnope",
        );
        /// Fails the test if the builder draws an id.
        struct NoDraws;
        impl IdSource for NoDraws {
            fn trace_id(&mut self) -> [u8; 16] {
                panic!("a trace id was drawn for a metrics-only span")
            }
            fn span_id(&mut self) -> [u8; 8] {
                panic!("a span id was drawn for a metrics-only span")
            }
        }
        let Built::Span(mut s, _) = built_as(&e, 1_000_000, &mut NoDraws, SpanUse::MetricsOnly)
        else {
            panic!("expected a span")
        };
        // What the metrics read is all there, as for a full span.
        let full = span(&e);
        assert_eq!(
            (&*s.method, s.path.as_str(), s.status, s.duration_ns),
            (
                &*full.method,
                full.path.as_str(),
                full.status,
                full.duration_ns
            )
        );
        assert_eq!((s.server_port, s.client_port), (8080, 40000));
        assert_eq!(s.response_body_size, full.response_body_size);
        assert_eq!(
            (s.trace_id.0, s.span_id.0, s.name.as_str()),
            ([0; 16], [0; 8], "")
        );
        // The route is set without naming the span; a full span is named by it.
        s.set_route(Some("/a".into()));
        assert_eq!((s.route.as_deref(), s.name.as_str()), (Some("/a"), ""));
        let mut full = full;
        full.set_route(Some("/a".into()));
        assert_eq!(full.name, "GET /a");
    }

    #[test]
    fn a_span_written_into_a_spare_carries_nothing_of_the_spare() {
        let query = QueryPolicy {
            export: true,
            extra_sensitive: Vec::new(),
        };
        let build = |e: &HttpEvent, service: &str, span_use, spare| {
            let service = ServiceInfo {
                name: service,
                namespace: None,
            };
            match build_for(e, &service, &query, 0, &mut FixedIds, span_use, spare) {
                Built::Span(s, _) => s,
                Built::NotHttp => panic!("expected a span"),
            }
        };
        // The spare: a whole span with a long path, a query, Host, User-Agent, a route, a
        // long service name, a client span of another process.
        let mut old = event(
            b"PROPFIND /a/long/path/to/something?x=1 HTTP/1.1\r\nHost: old\r\nUser-Agent: old/1\r\n\r\n",
            b"HTTP/1.1 500 Oops\r\n\r\n",
        );
        old.direction = DIRECTION_CLIENT;
        old.pid = 77;
        let mut spare = build(
            &old,
            "a-much-longer-service-name",
            SpanUse::Everything,
            None,
        );
        spare.set_route(Some("/a/{id}".to_string()));
        spare.request_body_size = Some(5);
        let bare = event(b"GET /b HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        let with_headers = event(
            b"GET /b HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        for new in [&bare, &with_headers] {
            for span_use in [SpanUse::Everything, SpanUse::MetricsOnly] {
                let fresh = build(new, "svc", span_use, None);
                let reused = build(new, "svc", span_use, Some(spare.clone()));
                // Every field, those the printer leaves out included.
                assert_eq!(format!("{reused:?}"), format!("{fresh:?}"), "{span_use:?}");
                assert_eq!(
                    (reused.path.as_str(), reused.service_name.as_str()),
                    ("/b", "svc")
                );
                assert_eq!(
                    (reused.route.as_deref(), reused.query.as_deref()),
                    (None, None)
                );
            }
        }
        let whole = build(&with_headers, "svc", SpanUse::Everything, Some(spare));
        assert_eq!(
            (
                whole.name.as_str(),
                whole.host.as_deref(),
                whole.user_agent.as_deref()
            ),
            ("GET", Some("h"), Some("u"))
        );
    }

    #[test]
    fn a_server_span_its_sampler_drops_keeps_its_ids_and_nothing_only_a_reader_needs() {
        /// Draws the given trace id, and span id 2s.
        struct Ids([u8; 16]);
        impl IdSource for Ids {
            fn trace_id(&mut self) -> [u8; 16] {
                self.0
            }
            fn span_id(&mut self) -> [u8; 8] {
                [2; 8]
            }
        }
        let request = b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n";
        let e = event(request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let half = SpanUse::Sampled(Sampler::TraceIdRatio(0.5));
        let build = |e: &HttpEvent, trace: [u8; 16], span_use| match built_as(
            e,
            0,
            &mut Ids(trace),
            span_use,
        ) {
            Built::Span(s, _) => s,
            Built::NotHttp => panic!("expected a span"),
        };
        // The ratio keeps ids whose last 8 bytes are below 2^63 at 0.5: [1; 16] is kept,
        // [0xff; 16] is not.
        let kept = build(&e, [1; 16], half);
        let full = build(&e, [1; 16], SpanUse::Everything);
        assert_eq!(
            (
                kept.name.as_str(),
                kept.host.as_deref(),
                kept.user_agent.as_deref()
            ),
            ("GET", Some("h"), Some("curl/8"))
        );
        assert_eq!((kept.trace_id, kept.span_id), (full.trace_id, full.span_id));
        let dropped = build(&e, [0xff; 16], half);
        assert_eq!(
            (dropped.trace_id.0, dropped.span_id.0),
            ([0xff; 16], [2; 8]),
            "the linker needs a dropped span's ids"
        );
        assert_eq!(
            (
                dropped.name.as_str(),
                dropped.host.as_deref(),
                dropped.user_agent.as_deref()
            ),
            ("", None, None)
        );
        assert_eq!((&*dropped.method, dropped.status), ("GET", 200));
        assert!(!crate::sampling::keeps(
            Sampler::TraceIdRatio(0.5),
            &dropped.trace_id.0,
            dropped.parent_sampled
        ));
        // The caller's decision rules a parent-based sampler: not sampled, dropped whatever
        // the ratio.
        let unsampled_caller = event(
            b"GET /a HTTP/1.1\r\nHost: h\r\ntraceparent: 00-0102030405060708090a0b0c0d0e0f10-1112131415161718-00\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        let s = build(
            &unsampled_caller,
            [1; 16],
            SpanUse::Sampled(Sampler::ParentBasedTraceIdRatio(1.0)),
        );
        assert_eq!((s.name.as_str(), s.host.as_deref()), ("", None));
        assert_eq!(
            s.parent_span_id.map(|p| p.0),
            Some([0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])
        );
        // A sampled caller rules too: kept whatever the ratio, so whole.
        let sampled_caller = event(
            b"GET /a HTTP/1.1\r\nHost: h\r\ntraceparent: 00-0102030405060708ffffffffffffffff-1112131415161718-01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        let s = build(
            &sampled_caller,
            [1; 16],
            SpanUse::Sampled(Sampler::ParentBasedTraceIdRatio(0.1)),
        );
        assert!(!crate::sampling::ratio_keeps(&s.trace_id.0, 0.1));
        assert_eq!((s.name.as_str(), s.host.as_deref()), ("GET", Some("h")));
        // A client span is built whole: the linker may yet put it into another trace.
        let mut client = e;
        client.direction = DIRECTION_CLIENT;
        let c = build(&client, [0xff; 16], half);
        assert_eq!(
            (c.kind, c.name.as_str(), c.host.as_deref()),
            (SpanKind::Client, "GET", Some("h"))
        );
    }

    #[test]
    fn server_span_fields() {
        let s = span(&event(
            b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnope",
        ));
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(
            (&*s.method, s.path.as_str(), s.query.as_deref()),
            ("GET", "/a", Some("b=1"))
        );
        assert_eq!(s.status, 404);
        assert_eq!(
            (s.server_address.to_string().as_str(), s.server_port),
            ("127.0.0.1", 8080)
        );
        assert_eq!(
            (s.client_address.to_string().as_str(), s.client_port),
            ("127.0.0.2", 40000)
        );
        assert_eq!(s.duration_ns, 4_000);
        assert_eq!(s.start_unix_nano, 1_001_000);
        assert_eq!(s.request_body_size, Some(0));
        assert_eq!(s.response_body_size, Some(4));
        assert_eq!(s.trace_id.to_string(), "01".repeat(16));
        assert!(s.malformed.is_none() && !s.no_response);
    }

    #[test]
    fn version_user_agent_and_non_standard_methods() {
        let s = span(&event(
            b"PROPFIND /dav HTTP/1.0\r\nUser-Agent: curl/7.88.1\r\n\r\n",
            b"HTTP/1.0 207 Multi-Status\r\n\r\n",
        ));
        assert_eq!(
            (&*s.method, s.method_original.as_deref(), s.name.as_str()),
            ("_OTHER", Some("PROPFIND"), "HTTP")
        );
        assert_eq!(s.protocol_version, "1.0");
        assert_eq!(s.user_agent.as_deref(), Some("curl/7.88.1"));
        assert_eq!(s.status, 207);
        let s = span(&event(
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ));
        assert_eq!((s.name.as_str(), s.method_original), ("GET", None));
        assert_eq!(
            (s.protocol_version, s.scheme, s.user_agent),
            ("1.1", "http", None)
        );
    }

    #[test]
    fn continues_incoming_trace() {
        let s = span(&event(
            b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ));
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
    }

    #[test]
    fn a_client_request_carrying_the_applications_context_joins_its_trace() {
        let mut e = event(
            b"GET /down HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        e.direction = DIRECTION_CLIENT;
        let s = span(&e);
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        // The application decided not to sample: Sonde follows its decision.
        assert_eq!(s.parent_sampled, Some(false));
        // Without one, a client span starts a trace of its own.
        let mut e = event(b"GET /down HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        e.direction = DIRECTION_CLIENT;
        let s = span(&e);
        assert_eq!((s.parent_span_id, s.parent_sampled), (None, None));
        assert_ne!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    /// `build_for` as a service "svc" that exports the query.
    fn built_as(
        e: &HttpEvent,
        mono_to_unix: i128,
        ids: &mut impl IdSource,
        span_use: SpanUse,
    ) -> Built {
        let service = ServiceInfo {
            name: "svc",
            namespace: None,
        };
        let query = QueryPolicy {
            export: true,
            extra_sensitive: Vec::new(),
        };
        build_for(e, &service, &query, mono_to_unix, ids, span_use, None)
    }

    fn built(e: &HttpEvent) -> (Span, InvalidContext) {
        match built_as(e, 0, &mut FixedIds, SpanUse::Everything) {
            Built::Span(s, invalid) => (*s, invalid),
            Built::NotHttp => panic!("expected a span"),
        }
    }

    #[test]
    fn the_context_the_kernel_found_past_the_capture_is_used_and_checked() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut e = event(
            b"GET /far HTTP/1.1\r\nX-Pad: p\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        e.traceparent.copy_from_slice(tp);
        e.traceparent_source = sonde_schema::TRACEPARENT_SCANNED;
        let (s, invalid) = built(&e);
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            (s.parent_sampled, invalid),
            (Some(true), InvalidContext(false))
        );
        // The captured header wins over the field.
        let mut e2 = event(
            b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        e2.traceparent.copy_from_slice(tp);
        e2.traceparent_source = sonde_schema::TRACEPARENT_SCANNED;
        assert_eq!(
            built(&e2).0.trace_id.to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        // Not a valid context: ignored (a trace of its own) and reported.
        e.traceparent[3] = b'z';
        let (s, invalid) = built(&e);
        assert_eq!((s.parent_span_id, invalid), (None, InvalidContext(true)));
        assert_eq!(s.trace_id.0, [1; 16]);
        // An invalid header in the capture is reported the same way; an absent one is not.
        let bad = event(
            b"GET / HTTP/1.1\r\ntraceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        assert_eq!(built(&bad).1, InvalidContext(true));
        let none = event(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(built(&none).1, InvalidContext(false));
    }

    #[test]
    fn tracestate_travels_with_its_traceparent_only() {
        let with = event(
            b"GET / HTTP/1.1\r\ntracestate: rojo=00f067aa0ba902b7\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        assert_eq!(
            built(&with).0.trace_state.as_deref(),
            Some("rojo=00f067aa0ba902b7")
        );
        let alone = event(
            b"GET / HTTP/1.1\r\ntracestate: rojo=00f067aa0ba902b7\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        assert_eq!(built(&alone).0.trace_state, None);
        // Longer than W3C's 512 characters: dropped, the context kept.
        let long = format!(
            "GET / HTTP/1.1\r\ntracestate: k={}\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            "v".repeat(600)
        );
        let mut e = event(b"", b"HTTP/1.1 200 OK\r\n\r\n");
        e.request_len = 200;
        e.request[..200].copy_from_slice(&long.as_bytes()[..200]);
        assert_eq!(built(&e).0.trace_state, None);
        assert_eq!(
            parse::tracestate_value(&long.as_bytes()[18..18 + 600]),
            None
        );
    }

    #[test]
    fn malformed_and_missing_responses() {
        let s = span(&event(
            b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            b"HTTP/1.1 414 URI Too Long\r\n",
        ));
        assert_eq!(s.malformed, Some("request line exceeds the captured bytes"));
        assert_eq!(s.status, 414);
        let mut e = event(b"GET / HTTP/1.1\r\n\r\n", b"");
        e.flags = FLAG_NO_RESPONSE;
        let s = span(&e);
        assert!(s.no_response);
        assert_eq!(s.status, 0);
        let s = span(&event(b"GET / HTTP/1.1\r\n\r\n", b"\x00\x01garbage"));
        assert_eq!(s.malformed, Some("response is not HTTP/1.x"));
        assert!(matches!(
            build(
                &event(b"\x16\x03\x01", b""),
                &ServiceInfo {
                    name: "s",
                    namespace: None
                },
                &QueryPolicy::default(),
                0,
                &mut FixedIds
            ),
            Built::NotHttp
        ));
    }

    #[test]
    fn no_query_by_default_and_credentials_redacted_when_enabled() {
        let e = event(
            b"GET /p?X-Amz-Signature=S&password=S&ok=1 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        let s = span_with(&e, &QueryPolicy::default());
        assert_eq!((s.path.as_str(), s.query), ("/p", None));
        let s = span(&e);
        assert_eq!(
            s.query.as_deref(),
            Some("X-Amz-Signature=REDACTED&password=REDACTED&ok=1")
        );
    }

    #[test]
    fn malformed_request_line_does_not_carry_the_next_header() {
        let e = event(
            b"GET /a b HTTP/1.1\r\nAuthorization: Bearer S\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
        );
        for policy in [
            QueryPolicy::default(),
            QueryPolicy {
                export: true,
                ..Default::default()
            },
        ] {
            let s = span_with(&e, &policy);
            assert_eq!(s.malformed, Some("malformed request line"));
            assert_eq!((&*s.method, s.path.as_str()), ("GET", "/a"));
            assert_eq!(s.query, None);
        }
        // A cut request line with a query: the query policy applies to it too.
        let e = event(b"GET /p?token=S&ok=1", b"HTTP/1.1 414 URI Too Long\r\n\r\n");
        let s = span_with(&e, &QueryPolicy::default());
        assert_eq!((s.path.as_str(), s.query), ("/p", None));
        let s = span(&e);
        assert_eq!(s.query.as_deref(), Some("token=REDACTED&ok=1"));
    }

    /// A client exchange whose request the kernel injected `tp` into.
    fn injected_client(tp: &[u8; sonde_schema::TRACEPARENT_LEN]) -> HttpEvent {
        let mut e = event(b"GET /out HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        e.direction = DIRECTION_CLIENT;
        e.traceparent.copy_from_slice(tp);
        e.traceparent_source = sonde_schema::TRACEPARENT_INJECTED;
        e
    }

    #[test]
    fn an_injected_context_gives_the_client_span_its_ids() {
        let mut e = injected_client(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (s, _) = built(&e);
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!((s.parent_span_id, s.parent_sampled), (None, Some(true)));
        // A server never carries an injected value; if one did, it would be the caller's.
        e.direction = DIRECTION_SERVER;
        let (s, _) = built(&e);
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
    }

    #[test]
    fn an_injected_context_sent_while_serving_is_the_server_spans_child() {
        let mut e = injected_client(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        e.injected_parent = [0xab; 8];
        let (s, _) = built(&e);
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("abababababababab")
        );
        assert_eq!(s.parent_sampled, Some(false));
        // A parent field without an injected value (a request with its own traceparent on a
        // connection that earlier had one injected) means nothing.
        e.traceparent_source = sonde_schema::TRACEPARENT_NONE;
        let (s, _) = built(&e);
        assert_eq!(s.parent_span_id, None);
    }

    #[test]
    fn a_server_span_takes_the_ids_the_kernel_gave_it() {
        let mut ids = [0u8; 24];
        ids[..16].copy_from_slice(&[0x11; 16]);
        ids[16..].copy_from_slice(&[0x22; 8]);
        // No traceparent: the kernel's trace id, no parent.
        let mut e = event(b"GET /in HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        e.server_ids = ids;
        let (s, _) = built(&e);
        assert_eq!(s.trace_id.0, [0x11; 16]);
        assert_eq!(s.span_id.0, [0x22; 8]);
        assert_eq!((s.parent_span_id, s.parent_sampled), (None, None));

        // The caller's traceparent, which the kernel adopted: the caller is the parent.
        let tp = "00-11111111111111111111111111111111-00f067aa0ba902b7-01";
        let req = format!("GET /in HTTP/1.1\r\ntraceparent: {tp}\r\n\r\n");
        let mut e = event(req.as_bytes(), b"HTTP/1.1 200 OK\r\n\r\n");
        e.server_ids = ids;
        let (s, _) = built(&e);
        assert_eq!(s.trace_id.0, [0x11; 16]);
        assert_eq!(s.span_id.0, [0x22; 8]);
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(s.parent_sampled, Some(true));

        // A traceparent the kernel did not take (another trace id): the span follows the
        // kernel, whose ids went downstream, and has no parent rather than a wrong one.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = format!("GET /in HTTP/1.1\r\ntraceparent: {tp}\r\n\r\n");
        let mut e = event(req.as_bytes(), b"HTTP/1.1 200 OK\r\n\r\n");
        e.server_ids = ids;
        let (s, _) = built(&e);
        assert_eq!(s.trace_id.0, [0x11; 16]);
        assert_eq!((s.parent_span_id, s.parent_sampled), (None, None));
    }
}
