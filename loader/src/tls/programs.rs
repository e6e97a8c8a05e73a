//! Loads the TLS uprobe programs from the kernel object with the uprobe-multi expected attach
//! type, sharing the maps of the already loaded [`aya::Ebpf`].
//!
//! aya 0.14 loads uprobe programs without an expected attach type, and the kernel then refuses
//! them a uprobe-multi link. So these programs are loaded here: the object is parsed again
//! with aya-obj, their map references are pointed at the fds of the maps aya created (the
//! same kernel maps, so events and state meet the rest of the programs), calls into `.text`
//! are linked, and `bpf(BPF_PROG_LOAD)` runs with `expected_attach_type =
//! BPF_TRACE_UPROBE_MULTI`. This mirrors `EbpfLoader::load` in aya 0.14 (`aya/src/bpf.rs`),
//! minus map creation: the object's BTF is fixed up for this kernel as aya does and loaded
//! (`BPF_BTF_LOAD`), and each program goes in with it and its function and line info (the
//! callee functions' records moved to where `relocate_calls` appended them). The kernel needs
//! that info for any program that calls `bpf_loop` (its callback is a BTF-described function),
//! which the header search does. `sanitize_functions` is left out because every kernel with
//! uprobe-multi links (6.6+) has the helpers it would replace.
//!
//! [`prepare`] is pure (no system calls; fds are just numbers); [`load_uprobe_multi_programs`]
//! adds the loading.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::{
    Object, ProgramSection,
    generated::{bpf_func_info, bpf_insn, bpf_line_info},
};

use super::{
    TlsError,
    attach::{ProgramBtf, ProgramLoad, load_btf, load_program},
};

/// The kernel maps the programs may refer to, by the name the object gives them (for
/// `.rodata`/`.data`/`.bss` globals, the section name, as aya names them).
#[derive(Default)]
pub struct MapFds<'a> {
    fds: HashMap<String, BorrowedFd<'a>>,
}

impl<'a> MapFds<'a> {
    /// Every map still held by `ebpf`. Maps taken out of it with `take_map` are not there:
    /// build this first, or [`MapFds::insert`] them.
    pub fn from_ebpf(ebpf: &'a Ebpf) -> Self {
        let mut fds = MapFds::default();
        for (name, map) in ebpf.maps() {
            fds.insert(name, map_data(map).fd().as_fd());
        }
        fds
    }

    /// Adds (or replaces) the map `name`.
    pub fn insert(&mut self, name: impl Into<String>, fd: BorrowedFd<'a>) {
        self.fds.insert(name.into(), fd);
    }

    fn raw(&self) -> HashMap<&str, RawFd> {
        self.fds
            .iter()
            .map(|(name, fd)| (name.as_str(), fd.as_raw_fd()))
            .collect()
    }
}

/// A program ready for `BPF_PROG_LOAD`: map references hold map fds, calls are linked.
#[derive(Debug)]
pub struct PreparedProgram {
    pub name: String,
    pub instructions: Vec<bpf_insn>,
    pub license: CString,
    pub kernel_version: u32,
    pub sleepable: bool,
    /// `bpf_func_info` records (instruction offsets within `instructions`), encoded.
    pub func_info: Vec<u8>,
    pub func_info_cnt: u32,
    /// `bpf_line_info` records, encoded.
    pub line_info: Vec<u8>,
    pub line_info_cnt: u32,
}

/// What [`prepare`] makes of an object: the programs, and the BTF their func/line info refers
/// to (fixed up for this kernel), when the object has BTF and the kernel takes it.
#[derive(Debug)]
pub struct Prepared {
    pub btf: Option<Vec<u8>>,
    pub programs: Vec<PreparedProgram>,
}

/// Loads the programs `names` from `object` (the bytes aya loaded), their maps pointed at
/// `maps`, as kprobe-type programs that accept uprobe-multi links. Returns their fds in the
/// order of `names`. Each program must be in a `uprobe`/`uretprobe` (or `kprobe`) section.
pub fn load_uprobe_multi_programs(
    object: &[u8],
    names: &[&str],
    maps: &MapFds<'_>,
) -> Result<Vec<OwnedFd>, TlsError> {
    load(object, names, maps, SectionCheck::KprobeType)
}

/// Whether [`prepare`] insists on kprobe-type sections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SectionCheck {
    /// Only `kprobe`/`kretprobe`/`uprobe`/`uretprobe` sections (what the kernel will load
    /// as `BPF_PROG_TYPE_KPROBE`).
    KprobeType,
    /// Any section: the kernel's verifier decides. Tests use it to load a program of another
    /// section as a uprobe.
    Any,
}

pub(super) fn load(
    object: &[u8],
    names: &[&str],
    maps: &MapFds<'_>,
    check: SectionCheck,
) -> Result<Vec<OwnedFd>, TlsError> {
    let raw = maps.raw();
    let prepared = prepare(object, names, &|name| raw.get(name).copied(), check)?;
    let btf = prepared.btf.as_deref().map(load_btf).transpose()?;
    prepared
        .programs
        .iter()
        .map(|p| {
            load_program(&ProgramLoad {
                name: &p.name,
                instructions: &p.instructions,
                license: &p.license,
                kernel_version: p.kernel_version,
                sleepable: p.sleepable,
                btf: btf.as_ref().map(|fd| ProgramBtf {
                    fd: fd.as_fd(),
                    func_info: &p.func_info,
                    func_info_cnt: p.func_info_cnt,
                    func_info_rec_size: size_of::<bpf_func_info>() as u32,
                    line_info: &p.line_info,
                    line_info_cnt: p.line_info_cnt,
                    line_info_rec_size: size_of::<bpf_line_info>() as u32,
                }),
            })
        })
        .collect()
}

/// Parses `object` and relocates the programs `names` against the map fds `map_fd` gives
/// by map name. Maps referenced only by other programs need no fd. The BTF is fixed up for
/// the features aya found in this kernel (none without BTF support: then no BTF and the
/// programs go without func/line info, as aya would load them).
pub fn prepare(
    object: &[u8],
    names: &[&str],
    map_fd: &dyn Fn(&str) -> Option<RawFd>,
    check: SectionCheck,
) -> Result<Prepared, TlsError> {
    let mut obj = Object::parse(object).map_err(TlsError::Parse)?;
    let btf = match aya::features().btf() {
        Some(features) => obj
            .fixup_and_sanitize_btf(features)
            .map_err(TlsError::Btf)?
            .map(|btf| btf.to_bytes()),
        None => None,
    };
    let mut sleepable = HashMap::new();
    for name in names {
        let program = obj
            .programs
            .get(*name)
            .ok_or_else(|| TlsError::MissingProgram((*name).to_owned()))?;
        let s = match (&program.section, check) {
            (ProgramSection::KProbe | ProgramSection::KRetProbe, _) => false,
            (ProgramSection::UProbe { sleepable } | ProgramSection::URetProbe { sleepable }, _) => {
                *sleepable
            }
            (_, SectionCheck::Any) => false,
            (other, SectionCheck::KprobeType) => {
                return Err(TlsError::NotAUprobe {
                    program: (*name).to_owned(),
                    section: format!("{other:?}"),
                });
            }
        };
        sleepable.insert(*name, s);
    }

    // As aya: every section holding a function is a code section; relocations into code
    // sections are calls, linked by `relocate_calls`, not map references.
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();

    // Drop the other programs' entry functions, so their maps need no fd here (the maps of
    // shared `.text` functions still do).
    let others: HashSet<(usize, u64)> = obj
        .programs
        .iter()
        .filter(|(name, _)| !names.contains(&name.as_str()))
        .map(|(_, p)| p.function_key())
        .collect();
    obj.programs
        .retain(|name, _| names.contains(&name.as_str()));
    obj.functions.retain(|key, _| !others.contains(key));

    // `relocate_maps` needs the object mutably and the map definitions at once: take the
    // definitions out of it (as aya does by draining them).
    let definitions = std::mem::take(&mut obj.maps);
    obj.relocate_maps(
        definitions
            .iter()
            .filter_map(|(name, map)| map_fd(name).map(|fd| (name.as_str(), fd, map))),
        &text_sections,
    )
    .map_err(TlsError::Relocate)?;
    obj.relocate_calls(&text_sections)
        .map_err(TlsError::Relocate)?;

    let programs = names
        .iter()
        .map(|name| {
            let program = obj
                .programs
                .get(*name)
                .ok_or_else(|| TlsError::MissingProgram((*name).to_owned()))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| TlsError::MissingProgram((*name).to_owned()))?;
            Ok(PreparedProgram {
                name: (*name).to_owned(),
                instructions: function.instructions.clone(),
                license: program.license.clone(),
                kernel_version: program.kernel_version.unwrap_or(0),
                sleepable: sleepable.get(name).copied().unwrap_or(false),
                func_info: function.func_info.func_info_bytes(),
                func_info_cnt: count(function.func_info.len())?,
                line_info: function.line_info.line_info_bytes(),
                line_info_cnt: count(function.line_info.len())?,
            })
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    Ok(Prepared {
        btf: btf.filter(|_| programs.iter().any(|p| p.func_info_cnt > 0)),
        programs,
    })
}

fn count(n: usize) -> Result<u32, TlsError> {
    u32::try_from(n).map_err(|_| TlsError::BadAttach("too many func/line info records"))
}

/// The map behind any `aya::maps::Map` (aya 0.14 has no accessor for it).
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}
