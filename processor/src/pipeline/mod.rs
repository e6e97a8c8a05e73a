//! The span pipeline: everything between a record read from the ring buffer and a span
//! printed, exported and counted. Records are decoded and paired into exchanges (`exchange`),
//! completed exchanges become spans in the [`SpanSink`], and the loader's updates keep the
//! [`ProcessTable`] the spans are named from. The run loop in `main` feeds a [`Pipeline`] once
//! per pass and shuts it down; the pipeline never touches the control socket or the ring
//! buffer itself.

mod linker;
mod processes;
mod sink;

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use sonde_schema::{DecodeError, EVENT_CONN_CLOSED, EVENT_HTTP, HttpEvent, Record};
use tracing::{debug, info, warn};

pub use linker::LinkStats;
pub use processes::{ProcessTable, REMOVED_GRACE};
pub use sink::SpanSink;

use crate::{
    control::Update,
    metrics::Metrics,
    protocols::{
        http1::exchange::{self, Assembler},
        streams::{self, StreamTable},
    },
    stats::Stats,
};

/// The pipeline's state for one run of the processor.
pub struct Pipeline<'a, W: Write> {
    assembler: Assembler,
    streams: StreamTable,
    sink: SpanSink<'a, W>,
    processes: ProcessTable,
    stats: Stats,
    metrics: Arc<Metrics>,
    /// `assembler.completed_early` when it was last added to the metrics.
    early_seen: u64,
    stats_every: Duration,
    last_stats: Instant,
    /// `Stats::lost` at the last report.
    last_lost: u64,
    /// Kubernetes metadata, when on; and its generation when processes were last looked up.
    kube: Option<Arc<crate::kube::Store>>,
    kube_seen: u64,
    /// The loader's candidates (selectors with `k8s_*` fields), and the selection and
    /// narrowing requests to send it (`take_requests`).
    candidates: crate::kube::select::Candidates,
    requests: Vec<sonde_schema::control::ProcessorMessage>,
}

impl<'a, W: Write> Pipeline<'a, W> {
    /// A pipeline whose spans end in `sink` (and are counted in its metrics).
    pub fn new(sink: SpanSink<'a, W>) -> Self {
        Pipeline {
            assembler: Assembler::new(exchange::DEFAULT_HOLD, exchange::DEFAULT_MAX_HELD),
            streams: StreamTable::new(streams::DEFAULT_MAX_CONNS, streams::DEFAULT_IDLE),
            stats_every: Duration::from_secs(u64::from(sink.config.shared.stats_interval_secs)),
            metrics: Arc::clone(&sink.metrics),
            sink,
            processes: ProcessTable::default(),
            stats: Stats::default(),
            early_seen: 0,
            last_stats: Instant::now(),
            last_lost: 0,
            kube: None,
            kube_seen: 0,
            candidates: Default::default(),
            requests: Vec::new(),
        }
    }

    /// Decorates processes with the Kubernetes metadata `store` holds (`crate::kube`).
    pub fn with_kube(mut self, store: Arc<crate::kube::Store>) -> Self {
        self.kube = Some(store);
        self
    }

    /// Looks `pid`'s container up in the Kubernetes store; when its metadata changed (its pod
    /// arrived, was renamed, its owners became known), what was built from the old one (OTLP
    /// resource and meters, RED series shortcuts) is dropped, to be built again at its next
    /// span, and its `target_info` is updated.
    fn refresh_k8s(&mut self, pid: u32) {
        let meta = self
            .kube
            .as_ref()
            .and_then(|k| k.lookup(self.processes.container_id(pid)));
        if self.processes.set_k8s(pid, meta) {
            self.sink.forget(pid);
            self.set_target(pid);
        }
    }

    /// Evaluates candidates (`pids`, or all) against the Kubernetes store and queues the
    /// resulting selection and narrowing requests.
    fn evaluate_candidates(&mut self, pids: Option<&[u32]>) {
        use sonde_schema::control::{MAX_NARROW_PIDS, ProcessorMessage};
        let Some(store) = &self.kube else { return };
        let r = self.candidates.evaluate(pids, |id| store.lookup(id));
        for chunk in r.select.chunks(MAX_NARROW_PIDS) {
            self.requests.push(ProcessorMessage::Select(chunk.to_vec()));
        }
        for chunk in r.narrow.chunks(MAX_NARROW_PIDS) {
            self.requests.push(ProcessorMessage::Narrow(chunk.to_vec()));
        }
    }

    /// The selection and narrowing requests to send the loader, oldest first.
    pub fn take_requests(&mut self) -> Vec<sonde_schema::control::ProcessorMessage> {
        use sonde_schema::control::{MAX_NARROW_PIDS, ProcessorMessage};
        let own = self.sink.take_own_telemetry();
        if !own.is_empty() {
            let exclude = self.sink.config.shared.exclude_otel_instrumented_services;
            for &pid in &own {
                if exclude {
                    info!(
                        pid,
                        "process exports its own OpenTelemetry telemetry: no longer instrumented (discovery.exclude_otel_instrumented_services)"
                    );
                } else {
                    info!(
                        pid,
                        "process exports its own OpenTelemetry telemetry: its OTLP calls are not made spans"
                    );
                }
            }
            if exclude {
                for chunk in own.chunks(MAX_NARROW_PIDS) {
                    self.requests.push(ProcessorMessage::Narrow(chunk.to_vec()));
                }
            }
        }
        std::mem::take(&mut self.requests)
    }

    /// The `target_info` series of `pid` from its current service and metadata.
    fn set_target(&self, pid: u32) {
        let k8s = crate::kube::K8sLabels(self.processes.k8s(pid).cloned());
        let service = self.processes.service(pid);
        self.metrics.set_target(
            pid,
            service.map(|s| (s.name.as_str(), s.namespace.as_deref(), &k8s)),
        );
    }

    /// Applies one update from the loader. The caller applies updates before draining the
    /// ring buffer: the metadata of a process always precedes its first event.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Added(p) => {
                info!(
                    pid = p.pid,
                    service = p.service_name,
                    exe = p.exe_path,
                    reason = p.reason,
                    "process added"
                );
                let pid = p.pid;
                self.processes.add(p);
                self.refresh_k8s(pid);
                self.set_target(pid);
            }
            Update::Removed(pid) => {
                info!(pid, "process removed");
                // Process metrics: its series go now (not after the grace period).
                self.metrics.process.remove(pid);
                if let Some(o) = self.sink.otlp_metrics() {
                    o.end_usage(pid);
                }
                self.processes.remove(pid, Instant::now());
                self.candidates.uncaptured(pid);
            }
            Update::Candidate(c) => {
                debug!(
                    pid = c.process.pid,
                    container_id = c.process.container_id,
                    selectors = c.selectors.len(),
                    "candidate announced"
                );
                let pid = c.process.pid;
                self.candidates.add(&c, self.kube.is_some());
                self.evaluate_candidates(Some(&[pid]));
            }
            Update::CandidateRemoved(pid) => self.candidates.remove(pid),
            Update::KernelStats(counters) => {
                self.stats.kernel = counters.into_iter().collect();
                let lost = self
                    .stats
                    .kernel
                    .get("events_lost_ringbuf_full")
                    .copied()
                    .unwrap_or(0);
                self.metrics.kernel_events_lost.set(lost as i64);
            }
            Update::FlowCounts(flows) => crate::flows::apply(
                &flows,
                self.sink.config,
                &self.metrics,
                self.kube.as_deref(),
                self.sink.otlp_metrics(),
            ),
            Update::ProcessUsage(usage) => crate::process_metrics::apply(
                &usage,
                &self.processes,
                self.sink.config,
                &self.metrics,
                self.sink.otlp_metrics(),
            ),
        }
    }

    /// Decodes one ring buffer record (read at `now`) and feeds it to the assembler, which
    /// emits the exchanges it completes.
    pub fn record(&mut self, bytes: &[u8], now: Instant) {
        self.stats.events += 1;
        self.metrics.events.inc();
        // Most records are HTTP/1 events: checked in place and copied once, by the assembler,
        // into their connection's slot (decoding first made a zeroed copy to copy again).
        if bytes.first() == Some(&EVENT_HTTP) {
            match HttpEvent::check(bytes) {
                Ok(event) => {
                    let (sink, processes, stats) =
                        (&mut self.sink, &self.processes, &mut self.stats);
                    self.assembler
                        .feed_http(event, now, |ev| sink.emit(ev, processes, stats));
                }
                Err(e) => self.undecodable(e),
            }
            return;
        }
        let record = match Record::decode(bytes) {
            Ok(record) => record,
            Err(e) => return self.undecodable(e),
        };
        let (sink, processes, stats) = (&mut self.sink, &self.processes, &mut self.stats);
        match record {
            Record::Chunk(header, payload) => {
                self.streams.feed(&header, payload, now, |meta, ex| {
                    sink.emit_stream(meta, ex, processes, stats)
                })
            }
            Record::Thread(n) => sink.thread_notice(&n),
            Record::Tuple(t) => {
                self.streams.apply_tuple(&t);
                self.assembler
                    .feed(record, now, |ev| sink.emit(ev, processes, stats));
            }
            Record::Update(u)
                if u.kind == EVENT_CONN_CLOSED
                    && self.streams.close(u.conn_id, u.end_ns, |meta, ex| {
                        sink.emit_stream(meta, ex, processes, stats)
                    }) => {}
            record => self
                .assembler
                .feed(record, now, |ev| sink.emit(ev, processes, stats)),
        }
    }

    fn undecodable(&mut self, e: DecodeError) {
        self.stats.decode_errors += 1;
        warn!(error = %e, "undecodable ring buffer record");
    }

    /// Ends a pass begun at `now`, once the ring buffer is drained: completes exchanges held
    /// too long, updates counters and gauges (`ring_corrupt`: the ring reader's count), flushes
    /// the outputs, forgets processes past their grace period and logs the stats when due.
    pub fn end_pass(&mut self, now: Instant, ring_corrupt: u64) {
        let (sink, processes, stats) = (&mut self.sink, &self.processes, &mut self.stats);
        self.assembler
            .expire(now, |ev| sink.emit(ev, processes, stats));
        self.streams
            .expire(now, |meta, ex| sink.emit_stream(meta, ex, processes, stats));
        self.stats.late_updates = self.assembler.late_updates;
        self.stats.completed_early = self.assembler.completed_early;
        self.metrics
            .spans_dropped
            .inc_by(self.assembler.completed_early - self.early_seen);
        self.early_seen = self.assembler.completed_early;
        self.metrics
            .instrumented_processes
            .set(self.processes.instrumented() as i64);
        self.stats.ring_corrupt = ring_corrupt;
        // Linking: client spans held for their server span go out when due.
        self.sink.link_expire(now, &self.processes, &mut self.stats);
        self.sink.flush(now, &mut self.stats);
        for pid in self.processes.expire(Instant::now()) {
            self.sink.forget(pid);
            self.metrics.set_target(pid, None);
        }
        // Kubernetes metadata changed since the last look: the processes in containers are
        // looked up again (one atomic load per pass otherwise).
        if let Some(generation) = self.kube.as_ref().map(|k| k.generation())
            && generation != self.kube_seen
        {
            self.kube_seen = generation;
            let pids: Vec<u32> = self.processes.in_containers().map(|(pid, _)| pid).collect();
            for pid in pids {
                self.refresh_k8s(pid);
            }
            if !self.candidates.is_empty() {
                self.evaluate_candidates(None);
            }
        }
        if self.last_stats.elapsed() >= self.stats_every {
            count_otlp(&self.metrics, &mut self.stats);
            self.stats.streams = self.streams.stats();
            // Quiet unless something was lost since the last report: then it is a warning.
            // The JSON is written only when the log line is (not at all below debug).
            let lost = self.stats.lost();
            if lost > self.last_lost {
                warn!(stats = %self.stats.json(), "processor stats: data was lost");
            } else {
                debug!(stats = %self.stats.json(), "processor stats");
            }
            self.last_lost = lost;
            self.last_stats = Instant::now();
        }
    }

    /// Completes every exchange still held, writes out and exports what is left, and returns
    /// the final counters.
    pub fn finish(mut self) -> Stats {
        let (sink, processes, stats) = (&mut self.sink, &self.processes, &mut self.stats);
        self.assembler.finish(|ev| sink.emit(ev, processes, stats));
        self.streams
            .finish(|meta, ex| sink.emit_stream(meta, ex, processes, stats));
        // Linking: what is still held goes out.
        sink.link_finish(processes, stats);
        self.sink.shut_down();
        count_otlp(&self.metrics, &mut self.stats);
        self.stats.streams = self.streams.stats();
        self.stats
    }
}

/// Copies the OTLP export counters into the stats.
fn count_otlp(metrics: &Metrics, stats: &mut Stats) {
    let otlp = &metrics.otlp;
    stats.otlp_spans_exported = otlp.spans_exported.get();
    stats.otlp_spans_dropped =
        otlp.spans_dropped_queue_full.get() + otlp.spans_dropped_export_failed.get();
}

/// The offset from `CLOCK_MONOTONIC` (the kernel's `bpf_ktime_get_ns`, which event times are
/// in) to Unix time, in ns.
pub fn mono_to_unix() -> nix::Result<i128> {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
    let as_ns =
        |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    Ok(as_ns(real) - as_ns(mono))
}
