//! sonde-processor: the unprivileged half of Sonde. It reads kernel events from a ring buffer
//! it maps itself (no `bpf()` calls), parses HTTP/1.x, builds spans and prints them. Every
//! byte it parses is attacker-controlled, which is why it holds no privilege at all.

pub mod config;
pub mod control;
pub mod flows;
pub mod kube;
pub mod metrics;
pub mod otlp;
pub mod own_telemetry;
pub mod pipeline;
pub mod prehashed;
pub mod printer;
pub mod privileges;
pub mod process_metrics;
pub mod protocols;
pub mod red;
pub mod red_store;
pub mod ringbuf;
pub mod routes;
pub mod sampling;
pub mod sandbox;
pub mod sandbox_check;
pub mod scheduling;
pub mod semconv;
pub mod service_graph;
pub mod span;
pub mod stats;
