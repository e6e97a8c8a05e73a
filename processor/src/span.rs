//! Turns one kernel `HttpEvent` into a span: W3C ids (continuing an incoming `traceparent`
//! when there is one), kind, wall-clock times, HTTP attributes and the service it belongs to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use sonde_schema::{DIRECTION_CLIENT, FLAG_NO_RESPONSE, HttpEvent};

use crate::http::{self, QueryPolicy, RequestError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
}

/// A finished span, ready for printing or export.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    pub kind: SpanKind,
    pub name: String,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `http.route` from the route decorator; the span is named `METHOD route` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// 0 when no response was seen.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub server_address: Address,
    pub server_port: u16,
    pub client_address: Address,
    pub client_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body_size: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub duration_ns: u64,
    pub service_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_namespace: Option<String>,
    pub pid: u32,
    pub tid: u32,
    /// Set when the exchange did not parse as HTTP/1.x; the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<&'static str>,
    pub no_response: bool,
    /// The caller's sampling decision (the `sampled` flag of an incoming `traceparent`).
    #[serde(skip)]
    pub parent_sampled: Option<bool>,
}

/// Where a span's service identity comes from.
pub struct ServiceInfo<'a> {
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

/// A W3C trace id; shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id; shown as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

/// An endpoint address; shown empty when the kernel could not read the socket's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub Option<IpAddr>);

/// Writes `bytes` as lowercase hex.
pub fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

macro_rules! hex_display {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = Vec::with_capacity(32);
                write_hex(&mut out, &self.0);
                // write_hex emits ASCII only.
                f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
hex_display!(TraceId);
hex_display!(SpanId);

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Decodes an address of the event (v4-mapped v6 shown as v4).
fn addr(family: u16, bytes: &[u8; 16]) -> Address {
    Address(match family {
        2 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        10 => {
            let v6 = Ipv6Addr::from(*bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    })
}

impl Span {
    /// Sets `http.route` and, with it, the span name (`METHOD route`).
    pub fn set_route(&mut self, route: Option<String>) {
        if let Some(r) = &route {
            self.name = format!("{} {r}", self.method);
        }
        self.route = route;
    }
}

/// A plain server span for unit tests; a test sets the fields it is about with struct
/// update syntax.
#[cfg(test)]
impl Span {
    pub fn fixture() -> Span {
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: None,
            kind: SpanKind::Server,
            name: "GET".into(),
            method: "GET".into(),
            path: "/".into(),
            query: None,
            route: None,
            status: 200,
            host: None,
            server_address: Address(None),
            server_port: 80,
            client_address: Address(None),
            client_port: 1,
            request_body_size: None,
            response_body_size: None,
            request_bytes: 0,
            response_bytes: 0,
            start_unix_nano: 0,
            end_unix_nano: 1,
            duration_ns: 1,
            service_name: "svc".into(),
            service_namespace: None,
            pid: 1,
            tid: 1,
            malformed: None,
            no_response: false,
            parent_sampled: None,
        }
    }
}

/// Source of random span and trace ids.
pub trait IdSource {
    fn trace_id(&mut self) -> [u8; 16];
    fn span_id(&mut self) -> [u8; 8];
}

impl<R: rand::Rng> IdSource for R {
    fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let id: [u8; 16] = self.random();
            if id != [0; 16] {
                return id;
            }
        }
    }
    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id: [u8; 8] = self.random();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

/// Outcome of building a span.
pub enum Built {
    Span(Box<Span>),
    /// The request bytes are not HTTP at all: no span, counted by the caller.
    NotHttp,
}

/// Builds the span for `ev`. `mono_to_unix` converts CLOCK_MONOTONIC ns to Unix ns; `query`
/// decides whether the query is kept and what of it is redacted.
pub fn build(
    ev: &HttpEvent,
    service: &ServiceInfo<'_>,
    query: &QueryPolicy,
    mono_to_unix: i128,
    ids: &mut impl IdSource,
) -> Built {
    let request = http::parse_request(ev.request());
    let (head, malformed) = match request {
        Ok(h) => (h, None),
        Err(RequestError::NotHttp) => return Built::NotHttp,
        Err(e) => {
            // Keep what is readable (the method and the start of the target) for the operator,
            // never more than the request line.
            let (method, path, query) = http::malformed_request_start(ev.request());
            (
                http::RequestHead {
                    method,
                    path,
                    query,
                    ..Default::default()
                },
                Some(e.as_str()),
            )
        }
    };
    let response = http::parse_response(ev.response());
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

    // A server span continues the caller's trace when the request carried traceparent.
    let (trace_id, parent, parent_sampled) = match (kind, head.traceparent) {
        (SpanKind::Server, Some((trace, parent, flags))) => {
            (trace, Some(parent), Some(flags & 1 == 1))
        }
        _ => (ids.trace_id(), None, None),
    };
    let span_id = ids.span_id();

    let to_unix =
        |mono: u64| -> u64 { (mono as i128 + mono_to_unix).clamp(0, u64::MAX as i128) as u64 };
    let end_ns = ev.end_ns.max(ev.start_ns);
    let request_body_size = http::body_size(ev.request_bytes, head.head_len, head.content_length);
    let response_body_size = response
        .as_ref()
        .and_then(|r| http::body_size(ev.response_bytes, r.head_len, r.content_length));

    Built::Span(Box::new(Span {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        parent_span_id: parent.map(SpanId),
        kind,
        name: if head.method.is_empty() {
            "HTTP".into()
        } else {
            head.method.clone()
        },
        method: head.method,
        path: head.path,
        query: query.apply(head.query),
        route: None,
        status,
        host: head.host,
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
        service_name: service.name.to_string(),
        service_namespace: service.namespace.map(str::to_string),
        pid: ev.pid,
        tid: ev.tid,
        malformed,
        no_response,
        parent_sampled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            Built::Span(s) => *s,
            Built::NotHttp => panic!("expected a span"),
        }
    }

    #[test]
    fn server_span_fields() {
        let s = span(&event(
            b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnope",
        ));
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(
            (s.method.as_str(), s.path.as_str(), s.query.as_deref()),
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
            assert_eq!((s.method.as_str(), s.path.as_str()), ("GET", "/a"));
            assert_eq!(s.query, None);
        }
        // A cut request line with a query: the query policy applies to it too.
        let e = event(b"GET /p?token=S&ok=1", b"HTTP/1.1 414 URI Too Long\r\n\r\n");
        let s = span_with(&e, &QueryPolicy::default());
        assert_eq!((s.path.as_str(), s.query), ("/p", None));
        let s = span(&e);
        assert_eq!(s.query.as_deref(), Some("token=REDACTED&ok=1"));
    }

    #[test]
    fn ipv4_mapped_addresses_print_as_ipv4() {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr(10, &b).to_string(), "127.0.0.1");
        assert_eq!(addr(10, &Ipv6Addr::LOCALHOST.octets()).to_string(), "::1");
        assert_eq!(addr(0, &b).to_string(), "");
    }
}
