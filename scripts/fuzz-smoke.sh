#!/usr/bin/env bash
# A short fuzzing run of the request decoder and the batch validator
# (crates/kafka/fuzz), for CI. FUZZ_SECONDS sets the time per target
# (30 s unless set; CI sets 20). cargo fuzz needs nightly-only flags (the
# sanitizer); RUSTC_BOOTSTRAP lets the default stable toolchain accept them,
# so the run does not depend on a nightly being installed.
set -euo pipefail
cd "$(dirname "$0")/../crates/kafka"

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

for target in decode_request validate_batch; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  cp fuzz/seeds/"$target"/* "$corpus"/
  echo "== fuzz $target for ${FUZZ_SECONDS}s"
  log=$(mktemp)
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
    >"$log" 2>&1 || true
  grep -E "^(Done|==[0-9]+==|SUMMARY|thread|panicked)" "$log" || true
  # cargo fuzz exits non-zero on a crash; the pipe above hides it, so look
  # for the artifact it writes.
  if ls fuzz/artifacts/"$target"/crash-* fuzz/artifacts/"$target"/oom-* >/dev/null 2>&1; then
    echo "fuzz: $target found a crash; reproduce with:"
    ls fuzz/artifacts/"$target"/
    echo "  cd crates/kafka && RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>"
    exit 1
  fi
  if ! grep -q "^Done [0-9]* runs" "$log"; then
    echo "fuzz: $target did not run:"
    tail -30 "$log"
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: no crash"
