//! The OpenTelemetry HTTP semantic conventions every output shares: the RED histograms
//! (names, descriptions, units, bucket boundaries) and the bounded method value. The
//! Prometheus registry (`metrics`), the OTLP meters and span conversion (`otlp`) and the
//! per-series cache (`red`) all take them from here, so the two metric outputs cannot drift
//! apart and neither has to import the other.

/// `http.server.request.duration` buckets from the semantic conventions (seconds).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Body size buckets (bytes).
pub const SIZE_BUCKETS: [f64; 10] = [
    0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// One histogram, under its OpenTelemetry name (Prometheus replaces the dots with `_` and
/// appends the unit).
pub struct Instrument {
    pub name: &'static str,
    pub description: &'static str,
}

/// The three histograms of one span kind. Durations are in seconds (`DURATION_BUCKETS`),
/// body sizes in bytes (`SIZE_BUCKETS`).
pub struct RedInstruments {
    pub duration: Instrument,
    pub request_size: Instrument,
    pub response_size: Instrument,
}

pub const SERVER: RedInstruments = RedInstruments {
    duration: Instrument {
        name: "http.server.request.duration",
        description: "Duration of HTTP server requests",
    },
    request_size: Instrument {
        name: "http.server.request.body.size",
        description: "Size of HTTP server request bodies",
    },
    response_size: Instrument {
        name: "http.server.response.body.size",
        description: "Size of HTTP server response bodies",
    },
};

pub const CLIENT: RedInstruments = RedInstruments {
    duration: Instrument {
        name: "http.client.request.duration",
        description: "Duration of HTTP client requests",
    },
    request_size: Instrument {
        name: "http.client.request.body.size",
        description: "Size of HTTP client request bodies",
    },
    response_size: Instrument {
        name: "http.client.response.body.size",
        description: "Size of HTTP client response bodies",
    },
};

/// The method as a static string when it is a standard one (no allocation); other methods
/// are reported as `_OTHER`, as the conventions ask, so a scanner cannot mint new series.
pub fn method_value(method: &str) -> &'static str {
    known_method(method).unwrap_or("_OTHER")
}

/// The standard method `method` is, as a static string.
pub fn known_method(method: &str) -> Option<&'static str> {
    const KNOWN: [&str; 10] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "QUERY",
    ];
    KNOWN.iter().find(|m| **m == method).copied()
}
