//! Context propagation (`ebpf.context_propagation: headers`): attaches the kernel side of
//! `loader-ebpf/src/inject.rs` — cgroup `connect4`/`connect6` and `sock_ops` programs on the
//! cgroup v2 root, and the `sk_msg` program on the socket map — and reads its counters.
//!
//! With the feature off nothing here is loaded or attached, and the socket map is not even
//! created as one: a `SOCKHASH` can only be created with `CAP_NET_ADMIN`, which the loader
//! holds only for this feature, so [`disable_in_object`] turns the map's definition into a
//! one-entry plain hash before aya creates the object's maps (no program using it is loaded).

use std::{
    borrow::Cow,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, MapError, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SkMsg, SockOps},
};
use object::{Object, ObjectSection, ObjectSymbol};
use sonde_schema::inject;
use tracing::info;

/// Errors from turning context propagation on; each names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "ebpf.context_propagation: headers needs the cgroup v2 hierarchy, and /proc/self/mountinfo shows no cgroup2 mount; mount it or set ebpf.cgroup_root (SONDE_CGROUP_ROOT) to the host's cgroup v2 root"
    )]
    NoCgroup2,
    #[error(
        "ebpf.context_propagation: headers: opening the cgroup v2 root {path} (ebpf.cgroup_root) failed: {source}"
    )]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ebpf.context_propagation: headers: program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("ebpf.context_propagation: headers: map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error(
        "ebpf.context_propagation: headers: program {program}: {source} (the loader needs CAP_NET_ADMIN for this feature)"
    )]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("ebpf.context_propagation: headers: map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("reading the kernel object to leave the socket map out: {0}")]
    Object(String),
}

/// `BPF_MAP_TYPE_HASH`: what the socket map's definition becomes with the feature off.
const BPF_MAP_TYPE_HASH: u32 = 1;

/// The object with `INJECT_SOCKS` made a one-entry plain hash map (feature off), so loading
/// it needs no `CAP_NET_ADMIN`; the programs that use the map are then never loaded. The
/// definition is the legacy `bpf_map_def` in the `maps` section: type, key size, value size,
/// max entries (u32 each, native endian).
pub fn disable_in_object(object: &[u8]) -> Result<Cow<'_, [u8]>, InjectError> {
    let file = object::File::parse(object).map_err(|e| InjectError::Object(e.to_string()))?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(inject::SOCKHASH))
        .ok_or(InjectError::MissingMap(inject::SOCKHASH))?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or(InjectError::MissingMap(inject::SOCKHASH))?;
    let (start, _) = section
        .file_range()
        .ok_or(InjectError::MissingMap(inject::SOCKHASH))?;
    let at = usize::try_from(start + symbol.address() - section.address())
        .map_err(|e| InjectError::Object(e.to_string()))?;
    let mut bytes = object.to_vec();
    let def = bytes
        .get_mut(at..at + 16)
        .ok_or(InjectError::MissingMap(inject::SOCKHASH))?;
    def[0..4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_ne_bytes());
    def[12..16].copy_from_slice(&1u32.to_ne_bytes());
    Ok(Cow::Owned(bytes))
}

/// The cgroup v2 root: `configured`, else the first `cgroup2` mount in `mountinfo`.
pub fn cgroup_root(configured: Option<&Path>, mountinfo: &str) -> Result<PathBuf, InjectError> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    mountinfo
        .lines()
        .find_map(|line| {
            // `<id> <parent> <dev> <root> <mount point> <options> [optional…] - <fstype> …`
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(unescape))
                .flatten()
        })
        .ok_or(InjectError::NoCgroup2)
}

/// `mountinfo` escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The map `name` taken out of `ebpf` as a `T`; the error names the map.
fn take_map<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, InjectError> {
    ebpf.take_map(name)
        .ok_or(InjectError::MissingMap(name))?
        .try_into()
        .map_err(|source| InjectError::Map { map: name, source })
}

/// Runs `attach` (load, then attach) on the program `name` of `ebpf` as a `P`; the error names
/// the program.
fn load_and_attach<P>(
    ebpf: &mut Ebpf,
    name: &'static str,
    attach: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> Result<(), InjectError>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let failed = |source| InjectError::Program {
        program: name,
        source,
    };
    let program = ebpf
        .program_mut(name)
        .ok_or(InjectError::MissingProgram(name))?;
    attach(program.try_into().map_err(failed)?).map_err(failed)
}

/// The attached programs' counters (the programs stay attached while the `Ebpf` lives).
pub struct Injection {
    stats: PerCpuArray<MapData, u64>,
    sockets: SockHash<MapData, u64>,
    /// The sampling rule of injected flags (`inject::SAMPLING`), set at each processor's hello.
    sampling: Array<MapData, u64>,
    pub cgroup: PathBuf,
}

impl Injection {
    /// Loads and attaches the four programs. Every failure names the program or map and the
    /// configuration key.
    pub fn attach(ebpf: &mut Ebpf, configured_root: Option<&Path>) -> Result<Self, InjectError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = cgroup_root(configured_root, &mountinfo)?;
        let cgroup = File::open(&root).map_err(|source| InjectError::OpenCgroup {
            path: root.clone(),
            source,
        })?;
        let sockets: SockHash<MapData, u64> = take_map(ebpf, inject::SOCKHASH)?;
        let map_fd = sockets.fd();
        load_and_attach(ebpf, inject::SK_MSG_PROGRAM, |p: &mut SkMsg| {
            p.load()?;
            p.attach(map_fd).map(drop)
        })?;
        // aya attaches through a BPF link (Linux 5.7+), which takes no flags and always
        // coexists with other programs on the cgroup (other agents, systemd): never replaces
        // theirs.
        for name in [inject::CONNECT4_PROGRAM, inject::CONNECT6_PROGRAM] {
            load_and_attach(ebpf, name, |p: &mut CgroupSockAddr| {
                p.load()?;
                p.attach(&cgroup, CgroupAttachMode::Single).map(drop)
            })?;
        }
        load_and_attach(ebpf, inject::SOCK_OPS_PROGRAM, |p: &mut SockOps| {
            p.load()?;
            p.attach(&cgroup, CgroupAttachMode::Single).map(drop)
        })?;
        let stats = take_map(ebpf, inject::STATS)?;
        let sampling = take_map(ebpf, inject::SAMPLING)?;
        info!(
            cgroup = %root.display(),
            "context propagation on: traceparent headers are added to cleartext HTTP/1 requests of selected processes (cgroup connect4/connect6 + sock_ops on the cgroup v2 root, sk_msg on their sockets)"
        );
        Ok(Injection {
            stats,
            sockets,
            sampling,
            cgroup: root,
        })
    }

    /// From now on the injected flags say "sampled" exactly for the trace ids the processor's
    /// sampler keeps: those whose last 8 bytes, shifted right by one, are below `bound`
    /// (`sampling::inject_bound` in the processor); `None` (a processor that states no rule):
    /// every trace.
    pub fn set_sampled_below(&mut self, bound: Option<u64>) -> Result<(), MapError> {
        self.sampling
            .set(0, bound.map_or(0, |b| b.min(1 << 63) + 1), 0)
    }

    /// The counters, summed over CPUs, with their names.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        inject::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .stats
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }

    /// Sockets in the socket map right now (selected processes' open client connections).
    pub fn sockets(&self) -> usize {
        self.sockets.keys().filter(Result::is_ok).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw\n\
                    31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_root(None, info).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let escaped = "31 25 0:27 / /mnt/a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_root(None, escaped).unwrap(),
            PathBuf::from("/mnt/a b")
        );
        assert!(matches!(
            cgroup_root(None, "25 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            Err(InjectError::NoCgroup2)
        ));
        assert_eq!(
            cgroup_root(Some(Path::new("/host/cgroup")), "").unwrap(),
            PathBuf::from("/host/cgroup")
        );
    }

    #[test]
    fn disabling_rewrites_only_the_socket_map_definition() {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));
        let patched = disable_in_object(object).unwrap();
        assert_eq!(patched.len(), object.len());
        let changed = object
            .iter()
            .zip(patched.iter())
            .filter(|(a, b)| a != b)
            .count();
        // The type (18 → 1) and max entries (65536 → 1): at most 8 bytes differ.
        assert!((1..=8).contains(&changed), "{changed} bytes changed");
    }
}
