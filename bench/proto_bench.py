#!/usr/bin/env python3
"""Protocol benchmarks with the core benchmark's method (bench/nginx_bench.py): a server under
load for DURATION seconds, uninstrumented and instrumented by `sonde --open-port` (release
build), alternating ROUNDS times in one run.

Modes:
  h2c    HTTP/2 with prior knowledge on cleartext: nginx (tests/peers/nginx_h2c.conf, one
         worker) or Node `http2` (tests/peers/h2_server.js, --server node) under
         `h2load -c 16 -m 10 -D DURATION http://127.0.0.1:PORT/ok`.
  https  HTTP/1.1 over TLS 1.3: nginx (tests/peers/nginx_ssl.conf, one worker, libssl.so.3) or
         Node `https` (tests/peers/https_server.js, --server node) under
         `wrk -t1 -c16 -dDURATION https://127.0.0.1:PORT/ok` (keep-alive). A self-signed EC
         P-256 certificate is made with the openssl CLI into the server's prefix.

Reports per round and overall, like nginx_bench.py: throughput ratio (instrumented /
uninstrumented req/s), spans / requests completed, loader+processor CPU seconds per 100k
requests, processor peak RSS (VmHWM), and in-kernel cost per request (bpf_stats run time of
Sonde's programs / requests, in a separate 3 s run of the same load inside the instrumented
session). Spans are counted by the processor (printer disabled, the default) or as JSON lines
(--printer json). Run as root; builds the release binaries only when they are missing.

Usage: proto_bench.py {h2c,https} [--server nginx|node] [--rounds 3] [--duration 10]
                      [--printer disabled|json] [--tls true|false] [--json out.json] [--keep]
                      [-- extra sonde args]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_bench as nb  # noqa: E402  (helpers: ports, /proc readers, bpf stats, log waits)

ROOT = nb.ROOT
RELEASE = nb.RELEASE
STATS_SECONDS = 3


# ---------------------------------------------------------------------------------------------
# Servers


def make_cert(prefix):
    """Self-signed EC P-256 certificate for 127.0.0.1 at PREFIX/server.crt and server.key."""
    crt, key = os.path.join(prefix, "server.crt"), os.path.join(prefix, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", crt],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)  # nginx's master reads it as root; the bench dir is private anyway
    return crt, key


def start_server(mode, server, port, prefix):
    """Starts the server; returns its Popen (nginx: the master; node: the only process)."""
    log = open(os.path.join(prefix, "server.out"), "w")
    if server == "nginx":
        template = {"h2c": "tests/peers/nginx_h2c.conf", "https": "tests/peers/nginx_ssl.conf"}[mode]
        if mode == "https":
            make_cert(prefix)
        conf = open(os.path.join(ROOT, template)).read()
        conf = conf.replace("PREFIX", prefix).replace("PORT", str(port))
        path = os.path.join(prefix, "nginx.conf")
        open(path, "w").write(conf)
        p = subprocess.Popen(["/usr/sbin/nginx", "-p", prefix, "-c", path], stdout=log, stderr=log)
    else:
        if mode == "h2c":
            cmd = ["node", os.path.join(ROOT, "tests/peers/h2_server.js"), str(port)]
        else:
            crt, key = make_cert(prefix)
            cmd = ["node", os.path.join(ROOT, "tests/peers/https_server.js"), str(port), crt, key]
        p = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        nb.wait_port(port)
    except SystemExit:
        p.kill()
        raise SystemExit(f"{server} did not listen on {port}:\n" +
                         open(os.path.join(prefix, "server.out")).read()[-2000:])
    return p


def stop_server(server, proc):
    nb.stop(proc, signal.SIGQUIT if server == "nginx" else signal.SIGTERM, 10)


# ---------------------------------------------------------------------------------------------
# Load generators: each returns (requests completed, req/s, details)


def h2load(port, duration):
    cmd = ["h2load", "-c", "16", "-m", "10", "-D", str(duration), f"http://127.0.0.1:{port}/ok"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not fin or not req:
        raise SystemExit(f"unexpected h2load output:\n{out[-3000:]}")
    total, started, done, ok, failed, errored, timeout = map(int, req.groups())
    return ok, float(fin.group(3)), {"started": started, "done": done, "failed": failed,
                                     "errored": errored, "timeout": timeout}


def wrk_https(port, duration):
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s", f"https://127.0.0.1:{port}/ok"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    req = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not req or not rps:
        raise SystemExit(f"unexpected wrk output:\n{out[-3000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return int(req.group(1)), float(rps.group(1)), {
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else ""}


LOADS = {"h2c": h2load, "https": wrk_https}


# ---------------------------------------------------------------------------------------------
# One instrumented round (nginx_bench.instrumented_round with the load as a parameter)


def final_stats(log_path):
    log = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path, errors="replace").read())
    found = re.findall(r"final processor stats stats=(\{.*\})", log)
    return json.loads(found[-1]) if found else None


def notable_log_lines(log_path, limit=12):
    """Warnings, errors and TLS/OpenSSL mentions of the sonde log, for a 0-span diagnosis."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path, errors="replace").read())
    lines = [l for l in log.splitlines()
             if re.search(r"WARN|ERROR|tls|ssl|uprobe", l, re.I)
             and "final processor stats" not in l and "final kernel counters" not in l]
    return lines[:limit]


def loader_prog_ids(pid):
    """Ids of the eBPF programs the loader holds (its program and link fds' fdinfo): exactly
    Sonde's, even when other tools or test runs load programs at the same time."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            m = re.search(r"^prog_id:\s+(\d+)", open(f"/proc/{pid}/fdinfo/{fd}").read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def bpf_per_program(ids):
    """{program name: (run_cnt, run_time_ns)} over the given ids (names summed)."""
    out = {}
    for p in nb.bpf_progs():
        if p["id"] in ids:
            cnt, ns = out.get(p.get("name", "?"), (0, 0))
            out[p.get("name", "?")] = (cnt + p.get("run_cnt", 0), ns + p.get("run_time_ns", 0))
    return out


def instrumented_round(load, port, duration, workdir, extra, printer, tls=None):
    spans_path = os.path.join(workdir, "spans.json")
    log_path = os.path.join(workdir, "sonde.log")
    env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": printer, "NO_COLOR": "1",
           "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
    if tls is not None:
        env["SONDE_TLS"] = tls  # ebpf.tls: OpenSSL uprobes (default true)
    before = {p["id"] for p in nb.bpf_progs()}
    with open(spans_path, "w") as out, open(log_path, "w") as err:
        sonde = subprocess.Popen([os.path.join(RELEASE, "sonde"), "--open-port", str(port)] + extra,
                                 stdout=out, stderr=err, env=env)
    proc_pid = None
    try:
        nb.wait_log(log_path, r"processor connected")
        proc_pid = int(nb.wait_log(log_path, r"processor started pid=(\d+)").group(1))
        time.sleep(1.0)  # let the selection settle (master and worker; uprobes attached)
        cpu0 = nb.cpu_seconds(sonde.pid) + nb.cpu_seconds(proc_pid)
        requests, rps, details = load(port, duration)
        # In-kernel cost in a separate short run (bpf_stats' own clock reads must not weigh on
        # the throughput figure).
        # Sonde's programs, read now (uprobes may attach after the selection).
        ours = loader_prog_ids(sonde.pid) or {p["id"] for p in nb.bpf_progs() if p["id"] not in before}
        names = sorted(p.get("name", "?") for p in nb.bpf_progs() if p["id"] in ours)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
        ns0, cnt0 = nb.bpf_run_stats(ours)
        per0 = bpf_per_program(ours)
        stats_requests, _, _ = load(port, STATS_SECONDS)
        ns1, cnt1 = nb.bpf_run_stats(ours)
        per1 = bpf_per_program(ours)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
        # Let the processor drain before measuring its CPU and memory.
        deadline, last = time.time() + 20, -1
        while time.time() < deadline:
            n = nb.cpu_seconds(proc_pid)
            if n == last:
                break
            last = n
            time.sleep(1.0)
        cpu1 = nb.cpu_seconds(sonde.pid) + nb.cpu_seconds(proc_pid)
        hwm = nb.hwm_kib(proc_pid)
    finally:
        nb.stop(sonde, signal.SIGINT, 20)
        if proc_pid is not None:
            # The processor exits with the loader; make sure of it (our own child's child).
            deadline = time.time() + 5
            try:
                while time.time() < deadline:
                    os.kill(proc_pid, 0)
                    time.sleep(0.1)
                os.kill(proc_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stats = final_stats(log_path)
    if printer == "json":
        spans = sum(1 for line in open(spans_path, errors="replace") if line.startswith("{"))
    else:
        spans = stats["spans"] if stats else 0
    keep = ["events", "spans", "malformed", "not_http", "no_response", "late_updates",
            "completed_early", "h2_headers_unknown", "streams"]
    return {
        "requests": requests, "rps": rps, "spans": spans, "stats_requests": stats_requests,
        "cpu_s": cpu1 - cpu0, "processor_hwm_kib": hwm,
        "bpf_ns": ns1 - ns0, "bpf_runs": cnt1 - cnt0, "bpf_programs": names,
        # Per program over the stats run: runs per request and mean ns per run.
        "bpf_per_program": {
            name: {"runs_per_request": (c1 - per0.get(name, (0, 0))[0]) / max(stats_requests, 1),
                   "ns_per_run": (n1 - per0.get(name, (0, 0))[1]) / max(c1 - per0.get(name, (0, 0))[0], 1)}
            for name, (c1, n1) in per1.items()},
        "load": details,
        "processor_stats": {k: stats[k] for k in keep if stats and k in stats},
        "kernel_counters": {k: v for k, v in (stats or {}).get("kernel", {}).items() if v},
        "log_notes": notable_log_lines(log_path) if spans == 0 else [],
    }


# ---------------------------------------------------------------------------------------------


def ensure_release():
    missing = [b for b in ["sonde", "sonde-processor"] if not os.path.exists(os.path.join(RELEASE, b))]
    if missing:
        print(f"release binaries missing ({', '.join(missing)}): cargo build --release", flush=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sonde-loader",
                        "-p", "sonde-processor"], cwd=ROOT, check=True)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["h2c", "https"])
    ap.add_argument("--server", default="nginx", choices=["nginx", "node"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--printer", default="disabled", choices=["disabled", "json", "text"],
                    help="trace printer of the instrumented runs (disabled: spans counted from "
                         "the processor's final stats; json: written to a file, counted)")
    ap.add_argument("--tls", choices=["true", "false"],
                    help="ebpf.tls of the instrumented runs (SONDE_TLS; default: Sonde's, true)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (sonde.log of the last round, server logs)")
    ap.add_argument("extra", nargs="*", help="extra sonde arguments (after --)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs)")
    tools = ["bpftool", "openssl" if args.mode == "https" else "h2load",
             "wrk" if args.mode == "https" else "h2load",
             "/usr/sbin/nginx" if args.server == "nginx" else "node"]
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup.sh")
    ensure_release()
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop everything started here.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    load = LOADS[args.mode]
    workdir = tempfile.mkdtemp(prefix=f"sonde-bench-{args.mode}-")
    os.chmod(workdir, 0o755)
    port = nb.free_port()
    label = f"{args.mode} ({args.server}, " + (
        "h2load -c 16 -m 10" if args.mode == "h2c" else "wrk -t1 -c16 https") + ")"
    print(f"{label}: {args.rounds} rounds of {args.duration} s, printer {args.printer}, "
          f"ebpf.tls {args.tls or 'default'}", flush=True)
    rounds = []
    server = None
    try:
        server = start_server(args.mode, args.server, port, workdir)
        load(port, 2)  # warm-up
        for i in range(args.rounds):
            base_req, base_rps, base_details = load(port, args.duration)
            inst = instrumented_round(load, port, args.duration, workdir, args.extra, args.printer,
                                      args.tls)
            r = {"round": i + 1, "baseline_requests": base_req, "baseline_rps": base_rps,
                 "baseline_load": base_details, **inst}
            rounds.append(r)
            total = inst["requests"] + inst["stats_requests"]
            print(f"round {i+1}: baseline {base_rps:.0f} req/s, instrumented {inst['rps']:.0f} req/s "
                  f"(ratio {inst['rps']/base_rps:.3f}), spans/requests {inst['spans']}/{total} "
                  f"({inst['spans']/max(total, 1):.5f}), cpu {inst['cpu_s']:.2f}s "
                  f"({inst['cpu_s']/max(total, 1)*100_000:.3f} s/100k req), "
                  f"processor HWM {inst['processor_hwm_kib']/1024:.1f} MiB, "
                  f"bpf {inst['bpf_ns']/max(inst['stats_requests'], 1):.0f} ns/request "
                  f"({inst['bpf_runs']/max(inst['stats_requests'], 1):.1f} runs/request, "
                  f"{len(inst['bpf_programs'])} programs)", flush=True)
            print("         programs (runs/request × ns/run): " + ", ".join(
                f"{n} {v['runs_per_request']:.2f}×{v['ns_per_run']:.0f}"
                for n, v in sorted(inst["bpf_per_program"].items())), flush=True)
            ps = inst["processor_stats"]
            if ps.get("no_response"):
                # h2load stops with requests in flight (started - done); nginx may not answer
                # them before the connection closes: spans marked no_response.
                print(f"         spans with a response / requests: {inst['spans'] - ps['no_response']}/{total}",
                      flush=True)
            print(f"         processor: events {ps.get('events')}, spans {ps.get('spans')}, "
                  f"not_http {ps.get('not_http')}, malformed {ps.get('malformed')}, "
                  f"no_response {ps.get('no_response')}; load {inst['load']}", flush=True)
            print(f"         kernel counters (non-zero): {inst['kernel_counters']}", flush=True)
            if inst["spans"] == 0:
                print("         NOTE: 0 spans" + (
                    " — HTTPS spans need the OpenSSL uprobes (ebpf.tls); with them missing or "
                    "not yet producing, only the encrypted socket bytes are seen"
                    if args.mode == "https" else "") + ".", flush=True)
                print("         sonde log, warnings and TLS lines:" +
                      ("" if inst["log_notes"] else " none"), flush=True)
                for line in inst["log_notes"]:
                    print(f"           {line[:240]}", flush=True)
    finally:
        if server is not None:
            stop_server(args.server, server)
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
        if args.keep:
            print(f"work directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    base = sum(r["baseline_rps"] for r in rounds) / len(rounds)
    inst = sum(r["rps"] for r in rounds) / len(rounds)
    reqs = sum(r["requests"] + r["stats_requests"] for r in rounds)
    stats_reqs = sum(r["stats_requests"] for r in rounds)
    summary = {
        "mode": args.mode, "server": args.server, "printer": args.printer,
        "tls": args.tls or "default",
        "throughput_ratio": inst / base,
        "throughput_ratio_median_round": median([r["rps"] / r["baseline_rps"] for r in rounds]),
        "baseline_rps_mean": base,
        "instrumented_rps_mean": inst,
        "spans_per_request": sum(r["spans"] for r in rounds) / reqs,
        # Spans less those marked no_response (exchanges cut by the load generator's stop).
        "spans_with_response_per_request":
            sum(r["spans"] - r["processor_stats"].get("no_response", 0) for r in rounds) / reqs,
        "cpu_s_per_100k_requests": sum(r["cpu_s"] for r in rounds) / reqs * 100_000,
        "processor_peak_rss_mib": max(r["processor_hwm_kib"] for r in rounds) / 1024,
        "bpf_ns_per_request": sum(r["bpf_ns"] for r in rounds) / stats_reqs,
        "bpf_runs_per_request": sum(r["bpf_runs"] for r in rounds) / stats_reqs,
    }
    print("summary: " + json.dumps(summary, indent=1))
    if summary["spans_per_request"] == 0 and args.mode == "https":
        print("NOTE: spans/requests is 0 for HTTPS: TLS spans come only from the OpenSSL uprobes "
              "(ebpf.tls); the throughput, CPU and kernel figures above still stand.")
    if args.json:
        json.dump({"rounds": rounds, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e or 'Ctrl-C'}); everything started here was stopped")
