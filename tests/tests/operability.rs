//! Running Sonde as operators do: systemd readiness (`READY=1` on `$NOTIFY_SOCKET`, from the
//! loader once its control socket listens and from the processor once it is connected), split
//! units that start in any order (the processor retries its connect), and a supervisor that
//! gives up on a processor failing every start, with one error, instead of restart-looping.

use std::{
    net::TcpListener,
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use sonde_e2e::*;

/// A datagram socket standing in for systemd's notify socket, writable by the processor's
/// user.
fn notify_socket(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).expect("notify socket");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod notify socket");
    socket
}

/// The next notification within `timeout`, if any.
fn next_notification(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("notify socket: {e}"),
    }
}

/// The processor as a separate unit would run it: nobody, no capability, the loader's path.
fn split_processor(dir: &TempDir, control: &Path, notify: &Path) -> Sonde {
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
    .arg(control);
    let notify = notify.to_str().expect("utf-8 path");
    Sonde::attach(
        "sonde-processor",
        cmd,
        &[("NOTIFY_SOCKET", notify)],
        control.to_path_buf(),
    )
}

/// Split deployment, processor first: it waits for the loader (one log line, no readiness),
/// the loader comes up 2 s later and says READY=1 once its control socket listens, then the
/// processor connects, says READY=1, and spans flow.
#[test]
fn processor_started_first_waits_for_the_loader_and_both_notify_readiness() {
    let _guard = serial();
    let dir = TempDir::new("notify-split");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let control = dir.path("control.sock");
    let processor_notify_path = dir.path("processor-notify.sock");
    let processor_notify = notify_socket(&processor_notify_path);
    let loader_notify_path = dir.path("loader-notify.sock");
    let loader_notify = notify_socket(&loader_notify_path);

    let processor = split_processor(&dir, &control, &processor_notify_path);
    processor.wait_log(
        "the loader is not up yet; retrying the connect with backoff",
        Duration::from_secs(10),
    );
    // Not ready while it waits.
    assert_eq!(
        next_notification(&processor_notify, Duration::from_secs(2)),
        None
    );
    assert!(processor.proc.pid() > 0);

    let port_arg = port.to_string();
    let loader = Sonde::start_binary(
        "sonde-loader",
        &["--open-port", &port_arg],
        &[(
            "NOTIFY_SOCKET",
            loader_notify_path.to_str().expect("utf-8 path"),
        )],
        &dir,
    );
    let ready =
        next_notification(&loader_notify, Duration::from_secs(30)).expect("the loader's READY=1");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // Readiness came after the control socket was listening: the loader wrote that line
    // before it notified, so it is in the pipe (the reader thread may not have it yet).
    loader.wait_log("control socket listening", Duration::from_secs(5));
    assert_eq!(loader.log_count("control socket listening"), 1);
    assert!(control.exists());

    let ready = next_notification(&processor_notify, Duration::from_secs(20))
        .expect("the processor's READY=1");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // ... after it connected and mapped the ring buffer, having waited with one warning.
    processor.wait_log("ring buffer mapped", Duration::from_secs(5));
    assert_eq!(processor.log_count("ring buffer mapped"), 1);
    assert_eq!(processor.log_count("the loader is up; connected"), 1);
    assert_eq!(
        processor.log_count("the loader is not up yet; retrying the connect"),
        1
    );
    loader.wait_log("processor connected", Duration::from_secs(10));
    // One notification each.
    assert_eq!(
        next_notification(&loader_notify, Duration::from_millis(300)),
        None
    );
    assert_eq!(
        next_notification(&processor_notify, Duration::from_millis(300)),
        None
    );

    loader.wait_selected(server.pid());
    processor.wait_log(
        &format!("process added pid={}", server.pid()),
        Duration::from_secs(20),
    );
    for i in 0..3 {
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/ok/order{i}"), None, true),
            200
        );
    }
    let spans = processor.wait_spans(3, Duration::from_secs(10), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/order"))
    });
    assert_eq!(spans.len(), 3);
    // READY sent, the notify socket is closed: the processor holds no Unix datagram socket it
    // could re-connect, or pass fds through to any local datagram socket.
    let datagram = unix_datagram_sockets(processor.proc.pid());
    assert!(
        datagram.is_empty(),
        "datagram sockets left open: {datagram:?}"
    );
}

/// The inodes of the Unix datagram sockets `pid` holds (`/proc/<pid>/fd` against
/// `/proc/net/unix`, whose Type column is 0002 for `SOCK_DGRAM`).
fn unix_datagram_sockets(pid: u32) -> Vec<String> {
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd directory")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"0002")).then(|| f.get(6).map(|s| s.to_string()))?
        })
        .filter(|inode| held.contains(inode))
        .collect()
}

/// Single host: `sonde` says READY=1 once started (the notify socket is not handed to the
/// processor it supervises: only the main process notifies).
#[test]
fn single_host_sonde_notifies_readiness_once() {
    let _guard = serial();
    let dir = TempDir::new("notify-single");
    let port = free_port();
    let notify_path = dir.path("notify.sock");
    let notify = notify_socket(&notify_path);
    let port_arg = port.to_string();
    let sonde = Sonde::start_binary(
        "sonde",
        &["--open-port", &port_arg],
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8 path"))],
        &dir,
    );
    let ready = next_notification(&notify, Duration::from_secs(30)).expect("READY=1");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // Written before the notification (the reader thread may lag behind).
    sonde.wait_log("run-time seccomp policy installed", Duration::from_secs(5));
    assert_eq!(sonde.log_count("run-time seccomp policy installed"), 1);
    sonde.wait_log("processor connected", Duration::from_secs(30));
    assert_eq!(next_notification(&notify, Duration::from_millis(500)), None);
}

/// Waits for `sonde` to exit; its exit status.
fn wait_exit(sonde: &mut Sonde, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = sonde.proc.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "sonde still running after {timeout:?}; log:\n{}",
            sonde.log_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sonde --config <yaml> --open-port <a free port>`, started without waiting for a processor
/// (the give-up tests expect none to last).
fn sonde_with_config(dir: &TempDir, yaml: &str) -> Sonde {
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, yaml).expect("config");
    Sonde::start_binary(
        "sonde",
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--open-port",
            &free_port().to_string(),
        ],
        &[],
        dir,
    )
}

/// A processor that fails the same way at every start (its Prometheus port is taken, which
/// the configuration check cannot know): `sonde` gives up after five tries, with one error
/// naming the failure, and exits non-zero, within a bounded time.
#[test]
fn sonde_gives_up_on_a_processor_that_fails_every_start() {
    let _guard = serial();
    let dir = TempDir::new("give-up");
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let prometheus_port = taken.local_addr().expect("addr").port();
    let started = Instant::now();
    let mut sonde = sonde_with_config(
        &dir,
        &format!("prometheus_export:\n  port: {prometheus_port}\n"),
    );
    let status = wait_exit(&mut sonde, Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    assert_eq!(status.code(), Some(1), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let log = sonde.log_lines().join("\n");
    // Five starts, four restarts announced, then the one error.
    assert_eq!(sonde.log_count("processor started"), 5, "{log}");
    assert_eq!(sonde.log_count("processor exited; restarting"), 4, "{log}");
    let gave_up = "the processor failed to start 5 times in a row, each time the same way (exited with exit status: 1";
    assert_eq!(sonde.log_count(gave_up), 1, "{log}");
    assert_eq!(
        sonde.log_count("ERROR"),
        6,
        "five processor errors and one of sonde's: {log}"
    );
    assert_eq!(
        sonde.log_count(&format!(
            "serving Prometheus metrics on 127.0.0.1:{prometheus_port}"
        )),
        5,
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A processor binary that cannot be started at all: the same spawn error five times, then
/// one error naming it.
#[test]
fn sonde_gives_up_when_the_processor_cannot_be_spawned() {
    let _guard = serial();
    let dir = TempDir::new("give-up-spawn");
    let missing = dir.path("no-such-processor");
    let mut sonde = sonde_with_config(
        &dir,
        &format!("processor:\n  binary: {}\n", missing.display()),
    );
    let status = wait_exit(&mut sonde, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let log = sonde.log_lines().join("\n");
    assert_eq!(sonde.log_count("starting the processor failed"), 4, "{log}");
    assert_eq!(
        sonde.log_count("the processor failed to start 5 times in a row"),
        1,
        "{log}"
    );
    assert_eq!(sonde.log_count("ERROR"), 1, "{log}");
    let error = sonde.wait_log("ERROR", Duration::from_secs(1));
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

/// A processor that connected and then dies is always restarted: killing it again and again
/// (as another process of its uid could) never makes the supervisor give up.
#[test]
fn a_processor_killed_after_connecting_is_always_restarted() {
    let _guard = serial();
    let Served {
        dir: _dir,
        port,
        server: _server,
        mut sonde,
    } = serve_python_with_sonde("killloop");
    let kills = 6;
    for n in 1..=kills {
        sonde.wait_log_nth("processor connected", n, Duration::from_secs(30));
        let line = sonde.wait_log_nth("processor started", n, Duration::from_secs(5));
        let pid: i32 = log_field(&line, "pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the processor");
    }
    // A seventh processor connects and capture goes on; the loader never gave up.
    sonde.wait_log_nth("processor connected", kills + 1, Duration::from_secs(40));
    assert!(sonde.proc.is_running(), "sonde exited");
    assert_eq!(sonde.log_count("giving up"), 0, "{:?}", sonde.log_lines());
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/after-kills", None, true),
        200
    );
    let spans = sonde.wait_spans(1, Duration::from_secs(10), |s| {
        s["path"] == "/ok/after-kills"
    });
    assert_eq!(spans.len(), 1);
}
