//! Discovery selectors with Kubernetes fields, inside the privilege split: the loader (no API
//! token) makes *candidates* of the processes in a pod's cgroup that match a selector's other
//! fields and captures none of them; the processor, which follows the (fake) API server,
//! selects those whose pod matches the selector's `k8s_*` fields; the loader refuses any
//! selection outside its candidates (logged, counted in the status file).
//!
//! Two Python servers run in two kubelet-shaped pod cgroups (different namespaces,
//! Deployments and labels) on ports the selector's `open_ports` both cover: selecting by
//! `k8s_namespace`, by `k8s_deployment_name` and by `k8s_pod_labels` instruments exactly the
//! matching pod's server, never its neighbour.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    process::Stdio,
    time::{Duration, Instant},
};

use sonde_e2e::{
    kube::{FakeKube, PodBuilder, TestCgroup, Workload, namespace, node},
    *,
};
use sonde_schema::{
    channel,
    control::{LoaderMessage, ProcessorMessage},
};

const NODE: &str = "sonde-e2e-node";
const REQUESTS: usize = 3;

/// The Python test server on `port`, in `cgroup` from its first instruction.
fn server_in(cgroup: &TestCgroup, port: u16) -> Proc {
    let mut cmd = cgroup.command(python());
    cmd.arg(server_script("python_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("python-in-pod", &mut cmd);
    wait_for_port(port, Duration::from_secs(30));
    p
}

/// Sends GET `path` `n` times on fresh connections; each must answer 200.
fn requests(port: u16, path: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(
            HttpConn::open(port).request("GET", path, None, true),
            200,
            "{path}"
        );
    }
}

/// The two pods: `checkout` (namespace `shop`, label `tier: front`) and `ledger` (namespace
/// `bank`, label `tier: back`).
fn pods() -> (PodBuilder, PodBuilder) {
    (
        PodBuilder::new(Workload::Deployment("checkout".into()), "shop", NODE)
            .label("tier", "front"),
        PodBuilder::new(Workload::Deployment("ledger".into()), "bank", NODE).label("tier", "back"),
    )
}

/// Runs `sonde` with `selector_fields` (YAML lines of one `discovery.instrument` entry, after
/// its `open_ports` covering both servers) and checks that exactly the `checkout` pod's server
/// is selected and traced, the `ledger` one neither.
fn only_checkout_is_instrumented(test: &str, selector_fields: &str) {
    let _guard = serial();
    let dir = TempDir::new(test);
    let (checkout, ledger) = pods();
    let mut objects = vec![node(NODE), namespace("shop"), namespace("bank")];
    objects.extend(checkout.objects());
    objects.extend(ledger.objects());
    let fake = FakeKube::start_with(&objects);
    let (cg_a, cg_b) = (TestCgroup::for_pod(&checkout), TestCgroup::for_pod(&ledger));
    let (port_a, port_b) = (free_port(), free_port());
    let a = server_in(&cg_a, port_a);
    let b = server_in(&cg_b, port_b);

    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!(
            "discovery:\n  instrument:\n    - open_ports: {port_a},{port_b}\n{selector_fields}"
        ),
    )
    .expect("config");
    let kubeconfig = fake.kubeconfig();
    let sonde = Sonde::start(
        &["--config", config.to_str().expect("utf-8")],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf-8")),
            ("K8S_NODE_NAME", NODE),
        ],
        &dir,
        &[],
    );
    // Both are candidates; only checkout's pod matches, so only it is selected.
    for pid in [a.pid(), b.pid()] {
        sonde.wait_log(
            &format!("process is a candidate: captured once the processor selects it from Kubernetes metadata pid={pid} "),
            Duration::from_secs(20),
        );
    }
    sonde.wait_selected(a.pid());
    requests(port_a, "/ok/checkout", REQUESTS);
    requests(port_b, "/ok/ledger", REQUESTS);
    let spans = sonde.wait_spans(REQUESTS, Duration::from_secs(20), |s| {
        s["path"] == "/ok/checkout"
    });
    assert_eq!(spans.len(), REQUESTS, "{spans:#?}");
    assert!(spans.iter().all(|s| s["pid"] == a.pid()), "{spans:#?}");
    // Time for the neighbour's spans, had it been captured.
    std::thread::sleep(Duration::from_millis(1500));
    let all = sonde.spans();
    let count = |path: &str| all.iter().filter(|s| s["path"] == path).count();
    assert_eq!(count("/ok/checkout"), REQUESTS, "{all:#?}");
    assert_eq!(count("/ok/ledger"), 0, "{all:#?}");
    // The loader's log: the processor selected checkout's server, once, and nothing else.
    assert_eq!(
        sonde.log_count(&format!(
            "candidate selected at the processor's request pid={}",
            a.pid()
        )),
        1
    );
    assert_eq!(
        sonde.log_count("candidate selected at the processor's request"),
        1
    );
    assert_eq!(
        sonde.log_count(&format!("process selected pid={} ", b.pid())),
        0
    );
    assert_eq!(
        sonde.log_count("refused the processor's selection request"),
        0
    );
    assert_eq!(sonde.log_count("selects nothing"), 0);
    drop(fake);
}

#[test]
fn k8s_namespace_selects_only_the_matching_pods_server() {
    only_checkout_is_instrumented("k8s-sel-ns", "      k8s_namespace: sh*\n");
}

#[test]
fn k8s_deployment_name_selects_only_the_matching_pods_server() {
    only_checkout_is_instrumented("k8s-sel-deploy", "      k8s_deployment_name: checkout\n");
}

#[test]
fn k8s_pod_labels_select_only_the_matching_pods_server() {
    only_checkout_is_instrumented(
        "k8s-sel-labels",
        "      k8s_pod_labels:\n        tier: fr*\n        app: checkout\n",
    );
}

// ------------------------------------------------------------------ the loader's bound

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

/// Receives loader messages until `want` returns true for one (bounded); returns it.
fn recv_until(fd: &OwnedFd, mut want: impl FnMut(&LoaderMessage) -> bool) -> LoaderMessage {
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
        let message = LoaderMessage::decode(&datagram).expect("decode");
        if want(&message) {
            return message;
        }
    }
    panic!("the expected loader message did not arrive");
}

/// A processor (this test, speaking the control protocol) may select a candidate, but a
/// selection naming any other process (one outside every pod, a pid that does not exist) is
/// refused: logged aggregated, counted in the status file, nothing captured.
#[test]
fn a_selection_outside_the_candidates_is_refused() {
    let _guard = serial();
    let dir = TempDir::new("k8s-sel-refuse");
    let (checkout, _) = pods();
    let cg = TestCgroup::for_pod(&checkout);
    let (port_a, port_b) = (free_port(), free_port());
    let in_pod = server_in(&cg, port_a);
    // Outside any pod: matches open_ports, yet is never a candidate.
    let outside = start_server(ServerKind::Python, port_b, &dir);
    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!(
            "processor:\n  allowed_uids: [0]\ndiscovery:\n  instrument:\n    - open_ports: {port_a},{port_b}\n      k8s_namespace: shop\n"
        ),
    )
    .expect("config");
    let loader = Sonde::start_binary(
        "sonde-loader",
        &["--config", config.to_str().expect("utf-8")],
        &[],
        &dir,
    );
    loader.wait_log("control socket listening", Duration::from_secs(30));
    loader.wait_log(
        &format!("process is a candidate: captured once the processor selects it from Kubernetes metadata pid={} ", in_pod.pid()),
        Duration::from_secs(20),
    );

    let conn = connect(&loader.control_socket);
    ProcessorMessage::Hello(sonde_schema::control::Hello {
        agent: "k8s selection test".into(),
        sandbox: None,
        inject_sampled_below: None,
    })
    .send(conn.as_fd())
    .expect("hello");
    recv_until(&conn, |m| matches!(m, LoaderMessage::Welcome(_)));
    // The candidate is announced with its selector's Kubernetes criteria, not as a process.
    let LoaderMessage::CandidateAdded(c) = recv_until(
        &conn,
        |m| matches!(m, LoaderMessage::CandidateAdded(c) if c.process.pid == in_pod.pid()),
    ) else {
        unreachable!()
    };
    assert_eq!(c.process.container_id, checkout.container_id());
    assert_eq!(c.selectors.len(), 1);
    assert_eq!(c.selectors[0].key, "discovery.instrument[0]");
    assert_eq!(
        c.selectors[0].fields,
        vec![("k8s_namespace".to_string(), "shop".to_string())]
    );
    assert_eq!(
        loader.log_count(&format!("process selected pid={} ", in_pod.pid())),
        0
    );

    // Outside the bound: refused, logged once (aggregated), counted; nothing captured.
    let strangers = [outside.pid(), 999_999];
    ProcessorMessage::Select(strangers.to_vec())
        .send(conn.as_fd())
        .expect("select");
    let line = loader.wait_log(
        "refused the processor's selection request",
        Duration::from_secs(5),
    );
    assert!(
        line.ends_with(&format!(
            " count=2 pids=[{}, {}]",
            strangers[0], strangers[1]
        )),
        "{line}"
    );
    let status_path = loader.control_socket.with_file_name("sonde-status.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&status_path).unwrap_or_default())
                .unwrap_or_default();
        if status["refused_selections"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "status file: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in strangers {
        assert_eq!(loader.log_count(&format!("process selected pid={pid} ")), 0);
    }

    // Within the bound: the candidate is captured and announced as a process.
    ProcessorMessage::Select(vec![in_pod.pid()])
        .send(conn.as_fd())
        .expect("select");
    recv_until(
        &conn,
        |m| matches!(m, LoaderMessage::ProcessAdded(p) if p.pid == in_pod.pid()),
    );
    loader.wait_selected(in_pod.pid());
    // Narrowed, it goes back to being a candidate (selectable again), not out for good.
    ProcessorMessage::Narrow(vec![in_pod.pid()])
        .send(conn.as_fd())
        .expect("narrow");
    recv_until(
        &conn,
        |m| matches!(m, LoaderMessage::ProcessRemoved(pid) if *pid == in_pod.pid()),
    );
    ProcessorMessage::Select(vec![in_pod.pid()])
        .send(conn.as_fd())
        .expect("select");
    recv_until(
        &conn,
        |m| matches!(m, LoaderMessage::ProcessAdded(p) if p.pid == in_pod.pid()),
    );
    // The stranger stays uncaptured across a rescan (every 2 s), and the connection is up:
    // a refused selection is not a protocol violation.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        loader.log_count(&format!("process selected pid={} ", outside.pid())),
        0
    );
    assert_eq!(loader.log_count("unexpected message"), 0);
}

/// The processor follows the metadata: a pod relabelled out of the selector has its server
/// narrowed (no spans while out), relabelled back it is selected again.
#[test]
fn a_pod_leaving_and_rejoining_the_selector_is_narrowed_then_selected_again() {
    let _guard = serial();
    let dir = TempDir::new("k8s-sel-relabel");
    let (checkout, _) = pods();
    let mut objects = vec![node(NODE), namespace("shop")];
    objects.extend(checkout.objects());
    let fake = FakeKube::start_with(&objects);
    let cg = TestCgroup::for_pod(&checkout);
    let port = free_port();
    let a = server_in(&cg, port);
    let config = dir.path("sonde.yaml");
    std::fs::write(
        &config,
        format!(
            "discovery:\n  instrument:\n    - open_ports: {port}\n      k8s_pod_labels:\n        tier: front\n"
        ),
    )
    .expect("config");
    let kubeconfig = fake.kubeconfig();
    let sonde = Sonde::start(
        &["--config", config.to_str().expect("utf-8")],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf-8")),
            ("K8S_NODE_NAME", NODE),
        ],
        &dir,
        &[],
    );
    sonde.wait_selected(a.pid());
    requests(port, "/ok/before", 2);
    sonde.wait_spans(2, Duration::from_secs(20), |s| s["path"] == "/ok/before");

    fake.add_pod(&checkout.clone().label("tier", "back"));
    sonde.wait_log(
        &format!(
            "capture narrowed at the processor's request pid={}",
            a.pid()
        ),
        Duration::from_secs(20),
    );
    requests(port, "/ok/out", 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sonde
            .spans()
            .iter()
            .filter(|s| s["path"] == "/ok/out")
            .count(),
        0
    );

    fake.add_pod(&checkout);
    sonde.wait_log_nth(
        &format!("process selected pid={} ", a.pid()),
        2,
        Duration::from_secs(20),
    );
    requests(port, "/ok/again", 2);
    let again = sonde.wait_spans(2, Duration::from_secs(20), |s| s["path"] == "/ok/again");
    assert_eq!(again.len(), 2, "{again:#?}");
    assert_eq!(
        sonde.log_count("refused the processor's selection request"),
        0
    );
}
