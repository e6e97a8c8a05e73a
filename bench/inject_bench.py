#!/usr/bin/env python3
"""Context-propagation benchmark: what `ebpf.context_propagation: headers` costs the selected
traffic it injects into, and what it costs traffic that is not selected.

Injection acts on a process's outgoing requests, so the process under load is a client: an
nginx reverse proxy (one worker, keep-alive upstream connections) in front of a backend nginx
that answers `/ok`. Two identical proxies run side by side: SELECTED (chosen by Sonde through
its port) and OTHER (never selected). Each round runs three modes, alternating, in one run:

  base  no Sonde at all
  off   sonde (release build) with injection disabled (the default)
  on    sonde with `ebpf.context_propagation: headers`

and in each mode `wrk -t1 -c16` against SELECTED, then against OTHER (Sonde still running).
Reported per mode: median req/s of each proxy over the rounds, ratios to `base`, and with
kernel.bpf_stats_enabled (separate short runs, so the stats' own clock reads do not weigh on
throughput) the run time of Sonde's programs per request on SELECTED and on OTHER, with the
injection programs (`inject_*`) apart. `on` also reports the loader's final
`inject_headers_added`, to show the requests were injected into.

Usage: inject_bench.py [--rounds 3] [--duration 8] [--json out.json] [--release DIR]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nginx_bench import (RELEASE, bpf_progs, free_port, stop, wait_log,  # noqa: E402
                         wait_port, wrk)

PROXY_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid PREFIX/nginx.pid;
error_log PREFIX/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path PREFIX/body;
    proxy_temp_path PREFIX/proxy;
    fastcgi_temp_path PREFIX/fastcgi;
    uwsgi_temp_path PREFIX/uwsgi;
    scgi_temp_path PREFIX/scgi;
    keepalive_requests 100000;
    upstream backend { server 127.0.0.1:UPSTREAM; keepalive 32; keepalive_requests 100000; }
    server {
        listen 127.0.0.1:PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


def start_nginx(conf, port, upstream, prefix):
    os.makedirs(prefix, exist_ok=True)
    text = conf.replace("PREFIX", prefix).replace("PORT", str(port)).replace("UPSTREAM", str(upstream))
    path = os.path.join(prefix, "nginx.conf")
    open(path, "w").write(text)
    p = subprocess.Popen(["/usr/sbin/nginx", "-p", prefix, "-c", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def prog_stats():
    """{id: (name, run_time_ns, run_cnt)} of every loaded program."""
    return {p["id"]: (p.get("name", ""), p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in bpf_progs()}


def kernel_cost(port, ours, seconds=3):
    """Requests of a short wrk run on `port` and the run time of programs `ours` meanwhile,
    split into the injection programs and the rest."""
    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
    before = prog_stats()
    requests, _ = wrk(port, seconds)
    after = prog_stats()
    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
    inject_ns = other_ns = inject_runs = 0
    for pid_ in ours:
        if pid_ not in after or pid_ not in before:
            continue
        name, ns1, cnt1 = after[pid_]
        _, ns0, cnt0 = before[pid_]
        if name.startswith("inject_"):
            inject_ns += ns1 - ns0
            inject_runs += cnt1 - cnt0
        else:
            other_ns += ns1 - ns0
    return {"requests": requests, "inject_ns_per_req": inject_ns / max(requests, 1),
            "inject_runs_per_req": inject_runs / max(requests, 1),
            "other_ns_per_req": other_ns / max(requests, 1)}


def run_mode(mode, sel_port, other_port, duration, workdir, release, restart_selected):
    out = {}
    sonde = None
    # A fresh SELECTED proxy per mode: its upstream connections are opened while this mode's
    # Sonde is attached, as in steady state (connections opened before the selection are never
    # injected into; the backend keeps the pool alive between requests).
    restart_selected()
    ours = set()
    log_path = os.path.join(workdir, f"sonde-{mode}.log")
    if mode != "base":
        conf = os.path.join(workdir, "sonde.yaml")
        propagation = "headers" if mode == "on" else "disabled"
        open(conf, "w").write(f"ebpf:\n  context_propagation: {propagation}\n")
        env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
               "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
        before = {p["id"] for p in bpf_progs()}
        with open(log_path, "w") as err:
            sonde = subprocess.Popen([os.path.join(release, "sonde"), "--config", conf,
                                      "--open-port", str(sel_port)],
                                     stdout=subprocess.DEVNULL, stderr=err, env=env)
        wait_log(log_path, r"processor connected")
        time.sleep(1.5)  # the selection settles (master and worker)
        ours = {p["id"] for p in bpf_progs() if p["id"] not in before}
    try:
        wrk(sel_port, 1)
        _, out["selected_rps"] = wrk(sel_port, duration)
        _, out["other_rps"] = wrk(other_port, duration)
        if sonde:
            out["selected_kernel"] = kernel_cost(sel_port, ours)
            out["other_kernel"] = kernel_cost(other_port, ours)
    finally:
        if sonde:
            stop(sonde, signal.SIGINT, 20)
    if mode == "on":
        log = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path, errors="replace").read())
        m = re.findall(r'\("inject_headers_added", (\d+)\)', log)
        out["inject_headers_added"] = int(m[-1]) if m else None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--json")
    ap.add_argument("--release", default=RELEASE, help="directory holding sonde and sonde-processor")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="sonde-inject-bench-")
    release = os.path.join(workdir, "bin")
    os.makedirs(release)
    for b in ("sonde", "sonde-processor"):
        shutil.copy2(os.path.join(args.release, b), release)
    up_port, sel_port, other_port = free_port(), free_port(), free_port()
    backend_conf = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "tests/servers/nginx.conf")).read()
    procs = [start_nginx(backend_conf, up_port, 0, os.path.join(workdir, "up"))]
    procs.append(start_nginx(PROXY_CONF, other_port, up_port, os.path.join(workdir, "other")))
    selected = []

    def restart_selected():
        while selected:
            stop(selected.pop(), signal.SIGQUIT, 10)
        selected.append(start_nginx(PROXY_CONF, sel_port, up_port, os.path.join(workdir, "sel")))
    results = {"base": [], "off": [], "on": []}
    try:
        for r in range(args.rounds):
            for mode in ("base", "off", "on"):
                res = run_mode(mode, sel_port, other_port, args.duration, workdir, release,
                               restart_selected)
                results[mode].append(res)
                print(f"round {r + 1} {mode}: {json.dumps(res)}", flush=True)
    finally:
        for p in procs + selected:
            stop(p, signal.SIGQUIT, 10)
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("selected_rps", "other_rps")}
           for m, v in results.items()}
    summary = {"load": open("/proc/loadavg").read().split()[:3], "median": med}
    for m in ("off", "on"):
        summary[f"{m}_selected_ratio"] = med[m]["selected_rps"] / med["base"]["selected_rps"]
        summary[f"{m}_other_ratio"] = med[m]["other_rps"] / med["base"]["other_rps"]
        for side in ("selected", "other"):
            for k in ("inject_ns_per_req", "other_ns_per_req", "inject_runs_per_req"):
                summary[f"{m}_{side}_{k}"] = statistics.median(x[f"{side}_kernel"][k] for x in results[m])
    summary["on_vs_off_selected"] = med["on"]["selected_rps"] / med["off"]["selected_rps"]
    summary["on_vs_off_other"] = med["on"]["other_rps"] / med["off"]["other_rps"]
    summary["inject_headers_added"] = [x.get("inject_headers_added") for x in results["on"]]
    print(json.dumps(summary, indent=2))
    if args.json:
        json.dump({"rounds": results, "summary": summary}, open(args.json, "w"), indent=2)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
