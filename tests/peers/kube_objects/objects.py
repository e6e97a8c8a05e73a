#!/usr/bin/env python3
"""Kubernetes objects as the API server returns them, for the fake API server
(`tests/peers/fake_kube_api.py --objects FILE`) and the benchmarks.

    python3 objects.py scenario --node NODE > objects.json   # one pod of every owner shape
    python3 objects.py bulk --node NODE --count 1000 > objects.json

Every pod has a uid, labels, annotations (`resource.opentelemetry.io/service.name` on some),
`spec.nodeName`, containers, `status.containerStatuses[].containerID` =
`containerd://<64 hex>`, `status.podIP`, `status.phase`, and `ownerReferences` as the
controllers set them: Deployment -> ReplicaSet -> Pod, DaemonSet -> Pod, StatefulSet -> Pod,
CronJob -> Job -> Pod. Ids are derived from names (same input, same output), so a test can
compute a pod's container id and cgroup path on its own.
"""

import argparse
import hashlib
import json
import sys

CREATED = "2026-12-01T08:00:00Z"


def hex_id(seed, n=64):
    out = ""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{i}".encode()).hexdigest()
        i += 1
    return out[:n]


def uid(seed):
    h = hex_id("uid:" + seed, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def suffix(seed, n=5):
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    h = int(hex_id("sfx:" + seed, 16), 16)
    return "".join(alphabet[(h >> (5 * i)) % len(alphabet)] for i in range(n))


def meta(name, namespace, labels=None, annotations=None, owner=None):
    m = {
        "name": name,
        "namespace": namespace,
        "uid": uid(f"{namespace}/{name}"),
        "creationTimestamp": CREATED,
        "labels": dict(labels or {}),
    }
    if annotations:
        m["annotations"] = dict(annotations)
    if owner:
        m["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return m


def template(labels, containers):
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": c, "image": f"registry.example/{c}:1.0"} for c in containers]},
    }


def pod(name, namespace, node, labels, annotations=None, owner=None, containers=("app",),
        ip=None, phase="Running"):
    m = meta(name, namespace, labels, annotations, owner)
    statuses = []
    for c in containers:
        statuses.append({
            "name": c,
            "image": f"registry.example/{c}:1.0",
            "imageID": "registry.example/" + c + "@sha256:" + hex_id("img:" + c),
            "containerID": "containerd://" + container_id(namespace, name, c),
            "ready": phase == "Running",
            "restartCount": 0,
            "started": phase == "Running",
            "state": {"running": {"startedAt": CREATED}} if phase == "Running"
            else {"waiting": {"reason": "ContainerCreating"}},
        })
    h = int(hex_id("ip:" + namespace + "/" + name, 8), 16)
    ip = ip or f"10.244.{(h >> 8) % 250}.{h % 250 + 2}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": m,
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": f"registry.example/{c}:1.0"} for c in containers],
            "restartPolicy": "Always" if not owner or owner["kind"] != "Job" else "Never",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "192.168.49.2",
            "qosClass": "BestEffort",
            "startTime": CREATED,
            "containerStatuses": statuses,
        },
    }


def container_id(namespace, pod_name, container):
    return hex_id(f"cid:{namespace}/{pod_name}/{container}")


def workload(kind, api, name, namespace, labels, owner=None, extra_spec=None):
    o = {"apiVersion": api, "kind": kind, "metadata": meta(name, namespace, labels, owner=owner)}
    o["metadata"]["generation"] = 1
    spec = {"selector": {"matchLabels": dict(labels)}, "template": template(labels, ["app"])}
    spec.update(extra_spec or {})
    o["spec"] = spec
    return o


def deployment_pod(name, node, namespace="default", index=0, service=None, containers=("app",)):
    """[Deployment, ReplicaSet, Pod]."""
    labels = {"app": name}
    dep = workload("Deployment", "apps/v1", name, namespace, labels, extra_spec={"replicas": 1})
    hash_ = hex_id("rs:" + namespace + "/" + name, 10)
    rs_labels = dict(labels, **{"pod-template-hash": hash_})
    rs = workload("ReplicaSet", "apps/v1", f"{name}-{hash_}", namespace, rs_labels, owner=dep,
                  extra_spec={"replicas": 1})
    ann = {"resource.opentelemetry.io/service.name": service} if service else None
    p = pod(f"{name}-{hash_}-{suffix(f'{namespace}/{name}/{index}')}", namespace, node, rs_labels,
            ann, rs, containers)
    return [dep, rs, p]


def daemonset_pod(name, node, namespace="kube-system"):
    labels = {"app": name}
    ds = workload("DaemonSet", "apps/v1", name, namespace, labels)
    p = pod(f"{name}-{suffix(namespace + '/' + name + '/' + node)}", namespace, node,
            dict(labels, **{"controller-revision-hash": hex_id("cr:" + name, 10)}), None, ds)
    return [ds, p]


def statefulset_pod(name, node, namespace="default", ordinal=0):
    labels = {"app": name}
    sts = workload("StatefulSet", "apps/v1", name, namespace, labels,
                   extra_spec={"replicas": 1, "serviceName": name})
    pname = f"{name}-{ordinal}"
    p = pod(pname, namespace, node,
            dict(labels, **{"statefulset.kubernetes.io/pod-name": pname,
                            "apps.kubernetes.io/pod-index": str(ordinal)}), None, sts)
    return [sts, p]


def cronjob_pod(name, node, namespace="default", schedule_time=29412345):
    labels = {"app": name}
    cj = {"apiVersion": "batch/v1", "kind": "CronJob",
          "metadata": meta(name, namespace, labels),
          "spec": {"schedule": "*/5 * * * *",
                   "jobTemplate": {"spec": {"template": template(labels, ["app"])}}}}
    job_name = f"{name}-{schedule_time}"
    job = workload("Job", "batch/v1", job_name, namespace, dict(labels, **{"job-name": job_name}),
                   owner=cj)
    p = pod(f"{job_name}-{suffix(namespace + '/' + job_name)}", namespace, node,
            dict(labels, **{"job-name": job_name, "batch.kubernetes.io/job-name": job_name}),
            None, job)
    return [cj, job, p]


def bare_pod(name, node, namespace="default", service=None):
    ann = {"resource.opentelemetry.io/service.name": service} if service else None
    return [pod(name, namespace, node, {"run": name}, ann)]


def node_object(name):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": uid("node/" + name), "creationTimestamp": CREATED,
                         "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]}}


def namespace_object(name):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": uid("ns/" + name), "creationTimestamp": CREATED},
            "status": {"phase": "Active"}}


def scenario(node):
    objs = [node_object(node), node_object("other-node")]
    objs += [namespace_object(n) for n in ("default", "kube-system", "shop")]
    objs += deployment_pod("checkout", node, "shop", service="checkout-svc")
    objs += daemonset_pod("log-agent", node)
    objs += statefulset_pod("db", node, "shop")
    objs += cronjob_pod("backup", node, "shop")
    objs += bare_pod("debug", node)
    objs += deployment_pod("elsewhere", "other-node")
    return objs


def bulk(node, count):
    objs = [node_object(node)]
    per = 10
    for d in range((count + per - 1) // per):
        group = []
        for i in range(min(per, count - d * per)):
            group = deployment_pod(f"svc-{d:04d}", node, f"ns-{d % 20:02d}", index=i,
                                   service=f"svc-{d:04d}")
            if i == 0:
                objs += group[:2]
            objs.append(group[2])
    return objs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["scenario", "bulk"])
    p.add_argument("--node", default="sonde-node")
    p.add_argument("--count", type=int, default=1000)
    a = p.parse_args()
    objs = scenario(a.node) if a.what == "scenario" else bulk(a.node, a.count)
    json.dump(objs, sys.stdout, indent=None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
