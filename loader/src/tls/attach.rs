//! The `bpf(2)` calls the TLS probes make, behind safe wrappers: creating a uprobe-multi link
//! (`BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI`), loading a program, and probing whether
//! this kernel has uprobe-multi links at all.
//!
//! Why uprobe-multi links rather than aya's `UProbe::attach`: a perf-event uprobe needs
//! `CAP_SYS_ADMIN` at every attach on kernels 6.16+; loading a uprobe-multi program needs
//! `CAP_BPF` + `CAP_PERFMON`, and making its links then needs no capability at all (verified
//! on 6.18: `bpf()` no longer has a blanket `CAP_BPF` check and `link_create` checks none for
//! uprobe-multi; the program fd is the permission, so it must never leave the loader). So the
//! loader can keep attaching to newly selected processes after it has dropped its
//! capabilities. The attribute layout comes from aya-obj's generated `bpf_attr` (the same
//! bindings aya itself uses); a test pins the offsets of the fields used here to
//! `include/uapi/linux/bpf.h`.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type,
};

use super::TlsError;

/// The kernel's cap on probes per uprobe-multi link (`MAX_UPROBE_MULTI_CNT`, kernel 6.6+).
pub const MAX_PROBES_PER_LINK: usize = 1 << 20;

/// Creates a uprobe-multi link: `prog` runs at each of `offsets` (file offsets, see
/// [`super::elf`]) of the file at `path`, only in the process `pid`, on return from the
/// function when `ret` is set. `cookies[i]` is what `bpf_get_attach_cookie` returns at
/// `offsets[i]` (empty: all zero). Closing the returned fd detaches every probe of the link.
///
/// The kernel resolves `path` in the caller's mount namespace; pass `/proc/self/fd/<n>` of a
/// file the caller has opened to attach to exactly that file.
pub fn attach_uprobe_multi(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
    ret: bool,
) -> Result<OwnedFd, TlsError> {
    if offsets.is_empty() || offsets.len() > MAX_PROBES_PER_LINK {
        return Err(TlsError::BadAttach("offsets must hold 1 to 2^20 entries"));
    }
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        return Err(TlsError::BadAttach(
            "cookies must be empty or as long as offsets",
        ));
    }
    let cnt = u32::try_from(offsets.len())
        .map_err(|_| TlsError::BadAttach("offsets must hold 1 to 2^20 entries"))?;
    let attr = link_create_attr(prog, path, offsets, cookies, cnt, pid, ret);
    // SAFETY: the pointers in `attr` (path, offsets, cookies) borrow slices that outlive the
    // call, and their lengths match `cnt`; BPF_LINK_CREATE returns a new fd on success.
    unsafe { bpf_fd(bpf_cmd::BPF_LINK_CREATE, attr) }.map_err(|source| TlsError::LinkCreate {
        path: path.to_string_lossy().into_owned(),
        ret,
        source,
    })
}

/// Builds the `BPF_LINK_CREATE` attributes for a uprobe-multi link (pure; the pointers are
/// only stored, never read here).
fn link_create_attr(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    cnt: u32,
    pid: u32,
    ret: bool,
) -> bpf_attr {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the `link_create` member of a zeroed union; the
    // kernel reads the union as that member for BPF_LINK_CREATE.
    unsafe {
        let link = &mut attr.link_create;
        link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        let multi = &mut link.__bindgen_anon_3.uprobe_multi;
        multi.path = path.as_ptr() as u64;
        multi.offsets = offsets.as_ptr() as u64;
        multi.cookies = if cookies.is_empty() {
            0
        } else {
            cookies.as_ptr() as u64
        };
        multi.cnt = cnt;
        multi.flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
        multi.pid = pid;
    }
    attr
}

/// What [`load_program`] needs: instructions ready for the kernel (maps and calls relocated).
pub(super) struct ProgramLoad<'a> {
    pub name: &'a str,
    pub instructions: &'a [bpf_insn],
    pub license: &'a CStr,
    pub kernel_version: u32,
    pub sleepable: bool,
    /// The object's BTF and the program's records in it (none: loaded without BTF).
    pub btf: Option<ProgramBtf<'a>>,
}

/// A program's function and line info (encoded records) and the BTF they refer to.
pub(super) struct ProgramBtf<'a> {
    pub fd: BorrowedFd<'a>,
    pub func_info: &'a [u8],
    pub func_info_cnt: u32,
    pub func_info_rec_size: u32,
    pub line_info: &'a [u8],
    pub line_info_cnt: u32,
    pub line_info_rec_size: u32,
}

/// Loads BTF (`BPF_BTF_LOAD`, needs `CAP_BPF`); on failure once more with the log on, and the
/// log goes into the error.
pub(super) fn load_btf(btf: &[u8]) -> Result<OwnedFd, TlsError> {
    let size = u32::try_from(btf.len()).map_err(|_| TlsError::BadAttach("BTF too large"))?;
    let build = |log: Option<&mut [u8]>| {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integer fields of the BTF_LOAD member (bindgen's
        // `__bindgen_anon_7`) of a zeroed union, which the kernel reads for BPF_BTF_LOAD.
        unsafe {
            let load = &mut attr.__bindgen_anon_7;
            load.btf = btf.as_ptr() as u64;
            load.btf_size = size;
            if let Some(log) = log {
                load.btf_log_level = 1;
                load.btf_log_buf = log.as_mut_ptr() as u64;
                load.btf_log_size = log.len() as u32;
            }
        }
        attr
    };
    // SAFETY: the BTF pointer borrows `btf`, alive across both calls.
    unsafe { load_with_log(bpf_cmd::BPF_BTF_LOAD, build) }
        .map_err(|(source, log)| TlsError::BtfLoad { source, log })
}

/// Bytes of verifier log kept when a load fails. The kernel (6.4+) keeps the tail of the log
/// when it does not fit, which is where the reason is.
const VERIFIER_LOG_BYTES: usize = 256 * 1024;

/// Loads a kprobe-type program whose expected attach type is `BPF_TRACE_UPROBE_MULTI` (without
/// it the kernel refuses the uprobe-multi link with EINVAL). On failure the load is repeated
/// with the verifier log on, and the log goes into the error.
pub(super) fn load_program(p: &ProgramLoad<'_>) -> Result<OwnedFd, TlsError> {
    let insn_cnt =
        u32::try_from(p.instructions.len()).map_err(|_| TlsError::BadAttach("program too long"))?;
    let build = |log: Option<&mut [u8]>| {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integer fields of the `prog_load` member (bindgen's
        // `__bindgen_anon_3`) of a zeroed union, which the kernel reads for BPF_PROG_LOAD.
        unsafe {
            let load = &mut attr.__bindgen_anon_3;
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            load.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
            load.insns = p.instructions.as_ptr() as u64;
            load.insn_cnt = insn_cnt;
            load.license = p.license.as_ptr() as u64;
            load.kern_version = p.kernel_version;
            if p.sleepable {
                load.prog_flags = aya_obj::generated::BPF_F_SLEEPABLE;
            }
            if let Some(btf) = &p.btf {
                load.prog_btf_fd = btf.fd.as_raw_fd() as u32;
                if btf.func_info_cnt > 0 {
                    load.func_info = btf.func_info.as_ptr() as u64;
                    load.func_info_cnt = btf.func_info_cnt;
                    load.func_info_rec_size = btf.func_info_rec_size;
                }
                if btf.line_info_cnt > 0 {
                    load.line_info = btf.line_info.as_ptr() as u64;
                    load.line_info_cnt = btf.line_info_cnt;
                    load.line_info_rec_size = btf.line_info_rec_size;
                }
            }
            // Names are at most 15 bytes plus NUL; the kernel accepts [A-Za-z0-9_.].
            for (dst, src) in load.prog_name.iter_mut().zip(
                p.name
                    .bytes()
                    .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
                    .take(15),
            ) {
                *dst = src as core::ffi::c_char;
            }
            if let Some(log) = log {
                load.log_level = 1;
                load.log_buf = log.as_mut_ptr() as u64;
                load.log_size = log.len() as u32;
            }
        }
        attr
    };
    // SAFETY: the instruction, license and func/line info pointers borrow `p`, alive across
    // both calls.
    unsafe { load_with_log(bpf_cmd::BPF_PROG_LOAD, build) }.map_err(|(source, verifier_log)| {
        TlsError::ProgramLoad {
            program: p.name.to_owned(),
            source,
            verifier_log,
        }
    })
}

/// Runs the load command `cmd` with the attributes `build(None)`; if the kernel refuses, once
/// more with `build(Some(log))` (the log buffer the attributes must point at), and returns a
/// second success (the first failure was transient), or the second error with the log, cut at
/// its first NUL.
///
/// # Safety
/// Every pointer `build` stores in the attributes, other than the log buffer it is given, must
/// be valid for what `cmd` reads through it, and the log pointer and size must be the buffer's.
unsafe fn load_with_log(
    cmd: bpf_cmd,
    build: impl Fn(Option<&mut [u8]>) -> bpf_attr,
) -> Result<OwnedFd, (io::Error, String)> {
    // SAFETY: the caller's guarantee is passed on.
    if let Ok(fd) = unsafe { bpf_fd(cmd, build(None)) } {
        return Ok(fd);
    }
    let mut log = vec![0u8; VERIFIER_LOG_BYTES];
    // SAFETY: as above; the log buffer is alive across the call, and `build` gives the kernel
    // its address and length.
    let source = match unsafe { bpf_fd(cmd, build(Some(&mut log))) } {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    Err((
        source,
        String::from_utf8_lossy(&log[..end]).trim_end().to_owned(),
    ))
}

/// Whether this kernel has uprobe-multi links with per-process filtering, decided the way
/// libbpf does (`probe_uprobe_multi_link`): load a two-instruction program with the
/// uprobe-multi expected attach type, then ask for a link on `/`. A kernel with uprobe-multi
/// resolves the path before anything else and refuses a directory with EBADF; a kernel
/// without it refuses the attach type itself with EINVAL. A second attach with pid -1 tells
/// apart kernels whose pid filter was fixed (6.9+: EINVAL for a bad pid before the path is
/// looked at) from the first uprobe-multi kernels, which filtered by thread, not process.
///
/// Needs `CAP_BPF` and `CAP_PERFMON` (loading the probe program); false without them.
pub fn uprobe_multi_supported() -> bool {
    probe_uprobe_multi().unwrap_or(false)
}

/// [`uprobe_multi_supported`], with the reason when the probe could not run.
pub fn probe_uprobe_multi() -> Result<bool, TlsError> {
    // r0 = 0; exit
    let insns = [
        insn(0xb7, 0, 0, 0, 0), // BPF_ALU64 | BPF_MOV | BPF_K
        insn(0x95, 0, 0, 0, 0), // BPF_JMP | BPF_EXIT
    ];
    let prog = load_program(&ProgramLoad {
        name: "sonde_probe",
        instructions: &insns,
        license: c"GPL",
        kernel_version: 0,
        sleepable: false,
        btf: None,
    })?;
    let offset = [0u64];
    let errno = |pid: u32| {
        let attr = link_create_attr(prog.as_fd(), c"/", &offset, &[], 1, pid, false);
        // SAFETY: `attr` points at `offset` and a static path, both alive across the call.
        match unsafe { bpf_fd(bpf_cmd::BPF_LINK_CREATE, attr) } {
            Ok(_link) => None,
            Err(e) => e.raw_os_error(),
        }
    };
    if errno(0) != Some(libc::EBADF) {
        return Ok(false);
    }
    Ok(errno(u32::MAX) == Some(libc::EINVAL))
}

/// `bpf_insn` from its parts (bindgen keeps the two register nibbles in a bitfield).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    let mut i = bpf_insn {
        code,
        off,
        imm,
        ..zeroed_insn()
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

fn zeroed_insn() -> bpf_insn {
    // SAFETY: bpf_insn is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub(super) fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain-integer structs; all-zero is a valid value, and the
    // kernel requires the bytes it does not read for a command to be zero.
    unsafe { std::mem::zeroed() }
}

/// Runs a `bpf(2)` command that returns a new fd.
///
/// # Safety
/// Every pointer stored in `attr` must be valid for what `cmd` reads or writes through it.
pub(super) unsafe fn bpf_fd(cmd: bpf_cmd, mut attr: bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: the caller's guarantee is passed on.
    let ret = unsafe { sys_bpf(cmd, &mut attr) }?;
    let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs a `bpf(2)` command; its non-negative return value.
///
/// # Safety
/// Every pointer stored in `attr` must be valid for what `cmd` reads or writes through it.
pub(super) unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees the pointers inside `attr`; `attr` itself is a live,
    // fully initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use aya_obj::generated::{
        bpf_attr__bindgen_ty_4 as ProgLoad, bpf_attr__bindgen_ty_14 as LinkCreate,
        bpf_attr__bindgen_ty_14__bindgen_ty_3__bindgen_ty_7 as UprobeMulti,
    };

    use super::*;

    /// The offsets of every field set here, as `include/uapi/linux/bpf.h` lays them out
    /// (`union bpf_attr`: the `link_create` and `BPF_PROG_LOAD` members).
    #[test]
    fn attr_layout_matches_uapi() {
        assert_eq!(offset_of!(LinkCreate, attach_type), 8);
        assert_eq!(offset_of!(LinkCreate, flags), 12);
        assert_eq!(offset_of!(LinkCreate, __bindgen_anon_3), 16);
        assert_eq!(offset_of!(UprobeMulti, path), 0);
        assert_eq!(offset_of!(UprobeMulti, offsets), 8);
        assert_eq!(offset_of!(UprobeMulti, ref_ctr_offsets), 16);
        assert_eq!(offset_of!(UprobeMulti, cookies), 24);
        assert_eq!(offset_of!(UprobeMulti, cnt), 32);
        assert_eq!(offset_of!(UprobeMulti, flags), 36);
        assert_eq!(offset_of!(UprobeMulti, pid), 40);
        assert_eq!(offset_of!(ProgLoad, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoad, insns), 8);
        assert_eq!(offset_of!(ProgLoad, license), 16);
        assert_eq!(offset_of!(ProgLoad, log_level), 24);
        assert_eq!(offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(offset_of!(ProgLoad, kern_version), 40);
        assert_eq!(offset_of!(ProgLoad, prog_flags), 44);
        assert_eq!(offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32, 48);
        assert_eq!(bpf_cmd::BPF_LINK_CREATE as u32, 28);
        assert_eq!(bpf_cmd::BPF_PROG_LOAD as u32, 5);
        assert_eq!(BPF_F_UPROBE_MULTI_RETURN, 1);
    }

    #[test]
    fn link_attr_carries_every_argument() {
        let offsets = [0x10u64, 0x20];
        let cookies = [1u64, 2];
        // SAFETY: fd 0 is only stored as a number, never used.
        let prog = unsafe { BorrowedFd::borrow_raw(0) };
        let attr = link_create_attr(prog, c"/lib/x.so", &offsets, &cookies, 2, 42, true);
        // SAFETY: reading back the member just written.
        let (attach_type, m) = unsafe {
            (
                attr.link_create.attach_type,
                attr.link_create.__bindgen_anon_3.uprobe_multi,
            )
        };
        assert_eq!(attach_type, 48);
        assert_eq!((m.cnt, m.flags, m.pid), (2, 1, 42));
        assert_eq!(m.offsets, offsets.as_ptr() as u64);
        assert_eq!(m.cookies, cookies.as_ptr() as u64);
        assert_eq!(m.ref_ctr_offsets, 0);
    }

    #[test]
    fn refuses_mismatched_arguments() {
        // SAFETY: the fd is never reached: the arguments are refused first.
        let prog = unsafe { BorrowedFd::borrow_raw(0) };
        assert!(matches!(
            attach_uprobe_multi(prog, c"/x", &[], &[], 1, false),
            Err(TlsError::BadAttach(_))
        ));
        assert!(matches!(
            attach_uprobe_multi(prog, c"/x", &[1, 2], &[1], 1, false),
            Err(TlsError::BadAttach(_))
        ));
    }
}
