//! What every messaging protocol module (Kafka) hands on: one [`MessagingExchange`] per
//! request and its response, protocol-neutral (STUB, being written).

use super::http2::Flow;

/// One messaging request (a Kafka Produce or Fetch) and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagingExchange {
    /// `messaging.system`: `kafka`.
    pub system: &'static str,
    /// The flow that carried the request: `Outbound` when this process is the client.
    pub request_flow: Flow,
    /// CLOCK_MONOTONIC ns of the chunk that carried the request's first byte.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the chunk that completed its response (or of the close).
    pub end_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// No response was seen.
    pub no_response: bool,
}
