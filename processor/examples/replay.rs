//! Processor throughput on one core: replays HTTP/1 ring-buffer records through the
//! processor's real pipeline as fast as it takes them and reports events per second. No
//! kernel and no loader: the records are built in the schema's layout from the exact bytes of
//! one nginx exchange (`--request`, `--response`; `bench/replay_bench.sh` captures them from
//! a real nginx), spread over 16 keep-alive connections as `wrk -c16` makes them.
//!
//! `--outputs` picks what runs after decoding (each includes the ones before it):
//!
//! - `decode`: `Record::decode` only;
//! - `build`: + the HTTP/1 parse and the span (`http1::build`), outside the pipeline;
//! - `core`: the whole pipeline (`Pipeline::record`: decode, exchange assembly, span, routes,
//!   sampling), no output;
//! - `prometheus`: + the Prometheus RED series (recorded, not served);
//! - `metrics`: + OTLP metrics export (the production configuration: OTLP metrics + Prometheus);
//! - `traces`: + every span exported over OTLP HTTP/protobuf (queued, encoded and sent by the
//!   exporter thread to a collector that discards them: a child process on another core, so
//!   only the sending side is measured);
//! - `sampled`: `traces` with the trace-id ratio sampler at 0.1 (issue 14's second target);
//! - `json`: `metrics` + every span printed as a JSON line to `--out` (default /dev/null);
//! - `print-json`, `print-text`: the printer alone, one nginx span printed over and over.
//!
//! Run pinned to one core (`taskset -c 1`): the reader thread and the exporter thread then
//! share it, as they would on a processor given one core. Reported: events per second of
//! wall time and per second of this process's CPU time (all its threads); on a shared
//! machine the second is the steadier figure (other tasks taking the core do not count).

use std::{
    collections::BTreeMap,
    io::{BufWriter, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sonde_processor::{
    config::{Config, TracePrinter},
    control::Update,
    metrics::Metrics,
    otlp::Otlp,
    pipeline::{Pipeline, SpanSink},
    printer::Printer,
    protocols::http1,
    span::ServiceInfo,
};
use sonde_schema::{DIRECTION_SERVER, EVENT_HTTP, HttpEvent, RESPONSE_CAPTURE, Record};

/// The request wrk sends (`wrk -t1 -c16 http://127.0.0.1:8080/ok`).
const WRK_REQUEST: &[u8] = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
/// Records per pass: what one drain of the ring buffer hands over at ~100k requests/s (the
/// kernel wakes the processor every 64 KiB, ~200 records).
const PASS: usize = 256;
/// Distinct records built; the replay cycles over them, moving their times forward.
const DISTINCT: usize = 65_536;
/// Connections the exchanges are spread over (`wrk -c16`).
const CONNECTIONS: u64 = 16;
const PID: u32 = 4242;

struct Args {
    outputs: String,
    events: u64,
    request: Vec<u8>,
    response: Vec<u8>,
    out: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        outputs: "metrics".into(),
        events: 2_000_000,
        request: WRK_REQUEST.to_vec(),
        response: b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 04:00:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok".to_vec(),
        out: "/dev/null".into(),
    };
    let mut it = std::env::args().skip(1).peekable();
    if it.peek().is_some_and(|a| a == "--collector") {
        let core = it.nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        collector(core)?;
        std::process::exit(0);
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--outputs" => a.outputs = value()?,
            "--events" => a.events = value()?.parse().context("--events")?,
            "--request" => a.request = std::fs::read(value()?).context("--request")?,
            "--response" => a.response = std::fs::read(value()?).context("--response")?,
            "--out" => a.out = value()?,
            other => bail!(
                "unknown argument {other}: --outputs decode|build|core|prometheus|metrics|traces|sampled|json, --events N, --request FILE, --response FILE, --out FILE"
            ),
        }
    }
    Ok(a)
}

/// The records of `DISTINCT` consecutive exchanges, as the kernel writes them: one
/// `HttpEvent` per request, emitted at the response's first byte (nginx answers in one
/// `writev`, so no response-bytes update follows), the connections taking turns.
fn records(request: &[u8], response: &[u8]) -> Vec<Vec<u8>> {
    let mut e = HttpEvent::zeroed();
    e.kind = EVENT_HTTP;
    e.direction = DIRECTION_SERVER;
    e.family = 2;
    e.pid = PID;
    e.tid = PID;
    e.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.local_port = 8080;
    let n = request.len().min(e.request.len());
    e.request_len = n as u16;
    e.request[..n].copy_from_slice(&request[..n]);
    let n = response.len().min(RESPONSE_CAPTURE);
    e.response_len = n as u16;
    e.response[..n].copy_from_slice(&response[..n]);
    e.request_bytes = request.len() as u64;
    e.response_bytes = response.len() as u64;
    (0..DISTINCT as u64)
        .map(|i| {
            let conn = i % CONNECTIONS;
            e.fd = 3 + conn as u32;
            e.conn_id = 0x1000 + conn;
            e.peer_port = 40_000 + conn as u16;
            // ~10 µs per request per connection, 60 µs from request to response.
            e.start_ns = 1_000_000_000 + i * 10_000;
            e.end_ns = e.start_ns + 60_000;
            e.as_bytes()[..e.wire_len()].to_vec()
        })
        .collect()
}

/// Moves every record's times forward by `by` ns (between cycles, outside the timing).
fn shift_times(records: &mut [Vec<u8>], by: u64) {
    let at = std::mem::offset_of!(HttpEvent, start_ns);
    for r in records {
        for field in [at, at + 8] {
            let t = u64::from_ne_bytes(r[field..field + 8].try_into().expect("8 bytes"));
            r[field..field + 8].copy_from_slice(&(t + by).to_ne_bytes());
        }
    }
}

/// `--collector`: a collector that accepts OTLP HTTP/protobuf exports and discards them,
/// run as a child process pinned to another core than the measured one, so that its CPU time
/// is neither on the measured core nor in the measured process's. Prints its port, then
/// serves until killed.
fn collector(core: usize) -> Result<()> {
    pin_this_thread(core);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let total = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming().flatten() {
        let total = Arc::clone(&total);
        std::thread::spawn(move || {
            let _ = serve(conn, &total);
        });
    }
    Ok(())
}

/// Starts `--collector` on `core`; returns the child and its port.
fn start_collector(core: usize) -> Result<(std::process::Child, u16)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--collector", &core.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the collector")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("collector stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let port = line.trim().parse().context("collector port")?;
    Ok((child, port))
}

/// Answers every request on one connection with an empty 200 (an empty export response).
fn serve(mut conn: TcpStream, total: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0;
    loop {
        let head_end = loop {
            if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if have == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = conn.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let end = head_end + body;
        if buf.len() < end {
            buf.resize(end, 0);
        }
        while have < end {
            let n = conn.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        }
        total.fetch_add(end as u64, Ordering::Relaxed);
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )?;
        buf.copy_within(end..have, 0);
        have -= end;
    }
}

/// CPU time of this process, all threads (ended ones included).
fn process_cpu() -> Result<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(t))
}

fn pin_this_thread(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(core).is_ok() {
        // Best effort: unpinned, the collector's share would be counted as the processor's.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The core this process may run on (the first one when several are allowed) and another.
fn cores() -> (usize, usize) {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let mine = (0..nix::sched::CpuSet::count())
        .find(|&c| set.as_ref().is_some_and(|s| s.is_set(c).unwrap_or(false)))
        .unwrap_or(0);
    (mine, if mine == 0 { 1 } else { 0 })
}

fn main() -> Result<()> {
    let a = args()?;
    let mut records = records(&a.request, &a.response);
    let cycle_ns = DISTINCT as u64 * 10_000;
    let cycles = a.events.div_ceil(DISTINCT as u64);
    let events = cycles * DISTINCT as u64;
    let report = |stage: &str, elapsed: Duration, cpu: Duration, extra: &str| {
        let (secs, cpu) = (elapsed.as_secs_f64(), cpu.as_secs_f64());
        println!(
            "outputs={stage} events={events} seconds={secs:.3} events_per_s={:.0} ns_per_event={:.0} cpu_seconds={cpu:.3} events_per_cpu_s={:.0} cpu_ns_per_event={:.0}{extra}",
            events as f64 / secs,
            secs * 1e9 / events as f64,
            events as f64 / cpu,
            cpu * 1e9 / events as f64,
        );
    };
    match a.outputs.as_str() {
        "decode" => {
            let (start, cpu0) = (Instant::now(), process_cpu()?);
            for _ in 0..cycles {
                for r in &records {
                    std::hint::black_box(Record::decode(std::hint::black_box(r)).is_ok());
                }
            }
            report("decode", start.elapsed(), process_cpu()? - cpu0, "");
            return Ok(());
        }
        "build" => {
            let mut ids = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
            let service = ServiceInfo {
                name: "nginx",
                namespace: None,
            };
            let query = Default::default();
            let (start, cpu0) = (Instant::now(), process_cpu()?);
            for _ in 0..cycles {
                for r in &records {
                    let Ok(ev) = HttpEvent::decode(r) else {
                        bail!("undecodable record")
                    };
                    std::hint::black_box(http1::build(&ev, &service, &query, 0, &mut ids));
                }
            }
            report("build", start.elapsed(), process_cpu()? - cpu0, "");
            return Ok(());
        }
        "print-json" | "print-text" => {
            // The printer alone: one nginx span printed `events` times (BufWriter on
            // `--out`, as the processor's standard output is).
            let mut ids = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
            let service = ServiceInfo {
                name: "nginx",
                namespace: None,
            };
            let Ok(ev) = HttpEvent::decode(&records[0]) else {
                bail!("undecodable record")
            };
            let http1::Built::Span(span, ..) =
                http1::build(&ev, &service, &Default::default(), 0, &mut ids)
            else {
                bail!("the request is not HTTP")
            };
            let format = if a.outputs == "print-json" {
                TracePrinter::Json
            } else {
                TracePrinter::Text
            };
            let file = std::fs::OpenOptions::new().append(true).open(&a.out)?;
            let mut printer = Printer::new(format, BufWriter::with_capacity(64 * 1024, file));
            let (start, cpu0) = (Instant::now(), process_cpu()?);
            for i in 0..events {
                printer.print(&span)?;
                if i % PASS as u64 == 0 {
                    printer.flush()?;
                }
            }
            printer.flush()?;
            report(&a.outputs, start.elapsed(), process_cpu()? - cpu0, "");
            return Ok(());
        }
        _ => {}
    }

    let (mine, other) = cores();
    let mut env = BTreeMap::new();
    let mut collector = None;
    let outputs = a.outputs.as_str();
    let (prometheus, otlp_metrics, traces, json) = match outputs {
        "core" => (false, false, false, false),
        "prometheus" => (true, false, false, false),
        "metrics" => (true, true, false, false),
        "traces" | "sampled" => (true, true, true, false),
        "json" => (true, true, false, true),
        other => bail!("unknown --outputs {other}"),
    };
    if prometheus || otlp_metrics || traces {
        let (child, port) = start_collector(other)?;
        collector = Some(child);
        let url = format!("http://127.0.0.1:{port}");
        env.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into());
        if prometheus {
            // Recorded only: nothing serves it here.
            env.insert("BEYLA_PROMETHEUS_PORT".into(), "9".into());
        }
        if otlp_metrics {
            env.insert("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT".into(), url.clone());
        }
        if traces {
            env.insert("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), url);
        }
        if outputs == "sampled" {
            env.insert("OTEL_TRACES_SAMPLER".into(), "traceidratio".into());
            env.insert("OTEL_TRACES_SAMPLER_ARG".into(), "0.1".into());
        }
    }
    // Explicit: with no exporter configured, the default printer is `text`.
    let printer = if json { "json" } else { "disabled" };
    env.insert("BEYLA_TRACE_PRINTER".into(), printer.into());
    let config = Config::load(None, &env).context("configuration")?;
    let metrics = Arc::new(Metrics::new("replay-host"));
    let otlp = Otlp::start(
        &config.traces_export,
        &config.metrics_export,
        "replay-host",
        metrics.otlp.clone(),
        metrics.red_store(),
    )?;
    let out = BufWriter::with_capacity(
        64 * 1024,
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.out)
            .with_context(|| format!("opening {}", a.out))?,
    );
    let sink = SpanSink::new(&config, metrics, otlp, out, 0);
    let mut pipeline = Pipeline::new(sink);
    pipeline.apply(Update::Added(sonde_schema::control::ProcessRecord {
        pid: PID,
        exe_path: "/usr/sbin/nginx".into(),
        cmdline: vec!["nginx: worker process".into()],
        service_name: "nginx".into(),
        reason: "port 8080".into(),
        ..Default::default()
    }));

    let mut busy = Duration::ZERO;
    let cpu0 = process_cpu()?;
    for cycle in 0..cycles {
        if cycle > 0 {
            shift_times(&mut records, cycle_ns);
        }
        let start = Instant::now();
        for pass in records.chunks(PASS) {
            let now = Instant::now();
            for r in pass {
                pipeline.record(r, now);
            }
            pipeline.end_pass(now, 0);
        }
        busy += start.elapsed();
    }
    // Completing what is held and sending what is queued belongs to the run too.
    let start = Instant::now();
    let stats = pipeline.finish();
    busy += start.elapsed();
    // Every thread of this process (the reader, the exporter's), joined by now.
    let cpu = process_cpu()? - cpu0;
    if let Some(mut child) = collector {
        let _ = child.kill();
        let _ = child.wait();
    }
    report(
        outputs,
        busy,
        cpu,
        &format!(
            " core={mine} spans={} exported={} dropped={} lost={}",
            stats.spans,
            stats.otlp_spans_exported,
            stats.otlp_spans_dropped,
            stats.lost()
        ),
    );
    if stats.spans + 16 < events {
        bail!("{} events became only {} spans", events, stats.spans);
    }
    Ok(())
}
