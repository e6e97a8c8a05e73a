//! Selection by open port across network namespaces: a server in a network namespace of its
//! own (loopback only, `unshare -n`) is selected by `--open-port` while the loader runs in the
//! host's, whether it started before or after Sonde, and its requests (sent from inside its
//! namespace) become spans, one per request. Servers sharing one namespace (containers of a
//! pod) are all found; a neighbour in that namespace that does not listen on a covered port
//! is not selected.

use std::{
    net::TcpStream,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_e2e::*;

/// Runs `f` on a thread that joined the network namespace of `pid` (`setns` moves only the
/// calling thread), so its sockets reach the namespace's loopback.
fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                    .expect("opening the server's network namespace");
                // SAFETY: plain syscall on an fd we hold; affects this thread only.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace")
    })
}

/// Waits until something accepts on `port` in the namespace of `pid`.
fn wait_for_port_in(pid: u32, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !in_netns_of(pid, || TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} in the namespace of {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python test server on `port`, in a new network namespace with only `lo` (up). The
/// shell execs the server, so the returned process is the server itself.
fn server_in_new_netns(port: u16) -> Proc {
    let script = format!(
        "ip link set lo up && exec {} {} {port}",
        python().display(),
        server_script("python_server.py").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("netns-server", &mut cmd);
    // The server's own namespace, not the host's, before anything connects.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exe_name(p.pid()).starts_with("python") {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_port_in(p.pid(), port);
    p
}

/// The Python test server on `port`, joining the network namespace of `host_pid` (a second
/// container of the same pod).
fn server_in_netns_of(host_pid: u32, port: u16, name: &str) -> Proc {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{host_pid}/ns/net"))
        .arg(python())
        .arg(server_script("python_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn(name, &mut cmd);
    wait_for_port_in(host_pid, port);
    p
}

fn netns_inode(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .expect("reading a namespace link")
        .to_string_lossy()
        .into_owned()
}

/// Sends `n` requests (one connection each) to `port` from inside the namespace of `pid`.
fn requests_in(pid: u32, port: u16, tag: &str, n: usize) {
    in_netns_of(pid, || {
        for i in 0..n {
            assert_eq!(
                HttpConn::open(port).request("GET", &format!("/ok/{tag}{i}"), None, true),
                200
            );
        }
    });
}

/// Exactly one span per request to `port`, all from `pid`, with the paths sent.
fn assert_spans(sonde: &Sonde, pid: u32, port: u16, tag: &str, n: usize) {
    let spans = sonde.wait_spans(n, Duration::from_secs(15), |s| s["server_port"] == port);
    let mut paths: Vec<&str> = spans
        .iter()
        .map(|s| s["path"].as_str().unwrap_or(""))
        .collect();
    paths.sort_unstable();
    let expected: Vec<String> = (0..n).map(|i| format!("/ok/{tag}{i}")).collect();
    assert_eq!(paths, expected, "{spans:?}");
    assert!(spans.iter().all(|s| s["pid"] == pid), "{spans:?}");
}

/// The neighbour serves requests on a port nobody selected, in the same namespace: it is
/// not selected and nothing of it is captured.
fn assert_neighbour_untouched(sonde: &Sonde, neighbour: u32, netns_pid: u32, port: u16) {
    requests_in(netns_pid, port, "neighbour", 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sonde.log_count(&format!("process selected pid={neighbour} ")),
        0
    );
    let theirs: Vec<serde_json::Value> = sonde
        .spans()
        .into_iter()
        .filter(|s| s["pid"] == neighbour || s["server_port"] == port)
        .collect();
    assert!(theirs.is_empty(), "neighbour captured: {theirs:?}");
}

#[test]
fn servers_in_another_network_namespace_started_before_sonde_are_selected() {
    let _guard = serial();
    let dir = TempDir::new("netns-before");
    let (port_a, port_b, other) = (free_port(), free_port(), free_port());
    let a = server_in_new_netns(port_a);
    // A second container of the same pod: same namespace, its own port.
    let b = server_in_netns_of(a.pid(), port_b, "netns-server-b");
    let neighbour = server_in_netns_of(a.pid(), other, "netns-neighbour");
    let own = netns_inode(std::process::id());
    assert_ne!(netns_inode(a.pid()), own);
    assert_eq!(netns_inode(b.pid()), netns_inode(a.pid()));
    assert_eq!(netns_inode(neighbour.pid()), netns_inode(a.pid()));

    let ports = format!("{port_a},{port_b}");
    let sonde = Sonde::start(&["--open-port", &ports], &[], &dir, &[a.pid(), b.pid()]);
    for (pid, port) in [(a.pid(), port_a), (b.pid(), port_b)] {
        let line = sonde.wait_log(
            &format!("process selected pid={pid} "),
            Duration::from_secs(1),
        );
        assert_eq!(
            log_field(&line, "reason").as_deref(),
            Some("port"),
            "{line}"
        );
        assert!(line.contains(&format!("port {port}")), "{line}");
    }
    requests_in(a.pid(), port_a, "a", 5);
    requests_in(a.pid(), port_b, "b", 4);
    assert_spans(&sonde, a.pid(), port_a, "a", 5);
    assert_spans(&sonde, b.pid(), port_b, "b", 4);
    assert_neighbour_untouched(&sonde, neighbour.pid(), a.pid(), other);
}

#[test]
fn a_server_in_another_network_namespace_started_after_sonde_is_selected() {
    let _guard = serial();
    let dir = TempDir::new("netns-after");
    let (port, port_b, other) = (free_port(), free_port(), free_port());
    let ports = format!("{port},{port_b}");
    let sonde = Sonde::start(&["--open-port", &ports], &[], &dir, &[]);
    let server = server_in_new_netns(port);
    assert_ne!(netns_inode(server.pid()), netns_inode(std::process::id()));
    sonde.wait_selected(server.pid());
    let line = sonde.wait_log(
        &format!("process selected pid={} ", server.pid()),
        Duration::from_secs(1),
    );
    assert!(line.contains(&format!("port {port}")), "{line}");
    requests_in(server.pid(), port, "late", 6);
    assert_spans(&sonde, server.pid(), port, "late", 6);

    // A neighbour joins the namespace and serves on an uncovered port: not selected. Then a
    // second server joins it on a covered port: selected too, by its own listen().
    let neighbour = server_in_netns_of(server.pid(), other, "netns-neighbour");
    assert_neighbour_untouched(&sonde, neighbour.pid(), server.pid(), other);
    let b = server_in_netns_of(server.pid(), port_b, "netns-server-b");
    sonde.wait_selected(b.pid());
    requests_in(server.pid(), port_b, "b", 3);
    assert_spans(&sonde, b.pid(), port_b, "b", 3);
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", neighbour.pid())),
        0
    );
}

/// A pre-fork server: the parent listens and at once forks two workers that accept on the
/// inherited socket; the parent itself never serves.
const PREFORK: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
for _ in range(2):
    if os.fork() == 0:
        while True:
            c, _ = s.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            c.close()
os.wait()
"#;

/// The workers a server forks right after `listen()` (before the loader could select it, so
/// the kernel did not select the forks) are found with it, as owners of the listening socket.
#[test]
fn workers_forked_right_after_listen_in_another_namespace_are_selected() {
    let _guard = serial();
    let dir = TempDir::new("netns-prefork");
    let port = free_port();
    let sonde = Sonde::start(&["--open-port", &port.to_string()], &[], &dir, &[]);
    let script = format!(
        "ip link set lo up && exec {} -c '{}' {port}",
        python().display(),
        PREFORK.replace('\'', "'\\''")
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let parent = Proc::spawn("prefork", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.pid()))
                .unwrap_or_default();
        let pids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(Instant::now() < deadline, "the workers did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for_port_in(parent.pid(), port);
    sonde.wait_selected(parent.pid());
    for w in &workers {
        sonde.wait_selected(*w);
    }
    requests_in(parent.pid(), port, "w", 8);
    let spans = sonde.wait_spans(8, Duration::from_secs(15), |s| s["server_port"] == port);
    assert_eq!(spans.len(), 8, "{spans:?}");
    assert!(
        spans.iter().all(|s| workers.iter().any(|w| s["pid"] == *w)),
        "{spans:?}"
    );
}
