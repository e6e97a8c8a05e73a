#!/usr/bin/env bash
# The kernel's traceparent search past the captured bytes (docs/configuration.md, "Connected
# traces"): kernel ns per request (bench/prog_costs.sh, bpf_stats) of two builds, alternating,
# for requests with no extra header, and with HEADER_BYTES of padding then a traceparent (so
# the request runs past the 256 captured bytes and the kernel searches it). Prints one line per
# run and the medians. BEFORE / AFTER: build directories holding sonde and sonde-processor
# (BEFORE=AFTER compares a build with itself: the header sizes side by side). TLS=1: over
# HTTPS (see prog_costs.sh). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
before="${BEFORE:?a build directory without the search}"
after="${AFTER:-./target/release}"
rounds="${ROUNDS:-3}"
out=$(mktemp)
for round in $(seq "$rounds"); do
  for bytes in 0 1000 4000; do
    for build in before after; do
      dir=$before; [ "$build" = after ] && dir=$after
      ns=$(HEADER_BYTES=$bytes DURATION="${DURATION:-3}" SONDE_BIN_DIR="$dir" bash bench/prog_costs.sh 2>/dev/null | awk '/kernel ns\/request/ {print $3}')
      echo "round $round header_bytes $bytes $build kernel_ns_per_request $ns" | tee -a "$out"
    done
  done
done
python3 - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault((int(f[3]), f[4]), []).append(float(f[6]))
for bytes in (0, 1000, 4000):
    b, a = statistics.median(runs[(bytes, "before")]), statistics.median(runs[(bytes, "after")])
    print(f"header_bytes {bytes:5d}: before {b:6.0f} ns  after {a:6.0f} ns  after-before {a-b:+6.0f} ns  ratio {a/b:.2f}")
PY
rm -f "$out"
