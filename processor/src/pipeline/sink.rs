//! Where completed exchanges go: span building, route decoration, RED metrics, sampling, the
//! printer and OTLP export, with the state they keep between spans. One call per exchange
//! ([`SpanSink::emit`]); everything here runs on the reader thread and never waits on the
//! network.

use std::{borrow::Cow, io::Write, sync::Arc, time::Instant};

use sonde_schema::{HttpEvent, THREAD_ENDED, THREAD_STARTED, ThreadNotice};

use super::{linker::Linker, processes::ProcessTable};
use crate::{
    config::{Config, Sampler, TracePrinter},
    metrics::Metrics,
    otlp::Otlp,
    printer::Printer,
    protocols::{
        db_spans,
        http1::{self, Built},
        http2_spans::{self, NoSpan},
        messaging_spans,
        streams::{ConnMeta, StreamExchange},
    },
    red::RedRecorder,
    routes::Router,
    sampling,
    span::{ServiceInfo, Span, SpanKind, SpanUse},
    stats::Stats,
};

/// The span end of the pipeline and the state it keeps between spans.
pub struct SpanSink<'a, W: Write> {
    pub(super) config: &'a Config,
    router: Router,
    pub(super) metrics: Arc<Metrics>,
    printer: Printer<W>,
    ids: rand::rngs::SmallRng,
    /// Added to a `CLOCK_MONOTONIC` time in ns (the kernel's) gives Unix time in ns.
    mono_to_unix: i128,
    otlp: Option<Otlp>,
    red: RedRecorder,
    /// Processes seen exporting their own OpenTelemetry telemetry (bounded by the processes
    /// the loader captures; forgotten with them).
    own_telemetry_pids: Vec<u32>,
    /// Those not yet handed to the pipeline (`take_own_telemetry`).
    own_telemetry_new: Vec<u32>,
    /// Parent and child inside one process: client spans of serving processes wait there for
    /// the server span they were made in.
    linker: Linker,
    /// Service graph metrics (`application_service_graph`), when on and served.
    graph: Option<crate::service_graph::ServiceGraph>,
    /// Whether anything takes finished spans (the printer, an OTLP traces export). Without
    /// one (the metrics-only deployment), a span ends once its metrics are recorded: no
    /// sampling decision, linking or export step runs for it.
    spans_taken: bool,
    /// The route buffer of the last span only the metrics read, for the next one's route
    /// (`Router::route_in`): no allocation per request for it.
    spare_route: String,
    /// The last span that ended here (read by the metrics only, dropped by the sampler, or
    /// printed only), written over by the next HTTP/1 span (`http1::build_for`): its
    /// allocation and its path, service name, name, `Host` and `User-Agent` buffers are reused
    /// instead of freed and allocated again per request.
    spare_span: Option<Box<Span>>,
}

impl<'a, W: Write> SpanSink<'a, W> {
    /// A sink printing to `out` in the configured format and exporting through `otlp`.
    pub fn new(
        config: &'a Config,
        metrics: Arc<Metrics>,
        otlp: Option<Otlp>,
        out: W,
        mono_to_unix: i128,
    ) -> Self {
        let red = RedRecorder::new(metrics.red_store());
        let graph_store = metrics.service_graph.as_ref().map(|f| f.store());
        // Service graph metrics only when something serves them: no pairing otherwise.
        let graph_served = config.prometheus_export.port.is_some()
            || otlp.as_ref().is_some_and(|o| o.exports_metrics());
        let spans_taken = config.trace_printer != TracePrinter::Disabled
            || otlp.as_ref().is_some_and(|o| o.exports_traces());
        SpanSink {
            spans_taken,
            spare_route: String::new(),
            spare_span: None,
            config,
            router: Router::new(&config.routes),
            metrics,
            printer: Printer::new(config.trace_printer, out),
            // Span and trace ids need uniqueness, not secrecy: a fast generator seeded from
            // the OS.
            ids: <rand::rngs::SmallRng as rand::SeedableRng>::from_rng(&mut rand::rng()),
            mono_to_unix,
            otlp,
            red,
            own_telemetry_pids: Vec::new(),
            own_telemetry_new: Vec::new(),
            linker: Linker::new(config.shared.ebpf.max_transaction_time, Instant::now()),
            graph: (graph_served
                && sonde_config::host_metrics::service_graph_enabled(&config.shared))
            .then(|| {
                let allow = (
                    config.prometheus_export.allow_service_graph_self_references,
                    config.metrics_export.allow_service_graph_self_references,
                );
                crate::service_graph::ServiceGraph::new(
                    allow,
                    Instant::now(),
                    graph_store.unwrap_or_default(),
                )
            }),
        }
    }

    /// The service (name, namespace) a process's spans belong to: what the name ladder gave
    /// the process when the loader announced it (`sonde_config::naming`; the configuration's
    /// `service_name` is the top-level selector's name there).
    fn service<'p>(
        _config: &'p Config,
        pid: u32,
        processes: &'p ProcessTable,
        stats: &mut Stats,
    ) -> (Cow<'p, str>, Option<&'p str>) {
        // Borrowed on the hot path: no allocation per event for a known process, and one
        // lookup for both.
        match processes.service(pid) {
            Some(s) => (Cow::Borrowed(&s.name), s.namespace.as_deref()),
            None => (processes.service_name(pid, stats), None),
        }
    }

    /// How the spans behind `sampler` are built. Lean, then completed when kept
    /// (`SpanUse::Sampled`), costs a second read of the request head for each kept span and
    /// saves the name, `Host` and `User-Agent` of each dropped one (about twice that): worth it
    /// when the sampler drops at least half. A parent-based ratio sampler follows sampled
    /// callers, so behind it a service whose callers mostly sample pays the second read on
    /// most spans (about 300 instructions each); the ratio is all that is known here.
    fn sampled_use(sampler: Sampler) -> SpanUse {
        match sampler {
            Sampler::AlwaysOff => SpanUse::Sampled(sampler),
            Sampler::TraceIdRatio(r) | Sampler::ParentBasedTraceIdRatio(r) if r <= 0.5 => {
                SpanUse::Sampled(sampler)
            }
            _ => SpanUse::Everything,
        }
    }

    /// Builds the span of one completed HTTP/1 exchange and passes it on.
    pub fn emit(&mut self, ev: &HttpEvent, processes: &ProcessTable, stats: &mut Stats) {
        let config = self.config;
        let (name, namespace) = Self::service(config, ev.pid, processes, stats);
        let service = ServiceInfo {
            name: &name,
            namespace,
        };
        let span_use = if self.spans_taken {
            Self::sampled_use(config.sampler)
        } else {
            SpanUse::MetricsOnly
        };
        let spare = self.take_spare();
        match http1::build_for(
            ev,
            &service,
            &config.url_query,
            self.mono_to_unix,
            &mut self.ids,
            span_use,
            spare,
        ) {
            Built::NotHttp => stats.not_http += 1,
            Built::Span(s, invalid) => {
                stats.traceparent_invalid += u64::from(invalid.0);
                self.finish_span(s, processes, stats)
            }
        }
    }

    /// Builds the span of one completed exchange of a stream connection (an HTTP/2 stream, a
    /// database operation) and passes it on.
    pub fn emit_stream(
        &mut self,
        meta: &ConnMeta,
        ex: StreamExchange<'_>,
        processes: &ProcessTable,
        stats: &mut Stats,
    ) {
        let config = self.config;
        let (name, namespace) = Self::service(config, meta.pid, processes, stats);
        let service = ServiceInfo {
            name: &name,
            namespace,
        };
        let ex = match ex {
            StreamExchange::Http2(ex) => ex,
            StreamExchange::Db(ex) => {
                let span = db_spans::build(
                    meta,
                    ex,
                    &service,
                    config.db_query_sanitize,
                    self.mono_to_unix,
                    &mut self.ids,
                );
                stats.db_partial += u64::from(ex.partial);
                self.finish_span(Box::new(span), processes, stats);
                return;
            }
            StreamExchange::Messaging(ex) => {
                // Partial exchanges are counted by the parser (`streams.kafka.partial`).
                let span =
                    messaging_spans::build(meta, ex, &service, self.mono_to_unix, &mut self.ids);
                self.finish_span(Box::new(span), processes, stats);
                return;
            }
        };
        match http2_spans::build(
            meta,
            ex,
            &service,
            &config.url_query,
            self.mono_to_unix,
            &mut self.ids,
        ) {
            Ok((s, invalid)) => {
                stats.traceparent_invalid += u64::from(invalid.0);
                self.finish_span(Box::new(s), processes, stats)
            }
            Err(NoSpan::HeadersUnknown) => stats.h2_headers_unknown += 1,
        }
    }

    /// Decorates, counts, samples, prints and exports a built span, whatever its protocol.
    fn finish_span(&mut self, mut s: Box<Span>, processes: &ProcessTable, stats: &mut Stats) {
        let config = self.config;
        // The application's own OTLP export calls are its SDK's, never a span of Sonde's.
        if crate::own_telemetry::is_otlp_export(&s) {
            stats.own_telemetry_exports += 1;
            if !self.own_telemetry_pids.contains(&s.pid) {
                self.own_telemetry_pids.push(s.pid);
                self.own_telemetry_new.push(s.pid);
            }
            return;
        }
        let mut ignored = None;
        // Routes are HTTP's: an RPC's method, a database operation or a messaging topic is
        // already low-cardinality.
        if s.malformed.is_none() && s.rpc.is_none() && s.db.is_none() && s.messaging.is_none() {
            let buf = std::mem::take(&mut self.spare_route);
            let routed = self.router.route_in(&s.service_name, &s.path, buf);
            ignored = routed.ignored;
            s.set_route(routed.route);
        }
        // Metrics only when something serves them: no label strings per span otherwise.
        if !ignored.is_some_and(|m| m.drops_metrics()) {
            let prometheus = config.prometheus_export.port.is_some();
            let otlp = self.otlp.as_mut().filter(|o| o.exports_metrics());
            if prometheus || otlp.is_some() {
                let meta = || processes.meta(s.pid, config, &s.service_name);
                self.red.record(&s, prometheus, otlp, &meta);
            }
            if let Some(g) = self.graph.as_mut() {
                let otlp = self.otlp.as_mut().filter(|o| o.exports_metrics());
                let prometheus = self.metrics.service_graph.as_ref();
                let prometheus = prometheus.filter(|_| config.prometheus_export.port.is_some());
                let meta = |pid| processes.meta(pid, config, "");
                g.record(&s, Instant::now(), prometheus, otlp, &meta);
            }
        }
        if ignored.is_some_and(|m| m.drops_traces()) {
            stats.ignored_routes += 1;
            return;
        }
        stats.spans += 1;
        stats.malformed += u64::from(s.malformed.is_some());
        stats.no_response += u64::from(s.no_response);
        if !self.spans_taken {
            self.keep_spare(s);
            return;
        }
        // Linking (`linker`): a client span of a serving process may wait for its server span.
        let s = match s.kind {
            SpanKind::Server => {
                let keep = sampling::keeps(config.sampler, &s.trace_id.0, s.parent_sampled);
                self.linker.server(&s, keep);
                self.export_linked(processes, stats);
                s
            }
            SpanKind::Client => match self.linker.client(s) {
                Some(s) => s,
                None => return,
            },
        };
        self.export(s, processes, stats);
    }

    /// A thread of a selected process started or ended: the linker follows threads the
    /// serving thread starts.
    pub fn thread_notice(&mut self, n: &ThreadNotice) {
        // Only linking needs them, and nothing is linked when no span is taken.
        if !self.spans_taken {
            return;
        }
        let unix = (n.ns as i128 + self.mono_to_unix).clamp(0, u64::MAX as i128) as u64;
        match n.what {
            THREAD_STARTED => self.linker.thread_started(n.pid, n.tid, n.parent_tid, unix),
            THREAD_ENDED => self.linker.thread_ended(n.pid, n.tid, unix),
            _ => {}
        }
    }

    /// Exports the client spans the linker released.
    fn export_linked(&mut self, processes: &ProcessTable, stats: &mut Stats) {
        let mut ready = self.linker.take_ready();
        for s in ready.drain(..) {
            self.export(s, processes, stats);
        }
        self.linker.give_back(ready);
    }

    /// Advances the linker to `now` and exports what it releases.
    pub(super) fn link_expire(
        &mut self,
        now: Instant,
        processes: &ProcessTable,
        stats: &mut Stats,
    ) {
        self.linker.expire(now);
        self.export_linked(processes, stats);
        stats.linking = self.linker.stats();
        self.graph_expire(Some(now), processes);
    }

    /// Releases every span the linker holds (the processor stops).
    pub(super) fn link_finish(&mut self, processes: &ProcessTable, stats: &mut Stats) {
        self.linker.finish();
        self.export_linked(processes, stats);
        stats.linking = self.linker.stats();
        self.graph_expire(None, processes);
    }

    /// Counts the service graph's spans whose wait for their other end is over (all of them
    /// with `None`).
    fn graph_expire(&mut self, now: Option<Instant>, processes: &ProcessTable) {
        let config = self.config;
        if let Some(g) = self.graph.as_mut() {
            let otlp = self.otlp.as_mut().filter(|o| o.exports_metrics());
            let prometheus = self.metrics.service_graph.as_ref();
            let prometheus = prometheus.filter(|_| config.prometheus_export.port.is_some());
            let meta = |pid| processes.meta(pid, config, "");
            g.expire(now, prometheus, otlp, &meta);
        }
    }

    /// A finished span to write the next HTTP/1 span into: the last one that ended here, else
    /// one the exporter thread handed back after encoding it. Its route buffer goes to
    /// `spare_route` when that has none.
    fn take_spare(&mut self) -> Option<Box<Span>> {
        let mut s = self
            .spare_span
            .take()
            .or_else(|| self.otlp.as_mut().and_then(Otlp::spare_span))?;
        if self.spare_route.capacity() == 0
            && let Some(route) = s.route.take()
        {
            self.spare_route = route;
        }
        Some(s)
    }

    /// Keeps a span that ends here (read by the metrics only, dropped by the sampler, or
    /// printed only) for the next span to be written into (`spare_span`), and its route for
    /// the next span's route (`spare_route`).
    fn keep_spare(&mut self, mut s: Box<Span>) {
        if let Some(route) = s.route.take() {
            self.spare_route = route;
        }
        self.spare_span = Some(s);
    }

    /// Samples, prints and exports a finished span.
    fn export(&mut self, s: Box<Span>, processes: &ProcessTable, stats: &mut Stats) {
        let config = self.config;
        if !sampling::keeps(config.sampler, &s.trace_id.0, s.parent_sampled) {
            stats.unsampled += 1;
            self.keep_spare(s);
            return;
        }
        if self.printer.print(&s).is_err() {
            stats.print_errors += 1;
            self.metrics.export_errors.inc();
        }
        match self.otlp.as_mut() {
            Some(o) if o.exports_traces() => {
                o.ensure_process(&|| processes.meta(s.pid, config, &s.service_name), s.pid);
                o.export_span(s);
            }
            // Printed only: it ends here.
            _ => self.keep_spare(s),
        }
    }

    /// Hands queued spans to the exporter thread when due (`Otlp::flush`; `now`: the pass's
    /// time) and writes out printed ones (a failed write is counted in `stats.print_errors`).
    pub fn flush(&mut self, now: Instant, stats: &mut Stats) {
        if let Some(o) = self.otlp.as_mut() {
            o.flush(now);
        }
        if self.printer.flush().is_err() {
            stats.print_errors += 1;
        }
    }

    /// The OTLP side when it exports metrics (process metrics record there).
    pub(super) fn otlp_metrics(&mut self) -> Option<&mut Otlp> {
        self.otlp.as_mut().filter(|o| o.exports_metrics())
    }

    /// Drops what is kept for `pid` (its OTLP resource and meters, its RED series).
    pub fn forget(&mut self, pid: u32) {
        // The RED series go with the process's meters to their last OTLP collection.
        let retired = self.red.forget(pid);
        if let Some(o) = self.otlp.as_mut() {
            o.forget(pid, retired);
        }
        if let Some(g) = self.graph.as_mut() {
            g.forget(pid);
        }
        self.own_telemetry_pids.retain(|&p| p != pid);
    }

    /// Processes newly seen exporting their own OpenTelemetry telemetry.
    pub(super) fn take_own_telemetry(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.own_telemetry_new)
    }

    /// Writes out printed spans and stops OTLP export, sending what is queued.
    pub fn shut_down(mut self) {
        let _ = self.printer.flush();
        if let Some(o) = self.otlp.take() {
            o.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_built_lean_only_behind_samplers_that_drop_most() {
        let sampled_use = SpanSink::<Vec<u8>>::sampled_use;
        for sampler in [
            Sampler::AlwaysOff,
            Sampler::TraceIdRatio(0.1),
            Sampler::ParentBasedTraceIdRatio(0.5),
        ] {
            assert_eq!(
                sampled_use(sampler),
                SpanUse::Sampled(sampler),
                "{sampler:?}"
            );
        }
        // Keeping most, the second read of each kept request head would cost more.
        for sampler in [
            Sampler::AlwaysOn,
            Sampler::ParentBasedAlwaysOn,
            Sampler::TraceIdRatio(0.9),
            Sampler::ParentBasedTraceIdRatio(1.0),
        ] {
            assert_eq!(sampled_use(sampler), SpanUse::Everything, "{sampler:?}");
        }
    }
}
