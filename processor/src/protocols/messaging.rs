//! What every messaging protocol module (Kafka) hands on: one [`MessagingExchange`] per
//! request and its response, protocol-neutral, which `messaging_spans` turns into a span and
//! the messaging duration metrics.
//!
//! Naming (the reference system's, OBI's current Kafka code): a Produce is the operation
//! `publish` (span kind PRODUCER on the client), a Fetch the operation `process` (span kind
//! CONSUMER on the client); `messaging.operation.name` and `messaging.operation.type` both
//! carry that word, the span is named `publish <topic>` / `process <topic>`. A selected
//! broker sees the same requests inbound: SERVER spans with the same names and attributes.
//! A Metadata request the broker answered with an error is the operation `metadata` (kind
//! CLIENT; no `messaging.operation.type`), so that the failure a client meets first (a topic
//! that does not exist) shows. Metrics: `publish` and `metadata` are counted in
//! `messaging.client.operation.duration`, `process` in `messaging.process.duration`
//! (seconds), whichever end the span is, so spans and metrics always agree on the operation.

use super::http2::Flow;
use crate::semconv::Instrument;
use crate::span::Messaging;

/// The messaging operation of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Messages sent to the broker (Kafka Produce).
    Publish,
    /// Messages fetched from the broker (Kafka Fetch).
    Process,
    /// Topic metadata asked of the broker (Kafka Metadata): an exchange only when the broker
    /// answered with an error (the error a client gets first, e.g. for a topic that does not
    /// exist); successful metadata requests are housekeeping and make no span.
    Metadata,
}

impl Operation {
    /// `messaging.operation.name` and `messaging.operation.type`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Process => "process",
            Operation::Metadata => "metadata",
        }
    }

    /// `messaging.operation.type`: the operation word for publish and process; none for
    /// metadata, which the conventions have no type for.
    pub fn operation_type(self) -> Option<&'static str> {
        match self {
            Operation::Publish | Operation::Process => Some(self.name()),
            Operation::Metadata => None,
        }
    }

    /// The histogram this operation's durations are counted in.
    pub fn instrument(self) -> &'static Instrument {
        match self {
            Operation::Publish | Operation::Metadata => &CLIENT_OPERATION_DURATION,
            Operation::Process => &PROCESS_DURATION,
        }
    }
}

/// Duration of messaging operations that send (publish), seconds.
pub const CLIENT_OPERATION_DURATION: Instrument = Instrument {
    name: "messaging.client.operation.duration",
    description: "Duration of messaging operations",
};
/// Duration of messaging fetches (process), seconds.
pub const PROCESS_DURATION: Instrument = Instrument {
    name: "messaging.process.duration",
    description: "Duration of messaging process operations",
};

/// One messaging request (a Kafka Produce or Fetch) and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagingExchange {
    /// `messaging.system`: `kafka`.
    pub system: &'static str,
    /// The flow that carried the request: `Outbound` when this process is the client.
    pub request_flow: Flow,
    pub operation: Operation,
    /// `messaging.destination.name`: the (first) topic; None when unknown (a topic id never
    /// resolved by a Metadata response, or the request's topics were not captured).
    pub destination: Option<String>,
    /// `messaging.client.id`: the request header's client id, when present.
    pub client_id: Option<String>,
    /// The first non-zero Kafka error code of the response (top level or per partition).
    pub error_code: Option<i16>,
    /// CLOCK_MONOTONIC ns of the chunk that carried the request's first byte.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the chunk that completed its response (or of the close; of the
    /// request's last chunk when no response is expected).
    pub end_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// A response was expected and not seen (connection closed, or lost in uncaptured bytes).
    pub no_response: bool,
    /// No response is expected (a Produce with `acks=0`): the span ends with the request.
    pub fire_and_forget: bool,
    /// Some field is unknown because of what capture missed (destination of an unresolved
    /// topic id, or a response lost in uncaptured bytes): counted.
    pub partial: bool,
}

impl MessagingExchange {
    /// The span-side view of the exchange.
    pub fn messaging(&self) -> Messaging {
        Messaging {
            system: self.system,
            operation: self.operation,
            destination: self.destination.clone(),
            client_id: self.client_id.clone(),
            error_code: self.error_code,
        }
    }
}

/// `error.type` of a failed operation: the Kafka error name (its number when the name is not
/// known), or `no_response`.
pub fn error_type(m: &Messaging, no_response: bool) -> Option<String> {
    match (m.error_code, no_response) {
        (Some(code), _) => Some(match super::kafka::error_name(code) {
            Some(name) => name.to_string(),
            None => code.to_string(),
        }),
        (None, true) => Some("no_response".into()),
        (None, false) => None,
    }
}

/// The span name: `publish <topic>` / `process <topic>`, the operation alone when the topic
/// is unknown.
pub fn span_name(m: &Messaging) -> String {
    match &m.destination {
        Some(d) => format!("{} {d}", m.operation.name()),
        None => m.operation.name().to_string(),
    }
}
