//! What Sonde keeps of a pod, how its owner chain is climbed, and what a process in one of its
//! containers is decorated with. Pure data and functions: the watchers fill a [`super::Store`]
//! with [`PodInfo`] and owner links, the pipeline reads [`K8sMeta`].

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use sonde_config::naming::K8sNames;

/// Annotations and labels the service-name ladder reads (the only ones kept).
pub const ANNOTATION_SERVICE_NAME: &str = "resource.opentelemetry.io/service.name";
pub const ANNOTATION_SERVICE_NAMESPACE: &str = "resource.opentelemetry.io/service.namespace";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The label the ReplicaSet controller puts on a Deployment's pods and appends to the
/// ReplicaSet's name (`<deployment>-<hash>`).
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Longest value kept from an object (a name, a label): the API server allows 253 characters
/// for names and 63 for label values; anything longer is not a real object's and is cut.
const MAX_VALUE: usize = 253;

/// The kinds of owner the attributes name; any other kind is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    Other(String),
}

impl OwnerKind {
    pub fn parse(kind: &str) -> OwnerKind {
        match kind {
            "ReplicaSet" => OwnerKind::ReplicaSet,
            "Deployment" => OwnerKind::Deployment,
            "StatefulSet" => OwnerKind::StatefulSet,
            "DaemonSet" => OwnerKind::DaemonSet,
            "Job" => OwnerKind::Job,
            "CronJob" => OwnerKind::CronJob,
            other => OwnerKind::Other(bounded(other)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            OwnerKind::ReplicaSet => "ReplicaSet",
            OwnerKind::Deployment => "Deployment",
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::DaemonSet => "DaemonSet",
            OwnerKind::Job => "Job",
            OwnerKind::CronJob => "CronJob",
            OwnerKind::Other(k) => k,
        }
    }

    /// The attribute naming an owner of this kind (`k8s.deployment.name`, …), if any.
    pub fn attribute(&self) -> Option<&'static str> {
        Some(match self {
            OwnerKind::ReplicaSet => "k8s.replicaset.name",
            OwnerKind::Deployment => "k8s.deployment.name",
            OwnerKind::StatefulSet => "k8s.statefulset.name",
            OwnerKind::DaemonSet => "k8s.daemonset.name",
            OwnerKind::Job => "k8s.job.name",
            OwnerKind::CronJob => "k8s.cronjob.name",
            OwnerKind::Other(_) => return None,
        })
    }
}

/// An object's controlling owner (`metadata.ownerReferences[]` with `controller: true`, else
/// the first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
}

impl Owner {
    /// The controller among `refs` (or the first reference when none says it controls).
    pub fn from_refs(
        refs: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
    ) -> Option<Owner> {
        let refs = refs?;
        let r = refs
            .iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| refs.first())?;
        Some(Owner {
            kind: OwnerKind::parse(&r.kind),
            name: bounded(&r.name),
        })
    }
}

/// What is kept of a pod on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: String,
    /// Its controlling owner.
    pub owner: Option<Owner>,
    /// Label `pod-template-hash` (a Deployment's pods).
    pub template_hash: Option<String>,
    /// Container ids (the runtime's hex id, without `containerd://`) and names, from the
    /// container statuses (init and ephemeral containers too).
    pub containers: Vec<(String, String)>,
    pub annotation_name: Option<String>,
    pub annotation_namespace: Option<String>,
    pub label_name: Option<String>,
    pub label_part_of: Option<String>,
    /// The pod's labels and annotations (at most `MAX_PAIRS` each, sorted by key, values
    /// bounded), for discovery selectors' `k8s_pod_labels` / `k8s_pod_annotations`.
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    /// The pod's own addresses (`status.podIPs`, else `status.podIP`; IPv4-mapped as IPv4;
    /// at most [`MAX_POD_IPS`]), for the network flows' `k8s.src.*` / `k8s.dst.*`. Empty for a
    /// `hostNetwork` pod (its address is the node's, shared with every other such pod) and
    /// for a pod that has ended (`Succeeded` / `Failed`: its address is free for another pod).
    pub ips: Vec<IpAddr>,
}

/// Addresses kept per pod (dual stack has two).
pub const MAX_POD_IPS: usize = 4;

/// Labels (and annotations) kept per pod.
pub const MAX_PAIRS: usize = 64;

fn pairs(m: Option<&std::collections::BTreeMap<String, String>>) -> Vec<(String, String)> {
    m.into_iter()
        .flatten()
        .take(MAX_PAIRS)
        .map(|(k, v)| (bounded(k), bounded(v)))
        .collect()
}

fn bounded(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// The runtime's id from a `containerID` status field (`containerd://<hex>`, `cri-o://<hex>`,
/// `docker://<hex>`), lowercased: what the loader reads from the cgroup path.
pub fn container_id(status_id: &str) -> Option<String> {
    let id = status_id.rsplit_once("://").map_or(status_id, |(_, id)| id);
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}

impl PodInfo {
    /// Keeps what the attributes and the name ladder need of `pod`; `None` for a pod without
    /// uid or name (not a real API object).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let m = &pod.metadata;
        let uid = m.uid.as_deref().filter(|u| !u.is_empty())?;
        let name = m.name.as_deref().filter(|n| !n.is_empty())?;
        let label = |k: &str| m.labels.as_ref()?.get(k).map(|v| bounded(v));
        let annotation = |k: &str| m.annotations.as_ref()?.get(k).map(|v| bounded(v));
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            for statuses in [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            {
                for c in statuses {
                    if let Some(id) = c.container_id.as_deref().and_then(container_id) {
                        containers.push((id, bounded(&c.name)));
                    }
                }
            }
        }
        Some(PodInfo {
            ips: pod_ips(pod),
            uid: bounded(uid),
            name: bounded(name),
            namespace: bounded(m.namespace.as_deref().unwrap_or("default")),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(bounded)
                .unwrap_or_default(),
            owner: Owner::from_refs(m.owner_references.as_deref()),
            template_hash: label(LABEL_POD_TEMPLATE_HASH),
            containers,
            annotation_name: annotation(ANNOTATION_SERVICE_NAME),
            annotation_namespace: annotation(ANNOTATION_SERVICE_NAMESPACE),
            label_name: label(LABEL_NAME),
            label_part_of: label(LABEL_PART_OF),
            labels: pairs(m.labels.as_ref()),
            annotations: pairs(m.annotations.as_ref()),
        })
    }
}

/// The addresses of `pod` the flows may name it by (see [`PodInfo::ips`]).
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = Vec::new();
    for text in listed.chain(status.pod_ip.as_deref()) {
        let Ok(ip) = text.trim().parse::<IpAddr>() else {
            continue;
        };
        let ip = ip.to_canonical();
        if !ips.contains(&ip) && ips.len() < MAX_POD_IPS {
            ips.push(ip);
        }
    }
    ips
}

/// How a ReplicaSet's or a Job's own owner is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Seen by the watcher: its owner (or none).
    Known(Option<Owner>),
    /// Not seen (yet, or its kind cannot be watched).
    Unknown,
}

/// Answers "who owns this ReplicaSet / Job" for the owner chain.
pub trait Owners {
    fn replicaset(&self, namespace: &str, name: &str) -> Link;
    fn job(&self, namespace: &str, name: &str) -> Link;
    /// True when ReplicaSets cannot be watched (RBAC): Deployments are then named by the
    /// `pod-template-hash` convention.
    fn replicasets_unwatched(&self) -> bool;
}

/// The owner chain of `pod`, its own owner first: ReplicaSet → Deployment, Job → CronJob, or a
/// single StatefulSet, DaemonSet or other controller. A ReplicaSet not seen is followed by
/// the `pod-template-hash` convention only when ReplicaSets cannot be watched (otherwise its
/// Deployment appears once the watcher has it).
pub fn owner_chain(pod: &PodInfo, owners: &dyn Owners) -> Vec<Owner> {
    let Some(first) = pod.owner.clone() else {
        return Vec::new();
    };
    let next = match first.kind {
        OwnerKind::ReplicaSet => match owners.replicaset(&pod.namespace, &first.name) {
            Link::Known(owner) => owner,
            Link::Unknown if owners.replicasets_unwatched() => pod
                .template_hash
                .as_deref()
                .filter(|h| !h.is_empty())
                .and_then(|h| first.name.strip_suffix(h)?.strip_suffix('-'))
                .filter(|d| !d.is_empty())
                .map(|d| Owner {
                    kind: OwnerKind::Deployment,
                    name: d.to_string(),
                }),
            Link::Unknown => None,
        },
        OwnerKind::Job => match owners.job(&pod.namespace, &first.name) {
            Link::Known(owner) => owner,
            Link::Unknown => None,
        },
        _ => None,
    };
    let mut chain = vec![first];
    chain.extend(next);
    chain
}

/// The Kubernetes metadata of one process: its pod, container and owners.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct K8sMeta {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container_name: String,
    pub node_name: String,
    /// The owner chain, the pod's own owner first; the last one is the top owner.
    pub owners: Vec<Owner>,
    pub cluster_name: Option<String>,
    pub container_id: String,
    pub annotation_name: Option<String>,
    pub annotation_namespace: Option<String>,
    pub label_name: Option<String>,
    pub label_part_of: Option<String>,
    /// The pod's labels and annotations ([`PodInfo::labels`]).
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl K8sMeta {
    /// The name of the owner of `kind` in the chain (`Deployment`, `ReplicaSet`, …).
    pub fn owner_of_kind(&self, kind: &str) -> Option<&str> {
        self.owners
            .iter()
            .find(|o| o.kind.as_str() == kind)
            .map(|o| o.name.as_str())
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The metadata of the container `container_id` of `pod`.
    pub fn new(
        pod: &PodInfo,
        container_id: &str,
        owners: &dyn Owners,
        cluster_name: Option<&str>,
    ) -> Option<K8sMeta> {
        let (_, container) = pod.containers.iter().find(|(id, _)| id == container_id)?;
        Some(K8sMeta {
            namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container_name: container.clone(),
            node_name: pod.node_name.clone(),
            owners: owner_chain(pod, owners),
            cluster_name: cluster_name.map(str::to_string),
            container_id: container_id.to_string(),
            annotation_name: pod.annotation_name.clone(),
            annotation_namespace: pod.annotation_namespace.clone(),
            label_name: pod.label_name.clone(),
            label_part_of: pod.label_part_of.clone(),
            labels: pod.labels.clone(),
            annotations: pod.annotations.clone(),
        })
    }

    /// The top of the owner chain (a Deployment, StatefulSet, DaemonSet, CronJob, a Job or
    /// ReplicaSet without owner, …); `None` for a bare pod.
    pub fn top_owner(&self) -> Option<&Owner> {
        self.owners.last()
    }

    /// The resource attributes, in this order: `k8s.namespace.name`, `k8s.pod.name`,
    /// `k8s.pod.uid`, `k8s.container.name`, `k8s.node.name` (when known), one
    /// `k8s.<kind>.name` per owner of a known kind (`replicaset`, `deployment`, `statefulset`,
    /// `daemonset`, `job`, `cronjob`), `k8s.owner.name` and `k8s.kind` (the top owner's name
    /// and kind, when the pod has an owner), `k8s.cluster.name` (when configured) and
    /// `container.id`.
    pub fn attributes(&self) -> Vec<(&'static str, &str)> {
        let mut attrs = vec![
            ("k8s.namespace.name", self.namespace.as_str()),
            ("k8s.pod.name", self.pod_name.as_str()),
            ("k8s.pod.uid", self.pod_uid.as_str()),
            ("k8s.container.name", self.container_name.as_str()),
        ];
        if !self.node_name.is_empty() {
            attrs.push(("k8s.node.name", self.node_name.as_str()));
        }
        for o in &self.owners {
            if let Some(key) = o.kind.attribute() {
                attrs.push((key, o.name.as_str()));
            }
        }
        if let Some(top) = self.top_owner() {
            attrs.push(("k8s.owner.name", top.name.as_str()));
            attrs.push(("k8s.kind", top.kind.as_str()));
        }
        if let Some(c) = &self.cluster_name {
            attrs.push(("k8s.cluster.name", c.as_str()));
        }
        attrs.push(("container.id", self.container_id.as_str()));
        attrs
    }

    /// The Prometheus labels: [`Self::attributes`] with `.` as `_`.
    pub fn prometheus_labels(&self) -> Vec<(String, String)> {
        self.attributes()
            .into_iter()
            .map(|(k, v)| (k.replace('.', "_"), v.to_string()))
            .collect()
    }

    /// The inputs of the service-name ladder's Kubernetes rungs (`sonde_config::naming`).
    pub fn names(&self) -> K8sNames {
        let top = self
            .top_owner()
            .filter(|o| !matches!(o.kind, OwnerKind::ReplicaSet | OwnerKind::Other(_)));
        K8sNames {
            annotation_name: self.annotation_name.clone(),
            annotation_namespace: self.annotation_namespace.clone(),
            label_name: self.label_name.clone(),
            label_part_of: self.label_part_of.clone(),
            owner_name: top.map(|o| o.name.clone()),
            namespace: Some(self.namespace.clone()),
            pod_name: Some(self.pod_name.clone()),
            container_name: Some(self.container_name.clone()),
        }
    }
}

/// The Kubernetes labels of a Prometheus series: none outside Kubernetes (or before the
/// process's pod is known), else [`K8sMeta::prometheus_labels`]. Shared, so a series costs
/// one pointer more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct K8sLabels(pub Option<Arc<K8sMeta>>);

impl prometheus_client::encoding::EncodeLabelSet for K8sLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        let Some(meta) = &self.0 else {
            return Ok(());
        };
        for (k, v) in meta.prometheus_labels() {
            (k.as_str(), v.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Fake {
        rs: HashMap<(String, String), Option<Owner>>,
        jobs: HashMap<(String, String), Option<Owner>>,
        unwatched: bool,
    }

    impl Owners for Fake {
        fn replicaset(&self, ns: &str, name: &str) -> Link {
            self.rs
                .get(&(ns.into(), name.into()))
                .map_or(Link::Unknown, |o| Link::Known(o.clone()))
        }
        fn job(&self, ns: &str, name: &str) -> Link {
            self.jobs
                .get(&(ns.into(), name.into()))
                .map_or(Link::Unknown, |o| Link::Known(o.clone()))
        }
        fn replicasets_unwatched(&self) -> bool {
            self.unwatched
        }
    }

    fn owner(kind: &str, name: &str) -> Owner {
        Owner {
            kind: OwnerKind::parse(kind),
            name: name.into(),
        }
    }

    fn pod(owner_ref: Option<Owner>) -> PodInfo {
        PodInfo {
            uid: "u-1".into(),
            name: "web-7d4b9c-x2x9q".into(),
            namespace: "shop".into(),
            node_name: "node-a".into(),
            owner: owner_ref,
            template_hash: Some("7d4b9c".into()),
            containers: vec![("ab".repeat(32), "app".into())],
            ..PodInfo::default()
        }
    }

    #[test]
    fn a_deployment_is_found_through_its_replicaset() {
        let mut owners = Fake::default();
        let p = pod(Some(owner("ReplicaSet", "web-7d4b9c")));
        // Not seen yet: the ReplicaSet is the top owner for now.
        assert_eq!(
            owner_chain(&p, &owners),
            vec![owner("ReplicaSet", "web-7d4b9c")]
        );
        owners.rs.insert(
            ("shop".into(), "web-7d4b9c".into()),
            Some(owner("Deployment", "web")),
        );
        assert_eq!(
            owner_chain(&p, &owners),
            vec![
                owner("ReplicaSet", "web-7d4b9c"),
                owner("Deployment", "web")
            ]
        );
        // A ReplicaSet of another namespace does not count.
        let mut other = p.clone();
        other.namespace = "other".into();
        assert_eq!(owner_chain(&other, &owners).len(), 1);
    }

    #[test]
    fn without_replicaset_watching_the_template_hash_names_the_deployment() {
        let owners = Fake {
            unwatched: true,
            ..Fake::default()
        };
        let p = pod(Some(owner("ReplicaSet", "web-7d4b9c")));
        assert_eq!(
            owner_chain(&p, &owners),
            vec![
                owner("ReplicaSet", "web-7d4b9c"),
                owner("Deployment", "web")
            ]
        );
        // A ReplicaSet whose name does not end in the hash has no Deployment by convention.
        let bare = pod(Some(owner("ReplicaSet", "standalone")));
        assert_eq!(owner_chain(&bare, &owners).len(), 1);
    }

    #[test]
    fn a_cronjob_is_found_through_its_job_and_others_stand_alone() {
        let mut owners = Fake::default();
        owners.jobs.insert(
            ("shop".into(), "report-29000000".into()),
            Some(owner("CronJob", "report")),
        );
        let p = pod(Some(owner("Job", "report-29000000")));
        assert_eq!(
            owner_chain(&p, &owners),
            vec![owner("Job", "report-29000000"), owner("CronJob", "report")]
        );
        for kind in ["StatefulSet", "DaemonSet", "Node"] {
            assert_eq!(
                owner_chain(&pod(Some(owner(kind, "x"))), &owners),
                vec![owner(kind, "x")]
            );
        }
        assert!(owner_chain(&pod(None), &owners).is_empty());
    }

    #[test]
    fn attributes_name_every_owner_and_the_top_one() {
        let mut owners = Fake::default();
        owners.rs.insert(
            ("shop".into(), "web-7d4b9c".into()),
            Some(owner("Deployment", "web")),
        );
        let p = pod(Some(owner("ReplicaSet", "web-7d4b9c")));
        let id = "ab".repeat(32);
        let m = K8sMeta::new(&p, &id, &owners, Some("prod-eu")).expect("container");
        assert_eq!(
            m.attributes(),
            vec![
                ("k8s.namespace.name", "shop"),
                ("k8s.pod.name", "web-7d4b9c-x2x9q"),
                ("k8s.pod.uid", "u-1"),
                ("k8s.container.name", "app"),
                ("k8s.node.name", "node-a"),
                ("k8s.replicaset.name", "web-7d4b9c"),
                ("k8s.deployment.name", "web"),
                ("k8s.owner.name", "web"),
                ("k8s.kind", "Deployment"),
                ("k8s.cluster.name", "prod-eu"),
                ("container.id", id.as_str()),
            ]
        );
        assert_eq!(
            m.prometheus_labels()[0],
            ("k8s_namespace_name".to_string(), "shop".to_string())
        );
        // A bare pod: no owner attributes; no cluster name unless configured.
        let bare = K8sMeta::new(&pod(None), &id, &owners, None).expect("container");
        let keys: Vec<_> = bare.attributes().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                "k8s.namespace.name",
                "k8s.pod.name",
                "k8s.pod.uid",
                "k8s.container.name",
                "k8s.node.name",
                "container.id"
            ]
        );
        // Another container id: not this pod's.
        assert!(K8sMeta::new(&p, &"cd".repeat(32), &owners, None).is_none());
    }

    #[test]
    fn ladder_inputs_come_from_annotations_labels_and_the_top_owner() {
        let mut owners = Fake::default();
        owners.rs.insert(
            ("shop".into(), "web-7d4b9c".into()),
            Some(owner("Deployment", "web")),
        );
        let mut p = pod(Some(owner("ReplicaSet", "web-7d4b9c")));
        p.annotation_name = Some("checkout".into());
        p.label_part_of = Some("store".into());
        let id = "ab".repeat(32);
        let names = K8sMeta::new(&p, &id, &owners, None)
            .expect("container")
            .names();
        assert_eq!(names.annotation_name.as_deref(), Some("checkout"));
        assert_eq!(names.label_part_of.as_deref(), Some("store"));
        assert_eq!(names.owner_name.as_deref(), Some("web"));
        assert_eq!(names.namespace.as_deref(), Some("shop"));
        assert_eq!(names.pod_name.as_deref(), Some("web-7d4b9c-x2x9q"));
        assert_eq!(names.container_name.as_deref(), Some("app"));
        // A ReplicaSet whose Deployment is not known yet is no service name: the pod name is
        // the next rung.
        let names = K8sMeta::new(&p, &id, &Fake::default(), None)
            .expect("container")
            .names();
        assert_eq!(names.owner_name, None);
        let resolved = sonde_config::naming::NameInputs {
            k8s: names,
            exe_name: "python3".into(),
            ..Default::default()
        }
        .resolve();
        assert_eq!(resolved.name, "checkout");
        assert_eq!(resolved.namespace.as_deref(), Some("store"));
    }

    #[test]
    fn container_ids_are_taken_from_status_fields() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            container_id(&format!("containerd://{hex}")).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(
            container_id(&format!("cri-o://{}", hex.to_uppercase())).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(container_id("containerd://"), None);
        assert_eq!(container_id("docker://not-hex"), None);
    }

    #[test]
    fn a_pod_object_keeps_only_what_is_needed() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-7d4b9c-x2x9q", "namespace": "shop", "uid": "u-1",
                "labels": {"app.kubernetes.io/name": "web-app", "pod-template-hash": "7d4b9c",
                           "other": "x"},
                "annotations": {"resource.opentelemetry.io/service.namespace": "store"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                     "uid": "2", "controller": true}
                ]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "side"}]},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": format!("containerd://{}", "ab".repeat(32)),
                     "ready": true, "restartCount": 0, "image": "i", "imageID": "i"},
                    {"name": "side", "ready": false, "restartCount": 0, "image": "i",
                     "imageID": "i"}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": format!("containerd://{}", "cd".repeat(32)),
                     "ready": false, "restartCount": 0, "image": "i", "imageID": "i"}
                ]
            }
        }))
        .expect("pod");
        let info = PodInfo::from_pod(&pod).expect("info");
        assert_eq!(info.owner, Some(owner("ReplicaSet", "web-7d4b9c")));
        assert_eq!(info.template_hash.as_deref(), Some("7d4b9c"));
        assert_eq!(info.label_name.as_deref(), Some("web-app"));
        assert_eq!(info.annotation_namespace.as_deref(), Some("store"));
        assert_eq!(info.node_name, "node-a");
        assert_eq!(
            info.containers,
            vec![
                ("ab".repeat(32), "app".to_string()),
                ("cd".repeat(32), "init".to_string())
            ]
        );
    }

    #[test]
    fn pod_addresses_are_kept_except_for_host_network_and_ended_pods() {
        let ips = |spec: serde_json::Value, status: serde_json::Value| {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": spec, "status": status,
            }))
            .expect("pod");
            PodInfo::from_pod(&pod).expect("info").ips
        };
        let containers = serde_json::json!({"containers": [{"name": "app"}]});
        let v4: IpAddr = "10.244.0.7".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        assert_eq!(
            ips(
                containers.clone(),
                serde_json::json!({"phase": "Running", "podIP": "10.244.0.7",
                                   "podIPs": [{"ip": "10.244.0.7"}, {"ip": "fd00::7"}]})
            ),
            vec![v4, v6]
        );
        // podIP alone (older API servers); an IPv4-mapped address is kept as IPv4.
        assert_eq!(
            ips(
                containers.clone(),
                serde_json::json!({"podIP": "::ffff:10.244.0.7"})
            ),
            vec![v4]
        );
        // hostNetwork: the node's address, not the pod's.
        assert!(
            ips(
                serde_json::json!({"hostNetwork": true, "containers": [{"name": "app"}]}),
                serde_json::json!({"phase": "Running", "podIP": "192.168.49.2",
                                   "podIPs": [{"ip": "192.168.49.2"}]})
            )
            .is_empty()
        );
        // Ended: the address is free for another pod.
        assert!(
            ips(
                containers.clone(),
                serde_json::json!({"phase": "Succeeded", "podIP": "10.244.0.7"})
            )
            .is_empty()
        );
        assert!(ips(containers, serde_json::json!({"podIP": "not-an-ip"})).is_empty());
    }
}
