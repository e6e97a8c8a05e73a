//! HTTP/2 frame headers (RFC 9113 4.1): parsing the 9-byte header, and judging whether
//! bytes at the start of a chunk look enough like frames to resynchronize on after a loss.

/// The connection preface a client sends before its first frame (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 9;
/// The largest frame length accepted when resynchronizing: real peers rarely raise
/// SETTINGS_MAX_FRAME_SIZE past this, and a lower bound makes false matches rarer.
pub const RESYNC_MAX_LEN: u32 = 1 << 20;
/// When resynchronizing, how far past the highest stream id seen a frame's stream id may
/// be: streams opened while sync was lost are missed, but not a billion of them.
pub const RESYNC_STREAM_WINDOW: u32 = 1 << 16;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE.
pub const SETTING_HEADER_TABLE_SIZE: u16 = 0x1;
/// SETTINGS_MAX_FRAME_SIZE.
pub const SETTING_MAX_FRAME_SIZE: u16 = 0x5;
/// The frame size limit until a peer announces another (RFC 9113 6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest length a frame header can carry.
pub const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit is masked off.
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether the header breaks a rule a receiver would treat as a connection error
    /// (stream id 0 where a stream is needed or the reverse, a fixed length that is off).
    /// Such frames are skipped by length and counted.
    pub fn is_malformed(&self) -> bool {
        let on_stream = self.stream_id != 0;
        match self.kind {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => !on_stream,
            PRIORITY => !on_stream || self.length != 5,
            RST_STREAM => !on_stream || self.length != 4,
            SETTINGS => {
                on_stream
                    || !self.length.is_multiple_of(6)
                    || (self.has(FLAG_ACK) && self.length != 0)
            }
            PING => on_stream || self.length != 8,
            GOAWAY => on_stream || self.length < 8,
            WINDOW_UPDATE => self.length != 4,
            _ => false,
        }
    }
}

/// Flags each frame type defines; a sender sets no others, so any other bit makes a
/// resynchronization candidate implausible.
fn defined_flags(kind: u8) -> Option<u8> {
    Some(match kind {
        DATA => FLAG_END_STREAM | FLAG_PADDED,
        HEADERS => FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        PRIORITY | RST_STREAM | GOAWAY | WINDOW_UPDATE => 0,
        SETTINGS | PING => FLAG_ACK,
        PUSH_PROMISE => FLAG_END_HEADERS | FLAG_PADDED,
        CONTINUATION => FLAG_END_HEADERS,
        _ => return None,
    })
}

/// What a frame found where sync was lost must fit.
#[derive(Debug, Clone, Copy)]
pub struct Resync {
    /// The longest length accepted (the receiver's frame size limit, at most
    /// `RESYNC_MAX_LEN`).
    pub max_len: u32,
    /// The highest stream id seen on the connection, if any: stream ids may not be more
    /// than `RESYNC_STREAM_WINDOW` beyond it.
    pub max_stream: Option<u32>,
}

impl Resync {
    /// Nothing known about the connection yet.
    pub const UNKNOWN: Resync = Resync {
        max_len: RESYNC_MAX_LEN,
        max_stream: None,
    };
}

/// Whether `header` could be a real frame header at a point where sync was lost: a known
/// type with only its defined flags, a plausible length and stream id, stream id and
/// length rules per type (a HEADERS frame carries a block), the reserved bit clear.
/// `continuing` is the stream whose header block the previous frame left open: then only a
/// CONTINUATION of it fits, and otherwise no CONTINUATION does.
fn plausible(raw: &[u8; HEADER_LEN], fit: Resync, continuing: Option<u32>) -> bool {
    let header = FrameHeader::parse(raw);
    let Some(flags) = defined_flags(header.kind) else {
        return false;
    };
    let fixed = match header.kind {
        HEADERS => {
            1 + u32::from(header.has(FLAG_PADDED)) + 5 * u32::from(header.has(FLAG_PRIORITY))
        }
        PUSH_PROMISE => 4 + u32::from(header.has(FLAG_PADDED)),
        DATA => u32::from(header.has(FLAG_PADDED)),
        _ => 0,
    };
    let sequence = match continuing {
        Some(id) => header.kind == CONTINUATION && header.stream_id == id,
        None => header.kind != CONTINUATION,
    };
    raw[5] & 0x80 == 0
        && sequence
        && header.flags & !flags == 0
        && header.length >= fixed
        && header.length <= fit.max_len.min(RESYNC_MAX_LEN)
        && fit
            .max_stream
            .is_none_or(|max| header.stream_id <= max.saturating_add(RESYNC_STREAM_WINDOW))
        && !header.is_malformed()
}

/// Whether a chunk plausibly starts at a frame boundary: its first frame header is
/// plausible, and so is every later frame header that lies within the captured bytes.
pub fn plausible_start(captured: &[u8], fit: Resync) -> bool {
    let mut at = 0usize;
    let mut frames = 0usize;
    let mut continuing = None;
    while let Some(raw) = captured
        .get(at..at.saturating_add(HEADER_LEN))
        .and_then(|s| <&[u8; HEADER_LEN]>::try_from(s).ok())
    {
        if !plausible(raw, fit, continuing) {
            return false;
        }
        let header = FrameHeader::parse(raw);
        let opens_block = matches!(header.kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        continuing = (opens_block && !header.has(FLAG_END_HEADERS)).then_some(header.stream_id);
        frames += 1;
        at = at
            .saturating_add(HEADER_LEN)
            .saturating_add(header.length as usize);
    }
    frames > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn raw(length: u32, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
        let l = length.to_be_bytes();
        let s = stream.to_be_bytes();
        [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
    }

    #[test]
    fn parses_a_header() {
        let h = FrameHeader::parse(&raw(0x01_0203, HEADERS, 0x25, 0x8000_0007));
        assert_eq!(
            h,
            FrameHeader {
                length: 0x01_0203,
                kind: HEADERS,
                flags: 0x25,
                stream_id: 7
            }
        );
        assert!(h.has(FLAG_END_HEADERS) && h.has(FLAG_PRIORITY) && !h.has(FLAG_PADDED));
    }

    #[test]
    fn plausibility() {
        assert!(plausible_start(&raw(0, SETTINGS, 0, 0), Resync::UNKNOWN));
        assert!(plausible_start(
            &raw(0, SETTINGS, FLAG_ACK, 0),
            Resync::UNKNOWN
        ));
        assert!(!plausible_start(&raw(0, SETTINGS, 0, 1), Resync::UNKNOWN));
        assert!(!plausible_start(&raw(7, SETTINGS, 0, 0), Resync::UNKNOWN));
        assert!(!plausible_start(
            &raw(4, CONTINUATION, 4, 1),
            Resync::UNKNOWN
        ));
        assert!(!plausible_start(&raw(4, 0x42, 0, 1), Resync::UNKNOWN));
        assert!(!plausible_start(&raw(4, DATA, 0x40, 1), Resync::UNKNOWN));
        assert!(!plausible_start(
            &raw(RESYNC_MAX_LEN + 1, DATA, 0, 1),
            Resync::UNKNOWN
        ));
        assert!(!plausible_start(&raw(4, DATA, 0, 0), Resync::UNKNOWN));
        assert!(!plausible_start(
            &raw(4, DATA, 0, 0x8000_0001),
            Resync::UNKNOWN
        ));
        assert!(!plausible_start(b"GET / HTTP/1.1\r\n", Resync::UNKNOWN));
        assert!(!plausible_start(&[0, 0], Resync::UNKNOWN));
        // Every frame header inside the captured bytes has to be plausible too.
        let mut two = raw(2, DATA, 0, 1).to_vec();
        two.extend_from_slice(&[0xaa, 0xbb]);
        two.extend_from_slice(&raw(4, WINDOW_UPDATE, 0, 0));
        assert!(plausible_start(&two, Resync::UNKNOWN));
        two[2 + 9 + 3] = 0x77;
        assert!(!plausible_start(&two, Resync::UNKNOWN));
        // A HEADERS frame carries a block; one left open continues, and only then.
        assert!(!plausible_start(&raw(0, HEADERS, 4, 1), Resync::UNKNOWN));
        assert!(!plausible_start(&raw(5, HEADERS, 0x24, 1), Resync::UNKNOWN));
        let mut open = raw(1, HEADERS, 0, 1).to_vec();
        open.push(0x82);
        let mut wrong = open.clone();
        open.extend_from_slice(&raw(1, CONTINUATION, 4, 1));
        assert!(plausible_start(&open, Resync::UNKNOWN));
        wrong.extend_from_slice(&raw(1, CONTINUATION, 4, 3));
        assert!(!plausible_start(&wrong, Resync::UNKNOWN));
        // Limits from what the connection showed so far.
        let fit = Resync {
            max_len: 16_384,
            max_stream: Some(101),
        };
        assert!(plausible_start(&raw(16_384, DATA, 0, 101), fit));
        assert!(!plausible_start(&raw(16_385, DATA, 0, 101), fit));
        assert!(plausible_start(
            &raw(4, HEADERS, 4, 101 + RESYNC_STREAM_WINDOW),
            fit
        ));
        assert!(!plausible_start(
            &raw(4, HEADERS, 4, 103 + RESYNC_STREAM_WINDOW),
            fit
        ));
    }
}
