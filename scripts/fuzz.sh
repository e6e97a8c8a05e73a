#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default 60).
# Installs cargo-fuzz when missing. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cd fuzz
for target in $(cargo +nightly fuzz list); do
  echo "[fuzz] $target for ${seconds}s"
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=1024
done
