#!/usr/bin/env python3
"""What socket traffic Sonde does not capture pays: Unix-domain, UDP and unselected TCP.

Every socket read and write on the host runs Sonde's `sock_recv_length` / `sock_send_length`
programs, whatever the socket. Only TCP is paired, and process metrics count IPv4/IPv6
sockets, so a Unix-domain socket (D-Bus, journald's stdout streams, container runtimes' gRPC)
or, with process metrics off, a UDP socket (DNS) should be turned away before anything costly.
This runs a ping-pong between two processes (64-byte messages, one write and one read per
direction, so four program runs per round trip) over each transport while Sonde selects a
port nothing uses, and reports per transport: the programs' mean ns per run under
`kernel.bpf_stats_enabled` (every run on the host in that window: other traffic, Sonde's own
included, can add runs) and the ping-pong's own CPU time per round trip (user + system,
both processes) against the same ping-pong with no Sonde, in the same round.

Modes per round, in order: base (no Sonde), then each build given (`--release`, and
`--compare-release` to set a second build beside it). Run as root after a release build.
Usage: bench/other_sockets.py [--rounds N] [--trips N] [--release DIR] [--compare-release DIR]
[--json FILE]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from nginx_bench import bpf_progs, bpf_run_stats, free_port, stop, wait_log  # noqa: E402

MESSAGE = b"x" * 64
TRANSPORTS = ["unix", "udp", "tcp"]


def pair(transport):
    """Two connected sockets of the transport, on 127.0.0.1 for the IP ones."""
    if transport == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if transport == "udp":
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        return a, b
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def ping_pong(transport, trips):
    """Runs `trips` round trips between a forked child and this process; returns the CPU
    seconds both took (user + system) and the wall time."""
    a, b = pair(transport)
    cpu0 = os.times()
    wall0 = time.perf_counter()
    child = os.fork()
    if child == 0:
        a.close()
        n = len(MESSAGE)
        for _ in range(trips):
            got = b.recv(n)
            b.send(got)
        os._exit(0)
    b.close()
    n = len(MESSAGE)
    for _ in range(trips):
        a.send(MESSAGE)
        if len(a.recv(n)) != n:
            raise SystemExit(f"{transport}: short read")
    os.waitpid(child, 0)
    wall = time.perf_counter() - wall0
    cpu1 = os.times()
    a.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) \
        + (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    return cpu, wall


def measure(trips, ours):
    """Each transport: CPU per round trip, then (when Sonde runs) ns per program run."""
    out = {}
    for t in TRANSPORTS:
        cpu, wall = ping_pong(t, trips)
        row = {"cpu_us_per_trip": cpu / trips * 1e6, "wall_us_per_trip": wall / trips * 1e6}
        if ours:
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
            ns0, cnt0 = bpf_run_stats(ours)
            ping_pong(t, trips // 4)
            ns1, cnt1 = bpf_run_stats(ours)
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
            row["bpf_runs_per_trip"] = (cnt1 - cnt0) / (trips // 4)
            row["bpf_ns_per_run"] = (ns1 - ns0) / max(cnt1 - cnt0, 1)
            row["bpf_ns_per_trip"] = (ns1 - ns0) / (trips // 4)
        out[t] = row
    return out


def with_sonde(release, trips, workdir):
    log_path = os.path.join(workdir, "sonde.log")
    env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
           "SONDE_CONTROL_SOCKET": os.path.join(workdir, "control.sock")}
    before = {p["id"] for p in bpf_progs()}
    with open(log_path, "w") as err:
        sonde = subprocess.Popen([os.path.join(release, "sonde"), "--open-port", str(free_port())],
                                 stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_log(log_path, r"processor connected")
        time.sleep(1.0)
        ours = {p["id"] for p in bpf_progs() if p["id"] not in before
                and p.get("name") in ("sock_recv_length", "sock_send_length")}
        if len(ours) != 2:
            raise SystemExit(f"expected Sonde's two socket programs, found {ours}")
        return measure(trips, ours)
    finally:
        stop(sonde, signal.SIGINT, 20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trips", type=int, default=100_000)
    ap.add_argument("--release", default=os.path.join(HERE, "..", "target", "release"))
    ap.add_argument("--compare-release")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.trips < 100:
        raise SystemExit("--trips: at least 100 (a quarter of them run again under bpf_stats)")
    if os.geteuid() != 0:
        raise SystemExit("run as root (Sonde's loader, kernel.bpf_stats_enabled)")
    builds = {"new": args.release}
    if args.compare_release:
        builds["old"] = args.compare_release
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    rounds = []
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            res = {"base": measure(args.trips, None)}
            for name, path in builds.items():
                res[name] = with_sonde(path, args.trips, workdir)
            rounds.append(res)
            for t in TRANSPORTS:
                line = f"round {r + 1} {t:4}: base {res['base'][t]['cpu_us_per_trip']:.2f} CPU µs/trip"
                for name in builds:
                    row = res[name][t]
                    line += (f"; {name} {row['cpu_us_per_trip']:.2f} "
                             f"(x{row['cpu_us_per_trip'] / res['base'][t]['cpu_us_per_trip']:.3f}), "
                             f"{row['bpf_ns_per_run']:.0f} ns/run x {row['bpf_runs_per_trip']:.2f}")
                print(line, flush=True)
    summary = {}
    for t in TRANSPORTS:
        for name in builds:
            ratios = [r[name][t]["cpu_us_per_trip"] / r["base"][t]["cpu_us_per_trip"] for r in rounds]
            summary[f"{t}.{name}.cpu_ratio_median"] = statistics.median(ratios)
            summary[f"{t}.{name}.bpf_ns_per_run_median"] = statistics.median(
                r[name][t]["bpf_ns_per_run"] for r in rounds)
            summary[f"{t}.{name}.bpf_ns_per_trip_median"] = statistics.median(
                r[name][t]["bpf_ns_per_trip"] for r in rounds)
    print("summary:", json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
