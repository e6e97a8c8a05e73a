#!/usr/bin/env python3
"""Where an exporting Sonde's CPU goes, thread by thread: nginx (one worker) under
`wrk -t1 -c16`, uninstrumented and then instrumented with each export configuration in turn
(alternating ROUNDS times in one run, the baseline taken again after each round's
instrumented runs), with the collector (rotel, blackhole exporter) and a Prometheus scraper
as in `nginx_bench.py --export`.

For each configuration it reports the throughput ratio (against the mean of the round's two
baselines) and, per request: the CPU of each processor thread by name (the reader thread
`sonde-processor`, the export worker `sonde-otlp`, the Prometheus server …), the loader's
and the collector's CPU, and each thread's context switches per second. That splits what an
export configuration adds over another into the reader's work, the export worker's and the
collector's, which `nginx_bench.py` reports only as one loader+processor total and a
collector total.

Configurations: `metrics` (OTLP metrics + Prometheus, no traces), `t01` (+ traces,
`traceidratio` 0.1), `all` (+ every trace), all over OTLP/gRPC. A configuration may carry
environment settings for Sonde after `+`: `metrics+SONDE_PROCESSOR_SCHEDULING=inherit` is
`metrics` with the processor under the policy it was started with, so one run compares a
setting on and off. A build directory after `@` runs that build's `sonde` instead of
--release's: `metrics@/tmp/before,metrics` compares two builds in one run. One setting is the
collector's, not Sonde's: `+COLLECTOR_POLICY=batch` runs the collector's threads under
`SCHED_BATCH` for that configuration (`chrt`, set back to `SCHED_OTHER` after it), to see
what its wake-ups cost the two busy CPUs beyond its own CPU time.

Usage: thread_costs.py [--rounds 4] [--duration 8] [--configs metrics,t01,all]
                       [--release DIR] [--no-pin] [--json out.json]
e.g. thread_costs.py --configs metrics,metrics+SONDE_PROCESSOR_SCHEDULING=inherit
Run as root after `cargo build --release` (or give --release a copy of a build).
nginx runs on CPU 0 and wrk on CPU 1 unless --no-pin; Sonde and the collector are left to
the scheduler.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_bench as nb  # noqa: E402

CONFIGS = {
    "metrics": {"traces": False, "ratio": None},
    "t01": {"traces": True, "ratio": 0.1},
    "all": {"traces": True, "ratio": None},
}


def thread_stats(pid):
    """Per thread of `pid`: name -> [cpu seconds, voluntary, involuntary context switches]
    (threads of one name summed)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            head, tail = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)
            status = open(f"/proc/{pid}/task/{tid}/status").read()
        except OSError:
            continue  # the thread ended between the listing and the read
        name = head.split("(", 1)[1]
        fields = tail.split()
        cpu = (int(fields[11]) + int(fields[12])) / nb.TICKS
        vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        nonvol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        acc = out.setdefault(name, [0.0, 0, 0])
        acc[0] += cpu
        acc[1] += vol
        acc[2] += nonvol
    return out


def delta(after, before):
    return {name: [a - b for a, b in zip(v, before.get(name, [0.0, 0, 0]))]
            for name, v in after.items()}


def parse_config(config):
    """`name[@DIR][+VAR=value...]` -> (name, build directory or None, {VAR: value})."""
    head, *settings = config.split("+")
    name, _, build = head.partition("@")
    if build and not os.path.isfile(os.path.join(build, "sonde")):
        raise SystemExit(f"--configs: no sonde in {build!r} (from {config!r})")
    if name not in CONFIGS:
        raise SystemExit(f"--configs: unknown configuration {name!r} (known: {', '.join(CONFIGS)})")
    env = {}
    for setting in settings:
        var, eq, value = setting.partition("=")
        if not eq or not var:
            raise SystemExit(f"--configs: {setting!r} in {config!r} is not VAR=value")
        env[var] = value
    if env.get("COLLECTOR_POLICY", "batch") not in ("batch", "other"):
        raise SystemExit(f"--configs: COLLECTOR_POLICY in {config!r} must be batch or other")
    return name, build or None, env


def collector_policy(pid, policy):
    """Every thread of the collector to `policy` (`batch` or `other`)."""
    flag = {"batch": "-b", "other": "-o"}[policy]
    subprocess.run(["chrt", "-a", flag, "-p", "0", str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def instrumented(port, duration, workdir, release, exporting, config):
    name, build, extra_env = parse_config(config)
    policy = extra_env.pop("COLLECTOR_POLICY", None)
    if policy:
        collector_policy(exporting.rotel.pid, policy)
    release = build or release
    exporting.traces = CONFIGS[name]["traces"]
    exporting.sampler_ratio = CONFIGS[name]["ratio"]
    log_path = os.path.join(workdir, "sonde.log")
    env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
           "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock"), **exporting.env(),
           **extra_env}
    with open(log_path, "w") as err:
        sonde = subprocess.Popen([os.path.join(release, "sonde"), "--open-port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=err, env=env)
    scraper = None
    try:
        nb.wait_log(log_path, r"processor connected")
        proc_pid = int(nb.wait_log(log_path, r"processor started pid=(\d+)").group(1))
        time.sleep(1.0)  # let the selection settle (master and worker)
        threads0 = thread_stats(proc_pid)
        loader0 = nb.cpu_seconds(sonde.pid)
        collector0 = nb.cpu_seconds(exporting.rotel.pid)
        scraper = exporting.scrape_loop()
        requests, rps = nb.wrk(port, duration)
        # Taken at the end of the load, not after a drain: CPU per request of the steady state
        # (the queue holds at most a batch timeout's spans at the end).
        threads = delta(thread_stats(proc_pid), threads0)
        loader = nb.cpu_seconds(sonde.pid) - loader0
        collector = nb.cpu_seconds(exporting.rotel.pid) - collector0
    finally:
        exporting.stopping = True
        nb.stop(sonde, signal.SIGINT, 20)
        if policy:
            collector_policy(exporting.rotel.pid, "other")
    # The next run's scraper must not overlap this one's (it sleeps 5 s between scrapes).
    if scraper is not None:
        scraper.join(timeout=10)
    log = nb.sonde_log(log_path)
    stats = nb.final_stats(log)
    if stats is None:
        raise SystemExit(f"no final processor stats in {log_path}")
    return {"requests": requests, "rps": rps, "threads": threads, "loader_cpu_s": loader,
            "collector_cpu_s": collector, "spans_built": stats["spans"],
            "otlp_spans_exported": stats.get("otlp_spans_exported", 0),
            "otlp_spans_dropped": stats.get("otlp_spans_dropped", 0),
            # Records the kernel side could not queue (ring full and the like), from the
            # loader's final counters: the processor's stats hold them only as of the last
            # report (every 10 s), which a short run may not reach.
            "kernel_lost": final_kernel_lost(log)}


def final_kernel_lost(log):
    """Sum of the loader's "final kernel counters" whose name says lost."""
    lines = [l for l in log.splitlines() if "final kernel counters" in l]
    if not lines:
        raise SystemExit("no final kernel counters in the sonde log")
    return sum(int(n) for name, n in re.findall(r'\("([a-z0-9_]+)", (\d+)\)', lines[-1])
               if "lost" in name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--configs", default="metrics,t01,all")
    ap.add_argument("--release", default=nb.RELEASE)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    configs = args.configs.split(",")
    for c in configs:
        parse_config(c)
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs)")
    nb.refuse_other_sondes()
    if not args.no_pin:
        nb.PIN["nginx"], nb.PIN["wrk"] = ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    workdir = tempfile.mkdtemp(prefix="sonde-threads-")
    os.chmod(workdir, 0o755)
    port = nb.free_port()
    nginx = nb.start_nginx(port, workdir)
    exporting = nb.Exporting(workdir)
    rounds = []
    try:
        nb.wrk(port, 2)  # warm-up
        for i in range(args.rounds):
            _, before = nb.wrk(port, args.duration)
            # Each configuration goes first in turn: the host's drift within a round is
            # spread over all of them.
            order = configs[i % len(configs):] + configs[:i % len(configs)]
            runs = {c: instrumented(port, args.duration, workdir, args.release, exporting, c)
                    for c in order}
            _, after = nb.wrk(port, args.duration)
            base = (before + after) / 2
            rounds.append({"round": i + 1, "baseline_before_rps": before,
                           "baseline_after_rps": after, "runs": runs})
            print(f"round {i + 1}: baseline {before:.0f} / {after:.0f} req/s; "
                  + ", ".join(f"{c} {runs[c]['rps'] / base:.3f}" for c in configs), flush=True)
    finally:
        exporting.close()
        nb.stop(nginx, signal.SIGQUIT, 10)

    summary = {}
    for c in configs:
        runs = [r["runs"][c] for r in rounds]
        bases = [(r["baseline_before_rps"] + r["baseline_after_rps"]) / 2 for r in rounds]
        reqs = sum(x["requests"] for x in runs)
        secs = args.duration * len(runs)
        names = sorted({n for x in runs for n in x["threads"]})
        per_thread = {}
        for n in names:
            cpu = sum(x["threads"].get(n, [0, 0, 0])[0] for x in runs)
            vol = sum(x["threads"].get(n, [0, 0, 0])[1] for x in runs)
            nonvol = sum(x["threads"].get(n, [0, 0, 0])[2] for x in runs)
            if cpu == 0 and vol + nonvol < 10 * len(runs):
                continue  # an idle thread
            per_thread[n] = {"cpu_us_per_request": cpu / reqs * 1e6,
                             "voluntary_switches_per_s": vol / secs,
                             "involuntary_switches_per_s": nonvol / secs}
        summary[c] = {
            "throughput_ratio_median_round": statistics.median(x["rps"] / b for x, b in zip(runs, bases)),
            "processor_threads": per_thread,
            "processor_cpu_us_per_request": sum(t["cpu_us_per_request"] for t in per_thread.values()),
            "loader_cpu_us_per_request": sum(x["loader_cpu_s"] for x in runs) / reqs * 1e6,
            "collector_cpu_us_per_request": sum(x["collector_cpu_s"] for x in runs) / reqs * 1e6,
            "spans_exported_per_request": sum(x["otlp_spans_exported"] for x in runs) / reqs,
            "otlp_spans_dropped": sum(x["otlp_spans_dropped"] for x in runs),
            # Every request is one span: below 1 means exchanges were lost on the way.
            "spans_built_per_request": sum(x["spans_built"] for x in runs) / reqs,
            "kernel_lost": sum(x["kernel_lost"] for x in runs),
        }
    print("summary: " + json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": rounds, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
