//! Finds where in an ELF file the OpenSSL functions Sonde probes start, as the file offsets
//! uprobes are placed at, and whether the file is a Go binary (whose crypto/tls Sonde cannot
//! see into).
//!
//! A symbol's value is a virtual address; a uprobe wants the offset within the file, which is
//! the address moved from the `PT_LOAD` segment containing it to that segment's file offset.
//! Symbols come from `.dynsym` (what a shared library or an executable like node exports) and,
//! for what `.dynsym` lacks, `.symtab` when the file was not stripped. Only defined function
//! symbols count. Big files are read through `object`'s `ReadCache`, which reads only the headers
//! and tables it needs (node is ~100 MB), and the result is cached per file (device, inode).

use std::{collections::HashMap, fs::File, io::Read, os::unix::fs::MetadataExt, sync::Arc};

use object::{Object, ObjectSegment, ObjectSymbol, ReadCache, ReadRef, SymbolKind};

use super::TlsError;

/// An OpenSSL function Sonde probes, and the cookie its probe carries
/// (`bpf_get_attach_cookie` in the kernel program tells the functions apart by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SslFunction {
    pub name: &'static str,
    pub cookie: u64,
}

/// The functions probed, in cookie order.
pub const SSL_FUNCTIONS: [SslFunction; 4] = [
    SslFunction {
        name: "SSL_read",
        cookie: 1,
    },
    SslFunction {
        name: "SSL_write",
        cookie: 2,
    },
    SslFunction {
        name: "SSL_read_ex",
        cookie: 3,
    },
    SslFunction {
        name: "SSL_write_ex",
        cookie: 4,
    },
];

/// What Sonde needs to know about one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// File offset of each of [`SSL_FUNCTIONS`] (same order), where the file defines it.
    pub ssl_offsets: [Option<u64>; 4],
    /// A Go binary (`.go.buildinfo` section or a `runtime.main` symbol).
    pub go: bool,
}

impl ElfFacts {
    /// Whether the file defines `SSL_write` (what marks a statically linked OpenSSL).
    pub fn has_ssl_write(&self) -> bool {
        self.ssl_offsets[1].is_some()
    }

    /// The (offsets, cookies) to attach, one pair per function found.
    pub fn probes(&self) -> (Vec<u64>, Vec<u64>) {
        SSL_FUNCTIONS
            .iter()
            .zip(self.ssl_offsets)
            .filter_map(|(f, off)| off.map(|off| (off, f.cookie)))
            .unzip()
    }
}

/// Reads the facts from ELF data (a byte slice or a `ReadCache` over a file).
pub fn analyze<'data, R: ReadRef<'data>>(data: R) -> Result<ElfFacts, object::Error> {
    let file = object::File::parse(data)?;
    // (virtual address, size in file, file offset) of each PT_LOAD segment.
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (s.address(), size, offset)
        })
        .collect();
    let file_offset = |address: u64| {
        segments
            .iter()
            .find(|(va, size, _)| address >= *va && address - va < *size)
            .map(|(va, _, offset)| address - va + offset)
    };

    let mut facts = ElfFacts {
        go: file.section_by_name(".go.buildinfo").is_some(),
        ..ElfFacts::default()
    };
    let lookup =
        |facts: &mut ElfFacts, symbols: &mut dyn Iterator<Item = object::Symbol<'data, '_, R>>| {
            let look_for_go = !facts.go;
            for symbol in symbols {
                if !symbol.is_definition() || symbol.kind() != SymbolKind::Text {
                    continue;
                }
                let Ok(name) = symbol.name() else { continue };
                if look_for_go && name == "runtime.main" {
                    facts.go = true;
                }
                if let Some(i) = SSL_FUNCTIONS.iter().position(|f| f.name == name)
                    && facts.ssl_offsets[i].is_none()
                {
                    facts.ssl_offsets[i] = file_offset(symbol.address());
                }
            }
        };
    lookup(&mut facts, &mut file.dynamic_symbols());
    // `.symtab` (present when the file was not stripped) only when `.dynsym` left a function
    // open: it is large, and it is where a statically linked, unexported OpenSSL shows.
    if facts.ssl_offsets.iter().any(Option::is_none) {
        lookup(&mut facts, &mut file.symbols());
    }
    Ok(facts)
}

/// Files up to this size are read into memory whole to be analysed.
const READ_WHOLE_BYTES: u64 = 32 << 20;

/// What was cached for one file: the facts and how to tell the file changed in place.
struct Cached {
    size: u64,
    mtime: (i64, i64),
    facts: Arc<ElfFacts>,
}

/// [`analyze`] results per file (device, inode), bounded. A file changed in place (same
/// inode, other size or mtime) is read again.
pub struct ElfCache {
    entries: HashMap<(u64, u64), Cached>,
    capacity: usize,
}

impl ElfCache {
    pub fn new(capacity: usize) -> Self {
        ElfCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The facts of the open file `file` (`path` is for errors only).
    pub fn facts(&mut self, file: &File, path: &str) -> Result<Arc<ElfFacts>, TlsError> {
        let meta = file.metadata().map_err(|source| TlsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let key = (meta.dev(), meta.ino());
        let mtime = (meta.mtime(), meta.mtime_nsec());
        if let Some(c) = self.entries.get(&key)
            && c.size == meta.len()
            && c.mtime == mtime
        {
            return Ok(Arc::clone(&c.facts));
        }
        let elf_error = |source| TlsError::Elf {
            path: path.to_owned(),
            source,
        };
        // Small files (nearly every library) are read whole: `ReadCache` reads each symbol
        // name separately, thousands of small reads for a libcrypto. Big ones (node) are read
        // piecemeal, only the headers and tables looked at.
        let facts = Arc::new(if meta.len() <= READ_WHOLE_BYTES {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.take(READ_WHOLE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|source| TlsError::Open {
                    path: path.to_owned(),
                    source,
                })?;
            analyze(&bytes[..]).map_err(elf_error)?
        } else {
            analyze(&ReadCache::new(file)).map_err(elf_error)?
        });
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // Simplest bound that cannot grow: start over. Files are re-read at most once
            // per process attach after that.
            self.entries.clear();
        }
        self.entries.insert(
            key,
            Cached {
                size: meta.len(),
                mtime,
                facts: Arc::clone(&facts),
            },
        );
        Ok(facts)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    const NODE: &str = "/usr/bin/node";

    /// What `nm -D` and `readelf -lW` say: symbol address → file offset through the PT_LOAD
    /// segment containing it.
    fn expected_offsets(path: &str) -> [Option<u64>; 4] {
        let nm = Command::new("nm")
            .args(["-D", "--defined-only", path])
            .output();
        let readelf = Command::new("readelf").args(["-lW", path]).output();
        let (Ok(nm), Ok(readelf)) = (nm, readelf) else {
            panic!("nm/readelf (binutils) are needed for this test");
        };
        let nm = String::from_utf8_lossy(&nm.stdout);
        let readelf = String::from_utf8_lossy(&readelf.stdout);
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        // "  LOAD  0xOFFSET 0xVADDR 0xPADDR 0xFILESZ 0xMEMSZ FLAGS ALIGN"
        let loads: Vec<(u64, u64, u64)> = readelf
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&"LOAD")).then(|| {
                    (
                        hex(f[2]).expect("vaddr"),
                        hex(f[4]).expect("filesz"),
                        hex(f[1]).expect("offset"),
                    )
                })
            })
            .collect();
        let mut out = [None; 4];
        for line in nm.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 3 || f[1] != "T" {
                continue;
            }
            let name = f[2].split('@').next().unwrap_or_default();
            if let Some(i) = SSL_FUNCTIONS.iter().position(|s| s.name == name) {
                let addr = hex(f[0]).expect("address");
                out[i] = loads
                    .iter()
                    .find(|(va, size, _)| addr >= *va && addr - va < *size)
                    .map(|(va, _, off)| addr - va + off);
            }
        }
        out
    }

    fn check(path: &str) {
        let Ok(file) = File::open(path) else {
            eprintln!("skipping: {path} is not on this machine");
            return;
        };
        let facts = ElfCache::new(4).facts(&file, path).expect("analyze");
        let expected = expected_offsets(path);
        assert!(expected.iter().all(Option::is_some), "{path}: {expected:?}");
        assert_eq!(facts.ssl_offsets, expected, "{path}");
        assert!(!facts.go, "{path} is not a Go binary");
        let (offsets, cookies) = facts.probes();
        assert_eq!(cookies, [1, 2, 3, 4]);
        assert_eq!(offsets.len(), 4);
    }

    #[test]
    fn finds_ssl_functions_in_libssl() {
        check(LIBSSL);
    }

    #[test]
    fn finds_ssl_functions_in_node() {
        // node links OpenSSL statically and exports its symbols. Its SSL_write is in the
        // third PT_LOAD, whose file offset differs from its address (0xb72000 vs 0x772000
        // on Debian 12's node 18), so this also checks the address-to-offset step.
        check(NODE);
    }

    #[test]
    fn a_file_without_ssl_has_nothing() {
        let Ok(file) = File::open("/usr/bin/true") else {
            return;
        };
        let facts = ElfCache::new(4)
            .facts(&file, "/usr/bin/true")
            .expect("analyze");
        assert_eq!(*facts, ElfFacts::default());
        assert!(!facts.has_ssl_write());
    }

    #[test]
    fn detects_go_binaries() {
        // Debian's Prometheus tools are Go programs (the project's setup installs them).
        let path = "/usr/bin/promtool";
        let Ok(file) = File::open(path) else {
            eprintln!("skipping: {path} is not on this machine");
            return;
        };
        let facts = ElfCache::new(4).facts(&file, path).expect("analyze");
        assert!(facts.go, "{path} is a Go binary");
        assert!(!facts.has_ssl_write());
    }

    #[test]
    fn not_elf_is_an_error() {
        assert!(analyze(&b"#!/bin/sh\necho hi\n"[..]).is_err());
    }

    #[test]
    fn cache_is_bounded_and_reused() {
        let mut cache = ElfCache::new(1);
        for path in ["/usr/bin/true", "/usr/bin/false", "/usr/bin/true"] {
            let Ok(file) = File::open(path) else { return };
            cache.facts(&file, path).expect("analyze");
            assert_eq!(cache.len(), 1);
        }
    }
}
