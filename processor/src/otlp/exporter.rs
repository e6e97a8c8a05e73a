//! Building the OTLP transports from the configured endpoints: gRPC (tonic) or HTTP/protobuf
//! (reqwest), headers, gzip, timeouts, and TLS for `https://` endpoints (rustls with ring,
//! trusting exactly the configured CA file or else the system's store). Both signals go
//! through Sonde's own `transport`, requests encoded by `encode` (spans) and `red_metrics`
//! with `opentelemetry-proto` (metrics). Everything that can be wrong in the configuration
//! (a header, a CA file) fails here, at start, not at the first export.

use std::sync::Arc;

use anyhow::Context;

use super::transport::{Signal, Transport};
use crate::config::{MetricsExport, OtlpEndpoint, TracesExport};

/// The transports of the signals that have an endpoint, with the runtime they must run on.
pub(super) struct Exporters {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) spans: Option<Transport>,
    pub(super) metrics: Option<Transport>,
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
                .map(|e| Transport::build(e, Signal::Traces, traces.timeout))
                .transpose()?;
            let metrics = metrics
                .otlp
                .as_ref()
                .map(|e| Transport::build(e, Signal::Metrics, metrics.timeout))
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

/// The HTTP client of one endpoint: for `https://`, rustls (ring) trusting exactly the
/// configured CA file or, without one, the system's trust store.
pub(super) fn http_client(
    e: &OtlpEndpoint,
    timeout: std::time::Duration,
) -> anyhow::Result<reqwest::Client> {
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
