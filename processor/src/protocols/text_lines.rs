//! Line collection for the CRLF text protocols (Redis, Memcached): a line is taken in place
//! from the captured bytes when it ends there, or buffered across chunks up to a limit; and the
//! count of a length-prefixed block's bytes that one chunk holds.

use memchr::memchr;

/// A line buffer grown larger than this is freed after use rather than kept.
const KEEP_LINE_CAPACITY: usize = 4096;

/// Where a completed line is.
pub(super) enum Line {
    /// At the start of the data passed in (nothing was buffered).
    InData,
    /// In the line buffer.
    Buffered,
}

/// Collects one line ending in `\n`: returns the bytes of `data` used and, once complete,
/// where the line is. Err when the line would exceed `max_line` bytes.
pub(super) fn collect_line(
    buf: &mut Vec<u8>,
    data: &[u8],
    max_line: usize,
) -> Result<(usize, Option<Line>), ()> {
    let newline = memchr(b'\n', data);
    let used = newline.map_or(data.len(), |i| i + 1);
    if buf.len() + used > max_line {
        return Err(());
    }
    match newline {
        Some(_) if buf.is_empty() => Ok((used, Some(Line::InData))),
        Some(_) => {
            buf.extend_from_slice(&data[..used]);
            Ok((used, Some(Line::Buffered)))
        }
        None => {
            buf.extend_from_slice(data);
            Ok((used, None))
        }
    }
}

/// An emptied line buffer, kept for reuse unless it grew large.
pub(super) fn recycle(mut line: Vec<u8>) -> Vec<u8> {
    line.clear();
    if line.capacity() > KEEP_LINE_CAPACITY {
        Vec::new()
    } else {
        line
    }
}

/// Bytes of a block (`left` of them to come) that `available` bytes hold.
pub(super) fn take(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}
