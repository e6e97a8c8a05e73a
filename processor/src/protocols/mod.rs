//! The protocol layer: one module per application protocol, each turning a connection's
//! captured bytes into finished exchanges. Exchange assembly common to all, decoration and
//! export stay protocol-neutral.

pub mod db;
pub mod db_spans;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod http2_spans;
pub mod kafka;
pub mod memcached;
pub mod messaging;
pub mod messaging_spans;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod streams;
mod text_lines;
