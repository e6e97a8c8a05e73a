#!/usr/bin/env python3
"""Database benchmarks with the core benchmark's method (bench/nginx_bench.py,
bench/proto_bench.py): a server under load, uninstrumented and instrumented by
`sonde --open-port PORT` (release build, server-side spans), alternating ROUNDS times in one run.

Modes:
  redis     redis-server (--save "" --appendonly no) under
            `redis-benchmark -P 16 -c 16 -n N -t get,set --csv`. N is sized once, before the
            rounds, for ~DURATION seconds at the uninstrumented rate (a short measuring run), and
            stays fixed: every run does the same work, and its rate is the GET and SET tests'
            2N operations over the two tests' times (the rates redis-benchmark reports).
            Operations = GET + SET commands. redis-benchmark also sends CONFIG GET save and
            CONFIG GET appendonly once per run (not per client): they are counted from the
            server's INFO commandstats and reported apart ("other commands"), not as
            operations. The INFO probes go over a Unix socket, which Sonde does not trace.
  postgres  A throwaway PostgreSQL 15 cluster (initdb --auth=trust as `postgres`, fsync=off),
            `pgbench -i -s 1` once before Sonde starts, then
            `pgbench -S -M prepared -c 8 -j 2 -T DURATION -n`. Operations = transactions
            (one SELECT each with -S). The postmaster is selected by --open-port; its
            per-connection backends are forks, selected at fork by the kernel. pgbench also runs
            a few statements of its own per run (table checks before the clients start); the
            server's count of transactions (pg_stat_database, read over the Unix socket, which
            Sonde does not trace) is reported next to pgbench's.

Reports per round and overall, like proto_bench.py: throughput ratio (instrumented /
uninstrumented ops/s), spans / operations (spans from the processor's final stats, printer
disabled), loader+processor CPU seconds per 100k operations, processor peak RSS (VmHWM), and
in-kernel cost per operation (bpf_stats run time of Sonde's programs / operations, in a separate
3 s run of the same load inside the instrumented session). Operations include the stats run's.
Run as root; builds the release binaries when they are missing or older than the sources.

Usage: db_bench.py {redis,postgres} [--rounds 3] [--duration 10] [--json out.json] [--keep]
                   [--no-build] [-- extra sonde args]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_bench as nb  # noqa: E402  (ports, /proc readers, bpf stats, log waits, stop)
import proto_bench as pb  # noqa: E402  (instrumented_round with the load as a parameter)

ROOT = nb.ROOT
RELEASE = nb.RELEASE
PG_BIN = "/usr/lib/postgresql/15/bin"
SOURCES = ["schema", "config", "plumbing", "loader", "loader-ebpf", "processor", "seccomp",
           "Cargo.toml", "Cargo.lock"]


# ---------------------------------------------------------------------------------------------
# Build


def newest_source_mtime():
    newest = 0.0
    for entry in SOURCES:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            newest = max(newest, os.path.getmtime(path))
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d != "target"]
            for f in filenames:
                newest = max(newest, os.path.getmtime(os.path.join(dirpath, f)))
    return newest


def ensure_release(no_build):
    bins = [os.path.join(RELEASE, b) for b in ["sonde", "sonde-processor"]]
    missing = [b for b in bins if not os.path.exists(b)]
    stale = not missing and min(os.path.getmtime(b) for b in bins) < newest_source_mtime()
    if not missing and (not stale or no_build):
        if stale:
            print("note: release binaries are older than the sources (--no-build)", flush=True)
        return
    print("release binaries " + ("missing" if missing else "older than the sources") +
          ": cargo build --release --locked -p sonde-loader -p sonde-processor", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sonde-loader",
                        "-p", "sonde-processor"], cwd=ROOT)
    if r.returncode != 0:
        if missing:
            raise SystemExit("release build failed")
        print("WARNING: release build failed; measuring the existing (older) binaries", flush=True)


# ---------------------------------------------------------------------------------------------
# Redis


def resp_command(path, *args):
    """One command over the Unix socket PATH (RESP), returning the reply's text."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[:int(head[1:])].decode()
            elif data.endswith(b"\r\n"):
                return data.decode()
    return data.decode()


def commandstats(sock):
    """{command: calls} from INFO commandstats (cmdstat_config|get -> 'config|get')."""
    out = {}
    for line in resp_command(sock, "INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


class Redis:
    label = "redis-benchmark -P 16 -c 16 -t get,set"

    def __init__(self, workdir, port):
        self.port = port
        self.sock = os.path.join(workdir, "redis.sock")
        self.log = open(os.path.join(workdir, "server.out"), "w")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--unixsocket", self.sock,
             "--unixsocketperm", "700"], stdout=self.log, stderr=self.log)
        try:
            nb.wait_port(port)
        except SystemExit:
            self.proc.kill()
            raise SystemExit("redis-server did not listen:\n" +
                             open(os.path.join(workdir, "server.out")).read()[-2000:])
        self.n = 100_000  # per test; sized by prepare()

    def bench(self, n):
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port), "-P", "16", "-c", "16",
               "-n", str(n), "-t", "get,set", "--csv"]
        before = commandstats(self.sock)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:  # run() has killed it
            raise SystemExit(f"redis-benchmark -n {n} did not finish in 300 s")
        after = commandstats(self.sock)
        rates = dict(re.findall(r'^"(SET|GET)","([\d.]+)"', r.stdout, re.M))
        if r.returncode != 0 or set(rates) != {"SET", "GET"}:
            raise SystemExit(f"unexpected redis-benchmark output (rc {r.returncode}):\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        # The INFO probe before the run is counted in `after`; it went over the Unix socket.
        delta.pop("info", None)
        return n, {k: float(v) for k, v in rates.items()}, delta

    def load(self, port, seconds):
        """(operations, ops/s, details) for a run sized for `seconds` at the measured rate."""
        n = self.n if seconds == self.duration else max(10_000, int(round(self.n * seconds / self.duration, -3)))
        n, rates, delta = self.bench(n)
        # The two tests run one after the other: 2n operations over the sum of their times.
        ops_s = 2 * n / (n / rates["SET"] + n / rates["GET"])
        served = delta.get("get", 0) + delta.get("set", 0)
        other = {k: v for k, v in delta.items() if k not in ("get", "set")}
        return 2 * n, ops_s, {"set_rps": rates["SET"], "get_rps": rates["GET"], "n_per_test": n,
                              "server_get_set": served, "other_commands": other}

    def prepare(self, duration):
        """Warm-up, then N for ~duration seconds of both tests at the uninstrumented rate."""
        self.duration = duration
        self.bench(100_000)
        n, rates, _ = self.bench(300_000)
        rate = 2 / (1 / rates["SET"] + 1 / rates["GET"])
        self.n = max(50_000, int(round(rate * duration / 2, -4)))
        print(f"redis: measured {rate:.0f} ops/s uninstrumented; -n {self.n} per test "
              f"({2 * self.n} operations, ~{duration} s)", flush=True)

    def stop(self):
        nb.stop(self.proc, signal.SIGTERM, 15)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    label = "pgbench -S -M prepared -c 8 -j 2"

    def __init__(self, workdir, port):
        self.port = port
        self.data = os.path.join(workdir, "pgdata")
        os.makedirs(self.data)
        subprocess.run(["chown", "-R", "postgres:postgres", self.data], check=True)
        os.chmod(self.data, 0o700)
        # Every parent must be traversable by postgres (the work dir is 0755; /tmp is 1777).
        r = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb",
                            "--auth=trust", "-U", "postgres", "-D", self.data],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"initdb failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        self.log = open(os.path.join(workdir, "server.out"), "w")
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--",
             f"{PG_BIN}/postgres", "-D", self.data, "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", f"unix_socket_directories={self.data}"],
            stdout=self.log, stderr=self.log)
        try:
            nb.wait_port(port, timeout=60)
        except SystemExit:
            self.proc.kill()
            raise SystemExit("postgres did not listen:\n" +
                             open(os.path.join(workdir, "server.out")).read()[-2000:])
        try:
            self.pgbench(["-i", "-s", "1", "-q"], timeout=300)
        except BaseException:
            self.stop()  # not yet known to main's finally
            raise

    def pgbench(self, args, timeout):
        cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"] + args + ["postgres"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{' '.join(cmd)} did not finish in {timeout} s")
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (rc {r.returncode}):\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r.stdout

    def xacts(self):
        """Committed + rolled-back transactions of database `postgres`, over the Unix socket
        (not traced by Sonde). This probe's own transaction is counted by the next read."""
        r = subprocess.run(
            ["psql", "-h", self.data, "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-X", "-A", "-t", "-c",
             "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'"],
            capture_output=True, text=True, timeout=30)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    def load(self, port, seconds):
        x0 = self.xacts()
        out = self.pgbench(["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", str(seconds), "-n"],
                           timeout=seconds + 120)
        time.sleep(0.5)  # backends flush their statistics as they exit
        x1 = self.xacts()
        done = re.search(r"number of transactions actually processed: (\d+)", out)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if not done or not tps:
            raise SystemExit(f"unexpected pgbench output:\n{out[-2000:]}")
        details = {"failed": int(failed.group(1)) if failed else 0}
        if x0 is not None and x1 is not None:
            # Less the probe before the run (counted in x1); autovacuum may add a few.
            details["server_transactions"] = x1 - x0 - 1
        return int(done.group(1)), float(tps.group(1)), details

    def prepare(self, duration):
        self.load(self.port, 2)  # warm-up (backends, shared buffers)

    def stop(self):
        nb.stop(self.proc, signal.SIGINT, 30)  # fast shutdown


SERVERS = {"redis": Redis, "postgres": Postgres}


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=list(SERVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--printer", default="disabled", choices=["disabled", "json", "text"],
                    help="trace printer of the instrumented runs (disabled: spans counted from "
                         "the processor's final stats; json: written to a file, counted)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (sonde.log of the last round, server logs)")
    ap.add_argument("--no-build", action="store_true",
                    help="measure the existing release binaries even if older than the sources")
    ap.add_argument("--release", help="directory of the build to measure (its sonde and "
                    "sonde-processor; default target/release, built when stale); a copy keeps "
                    "the run safe from rebuilds and lets two builds be compared; never rebuilt, so "
                    "--no-build does not apply)")
    ap.add_argument("extra", nargs="*", help="extra sonde arguments (after --)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde loads eBPF programs)")
    tools = ["bpftool"] + (["redis-server", "redis-benchmark"] if args.mode == "redis" else
                           ["pgbench", "psql", "runuser", "setpriv", f"{PG_BIN}/postgres"])
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup.sh")
    if args.release:
        release = os.path.abspath(args.release)
        missing = [b for b in ["sonde", "sonde-processor"]
                   if not os.path.exists(os.path.join(release, b))]
        if missing:
            raise SystemExit(f"--release {release}: missing {', '.join(missing)}")
        pb.RELEASE = release
    else:
        ensure_release(args.no_build)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    workdir = tempfile.mkdtemp(prefix=f"sonde-bench-{args.mode}-")
    os.chmod(workdir, 0o755)
    port = nb.free_port()
    rounds = []
    server = None
    try:
        server = SERVERS[args.mode](workdir, port)
        print(f"{args.mode} ({server.label}): {args.rounds} rounds of {args.duration} s, "
              f"printer {args.printer}", flush=True)
        server.prepare(args.duration)
        for i in range(args.rounds):
            base_ops, base_rate, base_details = server.load(port, args.duration)
            inst = pb.instrumented_round(server.load, port, args.duration, workdir, args.extra,
                                         args.printer)
            stats = pb.final_stats(os.path.join(workdir, "sonde.log")) or {}
            inst["processor_stats"]["db_partial"] = stats.get("db_partial", 0)
            inst["processor_stats"]["unknown_process"] = stats.get("unknown_process", 0)
            inst["lost"] = sum(stats.get(k, 0) for k in ["decode_errors", "ring_corrupt",
                                                           "print_errors", "completed_early",
                                                           "late_updates"])
            r = {"round": i + 1, "baseline_operations": base_ops, "baseline_ops_s": base_rate,
                 "baseline_load": base_details, **inst}
            # proto_bench's names are per request; here a request is an operation.
            r["operations"], r["ops_s"] = r.pop("requests"), r.pop("rps")
            r["stats_operations"] = r.pop("stats_requests")
            rounds.append(r)
            total = r["operations"] + r["stats_operations"]
            ps = inst["processor_stats"]
            print(f"round {i+1}: baseline {base_rate:.0f} ops/s, instrumented {r['ops_s']:.0f} ops/s "
                  f"(ratio {r['ops_s']/base_rate:.3f}), spans/operations {r['spans']}/{total} "
                  f"({r['spans']/max(total, 1):.5f}), cpu {r['cpu_s']:.2f}s "
                  f"({r['cpu_s']/max(total, 1)*100_000:.3f} s/100k ops), "
                  f"processor HWM {r['processor_hwm_kib']/1024:.1f} MiB, "
                  f"bpf {r['bpf_ns']/max(r['stats_operations'], 1):.0f} ns/op "
                  f"({r['bpf_runs']/max(r['stats_operations'], 1):.2f} runs/op, "
                  f"{len(r['bpf_programs'])} programs)", flush=True)
            print("         programs (runs/op × ns/run): " + ", ".join(
                f"{n} {v['runs_per_request']:.2f}×{v['ns_per_run']:.0f}"
                for n, v in sorted(r["bpf_per_program"].items())), flush=True)
            if args.mode == "redis":
                # Both instrumented runs (main and stats): the CONFIG GETs are spans too.
                other = r["other_commands"] = r["load"]["other_commands"]
                print(f"         server: GET+SET {r['load']['server_get_set']} in the main run; "
                      f"other commands {other} per run (not operations; ×2 runs in the session); "
                      f"per test: SET {r['load']['set_rps']:.0f}/s, GET {r['load']['get_rps']:.0f}/s",
                      flush=True)
            else:
                print(f"         server transactions (pg_stat_database) {r['load'].get('server_transactions')} "
                      f"vs pgbench's {r['operations']} in the main run; failed {r['load']['failed']}; "
                      f"spans beyond operations {r['spans'] - total} (2 pgbench runs)", flush=True)
            print(f"         processor: events {ps.get('events')}, spans {ps.get('spans')}, "
                  f"malformed {ps.get('malformed')}, no_response {ps.get('no_response')}, "
                  f"db_partial {ps.get('db_partial')}, lost {r['lost']}", flush=True)
            print(f"         kernel counters (non-zero): {r['kernel_counters']}", flush=True)
            if r["spans"] == 0:
                print("         NOTE: 0 spans. sonde log warnings:" +
                      ("" if r["log_notes"] else " none"), flush=True)
                for line in r["log_notes"]:
                    print(f"           {line[:240]}", flush=True)
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
        if args.keep:
            print(f"work directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    base = sum(r["baseline_ops_s"] for r in rounds) / len(rounds)
    inst = sum(r["ops_s"] for r in rounds) / len(rounds)
    ops = sum(r["operations"] + r["stats_operations"] for r in rounds)
    stats_ops = sum(r["stats_operations"] for r in rounds)
    summary = {
        "mode": args.mode, "load": SERVERS[args.mode].label, "printer": args.printer,
        "throughput_ratio": inst / base,
        "throughput_ratio_median_round": pb.median([r["ops_s"] / r["baseline_ops_s"] for r in rounds]),
        "baseline_ops_s_mean": base,
        "instrumented_ops_s_mean": inst,
        "spans_per_operation": sum(r["spans"] for r in rounds) / ops,
        "cpu_s_per_100k_operations": sum(r["cpu_s"] for r in rounds) / ops * 100_000,
        "processor_peak_rss_mib": max(r["processor_hwm_kib"] for r in rounds) / 1024,
        "bpf_ns_per_operation": sum(r["bpf_ns"] for r in rounds) / max(stats_ops, 1),
        "bpf_runs_per_operation": sum(r["bpf_runs"] for r in rounds) / max(stats_ops, 1),
        "db_partial": sum(r["processor_stats"].get("db_partial", 0) for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
    }
    if args.mode == "redis":
        # Commands beyond GET/SET the instrumented sessions carried (CONFIG GET, twice per
        # redis-benchmark run; the main run's count stands for the stats run's).
        summary["other_commands_per_session"] = sum(
            2 * sum(r["other_commands"].values()) for r in rounds) / len(rounds)
        summary["spans_per_command"] = sum(r["spans"] for r in rounds) / (
            ops + sum(2 * sum(r["other_commands"].values()) for r in rounds))
    else:
        # Spans beyond pgbench's transactions: statements pgbench runs itself before its
        # clients start (table checks), per instrumented session (two pgbench runs).
        summary["extra_spans_per_session"] = sum(
            r["spans"] - r["operations"] - r["stats_operations"] for r in rounds) / len(rounds)
    print("summary: " + json.dumps(summary, indent=1))
    if summary["spans_per_operation"] == 0:
        print(f"NOTE: no {args.mode} spans were built; the throughput, CPU and kernel figures "
              "still stand.")
    if args.json:
        json.dump({"rounds": rounds, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e or 'Ctrl-C'}); everything started here was stopped")
