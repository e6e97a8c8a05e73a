#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs Sonde's whole test suite: formatting, clippy,
# unit tests, the parser fuzz smoke run and the end-to-end tests with real eBPF and real
# servers. Must run as root (the e2e tests load kernel programs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo build"
cargo build --workspace --locked
echo "[test] fuzz smoke run (FUZZ_SECONDS=${FUZZ_SECONDS:-15} per target)"
mkdir -p target
if FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh > target/fuzz-smoke.log 2>&1; then
  grep -E '^\[fuzz\]|^Done' target/fuzz-smoke.log
else
  tail -n 60 target/fuzz-smoke.log
  echo "[test] fuzzing found a failure (see fuzz/artifacts/)"
  exit 1
fi
# Last, so the runner's summary line closes the output.
echo "[test] cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
