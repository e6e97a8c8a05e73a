//! Measures the processor's per-event cost (decode, parse, build, print as JSON) on a
//! realistic nginx event, without the kernel: `cargo run --release --example span_cost`.

use std::{io::Write, time::Instant};

use sonde_processor::config::TracePrinter;
use sonde_processor::{
    printer::Printer,
    protocols::http1::{self, Built},
    span::ServiceInfo,
};
use sonde_schema::{DIRECTION_SERVER, EVENT_HTTP, HttpEvent};

fn main() {
    let req = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 04:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n";
    let mut e = HttpEvent::zeroed();
    e.kind = EVENT_HTTP;
    e.direction = DIRECTION_SERVER;
    e.family = 2;
    e.request_len = req.len() as u16;
    e.request[..req.len()].copy_from_slice(req);
    let n = resp.len().min(128);
    e.response_len = n as u16;
    e.response[..n].copy_from_slice(&resp[..n]);
    e.request_bytes = req.len() as u64;
    e.response_bytes = 160;
    e.end_ns = 1000;
    let bytes = e.as_bytes().to_vec();
    let sink = std::io::sink();
    let mut printer = Printer::new(TracePrinter::Json, std::io::BufWriter::new(sink));
    let mut ids = <rand::rngs::SmallRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let iterations: u32 = std::env::var("ITER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let start = Instant::now();
    for _ in 0..iterations {
        let ev = HttpEvent::decode(&bytes).expect("decode");
        if let Built::Span(s, _) = http1::build(
            &ev,
            &ServiceInfo {
                name: "nginx",
                namespace: None,
            },
            &Default::default(),
            0,
            &mut ids,
        ) {
            if std::env::var_os("NOPRINT").is_none() {
                printer.print(&s).expect("print");
            } else {
                std::hint::black_box(&s);
            }
        }
    }
    printer.flush().expect("flush");
    let per = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{per:.0} ns per event (decode + parse + build + JSON)");
    std::io::stdout().flush().expect("flush");
}
