//! HPACK (RFC 7541) decoding for one direction of an HTTP/2 connection, written for a
//! passive observer: every allocation is bounded by the caller's limits, and the decoder
//! knows when its dynamic table may differ from the real one (capture started mid-stream,
//! or a header block was lost) so that it reports a field as unresolved instead of guessing.
//!
//! The dynamic table while the state is unknown: the entries we hold are exactly the newest
//! entries of the real table (everything inserted since the loss), but the real table may
//! hold older entries behind them. An index that reaches past our entries is then
//! "unresolved", not an error; indices inside our entries are still right. A size update
//! to 0 empties both tables and makes the state known again.

use std::collections::VecDeque;

use thiserror::Error;

use super::huffman::{self, HuffmanError};

/// The table size both sides start with (RFC 7540 SETTINGS_HEADER_TABLE_SIZE default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// RFC 7541 4.1: each entry costs its name and value lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// Integers above 2^32 are rejected; 5 continuation bytes already carry 35 bits.
const MAX_INT_CONTINUATIONS: usize = 5;

/// Why a header block could not be decoded. After any of these the decoder's table is no
/// longer trustworthy, so the decoder drops it and enters the unknown state by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HpackError {
    #[error("integer above 2^32 or with too many continuation bytes")]
    IntegerOverflow,
    #[error("header block ends inside a field")]
    Truncated,
    #[error("index {0} is outside the static and dynamic tables")]
    InvalidIndex(u32),
    #[error("string literal: {0}")]
    Huffman(#[from] HuffmanError),
    #[error("dynamic table size update to {size} above the allowed {bound}")]
    TableSizeAbove { size: u32, bound: usize },
    #[error("dynamic table size update after the first field of a block")]
    LateSizeUpdate,
    #[error("decoded header list exceeds {0} bytes")]
    HeaderListTooLarge(usize),
}

/// What one block held besides the fields passed to the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockSummary {
    /// Fields decoded and passed to the sink.
    pub fields: usize,
    /// Fields whose name or value referenced a dynamic entry this decoder does not hold
    /// (only possible while the state is unknown). They are not passed to the sink.
    pub unresolved: usize,
}

/// A header field's name and value.
type Field<'a> = (&'a [u8], &'a [u8]);

struct Entry {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// One direction's HPACK decoder.
pub struct Decoder {
    /// Newest first: `entries[0]` is index 62.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// What the decoding endpoint announced in SETTINGS_HEADER_TABLE_SIZE: the largest
    /// size update the encoder may send (capped by `cap`; ignored while unknown).
    announced: usize,
    /// `Limits::max_table_size`: never hold more than this, whatever was announced.
    cap: usize,
    unknown: bool,
    // Scratch for Huffman-coded literals, reused across blocks (bounded by the list limit).
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

/// Where a field's name came from, resolved after its value is decoded (the value may land
/// in a scratch buffer while the name still borrows the table).
#[derive(Clone, Copy)]
enum NameRef {
    Static(usize),
    Dynamic(usize),
    Literal,
    Unresolved,
}

impl Decoder {
    /// A decoder at the start of a connection: empty table, state known.
    pub fn new(cap: usize) -> Decoder {
        let start = DEFAULT_TABLE_SIZE.min(cap);
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: start,
            announced: DEFAULT_TABLE_SIZE,
            cap,
            unknown: false,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A decoder for a connection picked up mid-stream: the real table's contents and size
    /// are unknown, so any size up to the cap is accepted and our (empty) table is only a
    /// prefix of the real one.
    pub fn new_unknown(cap: usize) -> Decoder {
        let mut decoder = Decoder::new(cap);
        decoder.mark_unknown();
        decoder
    }

    /// The real table may hold entries older than ours (what ours holds stays valid).
    pub fn mark_unknown(&mut self) {
        // Our size may be smaller than the real one; the cap is the largest it can be
        // without a decode error, and evicting later than the encoder is harmless.
        self.unknown = true;
        self.max_size = self.cap;
    }

    /// Header blocks were lost: the entries they inserted are missing in front of ours, so
    /// none of ours can be trusted.
    pub fn lose_state(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.mark_unknown();
    }

    pub fn is_state_unknown(&self) -> bool {
        self.unknown
    }

    /// The decoding endpoint announced SETTINGS_HEADER_TABLE_SIZE: the encoder may now
    /// update the table size up to it (RFC 7541 4.2). The table itself changes only when
    /// the encoder says so.
    pub fn set_announced_size(&mut self, announced: u32) {
        self.announced = usize::try_from(announced).unwrap_or(usize::MAX);
    }

    /// The largest size update accepted: the announced size, or, while the state is
    /// unknown (a SETTINGS frame may have been missed), anything up to the cap.
    fn bound(&self) -> usize {
        if self.unknown {
            self.cap
        } else {
            self.announced.min(self.cap)
        }
    }

    /// Bytes the dynamic table holds by RFC 7541's accounting.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Entries in the dynamic table.
    pub fn table_len(&self) -> usize {
        self.entries.len()
    }

    /// Decodes one complete header block, passing each resolved field to `sink`. Fails when
    /// the decoded list (RFC 7540 accounting: name + value + 32 per field) would exceed
    /// `max_list` bytes; no allocation grows past that either. On error the table is
    /// dropped and the state becomes unknown.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
        sink: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<BlockSummary, HpackError> {
        let result = self.decode_inner(block, max_list, sink);
        if result.is_err() {
            self.lose_state();
        }
        result
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        max_list: usize,
        sink: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<BlockSummary, HpackError> {
        let mut summary = BlockSummary::default();
        let mut pos = 0usize;
        let mut list_size = 0usize;
        let mut seen_field = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed header field (6.1).
                let index = read_int(block, &mut pos, 7)?;
                seen_field = true;
                let (name, value) = match self.lookup(index)? {
                    Some(field) => field,
                    None => {
                        summary.unresolved += 1;
                        list_size = add_list(list_size, 0, 0, max_list)?;
                        continue;
                    }
                };
                list_size = add_list(list_size, name.len(), value.len(), max_list)?;
                summary.fields += 1;
                sink(name, value);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (6.3): only before the first field.
                let size = read_int(block, &mut pos, 5)?;
                if seen_field {
                    return Err(HpackError::LateSizeUpdate);
                }
                let wanted = usize::try_from(size).unwrap_or(usize::MAX);
                let bound = self.bound();
                if wanted > bound {
                    return Err(HpackError::TableSizeAbove { size, bound });
                }
                self.max_size = wanted;
                self.evict_to(wanted);
                if wanted == 0 {
                    // Both tables are now provably empty.
                    self.unknown = false;
                }
            } else {
                // Literals (6.2): with incremental indexing (01), without (0000), never (0001).
                let (prefix, indexing) = if first & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                seen_field = true;
                let name_index = read_int(block, &mut pos, prefix)?;
                let budget = max_list.saturating_sub(list_size.saturating_add(ENTRY_OVERHEAD));
                let name_ref = if name_index == 0 {
                    NameRef::Literal
                } else {
                    self.name_ref(name_index)?
                };
                let Decoder {
                    entries,
                    name_buf,
                    value_buf,
                    ..
                } = &mut *self;
                let literal_name = if let NameRef::Literal = name_ref {
                    Some(read_string(block, &mut pos, name_buf, budget)?)
                } else {
                    None
                };
                let name: Option<&[u8]> = match name_ref {
                    NameRef::Static(i) => STATIC_TABLE.get(i).map(|(n, _)| n.as_bytes()),
                    NameRef::Dynamic(i) => entries.get(i).map(|e| &*e.name),
                    NameRef::Literal => literal_name,
                    NameRef::Unresolved => None,
                };
                let name_len = name.map_or(0, <[u8]>::len);
                let value =
                    read_string(block, &mut pos, value_buf, budget.saturating_sub(name_len))?;
                list_size = add_list(list_size, name_len, value.len(), max_list)?;
                match name {
                    Some(name) => {
                        summary.fields += 1;
                        sink(name, value);
                        if indexing {
                            let entry = Entry {
                                name: name.into(),
                                value: value.into(),
                            };
                            self.insert(entry);
                        }
                    }
                    None => {
                        summary.unresolved += 1;
                        if indexing {
                            // An entry we cannot name went in front of ours: from here on
                            // ours are no longer the newest entries of the real table.
                            self.lose_state();
                        }
                    }
                }
            }
        }
        Ok(summary)
    }

    fn lookup(&self, index: u32) -> Result<Option<Field<'_>>, HpackError> {
        match self.name_ref(index)? {
            NameRef::Static(i) => Ok(STATIC_TABLE
                .get(i)
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
            NameRef::Dynamic(i) => Ok(self.entries.get(i).map(|e| (&*e.name, &*e.value))),
            NameRef::Literal | NameRef::Unresolved => Ok(None),
        }
    }

    fn name_ref(&self, index: u32) -> Result<NameRef, HpackError> {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        if i == 0 {
            return Err(HpackError::InvalidIndex(index));
        }
        if i <= STATIC_TABLE.len() {
            return Ok(NameRef::Static(i - 1));
        }
        let dynamic = i - STATIC_TABLE.len() - 1;
        if dynamic < self.entries.len() {
            Ok(NameRef::Dynamic(dynamic))
        } else if self.unknown {
            Ok(NameRef::Unresolved)
        } else {
            Err(HpackError::InvalidIndex(index))
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front(entry);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(old) => self.size -= old.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// The dynamic table, newest first (tests compare it with the RFC's examples).
    #[cfg(test)]
    fn snapshot(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    String::from_utf8_lossy(&e.value).into_owned(),
                )
            })
            .collect()
    }
}

fn add_list(total: usize, name: usize, value: usize, max: usize) -> Result<usize, HpackError> {
    let total = total
        .saturating_add(name)
        .saturating_add(value)
        .saturating_add(ENTRY_OVERHEAD);
    if total > max {
        Err(HpackError::HeaderListTooLarge(max))
    } else {
        Ok(total)
    }
}

/// Reads a prefixed integer (RFC 7541 5.1) starting at `block[*pos]`.
fn read_int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<u32, HpackError> {
    // Computed wide: an 8-bit prefix (RFC 7541 C.1.3) must not overflow.
    let mask = ((1u16 << prefix) - 1) as u8;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value as u32);
    }
    for i in 0..MAX_INT_CONTINUATIONS {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << (7 * i);
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok(value as u32);
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// Reads a string literal (RFC 7541 5.2) no longer than `limit` decoded bytes. Plain
/// literals are borrowed from the block; Huffman ones are decoded into `scratch`.
fn read_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    scratch: &'a mut Vec<u8>,
    limit: usize,
) -> Result<&'a [u8], HpackError> {
    let huffman_coded = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = usize::try_from(read_int(block, pos, 7)?).unwrap_or(usize::MAX);
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if huffman_coded {
        scratch.clear();
        huffman::decode(raw, scratch, limit).map_err(|e| match e {
            HuffmanError::TooLong(_) => HpackError::HeaderListTooLarge(limit),
            other => HpackError::Huffman(other),
        })?;
        Ok(scratch)
    } else if raw.len() > limit {
        Err(HpackError::HeaderListTooLarge(limit))
    } else {
        Ok(raw)
    }
}

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A small HPACK encoder for tests: enough to build any representation by hand.
#[cfg(test)]
pub mod test_encode {
    use super::super::huffman;

    pub fn int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: u64) {
        let mask = (1u64 << prefix) - 1;
        if value < mask {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | mask as u8);
        let mut rest = value - mask;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    pub fn string(out: &mut Vec<u8>, s: &[u8], huff: bool) {
        if huff {
            let coded = huffman::encode(s);
            int(out, 0x80, 7, coded.len() as u64);
            out.extend_from_slice(&coded);
        } else {
            int(out, 0, 7, s.len() as u64);
            out.extend_from_slice(s);
        }
    }

    /// Indexed field.
    pub fn indexed(out: &mut Vec<u8>, index: u64) {
        int(out, 0x80, 7, index);
    }

    /// Literal with a literal name; `index` adds it to the table.
    pub fn literal(out: &mut Vec<u8>, name: &str, value: &str, index: bool, huff: bool) {
        if index {
            out.push(0x40);
        } else {
            out.push(0x00);
        }
        string(out, name.as_bytes(), huff);
        string(out, value.as_bytes(), huff);
    }

    /// Literal with an indexed name.
    pub fn literal_indexed_name(out: &mut Vec<u8>, name_index: u64, value: &str, index: bool) {
        if index {
            int(out, 0x40, 6, name_index);
        } else {
            int(out, 0x00, 4, name_index);
        }
        string(out, value.as_bytes(), false);
    }

    pub fn size_update(out: &mut Vec<u8>, size: u64) {
        int(out, 0x20, 5, size);
    }
}

#[cfg(test)]
mod tests {
    use super::test_encode as enc;
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        d.decode(block, 1 << 20, &mut |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(fields)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn integers_rfc_c1() {
        let mut pos = 0;
        assert_eq!(read_int(&[0x0a], &mut pos, 5), Ok(10));
        pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        pos = 0;
        assert_eq!(read_int(&[0x2a], &mut pos, 8), Ok(42));
        // 2^32 - 1 is the largest accepted; one more overflows.
        let mut max = Vec::new();
        enc::int(&mut max, 0, 7, u64::from(u32::MAX));
        pos = 0;
        assert_eq!(read_int(&max, &mut pos, 7), Ok(u32::MAX));
        let mut over = Vec::new();
        enc::int(&mut over, 0, 7, u64::from(u32::MAX) + 1);
        pos = 0;
        assert_eq!(
            read_int(&over, &mut pos, 7),
            Err(HpackError::IntegerOverflow)
        );
        // Endless continuation bytes (zero-valued) stop after five.
        pos = 0;
        let long = [0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            read_int(&long, &mut pos, 7),
            Err(HpackError::IntegerOverflow)
        );
        pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0x80], &mut pos, 7),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn field_representations_rfc_c2() {
        // C.2.1: literal with indexing.
        let mut d = Decoder::new(65536);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            pairs(&[("custom-key", "custom-header")])
        );
        assert_eq!(d.table_size(), 55);
        // C.2.2: literal without indexing.
        let mut d = Decoder::new(65536);
        let block = hex("040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            pairs(&[(":path", "/sample/path")])
        );
        assert_eq!(d.table_len(), 0);
        // C.2.3: never indexed.
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(
            decode_all(&mut d, &block).unwrap(),
            pairs(&[("password", "secret")])
        );
        assert_eq!(d.table_len(), 0);
        // C.2.4: indexed.
        assert_eq!(
            decode_all(&mut d, &[0x82]).unwrap(),
            pairs(&[(":method", "GET")])
        );
        assert_eq!(d.table_len(), 0);
    }

    struct Example {
        block: &'static str,
        fields: &'static [(&'static str, &'static str)],
        table: &'static [(&'static str, &'static str)],
        size: usize,
    }

    fn run(examples: &[Example], table_size: Option<u64>) {
        let mut d = Decoder::new(65536);
        for (i, ex) in examples.iter().enumerate() {
            let mut block = Vec::new();
            if let (0, Some(size)) = (i, table_size) {
                // The RFC's response examples assume a 256-byte table; say so in-band.
                enc::size_update(&mut block, size);
            }
            block.extend_from_slice(&hex(ex.block));
            assert_eq!(
                decode_all(&mut d, &block).unwrap(),
                pairs(ex.fields),
                "#{i}"
            );
            assert_eq!(d.snapshot(), pairs(ex.table), "#{i}");
            assert_eq!(d.table_size(), ex.size, "#{i}");
        }
    }

    const REQ1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQ2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQ3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    const REQ_T1: &[(&str, &str)] = &[(":authority", "www.example.com")];
    const REQ_T2: &[(&str, &str)] = &[
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];
    const REQ_T3: &[(&str, &str)] = &[
        ("custom-key", "custom-value"),
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];

    #[test]
    fn requests_without_huffman_rfc_c3() {
        run(
            &[
                Example {
                    block: "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                    fields: REQ1,
                    table: REQ_T1,
                    size: 57,
                },
                Example {
                    block: "8286 84be 5808 6e6f 2d63 6163 6865",
                    fields: REQ2,
                    table: REQ_T2,
                    size: 110,
                },
                Example {
                    block: "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                    fields: REQ3,
                    table: REQ_T3,
                    size: 164,
                },
            ],
            None,
        );
    }

    #[test]
    fn requests_with_huffman_rfc_c4() {
        run(
            &[
                Example {
                    block: "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                    fields: REQ1,
                    table: REQ_T1,
                    size: 57,
                },
                Example {
                    block: "8286 84be 5886 a8eb 1064 9cbf",
                    fields: REQ2,
                    table: REQ_T2,
                    size: 110,
                },
                Example {
                    block: "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                    fields: REQ3,
                    table: REQ_T3,
                    size: 164,
                },
            ],
            None,
        );
    }

    const RESP1: &[(&str, &str)] = &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    const RESP2: &[(&str, &str)] = &[
        (":status", "307"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    const RESP3: &[(&str, &str)] = &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ];
    const RESP_T1: &[(&str, &str)] = &[
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
        (":status", "302"),
    ];
    const RESP_T2: &[(&str, &str)] = &[
        (":status", "307"),
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
    ];
    const RESP_T3: &[(&str, &str)] = &[
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
        ("content-encoding", "gzip"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
    ];

    #[test]
    fn responses_without_huffman_rfc_c5() {
        run(
            &[
                Example {
                    block: "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
                            2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
                            6c65 2e63 6f6d",
                    fields: RESP1,
                    table: RESP_T1,
                    size: 222,
                },
                Example {
                    block: "4803 3330 37c1 c0bf",
                    fields: RESP2,
                    table: RESP_T2,
                    size: 222,
                },
                Example {
                    block: "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
                            54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
                            5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
                            3d31",
                    fields: RESP3,
                    table: RESP_T3,
                    size: 215,
                },
            ],
            Some(256),
        );
    }

    #[test]
    fn responses_with_huffman_rfc_c6() {
        run(
            &[
                Example {
                    block: "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                            2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                    fields: RESP1,
                    table: RESP_T1,
                    size: 222,
                },
                Example {
                    block: "4883 640e ffc1 c0bf",
                    fields: RESP2,
                    table: RESP_T2,
                    size: 222,
                },
                Example {
                    block: "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
                            77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
                            9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                    fields: RESP3,
                    table: RESP_T3,
                    size: 215,
                },
            ],
            Some(256),
        );
    }

    #[test]
    fn header_list_bomb_stops_at_the_limit() {
        // One 4000-byte entry, then a thousand references to it: 4 MB decoded.
        let mut d = Decoder::new(65536);
        let mut block = Vec::new();
        enc::size_update(&mut block, 8192);
        d.set_announced_size(8192);
        enc::literal(&mut block, "x", &"a".repeat(4000), true, false);
        for _ in 0..1000 {
            enc::indexed(&mut block, 62);
        }
        let mut seen = 0usize;
        let err = d.decode(&block, 65536, &mut |n, v| seen += n.len() + v.len());
        assert_eq!(err, Err(HpackError::HeaderListTooLarge(65536)));
        assert!(seen <= 65536, "{seen}");
        // The table is dropped and the state unknown after an error.
        assert!(d.is_state_unknown());
        assert_eq!(d.table_len(), 0);
        // A single Huffman literal that would expand past the limit also stops there.
        let mut d = Decoder::new(65536);
        let mut block = Vec::new();
        enc::literal(&mut block, "x", &"0".repeat(5000), false, true);
        assert!(matches!(
            d.decode(&block, 1024, &mut |_, _| {}),
            Err(HpackError::HeaderListTooLarge(_))
        ));
    }

    #[test]
    fn table_size_updates_are_bounded() {
        let mut d = Decoder::new(65536);
        // Above the default bound (nothing announced yet).
        let mut block = Vec::new();
        enc::size_update(&mut block, 4097);
        assert!(matches!(
            d.decode(&block, 65536, &mut |_, _| {}),
            Err(HpackError::TableSizeAbove { size: 4097, .. })
        ));
        // Announced, but above the cap.
        let mut d = Decoder::new(65536);
        d.set_announced_size(1 << 30);
        let mut block = Vec::new();
        enc::size_update(&mut block, 1 << 20);
        assert!(matches!(
            d.decode(&block, 65536, &mut |_, _| {}),
            Err(HpackError::TableSizeAbove { .. })
        ));
        // Announced and within the cap: accepted.
        let mut d = Decoder::new(65536);
        d.set_announced_size(65536);
        let mut block = Vec::new();
        enc::size_update(&mut block, 65536);
        enc::indexed(&mut block, 2);
        assert_eq!(decode_all(&mut d, &block).unwrap().len(), 1);
        // After a field it is an error.
        let mut block = Vec::new();
        enc::indexed(&mut block, 2);
        enc::size_update(&mut block, 0);
        assert_eq!(
            d.decode(&block, 65536, &mut |_, _| {}),
            Err(HpackError::LateSizeUpdate)
        );
        // A shrink evicts.
        let mut d = Decoder::new(65536);
        let mut block = Vec::new();
        enc::literal(&mut block, "a", "b", true, false);
        enc::literal(&mut block, "c", "d", true, false);
        decode_all(&mut d, &block).unwrap();
        assert_eq!(d.table_size(), 68);
        let mut block = Vec::new();
        enc::size_update(&mut block, 40);
        decode_all(&mut d, &block).unwrap();
        assert_eq!(d.snapshot(), pairs(&[("c", "d")]));
    }

    #[test]
    fn invalid_index_and_truncation() {
        let mut d = Decoder::new(65536);
        assert_eq!(
            decode_all(&mut d, &[0x80]),
            Err(HpackError::InvalidIndex(0))
        );
        let mut d = Decoder::new(65536);
        assert_eq!(
            decode_all(&mut d, &[0xbe]),
            Err(HpackError::InvalidIndex(62))
        );
        let mut d = Decoder::new(65536);
        assert_eq!(
            decode_all(&mut d, &[0x40, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn unknown_state_resolves_only_what_it_holds() {
        let mut d = Decoder::new_unknown(65536);
        // Static and literal fields decode; a dynamic reference is unresolved.
        let mut block = Vec::new();
        enc::indexed(&mut block, 3);
        enc::indexed(&mut block, 62);
        enc::literal(&mut block, "k", "v", true, false);
        let mut fields = Vec::new();
        let summary = d
            .decode(&block, 65536, &mut |n, v| {
                fields.push((n.to_vec(), v.to_vec()))
            })
            .unwrap();
        assert_eq!(
            summary,
            BlockSummary {
                fields: 2,
                unresolved: 1
            }
        );
        // The entry inserted since is the newest in the real table too: index 62 is right.
        let mut block = Vec::new();
        enc::indexed(&mut block, 62);
        enc::indexed(&mut block, 63);
        fields.clear();
        let summary = d
            .decode(&block, 65536, &mut |n, v| {
                fields.push((n.to_vec(), v.to_vec()))
            })
            .unwrap();
        assert_eq!(
            summary,
            BlockSummary {
                fields: 1,
                unresolved: 1
            }
        );
        assert_eq!(fields, vec![(b"k".to_vec(), b"v".to_vec())]);
        assert!(d.is_state_unknown());
        // An inserted literal whose name is unresolved puts an unknown entry in front.
        let mut block = Vec::new();
        enc::literal_indexed_name(&mut block, 70, "x", true);
        let summary = d.decode(&block, 65536, &mut |_, _| {}).unwrap();
        assert_eq!(summary.unresolved, 1);
        assert_eq!(d.table_len(), 0);
        // A size update to 0 makes the state known again.
        let mut block = Vec::new();
        enc::size_update(&mut block, 0);
        enc::size_update(&mut block, 4096);
        d.decode(&block, 65536, &mut |_, _| {}).unwrap();
        assert!(!d.is_state_unknown());
        assert_eq!(
            decode_all(&mut d, &[0xbe]),
            Err(HpackError::InvalidIndex(62))
        );
    }
}
