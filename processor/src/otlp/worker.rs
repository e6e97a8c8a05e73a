//! The export worker: one thread, running a single-threaded Tokio runtime, that takes the
//! spans the reader thread queued, batches them, encodes each batch as one OTLP request
//! (`encode`: one `ResourceSpans` per process) and sends it (`transport`), and collects and
//! sends every process's metrics each `interval` (each process under its resource: its
//! process metrics, `usage_metrics`, its RED series, `red_metrics`, and its service graph
//! cells, `graph_metrics`; the network flows, `flows`, under the host's; several resources
//! per request, up to `REQUEST_BYTES`). The queue
//! is bounded (`queue_size`, counted from hand-over to export): beyond it the reader thread
//! drops and counts a span rather than wait. What the exporters still cannot send after
//! their retries is counted and dropped, and logged without flooding; the next batch
//! reconnects by itself once the collector is back.
//!
//! Neither the SDK's batch processor nor its span exporter is used: the processor serves one
//! resource per provider, while Sonde exports for many processes, and the exporter's
//! `SpanData` → prost structs path cost several microseconds per span.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::stream::{FuturesUnordered, StreamExt as _};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::ResourceMetrics,
};
use prost::Message as _;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::{
    encode::{EncodedResource, Encoder, Queued},
    exporter::Exporters,
    flows, graph_metrics,
    meters::{self, Pipelines},
    red_metrics,
    transport::{ExportError, Transport},
    usage_metrics,
};
use crate::{
    config::{MetricsExport, TracesExport},
    metrics::ExportCounters,
    red_store::RedStore,
    span::Span,
};

/// Encoded spans the worker hands back and keeps for the reader thread at most (one default
/// batch): the reader writes its next spans into them (`SpanQueue::spare`), so a span's
/// allocation and its strings' buffers go round instead of being freed by the worker and
/// allocated again by the reader, each time through the allocator's slow, locked path (a block
/// freed by another thread than the one that allocated it). The reader holds at most as many
/// again (the last pool it took), so at most twice this many spans wait, with their strings.
const SPARE_SPANS: usize = 2048;

/// Spans the reader gathers before it wakes the worker, at most (fewer when a batch is smaller).
/// Handing each pass's spans over at once woke the worker ~500 times a second under nginx at
/// `traceidratio` 0.1 (a dozen spans each): every wake-up a context switch on each side and
/// an `eventfd` write, ~20 % of the processor's CPU in that configuration. With every trace
/// exported a pass has a few hundred spans and goes over at once, as before (gathering 512
/// was no cheaper there).
const HANDOFF_SPANS: usize = 128;

/// Longest the reader keeps spans before handing them over (shorter when the batch timeout
/// is): a quiet process's spans still reach the worker within a pass or two.
const HANDOFF_WAIT: Duration = Duration::from_millis(20);

/// Spans handed back after encoding, for the reader to write over. Boxed: the builders write
/// into a `Box<Span>` (`http1::build_for`), so the box's allocation goes round too.
type Spares = Vec<Box<Span>>;

/// The worker's pool of spans handed back. The reader never waits for it: it looks at
/// `available` (no lock) and takes the pool with `try_lock`, so a worker preempted while it
/// holds the lock costs the reader an allocation, never a wait.
#[derive(Default)]
struct ReturnedSpans {
    pool: Mutex<Spares>,
    /// Spans in `pool`; written by both sides under the lock, read by the reader without it.
    available: AtomicUsize,
}

/// The reader thread's end of the span queue.
pub(super) struct SpanQueue {
    tx: mpsc::UnboundedSender<Vec<Queued>>,
    /// Filled by the worker; emptied into `spares` a whole pool at a time (one lock per
    /// refill, none while the pool is empty).
    returned: Arc<ReturnedSpans>,
    spares: Spares,
    /// Spans not yet handed over, handed over together by `flush` once there are
    /// `handoff_spans` of them or the first has waited `handoff_wait`: one wake-up of the
    /// worker per hundred-odd spans (or per 20 ms) rather than per pass.
    pending: Vec<Queued>,
    /// The pass that found `pending` non-empty first (`flush`'s `now`).
    pending_since: Option<Instant>,
    handoff_spans: usize,
    handoff_wait: Duration,
    /// Spans handed over and not yet exported or dropped; bounded by `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    counters: ExportCounters,
}

impl SpanQueue {
    /// An encoded span to write the next one into, when the worker handed one back.
    pub(super) fn spare(&mut self) -> Option<Box<Span>> {
        if self.spares.is_empty() && self.returned.available.load(Ordering::Acquire) > 0 {
            let mut pool = match self.returned.pool.try_lock() {
                Ok(pool) => pool,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            std::mem::swap(&mut *pool, &mut self.spares);
            self.returned.available.store(0, Ordering::Release);
        }
        self.spares.pop()
    }

    /// Queues a span; drops and counts it when the queue is full.
    pub(super) fn push(&mut self, span: Box<Span>, resource: Option<EncodedResource>) {
        if self.queued.load(Ordering::Relaxed) + self.pending.len() >= self.capacity {
            self.counters.spans_dropped_queue_full.inc();
            return;
        }
        self.pending.push(Queued { resource, span });
    }

    /// Hands the pending spans to the worker when there are enough of them or the first has
    /// waited long enough (`now`: the pass's time).
    pub(super) fn flush(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let since = *self.pending_since.get_or_insert(now);
        if self.pending.len() < self.handoff_spans
            && now.saturating_duration_since(since) < self.handoff_wait
        {
            return;
        }
        self.hand_over();
    }

    /// Hands every pending span to the worker.
    fn hand_over(&mut self) {
        self.pending_since = None;
        if self.pending.is_empty() {
            return;
        }
        // The next pass starts at this one's size: no growth by reallocation (each one moves
        // every span queued so far) on every pass.
        let n = self.pending.len();
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(n));
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(batch).is_err() {
            // The worker is gone (it only stops at shutdown).
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.counters.spans_dropped_export_failed.inc_by(n as u64);
        }
    }

    /// Hands over what is pending and closes the queue: the worker sends what is left.
    pub(super) fn close(mut self) {
        self.hand_over();
    }
}

/// The running worker.
pub(super) struct Worker {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread with the built exporters; returns it and, when spans are
    /// exported, the queue that feeds it.
    pub(super) fn start(
        exporters: Exporters,
        traces: &TracesExport,
        metrics: &MetricsExport,
        pipelines: Pipelines,
        red: Arc<RedStore>,
        counters: ExportCounters,
        host: &str,
    ) -> std::io::Result<(Worker, Option<SpanQueue>)> {
        let Exporters {
            runtime,
            spans: span_exporter,
            metrics: metric_exporter,
        } = exporters;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(ReturnedSpans::default());
        let queue = span_exporter.as_ref().map(|_| SpanQueue {
            tx,
            returned: Arc::clone(&returned),
            spares: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            handoff_spans: HANDOFF_SPANS.min(traces.batch_max_size).max(1),
            handoff_wait: HANDOFF_WAIT.min(traces.batch_timeout),
            queued: Arc::clone(&queued),
            capacity: traces.queue_size,
            counters: counters.clone(),
        });
        let stop = Arc::new(Notify::new());
        let spans = SpanSender {
            encoder: Encoder::new(host),
            request: Vec::new(),
            counters: counters.clone(),
            log: FailureLog::new("span"),
        };
        let batching = Batching {
            max: traces.batch_max_size,
            timeout: traces.batch_timeout,
        };
        let interval = metrics.interval;
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("sonde-otlp".into())
                .spawn(move || {
                    runtime.block_on(async {
                        let spans = async {
                            if let Some(exporter) = span_exporter {
                                export_spans(exporter, rx, &queued, &returned, spans, batching)
                                    .await
                            }
                        };
                        let metrics = async {
                            if let Some(transport) = metric_exporter {
                                let sources = MetricSources {
                                    pipelines: &pipelines,
                                    red: &red,
                                };
                                export_metrics(transport, sources, interval, &stop, &counters).await
                            }
                        };
                        tokio::join!(spans, metrics);
                    })
                })?
        };
        Ok((
            Worker {
                stop,
                thread: Some(thread),
            },
            queue,
        ))
    }

    /// Sends the last metrics and waits for the worker to finish; the span queue must be
    /// closed first, or the worker waits for more spans.
    pub(super) fn stop(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
struct Batching {
    max: usize,
    timeout: Duration,
}

/// Export requests in flight at once: the next batches are encoded and sent while the
/// collector still works on earlier ones, so a collector's latency does not stall the queue.
/// Four, not two: with every trace exported at ~185k spans/s (nginx on two vCPUs, the
/// collector on the same machine) two left the default queue overflowing in 4 of 4 rounds
/// (3,672–48,883 spans dropped), four in 2 of 8 (2,090 and 2,868); eight did no better (987
/// and 1,677 in 2 of 4) and held more encoded bytes (BENCHMARKS.md, "An Intel host").
const IN_FLIGHT: usize = 4;

/// Batches queued spans and exports them; once the queue is closed, sends what is left.
async fn export_spans(
    transport: Transport,
    mut rx: mpsc::UnboundedReceiver<Vec<Queued>>,
    queued: &AtomicUsize,
    returned: &ReturnedSpans,
    mut sender: SpanSender,
    batching: Batching,
) {
    // Spans waiting for a request, as the reader handed them over (one deque per pass: made
    // from the pass's Vec without moving a span), consumed from the front. A span is written
    // once by the reader and read once by the encoder where it lies.
    let mut batch = Waiting::default();
    let mut deadline: Option<tokio::time::Instant> = None;
    // A partial batch is to go out: its timeout passed, or the queue closed.
    let mut due = false;
    let mut open = true;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < IN_FLIGHT
            && (batch.len() >= batching.max || (due && !batch.is_empty()))
        {
            let n = batch.len().min(batching.max);
            match sender.encode(&transport, &batch.front(n)) {
                Ok(body) => in_flight.push(send(transport.clone(), body, n)),
                Err(e) => {
                    sender.outcome(n, Err(e));
                    queued.fetch_sub(n, Ordering::Relaxed);
                }
            }
            // Once encoded, not after the round trip, the spans go back to the reader (up to
            // `SPARE_SPANS` waiting there); the rest are freed here.
            batch.give_back_front(n, returned);
        }
        if batch.is_empty() {
            deadline = None;
            due = false;
            if !open && in_flight.is_empty() {
                break;
            }
        }
        tokio::select! {
            got = rx.recv(), if open => match got {
                Some(spans) => {
                    batch.push(spans);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + batching.timeout);
                }
                // The reader side is shutting down: send what is left.
                None => { open = false; due = true; }
            },
            () = sleep_until(deadline), if !due => due = true,
            Some((n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                sender.outcome(n, result);
                queued.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }
}

/// Spans waiting for the encoder: the reader's passes in arrival order.
#[derive(Default)]
struct Waiting {
    passes: VecDeque<VecDeque<Queued>>,
    len: usize,
    /// Spans on their way back to the reader (`give_back_front`), gathered before the lock is
    /// taken; kept for its capacity.
    giving: Spares,
}

impl Waiting {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, pass: Vec<Queued>) {
        if !pass.is_empty() {
            self.len += pass.len();
            // O(1): the deque takes the Vec's buffer over.
            self.passes.push_back(VecDeque::from(pass));
        }
    }

    /// The first `n` spans (n ≤ len), as slices in order.
    fn front(&self, n: usize) -> Vec<&[Queued]> {
        let mut parts = Vec::new();
        let mut left = n;
        for pass in &self.passes {
            let (a, b) = pass.as_slices();
            for half in [a, b] {
                if left == 0 {
                    return parts;
                }
                let take = half.len().min(left);
                if take > 0 {
                    parts.push(&half[..take]);
                    left -= take;
                }
            }
        }
        parts
    }

    /// Removes the first `n` spans (n ≤ len) and hands them to `returned` while it holds fewer
    /// than `SPARE_SPANS`; the rest of those `n` are dropped. Only the hand-over itself (a move
    /// of the boxes' pointers) happens under the lock: the reader never waits for the worker
    /// long, and does not wait at all (`SpanQueue::spare`).
    fn give_back_front(&mut self, n: usize, returned: &ReturnedSpans) {
        // Only this thread adds to the pool: what it reads here is at least what it holds.
        let room = SPARE_SPANS.saturating_sub(returned.available.load(Ordering::Acquire));
        let given = room.min(n);
        self.len -= given;
        let mut left = given;
        while left > 0 {
            let Some(pass) = self.passes.front_mut() else {
                break;
            };
            let take = pass.len().min(left);
            // Each span's resource handle is dropped here, outside the lock.
            self.giving.extend(pass.drain(..take).map(|q| q.span));
            left -= take;
            if pass.is_empty() {
                self.passes.pop_front();
            }
        }
        {
            let mut pool = returned.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.append(&mut self.giving);
            returned.available.store(pool.len(), Ordering::Release);
        }
        self.drop_front(n - given);
    }

    /// Drops the first `n` spans (n ≤ len); the rest stay where they are.
    fn drop_front(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(pass) = self.passes.front_mut() else {
                return;
            };
            if pass.len() <= n {
                n -= pass.len();
                self.passes.pop_front();
            } else {
                pass.drain(..n);
                n = 0;
            }
        }
    }
}

/// One request's round trip (retries included) on its own handle of the transport.
async fn send(
    mut transport: Transport,
    body: bytes::Bytes,
    n: usize,
) -> (usize, Result<(), ExportError>) {
    (n, transport.send(body).await)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What sending a batch of spans needs besides the transport.
struct SpanSender {
    encoder: Encoder,
    /// The request being encoded; handed over as the body, replaced by one of its size.
    request: Vec<u8>,
    counters: ExportCounters,
    log: FailureLog,
}

impl SpanSender {
    /// Encodes a batch as one request body (one `ResourceSpans` per process).
    fn encode(
        &mut self,
        transport: &Transport,
        parts: &[&[Queued]],
    ) -> Result<bytes::Bytes, ExportError> {
        self.encoder.request(parts, &mut self.request);
        // The buffer goes out with the body (no copy); the next request starts at its size.
        let capacity = self.request.capacity();
        transport.body(std::mem::replace(
            &mut self.request,
            Vec::with_capacity(capacity),
        ))
    }

    /// Counts the outcome of a request of `n` spans.
    fn outcome(&mut self, n: usize, result: Result<(), ExportError>) {
        let n = n as u64;
        match result {
            Ok(()) => {
                self.counters.spans_exported.inc_by(n);
                self.log.succeeded();
            }
            Err(e) => {
                self.counters.spans_dropped_export_failed.inc_by(n);
                self.log.failed(&e, n);
            }
        }
    }
}

/// Where a process's metrics come from.
#[derive(Clone, Copy)]
struct MetricSources<'a> {
    /// Its pipeline (resource, process metrics, service graph cells), keyed by pid; also the
    /// flows'.
    pipelines: &'a Pipelines,
    /// Its RED series.
    red: &'a RedStore,
}

impl MetricSources<'_> {
    /// The metrics of every process (its resource, its process metrics, its RED series and
    /// its service graph cells) and the flows', several resources per request (at most
    /// `REQUEST_BYTES` each); a process with nothing to report sends nothing.
    fn requests(&self) -> Vec<Vec<u8>> {
        let now = unix_nanos();
        let (collected, host_flows) = meters::collect(self.pipelines, now);
        let mut requests = Requests::default();
        for c in collected {
            let mut scopes = Vec::with_capacity(2);
            // Process metrics open the scope (`sonde`, no version) the service graph joins.
            if !c.usage.is_empty() {
                scopes.push(usage_metrics::scope(c.usage));
            }
            // A retired pipeline carries its own last series; a live one reads the store's.
            let series = c.retired_red.unwrap_or_else(|| self.red.live(c.key));
            if let Some(scope) = red_metrics::scope_metrics(&series, now) {
                scopes.push(scope);
            }
            graph_metrics::add_scope_metrics(&mut scopes, &c.graph, now);
            if !scopes.is_empty() {
                requests.push(ResourceMetrics {
                    resource: Some(c.resource),
                    scope_metrics: scopes,
                    schema_url: String::new(),
                });
            }
        }
        if let Some((resource, store)) = host_flows
            && let Some(rm) = flows::resource_metrics(&store, &resource, now)
        {
            requests.push(rm);
        }
        requests.finish()
    }
}

/// The encoded size a metrics request grows to before the next one starts: a quarter of the
/// 4 MiB a gRPC server takes by default, so no collector refuses one for its size, while a
/// hundred processes still go out in one request rather than a hundred.
const REQUEST_BYTES: usize = 1 << 20;

/// Resources gathered into requests of at most `REQUEST_BYTES` (one larger resource goes
/// alone).
#[derive(Default)]
struct Requests {
    out: Vec<Vec<u8>>,
    batch: Vec<ResourceMetrics>,
    size: usize,
}

impl Requests {
    fn push(&mut self, rm: ResourceMetrics) {
        // The field's tag and length prefix besides the message.
        let n = rm.encoded_len() + 6;
        if !self.batch.is_empty() && self.size + n > REQUEST_BYTES {
            self.flush();
        }
        self.size += n;
        self.batch.push(rm);
    }

    fn flush(&mut self) {
        let request = ExportMetricsServiceRequest {
            resource_metrics: std::mem::take(&mut self.batch),
        };
        self.out.push(request.encode_to_vec());
        self.size = 0;
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.batch.is_empty() {
            self.flush();
        }
        self.out
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Collects every process's cumulative metrics each `interval` and exports them; once more
/// when stopping.
async fn export_metrics(
    mut transport: Transport,
    sources: MetricSources<'_>,
    interval: Duration,
    stop: &Notify,
    counters: &ExportCounters,
) {
    let mut log = FailureLog::new("metric");
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.notified() => true,
        };
        let started = Instant::now();
        let requests = sources.requests();
        let n = requests.len();
        for request in requests {
            let sent = match transport.body(request) {
                Ok(body) => transport.send(body).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    counters.metric_exports.inc();
                    log.succeeded();
                }
                Err(e) => {
                    counters.metric_exports_failed.inc();
                    log.failed(&e, 1);
                }
            }
        }
        debug!(
            requests = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metrics exported"
        );
        if stopping {
            break;
        }
    }
}

/// Export failure logging that cannot flood: the first failure is logged, then at most one
/// summary a minute while failures go on, and the recovery once.
struct FailureLog {
    signal: &'static str,
    failing: bool,
    last_warning: Option<Instant>,
    /// Items dropped since the last warning.
    dropped_since: u64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn new(signal: &'static str) -> FailureLog {
        FailureLog {
            signal,
            failing: false,
            last_warning: None,
            dropped_since: 0,
        }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display, dropped: u64) {
        self.dropped_since += dropped;
        let due = self.last_warning.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if !self.failing || due {
            warn!(
                signal = self.signal,
                %error,
                dropped = self.dropped_since,
                "OTLP export failing; what cannot be sent is dropped and counted (reported again in a minute while it goes on)"
            );
            self.last_warning = Some(Instant::now());
            self.dropped_since = 0;
        }
        self.failing = true;
    }

    fn succeeded(&mut self) {
        if self.failing {
            info!(signal = self.signal, "OTLP export working again");
            self.failing = false;
            self.dropped_since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message as _;

    use super::*;
    use crate::{
        otlp::{
            convert::{self, ProcessResource},
            meters::Meters,
        },
        red_store::{Instrument, Series},
    };

    fn process(pid: u32) -> ProcessResource {
        ProcessResource {
            pid,
            service_name: format!("svc{pid}"),
            service_namespace: None,
            exe_path: "/usr/bin/x".into(),
            k8s: None,
        }
    }

    /// The request counts of every RED data point of each request, by service name.
    fn counts(requests: &[Vec<u8>]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for r in requests {
            let req = ExportMetricsServiceRequest::decode(r.as_slice()).expect("decodes");
            for rm in &req.resource_metrics {
                let service = rm
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                    if let Some(Data::Histogram(h)) = &m.data {
                        for p in &h.data_points {
                            out.push((service.clone(), p.count));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_departed_process_is_exported_once_more_under_its_resource_then_not_again() {
        let pipelines = Pipelines::default();
        let red = RedStore::default();
        let mut meters = Meters::new(Arc::clone(&pipelines));
        for pid in [1, 2] {
            meters.add(pid, &process(pid), &convert::resource(&process(pid), "h"));
            let attrs = meters.attributes(&Span {
                pid,
                ..Span::fixture()
            });
            let series = red
                .add(Series::new(pid, Instrument::HttpServer, None, attrs, 1))
                .expect("room");
            for _ in 0..pid * 3 {
                series.record(&Span::fixture());
            }
        }
        let sources = MetricSources {
            pipelines: &pipelines,
            red: &red,
        };
        let mut first = counts(&sources.requests());
        first.sort();
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[0].0.contains("svc1") && first[0].1 == 3, "{first:?}");
        assert!(first[1].0.contains("svc2") && first[1].1 == 6, "{first:?}");
        // Process 1 leaves: its RED series go with its meters, as the sink hands them over.
        meters.forget(1, red.forget(1));
        let second = counts(&sources.requests());
        assert_eq!(second.len(), 2, "its last export: {second:?}");
        let third = counts(&sources.requests());
        assert_eq!(third.len(), 1, "{third:?}");
        assert!(third[0].0.contains("svc2") && third[0].1 == 6, "{third:?}");
        assert_eq!(red.len(), 1, "only process 2's series is kept");
    }

    /// A process whose resource changes (its pod became known) is retired and added again
    /// under the same pid before the next collection: the old series go out once under the
    /// old resource, the new ones under the new, never both under one.
    #[test]
    fn a_resource_change_keeps_old_and_new_series_apart() {
        let pipelines = Pipelines::default();
        let red = RedStore::default();
        let mut meters = Meters::new(Arc::clone(&pipelines));
        let record = |meters: &Meters, n: u32| {
            let attrs = meters.attributes(&Span::fixture());
            let series = red
                .add(Series::new(
                    Span::fixture().pid,
                    Instrument::HttpServer,
                    None,
                    attrs,
                    1,
                ))
                .expect("room");
            for _ in 0..n {
                series.record(&Span::fixture());
            }
        };
        let pid = Span::fixture().pid;
        meters.add(pid, &process(1), &convert::resource(&process(1), "h"));
        record(&meters, 4);
        meters.forget(pid, red.forget(pid));
        // Renamed (a pod name arrived): same pid, another service name.
        meters.add(pid, &process(9), &convert::resource(&process(9), "h"));
        record(&meters, 2);
        let sources = MetricSources {
            pipelines: &pipelines,
            red: &red,
        };
        let mut got = counts(&sources.requests());
        got.sort();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].0.contains("svc1") && got[0].1 == 4, "{got:?}");
        assert!(got[1].0.contains("svc9") && got[1].1 == 2, "{got:?}");
        let next = counts(&sources.requests());
        assert_eq!(next.len(), 1, "the old resource is gone: {next:?}");
        assert!(next[0].0.contains("svc9") && next[0].1 == 2, "{next:?}");
    }

    /// A process with a process-metrics series and RED series: its resource carries process
    /// metrics first, in the versionless `sonde` scope, RED in the versioned one; once its
    /// process left (the series ended), only RED; the flows go under the host's resource, in
    /// the same request.
    #[test]
    fn process_metrics_go_with_the_process_and_flows_under_the_host() {
        use prometheus_client::registry::Registry;
        use sonde_schema::control::ProcessUsage;

        use crate::process_metrics::{ProcessLabels, ProcessMetrics};

        let pipelines = Pipelines::default();
        let red = RedStore::default();
        let mut meters = Meters::new(Arc::clone(&pipelines));
        meters.add(3, &process(3), &convert::resource(&process(3), "h"));
        let attrs = meters.attributes(&Span {
            pid: 3,
            ..Span::fixture()
        });
        let series = red
            .add(Series::new(3, Instrument::HttpServer, None, attrs, 1))
            .expect("room");
        series.record(&Span::fixture());
        let usage = ProcessMetrics::register(&mut Registry::default());
        let reading = ProcessUsage {
            pid: 3,
            parent_pid: 1,
            uid: 0,
            cpu_user_ns: 1_000_000_000,
            cpu_system_ns: 0,
            memory_rss: 1,
            memory_virtual: 2,
            disk_read_bytes: 3,
            disk_write_bytes: 4,
            net_receive_bytes: 5,
            net_transmit_bytes: 6,
            sampled_at_ns: 1,
        };
        let labels = ProcessLabels {
            service_name: "svc3".into(),
            service_namespace: String::new(),
            process_pid: 3,
            process_parent_pid: 1,
            process_command: "x".into(),
            process_owner: "0".into(),
            k8s: crate::kube::K8sLabels::default(),
        };
        let obs = usage.observe(&reading);
        meters.export_usage(3, &usage.record(&reading, &obs, labels));
        let metrics = crate::metrics::Metrics::new("h");
        let file = sonde_config::FileText {
            path: "t.yaml".into(),
            text: "prometheus_export:\n  port: 9999\n".into(),
        };
        let config =
            crate::config::Config::from_sources(Some(&file), &Default::default()).expect("config");
        let flow = sonde_schema::control::FlowCount {
            src: std::net::Ipv6Addr::LOCALHOST,
            dst: std::net::Ipv6Addr::LOCALHOST,
            src_port: 1,
            dst_port: 2,
            transport: 6,
            direction: sonde_schema::control::FlowDirection::Egress,
            ifindex: 1,
            iface: "eth0".into(),
            bytes: 60,
            packets: 1,
        };
        crate::flows::apply(&[flow], &config, &metrics, None, None);
        meters.export_flows(&metrics.flows.store(), || flows::resource("h"));
        let sources = MetricSources {
            pipelines: &pipelines,
            red: &red,
        };
        let decode = |r: &Vec<u8>| {
            ExportMetricsServiceRequest::decode(r.as_slice())
                .expect("decodes")
                .resource_metrics
                .remove(0)
        };
        let scopes = |rm: &ResourceMetrics| -> Vec<(String, String, Vec<String>)> {
            rm.scope_metrics
                .iter()
                .map(|s| {
                    let sc = s.scope.clone().unwrap_or_default();
                    let names = s.metrics.iter().map(|m| m.name.clone()).collect();
                    (sc.name, sc.version, names)
                })
                .collect()
        };
        let requests = sources.requests();
        assert_eq!(requests.len(), 1, "one request for both resources");
        let mut both = ExportMetricsServiceRequest::decode(requests[0].as_slice())
            .expect("decodes")
            .resource_metrics;
        assert_eq!(both.len(), 2);
        let host = both.remove(1);
        let got = scopes(&both[0]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("sonde", ""));
        assert_eq!(
            got[0].2.len(),
            5,
            "no utilization after one reading: {got:?}"
        );
        assert_eq!(got[1].2[0], "http.server.request.duration");
        assert!(format!("{:?}", host.resource).contains("sonde-network-flows"));
        assert_eq!(
            scopes(&host)[0].2,
            ["beyla.network.flow.bytes", "beyla.network.flow.packets"]
        );
        // The process left: its series ended, RED still goes until its pipeline is retired.
        usage.remove(3);
        let after = sources.requests();
        assert_eq!(after.len(), 1);
        let got = scopes(&decode(&after[0]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].2, ["http.server.request.duration"]);
    }

    /// Resources share requests up to `REQUEST_BYTES`; none is lost or split.
    #[test]
    fn requests_gather_resources_up_to_their_size() {
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let rm = |text_len: usize| ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![super::usage_metrics::string("x", &"a".repeat(text_len))],
                ..Resource::default()
            }),
            ..ResourceMetrics::default()
        };
        let mut small = Requests::default();
        for _ in 0..100 {
            small.push(rm(100));
        }
        let out = small.finish();
        assert_eq!(out.len(), 1);
        let decoded = ExportMetricsServiceRequest::decode(out[0].as_slice()).expect("decodes");
        assert_eq!(decoded.resource_metrics.len(), 100);
        let mut large = Requests::default();
        for n in [600_000, 600_000, 300_000, 2_000_000, 10] {
            large.push(rm(n));
        }
        let sizes: Vec<usize> = large
            .finish()
            .iter()
            .map(|r| {
                let d = ExportMetricsServiceRequest::decode(r.as_slice()).expect("decodes");
                assert!(r.len() <= REQUEST_BYTES || d.resource_metrics.len() == 1);
                d.resource_metrics.len()
            })
            .collect();
        assert_eq!(sizes, [1, 2, 1, 1]);
        assert!(Requests::default().finish().is_empty());
    }

    /// A reader's pass of `n` queued spans, thread ids `first`, `first + 1`, ….
    fn queued_pass(first: u32, n: u32) -> Vec<Queued> {
        (first..first + n)
            .map(|tid| Queued {
                resource: None,
                span: Box::new(Span {
                    tid,
                    ..Span::fixture()
                }),
            })
            .collect()
    }

    /// Encoded spans go back to the reader in order up to `SPARE_SPANS` waiting there; the
    /// rest are dropped, and what stays waiting is untouched.
    #[test]
    fn encoded_spans_go_back_to_the_reader_up_to_the_pool_size() {
        let returned = ReturnedSpans::default();
        let mut w = Waiting::default();
        w.push(queued_pass(0, 3));
        w.push(queued_pass(3, 4));
        w.give_back_front(5, &returned);
        let tids = |r: &ReturnedSpans| -> Vec<u32> {
            r.pool.lock().unwrap().iter().map(|s| s.tid).collect()
        };
        assert_eq!(tids(&returned), [0, 1, 2, 3, 4]);
        assert_eq!(returned.available.load(Ordering::Relaxed), 5);
        assert_eq!(w.len(), 2);
        assert_eq!(
            w.front(2)
                .iter()
                .flat_map(|p| p.iter().map(|q| q.span.tid))
                .collect::<Vec<_>>(),
            [5, 6]
        );
        // A pool one short of full takes one more; the other is dropped.
        {
            let mut pool = returned.pool.lock().unwrap();
            pool.clear();
            pool.extend((0..SPARE_SPANS - 1).map(|_| Box::new(Span::fixture())));
            returned.available.store(pool.len(), Ordering::Relaxed);
        }
        w.give_back_front(2, &returned);
        assert!(w.is_empty());
        assert_eq!(returned.available.load(Ordering::Relaxed), SPARE_SPANS);
        let pool = returned.pool.into_inner().unwrap();
        assert_eq!(pool.len(), SPARE_SPANS);
        assert_eq!(pool.last().map(|s| s.tid), Some(5));
    }

    fn span_queue(
        tx: mpsc::UnboundedSender<Vec<Queued>>,
        returned: Arc<ReturnedSpans>,
        capacity: usize,
    ) -> SpanQueue {
        SpanQueue {
            tx,
            returned,
            spares: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            handoff_spans: HANDOFF_SPANS,
            handoff_wait: HANDOFF_WAIT,
            queued: Arc::new(AtomicUsize::new(0)),
            capacity,
            counters: ExportCounters::default(),
        }
    }

    fn pushed(queue: &mut SpanQueue, n: u32) {
        for tid in 0..n {
            let span = Box::new(Span {
                tid,
                ..Span::fixture()
            });
            queue.push(span, None);
        }
    }

    /// The reader wakes the worker once per `HANDOFF_SPANS` spans, or once the first pending
    /// span has waited `HANDOFF_WAIT`, not on every pass; closing hands over the rest, and the
    /// queue's bound counts spans not yet handed over.
    #[test]
    fn spans_go_to_the_worker_by_the_few_hundred_or_after_a_short_wait() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queue = span_queue(tx, Arc::default(), HANDOFF_SPANS * 4);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);

        pushed(&mut queue, 10);
        queue.flush(at(0));
        queue.flush(at(1));
        assert!(rx.try_recv().is_err(), "ten spans wait for more");
        queue.flush(at(19));
        assert!(rx.try_recv().is_err(), "within the wait");
        queue.flush(at(20));
        let pass = rx
            .try_recv()
            .expect("handed over once the first waited 20 ms");
        assert_eq!(
            pass.iter().map(|q| q.span.tid).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );

        // The wait starts again with the next span, not with the last hand-over.
        pushed(&mut queue, 1);
        queue.flush(at(35));
        assert!(rx.try_recv().is_err());
        queue.flush(at(54));
        assert!(rx.try_recv().is_err());
        queue.flush(at(55));
        assert_eq!(rx.try_recv().map(|p| p.len()).ok(), Some(1));

        pushed(&mut queue, HANDOFF_SPANS as u32 - 1);
        queue.flush(at(56));
        assert!(rx.try_recv().is_err());
        pushed(&mut queue, 1);
        queue.flush(at(56));
        assert_eq!(rx.try_recv().map(|p| p.len()).ok(), Some(HANDOFF_SPANS));
        assert_eq!(queue.queued.load(Ordering::Relaxed), 10 + 1 + HANDOFF_SPANS);

        // Pending spans count against the bound before they are handed over.
        pushed(&mut queue, (HANDOFF_SPANS * 4) as u32);
        assert_eq!(
            queue.pending.len(),
            HANDOFF_SPANS * 4 - (10 + 1 + HANDOFF_SPANS)
        );
        assert_eq!(
            queue.counters.spans_dropped_queue_full.get(),
            (10 + 1 + HANDOFF_SPANS) as u64
        );

        queue.pending.truncate(3);
        queue.close();
        assert_eq!(
            rx.try_recv().map(|p| p.len()).ok(),
            Some(3),
            "closing hands over the rest"
        );
    }

    /// The reader takes the whole pool at once, and never waits for it: while the worker holds
    /// the lock it gets no spare (and allocates) instead.
    #[test]
    fn the_reader_takes_spares_without_waiting_for_the_worker() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let returned = Arc::new(ReturnedSpans::default());
        let mut queue = span_queue(tx, Arc::clone(&returned), 16);
        assert!(queue.spare().is_none(), "nothing handed back yet");
        let mut w = Waiting::default();
        w.push(queued_pass(0, 2));
        w.give_back_front(2, &returned);
        {
            let _worker_holds_it = returned.pool.lock().unwrap();
            assert!(queue.spare().is_none(), "the reader does not wait");
        }
        let tids: Vec<u32> = std::iter::from_fn(|| queue.spare())
            .map(|s| s.tid)
            .collect();
        assert_eq!(tids, [1, 0]);
        assert_eq!(returned.available.load(Ordering::Relaxed), 0);
        assert!(returned.pool.lock().unwrap().is_empty());
    }

    /// Spans waiting over several passes are handed out in arrival order across passes and
    /// dropped from the front only.
    #[test]
    fn waiting_spans_go_out_in_order_across_passes() {
        let tids = |parts: &[&[Queued]]| -> Vec<u32> {
            parts
                .iter()
                .flat_map(|p| p.iter().map(|q| q.span.tid))
                .collect()
        };
        let mut w = Waiting::default();
        w.push(queued_pass(0, 3));
        w.push(Vec::new());
        w.push(queued_pass(3, 4));
        assert_eq!(w.len(), 7);
        assert_eq!(tids(&w.front(5)), [0, 1, 2, 3, 4]);
        w.drop_front(2);
        assert_eq!(tids(&w.front(5)), [2, 3, 4, 5, 6]);
        w.drop_front(2);
        w.push(queued_pass(7, 2));
        assert_eq!(tids(&w.front(w.len())), [4, 5, 6, 7, 8]);
        w.drop_front(5);
        assert!(w.is_empty());
        assert!(w.front(0).is_empty());
    }
}
