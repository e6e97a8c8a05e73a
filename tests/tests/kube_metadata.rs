//! Kubernetes metadata end to end: real `sonde` (single host, real eBPF) instruments a Python
//! server placed in a kubelet + containerd shaped cgroup, and the processor follows the fake
//! API server (`tests/peers/fake_kube_api.py`, HTTPS + bearer token, through a kubeconfig):
//! exact `k8s.*` resource attributes on OTLP spans and metrics, `k8s_*` labels and a
//! per-service `target_info` in Prometheus, names from the ladder's Kubernetes rungs; a pod
//! deleted and re-created under a new name; the API server down at start (spans flow without
//! metadata, one warning, metadata once it is up); a forced `410 Gone` re-lists.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde_e2e::{
    kube::{FakeKube, PodBuilder, TestCgroup, Workload, namespace, node},
    otlp::Receiver,
    peers::http_get,
    *,
};

const NODE: &str = "sonde-e2e-node";
const CLUSTER: &str = "e2e-cluster";

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

/// `sonde --open-port <port>` decorating from `fake`, exporting to `receiver` and serving
/// Prometheus on `metrics_port`.
fn start_sonde(
    dir: &TempDir,
    fake: &FakeKube,
    receiver: &Receiver,
    metrics_port: u16,
    port: u16,
    server: u32,
) -> Sonde {
    let kubeconfig = fake.kubeconfig();
    let traces = format!("http://127.0.0.1:{}/v1/traces", receiver.http_port);
    let metrics = format!("http://127.0.0.1:{}/v1/metrics", receiver.http_port);
    let prom = metrics_port.to_string();
    Sonde::start(
        &["--open-port", &port.to_string()],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf-8")),
            ("K8S_NODE_NAME", NODE),
            ("BEYLA_KUBE_CLUSTER_NAME", CLUSTER),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &metrics),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("BEYLA_PROMETHEUS_PORT", &prom),
        ],
        dir,
        &[server],
    )
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

/// Waits until Prometheus text on `metrics_port` has a line starting with `prefix` and
/// containing every one of `parts`; returns it.
fn wait_prometheus_line(metrics_port: u16, prefix: &str, parts: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(metrics_port, "/metrics");
        if let Some(l) = text
            .lines()
            .find(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p.as_str())))
        {
            return l.to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no {prefix} line with {parts:?} in:\n{text}");
}

/// The Kubernetes attributes a span's resource (or a point's) must carry for `pod`'s first
/// container.
fn expected_deployment_attributes(
    pod: &PodBuilder,
    deployment: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("k8s.namespace.name", pod.namespace.clone()),
        ("k8s.pod.name", pod.name.clone()),
        ("k8s.pod.uid", pod.uid.clone()),
        ("k8s.container.name", "app".to_string()),
        ("k8s.node.name", NODE.to_string()),
        (
            "k8s.replicaset.name",
            pod.replicaset_name().expect("a Deployment's pod"),
        ),
        ("k8s.deployment.name", deployment.to_string()),
        ("k8s.owner.name", deployment.to_string()),
        ("k8s.kind", "Deployment".to_string()),
        ("k8s.cluster.name", CLUSTER.to_string()),
        ("container.id", pod.container_id().to_string()),
    ]
}

#[test]
fn pod_metadata_reaches_spans_metrics_and_prometheus() {
    let _guard = serial();
    let dir = TempDir::new("kube-meta");
    let pod = PodBuilder::new(Workload::Deployment("checkout".into()), "shop", NODE)
        .label("app.kubernetes.io/part-of", "store");
    let mut objects = vec![node(NODE), namespace("shop")];
    objects.extend(pod.objects());
    // Another node's pod with the same container name is not this process's.
    objects.extend(
        PodBuilder::new(
            Workload::Deployment("checkout".into()),
            "shop",
            "other-node",
        )
        .objects(),
    );
    let fake = FakeKube::start_with(&objects);
    let cgroup = TestCgroup::for_pod(&pod);
    let port = free_port();
    let server = server_in(&cgroup, port);
    let receiver = Receiver::start(&dir, 0, free_port());
    let metrics_port = free_port();
    let sonde = start_sonde(&dir, &fake, &receiver, metrics_port, port, server.pid());
    sonde.wait_log(
        "Kubernetes metadata: pods of this node listed",
        Duration::from_secs(20),
    );
    // The pipeline looks processes up at its next pass (every 50 ms at most).
    std::thread::sleep(Duration::from_millis(300));
    requests(port, "/ok/k8s", 3);

    let spans = receiver.wait_spans(3, Duration::from_secs(20), |s| {
        s["attributes"]["url.path"] == "/ok/k8s"
    });
    assert_eq!(spans.len(), 3, "{spans:#?}");
    for s in &spans {
        let res = &s["resource"];
        for (k, v) in expected_deployment_attributes(&pod, "checkout") {
            assert_eq!(res[k], v.as_str(), "{k} in {res}");
        }
        // The ladder: no selector name, no OTEL_SERVICE_NAME, no annotation or
        // app.kubernetes.io/name label: the Deployment names the service; part-of its namespace.
        assert_eq!(res["service.name"], "checkout", "{res}");
        assert_eq!(res["service.namespace"], "store", "{res}");
    }
    // The printed spans carry the same service.
    let printed = sonde.wait_spans(3, Duration::from_secs(5), |s| s["path"] == "/ok/k8s");
    assert!(
        printed.iter().all(|s| s["service_name"] == "checkout"),
        "{printed:#?}"
    );
    // OTLP metrics: the process's resource carries the metadata.
    let points = receiver.wait_points(
        "http.server.request.duration",
        3,
        Duration::from_secs(20),
        |p| p["resource"]["k8s.pod.name"] == pod.name.as_str(),
    );
    let total: u64 = points.iter().filter_map(|p| p["count"].as_u64()).sum();
    assert_eq!(total, 3, "{points:#?}");
    for p in &points {
        for (k, v) in expected_deployment_attributes(&pod, "checkout") {
            assert_eq!(p["resource"][k], v.as_str(), "{k} in {p}");
        }
    }
    // Prometheus: the series carry the labels (dots as underscores), and target_info names
    // the service with them.
    let labels: Vec<String> = expected_deployment_attributes(&pod, "checkout")
        .into_iter()
        .map(|(k, v)| format!("{}=\"{v}\"", k.replace('.', "_")))
        .collect();
    let line = wait_prometheus_line(
        metrics_port,
        "http_server_request_duration_seconds_count{",
        &labels,
    );
    assert!(line.contains("service_name=\"checkout\""), "{line}");
    assert!(line.ends_with(" 3"), "{line}");
    let mut info_parts = labels.clone();
    info_parts.push("service_name=\"checkout\"".into());
    info_parts.push("service_namespace=\"store\"".into());
    let info = wait_prometheus_line(metrics_port, "target_info{", &info_parts);
    assert!(info.ends_with(" 1"), "{info}");

    // Only this node's pods were asked for, and only reads of pods, ReplicaSets and Jobs.
    let reqs = fake.requests();
    let pods: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/pods")))
        .collect();
    assert!(!pods.is_empty(), "{reqs:#?}");
    for r in &pods {
        assert_eq!(
            r["query"]["fieldSelector"],
            format!("spec.nodeName={NODE}"),
            "{r}"
        );
    }
    for r in &reqs {
        let path = r["path"].as_str().unwrap_or_default();
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["auth"], "ok", "{r}");
        assert!(
            path == "/api/v1/pods"
                || path == "/apis/apps/v1/replicasets"
                || path == "/apis/batch/v1/jobs",
            "unexpected request {r}"
        );
    }
    drop(sonde);
}

#[test]
fn a_pod_recreated_under_a_new_name_renames_the_process() {
    let _guard = serial();
    let dir = TempDir::new("kube-rename");
    let first = PodBuilder::new(Workload::Bare("solo-one".into()), "default", NODE);
    let fake = FakeKube::start_with(&[node(NODE), namespace("default"), first.pod()]);
    let cgroup = TestCgroup::for_pod(&first);
    let port = free_port();
    let server = server_in(&cgroup, port);
    let receiver = Receiver::start(&dir, 0, free_port());
    let sonde = start_sonde(&dir, &fake, &receiver, free_port(), port, server.pid());
    sonde.wait_log(
        "Kubernetes metadata: pods of this node listed",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(300));
    requests(port, "/ok/one", 2);
    // A bare pod: no owner, so the pod's name names the service.
    let one = sonde.wait_spans(2, Duration::from_secs(10), |s| s["path"] == "/ok/one");
    assert!(
        one.iter().all(|s| s["service_name"] == "solo-one"),
        "{one:#?}"
    );
    // Deleted, then re-created under another name with the same container (what a test can
    // do with one process; a real re-creation has new containers and processes too).
    fake.delete_pod("default", "solo-one");
    let mut second = PodBuilder::new(Workload::Bare("solo-two".into()), "default", NODE);
    second.containers = first.containers.clone();
    fake.apply(&[second.pod()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        requests(port, "/ok/two", 1);
        let renamed = sonde
            .spans()
            .iter()
            .any(|s| s["path"] == "/ok/two" && s["service_name"] == "solo-two");
        if renamed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never renamed: {:#?}",
            sonde.spans()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let spans = receiver.wait_spans(1, Duration::from_secs(20), |s| {
        s["resource"]["k8s.pod.name"] == "solo-two"
    });
    let res = &spans[0]["resource"];
    assert_eq!(res["service.name"], "solo-two", "{res}");
    assert_eq!(res["k8s.pod.uid"], second.uid.as_str(), "{res}");
    assert_eq!(res["container.id"], first.container_id(), "{res}");
    // No owner: neither k8s.owner.name nor k8s.kind.
    assert!(res.get("k8s.owner.name").is_none(), "{res}");
    assert!(res.get("k8s.kind").is_none(), "{res}");
    drop(sonde);
}

#[test]
fn api_server_down_at_start_then_up_and_a_forced_410_relists() {
    let _guard = serial();
    let dir = TempDir::new("kube-down");
    let pod = PodBuilder::new(Workload::StatefulSet("ledger".into(), 0), "bank", NODE)
        .service_name("ledger-svc");
    let mut objects = vec![node(NODE), namespace("bank")];
    objects.extend(pod.objects());
    let fake = FakeKube::start_with(&objects);
    fake.set_down(true);
    let cgroup = TestCgroup::for_pod(&pod);
    let port = free_port();
    let server = server_in(&cgroup, port);
    let receiver = Receiver::start(&dir, 0, free_port());
    let sonde = start_sonde(&dir, &fake, &receiver, free_port(), port, server.pid());
    let exe = exe_name(server.pid());
    // Spans flow without Kubernetes metadata meanwhile.
    requests(port, "/ok/down", 3);
    let down = receiver.wait_spans(3, Duration::from_secs(20), |s| {
        s["attributes"]["url.path"] == "/ok/down"
    });
    assert_eq!(down.len(), 3, "{down:#?}");
    for s in &down {
        assert_eq!(s["resource"]["service.name"], exe.as_str(), "{s}");
        assert!(
            s["resource"]
                .as_object()
                .is_some_and(|r| !r.keys().any(|k| k.starts_with("k8s."))),
            "{s}"
        );
    }
    // Let the watchers retry a few times: still one warning (not one per watcher or retry).
    std::thread::sleep(Duration::from_secs(3));
    let warnings: Vec<String> = sonde
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("Kubernetes API unreachable"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:#?}");
    // Up again: the watchers' backoff (at most 10 s) finds it; metadata appears.
    fake.set_down(false);
    sonde.wait_log(
        "Kubernetes metadata: pods of this node listed",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    requests(port, "/ok/up", 2);
    let up = receiver.wait_spans(2, Duration::from_secs(20), |s| {
        s["attributes"]["url.path"] == "/ok/up"
    });
    for s in &up {
        let res = &s["resource"];
        // The annotation is the ladder's first Kubernetes rung.
        assert_eq!(res["service.name"], "ledger-svc", "{res}");
        assert_eq!(res["service.namespace"], "bank", "{res}");
        assert_eq!(res["k8s.statefulset.name"], "ledger", "{res}");
        assert_eq!(res["k8s.owner.name"], "ledger", "{res}");
        assert_eq!(res["k8s.kind"], "StatefulSet", "{res}");
        assert_eq!(res["k8s.pod.name"], "ledger-0", "{res}");
    }

    // A 410 on the open pod watch: the watcher lists again, and a change made meanwhile is
    // seen.
    fake.clear_requests();
    fake.force_gone_with(1, Some("pods"), true);
    let relabelled = pod.clone().service_name("ledger-v2");
    fake.apply(&[relabelled.pod()]);
    sonde.wait_log("410 Gone", Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        requests(port, "/ok/relisted", 1);
        if sonde
            .spans()
            .iter()
            .any(|s| s["path"] == "/ok/relisted" && s["service_name"] == "ledger-v2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change after the 410 was never seen:\n{}",
            sonde.log_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The change may reach the watcher on the open watch just before its 410 (the fake sends
    // what history holds first), and the list then follows the watcher's backoff: wait for
    // it rather than look once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lists = fake
            .requests()
            .into_iter()
            .filter(|r| r["path"] == "/api/v1/pods" && r["watch"] == false)
            .count();
        if lists >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new list of pods within 20 s of the 410: {:#?}",
            fake.requests()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(sonde);
}

/// In-cluster configuration, as in a pod: `KUBERNETES_SERVICE_HOST`/`PORT` and the service
/// account mounted at `/var/run/secrets/kubernetes.io/serviceaccount` (a private mount
/// namespace here). The client reads the token after the sandbox is applied (Landlock allows
/// that directory, so a rotated token is read too) and connects to the service's port only.
#[test]
fn in_cluster_service_account_works_under_the_sandbox() {
    let _guard = serial();
    let dir = TempDir::new("kube-incluster");
    let pod = PodBuilder::new(Workload::CronJob("nightly".into()), "batch-jobs", NODE);
    let mut objects = vec![node(NODE), namespace("batch-jobs")];
    objects.extend(pod.objects());
    let fake = FakeKube::start_with(&objects);
    let in_cluster = fake.in_cluster(&dir.path("serviceaccount"), "sonde");
    let cgroup = TestCgroup::for_pod(&pod);
    let port = free_port();
    let server = server_in(&cgroup, port);
    let receiver = Receiver::start(&dir, 0, free_port());
    ensure_system_user(LOADER_USER);
    let mut cmd = in_cluster.command(binary("sonde"));
    cmd.args(["--open-port", &port.to_string()]);
    let traces = format!("http://127.0.0.1:{}/v1/traces", receiver.http_port);
    let mut env: Vec<(&str, &str)> = in_cluster
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("K8S_NODE_NAME", NODE),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let sonde = Sonde::attach("sonde", cmd, &env, dir.path("control.sock"));
    sonde.wait_log("processor connected", Duration::from_secs(30));
    sonde.wait_selected(server.pid());
    let on = sonde.wait_log("Kubernetes metadata on", Duration::from_secs(10));
    assert!(on.contains("in-cluster service account"), "{on}");
    sonde.wait_log(
        "Kubernetes metadata: pods of this node listed",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(300));
    requests(port, "/ok/in-cluster", 2);
    let spans = receiver.wait_spans(2, Duration::from_secs(20), |s| {
        s["attributes"]["url.path"] == "/ok/in-cluster"
    });
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for s in &spans {
        let res = &s["resource"];
        assert_eq!(res["k8s.namespace.name"], "batch-jobs", "{res}");
        assert_eq!(res["k8s.pod.name"], pod.name.as_str(), "{res}");
        assert_eq!(res["k8s.job.name"], "nightly-29412345", "{res}");
        assert_eq!(res["k8s.cronjob.name"], "nightly", "{res}");
        assert_eq!(res["k8s.owner.name"], "nightly", "{res}");
        assert_eq!(res["k8s.kind"], "CronJob", "{res}");
        // No cluster name configured: none on the resource.
        assert!(res.get("k8s.cluster.name").is_none(), "{res}");
        assert_eq!(res["service.name"], "nightly", "{res}");
        assert_eq!(res["service.namespace"], "batch-jobs", "{res}");
    }
    // The fake saw the service account's token on every request.
    assert!(fake.requests().iter().all(|r| r["auth"] == "ok"));
    drop(sonde);
}
