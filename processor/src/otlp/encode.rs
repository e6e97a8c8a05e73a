//! OTLP trace requests encoded straight from Sonde's spans: an `ExportTraceServiceRequest`
//! (one `ResourceSpans` per process, one `ScopeSpans` for Sonde's scope) written as protobuf
//! into buffers the encoder reuses, with each process's `Resource` encoded once when the
//! process is first seen and copied in as bytes.
//!
//! Hand-written rather than built from `opentelemetry-proto`'s prost structs: those hold a
//! `String` per attribute key and value and a `Vec` per id, so a span would cost a dozen
//! allocations and copies before prost walks the structs again to size and write them (the
//! ~5.4 µs per span measured before). Only a handful of messages are written (request,
//! resource spans, resource, scope spans, scope, span, key-value, any-value, status), with
//! field numbers from `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`;
//! the tests decode the output with `opentelemetry-proto`'s types and compare it with what the
//! previous conversion (`legacy_convert`) produced.

use std::{fmt::Write as _, sync::Arc};

use opentelemetry::Value;
use opentelemetry_sdk::Resource;

use super::convert::{self, AttrSink, SCOPE_NAME, SCOPE_VERSION, Status};
use crate::span::Span;

/// Wire types.
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

/// `Span.flags`: the W3C `sampled` flag and "the context knows whether its parent is
/// remote" (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`); `IS_REMOTE` is added for a span with
/// a parent, which always came from another process (`traceparent`).
const FLAGS: u32 = 0x01 | 0x100;
const FLAG_PARENT_REMOTE: u32 = 0x200;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

/// A length-delimited field (string, bytes or embedded message).
fn len_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, LEN);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// The size of a length-delimited field of `len` bytes with a one-byte tag.
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A length-delimited field whose body is being written in place, its length still to come.
struct OpenField {
    /// Where the body starts in the buffer.
    body: usize,
    /// Bytes left for the length's varint just before the body.
    reserved: usize,
}

/// Starts a length-delimited field whose body the caller then writes straight after it: the
/// tag goes out and `reserved` bytes are kept for the length (the size a usual body's varint
/// takes). Before, a span was written into a buffer of its own and copied into its process's
/// group, and the group copied into the request: two copies of every span's bytes per export.
fn open_field(out: &mut Vec<u8>, field: u32, reserved: usize) -> OpenField {
    tag(out, field, LEN);
    out.resize(out.len() + reserved, 0);
    OpenField {
        body: out.len(),
        reserved,
    }
}

/// Ends a field [`open_field`] started: writes the body's length, minimal as protobuf
/// writes it, into the space kept for it. A body whose length takes another number of bytes
/// than reserved (unusually short or long) is moved to fit; only those pay a copy.
fn close_field(out: &mut Vec<u8>, field: OpenField) {
    let len = out.len() - field.body;
    let need = varint_len(len as u64);
    let at = field.body - field.reserved;
    if need > field.reserved {
        let grow = need - field.reserved;
        out.resize(out.len() + grow, 0);
        out.copy_within(field.body..field.body + len, field.body + grow);
    } else if need < field.reserved {
        out.copy_within(field.body..field.body + len, at + need);
        out.truncate(at + need + len);
    }
    let mut v = len as u64;
    for (i, byte) in out[at..at + need].iter_mut().enumerate() {
        *byte = (v & 0x7f) as u8 | if i + 1 < need { 0x80 } else { 0 };
        v >>= 7;
    }
}

/// Length bytes kept for a span (bodies of 128 B … 16 KiB: nearly every span) and for a
/// process's group of spans (16 KiB … 2 MiB: a batch of a few dozen to a few thousand).
const SPAN_LEN_BYTES: usize = 2;
const GROUP_LEN_BYTES: usize = 3;

/// An attribute value (`AnyValue`), borrowed.
enum Any<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl Any<'_> {
    fn size(&self) -> usize {
        match self {
            Any::Str(s) => len_field_size(s.len()),
            Any::Int(i) => 1 + varint_len(*i as u64),
            Any::Bool(_) => 2,
            Any::Double(_) => 9,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Any::Str(s) => len_field(out, 1, s.as_bytes()),
            Any::Bool(b) => {
                tag(out, 2, VARINT);
                out.push(u8::from(*b));
            }
            Any::Int(i) => {
                tag(out, 3, VARINT);
                varint(out, *i as u64);
            }
            Any::Double(d) => {
                tag(out, 4, I64);
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
    }
}

/// A `KeyValue` as field `field` of its parent message, its size computed up front so
/// nothing is written twice.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: Any<'_>) {
    if !short_key_value(out, field, key, &value) {
        sized_key_value(out, field, key, value);
    }
}

/// [`key_value`] for any attribute: every length sized as a varint.
fn sized_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: Any<'_>) {
    let any = value.size();
    let kv = len_field_size(key.len()) + len_field_size(any);
    tag(out, field, LEN);
    varint(out, kv as u64);
    len_field(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any as u64);
    value.write(out);
}

/// A string or integer attribute whose every length fits one varint byte (the `KeyValue`
/// under 128 bytes: nearly every attribute of a span), written without sizing each varint:
/// its header bytes are known at once. False, with nothing written, for any other. Writing
/// attributes was over half of the encoder's instructions (`encode_cost` under cachegrind).
#[inline(always)]
fn short_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Any<'_>) -> bool {
    let key = key.as_bytes();
    // KeyValue { key (1), value (2): AnyValue { string_value (1) | int_value (3) } }
    let any = match value {
        Any::Str(text) => 2 + text.len(),
        Any::Int(i) => 1 + varint_len(*i as u64),
        Any::Bool(_) | Any::Double(_) => return false,
    };
    let kv = 2 + key.len() + 2 + any;
    if field >= 16 || kv >= 0x80 {
        return false;
    }
    // Every length below is under 0x80: one varint byte each.
    out.reserve(2 + kv);
    out.extend_from_slice(&[
        ((field << 3) | LEN) as u8,
        kv as u8,
        (1 << 3) | LEN as u8,
        key.len() as u8,
    ]);
    out.extend_from_slice(key);
    match value {
        Any::Str(text) => {
            out.extend_from_slice(&[
                (2 << 3) | LEN as u8,
                any as u8,
                (1 << 3) | LEN as u8,
                text.len() as u8,
            ]);
            out.extend_from_slice(text.as_bytes());
        }
        Any::Int(i) => {
            out.extend_from_slice(&[(2 << 3) | LEN as u8, any as u8, (3 << 3) | VARINT as u8]);
            varint(out, *i as u64);
        }
        Any::Bool(_) | Any::Double(_) => {}
    }
    true
}

/// The attribute sink of one message: writes each attribute as field `field`.
struct Attrs<'a> {
    out: &'a mut Vec<u8>,
    field: u32,
    /// Reused for values written with `Display`.
    fmt: &'a mut String,
}

impl AttrSink for Attrs<'_> {
    fn str(&mut self, key: &'static str, value: &str) {
        key_value(self.out, self.field, key, Any::Str(value));
    }

    fn int(&mut self, key: &'static str, value: i64) {
        key_value(self.out, self.field, key, Any::Int(value));
    }

    fn display(&mut self, key: &'static str, value: &dyn std::fmt::Display) {
        self.fmt.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.fmt, "{value}");
        key_value(self.out, self.field, key, Any::Str(self.fmt));
    }
}

/// A process's `Resource` message, encoded once; spans share it by reference.
pub type EncodedResource = Arc<[u8]>;

/// Encodes a resource's attributes as a `Resource` message, in key order (the SDK's resource
/// is a hash map: the same process always gets the same bytes).
pub fn encode_resource(resource: &Resource) -> EncodedResource {
    let mut out = Vec::with_capacity(512);
    let mut attrs: Vec<_> = resource.iter().collect();
    attrs.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (k, v) in attrs {
        let text;
        let any = match v {
            Value::Bool(b) => Any::Bool(*b),
            Value::I64(i) => Any::Int(*i),
            Value::F64(d) => Any::Double(*d),
            Value::String(s) => Any::Str(s.as_str()),
            // Sonde's resources hold no arrays; should one appear, it goes out as its text.
            other => {
                text = other.to_string();
                Any::Str(&text)
            }
        };
        key_value(&mut out, 1, k.as_str(), any);
    }
    out.into()
}

/// A span waiting for export, with its process's encoded resource (`None` beyond
/// `MAX_PROCESSES`: the encoder then names just the service).
pub struct Queued {
    pub resource: Option<EncodedResource>,
    /// Boxed as the reader built it: handed over and back (`SpanQueue::spare`) without a
    /// move of the span's bytes.
    pub span: Box<Span>,
}

/// Writes export requests; its buffers are reused from one batch to the next.
pub struct Encoder {
    host: String,
    /// The `InstrumentationScope` message, the same for every request.
    scope: Vec<u8>,
    /// (pid, part, index in the part): the batch in process order.
    order: Vec<(u32, u32, u32)>,
    fmt: String,
    tmp: String,
}

impl Encoder {
    pub fn new(host: &str) -> Encoder {
        let mut scope = Vec::new();
        len_field(&mut scope, 1, SCOPE_NAME.as_bytes());
        len_field(&mut scope, 2, SCOPE_VERSION.as_bytes());
        Encoder {
            host: host.to_string(),
            scope,
            order: Vec::new(),
            fmt: String::with_capacity(64),
            tmp: String::with_capacity(256),
        }
    }

    /// Writes the batch made of `parts`, in order, as an `ExportTraceServiceRequest` into
    /// `out` (cleared first): one `ResourceSpans` per process, its spans in batch order. Parts,
    /// so the worker encodes the spans where they wait (each pass's spans as the reader handed
    /// them over) instead of moving every span into one contiguous batch first.
    pub fn request(&mut self, parts: &[&[Queued]], out: &mut Vec<u8>) {
        out.clear();
        self.order.clear();
        for (p, part) in parts.iter().enumerate() {
            self.order.extend(
                part.iter()
                    .enumerate()
                    .map(|(i, q)| (q.span.pid, p as u32, i as u32)),
            );
        }
        let at_index = |p: u32, i: u32| &parts[p as usize][i as usize];
        self.order.sort_unstable();
        let mut at = 0;
        while at < self.order.len() {
            let pid = self.order[at].0;
            let end = at + self.order[at..].partition_point(|&(p, _, _)| p == pid);
            let first = at_index(self.order[at].1, self.order[at].2);
            let fallback;
            let resource: &[u8] = match &first.resource {
                Some(r) => r,
                None => {
                    fallback = encode_resource(&convert::service_resource(
                        first.span.service_name.clone(),
                        pid,
                        &self.host,
                    ));
                    &fallback
                }
            };
            // ResourceSpans { resource, scope_spans: ScopeSpans { scope, spans } }, every
            // span written where it goes out.
            let resource_spans = open_field(out, 1, GROUP_LEN_BYTES);
            len_field(out, 1, resource);
            let scope_spans = open_field(out, 2, GROUP_LEN_BYTES);
            len_field(out, 1, &self.scope);
            for &(_, part, i) in &self.order[at..end] {
                let span = open_field(out, 2, SPAN_LEN_BYTES);
                let mut attrs = Attrs {
                    out,
                    field: 9,
                    fmt: &mut self.fmt,
                };
                encode_span(&at_index(part, i).span, &mut attrs, &mut self.tmp);
                close_field(out, span);
            }
            close_field(out, scope_spans);
            close_field(out, resource_spans);
            at = end;
        }
    }
}

/// Writes one `Span` message into `attrs.out`.
fn encode_span(s: &Span, attrs: &mut Attrs<'_>, tmp: &mut String) {
    len_field(attrs.out, 1, &s.trace_id.0);
    len_field(attrs.out, 2, &s.span_id.0);
    if let Some(ts) = &s.trace_state {
        len_field(attrs.out, 3, ts.as_bytes());
    }
    if let Some(p) = &s.parent_span_id {
        len_field(attrs.out, 4, &p.0);
    }
    if !s.name.is_empty() {
        len_field(attrs.out, 5, s.name.as_bytes());
    }
    tag(attrs.out, 6, VARINT);
    varint(attrs.out, convert::otlp_kind(s) as u64);
    tag(attrs.out, 7, I64);
    attrs
        .out
        .extend_from_slice(&s.start_unix_nano.to_le_bytes());
    tag(attrs.out, 8, I64);
    attrs.out.extend_from_slice(&s.end_unix_nano.to_le_bytes());
    let status = convert::span_attributes(s, tmp, attrs);
    // `Status`: message (2), code (3: 2 = ERROR); present, even empty, on every span.
    let message: &str = match status {
        Status::Unset => "",
        Status::Error(d) => d,
        Status::KafkaError(code) => {
            tmp.clear();
            let _ = write!(tmp, "kafka error code {code}");
            tmp
        }
    };
    let code_size = if status == Status::Unset { 0 } else { 2 };
    let message_size = if message.is_empty() {
        0
    } else {
        len_field_size(message.len())
    };
    tag(attrs.out, 15, LEN);
    varint(attrs.out, (message_size + code_size) as u64);
    if !message.is_empty() {
        len_field(attrs.out, 2, message.as_bytes());
    }
    if code_size > 0 {
        tag(attrs.out, 3, VARINT);
        varint(attrs.out, 2);
    }
    tag(attrs.out, 16, I32);
    let flags = FLAGS
        | if s.parent_span_id.is_some() {
            FLAG_PARENT_REMOTE
        } else {
            0
        };
    attrs.out.extend_from_slice(&flags.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, trace::v1::ResourceSpans,
    };
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use prost::Message;

    use super::*;
    use crate::{
        otlp::{convert::ProcessResource, legacy_convert},
        protocols::messaging::Operation,
        span::{Address, Db, Messaging, Rpc, SpanId, SpanKind, TraceId},
    };

    fn ip(s: &str) -> Address {
        Address(Some(s.parse().expect("ip")))
    }

    fn http(kind: SpanKind, status: u16) -> Span {
        Span {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0xcd; 8]),
            kind,
            name: "GET /users/{id}".into(),
            path: "/users/7".into(),
            query: Some("q=1".into()),
            route: Some("/users/{id}".into()),
            status,
            host: Some("example.test:8080".into()),
            user_agent: Some("curl/8".into()),
            server_address: ip("127.0.0.1"),
            server_port: 8080,
            client_address: ip("::1"),
            client_port: 40000,
            request_body_size: Some(0),
            response_body_size: Some(12),
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_002_000_000,
            duration_ns: 2_000_000,
            pid: 42,
            tid: 42,
            ..Span::fixture()
        }
    }

    /// One span of every shape the export knows.
    fn spans() -> Vec<Span> {
        let mut out = vec![
            http(SpanKind::Server, 200),
            Span {
                parent_span_id: Some(SpanId([3; 8])),
                ..http(SpanKind::Server, 503)
            },
            http(SpanKind::Client, 404),
            Span {
                no_response: true,
                ..http(SpanKind::Client, 0)
            },
            Span {
                method: "_OTHER".into(),
                method_original: Some("PURGE".into()),
                malformed: Some("bad header"),
                host: None,
                query: None,
                ..http(SpanKind::Client, 200)
            },
            Span {
                path: "http://u:S@proxy.test/x".into(),
                ..http(SpanKind::Client, 200)
            },
        ];
        for (kind, code) in [(SpanKind::Server, Some(0)), (SpanKind::Client, Some(14))] {
            out.push(Span {
                name: "shop.Cart/Add".into(),
                protocol_version: "2",
                rpc: Some(Rpc {
                    system: "grpc",
                    method: "shop.Cart/Add".into(),
                    status_code: code,
                }),
                ..http(kind, 200)
            });
        }
        out.push(Span {
            name: "SELECT users".into(),
            db: Some(Db {
                system: "postgresql",
                operation: Some("SELECT".into()),
                collection: Some("users".into()),
                namespace: Some("shop".into()),
                query_text: Some("SELECT * FROM users WHERE id = ?".into()),
                error_code: Some("42P01".into()),
            }),
            ..http(SpanKind::Client, 0)
        });
        out.push(Span {
            name: "GET".into(),
            pid: 43,
            db: Some(Db {
                system: "redis",
                operation: Some("GET".into()),
                collection: None,
                namespace: Some("0".into()),
                query_text: None,
                error_code: None,
            }),
            ..http(SpanKind::Server, 0)
        });
        for (op, error) in [
            (Operation::Publish, None),
            (Operation::Process, Some(3)),
            (Operation::Metadata, None),
        ] {
            out.push(Span {
                name: "publish orders".into(),
                pid: 44,
                messaging: Some(Messaging {
                    system: "kafka",
                    operation: op,
                    destination: Some("orders".into()),
                    client_id: Some("app-1".into()),
                    error_code: error,
                }),
                ..http(SpanKind::Client, 0)
            });
        }
        out
    }

    fn process(pid: u32) -> ProcessResource {
        ProcessResource {
            pid,
            service_name: format!("svc-{pid}"),
            service_namespace: Some("prod".into()),
            exe_path: "/usr/bin/python3".into(),
            k8s: None,
        }
    }

    /// What the previous path sent for `spans`: per process, `SpanData` grouped by
    /// `opentelemetry-proto` under the process's resource.
    fn legacy(spans: &[Span], known: &[u32]) -> Vec<ResourceSpans> {
        let mut pids: Vec<u32> = spans.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let mut out = Vec::new();
        for pid in pids {
            let resource = if known.contains(&pid) {
                convert::resource(&process(pid), "node-1")
            } else {
                convert::service_resource(format!("svc-{pid}"), pid, "node-1")
            };
            let data = spans
                .iter()
                .filter(|s| s.pid == pid)
                .map(|s| legacy_convert::span_data(s.clone(), &legacy_convert::scope()))
                .collect();
            out.extend(group_spans_by_resource_and_scope(
                data,
                &ResourceAttributesWithSchema::from(&resource),
            ));
        }
        out
    }

    /// Resource attributes in key order: the SDK's resource is a hash map, its order random.
    fn sorted(mut rs: Vec<ResourceSpans>) -> Vec<ResourceSpans> {
        for r in &mut rs {
            if let Some(res) = r.resource.as_mut() {
                res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        rs
    }

    fn encode(spans: &[Span], known: &[u32]) -> ExportTraceServiceRequest {
        let batch: Vec<Queued> = spans
            .iter()
            .map(|s| Queued {
                resource: known
                    .contains(&s.pid)
                    .then(|| encode_resource(&convert::resource(&process(s.pid), "node-1"))),
                span: Box::new(Span {
                    service_name: format!("svc-{}", s.pid),
                    ..s.clone()
                }),
            })
            .collect();
        let mut out = Vec::new();
        Encoder::new("node-1").request(&[&batch], &mut out);
        ExportTraceServiceRequest::decode(out.as_slice()).expect("the request decodes")
    }

    #[test]
    fn the_encoding_decodes_to_what_the_sdk_path_sent() {
        let spans = spans();
        assert_eq!(spans.len(), 13);
        let got = encode(&spans, &[42, 43, 44]);
        let want = legacy(&spans, &[42, 43, 44]);
        assert_eq!(got.resource_spans.len(), 3);
        assert_eq!(got.resource_spans, sorted(want));
        let n: usize = got
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans.len())
            .sum();
        assert_eq!(n, 13);
    }

    #[test]
    fn a_process_without_state_goes_out_under_its_service() {
        let spans = vec![http(SpanKind::Server, 200), http(SpanKind::Client, 200)];
        let got = encode(&spans, &[]);
        assert_eq!(got.resource_spans, sorted(legacy(&spans, &[])));
        let attrs = &got.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes;
        assert_eq!(attrs.len(), 4);
    }

    #[test]
    fn the_callers_trace_state_goes_out_with_its_span() {
        let mut s = http(SpanKind::Server, 200);
        s.parent_span_id = Some(SpanId([1; 8]));
        s.trace_state = Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into());
        let got = encode(&[s, http(SpanKind::Client, 200)], &[42]);
        let spans = &got.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            spans[0].trace_state,
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        assert_eq!(spans[1].trace_state, "");
    }

    #[test]
    fn buffers_are_reused_and_requests_do_not_leak_into_each_other() {
        let spans = spans();
        let batch: Vec<Queued> = spans
            .into_iter()
            .map(|span| Queued {
                resource: None,
                span: Box::new(span),
            })
            .collect();
        let mut enc = Encoder::new("h");
        let mut first = Vec::new();
        enc.request(&[&batch], &mut first);
        let mut again = Vec::new();
        enc.request(&[&batch[..1]], &mut again);
        enc.request(&[&batch[..1], &batch[1..]], &mut again);
        assert_eq!(first, again);
        enc.request(&[&[], &batch[..2], &[], &batch[2..]], &mut again);
        assert_eq!(first, again);
        let decoded = ExportTraceServiceRequest::decode(first.as_slice()).expect("decodes");
        assert_eq!(decoded.resource_spans.len(), 3);
    }

    /// The encoder's cost per span, for BENCHMARKS.md: `cargo test --release -p
    /// sonde-processor --lib encode_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run in release"]
    fn encode_cost() {
        let resource = encode_resource(&convert::resource(&process(42), "node-1"));
        let batch: Vec<Queued> = (0..2048)
            .map(|i| Queued {
                resource: Some(Arc::clone(&resource)),
                span: Box::new(http(
                    if i % 2 == 0 {
                        SpanKind::Server
                    } else {
                        SpanKind::Client
                    },
                    200,
                )),
            })
            .collect();
        let mut enc = Encoder::new("node-1");
        let mut out = Vec::new();
        for _ in 0..10 {
            enc.request(&[&batch], &mut out);
        }
        let rounds = 200;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            enc.request(&[&batch], &mut out);
        }
        let per_span = started.elapsed().as_nanos() / (rounds * batch.len() as u128);
        eprintln!(
            "encode: {per_span} ns per span, {} bytes per span",
            out.len() / batch.len()
        );
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 2048);
    }

    #[test]
    fn a_field_written_in_place_is_the_field_written_from_a_buffer() {
        // Bodies whose length varint takes fewer, as many and more bytes than reserved.
        for reserved in [1, SPAN_LEN_BYTES, GROUP_LEN_BYTES] {
            for len in [
                0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_151, 2_097_152,
            ] {
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut want = b"head".to_vec();
                len_field(&mut want, 2, &body);
                want.extend_from_slice(b"tail");
                let mut got = b"head".to_vec();
                let field = open_field(&mut got, 2, reserved);
                got.extend_from_slice(&body);
                close_field(&mut got, field);
                got.extend_from_slice(b"tail");
                assert!(got == want, "reserved {reserved}, body of {len} bytes");
            }
        }
    }

    /// The encoder before 67734a4: each span into a buffer of its own, copied into its
    /// process's group, the group into the request. Kept to check that the in-place encoder
    /// writes the same bytes.
    fn request_through_buffers(batch: &[Queued], host: &str) -> Vec<u8> {
        let mut scope = Vec::new();
        len_field(&mut scope, 1, SCOPE_NAME.as_bytes());
        len_field(&mut scope, 2, SCOPE_VERSION.as_bytes());
        let mut order: Vec<(u32, usize)> = batch
            .iter()
            .enumerate()
            .map(|(i, q)| (q.span.pid, i))
            .collect();
        order.sort_unstable();
        let (mut fmt, mut tmp, mut out) = (String::new(), String::new(), Vec::new());
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let mut spans = Vec::new();
            for &(_, i) in group {
                let mut span = Vec::new();
                let mut attrs = Attrs {
                    out: &mut span,
                    field: 9,
                    fmt: &mut fmt,
                };
                encode_span(&batch[i].span, &mut attrs, &mut tmp);
                len_field(&mut spans, 2, &span);
            }
            let first = &batch[group[0].1];
            let resource = match &first.resource {
                Some(r) => r.to_vec(),
                None => encode_resource(&convert::service_resource(
                    first.span.service_name.clone(),
                    group[0].0,
                    host,
                ))
                .to_vec(),
            };
            let mut scope_spans = Vec::new();
            len_field(&mut scope_spans, 1, &scope);
            scope_spans.extend_from_slice(&spans);
            let mut resource_spans = Vec::new();
            len_field(&mut resource_spans, 1, &resource);
            len_field(&mut resource_spans, 2, &scope_spans);
            len_field(&mut out, 1, &resource_spans);
        }
        out
    }

    #[test]
    fn the_in_place_encoder_writes_the_bytes_the_buffered_one_wrote() {
        let resource = encode_resource(&convert::resource(&process(42), "node-1"));
        let mut long = http(SpanKind::Client, 200);
        long.path = "/p".repeat(300);
        long.pid = 44;
        let mut short = http(SpanKind::Server, 200);
        short.name = String::new();
        short.pid = 45;
        let mut batch: Vec<Queued> = spans()
            .into_iter()
            .map(|span| Queued {
                resource: (span.pid == 42).then(|| Arc::clone(&resource)),
                span: Box::new(span),
            })
            .collect();
        batch.extend((0..3000).map(|_| Queued {
            resource: None,
            span: Box::new(long.clone()),
        }));
        batch.push(Queued {
            resource: None,
            span: Box::new(short),
        });
        let want = request_through_buffers(&batch, "node-1");
        let mut enc = Encoder::new("node-1");
        let mut got = Vec::new();
        enc.request(&[&batch], &mut got);
        assert!(got == want, "{} bytes against {}", got.len(), want.len());
        enc.request(&[&batch[..5], &[], &batch[5..]], &mut got);
        assert!(got == want);
        for n in [1, 2, 13, 14] {
            enc.request(&[&batch[..n]], &mut got);
            assert!(
                got == request_through_buffers(&batch[..n], "node-1"),
                "{n} spans"
            );
        }
    }

    #[test]
    fn groups_and_spans_of_every_length_class_decode() {
        // One process's group of a single short span (its group length takes fewer bytes
        // than reserved), and one of 4,000 spans with long paths (more than 2 MiB: more).
        let mut short = http(SpanKind::Server, 200);
        short.name = String::new();
        let mut long = http(SpanKind::Server, 200);
        long.path = "/p".repeat(300);
        long.pid = 43;
        let mut batch = vec![Queued {
            resource: None,
            span: Box::new(short.clone()),
        }];
        batch.extend((0..4000).map(|_| Queued {
            resource: None,
            span: Box::new(long.clone()),
        }));
        let mut enc = Encoder::new("h");
        let mut out = Vec::new();
        enc.request(&[&batch], &mut out);
        assert!(out.len() > 2_097_152, "{}", out.len());
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        let counts: Vec<usize> = decoded
            .resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.len())
            .collect();
        assert_eq!(counts, [1, 4000]);
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans[0].name, "");
        let url_path = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
            s.attributes
                .iter()
                .find(|kv| kv.key == "url.path")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        for s in &decoded.resource_spans[1].scope_spans[0].spans {
            assert_eq!(
                url_path(s),
                Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        "/p".repeat(300)
                    )
                )
            );
        }
    }

    #[test]
    fn short_attributes_are_the_bytes_the_sized_writer_writes() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
        let key = "http.request.header.x";
        let long = "v".repeat(300);
        let ints = [0, 1, 127, 128, 300, 65_535, i64::MAX, -1, i64::MIN];
        // Lengths on both sides of the one-byte limit (a `KeyValue` under 128 bytes).
        for len in (0..140).chain([299, 300]) {
            let text = &long[..len];
            let (mut short, mut sized) = (Vec::new(), Vec::new());
            key_value(&mut short, 9, key, Any::Str(text));
            sized_key_value(&mut sized, 9, key, Any::Str(text));
            assert_eq!(short, sized, "string value of {len} bytes");
            let span = ProtoSpan::decode(short.as_slice()).expect("decodes");
            assert_eq!(span.attributes[0].key, key);
            let value = span.attributes[0]
                .value
                .as_ref()
                .and_then(|v| v.value.clone());
            assert_eq!(value, Some(V::StringValue(text.to_string())), "{len} bytes");
        }
        for i in ints {
            for key in [key, &long[..100], &long[..120]] {
                let (mut short, mut sized) = (Vec::new(), Vec::new());
                key_value(&mut short, 9, key, Any::Int(i));
                sized_key_value(&mut sized, 9, key, Any::Int(i));
                assert_eq!(short, sized, "int {i}, key of {} bytes", key.len());
                let span = ProtoSpan::decode(short.as_slice()).expect("decodes");
                let value = span.attributes[0]
                    .value
                    .as_ref()
                    .and_then(|v| v.value.clone());
                assert_eq!(value, Some(V::IntValue(i)));
            }
        }
    }

    #[test]
    fn varint_sizes_match_the_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
