#!/usr/bin/env bash
# What the processor's sandbox (seccomp allowlist + Landlock) costs: the core nginx benchmark
# with the current build and, in the same rounds, a build of commit afbfc90 — the last one
# before the sandbox existed; kernel programs, event format and the processor's hot path are
# the same. Printer disabled (spans built and counted). Run as root; results go to
# bench/results/ and the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo build --release --locked -p sonde-loader -p sonde-processor
before=afbfc90
tree=$(mktemp -d /tmp/sonde-nosandbox-XXXXXX)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$tree" "$before" >/dev/null
(cd "$tree" && cargo build --release --locked -p sonde-loader -p sonde-processor)
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 bench/nginx_bench.py --rounds "${ROUNDS:-3}" --duration "${DURATION:-10}" --printer disabled \
  --compare-release "$tree/target/release" --json "bench/results/sandbox-$stamp.json"
