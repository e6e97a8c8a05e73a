//! Capture follows processes, not pid numbers: a selected server exits during an unprivileged
//! exec/`listen()` flood, a new process is forced onto its pid and serves HTTP on a port the
//! selection does not cover. The newcomer must never be captured, while a server that stays
//! selected keeps producing a span for every request.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_e2e::*;

/// An unprivileged loop of `execve` and `listen()` (on ports nobody selects), as fast as it
/// goes.
const FLOOD: &str = r#"
import os, socket
while True:
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    s.close()
"#;

/// Starts a Python server on `port` whose pid is `pid`: `ns_last_pid` is set to `pid - 1` just
/// before each fork; other processes (the flood) may take the pid first, so this retries a
/// bounded number of times.
fn server_on_pid(pid: u32, port: u16) -> Proc {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "could not start a process on pid {pid} after {attempt} attempts"
        );
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing ns_last_pid (needs root)");
        let mut cmd = Command::new(python());
        cmd.arg(server_script("python_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let p = Proc::spawn("newcomer", &mut cmd);
        if p.pid() == pid {
            wait_for_port(port, Duration::from_secs(30));
            return p;
        }
        drop(p);
    }
    unreachable!()
}

fn flood() -> Vec<Proc> {
    (0..2)
        .map(|_| {
            // The system interpreter: the test's own may live where uid 65534 cannot reach.
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg("-c")
                .current_dir("/")
                .arg(FLOOD)
                .uid(65534)
                .gid(65534)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Proc::spawn("flood", &mut cmd)
        })
        .collect()
}

/// Runs the scenario with the old server selected by pid (`--pid`) or by port; the kept
/// server is always selected by port.
fn scenario(tag: &str, by_pid: bool) {
    let _guard = serial();
    let dir = TempDir::new(tag);
    let (old_port, kept_port, new_port) = (free_port(), free_port(), free_port());
    let mut old = start_server(ServerKind::Python, old_port, &dir);
    let kept = start_server(ServerKind::Python, kept_port, &dir);
    let pid = old.pid();
    let (pid_arg, ports) = if by_pid {
        (pid.to_string(), kept_port.to_string())
    } else {
        (String::new(), format!("{old_port},{kept_port}"))
    };
    let mut args = vec!["--open-port", &ports];
    if by_pid {
        args.extend(["--pid", &pid_arg]);
    }
    let sonde = Sonde::start(&args, &[], &dir, &[pid, kept.pid()]);

    // The old server is captured while it lives.
    assert_eq!(
        HttpConn::open(old_port).request("GET", "/ok/old", None, true),
        200
    );
    let spans = sonde.wait_spans(1, Duration::from_secs(15), |s| s["pid"] == pid);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["path"], "/ok/old");

    // The flood runs while the old server exits and its pid is taken by a newcomer.
    let flooders = flood();
    std::thread::sleep(Duration::from_millis(500));
    old.signal(nix::sys::signal::Signal::SIGKILL);
    old.child.wait().expect("reaping the old server");
    let newcomer = server_on_pid(pid, new_port);
    assert_eq!(newcomer.pid(), pid);

    for i in 0..5 {
        assert_eq!(
            HttpConn::open(new_port).request("GET", &format!("/ok/newcomer{i}"), None, true),
            200
        );
        assert_eq!(
            HttpConn::open(kept_port).request("GET", &format!("/ok/kept{i}"), None, true),
            200
        );
    }
    // Past a periodic rescan (every 2 s), then once more.
    std::thread::sleep(Duration::from_millis(2500));
    for i in 5..10 {
        assert_eq!(
            HttpConn::open(new_port).request("GET", &format!("/ok/newcomer{i}"), None, true),
            200
        );
        assert_eq!(
            HttpConn::open(kept_port).request("GET", &format!("/ok/kept{i}"), None, true),
            200
        );
    }
    let kept_spans = sonde.wait_spans(10, Duration::from_secs(15), |s| {
        s["server_port"] == kept_port
    });
    drop(flooders);
    // Every request once; spans complete in whatever order the server's threads answer.
    let mut paths: Vec<&str> = kept_spans
        .iter()
        .map(|s| s["path"].as_str().unwrap_or(""))
        .collect();
    paths.sort_unstable();
    let expected: Vec<String> = (0..10).map(|i| format!("/ok/kept{i}")).collect();
    assert_eq!(paths, expected, "{kept_spans:?}");
    assert!(kept_spans.iter().all(|s| s["pid"] == kept.pid()));

    // Not one span from the newcomer, by port or by pid after the old server's last one.
    let all = sonde.spans();
    let from_newcomer: Vec<&serde_json::Value> = all
        .iter()
        .filter(|s| {
            s["server_port"] == new_port
                || s["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/ok/newcomer"))
        })
        .collect();
    assert!(
        from_newcomer.is_empty(),
        "newcomer captured: {from_newcomer:?}"
    );
    assert_eq!(
        all.iter().filter(|s| s["pid"] == pid).count(),
        1,
        "spans on the reused pid: {all:?}"
    );
    // The loader selected the pid once (the old server) and ended that selection once.
    assert_eq!(sonde.log_count(&format!("process selected pid={pid} ")), 1);
    assert_eq!(sonde.log_count(&format!("process deselected pid={pid}")), 1);
    // The flood's notices never reached the process ring: nothing was lost.
    sonde.proc.signal(nix::sys::signal::Signal::SIGINT);
    let line = sonde.wait_log("final kernel counters", Duration::from_secs(15));
    assert!(line.contains("(\"proc_events_lost\", 0)"), "{line}");
}

#[test]
fn a_reused_pid_is_not_captured_when_the_old_process_was_selected_by_port() {
    scenario("reuse-port", false);
}

#[test]
fn a_reused_pid_is_not_captured_when_the_old_process_was_selected_by_pid() {
    scenario("reuse-pid", true);
}
