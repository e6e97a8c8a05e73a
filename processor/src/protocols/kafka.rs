//! Kafka connection tracking for a passive observer: turns the bytes one endpoint of a
//! connection read and wrote (the Kafka wire protocol) into one [`MessagingExchange`] per
//! Produce (`publish`), per Fetch (`process`) and per failed Metadata request (`metadata`),
//! whichever end of the connection the
//! instrumented process is (a client: PRODUCER / CONSUMER spans; a selected broker: SERVER
//! spans; see `messaging` for the naming).
//!
//! Every message is a 4-byte big-endian size and that many bytes. A request starts with its
//! header (api key, api version, correlation id, client id; tagged fields in the flexible
//! header v2), a response with the correlation id of its request. Responses are paired by
//! correlation id, not by order alone: requests of other api keys (ApiVersions, Metadata,
//! FindCoordinator, JoinGroup, Heartbeat, OffsetCommit, …) are tracked too and yield no
//! exchange, and a request whose response was lost in uncaptured bytes is given up when a
//! later response arrives (emitted without response, marked partial). A Produce with
//! `acks=0` gets no response at all: its exchange ends with the request and is not an error.
//!
//! What is read: the first topic of a Produce or Fetch request (`messaging.destination.name`;
//! Fetch v13+ names topics by id, resolved through the ids Metadata v10+ responses teach, in
//! a process-wide LRU of [`TOPIC_IDS`] entries; an id never learned leaves the destination
//! absent and the exchange partial), the client id, and the first non-zero error code of
//! the response (Fetch's top-level code, else the per-partition codes in order; Produce's
//! per-partition codes). Error codes name the failure in `error.type` ([`error_name`], the
//! number when the name is not known). A Metadata request yields an exchange (operation
//! `metadata`) only when its response carries a topic error: that is the failure a client meets
//! first (kafka-python asks for metadata before it produces, and never sends a Produce for a
//! topic the broker does not know; tansu 0.6 even accepts a raw Produce to such a topic and
//! answers it with error 0, while its Metadata answers 3, UNKNOWN_TOPIC_OR_PARTITION).
//! Successful Metadata requests are housekeeping and yield none. Every Fetch yields a span,
//! also one that returns no records (a long poll that timed out), as the reference system
//! does: it is an operation the consumer made and waited for.
//!
//! Capture may miss bytes (only the first bytes of a read or write are kept, or the
//! connection is older than Sonde). Every message carries its size, so uncaptured bytes
//! inside a message are skipped by count and only its first [`MAX_KEEP`] bytes are kept to be
//! read; sync is lost only when a size falls into uncaptured bytes, and found again at a
//! later chunk that starts with a plausible request (request direction) or a response to a
//! pending request (response direction), or with a 4-byte chunk and such a start after it:
//! many readers (tansu, the Java broker and clients) read a message's size apart from its
//! body. A connection picked up mid-stream starts that way, and so does the request side of a
//! fresh one: its first request's size may have gone by while the connection was being
//! classified, so a lone request header (with a non-empty client id) is taken too.
//! A connection first seen at a response is not detected reliably ([`Connection::detect`]
//! needs a request header; some responses happen to look like one, and such a connection's
//! flows would be taken the wrong way round: a mid-stream pickup risk only).
//! Nothing of the records (message keys, values, headers) is ever read or kept.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

use super::http2::Flow;
use super::messaging::{MessagingExchange, Operation};

#[cfg(test)]
mod tests;

/// `messaging.system` of every exchange.
pub const SYSTEM: &str = "kafka";

/// Requests waiting for their responses at most.
pub const MAX_PENDING: usize = 1024;
/// Bytes of one message kept to read it (its start: headers, topics, error codes).
pub const MAX_KEEP: usize = 16 * 1024;
/// Topic id → name entries remembered, process-wide (least recently used evicted first).
pub const TOPIC_IDS: usize = 1024;
/// Largest message accepted while in sync (a broker's `socket.request.max.bytes` is 100 MiB
/// by default; fetch responses may be configured larger).
const MAX_MESSAGE_LEN: usize = 1 << 30;
/// Largest request accepted to detect a connection or find sync again.
const MAX_PLAUSIBLE_LEN: usize = 100 << 20;
/// Longest client id accepted by detection, and kept.
const MAX_CLIENT_ID: usize = 256;
/// Kafka topic names are at most 249 bytes.
const MAX_TOPIC_LEN: usize = 249;

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const METADATA: i16 = 3;

/// The highest api version accepted per api key (0..): the versions Kafka 4.x knows, with
/// room for a few more. Keys past the table are not Kafka client requests.
const MAX_VERSION: [i16; 76] = [
    14, 18, 11, 14, 8, 5, 9, 4, 10, 10, // 0-9: Produce … OffsetFetch
    7, 10, 5, 6, 6, 7, 6, 2, 5, 8, // 10-19: FindCoordinator … CreateTopics
    7, 3, 6, 5, 6, 5, 6, 2, 6, 4, // 20-29
    4, 4, 5, 3, 3, 5, 3, 4, 4, 3, // 30-39
    3, 4, 3, 3, 2, 1, 1, 1, 2, 2, // 40-49
    1, 1, 2, 2, 2, 2, 4, 2, 2, 1, // 50-59
    2, 1, 1, 1, 1, 1, 2, 1, 1, 1, // 60-69
    1, 1, 1, 1, 1, 1, // 70-75
];

/// What a connection saw and lost; summed by the caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Requests parsed (every api key).
    pub requests: u64,
    /// Responses parsed.
    pub responses: u64,
    /// Exchanges emitted (Produce, Fetch, and Metadata with an error).
    pub exchanges: u64,
    /// Of those, Produce requests with `acks=0` (no response expected).
    pub fire_and_forget: u64,
    /// Of those, without a response (connection closed first, or it was lost).
    pub no_response: u64,
    /// Of those, marked partial: destination unknown, or the response lost to capture.
    pub partial: u64,
    /// Requests whose response was not seen although a later one was (lost in uncaptured
    /// bytes): emitted without response.
    pub responses_lost: u64,
    /// Responses with no pending request of their correlation id.
    pub orphan_responses: u64,
    /// Requests not tracked: the pending queue was full.
    pub untracked: u64,
    /// Messages too short or with an impossible header (also counted in `desync` when they
    /// cost sync).
    pub malformed: u64,
    /// Message boundaries lost: a size fell into uncaptured bytes, or was impossible.
    pub desync: u64,
    /// Message boundaries found (each connection's first request, and again after a loss).
    pub resyncs: u64,
    /// Chunks skipped while out of sync.
    pub chunks_skipped: u64,
    /// Uncaptured bytes skipped inside messages.
    pub uncaptured_bytes_skipped: u64,
    /// Connections tracked without their start (older than Sonde).
    pub midstream_pickups: u64,
    /// Metadata responses with an error (emitted as `metadata` exchanges).
    pub metadata_errors: u64,
    /// Topic ids learned from Metadata responses.
    pub topic_ids_learned: u64,
    /// Fetch or Produce requests naming a topic id no Metadata response taught.
    pub topic_ids_unknown: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            requests,
            responses,
            exchanges,
            fire_and_forget,
            no_response,
            partial,
            responses_lost,
            orphan_responses,
            untracked,
            malformed,
            desync,
            resyncs,
            chunks_skipped,
            uncaptured_bytes_skipped,
            midstream_pickups,
            metadata_errors,
            topic_ids_learned,
            topic_ids_unknown,
        } = other;
        self.requests += requests;
        self.responses += responses;
        self.exchanges += exchanges;
        self.fire_and_forget += fire_and_forget;
        self.no_response += no_response;
        self.partial += partial;
        self.responses_lost += responses_lost;
        self.orphan_responses += orphan_responses;
        self.untracked += untracked;
        self.malformed += malformed;
        self.desync += desync;
        self.resyncs += resyncs;
        self.chunks_skipped += chunks_skipped;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
        self.midstream_pickups += midstream_pickups;
        self.metadata_errors += metadata_errors;
        self.topic_ids_learned += topic_ids_learned;
        self.topic_ids_unknown += topic_ids_unknown;
    }
}

/// The name of a Kafka error code (the protocol's own names), None when not known.
pub fn error_name(code: i16) -> Option<&'static str> {
    const NAMES: [&str; 83] = [
        "NONE",
        "OFFSET_OUT_OF_RANGE",
        "CORRUPT_MESSAGE",
        "UNKNOWN_TOPIC_OR_PARTITION",
        "INVALID_FETCH_SIZE",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_OR_FOLLOWER",
        "REQUEST_TIMED_OUT",
        "BROKER_NOT_AVAILABLE",
        "REPLICA_NOT_AVAILABLE",
        "MESSAGE_TOO_LARGE",
        "STALE_CONTROLLER_EPOCH",
        "OFFSET_METADATA_TOO_LARGE",
        "NETWORK_EXCEPTION",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
        "INVALID_TOPIC_EXCEPTION",
        "RECORD_LIST_TOO_LARGE",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "INVALID_REQUIRED_ACKS",
        "ILLEGAL_GENERATION",
        "INCONSISTENT_GROUP_PROTOCOL",
        "INVALID_GROUP_ID",
        "UNKNOWN_MEMBER_ID",
        "INVALID_SESSION_TIMEOUT",
        "REBALANCE_IN_PROGRESS",
        "INVALID_COMMIT_OFFSET_SIZE",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "INVALID_TIMESTAMP",
        "UNSUPPORTED_SASL_MECHANISM",
        "ILLEGAL_SASL_STATE",
        "UNSUPPORTED_VERSION",
        "TOPIC_ALREADY_EXISTS",
        "INVALID_PARTITIONS",
        "INVALID_REPLICATION_FACTOR",
        "INVALID_REPLICA_ASSIGNMENT",
        "INVALID_CONFIG",
        "NOT_CONTROLLER",
        "INVALID_REQUEST",
        "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        "POLICY_VIOLATION",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
        "DUPLICATE_SEQUENCE_NUMBER",
        "INVALID_PRODUCER_EPOCH",
        "INVALID_TXN_STATE",
        "INVALID_PRODUCER_ID_MAPPING",
        "INVALID_TRANSACTION_TIMEOUT",
        "CONCURRENT_TRANSACTIONS",
        "TRANSACTION_COORDINATOR_FENCED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "SECURITY_DISABLED",
        "OPERATION_NOT_ATTEMPTED",
        "KAFKA_STORAGE_ERROR",
        "LOG_DIR_NOT_FOUND",
        "SASL_AUTHENTICATION_FAILED",
        "UNKNOWN_PRODUCER_ID",
        "REASSIGNMENT_IN_PROGRESS",
        "DELEGATION_TOKEN_AUTH_DISABLED",
        "DELEGATION_TOKEN_NOT_FOUND",
        "DELEGATION_TOKEN_OWNER_MISMATCH",
        "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED",
        "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
        "DELEGATION_TOKEN_EXPIRED",
        "INVALID_PRINCIPAL_TYPE",
        "NON_EMPTY_GROUP",
        "GROUP_ID_NOT_FOUND",
        "FETCH_SESSION_ID_NOT_FOUND",
        "INVALID_FETCH_SESSION_EPOCH",
        "LISTENER_NOT_FOUND",
        "TOPIC_DELETION_DISABLED",
        "FENCED_LEADER_EPOCH",
        "UNKNOWN_LEADER_EPOCH",
        "UNSUPPORTED_COMPRESSION_TYPE",
        "STALE_BROKER_EPOCH",
        "OFFSET_NOT_AVAILABLE",
        "MEMBER_ID_REQUIRED",
        "PREFERRED_LEADER_NOT_AVAILABLE",
        "GROUP_MAX_SIZE_REACHED",
        "FENCED_INSTANCE_ID",
    ];
    match code {
        -1 => Some("UNKNOWN_SERVER_ERROR"),
        87 => Some("INVALID_RECORD"),
        100 => Some("UNKNOWN_TOPIC_ID"),
        1..=82 => Some(NAMES[code as usize]),
        _ => None,
    }
}

/// Topic ids (Fetch v13+, Produce v13+) → names, learned from Metadata responses on any
/// connection: ids are unique across clusters, so one bounded table serves every process.
struct TopicIdCache {
    map: HashMap<[u8; 16], (String, u64)>,
    tick: u64,
}

static TOPIC_ID_CACHE: LazyLock<Mutex<TopicIdCache>> = LazyLock::new(|| {
    Mutex::new(TopicIdCache {
        map: HashMap::new(),
        tick: 0,
    })
});

fn topic_ids() -> std::sync::MutexGuard<'static, TopicIdCache> {
    TOPIC_ID_CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TopicIdCache {
    fn learn(&mut self, id: [u8; 16], name: &str) {
        self.tick += 1;
        if !self.map.contains_key(&id)
            && self.map.len() >= TOPIC_IDS
            && let Some(oldest) = self.map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        self.map.insert(id, (name.to_string(), self.tick));
    }

    fn lookup(&mut self, id: &[u8; 16]) -> Option<String> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(id).map(|(name, t)| {
            *t = tick;
            name.clone()
        })
    }
}

/// Topic ids remembered now (for tests and the fuzzer's bound check).
pub fn topic_ids_len() -> usize {
    topic_ids().map.len()
}

/// A bounds-checked reader over a message's kept bytes; every read fails past the end.
struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, p: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.p.checked_add(n)?;
        let s = self.b.get(self.p..end)?;
        self.p = end;
        Some(s)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn i8(&mut self) -> Option<i8> {
        self.take(1).map(|b| b[0] as i8)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uuid(&mut self) -> Option<[u8; 16]> {
        let b = self.take(16)?;
        let mut id = [0; 16];
        id.copy_from_slice(b);
        Some(id)
    }

    fn uvarint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A (nullable) string or bytes: compact (uvarint length + 1) in flexible versions, an
    /// i16 length otherwise (`wide`: an i32 length, for bytes). None when cut or invalid;
    /// Some(None) for null.
    fn bytes(&mut self, flexible: bool, wide: bool) -> Option<Option<&'a [u8]>> {
        let len: i64 = if flexible {
            self.uvarint()? as i64 - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match len {
            -1 => Some(None),
            n if n < 0 => None,
            n => self.take(usize::try_from(n).ok()?).map(Some),
        }
    }

    fn string(&mut self, flexible: bool) -> Option<Option<&'a [u8]>> {
        self.bytes(flexible, false)
    }

    /// An array's length (None when cut or invalid; 0 for null).
    fn array(&mut self, flexible: bool) -> Option<usize> {
        let n: i64 = if flexible {
            self.uvarint()? as i64 - 1
        } else {
            i64::from(self.i32()?)
        };
        match n {
            -1 => Some(0),
            n if n < 0 => None,
            // Every element takes a byte at least: a longer array is garbage.
            n => usize::try_from(n)
                .ok()
                .filter(|n| *n <= self.b.len() - self.p),
        }
    }

    /// Skips a tagged-field section (flexible versions only).
    fn tagged(&mut self, flexible: bool) -> Option<()> {
        if !flexible {
            return Some(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(usize::try_from(size).ok()?)?;
        }
        Some(())
    }
}

/// Whether requests of `key` at `version` use the flexible encoding (request header v2,
/// response header v1), for the keys whose bodies are read.
fn flexible(key: i16, version: i16) -> bool {
    match key {
        PRODUCE => version >= 9,
        FETCH => version >= 12,
        METADATA => version >= 9,
        _ => false,
    }
}

/// A topic as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Topic {
    Name(String),
    Id([u8; 16]),
}

fn topic_name(b: &[u8]) -> Option<String> {
    (!b.is_empty() && b.len() <= MAX_TOPIC_LEN).then(|| String::from_utf8_lossy(b).into_owned())
}

/// The request header's fields, read from a message body (after its size).
struct Header {
    key: i16,
    version: i16,
    correlation_id: i32,
    client_id: Option<String>,
}

fn known_key(key: i16, version: i16) -> bool {
    usize::try_from(key)
        .ok()
        .and_then(|k| MAX_VERSION.get(k))
        .is_some_and(|max| (0..=*max).contains(&version))
}

fn printable(b: &[u8]) -> bool {
    b.iter().all(|c| (0x20..0x7f).contains(c))
}

/// Whether `b` (a chunk's bytes) starts with a plausible request: size bounded, known api
/// key and version, non-negative correlation id, a printable client id of plausible length.
fn plausible_request(b: &[u8]) -> bool {
    let mut r = Rd::new(b);
    let (Some(size), Some(key), Some(version), Some(corr), Some(id_len)) =
        (r.i32(), r.i16(), r.i16(), r.i32(), r.i16())
    else {
        return false;
    };
    let Ok(size) = usize::try_from(size) else {
        return false;
    };
    if !(10..=MAX_PLAUSIBLE_LEN).contains(&size) || !known_key(key, version) || corr < 0 {
        return false;
    }
    match id_len {
        -1 => true,
        n if n < 0 => false,
        n => {
            let n = n as usize;
            if n > MAX_CLIENT_ID || n > size - 10 {
                return false;
            }
            let captured = &b[14..b.len().min(14 + n)];
            printable(captured)
        }
    }
}

/// Whether `b` (a chunk's bytes) is a plausible request header without its size, as a reader
/// that reads the size apart shows it: known api key and version, non-negative correlation
/// id, and (stricter, having no size to check) a non-empty printable client id, all in the
/// chunk.
fn plausible_header(b: &[u8]) -> bool {
    let mut r = Rd::new(b);
    let (Some(key), Some(version), Some(corr), Some(id_len)) = (r.i16(), r.i16(), r.i32(), r.i16())
    else {
        return false;
    };
    let Ok(n) = usize::try_from(id_len) else {
        return false;
    };
    known_key(key, version)
        && corr >= 0
        && (1..=MAX_CLIENT_ID).contains(&n)
        && b.get(10..10 + n).is_some_and(printable)
}

fn parse_header(r: &mut Rd<'_>) -> Option<Header> {
    let key = r.i16()?;
    let version = r.i16()?;
    let correlation_id = r.i32()?;
    if !known_key(key, version) {
        return None;
    }
    let client_id = match r.string(false) {
        Some(Some(id)) if !id.is_empty() => {
            Some(String::from_utf8_lossy(&id[..id.len().min(MAX_CLIENT_ID)]).into_owned())
        }
        _ => None,
    };
    // A cut header still gives key, version and correlation id; the body is then unread.
    Some(Header {
        key,
        version,
        correlation_id,
        client_id,
    })
}

/// A Produce request's acks and first topic.
fn parse_produce(r: &mut Rd<'_>, v: i16) -> (Option<i16>, Option<Topic>) {
    let flex = v >= 9;
    let mut acks = None;
    let topic = (|| {
        if v >= 3 {
            r.string(flex)?; // transactional_id
        }
        acks = Some(r.i16()?);
        r.i32()?; // timeout_ms
        if r.array(flex)? == 0 {
            return None;
        }
        first_topic(r, v >= 13, flex)
    })();
    (acks, topic)
}

/// A topic reference (by name, or by id); Some(None) when it is null or empty, None when cut.
fn read_topic(r: &mut Rd<'_>, by_id: bool, flex: bool) -> Option<Option<Topic>> {
    if by_id {
        r.uuid().map(|id| Some(Topic::Id(id)))
    } else {
        Some(r.string(flex)?.and_then(topic_name).map(Topic::Name))
    }
}

fn first_topic(r: &mut Rd<'_>, by_id: bool, flex: bool) -> Option<Topic> {
    read_topic(r, by_id, flex)?
}

/// A Fetch request's first topic.
fn parse_fetch(r: &mut Rd<'_>, v: i16) -> Option<Topic> {
    let flex = v >= 12;
    if v < 15 {
        r.i32()?; // replica_id
    }
    r.skip(8)?; // max_wait_ms, min_bytes
    if v >= 3 {
        r.i32()?; // max_bytes
    }
    if v >= 4 {
        r.i8()?; // isolation_level
    }
    if v >= 7 {
        r.skip(8)?; // session_id, session_epoch
    }
    if r.array(flex)? == 0 {
        return None;
    }
    first_topic(r, v >= 13, flex)
}

/// What a response says: its first topic and first non-zero error code.
#[derive(Default)]
struct Outcome {
    topic: Option<Topic>,
    error: Option<i16>,
}

/// Reads a Produce response (after the correlation id) as far as it was captured.
fn produce_response(r: &mut Rd<'_>, v: i16, o: &mut Outcome) -> Option<()> {
    let flex = v >= 9;
    r.tagged(flex)?;
    let topics = r.array(flex)?;
    for _ in 0..topics {
        let t = read_topic(r, v >= 13, flex)?;
        if o.topic.is_none() {
            o.topic = t;
        }
        let partitions = r.array(flex)?;
        for _ in 0..partitions {
            r.i32()?; // index
            let code = r.i16()?;
            if code != 0 && o.error.is_none() {
                o.error = Some(code);
            }
            r.skip(8)?; // base_offset
            if v >= 2 {
                r.skip(8)?; // log_append_time_ms
            }
            if v >= 5 {
                r.skip(8)?; // log_start_offset
            }
            if v >= 8 {
                for _ in 0..r.array(flex)? {
                    r.i32()?; // batch_index
                    r.string(flex)?; // batch_index_error_message
                    r.tagged(flex)?;
                }
                r.string(flex)?; // error_message
            }
            r.tagged(flex)?;
        }
        r.tagged(flex)?;
    }
    Some(())
}

/// Reads a Fetch response (after the correlation id) as far as it was captured.
fn fetch_response(r: &mut Rd<'_>, v: i16, o: &mut Outcome) -> Option<()> {
    let flex = v >= 12;
    r.tagged(flex)?;
    if v >= 1 {
        r.i32()?; // throttle_time_ms
    }
    if v >= 7 {
        let code = r.i16()?;
        if code != 0 {
            o.error = Some(code);
        }
        r.i32()?; // session_id
    }
    let topics = r.array(flex)?;
    for _ in 0..topics {
        let t = read_topic(r, v >= 13, flex)?;
        if o.topic.is_none() {
            o.topic = t;
        }
        let partitions = r.array(flex)?;
        for _ in 0..partitions {
            r.i32()?; // partition_index
            let code = r.i16()?;
            if code != 0 && o.error.is_none() {
                o.error = Some(code);
            }
            r.skip(8)?; // high_watermark
            if v >= 4 {
                r.skip(8)?; // last_stable_offset
            }
            if v >= 5 {
                r.skip(8)?; // log_start_offset
            }
            if v >= 4 {
                for _ in 0..r.array(flex)? {
                    r.skip(16)?; // producer_id, first_offset
                    r.tagged(flex)?;
                }
            }
            if v >= 11 {
                r.i32()?; // preferred_read_replica
            }
            r.bytes(flex, true)?; // records: skipped, never read
            r.tagged(flex)?;
        }
        r.tagged(flex)?;
    }
    Some(())
}

/// Reads a Metadata response as far as it was captured: the first topic with a non-zero
/// error code (and that code), and (v10+) the topic ids it names, learned.
fn metadata_response(
    r: &mut Rd<'_>,
    v: i16,
    o: &mut Outcome,
    counters: &mut Counters,
) -> Option<()> {
    let flex = v >= 9;
    r.tagged(flex)?;
    if v >= 3 {
        r.i32()?; // throttle_time_ms
    }
    for _ in 0..r.array(flex)? {
        r.i32()?; // node_id
        r.string(flex)?; // host
        r.i32()?; // port
        if v >= 1 {
            r.string(flex)?; // rack
        }
        r.tagged(flex)?;
    }
    if v >= 2 {
        r.string(flex)?; // cluster_id
    }
    if v >= 1 {
        r.i32()?; // controller_id
    }
    for _ in 0..r.array(flex)? {
        let code = r.i16()?;
        let name = r.string(flex)?.and_then(topic_name);
        if code != 0 && o.error.is_none() {
            o.error = Some(code);
            o.topic = name.clone().map(Topic::Name);
        }
        if v >= 10 {
            let id = r.uuid()?;
            if let Some(name) = &name
                && id != [0; 16]
            {
                topic_ids().learn(id, name);
                counters.topic_ids_learned += 1;
            }
        }
        if v >= 1 {
            r.i8()?; // is_internal
        }
        for _ in 0..r.array(flex)? {
            r.skip(10)?; // error_code, partition_index, leader_id
            if v >= 7 {
                r.i32()?; // leader_epoch
            }
            let arrays = if v >= 5 { 3 } else { 2 };
            for _ in 0..arrays {
                let n = r.array(flex)?;
                r.skip(n.checked_mul(4)?)?;
            }
            r.tagged(flex)?;
        }
        if v >= 8 {
            r.i32()?; // topic_authorized_operations
        }
        r.tagged(flex)?;
    }
    Some(())
}

/// A Metadata request's first topic (none when it asks for all topics).
fn parse_metadata(r: &mut Rd<'_>, v: i16) -> Option<Topic> {
    let flex = v >= 9;
    if r.array(flex)? == 0 {
        return None;
    }
    if v >= 10 {
        r.uuid()?; // topic_id
    }
    topic_name(r.string(flex)??).map(Topic::Name)
}

/// A request waiting for its response.
struct Pending {
    correlation_id: i32,
    key: i16,
    version: i16,
    start_ns: u64,
    request_bytes: u64,
    /// For Produce and Fetch: what the exchange will carry.
    exchange: Option<Request>,
}

struct Request {
    operation: Operation,
    topic: Option<Topic>,
    client_id: Option<String>,
}

/// A message whose bytes were all counted: its kept start and where it was.
struct Message {
    body: Vec<u8>,
    start_ns: u64,
    end_ns: u64,
    len: u64,
}

/// One direction's framing state.
#[derive(Default)]
struct Dir {
    synced: bool,
    size: [u8; 4],
    size_got: usize,
    body_len: usize,
    body_got: usize,
    /// The message's first bytes (up to `MAX_KEEP`, and only up to its first gap).
    keep: Vec<u8>,
    gap: bool,
    start_ns: u64,
    /// While out of sync: a chunk of exactly 4 bytes, perhaps a size read apart, and its time.
    candidate: Option<([u8; 4], u64)>,
}

impl Dir {
    fn reset(&mut self) {
        self.size_got = 0;
        self.body_len = 0;
        self.body_got = 0;
        self.keep.clear();
        self.gap = false;
    }

    /// Frames `captured` followed by `uncaptured` bytes; completed messages go to `done`.
    /// False when sync was lost.
    fn frame(
        &mut self,
        captured: &[u8],
        uncaptured: u64,
        ts: u64,
        min_len: usize,
        counters: &mut Counters,
        done: &mut Vec<Message>,
    ) -> bool {
        let mut p = 0;
        while p < captured.len() {
            if self.size_got < 4 {
                if self.size_got == 0 {
                    self.start_ns = ts;
                }
                self.size[self.size_got] = captured[p];
                self.size_got += 1;
                p += 1;
                if self.size_got == 4 {
                    let size = i32::from_be_bytes(self.size);
                    let Some(size) = usize::try_from(size)
                        .ok()
                        .filter(|s| (min_len..=MAX_MESSAGE_LEN).contains(s))
                    else {
                        counters.malformed += 1;
                        return false;
                    };
                    self.body_len = size;
                    self.body_got = 0;
                    self.keep.clear();
                    self.gap = false;
                }
                continue;
            }
            let n = (self.body_len - self.body_got).min(captured.len() - p);
            if !self.gap {
                let room = MAX_KEEP - self.keep.len();
                self.keep.extend_from_slice(&captured[p..p + n.min(room)]);
            }
            self.body_got += n;
            p += n;
            if self.body_got == self.body_len {
                self.finish(ts, done);
            }
        }
        if uncaptured > 0 {
            let remaining = (self.body_len - self.body_got) as u64;
            if self.size_got < 4 || uncaptured > remaining {
                return false;
            }
            counters.uncaptured_bytes_skipped += uncaptured;
            self.body_got += uncaptured as usize;
            self.gap = true;
            if self.body_got == self.body_len {
                self.finish(ts, done);
            }
        }
        true
    }

    fn finish(&mut self, ts: u64, done: &mut Vec<Message>) {
        done.push(Message {
            body: std::mem::take(&mut self.keep),
            start_ns: self.start_ns,
            end_ns: ts,
            len: 4 + self.body_len as u64,
        });
        self.reset();
    }
}

pub struct Connection {
    request_flow: Flow,
    requests: Dir,
    responses: Dir,
    pending: VecDeque<Pending>,
    counters: Counters,
    scratch: Vec<Message>,
}

impl Connection {
    /// The flow that carries requests when `first` (a connection's first bytes with data, on
    /// `flow`) is Kafka: a strictly plausible request header, with its size or (a reader that
    /// reads the size apart) without; None otherwise (a connection first seen at a response is
    /// not recognised).
    pub fn detect(flow: Flow, first: &[u8]) -> Option<Flow> {
        (plausible_request(first) || plausible_header(first)).then_some(flow)
    }

    /// A tracker for a connection whose requests travel on `request_flow`; `fresh`: its
    /// start is being captured (else it is picked up mid-stream and sync is looked for).
    pub fn new(request_flow: Flow, fresh: bool) -> Connection {
        let counters = Counters {
            midstream_pickups: u64::from(!fresh),
            ..Counters::default()
        };
        Connection {
            request_flow,
            // Requests look for their first message even on a fresh connection: the size of
            // the first one may have been read apart and seen during classification.
            requests: Dir::default(),
            responses: Dir {
                synced: fresh,
                ..Dir::default()
            },
            pending: VecDeque::new(),
            counters,
            scratch: Vec::new(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests awaiting their responses.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held to read messages, both directions.
    pub fn buffered_bytes(&self) -> usize {
        self.requests.keep.len() + self.responses.keep.len()
    }

    /// Feeds one chunk: `captured` bytes of a read or write of `total` bytes on `flow`.
    pub fn feed(
        &mut self,
        flow: Flow,
        captured: &[u8],
        total: u64,
        ts_ns: u64,
        out: &mut Vec<MessagingExchange>,
    ) {
        let is_request = flow == self.request_flow;
        let uncaptured = total.saturating_sub(captured.len() as u64);
        let synced = if is_request {
            self.requests.synced
        } else {
            self.responses.synced
        };
        let mut done = std::mem::take(&mut self.scratch);
        let min_len = if is_request { 10 } else { 4 };
        if !synced {
            let candidate = self.dir(is_request).candidate.take();
            let start = |c: &Connection, b: &[u8]| {
                if is_request {
                    plausible_request(b)
                } else {
                    c.response_start(b)
                }
            };
            // A size read apart, then the message's start: the readers of tansu and of the
            // Java clients and broker read the 4-byte size first.
            let joined = candidate.filter(|(size, _)| {
                let mut j = size.to_vec();
                j.extend_from_slice(&captured[..captured.len().min(16 + MAX_CLIENT_ID)]);
                start(self, &j)
            });
            if joined.is_none() && !start(self, captured) {
                if is_request && uncaptured == 0 && plausible_header(captured) {
                    // A request header whose size was read apart before (the connection's
                    // first request, its size seen while it was being classified): the chunk
                    // is that request; its end is not known, so sync waits for a size read.
                    self.counters.resyncs += 1;
                    let m = Message {
                        body: captured[..captured.len().min(MAX_KEEP)].to_vec(),
                        start_ns: ts_ns,
                        end_ns: ts_ns,
                        len: 4 + total,
                    };
                    self.on_request(m, out);
                } else if captured.len() == 4 && uncaptured == 0 {
                    let mut size = [0; 4];
                    size.copy_from_slice(captured);
                    self.dir(is_request).candidate = Some((size, ts_ns));
                } else {
                    self.counters.chunks_skipped += 1;
                }
                self.scratch = done;
                return;
            }
            self.counters.resyncs += 1;
            let (d, counters) = if is_request {
                (&mut self.requests, &mut self.counters)
            } else {
                (&mut self.responses, &mut self.counters)
            };
            d.reset();
            d.synced = true;
            if let Some((size, ts0)) = joined {
                d.frame(&size, 0, ts0, min_len, counters, &mut done);
            }
        }
        let (d, counters) = if is_request {
            (&mut self.requests, &mut self.counters)
        } else {
            (&mut self.responses, &mut self.counters)
        };
        if !d.frame(captured, uncaptured, ts_ns, min_len, counters, &mut done) {
            counters.desync += 1;
            d.reset();
            d.synced = false;
        }
        for m in done.drain(..) {
            if is_request {
                self.on_request(m, out);
            } else {
                self.on_response(m, out);
            }
        }
        self.scratch = done;
    }

    fn dir(&mut self, is_request: bool) -> &mut Dir {
        if is_request {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    /// Whether a chunk starts with a response to a pending request.
    fn response_start(&self, b: &[u8]) -> bool {
        let mut r = Rd::new(b);
        let (Some(size), Some(corr)) = (r.i32(), r.i32()) else {
            return false;
        };
        (4..=MAX_MESSAGE_LEN as i64).contains(&i64::from(size))
            && self.pending.iter().any(|p| p.correlation_id == corr)
    }

    fn on_request(&mut self, m: Message, out: &mut Vec<MessagingExchange>) {
        let mut r = Rd::new(&m.body);
        let Some(h) = parse_header(&mut r) else {
            self.counters.malformed += 1;
            return;
        };
        self.counters.requests += 1;
        let flex = flexible(h.key, h.version);
        let body_ok = if flex && r.tagged(true).is_none() {
            None
        } else {
            Some(())
        };
        let exchange = match h.key {
            PRODUCE => {
                let (acks, topic) = match body_ok {
                    Some(()) => parse_produce(&mut r, h.version),
                    None => (None, None),
                };
                let req = Request {
                    operation: Operation::Publish,
                    topic,
                    client_id: h.client_id,
                };
                if acks == Some(0) {
                    self.counters.fire_and_forget += 1;
                    let p = Pending {
                        correlation_id: h.correlation_id,
                        key: h.key,
                        version: h.version,
                        start_ns: m.start_ns,
                        request_bytes: m.len,
                        exchange: None,
                    };
                    self.emit(
                        &p,
                        req,
                        Outcome::default(),
                        m.end_ns,
                        0,
                        out,
                        End::NotExpected,
                    );
                    return;
                }
                Some(req)
            }
            FETCH => Some(Request {
                operation: Operation::Process,
                topic: body_ok.and_then(|()| parse_fetch(&mut r, h.version)),
                client_id: h.client_id,
            }),
            METADATA => Some(Request {
                operation: Operation::Metadata,
                topic: body_ok.and_then(|()| parse_metadata(&mut r, h.version)),
                client_id: h.client_id,
            }),
            _ => None,
        };
        if self.pending.len() >= MAX_PENDING {
            self.counters.untracked += 1;
            return;
        }
        self.pending.push_back(Pending {
            correlation_id: h.correlation_id,
            key: h.key,
            version: h.version,
            start_ns: m.start_ns,
            request_bytes: m.len,
            exchange,
        });
    }

    fn on_response(&mut self, m: Message, out: &mut Vec<MessagingExchange>) {
        let mut r = Rd::new(&m.body);
        let Some(corr) = r.i32() else {
            self.counters.malformed += 1;
            return;
        };
        self.counters.responses += 1;
        let Some(i) = self.pending.iter().position(|p| p.correlation_id == corr) else {
            self.counters.orphan_responses += 1;
            return;
        };
        // Responses come in request order: those before it were lost to capture.
        for _ in 0..i {
            if let Some(mut lost) = self.pending.pop_front()
                && let Some(req) = lost.exchange.take()
                && req.operation != Operation::Metadata
            {
                self.counters.responses_lost += 1;
                self.emit(&lost, req, Outcome::default(), m.end_ns, 0, out, End::Lost);
            }
        }
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        let mut outcome = Outcome::default();
        match p.key {
            PRODUCE => {
                let _ = produce_response(&mut r, p.version, &mut outcome);
            }
            FETCH => {
                let _ = fetch_response(&mut r, p.version, &mut outcome);
            }
            METADATA => {
                let _ = metadata_response(&mut r, p.version, &mut outcome, &mut self.counters);
            }
            _ => {}
        }
        if let Some(req) = p.exchange.take()
            && (req.operation != Operation::Metadata || outcome.error.is_some())
        {
            self.counters.metadata_errors += u64::from(req.operation == Operation::Metadata);
            self.emit(&p, req, outcome, m.end_ns, m.len, out, End::Response);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        p: &Pending,
        req: Request,
        outcome: Outcome,
        end_ns: u64,
        response_bytes: u64,
        out: &mut Vec<MessagingExchange>,
        end: End,
    ) {
        let destination = match req.topic.or(outcome.topic) {
            Some(Topic::Name(n)) => Some(n),
            Some(Topic::Id(id)) => {
                let name = topic_ids().lookup(&id);
                self.counters.topic_ids_unknown += u64::from(name.is_none());
                name
            }
            None => None,
        };
        let no_response = matches!(end, End::Lost | End::Closed);
        let partial = destination.is_none() || matches!(end, End::Lost);
        self.counters.exchanges += 1;
        self.counters.no_response += u64::from(no_response);
        self.counters.partial += u64::from(partial);
        out.push(MessagingExchange {
            system: SYSTEM,
            request_flow: self.request_flow,
            operation: req.operation,
            destination,
            client_id: req.client_id,
            error_code: outcome.error,
            start_ns: p.start_ns,
            end_ns: end_ns.max(p.start_ns),
            request_bytes: p.request_bytes,
            response_bytes,
            no_response,
            fire_and_forget: matches!(end, End::NotExpected),
            partial,
        });
    }

    /// The connection closed at `ts_ns`: requests still waiting end without a response.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<MessagingExchange>) {
        while let Some(mut p) = self.pending.pop_front() {
            if let Some(req) = p.exchange.take()
                && req.operation != Operation::Metadata
            {
                self.emit(&p, req, Outcome::default(), ts_ns, 0, out, End::Closed);
            }
        }
        self.requests.reset();
        self.responses.reset();
    }
}

/// How an exchange ended.
enum End {
    Response,
    /// No response expected (`acks=0`).
    NotExpected,
    /// A later response came first: this one was lost to capture.
    Lost,
    Closed,
}
