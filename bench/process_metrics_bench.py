#!/usr/bin/env python3
"""Loader CPU of process metrics (issue 15, item 2).

Starts N idle processes (a copy of /bin/sleep named sonde-bench-sleep), runs
`sonde --config X` selecting them by executable path (single host, as root), waits until all
N are selected, and measures the loader's CPU (utime + stime of the `sonde` process from
/proc/<pid>/stat; the processor is a separate process, measured beside it) over a fixed window,
with `metrics.features: [application]` (process metrics off) and
`[application, application_process]` (on, default `processes.interval` 5 s unless
--interval), alternating for --rounds rounds. The Prometheus endpoint is on in both, so the
processor records what it receives. --otlp also exports the metrics over OTLP HTTP/protobuf
every `interval` to a sink in this script (a thread that answers 200 and discards), so the
processor's OTLP encoding and sending are measured too.

  sudo bench/process_metrics_bench.py [--processes 100] [--duration 60] [--rounds 1]
                                      [--interval 5s] [--otlp]
                                      [--sonde target/release/sonde] [--json out.json]

Root is needed (eBPF). Not a test: nothing is asserted; figures go to BENCHMARKS.md.
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DiscardingSink(http.server.BaseHTTPRequestHandler):
    """An OTLP HTTP/protobuf receiver that reads each request whole and answers 200."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        DiscardingSink.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_sink():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DiscardingSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(sonde, workdir, n, features, interval, duration, otlp_port=None):
    port = free_port()
    cfg = os.path.join(workdir, f"sonde-{'-'.join(features)}.yaml")
    with open(cfg, "w") as f:
        f.write(
            "discovery:\n  instrument:\n    - exe_path: '*/sonde-bench-sleep'\n"
            f"metrics:\n  features: [{', '.join(features)}]\n"
            f"processes:\n  interval: {interval}\n"
            f"prometheus_export:\n  port: {port}\n"
            "trace_printer: disabled\n"
        )
        if otlp_port:
            f.write(
                f"otel_metrics_export:\n  endpoint: http://127.0.0.1:{otlp_port}\n"
                f"  protocol: http/protobuf\n  interval: {interval}\n"
            )
    log = open(os.path.join(workdir, f"log-{'-'.join(features)}.txt"), "w+")
    p = subprocess.Popen([sonde, "--config", cfg], stdout=subprocess.DEVNULL, stderr=log,
                         env={"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log.seek(0)
            if log.read().count("process selected") >= n:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("not every process was selected; see " + log.name)
        time.sleep(6)  # start-up done, a first reading taken
        kids = children(p.pid)
        loader0, proc0 = cpu_seconds(p.pid), sum(cpu_seconds(c) for c in kids)
        time.sleep(duration)
        loader1, proc1 = cpu_seconds(p.pid), sum(cpu_seconds(c) for c in kids)
        return {"features": features, "loader_cpu_s": round(loader1 - loader0, 3),
                "processor_cpu_s": round(proc1 - proc0, 3), "duration_s": duration}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=100)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--interval", default="5s")
    ap.add_argument("--sonde", default=os.path.join(ROOT, "target/release/sonde"))
    ap.add_argument("--otlp", action="store_true",
                    help="also export the metrics over OTLP every --interval to a discarding sink")
    ap.add_argument("--json")
    a = ap.parse_args()
    sink = start_sink() if a.otlp else None
    otlp_port = sink.server_address[1] if sink else None
    workdir = tempfile.mkdtemp(prefix="sonde-pm-bench-")
    sleeper = os.path.join(workdir, "sonde-bench-sleep")
    shutil.copy("/bin/sleep", sleeper)
    procs = [subprocess.Popen([sleeper, "100000"]) for _ in range(a.processes)]
    results = []
    try:
        for r in range(a.rounds):
            for features in (["application"], ["application", "application_process"]):
                res = run(a.sonde, workdir, a.processes, features, a.interval, a.duration,
                          otlp_port)
                res["round"] = r + 1
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        for p in procs:
            p.kill()
    otlp = f", OTLP export every interval ({DiscardingSink.requests} requests)" if a.otlp else ""
    print(f"\n{a.processes} selected processes, {a.duration} s windows, interval {a.interval}{otlp}")
    print("| round | process metrics | loader CPU s | processor CPU s |")
    print("|---|---|---|---|")
    for r in results:
        on = "on" if "application_process" in r["features"] else "off"
        print(f"| {r['round']} | {on} | {r['loader_cpu_s']:.2f} | {r['processor_cpu_s']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
