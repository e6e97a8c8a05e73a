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
echo "[test] cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
