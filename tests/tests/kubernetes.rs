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

    let roles = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    let mut resources = BTreeSet::new();
    for rule in roles[0]["rules"].as_sequence().expect("rules") {
        assert_eq!(
            strings(&rule["verbs"]),
            ["get", "list", "watch"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "read-only verbs only"
        );
        resources.extend(strings(&rule["resources"]));
    }
    let expected: BTreeSet<String> = ["pods", "replicasets", "deployments", "nodes", "namespaces"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(resources, expected);
    let binding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding[0]["subjects"][0]["name"], pod["serviceAccountName"]);
    assert_eq!(binding[0]["roleRef"]["name"], roles[0]["metadata"]["name"]);
}
