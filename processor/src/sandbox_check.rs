//! `sonde-processor --check-sandbox`: applies the exact sandbox a normal start applies, then
//! tries what it must forbid and what it must still allow, and reports each outcome. Tests run
//! it case by case; an operator or auditor runs it on a live host or pod to see the sandbox
//! hold there. Every probe is harmless when it succeeds (nothing is created or changed that
//! is not undone), so a broken sandbox shows as a failed probe, not as damage.

use std::{
    ffi::CString,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
};

use serde::Serialize;
use sonde_plumbing::proc_status::{ProcStatus, StatusError};

use crate::sandbox::SandboxReport;

/// Whether a probe's operation must fail or must work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Denied,
    Allowed,
}

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub probe: &'static str,
    pub expected: Expect,
    pub denied: bool,
    /// The error the operation failed with (`EPERM`: seccomp; `EACCES`: Landlock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    pub as_expected: bool,
}

fn errno_name(e: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Result of a raw system call: Err(errno) on -1.
fn syscall_result(ret: libc::c_long) -> Result<libc::c_long, i32> {
    if ret == -1 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

fn outcome(probe: &'static str, expected: Expect, result: Result<(), i32>) -> Outcome {
    let denied = result.is_err();
    Outcome {
        probe,
        expected,
        denied,
        errno: result.err().map(errno_name),
        as_expected: denied == (expected == Expect::Denied),
    }
}

/// Closes an fd a probe got back, if it got one.
fn close_if_fd(ret: Result<libc::c_long, i32>) -> Result<(), i32> {
    ret.map(|fd| {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: the fd was just returned to us by the kernel and is owned by nobody else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    })
}

fn probe_bpf() -> Result<(), i32> {
    let attr = [0u8; 128];
    // SAFETY: bpf(BPF_MAP_CREATE) with a zeroed attribute buffer of the given size; the kernel
    // only reads it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    close_if_fd(syscall_result(ret))
}

fn probe_perf_event_open() -> Result<(), i32> {
    let mut attr = [0u8; 128];
    // perf_event_attr.size lives at offset 4; a software clock event on this process.
    attr[0] = 1; // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    // SAFETY: the kernel reads `size` bytes of the attribute buffer.
    let ret = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    close_if_fd(syscall_result(ret))
}

fn probe_ptrace() -> Result<(), i32> {
    // SAFETY: PTRACE_ATTACH to the parent; on success we detach at once.
    let ppid = unsafe { libc::getppid() };
    // SAFETY: as above; the pointer arguments are unused by PTRACE_ATTACH.
    let ret = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, ppid, 0, 0) };
    syscall_result(ret).map(|_| {
        // SAFETY: detaching from the tracee we just attached to.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH, ppid, 0, 0) };
    })
}

fn probe_process_vm_readv() -> Result<(), i32> {
    // Reading our own memory: allowed by the kernel's access checks, so only seccomp stops it.
    let source = [7u8; 8];
    let mut dest = [0u8; 8];
    let local = libc::iovec {
        iov_base: dest.as_mut_ptr().cast(),
        iov_len: dest.len(),
    };
    let remote = libc::iovec {
        iov_base: source.as_ptr() as *mut libc::c_void,
        iov_len: source.len(),
    };
    // SAFETY: both iovecs point into live buffers of this frame.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            &local,
            1,
            &remote,
            1,
            0,
        )
    };
    syscall_result(ret).map(|_| ())
}

fn probe_execve() -> Result<(), i32> {
    let path = CString::new("/bin/true").map_err(|_| libc::EINVAL)?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: valid NUL-terminated argument and environment arrays. If the sandbox failed, the
    // process becomes /bin/true and the report is never printed, which fails the check.
    let ret = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    if ret == -1 { Err(last_errno()) } else { Ok(()) }
}

fn probe_fork() -> Result<(), i32> {
    // clone(SIGCHLD) is fork: a new process, not a thread.
    // SAFETY: raw clone without CLONE_VM; a child, if created, exits at once.
    let ret = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    match syscall_result(ret) {
        Ok(0) => {
            // SAFETY: in the child: leave without running any destructor.
            unsafe { libc::_exit(0) }
        }
        Ok(child) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn probe_open(path: &str, flags: libc::c_int) -> Result<(), i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd == -1 {
        return Err(last_errno());
    }
    // SAFETY: fd just returned by open.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    if flags & libc::O_CREAT != 0 {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn probe_socket(family: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Result<(), i32> {
    // SAFETY: socket() takes plain integers.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    close_if_fd(if fd == -1 {
        Err(last_errno())
    } else {
        Ok(fd as libc::c_long)
    })
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn probe_connect(port: u16) -> Result<(), i32> {
    TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map(drop)
        .map_err(io_errno)
}

fn probe_bind(port: u16) -> Result<(), i32> {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map(drop)
        .map_err(io_errno)
}

fn probe_abstract_connect(name: &str) -> Result<(), i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io_errno)?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
        .map(drop)
        .map_err(io_errno)
}

/// A fresh TCP socket (what the allowlist lets the processor create).
fn tcp_socket() -> Result<OwnedFd, i32> {
    // SAFETY: socket() takes plain integers; the fd returned is owned here.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        Err(last_errno())
    } else {
        // SAFETY: just returned by the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn sockaddr_v4(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// TCP Fast Open: `sendto(MSG_FASTOPEN)` on an unconnected TCP socket connects and sends in
/// one call, without the `connect` LSM hook Landlock checks ports in. Only seccomp stops it.
fn probe_fastopen_sendto(port: u16) -> Result<(), i32> {
    let sock = tcp_socket()?;
    let addr = sockaddr_v4(Ipv4Addr::LOCALHOST, port);
    let data = b"sonde-probe";
    // SAFETY: a live buffer and a sockaddr_in of the stated length.
    let ret = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL,
            (&raw const addr).cast(),
            SOCKADDR_IN_LEN,
        )
    };
    syscall_result(ret as libc::c_long).map(drop)
}

/// The same through `sendmsg` with a destination in the message header.
fn probe_fastopen_sendmsg(port: u16) -> Result<(), i32> {
    let sock = tcp_socket()?;
    let mut addr = sockaddr_v4(Ipv4Addr::LOCALHOST, port);
    let mut data = *b"sonde-probe";
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = SOCKADDR_IN_LEN;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: every pointer in `msg` points into this frame.
    let ret = unsafe {
        libc::sendmsg(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &raw const msg,
            libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL,
        )
    };
    syscall_result(ret as libc::c_long).map(drop)
}

/// `setsockopt(level, name, value)` on a fresh TCP socket.
fn probe_setsockopt(level: libc::c_int, name: libc::c_int, value: &[u8]) -> Result<(), i32> {
    let sock = tcp_socket()?;
    // SAFETY: the kernel reads `value.len()` bytes of a live buffer.
    let ret = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    syscall_result(ret as libc::c_long).map(drop)
}

/// `SO_ATTACH_FILTER` with a one-instruction classic BPF program (accept everything).
fn probe_attach_filter() -> Result<(), i32> {
    let mut insn = [libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: insn.as_mut_ptr(),
    };
    // SAFETY: sock_fprog is plain data pointing at `insn`, alive for the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const prog).cast::<u8>(),
            std::mem::size_of::<libc::sock_fprog>(),
        )
    };
    probe_setsockopt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, bytes)
}

/// A UDP datagram to a local port: neither a configured endpoint nor a name server.
fn probe_udp_send(port: u16) -> Result<(), i32> {
    let sock =
        std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).map_err(io_errno)?;
    sock.send_to(b"sonde-probe", SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map(drop)
        .map_err(io_errno)
}

/// Connects to a pathname Unix socket (D-Bus, journald, another user's daemon).
fn probe_unix_connect(path: &std::path::Path) -> Result<(), i32> {
    std::os::unix::net::UnixStream::connect(path)
        .map(drop)
        .map_err(io_errno)
}

/// Passes a descriptor (the read end of a fresh pipe) over `sock` with `SCM_RIGHTS`.
fn send_fd(sock: &std::os::unix::net::UnixStream) -> Result<(), i32> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let (read_end, _write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&read_end)];
    let iov = [std::io::IoSlice::new(b"fd")];
    sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(sock),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
    .map_err(|e| e as i32)
}

/// Passes a descriptor to whoever listens on a pathname Unix socket.
fn probe_fd_passing_unix(path: &std::path::Path) -> Result<(), i32> {
    let sock = std::os::unix::net::UnixStream::connect(path).map_err(io_errno)?;
    send_fd(&sock)
}

/// Passes a descriptor over a fresh socketpair (how a descriptor would leave through a
/// helper socket).
fn probe_fd_passing_socketpair() -> Result<(), i32> {
    let (a, _b) = std::os::unix::net::UnixStream::pair().map_err(io_errno)?;
    send_fd(&a)
}

/// Resolves `localhost` (the files source): name resolution keeps working without UDP.
fn probe_resolve_localhost() -> Result<(), i32> {
    use std::net::ToSocketAddrs;
    ("localhost", 80)
        .to_socket_addrs()
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EAI_FAIL.abs()))
        .and_then(|mut addrs| addrs.next().map(drop).ok_or(libc::ENOENT))
}

fn probe_simple(nr: libc::c_long, args: [libc::c_long; 5]) -> Result<(), i32> {
    // SAFETY: every caller passes arguments that make the call fail or do nothing harmful when
    // it is allowed (null pointers, invalid ids).
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) };
    syscall_result(ret).map(|_| ())
}

/// What the probes aim at, chosen so that each would succeed without the sandbox.
#[derive(Debug, Clone)]
pub struct ProbeTargets {
    /// A local TCP port with a listener that the policy does not allow.
    pub connect_port: u16,
    /// A free local TCP port.
    pub bind_port: u16,
    /// A directory the processor's user may write to.
    pub write_dir: std::path::PathBuf,
    /// An abstract Unix socket name with a listener outside the sandbox.
    pub abstract_socket: Option<String>,
    /// A local UDP port (a receiver outside the sandbox).
    pub udp_port: Option<u16>,
    /// A pathname Unix socket with a listener outside the sandbox.
    pub unix_socket: Option<std::path::PathBuf>,
    /// The port the policy lets the processor bind (the Prometheus endpoint), if any.
    pub allowed_bind_port: Option<u16>,
    /// The ports the policy lets the processor connect to (OTLP endpoints); each probe
    /// needs a listener there to succeed.
    pub allowed_connect_ports: Vec<u16>,
}

/// Runs every probe.
pub fn run(targets: &ProbeTargets) -> Vec<Outcome> {
    use Expect::{Allowed, Denied};
    let (connect_port, bind_port) = (targets.connect_port, targets.bind_port);
    let tmp_file = targets
        .write_dir
        .join(format!("sonde-sandbox-probe-{}", std::process::id()))
        .to_string_lossy()
        .into_owned();
    let mut outcomes = egress(targets);
    outcomes.extend([
        outcome("bpf", Denied, probe_bpf()),
        outcome("perf_event_open", Denied, probe_perf_event_open()),
        outcome("ptrace", Denied, probe_ptrace()),
        outcome("process_vm_readv", Denied, probe_process_vm_readv()),
        outcome("fork", Denied, probe_fork()),
        outcome(
            "unshare_user_namespace",
            Denied,
            probe_simple(
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as libc::c_long, 0, 0, 0, 0],
            ),
        ),
        outcome(
            "mount",
            Denied,
            probe_simple(libc::SYS_mount, [0, 0, 0, 0, 0]),
        ),
        outcome(
            "setuid",
            Denied,
            probe_simple(libc::SYS_setuid, [0, 0, 0, 0, 0]),
        ),
        outcome(
            "init_module",
            Denied,
            probe_simple(libc::SYS_init_module, [0, 0, 0, 0, 0]),
        ),
        outcome(
            "kexec_load",
            Denied,
            probe_simple(libc::SYS_kexec_load, [0, 0, 0, 0, 0]),
        ),
        // KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), without creating it.
        outcome(
            "keyctl",
            Denied,
            probe_simple(libc::SYS_keyctl, [0, -3, 0, 0, 0]),
        ),
        outcome(
            "socket_netlink",
            Denied,
            probe_socket(libc::AF_NETLINK, libc::SOCK_RAW, 0),
        ),
        outcome(
            "socket_packet",
            Denied,
            probe_socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
        ),
        outcome(
            "socket_raw_inet",
            Denied,
            probe_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        ),
        outcome(
            "open_etc_shadow",
            Denied,
            probe_open("/etc/shadow", libc::O_RDONLY),
        ),
        outcome(
            "open_etc_passwd",
            Denied,
            probe_open("/etc/passwd", libc::O_RDONLY),
        ),
        outcome(
            "create_file",
            Denied,
            probe_open(&tmp_file, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        ),
        outcome(
            "tcp_connect_unlisted_port",
            Denied,
            probe_connect(connect_port),
        ),
        outcome("tcp_bind", Denied, probe_bind(bind_port)),
        // Last: if it succeeds, nothing after it runs.
        outcome("execve", Denied, probe_execve()),
        outcome(
            "read_proc_self_status",
            Allowed,
            probe_open("/proc/self/status", libc::O_RDONLY),
        ),
        outcome(
            "socket_tcp",
            Allowed,
            probe_socket(libc::AF_INET, libc::SOCK_STREAM, 0),
        ),
        outcome(
            "socket_tcp_ipproto_tcp",
            Allowed,
            probe_socket(libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP),
        ),
        outcome(
            "setsockopt_tcp_nodelay",
            Allowed,
            probe_setsockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32.to_ne_bytes()),
        ),
        outcome("resolve_localhost", Allowed, probe_resolve_localhost()),
    ]);
    if let Some(port) = targets.allowed_bind_port {
        outcomes.push(outcome(
            "tcp_bind_prometheus_port",
            Allowed,
            probe_bind(port),
        ));
    }
    for &port in &targets.allowed_connect_ports {
        outcomes.push(outcome(
            "tcp_connect_otlp_port",
            Allowed,
            probe_connect(port),
        ));
    }
    if let Some(name) = &targets.abstract_socket {
        outcomes.push(outcome(
            "abstract_unix_connect",
            Denied,
            probe_abstract_connect(name),
        ));
    }
    outcomes
}

/// The egress probes: ways out of the process that the sandbox must close. Each succeeds (or
/// fails with something other than `EPERM`/`EACCES`) without the sandbox, which
/// `--probe-without-sandbox` shows.
pub fn egress(targets: &ProbeTargets) -> Vec<Outcome> {
    use Expect::Denied;
    let port = targets.connect_port;
    let one = 1i32.to_ne_bytes();
    let mut outcomes = vec![
        outcome(
            "tcp_fastopen_sendto_unlisted_port",
            Denied,
            probe_fastopen_sendto(port),
        ),
        outcome(
            "tcp_fastopen_sendmsg_unlisted_port",
            Denied,
            probe_fastopen_sendmsg(port),
        ),
        outcome(
            "setsockopt_tcp_fastopen",
            Denied,
            probe_setsockopt(libc::IPPROTO_TCP, libc::TCP_FASTOPEN, &5i32.to_ne_bytes()),
        ),
        outcome(
            "setsockopt_tcp_fastopen_connect",
            Denied,
            probe_setsockopt(libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, &one),
        ),
        outcome("setsockopt_so_attach_filter", Denied, probe_attach_filter()),
        outcome(
            "setsockopt_so_attach_bpf",
            Denied,
            probe_setsockopt(
                libc::SOL_SOCKET,
                libc::SO_ATTACH_BPF,
                &(-1i32).to_ne_bytes(),
            ),
        ),
        outcome(
            "setsockopt_tcp_ulp",
            Denied,
            probe_setsockopt(libc::IPPROTO_TCP, libc::TCP_ULP, b"tls\0"),
        ),
        outcome(
            "socket_mptcp",
            Denied,
            probe_socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
        ),
        outcome(
            "socket_udp",
            Denied,
            probe_socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
        ),
        outcome(
            "socket_udp6",
            Denied,
            probe_socket(libc::AF_INET6, libc::SOCK_DGRAM, 0),
        ),
        outcome(
            "socket_unix",
            Denied,
            probe_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        ),
        outcome(
            "fd_passing_socketpair",
            Denied,
            probe_fd_passing_socketpair(),
        ),
    ];
    if let Some(port) = targets.udp_port {
        outcomes.push(outcome(
            "udp_send_to_non_resolver",
            Denied,
            probe_udp_send(port),
        ));
    }
    if let Some(path) = &targets.unix_socket {
        outcomes.push(outcome(
            "unix_pathname_connect",
            Denied,
            probe_unix_connect(path),
        ));
        outcomes.push(outcome(
            "fd_passing_pathname_socket",
            Denied,
            probe_fd_passing_unix(path),
        ));
    }
    outcomes
}

/// The control case: the egress probes without any sandbox, one JSON line each, then a
/// summary line saying no sandbox was applied.
pub fn run_unsandboxed_and_report(targets: &ProbeTargets) {
    for o in egress(targets) {
        println!("{}", serde_json::to_string(&o).unwrap_or_default());
    }
    println!("{}", serde_json::json!({ "sandbox": false }));
}

/// Runs every probe under the applied `sandbox` and prints one JSON line per probe, then a
/// summary line (the sandbox as applied and as `/proc/self/status` shows it). Returns true
/// when every probe came out as expected.
pub fn run_and_report(sandbox: &SandboxReport, targets: &ProbeTargets) -> bool {
    let outcomes = run(targets);
    let mut all = true;
    for o in &outcomes {
        all &= o.as_expected;
        println!("{}", serde_json::to_string(o).unwrap_or_default());
    }
    let status = status_view().ok();
    println!(
        "{}",
        serde_json::json!({
            "landlock": sandbox.landlock.any(),
            "landlock_mode": sandbox.landlock_mode.as_str(),
            "landlock_enforced": sandbox.landlock,
            "landlock_report": sandbox.landlock.describe(),
            "seccomp_filters_installed": sandbox.seccomp_filters,
            "dumpable": sandbox.dumpable,
            "status": status,
            "all_as_expected": all,
        })
    );
    all
}

/// The sandbox as `/proc/self/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub seccomp: Option<u32>,
    pub seccomp_filters: Option<u32>,
    pub no_new_privs: bool,
    pub cap_eff: String,
    pub cap_prm: String,
    pub cap_inh: String,
    pub cap_amb: String,
    pub cap_bnd: String,
}

/// Reads the sandbox-related fields of `/proc/self/status`.
pub fn status_view() -> Result<StatusView, StatusError> {
    let status = ProcStatus::of_self()?;
    Ok(StatusView {
        seccomp: status.seccomp,
        seccomp_filters: status.seccomp_filters,
        no_new_privs: status.no_new_privs,
        cap_eff: format!("{:016x}", status.cap_eff),
        cap_prm: format!("{:016x}", status.cap_prm),
        cap_inh: format!("{:016x}", status.cap_inh),
        cap_amb: format!("{:016x}", status.cap_amb),
        cap_bnd: format!("{:016x}", status.cap_bnd),
    })
}
