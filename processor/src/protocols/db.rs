//! What every database and cache protocol module hands on: one [`DbExchange`] per command or
//! statement, protocol-neutral, which `db_spans` turns into a span and the
//! `db.client.operation.duration` / `db.server.operation.duration` metrics.

use super::http2::Flow;

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
    /// `db.query.text`, already sanitized (every literal or argument replaced by `?`) unless
    /// sanitizing is off; None when not known (a prepared statement whose text was never seen).
    pub query_text: Option<String>,
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
