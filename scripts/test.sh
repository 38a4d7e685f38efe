#!/usr/bin/env bash
# The project's test command (README): unit and integration tests, a
# simulator sweep with the determinism check, then the end-to-end tests that
# drive the real binary with real Kafka clients (tests/e2e). The sweep's first seed derives
# from the commit, so every commit explores different seeds while any failure
# prints the one-line command that replays it. SIM_SEEDS sets the sweep size.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS="${SIM_SEEDS:-40}"
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

cargo test --workspace --release 2>&1 | tee "$log_dir/cargo-test.log"

if git rev-parse HEAD >/dev/null 2>&1; then
  first_seed=$(( 0x$(git rev-parse HEAD | cut -c1-8) ))
else
  first_seed=1
fi
cargo run --release -p runnel-sim -- --seeds "$SIM_SEEDS" --first-seed "$first_seed" \
  --check-determinism 2>&1 | tee "$log_dir/sim.log"

cargo build --release --bin runnel
bash tests/e2e/run.sh 2>&1 | tee "$log_dir/e2e.log"

# One closing line that counts everything: every unit and integration test,
# every simulated seed (each run twice and compared), every end-to-end test.
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log_dir/cargo-test.log" \
  | awk '{sum += $4} END {print sum + 0}')
seeds=$(grep -Eo '^seeds: [0-9]+ passed' "$log_dir/sim.log" | awk '{print $2}')
e2e=$(grep -Eo '^e2e: [0-9]+ passed, 0 failed' "$log_dir/e2e.log" | awk '{print $2}')
echo "total: $((passed + seeds + e2e)) passed, 0 failed"
