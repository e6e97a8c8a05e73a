//! Every wire contract of Sonde, defined once.
//!
//! * Kernel → user space: the `#[repr(C)]` event layouts written by the kernel programs
//!   (`loader-ebpf`) into ring buffers and read by the loader (process events) and the
//!   processor (HTTP events). This part is `no_std` so the eBPF crate can use it.
//! * Loader ↔ processor: the capnp control protocol (`control.capnp`), its framing (`channel`)
//!   and its one typed codec (`control`), behind the `control` feature.
#![no_std]

#[cfg(feature = "control")]
extern crate std;

/// Generated capnp code for `control.capnp`.
#[cfg(feature = "control")]
#[allow(clippy::all, clippy::undocumented_unsafe_blocks, unused, missing_docs)]
pub mod control_capnp {
    include!(concat!(env!("OUT_DIR"), "/control_capnp.rs"));
}

/// Datagram framing of the control protocol (capnp message + SCM_RIGHTS fds).
#[cfg(feature = "control")]
pub mod channel;

/// The control protocol's typed messages, their one codec and their limits.
#[cfg(feature = "control")]
pub mod control;

/// Bytes of the request captured from its first byte: enough for the request line and the
/// first headers (method, path, query, Host).
pub const REQUEST_CAPTURE: usize = 256;
/// Bytes of the response captured from its first byte: the status line and the first headers.
pub const RESPONSE_CAPTURE: usize = 128;

/// Length of a version-00 W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`).
pub const TRACEPARENT_LEN: usize = 55;
/// `HttpEvent::traceparent_source`: the field is empty.
pub const TRACEPARENT_NONE: u8 = 0;
/// `HttpEvent::traceparent_source`: the kernel found a `traceparent` header in the request's
/// header block past the captured bytes and copied its value (unchecked: the processor
/// validates it).
pub const TRACEPARENT_SCANNED: u8 = 1;
/// `HttpEvent::traceparent_source`: Sonde put this `traceparent` into the request on its way
/// out (context propagation); the client span carries its ids.
pub const TRACEPARENT_INJECTED: u8 = 2;
/// How far into a request's header block the kernel looks for `traceparent` past the
/// captured bytes (header blocks are at most 8 KiB in nginx's and most servers' defaults).
pub const HEADER_SCAN_LIMIT: usize = 8192;

/// `HttpEvent::direction`: this process accepted the connection and answered the request.
pub const DIRECTION_SERVER: u8 = 1;
/// `HttpEvent::direction`: this process connected and sent the request.
pub const DIRECTION_CLIENT: u8 = 2;

/// `HttpEvent::flags`: the connection closed before any response byte was seen.
pub const FLAG_NO_RESPONSE: u32 = 1 << 0;
/// `HttpEvent::flags`: the event was emitted because the connection closed.
pub const FLAG_CLOSED: u32 = 1 << 1;
/// `HttpEvent::flags`: the bytes are the plaintext of a TLS connection (OpenSSL uprobes).
pub const FLAG_TLS: u32 = 1 << 2;

/// Record kind (first byte of every HTTP ring buffer record): an `HttpEvent`.
pub const EVENT_HTTP: u8 = 1;
/// Record kind: an `ExchangeUpdate` carrying more response bytes of the connection's open
/// exchange.
pub const EVENT_RESPONSE_MORE: u8 = 2;
/// Record kind: an `ExchangeUpdate` saying the connection closed; its open exchange is over.
pub const EVENT_CONN_CLOSED: u8 = 3;
/// Record kind: an `ExchangeUpdate` carrying more request bytes of the connection's open
/// exchange, read after its response started: the rest of a body the server answered before
/// reading (nginx `return`, early errors).
pub const EVENT_REQUEST_MORE: u8 = 6;
/// Record kind: a `ChunkHeader` followed by the bytes of one socket read or write on a
/// connection whose protocol multiplexes exchanges (HTTP/2): the processor reassembles the
/// stream itself.
pub const EVENT_STREAM_CHUNK: u8 = 4;

/// The protocol the kernel tagged a connection with, from its first bytes. Cheap and
/// provisional: the processor's protocol layer confirms it.
pub mod protocol {
    /// An HTTP/1.x request line: paired into `HttpEvent`s in the kernel.
    pub const HTTP1: u8 = 1;
    /// The HTTP/2 client preface, or (picked up mid-stream) a plausible HTTP/2 frame header:
    /// every read and write goes out as a `ChunkHeader` record.
    pub const HTTP2: u8 = 2;
    /// Any other TCP stream of a selected process (databases, caches, queues): sent on as
    /// stream chunks of at most `STREAM_CAPTURE_OTHER` bytes for the processor to classify.
    pub const OTHER: u8 = 3;
}

/// Bytes of one socket read or write captured into a stream chunk (at most; the chunk says how
/// many moved). HTTP/2's default largest frame is 16 KiB plus its 9-byte header.
pub const STREAM_CAPTURE: usize = 16 * 1024;

/// Bytes captured per read or write of an "other TCP" stream: commands and statements are
/// short, values and rows are skipped by the length fields that precede them.
pub const STREAM_CAPTURE_OTHER: usize = 2048;

/// `ChunkHeader::flow`: the instrumented process read these bytes.
pub const FLOW_INBOUND: u8 = 1;
/// `ChunkHeader::flow`: the instrumented process wrote these bytes.
pub const FLOW_OUTBOUND: u8 = 2;

/// `ChunkHeader::flags`: the first chunk of the connection the kernel saw.
pub const CHUNK_FIRST: u8 = 1 << 0;
/// `ChunkHeader::flags`: the connection was picked up mid-stream (no preface seen), so its
/// header-compression state is unknown.
pub const CHUNK_MIDSTREAM: u8 = 1 << 1;
/// `ChunkHeader::flags`: the bytes are the plaintext of a TLS connection.
pub const CHUNK_TLS: u8 = 1 << 2;

/// Record kind: a `ConnTuple`, the endpoints of a TLS connection learned after its first
/// exchange or chunk went out (the socket is found at the first socket I/O that follows an
/// `SSL_write`, which for Node.js comes after the plaintext was handed over).
pub const EVENT_CONN_TUPLE: u8 = 5;

/// Record kind: a `ThreadNotice`, a thread of a selected process started or ended (the
/// processor links client spans of a thread started while a request was served to that
/// request).
pub const EVENT_THREAD: u8 = 7;
/// `ThreadNotice::what`: `tid` was created by `parent_tid` (or, when `pid` differs from the
/// new task's process, a process was forked: the processor only matches threads).
pub const THREAD_STARTED: u8 = 1;
/// `ThreadNotice::what`: thread `tid` exited.
pub const THREAD_ENDED: u8 = 2;

/// A thread of a selected process started or ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadNotice {
    pub kind: u8,
    /// `THREAD_STARTED` or `THREAD_ENDED`.
    pub what: u8,
    pub _pad: u16,
    /// The process (thread group) of the thread that created or exited.
    pub pid: u32,
    /// The new thread (`THREAD_STARTED`) or the exiting one.
    pub tid: u32,
    /// The thread that created `tid` (`THREAD_STARTED`); 0 otherwise.
    pub parent_tid: u32,
    /// CLOCK_MONOTONIC nanoseconds, the clock of `HttpEvent` times.
    pub ns: u64,
}

impl ThreadNotice {
    pub const SIZE: usize = core::mem::size_of::<ThreadNotice>();

    /// Decodes a thread record (size and kind checked).
    pub fn decode(bytes: &[u8]) -> Result<ThreadNotice, DecodeError> {
        if bytes.len() < Self::SIZE {
            return Err(DecodeError::Truncated {
                needed: Self::SIZE,
                got: bytes.len(),
            });
        }
        if bytes[0] != EVENT_THREAD {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        let u32_at =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&bytes[16..24]);
        Ok(ThreadNotice {
            kind: bytes[0],
            what: bytes[1],
            _pad: 0,
            pid: u32_at(4),
            tid: u32_at(8),
            parent_tid: u32_at(12),
            ns: u64::from_ne_bytes(ns),
        })
    }
}

/// The endpoints of a connection, for records that went out before they were known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTuple {
    pub kind: u8,
    pub _pad: u8,
    pub family: u16,
    pub pid: u32,
    pub conn_id: u64,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad2: u32,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

impl ConnTuple {
    pub const SIZE: usize = core::mem::size_of::<ConnTuple>();

    /// Decodes a tuple record (size and kind checked).
    pub fn decode(bytes: &[u8]) -> Result<ConnTuple, DecodeError> {
        if bytes.len() < Self::SIZE {
            return Err(DecodeError::Truncated {
                needed: Self::SIZE,
                got: bytes.len(),
            });
        }
        if bytes[0] != EVENT_CONN_TUPLE {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        let mut t = ConnTuple {
            kind: 0,
            _pad: 0,
            family: 0,
            pid: 0,
            conn_id: 0,
            local_port: 0,
            peer_port: 0,
            _pad2: 0,
            local_addr: [0; 16],
            peer_addr: [0; 16],
        };
        // SAFETY: SIZE bytes fit the source (checked) and the destination, a repr(C) struct of
        // integers and byte arrays (every bit pattern is valid).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut t as *mut ConnTuple).cast::<u8>(),
                Self::SIZE,
            )
        };
        Ok(t)
    }

    /// The record the kernel writes (used by tests and fuzzers).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain integers and byte arrays with explicit padding: all SIZE bytes
        // are initialised; the slice borrows self.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }
}

/// The fixed part of a stream chunk record; `captured` payload bytes follow it. Addresses as in
/// `HttpEvent`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub kind: u8,
    /// `protocol::*`.
    pub protocol: u8,
    /// `FLOW_INBOUND` or `FLOW_OUTBOUND`.
    pub flow: u8,
    /// `CHUNK_*`.
    pub flags: u8,
    pub pid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Opaque id of the connection, as in `HttpEvent`.
    pub conn_id: u64,
    /// CLOCK_MONOTONIC nanoseconds when the bytes had moved.
    pub ts_ns: u64,
    /// Bytes the syscall moved; the first `captured` of them follow.
    pub total: u64,
    pub captured: u32,
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: [u8; 6],
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

// The kernel programs copy and set the address fields as two 8-byte words
// (`loader-ebpf/src/sock.rs`, `copy_addr`): they must stay 8-aligned in both records.
const _: () = assert!(
    core::mem::align_of::<ChunkHeader>() >= 8
        && core::mem::offset_of!(ChunkHeader, local_addr) % 8 == 0
        && core::mem::offset_of!(ChunkHeader, peer_addr) % 8 == 0
        && core::mem::align_of::<HttpEvent>() >= 8
        && core::mem::offset_of!(HttpEvent, local_addr) % 8 == 0
        && core::mem::offset_of!(HttpEvent, peer_addr) % 8 == 0
);

impl ChunkHeader {
    pub const SIZE: usize = core::mem::size_of::<ChunkHeader>();

    /// An all-zero header.
    pub const fn zeroed() -> Self {
        ChunkHeader {
            kind: 0,
            protocol: 0,
            flow: 0,
            flags: 0,
            pid: 0,
            tid: 0,
            fd: 0,
            conn_id: 0,
            ts_ns: 0,
            total: 0,
            captured: 0,
            family: 0,
            local_port: 0,
            peer_port: 0,
            _pad: [0; 6],
            local_addr: [0; 16],
            peer_addr: [0; 16],
        }
    }

    /// Decodes a chunk record into its header and payload (size, kind and lengths checked).
    /// Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<(ChunkHeader, &[u8]), DecodeError> {
        if bytes.len() < Self::SIZE {
            return Err(DecodeError::Truncated {
                needed: Self::SIZE,
                got: bytes.len(),
            });
        }
        if bytes[0] != EVENT_STREAM_CHUNK {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        let mut header = ChunkHeader::zeroed();
        // SAFETY: SIZE bytes fit both the source slice (checked above) and the destination,
        // a repr(C) struct of integers and byte arrays (every bit pattern is valid).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut header as *mut ChunkHeader).cast::<u8>(),
                Self::SIZE,
            )
        };
        let payload = &bytes[Self::SIZE..];
        let captured = header.captured as usize;
        if captured > payload.len() || captured > STREAM_CAPTURE || captured as u64 > header.total {
            return Err(DecodeError::BadLength);
        }
        Ok((header, &payload[..captured]))
    }

    /// The header's bytes as the kernel writes them (used by tests and fuzzers).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain integers and byte arrays with explicit padding: all SIZE bytes
        // are initialised; the slice borrows self.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }
}

/// One HTTP/1.x request and the start of its response on one TCP connection, paired in the
/// kernel. The kernel emits it when the response starts (the first byte moves the other way),
/// so a span never waits for the next request; response bytes that follow in later syscalls
/// arrive as `ExchangeUpdate`s with the same `conn_id`, and the processor adds them up.
/// A request that never got a response is emitted when the connection closes, with
/// `FLAG_NO_RESPONSE`.
///
/// Addresses are in network byte order; IPv4 addresses occupy the first four bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpEvent {
    pub kind: u8,
    pub direction: u8,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when the socket address could not be read.
    pub family: u16,
    /// Process (thread-group) id.
    pub pid: u32,
    /// Thread that read the request (server) or wrote it (client).
    pub tid: u32,
    pub fd: u32,
    /// CLOCK_MONOTONIC nanoseconds: entry of the syscall that carried the first request byte.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds: return of the last syscall that carried response bytes.
    pub end_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    pub request_len: u16,
    pub response_len: u16,
    pub flags: u32,
    pub _pad: u32,
    /// Opaque id of the connection, unique while it lives (never a kernel address).
    pub conn_id: u64,
    /// A `traceparent` value the captured bytes may not hold (see `traceparent_source`).
    pub traceparent: [u8; TRACEPARENT_LEN],
    /// `TRACEPARENT_*`: where `traceparent` came from, or that it is empty.
    pub traceparent_source: u8,
    /// Context propagation on, server exchanges: the trace id (the caller's, when its
    /// `traceparent` is valid, else random) and the span id the kernel gave this server span,
    /// so the client requests its thread sends while serving it carry them (see
    /// `inject::SERVING`). All zero otherwise.
    pub server_ids: [u8; 24],
    /// Context propagation on, client exchanges with an injected `traceparent` sent while the
    /// thread served a request: that server span's id (`server_ids[16..]` of its event), the
    /// client span's parent. All zero otherwise.
    pub injected_parent: [u8; 8],
    pub response: [u8; RESPONSE_CAPTURE],
    /// Last, so the kernel can send only the captured part: a record is
    /// `HTTP_EVENT_MIN_SIZE + request_len` bytes (see `HttpEvent::wire_len`).
    pub request: [u8; REQUEST_CAPTURE],
}

/// Largest `HttpEvent` record (a full request capture).
pub const HTTP_EVENT_SIZE: usize = core::mem::size_of::<HttpEvent>();
/// Smallest `HttpEvent` record: everything before the request bytes.
pub const HTTP_EVENT_MIN_SIZE: usize = HTTP_EVENT_SIZE - REQUEST_CAPTURE;

/// Errors from decoding raw ring-buffer bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The sample is shorter than the event it claims to be.
    Truncated { needed: usize, got: usize },
    /// The first byte names no known event kind.
    UnknownKind(u8),
    /// A length field points past its buffer.
    BadLength,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated { needed, got } => {
                write!(f, "sample truncated: needed {needed} bytes, got {got}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::BadLength => f.write_str("captured length exceeds its buffer"),
        }
    }
}

/// An `HttpEvent` record that passed [`HttpEvent::check`]: its bytes (at most
/// `HTTP_EVENT_SIZE`, lengths within their buffers) and the fields that say where it goes.
#[derive(Clone, Copy)]
pub struct CheckedHttpEvent<'a> {
    bytes: &'a [u8],
    /// `HttpEvent::conn_id`.
    pub conn_id: u64,
    /// `HttpEvent::flags`.
    pub flags: u32,
}

impl CheckedHttpEvent<'_> {
    /// Writes the record over `out`. Only the record's bytes are written: the request bytes
    /// past `request_len` keep what `out` held, and nothing reads them (`HttpEvent::request`
    /// stops at `request_len`).
    pub fn write_to(&self, out: &mut HttpEvent) {
        // SAFETY: `check` kept at most HTTP_EVENT_SIZE bytes, so they fit the destination
        // struct, which is repr(C) made only of integers and byte arrays (every bit pattern
        // is valid); source and destination are distinct (a shared and a unique borrow).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.bytes.as_ptr(),
                (out as *mut HttpEvent).cast::<u8>(),
                self.bytes.len(),
            )
        };
    }

    /// The record as an event of its own (the bytes a short record leaves out are zero).
    pub fn to_event(&self) -> HttpEvent {
        let mut event = HttpEvent::zeroed();
        self.write_to(&mut event);
        event
    }
}

/// The `N` bytes of a field at `at` of a record (callers pass offsets inside the record's
/// fixed part, which `check` made sure is there).
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut b = [0; N];
    b.copy_from_slice(&bytes[at..at + N]);
    b
}

impl HttpEvent {
    /// An all-zero event (what the kernel map starts from).
    pub const fn zeroed() -> Self {
        HttpEvent {
            kind: 0,
            direction: 0,
            family: 0,
            pid: 0,
            tid: 0,
            fd: 0,
            start_ns: 0,
            end_ns: 0,
            request_bytes: 0,
            response_bytes: 0,
            local_addr: [0; 16],
            peer_addr: [0; 16],
            local_port: 0,
            peer_port: 0,
            request_len: 0,
            response_len: 0,
            flags: 0,
            _pad: 0,
            conn_id: 0,
            traceparent: [0; TRACEPARENT_LEN],
            traceparent_source: TRACEPARENT_NONE,
            server_ids: [0; 24],
            injected_parent: [0; 8],
            request: [0; REQUEST_CAPTURE],
            response: [0; RESPONSE_CAPTURE],
        }
    }

    /// Decodes a ring-buffer sample, checking size, kind and captured lengths.
    /// Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<HttpEvent, DecodeError> {
        Ok(HttpEvent::check(bytes)?.to_event())
    }

    /// Checks a ring-buffer sample as [`HttpEvent::decode`] does, without copying it: the
    /// processor then copies it once, straight into the slot that keeps it
    /// ([`CheckedHttpEvent::write_to`]), instead of into a zeroed event first and from there
    /// into the slot (two copies and a clear of 576 bytes per request).
    pub fn check(bytes: &[u8]) -> Result<CheckedHttpEvent<'_>, DecodeError> {
        if bytes.len() < HTTP_EVENT_MIN_SIZE {
            return Err(DecodeError::Truncated {
                needed: HTTP_EVENT_MIN_SIZE,
                got: bytes.len(),
            });
        }
        if bytes[0] != EVENT_HTTP {
            return Err(DecodeError::UnknownKind(bytes[0]));
        }
        let bytes = &bytes[..bytes.len().min(HTTP_EVENT_SIZE)];
        let request_len =
            u16::from_ne_bytes(field(bytes, core::mem::offset_of!(HttpEvent, request_len)));
        let response_len =
            u16::from_ne_bytes(field(bytes, core::mem::offset_of!(HttpEvent, response_len)));
        if request_len as usize > bytes.len() - HTTP_EVENT_MIN_SIZE
            || response_len as usize > RESPONSE_CAPTURE
        {
            return Err(DecodeError::BadLength);
        }
        Ok(CheckedHttpEvent {
            bytes,
            conn_id: u64::from_ne_bytes(field(bytes, core::mem::offset_of!(HttpEvent, conn_id))),
            flags: u32::from_ne_bytes(field(bytes, core::mem::offset_of!(HttpEvent, flags))),
        })
    }

    /// Bytes of this event on the wire: the fixed part plus the captured request bytes.
    pub fn wire_len(&self) -> usize {
        HTTP_EVENT_MIN_SIZE + (self.request_len as usize).min(REQUEST_CAPTURE)
    }

    /// The captured request bytes.
    pub fn request(&self) -> &[u8] {
        &self.request[..(self.request_len as usize).min(REQUEST_CAPTURE)]
    }

    /// The captured response bytes.
    pub fn response(&self) -> &[u8] {
        &self.response[..(self.response_len as usize).min(RESPONSE_CAPTURE)]
    }

    /// The `traceparent` value the kernel found past the capture or injected, with its
    /// `TRACEPARENT_*` source; None when the field is empty.
    pub fn extra_traceparent(&self) -> Option<(&[u8; TRACEPARENT_LEN], u8)> {
        (self.traceparent_source != TRACEPARENT_NONE)
            .then_some((&self.traceparent, self.traceparent_source))
    }

    /// The trace and span ids the kernel gave this server span (context propagation), if any.
    pub fn kernel_server_ids(&self) -> Option<([u8; 16], [u8; 8])> {
        if self.server_ids == [0; 24] {
            return None;
        }
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        trace.copy_from_slice(&self.server_ids[..16]);
        span.copy_from_slice(&self.server_ids[16..]);
        Some((trace, span))
    }

    /// The server span an injected client request was sent under (context propagation), if
    /// any.
    pub fn kernel_injected_parent(&self) -> Option<[u8; 8]> {
        (self.injected_parent != [0; 8]).then_some(self.injected_parent)
    }

    /// The record the kernel writes for this event: `wire_len()` bytes (used by tests and
    /// fuzzers).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: HttpEvent is repr(C) plain data with explicit padding fields, so all
        // HTTP_EVENT_SIZE >= wire_len() bytes are initialised; the slice borrows self.
        unsafe {
            core::slice::from_raw_parts((self as *const HttpEvent).cast::<u8>(), self.wire_len())
        }
    }

    /// This event as a record to write elsewhere, as a checked ring record is: an event in
    /// memory needs no check (its bytes fit an event, and `request()` and `response()` stop
    /// within their buffers whatever the lengths say).
    pub fn as_checked(&self) -> CheckedHttpEvent<'_> {
        CheckedHttpEvent {
            bytes: self.as_bytes(),
            conn_id: self.conn_id,
            flags: self.flags,
        }
    }
}

/// What happened on a connection after its `HttpEvent` was emitted: more response bytes
/// (`EVENT_RESPONSE_MORE`) or the end of the connection (`EVENT_CONN_CLOSED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeUpdate {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub pid: u32,
    pub conn_id: u64,
    /// Response bytes moved by this syscall (0 for a close).
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds when they had moved (or the connection closed).
    pub end_ns: u64,
}

/// One record of the HTTP ring buffer, decoded.
#[derive(Clone, Copy)]
#[allow(
    clippy::large_enum_variant,
    reason = "a record lives on the stack for one call; boxing would allocate per event"
)]
pub enum Record<'a> {
    Http(HttpEvent),
    Update(ExchangeUpdate),
    /// A stream chunk's header and its captured bytes.
    Chunk(ChunkHeader, &'a [u8]),
    /// The endpoints of a TLS connection, learned late.
    Tuple(ConnTuple),
    /// A thread of a selected process started or ended.
    Thread(ThreadNotice),
}

impl Record<'_> {
    /// Decodes a ring-buffer sample by its kind byte. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
        match bytes.first() {
            Some(&EVENT_HTTP) => HttpEvent::decode(bytes).map(Record::Http),
            Some(&(EVENT_RESPONSE_MORE | EVENT_CONN_CLOSED | EVENT_REQUEST_MORE)) => {
                ExchangeUpdate::decode(bytes).map(Record::Update)
            }
            Some(&EVENT_STREAM_CHUNK) => {
                ChunkHeader::decode(bytes).map(|(h, payload)| Record::Chunk(h, payload))
            }
            Some(&EVENT_CONN_TUPLE) => ConnTuple::decode(bytes).map(Record::Tuple),
            Some(&EVENT_THREAD) => ThreadNotice::decode(bytes).map(Record::Thread),
            Some(&other) => Err(DecodeError::UnknownKind(other)),
            None => Err(DecodeError::Truncated { needed: 1, got: 0 }),
        }
    }
}

impl ExchangeUpdate {
    pub const SIZE: usize = core::mem::size_of::<ExchangeUpdate>();

    /// Decodes an update record (size and kind checked).
    pub fn decode(bytes: &[u8]) -> Result<ExchangeUpdate, DecodeError> {
        if bytes.len() < Self::SIZE {
            return Err(DecodeError::Truncated {
                needed: Self::SIZE,
                got: bytes.len(),
            });
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_ne_bytes(b)
        };
        let kind = bytes[0];
        if kind != EVENT_RESPONSE_MORE && kind != EVENT_CONN_CLOSED && kind != EVENT_REQUEST_MORE {
            return Err(DecodeError::UnknownKind(kind));
        }
        Ok(ExchangeUpdate {
            kind,
            _pad: [0; 3],
            pid: u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            conn_id: word(8),
            bytes: word(16),
            end_ns: word(24),
        })
    }

    /// The record the kernel writes for this update (used by tests and fuzzers).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: ExchangeUpdate is repr(C) plain integers with explicit padding, so all
        // SIZE bytes are initialised; the slice borrows self.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }
}

/// `ProcEvent::kind`: a process called execve.
pub const PROC_EXEC: u32 = 1;
/// `ProcEvent::kind`: a thread-group leader exited.
pub const PROC_EXIT: u32 = 2;
/// `ProcEvent::kind`: a selected process forked.
pub const PROC_FORK: u32 = 3;
/// `ProcEvent::kind`: a process started listening on a TCP port the selection covers (every
/// such `listen()`, in any network namespace; `child_pid` holds the port).
pub const PROC_LISTEN: u32 = 4;

/// Process lifecycle notice for the loader (never carries payload bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    pub pid: u32,
    /// For `PROC_FORK`: the new task's id. For `PROC_LISTEN`: the local port.
    pub child_pid: u32,
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` in nanoseconds when the kernel wrote the notice. For `PROC_FORK` this
    /// is just after the child's `start_boottime`, so the loader can tell the child from a
    /// later process that reused its pid (`/proc/<pid>/stat` field 22 is `start_boottime` in
    /// clock ticks).
    pub boot_ns: u64,
}

/// Indices into the kernel's per-CPU `COUNTERS` array; each counts something dropped or
/// skipped. The loader sums them across CPUs and reports them by these names.
pub mod counters {
    /// `bpf_ringbuf_output` of an HTTP event failed: the ring buffer was full.
    pub const EVENTS_LOST_RINGBUF_FULL: u32 = 0;
    /// A new connection could not be tracked: the connection map was full.
    pub const CONN_MAP_FULL: u32 = 1;
    /// Socket I/O through a syscall whose fd is not in its first argument (io_uring,
    /// recvmmsg, …): not paired.
    pub const UNTRACKED_SYSCALLS: u32 = 2;
    /// Inbound or outbound data on an untracked connection that started like neither HTTP/1.x
    /// nor HTTP/2 (sent on as an "other TCP" stream for the processor to classify), or non-HTTP
    /// bytes where an HTTP/1 request was expected.
    pub const NON_HTTP_PAYLOADS: u32 = 3;
    /// A process event could not be written: the process ring buffer was full.
    pub const PROC_EVENTS_LOST: u32 = 4;
    /// HTTP events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 5;
    /// An `ExchangeUpdate` (more response bytes, close notice) could not be written: the ring
    /// buffer was full. The span of that exchange still goes out, short of those bytes.
    pub const UPDATES_LOST_RINGBUF_FULL: u32 = 6;
    /// A stream chunk (HTTP/2 bytes) could not be written: the ring buffer was full. The
    /// processor loses that connection's frame sync until it finds it again.
    pub const CHUNKS_LOST_RINGBUF_FULL: u32 = 7;
    /// Stream chunks written to the ring buffer.
    pub const CHUNKS_SENT: u32 = 8;
    /// Stream chunks whose syscall moved more bytes than were captured (more than
    /// `STREAM_CAPTURE`, or more iovec segments than the kernel walks).
    pub const CHUNKS_TRUNCATED: u32 = 9;
    /// Sockets linked to an OpenSSL `SSL` object (their bytes are ciphertext; the plaintext
    /// comes from the uprobes).
    pub const TLS_LINKS: u32 = 10;
    /// TLS records on sockets not linked to an `SSL` object: handshakes, and connections of
    /// libraries Sonde cannot see into. Counted, never parsed.
    pub const TLS_UNLINKED_PAYLOADS: u32 = 11;
    /// An `SSL_read`/`SSL_write` call could not be followed: the per-thread call table was full.
    pub const TLS_CALLS_UNTRACKED: u32 = 12;
    /// A tuple record (a TLS connection's endpoints) could not be written: ring buffer full.
    pub const TUPLES_LOST_RINGBUF_FULL: u32 = 13;
    /// HTTP/1 requests whose header block ran past the captured bytes: the kernel looked
    /// through the rest of it for `traceparent` (with context propagation on, every server
    /// request: its whole block is searched).
    pub const HEADER_SCANS: u32 = 14;
    /// `traceparent` headers the kernel found past the captured bytes (with context
    /// propagation on, anywhere in a server request's header block).
    pub const HEADER_SCAN_TRACEPARENTS: u32 = 15;
    /// Header blocks still unfinished after `HEADER_SCAN_LIMIT` bytes of one syscall: the
    /// kernel stopped looking (a `traceparent` further on is not seen).
    pub const HEADER_SCANS_CUT: u32 = 16;
    /// A thread start or end notice could not be written: ring buffer full (a client span of
    /// that thread is not linked to the request that started it).
    pub const THREAD_NOTICES_LOST: u32 = 17;
    /// Context propagation on: server requests whose thread was found serving another request
    /// still unanswered; the thread is ambiguous from then on (`inject::SERVING`).
    pub const OVERLAPPING_SERVER_REQUESTS: u32 = 18;
    /// Number of counters.
    pub const COUNT: u32 = 19;

    /// Names, in index order, as reported by the loader and the processor.
    pub const NAMES: [&str; COUNT as usize] = [
        "events_lost_ringbuf_full",
        "conn_map_full",
        "untracked_syscalls",
        "non_http_payloads",
        "proc_events_lost",
        "events_sent",
        "updates_lost_ringbuf_full",
        "chunks_lost_ringbuf_full",
        "chunks_sent",
        "chunks_truncated",
        "tls_links",
        "tls_unlinked_payloads",
        "tls_calls_untracked",
        "tuples_lost_ringbuf_full",
        "header_scans",
        "header_scan_traceparents",
        "header_scans_cut",
        "thread_notices_lost",
        "inject_overlapping_server_requests",
    ];

    /// True for the counters that count something lost (events, updates, process notices,
    /// connections not tracked because the map was full): a report where one of them grew is
    /// a warning, any other is routine.
    pub const fn is_loss(index: u32) -> bool {
        matches!(
            index,
            EVENTS_LOST_RINGBUF_FULL
                | CONN_MAP_FULL
                | PROC_EVENTS_LOST
                | UPDATES_LOST_RINGBUF_FULL
                | CHUNKS_LOST_RINGBUF_FULL
                | TLS_CALLS_UNTRACKED
                | TUPLES_LOST_RINGBUF_FULL
                | THREAD_NOTICES_LOST
        )
    }

    /// `is_loss` by name, for counters that travelled as (name, value) pairs.
    pub fn is_loss_name(name: &str) -> bool {
        NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| is_loss(i as u32))
    }
}

/// Offsets the loader computes at start-up (tracefs format files, kernel BTF) and writes into
/// the kernel programs' read-only globals, so nothing about the kernel is hard-coded.
pub mod globals {
    pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID_OFF";
    pub const SKC_DADDR: &str = "SKC_DADDR_OFF";
    pub const SKC_RCV_SADDR: &str = "SKC_RCV_SADDR_OFF";
    pub const SKC_DPORT: &str = "SKC_DPORT_OFF";
    pub const SKC_NUM: &str = "SKC_NUM_OFF";
    pub const SKC_FAMILY: &str = "SKC_FAMILY_OFF";
    pub const SK_PROTOCOL: &str = "SK_PROTOCOL_OFF";
    pub const SKC_V6_DADDR: &str = "SKC_V6_DADDR_OFF";
    pub const SKC_V6_RCV_SADDR: &str = "SKC_V6_RCV_SADDR_OFF";
    /// Non-zero: the `sock_common` fields above lie within the first `SOCK_HEAD_BYTES` of the
    /// struct, which the TLS probes copy in one read (the socket programs load each field).
    pub const SOCK_HEAD_COVERS: &str = "SOCK_HEAD_COVERS";
    pub const SOCK_HEAD_BYTES: u32 = 24;
    /// `struct task_struct::pid` and `::tgid` (the socket programs' pid filter).
    pub const TASK_PID: &str = "TASK_PID_OFF";
    pub const TASK_TGID: &str = "TASK_TGID_OFF";
    /// Non-zero: report every `execve` on the machine (executable-path selection needs them);
    /// zero: only those of selected processes.
    pub const NOTIFY_ALL_EXECS: &str = "NOTIFY_ALL_EXECS";
    /// Non-zero: the OpenSSL uprobes are attached, so sockets may be linked to TLS connections.
    pub const TLS_ENABLED: &str = "TLS_ENABLED";
    /// `64 - log2(slots of CONN_SLOTS)`: a socket's slot is the top bits of its hash.
    pub const CONN_SLOT_SHIFT: &str = "CONN_SLOT_SHIFT";
    /// Flow metrics: `struct sk_buff` and `struct net_device` offsets (kernel BTF), and
    /// whether loopback devices are skipped in the kernel (`lo` excluded).
    pub const SKB_LEN: &str = "SKB_LEN_OFF";
    pub const SKB_DEV: &str = "SKB_DEV_OFF";
    pub const SKB_HEAD: &str = "SKB_HEAD_OFF";
    pub const SKB_DATA: &str = "SKB_DATA_OFF";
    pub const SKB_END: &str = "SKB_END_OFF";
    pub const SKB_NETWORK_HEADER: &str = "SKB_NETWORK_HEADER_OFF";
    pub const SKB_PROTOCOL: &str = "SKB_PROTOCOL_OFF";
    pub const SHINFO_GSO_SEGS: &str = "SHINFO_GSO_SEGS_OFF";
    pub const DEV_IFINDEX: &str = "DEV_IFINDEX_OFF";
    pub const DEV_NAME: &str = "DEV_NAME_OFF";
    pub const DEV_FLAGS: &str = "DEV_FLAGS_OFF";
    pub const FLOWS_SKIP_LOOPBACK: &str = "FLOWS_SKIP_LOOPBACK";
}

/// The OpenSSL uprobes: program names and the cookie each link carries to say which function
/// it is attached to.
pub mod tls {
    /// Entry program (a uprobe), attached to every function below.
    pub const ENTRY_PROGRAM: &str = "ssl_entry";
    /// Return program (a uretprobe), attached to every function below.
    pub const RETURN_PROGRAM: &str = "ssl_return";
    pub const COOKIE_READ: u64 = 1;
    pub const COOKIE_WRITE: u64 = 2;
    pub const COOKIE_READ_EX: u64 = 3;
    pub const COOKIE_WRITE_EX: u64 = 4;
    /// The functions probed, with their cookies.
    pub const FUNCTIONS: [(&str, u64); 4] = [
        ("SSL_read", COOKIE_READ),
        ("SSL_write", COOKIE_WRITE),
        ("SSL_read_ex", COOKIE_READ_EX),
        ("SSL_write_ex", COOKIE_WRITE_EX),
    ];
}

/// Name of the HTTP event ring buffer map.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the process event ring buffer map.
pub const PROC_EVENTS_MAP: &str = "PROC_EVENTS";
/// Name of the PID filter: an mmap-able array of `u64` holding one byte per pid (byte
/// `pid % 8` of word `pid / 8`, non-zero = selected).
pub const PID_FILTER_MAP: &str = "PID_FILTER";
/// Name of the `listen()` port filter (array of `u64`; bit `port % 64` of word `port / 64`).
pub const LISTEN_PORTS_MAP: &str = "LISTEN_PORTS";
/// Name of the per-CPU counters map.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the connection map.
pub const CONNS_MAP: &str = "CONNS";
/// Name of the close path's counting filter in front of `CONNS` (array of `u64`).
pub const CONN_SLOTS_MAP: &str = "CONN_SLOTS";

/// Slots of `CONN_SLOTS` for a connection table of `max_connections`: four per connection, a
/// power of two, from 65,536 (512 KiB) to 1,048,576 (8 MiB of kernel memory), so a full table
/// still leaves most slots of untracked sockets at zero.
pub fn conn_slots(max_connections: u32) -> u32 {
    max_connections
        .saturating_mul(4)
        .clamp(1 << 16, 1 << 20)
        .next_power_of_two()
}

/// Name of the stream-chunk scratch array (one slot per possible CPU).
pub const CHUNK_BUF_MAP: &str = "CHUNK_BUF";

/// Network flow metrics: what the packet tracepoints (`net:netif_receive_skb`,
/// `net:net_dev_start_xmit`) count per flow, in the per-CPU LRU hash `FLOWS` the loader reads.
pub mod flows {
    /// Name of the flow map (`BPF_MAP_TYPE_LRU_PERCPU_HASH`, `FlowKey` → `FlowValue`).
    pub const FLOWS_MAP: &str = "FLOWS";
    /// Program names; each is attached to the raw tracepoint of the same name.
    pub const INGRESS_PROGRAM: &str = "netif_receive_skb";
    pub const EGRESS_PROGRAM: &str = "net_dev_start_xmit";
    /// `FlowKey::direction`: received on the interface (`netif_receive_skb`).
    pub const DIRECTION_INGRESS: u8 = 1;
    /// `FlowKey::direction`: handed to the interface's driver (`net_dev_start_xmit`).
    pub const DIRECTION_EGRESS: u8 = 2;
    /// `IFNAMSIZ`: interface names are at most 15 bytes and a NUL.
    pub const IFACE_NAME_BYTES: usize = 16;
    /// Bytes of `struct sk_buff` the programs read at once, from `len` (the lowest field they
    /// use after `dev`) to the end of `data`: exactly Linux 6.18's 96 (more would exceed the
    /// eBPF stack). The loader refuses a layout that does not fit.
    pub const SKB_WINDOW: usize = 96;

    /// One flow on one interface in one direction. Every byte is written (padding is explicit
    /// and zero), so equal flows hash equally.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FlowKey {
        /// IPv6, or IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
        pub src: [u8; 16],
        pub dst: [u8; 16],
        /// The kernel's `struct net_device *`: interfaces of different network namespaces may
        /// share an ifindex. It never leaves the loader.
        pub dev: u64,
        pub ifindex: u32,
        /// Host byte order; 0 for transports without ports (ICMP) and non-first fragments.
        pub src_port: u16,
        pub dst_port: u16,
        /// IANA protocol number (IPv4 protocol / IPv6 next header).
        pub transport: u8,
        pub direction: u8,
        pub _pad: [u8; 6],
    }

    /// A flow's counts on one CPU since its entry was created.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FlowValue {
        /// IP-layer bytes (IP headers included, link layer not); a GSO/GRO aggregate of `n`
        /// segments counts its length plus `(n - 1)` copies of its IP and L4 headers.
        pub bytes: u64,
        /// Packets; a GSO/GRO aggregate counts as its `gso_segs` segments.
        pub packets: u64,
        /// The interface's name when the entry was created (NUL-padded).
        pub iface: [u8; IFACE_NAME_BYTES],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_slots_are_four_per_connection_a_power_of_two_within_bounds() {
        // The configuration allows 64 … 1,048,576 connections.
        assert_eq!(conn_slots(64), 1 << 16);
        assert_eq!(conn_slots(16_384), 1 << 16);
        assert_eq!(conn_slots(20_000), 1 << 17);
        assert_eq!(conn_slots(32_768), 1 << 17);
        assert_eq!(conn_slots(262_144), 1 << 20);
        assert_eq!(conn_slots(1_048_576), 1 << 20);
        assert_eq!(conn_slots(u32::MAX), 1 << 20);
        for n in [64, 1000, 16_385, 100_000, 1_048_576] {
            assert!(conn_slots(n).is_power_of_two(), "{n}");
        }
    }

    #[test]
    fn flow_layouts_have_no_implicit_padding() {
        // The kernel hashes every key byte: the explicit `_pad` must cover all padding.
        assert_eq!(core::mem::size_of::<flows::FlowKey>(), 56);
        assert_eq!(core::mem::size_of::<flows::FlowValue>(), 32);
    }

    #[test]
    fn decode_round_trip() {
        let mut e = HttpEvent::zeroed();
        e.kind = EVENT_HTTP;
        e.direction = DIRECTION_SERVER;
        e.pid = 42;
        e.request_len = 3;
        e.request[..3].copy_from_slice(b"GET");
        assert_eq!(e.as_bytes().len(), HTTP_EVENT_MIN_SIZE + 3);
        let d = HttpEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(d.pid, 42);
        assert_eq!(d.request(), b"GET");
        // A record cut inside its declared request bytes is rejected.
        assert_eq!(
            HttpEvent::decode(&e.as_bytes()[..HTTP_EVENT_MIN_SIZE + 2]).err(),
            Some(DecodeError::BadLength)
        );
    }

    #[test]
    fn a_checked_record_written_over_a_used_event_reads_as_the_record() {
        let mut long = HttpEvent::zeroed();
        long.kind = EVENT_HTTP;
        long.request_len = 20;
        long.request[..20].copy_from_slice(b"POST /a-longer-path ");
        let mut short = HttpEvent::zeroed();
        short.kind = EVENT_HTTP;
        short.conn_id = 0x0102_0304_0506_0708;
        short.flags = FLAG_NO_RESPONSE;
        short.response_len = 2;
        short.response[..2].copy_from_slice(b"HT");
        short.request_len = 6;
        short.request[..6].copy_from_slice(b"GET / ");
        let checked = HttpEvent::check(short.as_bytes()).unwrap();
        assert_eq!(
            (checked.conn_id, checked.flags),
            (short.conn_id, FLAG_NO_RESPONSE)
        );
        let mut slot = long;
        checked.write_to(&mut slot);
        assert_eq!(slot.request(), b"GET / ");
        assert_eq!(slot.response(), b"HT");
        assert_eq!(slot.conn_id, short.conn_id);
        // The same event as `decode` gives, whose bytes past the record are zero.
        assert_eq!(checked.to_event().as_bytes(), slot.as_bytes());
        assert_eq!(
            HttpEvent::decode(short.as_bytes()).unwrap().as_bytes(),
            slot.as_bytes()
        );
    }

    #[test]
    fn decode_rejects_short_unknown_and_bad_lengths() {
        let mut e = HttpEvent::zeroed();
        e.kind = EVENT_HTTP;
        let bytes = e.as_bytes();
        assert_eq!(
            HttpEvent::decode(&bytes[..10]).err(),
            Some(DecodeError::Truncated {
                needed: HTTP_EVENT_MIN_SIZE,
                got: 10
            })
        );
        e.kind = 9;
        assert_eq!(
            HttpEvent::decode(e.as_bytes()).err(),
            Some(DecodeError::UnknownKind(9))
        );
        e.kind = EVENT_HTTP;
        e.request_len = 257;
        assert_eq!(
            HttpEvent::decode(e.as_bytes()).err(),
            Some(DecodeError::BadLength)
        );
    }

    #[test]
    fn records_decode_by_kind() {
        let update = ExchangeUpdate {
            kind: EVENT_RESPONSE_MORE,
            _pad: [0; 3],
            pid: 7,
            conn_id: 99,
            bytes: 1500,
            end_ns: 12345,
        };
        match Record::decode(update.as_bytes()) {
            Ok(Record::Update(u)) => assert_eq!(u, update),
            _ => panic!("update not decoded"),
        }
        assert_eq!(
            Record::decode(&update.as_bytes()[..31]).err(),
            Some(DecodeError::Truncated {
                needed: 32,
                got: 31
            })
        );
        let mut e = HttpEvent::zeroed();
        e.kind = EVENT_HTTP;
        e.conn_id = 5;
        match Record::decode(e.as_bytes()) {
            Ok(Record::Http(h)) => assert_eq!(h.conn_id, 5),
            _ => panic!("event not decoded"),
        }
        assert_eq!(
            Record::decode(&[]).err(),
            Some(DecodeError::Truncated { needed: 1, got: 0 })
        );
        assert_eq!(
            Record::decode(&[0; 40]).err(),
            Some(DecodeError::UnknownKind(0))
        );
    }

    #[test]
    fn chunks_decode_with_their_payload() {
        let mut h = ChunkHeader::zeroed();
        h.kind = EVENT_STREAM_CHUNK;
        h.conn_id = 3;
        h.total = 100;
        h.captured = 4;
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(b"abcdEXTRA");
        match Record::decode(&bytes) {
            Ok(Record::Chunk(d, payload)) => {
                assert_eq!(d, h);
                assert_eq!(payload, b"abcd");
            }
            _ => panic!("chunk not decoded"),
        }
        // More captured than present, or than moved, is rejected.
        assert_eq!(
            ChunkHeader::decode(&bytes[..ChunkHeader::SIZE + 3]).err(),
            Some(DecodeError::BadLength)
        );
        h.total = 2;
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(b"abcd");
        assert_eq!(
            ChunkHeader::decode(&bytes).err(),
            Some(DecodeError::BadLength)
        );
    }

    #[test]
    fn layout_is_stable() {
        // The kernel writes this struct; its size is part of the wire contract.
        assert_eq!(
            HTTP_EVENT_SIZE,
            104 + TRACEPARENT_LEN + 1 + 24 + 8 + REQUEST_CAPTURE + RESPONSE_CAPTURE
        );
        assert_eq!(core::mem::size_of::<ProcEvent>(), 24);
        assert_eq!(ExchangeUpdate::SIZE, 32);
        assert_eq!(ChunkHeader::SIZE, 88);
        assert_eq!(ConnTuple::SIZE, 56);
        assert_eq!(ThreadNotice::SIZE, 24);
        assert_eq!(counters::NAMES.len(), counters::COUNT as usize);
    }

    #[test]
    fn thread_notices_round_trip_and_short_ones_are_refused() {
        let n = ThreadNotice {
            kind: EVENT_THREAD,
            what: THREAD_STARTED,
            _pad: 0,
            pid: 10,
            tid: 12,
            parent_tid: 11,
            ns: 123_456_789,
        };
        // SAFETY: repr(C) plain integers with explicit padding: all SIZE bytes are initialised.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&n as *const ThreadNotice).cast::<u8>(),
                ThreadNotice::SIZE,
            )
        };
        match Record::decode(bytes) {
            Ok(Record::Thread(d)) => assert_eq!(d, n),
            _ => panic!("thread notice not decoded"),
        }
        assert!(matches!(
            Record::decode(&bytes[..ThreadNotice::SIZE - 1]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}

/// Process metrics (`application_process`): socket bytes per captured process, counted in the
/// kernel by the socket I/O programs only while the read-only global [`process_net::ENABLED`]
/// is non-zero, and read by the loader every `processes.interval`.
pub mod process_net {
    /// Name of the map (`BPF_MAP_TYPE_PERCPU_HASH`, tgid `u32` → `[u64; 2]` per CPU: bytes received at
    /// [`RECEIVED`], sent at [`SENT`], since the process was captured).
    pub const MAP: &str = "PROC_NET_BYTES";
    /// Processes counted at once; a process beyond that is not counted (its network I/O
    /// reads 0). Entries are removed when the process exits or is deselected.
    pub const MAX_PROCESSES: u32 = 4096;
    /// Name of the read-only global (`u32`) that turns counting on.
    pub const ENABLED: &str = "PROCESS_METRICS";
    /// Index of the received bytes in a value.
    pub const RECEIVED: usize = 0;
    /// Index of the sent bytes in a value.
    pub const SENT: usize = 1;
}

/// Context propagation (`ebpf.context_propagation: headers`): the kernel adds a W3C
/// `traceparent` to cleartext HTTP/1 requests sent by selected processes. A cgroup `connect`
/// program marks the sockets selected processes connect, a `sock_ops` program puts the marked
/// ones into [`inject::SOCKHASH`] once established, and an `sk_msg` program on that map writes
/// the header. Everything here is attached only while the feature is on.
pub mod inject {
    /// Name of the read-only global (`u32`): non-zero when the programs are attached, so the
    /// socket-write path copies the injected `traceparent` into its `HttpEvent`.
    pub const ENABLED: &str = "INJECT_ENABLED";
    /// The `BPF_MAP_TYPE_SOCKHASH` (key: socket cookie `u64`) holding selected processes'
    /// client sockets; the `sk_msg` program is attached to it.
    pub const SOCKHASH: &str = "INJECT_SOCKS";
    /// Sockets a selected process connected, not yet established (socket cookie → 1).
    pub const MARKED: &str = "INJECT_MARKED";
    /// Per-CPU counters, indexed by the constants below.
    pub const STATS: &str = "INJECT_STATS";
    /// One `u64`: the processor's sampling rule for the flags of an injected `traceparent`,
    /// plus one (0, until a processor says: every trace sampled). Sampled when the upper 63
    /// bits of the trace id's last 8 bytes are below the rule.
    pub const SAMPLING: &str = "INJECT_SAMPLING";
    /// The request each thread is serving (pid_tgid key): the ids the kernel gave its server
    /// span, so a request the thread sends meanwhile is injected into that trace, as the
    /// server span's child. A thread seen reading a request while another was still waiting
    /// for its response is marked ambiguous and propagates no server context from then on.
    pub const SERVING: &str = "INJECT_SERVING";
    /// Threads remembered in `SERVING`.
    pub const MAX_SERVING_THREADS: u32 = 16384;
    /// Programs: cgroup `connect4` / `connect6`, cgroup `sock_ops`, `sk_msg`.
    pub const CONNECT4_PROGRAM: &str = "inject_connect4";
    pub const CONNECT6_PROGRAM: &str = "inject_connect6";
    pub const SOCK_OPS_PROGRAM: &str = "inject_sock_ops";
    pub const SK_MSG_PROGRAM: &str = "inject_sk_msg";
    /// Sockets in the map at once; a socket beyond that is not injected into (counted).
    pub const MAX_SOCKETS: u32 = 65536;
    /// Bytes of a message's start looked at for a whole header block: a longer header block
    /// is left untouched (counted as `not_whole`).
    pub const SCAN_LIMIT: u32 = 1024;
    /// The header line added: `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`.
    pub const LINE_LEN: u32 = 13 + super::TRACEPARENT_LEN as u32 + 2;

    /// Counter indices.
    pub const SOCKETS_ADDED: u32 = 0;
    pub const SOCKHASH_FULL: u32 = 1;
    pub const INJECTED: u32 = 2;
    pub const HAD_TRACEPARENT: u32 = 3;
    pub const NOT_WHOLE: u32 = 4;
    pub const GAVE_UP: u32 = 5;
    pub const FAILED: u32 = 6;
    /// Of `INJECTED`: sent while the thread served one request, in that request's trace.
    pub const UNDER_SERVER: u32 = 7;
    /// Of `INJECTED`: sent by a thread marked ambiguous (it served overlapping requests), as a
    /// trace of its own.
    pub const SERVER_AMBIGUOUS: u32 = 8;
    pub const COUNT: u32 = 9;
    /// Names, in index order (loader stats log and `--audit`).
    pub const NAMES: [&str; COUNT as usize] = [
        "inject_sockets_added",
        "inject_sockhash_full",
        "inject_headers_added",
        "inject_skipped_had_traceparent",
        "inject_skipped_not_whole_header",
        "inject_connections_given_up",
        "inject_failed",
        "inject_headers_under_server_span",
        "inject_headers_ambiguous_thread",
    ];
}
