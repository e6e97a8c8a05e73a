#!/usr/bin/env python3
"""Sonde against the OpenTelemetry SDK users would otherwise use (issue 14, "Must show").

The same small apps, each run three ways, alternating within every round of one run:

  base   uninstrumented
  sdk    the OpenTelemetry SDK's zero-code instrumentation exporting traces and metrics over
         OTLP/gRPC, every trace (sampler always_on), metrics every 5 s
  sonde  the release `sonde` selecting the app by its port, exporting every trace and its RED
         metrics (every 5 s) over OTLP/gRPC

Apps (bench/sdk_apps/): Flask under gunicorn (one sync worker; `opentelemetry-instrument
gunicorn ...` for `sdk`) and a Node.js `http` server (`node --require
@opentelemetry/auto-instrumentations-node/register` for `sdk`). Both signal sources send to the
same collector on this machine: rotel with its blackhole exporter, as bench/nginx_bench.py
--export uses (its CPU is reported apart).

Each mode starts a fresh app, warms it up with `wrk` for 2 s (for `sonde`, then starts Sonde),
runs `wrk -t1 -c16 -dDURATION /ok` (`--connections` sets `-c`), and waits until the app and Sonde stop using CPU (what the
exporters still had queued is sent and counted). Recorded: req/s; the app's own CPU seconds
(utime + stime of its processes, gunicorn's master and worker, from /proc/PID/stat: this
includes Sonde's kernel programs, which run in the app's threads) per 100k requests; for
`sonde` the loader + processor CPU per 100k requests and the processor's final
`otlp_spans_exported` / `otlp_spans_dropped` against the requests wrk completed, and (in a
separate 3 s run under kernel.bpf_stats_enabled, its requests counted for the spans too) the
run time of Sonde's kernel programs per request, raw and net of what they ran for other
processes in 3 s without load just before (at the same rate); for `sdk`
any warning the SDK printed about dropped spans. Reported per app and mode: medians over the
rounds of req/s (ratio to `base`), of app CPU per 100k requests and its rise over `base` in µs
per request, and of Sonde's own CPU.

Installs what it needs, once (skipped when present and unchanged): a virtualenv with
bench/sdk_apps/requirements.txt in ~/.local/share/sonde/sdk-bench-venv and an npm install of
bench/sdk_apps/package.json in ~/.local/share/sonde/sdk-bench-node.

Usage: sdk_bench.py [--rounds 5] [--duration 8] [--apps flask,node] [--json out.json]
                    [--release DIR] [--modes base,sdk,sonde] [--connections 16]

`--connections 1` measures each request on its own (one connection: every request is its own
wake-up of the app in every mode), so the app's CPU per request does not change with how many
requests a saturated app finds per wake-up; with `--modes base,sonde` only those two run. The
summary then also gives the median over rounds of each round's own rise (sonde − base).
Run as root after `cargo build --release`. The binaries are copied to a temporary directory
first, so rebuilds during the run do not change what is measured.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from nginx_bench import (RELEASE, Exporting, bpf_progs, bpf_run_stats,  # noqa: E402
                         cpu_seconds, final_stats, free_port, refuse_other_sondes, sonde_log,
                         stop, wait_log, wait_port, wrk)
from inject_bench import prog_stats  # noqa: E402

APPS_DIR = os.path.join(HERE, "sdk_apps")
DATA = os.path.expanduser("~/.local/share/sonde")
PY_VENV = os.path.join(DATA, "sdk-bench-venv")
NODE_DIR = os.path.join(DATA, "sdk-bench-node")
MODES = ("base", "sdk", "sonde")
# Opt-in (`--modes base,sonde,sonde-inherit`): Sonde with its processor under the scheduling
# policy it was started with (`processor.scheduling: inherit`), against `sonde`'s default
# `SCHED_BATCH`.
OPTIONAL_MODES = ("sonde-inherit",)


def ensure_python():
    """The bench virtualenv with the pinned requirements; a copy of the requirements file inside
    it says what was installed."""
    wanted = open(os.path.join(APPS_DIR, "requirements.txt")).read()
    stamp = os.path.join(PY_VENV, "sdk-bench-requirements.txt")
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return
    if not os.path.exists(os.path.join(PY_VENV, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", PY_VENV], check=True)
    subprocess.run([os.path.join(PY_VENV, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
                    "-r", os.path.join(APPS_DIR, "requirements.txt")], check=True)
    open(stamp, "w").write(wanted)


def ensure_node():
    """The pinned OpenTelemetry JS packages in their own directory (not in the repository)."""
    wanted = open(os.path.join(APPS_DIR, "package.json")).read()
    manifest = os.path.join(NODE_DIR, "package.json")
    register = os.path.join(NODE_DIR, "node_modules/@opentelemetry/auto-instrumentations-node/package.json")
    if os.path.exists(manifest) and open(manifest).read() == wanted and os.path.exists(register):
        return
    os.makedirs(NODE_DIR, exist_ok=True)
    open(manifest, "w").write(wanted)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"],
                   cwd=NODE_DIR, check=True)


def sdk_env(exporting, service):
    """The standard OTEL_* configuration of the SDK variants: traces and metrics (no logs) over
    OTLP/gRPC to the collector, every trace, metrics every 5 s as Sonde's."""
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{exporting.grpc_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        # The default "all" also probes cloud metadata endpoints over the network.
        "OTEL_NODE_RESOURCE_DETECTORS": "env,host,os,process",
        # Shows the batch span processor's "Dropped N spans" warning, if any.
        "OTEL_LOG_LEVEL": "warn",
    }


def start_app(app, mode, port, exporting, log_path):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in bench/sdk_apps
    if app == "flask":
        cmd = [os.path.join(PY_VENV, "bin", "gunicorn"), "-w", "1", "-k", "sync",
               "-b", f"127.0.0.1:{port}", "--chdir", APPS_DIR, "flask_app:app"]
        if mode == "sdk":
            cmd = [os.path.join(PY_VENV, "bin", "opentelemetry-instrument")] + cmd
            env["PATH"] = os.path.join(PY_VENV, "bin") + ":" + env["PATH"]
    else:
        cmd = ["node", os.path.join(APPS_DIR, "node_app.js"), str(port)]
        if mode == "sdk":
            cmd[1:1] = ["--require", "@opentelemetry/auto-instrumentations-node/register"]
            env["NODE_PATH"] = os.path.join(NODE_DIR, "node_modules")
    if mode == "sdk":
        env.update(sdk_env(exporting, f"sdk-bench-{app}"))
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    wait_port(port, timeout=60)
    return p


def tree(pid):
    """`pid` and its descendants (gunicorn's worker)."""
    out = [pid]
    for p in out:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                out += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def tree_cpu(pid):
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass  # exited meanwhile
    return total


def run_mode(app, mode, duration, connections, workdir, release, exporting):
    port = free_port()
    app_log = os.path.join(workdir, f"{app}-{mode}.log")
    proc = start_app(app, mode, port, exporting, app_log)
    sonde = proc_pid = None
    log_path = os.path.join(workdir, f"sonde-{app}.log")
    out = {"load": open("/proc/loadavg").read().split()[0]}
    try:
        wrk(port, 2, connections)  # warm-up: imports, JIT, connection pools
        if mode.startswith("sonde"):
            env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
                   "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
            if mode == "sonde-inherit":
                env["SONDE_PROCESSOR_SCHEDULING"] = "inherit"
            env.update(exporting.env())
            env.pop("BEYLA_PROMETHEUS_PORT")  # OTLP only, as the SDK
            before = {p["id"] for p in bpf_progs()}
            with open(log_path, "w") as err:
                sonde = subprocess.Popen([os.path.join(release, "sonde"), "--open-port", str(port)],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
            wait_log(log_path, r"processor connected")
            proc_pid = int(wait_log(log_path, r"processor started pid=(\d+)").group(1))
            time.sleep(1.5)  # the selection settles (gunicorn's master and worker)
            ours = {p["id"] for p in bpf_progs() if p["id"] not in before}
        else:
            time.sleep(1.0)  # what the warm-up left queued is exported before measuring

        def sonde_cpu():
            return cpu_seconds(sonde.pid) + cpu_seconds(proc_pid) if sonde else 0.0
        app0, sonde0, coll0 = tree_cpu(proc.pid), sonde_cpu(), cpu_seconds(exporting.rotel.pid)
        out["requests"], out["rps"] = wrk(port, duration, connections)
        # Until the exporters have sent what is queued (at most 15 s; metrics go every 5 s).
        deadline, last = time.time() + 15, None
        while time.time() < deadline:
            now = tree_cpu(proc.pid) + sonde_cpu()
            if last is not None and now - last < 0.02:
                break
            last = now
            time.sleep(1.0)
        out["app_cpu_s"] = tree_cpu(proc.pid) - app0
        out["sonde_cpu_s"] = sonde_cpu() - sonde0
        out["collector_cpu_s"] = cpu_seconds(exporting.rotel.pid) - coll0
        out["stats_requests"] = 0
        if sonde:
            # Sonde's kernel programs' run time per request, in a separate short run:
            # kernel.bpf_stats_enabled costs two clock reads per program run itself.
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
            try:
                # Sonde's programs also run, and exit early, for other processes' events (on a
                # busy host, many): 3 s without load first, subtracted at the same rate.
                idle0, idle_cnt0, t0 = *bpf_run_stats(ours), time.time()
                time.sleep(3)
                ns0, cnt0, t1 = *bpf_run_stats(ours), time.time()
                by0 = prog_stats()
                out["stats_requests"], _ = wrk(port, 3, connections)
                by1 = prog_stats()
                ns1, cnt1, t2 = *bpf_run_stats(ours), time.time()
            finally:
                subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
            n = max(out["stats_requests"], 1)
            idle_ns, idle_runs = (ns0 - idle0) / (t1 - t0) * (t2 - t1), (cnt0 - idle_cnt0) / (t1 - t0) * (t2 - t1)
            out["bpf_ns_per_req"] = (ns1 - ns0) / n
            out["bpf_runs_per_req"] = (cnt1 - cnt0) / n
            out["bpf_idle_share"] = idle_ns / max(ns1 - ns0, 1)
            out["bpf_net_ns_per_req"] = (ns1 - ns0 - idle_ns) / n
            out["bpf_net_runs_per_req"] = (cnt1 - cnt0 - idle_runs) / n
            # Where the time goes: ns and runs per request of the costliest programs.
            by = {}
            for i in ours & by0.keys() & by1.keys():
                name, ns_, runs_ = by1[i]
                t = by.setdefault(name, [0, 0])
                t[0] += (ns_ - by0[i][1]) / n
                t[1] += (runs_ - by0[i][2]) / n
            out["bpf_by_program"] = {k: [round(v[0]), round(v[1], 2)] for k, v in
                                     sorted(by.items(), key=lambda kv: -kv[1][0])[:8]}
    finally:
        if sonde:
            stop(sonde, signal.SIGINT, 20)
        stop(proc, signal.SIGINT if app == "flask" else signal.SIGTERM, 15)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
    per100k = 100_000 / max(out["requests"], 1)
    out["app_cpu_s_per_100k"] = out["app_cpu_s"] * per100k
    out["collector_cpu_s_per_100k"] = out["collector_cpu_s"] * per100k
    if sonde:
        out["sonde_cpu_s_per_100k"] = out["sonde_cpu_s"] * per100k
        s = final_stats(sonde_log(log_path)) or {}
        out["spans_built"] = s.get("spans")
        out["otlp_spans_exported"] = s.get("otlp_spans_exported")
        out["otlp_spans_dropped"] = s.get("otlp_spans_dropped")
    if mode == "sdk":
        text = open(app_log, errors="replace").read()
        out["sdk_warnings"] = re.findall(r".*(?:[Dd]ropp|[Qq]ueue is full|[Ff]ailed to export|rror).*", text)[:5]
        # Every drop the SDK reported, not only the messages kept above: the Node SDK says how
        # many spans each time ("Dropped N spans because maxQueueSize reached"); Python's batch
        # processor only that its queue is full (each such message counted once).
        out["sdk_spans_dropped_reported"] = sum(int(n) for n in re.findall(r"Dropped (\d+) spans", text))
        out["sdk_queue_full_messages"] = len(re.findall(r"[Qq]ueue is full", text))
    return out


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--apps", default="flask,node")
    ap.add_argument("--json")
    ap.add_argument("--release", default=RELEASE, help="directory holding sonde and sonde-processor")
    ap.add_argument("--modes", default=",".join(MODES), help="which of base,sdk,sonde run (and the opt-in sonde-inherit)")
    ap.add_argument("--connections", type=int, default=16, help="wrk's connections")
    args = ap.parse_args()
    modes = tuple(m for m in MODES + OPTIONAL_MODES if m in args.modes.split(","))
    if "base" not in modes or len(modes) < 2:
        raise SystemExit("--modes needs base and at least one of sdk, sonde")
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs)")
    apps = args.apps.split(",")
    for tool in ["wrk", "bpftool", "node", "npm"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup.sh")
    if "flask" in apps:
        ensure_python()
    if "node" in apps:
        ensure_node()
    refuse_other_sondes()
    workdir = tempfile.mkdtemp(prefix="sonde-sdk-bench-")
    os.chmod(workdir, 0o755)
    release = os.path.join(workdir, "bin")
    os.makedirs(release)
    for b in ("sonde", "sonde-processor"):
        shutil.copy2(os.path.join(args.release, b), release)
    exporting = Exporting(workdir)
    results = {app: {m: [] for m in modes} for app in apps}
    load = [open("/proc/loadavg").read().split()[:3]]
    try:
        for r in range(args.rounds):
            for app in apps:
                # Rotated per round, so no mode always runs first after the previous app.
                for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                    res = run_mode(app, mode, args.duration, args.connections, workdir, release,
                                   exporting)
                    results[app][mode].append(res)
                    print(f"round {r + 1} {app} {mode}: {json.dumps(res)}", flush=True)
    finally:
        exporting.close()
        load.append(open("/proc/loadavg").read().split()[:3])
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {"load_start": load[0], "load_end": load[-1], "connections": args.connections}
    for app in apps:
        base = results[app]["base"]
        s = summary[app] = {}
        for mode in modes:
            rows = results[app][mode]
            m = s[mode] = {k: median(rows, k) for k in
                           ("rps", "app_cpu_s_per_100k", "sonde_cpu_s_per_100k", "collector_cpu_s_per_100k")}
            m["ratio"] = m["rps"] / median(base, "rps")
            # Median of the rounds' own ratios too: each mode ran next to that round's base.
            m["ratio_median_round"] = statistics.median(x["rps"] / b["rps"] for x, b in zip(rows, base))
            # 1 s of CPU per 100k requests is 10 µs per request.
            m["app_cpu_rise_us_per_req"] = (m["app_cpu_s_per_100k"] - median(base, "app_cpu_s_per_100k")) * 10
            rises = [(x["app_cpu_s_per_100k"] - b["app_cpu_s_per_100k"]) * 10 for x, b in zip(rows, base)]
            m["app_cpu_rise_us_per_req_median_round"] = statistics.median(rises)
            m["app_cpu_rise_rounds_above_zero"] = sum(r > 0 for r in rises)
            if mode.startswith("sonde"):
                m["sonde_cpu_us_per_req"] = m["sonde_cpu_s_per_100k"] * 10
                m["bpf_ns_per_req"] = median(rows, "bpf_ns_per_req")
                m["bpf_runs_per_req"] = median(rows, "bpf_runs_per_req")
                m["bpf_net_ns_per_req"] = median(rows, "bpf_net_ns_per_req")
                m["bpf_net_runs_per_req"] = median(rows, "bpf_net_runs_per_req")
                # Spans exported against every request of the mode's Sonde (measured + stats runs).
                m["spans_exported_per_request"] = [x["otlp_spans_exported"] / (x["requests"] + x["stats_requests"])
                                                   for x in rows]
                m["otlp_spans_dropped"] = [x["otlp_spans_dropped"] for x in rows]
            if mode == "sdk":
                m["sdk_warnings"] = sorted({w for x in rows for w in x["sdk_warnings"]})[:5]
                m["sdk_spans_dropped_reported"] = [x["sdk_spans_dropped_reported"] for x in rows]
                m["sdk_queue_full_messages"] = [x["sdk_queue_full_messages"] for x in rows]
    print(json.dumps(summary, indent=2))
    if args.json:
        json.dump({"rounds": results, "summary": summary}, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
