//! The privilege split, observed from outside: the processor's credentials, its refusal to run
//! with privilege, no bpf() calls, peer-credential checks on the control socket, and restart
//! after SIGKILL without losing the events written meanwhile.

use std::{io::Read, os::unix::net::UnixStream, process::Command, time::Duration};

use nix::sys::signal::Signal;
use sonde_e2e::*;

const ZERO_CAPS: &str = "0000000000000000";

/// `SCHED_BATCH` and `SCHED_OTHER` as `/proc/<pid>/task/<tid>/stat` shows a policy (the
/// kernel's numbers, which libc's constants are).
const SCHED_BATCH: u32 = libc::SCHED_BATCH as u32;
const SCHED_OTHER: u32 = libc::SCHED_OTHER as u32;

/// The scheduling policy of every thread of `pid`, by thread id.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    let mut out = Vec::new();
    for task in tasks {
        let tid = task
            .expect("task entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the command name start at field 3 (state); policy is field 41.
        let after_comm = stat.rsplit_once(')').expect("stat has a command name").1;
        let policy = after_comm
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no policy in {stat}"));
        out.push((tid, policy));
    }
    assert!(!out.is_empty(), "no threads listed for {pid}");
    out
}

fn processor_pid(sonde: &Sonde, nth: usize) -> u32 {
    let line = sonde.wait_log_nth("processor started", nth, Duration::from_secs(20));
    log_field(&line, "pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

#[test]
fn processor_runs_unprivileged_and_restarts_after_sigkill() {
    let _guard = serial();
    let dir = TempDir::new("restart");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let port_arg = port.to_string();
    let sonde = Sonde::start(&["--open-port", &port_arg], &[], &dir, &[server.pid()]);

    let first = processor_pid(&sonde, 1);
    assert_eq!(status_field(first, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(first, "Gid"), "65534\t65534\t65534\t65534");
    // No supplementary groups at all (the loader's seccomp filter lets setgroups empty the
    // list and nothing else).
    assert_eq!(status_field(first, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(first, caps),
            ZERO_CAPS,
            "{caps} of the processor"
        );
    }
    assert_eq!(status_field(first, "NoNewPrivs"), "1");
    // Under its seccomp filters (the allowlist and the clone3 one, on top of the three
    // inherited from the loader's run-time policy) and Landlock.
    assert_eq!(status_field(first, "Seccomp"), "2");
    assert_eq!(status_field(first, "Seccomp_filters"), "5");
    sonde.wait_log("landlock=true", Duration::from_secs(5));
    // Every thread under SCHED_BATCH (`processor.scheduling`'s default), set through the
    // loader's inherited run-time seccomp policy, which allows exactly that call.
    sonde.wait_log("scheduling policy policy=batch", Duration::from_secs(5));
    let policies = thread_policies(first);
    assert!(
        policies.iter().all(|(_, p)| *p == SCHED_BATCH),
        "processor threads' policies: {policies:?}"
    );
    // The ring buffer is the only BPF object the processor holds.
    let bpf_fds = std::fs::read_dir(format!("/proc/{first}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("anon_inode:bpf"))
        .count();
    assert_eq!(
        bpf_fds, 1,
        "the processor must hold exactly one BPF fd (the ring buffer)"
    );

    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/before", None, true),
        200
    );
    assert_eq!(
        sonde
            .wait_spans(1, Duration::from_secs(10), |s| s["path"] == "/ok/before")
            .len(),
        1
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL)
        .expect("kill processor");
    // Requests while no processor runs: their events wait in the ring buffer.
    for i in 0..3 {
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/ok/gap{i}"), None, true),
            200
        );
    }
    let second = processor_pid(&sonde, 2);
    assert_ne!(first, second);
    sonde.wait_log_nth("processor connected", 2, Duration::from_secs(20));
    assert_eq!(status_field(second, "CapEff"), ZERO_CAPS);
    for i in 0..2 {
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/ok/after{i}"), None, true),
            200
        );
    }
    let gap = sonde.wait_spans(3, Duration::from_secs(10), |s| {
        s["path"].as_str().is_some_and(|p| p.starts_with("/ok/gap"))
    });
    assert_eq!(
        gap.len(),
        3,
        "events written while the processor was down must be delivered"
    );
    let after = sonde.wait_spans(2, Duration::from_secs(10), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/after"))
    });
    assert_eq!(after.len(), 2);
    assert!(
        after
            .iter()
            .all(|s| s["status"] == 200 && s["pid"] == server.pid())
    );
    assert_eq!(
        sonde.spans().len(),
        6,
        "exactly one span per request overall"
    );
}

/// `processor.scheduling`: with the Prometheus endpoint on (a server thread besides the
/// reader), every thread runs under `SCHED_BATCH`, the threads started after the switch
/// included; `inherit` leaves them all under the policy the processor was started with (the
/// loader's: `SCHED_OTHER`). A policy Sonde does not set stops it at start, naming the key
/// (`config_cli.rs`).
#[test]
fn processor_scheduling_reaches_every_thread_and_inherit_keeps_the_started_policy() {
    let _guard = serial();
    for (setting, policy, logged) in [
        ("batch", SCHED_BATCH, "scheduling policy policy=batch"),
        ("inherit", SCHED_OTHER, "scheduling policy policy=inherit"),
    ] {
        let dir = TempDir::new("sched");
        let port = free_port().to_string();
        let prometheus = free_port().to_string();
        let sonde = Sonde::start(
            &["--open-port", &port],
            &[
                ("SONDE_PROCESSOR_SCHEDULING", setting),
                ("BEYLA_PROMETHEUS_PORT", &prometheus),
            ],
            &dir,
            &[],
        );
        let pid = processor_pid(&sonde, 1);
        sonde.wait_log(logged, Duration::from_secs(5));
        sonde.wait_log("Prometheus endpoint listening", Duration::from_secs(10));
        let policies = thread_policies(pid);
        assert!(
            policies.len() >= 2 && policies.iter().all(|(_, p)| *p == policy),
            "{setting}: processor threads' policies: {policies:?}"
        );
    }
}

#[test]
fn split_processor_makes_no_bpf_calls() {
    let _guard = serial();
    let dir = TempDir::new("nobpf");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let port_arg = port.to_string();
    // The loader alone, as in the systemd / pod deployment.
    let loader = Sonde::start_binary("sonde-loader", &["--open-port", &port_arg], &[], &dir);
    loader.wait_log("control socket listening", Duration::from_secs(30));
    loader.wait_selected(server.pid());

    let trace = dir.path("strace.txt");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=bpf,mmap", "-o"])
        .arg(&trace)
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(installed_binary("sonde-processor", &dir))
        .arg("--control")
        .arg(&loader.control_socket);
    let processor = Sonde::attach("sonde-processor", cmd, &[], loader.control_socket.clone());
    processor.wait_log("ring buffer mapped", Duration::from_secs(30));
    processor.wait_log(
        &format!("process added pid={}", server.pid()),
        Duration::from_secs(10),
    );

    for i in 0..4 {
        assert_eq!(
            HttpConn::open(port).request("GET", &format!("/ok/split{i}"), None, true),
            200
        );
    }
    let spans = processor.wait_spans(4, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 4);
    drop(processor);
    std::thread::sleep(Duration::from_millis(200));

    let text = std::fs::read_to_string(&trace).expect("strace output");
    let bpf_calls: Vec<&str> = text.lines().filter(|l| l.contains("bpf(")).collect();
    assert!(
        bpf_calls.is_empty(),
        "processor called bpf(): {bpf_calls:?}"
    );
    // The trace did follow the processor: it mapped the 8 MiB ring buffer's data twice + a page.
    let ring_map_len = (2 * 8 * 1024 * 1024 + 4096).to_string();
    assert!(
        text.lines()
            .any(|l| l.contains("mmap(") && l.contains(&ring_map_len)),
        "no ring buffer mmap in:\n{text}"
    );
}

#[test]
fn processor_refuses_root_and_capabilities() {
    let _guard = serial();
    let dir = TempDir::new("refuse");
    let processor = installed_binary("sonde-processor", &dir);
    let out = Command::new(&processor)
        .arg("--control")
        .arg("/nonexistent")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refuses to run as root"), "{err}");

    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "--",
        ])
        .arg(&processor)
        .args(["--control", "/nonexistent"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refuses to run holding capabilities") && err.contains("CapAmb"),
        "{err}"
    );
}

#[test]
fn control_socket_refuses_wrong_peer_credentials() {
    let _guard = serial();
    let dir = TempDir::new("peercred");
    let loader = Sonde::start_binary("sonde-loader", &["--open-port", "1"], &[], &dir);
    loader.wait_log("control socket listening", Duration::from_secs(30));
    // Root may open the socket file, but uid 0 is not an allowed processor uid.
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .expect("socket");
    let addr = nix::sys::socket::UnixAddr::new(&loader.control_socket).expect("addr");
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).expect("connect");
    let mut stream = UnixStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("peer credentials not allowed"),
        "no refusal received ({n} bytes: {:?}); log:\n{}",
        &buf[..n],
        loader.log_lines().join("\n")
    );
    let line = loader.wait_log("refused control connection", Duration::from_secs(5));
    assert!(line.contains("uid 0"), "{line}");
    // The socket file itself is private to the processor's user.
    let meta = std::fs::metadata(&loader.control_socket).expect("socket file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

#[test]
fn events_beyond_a_full_ring_buffer_are_counted_as_lost() {
    let _guard = serial();
    let dir = TempDir::new("overflow");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    // A one-page ring buffer holds a dozen events; the rest of a burst must be counted, not hidden.
    let yaml = "stats_interval_secs: 1\nebpf:\n  ring_buffer_bytes: 4096\n";
    let mut sonde =
        Sonde::start_with_config(&dir.path("sonde.yaml"), yaml, port, &dir, server.pid());
    let processor = processor_pid(&sonde, 1);

    // Freeze the processor so nothing drains the ring, then send a burst.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(processor as i32),
        Signal::SIGSTOP,
    )
    .expect("stop");
    let burst = 40;
    let mut conn = HttpConn::open(port);
    for i in 0..burst {
        assert_eq!(
            conn.request("GET", &format!("/ok/burst{i}"), None, i + 1 == burst),
            200
        );
    }
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(processor as i32),
        Signal::SIGCONT,
    )
    .expect("continue");

    let delivered = sonde.wait_spans(burst, Duration::from_secs(5), |s| {
        s["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/ok/burst"))
    });
    sonde.wait_log_nth("kernel counters", 3, Duration::from_secs(10));
    assert!(sonde.proc.stop(Duration::from_secs(10)).is_some());
    let line = sonde.wait_log("final processor stats", Duration::from_secs(10));
    let stats: serde_json::Value =
        serde_json::from_str(line.split_once("stats=").expect("stats").1.trim()).expect("json");
    let lost = stats["kernel"]["events_lost_ringbuf_full"]
        .as_u64()
        .unwrap_or(0) as usize;
    let sent = stats["kernel"]["events_sent"].as_u64().unwrap_or(0) as usize;
    assert!(
        !delivered.is_empty() && delivered.len() < burst,
        "a 4 KiB ring cannot hold {burst} events: {}",
        delivered.len()
    );
    assert_eq!(
        delivered.len() + lost,
        burst,
        "every request is either delivered or counted as lost ({stats})"
    );
    assert_eq!(sent, delivered.len(), "{stats}");
}

#[test]
fn processor_gets_the_configuration_even_when_it_cannot_read_the_file() {
    let _guard = serial();
    let dir = TempDir::new("privconfig");
    let private = dir.path("private");
    std::fs::create_dir(&private).expect("dir");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let port = free_port();
    let server = start_server(ServerKind::Python, port, &dir);
    let yaml = "service_name: from-private-file\nservice_namespace: shop\n";
    let sonde =
        Sonde::start_with_config(&private.join("sonde.yaml"), yaml, port, &dir, server.pid());
    assert_eq!(
        HttpConn::open(port).request("GET", "/ok/config", None, true),
        200
    );
    let spans = sonde.wait_spans(1, Duration::from_secs(10), |s| s["path"] == "/ok/config");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["service_name"], "from-private-file");
    assert_eq!(spans[0]["service_namespace"], "shop");
}

#[test]
fn loader_keeps_only_its_documented_runtime_capabilities() {
    let _guard = serial();
    // Bits: DAC_READ_SEARCH 2, KILL 5, SETGID 6, SETUID 7, SETPCAP 8, SYS_PTRACE 19
    // (security.md, "Capabilities"), with ebpf.tls (the default: attaching the OpenSSL uprobes
    // at run time needs no capability) or without; the bounding set is cut to the same.
    // Seccomp filters: clone3 and the run-time allowlist; single host adds loader_setid;
    // ebpf.tls off adds loader_no_attach.
    let cases: [(&str, &str, u64, &str); 4] = [
        ("sonde", "true", 0x801e4, "3"),
        ("sonde-loader", "true", 0x80004, "2"),
        ("sonde", "false", 0x801e4, "4"),
        ("sonde-loader", "false", 0x80004, "3"),
    ];
    for (bin, tls, expected, filters) in cases {
        let dir = TempDir::new("loadercaps");
        let loader = Sonde::start_binary(bin, &["--open-port", "1"], &[("SONDE_TLS", tls)], &dir);
        loader.wait_log("dropped to run-time capabilities", Duration::from_secs(30));
        let pid = loader.proc.pid();
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            let value = u64::from_str_radix(&status_field(pid, set), 16).expect("hex");
            assert_eq!(
                value, expected,
                "{bin} tls={tls} {set}: {value:#x}, expected {expected:#x}"
            );
        }
        assert_eq!(status_field(pid, "CapInh"), ZERO_CAPS, "{bin}");
        // And under its run-time seccomp policy, installed right after.
        loader.wait_log("run-time seccomp policy installed", Duration::from_secs(5));
        assert_eq!(status_field(pid, "Seccomp"), "2", "{bin}");
        assert_eq!(
            status_field(pid, "Seccomp_filters"),
            filters,
            "{bin} tls={tls}"
        );
        assert_eq!(status_field(pid, "CapAmb"), ZERO_CAPS, "{bin}");
    }
}

fn uid_of(name: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(name)
        .expect("user lookup")
        .unwrap_or_else(|| panic!("no user {name}"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// Issue 13 item 5: `sonde` started as root leaves uid 0 once the programs are attached: all
/// four uids and gids are `loader.user`'s, no supplementary groups, exactly the documented
/// capabilities in every set, under three seccomp filters; it still
/// selects a process started afterwards, restarts a killed processor, and `--audit` passes.
#[test]
fn single_host_loader_runs_off_uid_0_after_start_up() {
    let _guard = serial();
    let dir = TempDir::new("loader-uid");
    let first_port = free_port();
    let first_server = start_server(ServerKind::Python, first_port, &dir);
    let late_port = free_port();
    let ports = format!("{first_port},{late_port}");
    let sonde = Sonde::start(&["--open-port", &ports], &[], &dir, &[first_server.pid()]);
    let pid = sonde.proc.pid();
    sonde.wait_log("left uid 0", Duration::from_secs(5));

    let (uid, gid) = uid_of(LOADER_USER);
    assert_ne!(uid, 0);
    assert_ne!(uid, 65534, "the loader's uid is not the processor's");
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}")
    );
    assert_eq!(status_field(pid, "Groups"), "");
    // DAC_READ_SEARCH, KILL, SETGID, SETUID, SETPCAP, SYS_PTRACE (security.md, "Capabilities").
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, set), "00000000000801e4", "{set}");
    }
    assert_eq!(status_field(pid, "CapInh"), ZERO_CAPS);
    assert_eq!(status_field(pid, "CapAmb"), ZERO_CAPS);
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp_filters"), "3");

    // Selection still works for a process that starts after the drop.
    let late_server = start_server(ServerKind::Python, late_port, &dir);
    sonde.wait_selected(late_server.pid());
    assert_eq!(
        HttpConn::open(late_port).request("GET", "/ok/late", None, true),
        200
    );
    sonde.wait_spans(1, Duration::from_secs(10), |s| s["path"] == "/ok/late");

    // A killed processor is restarted (setresuid to the processor's uid, CAP_KILL to stop it).
    let first = processor_pid(&sonde, 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL)
        .expect("kill processor");
    let second = processor_pid(&sonde, 2);
    assert_ne!(first, second);
    sonde.wait_log_nth("processor connected", 2, Duration::from_secs(20));
    assert_eq!(status_field(second, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(second, "CapEff"), ZERO_CAPS);
    assert_eq!(
        HttpConn::open(first_port).request("GET", "/ok/after-restart", None, true),
        200
    );
    sonde.wait_spans(1, Duration::from_secs(10), |s| {
        s["path"] == "/ok/after-restart"
    });

    // And the audit of the pair passes, naming the loader's uid.
    let out = Command::new(binary("sonde-loader"))
        .args(["--audit", "--json", "--open-port", "1"])
        .env("SONDE_CONTROL_SOCKET", &sonde.control_socket)
        .output()
        .expect("sonde-loader --audit");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    assert!(out.status.success(), "{report:#}");
    assert_eq!(
        report["loaders"][0]["uid"],
        format!("{uid} {uid} {uid} {uid}")
    );
    assert_eq!(report["processors"][0]["pid"], second);
    // Still uid `loader.user` after all of it.
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
}

/// A `loader.user` that does not exist stops `sonde` before anything is attached, naming
/// the key; one that is the processor's is refused too.
#[test]
fn single_host_refuses_a_missing_or_shared_loader_user() {
    let _guard = serial();
    for (user, expected) in [
        ("sonde-no-such-user", "no such user"),
        ("nobody", "has the processor's uid"),
    ] {
        let dir = TempDir::new("loader-user");
        let out = Command::new(binary("sonde"))
            .args(["--open-port", "1"])
            .env("SONDE_CONTROL_SOCKET", dir.path("control.sock"))
            .env("SONDE_LOADER_USER", user)
            .output()
            .expect("sonde");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{user}: {stderr}");
        assert!(
            stderr.contains("loader.user") && stderr.contains(expected),
            "{user}: {stderr}"
        );
        assert!(!stderr.contains("kernel programs attached"), "{stderr}");
    }
}
