#!/usr/bin/env bash
# Sets up everything, builds release binaries and runs the core benchmark twice: spans printed
# as JSON to a file (counted line by line) and with the printer disabled (spans built and
# counted by the processor); then with export on (OTLP/gRPC to a real collector and the
# Prometheus endpoint): metrics only, traces sampled at 10 %, and every trace; then HTTP/2
# (nginx h2c under h2load) and HTTPS (nginx ssl under wrk). Results go to
# bench/results/ and the terminal; BENCHMARKS.md records them. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo build --release --locked -p sonde-loader -p sonde-processor
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
for printer in json disabled; do
  echo "== trace printer: $printer"
  python3 bench/nginx_bench.py --rounds "${ROUNDS:-3}" --duration "${DURATION:-10}" \
    --printer "$printer" --json "bench/results/nginx-$printer-$stamp.json"
done
for variant in "metrics --export-signals metrics" "sampled10 --sampler-ratio 0.1" "all"; do
  name=${variant%% *}
  args=${variant#"$name"}
  echo "== export: $name"
  # shellcheck disable=SC2086
  python3 bench/nginx_bench.py --rounds "${ROUNDS:-3}" --duration "${DURATION:-10}" \
    --export $args --json "bench/results/nginx-export-$name-$stamp.json"
done
for mode in h2c https; do
  echo "== protocol: $mode"
  python3 bench/proto_bench.py "$mode" --rounds "${ROUNDS:-3}" --duration "${DURATION:-10}" \
    --json "bench/results/proto-$mode-$stamp.json"
done
