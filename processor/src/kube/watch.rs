//! The watcher thread: a single-threaded tokio runtime running three `kube-runtime`
//! watchers, pods of this node (`spec.nodeName` field selector) and, metadata only,
//! ReplicaSets and Jobs (for Deployment and CronJob owners), into the [`Store`].
//!
//! `kube-runtime` lists, then watches from the list's resourceVersion (with bookmarks), and
//! re-lists after a `410 Gone` or when a watch cannot be resumed; every error is retried with
//! [`Backoff`]. A re-list replaces the store's pods (a pod deleted meanwhile is forgotten).
//! Logging: one warning when the API server cannot be reached (at start or later; whichever
//! watcher meets it first), debug lines while it stays so, one info line when the pods are
//! listed again.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ::kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        utils::Backoff as KubeBackoff,
        watcher::{self, Event},
    },
};
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use tracing::{debug, info, warn};

use super::{
    meta::{Owner, PodInfo},
    store::{OwnerKindTable, Store},
};

/// Retry delays: 0.5 s doubling to 10 s; back to 0.5 s after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl KubeBackoff for Backoff {
    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// The HTTP status of a watcher error from the API server, if it is one.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(::kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(s))
        | watcher::Error::WatchFailed(::kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

/// Logs one warning per outage, whichever watcher meets it first (errors other than
/// `410 Gone`, which only re-lists); shared by the watchers.
#[derive(Debug, Default, Clone)]
struct Outage {
    warned: Arc<AtomicBool>,
}

impl Outage {
    fn error(&self, what: &str, e: &watcher::Error) {
        if status_code(e) == Some(410) {
            info!(what, "Kubernetes watch expired (410 Gone): listing again");
            return;
        }
        if self.warned.swap(true, Ordering::Relaxed) {
            debug!(what, error = %e, "Kubernetes API still failing; retrying");
        } else {
            warn!(
                what,
                error = %e,
                "Kubernetes API unreachable or failing: spans go on without k8s attributes until it answers (retrying with backoff)"
            );
        }
    }

    /// A list succeeded: true when an outage was reported (and is over now).
    fn ok(&self) -> bool {
        self.warned.swap(false, Ordering::Relaxed)
    }
}

/// Runs the watchers until the process ends.
pub async fn run(client: Client, node: String, store: Arc<Store>) {
    let outage = Outage::default();
    tokio::join!(
        pods(client.clone(), node, Arc::clone(&store), outage.clone()),
        owners::<ReplicaSet>(
            client.clone(),
            OwnerKindTable::ReplicaSets,
            Arc::clone(&store),
            outage.clone(),
        ),
        owners::<Job>(client, OwnerKindTable::Jobs, store, outage),
    );
}

async fn pods(client: Client, node: String, store: Arc<Store>, outage: Outage) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = pin!(watcher::watcher(api, config).backoff(Backoff::default()));
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => store.pods_list_begin(),
            Ok(Event::InitApply(p)) => {
                if let Some(p) = PodInfo::from_pod(&p) {
                    store.pods_list_item(p);
                }
            }
            Ok(Event::InitDone) => {
                let n = store.pods_list_done();
                let recovered = outage.ok();
                let lists = store.counters().pod_lists;
                if lists == 1 || recovered {
                    info!(
                        node,
                        pods = n,
                        lists,
                        "Kubernetes metadata: pods of this node listed"
                    );
                } else {
                    debug!(node, pods = n, lists, "Kubernetes pods listed again");
                }
            }
            Ok(Event::Apply(p)) => {
                if let Some(p) = PodInfo::from_pod(&p) {
                    store.apply_pod(p);
                }
            }
            Ok(Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    store.delete_pod(uid);
                }
            }
            Err(e) => outage.error("pods", &e),
        }
    }
}

/// Namespace, name and controlling owner of a ReplicaSet's or Job's metadata.
fn owner_of<K>(m: &PartialObjectMeta<K>) -> Option<(&str, &str, Option<Owner>)> {
    let meta = &m.metadata;
    Some((
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref()?,
        Owner::from_refs(meta.owner_references.as_deref()),
    ))
}

async fn owners<K>(client: Client, kind: OwnerKindTable, store: Arc<Store>, outage: Outage)
where
    K: ::kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let what = match kind {
        OwnerKindTable::ReplicaSets => "replicasets",
        OwnerKindTable::Jobs => "jobs",
    };
    // Metadata only (`PartialObjectMetadata`): the owner references are all that is needed.
    let api: Api<PartialObjectMeta<K>> = Api::all(client);
    let mut stream =
        pin!(watcher::watcher(api, watcher::Config::default()).backoff(Backoff::default()));
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => store.owners_list_begin(kind),
            Ok(Event::InitApply(m)) | Ok(Event::Apply(m)) => {
                if let Some((ns, name, owner)) = owner_of(&m) {
                    store.apply_owner(kind, ns, name, owner);
                }
            }
            Ok(Event::InitDone) => {
                store.owners_list_done(kind);
                if outage.ok() {
                    info!(what, "Kubernetes metadata: listed again");
                }
            }
            Ok(Event::Delete(m)) => {
                if let Some((ns, name, _)) = owner_of(&m) {
                    store.delete_owner(kind, ns, name);
                }
            }
            Err(e) if status_code(&e) == Some(403) => {
                // RBAC: this kind is not ours to read. Pods still decorate; Deployments of
                // unseen ReplicaSets are named from the pod-template-hash convention.
                warn!(
                    what,
                    error = %e,
                    "Kubernetes API denies watching {what}: their owners (Deployment, CronJob) are not followed{}",
                    if kind == OwnerKindTable::ReplicaSets {
                        " (Deployments named by the pod-template-hash convention)"
                    } else {
                        ""
                    }
                );
                store.owners_denied(kind);
                return;
            }
            Err(e) => outage.error(what, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let first: Vec<_> = b.by_ref().take(7).collect();
        assert_eq!(first[0], Duration::from_millis(500));
        assert_eq!(first[1], Duration::from_secs(1));
        assert_eq!(first[6], BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), Some(BACKOFF_FIRST));
    }
}
