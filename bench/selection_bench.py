#!/usr/bin/env python3
"""Loader CPU of selection by open port on a busy host (issue 9, item 1).

Sets up ~30,000 TIME_WAIT sockets on loopback (kept there by a bounded connect/accept/close
churn), a Python server on the covered port (selected), then runs `sonde --open-port PORT`
(single host, as root) and measures the loader's CPU (utime + stime of the `sonde` process,
from /proc/<pid>/stat; the processor is a separate process and not counted) over fixed
windows:

  idle              nothing happens but the TIME_WAIT churn (not on a covered port)
  exec (unrelated)  an unselected process runs 100 short processes (/bin/true) per second
  exec (children)   the selected server itself runs 100 short processes per second: every
                    fork, exec and exit of a selected process is a notice to the loader

Run it once per build:
  sudo bench/selection_bench.py --sonde target/release/sonde --label after
  sudo bench/selection_bench.py --sonde /tmp/sonde/before-target/release/sonde --label before

Root is needed (eBPF). Not a test: nothing is asserted; figures go to BENCHMARKS.md.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
SERVER = r"""
import os, socket, sys, time
port, flag = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print("ready", flush=True)
next_at = time.monotonic()
while True:
    if os.path.exists(flag):
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        next_at += 0.01
        time.sleep(max(0.0, next_at - time.monotonic()))
    else:
        time.sleep(0.05)
        next_at = time.monotonic()
"""

# Server-side TIME_WAIT: the accepting side closes first. Several listeners and loopback
# addresses spread the 4-tuples so ephemeral ports are not exhausted (and TIME_WAIT reuse by
# `connect` does not eat them). Fills to `target`, then keeps about that many alive
# (TIME_WAIT lasts 60 s).
CHURN = r"""
import socket, sys, time
target = int(sys.argv[1])
listeners = []
for i in range(8):
    l = socket.socket()
    l.bind((f"127.0.0.{2 + i}", 0))
    l.listen(512)
    listeners.append(l)

def one(i):
    l = listeners[i % len(listeners)]
    c = socket.create_connection(l.getsockname())
    s, _ = l.accept()
    s.close()
    c.close()

def tw_count():
    n = 0
    for t in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(t) as f:
            next(f)
            for line in f:
                if line.split(None, 4)[3] == "06":
                    n += 1
    return n

i = 0
while tw_count() < target:
    for _ in range(1000):
        one(i)
        i += 1
print("filled", tw_count(), flush=True)
# Steady state: target / 60 s per second, in bursts of 50.
per_burst, every = 50, 50 / (target / 60.0)
while True:
    t0 = time.monotonic()
    for _ in range(per_burst):
        one(i)
        i += 1
    time.sleep(max(0.0, every - (time.monotonic() - t0)))
"""

UNRELATED = r"""
import os, sys, time
flag = sys.argv[1]
next_at = time.monotonic()
while True:
    if os.path.exists(flag):
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        next_at += 0.01
        time.sleep(max(0.0, next_at - time.monotonic()))
    else:
        time.sleep(0.05)
        next_at = time.monotonic()
"""


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def count_states():
    counts = {}
    for t in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(t) as f:
            next(f)
            for line in f:
                st = line.split(None, 4)[3]
                counts[st] = counts.get(st, 0) + 1
    return counts


def time_full_read():
    t0 = time.perf_counter()
    for t in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(t, "rb") as f:
            while f.read(1 << 16):
                pass
    return (time.perf_counter() - t0) * 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(path, needle, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                if needle in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sonde", required=True, help="the sonde binary (single host)")
    ap.add_argument("--label", default="")
    ap.add_argument("--time-wait", type=int, default=30000)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per measurement")
    ap.add_argument("--only", help="run only this phase (idle, exec_unrelated…, exec_children…)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sonde-selbench-")
    children_flag = os.path.join(work, "children")
    unrelated_flag = os.path.join(work, "unrelated")
    procs = []
    try:
        churn = subprocess.Popen(
            [sys.executable, "-c", CHURN, str(args.time_wait)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(churn)
        print(churn.stdout.readline().strip(), file=sys.stderr)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), children_flag],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(server)
        server.stdout.readline()
        procs.append(subprocess.Popen([sys.executable, "-c", UNRELATED, unrelated_flag]))

        log = os.path.join(work, "sonde.log")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUST_LOG": "info",
            "SONDE_CONTROL_SOCKET": os.path.join(work, "control.sock"),
            "BEYLA_TRACE_PRINTER": "disabled",
        }
        with open(log, "w") as logf:
            sonde = subprocess.Popen(
                [args.sonde, "--open-port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=logf,
            )
        procs.append(sonde)
        print(f"sonde pid {sonde.pid}", file=sys.stderr, flush=True)
        if not wait_for(log, f"process selected pid={server.pid} ", 60):
            sys.exit(f"the server was not selected; see {log}")
        time.sleep(3)  # past start-up

        states = count_states()
        full_read_ms = time_full_read()
        results = {
            "label": args.label,
            "sonde": args.sonde,
            "time_wait": states.get("06", 0),
            "sockets": sum(states.values()),
            "full_table_read_ms": round(full_read_ms, 1),
            "window_s": args.window,
            "cpu_percent_of_a_core": {},
        }
        for phase, flag in [
            ("idle", None),
            ("exec_unrelated_100_per_s", unrelated_flag),
            ("exec_children_of_selected_100_per_s", children_flag),
        ]:
            if args.only and not phase.startswith(args.only):
                continue
            if flag:
                open(flag, "w").close()
                time.sleep(1)
            t0, c0 = time.monotonic(), cpu_ticks(sonde.pid)
            time.sleep(args.window)
            t1, c1 = time.monotonic(), cpu_ticks(sonde.pid)
            if flag:
                os.unlink(flag)
                time.sleep(1)
            pct = 100.0 * (c1 - c0) / TICK / (t1 - t0)
            results["cpu_percent_of_a_core"][phase] = round(pct, 2)
            print(f"{phase}: {pct:.2f}% of a core", file=sys.stderr)
        results["time_wait_at_end"] = count_states().get("06", 0)
        with open(log, errors="replace") as f:
            text = f.read()
        results["loader_log_lines"] = text.count("\n")
        results["selected_lines"] = text.count("process selected")
        results["lost_notices_warnings"] = text.count("process notices were lost")
        print(json.dumps(results, indent=2))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


if __name__ == "__main__":
    main()
