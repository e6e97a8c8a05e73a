//! The per-connection tracker: reassembles frames in each direction from captured chunks,
//! decodes header blocks, follows every stream from its request HEADERS to its end, and
//! handles what capture loses (see the module above for the policy).

use std::collections::{HashMap, VecDeque};

use super::frame::{self, FrameHeader, HEADER_LEN, PREFACE, Resync};
use super::hpack::{Decoder, HpackError};
use super::{
    Counters, Exchange, Flow, Limits, MAX_VALUE_LEN, Outcome, RequestHeaders, ResponseHeaders,
};

/// Stream ids remembered after their exchange is emitted, so that frames still in flight
/// for them (a peer's RST after our END_STREAM, late trailers) are not taken for new
/// streams.
const RECENTLY_CLOSED: usize = 64;

/// One direction's position in its byte stream.
#[derive(Debug, Clone, Copy)]
enum Parse {
    /// Nothing decided yet in this direction: `len` bytes of a first chunk too short to
    /// judge are kept in `buf`.
    Unstarted { buf: [u8; HEADER_LEN], len: usize },
    /// Inside the client preface, `matched` bytes of it seen.
    Preface { matched: usize },
    /// Collecting a frame header; `ts` is the chunk its first byte came in.
    Header {
        buf: [u8; HEADER_LEN],
        len: usize,
        ts: u64,
    },
    /// Inside a frame's payload.
    Payload(Frame),
    /// Frame boundaries lost: waiting for a chunk that starts with plausible frames.
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    header: FrameHeader,
    ts: u64,
    /// Payload bytes consumed so far (captured or skipped).
    pos: u32,
    /// How many leading payload bytes the frame's handling needs kept.
    keep: usize,
    /// Some of those leading bytes were not captured.
    missing: bool,
}

/// How a direction's byte stream began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// With the client preface.
    Preface,
    /// With a SETTINGS frame: the server's preface, as far as we can tell.
    ServerSettings,
    /// Somewhere in the middle.
    MidStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Headers { end_stream: bool },
    PushPromise,
}

/// A header block being assembled from HEADERS/PUSH_PROMISE and CONTINUATION fragments.
struct Block {
    stream_id: u32,
    kind: BlockKind,
    /// The chunk the block's first frame started in.
    ts: u64,
    buf: Vec<u8>,
    /// Some of it was not captured or did not fit: it cannot be decoded.
    lost: bool,
}

struct Direction {
    parse: Parse,
    start: Option<Start>,
    decoder: Decoder,
    /// The kept prefix of the current frame's payload.
    payload: Vec<u8>,
    block: Option<Block>,
    /// Highest stream id this direction opened with request HEADERS.
    max_opened: u32,
    /// Highest stream id this direction promised with PUSH_PROMISE.
    max_promised: u32,
    /// Parity (id % 2) of the streams this direction opened with decoded requests.
    opened_parity: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE of the receiving end: a longer frame would have ended the
    /// connection, so here it means we are reading something else.
    max_frame_size: u32,
}

impl Direction {
    fn new(limits: &Limits) -> Direction {
        Direction {
            parse: Parse::Unstarted {
                buf: [0; HEADER_LEN],
                len: 0,
            },
            start: None,
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            decoder: Decoder::new(limits.max_table_size),
            payload: Vec::new(),
            block: None,
            max_opened: 0,
            max_promised: 0,
            opened_parity: None,
        }
    }
}

/// The header fields an exchange keeps, collected from one block.
#[derive(Default)]
struct Fields {
    request: RequestHeaders,
    status: Option<u16>,
    /// A `:status` field was present (even if its value made no sense).
    has_status: bool,
    content_type: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        let r = &mut self.request;
        let slot = match name {
            b":method" => &mut r.method,
            b":path" => &mut r.path,
            b":authority" => &mut r.authority,
            b":scheme" => &mut r.scheme,
            b"user-agent" => &mut r.user_agent,
            b"traceparent" => &mut r.traceparent,
            b"tracestate" => &mut r.tracestate,
            b"content-type" => &mut self.content_type,
            b"grpc-message" => &mut self.grpc_message,
            b":status" => {
                if !self.has_status {
                    self.has_status = true;
                    self.status = parse_digits(value)
                        .filter(|s| (100..=999).contains(s))
                        .and_then(|s| u16::try_from(s).ok());
                }
                return;
            }
            b"grpc-status" => {
                if self.grpc_status.is_none() {
                    self.grpc_status = parse_digits(value);
                }
                return;
            }
            _ => return,
        };
        // The first occurrence wins; pseudo-headers may not repeat anyway.
        if slot.is_none() {
            *slot = Some(keep_value(value));
        }
    }
}

fn parse_digits(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A header value as kept in an exchange: cut at MAX_VALUE_LEN, backing off to a UTF-8
/// boundary, with invalid UTF-8 replaced.
fn keep_value(value: &[u8]) -> String {
    let mut cut = value.len().min(MAX_VALUE_LEN);
    let mut backoff = 0;
    while cut < value.len() && cut > 0 && backoff < 3 && value[cut] & 0xc0 == 0x80 {
        cut -= 1;
        backoff += 1;
    }
    let mut kept = String::from_utf8_lossy(&value[..cut]).into_owned();
    // Replacement characters take three bytes where the invalid byte took one.
    if kept.len() > MAX_VALUE_LEN {
        let mut end = MAX_VALUE_LEN;
        while !kept.is_char_boundary(end) {
            end -= 1;
        }
        kept.truncate(end);
    }
    kept
}

/// What a finished header block yielded.
enum Decoded {
    /// Decoded; `partial` if some fields referred to dynamic entries lost with the state.
    Fields { fields: Box<Fields>, partial: bool },
    /// Not captured, too large to buffer or decode, or rejected by HPACK: its fields are
    /// unknown.
    Lost,
}

/// Where a finished header block belongs.
#[derive(Debug, Clone, Copy)]
struct BlockEnd {
    id: u32,
    end_stream: bool,
    /// The chunk the block's first frame started in.
    start_ns: u64,
    /// The chunk that completed it.
    ts_ns: u64,
}

/// A tracked stream.
struct Stream {
    request_flow: Flow,
    request: RequestHeaders,
    response: ResponseHeaders,
    /// The request's method or path is unknown.
    headers_unknown: bool,
    request_start_ns: u64,
    response_start_ns: Option<u64>,
    /// Final (non-1xx) response headers seen, decoded or not: later blocks are trailers.
    response_started: bool,
    request_ended: bool,
    request_body_bytes: u64,
    response_body_bytes: u64,
}

/// One HTTP/2 connection as seen from one of its endpoints.
pub struct Connection {
    limits: Limits,
    inbound: Direction,
    outbound: Direction,
    streams: HashMap<u32, Stream>,
    recently_closed: VecDeque<u32>,
    counters: Counters,
    /// The kernel said it picked the connection up mid-stream.
    midstream: bool,
    last_ts_ns: u64,
}

impl Connection {
    pub fn new(limits: Limits) -> Connection {
        Connection {
            inbound: Direction::new(&limits),
            outbound: Direction::new(&limits),
            limits,
            streams: HashMap::new(),
            recently_closed: VecDeque::with_capacity(RECENTLY_CLOSED),
            counters: Counters::default(),
            midstream: false,
            last_ts_ns: 0,
        }
    }

    /// The capture started after the connection did (the kernel knows): no preface is
    /// expected, each direction starts at the first chunk that begins with plausible frames,
    /// and both HPACK states are unknown. Call before the first `feed`.
    pub fn picked_up_mid_stream(&mut self) {
        self.midstream = true;
    }

    /// The timestamp of the latest chunk fed (0 before any): where to end the open streams
    /// of a connection dropped without a close notice.
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Streams tracked and not yet emitted.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn dir(&self, flow: Flow) -> &Direction {
        match flow {
            Flow::Inbound => &self.inbound,
            Flow::Outbound => &self.outbound,
        }
    }

    fn dir_mut(&mut self, flow: Flow) -> &mut Direction {
        match flow {
            Flow::Inbound => &mut self.inbound,
            Flow::Outbound => &mut self.outbound,
        }
    }

    /// Takes one chunk: `captured` are the first bytes that moved in one read or write,
    /// `total >= captured.len()` is how many moved. Exchanges that end are pushed to `out`.
    pub fn feed(
        &mut self,
        flow: Flow,
        captured: &[u8],
        total: u64,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        self.last_ts_ns = self.last_ts_ns.max(ts_ns);
        let joined: Vec<u8>;
        let mut captured = captured;
        let mut total = total.max(captured.len() as u64);
        if let Parse::Unstarted { mut buf, len } = self.dir(flow).parse {
            let preface = PREFACE.starts_with(&captured[..captured.len().min(PREFACE.len())]);
            if len + captured.len() < HEADER_LEN
                && total == captured.len() as u64
                && !(len == 0 && preface && !captured.is_empty())
            {
                // Too few bytes to tell a frame header from anything else: wait for more.
                buf[len..len + captured.len()].copy_from_slice(captured);
                self.dir_mut(flow).parse = Parse::Unstarted {
                    buf,
                    len: len + captured.len(),
                };
                return;
            }
            if len > 0 {
                joined = [&buf[..len], captured].concat();
                captured = &joined;
                total += len as u64;
            }
            self.start(flow, captured);
        }
        if let Parse::Lost = self.dir(flow).parse {
            if !frame::plausible_start(captured, self.resync_fit(flow)) {
                return;
            }
            self.counters.resyncs += 1;
            self.dir_mut(flow).parse = Parse::Header {
                buf: [0; HEADER_LEN],
                len: 0,
                ts: ts_ns,
            };
        }

        let mut input = captured;
        while !input.is_empty() {
            let state = self.dir(flow).parse;
            match state {
                Parse::Preface { matched } => {
                    let n = (PREFACE.len() - matched).min(input.len());
                    if input[..n] != PREFACE[matched..matched + n] {
                        self.desync(flow, ts_ns, out);
                        return;
                    }
                    input = &input[n..];
                    self.dir_mut(flow).parse = if matched + n == PREFACE.len() {
                        Parse::Header {
                            buf: [0; HEADER_LEN],
                            len: 0,
                            ts: ts_ns,
                        }
                    } else {
                        Parse::Preface {
                            matched: matched + n,
                        }
                    };
                }
                Parse::Header { mut buf, len, ts } => {
                    let ts = if len == 0 { ts_ns } else { ts };
                    let n = (HEADER_LEN - len).min(input.len());
                    buf[len..len + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if len + n == HEADER_LEN {
                        self.begin_frame(flow, FrameHeader::parse(&buf), ts, ts_ns, out);
                    } else {
                        self.dir_mut(flow).parse = Parse::Header {
                            buf,
                            len: len + n,
                            ts,
                        };
                    }
                }
                Parse::Payload(mut f) => {
                    let remaining = (f.header.length - f.pos) as usize;
                    let n = remaining.min(input.len());
                    let dir = self.dir_mut(flow);
                    let want = f.keep.saturating_sub(dir.payload.len()).min(n);
                    dir.payload.extend_from_slice(&input[..want]);
                    input = &input[n..];
                    // n <= remaining, which came from a u32.
                    f.pos += n as u32;
                    self.continue_frame(flow, f, ts_ns, out);
                }
                Parse::Lost | Parse::Unstarted { .. } => break,
            }
        }

        let gap = total.saturating_sub(captured.len() as u64);
        if gap > 0 {
            self.skip_uncaptured(flow, gap, ts_ns, out);
        }
    }

    /// The connection closed: every open stream is emitted as ConnectionClosed.
    pub fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        for flow in [Flow::Inbound, Flow::Outbound] {
            let dir = self.dir_mut(flow);
            dir.block = None;
            dir.payload = Vec::new();
        }
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.emit(id, Outcome::ConnectionClosed, ts_ns, out);
        }
    }

    /// Decides how a direction's byte stream begins, from its first chunk.
    fn start(&mut self, flow: Flow, captured: &[u8]) {
        let other = self.dir(flow.opposite()).start;
        let preface = !captured.is_empty()
            && PREFACE.starts_with(&captured[..captured.len().min(PREFACE.len())]);
        let settings_first = captured.len() >= HEADER_LEN
            && frame::plausible_start(captured, Resync::UNKNOWN)
            && captured[3] == frame::SETTINGS
            && captured[4] & frame::FLAG_ACK == 0;
        let (start, parse) = if preface && !self.midstream {
            (Start::Preface, Parse::Preface { matched: 0 })
        } else if settings_first && !self.midstream && other != Some(Start::MidStream) {
            let parse = Parse::Header {
                buf: [0; HEADER_LEN],
                len: 0,
                ts: 0,
            };
            (Start::ServerSettings, parse)
        } else {
            let parse = if frame::plausible_start(captured, Resync::UNKNOWN) {
                Parse::Header {
                    buf: [0; HEADER_LEN],
                    len: 0,
                    ts: 0,
                }
            } else {
                Parse::Lost
            };
            (Start::MidStream, parse)
        };
        if start == Start::MidStream {
            self.counters.midstream_pickups += 1;
            let limits = self.limits;
            let dir = self.dir_mut(flow);
            dir.decoder = Decoder::new_unknown(limits.max_table_size);
            dir.max_frame_size = frame::MAX_FRAME_SIZE;
            // A SETTINGS frame first on the other side did not mean a fresh connection.
            if other == Some(Start::ServerSettings) {
                let other = self.dir_mut(flow.opposite());
                other.decoder.mark_unknown();
                other.max_frame_size = frame::MAX_FRAME_SIZE;
            }
        }
        let dir = self.dir_mut(flow);
        dir.start = Some(start);
        dir.parse = parse;
    }

    /// What a frame must fit to resynchronize `flow` on it.
    fn resync_fit(&self, flow: Flow) -> Resync {
        let highest = [Flow::Inbound, Flow::Outbound]
            .iter()
            .map(|&f| self.dir(f).max_opened.max(self.dir(f).max_promised))
            .chain(self.streams.keys().copied())
            .max()
            .unwrap_or(0);
        // Seen from its start, the connection has opened no stream we did not see beyond
        // the window; picked up mid-stream, stream ids start anywhere until one is seen.
        let from_start = [Flow::Inbound, Flow::Outbound].iter().any(|&f| {
            matches!(
                self.dir(f).start,
                Some(Start::Preface | Start::ServerSettings)
            )
        });
        let max_stream = (from_start || highest > 0).then_some(highest);
        Resync {
            max_len: self.dir(flow).max_frame_size,
            max_stream,
        }
    }

    /// Frame boundaries are lost in this direction: whatever was partial goes, and so does
    /// the HPACK table (header blocks may have been missed).
    fn desync(&mut self, flow: Flow, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.counters.desync += 1;
        self.abandon_block(flow, ts_ns, out);
        let dir = self.dir_mut(flow);
        dir.parse = Parse::Lost;
        dir.payload.clear();
        dir.decoder.lose_state();
    }

    /// Drops an unfinished header block: the stream it was for gets unknown headers.
    fn abandon_block(&mut self, flow: Flow, ts_ns: u64, out: &mut Vec<Exchange>) {
        if let Some(mut block) = self.dir_mut(flow).block.take() {
            block.lost = true;
            self.finish_block(flow, block, ts_ns, out);
        }
    }

    fn begin_frame(
        &mut self,
        flow: Flow,
        header: FrameHeader,
        frame_ts: u64,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        self.counters.frames += 1;
        if header.length > self.dir(flow).max_frame_size {
            // The receiver would have closed the connection (FRAME_SIZE_ERROR): these are
            // not the frames we think they are.
            self.counters.malformed_frames += 1;
            self.desync(flow, ts_ns, out);
            return;
        }
        let in_block = self.dir(flow).block.is_some();
        if in_block && header.kind != frame::CONTINUATION {
            // RFC 9113 6.10: nothing may come between a block's frames.
            self.counters.malformed_frames += 1;
            self.abandon_block(flow, ts_ns, out);
        }
        if header.is_malformed() {
            // A receiver would have ended the connection (PROTOCOL_ERROR): more likely than
            // a broken peer, we are not reading frames where we think we are.
            self.counters.malformed_frames += 1;
            self.desync(flow, ts_ns, out);
            return;
        }
        let length = header.length as usize;
        let keep = match header.kind {
            frame::DATA if header.has(frame::FLAG_PADDED) => 1,
            frame::HEADERS | frame::PUSH_PROMISE | frame::CONTINUATION => {
                if length > self.limits.max_frame_buffer {
                    // Too large to buffer: its block is lost (decided at the frame's end).
                    0
                } else {
                    length
                }
            }
            frame::SETTINGS => length.min(self.limits.max_frame_buffer),
            frame::RST_STREAM => 4,
            frame::GOAWAY => 8,
            _ => 0,
        };
        let f = Frame {
            header,
            ts: frame_ts,
            pos: 0,
            keep,
            missing: false,
        };
        self.dir_mut(flow).payload.clear();
        self.continue_frame(flow, f, ts_ns, out);
    }

    /// Stores the frame's progress, finishing it when its payload is complete.
    fn continue_frame(&mut self, flow: Flow, f: Frame, ts_ns: u64, out: &mut Vec<Exchange>) {
        if f.pos >= f.header.length {
            self.dir_mut(flow).parse = Parse::Header {
                buf: [0; HEADER_LEN],
                len: 0,
                ts: ts_ns,
            };
            self.end_frame(flow, f, ts_ns, out);
        } else {
            self.dir_mut(flow).parse = Parse::Payload(f);
        }
    }

    /// Skips `gap` uncaptured bytes: inside the current payload that is harmless (its kept
    /// prefix may be incomplete); past it, frame headers are missing and sync is lost.
    fn skip_uncaptured(&mut self, flow: Flow, gap: u64, ts_ns: u64, out: &mut Vec<Exchange>) {
        match self.dir(flow).parse {
            Parse::Payload(mut f) => {
                let remaining = u64::from(f.header.length - f.pos);
                if self.dir(flow).payload.len() < f.keep {
                    f.missing = true;
                }
                let skipped = gap.min(remaining);
                self.counters.uncaptured_bytes_skipped += skipped;
                // skipped <= remaining, which came from a u32.
                f.pos += skipped as u32;
                self.continue_frame(flow, f, ts_ns, out);
                if gap > remaining {
                    self.desync(flow, ts_ns, out);
                }
            }
            Parse::Preface { .. } | Parse::Header { .. } => self.desync(flow, ts_ns, out),
            Parse::Lost | Parse::Unstarted { .. } => {}
        }
    }

    fn end_frame(&mut self, flow: Flow, f: Frame, ts_ns: u64, out: &mut Vec<Exchange>) {
        let h = f.header;
        let payload = std::mem::take(&mut self.dir_mut(flow).payload);
        match h.kind {
            frame::DATA => {
                let body = if !h.has(frame::FLAG_PADDED) {
                    Some(h.length)
                } else if let Some(&pad) = payload.first() {
                    h.length.checked_sub(1 + u32::from(pad))
                } else {
                    // The pad length was not captured: all we know is an upper bound.
                    h.length.checked_sub(1)
                };
                match body {
                    Some(body) => self.on_data(
                        flow,
                        h.stream_id,
                        u64::from(body),
                        h.has(frame::FLAG_END_STREAM),
                        ts_ns,
                        out,
                    ),
                    None => self.counters.malformed_frames += 1,
                }
            }
            frame::HEADERS | frame::PUSH_PROMISE => {
                let push = h.kind == frame::PUSH_PROMISE;
                if push {
                    self.counters.push_promises += 1;
                }
                let whole = !f.missing && payload.len() == h.length as usize;
                let fragment = if whole {
                    fragment(&payload, h, push)
                } else {
                    None
                };
                if whole && fragment.is_none() {
                    self.counters.malformed_frames += 1;
                }
                if push && let Some((promised, _)) = fragment {
                    let dir = self.dir_mut(flow);
                    dir.max_promised = dir.max_promised.max(promised);
                }
                let kind = if push {
                    BlockKind::PushPromise
                } else {
                    BlockKind::Headers {
                        end_stream: h.has(frame::FLAG_END_STREAM),
                    }
                };
                let mut block = Block {
                    stream_id: h.stream_id,
                    kind,
                    ts: f.ts,
                    buf: Vec::new(),
                    lost: fragment.is_none(),
                };
                if let Some((_, bytes)) = fragment {
                    self.append_fragment(&mut block, bytes);
                }
                self.block_frame(flow, block, h, ts_ns, out);
            }
            frame::CONTINUATION => {
                let Some(mut block) = self.dir_mut(flow).block.take() else {
                    // Its HEADERS was never seen (or was abandoned): the table may differ.
                    self.counters.malformed_frames += 1;
                    self.dir_mut(flow).decoder.lose_state();
                    return;
                };
                if block.stream_id != h.stream_id {
                    self.counters.malformed_frames += 1;
                    block.lost = true;
                    self.finish_block(flow, block, ts_ns, out);
                    self.dir_mut(flow).decoder.lose_state();
                    return;
                }
                if f.missing || payload.len() != h.length as usize {
                    block.lost = true;
                } else {
                    self.append_fragment(&mut block, &payload);
                }
                self.block_frame(flow, block, h, ts_ns, out);
            }
            frame::RST_STREAM => {
                self.counters.resets += 1;
                let code = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes);
                if self.streams.contains_key(&h.stream_id) {
                    self.emit(h.stream_id, Outcome::Reset(code), ts_ns, out);
                }
            }
            frame::SETTINGS if !h.has(frame::FLAG_ACK) => {
                // The sender decodes the blocks of the other direction: its table size is
                // the bound for that direction's size updates.
                // Likewise its frame size limit bounds the other direction's frames.
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    let other = self.dir_mut(flow.opposite());
                    match id {
                        frame::SETTING_HEADER_TABLE_SIZE => other.decoder.set_announced_size(value),
                        frame::SETTING_MAX_FRAME_SIZE => {
                            other.max_frame_size =
                                value.clamp(frame::DEFAULT_MAX_FRAME_SIZE, frame::MAX_FRAME_SIZE);
                        }
                        _ => {}
                    }
                }
            }
            frame::GOAWAY => {
                self.counters.goaways += 1;
                if let Some(last) = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_be_bytes(b) & 0x7fff_ffff)
                {
                    self.on_goaway(flow, last, ts_ns, out);
                }
            }
            _ => {}
        }
        // Hand the buffer back to be reused by the next frame.
        let dir = self.dir_mut(flow);
        if dir.payload.capacity() == 0 {
            dir.payload = payload;
            dir.payload.clear();
        }
    }

    fn append_fragment(&mut self, block: &mut Block, bytes: &[u8]) {
        if block.lost {
            return;
        }
        if block.buf.len() + bytes.len() > self.limits.max_header_list {
            self.counters.header_list_too_large += 1;
            block.lost = true;
            block.buf = Vec::new();
        } else {
            block.buf.extend_from_slice(bytes);
        }
    }

    /// A HEADERS, PUSH_PROMISE or CONTINUATION frame has added to `block`: finish it on
    /// END_HEADERS, or keep it for the next CONTINUATION.
    fn block_frame(
        &mut self,
        flow: Flow,
        block: Block,
        h: FrameHeader,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        if h.has(frame::FLAG_END_HEADERS) {
            self.finish_block(flow, block, ts_ns, out);
        } else {
            self.dir_mut(flow).block = Some(block);
        }
    }

    fn finish_block(&mut self, flow: Flow, block: Block, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.counters.headers_blocks += 1;
        let max_list = self.limits.max_header_list;
        let decoded = if block.lost {
            self.counters.header_blocks_lost += 1;
            self.dir_mut(flow).decoder.lose_state();
            Decoded::Lost
        } else {
            let mut fields = Fields::default();
            let result = self
                .dir_mut(flow)
                .decoder
                .decode(&block.buf, max_list, &mut |n, v| fields.add(n, v));
            match result {
                Ok(summary) => {
                    if summary.unresolved > 0 {
                        self.counters.hpack_state_unknown += 1;
                    }
                    Decoded::Fields {
                        fields: Box::new(fields),
                        partial: summary.unresolved > 0,
                    }
                }
                Err(e) => {
                    self.counters.hpack_errors += 1;
                    if let HpackError::HeaderListTooLarge(_) = e {
                        self.counters.header_list_too_large += 1;
                    }
                    Decoded::Lost
                }
            }
        };
        if let BlockKind::Headers { end_stream } = block.kind {
            let end = BlockEnd {
                id: block.stream_id,
                end_stream,
                start_ns: block.ts,
                ts_ns,
            };
            self.on_headers(flow, end, decoded, out);
        }
    }

    fn on_headers(&mut self, flow: Flow, end: BlockEnd, decoded: Decoded, out: &mut Vec<Exchange>) {
        let BlockEnd {
            id,
            end_stream,
            start_ns,
            ts_ns,
        } = end;
        if let Some(stream) = self.streams.get_mut(&id) {
            if flow == stream.request_flow {
                // Request trailers: nothing kept but the end.
                stream.request_ended |= end_stream;
                return;
            }
            match decoded {
                Decoded::Fields { fields, .. } if !stream.response_started => {
                    if fields.status.is_some_and(|s| s < 200) && !end_stream {
                        // 1xx: informational, the final status is still to come.
                        return;
                    }
                    stream.response_started = true;
                    stream.response_start_ns = Some(start_ns);
                    stream.response.status = fields.status;
                    stream.response.content_type = fields.content_type;
                    // Trailers-only: the gRPC status comes with the headers.
                    stream.response.grpc_status = fields.grpc_status;
                    stream.response.grpc_message = fields.grpc_message;
                }
                Decoded::Fields { fields, .. } => {
                    if fields.grpc_status.is_some() {
                        stream.response.grpc_status = fields.grpc_status;
                    }
                    if fields.grpc_message.is_some() {
                        stream.response.grpc_message = fields.grpc_message;
                    }
                }
                Decoded::Lost => {
                    if !stream.response_started {
                        stream.response_started = true;
                        stream.response_start_ns = Some(start_ns);
                    }
                }
            }
            if end_stream {
                self.emit(id, Outcome::Complete, ts_ns, out);
            }
            return;
        }

        // A stream we do not track: a new request, or something late or unpaired.
        let dir = self.dir(flow);
        if id <= dir.max_opened || id <= dir.max_promised || self.recently_closed.contains(&id) {
            self.counters.orphan_frames += 1;
            return;
        }
        let is_request = match &decoded {
            Decoded::Fields { fields, .. } if fields.has_status => false,
            Decoded::Fields { fields, .. } if fields.request.method.is_some() => true,
            // Fully decoded, yet neither a request nor a response: nothing to report.
            Decoded::Fields { partial: false, .. } => false,
            // Lost or partly unresolved: only the roles of the two ends can tell.
            Decoded::Fields { .. } | Decoded::Lost => self.opens_streams(flow, id),
        };
        if !is_request {
            // Response headers for a request we never saw (picked up mid-stream, or its
            // HEADERS was lost).
            self.counters.orphan_frames += 1;
            return;
        }
        let dir = self.dir_mut(flow);
        dir.max_opened = id;
        if let Decoded::Fields { .. } = decoded {
            dir.opened_parity = Some(id % 2);
        }
        if self.streams.len() >= self.limits.max_streams {
            self.counters.streams_over_limit += 1;
            return;
        }
        let (request, headers_unknown) = match decoded {
            Decoded::Fields { fields, partial } => {
                let unknown =
                    partial && (fields.request.method.is_none() || fields.request.path.is_none());
                let mut request = fields.request;
                request.content_type = fields.content_type;
                (request, unknown)
            }
            Decoded::Lost => (RequestHeaders::default(), true),
        };
        self.streams.insert(
            id,
            Stream {
                request_flow: flow,
                request,
                response: ResponseHeaders::default(),
                headers_unknown,
                request_start_ns: start_ns,
                response_start_ns: None,
                response_started: false,
                request_ended: end_stream,
                request_body_bytes: 0,
                response_body_bytes: 0,
            },
        );
    }

    /// Whether `flow` is the end that opens stream `id` with a request, when its header
    /// block cannot say: the client opens odd streams (RFC 9113 5.1.1) and a server opens
    /// none with HEADERS (its pushes are promised first). Which end is the client is known
    /// from the preface, or else from the parity of the requests the flow sent before; with
    /// neither, the block is not taken for a request.
    fn opens_streams(&self, flow: Flow, id: u32) -> bool {
        let odd = id % 2 == 1;
        match (self.dir(flow).start, self.dir(flow.opposite()).start) {
            (Some(Start::Preface), _) | (_, Some(Start::ServerSettings)) => odd,
            (Some(Start::ServerSettings), _) | (_, Some(Start::Preface)) => false,
            _ => self.dir(flow).opened_parity == Some(id % 2),
        }
    }

    fn on_data(
        &mut self,
        flow: Flow,
        id: u32,
        body: u64,
        end_stream: bool,
        ts_ns: u64,
        out: &mut Vec<Exchange>,
    ) {
        let Some(stream) = self.streams.get_mut(&id) else {
            self.counters.orphan_frames += 1;
            return;
        };
        if flow == stream.request_flow {
            stream.request_body_bytes += body;
            stream.request_ended |= end_stream;
        } else {
            stream.response_body_bytes += body;
            if end_stream {
                self.emit(id, Outcome::Complete, ts_ns, out);
            }
        }
    }

    /// GOAWAY sent on `flow`: streams the other side opened above `last` were never
    /// processed (RFC 9113 6.8).
    fn on_goaway(&mut self, flow: Flow, last: u32, ts_ns: u64, out: &mut Vec<Exchange>) {
        let mut ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| s.request_flow != flow && **id > last)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.emit(id, Outcome::GoAway, ts_ns, out);
        }
    }

    fn emit(&mut self, id: u32, outcome: Outcome, ts_ns: u64, out: &mut Vec<Exchange>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if self.recently_closed.len() == RECENTLY_CLOSED {
            self.recently_closed.pop_front();
        }
        self.recently_closed.push_back(id);
        out.push(Exchange {
            stream_id: id,
            request_flow: s.request_flow,
            request: s.request,
            response: s.response,
            request_start_ns: s.request_start_ns,
            response_start_ns: s.response_start_ns,
            end_ns: ts_ns,
            request_body_bytes: s.request_body_bytes,
            response_body_bytes: s.response_body_bytes,
            outcome: if s.headers_unknown {
                Outcome::HeadersUnknown
            } else {
                outcome
            },
        });
    }
}

/// The header block fragment of a whole HEADERS or PUSH_PROMISE payload, without padding
/// and priority; for PUSH_PROMISE also the promised stream id. None if the padding or the
/// fixed fields do not fit in the payload.
fn fragment(payload: &[u8], h: FrameHeader, push: bool) -> Option<(u32, &[u8])> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if h.has(frame::FLAG_PADDED) {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    let mut promised = 0;
    if push {
        let id = payload.get(start..start + 4)?;
        promised = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) & 0x7fff_ffff;
        start += 4;
    } else if h.has(frame::FLAG_PRIORITY) {
        start += 5;
    }
    let end = payload.len().checked_sub(pad)?;
    Some((promised, payload.get(start..end)?))
}
