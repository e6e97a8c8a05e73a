//! Completes exchanges from the kernel's records. The kernel emits an `HttpEvent` as soon as a
//! response starts and sends any later response bytes, and the connection's close, as small
//! `ExchangeUpdate`s (see `sonde_schema::HttpEvent`). This module holds each event until its
//! exchange is known to be over: the next request on the same connection, a close notice, or
//! `hold` without news (an idle keep-alive connection). Held exchanges are bounded; past the
//! bound an event is completed at once with the response bytes seen so far.

use std::time::{Duration, Instant};

use sonde_schema::{
    CheckedHttpEvent, EVENT_CONN_CLOSED, EVENT_REQUEST_MORE, FLAG_CLOSED, FLAG_NO_RESPONSE,
    HttpEvent, Record,
};

use crate::prehashed::PrehashedMap;

/// How long an exchange waits for more response bytes before it is considered complete.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(500);
/// Most exchanges held at once (one per open connection with a response under way).
pub const DEFAULT_MAX_HELD: usize = 65_536;

// Connection ids are random (the kernel draws them from its PRNG; traffic cannot choose
// them), so they are their own hash: no SipHash per event.
type ConnIdMap<V> = PrehashedMap<V>;

struct Held {
    event: HttpEvent,
    last_news: Instant,
}

/// Exchanges whose response may still grow, by connection id.
pub struct Assembler {
    held: ConnIdMap<Held>,
    hold: Duration,
    max_held: usize,
    /// Response-byte or close records for an exchange no longer held.
    pub late_updates: u64,
    /// Exchanges completed at once because the table of held exchanges was full.
    pub completed_early: u64,
}

impl Assembler {
    pub fn new(hold: Duration, max_held: usize) -> Assembler {
        Assembler {
            held: ConnIdMap::default(),
            hold,
            max_held,
            late_updates: 0,
            completed_early: 0,
        }
    }

    /// Exchanges currently held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes one request's event, a ring-buffer record checked in place; every exchange it
    /// completes is passed to `done`. The record is copied once, into its connection's slot.
    pub fn feed_http(
        &mut self,
        event: CheckedHttpEvent<'_>,
        now: Instant,
        mut done: impl FnMut(&HttpEvent),
    ) {
        let (conn_id, flags) = (event.conn_id, event.flags);
        // A new request on the connection: the previous exchange is over. Its slot takes the
        // new event in place (no removal and insertion: this runs once per request).
        if let Some(previous) = self.held.get_mut(&conn_id) {
            done(&previous.event);
            if flags & FLAG_NO_RESPONSE == 0 {
                event.write_to(&mut previous.event);
                previous.last_news = now;
                return;
            }
            self.held.remove(&conn_id);
        }
        if flags & FLAG_NO_RESPONSE != 0 {
            done(&event.to_event());
        } else if self.held.len() >= self.max_held {
            self.completed_early += 1;
            done(&event.to_event());
        } else {
            let held = self.held.entry(conn_id).or_insert(Held {
                event: HttpEvent::zeroed(),
                last_news: now,
            });
            event.write_to(&mut held.event);
        }
    }

    /// Takes one decoded record; every exchange it completes is passed to `done`.
    pub fn feed(&mut self, record: Record<'_>, now: Instant, mut done: impl FnMut(&HttpEvent)) {
        match record {
            Record::Http(event) => self.feed_http(event.as_checked(), now, done),
            Record::Update(update) if update.kind == EVENT_CONN_CLOSED => {
                if let Some(mut held) = self.held.remove(&update.conn_id) {
                    held.event.flags |= FLAG_CLOSED;
                    done(&held.event);
                }
            }
            Record::Update(update) if update.kind == EVENT_REQUEST_MORE => {
                match self.held.get_mut(&update.conn_id) {
                    Some(held) => {
                        held.event.request_bytes =
                            held.event.request_bytes.saturating_add(update.bytes);
                        held.last_news = now;
                    }
                    None => self.late_updates += 1,
                }
            }
            Record::Update(update) => match self.held.get_mut(&update.conn_id) {
                Some(held) => {
                    held.event.response_bytes =
                        held.event.response_bytes.saturating_add(update.bytes);
                    held.event.end_ns = held.event.end_ns.max(update.end_ns);
                    held.last_news = now;
                }
                None => self.late_updates += 1,
            },
            // A TLS connection's endpoints, learned after its first exchange went out.
            Record::Tuple(t) => {
                if let Some(held) = self.held.get_mut(&t.conn_id)
                    && held.event.family == 0
                {
                    let e = &mut held.event;
                    e.family = t.family;
                    e.local_port = t.local_port;
                    e.peer_port = t.peer_port;
                    e.local_addr = t.local_addr;
                    e.peer_addr = t.peer_addr;
                }
            }
            // Stream chunks belong to `protocols::streams`; the pipeline never sends them here.
            Record::Chunk(..) | Record::Thread(_) => {}
        }
    }

    /// Completes every exchange without news for `hold`.
    pub fn expire(&mut self, now: Instant, mut done: impl FnMut(&HttpEvent)) {
        let hold = self.hold;
        self.held.retain(|_, held| {
            if now.saturating_duration_since(held.last_news) >= hold {
                done(&held.event);
                false
            } else {
                true
            }
        });
    }

    /// Completes everything held (at shutdown).
    pub fn finish(&mut self, mut done: impl FnMut(&HttpEvent)) {
        for (_, held) in self.held.drain() {
            done(&held.event);
        }
    }
}

#[cfg(test)]
mod tests {
    use sonde_schema::{EVENT_HTTP, EVENT_RESPONSE_MORE, ExchangeUpdate};

    use super::*;

    fn event(conn_id: u64, response_bytes: u64) -> HttpEvent {
        let mut e = HttpEvent::zeroed();
        e.kind = EVENT_HTTP;
        e.conn_id = conn_id;
        e.response_bytes = response_bytes;
        e.end_ns = 100;
        e
    }

    fn update(kind: u8, conn_id: u64, bytes: u64, end_ns: u64) -> Record<'static> {
        Record::Update(ExchangeUpdate {
            kind,
            _pad: [0; 3],
            pid: 1,
            conn_id,
            bytes,
            end_ns,
        })
    }

    fn collect(out: &mut Vec<(u64, u64, u64, u32)>) -> impl FnMut(&HttpEvent) + '_ {
        |e| out.push((e.conn_id, e.response_bytes, e.end_ns, e.flags))
    }

    #[test]
    fn later_response_bytes_are_added_until_the_next_request() {
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let t = Instant::now();
        a.feed(Record::Http(event(7, 100)), t, collect(&mut out));
        a.feed(
            update(EVENT_RESPONSE_MORE, 7, 1000, 250),
            t,
            collect(&mut out),
        );
        a.feed(
            update(EVENT_RESPONSE_MORE, 7, 24, 300),
            t,
            collect(&mut out),
        );
        assert!(out.is_empty());
        a.feed(Record::Http(event(7, 50)), t, collect(&mut out));
        assert_eq!(out, vec![(7, 1124, 300, 0)]);
        assert_eq!(a.held(), 1);
    }

    #[test]
    fn response_bytes_saturate_instead_of_overflowing() {
        // Found by the event_to_span fuzzer: record fields are untrusted.
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let t = Instant::now();
        a.feed(Record::Http(event(9, u64::MAX - 1)), t, collect(&mut out));
        a.feed(update(EVENT_RESPONSE_MORE, 9, 10, 1), t, collect(&mut out));
        a.finish(collect(&mut out));
        assert_eq!(out, vec![(9, u64::MAX, 100, 0)]);
    }

    #[test]
    fn a_late_tuple_fills_the_held_exchange() {
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let t = Instant::now();
        a.feed(Record::Http(event(4, 10)), t, |_| {});
        let tuple = sonde_schema::ConnTuple {
            kind: sonde_schema::EVENT_CONN_TUPLE,
            _pad: 0,
            family: 2,
            pid: 1,
            conn_id: 4,
            local_port: 8443,
            peer_port: 5000,
            _pad2: 0,
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            peer_addr: [0; 16],
        };
        a.feed(Record::Tuple(tuple), t, |_| {});
        a.finish(|e| out.push((e.family, e.local_port, e.peer_port)));
        assert_eq!(out, vec![(2, 8443, 5000)]);
    }

    #[test]
    fn request_bytes_read_after_the_response_started_are_added() {
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let t = Instant::now();
        let mut e = event(6, 10);
        e.request_bytes = 100;
        a.feed(Record::Http(e), t, |_| {});
        a.feed(update(EVENT_REQUEST_MORE, 6, 2000, 300), t, |_| {});
        a.finish(|e| out.push(e.request_bytes));
        assert_eq!(out, vec![2100]);
    }

    #[test]
    fn close_completes_and_marks() {
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let t = Instant::now();
        a.feed(Record::Http(event(1, 10)), t, collect(&mut out));
        a.feed(update(EVENT_CONN_CLOSED, 1, 0, 500), t, collect(&mut out));
        assert_eq!(out, vec![(1, 10, 100, FLAG_CLOSED)]);
        // A second close, or bytes after it, find nothing held.
        a.feed(update(EVENT_RESPONSE_MORE, 1, 5, 600), t, collect(&mut out));
        assert_eq!(a.late_updates, 1);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn no_response_events_go_out_at_once() {
        let mut a = Assembler::new(DEFAULT_HOLD, 10);
        let mut out = Vec::new();
        let mut e = event(3, 0);
        e.flags = FLAG_NO_RESPONSE | FLAG_CLOSED;
        a.feed(Record::Http(e), Instant::now(), collect(&mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn idle_exchanges_expire_after_the_hold() {
        let mut a = Assembler::new(Duration::from_millis(100), 10);
        let mut out = Vec::new();
        let t = Instant::now();
        a.feed(Record::Http(event(1, 10)), t, collect(&mut out));
        a.feed(
            Record::Http(event(2, 20)),
            t + Duration::from_millis(80),
            collect(&mut out),
        );
        a.expire(t + Duration::from_millis(120), collect(&mut out));
        assert_eq!(out, vec![(1, 10, 100, 0)]);
        a.finish(collect(&mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn the_bound_completes_new_exchanges_early() {
        let mut a = Assembler::new(DEFAULT_HOLD, 2);
        let mut out = Vec::new();
        let t = Instant::now();
        for id in 0..5 {
            a.feed(Record::Http(event(id, 1)), t, collect(&mut out));
        }
        assert_eq!(a.held(), 2);
        assert_eq!(out.len(), 3);
        assert_eq!(a.completed_early, 3);
    }
}
