#!/usr/bin/env python3
"""Issue 14's "Must show" figures from one build in one sitting: runs each benchmark that
measures one of them, one after another (never two at once), keeps every raw output in one
directory and prints the table of BENCHMARKS.md's "Issue 14 at a glance" (figure, target,
met or not) from those outputs alone.

Steps (each a script of this directory, with the options the sections of BENCHMARKS.md
describe; nginx on CPU 0 and wrk on CPU 1 wherever the script offers it):

  exports     thread_costs.py: OTLP metrics + Prometheus, + traces at 0.1, + every trace (gRPC)
  http        nginx_bench.py --export --export-protocol http: every trace over HTTP/protobuf
  kernel      prog_costs.sh: Sonde's kernel programs per request on nginx (`bpf_stats`)
  unselected  nginx_bench.py --not-selected: a process Sonde does not select
  sdk         sdk_bench.py: Flask and Node.js `http`, uninstrumented / OpenTelemetry SDK / Sonde
  memory      memory_bench.py (1,000 processes, 10,000 connections) and loader_memory.py
  replay      replay_bench.sh: processor events/s on one core
  printers    nginx_bench.py --printer json, then text

Usage: issue14.py [--release DIR] [--out DIR] [--steps exports,http,...] [--rounds N]
       issue14.py --report DIR      (the table again from an earlier run's outputs)
Run as root after `cargo build --release --workspace --bins` (bench/sdk_bench.py installs the
SDK apps' packages on first use). Takes about 30 minutes with the default rounds (26 on the
2-vCPU machine of BENCHMARKS.md).
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = ["exports", "http", "kernel", "unselected", "sdk", "memory", "replay", "printers"]


def commands(step, release, out, rounds):
    """The commands of one step: (output file, argv, extra environment)."""
    py = [sys.executable]
    r = str(rounds)
    if step == "exports":
        return [("exports.json", py + [f"{HERE}/thread_costs.py", "--rounds", r, "--duration", "8",
                                       "--configs", "metrics,t01,all", "--release", release,
                                       "--json", f"{out}/exports.json"], {})]
    if step == "http":
        return [("http.json", py + [f"{HERE}/nginx_bench.py", "--export", "--export-protocol", "http",
                                    "--rounds", str(max(3, rounds - 2)), "--duration", "8",
                                    "--bracket", "--pin", "--release", release,
                                    "--json", f"{out}/http.json"], {})]
    if step == "kernel":
        return [("kernel.txt", ["bash", f"{HERE}/prog_costs.sh"],
                 {"DURATION": "5", "SONDE_BIN_DIR": release})]
    if step == "unselected":
        return [("unselected.json", py + [f"{HERE}/nginx_bench.py", "--not-selected", "--printer",
                                          "disabled", "--rounds", str(rounds + 3), "--duration", "6",
                                          "--bracket", "--pin", "--release", release,
                                          "--json", f"{out}/unselected.json"], {})]
    if step == "sdk":
        return [("sdk.json", py + [f"{HERE}/sdk_bench.py", "--apps", "flask,node", "--modes",
                                   "base,sdk,sonde", "--rounds", r, "--duration", "8",
                                   "--release", release, "--json", f"{out}/sdk.json"], {})]
    if step == "memory":
        return [("memory.json", py + [f"{HERE}/memory_bench.py", "--sonde", f"{release}/sonde",
                                      "--json", f"{out}/memory.json"], {}),
                ("loader_memory.txt", py + [f"{HERE}/loader_memory.py", "--rounds", "3",
                                            f"{release}/sonde"], {})]
    if step == "replay":
        return [("replay.txt", ["bash", f"{HERE}/replay_bench.sh", "metrics", "traces"], {})]
    if step == "printers":
        return [(f"printer-{p}.json", py + [f"{HERE}/nginx_bench.py", "--printer", p, "--rounds", r,
                                            "--duration", "8", "--bracket", "--pin",
                                            "--release", release,
                                            "--json", f"{out}/printer-{p}.json"], {})
                for p in ("json", "text")]
    raise SystemExit(f"--steps: unknown step {step!r} (known: {', '.join(STEPS)})")


def run(steps, release, out, rounds):
    for step in steps:
        for name, argv, env in commands(step, release, out, rounds):
            print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {step}: "
                  f"{' '.join(argv)}", flush=True)
            # The text of every step is kept: the report reads the text-only ones from it.
            log = name if name.endswith(".txt") else name.replace(".json", ".log")
            with open(os.path.join(out, log), "w") as f:
                rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, **env}).returncode
            if rc != 0:
                raise SystemExit(f"{step} failed (exit {rc}); its output: {out}/{log}")


def load(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    if name.endswith(".json"):
        return json.load(open(path))
    return open(path).read()


def fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}"


def ratio_text(v, target):
    """`v` to three decimals, or four where three would read as the target itself."""
    return f"{v:.4f}" if round(v, 3) == target and v != target else f"{v:.3f}"


def verdict(ok):
    return "—" if ok is None else ("met" if ok else "**not met**")


def report(out):
    """The Markdown table of the figures found in `out`."""
    rows = []
    exports = load(out, "exports.json")
    if exports:
        s = exports["summary"]
        for config, target, label in (("metrics", 0.90, "OTLP metrics + Prometheus ≥ 0.90"),
                                      ("t01", 0.88, "+ traces at `traceidratio` 0.1 ≥ 0.88")):
            ratio = s[config]["throughput_ratio_median_round"]
            rounds = [r["runs"][config]["rps"] * 2 / (r["baseline_before_rps"] + r["baseline_after_rps"])
                      for r in exports["rounds"]]
            rows.append((label, f"{ratio_text(ratio, target)} (median round, pinned; "
                                f"{sum(x >= target for x in rounds)} of {len(rounds)} rounds at or above)",
                         verdict(ratio >= target)))
        every, metrics = s["all"], s["metrics"]
        sonde = lambda c: c["processor_cpu_us_per_request"] + c["loader_cpu_us_per_request"]
        spans = every["spans_exported_per_request"]
        per_span = (sonde(every) - sonde(metrics)) / spans if spans else None
        dropped = sum(r["runs"]["all"]["otlp_spans_dropped"] for r in exports["rounds"])
        rows.append(("every trace, gRPC: none dropped; processor ≤ 1.5 µs per exported span",
                     f"{dropped} dropped in {len(exports['rounds'])} rounds; "
                     f"{fmt(per_span, 2)} µs per span over metrics only (loader + processor); "
                     f"collector {every['collector_cpu_us_per_request'] / spans:.2f} µs per span; "
                     f"ratio {every['throughput_ratio_median_round']:.3f}",
                     verdict(dropped == 0 and per_span is not None and per_span <= 1.5)))
    http = load(out, "http.json")
    if http:
        s = http["summary"]
        per_span = s["cpu_s_per_100k_requests"] / s["spans_per_request"] * 10
        rows.append(("every trace, HTTP/protobuf: none dropped",
                     f"{s['otlp_spans_dropped']} dropped; {per_span:.2f} µs per span (loader + "
                     f"processor, metrics included); ratio {s['throughput_ratio_median_round']:.3f}",
                     verdict(s["otlp_spans_dropped"] == 0)))
    kernel = load(out, "kernel.txt")
    m = kernel and re.search(r"kernel ns/request (\d+)", kernel)
    nginx_ns = int(m.group(1)) if m else None
    if kernel:
        rows.append(("kernel ≤ 800 ns per request (`bpf_stats`, nginx)",
                     f"{nginx_ns} ns" if nginx_ns is not None else "no figure",
                     verdict(nginx_ns is not None and nginx_ns <= 800)))
    unselected = load(out, "unselected.json")
    if unselected:
        ratio = unselected["summary"]["throughput_ratio_median_round"]
        rows.append(("a process Sonde does not select keeps ≥ 0.99",
                     f"{ratio_text(ratio, 0.99)} (median round, pinned, bracketed); "
                     f"{unselected['summary']['bpf_ns_per_request']:.0f} ns of kernel programs per request",
                     verdict(ratio >= 0.99)))
    sdk = load(out, "sdk.json")
    if sdk:
        s = sdk["summary"]
        for app in ("node", "flask"):
            if app not in s:
                continue
            sonde = s[app]["sonde"]
            rise = sonde["app_cpu_rise_us_per_req_median_round"]
            target = nginx_ns / 1000 if nginx_ns else None
            rows.append((f"{app}: app CPU rise ≤ nginx's kernel cost per request "
                         f"({fmt(target, 2)} µs)",
                         f"+{rise:.2f} µs (median round; difference of the modes' medians "
                         f"+{sonde['app_cpu_rise_us_per_req']:.2f}; its kernel programs "
                         f"{sonde['bpf_ns_per_req'] / 1000:.2f} µs)",
                         verdict(None if target is None else rise <= target)))
            sdk_mode = s[app].get("sdk")
            dropped = sum(sonde["otlp_spans_dropped"])
            rows.append((f"{app}: against the OpenTelemetry SDK, every trace",
                         f"SDK {fmt(sdk_mode and sdk_mode['ratio_median_round'])}, Sonde "
                         f"{sonde['ratio_median_round']:.3f} (throughput ratios, median rounds); "
                         + (f"app CPU rise +{sdk_mode['app_cpu_rise_us_per_req']:.1f} µs (SDK) against "
                            f"+{sonde['app_cpu_rise_us_per_req']:.1f} µs (Sonde) per request; " if sdk_mode else "")
                         + f"Sonde dropped {dropped} spans",
                         "—" if not sdk_mode else
                         (f"Sonde ahead ({sonde['ratio_median_round'] / sdk_mode['ratio_median_round']:.1f}×)"
                          if sonde["ratio_median_round"] > sdk_mode["ratio_median_round"]
                          else "**SDK ahead**")))
    memory = load(out, "memory.json")
    if memory:
        rows.append(("processor RSS, 10,000 connections and 1,000 processes ≤ 64 MiB",
                     f"{memory['processor_rss_mib']} MiB (peak {memory['processor_hwm_mib']}); "
                     f"{memory['events_received']} of {memory['requests']} events",
                     verdict(memory["processor_rss_mib"] <= 64)))
    loader = load(out, "loader_memory.txt")
    if loader:
        line = next((l for l in loader.splitlines() if l.startswith("{")), None)
        med = json.loads(line)["MiB_median"] if line else {}
        rss = med.get("VmRSS")
        rows.append(("loader RSS after start-up ≤ 16 MiB",
                     f"{rss} MiB (start-up peak {med.get('VmHWM')} MiB; medians of 3)" if med else "no figure",
                     verdict(None if rss is None else rss <= 16)))
    replay = load(out, "replay.txt")
    if replay:
        found = dict(re.findall(r"^\s+(\w+)\s+(\d+) events/s wall", replay, re.M))
        best = int(found["metrics"]) if "metrics" in found else None
        rows.append(("replay ≥ 1 M events/s on one core",
                     ", ".join(f"{k} {int(v) / 1e6:.2f} M" for k, v in found.items()) or "no figure",
                     verdict(None if best is None else best >= 1_000_000)))
    for p in ("json", "text"):
        printer = load(out, f"printer-{p}.json")
        if printer:
            rows.append((f"printer {p} (no numeric target)",
                         f"{printer['summary']['throughput_ratio_median_round']:.3f} "
                         f"(median round, pinned); spans / requests {printer['summary']['spans_per_request']:.5f}",
                         "—"))
    lines = ["| target | figure | status |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--out")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--report", metavar="DIR", help="print the table from an earlier run's outputs")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    steps = args.steps.split(",")
    for step in steps:
        commands(step, args.release, "", args.rounds)
    release = os.path.abspath(args.release)
    if not os.path.isfile(os.path.join(release, "sonde")):
        raise SystemExit(f"--release: no sonde in {release} (cargo build --release --workspace --bins)")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    out = os.path.abspath(args.out or os.path.join(HERE, "results", f"issue14-{stamp}"))
    os.makedirs(out, exist_ok=True)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"commit": commit, "release": release, "steps": steps, "rounds": args.rounds,
                   "started": stamp, "cpu": open("/proc/cpuinfo").read().split("model name")[1]
                   .split("\n")[0].strip(" :\t")}, f)
    run(steps, release, out, args.rounds)
    print(report(out))
    print(f"raw outputs: {out}")


if __name__ == "__main__":
    main()
