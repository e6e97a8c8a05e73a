//! The Kubernetes metadata the watchers keep, shared with the pipeline. Bounded: at most
//! [`MAX_PODS`] pods and [`MAX_OWNERS`] ReplicaSets and Jobs each; beyond, new objects are
//! not kept and counted ([`StoreCounters`]). The pipeline never waits on it: it reads the
//! generation (one atomic load per pass) and looks processes up only when it changed.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

use super::meta::{K8sMeta, Link, Owner, Owners, PodInfo, owner_chain};

/// Pods of this node kept at most (a node runs ~110 by default; 4,096 leaves room for any).
pub const MAX_PODS: usize = 4096;
/// ReplicaSets and Jobs (cluster-wide: their owners) kept at most, each.
pub const MAX_OWNERS: usize = 65_536;

/// What a network flow's end is named by when its address is a pod's of this node
/// (`k8s.src.*` / `k8s.dst.*`): the pod's namespace and its top owner (the Deployment of a
/// ReplicaSet's pod, the CronJob of a Job's, the StatefulSet, DaemonSet, …; a pod without
/// owner is its own: its name, type `Pod`, as in the reference system).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodEnd {
    pub namespace: String,
    pub owner_name: String,
    pub owner_type: String,
}

/// What the store could not keep, and how often the watchers re-listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounters {
    pub pods: usize,
    pub replicasets: usize,
    pub jobs: usize,
    /// Pods, ReplicaSets and Jobs not kept because their table was full.
    pub dropped: u64,
    /// Completed (re-)lists of pods: 1 after the first, one more per reconnect that needed
    /// one (a `410 Gone`, a restart of the watch after an error).
    pub pod_lists: u64,
}

/// The objects of one owner kind: (namespace, name) → its own owner.
#[derive(Debug, Default)]
struct OwnerTable {
    map: HashMap<(String, String), Option<Owner>>,
    /// A full list is being received: the objects seen so far (replaces `map` when done).
    listing: Option<HashMap<(String, String), Option<Owner>>>,
    /// The watch was refused (RBAC): the kind is not followed.
    denied: bool,
}

impl OwnerTable {
    fn link(&self, namespace: &str, name: &str) -> Link {
        // Borrowed lookup without building a key: the map is small per namespace anyway.
        match self.map.get(&(namespace.to_string(), name.to_string())) {
            Some(owner) => Link::Known(owner.clone()),
            None => Link::Unknown,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// uid → pod.
    pods: HashMap<String, PodInfo>,
    /// Container id → pod uid.
    containers: HashMap<String, String>,
    /// Pod address → pod uid (at most `MAX_PODS` × `MAX_POD_IPS`); the newest pod to
    /// claim an address has it.
    ips: HashMap<IpAddr, String>,
    /// A full list of pods being received.
    listing: Option<Vec<PodInfo>>,
    replicasets: OwnerTable,
    jobs: OwnerTable,
    dropped: u64,
    pod_lists: u64,
}

impl Owners for Inner {
    fn replicaset(&self, namespace: &str, name: &str) -> Link {
        self.replicasets.link(namespace, name)
    }
    fn job(&self, namespace: &str, name: &str) -> Link {
        self.jobs.link(namespace, name)
    }
    fn replicasets_unwatched(&self) -> bool {
        self.replicasets.denied
    }
}

impl Inner {
    /// Counts an object not kept (its table is full); the first one is logged.
    fn drop_one(&mut self) {
        if self.dropped == 0 {
            tracing::warn!(
                max_pods = MAX_PODS,
                max_owners = MAX_OWNERS,
                "Kubernetes metadata table full: objects beyond it are not kept (their processes get no k8s attributes)"
            );
        }
        self.dropped += 1;
    }

    fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(old) = self.pods.remove(uid) else {
            return false;
        };
        for (id, _) in &old.containers {
            // A container id moved to another pod (a newer event) stays with it.
            if self.containers.get(id).is_some_and(|u| u == uid) {
                self.containers.remove(id);
            }
        }
        for ip in &old.ips {
            // An address another pod took meanwhile stays with it.
            if self.ips.get(ip).is_some_and(|u| u == uid) {
                self.ips.remove(ip);
            }
        }
        true
    }

    fn apply_pod(&mut self, pod: PodInfo) -> bool {
        if self.pods.get(&pod.uid) == Some(&pod) {
            return false;
        }
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= MAX_PODS {
            self.drop_one();
            return false;
        }
        self.remove_pod(&pod.uid);
        for (id, _) in &pod.containers {
            self.containers.insert(id.clone(), pod.uid.clone());
        }
        for ip in &pod.ips {
            self.ips.insert(*ip, pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), pod);
        true
    }
}

/// Which owner kind an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKindTable {
    ReplicaSets,
    Jobs,
}

/// The shared store: written by the watcher thread, read by the pipeline.
#[derive(Debug, Default)]
pub struct Store {
    generation: AtomicU64,
    inner: Mutex<Inner>,
    cluster_name: Option<String>,
}

impl Store {
    pub fn new(cluster_name: Option<String>) -> Store {
        Store {
            cluster_name,
            ..Store::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Bumped on every change that may alter a process's metadata.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The metadata of the process in container `container_id`, if its pod is known.
    pub fn lookup(&self, container_id: &str) -> Option<Arc<K8sMeta>> {
        if container_id.is_empty() {
            return None;
        }
        let inner = self.lock();
        let uid = inner.containers.get(container_id)?;
        let pod = inner.pods.get(uid)?;
        K8sMeta::new(pod, container_id, &*inner, self.cluster_name.as_deref()).map(Arc::new)
    }

    /// The pod of this node that has address `ip` (IPv4-mapped addresses are looked up as
    /// IPv4), named as a flow end. `None` for any other address: a pod of another node (the
    /// watch follows this node's pods only), a `hostNetwork` pod, a node, a Service, outside.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodEnd> {
        let inner = self.lock();
        let uid = inner.ips.get(&ip.to_canonical())?;
        let pod = inner.pods.get(uid)?;
        let (owner_name, owner_type) = match owner_chain(pod, &*inner).pop() {
            Some(Owner { kind, name }) => (name, kind.as_str().to_string()),
            None => (pod.name.clone(), "Pod".to_string()),
        };
        Some(PodEnd {
            namespace: pod.namespace.clone(),
            owner_name,
            owner_type,
        })
    }

    pub fn counters(&self) -> StoreCounters {
        let inner = self.lock();
        StoreCounters {
            pods: inner.pods.len(),
            replicasets: inner.replicasets.map.len(),
            jobs: inner.jobs.map.len(),
            dropped: inner.dropped,
            pod_lists: inner.pod_lists,
        }
    }

    /// A pod was added or changed.
    pub fn apply_pod(&self, pod: PodInfo) {
        if self.lock().apply_pod(pod) {
            self.changed();
        }
    }

    /// A pod was deleted.
    pub fn delete_pod(&self, uid: &str) {
        if self.lock().remove_pod(uid) {
            self.changed();
        }
    }

    /// A (re-)list of pods begins: what it lists replaces the pods when it is done.
    pub fn pods_list_begin(&self) {
        self.lock().listing = Some(Vec::new());
    }

    pub fn pods_list_item(&self, pod: PodInfo) {
        let mut inner = self.lock();
        match inner.listing.as_mut() {
            Some(l) if l.len() < MAX_PODS => l.push(pod),
            Some(_) => inner.drop_one(),
            None => {
                inner.apply_pod(pod);
            }
        }
    }

    /// The list is complete: pods not in it are gone. Returns how many pods are kept.
    pub fn pods_list_done(&self) -> usize {
        let mut inner = self.lock();
        let listed = inner.listing.take().unwrap_or_default();
        inner.pods.clear();
        inner.containers.clear();
        inner.ips.clear();
        for p in listed {
            inner.apply_pod(p);
        }
        inner.pod_lists += 1;
        let n = inner.pods.len();
        drop(inner);
        self.changed();
        n
    }

    fn owners(inner: &mut Inner, kind: OwnerKindTable) -> &mut OwnerTable {
        match kind {
            OwnerKindTable::ReplicaSets => &mut inner.replicasets,
            OwnerKindTable::Jobs => &mut inner.jobs,
        }
    }

    /// A ReplicaSet or Job was added or changed.
    pub fn apply_owner(
        &self,
        kind: OwnerKindTable,
        namespace: &str,
        name: &str,
        owner: Option<Owner>,
    ) {
        let mut inner = self.lock();
        let table = Self::owners(&mut inner, kind);
        let key = (namespace.to_string(), name.to_string());
        if let Some(listing) = table.listing.as_mut() {
            if listing.len() < MAX_OWNERS {
                listing.insert(key, owner);
            } else {
                inner.drop_one();
            }
            return;
        }
        if table.map.get(&key) == Some(&owner) {
            return;
        }
        if !table.map.contains_key(&key) && table.map.len() >= MAX_OWNERS {
            inner.drop_one();
            return;
        }
        table.map.insert(key, owner);
        drop(inner);
        self.changed();
    }

    /// A ReplicaSet or Job was deleted.
    pub fn delete_owner(&self, kind: OwnerKindTable, namespace: &str, name: &str) {
        let removed = Self::owners(&mut self.lock(), kind)
            .map
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some();
        if removed {
            self.changed();
        }
    }

    pub fn owners_list_begin(&self, kind: OwnerKindTable) {
        Self::owners(&mut self.lock(), kind).listing = Some(HashMap::new());
    }

    pub fn owners_list_done(&self, kind: OwnerKindTable) {
        let mut inner = self.lock();
        let table = Self::owners(&mut inner, kind);
        if let Some(listed) = table.listing.take() {
            table.map = listed;
        }
        table.denied = false;
        drop(inner);
        self.changed();
    }

    /// The kind cannot be watched (RBAC): ReplicaSets are then followed by convention.
    pub fn owners_denied(&self, kind: OwnerKindTable) {
        let mut inner = self.lock();
        let table = Self::owners(&mut inner, kind);
        if !table.denied {
            table.denied = true;
            drop(inner);
            self.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::meta::OwnerKind;

    fn pod(uid: &str, name: &str, id: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            name: name.into(),
            namespace: "ns".into(),
            node_name: "n".into(),
            containers: vec![(id.into(), "app".into())],
            owner: Some(Owner {
                kind: OwnerKind::ReplicaSet,
                name: "web-abc".into(),
            }),
            template_hash: Some("abc".into()),
            ..PodInfo::default()
        }
    }

    #[test]
    fn a_process_gets_its_metadata_once_the_pod_arrives_and_follows_changes() {
        let store = Store::new(Some("c1".into()));
        let g0 = store.generation();
        assert!(store.lookup("aa").is_none());
        store.apply_pod(pod("u1", "web-1", "aa"));
        assert!(store.generation() > g0);
        let m = store.lookup("aa").expect("known");
        assert_eq!(m.pod_name, "web-1");
        assert_eq!(m.cluster_name.as_deref(), Some("c1"));
        assert_eq!(m.top_owner().map(|o| o.name.as_str()), Some("web-abc"));
        // The ReplicaSet's Deployment arrives: the chain grows.
        store.apply_owner(
            OwnerKindTable::ReplicaSets,
            "ns",
            "web-abc",
            Some(Owner {
                kind: OwnerKind::Deployment,
                name: "web".into(),
            }),
        );
        assert_eq!(
            store
                .lookup("aa")
                .and_then(|m| m.top_owner().map(|o| o.name.clone())),
            Some("web".into())
        );
        // Same object again: no change, no new generation.
        let g = store.generation();
        store.apply_pod(pod("u1", "web-1", "aa"));
        assert_eq!(store.generation(), g);
        // Deleted and re-created under a new name (same container id here).
        store.delete_pod("u1");
        assert!(store.lookup("aa").is_none());
        store.apply_pod(pod("u2", "web-2", "aa"));
        assert_eq!(store.lookup("aa").expect("known").pod_name, "web-2");
    }

    #[test]
    fn a_relist_replaces_what_was_known() {
        let store = Store::default();
        store.apply_pod(pod("u1", "a", "aa"));
        store.apply_pod(pod("u2", "b", "bb"));
        store.pods_list_begin();
        store.pods_list_item(pod("u2", "b", "bb"));
        store.pods_list_item(pod("u3", "c", "cc"));
        // Until the list is complete, the old state stays.
        assert!(store.lookup("aa").is_some());
        assert_eq!(store.pods_list_done(), 2);
        assert!(store.lookup("aa").is_none());
        assert!(store.lookup("cc").is_some());
        assert_eq!(store.counters().pod_lists, 1);
    }

    #[test]
    fn an_older_pods_deletion_leaves_a_newer_owner_of_the_container_alone() {
        let store = Store::default();
        store.apply_pod(pod("u1", "old", "aa"));
        store.apply_pod(pod("u2", "new", "aa"));
        store.delete_pod("u1");
        assert_eq!(store.lookup("aa").expect("kept").pod_name, "new");
    }

    #[test]
    fn tables_are_bounded() {
        let store = Store::default();
        for i in 0..MAX_PODS + 5 {
            store.apply_pod(pod(&format!("u{i}"), "p", &format!("{i:x}")));
        }
        let c = store.counters();
        assert_eq!(c.pods, MAX_PODS);
        assert_eq!(c.dropped, 5);
        for i in 0..MAX_OWNERS + 3 {
            store.apply_owner(OwnerKindTable::Jobs, "ns", &format!("j{i}"), None);
        }
        let c = store.counters();
        assert_eq!(c.jobs, MAX_OWNERS);
        assert_eq!(c.dropped, 8);
    }

    fn end(ns: &str, name: &str, kind: &str) -> Option<PodEnd> {
        Some(PodEnd {
            namespace: ns.into(),
            owner_name: name.into(),
            owner_type: kind.into(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn pod_addresses_name_flow_ends_until_the_pod_is_deleted() {
        let store = Store::default();
        let mut web = pod("u1", "web-abc-1", "aa");
        web.ips = vec![ip("10.244.1.5"), ip("fd00::5")];
        store.apply_pod(web);
        // Its ReplicaSet is not known yet: the ReplicaSet is the top owner.
        assert_eq!(
            store.pod_by_ip(ip("10.244.1.5")),
            end("ns", "web-abc", "ReplicaSet")
        );
        store.apply_owner(
            OwnerKindTable::ReplicaSets,
            "ns",
            "web-abc",
            Some(Owner {
                kind: OwnerKind::Deployment,
                name: "web".into(),
            }),
        );
        let web_end = end("ns", "web", "Deployment");
        assert_eq!(store.pod_by_ip(ip("10.244.1.5")), web_end);
        assert_eq!(store.pod_by_ip(ip("fd00::5")), web_end);
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(store.pod_by_ip(ip("::ffff:10.244.1.5")), web_end);
        assert_eq!(store.pod_by_ip(ip("10.244.1.6")), None);
        // A pod nobody owns is its own owner, type Pod; a DaemonSet's pod names the DaemonSet.
        let mut bare = pod("u2", "debug", "bb");
        bare.owner = None;
        bare.namespace = "tools".into();
        bare.ips = vec![ip("10.244.1.7")];
        store.apply_pod(bare);
        assert_eq!(
            store.pod_by_ip(ip("10.244.1.7")),
            end("tools", "debug", "Pod")
        );
        let mut ds = pod("u3", "agent-x1", "cc");
        ds.owner = Some(Owner {
            kind: OwnerKind::DaemonSet,
            name: "agent".into(),
        });
        ds.ips = vec![ip("10.244.1.8")];
        store.apply_pod(ds);
        assert_eq!(
            store.pod_by_ip(ip("10.244.1.8")),
            end("ns", "agent", "DaemonSet")
        );
        // Deleted: its addresses are forgotten with it.
        store.delete_pod("u1");
        assert_eq!(store.pod_by_ip(ip("10.244.1.5")), None);
        assert_eq!(store.pod_by_ip(ip("fd00::5")), None);
        // Re-created (new uid, same address): the new pod has it.
        let mut again = pod("u4", "web-abc-2", "dd");
        again.ips = vec![ip("10.244.1.5")];
        store.apply_pod(again);
        assert_eq!(store.pod_by_ip(ip("10.244.1.5")), web_end);
    }

    #[test]
    fn an_address_taken_by_a_newer_pod_stays_with_it() {
        let store = Store::default();
        let mut old = pod("u1", "old", "aa");
        old.ips = vec![ip("10.244.1.5")];
        old.namespace = "a".into();
        store.apply_pod(old);
        let mut new = pod("u2", "new", "bb");
        new.ips = vec![ip("10.244.1.5")];
        new.namespace = "b".into();
        new.owner = None;
        store.apply_pod(new);
        // The old pod's deletion arrives after the new pod took its address.
        store.delete_pod("u1");
        assert_eq!(store.pod_by_ip(ip("10.244.1.5")), end("b", "new", "Pod"));
        // A re-list drops addresses of pods no longer listed.
        store.pods_list_begin();
        store.pods_list_done();
        assert_eq!(store.pod_by_ip(ip("10.244.1.5")), None);
    }

    #[test]
    fn denied_replicasets_fall_back_to_the_template_hash() {
        let store = Store::default();
        store.apply_pod(pod("u1", "web-abc-1", "aa"));
        assert_eq!(store.lookup("aa").expect("known").owners.len(), 1);
        store.owners_denied(OwnerKindTable::ReplicaSets);
        let m = store.lookup("aa").expect("known");
        assert_eq!(m.top_owner().map(|o| o.name.as_str()), Some("web"));
        assert_eq!(m.top_owner().map(|o| o.kind.as_str()), Some("Deployment"));
    }
}
