//! Service graph metrics (the `application_service_graph` feature of `metrics.features`):
//! `traces_service_graph_request_total`, `…_failed_total` and the `…_client_seconds` /
//! `…_server_seconds` histograms, labelled `client`, `client_namespace`, `server`,
//! `server_namespace` and `connection_type`, as the reference system and Tempo name them.
//!
//! One request is one edge count, whichever of its ends Sonde sees:
//! - Both ends selected on this host (a client span of process A and a server span of
//!   process B on the same connection): the two spans are paired by their connection
//!   (client address and port, server address and port) and counted once, `client` = A's
//!   service, `server` = B's; the client span's duration goes to `client_seconds`, the server
//!   span's to `server_seconds`; failed when either span failed.
//! - Only the client span (the peer is not instrumented here): `server` is the peer's
//!   address, `connection_type="virtual_node"` (`database` / `messaging_system` for database
//!   and messaging spans); counted once, its duration in `client_seconds`.
//! - Only the server span (the caller is not instrumented here): `client` is the caller's
//!   address, `connection_type="virtual_node"`; counted once, its duration in
//!   `server_seconds`.
//!
//! The reference system decides per span instead: every server span counts a request; a
//! client span counts one only when the peer's name was resolved and names no service it
//! instruments (an unresolved peer is left out of `request_total`). Its client and server
//! labels are addresses unless a name was resolved, and both failed spans of a pair count.
//! Sonde sees both ends of a connection on one host, so it pairs them: a pair is one
//! request, one failure at most, named by both services.
//!
//! A span waits up to `PAIRING_WINDOW` for its other end (they arrive in either order), so
//! the metrics lag requests by that much. Edges whose client and server are the same
//! service in the same namespace (self references) are left out, as in the reference system.
//! Edges idle for `SERIES_TTL` leave both outputs; at most `MAX_EDGES` edges are kept (new
//! ones beyond are counted in `sonde_service_graph_edges_dropped_total`, not recorded).
//!
//! Each request is counted once, into one aggregation (`GraphStore`): per edge, one `Cell`
//! per process whose spans counted on it (the request and failure counts and the server
//! duration in the server's process when Sonde saw it, else the client's; the client duration
//! in the client's). Both outputs encode that state: Prometheus sums an edge's cells
//! (`GraphCollector`), OTLP reports each cell under its process's resource
//! (`otlp::graph_metrics`), as the OpenTelemetry SDK instruments kept per process did before;
//! no second metric system hashes the labels again.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, counter::Counter},
    registry::{Registry, Unit},
};

use crate::{
    otlp::{Otlp, ProcessResource},
    protocols::{db, grpc},
    red_store::{Histogram, HistogramSnapshot},
    semconv::DURATION_BUCKETS,
    span::{Span, SpanKind},
};

/// How long a span waits for the other end of its request. Both ends of a local request
/// reach the processor within milliseconds of each other; the margin covers a busy reader.
pub const PAIRING_WINDOW: Duration = Duration::from_secs(2);
/// An edge that counted nothing for this long leaves both outputs (as the reference
/// system's `ttl` does), so peers that went away do not grow the processor without bound.
pub const SERIES_TTL: Duration = Duration::from_secs(300);
/// Edges kept at most.
pub const MAX_EDGES: usize = 10_000;
/// Spans waiting for their other end at most; beyond, a span is counted alone at once.
pub const MAX_WAITING: usize = 65_536;

/// The metric names (Prometheus adds `_total` to counters and `_seconds` to the histograms;
/// the OTLP names are the reference system's).
pub const TOTAL: &str = "traces_service_graph_request";
pub const FAILED: &str = "traces_service_graph_request_failed";
pub const CLIENT: &str = "traces_service_graph_request_client";
pub const SERVER: &str = "traces_service_graph_request_server";
/// The descriptions, the same in both outputs.
pub const TOTAL_HELP: &str = "number of service calls in trace service graph metrics format";
pub const FAILED_HELP: &str =
    "number of failed service calls in trace service graph metrics format";
pub const CLIENT_HELP: &str =
    "duration of client service calls, in seconds, in trace service graph metrics format";
pub const SERVER_HELP: &str =
    "duration of server service calls, in seconds, in trace service graph metrics format";

/// A counter as both outputs show it: its Prometheus family name (`_total` added), its OTLP
/// name, description, and which count of an edge it is.
pub struct CounterFamily {
    pub prometheus: &'static str,
    pub otlp: &'static str,
    pub help: &'static str,
    pub value: fn(&CellSnapshot) -> u64,
}

/// A duration histogram as both outputs show it (in seconds; Prometheus adds `_seconds`).
pub struct HistogramFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub pick: fn(&CellSnapshot) -> &HistogramSnapshot,
}

pub const COUNTERS: [CounterFamily; 2] = [
    CounterFamily {
        prometheus: TOTAL,
        otlp: "traces_service_graph_request_total",
        help: TOTAL_HELP,
        value: |s| s.total,
    },
    CounterFamily {
        prometheus: FAILED,
        otlp: "traces_service_graph_request_failed_total",
        help: FAILED_HELP,
        value: |s| s.failed,
    },
];

pub const HISTOGRAMS: [HistogramFamily; 2] = [
    HistogramFamily {
        name: CLIENT,
        help: CLIENT_HELP,
        pick: |s| &s.client,
    },
    HistogramFamily {
        name: SERVER,
        help: SERVER_HELP,
        pick: |s| &s.server,
    },
];

/// The maps' hasher: seeded per process (addresses and ports come from outside, so
/// collisions must not be choosable), and faster than SipHash.
type Hasher = foldhash::fast::RandomState;

/// `connection_type` of an edge whose other end Sonde did not see.
pub const VIRTUAL_NODE: &str = "virtual_node";

/// The labels of one edge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub client_namespace: String,
    pub server: String,
    pub server_namespace: String,
    pub connection_type: String,
}

impl EdgeLabels {
    /// The OTLP attributes, sorted by key.
    pub fn otlp_attributes(&self) -> [(&'static str, &str); 5] {
        [
            ("client", &self.client),
            ("client_namespace", &self.client_namespace),
            ("connection_type", &self.connection_type),
            ("server", &self.server),
            ("server_namespace", &self.server_namespace),
        ]
    }
}

/// One edge: its labels, which outputs show it, and whether it is still kept.
#[derive(Debug)]
pub struct Edge {
    id: u64,
    pub labels: EdgeLabels,
    /// Shown by Prometheus (it is served; a self reference only when allowed there).
    prometheus: bool,
    /// Exported over OTLP (metrics are exported; a self reference only when allowed there).
    otlp: bool,
    /// Cleared when the edge leaves after `SERIES_TTL`: OTLP stops reporting its cells.
    live: AtomicBool,
}

impl Edge {
    /// False once the edge left after `SERIES_TTL`.
    pub fn is_live(&self) -> bool {
        self.live.load(Relaxed)
    }
}

/// What one process's spans counted on one edge: the requests (and failures) when it is the
/// counting end (the server when Sonde saw it, else the client, as the reference system
/// counts requests on server spans) and the durations of its own spans. Written by the
/// reader thread only (a plain load and store, as in `red_store`); Prometheus sums an
/// edge's cells, OTLP reports each under its process's resource.
#[derive(Debug)]
pub struct Cell {
    pub pid: u32,
    pub edge: Arc<Edge>,
    /// When it was made (OTLP's cumulative start time).
    pub start_unix_nano: u64,
    total: AtomicU64,
    failed: AtomicU64,
    client: Histogram,
    server: Histogram,
}

/// A cell's counts at one moment (or the sum of several cells').
#[derive(Clone, Debug, PartialEq)]
pub struct CellSnapshot {
    pub total: u64,
    pub failed: u64,
    pub client: HistogramSnapshot,
    pub server: HistogramSnapshot,
}

impl CellSnapshot {
    fn empty() -> CellSnapshot {
        let h = HistogramSnapshot {
            bounds: &DURATION_BUCKETS,
            counts: vec![0; DURATION_BUCKETS.len() + 1],
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        };
        CellSnapshot {
            total: 0,
            failed: 0,
            client: h.clone(),
            server: h,
        }
    }

    fn merge(&mut self, other: &CellSnapshot) {
        self.total += other.total;
        self.failed += other.failed;
        self.client.merge(&other.client);
        self.server.merge(&other.server);
    }
}

fn bump(a: &AtomicU64) {
    a.store(a.load(Relaxed) + 1, Relaxed);
}

impl Cell {
    fn new(pid: u32, edge: Arc<Edge>) -> Cell {
        Cell {
            pid,
            edge,
            start_unix_nano: unix_nanos(),
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            client: Histogram::new(&DURATION_BUCKETS),
            server: Histogram::new(&DURATION_BUCKETS),
        }
    }

    pub fn snapshot(&self) -> CellSnapshot {
        CellSnapshot {
            total: self.total.load(Relaxed),
            failed: self.failed.load(Relaxed),
            client: self.client.snapshot(),
            server: self.server.snapshot(),
        }
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Debug)]
struct EdgeCells {
    edge: Arc<Edge>,
    cells: Vec<Arc<Cell>>,
    /// The counts of cells whose process went away, so a scraped counter never goes
    /// backwards while the edge is kept.
    retired: Option<CellSnapshot>,
}

/// Every kept edge and its cells, shared by the writer (`ServiceGraph`) and the Prometheus
/// collector; OTLP finds the cells through each process's meter pipeline
/// (`Otlp::export_graph_cell`). Counting a request takes no lock; adding an edge or a cell,
/// retiring them and a scrape do.
#[derive(Debug, Default)]
pub struct GraphStore {
    edges: Mutex<HashMap<u64, EdgeCells>>,
}

impl GraphStore {
    fn edges(&self) -> MutexGuard<'_, HashMap<u64, EdgeCells>> {
        // A panic while holding the lock leaves a plain map behind, still usable.
        self.edges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_edge(&self, edge: Arc<Edge>) {
        self.edges().insert(
            edge.id,
            EdgeCells {
                edge,
                cells: Vec::new(),
                retired: None,
            },
        );
    }

    fn add_cell(&self, cell: Arc<Cell>) {
        if let Some(e) = self.edges().get_mut(&cell.edge.id) {
            e.cells.push(cell);
        }
    }

    /// Edges that left after `SERIES_TTL`, with every count of theirs.
    fn remove_edges(&self, ids: &[u64]) {
        let mut edges = self.edges();
        for id in ids {
            edges.remove(id);
        }
    }

    /// Cells of a process that went away: their counts live on in their edges' totals.
    fn retire(&self, cells: &[Arc<Cell>]) {
        let mut edges = self.edges();
        for c in cells {
            let Some(e) = edges.get_mut(&c.edge.id) else {
                continue;
            };
            e.cells.retain(|x| !Arc::ptr_eq(x, c));
            let snap = c.snapshot();
            match &mut e.retired {
                Some(r) => r.merge(&snap),
                None => e.retired = Some(snap),
            }
        }
    }

    /// Prometheus: each shown edge's counts, summed over its cells and retired cells.
    pub fn prometheus_totals(&self) -> Vec<(Arc<Edge>, CellSnapshot)> {
        let edges = self.edges();
        let mut out = Vec::with_capacity(edges.len());
        for e in edges.values().filter(|e| e.edge.prometheus) {
            let mut total = e.retired.clone().unwrap_or_else(CellSnapshot::empty);
            for c in &e.cells {
                total.merge(&c.snapshot());
            }
            out.push((Arc::clone(&e.edge), total));
        }
        out
    }

    /// The cells `pid` counts in now, as its OTLP pipeline holds them.
    #[cfg(test)]
    pub(crate) fn cells(&self, pid: u32) -> Vec<Arc<Cell>> {
        let edges = self.edges();
        let mut cells: Vec<Arc<Cell>> = edges
            .values()
            .flat_map(|e| &e.cells)
            .filter(|c| c.pid == pid)
            .cloned()
            .collect();
        cells.sort_by_key(|c| c.edge.id);
        cells
    }

    /// Kept edges.
    pub fn len(&self) -> usize {
        self.edges().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Prometheus side, registered only when the feature is on: the collector encoding the
/// store at each scrape, and the dropped-edges counter.
#[derive(Clone)]
pub struct GraphFamilies {
    store: Arc<GraphStore>,
    /// New edges not recorded because `MAX_EDGES` were kept.
    edges_dropped: Counter,
}

impl GraphFamilies {
    pub fn register(registry: &mut Registry) -> GraphFamilies {
        let f = GraphFamilies {
            store: Arc::default(),
            edges_dropped: Counter::default(),
        };
        registry.register_collector(Box::new(GraphCollector {
            store: Arc::clone(&f.store),
        }));
        registry.register(
            "sonde_service_graph_edges_dropped",
            "Service graph edges not recorded because the most edges Sonde keeps were reached",
            f.edges_dropped.clone(),
        );
        f
    }

    /// The one aggregation both outputs encode; its writer is `ServiceGraph`.
    pub fn store(&self) -> Arc<GraphStore> {
        Arc::clone(&self.store)
    }
}

/// Encodes the edges of the store at each scrape, as the `prometheus-client` families
/// did: every shown edge has all four series (zero counts included) from its first request.
#[derive(Debug)]
struct GraphCollector {
    store: Arc<GraphStore>,
}

impl Collector for GraphCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.store.prometheus_totals();
        for c in &COUNTERS {
            let mut points =
                encoder.encode_descriptor(c.prometheus, c.help, None, MetricType::Counter)?;
            for (edge, snap) in &totals {
                ConstCounter::new((c.value)(snap)).encode(points.encode_family(&edge.labels)?)?;
            }
        }
        for f in &HISTOGRAMS {
            let mut points = encoder.encode_descriptor(
                f.name,
                f.help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (edge, snap) in &totals {
                let h = (f.pick)(snap);
                let buckets: Vec<(f64, u64)> = h
                    .counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (h.bounds.get(i).copied().unwrap_or(f64::INFINITY), *n))
                    .collect();
                points
                    .encode_family(&edge.labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The side of a span in its request.
fn side_failed(s: &Span) -> bool {
    if let Some(rpc) = &s.rpc {
        return grpc::is_error(s.kind, rpc.status_code);
    }
    if let Some(d) = &s.db {
        return db::is_error(d, s.no_response);
    }
    if let Some(m) = &s.messaging {
        return m.error_code.is_some() || s.no_response;
    }
    // The HTTP conventions: a server span with a 5xx, a client span with a 4xx or 5xx, or no
    // response at all.
    match (s.kind, s.status) {
        (_, 0) => true,
        (SpanKind::Server, code) => code >= 500,
        (SpanKind::Client, code) => code >= 400,
    }
}

/// `connection_type` of a client span's edge: `database` and `messaging_system` as Tempo
/// names them, else `direct` (empty) when paired, `virtual_node` when not.
fn connection_type(s: &Span) -> Option<&'static str> {
    if s.db.is_some() {
        Some("database")
    } else if s.messaging.is_some() {
        Some("messaging_system")
    } else {
        None
    }
}

/// An IPv4-mapped IPv6 address as IPv4, so both ends of one connection name it alike.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The connection a span travelled on, as both of its ends see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Connection {
    client: (IpAddr, u16),
    server: (IpAddr, u16),
}

impl Connection {
    fn of(s: &Span) -> Option<Connection> {
        let client = s.client_address.0.map(canonical)?;
        let server = s.server_address.0.map(canonical)?;
        (s.client_port != 0 && s.server_port != 0).then_some(Connection {
            client: (client, s.client_port),
            server: (server, s.server_port),
        })
    }
}

/// One end of an edge: a service Sonde instruments, or an address it does not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum End {
    Service { name: Arc<str>, namespace: Arc<str> },
    Address(Option<IpAddr>),
}

impl End {
    /// The end's name and namespace labels.
    fn labels(&self) -> (String, String) {
        match self {
            End::Service { name, namespace } => (name.to_string(), namespace.to_string()),
            End::Address(ip) => (ip.map(|a| a.to_string()).unwrap_or_default(), String::new()),
        }
    }
}

/// An edge as the series cache finds it: built without allocating (service names are shared,
/// addresses copied), turned into label strings only when its series is made.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    pub client: End,
    pub server: End,
    pub connection_type: &'static str,
}

impl EdgeKey {
    pub fn labels(&self) -> EdgeLabels {
        let (client, client_namespace) = self.client.labels();
        let (server, server_namespace) = self.server.labels();
        EdgeLabels {
            client,
            client_namespace,
            server,
            server_namespace,
            connection_type: self.connection_type.to_string(),
        }
    }

    /// True when both ends are the same service (a self reference).
    fn is_self_reference(&self) -> bool {
        matches!(self.client, End::Service { .. }) && self.client == self.server
    }
}

/// What the graph keeps of a span while it waits for its other end.
#[derive(Clone, Debug)]
struct Half {
    pid: u32,
    /// The span's own service (an `End::Service`).
    service: End,
    /// The other end's address, named when the span stays alone.
    peer: Option<IpAddr>,
    seconds: f64,
    failed: bool,
    /// Database / messaging client spans.
    kind_type: Option<&'static str>,
    deadline: Instant,
}

impl Half {
    fn of(s: &Span, service: End, deadline: Instant) -> Half {
        let peer = match s.kind {
            SpanKind::Client => s.server_address,
            SpanKind::Server => s.client_address,
        };
        Half {
            pid: s.pid,
            service,
            peer: peer.0.map(canonical),
            seconds: s.duration_ns as f64 / 1e9,
            failed: side_failed(s),
            kind_type: match s.kind {
                SpanKind::Client => connection_type(s),
                SpanKind::Server => None,
            },
            deadline,
        }
    }
}

/// Spans of one connection waiting for their other end (only one side is ever non-empty:
/// a span arriving for the other side pairs with the oldest waiting one).
#[derive(Default)]
struct Waiting {
    clients: VecDeque<Half>,
    servers: VecDeque<Half>,
}

/// What one request adds to its edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub key: EdgeKey,
    pub failed: bool,
    /// The client span's duration and process, when Sonde saw it.
    pub client: Option<(u32, f64)>,
    /// The server span's duration and process, when Sonde saw it.
    pub server: Option<(u32, f64)>,
}

impl Request {
    fn paired(client: Half, server: Half) -> Request {
        Request {
            key: EdgeKey {
                client: client.service,
                server: server.service,
                connection_type: client.kind_type.unwrap_or_default(),
            },
            failed: client.failed || server.failed,
            client: Some((client.pid, client.seconds)),
            server: Some((server.pid, server.seconds)),
        }
    }

    fn client_alone(client: Half) -> Request {
        Request {
            key: EdgeKey {
                client: client.service,
                server: End::Address(client.peer),
                connection_type: client.kind_type.unwrap_or(VIRTUAL_NODE),
            },
            failed: client.failed,
            client: Some((client.pid, client.seconds)),
            server: None,
        }
    }

    fn server_alone(server: Half) -> Request {
        Request {
            key: EdgeKey {
                client: End::Address(server.peer),
                server: server.service,
                connection_type: VIRTUAL_NODE,
            },
            failed: server.failed,
            client: None,
            server: Some((server.pid, server.seconds)),
        }
    }

    /// The process whose cell counts the request (its server's when Sonde saw it, as
    /// the reference system counts requests on server spans).
    fn counting_pid(&self) -> u32 {
        self.server.or(self.client).map_or(0, |(pid, _)| pid)
    }
}

/// Pairs the two ends of requests; what leaves it is one `Request` per request.
#[derive(Default)]
pub struct Pairer {
    waiting: HashMap<Connection, Waiting, Hasher>,
    /// Each process's service, shared by its spans' edges.
    names: HashMap<u32, End, Hasher>,
    /// Deadlines in arrival order (entries of spans already paired are skipped).
    order: VecDeque<(Instant, Connection)>,
    held: usize,
}

impl Pairer {
    /// Takes a span; returns the request it completes, or the span's own request when it
    /// cannot wait (no connection, or too many waiting).
    pub fn push(&mut self, s: &Span, now: Instant) -> Option<Request> {
        let deadline = now + PAIRING_WINDOW;
        let service = self.service(s);
        let half = Half::of(s, service, deadline);
        let Some(conn) = Connection::of(s) else {
            return Some(Self::alone(s.kind, half));
        };
        let w = self.waiting.entry(conn).or_default();
        let (mine, theirs) = match s.kind {
            SpanKind::Client => (&mut w.clients, &mut w.servers),
            SpanKind::Server => (&mut w.servers, &mut w.clients),
        };
        if let Some(other) = theirs.pop_front() {
            self.held -= 1;
            let empty = mine.is_empty() && theirs.is_empty();
            if empty {
                self.waiting.remove(&conn);
            }
            return Some(match s.kind {
                SpanKind::Client => Request::paired(half, other),
                SpanKind::Server => Request::paired(other, half),
            });
        }
        if self.held >= MAX_WAITING {
            let empty = mine.is_empty() && theirs.is_empty();
            if empty {
                self.waiting.remove(&conn);
            }
            return Some(Self::alone(s.kind, half));
        }
        mine.push_back(half);
        self.held += 1;
        self.order.push_back((deadline, conn));
        None
    }

    /// The span's service as an `End`, shared with the earlier spans of its process.
    fn service(&mut self, s: &Span) -> End {
        let namespace = s.service_namespace.as_deref().unwrap_or_default();
        if let Some(
            e @ End::Service {
                name,
                namespace: ns,
            },
        ) = self.names.get(&s.pid)
            && **name == *s.service_name
            && **ns == *namespace
        {
            return e.clone();
        }
        let e = End::Service {
            name: s.service_name.as_str().into(),
            namespace: namespace.into(),
        };
        self.names.insert(s.pid, e.clone());
        e
    }

    /// Forgets the service of a process that went away.
    pub fn forget(&mut self, pid: u32) {
        self.names.remove(&pid);
    }

    fn alone(kind: SpanKind, half: Half) -> Request {
        match kind {
            SpanKind::Client => Request::client_alone(half),
            SpanKind::Server => Request::server_alone(half),
        }
    }

    /// Spans whose wait ended by `now` (all of them with `None`), each as its own request.
    pub fn expire(&mut self, now: Option<Instant>, out: &mut Vec<Request>) {
        while let Some(&(deadline, conn)) = self.order.front() {
            if now.is_some_and(|n| deadline > n) {
                break;
            }
            self.order.pop_front();
            let Some(w) = self.waiting.get_mut(&conn) else {
                continue;
            };
            let due = |h: &Half| now.is_none_or(|n| h.deadline <= n);
            while w.clients.front().is_some_and(due) {
                if let Some(h) = w.clients.pop_front() {
                    self.held -= 1;
                    out.push(Request::client_alone(h));
                }
            }
            while w.servers.front().is_some_and(due) {
                if let Some(h) = w.servers.pop_front() {
                    self.held -= 1;
                    out.push(Request::server_alone(h));
                }
            }
            if w.clients.is_empty() && w.servers.is_empty() {
                self.waiting.remove(&conn);
            }
        }
    }

    /// Spans waiting now.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// The writer's handle of one edge: its cells found without a lock.
struct Local {
    edge: Arc<Edge>,
    /// One per process that counted on the edge (a few: its client and server processes).
    cells: Vec<Arc<Cell>>,
    last_used: Instant,
}

impl Local {
    /// The cell of `pid`, made (and handed to the outputs) the first time.
    fn cell(
        &mut self,
        pid: u32,
        store: &GraphStore,
        otlp: Option<&mut Otlp>,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) -> &Cell {
        match self.cells.iter().position(|c| c.pid == pid) {
            Some(i) => &self.cells[i],
            None => {
                let cell = Arc::new(Cell::new(pid, Arc::clone(&self.edge)));
                store.add_cell(Arc::clone(&cell));
                if self.edge.otlp
                    && let Some(o) = otlp
                {
                    // Reported under the process's resource, with its other metrics.
                    o.export_graph_cell(&|| meta(pid), pid, Arc::clone(&cell));
                }
                self.cells.push(cell);
                &self.cells[self.cells.len() - 1]
            }
        }
    }
}

/// The service graph of this processor: pairing, and the one aggregation requests are
/// counted in (`GraphStore`), which Prometheus (`GraphCollector`) and OTLP
/// (`otlp::graph_metrics`) both encode.
pub struct ServiceGraph {
    pairer: Pairer,
    /// Whether self references count: (Prometheus, OTLP).
    allow_self_references: (bool, bool),
    store: Arc<GraphStore>,
    series: HashMap<EdgeKey, Local, Hasher>,
    next_id: u64,
    done: Vec<Request>,
    last_sweep: Instant,
}

impl ServiceGraph {
    /// `allow_self_references`: whether edges from a service to itself count in Prometheus
    /// and over OTLP (`*.allow_service_graph_self_references`); `store`: where the edges are
    /// counted (`GraphFamilies::store`), this being its only writer.
    pub fn new(
        allow_self_references: (bool, bool),
        now: Instant,
        store: Arc<GraphStore>,
    ) -> ServiceGraph {
        ServiceGraph {
            pairer: Pairer::default(),
            allow_self_references,
            store,
            series: HashMap::default(),
            next_id: 0,
            done: Vec::new(),
            last_sweep: now,
        }
    }

    /// Takes a finished span: counts the request it completes, or keeps it waiting for its
    /// other end.
    pub fn record(
        &mut self,
        s: &Span,
        now: Instant,
        prometheus: Option<&GraphFamilies>,
        otlp: Option<&mut Otlp>,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) {
        if let Some(r) = self.pairer.push(s, now) {
            self.count(r, now, prometheus, otlp, meta);
        }
    }

    /// Counts the spans whose wait is over by `now` (all of them with `None`, at shutdown)
    /// and, once in a while, retires idle edges.
    pub fn expire(
        &mut self,
        now: Option<Instant>,
        prometheus: Option<&GraphFamilies>,
        mut otlp: Option<&mut Otlp>,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) {
        let mut done = std::mem::take(&mut self.done);
        self.pairer.expire(now, &mut done);
        let at = now.unwrap_or_else(Instant::now);
        for r in done.drain(..) {
            self.count(r, at, prometheus, otlp.as_deref_mut(), meta);
        }
        self.done = done;
        if at.duration_since(self.last_sweep) >= SERIES_TTL / 10 {
            self.last_sweep = at;
            let mut gone = Vec::new();
            self.series.retain(|_, s| {
                let keep = at.duration_since(s.last_used) < SERIES_TTL;
                if !keep {
                    s.edge.live.store(false, Relaxed);
                    gone.push(s.edge.id);
                }
                keep
            });
            if !gone.is_empty() {
                self.store.remove_edges(&gone);
            }
        }
    }

    /// Forgets a process that went away: its cells' counts stay in their edges' Prometheus
    /// totals, and OTLP reports them once more with the process's last metrics.
    pub fn forget(&mut self, pid: u32) {
        let mut gone = Vec::new();
        for s in self.series.values_mut() {
            s.cells.retain(|c| {
                let keep = c.pid != pid;
                if !keep {
                    gone.push(Arc::clone(c));
                }
                keep
            });
        }
        if !gone.is_empty() {
            self.store.retire(&gone);
        }
        self.pairer.forget(pid);
    }

    fn count(
        &mut self,
        r: Request,
        now: Instant,
        prometheus: Option<&GraphFamilies>,
        mut otlp: Option<&mut Otlp>,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) {
        let self_reference = r.key.is_self_reference();
        let shown = prometheus.is_some() && (!self_reference || self.allow_self_references.0);
        let exported = otlp.is_some() && (!self_reference || self.allow_self_references.1);
        if !shown && !exported {
            return;
        }
        let len = self.series.len();
        let local = match self.series.get_mut(&r.key) {
            Some(s) => s,
            None => {
                if len >= MAX_EDGES {
                    if shown && let Some(p) = prometheus {
                        p.edges_dropped.inc();
                    }
                    return;
                }
                let edge = Arc::new(Edge {
                    id: self.next_id,
                    labels: r.key.labels(),
                    prometheus: shown,
                    otlp: exported,
                    live: AtomicBool::new(true),
                });
                self.next_id += 1;
                self.store.add_edge(Arc::clone(&edge));
                let local = Local {
                    edge,
                    cells: Vec::new(),
                    last_used: now,
                };
                self.series.entry(r.key.clone()).or_insert(local)
            }
        };
        local.last_used = now;
        let counting = local.cell(r.counting_pid(), &self.store, otlp.as_deref_mut(), meta);
        bump(&counting.total);
        if r.failed {
            bump(&counting.failed);
        }
        // The server span's process is the counting one when Sonde saw it.
        if let Some((_, secs)) = r.server {
            counting.server.record(secs);
        }
        if let Some((pid, secs)) = r.client {
            local.cell(pid, &self.store, otlp, meta).client.record(secs);
        }
    }

    /// Spans waiting for their other end.
    pub fn waiting(&self) -> usize {
        self.pairer.held()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        metrics::Metrics,
        span::{Address, Db},
    };

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A span of `service` (process `pid`) on the connection 127.0.0.1:`client_port` →
    /// 127.0.0.1:8080.
    fn span(kind: SpanKind, pid: u32, service: &str, client_port: u16, status: u16) -> Span {
        Span {
            kind,
            pid,
            service_name: service.into(),
            service_namespace: Some("shop".into()),
            status,
            client_address: Address(Some(LOOPBACK)),
            client_port,
            server_address: Address(Some(LOOPBACK)),
            server_port: 8080,
            duration_ns: 3_000_000,
            ..Span::fixture()
        }
    }

    fn store(m: &Metrics) -> Arc<GraphStore> {
        m.service_graph.as_ref().expect("registered").store()
    }

    /// The value of the sample of `name` whose labels contain all of `labels`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn a_pair_is_one_request_named_by_both_services_in_either_order() {
        let now = Instant::now();
        let mut p = Pairer::default();
        // Server first (the usual order: the server answers before the client reads).
        assert_eq!(
            p.push(&span(SpanKind::Server, 2, "back", 40000, 500), now),
            None
        );
        let r = p
            .push(&span(SpanKind::Client, 1, "front", 40000, 500), now)
            .expect("paired");
        assert_eq!(
            r.key.labels(),
            EdgeLabels {
                client: "front".into(),
                client_namespace: "shop".into(),
                server: "back".into(),
                server_namespace: "shop".into(),
                connection_type: String::new(),
            }
        );
        // Both ends failed: one failure.
        assert!(r.failed);
        assert_eq!((r.client, r.server), (Some((1, 0.003)), Some((2, 0.003))));
        assert_eq!(r.counting_pid(), 2);
        // Client first.
        assert_eq!(
            p.push(&span(SpanKind::Client, 1, "front", 40001, 200), now),
            None
        );
        let r = p
            .push(&span(SpanKind::Server, 2, "back", 40001, 200), now)
            .expect("paired");
        assert_eq!(
            (
                r.key.labels().client.as_str(),
                r.key.labels().server.as_str()
            ),
            ("front", "back")
        );
        assert!(!r.failed);
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_client_4xx_fails_the_pair_though_the_server_span_did_not() {
        let now = Instant::now();
        let mut p = Pairer::default();
        p.push(&span(SpanKind::Server, 2, "back", 40000, 404), now);
        let r = p.push(&span(SpanKind::Client, 1, "front", 40000, 404), now);
        assert!(r.expect("paired").failed);
    }

    #[test]
    fn keep_alive_requests_pair_in_order_and_other_connections_do_not_mix() {
        let now = Instant::now();
        let mut p = Pairer::default();
        for _ in 0..3 {
            assert!(
                p.push(&span(SpanKind::Server, 2, "back", 40000, 200), now)
                    .is_none()
            );
        }
        // Another connection's client span does not take them.
        assert!(
            p.push(&span(SpanKind::Client, 1, "front", 40009, 200), now)
                .is_none()
        );
        for _ in 0..3 {
            assert!(
                p.push(&span(SpanKind::Client, 1, "front", 40000, 200), now)
                    .is_some()
            );
        }
        assert_eq!(p.held(), 1);
    }

    #[test]
    fn an_unpaired_client_span_names_the_peer_address_as_a_virtual_node() {
        let now = Instant::now();
        let mut p = Pairer::default();
        let mut s = span(SpanKind::Client, 1, "front", 40000, 503);
        s.server_address = Address(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))));
        assert!(p.push(&s, now).is_none());
        let mut out = Vec::new();
        p.expire(Some(now + PAIRING_WINDOW / 2), &mut out);
        assert!(out.is_empty(), "still waiting");
        p.expire(Some(now + PAIRING_WINDOW), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].key.labels(),
            EdgeLabels {
                client: "front".into(),
                client_namespace: "shop".into(),
                server: "10.0.0.9".into(),
                server_namespace: String::new(),
                connection_type: VIRTUAL_NODE.into(),
            }
        );
        assert!(out[0].failed);
        assert_eq!((out[0].client, out[0].server), (Some((1, 0.003)), None));
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn an_unpaired_server_span_names_the_caller_address() {
        let mut p = Pairer::default();
        let mut s = span(SpanKind::Server, 2, "back", 40000, 200);
        // A dual-stack socket sees the IPv4 caller as IPv4-mapped IPv6: shown as IPv4.
        s.client_address = Address(Some(IpAddr::V6(
            Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped(),
        )));
        p.push(&s, Instant::now());
        let mut out = Vec::new();
        p.expire(None, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.labels().client, "10.0.0.7");
        assert_eq!(out[0].key.labels().server, "back");
        assert_eq!(out[0].key.labels().connection_type, VIRTUAL_NODE);
        assert!(!out[0].failed);
        assert_eq!((out[0].client, out[0].server), (None, Some((2, 0.003))));
    }

    #[test]
    fn mapped_and_plain_ipv4_ends_pair() {
        let now = Instant::now();
        let mut p = Pairer::default();
        let mut server = span(SpanKind::Server, 2, "back", 40000, 200);
        let mapped = Address(Some(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())));
        server.client_address = mapped;
        server.server_address = mapped;
        p.push(&server, now);
        assert!(
            p.push(&span(SpanKind::Client, 1, "front", 40000, 200), now)
                .is_some()
        );
    }

    #[test]
    fn database_spans_and_spans_without_a_connection() {
        let mut p = Pairer::default();
        let mut s = span(SpanKind::Client, 1, "front", 40000, 0);
        s.db = Some(Db {
            system: "postgresql",
            operation: Some("SELECT".into()),
            collection: None,
            namespace: None,
            query_text: None,
            error_code: None,
        });
        s.server_address = Address(Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        p.push(&s, Instant::now());
        let mut out = Vec::new();
        p.expire(None, &mut out);
        assert_eq!(out[0].key.labels().server, "::1");
        assert_eq!(out[0].key.labels().connection_type, "database");
        assert!(
            !out[0].failed,
            "a database span without a status code did not fail"
        );
        // Without a port there is nothing to pair on: counted alone at once.
        let mut s = span(SpanKind::Server, 2, "back", 0, 200);
        s.client_address = Address(None);
        let r = p.push(&s, Instant::now()).expect("alone");
        assert_eq!(r.key.labels().client, "");
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn prometheus_counts_each_request_once_and_leaves_self_references_out() {
        let m = Metrics::with_service_graph("h", true);
        let families = m.service_graph.as_ref();
        let start = Instant::now();
        let mut g = ServiceGraph::new((false, false), start, store(&m));
        // 7 paired requests, 2 failing; 3 to an uninstrumented peer; 1 self reference.
        for i in 0..7u16 {
            let status = if i < 2 { 500 } else { 200 };
            g.record(
                &span(SpanKind::Server, 2, "back", 40000 + i, status),
                start,
                families,
                None,
                &ProcessResource::bare,
            );
            g.record(
                &span(SpanKind::Client, 1, "front", 40000 + i, status),
                start,
                families,
                None,
                &ProcessResource::bare,
            );
        }
        for i in 0..3u16 {
            let mut s = span(SpanKind::Client, 1, "front", 41000 + i, 200);
            s.server_port = 9999;
            g.record(&s, start, families, None, &ProcessResource::bare);
        }
        g.record(
            &span(SpanKind::Server, 2, "back", 42000, 200),
            start,
            families,
            None,
            &ProcessResource::bare,
        );
        g.record(
            &span(SpanKind::Client, 3, "back", 42000, 200),
            start,
            families,
            None,
            &ProcessResource::bare,
        );
        assert_eq!(g.waiting(), 3);
        g.expire(
            Some(start + PAIRING_WINDOW),
            families,
            None,
            &ProcessResource::bare,
        );
        assert_eq!(g.waiting(), 0);
        let text = m.encode();
        let pair = [
            "client=\"front\"",
            "server=\"back\"",
            "client_namespace=\"shop\"",
            "connection_type=\"\"",
        ];
        assert_eq!(
            sample(&text, "traces_service_graph_request_total", &pair),
            Some(7.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "traces_service_graph_request_failed_total", &pair),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_client_seconds_count",
                &pair
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_server_seconds_count",
                &pair
            ),
            Some(7.0)
        );
        let virt = [
            "client=\"front\"",
            "server=\"127.0.0.1\"",
            "connection_type=\"virtual_node\"",
        ];
        assert_eq!(
            sample(&text, "traces_service_graph_request_total", &virt),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_client_seconds_count",
                &virt
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_server_seconds_count",
                &virt
            ),
            Some(0.0)
        );
        assert!(
            !text.contains("client=\"back\""),
            "self reference counted:\n{text}"
        );
        // Idle series leave after the TTL.
        g.expire(
            Some(start + SERIES_TTL + PAIRING_WINDOW),
            families,
            None,
            &ProcessResource::bare,
        );
        let text = m.encode();
        assert!(
            !text.contains("traces_service_graph_request_total{"),
            "{text}"
        );
    }

    #[test]
    fn self_references_count_when_allowed() {
        let m = Metrics::with_service_graph("h", true);
        let now = Instant::now();
        let mut g = ServiceGraph::new((true, false), now, store(&m));
        g.record(
            &span(SpanKind::Server, 2, "same", 40000, 200),
            now,
            m.service_graph.as_ref(),
            None,
            &ProcessResource::bare,
        );
        g.record(
            &span(SpanKind::Client, 3, "same", 40000, 200),
            now,
            m.service_graph.as_ref(),
            None,
            &ProcessResource::bare,
        );
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_total",
                &["client=\"same\"", "server=\"same\""]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn off_registers_nothing() {
        let text = Metrics::new("h").encode();
        assert!(!text.contains("traces_service_graph"), "{text}");
        assert!(!text.contains("service_graph"), "{text}");
        let on = Metrics::with_service_graph("h", true).encode();
        // Families without series print nothing; the feature's own counter shows it is on.
        assert!(
            on.contains("sonde_service_graph_edges_dropped_total 0"),
            "{on}"
        );
    }

    /// Counts one request of front (pid 1) → back (pid 2) on `port`: a client span of
    /// `client_ms` and a server span of `server_ms`, both with `status`.
    pub(crate) fn pair(
        g: &mut ServiceGraph,
        f: Option<&GraphFamilies>,
        port: u16,
        (client_ms, server_ms): (u64, u64),
        status: u16,
        now: Instant,
    ) {
        let mut server = span(SpanKind::Server, 2, "back", port, status);
        server.duration_ns = server_ms * 1_000_000;
        let mut client = span(SpanKind::Client, 1, "front", port, status);
        client.duration_ns = client_ms * 1_000_000;
        g.record(&server, now, f, None, &ProcessResource::bare);
        g.record(&client, now, f, None, &ProcessResource::bare);
    }

    #[test]
    fn prometheus_shows_exact_buckets_and_sums() {
        let m = Metrics::with_service_graph("h", true);
        let f = m.service_graph.as_ref();
        let now = Instant::now();
        let mut g = ServiceGraph::new((false, false), now, store(&m));
        // Client durations 4, 20, 20 and 300 ms; server durations 1, 1, 9 and 11000 ms.
        for (i, d) in [(4, 1), (20, 1), (20, 9), (300, 11_000)]
            .into_iter()
            .enumerate()
        {
            pair(&mut g, f, 40000 + i as u16, d, 200, now);
        }
        let text = m.encode();
        let pair_labels = [
            "client=\"front\"",
            "server=\"back\"",
            "connection_type=\"\"",
        ];
        let bucket = |h: &str, le: &str| {
            let le = format!("le=\"{le}\"");
            sample(
                &text,
                &format!("traces_service_graph_request_{h}_seconds_bucket"),
                &[&pair_labels[..], &[le.as_str()]].concat(),
            )
        };
        // Cumulative buckets.
        assert_eq!(bucket("client", "0.0"), Some(0.0), "{text}");
        assert_eq!(bucket("client", "0.005"), Some(1.0));
        assert_eq!(bucket("client", "0.025"), Some(3.0));
        assert_eq!(bucket("client", "0.25"), Some(3.0));
        assert_eq!(bucket("client", "0.5"), Some(4.0));
        assert_eq!(bucket("client", "+Inf"), Some(4.0));
        assert_eq!(bucket("server", "0.005"), Some(2.0));
        assert_eq!(bucket("server", "0.01"), Some(3.0));
        assert_eq!(bucket("server", "10.0"), Some(3.0));
        assert_eq!(bucket("server", "+Inf"), Some(4.0));
        let sum = |h: &str| {
            sample(
                &text,
                &format!("traces_service_graph_request_{h}_seconds_sum"),
                &pair_labels,
            )
            .expect("sum")
        };
        assert!((sum("client") - 0.344).abs() < 1e-9, "{text}");
        assert!((sum("server") - 11.011).abs() < 1e-9, "{text}");
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_failed_total",
                &pair_labels
            ),
            Some(0.0)
        );
        // The families as before: HELP, TYPE and UNIT lines, in both formats.
        for line in [
            "# HELP traces_service_graph_request number of service calls in trace service graph metrics format",
            "# TYPE traces_service_graph_request counter",
            "# TYPE traces_service_graph_request_client_seconds histogram",
            "# UNIT traces_service_graph_request_client_seconds seconds",
            "# HELP traces_service_graph_request_server_seconds duration of server service calls, in seconds, in trace service graph metrics format",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        let classic = m.encode_classic();
        assert!(
            classic
                .lines()
                .any(|l| l == "# TYPE traces_service_graph_request_failed_total counter"),
            "{classic}"
        );
    }

    #[test]
    fn a_departed_process_leaves_its_counts_in_prometheus_and_its_cells_to_otlp() {
        let m = Metrics::with_service_graph("h", true);
        let f = m.service_graph.as_ref();
        let now = Instant::now();
        let st = store(&m);
        let mut g = ServiceGraph::new((false, false), now, Arc::clone(&st));
        for i in 0..3 {
            pair(&mut g, f, 40000 + i, (5, 2), 500, now);
        }
        // The counts go to the server's cell; the client's cell has its durations only.
        let server = st.cells(2);
        assert_eq!(server.len(), 1);
        let s = server[0].snapshot();
        assert_eq!(
            (s.total, s.failed, s.server.count(), s.client.count()),
            (3, 3, 3, 0)
        );
        let client = st.cells(1);
        assert_eq!(client.len(), 1);
        let c = client[0].snapshot();
        assert_eq!(
            (c.total, c.failed, c.server.count(), c.client.count()),
            (0, 0, 0, 3)
        );
        // The server process goes away; a new one of the same service takes over.
        g.forget(2);
        assert!(st.cells(2).is_empty());
        let mut server = span(SpanKind::Server, 5, "back", 41000, 200);
        server.duration_ns = 1_000_000;
        g.record(&server, now, f, None, &ProcessResource::bare);
        g.record(
            &span(SpanKind::Client, 1, "front", 41000, 200),
            now,
            f,
            None,
            &ProcessResource::bare,
        );
        let text = m.encode();
        let labels = ["client=\"front\"", "server=\"back\""];
        assert_eq!(
            sample(&text, "traces_service_graph_request_total", &labels),
            Some(4.0),
            "never backwards: {text}"
        );
        assert_eq!(
            sample(&text, "traces_service_graph_request_failed_total", &labels),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_server_seconds_count",
                &labels
            ),
            Some(4.0)
        );
        assert_eq!(st.cells(5)[0].snapshot().total, 1);
        assert_eq!(st.cells(1)[0].snapshot().client.count(), 4);
    }

    #[test]
    fn an_idle_edge_leaves_both_outputs_after_its_ttl() {
        let m = Metrics::with_service_graph("h", true);
        let f = m.service_graph.as_ref();
        let start = Instant::now();
        let st = store(&m);
        let mut g = ServiceGraph::new((false, false), start, Arc::clone(&st));
        pair(&mut g, f, 40000, (5, 2), 200, start);
        let later = start + SERIES_TTL / 2;
        let mut other = span(SpanKind::Server, 2, "back", 40001, 200);
        other.client_address = Address(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))));
        other.client_port = 0;
        g.record(&other, later, f, None, &ProcessResource::bare);
        let cells = st.cells(2);
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|c| c.edge.is_live()));
        g.expire(Some(start + SERIES_TTL), f, None, &ProcessResource::bare);
        assert_eq!(st.len(), 1, "front → back idle for the TTL");
        assert!(!cells[0].edge.is_live(), "OTLP drops its cells");
        assert!(cells[1].edge.is_live());
        let text = m.encode();
        assert!(!text.contains("client=\"front\""), "{text}");
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_total",
                &["client=\"10.0.0.7\""]
            ),
            Some(1.0)
        );
        // Back after it left: counted from zero.
        pair(&mut g, f, 40002, (5, 2), 200, start + SERIES_TTL);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_total",
                &["client=\"front\""]
            ),
            Some(1.0)
        );
    }
}
