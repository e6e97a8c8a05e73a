//! Attaches Sonde's OpenSSL probes (`ssl_entry`, `ssl_return`) to selected processes, one
//! process at a time, with uprobe-multi links filtered to that process.
//!
//! Links are per process, so nothing is global to refresh: a process selected after start-up
//! that maps a libssl no other process uses (a container's own copy, say) gets its own links
//! to that file, and dropping the process's links detaches it. The loader keeps doing this
//! after dropping privileges, which is why the links are uprobe-multi links (the kernel checks
//! capabilities when the program is loaded, none when the link is made) rather than
//! perf-event uprobes (`CAP_SYS_ADMIN` at every attach on kernels 6.16+).
//!
//! The parts, pure functions separated from system calls:
//! * [`libraries`]: which mapped files of a process may carry OpenSSL, and which TLS
//!   libraries Sonde cannot see into (from `/proc/<pid>/maps` text);
//! * [`elf`]: the file offsets of `SSL_read`, `SSL_write`, `SSL_read_ex`, `SSL_write_ex`;
//! * [`programs`]: loading the programs with the uprobe-multi expected attach type, on the
//!   maps of the already loaded object;
//! * [`attach`]: the `bpf(BPF_LINK_CREATE)` wrapper and the kernel support probe.

pub mod attach;
pub mod elf;
pub mod libraries;
pub mod programs;

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::PathBuf,
};

use crate::selection;

pub use attach::{attach_uprobe_multi, probe_uprobe_multi, uprobe_multi_supported};
pub use elf::{ElfCache, ElfFacts, SSL_FUNCTIONS, SslFunction};
pub use libraries::{ByName, MappedFile, OpaqueTls, UNDETECTABLE};
pub use programs::{MapFds, load_uprobe_multi_programs};

/// The entry and return programs in the kernel object; the cookie of each probe says which
/// function it is on ([`SSL_FUNCTIONS`]).
pub const ENTRY_PROGRAM: &str = "ssl_entry";
pub const RETURN_PROGRAM: &str = "ssl_return";

/// Errors of the TLS probes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("parsing the kernel object: {0}")]
    Parse(#[source] aya_obj::ParseError),
    #[error("program {0} is not in the kernel object")]
    MissingProgram(String),
    #[error("program {program} is in a {section} section, not a uprobe section")]
    NotAUprobe { program: String, section: String },
    #[error("fixing up the kernel object's BTF: {0}")]
    Btf(#[source] aya_obj::btf::BtfError),
    #[error("loading the kernel object's BTF: {source}\nlog:\n{log}")]
    BtfLoad { source: io::Error, log: String },
    #[error("relocating the TLS programs: {0}")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("loading program {program}: {source}\nverifier log:\n{verifier_log}")]
    ProgramLoad {
        program: String,
        source: io::Error,
        verifier_log: String,
    },
    #[error("invalid uprobe-multi arguments: {0}")]
    BadAttach(&'static str),
    #[error("creating a uprobe-multi link on {path} (return probe: {ret}): {source}")]
    LinkCreate {
        path: String,
        ret: bool,
        source: io::Error,
    },
    #[error("reading /proc/{pid}/maps: {source}")]
    ReadMaps { pid: u32, source: io::Error },
    #[error("opening {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("reading ELF file {path}: {source}")]
    Elf { path: String, source: object::Error },
    #[error("no live process {0}")]
    NoProcess(u32),
    #[error("{tracked} processes already have TLS probes (the limit); pid {pid} refused")]
    TooManyProcesses { pid: u32, tracked: usize },
}

/// Bounds on what [`TlsProbes`] holds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Processes with links at once.
    pub max_processes: usize,
    /// Links per process (two per file: entry and return).
    pub max_links_per_process: usize,
    /// ELF files whose symbols are cached.
    pub max_cached_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: 1024,
            max_links_per_process: 16,
            max_cached_files: 256,
        }
    }
}

/// A file whose OpenSSL functions are probed in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instrumented {
    /// The path inside the process's mount namespace.
    pub path: String,
    /// The functions probed (names from [`SSL_FUNCTIONS`]).
    pub functions: Vec<&'static str>,
}

/// A TLS library seen in a process that Sonde cannot instrument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotInstrumentable {
    pub library: OpaqueTls,
    pub path: String,
    /// First time this [`TlsProbes`] saw this kind of library: log it ("TLS library not
    /// instrumentable: {reason}") once.
    pub first_sighting: bool,
}

/// What [`TlsProbes::attach_process`] did.
#[derive(Debug, Default)]
pub struct AttachReport {
    /// Files newly probed by this call.
    pub instrumented: Vec<Instrumented>,
    /// Files already probed in this process by an earlier call.
    pub already: usize,
    pub not_instrumentable: Vec<NotInstrumentable>,
    /// Candidate files that could not be probed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Files not probed because the process reached its link limit.
    pub refused_files: usize,
}

/// The links of one file in one process; closing them detaches the probes.
struct FileLinks {
    _entry: OwnedFd,
    _ret: OwnedFd,
}

/// The links made for one process.
#[derive(Default)]
struct ProcessLinks {
    /// Start time of the process (`/proc/<pid>/stat` field 22): a pid taken by a new process
    /// is a different process, whose links start from nothing.
    start: u64,
    /// (maps device, inode) → links.
    files: HashMap<(u64, u64), FileLinks>,
}

/// What became of one candidate file.
enum FileOutcome {
    Probed(Instrumented, FileLinks),
    Opaque(OpaqueTls),
    /// The process is at its link limit.
    Refused,
    /// Not probed; `always`: worth reporting even for a file not named libssl.
    Failed {
        reason: String,
        always: bool,
    },
}

/// What [`TlsProbes`] refused because of its [`Limits`], since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    pub processes: u64,
    pub files: u64,
}

/// The loaded TLS programs and the links made for each process.
pub struct TlsProbes {
    entry: OwnedFd,
    ret: OwnedFd,
    limits: Limits,
    elf: ElfCache,
    processes: HashMap<u32, ProcessLinks>,
    seen_opaque: HashSet<OpaqueTls>,
    refused: Refusals,
}

impl TlsProbes {
    /// Loads [`ENTRY_PROGRAM`] and [`RETURN_PROGRAM`] from `object` on the maps `maps`
    /// (needs `CAP_BPF` + `CAP_PERFMON`).
    pub fn load(object: &[u8], maps: &MapFds<'_>, limits: Limits) -> Result<Self, TlsError> {
        let mut fds = load_uprobe_multi_programs(object, &[ENTRY_PROGRAM, RETURN_PROGRAM], maps)?;
        let ret = fds
            .pop()
            .ok_or(TlsError::MissingProgram(RETURN_PROGRAM.into()))?;
        let entry = fds
            .pop()
            .ok_or(TlsError::MissingProgram(ENTRY_PROGRAM.into()))?;
        Ok(Self::from_programs(entry, ret, limits))
    }

    /// Uses programs already loaded with the uprobe-multi expected attach type.
    pub fn from_programs(entry: OwnedFd, ret: OwnedFd, limits: Limits) -> Self {
        TlsProbes {
            entry,
            ret,
            limits,
            elf: ElfCache::new(limits.max_cached_files),
            processes: HashMap::new(),
            seen_opaque: HashSet::new(),
            refused: Refusals::default(),
        }
    }

    /// Probes the OpenSSL functions of every file `pid` maps that has them (libssl, or a
    /// program with OpenSSL linked in), for that process only. Calling it again for the same
    /// process adds files mapped since (a `dlopen`ed libssl) and leaves the others alone; if
    /// another process has taken the pid since (its start time differs), the old links are
    /// dropped first. Call [`TlsProbes::detach_process`] when the process exits or leaves
    /// the selection.
    ///
    /// Files are opened through `/proc/<pid>/root/<path>` (a container's files are at their
    /// own paths in their own mount namespace) and the link is made on that open file
    /// (`/proc/self/fd/<n>`), so the probes land on exactly the file whose symbols were read.
    /// The link itself needs no capability (holding the program fd is what the kernel checks);
    /// reading `/proc/<pid>/maps` and `/proc/<pid>/root` of another user's process needs
    /// ptrace-read access (`CAP_SYS_PTRACE`), and files the loader's user cannot read need
    /// `CAP_DAC_READ_SEARCH`.
    pub fn attach_process(&mut self, pid: u32) -> Result<AttachReport, TlsError> {
        if !self.processes.contains_key(&pid) && self.processes.len() >= self.limits.max_processes {
            self.refused.processes += 1;
            return Err(TlsError::TooManyProcesses {
                pid,
                tracked: self.processes.len(),
            });
        }
        let start = selection::start_time(pid).ok_or(TlsError::NoProcess(pid))?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|source| TlsError::ReadMaps { pid, source })?;
        let mut report = AttachReport::default();
        let mut links = match self.processes.remove(&pid) {
            Some(links) if links.start == start => links,
            // None yet, or they were made for an earlier process on this pid: dropped.
            _ => ProcessLinks {
                start,
                files: HashMap::new(),
            },
        };
        for file in libraries::parse_maps(&maps) {
            if links.files.contains_key(&(file.dev, file.inode)) {
                report.already += 1;
                continue;
            }
            let named_libssl = match libraries::classify(&file.path) {
                ByName::Opaque(library) => {
                    self.saw_opaque(&mut report, library, &file.path);
                    continue;
                }
                ByName::LibSsl => true,
                ByName::Other if file.executable => false,
                ByName::Other => continue,
            };
            match self.probe_file(pid, &file, links.files.len()) {
                FileOutcome::Probed(instrumented, file_links) => {
                    links.files.insert((file.dev, file.inode), file_links);
                    report.instrumented.push(instrumented);
                }
                FileOutcome::Opaque(library) => self.saw_opaque(&mut report, library, &file.path),
                FileOutcome::Refused => {
                    self.refused.files += 1;
                    report.refused_files += 1;
                }
                // Only a file named libssl is expected to have the functions; for other code
                // (every executable mapping is looked at) not finding them is the norm.
                FileOutcome::Failed { reason, always } if always || named_libssl => {
                    report.failed.push((file.path.clone(), reason));
                }
                FileOutcome::Failed { .. } => {}
            }
        }
        // The kernel resolved `pid` when each link was made: if the process exited and the
        // pid was taken meanwhile, the links may watch a stranger. Drop them.
        if selection::start_time(pid) != Some(start) {
            return Err(TlsError::NoProcess(pid));
        }
        // Kept even when empty: the process counts against the limit until detached, and a
        // later call adds what it maps then.
        self.processes.insert(pid, links);
        Ok(report)
    }

    /// Looks inside one candidate file and probes it if it has the OpenSSL functions.
    fn probe_file(&mut self, pid: u32, file: &MappedFile, links_held: usize) -> FileOutcome {
        let quiet = |reason: String| FileOutcome::Failed {
            reason,
            always: false,
        };
        if file.deleted {
            return quiet("deleted or replaced on disk since it was mapped".into());
        }
        let host_path = proc_root_path(pid, &file.path);
        let opened = match File::open(&host_path) {
            Ok(f) => f,
            Err(e) => return quiet(format!("opening {}: {e}", host_path.display())),
        };
        let facts = match self.elf.facts(&opened, &file.path) {
            Ok(f) => f,
            Err(e) => return quiet(e.to_string()),
        };
        if facts.go {
            return FileOutcome::Opaque(OpaqueTls::Go);
        }
        let (offsets, cookies) = facts.probes();
        if offsets.is_empty() {
            return quiet("no SSL_read/SSL_write symbols (stripped or hidden)".into());
        }
        if links_held * 2 + 2 > self.limits.max_links_per_process {
            return FileOutcome::Refused;
        }
        // The link is made on the file just opened and read, not on a path that could lead
        // elsewhere by now.
        let Ok(path) = CString::new(format!("/proc/self/fd/{}", opened.as_raw_fd())) else {
            return quiet("fd path".into());
        };
        let attach = |prog: &OwnedFd, ret| {
            attach_uprobe_multi(prog.as_fd(), &path, &offsets, &cookies, pid, ret)
        };
        let (entry, ret) = match (attach(&self.entry, false), attach(&self.ret, true)) {
            (Ok(entry), Ok(ret)) => (entry, ret),
            (Err(e), _) | (_, Err(e)) => {
                return FileOutcome::Failed {
                    reason: e.to_string(),
                    always: true,
                };
            }
        };
        FileOutcome::Probed(
            Instrumented {
                path: file.path.clone(),
                functions: SSL_FUNCTIONS
                    .iter()
                    .zip(facts.ssl_offsets)
                    .filter(|(_, off)| off.is_some())
                    .map(|(f, _)| f.name)
                    .collect(),
            },
            FileLinks {
                _entry: entry,
                _ret: ret,
            },
        )
    }

    fn saw_opaque(&mut self, report: &mut AttachReport, library: OpaqueTls, path: &str) {
        report.not_instrumentable.push(NotInstrumentable {
            library,
            path: path.to_owned(),
            first_sighting: self.seen_opaque.insert(library),
        });
    }

    /// Drops `pid`'s links (closing a link fd detaches its probes). False if it had none.
    pub fn detach_process(&mut self, pid: u32) -> bool {
        self.processes.remove(&pid).is_some()
    }

    /// Processes with links, and how many files each has probed.
    pub fn processes(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.processes
            .iter()
            .map(|(pid, links)| (*pid, links.files.len()))
    }

    /// What the limits refused so far.
    pub fn refusals(&self) -> Refusals {
        self.refused
    }
}

/// `path` (absolute, inside `pid`'s mount namespace) as reached from this one.
fn proc_root_path(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

#[cfg(test)]
mod tests;
