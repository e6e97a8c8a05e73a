#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs Sonde's whole test suite: formatting, clippy,
# unit tests, the parser fuzz smoke run and the end-to-end tests with real eBPF and real
# servers. Must run as root (the e2e tests load kernel programs). Each phase ends with a
# `[time]` line; the test runner's summary line stays the last line of the output.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
t0=$SECONDS

# Runs one phase: its name with the time of day, the command, then how long it took.
phase() {
  local name="$1" start=$SECONDS
  shift
  echo "[test] $(date -u +%T) $name"
  "$@"
  echo "[time] $name: $((SECONDS - start))s (total $((SECONDS - t0))s)"
}

fuzz_smoke() {
  mkdir -p target
  if FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh > target/fuzz-smoke.log 2>&1; then
    grep -E '^\[fuzz\]|^Done' target/fuzz-smoke.log
  else
    tail -n 60 target/fuzz-smoke.log
    echo "[test] fuzzing found a failure (see fuzz/artifacts/)"
    return 1
  fi
}

phase "setup" bash scripts/setup.sh
phase "cargo fmt --check" cargo fmt --all -- --check
phase "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
# --all-targets builds the test binaries too, with the same features as clippy and nextest
# (the dev-dependencies add features to shared crates): a plain `cargo build --workspace`
# resolved them without, so nextest rebuilt the dependents and the loader's kernel programs a
# second time. The e2e tests run the binaries built here (target/debug), which so carry the
# features the tests add (additive ones, e.g. opentelemetry's trace types; not in a release).
phase "cargo build" cargo build --workspace --all-targets --locked
phase "fuzz smoke run (FUZZ_SECONDS=${FUZZ_SECONDS:-15} per target)" fuzz_smoke
phase "cargo nextest build" cargo nextest run --workspace --locked --no-run
# Last, so the runner's summary line closes the output.
echo "[test] $(date -u +%T) cargo nextest (total so far $((SECONDS - t0))s)"
cargo nextest run --workspace --locked --no-fail-fast
