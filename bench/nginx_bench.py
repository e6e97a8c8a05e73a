#!/usr/bin/env python3
"""Core benchmark: nginx (one worker) under `wrk -t1 -c16` for DURATION seconds, uninstrumented
and instrumented by `sonde` (release build), alternating ROUNDS times in one run.

Reports per round and overall: throughput ratio (instrumented / uninstrumented req/s), spans
produced / requests completed, loader+processor CPU seconds per 100k requests, processor peak
RSS (VmHWM), and in-kernel cost per request (kernel.bpf_stats_enabled run time of Sonde's
programs / requests). Run as root after `cargo build --release`; scripts/bench.sh does both.

Usage: nginx_bench.py [--rounds 3] [--duration 10] [--json out.json]
                      [--compare-release DIR] [--export] [-- extra sonde args]

With --export, the instrumented runs export spans and metrics over OTLP/gRPC (metrics every
5 s) to a real collector (rotel, blackhole exporter, from the test virtualenv) and serve the
Prometheus endpoint, scraped every 5 s; spans are then the ones the collector accepted
(`otlp_spans_exported`), and the collector's CPU is reported apart.

With --not-selected, Sonde selects a second nginx (by its port) and wrk drives the first,
which Sonde does not select: what a process pays for Sonde instrumenting another one. After
each such run, 10 requests go to the selected nginx, so the span count (10 per round, none for
the wrk traffic) proves the selection; bpf ns/request is then the cost of unselected traffic.

With --compare-release, every round also runs a second instrumented variant (DIR/sonde, another
build, with the same arguments) right after the first, so both are paired with the same
baseline.

With --bracket, every round runs the baseline again after its instrumented runs, and each ratio
is taken against the mean of the two baselines: a host that slows down or speeds up within a
round then weighs on both sides (the two baselines of one round differ by up to 14 % on this
shared machine). With --pin, nginx runs on CPU 0 and wrk on CPU 1 (Sonde's processes are left
to the scheduler), so no round depends on whether the scheduler put the two on one CPU for a
while.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


# --pin: nginx on CPU 0 and wrk on CPU 1, so no round depends on where the scheduler put them.
PIN = {"nginx": [], "wrk": []}


def start_nginx(port, prefix):
    conf = open(os.path.join(ROOT, "tests/servers/nginx.conf")).read()
    conf = conf.replace("PREFIX", prefix).replace("PORT", str(port))
    path = os.path.join(prefix, "nginx.conf")
    open(path, "w").write(conf)
    p = subprocess.Popen(PIN["nginx"] + ["/usr/sbin/nginx", "-p", prefix, "-c", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def stop(proc, sig, timeout):
    """Sends `sig`, waits up to `timeout` seconds, then kills."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(port, duration, connections=16):
    out = subprocess.run(PIN["wrk"] + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s",
                          f"http://127.0.0.1:{port}/ok"],
                         capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return requests, rps


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bpf_progs():
    return json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                     text=True, check=True).stdout)


def bpf_run_stats(ids):
    """Sum of run_time_ns and run_cnt over the given program ids (Sonde's, loaded by this run;
    Debian's bpftool does not report owning pids)."""
    ns = cnt = 0
    for p in bpf_progs():
        if p["id"] in ids:
            ns += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
    return ns, cnt


def sonde_log(path):
    """A Sonde log file's text without its ANSI colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", open(path, errors="replace").read())


def final_stats(log):
    """The processor's final stats (the last "final processor stats" line) from `sonde_log`'s
    text, or None when the processor never logged them."""
    stats = re.findall(r"final processor stats stats=(\{.*\})", log)
    return json.loads(stats[-1]) if stats else None


def wait_log(path, needle, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = open(path, errors="replace").read()
        m = re.search(needle, text)
        if m:
            return m
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {needle!r} in {path}:\n{open(path).read()[-3000:]}")


VENV = os.environ.get("SONDE_TEST_VENV", os.path.expanduser("~/.local/share/sonde/venv"))
ROTEL = os.path.join(VENV, "lib/python3.11/site-packages/rotel/rotel-agent")


class Exporting:
    """A real collector (rotel with its blackhole exporter) and a Prometheus scraper."""

    def __init__(self, workdir, traces=True, sampler_ratio=None, protocol="grpc"):
        self.traces = traces
        self.protocol = protocol
        self.http_port = free_port()
        self.sampler_ratio = sampler_ratio
        self.grpc_port = free_port()
        self.prom_port = free_port()
        self.log = open(os.path.join(workdir, "rotel.log"), "w")
        self.rotel = subprocess.Popen(
            [ROTEL, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
             "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}", "--exporter", "blackhole"],
            stdout=self.log, stderr=self.log)
        wait_port(self.grpc_port)
        self.scrapes = 0
        self.stopping = False

    def env(self):
        if self.protocol == "grpc":
            endpoint = f"http://127.0.0.1:{self.grpc_port}"
            traces, metrics, protocol = endpoint, endpoint, "grpc"
        else:
            endpoint = f"http://127.0.0.1:{self.http_port}"
            traces, metrics, protocol = endpoint + "/v1/traces", endpoint + "/v1/metrics", "http/protobuf"
        env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": metrics,
               "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_METRIC_EXPORT_INTERVAL": "5000",
               "BEYLA_PROMETHEUS_PORT": str(self.prom_port)}
        if self.traces:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = traces
        if self.sampler_ratio is not None:
            env["OTEL_TRACES_SAMPLER"] = "traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = str(self.sampler_ratio)
        return env

    def scrape_loop(self):
        import threading
        import urllib.request

        def loop():
            while not self.stopping:
                time.sleep(5)
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.prom_port}/metrics", timeout=5).read()
                    self.scrapes += 1
                except OSError:
                    pass
        self.stopping = False
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t

    def close(self):
        stop(self.rotel, signal.SIGTERM, 10)


def get_ok(port):
    """One GET /ok on a new connection; raises unless nginx answers 200."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=5) as r:
        if r.status != 200:
            raise SystemExit(f"GET /ok on {port}: {r.status}")
        r.read()


# Requests sent to the selected nginx after a --not-selected run.
SELECTED_CHECK_REQUESTS = 10


def instrumented_round(port, duration, workdir, extra, printer, release=None, exporting=None,
                       select_port=None):
    select_port = select_port or port
    spans_path = os.path.join(workdir, "spans.json")
    log_path = os.path.join(workdir, "sonde.log")
    env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": printer, "NO_COLOR": "1",
           "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
    if exporting:
        env.update(exporting.env())
        collector_cpu0 = cpu_seconds(exporting.rotel.pid)
    before = {p["id"] for p in bpf_progs()}
    with open(spans_path, "w") as out, open(log_path, "w") as err:
        sonde = subprocess.Popen([os.path.join(release or RELEASE, "sonde"), "--open-port", str(select_port)] + extra,
                                 stdout=out, stderr=err, env=env)
    try:
        wait_log(log_path, r"processor connected")
        m = wait_log(log_path, r"processor started pid=(\d+)")
        proc_pid = int(m.group(1))
        time.sleep(1.0)  # let the selection settle (master and worker)
        ours = {p["id"] for p in bpf_progs() if p["id"] not in before}
        cpu0 = cpu_seconds(sonde.pid) + cpu_seconds(proc_pid)
        if exporting:
            exporting.scrape_loop()
        requests, rps = wrk(port, duration)
        # In-kernel cost in a separate short run: kernel.bpf_stats_enabled itself costs two
        # clock reads per program run, which must not weigh on the throughput figure.
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
        ns0, cnt0 = bpf_run_stats(ours)
        stats_requests, _ = wrk(port, 3)
        ns1, cnt1 = bpf_run_stats(ours)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
        if select_port != port:
            for _ in range(SELECTED_CHECK_REQUESTS):
                get_ok(select_port)
        # Let the processor drain what is queued before measuring its CPU and memory.
        deadline = time.time() + 20
        last = -1
        while time.time() < deadline:
            n = cpu_seconds(proc_pid)
            if n == last:
                break
            last = n
            time.sleep(1.0)
        cpu1 = cpu_seconds(sonde.pid) + cpu_seconds(proc_pid)
        hwm = hwm_kib(proc_pid)
    finally:
        if exporting:
            exporting.stopping = True
        stop(sonde, signal.SIGINT, 20)
    extra_out = {}
    if exporting:
        log = sonde_log(log_path)
        stats = final_stats(log)
        if stats is None:
            raise SystemExit(f"no final processor stats in {log_path}")
        spans = stats["otlp_spans_exported"] if exporting.traces else stats["spans"]
        extra_out = {"spans_built": stats["spans"], "otlp_spans_dropped": stats["otlp_spans_dropped"],
                     # Why spans were dropped, when the exporter said (queue full is silent).
                     "export_warnings": re.findall(r"OTLP export failing.*", log)[:3],
                     "collector_cpu_s": cpu_seconds(exporting.rotel.pid) - collector_cpu0,
                     "prometheus_scrapes": exporting.scrapes}
    elif printer == "json":
        spans = sum(1 for line in open(spans_path, errors="replace") if line.startswith("{"))
    else:
        # Spans built, from the processor's final stats (nothing is printed).
        stats = final_stats(sonde_log(log_path))
        spans = stats["spans"] if stats else 0
    return {
        "requests": requests, "rps": rps, "spans": spans, "stats_requests": stats_requests,
        "cpu_s": cpu1 - cpu0, "processor_hwm_kib": hwm,
        "bpf_ns": ns1 - ns0, "bpf_runs": cnt1 - cnt0, **extra_out,
    }


def refuse_other_sondes():
    """Another Sonde on the host runs its socket programs on every socket call too (at least
    its pid filter's early return): it would be measured as part of this run's cost."""
    others = subprocess.run(["pgrep", "-l", "^sonde"],
                            capture_output=True, text=True).stdout.strip()
    if others:
        raise SystemExit("another Sonde is running; its kernel programs would be measured too:\n"
                         + others)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--printer", default="json", choices=["json", "text", "disabled"],
                    help="trace printer of the instrumented runs (json: spans written to a file and counted)")
    ap.add_argument("--compare-release", help="directory of another build whose sonde runs as a second variant per round")
    ap.add_argument("--release", help="directory of the build of the first instrumented variant "
                    "(default target/release; a copy keeps the run safe from rebuilds)")
    ap.add_argument("--export", action="store_true",
                    help="export over OTLP to a real collector and serve Prometheus (printer disabled)")
    ap.add_argument("--export-signals", default="all", choices=["all", "metrics"],
                    help="with --export: export traces and metrics, or metrics only")
    ap.add_argument("--export-protocol", default="grpc", choices=["grpc", "http"],
                    help="with --export: OTLP over gRPC or HTTP/protobuf")
    ap.add_argument("--sampler-ratio", type=float,
                    help="with --export: sample traces with traceidratio at this ratio")
    ap.add_argument("--not-selected", action="store_true",
                    help="Sonde selects a second nginx; wrk drives the one it does not select")
    ap.add_argument("--bracket", action="store_true",
                    help="also run the baseline after each round's instrumented runs and compare "
                    "them with the mean of the two (a host that drifts within a round then "
                    "weighs on both sides)")
    ap.add_argument("--pin", action="store_true",
                    help="run nginx on CPU 0 and wrk on CPU 1 (Sonde's processes are not pinned)")
    ap.add_argument("extra", nargs="*", help="extra sonde arguments (after --)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs)")
    for tool in ["wrk", "bpftool", "/usr/sbin/nginx"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup.sh")
    refuse_other_sondes()
    if args.pin:
        PIN["nginx"], PIN["wrk"] = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    workdir = tempfile.mkdtemp(prefix="sonde-bench-")
    os.chmod(workdir, 0o755)
    port = free_port()
    nginx = start_nginx(port, workdir)
    selected = None
    if args.not_selected:
        if args.export:
            raise SystemExit("--not-selected measures the unselected nginx: no --export")
        select_port = free_port()
        selected_dir = os.path.join(workdir, "selected")
        os.makedirs(selected_dir)
        os.chmod(selected_dir, 0o755)
        selected = start_nginx(select_port, selected_dir)
    else:
        select_port = port
    exporting = Exporting(workdir, args.export_signals == "all", args.sampler_ratio,
                           args.export_protocol) if args.export else None
    if exporting:
        args.printer = "disabled"
    rounds = []
    try:
        wrk(port, 2)  # warm-up
        for i in range(args.rounds):
            base_req, base_rps = wrk(port, args.duration)

            def variant(release):
                return instrumented_round(port, args.duration, workdir, args.extra, args.printer,
                                          release, exporting=exporting, select_port=select_port)
            # The two builds take turns going first: whichever ran last in every round would
            # carry any drift of the host within a round.
            compared = None
            if args.compare_release is not None and i % 2 == 1:
                compared = variant(args.compare_release)
            inst = variant(args.release)
            if args.compare_release is not None and compared is None:
                compared = variant(args.compare_release)
            base_after = None
            if args.bracket:
                base_after_req, base_after = wrk(port, args.duration)
                base_req += base_after_req
                base_before = base_rps
                base_rps = (base_rps + base_after) / 2
            if selected is not None and inst["spans"] != SELECTED_CHECK_REQUESTS:
                raise SystemExit(f"round {i + 1}: {inst['spans']} spans, expected "
                                 f"{SELECTED_CHECK_REQUESTS} (the selected nginx's requests only)")
            r = {"round": i + 1, "baseline_requests": base_req, "baseline_rps": base_rps, **inst}
            if base_after is not None:
                r["baseline_before_rps"], r["baseline_after_rps"] = base_before, base_after
            if compared is not None:
                r["compare"] = compared
            rounds.append(r)
            bracket = (f" (before {base_before:.0f}, after {base_after:.0f})"
                       if base_after is not None else "")
            print(f"round {i+1}: baseline {base_rps:.0f} req/s{bracket}, instrumented {inst['rps']:.0f} req/s "
                  f"(ratio {inst['rps']/base_rps:.3f}), spans/requests {inst['spans']}/{inst['requests'] + inst['stats_requests']}, "
                  f"cpu {inst['cpu_s']:.2f}s, processor HWM {inst['processor_hwm_kib']/1024:.1f} MiB, "
                  f"bpf {inst['bpf_ns']/max(inst['stats_requests'],1):.0f} ns/request", flush=True)
            if args.compare_release is not None:
                o = r["compare"]
                print(f"         compared variant: {o['rps']:.0f} req/s (ratio {o['rps']/base_rps:.3f}), "
                      f"spans/requests {o['spans']}/{o['requests'] + o['stats_requests']}, cpu {o['cpu_s']:.2f}s, "
                      f"processor HWM {o['processor_hwm_kib']/1024:.1f} MiB", flush=True)
    finally:
        if exporting:
            exporting.close()
        stop(nginx, signal.SIGQUIT, 10)
        if selected is not None:
            stop(selected, signal.SIGQUIT, 10)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
        shutil.rmtree(workdir, ignore_errors=True)

    base = sum(r["baseline_rps"] for r in rounds) / len(rounds)
    inst = sum(r["rps"] for r in rounds) / len(rounds)
    reqs = sum(r["requests"] + r["stats_requests"] for r in rounds)
    stats_reqs = sum(r["stats_requests"] for r in rounds)
    ratios = sorted(r["rps"] / r["baseline_rps"] for r in rounds)
    summary = {
        "throughput_ratio": inst / base,
        # Robust to one round disturbed by the shared host.
        "throughput_ratio_median_round": ratios[len(ratios) // 2] if len(ratios) % 2 else
        (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2,
        "baseline_rps_mean": base,
        "instrumented_rps_mean": inst,
        "spans_per_request": sum(r["spans"] for r in rounds) / reqs,
        "cpu_s_per_100k_requests": sum(r["cpu_s"] for r in rounds) / reqs * 100_000,
        "processor_peak_rss_mib": max(r["processor_hwm_kib"] for r in rounds) / 1024,
        "bpf_ns_per_request": sum(r["bpf_ns"] for r in rounds) / stats_reqs,
        "bpf_runs_per_request": sum(r["bpf_runs"] for r in rounds) / stats_reqs,
    }
    if args.export:
        summary["otlp_spans_dropped"] = sum(r["otlp_spans_dropped"] for r in rounds)
        summary["collector_cpu_s_per_100k_requests"] = sum(r["collector_cpu_s"] for r in rounds) / reqs * 100_000
        summary["prometheus_scrapes"] = sum(r["prometheus_scrapes"] for r in rounds)
    if args.compare_release is not None:
        others = [r["compare"] for r in rounds]
        o_reqs = sum(o["requests"] + o["stats_requests"] for o in others)
        o_ratios = sorted(o["rps"] / r["baseline_rps"] for o, r in zip(others, rounds))
        summary["compare"] = {
            "throughput_ratio": sum(o["rps"] for o in others) / len(others) / base,
            "throughput_ratio_median_round": o_ratios[len(o_ratios) // 2] if len(o_ratios) % 2 else
            (o_ratios[len(o_ratios) // 2 - 1] + o_ratios[len(o_ratios) // 2]) / 2,
            "spans_per_request": sum(o["spans"] for o in others) / o_reqs,
            "cpu_s_per_100k_requests": sum(o["cpu_s"] for o in others) / o_reqs * 100_000,
            "processor_peak_rss_mib": max(o["processor_hwm_kib"] for o in others) / 1024,
        }
    print("summary: " + json.dumps(summary, indent=1))
    if args.json:
        json.dump({"rounds": rounds, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
