//! The processor may only narrow what the loader captures: a narrowing request stops the
//! capture of a captured process (and keeps it out across rescans), while a request naming a
//! process the loader does not capture is refused and logged (aggregated), never turned into a
//! capture.
//! The peer here is the test itself speaking the control protocol (allowed by uid through
//! `processor.allowed_uids`), because the shipped processor has no feature that narrows yet.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use sonde_e2e::*;
use sonde_schema::{
    channel,
    control_capnp::{loader_message, processor_message},
};

fn connect(path: &std::path::Path) -> OwnedFd {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = nix::sys::socket::UnixAddr::new(path).expect("addr");
    nix::sys::socket::connect(fd.as_raw_fd(), &addr).expect("connect");
    fd
}

fn send(fd: &OwnedFd, build: impl FnOnce(processor_message::Builder<'_>)) {
    let mut msg = capnp::message::Builder::new_default();
    build(msg.init_root::<processor_message::Builder<'_>>());
    channel::send(fd.as_fd(), &msg, &[]).expect("send");
}

/// Receives loader messages until `want` returns true for one (bounded).
fn recv_until(fd: &OwnedFd, mut want: impl FnMut(loader_message::WhichReader<'_>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).expect("poll") == 0 {
            continue;
        }
        let datagram = channel::recv(fd.as_fd(), 4).expect("recv");
        let message = datagram.message().expect("message");
        let root = message
            .get_root::<loader_message::Reader<'_>>()
            .expect("root");
        if want(root.which().expect("which")) {
            return;
        }
    }
    panic!("the expected loader message did not arrive");
}

#[test]
fn narrowing_stops_captured_processes_and_refuses_everything_else() {
    let _guard = serial();
    let dir = TempDir::new("narrow");
    let (port_a, port_b) = (free_port(), free_port());
    let a = start_server(ServerKind::Python, port_a, &dir);
    let b = start_server(ServerKind::Python, port_b, &dir);
    let config = dir.path("sonde.yaml");
    std::fs::write(&config, "processor:\n  allowed_uids: [0]\n").expect("config");
    let ports = format!("{port_a},{port_b}");
    let loader = Sonde::start_binary(
        "sonde-loader",
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--open-port",
            &ports,
        ],
        &[],
        &dir,
    );
    loader.wait_log("control socket listening", Duration::from_secs(30));
    loader.wait_selected(a.pid());
    loader.wait_selected(b.pid());

    let conn = connect(&loader.control_socket);
    send(&conn, |m| {
        let mut h = m.init_hello();
        h.set_protocol_version(sonde_schema::control_capnp::PROTOCOL_VERSION);
        h.set_agent("narrowing test");
    });
    recv_until(&conn, |w| matches!(w, loader_message::Which::Welcome(_)));

    let not_captured = [999_999u32, 1];
    send(&conn, |m| {
        let mut pids = m.init_narrow().init_stop_pids(3);
        pids.set(0, a.pid());
        pids.set(1, not_captured[0]);
        pids.set(2, not_captured[1]);
    });
    recv_until(
        &conn,
        |w| matches!(w, loader_message::Which::ProcessRemoved(pid) if pid == a.pid()),
    );
    loader.wait_log(
        &format!(
            "capture narrowed at the processor's request pid={}",
            a.pid()
        ),
        Duration::from_secs(5),
    );
    // Refusals are logged aggregated: one line with the count and the pids.
    let line = loader.wait_log(
        "refused the processor's narrowing request",
        Duration::from_secs(5),
    );
    assert!(
        line.ends_with(&format!(
            " count=2 pids=[{}, {}]",
            not_captured[0], not_captured[1]
        )),
        "{line}"
    );
    for pid in not_captured {
        assert_eq!(loader.log_count(&format!("process selected pid={pid} ")), 0);
    }

    // A rescan (every 2 s) finds A still listening on a selected port, yet it stays out; B
    // was never touched.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        loader.log_count(&format!("process selected pid={} ", a.pid())),
        1
    );
    assert_eq!(
        loader.log_count(&format!("process deselected pid={}", b.pid())),
        0
    );
    // The connection is still up: narrowing is a legitimate message, not a violation.
    assert_eq!(loader.log_count("unexpected message"), 0);
}
