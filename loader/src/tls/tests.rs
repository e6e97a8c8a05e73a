//! Tests of the TLS probes against the real kernel object: relocation (pure), and, with
//! `CAP_BPF` + `CAP_PERFMON`, loading, attaching to a Python process's libssl, and counting
//! the probe runs.
#![allow(clippy::undocumented_unsafe_blocks, reason = "tests")]

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use aya::{Ebpf, EbpfLoader};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use caps::{CapSet, Capability};

use super::{
    attach::{bpf_fd, sys_bpf, zeroed_attr},
    programs::{SectionCheck, prepare},
    *,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-loader-ebpf"));

/// A program of another section, for the relocation and section-check tests.
const STAND_IN: &str = "sock_send_length";

/// `ld_imm64` with a map pseudo source register (`BPF_PSEUDO_MAP_FD` 1 or
/// `BPF_PSEUDO_MAP_VALUE` 2): (src_reg, imm).
fn map_loads(p: &programs::PreparedProgram) -> Vec<(u8, i32)> {
    p.instructions
        .iter()
        .filter(|i| i.code == 0x18 && matches!(i.src_reg(), 1 | 2))
        .map(|i| (i.src_reg(), i.imm))
        .collect()
}

#[test]
fn relocates_map_references_to_the_given_fds() {
    let names: Vec<String> = aya_obj::Object::parse(OBJECT)
        .expect("parse")
        .maps
        .keys()
        .cloned()
        .collect();
    let fd_of = |name: &str| -> Option<RawFd> {
        names
            .iter()
            .position(|n| n == name)
            .map(|i| 1000 + i as RawFd)
    };
    let prepared = prepare(OBJECT, &[STAND_IN], &fd_of, SectionCheck::Any)
        .expect("relocates")
        .programs;
    assert_eq!(prepared.len(), 1);
    let loads = map_loads(&prepared[0]);
    assert!(!loads.is_empty(), "the program uses maps");
    for (_, imm) in &loads {
        assert!(
            (1000..1000 + names.len() as i32).contains(imm),
            "map reference {imm} is one of the given fds"
        );
    }
    assert_calls_linked(&prepared[0]);
    assert_eq!(prepared[0].license.to_bytes(), b"GPL");
}

/// Every bpf-to-bpf call (`call` with `BPF_PSEUDO_CALL`) lands inside the program: the
/// `.text` functions it calls were appended.
fn assert_calls_linked(p: &programs::PreparedProgram) {
    let len = p.instructions.len() as i64;
    let calls: Vec<i64> = p
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.code == 0x85 && i.src_reg() == 1)
        .map(|(at, i)| at as i64 + 1 + i64::from(i.imm))
        .collect();
    for target in calls {
        assert!((0..len).contains(&target), "{}: call to {target}", p.name);
    }
}

#[test]
fn prepares_the_tls_programs() {
    let fd = |_: &str| Some(1000);
    let prepared = prepare(
        OBJECT,
        &[ENTRY_PROGRAM, RETURN_PROGRAM],
        &fd,
        SectionCheck::KprobeType,
    )
    .expect("the object's uprobe programs relocate");
    assert!(
        prepared.btf.is_some(),
        "the object's BTF goes with the programs"
    );
    assert_eq!(prepared.programs.len(), 2);
    for p in &prepared.programs {
        assert!(!map_loads(p).is_empty(), "{} uses maps", p.name);
        assert_calls_linked(p);
        assert!(!p.sleepable);
        // One function record per bpf-to-bpf callee plus the entry, each starting inside
        // the program: what the kernel checks before it lets bpf_loop run a callback.
        assert!(p.func_info_cnt >= 1, "{} has function info", p.name);
        assert_eq!(p.func_info.len(), p.func_info_cnt as usize * 8);
        let offsets: Vec<u32> = p
            .func_info
            .chunks_exact(8)
            .map(|r| u32::from_ne_bytes([r[0], r[1], r[2], r[3]]))
            .collect();
        assert_eq!(
            offsets[0], 0,
            "{}: the entry function's record is first",
            p.name
        );
        assert!(
            offsets.iter().all(|o| (*o as usize) < p.instructions.len()),
            "{}: {offsets:?}",
            p.name
        );
    }
}

#[test]
fn a_missing_map_fd_is_an_error() {
    let none = |_: &str| None;
    assert!(matches!(
        prepare(OBJECT, &[STAND_IN], &none, SectionCheck::Any),
        Err(TlsError::Relocate(_))
    ));
}

#[test]
fn refuses_missing_and_non_uprobe_programs() {
    let any = |_: &str| Some(1000);
    assert!(matches!(
        prepare(OBJECT, &["no_such_program"], &any, SectionCheck::Any),
        Err(TlsError::MissingProgram(_))
    ));
    assert!(matches!(
        prepare(OBJECT, &[STAND_IN], &any, SectionCheck::KprobeType),
        Err(TlsError::NotAUprobe { .. })
    ));
}

// === Live tests: need CAP_BPF + CAP_PERFMON (root in CI) ===

fn can_load_programs() -> bool {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON)
}

/// Turns on run counting (`BPF_ENABLE_STATS`, for as long as the fd lives; needs
/// `CAP_SYS_ADMIN`), or checks that `kernel.bpf_stats_enabled` is already on.
fn enable_stats() -> Option<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.enable_stats.type_ = aya_obj::generated::bpf_stats_type::BPF_STATS_RUN_TIME as u32;
    match unsafe { bpf_fd(bpf_cmd::BPF_ENABLE_STATS, attr) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            let on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|s| s.trim() == "1");
            assert!(
                on,
                "BPF_ENABLE_STATS failed ({e}) and kernel.bpf_stats_enabled is 0: \
                 run as root or set the sysctl first"
            );
            None
        }
    }
}

/// How many times the program ran (`bpf_prog_info.run_cnt`).
fn run_count(prog: &OwnedFd) -> u64 {
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = prog.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    unsafe { sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.expect("prog info");
    info.run_cnt
}

/// A Python process with a TLS client and server talking to each other over loopback: for
/// each line on stdin, one connection with `WRITES` one-byte `sendall`s (each an
/// `SSL_write_ex` in libssl), then "done".
const PEER: &str = r#"
import socket, ssl, sys, threading
cert, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain(cert, key)
cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli.check_hostname = False
cli.verify_mode = ssl.CERT_NONE
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print("ready", flush=True)
def serve():
    c, _ = ls.accept()
    with srv.wrap_socket(c, server_side=True) as s:
        got = 0
        while got < n:
            got += len(s.recv(64))
for _ in sys.stdin:
    t = threading.Thread(target=serve)
    t.start()
    with cli.wrap_socket(socket.create_connection(ls.getsockname())) as s:
        for _ in range(n):
            s.sendall(b"x")
        t.join()
    print("done", flush=True)
"#;
const WRITES: u64 = 200;

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(dir: &Path) -> Peer {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", PEER])
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(WRITES.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One round of TLS writes; returns when they are done.
    fn round(&mut self) {
        self.stdin.write_all(b"go\n").expect("go");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("done");
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway self-signed certificate for the peers.
/// The object loaded by aya as the loader loads it (one chunk buffer per CPU): the maps the
/// TLS programs are relocated against.
fn load_object() -> Ebpf {
    let cpus = aya::util::nr_cpus().expect("cpus") as u32;
    EbpfLoader::new()
        .map_max_entries(sonde_schema::CHUNK_BUF_MAP, cpus)
        .load(OBJECT)
        .expect("aya loads the object")
}

fn make_cert(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sonde-tls-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success(), "openssl req");
    dir
}

#[test]
fn probes_fire_in_the_attached_process_only() {
    if !can_load_programs() {
        eprintln!("skipping: needs CAP_BPF and CAP_PERFMON");
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipping: no /usr/bin/python3");
        return;
    }
    assert!(
        probe_uprobe_multi().expect("probe runs"),
        "this kernel has uprobe-multi links"
    );
    let _stats = enable_stats();

    let ebpf = load_object();
    let mut tls =
        TlsProbes::load(OBJECT, &MapFds::from_ebpf(&ebpf), Limits::default()).expect("loads");

    let dir = make_cert("fire");
    let mut selected = Peer::start(&dir);
    let mut other = Peer::start(&dir);

    let report = tls.attach_process(selected.pid()).expect("attach");
    eprintln!("{report:?}");
    let libssl = report
        .instrumented
        .iter()
        .find(|i| i.path.ends_with("/libssl.so.3"))
        .expect("libssl.so.3 instrumented");
    assert_eq!(
        libssl.functions,
        ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"]
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // A second call finds nothing new.
    let again = tls.attach_process(selected.pid()).expect("attach again");
    assert!(
        again.instrumented.is_empty() && again.already == 1,
        "{again:?}"
    );

    // The process not attached runs libssl too: the probes must not fire for it.
    other.round();
    assert_eq!(run_count(&tls.entry), 0, "pid filter");
    assert_eq!(run_count(&tls.ret), 0, "pid filter");

    selected.round();
    let (entries, returns) = (run_count(&tls.entry), run_count(&tls.ret));
    eprintln!("after {WRITES} writes: entry ran {entries} times, return {returns} times");
    // Every write, and the server's reads, enter and return through the probed functions.
    assert!(entries >= WRITES, "entry probe ran {entries} times");
    assert!(returns >= WRITES, "return probe ran {returns} times");

    assert!(tls.detach_process(selected.pid()));
    selected.round();
    assert_eq!(run_count(&tls.entry), entries, "detached");
    assert_eq!(run_count(&tls.ret), returns, "detached");

    let pid = selected.pid();
    drop(selected);
    assert!(matches!(
        tls.attach_process(pid),
        Err(TlsError::NoProcess(p)) if p == pid
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn limits_are_counted() {
    if !can_load_programs() {
        eprintln!("skipping: needs CAP_BPF and CAP_PERFMON");
        return;
    }
    let ebpf = load_object();
    let limits = Limits {
        max_processes: 1,
        max_links_per_process: 0,
        ..Limits::default()
    };
    let mut tls = TlsProbes::load(OBJECT, &MapFds::from_ebpf(&ebpf), limits).expect("loads");
    let dir = make_cert("limits");
    let a = Peer::start(&dir);
    let b = Peer::start(&dir);
    let report = tls.attach_process(a.pid()).expect("first process");
    assert!(report.instrumented.is_empty());
    assert_eq!(report.refused_files, 1, "{report:?}");
    assert!(matches!(
        tls.attach_process(b.pid()),
        Err(TlsError::TooManyProcesses { .. })
    ));
    assert_eq!(
        tls.refusals(),
        Refusals {
            processes: 1,
            files: 1
        }
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The loader attaches after dropping to its run-time user and capabilities. The kernel
/// checks capabilities when a program is loaded, not when a uprobe-multi link is made (no
/// blanket `CAP_BPF` check on `bpf()` in this kernel, and `link_create` has none for
/// uprobe-multi): holding the program fd is what allows attaching. So as another user with
/// `CAP_SYS_PTRACE` alone (to reach a root process's `/proc/<pid>/root`) a root process's
/// libssl is probed and the probes fire; with no capability its maps are refused.
/// Credentials change on one thread only (raw `setresuid`, `capset` are per thread), which
/// ends before the test goes on.
#[test]
fn attaches_with_the_run_time_capabilities() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipping: needs root (to switch a thread to another user)");
        return;
    }
    let _stats = enable_stats();
    let ebpf = load_object();
    let mut tls =
        TlsProbes::load(OBJECT, &MapFds::from_ebpf(&ebpf), Limits::default()).expect("loads");
    let dir = make_cert("caps");
    let mut peer = Peer::start(&dir);
    let pid = peer.pid();

    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: PR_SET_KEEPCAPS and the raw setresuid/setresgid affect this thread only,
            // which ends with the scope.
            unsafe {
                assert_eq!(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), 0);
                assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
            }
            let only = |set: &[Capability]| {
                let set = set.iter().copied().collect();
                caps::set(None, CapSet::Effective, &set).expect("capset");
                let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
                let line = status.lines().find(|l| l.starts_with("CapEff:"));
                eprintln!("uid 65534, {line:?}");
            };
            only(&[]);
            assert!(
                matches!(tls.attach_process(pid), Err(TlsError::ReadMaps { .. })),
                "another user's maps need a capability"
            );
            only(&[Capability::CAP_SYS_PTRACE]);
            let report = tls.attach_process(pid).expect("attach");
            assert_eq!(report.instrumented.len(), 1, "{report:?}");
        })
        .join()
        .expect("thread");
    });
    peer.round();
    let runs = run_count(&tls.entry);
    eprintln!("entry probe ran {runs} times");
    assert!(runs >= WRITES);
    let _ = std::fs::remove_dir_all(dir);
}
