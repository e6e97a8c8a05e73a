#!/usr/bin/env bash
# Per-program in-kernel cost: runs nginx (one worker) and `sonde` (release, printer disabled),
# drives `wrk -t1 -c16` for DURATION seconds with kernel.bpf_stats_enabled=1 and prints each
# Sonde program's run count and mean ns per run. Run as root after a release build
# (SONDE_BIN_DIR: another build's directory, to compare). HEADER_BYTES=N adds an N-byte header
# and then a `traceparent` to every request (the kernel's header search past the capture).
# TLS=1: nginx serves HTTPS (tests/peers/nginx_ssl.conf, a throwaway self-signed certificate)
# and the plaintext comes from the OpenSSL uprobes.
# PERF_OUT=file: also `perf record -a -g` the wrk run into that file (read it with
# `perf report -i file --comm nginx --no-children`: where nginx's time goes, Sonde's programs
# and the helpers they call included).
# APP=node or APP=flask: the Node.js `http` app or the Flask app under gunicorn (one sync
# worker, a connection per request) of bench/sdk_apps instead of nginx (Flask needs the venv
# bench/sdk_bench.py installs).
# UNSELECTED=1: Sonde selects another port, so nginx and wrk are both unselected (the floor
# every process on the host pays per socket read and write).
# Prints the total kernel ns per request last.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-4}"
dir=$(mktemp -d); chmod 755 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
conf=tests/servers/nginx.conf; scheme=http
if [ "${TLS:-0}" = 1 ]; then
  conf=tests/peers/nginx_ssl.conf; scheme=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -days 1 -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
fi
select_port=$port
[ "${UNSELECTED:-0}" = 1 ] && select_port=$((port + 1))
stop_signal=QUIT
case "${APP:-nginx}" in
  nginx)
    sed -e "s#PREFIX#$dir#g" -e "s#PORT#$port#" "$conf" > "$dir/nginx.conf"
    /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" & server=$! ;;
  node)
    node bench/sdk_apps/node_app.js "$port" & server=$!; stop_signal=TERM ;;
  flask)
    gunicorn="$HOME/.local/share/sonde/sdk-bench-venv/bin/gunicorn"
    [ -x "$gunicorn" ] || { echo "APP=flask: run bench/sdk_bench.py once (it installs $gunicorn)" >&2; exit 1; }
    "$gunicorn" -w 1 -k sync -b "127.0.0.1:$port" --chdir bench/sdk_apps flask_app:app 2>/dev/null & server=$!
    stop_signal=TERM ;;
  *) echo "APP must be nginx, node or flask" >&2; exit 1 ;;
esac
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
before=$(bpftool -j prog show | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin)))')
SONDE_CONTROL_SOCKET="$dir/control.sock" BEYLA_TRACE_PRINTER=disabled "${SONDE_BIN_DIR:-./target/release}/sonde" --open-port "$select_port" >/dev/null 2>"$dir/sonde.log" & sonde=$!
trap 'kill -INT $sonde 2>/dev/null; kill -$stop_signal $server 2>/dev/null; sysctl -q kernel.bpf_stats_enabled=0; wait; cp "$dir/sonde.log" /tmp/prog_costs_last.log; rm -rf "$dir"' EXIT
# Start-up takes seconds on a busy machine (BTF parse, verification): measuring before the
# processor connected would count a Sonde that selects nothing.
for _ in $(seq 900); do grep -q 'processor connected' "$dir/sonde.log" && break; sleep 0.1; done
grep -q 'processor connected' "$dir/sonde.log" || { echo "sonde did not start:" >&2; cat "$dir/sonde.log" >&2; exit 1; }
if [ "${TLS:-0}" = 1 ]; then
  for _ in $(seq 100); do grep -q 'TLS probes attached' "$dir/sonde.log" && break; sleep 0.1; done
fi
# This run's programs: those the sonde processes hold (a link's or a program's fd names its
# program id in fdinfo), so other Sonde instances on the machine are never counted.
ours=$(python3 - "$sonde" <<'PY'
import os, sys
root = sys.argv[1]
children = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
    except OSError:
        continue
    children.setdefault(ppid, []).append(pid)
todo, ids = [root], set()
while todo:
    pid = todo.pop()
    todo.extend(children.get(pid, []))
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        continue
    for fd in fds:
        try:
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(line.split()[1])
        except OSError:
            pass
print(" ".join(sorted(ids)))
PY
)
sleep 1
sysctl -q kernel.bpf_stats_enabled=1
headers=()
if [ "${HEADER_BYTES:-0}" -gt 0 ]; then
  headers=(-H "X-Pad: $(head -c "$HEADER_BYTES" /dev/zero | tr '\0' p)"
           -H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
fi
perf_pid=
if [ -n "${PERF_OUT:-}" ]; then
  perf record -q -a -g -o "$PERF_OUT" -- sleep "$duration" 2>/dev/null & perf_pid=$!
fi
requests=$(wrk -t1 -c16 -d"${duration}s" "${headers[@]}" "$scheme://127.0.0.1:$port/ok" | tee /dev/stderr | awk '/requests in/ {print $1}')
[ -z "$perf_pid" ] || wait "$perf_pid"
bpftool -j prog show | BEFORE="$before" OURS="$ours" REQUESTS="$requests" python3 -c '
import json, os, sys
before = set(os.environ["BEFORE"].split())
ours = set(os.environ["OURS"].split())
total = 0
for p in json.load(sys.stdin):
    # Only this run'"'"'s programs: loaded while this sonde started (other Sonde instances on
    # the machine load programs of the same names).
    if str(p["id"]) not in before and str(p["id"]) in ours and p.get("run_cnt", 0) > 0:
        total += p["run_time_ns"]
        print("%-20s runs %9d  mean %6.0f ns" % (p["name"], p["run_cnt"], p["run_time_ns"] / p["run_cnt"]))
print("kernel ns/request %.0f (%s requests)" % (total / int(os.environ["REQUESTS"]), os.environ["REQUESTS"]))
'
