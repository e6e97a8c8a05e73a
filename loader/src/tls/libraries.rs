//! Reads `/proc/<pid>/maps` text to find the files of a process that may carry OpenSSL, and
//! names the TLS libraries Sonde cannot see into, so the user learns why HTTPS from that
//! process has no spans.
//!
//! A file is a candidate when it is `libssl.so*` (by name) or has an executable mapping (it is
//! code: the main executable, a statically linked OpenSSL in a shared object); the ELF check
//! ([`super::elf`]) then decides. Files are deduplicated by the (device, inode) of the maps
//! line: a library is mapped several times (one line per segment) and may be reached by
//! several paths.
//!
//! Not instrumentable, by name: Java's JSSE (`libjava.so`, `libjvm.so`), GnuTLS, NSS, and
//! grpcio's BoringSSL (`cygrpc*.so`, its symbols are hidden); by ELF: Go's crypto/tls.
//! rustls cannot be detected at all: it is compiled into the program with no symbol or
//! library of its own.

/// One file mapped into a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the process sees it (inside its own mount namespace).
    pub path: String,
    /// Device (`major:minor` of the maps line, as `makedev`) and inode.
    pub dev: u64,
    pub inode: u64,
    /// Some mapping of it is executable.
    pub executable: bool,
    /// The maps line says ` (deleted)`: the file was replaced or removed after it was mapped,
    /// and its path no longer leads to it.
    pub deleted: bool,
}

/// The files in `/proc/<pid>/maps` text, each once, in first-seen order. Anonymous and
/// special mappings (`[heap]`, `anon_inode:…`, `/memfd:…`, inode 0) are left out.
pub fn parse_maps(text: &str) -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = Vec::new();
    for line in text.lines() {
        let Some(m) = parse_line(line) else { continue };
        match files
            .iter_mut()
            .find(|f| f.dev == m.dev && f.inode == m.inode)
        {
            Some(f) => f.executable |= m.executable,
            None => files.push(m),
        }
    }
    files
}

/// `start-end perms offset major:minor inode   path`; the path may hold spaces.
fn parse_line(line: &str) -> Option<MappedFile> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let _range = field();
    let perms = field();
    let _offset = field();
    let dev = field();
    let inode: u64 = field().parse().ok()?;
    let path = rest.trim_start();
    if inode == 0 || !path.starts_with('/') || path.starts_with("/memfd:") {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MappedFile {
        path: path.to_owned(),
        dev: libc::makedev(major, minor),
        inode,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        deleted,
    })
}

/// A TLS implementation Sonde cannot instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpaqueTls {
    Java,
    Go,
    GnuTls,
    Nss,
    GrpcBoringSsl,
}

impl OpaqueTls {
    /// Why, for the one-time log line "TLS library not instrumentable: …".
    pub fn reason(self) -> &'static str {
        match self {
            OpaqueTls::Java => {
                "Java (JSSE): TLS is implemented in Java bytecode, with no native function to probe"
            }
            OpaqueTls::Go => {
                "Go crypto/tls: Go's own TLS, compiled into the binary; Sonde probes OpenSSL only"
            }
            OpaqueTls::GnuTls => "GnuTLS: Sonde probes OpenSSL's SSL_read/SSL_write only",
            OpaqueTls::Nss => "NSS (libnss3): Sonde probes OpenSSL's SSL_read/SSL_write only",
            OpaqueTls::GrpcBoringSsl => {
                "grpcio's BoringSSL (cygrpc): linked in with hidden symbols, nothing to probe"
            }
        }
    }
}

/// What cannot be detected at all, for documentation and the start-up log.
pub const UNDETECTABLE: &str = "rustls (and other TLS stacks compiled into a program without \
     exported symbols) cannot be detected: its HTTPS traffic has no spans";

/// What a mapped file's name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByName {
    /// `libssl.so*`: OpenSSL's TLS library; look up its functions.
    LibSsl,
    /// A library Sonde cannot see into.
    Opaque(OpaqueTls),
    /// Look inside if it is code (statically linked OpenSSL, a Go binary).
    Other,
}

/// Classifies a mapped file by its base name.
pub fn classify(path: &str) -> ByName {
    let name = path.rsplit('/').next().unwrap_or(path);
    let so = |stem: &str| {
        name.strip_prefix(stem)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    if so("libssl.so") {
        ByName::LibSsl
    } else if so("libjava.so") || so("libjvm.so") {
        ByName::Opaque(OpaqueTls::Java)
    } else if so("libgnutls.so") {
        ByName::Opaque(OpaqueTls::GnuTls)
    } else if so("libnss3.so") {
        ByName::Opaque(OpaqueTls::Nss)
    } else if name.starts_with("cygrpc") && (name.ends_with(".so") || name.contains(".so.")) {
        ByName::Opaque(OpaqueTls::GrpcBoringSsl)
    } else {
        ByName::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON: &str = "\
55d0c3a00000-55d0c3a6f000 r--p 00000000 fe:01 1311237                    /usr/bin/python3.11
55d0c3a6f000-55d0c3d1b000 r-xp 0006f000 fe:01 1311237                    /usr/bin/python3.11
55d0c4f39000-55d0c5003000 rw-p 00000000 00:00 0                          [heap]
7f1e2c400000-7f1e2c4a7000 r--p 00000000 fe:01 1320018                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1e2c4a7000-7f1e2c705000 r-xp 000a7000 fe:01 1320018                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1e2c800000-7f1e2c81f000 r--p 00000000 fe:01 1320021                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c81f000-7f1e2c87c000 r-xp 0001f000 fe:01 1320021                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1e2c9f0000-7f1e2c9f8000 r-xp 00000000 fe:01 1320030                    /usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so
7f1e2ca00000-7f1e2ca01000 rw-s 00000000 00:0f 1046                       anon_inode:[eventfd]
7f1e2ca10000-7f1e2ca11000 r--p 00000000 00:01 2048                       /memfd:wayland-shm (deleted)
7f1e2ca20000-7f1e2ca21000 r--s 00000000 fe:01 4242                       /var/cache/my file.db
7ffd5b1d2000-7ffd5b1f3000 rw-p 00000000 00:00 0                          [stack]
7ffd5b1f8000-7ffd5b1fa000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_and_deduplicates_by_inode() {
        let files = parse_maps(PYTHON);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/python3.11",
                "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
                "/var/cache/my file.db",
            ]
        );
        let ssl = &files[2];
        assert_eq!((ssl.dev, ssl.inode), (libc::makedev(0xfe, 1), 1320021));
        assert!(ssl.executable && !ssl.deleted);
        assert!(!files[4].executable, "data file mapped read-only");
    }

    #[test]
    fn notes_deleted_files() {
        let text = "7f00-7f10 r-xp 00000000 08:02 77 /usr/lib/libssl.so.3 (deleted)\n";
        let files = parse_maps(text);
        assert_eq!(files.len(), 1);
        assert!(files[0].deleted);
        assert_eq!(files[0].path, "/usr/lib/libssl.so.3");
    }

    #[test]
    fn same_path_two_inodes_are_two_files() {
        // A library replaced on disk and loaded again (old copy deleted): two files.
        let text = "\
7f00-7f10 r-xp 00000000 08:02 77 /usr/lib/libssl.so.3 (deleted)
7f20-7f30 r-xp 00000000 08:02 78 /usr/lib/libssl.so.3
";
        assert_eq!(parse_maps(text).len(), 2);
    }

    #[test]
    fn ignores_malformed_lines() {
        assert!(parse_maps("garbage\n\n7f00-7f10 r-xp 0 zz:zz 12 /x\n").is_empty());
    }

    #[test]
    fn classifies_names() {
        assert_eq!(
            classify("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            ByName::LibSsl
        );
        assert_eq!(classify("/opt/app/lib/libssl.so.1.1"), ByName::LibSsl);
        assert_eq!(classify("/usr/lib/libssl.so"), ByName::LibSsl);
        assert_eq!(
            classify("/usr/lib/libssl3.so"),
            ByName::Other,
            "NSS's libssl3"
        );
        assert_eq!(
            classify("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
            ByName::Other
        );
        assert_eq!(
            classify("/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"),
            ByName::Opaque(OpaqueTls::Java)
        );
        assert_eq!(
            classify("/usr/lib/jvm/java-17-openjdk-amd64/lib/libjava.so"),
            ByName::Opaque(OpaqueTls::Java)
        );
        assert_eq!(
            classify("/usr/lib/x86_64-linux-gnu/libgnutls.so.30"),
            ByName::Opaque(OpaqueTls::GnuTls)
        );
        assert_eq!(
            classify("/usr/lib/x86_64-linux-gnu/libnss3.so"),
            ByName::Opaque(OpaqueTls::Nss)
        );
        assert_eq!(
            classify(
                "/venv/lib/python3.11/site-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so"
            ),
            ByName::Opaque(OpaqueTls::GrpcBoringSsl)
        );
        assert_eq!(classify("/usr/bin/node"), ByName::Other);
    }

    #[test]
    fn java_process_is_opaque() {
        let text = "\
55e4a0e00000-55e4a0e01000 r-xp 00001000 fe:01 900 /usr/lib/jvm/java-17-openjdk-amd64/bin/java
7f30a0000000-7f30a0e00000 r-xp 00200000 fe:01 901 /usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so
7f30a1000000-7f30a1010000 r-xp 00004000 fe:01 902 /usr/lib/jvm/java-17-openjdk-amd64/lib/libjava.so
";
        let opaque: Vec<ByName> = parse_maps(text)
            .iter()
            .map(|f| classify(&f.path))
            .filter(|c| matches!(c, ByName::Opaque(_)))
            .collect();
        assert_eq!(
            opaque,
            [
                ByName::Opaque(OpaqueTls::Java),
                ByName::Opaque(OpaqueTls::Java)
            ]
        );
        assert!(OpaqueTls::Java.reason().starts_with("Java (JSSE)"));
    }
}
