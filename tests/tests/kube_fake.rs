//! The fake Kubernetes API server and the cgroup helpers the Kubernetes tests stand on, checked
//! against real clients (no eBPF, fast): `kubectl` 1.32 lists and watches through it, the
//! protocol details the Rust `kube` crate relies on hold (token auth, field selectors, list
//! metadata, watch replay, bookmarks, 410 as an ERROR event, outages), and a process put in a
//! kubelet-shaped cgroup shows that path, also `/..`-relative from a private cgroup namespace.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{
    Proc,
    kube::{
        FakeKube, InCluster, PodBuilder, TOKEN, TestCgroup, Workload, bulk_pods, cgroup_of,
        cgroup_seen_from, curl, namespace, node,
    },
};

const NODE: &str = "sonde-node";

fn scenario() -> Vec<Value> {
    let mut objects = vec![node(NODE), node("other-node"), namespace("default")];
    objects.extend(
        PodBuilder::new(Workload::Deployment("checkout".into()), "shop", NODE)
            .service_name("checkout-svc")
            .objects(),
    );
    objects.extend(
        PodBuilder::new(Workload::DaemonSet("log-agent".into()), "kube-system", NODE).objects(),
    );
    objects.extend(PodBuilder::new(Workload::StatefulSet("db".into(), 0), "shop", NODE).objects());
    objects.extend(PodBuilder::new(Workload::CronJob("backup".into()), "shop", NODE).objects());
    objects.extend(PodBuilder::new(Workload::Bare("debug".into()), "default", NODE).objects());
    objects.extend(
        PodBuilder::new(
            Workload::Deployment("elsewhere".into()),
            "shop",
            "other-node",
        )
        .objects(),
    );
    objects
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn kubectl_lists_pods_of_a_node_with_the_field_selector_and_the_owner_chain() {
    let fake = FakeKube::start_with(&scenario());
    let out = fake.kubectl(
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={NODE}"),
            "-o",
            "json",
        ],
        Duration::from_secs(30),
    );
    let list: Value = serde_json::from_str(&stdout(&out)).expect("kubectl JSON");
    let items = list["items"].as_array().expect("items");
    let names: Vec<&str> = items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(items.len(), 5, "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with("elsewhere")),
        "{names:?}"
    );
    for p in items {
        assert_eq!(p["spec"]["nodeName"], NODE);
        let cid = p["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .expect("containerID");
        let hex = cid.strip_prefix("containerd://").expect("containerd://");
        assert_eq!(hex.len(), 64, "{cid}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{cid}");
    }
    // Deployment's pod → ReplicaSet → Deployment.
    let checkout = items
        .iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("checkout-")
        })
        .expect("checkout pod");
    assert_eq!(
        checkout["metadata"]["annotations"]["resource.opentelemetry.io/service.name"],
        "checkout-svc"
    );
    let owner = &checkout["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet");
    let rs = stdout(&fake.kubectl(
        &[
            "get",
            "rs",
            "-n",
            "shop",
            owner["name"].as_str().expect("rs name"),
            "-o",
            "json",
        ],
        Duration::from_secs(30),
    ));
    let rs: Value = serde_json::from_str(&rs).expect("rs JSON");
    assert_eq!(rs["metadata"]["uid"], owner["uid"]);
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "checkout");
    // kubectl's table output (server-side printing) too, and every workload kind.
    let table = stdout(&fake.kubectl(
        &["get", "pods", "-A", "-o", "wide"],
        Duration::from_secs(30),
    ));
    assert!(
        table.contains("NAMESPACE") && table.contains("Running"),
        "{table}"
    );
    let kinds = stdout(&fake.kubectl(
        &[
            "get",
            "deploy,rs,ds,sts,jobs,cronjobs,nodes,ns",
            "-A",
            "-o",
            "name",
        ],
        Duration::from_secs(30),
    ));
    for want in [
        "deployment.apps/checkout",
        "daemonset.apps/log-agent",
        "statefulset.apps/db",
        "job.batch/backup-29412345",
        "cronjob.batch/backup",
        "node/sonde-node",
        "namespace/default",
    ] {
        assert!(
            kinds.lines().any(|l| l == want),
            "{want} missing in:\n{kinds}"
        );
    }
    // The server saw the token and the selector.
    let reqs = fake.requests();
    assert!(reqs.iter().all(|r| r["auth"] == "ok"), "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r["path"] == "/api/v1/pods"
            && r["query"]["fieldSelector"] == format!("spec.nodeName={NODE}")),
        "{reqs:?}"
    );
}

#[test]
fn kubectl_watch_sees_a_pod_added_and_deleted() {
    let fake = FakeKube::start_with(&scenario());
    // The token from a file, as a kubeconfig for a service account may have it.
    let (kubeconfig, _) = fake.kubeconfig_with_token_file();
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "kubectl", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["get", "pods", "-A", "-w", "-o", "name", "--field-selector"])
        .arg(format!("spec.nodeName={NODE}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut watch = Proc::spawn("kubectl-watch", &mut cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = watch.child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next_line = |what: &str| {
        rx.recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("kubectl -w printed no line for {what}"))
    };
    for _ in 0..5 {
        next_line("the initial list");
    }
    fake.wait_watches(Duration::from_secs(15), |w| {
        w.iter().any(|w| w["resource"] == "pods")
    });
    let pod = PodBuilder::new(Workload::Bare("late".into()), "default", NODE);
    fake.add_pod(&pod);
    // A pod on another node passes the selector by.
    fake.add_pod(&PodBuilder::new(
        Workload::Bare("other".into()),
        "default",
        "other-node",
    ));
    assert_eq!(next_line("the added pod"), "pod/late");
    fake.delete_pod("default", "late");
    assert_eq!(next_line("the deleted pod"), "pod/late");
    let watches = fake.requests();
    let w = watches
        .iter()
        .find(|r| r["watch"] == true)
        .expect("a watch request");
    assert_eq!(w["path"], "/api/v1/pods");
    assert_eq!(w["query"]["fieldSelector"], format!("spec.nodeName={NODE}"));
    assert_eq!(w["auth"], "ok");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the pod on the other node must not be shown"
    );
}

#[test]
fn requests_without_the_token_get_401_with_a_status() {
    let fake = FakeKube::start_with(&scenario());
    for token in [None, Some("not-the-token")] {
        let (code, body) = curl(&fake, "/api/v1/pods", token, Duration::from_secs(20));
        assert_eq!(code, 401, "{body}");
        let status: Value = serde_json::from_str(&body).expect("Status JSON");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    let reqs = fake.requests();
    let auths: Vec<&str> = reqs.iter().filter_map(|r| r["auth"].as_str()).collect();
    assert_eq!(auths, ["missing", "wrong"]);
    // kubectl with a wrong token fails the same way.
    let bad = fake.dir.path("bad-kubeconfig");
    fake.write_kubeconfig(&bad, "wrong");
    let out = sonde_e2e::peers::run_bounded(
        "kubectl",
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&bad)
            .args(["get", "pods"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

#[test]
fn lists_carry_the_resource_version_and_watches_replay_bookmark_and_expire() {
    let fake = FakeKube::start_with(&scenario());
    fake.set_bookmark_interval(0.2);
    let (code, body) = curl(
        &fake,
        &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}&limit=2"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("PodList");
    assert_eq!(page["kind"], "PodList");
    assert_eq!(page["apiVersion"], "v1");
    let rv: u64 = page["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("list resourceVersion");
    assert_eq!(rv, fake.resource_version());
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    // Items in a list have no kind/apiVersion, as the real server sends them.
    assert!(page["items"][0].get("kind").is_none());
    let cont = page["metadata"]["continue"].as_str().expect("continue");
    let (_, rest) = curl(
        &fake,
        &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}&limit=2&continue={cont}"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    let rest: Value = serde_json::from_str(&rest).expect("page 2");
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        page["metadata"]["resourceVersion"]
    );

    // Changes after the list's version are replayed, selector applied; then bookmarks.
    let late = PodBuilder::new(Workload::Bare("late".into()), "default", NODE);
    fake.add_pod(&late);
    fake.add_pod(&PodBuilder::new(
        Workload::Bare("far".into()),
        "default",
        "other-node",
    ));
    let moved = late.clone().phase("Succeeded");
    fake.apply(&[moved.pod()]);
    let (code, body) = curl(
        &fake,
        &format!(
            "/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1&fieldSelector=spec.nodeName%3D{NODE}"
        ),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert_eq!(code, 200);
    let events = lines(&body);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(&types[..2], ["ADDED", "MODIFIED"], "{body}");
    assert!(types[2..].iter().all(|t| *t == "BOOKMARK"), "{body}");
    assert!(types.len() > 2, "no bookmark in {body}");
    assert_eq!(events[0]["object"]["kind"], "Pod");
    assert_eq!(events[1]["object"]["status"]["phase"], "Succeeded");
    let last = events.last().expect("events");
    assert_eq!(
        last["object"]["metadata"]["resourceVersion"],
        fake.resource_version().to_string()
    );

    // A forced 410: the watch answers 200 and one ERROR event with an Expired Status.
    fake.force_gone();
    let (code, body) = curl(
        &fake,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=5"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert_eq!(code, 200);
    let events = lines(&body);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "ERROR");
    let status = &events[0]["object"];
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 410);
    assert_eq!(status["reason"], "Expired");
    assert_eq!(status["status"], "Failure");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("too old resource version")
    );

    // After a compaction, a watch from the old version gets the same; the newest is fine.
    fake.compact();
    let (_, body) = curl(
        &fake,
        &format!("/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert_eq!(lines(&body)[0]["object"]["code"], 410, "{body}");
    let now = fake.resource_version();
    let (_, body) = curl(
        &fake,
        &format!("/api/v1/pods?watch=true&resourceVersion={now}&timeoutSeconds=1"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert!(lines(&body).is_empty(), "{body}");
    // A continue token from before the compaction has expired: 410 on the list.
    let (code, _) = curl(
        &fake,
        &format!("/api/v1/pods?limit=2&continue={cont}"),
        Some(TOKEN),
        Duration::from_secs(20),
    );
    assert_eq!(code, 410);
}

#[test]
fn an_open_watch_is_expired_on_demand_and_outages_refuse_or_503() {
    let fake = FakeKube::start_with(&scenario());
    let rv = fake.resource_version();
    let target = format!(
        "{}/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=30",
        fake.url()
    );
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--no-buffer", "--cacert"])
        .arg(&fake.certs.ca)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}"), &target])
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut watcher = Proc::spawn("curl-watch", &mut cmd);
    fake.wait_watches(Duration::from_secs(15), |w| w.len() == 1);
    let ended = fake.force_gone_with(0, Some("pods"), true);
    assert_eq!(ended["active_ended"], 1);
    let mut body = String::new();
    std::io::Read::read_to_string(&mut watcher.child.stdout.take().expect("stdout"), &mut body)
        .expect("read");
    assert!(started.elapsed() < Duration::from_secs(20));
    let events = lines(&body);
    assert_eq!(
        events.last().expect("an event")["object"]["code"],
        410,
        "{body}"
    );
    assert!(fake.watches().is_empty());

    // A stalled watch: nothing arrives, not even the end at its timeout, until released.
    fake.set_stall(true);
    let started = Instant::now();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--no-buffer", "--cacert"])
        .arg(&fake.certs.ca)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!(
            "{}/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=1",
            fake.url()
        ))
        .stdout(Stdio::piped());
    let mut stalled = Proc::spawn("curl-stalled", &mut cmd);
    fake.wait_watches(Duration::from_secs(15), |w| w.len() == 1);
    fake.add_pod(&PodBuilder::new(
        Workload::Bare("unseen".into()),
        "default",
        NODE,
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(stalled.is_running(), "a stalled watch must not end");
    fake.set_stall(false);
    let mut body = String::new();
    std::io::Read::read_to_string(&mut stalled.child.stdout.take().expect("stdout"), &mut body)
        .expect("read");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        lines(&body)[0]["object"]["metadata"]["name"],
        "unseen",
        "{body}"
    );

    // A slow server.
    fake.set_delay(1.0);
    let started = Instant::now();
    let (code, _) = curl(&fake, "/api/v1/pods", Some(TOKEN), Duration::from_secs(20));
    assert_eq!(code, 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
    fake.set_delay(0.0);

    fake.set_down(true);
    let (code, _) = curl(&fake, "/api/v1/pods", Some(TOKEN), Duration::from_secs(20));
    assert_eq!(code, 0, "connections must be refused");
    fake.set_down(false);
    let (code, _) = curl(&fake, "/api/v1/pods", Some(TOKEN), Duration::from_secs(20));
    assert_eq!(code, 200);
    fake.set_unavailable(true);
    let (code, body) = curl(&fake, "/api/v1/pods", Some(TOKEN), Duration::from_secs(20));
    assert_eq!(code, 503, "{body}");
    fake.set_unavailable(false);
    let (code, _) = curl(&fake, "/version", Some(TOKEN), Duration::from_secs(20));
    assert_eq!(code, 200);
}

#[test]
fn in_cluster_layout_and_a_thousand_pods() {
    let fake = FakeKube::start_with(&bulk_pods(NODE, 1000));
    let sa = fake.in_cluster(&fake.dir.path("serviceaccount"), "sonde");
    // A pod-like process reads the standard paths; curl with them reaches the fake.
    let mut cmd = sa.command("sh");
    cmd.arg("-c").arg(format!(
        "curl -sS --cacert {m}/ca.crt -H \"Authorization: Bearer $(cat {m}/token)\" \
         \"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}\" \
         && cat {m}/namespace",
        m = InCluster::MOUNT
    ));
    let out = sonde_e2e::peers::run_bounded("in-cluster curl", &mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (list, ns) = text
        .rsplit_once('}')
        .expect("a JSON list then the namespace");
    assert_eq!(ns, "sonde");
    let list: Value = serde_json::from_str(&format!("{list}}}")).expect("PodList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1000));
    assert!(
        !std::path::Path::new(InCluster::MOUNT).exists(),
        "the host's /run must be untouched"
    );
}

#[test]
fn a_process_in_a_kubepods_cgroup_shows_that_path_and_relative_from_a_cgroup_namespace() {
    let pod = PodBuilder::new(Workload::Deployment("cg".into()), "default", NODE);
    let cgroup = TestCgroup::for_pod(&pod);
    let expected = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
        pod.uid.replace('-', "_"),
        pod.container_id()
    );
    assert_eq!(cgroup.relative, expected);
    // Moved in after start.
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let sleeper = Proc::spawn("sleep", &mut cmd);
    cgroup.add(sleeper.pid());
    assert_eq!(cgroup_of(sleeper.pid()), expected);
    // Started inside (same pid after exec).
    let mut cmd = cgroup.command("sleep");
    cmd.arg("30");
    let inside = Proc::spawn("sleep-inside", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup_of(inside.pid()) != expected {
        assert!(Instant::now() < deadline, "{}", cgroup_of(inside.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cgroup.pids().contains(&inside.pid()));
    // A reader in a private cgroup namespace rooted at another pod's cgroup.
    let other = PodBuilder::new(Workload::Bare("agent".into()), "sonde", NODE);
    let agent = TestCgroup::for_pod(&other);
    let seen = cgroup_seen_from(&agent, sleeper.pid());
    assert!(seen.starts_with("/.."), "{seen}");
    assert_eq!(
        seen,
        format!(
            "/../../{}",
            expected.trim_start_matches("/kubepods.slice/kubepods-besteffort.slice/")
        )
    );
    // The loader's parser finds the container in both views (`loader/src/cgroup.rs`).
    for path in [&expected, &seen] {
        assert_eq!(
            sonde_loader::cgroup::container_id_from(&format!("0::{path}\n")).as_deref(),
            Some(pod.container_id()),
            "{path}"
        );
    }
    // Its own processes are at `/` there.
    let own = sonde_e2e::kube::run_in_cgroup_namespace(&agent, "cat", &["/proc/self/cgroup"]);
    assert!(String::from_utf8_lossy(&own.stdout).contains("0::/\n"));
    // A long-running agent in that namespace (same pid after exec).
    let mut cmd = agent.command_in_namespace("sleep");
    cmd.arg("30");
    let in_ns = Proc::spawn("sleep-in-namespace", &mut cmd);
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("ns link");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns(&in_ns.pid().to_string()) == ns("self") {
        assert!(
            Instant::now() < deadline,
            "never entered a cgroup namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cgroup_of(in_ns.pid()), agent.relative);
    drop(in_ns);
    let path = cgroup.path.clone();
    drop(sleeper);
    drop(inside);
    drop(cgroup);
    drop(agent);
    assert!(!path.exists(), "{} was not removed", path.display());
}
