//! Kubernetes without a cluster: the fake API server `tests/peers/fake_kube_api.py` (HTTPS with
//! a per-test CA, bearer token, lists, watches, 410, outages) with a client for its control
//! port, kubeconfig and in-cluster (service-account directory + env) writers, builders for pods
//! and their owners as the API returns them, and cgroup helpers that put a process where a
//! kubelet (systemd driver) + containerd would: `kubepods.slice/…/cri-containerd-<id>.scope`.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    Proc, TempDir, free_port,
    peers::{peer, run_bounded, spawn_ready},
    python,
};

// ------------------------------------------------------------------------------ certificates

/// A CA and a server certificate it signed (EC P-256; subjectAltName IP 127.0.0.1, localhost,
/// kubernetes.default.svc, kubernetes.default, kubernetes), PEM files in a directory.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&OsStr]) {
    let out = run_bounded(
        "openssl",
        Command::new("openssl").args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl {:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates a fresh CA and a server certificate for 127.0.0.1 into `dir` with the openssl CLI.
pub fn make_certs(dir: &Path) -> Certs {
    let c = Certs {
        ca: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let csr = dir.join("server.csr");
    let ext = dir.join("server-ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,\
         DNS:kubernetes.default,DNS:kubernetes\n",
    )
    .expect("write the extension file");
    let s = |x: &'static str| OsStr::new(x);
    let ec = [
        s("-newkey"),
        s("ec"),
        s("-pkeyopt"),
        s("ec_paramgen_curve:prime256v1"),
        s("-nodes"),
    ];
    let mut ca_args = vec![s("req"), s("-x509")];
    ca_args.extend(ec);
    ca_args.extend([
        s("-keyout"),
        c.ca_key.as_os_str(),
        s("-out"),
        c.ca.as_os_str(),
        s("-days"),
        s("3"),
        s("-subj"),
        s("/CN=sonde-e2e-kubernetes-ca"),
        s("-addext"),
        s("basicConstraints=critical,CA:TRUE"),
        s("-addext"),
        s("keyUsage=critical,keyCertSign,cRLSign"),
    ]);
    openssl(&ca_args);
    let mut req_args = vec![s("req"), s("-new")];
    req_args.extend(ec);
    req_args.extend([
        s("-keyout"),
        c.key.as_os_str(),
        s("-out"),
        csr.as_os_str(),
        s("-subj"),
        s("/CN=kube-apiserver"),
    ]);
    openssl(&req_args);
    openssl(&[
        s("x509"),
        s("-req"),
        s("-in"),
        csr.as_os_str(),
        s("-CA"),
        c.ca.as_os_str(),
        s("-CAkey"),
        c.ca_key.as_os_str(),
        s("-CAcreateserial"),
        s("-out"),
        c.cert.as_os_str(),
        s("-days"),
        s("3"),
        s("-extfile"),
        ext.as_os_str(),
    ]);
    // Readable by an unprivileged processor user.
    for p in [&c.ca, &c.cert, &c.key] {
        let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    }
    c
}

// ------------------------------------------------------------------------------ the fake

/// A running `fake_kube_api.py`, killed on drop, with its certificates in its own `TempDir`.
pub struct FakeKube {
    pub proc: Proc,
    /// The HTTPS API port on 127.0.0.1.
    pub port: u16,
    /// The plain-HTTP control port on 127.0.0.1.
    pub control_port: u16,
    pub token: String,
    pub certs: Certs,
    pub dir: TempDir,
}

/// The token the fake accepts unless a test picks another.
pub const TOKEN: &str = "sonde-e2e-service-account-token";

impl FakeKube {
    /// Starts the fake with no objects.
    pub fn start() -> FakeKube {
        FakeKube::start_with(&[])
    }

    /// Starts the fake serving `objects` (resourceVersion 2 onwards, in order).
    pub fn start_with(objects: &[Value]) -> FakeKube {
        let dir = TempDir::new("fake-kube");
        let objects_file = dir.path("objects.json");
        std::fs::write(&objects_file, Value::Array(objects.to_vec()).to_string())
            .expect("write objects");
        FakeKube::start_with_file(dir, &objects_file, &[])
    }

    /// Starts the fake in `dir` serving the objects in `objects_file` (a JSON list or a List),
    /// with `extra_args` (`--bookmark-interval`, `--verbose`).
    pub fn start_with_file(dir: TempDir, objects_file: &Path, extra_args: &[&str]) -> FakeKube {
        let certs = make_certs(&dir.0);
        let port = free_port();
        let mut control_port = free_port();
        while control_port == port {
            control_port = free_port();
        }
        let mut cmd = Command::new(python());
        cmd.arg(peer("fake_kube_api.py"))
            .args(["--port", &port.to_string()])
            .args(["--control-port", &control_port.to_string()])
            .args(["--token", TOKEN])
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--objects")
            .arg(objects_file)
            .args(extra_args);
        let proc = spawn_ready("fake-kube-api", &mut cmd);
        FakeKube {
            proc,
            port,
            control_port,
            token: TOKEN.to_string(),
            certs,
            dir,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// One control call: `method` `path` with an optional JSON body; the JSON answer. Panics
    /// unless the answer is 200.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = control_call(self.control_port, method, path, body);
        assert_eq!(status, 200, "control {method} {path}: {v}");
        v
    }

    /// Adds or replaces objects (each one: a new resourceVersion and ADDED or MODIFIED for
    /// watchers). Returns the resourceVersion after the last one.
    pub fn apply(&self, objects: &[Value]) -> u64 {
        let v = self.control("POST", "/apply", Some(&Value::Array(objects.to_vec())));
        rv_of(&v)
    }

    /// Adds a pod with its owners (owners first, as controllers create them).
    pub fn add_pod(&self, pod: &PodBuilder) -> u64 {
        self.apply(&pod.objects())
    }

    /// Deletes an object of `kind` (`Pod`, `ReplicaSet`, … or the plural); `namespace` is
    /// ignored for cluster-scoped kinds. `graceful`: a MODIFIED with `deletionTimestamp` first.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str, graceful: bool) -> u64 {
        let v = self.control(
            "POST",
            "/delete",
            Some(
                &json!({"kind": kind, "namespace": namespace, "name": name, "graceful": graceful}),
            ),
        );
        assert_eq!(v["deleted"], 1, "no {kind} {namespace}/{name} to delete");
        rv_of(&v)
    }

    /// Deletes a pod (no grace period: one DELETED event).
    pub fn delete_pod(&self, namespace: &str, name: &str) -> u64 {
        self.delete("Pod", namespace, name, false)
    }

    /// The next watch request (of any resource) answers one ERROR event (410 Expired) and ends.
    pub fn force_gone(&self) {
        self.force_gone_with(1, None, false);
    }

    /// The next `count` watches of `resource` (`pods`, …; any if `None`) answer 410; `active`:
    /// the open watches of that resource get the 410 ERROR event now and end too.
    pub fn force_gone_with(&self, count: u32, resource: Option<&str>, active: bool) -> Value {
        self.control(
            "POST",
            "/gone",
            Some(&json!({"count": count, "resource": resource, "active": active})),
        )
    }

    /// Forgets the event history (as an etcd compaction): watches from an older
    /// resourceVersion get 410, continue tokens expire.
    pub fn compact(&self) {
        self.control("POST", "/compact", None);
    }

    /// `true`: connections are refused (the listening socket is closed, open connections and
    /// watches are cut); `false`: serving again on the same port.
    pub fn set_down(&self, down: bool) {
        self.control(
            "POST",
            "/down",
            Some(&json!({"down": down, "mode": "refuse"})),
        );
    }

    /// `true`: every API request answers 503 ServiceUnavailable; `false`: normal again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.control(
            "POST",
            "/down",
            Some(&json!({"down": unavailable, "mode": "503"})),
        );
    }

    /// Seconds between BOOKMARK events on watches that allow them (default 1).
    pub fn set_bookmark_interval(&self, seconds: f64) {
        self.control(
            "POST",
            "/config",
            Some(&json!({"bookmark_interval": seconds})),
        );
    }

    /// Waits `seconds` before answering every API request (0: answer at once).
    pub fn set_delay(&self, seconds: f64) {
        self.control("POST", "/config", Some(&json!({"delay": seconds})));
    }

    /// `true`: open watches go silent (no events, no bookmarks, no end at their timeout), as
    /// a dead peer behind a half-open connection; `false`: they carry on.
    pub fn set_stall(&self, stall: bool) {
        self.control("POST", "/config", Some(&json!({"stall": stall})));
    }

    /// Every API request so far: `{"method","path","query":{..},"auth":"ok|missing|wrong",
    /// "status","watch","user_agent","accept","time"}`.
    pub fn requests(&self) -> Vec<Value> {
        match self.control("GET", "/requests", None) {
            Value::Array(a) => a,
            v => panic!("requests: {v}"),
        }
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.control("POST", "/requests/clear", None);
    }

    /// The watches open now: `{"id","resource","namespace","query","since","started"}`.
    pub fn watches(&self) -> Vec<Value> {
        match self.control("GET", "/watches", None) {
            Value::Array(a) => a,
            v => panic!("watches: {v}"),
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        rv_of(&self.control("GET", "/state", None))
    }

    /// Waits (bounded) until `pred` holds for the open watches.
    pub fn wait_watches(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let w = self.watches();
            if pred(&w) {
                return w;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "watches never matched within {timeout:?}: {w:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A kubeconfig (token auth, the CA file) written into the fake's directory.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path("kubeconfig");
        self.write_kubeconfig(&path, &self.token);
        path
    }

    /// Writes a kubeconfig for the fake at `path` with `token` (context `fake`, namespace
    /// `default`).
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: sonde\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sonde\n    namespace: default\ncurrent-context: fake\n",
            url = self.url(),
            ca = self.certs.ca.display(),
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// A kubeconfig whose user reads the token from a file (`tokenFile`), both written into
    /// the fake's directory: (kubeconfig, token file).
    pub fn kubeconfig_with_token_file(&self) -> (PathBuf, PathBuf) {
        let token_dir = self.dir.path("token-dir");
        std::fs::create_dir_all(&token_dir).expect("token dir");
        let token_file = token_dir.join("token");
        std::fs::write(&token_file, &self.token).expect("token file");
        let path = self.dir.path("kubeconfig-token-file");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: sonde\n  user:\n    tokenFile: {tf}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sonde\n    namespace: default\ncurrent-context: fake\n",
            url = self.url(),
            ca = self.certs.ca.display(),
            tf = token_file.display(),
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        (path, token_file)
    }

    /// The in-cluster layout under `dir` (as mounted at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`): `token`, `ca.crt`, `namespace`.
    pub fn in_cluster(&self, dir: &Path, namespace: &str) -> InCluster {
        std::fs::create_dir_all(dir).expect("service account dir");
        std::fs::write(dir.join("token"), &self.token).expect("token");
        std::fs::copy(&self.certs.ca, dir.join("ca.crt")).expect("ca.crt");
        std::fs::write(dir.join("namespace"), namespace).expect("namespace");
        for f in ["token", "ca.crt", "namespace"] {
            let _ = std::fs::set_permissions(
                dir.join(f),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            );
        }
        InCluster {
            dir: dir.to_path_buf(),
            env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
                ("KUBERNETES_SERVICE_PORT".into(), self.port.to_string()),
                (
                    "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                    self.port.to_string(),
                ),
            ],
        }
    }

    /// `kubectl --kubeconfig <ours> <args>`, bounded by `timeout`.
    pub fn kubectl(&self, args: &[&str], timeout: Duration) -> Output {
        let kubeconfig = self.kubeconfig();
        run_bounded(
            "kubectl",
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args),
            timeout,
        )
    }
}

/// A service-account directory and the environment a pod's process gets with it.
#[derive(Debug, Clone)]
pub struct InCluster {
    /// Holds `token`, `ca.crt`, `namespace`.
    pub dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`, `KUBERNETES_SERVICE_PORT_HTTPS`.
    pub env: Vec<(String, String)>,
}

impl InCluster {
    /// The standard mount point of the service-account directory.
    pub const MOUNT: &'static str = "/var/run/secrets/kubernetes.io/serviceaccount";

    /// `program` run in a private mount namespace where `dir` is bind-mounted over
    /// [`InCluster::MOUNT`] (a tmpfs on `/run/secrets` first, so the host's /run is untouched),
    /// with the env set: what a client reading the fixed in-cluster paths (kube's
    /// `Config::incluster`) sees in a pod. Add arguments to the returned command.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "set -e; mkdir -p /run/secrets 2>/dev/null || true; \
                 mount -t tmpfs -o mode=0755 sonde-e2e-secrets /run/secrets; \
                 mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
                 mount --bind \"$0\" /run/secrets/kubernetes.io/serviceaccount; exec \"$@\"",
            )
            .arg(&self.dir)
            .arg(program.as_ref());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

fn rv_of(v: &Value) -> u64 {
    v["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

/// A plain HTTP/1.0 request to the control port: (status, JSON body).
pub fn control_call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the control port");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the control answer");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    )
}

/// A raw HTTPS GET against the fake with `curl` (`token`: the bearer token, if any): (status,
/// body). Watches end at their `timeoutSeconds`; `timeout` bounds the whole call.
pub fn curl(
    fake: &FakeKube,
    target: &str,
    token: Option<&str>,
    timeout: Duration,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--no-buffer", "-w", "\n%{http_code}", "--cacert"])
        .arg(&fake.certs.ca)
        .arg(format!("{}{target}", fake.url()));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = run_bounded("curl", &mut cmd, timeout);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

// ------------------------------------------------------------------------------ objects

/// A deterministic hex string of `n` digits from `seed` (splitmix64 over an FNV-1a hash).
pub fn hex_id(seed: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(n);
    out
}

/// A deterministic RFC 4122-shaped uid from `seed`.
pub fn uid(seed: &str) -> String {
    let h = hex_id(&format!("uid:{seed}"), 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A 5-character pod-name suffix as controllers generate them (consonants and digits).
fn name_suffix(seed: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hex_id(&format!("sfx:{seed}"), 10)
        .bytes()
        .take(5)
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// What owns a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Deployment `name` → ReplicaSet `name-<hash>` → pod `name-<hash>-<suffix>`.
    Deployment(String),
    /// DaemonSet `name` → pod `name-<suffix>`.
    DaemonSet(String),
    /// StatefulSet `name` → pod `name-<ordinal>`.
    StatefulSet(String, u32),
    /// CronJob `name` → Job `name-<scheduled time>` → pod `<job>-<suffix>`.
    CronJob(String),
    /// Job `name` → pod `name-<suffix>`.
    Job(String),
    /// A pod nobody owns, named `name`.
    Bare(String),
}

/// A pod (and its owners) as the API server returns them. Defaults: namespace `default`, one
/// container `app`, phase Running, a 10.244.x.y IP, BestEffort QoS, ids derived from the names.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pub workload: Workload,
    pub namespace: String,
    pub node: String,
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub phase: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// (container name, 64-hex container id)
    pub containers: Vec<(String, String)>,
}

fn workload_name(w: &Workload) -> &str {
    match w {
        Workload::Deployment(n)
        | Workload::DaemonSet(n)
        | Workload::StatefulSet(n, _)
        | Workload::CronJob(n)
        | Workload::Job(n)
        | Workload::Bare(n) => n,
    }
}

const CREATED: &str = "2026-12-01T08:00:00Z";

impl PodBuilder {
    pub fn new(workload: Workload, namespace: &str, node: &str) -> PodBuilder {
        let base = workload_name(&workload).to_string();
        let seed = format!("{namespace}/{base}/{node}");
        let name = match &workload {
            Workload::Deployment(n) => format!(
                "{n}-{}-{}",
                hex_id(&format!("rs:{namespace}/{n}"), 10),
                name_suffix(&seed)
            ),
            Workload::DaemonSet(n) | Workload::Job(n) => format!("{n}-{}", name_suffix(&seed)),
            Workload::StatefulSet(n, i) => format!("{n}-{i}"),
            Workload::CronJob(n) => format!("{n}-29412345-{}", name_suffix(&seed)),
            Workload::Bare(n) => n.clone(),
        };
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), base.clone());
        let h = hex_id(&format!("ip:{namespace}/{name}"), 4);
        let ip = format!(
            "10.244.{}.{}",
            u8::from_str_radix(&h[..2], 16).unwrap_or(0) % 250,
            u8::from_str_radix(&h[2..], 16).unwrap_or(0) % 250 + 2
        );
        let mut p = PodBuilder {
            workload,
            namespace: namespace.to_string(),
            node: node.to_string(),
            uid: uid(&format!("{namespace}/{name}")),
            name,
            ip,
            phase: "Running".into(),
            labels,
            annotations: BTreeMap::new(),
            containers: Vec::new(),
        };
        p = p.container("app");
        p
    }

    /// Replaces the default containers with one named `name` (id derived from the names).
    pub fn container(mut self, name: &str) -> PodBuilder {
        self.containers = vec![(name.to_string(), self.container_id_for(name))];
        self
    }

    /// Adds a container named `name`.
    pub fn add_container(mut self, name: &str) -> PodBuilder {
        let id = self.container_id_for(name);
        self.containers.push((name.to_string(), id));
        self
    }

    fn container_id_for(&self, container: &str) -> String {
        hex_id(
            &format!("cid:{}/{}/{container}", self.namespace, self.name),
            64,
        )
    }

    pub fn label(mut self, k: &str, v: &str) -> PodBuilder {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> PodBuilder {
        self.annotations.insert(k.into(), v.into());
        self
    }

    /// The `resource.opentelemetry.io/service.name` annotation.
    pub fn service_name(self, name: &str) -> PodBuilder {
        self.annotation("resource.opentelemetry.io/service.name", name)
    }

    pub fn ip(mut self, ip: &str) -> PodBuilder {
        self.ip = ip.into();
        self
    }

    pub fn phase(mut self, phase: &str) -> PodBuilder {
        self.phase = phase.into();
        self
    }

    /// The first container's 64-hex id.
    pub fn container_id(&self) -> &str {
        &self.containers[0].1
    }

    /// The pod's controller objects, top-down (Deployment then ReplicaSet; CronJob then Job).
    pub fn owners(&self) -> Vec<Value> {
        let ns = &self.namespace;
        let app = workload_name(&self.workload).to_string();
        let selector = json!({"app": app});
        let make = |api: &str, kind: &str, name: &str, owner: Option<&Value>, spec: Value| {
            let mut meta = json!({
                "name": name, "namespace": ns, "uid": uid(&format!("{kind}:{ns}/{name}")),
                "creationTimestamp": CREATED, "generation": 1, "labels": {"app": app},
            });
            if let Some(o) = owner {
                meta["ownerReferences"] = json!([owner_ref(o)]);
            }
            json!({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec})
        };
        let template = json!({
            "metadata": {"labels": {"app": app}},
            "spec": {"containers": self.containers.iter()
                .map(|(c, _)| json!({"name": c, "image": format!("registry.example/{c}:1.0")}))
                .collect::<Vec<_>>()},
        });
        let spec = |extra: Value| {
            let mut s = json!({"selector": {"matchLabels": selector}, "template": template});
            if let (Some(s), Value::Object(e)) = (s.as_object_mut(), extra) {
                s.extend(e);
            }
            s
        };
        match &self.workload {
            Workload::Deployment(n) => {
                let d = make(
                    "apps/v1",
                    "Deployment",
                    n,
                    None,
                    spec(json!({"replicas": 1})),
                );
                let rs = make(
                    "apps/v1",
                    "ReplicaSet",
                    &self.replicaset_name().expect("a ReplicaSet"),
                    Some(&d),
                    spec(json!({"replicas": 1})),
                );
                vec![d, rs]
            }
            Workload::DaemonSet(n) => vec![make("apps/v1", "DaemonSet", n, None, spec(json!({})))],
            Workload::StatefulSet(n, _) => vec![make(
                "apps/v1",
                "StatefulSet",
                n,
                None,
                spec(json!({"replicas": 1, "serviceName": n})),
            )],
            Workload::CronJob(n) => {
                let cj = make(
                    "batch/v1",
                    "CronJob",
                    n,
                    None,
                    json!({"schedule": "*/5 * * * *",
                           "jobTemplate": {"spec": {"template": template}}}),
                );
                let job = make(
                    "batch/v1",
                    "Job",
                    &format!("{n}-29412345"),
                    Some(&cj),
                    json!({"template": template}),
                );
                vec![cj, job]
            }
            Workload::Job(n) => vec![make(
                "batch/v1",
                "Job",
                n,
                None,
                json!({"template": template}),
            )],
            Workload::Bare(_) => vec![],
        }
    }

    /// The ReplicaSet's name for a Deployment's pod.
    pub fn replicaset_name(&self) -> Option<String> {
        match &self.workload {
            Workload::Deployment(n) => Some(format!(
                "{n}-{}",
                hex_id(&format!("rs:{}/{n}", self.namespace), 10)
            )),
            _ => None,
        }
    }

    /// The pod object.
    pub fn pod(&self) -> Value {
        let owners = self.owners();
        let mut labels = self.labels.clone();
        match &self.workload {
            Workload::Deployment(_) => {
                let rs = self.replicaset_name().expect("rs");
                let hash = rs.rsplit('-').next().unwrap_or_default().to_string();
                labels.insert("pod-template-hash".into(), hash);
            }
            Workload::DaemonSet(n) => {
                labels.insert(
                    "controller-revision-hash".into(),
                    hex_id(&format!("cr:{n}"), 10),
                );
            }
            Workload::StatefulSet(_, i) => {
                labels.insert(
                    "statefulset.kubernetes.io/pod-name".into(),
                    self.name.clone(),
                );
                labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
            }
            Workload::CronJob(_) | Workload::Job(_) => {
                let job = owners.last().expect("job")["metadata"]["name"].clone();
                labels.insert("job-name".into(), job.as_str().unwrap_or_default().into());
                labels.insert(
                    "batch.kubernetes.io/job-name".into(),
                    job.as_str().unwrap_or_default().into(),
                );
            }
            Workload::Bare(_) => {}
        }
        let mut meta = json!({
            "name": self.name, "namespace": self.namespace, "uid": self.uid,
            "creationTimestamp": CREATED, "labels": labels,
        });
        if !self.annotations.is_empty() {
            meta["annotations"] = json!(self.annotations);
        }
        if let Some(owner) = owners.last() {
            meta["ownerReferences"] = json!([owner_ref(owner)]);
        }
        let running = self.phase == "Running";
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(c, id)| {
                json!({
                    "name": c,
                    "image": format!("registry.example/{c}:1.0"),
                    "imageID": format!("registry.example/{c}@sha256:{}", hex_id(&format!("img:{c}"), 64)),
                    "containerID": format!("containerd://{id}"),
                    "ready": running, "started": running, "restartCount": 0,
                    "state": if running { json!({"running": {"startedAt": CREATED}}) }
                             else { json!({"waiting": {"reason": "ContainerCreating"}}) },
                })
            })
            .collect();
        let job = matches!(self.workload, Workload::CronJob(_) | Workload::Job(_));
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "containers": self.containers.iter()
                    .map(|(c, _)| json!({"name": c, "image": format!("registry.example/{c}:1.0")}))
                    .collect::<Vec<_>>(),
                "restartPolicy": if job { "Never" } else { "Always" },
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
            },
            "status": {
                "phase": self.phase,
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": "192.168.49.2",
                "qosClass": "BestEffort",
                "startTime": CREATED,
                "containerStatuses": statuses,
            },
        })
    }

    /// Owners top-down, then the pod: the order to apply them in.
    pub fn objects(&self) -> Vec<Value> {
        let mut v = self.owners();
        v.push(self.pod());
        v
    }

    /// The kubelet (systemd driver) + containerd cgroup of the first container, relative to the
    /// cgroup v2 root: `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid
    /// with _>.slice/cri-containerd-<id>.scope`.
    pub fn cgroup_path(&self) -> String {
        kubepods_cgroup(&self.uid, self.container_id())
    }
}

fn owner_ref(o: &Value) -> Value {
    json!({
        "apiVersion": o["apiVersion"], "kind": o["kind"],
        "name": o["metadata"]["name"], "uid": o["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// A Node object.
pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": uid(&format!("node/{name}")), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]},
    })
}

/// A Namespace object.
pub fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": uid(&format!("ns/{name}")), "creationTimestamp": CREATED},
        "status": {"phase": "Active"},
    })
}

/// `n` pods of Deployments (10 pods each, over 20 namespaces) on `node`, with their
/// ReplicaSets and Deployments: the memory benchmark's cluster.
pub fn bulk_pods(node_name: &str, n: usize) -> Vec<Value> {
    let mut out = vec![node(node_name)];
    for i in 0..n {
        let d = i / 10;
        let mut p = PodBuilder::new(
            Workload::Deployment(format!("svc-{d:04}")),
            &format!("ns-{:02}", d % 20),
            node_name,
        )
        .service_name(&format!("svc-{d:04}"));
        p.name = format!(
            "{}-{}",
            p.replicaset_name().expect("rs"),
            name_suffix(&i.to_string())
        );
        p.uid = uid(&format!("{}/{}", p.namespace, p.name));
        p = p.container("app");
        if i % 10 == 0 {
            out.extend(p.owners());
        }
        out.push(p.pod());
    }
    out
}

// ------------------------------------------------------------------------------ cgroups

/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on a hybrid host, `/sys/fs/cgroup` on a
/// unified one), from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount))
        })
        .expect("no cgroup2 mount")
}

/// The systemd-driver kubelet + containerd cgroup path of a BestEffort pod's container.
pub fn kubepods_cgroup(pod_uid: &str, container_id: &str) -> String {
    let u = pod_uid.replace('-', "_");
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{container_id}.scope"
    )
}

/// The v2 line (`0::<path>`) of `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {text}"))
        .to_string()
}

/// A cgroup v2 directory created for a test (with the parents it had to create); processes
/// still in it go back to the root cgroup and the created directories are removed on drop.
pub struct TestCgroup {
    /// The absolute directory, under [`cgroup2_mount`].
    pub path: PathBuf,
    /// The path relative to the cgroup v2 root, starting with `/`.
    pub relative: String,
    created: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `relative` (e.g. `/kubepods.slice/…/cri-containerd-<id>.scope`) under the
    /// cgroup v2 mount.
    pub fn create(relative: &str) -> TestCgroup {
        let root = cgroup2_mount();
        let mut created = Vec::new();
        let mut p = root.clone();
        for part in relative.trim_start_matches('/').split('/') {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", p.display()));
                created.push(p.clone());
            }
        }
        TestCgroup {
            path: p,
            relative: format!("/{}", relative.trim_start_matches('/')),
            created,
        }
    }

    /// The cgroup of a pod's first container (BestEffort, systemd driver, containerd).
    pub fn for_pod(pod: &PodBuilder) -> TestCgroup {
        TestCgroup::create(&pod.cgroup_path())
    }

    /// Moves `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// A command that enters this cgroup before it execs `program` (same pid), so the program
    /// runs in the cgroup from its first instruction. Add arguments to the returned command.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.path.join("cgroup.procs"))
            .arg(program.as_ref());
        cmd
    }

    /// A command that enters this cgroup, then a private cgroup namespace rooted here, then
    /// execs `program` (same pid throughout): an agent in a container without the host's
    /// cgroup namespace. Add arguments to the returned command.
    pub fn command_in_namespace(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0\" && exec unshare --cgroup \"$@\"")
            .arg(self.path.join("cgroup.procs"))
            .arg(program.as_ref());
        cmd
    }

    /// The pids in this cgroup now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let root = cgroup2_mount();
        let root_procs = root.join("cgroup.procs");
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = std::fs::write(&root_procs, pid.trim());
                }
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                // Still in use by another test's cgroup below it: theirs to remove.
                let has_children = std::fs::read_dir(dir)
                    .map(|d| d.flatten().any(|e| e.path().is_dir()))
                    .unwrap_or(false);
                if has_children {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Parents another test created and left to us (it finished first): removed once empty.
        let mut p = self.path.clone();
        while p.pop() && p.starts_with(&root) && p != root {
            if p.exists() && std::fs::remove_dir(&p).is_err() {
                break;
            }
        }
    }
}

/// Runs `program args` in a private cgroup namespace rooted at `root` (the reader first joins
/// `root`, then `unshare -C`), as an agent in a container without the host's cgroup namespace:
/// its `/proc/<pid>/cgroup` reads of processes outside `root` start with `/..`.
pub fn run_in_cgroup_namespace(root: &TestCgroup, program: &str, args: &[&str]) -> Output {
    run_bounded(
        "unshare -C",
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec unshare --cgroup \"$@\"")
            .arg(root.path.join("cgroup.procs"))
            .arg(program)
            .args(args),
        Duration::from_secs(20),
    )
}

/// `/proc/<pid>/cgroup` as a reader in a private cgroup namespace rooted at `root` sees it.
pub fn cgroup_seen_from(root: &TestCgroup, pid: u32) -> String {
    let out = run_in_cgroup_namespace(root, "cat", &[&format!("/proc/{pid}/cgroup")]);
    assert!(
        out.status.success(),
        "unshare -C cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string()
}
