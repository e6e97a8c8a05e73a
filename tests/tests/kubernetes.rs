//! The Kubernetes manifests' security invariants, checked on the shipped YAML (no API server
//! runs here; the invariants are properties of the documents): the loader holds an explicit
//! capability list and is never privileged, the processor is non-root with every capability
//! dropped, no privilege escalation, a read-only root filesystem and RuntimeDefault seccomp;
//! they share the control socket through an emptyDir; only the processor gets an API token,
//! bound to a read-only ClusterRole; the embedded configuration passes Sonde's own parser and
//! names the processor's group.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use sonde_e2e::repo_root;

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes/sonde.yaml"))
        .expect("deploy/kubernetes/sonde.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML document"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn pod_spec(docs: &[Value]) -> &Value {
    let ds = of_kind(docs, "DaemonSet");
    assert_eq!(ds.len(), 1, "one DaemonSet");
    &ds[0]["spec"]["template"]["spec"]
}

#[test]
fn loader_has_an_explicit_capability_list_and_is_not_privileged() {
    let docs = documents();
    let pod = pod_spec(&docs);
    let loader = &container(pod, "sonde-loader")["securityContext"];
    assert_ne!(loader["privileged"], Value::Bool(true));
    assert_eq!(
        strings(&loader["capabilities"]["drop"]),
        ["ALL".to_string()].into()
    );
    let added = strings(&loader["capabilities"]["add"]);
    let expected: BTreeSet<String> = [
        "BPF",
        "PERFMON",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
        "CHOWN",
        "SETPCAP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(added, expected);
    assert!(!added.contains("SYS_ADMIN") && !added.contains("NET_ADMIN"));
    assert_eq!(loader["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(loader["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(loader["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn processor_is_restricted() {
    let docs = documents();
    let pod = pod_spec(&docs);
    let processor = container(pod, "sonde-processor");
    let sc = &processor["securityContext"];
    assert_eq!(sc["runAsNonRoot"], Value::Bool(true));
    assert!(sc["runAsUser"].as_u64().is_some_and(|u| u != 0));
    assert!(sc["runAsGroup"].as_u64().is_some_and(|g| g != 0));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_ne!(sc["privileged"], Value::Bool(true));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        ["ALL".to_string()].into()
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "the processor adds no capability"
    );
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // Pod-level: no host network, no shared process namespace between the containers.
    assert_ne!(pod["hostNetwork"], Value::Bool(true));
    assert_ne!(pod["shareProcessNamespace"], Value::Bool(true));
}

#[test]
fn containers_share_the_control_socket_through_an_emptydir() {
    let docs = documents();
    let pod = pod_spec(&docs);
    let control_dir = |name: &str| -> (String, String) {
        container(pod, name)["volumeMounts"]
            .as_sequence()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == "/run/sonde")
            .map(|m| {
                (
                    m["name"].as_str().expect("name").to_string(),
                    m["mountPath"].as_str().expect("path").to_string(),
                )
            })
            .unwrap_or_else(|| panic!("{name} does not mount /run/sonde"))
    };
    let (loader_vol, _) = control_dir("sonde-loader");
    let (processor_vol, _) = control_dir("sonde-processor");
    assert_eq!(loader_vol, processor_vol);
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == loader_vol.as_str())
        .expect("control volume");
    assert!(
        volume["emptyDir"].is_mapping(),
        "control volume is an emptyDir"
    );

    // The configuration both read: valid for Sonde's own parser, socket inside the shared
    // directory, control socket admitting exactly the processor container's group.
    let cm = of_kind(&docs, "ConfigMap");
    let text = cm[0]["data"]["sonde.yaml"].as_str().expect("sonde.yaml");
    let path = std::env::temp_dir().join(format!("sonde-k8s-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let config = sonde_processor::config::Config::load(Some(&path), &Default::default())
        .unwrap_or_else(|e| panic!("embedded configuration: {e}"));
    let _ = std::fs::remove_file(&path);
    let config = config.shared;
    assert!(config.control_socket.starts_with("/run/sonde"));
    assert_eq!(config.processor.user, "*");
    let gid = container(pod, "sonde-processor")["securityContext"]["runAsGroup"]
        .as_u64()
        .expect("gid");
    assert_eq!(
        config.processor.group.as_deref(),
        Some(gid.to_string().as_str())
    );
}

#[test]
fn only_the_processor_gets_a_read_only_api_token() {
    let docs = documents();
    let pod = pod_spec(&docs);
    assert_eq!(pod["automountServiceAccountToken"], Value::Bool(false));
    let token_mounts = |name: &str| {
        container(pod, name)["volumeMounts"]
            .as_sequence()
            .expect("mounts")
            .iter()
            .filter(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| p.contains("serviceaccount"))
            })
            .count()
    };
    assert_eq!(token_mounts("sonde-loader"), 0);
    assert_eq!(token_mounts("sonde-processor"), 1);

    // Exactly what the processor's watchers do (processor/src/kube/watch.rs): list and watch
    // pods, ReplicaSets and Jobs; nothing else, not even get.
    let roles = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    let mut resources = BTreeSet::new();
    for rule in roles[0]["rules"].as_sequence().expect("rules") {
        assert_eq!(
            strings(&rule["verbs"]),
            ["list", "watch"].iter().map(|s| s.to_string()).collect(),
            "list and watch only"
        );
        for group in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                resources.insert(format!("{group}/{r}"));
            }
        }
    }
    let expected: BTreeSet<String> = ["/pods", "apps/replicasets", "batch/jobs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(resources, expected);
    let binding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding[0]["subjects"][0]["name"], pod["serviceAccountName"]);
    assert_eq!(binding[0]["roleRef"]["name"], roles[0]["metadata"]["name"]);
}

/// The processor container's environment variable `name`.
fn env_var<'a>(c: &'a Value, name: &str) -> (usize, &'a Value) {
    c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .enumerate()
        .find(|(_, e)| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// (protocol, port) pairs of a NetworkPolicy rule.
fn rule_ports(rule: &Value) -> BTreeSet<(String, u64)> {
    rule["ports"]
        .as_sequence()
        .expect("every rule names its ports")
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
                p["port"].as_u64().expect("numeric port"),
            )
        })
        .collect()
}

/// Egress closed outside the process too (issue 13): a NetworkPolicy selects the DaemonSet's
/// pods, admits ingress only to the metrics port and egress only to the collector's port and
/// to kube-dns.
#[test]
fn a_network_policy_confines_the_pod_to_the_collector_dns_and_the_metrics_port() {
    let docs = documents();
    let policies = of_kind(&docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    let np = policies[0];
    assert_eq!(np["metadata"]["namespace"], "sonde");
    let ds = of_kind(&docs, "DaemonSet")[0];
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"],
        "the policy selects the DaemonSet's pods"
    );
    assert_eq!(
        strings(&np["spec"]["policyTypes"]),
        ["Egress".to_string(), "Ingress".to_string()].into()
    );
    // Ingress: the metrics port, which is the processor's only container port.
    let pod = pod_spec(&docs);
    let processor = container(pod, "sonde-processor");
    let metrics_port = processor["ports"][0]["containerPort"]
        .as_u64()
        .expect("metrics port");
    let ingress = np["spec"]["ingress"].as_sequence().expect("ingress rules");
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        rule_ports(&ingress[0]),
        [("TCP".to_string(), metrics_port)].into()
    );
    // Egress: the OTLP endpoint's port (from the processor's environment) and DNS to kube-dns.
    let (_, endpoint) = env_var(processor, "OTEL_EXPORTER_OTLP_ENDPOINT");
    let otlp_port: u64 = endpoint["value"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("endpoint port");
    // And the Kubernetes API: the `kubernetes` Service's port (443, what Landlock allows)
    // and the API servers' own (6443), which policies see after the Service's forwarding.
    let egress = np["spec"]["egress"].as_sequence().expect("egress rules");
    let all: BTreeSet<(String, u64)> = egress.iter().flat_map(rule_ports).collect();
    assert_eq!(
        all,
        [
            ("TCP".to_string(), otlp_port),
            ("TCP".to_string(), 53),
            ("UDP".to_string(), 53),
            ("TCP".to_string(), 443),
            ("TCP".to_string(), 6443)
        ]
        .into()
    );
    for rule in egress {
        if rule_ports(rule).iter().any(|(_, p)| *p == 53) {
            let to = &rule["to"][0];
            assert_eq!(
                to["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "kube-system"
            );
            assert_eq!(to["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
            assert!(!rule_ports(rule).contains(&("TCP".to_string(), otlp_port)));
        }
    }
}

/// Kubernetes metadata: on in the configuration (with a cluster name), the node's name from the
/// downward API, and a checksum of the configuration on the pod template, so a changed
/// ConfigMap rolls the pods.
#[test]
fn kubernetes_metadata_is_configured_and_the_config_checksum_is_current() {
    let docs = documents();
    let cm = of_kind(&docs, "ConfigMap");
    let text = cm[0]["data"]["sonde.yaml"].as_str().expect("sonde.yaml");
    let path = std::env::temp_dir().join(format!("sonde-k8s-meta-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write");
    let config = sonde_processor::config::Config::load(Some(&path), &Default::default())
        .unwrap_or_else(|e| panic!("embedded configuration: {e}"));
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        config.kubernetes.enable,
        sonde_processor::kube::Enable::True
    );
    assert!(config.kubernetes.cluster_name.is_some());
    let processor = container(pod_spec(&docs), "sonde-processor");
    let (_, node) = env_var(processor, "K8S_NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let mut sha = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut sha.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    let out = sha.wait_with_output().expect("sha256sum");
    let digest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string();
    let ds = of_kind(&docs, "DaemonSet")[0];
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        digest.as_str(),
        "checksum/config is the sha256 of the ConfigMap's sonde.yaml"
    );
}

/// The Prometheus endpoint binds the pod IP (downward API), not every address.
#[test]
fn prometheus_binds_the_pod_ip() {
    let docs = documents();
    let processor = container(pod_spec(&docs), "sonde-processor");
    let (pod_ip_at, pod_ip) = env_var(processor, "POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let (address_at, address) = env_var(processor, "BEYLA_PROMETHEUS_ADDRESS");
    assert_eq!(address["value"], "$(POD_IP)");
    assert!(
        pod_ip_at < address_at,
        "$(POD_IP) expands only if defined before"
    );
}

/// Pod Security: the namespace says `privileged`, which the loader container really needs
/// (hostPID, a hostPath volume, capabilities beyond baseline), while the processor container
/// passes every container-level check of the `restricted` profile.
#[test]
fn the_namespace_label_is_honest_and_the_processor_container_is_restricted() {
    let docs = documents();
    let ns = of_kind(&docs, "Namespace");
    assert_eq!(ns.len(), 1);
    let labels = &ns[0]["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    let pod = pod_spec(&docs);
    // What makes it privileged: without these, the label would overstate.
    assert_eq!(pod["hostPID"], Value::Bool(true));
    let loader = &container(pod, "sonde-loader")["securityContext"];
    let baseline: BTreeSet<String> = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(!strings(&loader["capabilities"]["add"]).is_subset(&baseline));
    // restricted, container by container check (Kubernetes Pod Security Standards).
    let processor = container(pod, "sonde-processor");
    let sc = &processor["securityContext"];
    assert_ne!(sc["privileged"], Value::Bool(true), "privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["runAsNonRoot"], Value::Bool(true));
    assert!(sc["runAsUser"].as_u64().is_some_and(|u| u != 0));
    assert!(matches!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    ));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        ["ALL".to_string()].into()
    );
    assert!(
        strings(&sc["capabilities"]["add"]).is_subset(&["NET_BIND_SERVICE".to_string()].into())
    );
    assert!(sc["procMount"].is_null() || sc["procMount"] == "Default");
    assert!(sc["seLinuxOptions"].is_null());
    assert!(sc["appArmorProfile"].is_null() || sc["appArmorProfile"]["type"] != "Unconfined");
    for port in processor["ports"].as_sequence().expect("ports") {
        assert!(port["hostPort"].is_null(), "hostPort {port:?}");
    }
    // The volumes it mounts are of the types `restricted` admits.
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    for mount in processor["volumeMounts"].as_sequence().expect("mounts") {
        let v = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume");
        let kind = v
            .as_mapping()
            .expect("volume")
            .keys()
            .filter_map(|k| k.as_str())
            .find(|k| *k != "name")
            .expect("volume type");
        assert!(
            [
                "configMap",
                "emptyDir",
                "projected",
                "secret",
                "downwardAPI",
                "csi",
                "ephemeral",
                "persistentVolumeClaim"
            ]
            .contains(&kind),
            "volume type {kind}"
        );
    }
}

/// The workspace's version, from the root manifest.
fn workspace_version() -> String {
    let manifest =
        std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("workspace manifest");
    let manifest: toml_lite::Manifest = toml_lite::parse(&manifest);
    manifest.version
}

/// Just enough of the root `Cargo.toml` to find `[workspace.package] version`.
mod toml_lite {
    pub struct Manifest {
        pub version: String,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut in_package = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_package = line == "[workspace.package]";
            } else if in_package && let Some(v) = line.strip_prefix("version") {
                let v = v
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                return Manifest {
                    version: v.to_string(),
                };
            }
        }
        panic!("no [workspace.package] version");
    }
}

/// Both containers run the image deploy/container/build.sh builds (FROM scratch, tagged with
/// the workspace version), not a placeholder registry name; the image's USER is the processor
/// container's runAsUser:runAsGroup. tests/tests/container_image.rs builds the image itself.
#[test]
fn the_image_is_the_one_this_repository_builds() {
    let docs = documents();
    let pod = pod_spec(&docs);
    let tag = format!("sonde:{}", workspace_version());
    for name in ["sonde-loader", "sonde-processor"] {
        let c = container(pod, name);
        assert_eq!(c["image"].as_str(), Some(tag.as_str()), "{name}");
        assert_eq!(
            c["imagePullPolicy"].as_str(),
            Some("IfNotPresent"),
            "{name}"
        );
        let binary = c["command"][0].as_str().expect("command");
        assert_eq!(binary, format!("/usr/local/bin/{name}"));
    }
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).expect(p);
    let containerfile = read("deploy/container/Containerfile");
    assert!(
        containerfile.lines().any(|l| l.trim() == "FROM scratch"),
        "the image is built FROM scratch"
    );
    assert!(
        containerfile.contains(&format!("-t {tag} ")),
        "the Containerfile's build command tags {tag}"
    );
    let sc = &container(pod, "sonde-processor")["securityContext"];
    let (uid, gid) = (
        sc["runAsUser"].as_u64().expect("runAsUser"),
        sc["runAsGroup"].as_u64().expect("runAsGroup"),
    );
    assert!(
        containerfile
            .lines()
            .any(|l| l.trim() == format!("USER {uid}:{gid}")),
        "the image's USER is the processor's {uid}:{gid}"
    );
    let build = read("deploy/container/build.sh");
    for line in [
        "tag=\"sonde:$version\"".to_string(),
        format!("processor_uid={uid}"),
        format!("processor_gid={gid}"),
        "bins=(sonde-loader sonde-processor)".to_string(),
    ] {
        assert!(build.contains(&line), "build.sh: {line}");
    }
    assert!(
        !repo_root().join("deploy/kubernetes/Dockerfile").exists(),
        "the distroless Dockerfile is gone (no base image can be pulled)"
    );
    let readme = read("deploy/README.md");
    assert!(
        readme.contains("deploy/container/build.sh") && readme.contains(&format!("-t {tag} ")),
        "deploy/README.md names build.sh and {tag}"
    );
}
