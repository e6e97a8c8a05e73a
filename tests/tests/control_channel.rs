//! The control channel against hostile peers, with the real binaries: single host has no
//! socket path (the processor inherits one end of a socketpair); in split deployments a second
//! peer with the processor's uid gets no fd while a processor is connected; a peer that stops
//! reading, a hello-less connection and a `narrow` flood cannot stall the loader or flood its
//! log; a processor that parks the ring's consumer position cannot blind the next one; and the
//! ring's data pages cannot be mapped writable.

use std::{
    io::{BufRead, BufReader, Write},
    num::NonZeroUsize,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use nix::sys::{
    mman::{MapFlags, ProtFlags, mmap, munmap},
    signal::Signal,
    socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};
use sonde_e2e::*;
use sonde_schema::{
    channel,
    control::{Hello, LoaderMessage, ProcessorMessage},
};

fn processor_pid(sonde: &Sonde, nth: usize) -> u32 {
    let line = sonde.wait_log_nth("processor started", nth, Duration::from_secs(20));
    log_field(&line, "pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

fn hello_bytes() -> Vec<u8> {
    ProcessorMessage::Hello(Hello {
        agent: "control channel test".into(),
        sandbox: None,
        inject_sampled_below: None,
    })
    .encode()
    .expect("hello")
}

fn connect_to(path: &std::path::Path) -> OwnedFd {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    connect(fd.as_raw_fd(), &UnixAddr::new(path).expect("addr")).expect("connect");
    fd
}

/// Receives one loader message (bounded wait).
fn recv(fd: &OwnedFd, timeout: Duration) -> Option<(LoaderMessage, Vec<OwnedFd>)> {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).expect("poll") == 0 {
        return None;
    }
    let datagram = channel::recv(fd.as_fd(), 4).ok()?;
    let message = LoaderMessage::decode(&datagram).expect("loader message");
    Some((message, datagram.fds))
}

/// Says hello and returns the welcome's ring fd and data size.
fn hello(fd: &OwnedFd) -> (OwnedFd, u32) {
    channel::send_bytes(fd.as_fd(), &hello_bytes(), &[]).expect("send hello");
    match recv(fd, Duration::from_secs(10)) {
        Some((LoaderMessage::Welcome(w), mut fds)) => (fds.remove(0), w.data_size),
        other => panic!("expected a welcome, got {:?}", other.map(|(m, _)| m)),
    }
}

/// The refused connections logged for `reason`, summed over the aggregated lines.
fn refused_count(loader: &Sonde, reason: &str) -> u64 {
    loader
        .log_lines()
        .iter()
        .filter(|l| l.contains(&format!("refused control connection reason=\"{reason}\"")))
        .filter_map(|l| log_field(l, "count")?.parse::<u64>().ok())
        .sum()
}

fn page() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as usize)
}

/// `processor.allowed_uids: [0]`: the test itself may speak the protocol.
fn split_loader(dir: &TempDir, ports: &str, extra_yaml: &str) -> Sonde {
    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!("stats_interval_secs: 1\nprocessor:\n  allowed_uids: [0]\n{extra_yaml}"),
    )
    .expect("config");
    let loader = Sonde::start_binary(
        "sonde-loader",
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            ports,
        ],
        &[],
        dir,
    );
    loader.wait_log("control socket listening", Duration::from_secs(30));
    loader
}

/// A Python server and a split loader selecting it (`extra_yaml` goes under `processor:`).
struct SplitSetup {
    dir: TempDir,
    port: u16,
    server: Proc,
    loader: Sonde,
}

fn split_setup(tag: &str, extra_yaml: &str) -> SplitSetup {
    let dir = TempDir::new(tag);
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let loader = split_loader(&dir, &port.to_string(), extra_yaml);
    loader.wait_selected(server.pid());
    SplitSetup {
        dir,
        port,
        server,
        loader,
    }
}

/// A real `sonde-processor` as uid 65534 against a split loader.
fn split_processor(dir: &TempDir, loader: &Sonde) -> Sonde {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
    .arg(installed_binary("sonde-processor", dir))
    .arg("--control")
    .arg(&loader.control_socket);
    let processor = Sonde::attach("sonde-processor", cmd, &[], loader.control_socket.clone());
    processor.wait_log("ring buffer mapped", Duration::from_secs(30));
    processor
}

#[test]
fn single_host_hands_the_processor_a_socketpair_and_no_socket_path() {
    let _guard = serial();
    let Served {
        dir,
        port,
        server: _server,
        sonde,
    } = serve_python_with_sonde("pair");
    assert!(
        !sonde.control_socket.exists(),
        "single host must not create {}",
        sonde.control_socket.display()
    );
    // The audit status file still lives in the configured directory.
    assert!(dir.path("sonde-status.json").exists());

    let socket_of = |pid: u32| -> String {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let i = args
            .iter()
            .position(|a| a == "--control-fd")
            .unwrap_or_else(|| panic!("no --control-fd in {args:?}"));
        assert!(!args.iter().any(|a| a == "--control"), "{args:?}");
        let fd = &args[i + 1];
        let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .filter(|l| l.starts_with("socket:"))
            .collect();
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("control fd");
        let control = link.to_string_lossy().into_owned();
        assert!(sockets.contains(&control), "{control} not in {sockets:?}");
        // Besides the control socket, only tokio's signal-driver socketpair (created before
        // the sandbox): two sockets connected to each other, inside the processor.
        let others: Vec<&String> = sockets.iter().filter(|s| **s != control).collect();
        assert!(
            others.len() <= 2,
            "one control socket and at most a socketpair: {sockets:?}"
        );
        if !others.is_empty() {
            let inode = |s: &str| -> String {
                s.trim_start_matches("socket:[")
                    .trim_end_matches(']')
                    .to_string()
            };
            let ss = Command::new("ss").args(["-xpn"]).output().expect("ss");
            let text = String::from_utf8_lossy(&ss.stdout);
            let peer_of = |ino: &str| -> Option<String> {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let i = f.iter().position(|w| *w == ino)?;
                    (i == 5).then(|| f.get(i + 2).map(|p| p.to_string()))?
                })
            };
            let (a, b) = (inode(others[0]), inode(others[others.len() - 1]));
            assert_eq!(others.len(), 2, "a lone extra socket: {sockets:?}");
            assert_eq!(peer_of(&a).as_deref(), Some(b.as_str()), "{text}");
        }
        control
    };
    let first = processor_pid(&sonde, 1);
    let first_socket = socket_of(first);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL)
        .expect("kill");
    let second = processor_pid(&sonde, 2);
    sonde.wait_log_nth("processor connected", 2, Duration::from_secs(20));
    assert_ne!(
        socket_of(second),
        first_socket,
        "a restart gets a fresh pair"
    );
    assert!(!sonde.control_socket.exists());
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/pair", None, true),
        200
    );
    assert_eq!(
        sonde
            .wait_spans(1, Duration::from_secs(10), |s| s["path"] == "/ok/pair")
            .len(),
        1
    );
}

#[test]
fn a_second_peer_with_the_processor_uid_gets_no_fd() {
    let _guard = serial();
    let SplitSetup {
        dir,
        port,
        server: _server,
        loader,
    } = split_setup("second", "");
    let processor = split_processor(&dir, &loader);
    loader.wait_log("processor connected", Duration::from_secs(10));

    // A tiny client as the processor's uid: connect, hello, recvmsg with room for fds.
    let script = r#"
import socket, sys, array
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(10)
s.connect(sys.argv[1])
s.send(bytes.fromhex(sys.argv[2]))
msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
fds = array.array("i")
for level, kind, data in anc:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
print(len(fds))
print(msg.hex())
"#;
    let hex: String = hello_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(python())
        .args(["-c", script])
        .arg(&loader.control_socket)
        .arg(hex)
        .output()
        .expect("python client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("0"), "the second peer received fds");
    let hex_line = lines.next().expect("the refusal");
    let bytes: Vec<u8> = (0..hex_line.len() / 2)
        .map(|i| u8::from_str_radix(&hex_line[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let refusal = LoaderMessage::decode(&channel::Datagram {
        bytes,
        fds: Vec::new(),
    })
    .expect("a loader message");
    assert_eq!(
        refusal,
        LoaderMessage::Refused("a processor is already connected".into())
    );
    let line = loader.wait_log(
        "refused control connection reason=\"a processor is already connected\"",
        Duration::from_secs(5),
    );
    assert!(line.contains(" count=1 "), "{line}");
    assert_eq!(loader.log_count("processor connected"), 1);

    // The live processor keeps its connection and its spans.
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/still-mine", None, true),
        200
    );
    assert_eq!(
        processor
            .wait_spans(1, Duration::from_secs(10), |s| s["path"]
                == "/ok/still-mine")
            .len(),
        1
    );
    assert_eq!(
        processor.log_count("control connection to the loader lost"),
        0
    );
}

/// A selected process that forks `n` children on a line on its stdin: each child is a
/// process-added and then a process-removed message for the processor.
fn forking_listener(port: u16, n: u32) -> Proc {
    let script = r#"
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
sys.stdin.readline()
kids = []
for i in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
print("done", flush=True)
time.sleep(600)
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", script])
        .arg(port.to_string())
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut p = Proc::spawn("forker", &mut cmd);
    let mut out = BufReader::new(p.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    p
}

#[test]
fn a_processor_that_stops_reading_is_killed_and_restarted_and_capture_goes_on() {
    let _guard = serial();
    let dir = TempDir::new("stall");
    let (fork_port, port) = (free_port(), free_port());
    let mut forker = forking_listener(fork_port, 800);
    let ports = format!("{fork_port},{port}");
    let sonde = Sonde::start(&["--open-port", &ports], &[], &dir, &[forker.pid()]);
    let first = processor_pid(&sonde, 1);
    // The processor stops reading; the loader's messages pile up.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGSTOP)
        .expect("stop");
    let started = Instant::now();
    forker
        .child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let line = sonde.wait_log(
        "closing the processor's connection error=the processor stopped reading",
        Duration::from_secs(20),
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: {line}",
        started.elapsed()
    );
    sonde.wait_log(
        &format!("killing the processor pid={first} "),
        Duration::from_secs(5),
    );
    let second = processor_pid(&sonde, 2);
    assert_ne!(first, second);
    sonde.wait_log_nth("processor connected", 2, Duration::from_secs(20));

    // The loader was never frozen: a new server is selected and produces spans.
    let server = start_server(ServerKind::Python, port, &dir);
    sonde.wait_selected(server.pid());
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/after-stall", None, true),
        200
    );
    assert_eq!(
        sonde
            .wait_spans(1, Duration::from_secs(10), |s| s["path"]
                == "/ok/after-stall")
            .len(),
        1
    );
}

#[test]
fn hello_less_connections_and_a_narrow_flood_are_bounded() {
    let _guard = serial();
    let SplitSetup {
        dir: _dir,
        port: _port,
        server: _server,
        loader,
    } = split_setup("flood", "");

    // Ten connections that never say hello: at most four wait (then time out), a newer one
    // displacing the oldest.
    let silent: Vec<OwnedFd> = (0..10)
        .map(|_| {
            let fd = connect_to(&loader.control_socket);
            std::thread::sleep(Duration::from_millis(20));
            fd
        })
        .collect();
    // The loop is not stalled by them: a real hello is answered at once.
    let started = Instant::now();
    let conn = connect_to(&loader.control_socket);
    let (_ring, _) = hello(&conn);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "welcome took {:?}",
        started.elapsed()
    );
    // Six were displaced by newer silent ones, a seventh by the real hello; three timed out.
    let deadline = Instant::now() + Duration::from_secs(6);
    while refused_count(&loader, "no hello before the deadline") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refused_count(&loader, "no hello before the deadline"), 3);
    assert_eq!(
        refused_count(&loader, "displaced by a newer connection before its hello"),
        7
    );
    // Aggregated: a line per reason and interval, not one per connection.
    assert!(loader.log_count("refused control connection") <= 4);
    drop(silent);

    // A flood of narrowing requests naming pids that are not captured.
    let mut pids = [0u32; 1024];
    for (i, p) in pids.iter_mut().enumerate() {
        *p = 4_000_000 + i as u32;
    }
    let narrow = ProcessorMessage::Narrow(pids.to_vec())
        .encode()
        .expect("narrow");
    let mut sent = 0;
    while sent < 5000 {
        match channel::send_bytes_nonblocking(conn.as_fd(), &narrow, &[]) {
            Ok(()) => sent += 1,
            Err(channel::ChannelError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    loader.wait_log(
        "closing the processor's connection error=the processor flooded the control socket",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(loader.log_count("flooded the control socket"), 1);
    let refused = loader.log_count("refused the processor's narrowing request");
    assert!(
        (1..=2).contains(&refused),
        "{refused} refusal lines for a flood"
    );
    assert_eq!(loader.log_count("process deselected"), 0);

    // Still responsive: the slot is free again, a new hello is welcomed at once.
    let started = Instant::now();
    let again = connect_to(&loader.control_socket);
    let _ = hello(&again);
    assert!(started.elapsed() < Duration::from_secs(1));
    loader.wait_log_nth("processor connected", 2, Duration::from_secs(5));
    assert_eq!(loader.log_count("processor connected"), 2);
}

#[test]
fn ring_data_pages_cannot_be_mapped_writable() {
    let _guard = serial();
    let dir = TempDir::new("protwrite");
    let loader = split_loader(&dir, "1", "");
    let conn = connect_to(&loader.control_socket);
    let (ring, data_size) = hello(&conn);
    let page = page();
    let len = NonZeroUsize::new(page + 2 * data_size as usize).expect("len");
    // Writable producer page and data: refused by the kernel.
    // SAFETY: mapping the ring fd the loader handed over; the mapping, had it succeeded, is
    // unmapped at once and never accessed.
    let writable = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            ring.as_fd(),
            page as i64,
        )
    };
    assert_eq!(writable.err(), Some(nix::errno::Errno::EPERM));
    // Writable consumer page plus what follows it: refused too.
    let two_pages = NonZeroUsize::new(2 * page).expect("len");
    // SAFETY: as above.
    let wide = unsafe {
        mmap(
            None,
            two_pages,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            ring.as_fd(),
            0,
        )
    };
    assert_eq!(wide.err(), Some(nix::errno::Errno::EPERM));
    // Read-only is what the processor does, and works.
    // SAFETY: as above; unmapped at once.
    let read_only = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            ring.as_fd(),
            page as i64,
        )
    }
    .expect("read-only mapping");
    // SAFETY: unmapping the mapping made just above.
    unsafe { munmap(read_only, len.get()) }.expect("munmap");
}

#[test]
fn a_poisoned_consumer_position_does_not_blind_the_next_processor() {
    let _guard = serial();
    let SplitSetup {
        dir,
        port,
        server: _server,
        loader,
    } = split_setup("poison", "");

    // A compromised "processor" parks the consumer position past the producer and leaves.
    let conn = connect_to(&loader.control_socket);
    let (ring, data_size) = hello(&conn);
    // The hand-over is over (process records sent) before this peer leaves; leaving earlier
    // is a failed handshake, not a disconnection.
    loader.wait_log("processor connected", Duration::from_secs(10));
    let page = page();
    let page_len = NonZeroUsize::new(page).expect("page");
    // SAFETY: the consumer page of the ring fd, mapped read-write as the processor maps it;
    // only its first u64 (consumer_pos) is accessed, then it is unmapped.
    let consumer = unsafe {
        mmap(
            None,
            page_len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            ring.as_fd(),
            0,
        )
    }
    .expect("consumer page");
    // SAFETY: the producer page, read-only; only its first u64 is read.
    let producer = unsafe {
        mmap(
            None,
            page_len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            ring.as_fd(),
            page as i64,
        )
    }
    .expect("producer page");
    // SAFETY: both mappings are page-aligned, live until unmapped below, and begin with the
    // kernel's u64 positions.
    let poisoned = unsafe {
        let prod = (*producer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire);
        let poisoned = prod + 16 * u64::from(data_size);
        (*consumer.as_ptr().cast::<AtomicU64>()).store(poisoned, Ordering::Release);
        poisoned
    };
    // SAFETY: unmapping the two mappings made above.
    unsafe {
        munmap(consumer, page).expect("munmap");
        munmap(producer, page).expect("munmap");
    }
    drop(ring);
    drop(conn);
    loader.wait_log("processor disconnected", Duration::from_secs(5));
    // Blinded meanwhile: the kernel sees a full ring.
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/blind", None, true),
        200
    );

    // The next processor is handed a checked position and sees new requests.
    let processor = split_processor(&dir, &loader);
    let line = loader.wait_log(
        "ring buffer consumer position was not one the kernel left",
        Duration::from_secs(10),
    );
    assert!(line.contains(&format!("from={poisoned} ")), "{line}");
    for i in 0..3 {
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/ok/seen{i}"), None, true),
            200
        );
    }
    let seen = processor.wait_spans(3, Duration::from_secs(10), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/seen"))
    });
    assert_eq!(seen.len(), 3);
    assert_eq!(
        processor
            .spans()
            .iter()
            .filter(|s| s["path"] == "/ok/blind")
            .count(),
        0,
        "a request made while the ring was parked is lost, not replayed"
    );
}

/// A cgroup made for one test under the cgroup v2 mount, removed when dropped (once empty).
struct TestCgroup {
    dir: std::path::PathBuf,
    /// As `/proc/<pid>/cgroup` names it.
    name: String,
}

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        // The cgroup v2 mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
        // hybrid one (this machine).
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| f[1].to_string())
            .expect("a cgroup2 mount");
        let name = format!("/sonde-e2e-{tag}-{}", std::process::id());
        let dir = std::path::PathBuf::from(format!("{root}{name}"));
        std::fs::create_dir(&dir).expect("creating a test cgroup");
        TestCgroup { dir, name }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_peer_outside_the_processor_cgroup_is_refused() {
    let _guard = serial();
    let dir = TempDir::new("cgroup");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let cgroup = TestCgroup::new("proc");
    let loader = split_loader(
        &dir,
        &port.to_string(),
        &format!("  cgroup: {}\n", cgroup.name),
    );
    loader.wait_selected(server.pid());

    // The right uid, the right binary, the wrong cgroup (the test's own): refused.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ])
    .arg(installed_binary("sonde-processor", &dir))
    .arg("--control")
    .arg(&loader.control_socket);
    let outsider = Sonde::attach("sonde-processor", cmd, &[], loader.control_socket.clone());
    let reason = "peer is not in the processor's cgroup";
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused_count(&loader, reason) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        refused_count(&loader, reason) >= 1,
        "{:?}",
        loader.log_lines()
    );
    assert_eq!(outsider.log_count("ring buffer mapped"), 0);
    drop(outsider);

    // The same processor started inside the cgroup connects and its spans flow.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all -- \"$0\" --control \"$1\"",
            cgroup.dir.display()
        ))
        .arg(installed_binary("sonde-processor", &dir))
        .arg(&loader.control_socket);
    let processor = Sonde::attach("sonde-processor", cmd, &[], loader.control_socket.clone());
    processor.wait_log("ring buffer mapped", Duration::from_secs(30));
    processor.wait_log(
        &format!("process added pid={}", server.pid()),
        Duration::from_secs(10),
    );
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/cgroup", None, true),
        200
    );
    let spans = processor.wait_spans(1, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["path"], "/ok/cgroup");
}
