//! HTTP/2 connection tracking for a passive observer: turns the bytes an instrumented process
//! read and wrote on one connection into one [`Exchange`] per stream. Frames are reassembled
//! per direction and header blocks are HPACK-decoded per direction (each has its own table).
//!
//! Capture may miss bytes (only the first bytes of a syscall are captured, or the connection
//! was picked up mid-stream). What is lost is counted and reported, never guessed: a DATA
//! payload is skipped by length, a lost frame boundary is found again at a later chunk that
//! starts with plausible frames, and a possibly stale HPACK table makes the affected header
//! fields unknown (an exchange whose method or path is unknown says so in its outcome).
//!
//! Memory per connection is bounded by [`Limits`]: streams, one frame's buffered payload,
//! one header block, the dynamic tables; each kept header value is cut at
//! [`MAX_VALUE_LEN`] bytes.

mod conn;
mod frame;
mod hpack;
mod huffman;

pub use conn::Connection;
pub use hpack::{BlockSummary, Decoder as HpackDecoder, HpackError};
pub use huffman::HuffmanError;

/// Which way bytes moved, relative to the instrumented process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Read by the instrumented process.
    Inbound,
    /// Written by the instrumented process.
    Outbound,
}

impl Flow {
    pub fn opposite(self) -> Flow {
        match self {
            Flow::Inbound => Flow::Outbound,
            Flow::Outbound => Flow::Inbound,
        }
    }
}

/// Per-connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open streams tracked per connection; a stream past this is counted, not tracked.
    pub max_streams: usize,
    /// Decoded bytes per header block (name + value + 32 per field), and compressed bytes
    /// buffered for one block.
    pub max_header_list: usize,
    /// The largest dynamic table accepted, whatever the peers announce.
    pub max_table_size: usize,
    /// Bytes buffered for one incomplete frame payload.
    pub max_frame_buffer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_streams: 1024,
            max_header_list: 64 * 1024,
            max_table_size: 64 * 1024,
            max_frame_buffer: 64 * 1024,
        }
    }
}

/// Longest header value kept in an [`Exchange`]; longer values are cut (at a character
/// boundary).
pub const MAX_VALUE_LEN: usize = 1024;

/// Everything a connection lost or skipped, and what it saw. Plain counters, summed by the
/// caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Complete frame headers parsed.
    pub frames: u64,
    /// Header blocks (HEADERS or PUSH_PROMISE plus CONTINUATIONs) finished, decoded or not.
    pub headers_blocks: u64,
    /// Frame boundaries lost: a frame header fell into uncaptured bytes, the preface broke
    /// off, or a frame was longer than the receiver's SETTINGS_MAX_FRAME_SIZE (garbage).
    pub desync: u64,
    /// Frame boundaries found again at the start of a later chunk.
    pub resyncs: u64,
    /// Directions picked up mid-stream: told so (`Connection::picked_up_mid_stream`), or
    /// starting with neither the preface nor a SETTINGS frame. Their HPACK state is unknown.
    pub midstream_pickups: u64,
    /// Header blocks with uncaptured bytes, or too large to buffer: not decoded, and the
    /// direction's HPACK state becomes unknown.
    pub header_blocks_lost: u64,
    /// Header blocks HPACK rejected (bad integer, index, Huffman code, size update, too
    /// large); the direction's HPACK state becomes unknown.
    pub hpack_errors: u64,
    /// Header blocks with fields that referenced dynamic entries lost with the HPACK state.
    pub hpack_state_unknown: u64,
    /// Header blocks over `Limits::max_header_list` (also counted in `hpack_errors` or
    /// `header_blocks_lost`).
    pub header_list_too_large: u64,
    /// New streams not tracked because `Limits::max_streams` were open.
    pub streams_over_limit: u64,
    /// PUSH_PROMISE frames (decoded to keep HPACK in sync, otherwise skipped).
    pub push_promises: u64,
    /// RST_STREAM frames.
    pub resets: u64,
    /// GOAWAY frames.
    pub goaways: u64,
    /// Frames that break a framing rule (wrong stream id or length, bad padding, too long,
    /// CONTINUATION out of place, a frame inside a header block); skipped.
    pub malformed_frames: u64,
    /// Frames for streams not tracked (closed, never seen, over the limit), and response
    /// headers with no request; ignored.
    pub orphan_frames: u64,
    /// Uncaptured bytes skipped inside frame payloads without losing sync.
    pub uncaptured_bytes_skipped: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        // Destructured so that a new counter cannot be forgotten here.
        let Counters {
            frames,
            headers_blocks,
            desync,
            resyncs,
            midstream_pickups,
            header_blocks_lost,
            hpack_errors,
            hpack_state_unknown,
            header_list_too_large,
            streams_over_limit,
            push_promises,
            resets,
            goaways,
            malformed_frames,
            orphan_frames,
            uncaptured_bytes_skipped,
        } = other;
        self.frames += frames;
        self.headers_blocks += headers_blocks;
        self.desync += desync;
        self.resyncs += resyncs;
        self.midstream_pickups += midstream_pickups;
        self.header_blocks_lost += header_blocks_lost;
        self.hpack_errors += hpack_errors;
        self.hpack_state_unknown += hpack_state_unknown;
        self.header_list_too_large += header_list_too_large;
        self.streams_over_limit += streams_over_limit;
        self.push_promises += push_promises;
        self.resets += resets;
        self.goaways += goaways;
        self.malformed_frames += malformed_frames;
        self.orphan_frames += orphan_frames;
        self.uncaptured_bytes_skipped += uncaptured_bytes_skipped;
    }
}

/// The request's fields of interest, each cut at [`MAX_VALUE_LEN`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// The response's fields of interest, each cut at [`MAX_VALUE_LEN`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    /// The final (non-1xx) status.
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// From the final trailers, or from a trailers-only response.
    pub grpc_status: Option<u32>,
    /// As sent (percent-encoded).
    pub grpc_message: Option<String>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response flow ended the stream.
    Complete,
    /// RST_STREAM from either side, with its error code when it was captured.
    Reset(Option<u32>),
    /// The connection closed with the stream open.
    ConnectionClosed,
    /// A GOAWAY's last-stream-id excluded the stream: it was never processed.
    GoAway,
    /// The request's method or path could not be decoded (HPACK state lost or corrupt, or
    /// its header block not captured). They are left empty rather than guessed.
    HeadersUnknown,
}

/// One stream, from its request HEADERS to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub stream_id: u32,
    /// The flow the request HEADERS came on: Inbound means this process is the server.
    pub request_flow: Flow,
    pub request: RequestHeaders,
    pub response: ResponseHeaders,
    /// Timestamp of the chunk carrying the start of the request's first HEADERS frame.
    pub request_start_ns: u64,
    /// Timestamp of the chunk carrying the start of the final (non-1xx) response headers.
    pub response_start_ns: Option<u64>,
    /// Timestamp of the chunk that ended the stream (END_STREAM of the response, RST_STREAM,
    /// GOAWAY) or of the close.
    pub end_ns: u64,
    /// DATA payload bytes (padding excluded) the request flow sent on the stream.
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub outcome: Outcome,
}

#[cfg(test)]
mod tests;
