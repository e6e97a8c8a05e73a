#!/usr/bin/env python3
"""Kubernetes decoration under the core benchmark's load (issue 9): does pod metadata cost
anything per span? The core benchmark's nginx (one worker, bench/nginx_bench.py's
configuration) runs in a kubelet + containerd shaped cgroup (cgroup v2, systemd driver:
`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
cri-containerd-<64 hex>.scope`) whose container id is the one of a pod that the fake API server
(tests/peers/fake_kube_api.py, HTTPS + bearer token, through a kubeconfig) serves with 1,000
other pods on the same node (tests/peers/kube_objects/objects.py `bulk`: 100 Deployments, 100
ReplicaSets, 1,000 pods in 20 namespaces). Each round runs `wrk -t1 -c16 -dDURATION /ok` three
times, in one session of the same nginx:

  baseline  uninstrumented;
  off       `sonde --open-port PORT` (release build), no Kubernetes settings;
  on        the same with KUBECONFIG + K8S_NODE_NAME (+ BEYLA_KUBE_CLUSTER_NAME): the
            processor lists and watches the node's pods and decorates nginx's processes.

The two instrumented arms swap places every other round (baseline, off, on; baseline, on, off;
...), and each is compared with the baseline of its own round. Reported per round and as
medians: throughput ratio (arm req/s / baseline req/s), processor CPU seconds per 100k requests
(`/proc/<pid>/stat` utime+stime of `sonde-processor` across wrk's run and until it has drained;
the loader's apart), the processor's CPU from its start to the load (start-up, including the
pod listing), its peak RSS (VmHWM) and its RSS at the end, spans built (final stats).

Outputs of the instrumented arms: `--output none` (default; the core benchmark's
`--printer disabled`: spans built and counted, nothing written or exported) or `--output
prometheus` (both arms serve Prometheus, scraped once per round after the measurement).

Decoration is checked, not assumed: every `on` run must log "Kubernetes metadata: pods of this
node listed" with pods=1001 before its load starts (and no `off` run may log "Kubernetes
metadata on"); with `--output prometheus` every round's scrape must show nginx's request
series with `k8s_pod_name` = the pod's name (and the `off` scrape none); with `--output none`
a short check run after the rounds (Prometheus on, 2 s of load) does the same for both arms.

Run as root (eBPF, cgroups). Builds the release binaries (`cargo build --release --workspace`)
when they are missing or older than the sources.

Usage: kube_bench.py [--rounds 3] [--duration 8] [--pods 1000] [--output none|prometheus]
                     [--json out.json] [--no-build] [--release DIR] [--keep]

--release DIR measures the `sonde` and `sonde-processor` in DIR (another build, e.g. of a
committed tree while the working tree is mid-edit) and builds nothing.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nginx_bench as nb  # noqa: E402  (ports, wrk, /proc readers, log waits, stop)
import db_bench as dbb  # noqa: E402  (newest_source_mtime)

ROOT = nb.ROOT
RELEASE = nb.RELEASE
PEERS = os.path.join(ROOT, "tests", "peers")
sys.path.insert(0, os.path.join(PEERS, "kube_objects"))
import objects as kobj  # noqa: E402  (pods as the API server returns them)

NODE = "sonde-bench-node"
CLUSTER = "bench-cluster"
TOKEN = "sonde-bench-service-account-token"
POD_NAMESPACE = "bench"
POD_DEPLOYMENT = "bench-nginx"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------
# Build


def ensure_release(no_build):
    bins = [os.path.join(RELEASE, b) for b in ["sonde", "sonde-processor"]]
    missing = [b for b in bins if not os.path.exists(b)]
    stale = not missing and min(os.path.getmtime(b) for b in bins) < dbb.newest_source_mtime()
    if not missing and (not stale or no_build):
        if stale:
            print("note: release binaries are older than the sources (--no-build)", flush=True)
        return
    print("release binaries " + ("missing" if missing else "older than the sources") +
          ": cargo build --release --workspace", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT)
    if r.returncode != 0:
        if missing:
            raise SystemExit("release build failed")
        print("WARNING: release build failed; measuring the existing (older) binaries", flush=True)


# ---------------------------------------------------------------------------------------------
# The fake API server


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1 it signed (EC P-256), as tests/src/kube.rs."""
    ca, ca_key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
    cert, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    csr, ext = os.path.join(d, "server.csr"), os.path.join(d, "server-ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,"
                "DNS:kubernetes.default,DNS:kubernetes\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "3",
            "-subj", "/CN=sonde-bench-kubernetes-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "3", "-extfile", ext)
    for p in (ca, cert, key):
        os.chmod(p, 0o644)  # readable by the unprivileged processor
    return ca, cert, key


class FakeKube:
    """fake_kube_api.py serving `objects`, and a kubeconfig for it."""

    def __init__(self, workdir, objects):
        self.dir = os.path.join(workdir, "kube")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.ca, cert, key = make_certs(self.dir)
        objects_file = os.path.join(self.dir, "objects.json")
        with open(objects_file, "w") as f:
            json.dump(objects, f)
        self.port = nb.free_port()
        self.control_port = nb.free_port()
        while self.control_port == self.port:
            self.control_port = nb.free_port()
        self.log = open(os.path.join(self.dir, "fake.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(PEERS, "fake_kube_api.py"), "--port", str(self.port),
             "--control-port", str(self.control_port), "--token", TOKEN, "--cert", cert,
             "--key", key, "--objects", objects_file],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.time() + 30
        line = ""
        while time.time() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if "ready" in line:
                break
        if "ready" not in line:
            self.close()
            raise SystemExit("the fake API server did not start: see " + self.log.name)
        self.kubeconfig = os.path.join(self.dir, "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n"
                    f"    server: https://127.0.0.1:{self.port}\n"
                    f"    certificate-authority: {self.ca}\n"
                    f"users:\n- name: sonde\n  user:\n    token: {TOKEN}\n"
                    "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sonde\n"
                    "    namespace: default\ncurrent-context: fake\n")
        os.chmod(self.kubeconfig, 0o644)

    def state(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control_port}/state", timeout=10) as r:
            return json.loads(r.read())

    def close(self):
        if self.proc.poll() is None:
            nb.stop(self.proc, signal.SIGTERM, 10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# The pod's cgroup


def cgroup2_mount():
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return left.split()[4]
    raise SystemExit("no cgroup v2 mount")


class PodCgroup:
    """The kubelet (systemd driver) + containerd cgroup of a BestEffort pod's container."""

    def __init__(self, pod_uid, container_id):
        self.root = cgroup2_mount()
        self.relative = ("kubepods.slice/kubepods-besteffort.slice/"
                         f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice/"
                         f"cri-containerd-{container_id}.scope")
        self.created = []
        p = self.root
        for part in self.relative.split("/"):
            p = os.path.join(p, part)
            if not os.path.isdir(p):
                os.mkdir(p)
                self.created.append(p)
        self.path = p

    def command(self, argv):
        """argv run in this cgroup from its first instruction (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(self.path, "cgroup.procs"),
                *argv]

    def pids(self):
        try:
            return [int(x) for x in open(os.path.join(self.path, "cgroup.procs")).read().split()]
        except OSError:
            return []

    def remove(self):
        root_procs = os.path.join(self.root, "cgroup.procs")
        for d in reversed(self.created):
            for _ in range(50):
                try:
                    for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                        try:
                            with open(root_procs, "w") as f:
                                f.write(pid)
                        except OSError:
                            pass
                except OSError:
                    pass
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def start_nginx_in(cgroup, port, prefix):
    """nginx_bench's nginx (tests/servers/nginx.conf: one worker, `return 200`), in `cgroup`."""
    conf = open(os.path.join(ROOT, "tests/servers/nginx.conf")).read()
    conf = conf.replace("PREFIX", prefix).replace("PORT", str(port))
    path = os.path.join(prefix, "nginx.conf")
    open(path, "w").write(conf)
    p = subprocess.Popen(cgroup.command(["/usr/sbin/nginx", "-p", prefix, "-c", path]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nb.wait_port(port)
    return p


def cgroup_line(pid):
    for line in open(f"/proc/{pid}/cgroup"):
        if line.startswith("0::"):
            return line[3:].strip()
    return ""


# ---------------------------------------------------------------------------------------------
# One instrumented run


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode(errors="replace")


def request_series(text):
    """nginx's server request count series (`..._count{...}` lines) of a Prometheus scrape."""
    return [line for line in text.splitlines()
            if line.startswith("http_server_request_duration_seconds_count{")]


def busiest(series):
    """The series with the largest count (nginx's `200` on /ok)."""
    return max(series, key=lambda line: float(line.rsplit(" ", 1)[1]), default="no series")


def pod_label_of(line):
    m = re.search(r'k8s_pod_name="([^"]*)"', line)
    return m.group(1) if m else None


def instrumented_run(arm, port, duration, workdir, fake, pod_name, prometheus, pods_expected):
    """`sonde --open-port port` with decoration `on` or `off`, under wrk for `duration` s."""
    tag = f"{arm}-{time.time():.0f}"
    log_path = os.path.join(workdir, f"sonde-{tag}.log")
    env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
           "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
    prom_port = None
    if prometheus:
        prom_port = nb.free_port()
        env["BEYLA_PROMETHEUS_PORT"] = str(prom_port)
    if arm == "on":
        env.update({"KUBECONFIG": fake.kubeconfig, "K8S_NODE_NAME": NODE,
                    "BEYLA_KUBE_CLUSTER_NAME": CLUSTER})
    t0 = time.time()
    with open(log_path, "w") as err:
        sonde = subprocess.Popen([os.path.join(RELEASE, "sonde"), "--open-port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=err, env=env)
    out = {"arm": arm}
    try:
        nb.wait_log(log_path, r"processor connected")
        proc_pid = int(nb.wait_log(log_path, r"processor started pid=(\d+)").group(1))
        if arm == "on":
            m = nb.wait_log(log_path, r"Kubernetes metadata: pods of this node listed.*", 60)
            line = ANSI.sub("", m.group(0))
            pods = int(re.search(r"pods=(\d+)", line).group(1))
            out["pods_listed"] = pods
            out["listed_after_s"] = time.time() - t0
            if pods != pods_expected:
                raise SystemExit(f"the processor listed {pods} pods, not {pods_expected}: {line}")
        time.sleep(1.0)  # let the selection settle (master and worker)
        startup_cpu = nb.cpu_seconds(proc_pid)
        p0, l0 = nb.cpu_seconds(proc_pid), nb.cpu_seconds(sonde.pid)
        requests, rps = nb.wrk(port, duration)
        # Let the processor drain what is queued before measuring its CPU and memory.
        deadline = time.time() + 20
        last = -1
        while time.time() < deadline:
            n = nb.cpu_seconds(proc_pid)
            if n == last:
                break
            last = n
            time.sleep(1.0)
        p1, l1 = nb.cpu_seconds(proc_pid), nb.cpu_seconds(sonde.pid)
        hwm = nb.hwm_kib(proc_pid)
        rss = 0
        for line in open(f"/proc/{proc_pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        if prometheus:
            series = request_series(scrape(prom_port))
            out["series"] = series
    finally:
        nb.stop(sonde, signal.SIGINT, 20)
    log = ANSI.sub("", open(log_path, errors="replace").read())
    if arm == "off" and "Kubernetes metadata on" in log:
        raise SystemExit(f"decoration is on in an 'off' run: {log_path}")
    if arm == "on" and "Kubernetes metadata on" not in log:
        raise SystemExit(f"no 'Kubernetes metadata on' in an 'on' run: {log_path}")
    stats = re.findall(r"final processor stats stats=(\{.*\})", log)
    out.update({
        "requests": requests, "rps": rps,
        "spans": json.loads(stats[-1])["spans"] if stats else None,
        "processor_cpu_s": p1 - p0, "loader_cpu_s": l1 - l0,
        "processor_startup_cpu_s": startup_cpu,
        "processor_hwm_kib": hwm, "processor_rss_end_kib": rss,
        "warnings": len(re.findall(r"\bWARN\b", log)),
        "log": log_path,
    })
    if prometheus:
        out["pod_labels"] = sorted({pod_label_of(s) for s in out["series"]}, key=str)
        check_series(arm, out["series"], pod_name)
    return out


def check_series(arm, series, pod_name):
    if not series:
        raise SystemExit(f"{arm}: no http_server_request_duration_seconds_count series")
    labels = {pod_label_of(s) for s in series}
    if arm == "on" and labels != {pod_name}:
        raise SystemExit(f"on: nginx's series are not all labelled k8s_pod_name={pod_name}: {series}")
    if arm == "off" and labels != {None}:
        raise SystemExit(f"off: a series carries k8s_pod_name: {series}")


# ---------------------------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--pods", type=int, default=1000, help="other pods on the node (bulk)")
    ap.add_argument("--output", default="none", choices=["none", "prometheus"])
    ap.add_argument("--json")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--release", help="directory of prebuilt sonde + sonde-processor (no build)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs; the pod's cgroup is created)")
    for tool in ["wrk", "openssl", "/usr/sbin/nginx"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup.sh")
    global RELEASE
    if args.release:
        RELEASE = os.path.abspath(args.release)
        for b in ["sonde", "sonde-processor"]:
            if not os.path.exists(os.path.join(RELEASE, b)):
                raise SystemExit(f"no {b} in {RELEASE}")
    else:
        ensure_release(args.no_build)

    # Objects: the node, 1,000 pods (with their Deployments and ReplicaSets), and nginx's pod.
    objects = kobj.bulk(NODE, args.pods)
    ours = kobj.deployment_pod(POD_DEPLOYMENT, NODE, POD_NAMESPACE, service=None,
                               containers=("nginx",))
    objects += [kobj.namespace_object(POD_NAMESPACE)] + ours
    pod = ours[-1]
    pod_name, pod_uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    pods_expected = sum(1 for o in objects if o["kind"] == "Pod")

    workdir = tempfile.mkdtemp(prefix="sonde-kube-bench-")
    os.chmod(workdir, 0o755)
    fake = cgroup = nginx = None
    rounds, checks = [], {}
    try:
        fake = FakeKube(workdir, objects)
        cgroup = PodCgroup(pod_uid, container_id)
        port = nb.free_port()
        nginx = start_nginx_in(cgroup, port, workdir)
        deadline = time.time() + 10
        while len(cgroup.pids()) < 2 and time.time() < deadline:
            time.sleep(0.1)
        pids = cgroup.pids()
        print(f"fake API server :{fake.port} with {fake.state()['objects']}; nginx pids {pids} in "
              f"/{cgroup.relative} (pod {POD_NAMESPACE}/{pod_name}, {pods_expected} pods on "
              f"node {NODE})", flush=True)
        if len(pids) < 2 or any(cgroup_line(p) != "/" + cgroup.relative for p in pids):
            raise SystemExit(f"nginx (master + worker) is not in the pod's cgroup: {pids}")
        nb.wrk(port, 2)  # warm-up
        prometheus = args.output == "prometheus"
        for i in range(args.rounds):
            base_req, base_rps = nb.wrk(port, args.duration)
            r = {"round": i + 1, "baseline_requests": base_req, "baseline_rps": base_rps,
                 "order": ["off", "on"] if i % 2 == 0 else ["on", "off"]}
            for arm in r["order"]:
                r[arm] = instrumented_run(arm, port, args.duration, workdir, fake, pod_name,
                                          prometheus, pods_expected)
            rounds.append(r)
            line = f"round {i+1}: baseline {base_rps:.0f} req/s"
            for arm in ["off", "on"]:
                a = r[arm]
                line += (f" | {arm}: {a['rps']:.0f} req/s ratio {a['rps']/base_rps:.3f}, proc "
                         f"{a['processor_cpu_s']:.2f}s ({a['processor_cpu_s']/a['requests']*1e5:.3f}/100k), "
                         f"loader {a['loader_cpu_s']:.2f}s, HWM {a['processor_hwm_kib']/1024:.1f} MiB, "
                         f"spans {a['spans']}/{a['requests']}")
            print(line, flush=True)
            if prometheus:
                for arm in ["off", "on"]:
                    print(f"  {arm} scrape: {busiest(r[arm]['series'])}", flush=True)
        if not prometheus:
            # Check run: the same arms with Prometheus served, 2 s of load each, one scrape.
            for arm in ["off", "on"]:
                c = instrumented_run(arm, port, 2, workdir, fake, pod_name, True, pods_expected)
                checks[arm] = {"series": c["series"], "pod_labels": c["pod_labels"],
                               "pods_listed": c.get("pods_listed"),
                               "processor_hwm_kib": c["processor_hwm_kib"]}
                print(f"check {arm}: k8s_pod_name labels {c['pod_labels']}; "
                      f"{busiest(c['series'])}", flush=True)
    finally:
        if nginx:
            nb.stop(nginx, signal.SIGQUIT, 10)
        if cgroup:
            cgroup.remove()
        if fake:
            fake.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")

    summary = {"pods_on_node": pods_expected, "output": args.output}
    for arm in ["off", "on"]:
        runs = [r[arm] for r in rounds]
        reqs = sum(a["requests"] for a in runs)
        summary[arm] = {
            "ratio_median": median([a["rps"] / r["baseline_rps"] for a, r in zip(runs, rounds)]),
            "ratio_mean_rps": sum(a["rps"] for a in runs) / sum(r["baseline_rps"] for r in rounds),
            "processor_cpu_s_per_100k_median": median([a["processor_cpu_s"] / a["requests"] * 1e5 for a in runs]),
            "processor_cpu_s_per_100k_total": sum(a["processor_cpu_s"] for a in runs) / reqs * 1e5,
            "loader_cpu_s_per_100k_total": sum(a["loader_cpu_s"] for a in runs) / reqs * 1e5,
            "processor_startup_cpu_s_median": median([a["processor_startup_cpu_s"] for a in runs]),
            "processor_hwm_mib_max": max(a["processor_hwm_kib"] for a in runs) / 1024,
            "processor_hwm_mib_median": median([a["processor_hwm_kib"] for a in runs]) / 1024,
            "processor_rss_end_mib_median": median([a["processor_rss_end_kib"] for a in runs]) / 1024,
            "spans_per_request": (sum(a["spans"] or 0 for a in runs) / reqs),
        }
    summary["baseline_rps_median"] = median([r["baseline_rps"] for r in rounds])
    summary["on"]["pods_listed"] = sorted({r["on"]["pods_listed"] for r in rounds})
    summary["on"]["listed_after_s_median"] = median([r["on"]["listed_after_s"] for r in rounds])
    if checks:
        summary["check"] = checks
    print("summary: " + json.dumps(summary, indent=1))
    if args.json:
        json.dump({"rounds": rounds, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
