//! Parent and child inside one process: makes a client span (HTTP, gRPC, SQL, Redis, Kafka …)
//! that a thread made while serving a request the child of that request's server span, when
//! that can be proven from what the kernel reports, and never otherwise.
//!
//! Every span carries the `(pid, tid)` of the thread that read the first request bytes (a
//! server exchange) or wrote them (a client exchange), and the times of the first request byte
//! and the end of the response. A server span reaches the processor only when its exchange
//! completes, after the client exchanges it caused, so client spans of a process that serves
//! are held here until the enclosing server span arrives or it is certain none will.
//!
//! The rule, per thread `(pid, tid)`:
//! - Client spans are held only for processes that sent a server span within the last
//!   `ebpf.max_transaction_time` (others pass through at once, as do spans that already carry
//!   a parent: the application's own `traceparent` wins and is never re-linked).
//! - A held client span lying inside exactly one server span of its thread (`server.start <=
//!   client.start` and `client.end <= server.end`) is tentatively its child. The link is
//!   committed [`SETTLE`] after that server span arrived, unless a server span of the same
//!   thread overlapping it arrives first (the link is then dropped). A thread with overlapping
//!   server spans serves several requests at once (an event loop: Node.js, asyncio, nginx):
//!   it is marked multiplexed, and no new link is made on it until it has been idle for
//!   `ebpf.max_transaction_time` (spans still waiting for an encloser are released unlinked;
//!   tentative links to requests nothing overlaps still settle).
//! - A client span inside two server spans of its thread is ambiguous and stays unlinked.
//! - A held client span with no encloser is released unlinked once a server span of the same
//!   thread that started after the client span ended has been known for [`SETTLE`] (a
//!   thread that serves sequentially would have delivered the encloser first), or after
//!   `ebpf.max_transaction_time`.
//! - At most [`MAX_HELD`] spans are held; beyond that a client span passes through unlinked.
//!
//! - Threads the serving thread starts: the kernel reports every thread a selected process
//!   starts (by which thread, when) and when it ends. A client span of a thread that never
//!   served is the child of a server span of the thread that started it when the child
//!   thread's whole life lies inside that server span: a thread started for the request and
//!   joined before the answer (its exit may follow the answer by up to [`EXIT_GRACE_NS`]).
//!   A thread that outlives the request (a pool, an HTTP client's selector thread started by
//!   the first request) is never linked this way. The starting thread must not be
//!   multiplexed, and overlapping requests on it unlink. The client span itself must lie
//!   inside the request, so work the starting thread hands over later is never attributed
//!   to it; the residual risk is a pool whose idle threads exit within the grace.
//!
//! A linked span takes the server span's trace id, its span id as parent, and its sampling
//! decision (`parent_sampled`), so the sampler keeps or drops the whole trace together.
//! What stays unlinked: calls made on threads that outlive the request they were made for
//! (worker pools, `java.net.http.HttpClient`'s selector thread), calls made on event loops
//! once they are seen serving concurrently, and the client calls of a process's first
//! requests, before it is known to serve.

// Spans stay boxed from their builder to the exporter: no copy of a span on the way.
#![allow(clippy::vec_box)]

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::span::{Span, SpanId, SpanKind, TraceId};

/// How long a tentative link waits for evidence that its thread serves concurrently.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Client spans held at once, over every thread.
pub const MAX_HELD: usize = 32_768;
/// Server spans remembered per thread (for containment and overlap).
const MAX_SERVERS: usize = 8;
/// Minimum time between two sweeps of the held spans.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Started threads remembered at once (their start, parent and end).
const MAX_THREADS: usize = 65_536;
/// How long after its request's end a started thread may still exit and count as having
/// lived inside it: a joined thread's last instructions (Python's `join` returns before the
/// thread's exit) can run after the answer went out. A pool thread idles far longer.
const EXIT_GRACE_NS: u64 = 100_000_000;

/// The linker's counters (in the processor stats as `linking`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LinkStats {
    /// Client spans made children of the server span of their thread.
    pub linked: u64,
    /// Client spans that already had a parent (the application's `traceparent`) or whose ids
    /// Sonde injected into the request (context propagation): left alone.
    pub preparented: u64,
    /// Released unlinked: no server span of their thread enclosed them in time.
    pub unlinked_timeout: u64,
    /// Released unlinked: a later server span of their thread proved none enclosed them.
    pub unlinked_no_encloser: u64,
    /// Released or passed unlinked: their thread serves several requests at once.
    pub unlinked_multiplexed: u64,
    /// Released unlinked: inside two server spans of their thread.
    pub unlinked_ambiguous: u64,
    /// Passed unlinked: the hold queue was full.
    pub unlinked_overflow: u64,
    /// Released unlinked when the processor stopped, no encloser seen.
    pub unlinked_at_exit: u64,
    /// Threads seen serving overlapping requests.
    pub multiplexed_threads: u64,
    /// Of `linked`: client spans of a thread started and ended inside the request.
    pub linked_started_threads: u64,
    /// Thread start notices not remembered: the table of started threads was full.
    pub threads_not_tracked: u64,
    /// Client spans held right now.
    pub held: u64,
}

/// A server span as remembered for its thread.
#[derive(Clone, Copy)]
struct Server {
    start: u64,
    end: u64,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    arrived: Instant,
}

impl Server {
    fn contains(&self, s: &Span) -> bool {
        self.start <= s.start_unix_nano && s.end_unix_nano <= self.end
    }

    fn overlaps(&self, o: &Server) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// A held client span and, once found, the server span it is tentatively the child of.
struct Held {
    span: Box<Span>,
    arrived: Instant,
    parent: Option<Server>,
    /// The parent is a request of the thread that started this span's thread.
    via_started_thread: bool,
}

/// The server spans a client span could be the child of.
enum Enclosers {
    None,
    One(Server),
    Several,
}

/// A thread a selected process started: by which thread, and its life (Unix ns).
#[derive(Clone, Copy)]
struct Started {
    parent_tid: u32,
    start: u64,
    end: Option<u64>,
    noted: Instant,
}

impl Started {
    /// True when the thread started inside `srv` and was gone by its end (give or take
    /// `EXIT_GRACE`).
    fn lived_inside(&self, srv: &Server) -> bool {
        self.end.is_some_and(|end| {
            srv.start <= self.start && end <= srv.end.saturating_add(EXIT_GRACE_NS)
        })
    }
}

#[derive(Default)]
struct Thread {
    /// Oldest first; a ring, since the oldest leaves at every request once it is full.
    servers: VecDeque<Server>,
    /// Held spans with no encloser yet (few: the calls of the requests in flight).
    pending: Vec<Held>,
    /// Held spans tentatively linked, in the order their links were made (oldest first).
    tentative: VecDeque<Held>,
    multiplexed: bool,
    last_seen: Option<Instant>,
}

/// Per-thread state linking client spans to the server spans they were made in.
pub struct Linker {
    max_wait: Duration,
    settle: Duration,
    max_held: usize,
    now: Instant,
    last_sweep: Instant,
    threads: HashMap<(u32, u32), Thread, foldhash::fast::RandomState>,
    /// Processes and when their last server span arrived.
    serving: HashMap<u32, Instant, foldhash::fast::RandomState>,
    held: usize,
    stats: LinkStats,
    /// Spans released, to be exported by the caller (`take_ready`).
    ready: Vec<Box<Span>>,
    /// Threads started by selected processes, by `(pid, tid)`.
    started: HashMap<(u32, u32), Started, foldhash::fast::RandomState>,
    /// The threads each thread started, by `(pid, parent tid)`.
    children: HashMap<(u32, u32), Vec<u32>, foldhash::fast::RandomState>,
}

impl Linker {
    /// A linker holding client spans for at most `max_wait` (zero: linking off).
    pub fn new(max_wait: Duration, now: Instant) -> Self {
        Self::with_limits(max_wait, SETTLE.min(max_wait), MAX_HELD, now)
    }

    fn with_limits(max_wait: Duration, settle: Duration, max_held: usize, now: Instant) -> Self {
        Linker {
            max_wait,
            settle,
            max_held,
            now,
            last_sweep: now,
            threads: HashMap::default(),
            serving: HashMap::default(),
            held: 0,
            stats: LinkStats::default(),
            ready: Vec::new(),
            started: HashMap::default(),
            children: HashMap::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            held: self.held as u64,
            ..self.stats
        }
    }

    fn enabled(&self) -> bool {
        !self.max_wait.is_zero()
    }

    /// Thread `tid` of process `pid` was started by `parent_tid` at `start` (Unix ns). Forks
    /// come here too (a new process's first thread): its spans carry another pid and never
    /// match.
    pub fn thread_started(&mut self, pid: u32, tid: u32, parent_tid: u32, start: u64) {
        if !self.enabled() || tid == parent_tid {
            return;
        }
        if self.started.len() >= MAX_THREADS && !self.started.contains_key(&(pid, tid)) {
            self.stats.threads_not_tracked += 1;
            return;
        }
        let noted = self.now;
        if let Some(old) = self.started.insert(
            (pid, tid),
            Started {
                parent_tid,
                start,
                end: None,
                noted,
            },
        ) {
            // A reused thread id: forget it under its old parent.
            self.forget_child(pid, old.parent_tid, tid);
        }
        self.children
            .entry((pid, parent_tid))
            .or_default()
            .push(tid);
    }

    /// Thread `tid` of process `pid` ended at `end` (Unix ns). Its exit can be reported after
    /// the request it lived in (a joined thread exits after `join` returned): its held spans
    /// are matched against the starting thread's requests again.
    pub fn thread_ended(&mut self, pid: u32, tid: u32, end: u64) {
        let Some(t) = self.started.get_mut(&(pid, tid)) else {
            return;
        };
        t.end = Some(end);
        t.noted = self.now;
        let t = *t;
        let Some(parent) = self.threads.get(&(pid, t.parent_tid)) else {
            return;
        };
        if parent.multiplexed {
            return;
        }
        let mut inside = parent.servers.iter().filter(|srv| t.lived_inside(srv));
        let (Some(srv), None) = (inside.next().copied(), inside.next()) else {
            return;
        };
        if let Some(th) = self.threads.get_mut(&(pid, tid))
            && th.servers.is_empty()
        {
            adopt_contained(th, srv);
        }
    }

    fn forget_child(&mut self, pid: u32, parent_tid: u32, tid: u32) {
        if let Some(v) = self.children.get_mut(&(pid, parent_tid)) {
            v.retain(|&c| c != tid);
            if v.is_empty() {
                self.children.remove(&(pid, parent_tid));
            }
        }
    }

    /// The one server span of the thread that started `(pid, tid)` inside which that thread
    /// lived, when the starting thread is not multiplexed and `s` lies inside it too.
    fn started_encloser(&self, pid: u32, tid: u32, s: &Span) -> Enclosers {
        let Some(t) = self.started.get(&(pid, tid)) else {
            return Enclosers::None;
        };
        let Some(parent) = self.threads.get(&(pid, t.parent_tid)) else {
            return Enclosers::None;
        };
        if parent.multiplexed {
            return Enclosers::None;
        }
        let mut found = Enclosers::None;
        for srv in parent
            .servers
            .iter()
            .filter(|srv| srv.contains(s) && t.lived_inside(srv))
        {
            found = match found {
                Enclosers::None => Enclosers::One(*srv),
                _ => Enclosers::Several,
            };
        }
        found
    }

    /// Takes a client span: returns it when it goes out now (unlinked), or holds it.
    pub fn client(&mut self, s: Box<Span>) -> Option<Box<Span>> {
        debug_assert_eq!(s.kind, SpanKind::Client);
        if !self.enabled() {
            return Some(s);
        }
        // A parent, or ids already sent on the wire (Sonde injected this span's
        // `traceparent`: `parent_sampled` holds the flags it sent): either way the span's
        // trace is settled and is never re-linked.
        if s.parent_span_id.is_some() || s.parent_sampled.is_some() {
            self.stats.preparented += 1;
            return Some(s);
        }
        let now = self.now;
        let serving = self
            .serving
            .get(&s.pid)
            .is_some_and(|&t| now.saturating_duration_since(t) <= self.max_wait);
        if !serving {
            return Some(s);
        }
        let th = self.threads.entry((s.pid, s.tid)).or_default();
        th.last_seen = Some(now);
        if th.multiplexed {
            self.stats.unlinked_multiplexed += 1;
            return Some(s);
        }
        // Its server span may have arrived already (exchanges complete out of order).
        let mut parent = None;
        let mut enclosers = 0;
        for srv in th.servers.iter().filter(|srv| srv.contains(&s)) {
            enclosers += 1;
            parent = Some(*srv);
        }
        let own_servers = !th.servers.is_empty();
        let mut via_started_thread = false;
        if !own_servers {
            // A thread that never served: the request of the thread that started it.
            match self.started_encloser(s.pid, s.tid, &s) {
                Enclosers::None => {}
                Enclosers::One(srv) => {
                    enclosers += 1;
                    parent = Some(srv);
                    via_started_thread = true;
                }
                Enclosers::Several => enclosers += 2,
            }
        }
        let th = self.threads.entry((s.pid, s.tid)).or_default();
        if enclosers > 1 {
            self.stats.unlinked_ambiguous += 1;
            return Some(s);
        }
        if self.held >= self.max_held {
            self.stats.unlinked_overflow += 1;
            return Some(s);
        }
        let h = Held {
            span: s,
            arrived: now,
            parent,
            via_started_thread,
        };
        if parent.is_some() {
            th.tentative.push_back(h);
        } else {
            th.pending.push(h);
        }
        self.held += 1;
        None
    }

    /// Takes note of a server span (`sampled`: the sampler's decision for it); held client
    /// spans of its thread inside it become its tentative children.
    pub fn server(&mut self, s: &Span, sampled: bool) {
        if !self.enabled() {
            return;
        }
        let now = self.now;
        self.serving.insert(s.pid, now);
        let th = self.threads.entry((s.pid, s.tid)).or_default();
        th.last_seen = Some(now);
        // Arrived at most `max_wait` before now. The servers are in arrival order, so the
        // expired ones are at the front (this runs once per request).
        let oldest = now.checked_sub(self.max_wait);
        while th
            .servers
            .front()
            .is_some_and(|x| oldest.is_some_and(|o| x.arrived < o))
        {
            th.servers.pop_front();
        }
        let srv = Server {
            start: s.start_unix_nano,
            end: s.end_unix_nano,
            trace_id: s.trace_id,
            span_id: s.span_id,
            sampled,
            arrived: now,
        };
        if !th.multiplexed && th.servers.iter().any(|x| x.overlaps(&srv)) {
            th.multiplexed = true;
            self.stats.multiplexed_threads += 1;
        }
        if th.servers.len() >= MAX_SERVERS {
            th.servers.pop_front();
        }
        th.servers.push_back(srv);
        if th.multiplexed {
            // Spans with no encloser yet, and those under a request this one overlaps, go
            // out unlinked; a tentative link to a request nothing overlaps still settles.
            let before = th.pending.len() + th.tentative.len();
            self.ready.extend(th.pending.drain(..).map(|h| h.span));
            if !th.tentative.is_empty() {
                for h in std::mem::take(&mut th.tentative) {
                    if h.parent.is_some_and(|p| !p.overlaps(&srv)) {
                        th.tentative.push_back(h);
                    } else {
                        self.ready.push(h.span);
                    }
                }
            }
            let mut released = before - th.pending.len() - th.tentative.len();
            // The same for spans of threads it started, tentatively under its requests.
            if let Some(children) = self.children.get(&(s.pid, s.tid)) {
                for &child in children {
                    let Some(cth) = self.threads.get_mut(&(s.pid, child)) else {
                        continue;
                    };
                    for h in std::mem::take(&mut cth.tentative) {
                        if h.parent.is_some_and(|p| !p.overlaps(&srv)) {
                            cth.tentative.push_back(h);
                        } else {
                            released += 1;
                            self.ready.push(h.span);
                        }
                    }
                }
            }
            self.held -= released;
            self.stats.unlinked_multiplexed += released as u64;
            return;
        }
        // Two enclosers would overlap: the thread is then multiplexed (above).
        let mut i = 0;
        while i < th.pending.len() {
            if srv.contains(&th.pending[i].span) {
                let mut h = th.pending.swap_remove(i);
                h.parent = Some(srv);
                th.tentative.push_back(h);
            } else {
                i += 1;
            }
        }
        // Threads this one started that lived inside this request and never served.
        let Some(children) = self.children.get(&(s.pid, s.tid)) else {
            return;
        };
        for &child in children {
            let Some(t) = self.started.get(&(s.pid, child)) else {
                continue;
            };
            if !t.lived_inside(&srv) {
                continue;
            }
            if let Some(cth) = self.threads.get_mut(&(s.pid, child))
                && cth.servers.is_empty()
            {
                adopt_contained(cth, srv);
            }
        }
    }

    /// Advances the linker's clock to `now` and releases what is due: committed links,
    /// client spans proven to have no encloser, and those held too long.
    pub fn expire(&mut self, now: Instant) {
        self.now = now;
        if !self.enabled() || now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let (settle, max_wait) = (self.settle, self.max_wait);
        let (ready, stats) = (&mut self.ready, &mut self.stats);
        let mut released = 0;
        self.threads.retain(|_, th| {
            // Links commit in the order they were made.
            while th.tentative.front().is_some_and(|h| {
                h.parent
                    .is_none_or(|p| now.saturating_duration_since(p.arrived) >= settle)
            }) {
                let Some(mut h) = th.tentative.pop_front() else {
                    break;
                };
                released += 1;
                // A request overlapping its parent (remembered, or arrived since): unlinked.
                if let Some(p) = h.parent
                    && th
                        .servers
                        .iter()
                        .any(|x| x.span_id != p.span_id && x.overlaps(&p))
                {
                    h.parent = None;
                    stats.unlinked_multiplexed += 1;
                }
                ready.push(link(h, stats));
            }
            let mut i = 0;
            while i < th.pending.len() {
                let h = &th.pending[i];
                let end = h.span.end_unix_nano;
                let due =
                    if now.saturating_duration_since(h.arrived) >= max_wait {
                        stats.unlinked_timeout += 1;
                        true
                    } else if th.servers.iter().any(|x| {
                        x.start >= end && now.saturating_duration_since(x.arrived) >= settle
                    }) {
                        stats.unlinked_no_encloser += 1;
                        true
                    } else {
                        false
                    };
                if due {
                    released += 1;
                    ready.push(th.pending.swap_remove(i).span);
                } else {
                    i += 1;
                }
            }
            th.servers
                .retain(|x| now.saturating_duration_since(x.arrived) <= max_wait);
            let idle = th
                .last_seen
                .is_none_or(|t| now.saturating_duration_since(t) > max_wait);
            !(idle && th.pending.is_empty() && th.tentative.is_empty() && th.servers.is_empty())
        });
        self.held -= released;
        self.serving
            .retain(|_, t| now.saturating_duration_since(*t) <= max_wait);
        // Started threads, once ended (or started) longer ago than any request is remembered.
        let children = &mut self.children;
        self.started.retain(|&(pid, tid), t| {
            let keep = now.saturating_duration_since(t.noted) <= max_wait;
            if !keep && let Some(v) = children.get_mut(&(pid, t.parent_tid)) {
                v.retain(|&c| c != tid);
                if v.is_empty() {
                    children.remove(&(pid, t.parent_tid));
                }
            }
            keep
        });
    }

    /// Releases everything held: the processor stops, every server span that will arrive
    /// has, so tentative links are committed and the rest goes out unlinked.
    pub fn finish(&mut self) {
        let (ready, stats) = (&mut self.ready, &mut self.stats);
        for th in self.threads.values_mut() {
            for h in th.pending.drain(..).chain(th.tentative.drain(..)) {
                if h.parent.is_none() {
                    stats.unlinked_at_exit += 1;
                }
                ready.push(link(h, stats));
            }
        }
        self.held = 0;
    }

    /// Spans released since the last call (give the vector back with `give_back` to keep
    /// its allocation).
    pub fn take_ready(&mut self) -> Vec<Box<Span>> {
        std::mem::take(&mut self.ready)
    }

    /// Returns the (drained) vector `take_ready` gave.
    pub fn give_back(&mut self, mut v: Vec<Box<Span>>) {
        if self.ready.is_empty() {
            v.clear();
            self.ready = v;
        }
    }
}

/// Makes the held spans of a started thread that lie inside `srv` (a request of the thread
/// that started it, which it lived in) its tentative children.
fn adopt_contained(th: &mut Thread, srv: Server) {
    let mut i = 0;
    while i < th.pending.len() {
        if srv.contains(&th.pending[i].span) {
            let mut h = th.pending.swap_remove(i);
            h.parent = Some(srv);
            h.via_started_thread = true;
            th.tentative.push_back(h);
        } else {
            i += 1;
        }
    }
}

/// The held span, made the child of its tentative parent if it has one.
fn link(h: Held, stats: &mut LinkStats) -> Box<Span> {
    let mut s = h.span;
    if let Some(p) = h.parent {
        s.trace_id = p.trace_id;
        s.parent_span_id = Some(p.span_id);
        s.parent_sampled = Some(p.sampled);
        stats.linked += 1;
        stats.linked_started_threads += u64::from(h.via_started_thread);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(5);

    fn server(tid: u32, start: u64, end: u64, id: u8) -> Span {
        Span {
            kind: SpanKind::Server,
            tid,
            start_unix_nano: start,
            end_unix_nano: end,
            trace_id: TraceId([id; 16]),
            span_id: SpanId([id; 8]),
            ..Span::fixture()
        }
    }

    fn client(tid: u32, start: u64, end: u64, id: u8) -> Box<Span> {
        Box::new(Span {
            kind: SpanKind::Client,
            tid,
            start_unix_nano: start,
            end_unix_nano: end,
            trace_id: TraceId([0xc0 | id; 16]),
            span_id: SpanId([0xc0 | id; 8]),
            path: format!("/{id}"),
            ..Span::fixture()
        })
    }

    /// A linker whose process 1 has served (a server span long ago on another thread).
    fn serving(t0: Instant) -> Linker {
        let mut l = Linker::new(W, t0);
        l.server(&server(999, 0, 1, 0xee), true);
        l
    }

    fn drain(l: &mut Linker) -> Vec<Box<Span>> {
        let mut v = l.take_ready();
        v.sort_by_key(|s| s.path.clone());
        v
    }

    #[test]
    fn client_inside_its_server_becomes_its_child_after_settling() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        assert!(l.client(client(7, 110, 120, 1)).is_none());
        assert!(l.client(client(7, 130, 140, 2)).is_none());
        l.server(&server(7, 100, 200, 5), false);
        l.expire(t0 + Duration::from_millis(500));
        assert!(l.take_ready().is_empty(), "held until settled");
        l.expire(t0 + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out.len(), 2);
        for s in &out {
            assert_eq!(s.trace_id, TraceId([5; 16]));
            assert_eq!(s.parent_span_id, Some(SpanId([5; 8])));
            assert_eq!(s.parent_sampled, Some(false));
        }
        assert_eq!(l.stats().linked, 2);
        assert_eq!(l.stats().held, 0);
    }

    #[test]
    fn client_arriving_after_its_server_links_too() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.server(&server(7, 100, 200, 5), true);
        assert!(l.client(client(7, 110, 120, 1)).is_none());
        l.expire(t0 + SETTLE);
        let out = l.take_ready();
        assert_eq!(out[0].parent_span_id, Some(SpanId([5; 8])));
        assert_eq!(out[0].parent_sampled, Some(true));
    }

    #[test]
    fn a_thread_started_and_ended_inside_the_request_links_to_it() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        // Thread 8, started by the serving thread 7 at 105 and ended at 150; its call.
        l.thread_started(1, 8, 7, 105);
        assert!(l.client(client(8, 110, 120, 1)).is_none());
        l.thread_ended(1, 8, 150);
        // A thread 9 started during the request that outlives it (a pool): never linked.
        l.thread_started(1, 9, 7, 106);
        assert!(l.client(client(9, 111, 121, 2)).is_none());
        l.server(&server(7, 100, 200, 5), true);
        // A call of thread 8's after the server span arrived links too.
        assert!(l.client(client(8, 130, 140, 3)).is_none());
        l.expire(t0 + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out.len(), 2, "the pool thread's call is still held");
        for s in &out {
            assert_eq!(s.parent_span_id, Some(SpanId([5; 8])), "{}", s.path);
            assert_eq!(s.trace_id, TraceId([5; 16]));
        }
        assert_eq!(l.stats().linked_started_threads, 2);
        l.expire(t0 + W + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].path.as_str(), out[0].parent_span_id), ("/2", None));
        // Everything about the threads is forgotten once old.
        l.expire(t0 + 3 * W);
        assert!(l.started.is_empty() && l.children.is_empty());
    }

    #[test]
    fn a_thread_whose_exit_is_reported_after_the_request_still_links() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.thread_started(1, 8, 7, 105);
        assert!(l.client(client(8, 110, 120, 1)).is_none());
        l.server(&server(7, 100, 200, 5), true);
        // The exit, just after the answer (within the grace), reported after the server span.
        l.thread_ended(1, 8, 200 + EXIT_GRACE_NS / 2);
        l.expire(t0 + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, Some(SpanId([5; 8])));
        // Past the grace: the thread outlived the request.
        let mut l = serving(t0);
        l.thread_started(1, 8, 7, 105);
        assert!(l.client(client(8, 110, 120, 1)).is_none());
        l.server(&server(7, 100, 200, 5), true);
        l.thread_ended(1, 8, 201 + EXIT_GRACE_NS);
        l.expire(t0 + W + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out[0].parent_span_id, None);
    }

    #[test]
    fn a_started_thread_is_not_linked_when_its_starter_serves_concurrently() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.thread_started(1, 8, 7, 105);
        assert!(l.client(client(8, 110, 120, 1)).is_none());
        l.thread_ended(1, 8, 150);
        l.server(&server(7, 100, 200, 5), true);
        // Before the link settles, a request overlapping it on the starting thread.
        l.server(&server(7, 180, 260, 6), true);
        l.expire(t0 + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, None);
        assert_eq!(l.stats().linked, 0);
        // A thread that serves itself is linked only to its own requests.
        let mut l = serving(t0);
        l.thread_started(1, 8, 7, 105);
        l.server(&server(8, 300, 400, 8), true);
        assert!(l.client(client(8, 110, 120, 1)).is_none());
        l.thread_ended(1, 8, 150);
        l.server(&server(7, 100, 200, 5), true);
        l.expire(t0 + W + SETTLE);
        let out = drain(&mut l);
        assert_eq!(out[0].parent_span_id, None);
    }

    #[test]
    fn only_spans_inside_the_server_and_on_its_thread_link() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 90, 120, 1)); // starts before the request
        l.client(client(7, 150, 210, 2)); // ends after the response
        l.client(client(8, 110, 120, 3)); // another thread
        l.server(&server(7, 100, 200, 5), true);
        l.expire(t0 + SETTLE);
        assert!(l.take_ready().is_empty());
        l.expire(t0 + W);
        let out = drain(&mut l);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.parent_span_id.is_none()));
        assert_eq!(l.stats().unlinked_timeout, 3);
        assert_eq!(l.stats().linked, 0);
    }

    #[test]
    fn overlapping_servers_mark_the_thread_multiplexed_before_any_link() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 110, 120, 1)); // inside both requests: an event loop
        l.server(&server(7, 100, 200, 5), true);
        // A second request on the same thread, overlapping the first, within the settle time.
        l.expire(t0 + Duration::from_millis(300));
        l.server(&server(7, 105, 300, 6), true);
        let out = l.take_ready();
        assert_eq!(out.len(), 1);
        assert!(out[0].parent_span_id.is_none());
        assert_eq!(l.stats().multiplexed_threads, 1);
        // Later client spans of that thread pass through at once, unlinked.
        let s = l.client(client(7, 400, 410, 2)).expect("passes");
        assert!(s.parent_span_id.is_none());
        l.server(&server(7, 390, 420, 7), true);
        assert_eq!(l.stats().unlinked_multiplexed, 2);
        assert_eq!(l.stats().linked, 0);
    }

    #[test]
    fn links_made_before_the_thread_turned_multiplexed_settle_unless_overlapped() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 110, 120, 1)); // request 5, alone on the thread
        l.server(&server(7, 100, 200, 5), true);
        l.client(client(7, 310, 320, 2)); // inside request 6 ...
        l.server(&server(7, 300, 400, 6), true);
        l.client(client(7, 360, 370, 3)); // ... and request 7, which overlaps 6
        l.server(&server(7, 350, 500, 7), true);
        assert_eq!(l.stats().multiplexed_threads, 1);
        // The spans under request 6 (which 7 overlaps) went out unlinked at once.
        let out = drain(&mut l);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|s| s.parent_span_id.is_none()));
        l.expire(t0 + SETTLE);
        // The span under request 5 (nothing overlaps it) settles.
        let out = l.take_ready();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, Some(SpanId([5; 8])));
        assert_eq!(l.stats().linked, 1);
        assert_eq!(l.stats().unlinked_multiplexed, 2);
    }

    #[test]
    fn a_link_is_dropped_when_an_overlapping_request_arrived_before_it_settled() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 110, 120, 1));
        l.server(&server(7, 100, 200, 5), true);
        // Remembered state as if the overlap had been missed at arrival: the commit checks.
        l.threads
            .get_mut(&(1, 7))
            .expect("thread")
            .servers
            .push_back(Server {
                start: 150,
                end: 400,
                trace_id: TraceId([6; 16]),
                span_id: SpanId([6; 8]),
                sampled: true,
                arrived: t0,
            });
        l.expire(t0 + SETTLE);
        let out = l.take_ready();
        assert!(out[0].parent_span_id.is_none());
        assert_eq!(l.stats().unlinked_multiplexed, 1);
        assert_eq!(l.stats().linked, 0);
    }

    #[test]
    fn client_inside_two_remembered_servers_is_ambiguous() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        // Two enclosers already known (the second made the thread multiplexed, so build
        // the state by hand to exercise the containment count itself).
        l.threads.entry((1, 7)).or_default().servers = VecDeque::from([
            Server {
                start: 100,
                end: 200,
                trace_id: TraceId([5; 16]),
                span_id: SpanId([5; 8]),
                sampled: true,
                arrived: t0,
            },
            Server {
                start: 90,
                end: 250,
                trace_id: TraceId([6; 16]),
                span_id: SpanId([6; 8]),
                sampled: true,
                arrived: t0,
            },
        ]);
        let s = l.client(client(7, 110, 120, 1)).expect("not held");
        assert!(s.parent_span_id.is_none());
        assert_eq!(l.stats().unlinked_ambiguous, 1);
    }

    #[test]
    fn later_request_on_the_thread_proves_no_encloser() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 50, 60, 1)); // a call made between requests
        l.server(&server(7, 100, 200, 5), true);
        l.expire(t0 + Duration::from_millis(100));
        assert!(l.take_ready().is_empty());
        l.expire(t0 + SETTLE);
        let out = l.take_ready();
        assert_eq!(out.len(), 1);
        assert!(out[0].parent_span_id.is_none());
        assert_eq!(l.stats().unlinked_no_encloser, 1);
    }

    #[test]
    fn processes_not_serving_and_preparented_spans_pass_at_once() {
        let t0 = Instant::now();
        let mut l = Linker::new(W, t0);
        let s = l
            .client(client(7, 110, 120, 1))
            .expect("not serving: passes");
        assert!(s.parent_span_id.is_none());
        l.server(&server(7, 100, 200, 5), true);
        let mut own = client(7, 110, 120, 2);
        own.parent_span_id = Some(SpanId([9; 8]));
        own.trace_id = TraceId([9; 16]);
        let s = l.client(own).expect("already parented: passes");
        assert_eq!(s.trace_id, TraceId([9; 16]));
        assert_eq!(s.parent_span_id, Some(SpanId([9; 8])));
        assert_eq!(l.stats().preparented, 1);
        // A process that stopped serving longer ago than the window passes again.
        l.expire(t0 + W + Duration::from_secs(1));
        assert!(l.client(client(7, 110, 120, 3)).is_some());
    }

    #[test]
    fn capacity_is_bounded_and_overflow_counted() {
        let t0 = Instant::now();
        let mut l = Linker::with_limits(W, SETTLE, 2, t0);
        l.server(&server(999, 0, 1, 0xee), true);
        assert!(l.client(client(7, 110, 120, 1)).is_none());
        assert!(l.client(client(7, 120, 130, 2)).is_none());
        let s = l.client(client(7, 130, 140, 3)).expect("full: passes");
        assert!(s.parent_span_id.is_none());
        assert_eq!(l.stats().unlinked_overflow, 1);
        assert_eq!(l.stats().held, 2);
    }

    #[test]
    fn finish_commits_tentative_links_and_releases_the_rest() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.client(client(7, 110, 120, 1));
        l.client(client(8, 110, 120, 2));
        l.server(&server(7, 100, 200, 5), true);
        l.finish();
        let out = drain(&mut l);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].parent_span_id, Some(SpanId([5; 8])));
        assert!(out[1].parent_span_id.is_none());
        assert_eq!(l.stats().unlinked_at_exit, 1);
        assert_eq!(l.stats().held, 0);
    }

    #[test]
    fn zero_window_turns_linking_off() {
        let t0 = Instant::now();
        let mut l = Linker::new(Duration::ZERO, t0);
        l.server(&server(7, 100, 200, 5), true);
        assert!(l.client(client(7, 110, 120, 1)).is_some());
        assert_eq!(l.stats().linked, 0);
    }

    /// The linker's cost per request (one server span, two client spans, 16 threads, the
    /// clock advancing 100 µs per request): with linking against with it off. A figure, not a
    /// check: `cargo test --release -p sonde-processor --lib linker_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn linker_cost() {
        const REQUESTS: u64 = 100_000;
        let run = |window: Duration| {
            let t0 = Instant::now();
            let mut l = Linker::new(window, t0);
            l.server(&server(999, 0, 1, 0xee), true);
            let mut out = 0usize;
            let started = Instant::now();
            for r in 0..REQUESTS {
                let tid = (r % 16) as u32;
                let base = 1_000 + r * 10_000;
                let mut srv = server(tid, base, base + 9_000, 5);
                srv.span_id = SpanId(r.to_le_bytes());
                for c in [
                    client(tid, base + 1_000, base + 2_000, 1),
                    client(tid, base + 3_000, base + 4_000, 2),
                ] {
                    out += usize::from(l.client(c).is_some());
                }
                l.server(&srv, true);
                if r % 100 == 0 {
                    l.expire(t0 + Duration::from_micros(r * 100));
                    let v = l.take_ready();
                    out += v.len();
                    l.give_back(v);
                }
            }
            l.finish();
            out += l.take_ready().len();
            assert_eq!(out, 2 * REQUESTS as usize);
            (started.elapsed(), l.stats())
        };
        let (off, _) = run(Duration::ZERO);
        let (on, stats) = run(W);
        assert_eq!(stats.linked, 2 * REQUESTS);
        let per = |d: Duration| d.as_nanos() as f64 / REQUESTS as f64;
        eprintln!(
            "per request: {:.0} ns with linking, {:.0} ns without (span building included); linking adds {:.0} ns",
            per(on),
            per(off),
            per(on) - per(off)
        );
    }

    #[test]
    fn idle_threads_are_forgotten() {
        let t0 = Instant::now();
        let mut l = serving(t0);
        l.server(&server(7, 100, 200, 5), true);
        l.expire(t0 + W + Duration::from_secs(1));
        assert!(l.threads.is_empty());
        assert!(l.serving.is_empty());
    }
}
