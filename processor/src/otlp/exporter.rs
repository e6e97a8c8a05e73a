//! Building the OTLP exporters from the configured endpoints: gRPC (tonic) or HTTP/protobuf
//! (reqwest), headers, gzip, timeouts, and TLS for `https://` endpoints (rustls with ring,
//! trusting exactly the configured CA file or else the system's store). Spans go through
//! Sonde's own `transport` (requests encoded by `encode`); metrics through
//! `opentelemetry-otlp`'s exporter, whose retries with backoff are its own (the crate's
//! default policy). Everything that can be wrong in the configuration (a header, a CA file)
//! fails here, at start, not at the first export.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use opentelemetry_otlp::{
    Compression, MetricExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};

use super::transport::SpanTransport;
use crate::config::{MetricsExport, OtlpEndpoint, OtlpProtocol, TracesExport};

/// The exporters of the signals that have an endpoint, with the runtime they must run on.
pub(super) struct Exporters {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) spans: Option<SpanTransport>,
    pub(super) metrics: Option<MetricExporter>,
}

impl Exporters {
    pub(super) fn build(traces: &TracesExport, metrics: &MetricsExport) -> anyhow::Result<Self> {
        // One crypto provider for every TLS client in the process (tonic's and reqwest's).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // tonic's channel starts its worker on the runtime current when it is built.
        let (spans, metrics) = {
            let _guard = runtime.enter();
            let spans = traces
                .otlp
                .as_ref()
                .map(|e| SpanTransport::build(e, traces.timeout))
                .transpose()?;
            let metrics = metrics
                .otlp
                .as_ref()
                .map(|e| metric_exporter(e, metrics.timeout))
                .transpose()?;
            (spans, metrics)
        };
        Ok(Exporters {
            runtime,
            spans,
            metrics,
        })
    }
}

fn metric_exporter(e: &OtlpEndpoint, timeout: Duration) -> anyhow::Result<MetricExporter> {
    Ok(match e.protocol {
        OtlpProtocol::Grpc => {
            over_grpc(MetricExporter::builder().with_tonic(), e, timeout)?.build()?
        }
        OtlpProtocol::HttpProtobuf => {
            over_http(MetricExporter::builder().with_http(), e, timeout)?.build()?
        }
    })
}

/// The endpoint's settings on a gRPC metric exporter builder.
fn over_grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    e: &OtlpEndpoint,
    timeout: Duration,
) -> anyhow::Result<B> {
    let mut b = builder
        .with_endpoint(e.url.clone())
        .with_timeout(timeout)
        .with_metadata(metadata(&e.headers)?);
    if e.gzip {
        b = b.with_compression(Compression::Gzip);
    }
    if e.tls {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
        let tls = match &e.ca_file {
            Some(path) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(path).with_context(
                    || format!("reading the OTLP CA file {}", path.display()),
                )?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        b = b.with_tls_config(tls);
    }
    Ok(b)
}

/// The endpoint's settings on an HTTP/protobuf metric exporter builder.
fn over_http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    e: &OtlpEndpoint,
    timeout: Duration,
) -> anyhow::Result<B> {
    let b = builder
        .with_endpoint(e.url.clone())
        .with_timeout(timeout)
        .with_headers(e.headers.iter().cloned().collect())
        .with_http_client(http_client(e, timeout)?);
    Ok(if e.gzip {
        b.with_compression(Compression::Gzip)
    } else {
        b
    })
}

/// The HTTP client of one endpoint: for `https://`, rustls (ring) trusting exactly the
/// configured CA file or, without one, the system's trust store.
pub(super) fn http_client(e: &OtlpEndpoint, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if e.tls {
        let mut roots = rustls::RootCertStore::empty();
        match &e.ca_file {
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading the OTLP CA file {}", path.display()))?
                {
                    roots.add(cert.context("a certificate of the OTLP CA file")?)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A certificate the system store holds but rustls rejects is skipped.
                    let _ = roots.add(cert);
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "no trusted certificates in the system store for {}: {:?}",
                    e.url,
                    found.errors
                );
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        b = b.tls_backend_preconfigured(config);
    }
    Ok(b.build()?)
}

fn metadata(
    headers: &[(String, String)],
) -> anyhow::Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| anyhow::anyhow!("OTLP header name {k:?} is not valid gRPC metadata"))?;
        let value = http::HeaderValue::from_str(v).map_err(|_| {
            anyhow::anyhow!("the value of OTLP header {k:?} is not valid gRPC metadata")
        })?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}
