//! The finished span every protocol produces: W3C ids, kind, wall-clock times, the endpoints,
//! the service it belongs to, and the attributes of its protocol. Protocol modules
//! (`protocols::*`) build spans; printers, metrics and OTLP read them.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

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
    /// A standard method is borrowed from `semconv::known_method`'s table: no allocation per
    /// span for it.
    pub method: Cow<'static, str>,
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
    /// `network.protocol.version`: `1.0`, `1.1` or `2` (empty when unknown).
    pub protocol_version: &'static str,
    /// `url.scheme`: `http` or `https`.
    pub scheme: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The request's method when it is not a standard one (`method` is then `_OTHER`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method_original: Option<String>,
    /// Set on RPC spans (gRPC).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<Rpc>,
    /// Set on database and cache spans (PostgreSQL, Redis, …).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub db: Option<Db>,
    /// Set on messaging spans (Kafka). `kind` stays the direction (CLIENT: this process sent
    /// the request; SERVER: a selected broker received it); [`Span::export_kind`] gives the
    /// exported kind (PRODUCER / CONSUMER for a messaging client).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub messaging: Option<Messaging>,
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
    /// The W3C `tracestate` that came with the `traceparent` this span continues (exported
    /// unchanged as the span's trace state).
    #[serde(skip)]
    pub trace_state: Option<String>,
}

/// What an RPC span adds to its HTTP/2 exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rpc {
    /// `rpc.system`: `grpc`.
    #[serde(rename = "rpc_system")]
    pub system: &'static str,
    /// `service/method`, the request path without its leading slash.
    #[serde(rename = "rpc_method")]
    pub method: String,
    /// The gRPC status code from the trailers; None when the call ended without one.
    #[serde(rename = "rpc_status", skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
}

/// What a database or cache span carries (the database semantic conventions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Db {
    /// `db.system.name`.
    #[serde(rename = "db_system")]
    pub system: &'static str,
    /// `db.operation.name`.
    #[serde(rename = "db_operation", skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// `db.collection.name`.
    #[serde(rename = "db_collection", skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// `db.namespace`.
    #[serde(rename = "db_namespace", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `db.query.text`, sanitized unless `attributes.db_query_sanitize` is off.
    #[serde(rename = "db_query_text", skip_serializing_if = "Option::is_none")]
    pub query_text: Option<String>,
    /// `db.response.status_code` of a failed operation.
    #[serde(rename = "db_status", skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// What a messaging span carries (the messaging semantic conventions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Messaging {
    /// `messaging.system`: `kafka`.
    #[serde(rename = "messaging_system")]
    pub system: &'static str,
    /// `messaging.operation.name` and `messaging.operation.type`.
    #[serde(rename = "messaging_operation")]
    pub operation: crate::protocols::messaging::Operation,
    /// `messaging.destination.name`: the topic.
    #[serde(
        rename = "messaging_destination",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination: Option<String>,
    /// `messaging.client.id`.
    #[serde(
        rename = "messaging_client_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_id: Option<String>,
    /// The Kafka error code of a failed operation.
    #[serde(
        rename = "messaging_error_code",
        skip_serializing_if = "Option::is_none"
    )]
    pub error_code: Option<i16>,
}

/// The OpenTelemetry span kind a span is exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Server,
    Client,
    Producer,
    Consumer,
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
            // Written by hand: two IPv4 addresses go into every exported span, and std's
            // `Ipv4Addr` formatting (four `u8` formats through `fmt::Write`) was ~4 % of the
            // processor's cost per exported span. Same text (tested against std).
            Some(IpAddr::V4(v4)) if f.width().is_none() && f.precision().is_none() => {
                let mut buf = [0u8; 15];
                f.write_str(ipv4_text(v4, &mut buf))
            }
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

/// `a.b.c.d` in decimal, as `Ipv4Addr`'s `Display` writes it, into `buf`.
fn ipv4_text(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Decodes an address of the event (v4-mapped v6 shown as v4).
pub fn addr(family: u16, bytes: &[u8; 16]) -> Address {
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
    /// The kind the span is exported as: a messaging client's spans are PRODUCER (publish)
    /// or CONSUMER (process), CLIENT for metadata; everything else is its direction.
    pub fn export_kind(&self) -> ExportKind {
        use crate::protocols::messaging::Operation;
        match (self.kind, &self.messaging) {
            (SpanKind::Server, _) => ExportKind::Server,
            (SpanKind::Client, None) => ExportKind::Client,
            (SpanKind::Client, Some(m)) => match m.operation {
                Operation::Publish => ExportKind::Producer,
                Operation::Process => ExportKind::Consumer,
                Operation::Metadata => ExportKind::Client,
            },
        }
    }

    /// Sets `http.route` and, with it, the span name (`METHOD route`; `HTTP route` for a
    /// non-standard method), unless the span was built without a name (for the metrics only, or
    /// dropped by the sampler: `SpanUse`).
    pub fn set_route(&mut self, route: Option<String>) {
        if let Some(r) = route.as_ref().filter(|_| !self.name.is_empty()) {
            let method = if self.method_original.is_some() {
                "HTTP"
            } else {
                &self.method
            };
            // Written over the old name, in its buffer when that is large enough (HTTP/1
            // spans are built with room for the route): once per HTTP span, and `format!`
            // and a new allocation cost more than the copy.
            self.name.clear();
            self.name.reserve(method.len() + 1 + r.len());
            self.name.push_str(method);
            self.name.push(' ');
            self.name.push_str(r);
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
            protocol_version: "1.1",
            scheme: "http",
            user_agent: None,
            method_original: None,
            rpc: None,
            db: None,
            messaging: None,
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
            trace_state: None,
        }
    }
}

/// What a built span is for. With nothing taking finished spans (no printer, no trace export)
/// only the metrics read them, and a builder leaves out what only a span's reader needs: the
/// random ids (all zero then) and the name (empty). The sink decides, once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpanUse {
    /// Printed, exported or linked: every field.
    Everything,
    /// Taken by spans' readers behind this sampler: a server span the sampler drops (the
    /// decision follows from its ids, which the builder settles) is built as for the metrics
    /// but keeps its ids, which the linker still needs for the client spans it made; a kept
    /// one, and every client span (the linker may yet move it into another trace), gets every
    /// field.
    Sampled(crate::config::Sampler),
    /// Only RED and service-graph metrics read it.
    MetricsOnly,
}

impl SpanUse {
    /// Whether the random ids are drawn.
    pub fn draws_ids(self) -> bool {
        self != SpanUse::MetricsOnly
    }
}

/// Source of random span and trace ids.
pub trait IdSource {
    fn trace_id(&mut self) -> [u8; 16];
    fn span_id(&mut self) -> [u8; 8];
}

// `fill_bytes`, not `random::<[u8; N]>()`: the latter draws one `u32` per byte.
impl<R: rand::Rng> IdSource for R {
    fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0; 16];
        while id == [0; 16] {
            self.fill_bytes(&mut id);
        }
        id
    }
    fn span_id(&mut self) -> [u8; 8] {
        let mut id = [0; 8];
        while id == [0; 8] {
            self.fill_bytes(&mut id);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_what_std_writes() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 0, 0),
                Ipv4Addr::new(1, octet, 10, 100),
                Ipv4Addr::new(255, 99, octet, 9),
                Ipv4Addr::new(0, 200, 20, octet),
                Ipv4Addr::new(octet, octet, octet, octet),
            ] {
                let got = Address(Some(IpAddr::V4(ip))).to_string();
                assert_eq!(got, ip.to_string());
            }
        }
        // A width set by the caller is honoured (std's path).
        let padded = format!("{:>12}", Address(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))));
        assert_eq!(padded, "   127.0.0.1");
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
