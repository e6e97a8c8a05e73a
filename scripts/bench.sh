#!/usr/bin/env bash
# Sets up everything, builds release binaries and runs the core benchmark twice: spans printed
# as JSON to a file (counted line by line) and with the printer disabled (spans built and
# counted by the processor). Results go to bench/results/ and the terminal; BENCHMARKS.md
# records them. Must run as root.
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
