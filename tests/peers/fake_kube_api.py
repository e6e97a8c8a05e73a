#!/usr/bin/env python3
"""A fake Kubernetes API server for Sonde's end-to-end tests (Python stdlib only).

It speaks the part of the API that `kubectl` and the Rust `kube` crate (kube-client +
kube-runtime watchers/reflectors) use to follow a node's pods and their owners:

* HTTPS (the given certificate and key), bearer-token auth: a request without the token or
  with another one gets `401` and a `Status` body, as an API server without anonymous auth.
* Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/v1`
  (legacy, non-aggregated documents: clients fall back to them), `/healthz`, `/livez`,
  `/readyz`.
* Lists, cluster-wide and namespaced: pods, nodes, namespaces, services (v1); replicasets,
  deployments, daemonsets, statefulsets (apps/v1); jobs, cronjobs (batch/v1). `fieldSelector`
  (`=`, `==`, `!=` on the fields the real server accepts for the kind; others are `400`),
  `labelSelector` (equality, set-based, existence), `limit`/`continue` pagination over a
  snapshot (an expired token is `410`), `metadata.resourceVersion`, items without
  kind/apiVersion as the real server sends them. Single-object GETs (`404` Status when absent).
  `Accept: ...;as=Table;g=meta.k8s.io` answers a `meta.k8s.io/v1` Table as kubectl asks for;
  `as=PartialObjectMetadata[List]` metadata-only objects/lists/events, as kube's
  `Api<PartialObjectMeta<K>>` / `metadata_watcher` ask for.
* Watches (`?watch=true` or `watch=1`): a chunked `application/json` stream of one JSON event a
  line. `resourceVersion` absent or `0`: synthetic ADDED for every current object, then changes;
  `N`: every change after N is replayed (N older than the kept history: an ERROR event with a
  410 `Expired` Status, as the watch cache does); `allowWatchBookmarks=true`: BOOKMARK events
  every `--bookmark-interval` seconds; `sendInitialEvents=true`: the streaming-list protocol
  (ADDED for the state, then a BOOKMARK annotated `k8s.io/initial-events-end`); a selector
  turns a change that moves an object in (out) of it into ADDED (DELETED); the stream ends at
  `timeoutSeconds` (default 1800 s).

Control interface (plain HTTP on 127.0.0.1:--control-port, JSON in and out):
  GET  /state                 {"resourceVersion": N, "objects": {resource: count}, "down": ...}
  POST /apply      obj|[obj]  add or replace objects (kind picks the resource); each one bumps
                              the resourceVersion and emits ADDED or MODIFIED. Missing uid,
                              creationTimestamp, namespace ("default") are filled in.
                              -> {"resourceVersion": "N", "objects": [stored objects]}
  POST /delete     {"kind","name","namespace"?,"graceful"?: bool}  (or a list of them)
                              DELETED (graceful: first MODIFIED with deletionTimestamp)
                              -> {"resourceVersion": "N", "deleted": n}
  POST /gone       {"count"?: 1, "resource"?: "pods", "active"?: false}
                              the next `count` watches (of `resource`, any if absent) answer
                              200 + one ERROR event (410 Expired) and end; `active`: also send
                              it now to every open watch of that resource and end them.
  POST /compact    {}         forget the event history (every watch from an older
                              resourceVersion gets 410) and expire every continue token.
  POST /down       {"down": bool, "mode"?: "refuse"|"503"}
                              refuse: close the listening socket and every connection;
                              503: answer every API request 503 ServiceUnavailable.
  POST /config     {"bookmark_interval"?: seconds, "delay"?: seconds, "stall"?: bool}
                              delay: wait before answering every API request; stall: open
                              watches send nothing and do not end (a dead peer) until unset.
  GET  /requests              [{"method","path","query":{k:v},"auth":"ok|missing|wrong",
                                "status","watch","user_agent","accept","time"}]
  POST /requests/clear
  GET  /watches               [{"id","resource","namespace","query","since","started"}]
  POST /reset                 drop every object, the history and the request log
Prints `ready` on stdout once both ports listen.
"""

import argparse
import base64
import bisect
import copy
import datetime
import json
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# name -> (group, version, kind, namespaced, short names, extra field selectors)
POD_FIELDS = {
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
}
RESOURCES = {
    "pods": ("", "v1", "Pod", True, ["po"], POD_FIELDS),
    "services": ("", "v1", "Service", True, ["svc"], set()),
    "nodes": ("", "v1", "Node", False, ["no"], {"spec.unschedulable"}),
    "namespaces": ("", "v1", "Namespace", False, ["ns"], {"status.phase"}),
    "replicasets": ("apps", "v1", "ReplicaSet", True, ["rs"], {"status.replicas"}),
    "deployments": ("apps", "v1", "Deployment", True, ["deploy"], set()),
    "daemonsets": ("apps", "v1", "DaemonSet", True, ["ds"], set()),
    "statefulsets": ("apps", "v1", "StatefulSet", True, ["sts"], set()),
    "jobs": ("batch", "v1", "Job", True, [], {"status.successful"}),
    "cronjobs": ("batch", "v1", "CronJob", True, ["cj"], set()),
}
KIND_TO_RESOURCE = {v[2]: k for k, v in RESOURCES.items()}
GROUPS = {"apps": "v1", "batch": "v1"}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def api_version(resource):
    group, version = RESOURCES[resource][0], RESOURCES[resource][1]
    return f"{group}/{version}" if group else version


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code, reason, message, details=None):
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def log(*args):
    print("fake-kube:", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- selectors


class SelectorError(Exception):
    pass


def field_value(obj, path):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text, resource):
    """[(field, op, value)]; op is '=' or '!='."""
    allowed = {"metadata.name", "metadata.namespace"} | RESOURCES[resource][5]
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise SelectorError(f'invalid selector: \'{text}\'; can\'t understand \'{term}\'')
        field, op, value = m.group(1), m.group(2), m.group(3)
        if field not in allowed:
            raise SelectorError(f"field label not supported: {field}")
        terms.append((field, "!=" if op == "!=" else "=", value))
    return terms


def fields_match(obj, terms):
    for field, op, value in terms:
        actual = field_value(obj, field)
        if (actual == value) != (op == "="):
            return False
    return True


def split_outside_parens(text):
    parts, depth, cur = [], 0, ""
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text):
    reqs = []
    for term in split_outside_parens(text):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), values))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append((m.group(1), op, {m.group(3)}))
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", term)
        if m:
            reqs.append((m.group(2), "!" if m.group(1) else "exists", set()))
            continue
        raise SelectorError(f"unable to parse requirement: {term}")
    return reqs


def labels_match(obj, reqs):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, values in reqs:
        present = key in labels
        v = labels.get(key)
        ok = {
            "=": present and v in values,
            "in": present and v in values,
            "!=": not present or v not in values,
            "notin": not present or v not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


# ---------------------------------------------------------------- state


class Watch:
    def __init__(self, wid, resource, namespace, query, since):
        self.id = wid
        self.resource = resource
        self.namespace = namespace
        self.query = query
        self.since = since
        self.started = time.time()
        self.gone = False  # an ERROR 410 must be sent, then the stream ends
        self.killed = False  # end the stream abruptly (server going down)

    def describe(self):
        return {
            "id": self.id,
            "resource": self.resource,
            "namespace": self.namespace,
            "query": self.query,
            "since": self.since,
            "started": self.started,
        }


class State:
    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 1
        self.objects = {r: {} for r in RESOURCES}  # resource -> {(ns, name): obj}
        # (rv, resource, type, obj, old_obj); old_obj is the previous version (None for ADDED)
        self.history = []
        self.history_rvs = []
        self.oldest_kept = 1  # watches from below this resourceVersion get 410
        self.requests = []
        self.watches = {}
        self.next_watch = 1
        self.gone_pending = []  # [{"resource": r|None, "count": n}]
        self.snapshots = {}  # continue-token id -> (rv, [items])
        self.bookmark_interval = 1.0
        self.delay = 0.0  # seconds before every API answer
        self.stall = False  # open watches send nothing (and do not end) while set
        self.down = None  # None, "refuse", "503"

    # All methods below are called with self.cond held.

    def _record(self, resource, etype, obj, old):
        self.history.append((self.rv, resource, etype, copy.deepcopy(obj), old))
        self.history_rvs.append(self.rv)
        self.cond.notify_all()

    def apply(self, obj):
        kind = obj.get("kind")
        resource = KIND_TO_RESOURCE.get(kind)
        if resource is None:
            raise ValueError(f"unknown kind {kind!r}")
        obj = {"apiVersion": api_version(resource), "kind": kind, **copy.deepcopy(obj)}
        obj["apiVersion"] = api_version(resource)
        meta = obj.setdefault("metadata", {})
        if "name" not in meta:
            raise ValueError("metadata.name is required")
        namespaced = RESOURCES[resource][3]
        if namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        old = self.objects[resource].get(key)
        if old is not None:
            meta.setdefault("uid", old["metadata"]["uid"])
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"])
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        if resource not in ("pods", "nodes", "namespaces", "services"):
            meta.setdefault("generation", 1)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[resource][key] = obj
        self._record(resource, "MODIFIED" if old else "ADDED", obj, old)
        return obj

    def delete(self, kind, namespace, name, graceful=False):
        resource = KIND_TO_RESOURCE.get(kind) or (kind if kind in RESOURCES else None)
        if resource is None:
            raise ValueError(f"unknown kind {kind!r}")
        key = (namespace or "default", name) if RESOURCES[resource][3] else ("", name)
        old = self.objects[resource].get(key)
        if old is None:
            return 0
        if graceful:
            obj = copy.deepcopy(old)
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["metadata"]["deletionGracePeriodSeconds"] = 30
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(resource, "MODIFIED", obj, old)
            old = obj
        del self.objects[resource][key]
        self.rv += 1
        obj = copy.deepcopy(old)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(resource, "DELETED", obj, old)
        return 1

    def compact(self):
        self.history.clear()
        self.history_rvs.clear()
        self.oldest_kept = self.rv + 1
        self.snapshots.clear()

    def take_gone(self, resource):
        for g in self.gone_pending:
            if g["resource"] in (None, resource) and g["count"] > 0:
                g["count"] -= 1
                self.gone_pending = [x for x in self.gone_pending if x["count"] > 0]
                return True
        return False


STATE = State()
ARGS = None
SERVER = None
SERVER_LOCK = threading.Lock()
CONNECTIONS = set()
CONNECTIONS_LOCK = threading.Lock()


# ---------------------------------------------------------------- tables (kubectl)


def age(obj):
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except (TypeError, ValueError):
        return "<unknown>"
    s = int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
    if s < 120:
        return f"{max(s, 0)}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def column(name, typ="string", fmt="", priority=0, description=""):
    return {
        "name": name,
        "type": typ,
        "format": fmt,
        "description": description or name,
        "priority": priority,
    }


def table_columns(resource):
    name = column("Name", fmt="name", description="Name must be unique within a namespace.")
    if resource == "pods":
        return [
            name,
            column("Ready", description="The aggregate readiness state of this pod."),
            column("Status", description="The aggregate status of the containers in this pod."),
            column("Restarts", description="The number of times the containers restarted."),
            column("Age", description="CreationTimestamp"),
            column("IP", priority=1, description="The IP address assigned to the pod"),
            column("Node", priority=1, description="The name of the node the pod runs on"),
        ]
    return [name, column("Age", description="CreationTimestamp")]


def table_cells(resource, obj):
    name = obj["metadata"]["name"]
    if resource == "pods":
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        containers = (obj.get("spec") or {}).get("containers") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
        phase = (obj.get("status") or {}).get("phase", "Pending")
        if obj["metadata"].get("deletionTimestamp"):
            phase = "Terminating"
        return [
            name,
            f"{ready}/{len(containers)}",
            phase,
            str(restarts),
            age(obj),
            (obj.get("status") or {}).get("podIP", "<none>"),
            (obj.get("spec") or {}).get("nodeName", "<none>"),
        ]
    return [name, age(obj)]


def table_row(resource, obj, include):
    row = {"cells": table_cells(resource, obj)}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }
    return row


def table(resource, objs, rv, include, meta_extra=None, with_columns=True):
    meta = {"resourceVersion": rv}
    meta.update(meta_extra or {})
    t = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    t["columnDefinitions"] = table_columns(resource) if with_columns else None
    t["rows"] = [table_row(resource, o, include) for o in objs]
    return t


# ---------------------------------------------------------------- the API handler


def representation(accept):
    """'table', 'meta' (PartialObjectMetadata[List]) or '' (the objects), from the first media
    type of Accept, as the server picks the client's first supported choice."""
    first = accept.split(",")[0]
    params = {}
    for part in first.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        params[k] = v
    if params.get("g") != "meta.k8s.io":
        return ""
    if params.get("as") == "Table":
        return "table"
    if params.get("as") in ("PartialObjectMetadata", "PartialObjectMetadataList"):
        return "meta"
    return ""


def partial(obj):
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": copy.deepcopy(obj["metadata"]),
    }



def discovery(path, port):
    if path == "/version":
        return {
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.4",
            "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335",
            "gitTreeState": "clean",
            "buildDate": "2025-04-22T16:02:27Z",
            "goVersion": "go1.23.6",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}
            ],
        }

    def group_doc(g, v):
        gv = {"groupVersion": f"{g}/{v}", "version": v}
        return {"name": g, "versions": [gv], "preferredVersion": gv}

    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [group_doc(g, v) for g, v in GROUPS.items()],
        }
    m = re.fullmatch(r"/apis/([^/]+)", path)
    if m and m.group(1) in GROUPS:
        d = group_doc(m.group(1), GROUPS[m.group(1)])
        d.update({"kind": "APIGroup", "apiVersion": "v1"})
        return d
    m = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/(v1)", path)
    if m:
        group = m.group(2) or ""
        if group and group not in GROUPS:
            return None
        resources = []
        for name, (g, v, kind, namespaced, short, _) in RESOURCES.items():
            if g != group:
                continue
            r = {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": VERBS if name != "namespaces" else [
                    "create", "delete", "get", "list", "patch", "update", "watch"
                ],
                "storageVersionHash": base64.b64encode(name.encode()).decode()[:11],
            }
            if short:
                r["shortNames"] = short
            if name in ("pods", "services", "replicasets", "deployments", "daemonsets",
                        "statefulsets", "jobs", "cronjobs"):
                r["categories"] = ["all"]
            resources.append(r)
            resources.append({
                "name": f"{name}/status",
                "singularName": "",
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["get", "patch", "update"],
            })
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/v1" if group else "v1",
            "resources": resources,
        }
    return None


def route(path):
    """(resource, namespace|None, name|None) for a resource path, else None."""
    m = re.fullmatch(
        r"/(?:api/v1|apis/(apps|batch)/v1)(?:/namespaces/([^/]+)(?=/))?/([a-z]+)(?:/([^/]+))?",
        path,
    )
    if m:
        group, ns, resource, name = m.group(1) or "", m.group(2), m.group(3), m.group(4)
        if resource in RESOURCES and RESOURCES[resource][0] == group:
            if ns is not None and not RESOURCES[resource][3]:
                return None
            return resource, ns, name
    # /api/v1/namespaces/<name> (a single namespace)
    m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
    if m:
        return "namespaces", None, m.group(1)
    return None


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    sys_version = ""

    def setup(self):
        self.request.settimeout(10)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            log("TLS handshake failed:", e)
            self.handshake_failed = True
        else:
            self.handshake_failed = False
        self.request.settimeout(None)
        with CONNECTIONS_LOCK:
            CONNECTIONS.add(self.request)
        super().setup()

    def finish(self):
        with CONNECTIONS_LOCK:
            CONNECTIONS.discard(self.request)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self):
        if self.handshake_failed:
            return
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, OSError):
            pass

    def log_message(self, fmt, *args):
        if ARGS and ARGS.verbose:
            log(fmt % args)

    def send_json(self, code, body, extra_headers=None):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", "fake")
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", "fake")
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.record["status"] = code

    def do_GET(self):
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path.rstrip("/") or "/"
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        auth = self.headers.get("Authorization")
        if auth is None:
            auth_state = "missing"
        elif auth == f"Bearer {ARGS.token}":
            auth_state = "ok"
        else:
            auth_state = "wrong"
        watch = query.get("watch") in ("true", "1")
        self.record = {
            "method": "GET",
            "path": path,
            "query": query,
            "auth": auth_state,
            "watch": watch,
            "user_agent": self.headers.get("User-Agent", ""),
            "accept": self.headers.get("Accept", ""),
            "status": None,
            "time": time.time(),
        }
        with STATE.cond:
            STATE.requests.append(self.record)
            down = STATE.down
            delay = STATE.delay
        if delay > 0:
            time.sleep(delay)
        if down == "503":
            return self.send_json(
                503, status_body(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            )
        if path in ("/healthz", "/livez", "/readyz"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.record["status"] = 200
            return
        if auth_state != "ok":
            return self.send_json(401, status_body(401, "Unauthorized", "Unauthorized"))
        doc = discovery(path, self.server.server_address[1])
        if doc is not None:
            return self.send_json(200, doc)
        r = route(path)
        if r is None:
            return self.send_json(
                404, status_body(404, "NotFound", "the server could not find the requested resource")
            )
        resource, ns, name = r
        try:
            fsel = parse_field_selector(query.get("fieldSelector", ""), resource)
            lsel = parse_label_selector(query.get("labelSelector", ""))
        except SelectorError as e:
            return self.send_json(400, status_body(400, "BadRequest", str(e)))
        if name is not None:
            fsel = fsel + [("metadata.name", "=", name)]
            if not watch:
                return self.get_one(resource, ns, name)
        want_table = representation(self.headers.get("Accept", ""))
        include = query.get("includeObject", "Metadata")

        def selected(obj):
            if ns is not None and obj["metadata"].get("namespace") != ns:
                return False
            return fields_match(obj, fsel) and labels_match(obj, lsel)

        if watch:
            return self.watch(resource, ns, query, selected, want_table, include)
        return self.list(resource, query, selected, want_table, include)

    def do_POST(self):
        self.record = {"method": self.command, "path": self.path, "query": {}, "auth": "",
                       "watch": False, "status": None, "time": time.time()}
        with STATE.cond:
            STATE.requests.append(self.record)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_json(
            405, status_body(405, "MethodNotAllowed", "the fake API server only serves reads")
        )

    do_PUT = do_PATCH = do_DELETE = do_POST

    def get_one(self, resource, ns, name):
        key = (ns or "default", name) if RESOURCES[resource][3] else ("", name)
        with STATE.cond:
            obj = STATE.objects[resource].get(key)
            obj = copy.deepcopy(obj) if obj else None
        if obj is None:
            return self.send_json(
                404,
                status_body(404, "NotFound", f'{resource} "{name}" not found',
                            {"name": name, "kind": resource}),
            )
        view = representation(self.headers.get("Accept", ""))
        if view == "table":
            return self.send_json(200, table(resource, [obj], obj["metadata"]["resourceVersion"],
                                             "Metadata"))
        if view == "meta":
            return self.send_json(200, partial(obj))
        return self.send_json(200, obj)

    def list(self, resource, query, selected, want_table, include):
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with STATE.cond:
            if token:
                try:
                    tid, start = json.loads(base64.b64decode(token))
                except (ValueError, TypeError):
                    return self.send_json(
                        400, status_body(400, "BadRequest", "continue key is not valid")
                    )
                snap = STATE.snapshots.get(tid)
                if snap is None:
                    return self.send_json(
                        410,
                        status_body(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent "
                            "list result. You can start a new list without the continue parameter.",
                        ),
                    )
                rv, items = snap
            else:
                tid, start = None, 0
                rv = str(STATE.rv)
                items = [
                    copy.deepcopy(o)
                    for _, o in sorted(STATE.objects[resource].items())
                    if selected(o)
                ]
            meta = {"resourceVersion": rv}
            page = items[start:]
            if limit and len(page) > limit:
                page = page[:limit]
                if tid is None:
                    tid = uuid.uuid4().hex
                    STATE.snapshots[tid] = (rv, items)
                meta["continue"] = base64.b64encode(
                    json.dumps([tid, start + limit]).encode()
                ).decode()
                meta["remainingItemCount"] = len(items) - start - limit
        if want_table == "table":
            return self.send_json(200, table(resource, page, rv, include, meta))
        if want_table == "meta":
            return self.send_json(200, {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": [partial(o) for o in page],
            })
        for o in page:
            o.pop("kind", None)
            o.pop("apiVersion", None)
        group, version, kind = RESOURCES[resource][:3]
        body = {
            "kind": f"{kind}List",
            "apiVersion": api_version(resource),
            "metadata": meta,
            "items": page,
        }
        return self.send_json(200, body)

    # ------------------------------------------------------------ watch

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def write_event(self, etype, obj, resource, want_table, include, first_table):
        if want_table == "table" and etype in ("ADDED", "MODIFIED", "DELETED"):
            obj = table(resource, [obj], obj["metadata"]["resourceVersion"], include,
                        with_columns=first_table[0])
            first_table[0] = False
        elif want_table == "meta" and etype != "ERROR":
            obj = partial(obj)
        line = json.dumps({"type": etype, "object": obj}, separators=(",", ":")) + "\n"
        self.write_chunk(line.encode())

    def watch(self, resource, ns, query, selected, want_table, include):
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800
        bookmarks = query.get("allowWatchBookmarks") == "true"
        initial_events = query.get("sendInitialEvents") == "true"
        rv_param = query.get("resourceVersion", "")
        kind = RESOURCES[resource][2]
        apiv = api_version(resource)
        with STATE.cond:
            wid = STATE.next_watch
            STATE.next_watch += 1
            w = Watch(wid, resource, ns, query, rv_param)
            gone = STATE.take_gone(resource)
            if not gone and rv_param not in ("", "0"):
                try:
                    since = int(rv_param)
                except ValueError:
                    return self.send_json(
                        400, status_body(400, "BadRequest", f"invalid resource version: {rv_param}")
                    )
                if since + 1 < STATE.oldest_kept:
                    gone = True
            else:
                since = None
            current = STATE.rv
            if not gone and (since is None or initial_events):
                initial = [
                    copy.deepcopy(o)
                    for _, o in sorted(STATE.objects[resource].items())
                    if selected(o)
                ]
                cursor = current
            else:
                initial = []
                cursor = since if since is not None else current
            if not gone:
                STATE.watches[wid] = w
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.record["status"] = 200
        first_table = [True]
        try:
            if gone:
                oldest = max(STATE.oldest_kept - 1, int(rv_param) if rv_param.isdigit() else 0, current)
                msg = (
                    f"too old resource version: {rv_param} ({oldest})"
                    if rv_param not in ("", "0")
                    else "too old resource version"
                )
                self.write_event("ERROR", status_body(410, "Expired", msg), resource, False,
                                 include, first_table)
                self.write_chunk(b"")
                self.close_connection = True
                return
            for o in initial:
                self.write_event("ADDED", o, resource, want_table, include, first_table)
            if initial_events and bookmarks:
                self.write_event(
                    "BOOKMARK",
                    {
                        "kind": kind,
                        "apiVersion": apiv,
                        "metadata": {
                            "resourceVersion": str(cursor),
                            "creationTimestamp": None,
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                    resource, want_table, include, first_table,
                )
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + STATE.bookmark_interval
            while True:
                with STATE.cond:
                    while True:
                        if STATE.stall and not w.killed:
                            # A dead peer: nothing at all, not even the end at the timeout.
                            STATE.cond.wait(0.2)
                            continue
                        i = bisect.bisect_right(STATE.history_rvs, cursor)
                        if i < len(STATE.history) or w.gone or w.killed:
                            break
                        t = time.monotonic()
                        if t >= deadline or (bookmarks and t >= next_bookmark):
                            break
                        wake = min(deadline, next_bookmark) if bookmarks else deadline
                        STATE.cond.wait(max(0.0, wake - t))
                    events = []
                    for rv, res, etype, obj, old in STATE.history[i:]:
                        cursor = rv
                        if res != resource:
                            continue
                        now_in = etype != "DELETED" and selected(obj)
                        was_in = old is not None and selected(old)
                        if etype == "DELETED":
                            if was_in:
                                events.append(("DELETED", obj))
                        elif now_in and was_in:
                            events.append(("MODIFIED", obj))
                        elif now_in:
                            events.append(("ADDED", obj))
                        elif was_in:
                            events.append(("DELETED", obj))
                    bookmark_rv = str(max(cursor, STATE.rv))
                    killed, gone_now = w.killed, w.gone
                if killed:
                    self.close_connection = True
                    return
                for etype, obj in events:
                    self.write_event(etype, obj, resource, want_table, include, first_table)
                if gone_now:
                    self.write_event("ERROR", status_body(410, "Expired", "too old resource version"),
                                     resource, False, include, first_table)
                    break
                t = time.monotonic()
                if t >= deadline:
                    break
                if bookmarks and t >= next_bookmark:
                    self.write_event(
                        "BOOKMARK",
                        {"kind": kind, "apiVersion": apiv,
                         "metadata": {"resourceVersion": bookmark_rv, "creationTimestamp": None}},
                        resource, want_table, include, first_table,
                    )
                    next_bookmark = t + STATE.bookmark_interval
            self.write_chunk(b"")
        except (ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with STATE.cond:
                STATE.watches.pop(wid, None)


# ---------------------------------------------------------------- serving


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, context):
        self.context = context
        super().__init__(addr, ApiHandler)

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake runs in the connection's thread (ApiHandler.setup), never in the
        # accepting one.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def start_api():
    global SERVER
    srv = TLSServer(("127.0.0.1", ARGS.port), tls_context())
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    SERVER = srv


def stop_api():
    global SERVER
    srv, SERVER = SERVER, None
    if srv is not None:
        srv.shutdown()
        srv.server_close()
    with STATE.cond:
        for w in STATE.watches.values():
            w.killed = True
        STATE.cond.notify_all()
    with CONNECTIONS_LOCK:
        conns = list(CONNECTIONS)
    for c in conns:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if ARGS and ARGS.verbose:
            log("control:", fmt % args)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        with STATE.cond:
            if path == "/state":
                return self.reply(200, {
                    "resourceVersion": str(STATE.rv),
                    "objects": {r: len(o) for r, o in STATE.objects.items()},
                    "down": STATE.down,
                    "oldest_kept": STATE.oldest_kept,
                })
            if path == "/requests":
                return self.reply(200, STATE.requests)
            if path == "/watches":
                return self.reply(200, [w.describe() for w in STATE.watches.values()])
            if path == "/objects":
                return self.reply(200, [o for objs in STATE.objects.values() for o in objs.values()])
        self.reply(404, {"error": f"no {path}"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            body = self.body()
        except ValueError as e:
            return self.reply(400, {"error": f"bad JSON: {e}"})
        try:
            if path == "/down":
                return self.reply(200, set_down(body.get("down", True), body.get("mode", "refuse")))
            with STATE.cond:
                if path == "/apply":
                    objs = body if isinstance(body, list) else [body]
                    if len(objs) == 1 and objs[0].get("kind", "").endswith("List") and "items" in objs[0]:
                        objs = objs[0]["items"]
                    stored = [STATE.apply(o) for o in objs]
                    return self.reply(200, {"resourceVersion": str(STATE.rv), "objects": stored})
                if path == "/delete":
                    items = body if isinstance(body, list) else [body]
                    n = sum(
                        STATE.delete(d["kind"], d.get("namespace"), d["name"], d.get("graceful", False))
                        for d in items
                    )
                    return self.reply(200, {"resourceVersion": str(STATE.rv), "deleted": n})
                if path == "/gone":
                    resource = body.get("resource")
                    count = int(body.get("count", 1))
                    if count > 0:
                        STATE.gone_pending.append({"resource": resource, "count": count})
                    ended = 0
                    if body.get("active"):
                        for w in STATE.watches.values():
                            if resource in (None, w.resource):
                                w.gone = True
                                ended += 1
                        STATE.cond.notify_all()
                    return self.reply(200, {"pending": STATE.gone_pending, "active_ended": ended})
                if path == "/compact":
                    STATE.compact()
                    return self.reply(200, {"oldest_kept": STATE.oldest_kept})
                if path == "/config":
                    if "bookmark_interval" in body:
                        STATE.bookmark_interval = float(body["bookmark_interval"])
                    if "delay" in body:
                        STATE.delay = float(body["delay"])
                    if "stall" in body:
                        STATE.stall = bool(body["stall"])
                    STATE.cond.notify_all()
                    return self.reply(200, {"bookmark_interval": STATE.bookmark_interval,
                                            "delay": STATE.delay, "stall": STATE.stall})
                if path == "/requests/clear":
                    STATE.requests.clear()
                    return self.reply(200, {})
                if path == "/reset":
                    STATE.objects = {r: {} for r in RESOURCES}
                    STATE.compact()
                    STATE.requests.clear()
                    return self.reply(200, {})
        except (ValueError, KeyError, TypeError) as e:
            return self.reply(400, {"error": str(e)})
        self.reply(404, {"error": f"no {path}"})


# While "refuse"-down: a socket bound to the API port but not listening, so connections are
# refused and the port stays ours. Released, the port was once taken meanwhile (another
# test's free port, or an outgoing connection's local port) and the API could not listen
# again within 5 s.
PLACEHOLDER = None


def hold_port():
    global PLACEHOLDER
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Both this socket and the server's set SO_REUSEADDR and this one never listens, so the
    # server can bind the port again while this still holds it.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", ARGS.port))
    except OSError:
        s.close()  # the port is busy already: down as before, unguarded
        return
    PLACEHOLDER = s


def release_port():
    global PLACEHOLDER
    if PLACEHOLDER is not None:
        PLACEHOLDER.close()
        PLACEHOLDER = None


def set_down(down, mode):
    with SERVER_LOCK:
        if down:
            if mode not in ("refuse", "503"):
                raise ValueError(f"mode must be refuse or 503, not {mode!r}")
            with STATE.cond:
                STATE.down = mode
            if mode == "refuse":
                stop_api()
                hold_port()
        else:
            with STATE.cond:
                was = STATE.down
                STATE.down = None
            if was == "refuse":
                for _ in range(100):
                    try:
                        start_api()
                        break
                    except OSError:
                        time.sleep(0.05)
                else:
                    raise ValueError("could not listen again")
                release_port()
    return {"down": STATE.down}


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--objects", help="a JSON file: a list of objects or a List with items")
    p.add_argument("--bookmark-interval", type=float, default=1.0)
    p.add_argument("--verbose", action="store_true")
    ARGS = p.parse_args()
    STATE.bookmark_interval = ARGS.bookmark_interval
    if ARGS.objects:
        with open(ARGS.objects) as f:
            data = json.load(f)
        if isinstance(data, dict):
            data = data.get("items", [data])
        with STATE.cond:
            for o in data:
                STATE.apply(o)
    start_api()
    control = ThreadingHTTPServer(("127.0.0.1", ARGS.control_port), ControlHandler)
    control.daemon_threads = True
    print("ready", flush=True)
    try:
        control.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
