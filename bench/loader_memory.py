#!/usr/bin/env python3
"""Loader memory after start-up (issue 14, item 6).

Starts single-host `sonde` (release build, default configuration plus one open port nobody
listens on) several times, waits until the processor is connected, and reads the loader's
/proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile) and the largest resident mappings from
/proc/<pid>/smaps. Prints one JSON object per binary given (median of the rounds).

Usage: bench/loader_memory.py [--rounds 3] BINARY [BINARY ...]
  e.g. bench/loader_memory.py /tmp/sonde-before target/release/sonde
The processor binary must sit next to each `sonde` binary (as the build leaves them).
"""

import argparse
import json
import os
import statistics
import subprocess
import time


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024.0
    return out


def mappings(pid, top=4):
    rows, name = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts[0] == "Rss:":
                rows.append((int(parts[1]) / 1024.0, name))
    return sorted(rows, reverse=True)[:top]


def one_round(binary):
    proc = subprocess.Popen(
        [binary, "--open-port", "59997"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 30
        for line in proc.stderr:
            if "processor connected" in line or time.time() > deadline:
                break
        time.sleep(3)  # the first stats interval and hand-over are behind it
        return status(proc.pid), mappings(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    for binary in args.binaries:
        rounds = [one_round(binary) for _ in range(args.rounds)]
        keys = rounds[0][0].keys()
        med = {k: round(statistics.median(r[0][k] for r in rounds), 1) for k in keys}
        print(json.dumps({
            "binary": os.path.abspath(binary),
            "MiB_median": med,
            "largest_mappings_MiB": [(round(m, 1), n) for m, n in rounds[-1][1]],
        }))


if __name__ == "__main__":
    main()
