#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/fuzz_targets), or the ones named as arguments, for
# FUZZ_SECONDS each (default 60), FUZZ_JOBS at a time (default: one per core). Installs
# cargo-fuzz when missing. Crashes land in fuzz/artifacts/<target>/ and make the script fail.
#
# All targets are built by one `cargo fuzz build` and the binaries run directly: a
# `cargo fuzz run` per target re-entered cargo and linked each target on its own, which made
# the build most of the smoke run's time. The build is cargo-fuzz's default release build
# (optimized, with debug assertions and overflow checks, so arithmetic overflow in a parser is
# a crash) without a sanitizer: the parsers are safe Rust, where AddressSanitizer finds nothing
# the bounds checks do not; the only `unsafe` the targets reach is sonde-schema's length-checked
# record copies and the capnp reader. ASan instruments every crate of the cold build (most of
# the smoke run's time) and slows each execution; after changing that `unsafe` code, fuzz it
# with ASan too: `cd fuzz && cargo +nightly fuzz run event_to_span` (or control_decode).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-$(nproc)}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
if (($#)); then
  targets=("$@")
else
  list="$(cargo +nightly fuzz list)"
  mapfile -t targets <<< "$list"
fi

echo "[fuzz] building ${#targets[@]} targets"
if (($#)); then
  for target in "${targets[@]}"; do
    cargo +nightly fuzz build --sanitizer none --target "$triple" "$target"
  done
else
  cargo +nightly fuzz build --sanitizer none --target "$triple"
fi
bin_dir="target/$triple/release"

# One target: libFuzzer's output goes to target/logs/<target>.log, printed whole once all have
# ended so parallel runs do not interleave; its exit status goes next to it (a crash exits
# non-zero and leaves the input under artifacts/<target>/).
logs=target/logs
mkdir -p "$logs"
run_one() {
  local target="$1" rc=0
  mkdir -p "corpus/$target" "artifacts/$target"
  "$bin_dir/$target" "corpus/$target" -max_total_time="$seconds" -max_len=1024 \
    -artifact_prefix="artifacts/$target/" > "$logs/$target.log" 2>&1 || rc=$?
  echo "$rc" > "$logs/$target.rc"
}

running=0
for target in "${targets[@]}"; do
  rm -f "$logs/$target.rc"
  if ((running >= jobs)); then wait -n; running=$((running - 1)); fi
  run_one "$target" &
  running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
  echo "[fuzz] $target for ${seconds}s"
  cat "$logs/$target.log"
  [[ "$(cat "$logs/$target.rc" 2>/dev/null)" == 0 ]] || failed+=("$target")
done
for target in "${failed[@]}"; do
  echo "[fuzz] $target FAILED (fuzz/$logs/$target.log; inputs in fuzz/artifacts/$target/)"
done
((${#failed[@]} == 0))
