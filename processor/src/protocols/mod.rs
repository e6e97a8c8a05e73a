//! The protocol layer: one module per application protocol, each turning a connection's
//! captured bytes into finished exchanges. Exchange assembly common to all, decoration and
//! export stay protocol-neutral.

pub mod http2;
