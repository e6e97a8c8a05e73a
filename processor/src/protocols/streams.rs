//! Connections whose exchanges are multiplexed (HTTP/2 today): the kernel sends their bytes as
//! stream chunks, in syscall order, and this table keeps one protocol state machine per
//! connection, fed chunk by chunk, until the connection closes. Bounded: past `max_conns` the
//! least recently active connection is dropped (its open streams completed, marked), and a
//! connection without traffic for `idle` is dropped too (its close notice may have been lost).

use std::time::{Duration, Instant};

use serde::Serialize;
use sonde_schema::{CHUNK_MIDSTREAM, CHUNK_TLS, ChunkHeader, ConnTuple, FLOW_INBOUND, protocol};

use super::http2;
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

struct Tracked {
    meta: ConnMeta,
    conn: http2::Connection,
    last_seen: Instant,
}

/// Counters of the multiplexed-connection table, with the HTTP/2 parser's own summed over
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
    /// The HTTP/2 parser's counters over all connections.
    pub http2: http2::Counters,
}

/// Tracked multiplexed connections, by connection id.
pub struct StreamTable {
    conns: PrehashedMap<Tracked>,
    max_conns: usize,
    idle: Duration,
    /// Parser counters of connections already dropped.
    retired: http2::Counters,
    stats: StreamStats,
    scratch: Vec<http2::Exchange>,
}

impl StreamTable {
    pub fn new(max_conns: usize, idle: Duration) -> StreamTable {
        StreamTable {
            conns: PrehashedMap::default(),
            max_conns,
            idle,
            retired: http2::Counters::default(),
            stats: StreamStats::default(),
            scratch: Vec::new(),
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// True when `conn_id` is a tracked multiplexed connection.
    pub fn tracks(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    /// Feeds one chunk; every exchange it completes goes to `done`.
    pub fn feed(
        &mut self,
        h: &ChunkHeader,
        payload: &[u8],
        now: Instant,
        mut done: impl FnMut(&ConnMeta, &http2::Exchange),
    ) {
        if h.protocol != protocol::HTTP2 {
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
                inbound = h.flow == FLOW_INBOUND,
                bytes = h.total,
                "multiplexed connection tracked"
            );
            let mut conn = http2::Connection::new(http2::Limits::default());
            if midstream {
                conn.picked_up_mid_stream();
            }
            self.conns.insert(
                h.conn_id,
                Tracked {
                    meta: ConnMeta::from_chunk(h),
                    conn,
                    last_seen: now,
                },
            );
        }
        let Some(t) = self.conns.get_mut(&h.conn_id) else {
            return;
        };
        t.last_seen = now;
        t.meta.tid = h.tid;
        let flow = if h.flow == FLOW_INBOUND {
            http2::Flow::Inbound
        } else {
            http2::Flow::Outbound
        };
        self.scratch.clear();
        t.conn
            .feed(flow, payload, h.total, h.ts_ns, &mut self.scratch);
        self.stats.exchanges += self.scratch.len() as u64;
        for ex in &self.scratch {
            done(&t.meta, ex);
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

    /// The connection closed at `end_ns`: its open streams are completed. False when the
    /// connection is not one of this table's.
    pub fn close(
        &mut self,
        conn_id: u64,
        end_ns: u64,
        mut done: impl FnMut(&ConnMeta, &http2::Exchange),
    ) -> bool {
        let Some(t) = self.conns.remove(&conn_id) else {
            return false;
        };
        self.retire(t, end_ns, &mut done);
        true
    }

    /// Forgets connections silent for longer than the idle limit.
    pub fn expire(&mut self, now: Instant, mut done: impl FnMut(&ConnMeta, &http2::Exchange)) {
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
                let end = t.conn.last_ts_ns();
                self.retire(t, end, &mut done);
            }
        }
    }

    /// Completes every tracked connection (at shutdown).
    pub fn finish(&mut self, mut done: impl FnMut(&ConnMeta, &http2::Exchange)) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.conns.remove(&id) {
                let end = t.conn.last_ts_ns();
                self.retire(t, end, &mut done);
            }
        }
    }

    /// The table's counters, the parser's summed over live and dropped connections.
    pub fn stats(&self) -> StreamStats {
        let mut stats = self.stats.clone();
        stats.http2 = self.retired.clone();
        for t in self.conns.values() {
            stats.http2.add(t.conn.counters());
        }
        stats
    }

    fn evict_oldest(&mut self, done: &mut impl FnMut(&ConnMeta, &http2::Exchange)) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(id, _)| *id);
        if let Some(t) = oldest.and_then(|id| self.conns.remove(&id)) {
            self.stats.connections_evicted += 1;
            let end = t.conn.last_ts_ns();
            self.retire(t, end, done);
        }
    }

    fn retire(
        &mut self,
        mut t: Tracked,
        end_ns: u64,
        done: &mut impl FnMut(&ConnMeta, &http2::Exchange),
    ) {
        self.scratch.clear();
        t.conn.close(end_ns, &mut self.scratch);
        self.stats.exchanges += self.scratch.len() as u64;
        for ex in &self.scratch {
            done(&t.meta, ex);
        }
        self.retired.add(t.conn.counters());
    }
}
