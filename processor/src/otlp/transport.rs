//! Sending encoded OTLP requests (traces or metrics) to the collector: gRPC (a unary call through tonic with a
//! codec that passes the encoded bytes through) or HTTP/protobuf (reqwest), with the
//! endpoint's headers, gzip, timeout and TLS, and retries with backoff on what the OTLP
//! specification calls retryable (gRPC `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`,
//! `ABORTED`, `OUT_OF_RANGE`, `DATA_LOSS`; HTTP 429, 502, 503, 504 and connection errors),
//! the same policy `opentelemetry-otlp` applied (3 retries, 100 ms doubling to 1.6 s, up to
//! 100 ms jitter, all within the export timeout). A retry sends the same bytes again: the
//! request is never rebuilt or cloned.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use rand::Rng;
use tonic::{
    Status,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};

use super::coalesce::Coalescing;
use crate::config::{OtlpEndpoint, OtlpProtocol};

/// Which service an endpoint's requests go to: the gRPC method they call (the HTTP URL,
/// with its `/v1/…` path, comes from the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

const MAX_RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
/// The longest a collector's `Retry-After` is honoured.
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("gRPC status {code:?}: {message}", code = .0.code(), message = .0.message())]
    Grpc(Status),
    #[error("HTTP status {0}")]
    Http(http::StatusCode),
    #[error("HTTP request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("compressing the request: {0}")]
    Gzip(#[from] std::io::Error),
}

/// Whether and when to try again.
enum Retry {
    No,
    Backoff,
    After(Duration),
}

impl ExportError {
    fn retry(&self, retry_after: Option<Duration>) -> Retry {
        use tonic::Code;
        match self {
            ExportError::Grpc(s) => match s.code() {
                Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss => Retry::Backoff,
                _ => Retry::No,
            },
            ExportError::Http(code) => match code.as_u16() {
                429 | 503 => retry_after.map_or(Retry::Backoff, Retry::After),
                502 | 504 => Retry::Backoff,
                _ => Retry::No,
            },
            ExportError::Request(_) => Retry::Backoff,
            ExportError::Gzip(_) => Retry::No,
        }
    }
}

/// A codec that writes already encoded request bytes and ignores the response message (an
/// `Export…ServiceResponse`, whose partial-success counts Sonde does not use).
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// tonic's TCP connector (as `Endpoint::connect_lazy` sets it up: any scheme, since TLS is
/// tonic's layer on top; no Nagle delay), its sockets wrapped in `Coalescing`. tonic applies
/// the endpoint's connect timeout and TLS around it, but not its socket options: one set on
/// the `Endpoint` (keepalive, local address) must be set here too.
#[derive(Clone)]
struct CoalescingConnector(HttpConnector);

impl CoalescingConnector {
    fn new() -> CoalescingConnector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        CoalescingConnector(http)
    }
}

impl tower_service::Service<http::Uri> for CoalescingConnector {
    type Response = TokioIo<Coalescing<tokio::net::TcpStream>>;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let socket = connecting.await?.into_inner();
            Ok(TokioIo::new(Coalescing::new(socket)))
        })
    }
}

#[derive(Clone)]
enum Kind {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: HeaderMap,
    },
}

/// One signal's endpoint: its connection and settings; a clone shares the connection (one
/// per request in flight).
#[derive(Clone)]
pub struct Transport {
    kind: Kind,
    signal: Signal,
    gzip: bool,
    timeout: Duration,
}

impl Transport {
    /// Builds the transport; must run inside the Tokio runtime it will be used on (tonic's
    /// channel starts its worker there). Fails on a header, URL or CA file that cannot work.
    pub fn build(e: &OtlpEndpoint, signal: Signal, timeout: Duration) -> anyhow::Result<Transport> {
        let kind = match e.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(e.url.clone())
                    .with_context(|| format!("the OTLP {signal:?} endpoint {}", e.url))?
                    .timeout(timeout);
                if e.tls {
                    let tls = match &e.ca_file {
                        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                            std::fs::read(path).with_context(|| {
                                format!("reading the OTLP CA file {}", path.display())
                            })?,
                        )),
                        None => ClientTlsConfig::new().with_native_roots(),
                    };
                    endpoint = endpoint.tls_config(tls)?;
                }
                let channel = endpoint.connect_with_connector_lazy(CoalescingConnector::new());
                let mut client = tonic::client::Grpc::new(channel);
                if e.gzip {
                    client = client
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip);
                }
                Kind::Grpc {
                    client,
                    metadata: MetadataMap::from_headers(headers(&e.headers, "gRPC metadata")?),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = headers(&e.headers, "an HTTP header")?;
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if e.gzip {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                Kind::Http {
                    client: super::exporter::http_client(e, timeout)?,
                    url: e.url.clone(),
                    headers,
                }
            }
        };
        Ok(Transport {
            kind,
            signal,
            gzip: e.gzip,
            timeout,
        })
    }

    /// The body that carries an encoded export request: gzipped here for HTTP
    /// (gRPC compresses in tonic, `send_compressed`); otherwise the request's own buffer,
    /// taken over without a copy.
    pub fn body(&self, request: Vec<u8>) -> Result<Bytes, ExportError> {
        Ok(match (&self.kind, self.gzip) {
            (Kind::Http { .. }, true) => {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(request.len() / 4),
                    flate2::Compression::fast(),
                );
                gz.write_all(&request)?;
                Bytes::from(gz.finish()?)
            }
            _ => Bytes::from(request),
        })
    }

    /// Sends one request body, retrying as the module says.
    pub async fn send(&mut self, body: Bytes) -> Result<(), ExportError> {
        let started = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut attempt = 0;
        loop {
            let (error, retry_after) = match self.once(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let wait = match error.retry(retry_after) {
                Retry::No => return Err(error),
                Retry::Backoff => {
                    let jitter = rand::rng().random_range(0..=MAX_JITTER_MS);
                    (delay + Duration::from_millis(jitter)).min(MAX_DELAY)
                }
                Retry::After(d) => d.min(MAX_THROTTLE).max(delay),
            };
            if attempt >= MAX_RETRIES || started.elapsed() + wait >= self.timeout {
                return Err(error);
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(MAX_DELAY);
        }
    }

    /// One attempt; a failure comes with the server's `Retry-After`, if it gave one.
    async fn once(&mut self, body: Bytes) -> Result<(), (ExportError, Option<Duration>)> {
        match &mut self.kind {
            Kind::Grpc { client, metadata } => {
                client
                    .ready()
                    .await
                    .map_err(|e| (ExportError::Grpc(Status::unavailable(e.to_string())), None))?;
                let request = tonic::Request::from_parts(
                    metadata.clone(),
                    tonic::Extensions::default(),
                    body,
                );
                let path = http::uri::PathAndQuery::from_static(self.signal.grpc_path());
                client
                    .unary::<Bytes, (), Raw>(request, path, Raw)
                    .await
                    .map(drop)
                    .map_err(|s| (ExportError::Grpc(s), None))
            }
            Kind::Http {
                client,
                url,
                headers,
            } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| (ExportError::Request(e), None))?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Read the body so the connection can be reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err((ExportError::Http(status), retry_after))
                }
            }
        }
    }
}

/// The configured headers, checked once: `what` names where they go, for the error.
fn headers(pairs: &[(String, String)], what: &str) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| anyhow::anyhow!("OTLP header name {k:?} is not valid {what}"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| anyhow::anyhow!("the value of OTLP header {k:?} is not valid {what}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_outcomes_follow_the_otlp_specification() {
        let grpc = |c| ExportError::Grpc(Status::new(c, "x")).retry(None);
        assert!(matches!(grpc(tonic::Code::Unavailable), Retry::Backoff));
        assert!(matches!(
            grpc(tonic::Code::DeadlineExceeded),
            Retry::Backoff
        ));
        assert!(matches!(grpc(tonic::Code::InvalidArgument), Retry::No));
        assert!(matches!(grpc(tonic::Code::Unauthenticated), Retry::No));
        let http = |c: u16, after| {
            ExportError::Http(http::StatusCode::from_u16(c).expect("code")).retry(after)
        };
        assert!(matches!(http(503, None), Retry::Backoff));
        assert!(matches!(http(502, None), Retry::Backoff));
        assert!(matches!(
            http(429, Some(Duration::from_secs(2))),
            Retry::After(d) if d == Duration::from_secs(2)
        ));
        assert!(matches!(http(400, None), Retry::No));
        assert!(matches!(http(404, None), Retry::No));
    }

    #[test]
    fn bad_headers_fail_at_start_naming_the_header() {
        let err = headers(&[("bad header".into(), "v".into())], "gRPC metadata")
            .expect_err("a space is not a header name");
        assert!(err.to_string().contains("\"bad header\""), "{err}");
    }
}
