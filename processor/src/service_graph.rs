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
//! Series idle for `SERIES_TTL` leave the families; at most `MAX_EDGES` edges are kept (new
//! ones beyond are counted in `sonde_service_graph_edges_dropped_total`, not recorded).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter as OtelCounter, Histogram as OtelHistogram, Meter},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    otlp::{Otlp, ProcessResource},
    protocols::{db, grpc},
    semconv::DURATION_BUCKETS,
    span::{Span, SpanKind},
};

/// How long a span waits for the other end of its request. Both ends of a local request
/// reach the processor within milliseconds of each other; the margin covers a busy reader.
pub const PAIRING_WINDOW: Duration = Duration::from_secs(2);
/// A series that counted nothing for this long leaves the families (as the reference
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
    fn otlp_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("client", self.client.clone()),
            KeyValue::new("client_namespace", self.client_namespace.clone()),
            KeyValue::new("server", self.server.clone()),
            KeyValue::new("server_namespace", self.server_namespace.clone()),
            KeyValue::new("connection_type", self.connection_type.clone()),
        ]
    }
}

type Durations = Family<EdgeLabels, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The Prometheus families, registered only when the feature is on.
#[derive(Clone)]
pub struct GraphFamilies {
    total: Family<EdgeLabels, Counter>,
    failed: Family<EdgeLabels, Counter>,
    client: Durations,
    server: Durations,
    /// New edges not recorded because `MAX_EDGES` were kept.
    edges_dropped: Counter,
}

impl GraphFamilies {
    pub fn register(registry: &mut Registry) -> GraphFamilies {
        let f = GraphFamilies {
            total: Family::default(),
            failed: Family::default(),
            client: Family::new_with_constructor(durations as fn() -> Histogram),
            server: Family::new_with_constructor(durations as fn() -> Histogram),
            edges_dropped: Counter::default(),
        };
        registry.register(
            TOTAL,
            "number of service calls in trace service graph metrics format",
            f.total.clone(),
        );
        registry.register(
            FAILED,
            "number of failed service calls in trace service graph metrics format",
            f.failed.clone(),
        );
        registry.register_with_unit(
            CLIENT,
            "duration of client service calls, in seconds, in trace service graph metrics format",
            Unit::Seconds,
            f.client.clone(),
        );
        registry.register_with_unit(
            SERVER,
            "duration of server service calls, in seconds, in trace service graph metrics format",
            Unit::Seconds,
            f.server.clone(),
        );
        registry.register(
            "sonde_service_graph_edges_dropped",
            "Service graph edges not recorded because the most edges Sonde keeps were reached",
            f.edges_dropped.clone(),
        );
        f
    }

    fn remove(&self, labels: &EdgeLabels) {
        self.total.remove(labels);
        self.failed.remove(labels);
        self.client.remove(labels);
        self.server.remove(labels);
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

    /// The process whose OTLP meters count the request (its server's when Sonde saw it, as
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

/// The OTLP instruments of one process.
struct OtlpInstruments {
    total: OtelCounter<u64>,
    failed: OtelCounter<u64>,
    client: OtelHistogram<f64>,
    server: OtelHistogram<f64>,
}

impl OtlpInstruments {
    fn new(meter: &Meter) -> OtlpInstruments {
        let histogram = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        OtlpInstruments {
            total: meter
                .u64_counter("traces_service_graph_request_total")
                .with_description("number of service calls in trace service graph metrics format")
                .build(),
            failed: meter
                .u64_counter("traces_service_graph_request_failed_total")
                .with_description(
                    "number of failed service calls in trace service graph metrics format",
                )
                .build(),
            client: histogram(
                CLIENT,
                "duration of client service calls, in seconds, in trace service graph metrics format",
            ),
            server: histogram(
                SERVER,
                "duration of server service calls, in seconds, in trace service graph metrics format",
            ),
        }
    }
}

/// The handles of one edge.
struct Series {
    labels: EdgeLabels,
    prometheus: Option<(Counter, Counter, Histogram, Histogram)>,
    otlp: Option<Arc<[KeyValue]>>,
    last_used: Instant,
}

/// The service graph of this processor: pairing, and the series requests are counted in.
pub struct ServiceGraph {
    pairer: Pairer,
    /// Whether self references count: (Prometheus, OTLP).
    allow_self_references: (bool, bool),
    series: HashMap<EdgeKey, Series, Hasher>,
    otlp: HashMap<u32, OtlpInstruments>,
    done: Vec<Request>,
    last_sweep: Instant,
}

impl ServiceGraph {
    /// `allow_self_references`: whether edges from a service to itself count in Prometheus
    /// and over OTLP (`*.allow_service_graph_self_references`).
    pub fn new(allow_self_references: (bool, bool), now: Instant) -> ServiceGraph {
        ServiceGraph {
            pairer: Pairer::default(),
            allow_self_references,
            series: HashMap::default(),
            otlp: HashMap::new(),
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
    /// and, once in a while, retires idle series.
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
            self.series.retain(|_, s| {
                let keep = at.duration_since(s.last_used) < SERIES_TTL;
                if !keep && let Some(p) = prometheus {
                    p.remove(&s.labels);
                }
                keep
            });
        }
    }

    /// Drops the OTLP instruments of a process that went away.
    pub fn forget(&mut self, pid: u32) {
        self.otlp.remove(&pid);
        self.pairer.forget(pid);
    }

    fn count(
        &mut self,
        r: Request,
        now: Instant,
        prometheus: Option<&GraphFamilies>,
        otlp: Option<&mut Otlp>,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) {
        let (mut prometheus, mut otlp) = (prometheus, otlp);
        if r.key.is_self_reference() {
            if !self.allow_self_references.0 {
                prometheus = None;
            }
            if !self.allow_self_references.1 {
                otlp = None;
            }
            if prometheus.is_none() && otlp.is_none() {
                return;
            }
        }
        let len = self.series.len();
        let series = match self.series.get_mut(&r.key) {
            Some(s) => s,
            None => {
                if len >= MAX_EDGES {
                    if let Some(p) = prometheus {
                        p.edges_dropped.inc();
                    }
                    return;
                }
                let labels = r.key.labels();
                let s = Series {
                    prometheus: prometheus.map(|p| {
                        (
                            p.total.get_or_create(&labels).clone(),
                            p.failed.get_or_create(&labels).clone(),
                            p.client.get_or_create(&labels).clone(),
                            p.server.get_or_create(&labels).clone(),
                        )
                    }),
                    otlp: otlp.is_some().then(|| labels.otlp_attributes().into()),
                    labels,
                    last_used: now,
                };
                self.series.entry(r.key.clone()).or_insert(s)
            }
        };
        series.last_used = now;
        if let Some((total, failed, client, server)) = &series.prometheus {
            total.inc();
            if r.failed {
                failed.inc();
            }
            if let Some((_, secs)) = r.client {
                client.observe(secs);
            }
            if let Some((_, secs)) = r.server {
                server.observe(secs);
            }
        }
        if let Some(o) = otlp {
            let attrs = series
                .otlp
                .get_or_insert_with(|| series.labels.otlp_attributes().into())
                .clone();
            let counting = r.counting_pid();
            if let Some(i) = Self::instruments(&mut self.otlp, o, counting, meta) {
                i.total.add(1, &attrs);
                if r.failed {
                    i.failed.add(1, &attrs);
                }
            }
            if let Some((pid, secs)) = r.client
                && let Some(i) = Self::instruments(&mut self.otlp, o, pid, meta)
            {
                i.client.record(secs, &attrs);
            }
            if let Some((pid, secs)) = r.server
                && let Some(i) = Self::instruments(&mut self.otlp, o, pid, meta)
            {
                i.server.record(secs, &attrs);
            }
        }
    }

    /// The OTLP instruments of `pid`, made from its meter the first time.
    fn instruments<'i>(
        map: &'i mut HashMap<u32, OtlpInstruments>,
        otlp: &mut Otlp,
        pid: u32,
        meta: &dyn Fn(u32) -> ProcessResource,
    ) -> Option<&'i OtlpInstruments> {
        use std::collections::hash_map::Entry;
        Some(match map.entry(pid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(OtlpInstruments::new(&otlp.meter(&|| meta(pid), pid)?)),
        })
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

    fn no_meta(pid: u32) -> ProcessResource {
        ProcessResource {
            pid,
            service_name: String::new(),
            service_namespace: None,
            exe_path: String::new(),
            k8s: None,
        }
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
        let mut g = ServiceGraph::new((false, false), start);
        // 7 paired requests, 2 failing; 3 to an uninstrumented peer; 1 self reference.
        for i in 0..7u16 {
            let status = if i < 2 { 500 } else { 200 };
            g.record(
                &span(SpanKind::Server, 2, "back", 40000 + i, status),
                start,
                families,
                None,
                &no_meta,
            );
            g.record(
                &span(SpanKind::Client, 1, "front", 40000 + i, status),
                start,
                families,
                None,
                &no_meta,
            );
        }
        for i in 0..3u16 {
            let mut s = span(SpanKind::Client, 1, "front", 41000 + i, 200);
            s.server_port = 9999;
            g.record(&s, start, families, None, &no_meta);
        }
        g.record(
            &span(SpanKind::Server, 2, "back", 42000, 200),
            start,
            families,
            None,
            &no_meta,
        );
        g.record(
            &span(SpanKind::Client, 3, "back", 42000, 200),
            start,
            families,
            None,
            &no_meta,
        );
        assert_eq!(g.waiting(), 3);
        g.expire(Some(start + PAIRING_WINDOW), families, None, &no_meta);
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
            &no_meta,
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
        let mut g = ServiceGraph::new((true, false), now);
        g.record(
            &span(SpanKind::Server, 2, "same", 40000, 200),
            now,
            m.service_graph.as_ref(),
            None,
            &no_meta,
        );
        g.record(
            &span(SpanKind::Client, 3, "same", 40000, 200),
            now,
            m.service_graph.as_ref(),
            None,
            &no_meta,
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
}
