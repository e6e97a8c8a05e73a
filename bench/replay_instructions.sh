#!/usr/bin/env bash
# Processor cost per event in instructions (issue 14): the replay of processor/examples/replay.rs
# run under valgrind's cachegrind at two lengths, the difference divided by the difference in
# events, so start-up and the building of the records cancel out. Instruction counts do not
# move with the load of a shared machine, where CPU-time figures swing by ±20 % between two
# runs of one build (BENCHMARKS.md); they are a proxy for time, not time itself (a cache miss
# or a mispredicted branch costs more than an instruction). Usage:
# bench/replay_instructions.sh [OUTPUTS...] (default: core metrics traces). The exporter
# thread of the `metrics` and `traces` sets is counted too, and its timer-driven work depends
# on how long a run takes, so two runs of one build differ by a few instructions per event.
# COMPARE=/path/to/another/replay counts that binary too. REQUEST=file / RESPONSE=file replace the replay's own
# exchange (wrk's `GET /ok`, an nginx answer). TOP=N prints the N functions with the most
# instructions per event for each set (this tree's build; a rough list: long demangled names
# are cut).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v valgrind >/dev/null || { echo "valgrind is missing: run scripts/setup.sh" >&2; exit 1; }
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(core metrics traces)
short=131072
long=393216

cargo build --release -p sonde-processor --example replay
bins=("${CARGO_TARGET_DIR:-target}/release/examples/replay")
[ -n "${COMPARE:-}" ] && bins+=("$COMPARE")
exchange=()
[ -n "${REQUEST:-}" ] && exchange+=(--request "$REQUEST")
[ -n "${RESPONSE:-}" ] && exchange+=(--response "$RESPONSE")
work=$(mktemp -d /tmp/sonde-ir.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Instructions of one run; the run's own report line goes to $work/line. Exits the script
# (from inside the command substitution, so `die` below checks the value too) on a failed run.
count() {
  local bin=$1 set=$2 events=$3 out=$4
  if ! valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
    "$bin" --outputs "$set" --events "$events" "${exchange[@]}" >"$work/line" 2>"$work/vg"; then
    echo "replay failed under valgrind ($bin --outputs $set --events $events):" >&2
    tail -20 "$work/vg" >&2
    exit 1
  fi
  sed -nE 's/.*I\s+refs:\s+([0-9,]+).*/\1/p' "$work/vg" | tr -d ,
}
die() { echo "$*" >&2; exit 1; }

echo "machine: $(nproc) cores, $(date -u +%FT%TZ); valgrind $(valgrind --version)"
for set in "${sets[@]}"; do
  for bin in "${bins[@]}"; do
    a=$(count "$bin" "$set" "$short" "$work/short.out")
    n_short=$(sed -nE 's/.* events=([0-9]+) .*/\1/p' "$work/line")
    b=$(count "$bin" "$set" "$long" "$work/long.out")
    n_long=$(sed -nE 's/.* events=([0-9]+) .*/\1/p' "$work/line")
    spans=$(sed -nE 's/.* spans=([0-9]+) .*/\1/p' "$work/line")
    [ -n "$a" ] && [ -n "$b" ] && [ -n "$n_short" ] && [ -n "$n_long" ] ||
      die "no instruction count or event count for $set ($bin): see valgrind's output above"
    per=$(( (b - a) / (n_long - n_short) ))
    printf "  %-8s %6d instructions/event  (%s; %s events, %s spans)\n" "$set" "$per" "$bin" "$n_long" "$spans"
    if [ "${TOP:-0}" -gt 0 ] && [ "$bin" = "${bins[0]}" ]; then
      cg_diff "$work/short.out" "$work/long.out" >"$work/diff.out" 2>/dev/null
      cg_annotate "$work/diff.out" 2>/dev/null |
        awk -v n="$((n_long - n_short))" -v top="$TOP" '
          /file:function/ { on = 1; next }
          on && /^[ 0-9,]+\(/ && shown < top {
            v = $1; gsub(",", "", v); f = $NF; sub(/^[^:]*:/, "", f)
            printf "      %6.0f  %s\n", v / n, f; shown++
          }'
    fi
  done
done
