//! What every database and cache protocol module hands on: one [`DbExchange`] per command or
//! statement, protocol-neutral, which `db_spans` turns into a span and the
//! `db.client.operation.duration` / `db.server.operation.duration` metrics.

use super::http2::Flow;
use crate::{semconv::Instrument, span::Db};

/// One command (Redis) or executed statement (PostgreSQL) and its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbExchange {
    /// `db.system.name`: `redis`, `postgresql`, …
    pub system: &'static str,
    /// The flow that carried the command: `Outbound` when this process is the client.
    pub request_flow: Flow,
    /// `db.operation.name`: `GET`, `SELECT`, …; None when it could not be read.
    pub operation: Option<String>,
    /// `db.collection.name`: the table (SQL, best effort); never set for Redis.
    pub collection: Option<String>,
    /// `db.namespace`: the database name (PostgreSQL, from the startup message) or index
    /// (Redis, after `SELECT n`); None when not seen (connection older than Sonde).
    pub namespace: Option<String>,
    /// `db.query.text`, sanitized (every literal or argument replaced by `?`); None when not
    /// known (a prepared statement whose text was never seen).
    pub query_text: Option<String>,
    /// The SQL statement as sent (bounded), for `attributes.db_query_sanitize: false`; never
    /// set for protocols whose arguments must not leave the processor (Redis).
    pub raw_query_text: Option<String>,
    /// `db.response.status_code` of a failed command: the SQLSTATE (`42P01`) or the Redis
    /// error prefix (`ERR`, `WRONGTYPE`); None on success.
    pub error_code: Option<String>,
    /// CLOCK_MONOTONIC ns of the chunk that carried the command's first byte.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns of the chunk that completed its reply (or of the close).
    pub end_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// No reply was seen (the connection closed first, or capture lost it).
    pub no_response: bool,
    /// Some field that would otherwise be there is unknown because of the connection's past
    /// (a statement prepared before Sonde started, a database selected before): counted.
    pub partial: bool,
}

/// The database operation histograms (seconds, the HTTP duration buckets), the reference
/// system's names: client calls, and server-side operations of a selected database server.
pub const CLIENT_DURATION: Instrument = Instrument {
    name: "db.client.operation.duration",
    description: "Duration of database client operations",
};
pub const SERVER_DURATION: Instrument = Instrument {
    name: "db.server.operation.duration",
    description: "Duration of database server operations",
};

/// Whether a database span is an error: a failed operation (an error reply, with its code), or
/// one that got no reply at all.
pub fn is_error(db: &Db, no_response: bool) -> bool {
    db.error_code.is_some() || no_response
}

/// `error.type` of a failed operation: its code, or `no_response`.
pub fn error_type(db: &Db, no_response: bool) -> Option<&str> {
    match (&db.error_code, no_response) {
        (Some(code), _) => Some(code),
        (None, true) => Some("no_response"),
        (None, false) => None,
    }
}

/// The span name the conventions give: `OPERATION collection`, else `OPERATION namespace`
/// (SQL), else the operation, else the system's generic name.
pub fn span_name(db: &Db) -> String {
    match (&db.operation, &db.collection, &db.namespace) {
        (Some(op), Some(coll), _) => format!("{op} {coll}"),
        (Some(op), None, Some(ns)) if db.system != "redis" => format!("{op} {ns}"),
        (Some(op), _, _) => op.clone(),
        (None, _, _) => match db.system {
            "redis" => "REDIS".into(),
            "memcached" => "MEMCACHED".into(),
            _ => "SQL".into(),
        },
    }
}

impl DbExchange {
    /// The span-side view of the exchange; `sanitize`: `attributes.db_query_sanitize`.
    pub fn db(&self, sanitize: bool) -> Db {
        let query_text = match (&self.raw_query_text, sanitize) {
            (Some(raw), false) => Some(raw.clone()),
            _ => self.query_text.clone(),
        };
        Db {
            system: self.system,
            operation: self.operation.clone(),
            collection: self.collection.clone(),
            namespace: self.namespace.clone(),
            query_text,
            error_code: self.error_code.clone(),
        }
    }
}
