//! Selection by Kubernetes metadata, inside the loader's bound.
//!
//! The loader holds no API token, so it cannot evaluate a discovery selector's `k8s_*` fields.
//! It announces *candidates* instead: processes in a pod's cgroup that match every other field
//! of such a selector, each with the selector's Kubernetes criteria as the loader's
//! configuration has them (`K8sCriteria`). A candidate is not captured. Here the processor
//! looks its container up in the [`Store`](super::Store) and, when the pod matches any of its
//! criteria, asks the loader to select it (`ProcessorMessage::Select`); when the metadata stops
//! matching (labels changed, pod gone), it asks the loader to narrow it again.
//!
//! The bound stays in the loader: it refuses (logs and counts) a selection of any pid that is
//! not a current candidate, so a compromised processor can choose *within* the configuration,
//! never beyond it. Patterns are the selector's syntax: globs for `discovery.instrument`,
//! unanchored regular expressions for `discovery.services`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use sonde_config::discovery::{Pattern, Syntax};
use sonde_schema::control::{CandidateRecord, K8sCriteria};
use tracing::{info, warn};

use super::K8sMeta;

/// One selector's compiled Kubernetes criteria (ANDed).
#[derive(Debug)]
pub struct Criteria {
    pub key: String,
    fields: Vec<(String, Pattern)>,
    labels: Vec<(String, Pattern)>,
    annotations: Vec<(String, Pattern)>,
}

impl Criteria {
    /// Compiles the criteria the loader sent (it compiled the same patterns at start, so an
    /// error here means a broken peer).
    pub fn compile(k: &K8sCriteria) -> Result<Criteria, String> {
        let syntax = if k.regex { Syntax::Regex } else { Syntax::Glob };
        let compile = |entries: &[(String, String)]| {
            entries
                .iter()
                .map(|(name, text)| {
                    Pattern::parse(name, text, syntax)
                        .map(|p| (name.clone(), p))
                        .map_err(|e| format!("{}.{name}: {e}", k.key))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Criteria {
            key: k.key.clone(),
            fields: compile(&k.fields)?,
            labels: compile(&k.pod_labels)?,
            annotations: compile(&k.pod_annotations)?,
        })
    }

    /// True when every criterion holds for `meta`; a field the pod lacks (no Deployment, no
    /// such label) does not hold.
    pub fn matches(&self, meta: &K8sMeta) -> bool {
        self.fields
            .iter()
            .all(|(f, p)| field(meta, f).is_some_and(|v| p.is_match(v)))
            && self
                .labels
                .iter()
                .all(|(k, p)| meta.label(k).is_some_and(|v| p.is_match(v)))
            && self
                .annotations
                .iter()
                .all(|(k, p)| meta.annotation(k).is_some_and(|v| p.is_match(v)))
    }
}

/// The value a selector's `k8s_*` field is matched against.
fn field<'m>(meta: &'m K8sMeta, name: &str) -> Option<&'m str> {
    match name {
        "k8s_namespace" => Some(&meta.namespace),
        "k8s_pod_name" => Some(&meta.pod_name),
        "k8s_deployment_name" => meta.owner_of_kind("Deployment"),
        "k8s_replicaset_name" => meta.owner_of_kind("ReplicaSet"),
        "k8s_daemonset_name" => meta.owner_of_kind("DaemonSet"),
        "k8s_statefulset_name" => meta.owner_of_kind("StatefulSet"),
        "k8s_owner_name" => meta.top_owner().map(|o| o.name.as_str()),
        _ => None,
    }
}

struct Entry {
    container_id: String,
    criteria: Vec<Criteria>,
    /// Asked for (and not narrowed since): the processor's view of whether it is captured.
    wanted: bool,
}

/// What the processor asks the loader after an evaluation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub select: Vec<u32>,
    pub narrow: Vec<u32>,
}

impl Requests {
    pub fn is_empty(&self) -> bool {
        self.select.is_empty() && self.narrow.is_empty()
    }
}

/// The loader's candidates as the processor follows them.
#[derive(Default)]
pub struct Candidates {
    by_pid: BTreeMap<u32, Entry>,
    /// Selectors already named in the "metadata is off" warning.
    warned_off: BTreeSet<String>,
    pub selected: u64,
    pub narrowed: u64,
}

impl Candidates {
    /// A candidate announced (or announced again, changed).
    pub fn add(&mut self, c: &CandidateRecord, metadata_on: bool) {
        let mut criteria = Vec::new();
        for k in &c.selectors {
            match Criteria::compile(k) {
                Ok(compiled) => criteria.push(compiled),
                Err(e) => warn!(
                    error = e,
                    "candidate selector criteria do not compile; ignored"
                ),
            }
            if !metadata_on && self.warned_off.insert(k.key.clone()) {
                warn!(
                    selector = k.key,
                    "discovery selector needs Kubernetes metadata, which is off (attributes.kubernetes.enable): it selects nothing"
                );
            }
        }
        let wanted = self.by_pid.get(&c.process.pid).is_some_and(|e| e.wanted);
        self.by_pid.insert(
            c.process.pid,
            Entry {
                container_id: c.process.container_id.clone(),
                criteria,
                wanted,
            },
        );
    }

    pub fn remove(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// The loader stopped capturing `pid` (narrowed, exited, exec'd): a candidate it was is
    /// no longer wanted, and may be asked for again at the next evaluation.
    pub fn uncaptured(&mut self, pid: u32) {
        if let Some(e) = self.by_pid.get_mut(&pid) {
            e.wanted = false;
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Evaluates `pids` (all candidates when None) against the metadata `lookup` finds by
    /// container id: a candidate whose pod matches one of its selectors is to be selected, a
    /// selected one whose pod no longer matches (or is gone) to be narrowed.
    pub fn evaluate(
        &mut self,
        pids: Option<&[u32]>,
        lookup: impl Fn(&str) -> Option<Arc<K8sMeta>>,
    ) -> Requests {
        let mut out = Requests::default();
        let all: Vec<u32>;
        let pids = match pids {
            Some(p) => p,
            None => {
                all = self.by_pid.keys().copied().collect();
                &all
            }
        };
        for &pid in pids {
            let Some(e) = self.by_pid.get_mut(&pid) else {
                continue;
            };
            let meta = lookup(&e.container_id);
            let by = meta
                .as_deref()
                .and_then(|m| e.criteria.iter().find(|c| c.matches(m)));
            match (by, e.wanted) {
                (Some(c), false) => {
                    let m = meta.as_deref();
                    info!(
                        pid,
                        selector = c.key,
                        namespace = m.map(|m| m.namespace.as_str()),
                        pod = m.map(|m| m.pod_name.as_str()),
                        "candidate matches its selector's Kubernetes fields; asking the loader to select it"
                    );
                    e.wanted = true;
                    self.selected += 1;
                    out.select.push(pid);
                }
                (None, true) => {
                    info!(
                        pid,
                        "candidate's Kubernetes metadata no longer matches; asking the loader to narrow it"
                    );
                    e.wanted = false;
                    self.narrowed += 1;
                    out.narrow.push(pid);
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::meta::{Owner, OwnerKind};
    use sonde_schema::control::ProcessRecord;

    fn meta(namespace: &str, deployment: &str, labels: &[(&str, &str)]) -> Arc<K8sMeta> {
        Arc::new(K8sMeta {
            namespace: namespace.into(),
            pod_name: format!("{deployment}-abc-x1"),
            pod_uid: "u".into(),
            container_name: "app".into(),
            node_name: "n".into(),
            owners: vec![
                Owner {
                    kind: OwnerKind::ReplicaSet,
                    name: format!("{deployment}-abc"),
                },
                Owner {
                    kind: OwnerKind::Deployment,
                    name: deployment.into(),
                },
            ],
            cluster_name: None,
            container_id: "c".into(),
            annotation_name: None,
            annotation_namespace: None,
            label_name: None,
            label_part_of: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: vec![("team".into(), "payments".into())],
        })
    }

    fn criteria(regex: bool, fields: &[(&str, &str)], labels: &[(&str, &str)]) -> K8sCriteria {
        let pairs = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        K8sCriteria {
            key: "discovery.instrument[0]".into(),
            regex,
            fields: pairs(fields),
            pod_labels: pairs(labels),
            pod_annotations: Vec::new(),
        }
    }

    fn compiled(k: &K8sCriteria) -> Criteria {
        Criteria::compile(k).unwrap()
    }

    #[test]
    fn criteria_match_namespace_owners_labels_and_annotations() {
        let shop = meta("shop", "web", &[("app", "web"), ("tier", "front")]);
        assert!(compiled(&criteria(false, &[("k8s_namespace", "sh*")], &[])).matches(&shop));
        assert!(!compiled(&criteria(false, &[("k8s_namespace", "sh")], &[])).matches(&shop));
        // Regular expressions are unanchored.
        assert!(compiled(&criteria(true, &[("k8s_namespace", "ho")], &[])).matches(&shop));
        assert!(!compiled(&criteria(true, &[("k8s_namespace", "^ho")], &[])).matches(&shop));
        assert!(compiled(&criteria(false, &[("k8s_deployment_name", "web")], &[])).matches(&shop));
        assert!(
            compiled(&criteria(false, &[("k8s_replicaset_name", "web-*")], &[])).matches(&shop)
        );
        assert!(compiled(&criteria(false, &[("k8s_owner_name", "web")], &[])).matches(&shop));
        // A field the pod lacks does not hold.
        assert!(!compiled(&criteria(false, &[("k8s_statefulset_name", "*")], &[])).matches(&shop));
        // Labels: every one must hold; a missing label does not.
        assert!(compiled(&criteria(false, &[], &[("app", "web"), ("tier", "fr*")])).matches(&shop));
        assert!(!compiled(&criteria(false, &[], &[("app", "api")])).matches(&shop));
        assert!(!compiled(&criteria(false, &[], &[("missing", "*")])).matches(&shop));
        let mut k = criteria(false, &[("k8s_namespace", "shop")], &[]);
        k.pod_annotations = vec![("team".into(), "pay*".into())];
        assert!(compiled(&k).matches(&shop));
        k.pod_annotations = vec![("team".into(), "ops".into())];
        assert!(!compiled(&k).matches(&shop));
        // A broken pattern is an error, not a match-all.
        assert!(Criteria::compile(&criteria(true, &[("k8s_namespace", "(")], &[])).is_err());
    }

    #[test]
    fn candidates_are_selected_when_their_pod_matches_and_narrowed_when_it_stops() {
        let mut cands = Candidates::default();
        let record = |pid: u32, id: &str| CandidateRecord {
            process: ProcessRecord {
                pid,
                container_id: id.into(),
                ..ProcessRecord::default()
            },
            selectors: vec![criteria(false, &[("k8s_namespace", "shop")], &[])],
        };
        cands.add(&record(10, "aa"), true);
        cands.add(&record(11, "bb"), true);
        // Pods not known yet: nothing asked.
        assert!(cands.evaluate(None, |_| None).is_empty());
        let pods = |id: &str| match id {
            "aa" => Some(meta("shop", "web", &[])),
            "bb" => Some(meta("other", "web", &[])),
            _ => None,
        };
        let r = cands.evaluate(None, pods);
        assert_eq!((r.select, r.narrow), (vec![10], vec![]));
        // Asked once, not again.
        assert!(cands.evaluate(None, pods).is_empty());
        // The pod moved out of the selector: narrowed once.
        let moved = |id: &str| (id == "aa").then(|| meta("elsewhere", "web", &[]));
        let r = cands.evaluate(Some(&[10, 11]), moved);
        assert_eq!((r.select, r.narrow), (vec![], vec![10]));
        assert!(cands.evaluate(None, moved).is_empty());
        // Back: selected again; the loader dropping it makes it askable again.
        assert_eq!(cands.evaluate(None, pods).select, vec![10]);
        cands.uncaptured(10);
        assert_eq!(cands.evaluate(None, pods).select, vec![10]);
        cands.remove(10);
        assert!(cands.evaluate(None, pods).is_empty());
        assert_eq!(cands.len(), 1);
    }
}
