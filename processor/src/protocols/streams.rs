//! Connections the kernel sends as stream chunks (their bytes, in syscall order): HTTP/2, and
//! "other TCP", which this table classifies from its first bytes (Memcached, Redis,
//! PostgreSQL, MySQL, Kafka; anything else is counted and ignored). It keeps one protocol state machine per connection, fed chunk
//! by chunk, until the connection closes. Bounded: past `max_conns` the
//! least recently active connection is dropped (its open streams completed, marked), and a
//! connection without traffic for `idle` is dropped too (its close notice may have been lost).

use std::time::{Duration, Instant};

use serde::Serialize;
use sonde_schema::{
    CHUNK_FIRST, CHUNK_MIDSTREAM, CHUNK_TLS, ChunkHeader, ConnTuple, FLOW_INBOUND, protocol,
};

use super::{
    db::DbExchange, http2, http2::Flow, kafka, memcached, messaging::MessagingExchange, mysql,
    postgres, redis,
};
use crate::prehashed::PrehashedMap;

/// Most multiplexed connections tracked at once.
pub const DEFAULT_MAX_CONNS: usize = 16_384;
/// A connection silent this long is forgotten (its open streams end, marked closed).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// The endpoints and owner of a tracked connection, from its chunks.
#[derive(Debug, Clone, Copy)]
pub struct ConnMeta {
    pub pid: u32,
    /// The thread of the connection's most recent chunk.
    pub tid: u32,
    pub family: u16,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    /// The bytes are a TLS connection's plaintext.
    pub tls: bool,
}

impl ConnMeta {
    fn from_chunk(h: &ChunkHeader) -> ConnMeta {
        ConnMeta {
            pid: h.pid,
            tid: h.tid,
            family: h.family,
            local_addr: h.local_addr,
            peer_addr: h.peer_addr,
            local_port: h.local_port,
            peer_port: h.peer_port,
            tls: h.flags & CHUNK_TLS != 0,
        }
    }
}

/// Counters of the stream-connection table, with the HTTP/2 parser's own summed over
/// every connection it has tracked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StreamStats {
    /// Connections tracked since start.
    pub connections: u64,
    /// Of those, picked up mid-stream (no preface seen: header compression state unknown).
    pub connections_midstream: u64,
    /// Connections dropped because the table was full (least recently active first).
    pub connections_evicted: u64,
    /// Connections forgotten after `DEFAULT_IDLE` without traffic.
    pub connections_idle: u64,
    /// Chunks for a protocol this processor does not know.
    pub unknown_protocol: u64,
    /// Exchanges (streams) completed.
    pub exchanges: u64,
    /// "Other TCP" connections by what they turned out to be.
    pub redis_connections: u64,
    pub postgres_connections: u64,
    pub mysql_connections: u64,
    pub memcached_connections: u64,
    pub kafka_connections: u64,
    /// Other TCP connections whose first bytes matched no protocol Sonde parses (counted,
    /// never parsed further).
    pub unclassified_connections: u64,
    /// Database and cache operations completed.
    pub db_exchanges: u64,
    /// Messaging requests (Kafka) completed.
    pub messaging_exchanges: u64,
    /// The HTTP/2 parser's counters over all connections.
    pub http2: http2::Counters,
    pub redis: redis::Counters,
    pub postgres: postgres::Counters,
    pub mysql: mysql::Counters,
    pub memcached: memcached::Counters,
    pub kafka: kafka::Counters,
}

/// What a connection's chunks are parsed as.
enum Tracker {
    Http2(Box<http2::Connection>),
    Redis(Box<redis::Connection>),
    Postgres(Box<postgres::Connection>),
    Mysql(Box<mysql::Connection>),
    Memcached(Box<memcached::Connection>),
    Kafka(Box<kafka::Connection>),
    /// Other TCP not recognised yet: the first few chunks with bytes are tried (a connection
    /// picked up mid-stream may show a reply before its next command).
    Classifying {
        tries: u8,
        fresh: bool,
    },
    /// Other TCP of a protocol Sonde does not parse.
    Unclassified,
}

/// Chunks with bytes tried before an "other TCP" connection is given up as unclassified.
const CLASSIFY_TRIES: u8 = 8;

/// One completed exchange of a stream connection, by protocol.
pub enum StreamExchange<'a> {
    Http2(&'a http2::Exchange),
    Db(&'a DbExchange),
    Messaging(&'a MessagingExchange),
}

struct Tracked {
    meta: ConnMeta,
    tracker: Tracker,
    last_seen: Instant,
    /// CLOCK_MONOTONIC ns of its latest chunk.
    last_ts: u64,
}

/// Tracked stream connections, by connection id.
pub struct StreamTable {
    conns: PrehashedMap<Tracked>,
    max_conns: usize,
    idle: Duration,
    /// Parser counters of connections already dropped.
    retired: StreamStats,
    stats: StreamStats,
    h2_scratch: Vec<http2::Exchange>,
    db_scratch: Vec<DbExchange>,
    messaging_scratch: Vec<MessagingExchange>,
}

impl StreamTable {
    pub fn new(max_conns: usize, idle: Duration) -> StreamTable {
        StreamTable {
            conns: PrehashedMap::default(),
            max_conns,
            idle,
            retired: StreamStats::default(),
            stats: StreamStats::default(),
            h2_scratch: Vec::new(),
            db_scratch: Vec::new(),
            messaging_scratch: Vec::new(),
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// True when `conn_id` is a tracked stream connection.
    pub fn tracks(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    /// Feeds one chunk; every exchange it completes goes to `done`.
    pub fn feed(
        &mut self,
        h: &ChunkHeader,
        payload: &[u8],
        now: Instant,
        mut done: impl FnMut(&ConnMeta, StreamExchange<'_>),
    ) {
        if h.protocol != protocol::HTTP2 && h.protocol != protocol::OTHER {
            self.stats.unknown_protocol += 1;
            return;
        }
        if !self.conns.contains_key(&h.conn_id) {
            if self.conns.len() >= self.max_conns {
                self.evict_oldest(&mut done);
            }
            self.stats.connections += 1;
            let midstream = h.flags & CHUNK_MIDSTREAM != 0;
            self.stats.connections_midstream += u64::from(midstream);
            tracing::debug!(
                conn_id = h.conn_id,
                pid = h.pid,
                local_port = h.local_port,
                peer_port = h.peer_port,
                flags = h.flags,
                protocol = h.protocol,
                inbound = h.flow == FLOW_INBOUND,
                bytes = h.total,
                "stream connection tracked"
            );
            let tracker = if h.protocol == protocol::HTTP2 {
                let mut conn = http2::Connection::new(http2::Limits::default());
                if midstream {
                    conn.picked_up_mid_stream();
                }
                Tracker::Http2(Box::new(conn))
            } else {
                Tracker::Classifying {
                    tries: 0,
                    fresh: h.flags & CHUNK_FIRST != 0,
                }
            };
            self.conns.insert(
                h.conn_id,
                Tracked {
                    meta: ConnMeta::from_chunk(h),
                    tracker,
                    last_seen: now,
                    last_ts: h.ts_ns,
                },
            );
        }
        let Some(t) = self.conns.get_mut(&h.conn_id) else {
            return;
        };
        t.last_seen = now;
        t.last_ts = t.last_ts.max(h.ts_ns);
        t.meta.tid = h.tid;
        let flow = if h.flow == FLOW_INBOUND {
            Flow::Inbound
        } else {
            Flow::Outbound
        };
        if let Tracker::Classifying { tries, fresh } = &mut t.tracker
            && !payload.is_empty()
        {
            t.tracker = if let Some(tracker) = classify(flow, payload, *fresh, &mut self.stats) {
                tracker
            } else if *tries + 1 >= CLASSIFY_TRIES {
                self.stats.unclassified_connections += 1;
                Tracker::Unclassified
            } else {
                *tries += 1;
                // Later chunks no longer start the connection.
                *fresh = false;
                return;
            };
        }
        self.h2_scratch.clear();
        self.db_scratch.clear();
        self.messaging_scratch.clear();
        let (total, ts) = (h.total, h.ts_ns);
        match &mut t.tracker {
            Tracker::Http2(c) => c.feed(flow, payload, total, ts, &mut self.h2_scratch),
            Tracker::Redis(c) => c.feed(flow, payload, total, ts, &mut self.db_scratch),
            Tracker::Postgres(c) => c.feed(flow, payload, total, ts, &mut self.db_scratch),
            Tracker::Mysql(c) => c.feed(flow, payload, total, ts, &mut self.db_scratch),
            Tracker::Memcached(c) => c.feed(flow, payload, total, ts, &mut self.db_scratch),
            Tracker::Kafka(c) => c.feed(flow, payload, total, ts, &mut self.messaging_scratch),
            Tracker::Classifying { .. } | Tracker::Unclassified => {}
        }
        Self::hand_on(
            &mut self.stats,
            &self.h2_scratch,
            &self.db_scratch,
            &self.messaging_scratch,
            &t.meta,
            &mut done,
        );
    }

    /// Counts and passes on the exchanges one chunk or close completed.
    fn hand_on(
        stats: &mut StreamStats,
        h2: &[http2::Exchange],
        db: &[DbExchange],
        messaging: &[MessagingExchange],
        meta: &ConnMeta,
        done: &mut impl FnMut(&ConnMeta, StreamExchange<'_>),
    ) {
        stats.exchanges += h2.len() as u64;
        stats.db_exchanges += db.len() as u64;
        stats.messaging_exchanges += messaging.len() as u64;
        for ex in h2 {
            done(meta, StreamExchange::Http2(ex));
        }
        for ex in db {
            done(meta, StreamExchange::Db(ex));
        }
        for ex in messaging {
            done(meta, StreamExchange::Messaging(ex));
        }
    }

    /// A TLS connection's endpoints, learned after its first chunks went out.
    pub fn apply_tuple(&mut self, t: &ConnTuple) {
        if let Some(tracked) = self.conns.get_mut(&t.conn_id)
            && tracked.meta.family == 0
        {
            let m = &mut tracked.meta;
            m.family = t.family;
            m.local_port = t.local_port;
            m.peer_port = t.peer_port;
            m.local_addr = t.local_addr;
            m.peer_addr = t.peer_addr;
        }
    }

    /// The connection closed at `end_ns`: its open exchanges are completed. False when the
    /// connection is not one of this table's.
    pub fn close(
        &mut self,
        conn_id: u64,
        end_ns: u64,
        mut done: impl FnMut(&ConnMeta, StreamExchange<'_>),
    ) -> bool {
        let Some(t) = self.conns.remove(&conn_id) else {
            return false;
        };
        self.retire(t, end_ns, &mut done);
        true
    }

    /// Forgets connections silent for longer than the idle limit.
    pub fn expire(&mut self, now: Instant, mut done: impl FnMut(&ConnMeta, StreamExchange<'_>)) {
        let idle = self.idle;
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_seen) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(t) = self.conns.remove(&id) {
                self.stats.connections_idle += 1;
                let end = t.last_ts;
                self.retire(t, end, &mut done);
            }
        }
    }

    /// Completes every tracked connection (at shutdown).
    pub fn finish(&mut self, mut done: impl FnMut(&ConnMeta, StreamExchange<'_>)) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.conns.remove(&id) {
                let end = t.last_ts;
                self.retire(t, end, &mut done);
            }
        }
    }

    /// The table's counters, the parsers' summed over live and dropped connections.
    pub fn stats(&self) -> StreamStats {
        let mut stats = self.stats.clone();
        stats.http2 = self.retired.http2.clone();
        stats.redis = self.retired.redis.clone();
        stats.postgres = self.retired.postgres.clone();
        stats.mysql = self.retired.mysql.clone();
        stats.memcached = self.retired.memcached.clone();
        stats.kafka = self.retired.kafka.clone();
        for t in self.conns.values() {
            add_counters(&mut stats, &t.tracker);
        }
        stats
    }

    fn evict_oldest(&mut self, done: &mut impl FnMut(&ConnMeta, StreamExchange<'_>)) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(id, _)| *id);
        if let Some(t) = oldest.and_then(|id| self.conns.remove(&id)) {
            self.stats.connections_evicted += 1;
            let end = t.last_ts;
            self.retire(t, end, done);
        }
    }

    fn retire(
        &mut self,
        mut t: Tracked,
        end_ns: u64,
        done: &mut impl FnMut(&ConnMeta, StreamExchange<'_>),
    ) {
        self.h2_scratch.clear();
        self.db_scratch.clear();
        self.messaging_scratch.clear();
        match &mut t.tracker {
            Tracker::Http2(c) => c.close(end_ns, &mut self.h2_scratch),
            Tracker::Redis(c) => c.close(end_ns, &mut self.db_scratch),
            Tracker::Postgres(c) => c.close(end_ns, &mut self.db_scratch),
            Tracker::Mysql(c) => c.close(end_ns, &mut self.db_scratch),
            Tracker::Memcached(c) => c.close(end_ns, &mut self.db_scratch),
            Tracker::Kafka(c) => c.close(end_ns, &mut self.messaging_scratch),
            Tracker::Classifying { .. } | Tracker::Unclassified => {}
        }
        Self::hand_on(
            &mut self.stats,
            &self.h2_scratch,
            &self.db_scratch,
            &self.messaging_scratch,
            &t.meta,
            done,
        );
        add_counters(&mut self.retired, &t.tracker);
    }
}

/// Adds a connection's parser counters to `stats`.
fn add_counters(stats: &mut StreamStats, tracker: &Tracker) {
    match tracker {
        Tracker::Http2(c) => stats.http2.add(c.counters()),
        Tracker::Redis(c) => stats.redis.add(c.counters()),
        Tracker::Postgres(c) => stats.postgres.add(c.counters()),
        Tracker::Mysql(c) => stats.mysql.add(c.counters()),
        Tracker::Memcached(c) => stats.memcached.add(c.counters()),
        Tracker::Kafka(c) => stats.kafka.add(c.counters()),
        Tracker::Classifying { .. } | Tracker::Unclassified => {}
    }
}

/// The tracker for an "other TCP" connection whose chunk on `flow` shows `payload`, when a
/// protocol recognises it. Memcached goes first: its lower-case text commands (`get k`) would
/// also pass for Redis inline commands, which real Redis clients do not send (they write
/// multibulk `*`). The binary protocols check lengths and fields strictly enough not to
/// collide.
fn classify(flow: Flow, payload: &[u8], fresh: bool, stats: &mut StreamStats) -> Option<Tracker> {
    if let Some(request_flow) = memcached::Connection::detect(flow, payload) {
        stats.memcached_connections += 1;
        Some(Tracker::Memcached(Box::new(memcached::Connection::new(
            request_flow,
            fresh,
        ))))
    } else if let Some(request_flow) = redis::Connection::detect(flow, payload) {
        stats.redis_connections += 1;
        Some(Tracker::Redis(Box::new(redis::Connection::new(
            request_flow,
            fresh,
        ))))
    } else if let Some(request_flow) = postgres::Connection::detect(flow, payload) {
        stats.postgres_connections += 1;
        Some(Tracker::Postgres(Box::new(postgres::Connection::new(
            request_flow,
            fresh,
        ))))
    } else if let Some(request_flow) = mysql::Connection::detect(flow, payload) {
        stats.mysql_connections += 1;
        Some(Tracker::Mysql(Box::new(mysql::Connection::new(
            request_flow,
            fresh,
        ))))
    } else if let Some(request_flow) = kafka::Connection::detect(flow, payload) {
        stats.kafka_connections += 1;
        Some(Tracker::Kafka(Box::new(kafka::Connection::new(
            request_flow,
            fresh,
        ))))
    } else {
        None
    }
}
