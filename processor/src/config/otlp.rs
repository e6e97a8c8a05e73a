//! OTLP export settings (`otel_traces_export`, `otel_metrics_export` and the
//! `OTEL_EXPORTER_OTLP_*` variables), resolved once into the exact URL, protocol and headers
//! each exporter uses, following the OpenTelemetry exporter specification: a signal-specific
//! endpoint is used as given, a base endpoint gets `/v1/traces` or `/v1/metrics` appended for
//! HTTP, and an unset protocol is guessed from the port (4317 gRPC, 4318 HTTP/protobuf).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use sonde_config::{ConfigError, invalid};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(key: &str, v: &str) -> Result<OtlpProtocol, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            _ => Err(invalid(key, v, "grpc or http/protobuf")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which signal an endpoint is for; decides the HTTP path suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The URL the exporter is given: for HTTP, the full URL including `/v1/<signal>`.
    pub url: String,
    pub protocol: OtlpProtocol,
    /// The TCP port the URL connects to (explicit, or 80 for `http://`); the sandbox allows
    /// connecting to exactly these ports.
    pub port: u16,
    /// Extra request headers / gRPC metadata (authentication tokens, tenant ids).
    pub headers: Vec<(String, String)>,
    /// Compress requests with gzip.
    pub gzip: bool,
    /// `https://`: TLS, the server verified against the system's trust store or `ca_file`.
    pub tls: bool,
    /// PEM certificates to trust instead of the system's (`certificate`,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`); only used with TLS.
    pub ca_file: Option<PathBuf>,
}

/// Span export (`otel_traces_export`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracesExport {
    pub otlp: Option<OtlpEndpoint>,
    /// Spans waiting for export; beyond this they are dropped and counted.
    pub queue_size: usize,
    /// Spans per export request at most.
    pub batch_max_size: usize,
    /// A partial batch is sent after this long (plus the reader's hand-over wait, at most
    /// 20 ms: `worker::HANDOFF_WAIT`).
    pub batch_timeout: Duration,
    /// Give up on one export request (retries included) after this long.
    pub timeout: Duration,
}

impl Default for TracesExport {
    fn default() -> Self {
        super::Config::default().traces_export
    }
}

/// Metric export (`otel_metrics_export`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsExport {
    pub otlp: Option<OtlpEndpoint>,
    /// How often cumulative metrics are sent.
    pub interval: Duration,
    pub timeout: Duration,
    /// Service graph edges from a service to itself count (`crate::service_graph`).
    pub allow_service_graph_self_references: bool,
}

impl Default for MetricsExport {
    fn default() -> Self {
        super::Config::default().metrics_export
    }
}

/// The raw, unresolved settings of one signal, gathered from the file and the environment
/// before `resolve` turns them into an `OtlpEndpoint`.
#[derive(Debug, Default, Clone)]
pub struct RawEndpoint {
    /// A base endpoint (`endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`) and the key it came from.
    pub base: Option<(String, String)>,
    /// A signal endpoint used as given (`traces_endpoint`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub exact: Option<(String, String)>,
    pub protocol: Option<OtlpProtocol>,
    pub headers: Vec<(String, String)>,
    pub gzip: Option<bool>,
    /// A CA file and the key it came from.
    pub ca_file: Option<(String, PathBuf)>,
}

/// Resolves a signal's endpoint. The exact endpoint wins over the base one.
pub fn resolve(raw: &RawEndpoint, signal: Signal) -> Result<Option<OtlpEndpoint>, ConfigError> {
    let (key, text, is_base) = match (&raw.exact, &raw.base) {
        (Some((k, v)), _) => (k, v, false),
        (None, Some((k, v))) => (k, v, true),
        (None, None) => return Ok(None),
    };
    const EXPECTED: &str = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:4318";
    let url = text.trim();
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err(invalid(key, url, EXPECTED));
    };
    let tls = scheme == "https";
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let default_port = if tls { 443 } else { 80 };
    let port = authority_port(authority, default_port).map_err(|_| invalid(key, url, EXPECTED))?;
    let protocol = raw.protocol.unwrap_or(match port {
        p if p % 10000 == 4317 => OtlpProtocol::Grpc,
        _ => OtlpProtocol::HttpProtobuf,
    });
    let url = match (protocol, is_base) {
        (OtlpProtocol::HttpProtobuf, true) => {
            format!(
                "{scheme}://{authority}{}{}",
                path.trim_end_matches('/'),
                signal.http_path()
            )
        }
        _ => format!("{scheme}://{authority}{path}"),
    };
    let ca_file = match &raw.ca_file {
        Some((ca_key, path)) if tls => Some(check_ca_file(ca_key, path)?),
        _ => None,
    };
    Ok(Some(OtlpEndpoint {
        url,
        protocol,
        port,
        headers: raw.headers.clone(),
        gzip: raw.gzip.unwrap_or(false),
        tls,
        ca_file,
    }))
}

/// A CA file must be readable now and hold PEM certificates: a mistake fails at start, naming
/// the key, not at the first export.
fn check_ca_file(key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
    const EXPECTED: &str = "a readable file of PEM certificates (-----BEGIN CERTIFICATE-----)";
    match std::fs::read_to_string(path) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") && path.is_absolute() => {
            Ok(path.to_path_buf())
        }
        Ok(_) if !path.is_absolute() => Err(invalid(key, path.display(), "an absolute path")),
        _ => Err(invalid(key, path.display(), EXPECTED)),
    }
}

/// The port of `host[:port]` or `[v6][:port]`; `default` when absent.
fn authority_port(authority: &str, default: u16) -> Result<u16, ()> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(())?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(());
    }
    match port {
        None => Ok(default),
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(()),
        },
    }
}

/// Parses a compression setting: `gzip` or `none`; true for gzip.
pub fn parse_compression(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "gzip" => Ok(true),
        "none" => Ok(false),
        _ => Err(invalid(key, v, "gzip or none")),
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values
/// percent-decoded as the specification requires.
pub fn parse_headers(key: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    const EXPECTED: &str = "comma-separated key=value pairs";
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| invalid(key, "<hidden>", EXPECTED))?;
        out.push((
            header_name(key, k)?,
            percent_decode(v.trim()).ok_or_else(|| invalid(key, k, EXPECTED))?,
        ));
    }
    Ok(out)
}

/// A valid header name, lowercased (gRPC metadata keys must be lowercase).
pub fn header_name(key: &str, name: &str) -> Result<String, ConfigError> {
    let k = name.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(key, k, "header names of letters, digits, - _ ."));
    }
    Ok(k.to_ascii_lowercase())
}

fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(base: Option<&str>, exact: Option<&str>, protocol: Option<OtlpProtocol>) -> RawEndpoint {
        RawEndpoint {
            base: base.map(|b| ("endpoint".into(), b.into())),
            exact: exact.map(|e| ("traces_endpoint".into(), e.into())),
            protocol,
            headers: Vec::new(),
            gzip: None,
            ca_file: None,
        }
    }

    #[test]
    fn base_endpoints_get_the_signal_path_for_http_only() {
        let e = resolve(&raw(Some("http://c:4318"), None, None), Signal::Traces)
            .unwrap()
            .unwrap();
        assert_eq!(e.url, "http://c:4318/v1/traces");
        assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(e.port, 4318);
        let e = resolve(
            &raw(Some("http://c:4318/prefix/"), None, None),
            Signal::Metrics,
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.url, "http://c:4318/prefix/v1/metrics");
        let e = resolve(&raw(Some("http://c:4317"), None, None), Signal::Traces)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol),
            ("http://c:4317", OtlpProtocol::Grpc)
        );
        let e = resolve(&raw(Some("http://[::1]:14317"), None, None), Signal::Traces)
            .unwrap()
            .unwrap();
        assert_eq!((e.protocol, e.port), (OtlpProtocol::Grpc, 14317));
    }

    #[test]
    fn https_endpoints_use_tls_and_443() {
        let e = resolve(&raw(Some("https://collector"), None, None), Signal::Metrics)
            .unwrap()
            .unwrap();
        assert_eq!(e.url, "https://collector/v1/metrics");
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.ca_file, None);
        // A CA file is checked and kept only for TLS endpoints.
        let dir = std::env::temp_dir().join(format!("sonde-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut r = raw(Some("https://collector:4317"), None, None);
        r.ca_file = Some(("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), ca.clone()));
        let e = resolve(&r, Signal::Traces).unwrap().unwrap();
        assert_eq!(
            (e.ca_file, e.protocol),
            (Some(ca.clone()), OtlpProtocol::Grpc)
        );
        let mut plain = raw(Some("http://collector:4317"), None, None);
        plain.ca_file = Some(("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), ca));
        assert_eq!(
            resolve(&plain, Signal::Traces).unwrap().unwrap().ca_file,
            None
        );
        let mut not_pem = raw(Some("https://collector:4317"), None, None);
        not_pem.ca_file = Some(("certificate".into(), dir.join("missing.pem")));
        assert!(resolve(&not_pem, Signal::Traces).is_err());
    }

    #[test]
    fn exact_endpoints_win_and_stay_as_given() {
        let e = resolve(
            &raw(Some("http://c:4318"), Some("http://d:9999/custom"), None),
            Signal::Traces,
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.url, "http://d:9999/custom");
        assert_eq!((e.port, e.protocol), (9999, OtlpProtocol::HttpProtobuf));
        let e = resolve(
            &raw(None, Some("http://d"), Some(OtlpProtocol::Grpc)),
            Signal::Traces,
        )
        .unwrap()
        .unwrap();
        assert_eq!((e.port, e.protocol), (80, OtlpProtocol::Grpc));
        assert_eq!(
            resolve(&raw(None, None, None), Signal::Traces).unwrap(),
            None
        );
    }

    #[test]
    fn bad_endpoints_name_the_key() {
        for bad in [
            "c:4318",
            "http://",
            "http://c:0",
            "http://c:x",
            "ftp://c",
            "https://",
        ] {
            let e = resolve(&raw(Some(bad), None, None), Signal::Traces).unwrap_err();
            assert!(e.to_string().contains("endpoint"), "{e}");
        }
        let mut with_ca = raw(Some("https://c:4317"), None, None);
        with_ca.ca_file = Some(("certificate".into(), "/nonexistent/ca.pem".into()));
        let e = resolve(&with_ca, Signal::Traces).unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
    }

    #[test]
    fn headers_are_percent_decoded_and_never_echoed() {
        let h = parse_headers("H", "api-key=a%20b, X-Tenant = t1").unwrap();
        assert_eq!(
            h,
            vec![
                ("api-key".into(), "a b".into()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        let e = parse_headers("H", "secret-token-without-equals").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(parse_headers("H", "k=%zz").is_err());
    }
}
