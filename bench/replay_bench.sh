#!/usr/bin/env bash
# Processor throughput on one core (issue 14 item 7): captures the exact bytes of one
# `wrk -c16 /ok` exchange from a real nginx (tests/servers/nginx.conf), then replays records
# built from them through the processor's pipeline (processor/examples/replay.rs) pinned to
# one core, ROUNDS times per output set, the sets taking turns within each round; prints
# every run and the median events/s per set. Usage: bench/replay_bench.sh [OUTPUTS...]
# (default: decode build core prometheus metrics traces json). EVENTS (default 2000000),
# ROUNDS (default 5), CORE (default 1). COMPARE=/path/to/another/replay (e.g. built from an
# older commit with CARGO_TARGET_DIR elsewhere) runs it beside this tree's build in every
# round, its sets reported as `old:<set>`. CARGO_TARGET_DIR is honoured (the build measured is
# the one cargo writes there).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rounds=${ROUNDS:-5}
events=${EVENTS:-2000000}
core=${CORE:-1}
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(decode build core prometheus metrics traces json)

cargo build --release -p sonde-processor --example replay
bin=${CARGO_TARGET_DIR:-target}/release/examples/replay

work=$(mktemp -d /tmp/sonde-replay.XXXXXX)
nginx_pid=
cleanup() {
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The exchange's bytes, from nginx itself: the request as wrk writes it, the response as
# nginx answers it (its own Date and Server headers).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|PREFIX|$work|g" -e "s|PORT|$port|g" tests/servers/nginx.conf >"$work/nginx.conf"
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
python3 - "$port" "$work" <<'EOF'
import socket, sys, time
port, work = int(sys.argv[1]), sys.argv[2]
req = f"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        break
    except OSError:
        time.sleep(0.05)
s.sendall(req)
resp = b""
while b"\r\n\r\n" not in resp or len(resp) < resp.index(b"\r\n\r\n") + 4 + int(
        [l for l in resp.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1]):
    chunk = s.recv(4096)
    if not chunk:
        break
    resp += chunk
open(f"{work}/request", "wb").write(req)
open(f"{work}/response", "wb").write(resp)
print(f"captured: request {len(req)} bytes, response {len(resp)} bytes from nginx on port {port}")
EOF
kill -QUIT "$nginx_pid"
wait "$nginx_pid" 2>/dev/null || true
nginx_pid=

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), pinned to core $core"
results="$work/results"
: >"$results"
bins=("$bin")
[ -n "${COMPARE:-}" ] && bins+=("$COMPARE")
for round in $(seq "$rounds"); do
  for set in "${sets[@]}"; do
    for b in "${bins[@]}"; do
      line=$(taskset -c "$core" "$b" --outputs "$set" --events "$events" \
        --request "$work/request" --response "$work/response")
      [ "$b" = "$bin" ] || line="old:$line"
      echo "round $round: $line"
      echo "$line" >>"$results"
    done
  done
done
[ -n "${COMPARE:-}" ] && sets+=($(printf 'old:%s ' "${sets[@]}"))
echo "medians per output set ($rounds rounds; CPU: this process's CPU time, all threads):"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for set in "${sets[@]}"; do
  case $set in
    old:*) rows=$(grep "^old:outputs=${set#old:} " "$results") ;;
    *) rows=$(grep "^outputs=$set " "$results") ;;
  esac
  wall=$(sed -E 's/.*events_per_s=([0-9]+).*/\1/' <<<"$rows" | median)
  cpu=$(sed -E 's/.*events_per_cpu_s=([0-9]+).*/\1/' <<<"$rows" | median)
  ns=$(sed -E 's/.*cpu_ns_per_event=([0-9]+).*/\1/' <<<"$rows" | median)
  dropped=$(sed -nE 's/.*dropped=([0-9]+).*/\1/p' <<<"$rows" | awk '{ s += $1 } END { print s + 0 }')
  printf "  %-10s %9d events/s wall  %9d events/CPU-s  %5d CPU ns/event  spans dropped %d\n" \
    "$set" "$wall" "$cpu" "$ns" "$dropped"
done
