#!/usr/bin/env python3
"""Memory with many processes and connections (issue 14, "Memory"): PROCESSES small HTTP/1.1
servers (forked from one Python parent, one port each, PORT_BASE.. upward) all selected by
`sonde --open-port`, then CONNECTIONS keep-alive connections spread over them, each used for
REQUESTS requests and left open. Reports the processor's and the loader's resident memory
(VmRSS now, VmHWM peak) once every request was answered and the processor counted every
process, and the spans it built (from `sonde_events_received`).

The loader's figures also split VmRSS into RssAnon (heap, stacks) and RssFile (its binary and
libraries) and name its largest resident mappings (`loader_memory.py`'s reading of `smaps`).

Run as root after `cargo build --release` (target/release/sonde; `--sonde` names another
build, whose processor binary must sit next to it).

Usage: memory_bench.py [--processes 1000] [--connections 10000] [--requests 2]
                       [--port-base 21000] [--sonde PATH] [--json out.json] [--hold SECONDS]

`--hold` keeps everything running that long after the reading (to look at the processes).
"""
import argparse
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# This directory is on the path when run as a script.
from loader_memory import mappings, status
from nginx_bench import wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SONDE = os.path.join(ROOT, "target", "release", "sonde")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve(port):
    """One child: answers every request on every connection with RESPONSE, forever."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(256)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    pending = {}
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                pending[c] = b""
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(4096)
            except (BlockingIOError, ConnectionError):
                data = b""
            if not data:
                sel.unregister(s)
                pending.pop(s, None)
                s.close()
                continue
            buf = pending[s] + data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                s.sendall(RESPONSE)
            pending[s] = buf


def start_fleet(n, base):
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                serve(base + i)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def wait_log(path, pattern, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(path, errors="replace").read())
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.2)
    raise SystemExit(f"sonde never logged {pattern!r}; see {path}")


def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def sample(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--port-base", type=int, default=21000)
    ap.add_argument("--sonde", default=SONDE)
    ap.add_argument("--json")
    ap.add_argument("--hold", type=float, default=0)
    a = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (a.connections + 4096, a.connections + 4096))
    work = tempfile.mkdtemp(prefix="sonde-mem.")
    fleet = start_fleet(a.processes, a.port_base)
    sonde = None
    conns = []
    try:
        for i in range(a.processes):
            wait_port(a.port_base + i)
        metrics_port = a.port_base + a.processes + 1
        log_path = os.path.join(work, "sonde.log")
        env = {"PATH": os.environ["PATH"], "BEYLA_TRACE_PRINTER": "disabled", "NO_COLOR": "1",
               "BEYLA_PROMETHEUS_PORT": str(metrics_port),
               "SONDE_CONTROL_SOCKET": os.path.join(work, "control.sock")}
        ports = f"{a.port_base}-{a.port_base + a.processes - 1}"
        with open(log_path, "w") as err:
            sonde = subprocess.Popen([a.sonde, "--open-port", ports], stdout=subprocess.DEVNULL,
                                     stderr=err, env=env)
        # The first scan attaches TLS probes to every process first: minutes on a busy host.
        wait_log(log_path, r"processor connected", timeout=600)
        proc_pid = int(wait_log(log_path, r"processor started pid=(\d+)").group(1))
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if sample(scrape(metrics_port), "sonde_instrumented_processes") >= a.processes:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the processor never counted every process")
        started = time.time()
        for i in range(a.connections):
            s = socket.create_connection(("127.0.0.1", a.port_base + i % a.processes))
            conns.append(s)
        for r in range(a.requests):
            for i, s in enumerate(conns):
                s.sendall(f"GET /r{r} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for s in conns:
                got = b""
                while not got.endswith(b"ok"):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise SystemExit("a server closed a connection")
                    got += chunk
        sent = a.connections * a.requests
        # Let the processor take every event before reading its memory.
        deadline = time.time() + 60
        events = 0
        while time.time() < deadline:
            events = sample(scrape(metrics_port), "sonde_events_received_total")
            if events >= sent:
                break
            time.sleep(0.5)
        time.sleep(2)
        loader = status(sonde.pid)
        result = {
            "processes": a.processes,
            "connections_open": len(conns),
            "requests": sent,
            "events_received": int(events),
            "seconds_to_drive": round(time.time() - started, 1),
            "processor_rss_mib": round(status_kib(proc_pid, "VmRSS") / 1024, 1),
            "processor_hwm_mib": round(status_kib(proc_pid, "VmHWM") / 1024, 1),
            "loader_rss_mib": round(status_kib(sonde.pid, "VmRSS") / 1024, 1),
            "loader_hwm_mib": round(status_kib(sonde.pid, "VmHWM") / 1024, 1),
            "loader_rss_anon_mib": round(loader["RssAnon"], 1),
            "loader_rss_file_mib": round(loader["RssFile"], 1),
            "loader_largest_mappings_mib": [(round(m, 1), n) for m, n in mappings(sonde.pid)],
        }
        print(json.dumps(result, indent=1))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
        if a.hold:
            print(f"holding {a.hold} s: loader pid {sonde.pid}, processor pid {proc_pid}",
                  flush=True)
            time.sleep(a.hold)
    finally:
        for s in conns:
            s.close()
        if sonde:
            sonde.send_signal(signal.SIGINT)
            try:
                sonde.wait(20)
            except subprocess.TimeoutExpired:
                sonde.kill()
        for pid in fleet:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in fleet:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


if __name__ == "__main__":
    sys.exit(main())
