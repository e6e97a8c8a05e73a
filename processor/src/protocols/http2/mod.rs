//! HTTP/2 (being written).
