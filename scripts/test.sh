#!/usr/bin/env bash
# The project's test command (README): unit and integration tests, then a
# simulator sweep with the determinism check. The sweep's first seed derives
# from the commit, so every commit explores different seeds while any failure
# prints the one-line command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS="${SIM_SEEDS:-40}"

cargo test --workspace --release

if git rev-parse HEAD >/dev/null 2>&1; then
  first_seed=$(( 0x$(git rev-parse HEAD | cut -c1-8) ))
else
  first_seed=1
fi
cargo run --release -p runnel-sim -- --seeds "$SIM_SEEDS" --first-seed "$first_seed" --check-determinism
