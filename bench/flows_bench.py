#!/usr/bin/env python3
"""Cost of network flow metrics (issue 15, item 1): bulk TCP over a veth pair.

Two network namespaces joined by a veth pair (private test addresses); iperf3 sends bulk TCP
from one to the other for --duration seconds while `sonde` runs with `network.enable: false`
and `true`, alternating for --rounds rounds (both runs have Sonde's other programs attached;
with flows off the packet tracepoints are not attached at all). Reported: throughput per run
and the on/off ratio of the medians; then, in separate short runs with
kernel.bpf_stats_enabled (which adds two clock reads per program run), the kernel time of the
two packet programs per program run, with offloads on (each run is a GSO/GRO aggregate of
several segments) and off (each run is one packet), and per wire segment.

  sudo bench/flows_bench.py [--duration 10] [--rounds 3] [--sonde target/release/sonde]
                            [--no-offloads] [--json out.json]

Root is needed (eBPF, namespaces). Needs iperf3 and ethtool (scripts/setup.sh installs them).
Not a test: nothing is asserted; figures go to BENCHMARKS.md.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS_A, NS_B = "sonde-fb-a", "sonde-fb-b"
VETH_A, VETH_B = "sfbench-a", "sfbench-b"
ADDR_A, ADDR_B = "10.201.0.1", "10.201.0.2"
PROGRAMS = ("netif_receive_skb", "net_dev_start_xmit")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout


def setup(offloads):
    teardown()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B,
       "netns", NS_B)
    for ns, dev, addr in ((NS_A, VETH_A, ADDR_A), (NS_B, VETH_B, ADDR_B)):
        if not offloads:
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
               "gro", "off")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown():
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)


def tx_packets():
    out = json.loads(sh("ip", "-n", NS_A, "-s", "-j", "link", "show", "dev", VETH_A))
    return out[0]["stats64"]["tx"]["packets"]


def iperf(duration):
    """Bulk TCP A → B; returns (bits per second received, bytes sent)."""
    server = subprocess.Popen(["ip", "netns", "exec", NS_B, "iperf3", "-s", "-1", "-B", ADDR_B],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while "5201" not in sh("ip", "netns", "exec", NS_B, "ss", "-Hltn", "sport = :5201"):
            if time.time() > deadline:
                raise SystemExit("iperf3 server did not start")
            time.sleep(0.05)
        out = subprocess.run(["ip", "netns", "exec", NS_A, "iperf3", "-c", ADDR_B, "-t",
                              str(duration), "-J"], capture_output=True, text=True).stdout
        result = json.loads(out)
        if "error" in result:
            raise SystemExit(f"iperf3: {result['error']}")
        return result["end"]["sum_received"]["bits_per_second"], result["end"]["sum_sent"]["bytes"]
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def bpf_progs():
    return json.loads(sh("bpftool", "-j", "prog", "show"))


def flow_stats():
    ns = cnt = 0
    for p in bpf_progs():
        if p.get("name") in PROGRAMS:
            ns += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
    return ns, cnt


def start_sonde(sonde, workdir, flows):
    cfg = os.path.join(workdir, f"flows-{flows}.yaml")
    with open(cfg, "w") as f:
        f.write(f"network:\n  enable: {'true' if flows else 'false'}\n")
    log = open(os.path.join(workdir, f"sonde-{flows}.log"), "w")
    env = dict(os.environ, SONDE_CONTROL_SOCKET=os.path.join(workdir, "control.sock"))
    p = subprocess.Popen([sonde, "--config", cfg, "--open-port", "1"], stdout=subprocess.DEVNULL,
                         stderr=log, env=env)
    deadline = time.time() + 60
    needle = "processor connected"
    while needle not in open(log.name, errors="replace").read():
        if time.time() > deadline or p.poll() is not None:
            raise SystemExit(open(log.name).read()[-3000:])
        time.sleep(0.1)
    time.sleep(1.0)
    return p


def stop(p):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def kernel_cost(sonde, workdir, offloads, seconds):
    """ns per program run and per wire segment of the two packet programs."""
    setup(offloads)
    p = start_sonde(sonde, workdir, True)
    try:
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
        ns0, cnt0 = flow_stats()
        skbs0 = tx_packets()
        _, sent = iperf(seconds)
        ns1, cnt1 = flow_stats()
        skbs1 = tx_packets()
    finally:
        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"])
        stop(p)
    runs = cnt1 - cnt0
    # Wire segments of the data direction (MSS 1448 with timestamps) plus the ACKs back:
    # estimated from the bytes sent, for the per-segment figure only.
    segments = sent / 1448
    return {
        "offloads": offloads,
        "program_runs": runs,
        "ns_per_run": (ns1 - ns0) / runs if runs else None,
        "veth_tx_skbs": skbs1 - skbs0,
        "data_segments_est": round(segments),
        "ns_per_data_segment": (ns1 - ns0) / segments if segments else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sonde", default=os.path.join(ROOT, "target/release/sonde"))
    ap.add_argument("--no-offloads", action="store_true",
                    help="TSO/GSO/GRO off on the pair for the throughput runs (one packet per skb)")
    ap.add_argument("--json")
    a = ap.parse_args()
    results = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="sonde-flows-bench-") as workdir:
        os.chmod(workdir, 0o755)
        try:
            setup(not a.no_offloads)
            for r in range(a.rounds):
                for mode in ("off", "on"):
                    p = start_sonde(a.sonde, workdir, mode == "on")
                    try:
                        bps, _ = iperf(a.duration)
                    finally:
                        stop(p)
                    results[mode].append(bps)
                    print(f"round {r + 1} flows {mode}: {bps / 1e9:.2f} Gbit/s", flush=True)
            costs = [kernel_cost(a.sonde, workdir, offloads, 3) for offloads in (True, False)]
        finally:
            teardown()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    summary = {
        "throughput_gbps": {k: [round(v / 1e9, 3) for v in vs] for k, vs in results.items()},
        "median_gbps": {"off": round(off / 1e9, 3), "on": round(on / 1e9, 3)},
        "ratio_on_off": round(on / off, 3),
        "offloads_in_throughput_runs": not a.no_offloads,
        "kernel_cost": costs,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
    }
    print(json.dumps(summary, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
