#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), builds Sonde in release mode and runs `sonde` (single
# host: loader + unprivileged processor) with its embedded defaults, printing spans as text.
# Extra arguments go to sonde, e.g. `scripts/run.sh --open-port 8080` or `--config file.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh
cargo build --release --locked -p sonde-loader -p sonde-processor
exec ./target/release/sonde "$@"
