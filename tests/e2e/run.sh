#!/usr/bin/env bash
# End-to-end tests: the release binary driven by real Kafka clients.
# Creates its virtualenvs under target/ on first use. Prints one summary line:
#   e2e: N passed, M failed
set -uo pipefail
cd "$(dirname "$0")/../.."
here=tests/e2e
venv=target/e2e-venv
venv2=target/e2e-venv-kafka-python-2

command -v kcat >/dev/null || { echo "e2e: kcat is missing (apt-get install -y kcat)"; exit 1; }
# The binary under test, wherever cargo puts it.
RUNNEL_BIN="$(pwd)/${CARGO_TARGET_DIR:-target}/release/runnel"
case "${CARGO_TARGET_DIR:-}" in /*) RUNNEL_BIN="$CARGO_TARGET_DIR/release/runnel" ;; esac
export RUNNEL_BIN
[ -x "$RUNNEL_BIN" ] || cargo build --release --bin runnel || exit 1

setup() {
  local dir=$1 requirements=$2
  if [ ! -f "$dir/.installed" ] || ! cmp -s "$requirements" "$dir/.installed"; then
    rm -rf "$dir"
    python3 -m venv "$dir" && "$dir/bin/pip" install -q -r "$requirements" \
      && cp "$requirements" "$dir/.installed" || return 1
  fi
}
setup "$venv" "$here/requirements.txt" || { echo "e2e: cannot install the Python clients"; exit 1; }
setup "$venv2" "$here/requirements-kafka-python-2.txt" || { echo "e2e: cannot install kafka-python 2"; exit 1; }

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@" 2>&1 | tee "$log_dir/main.log"
"$venv2/bin/python" -m pytest -q -p no:cacheprovider "$here/test_kafka_python.py" "$@" 2>&1 | tee "$log_dir/kp2.log"

count() { grep -Eo "[0-9]+ $1" "$log_dir"/*.log | awk -F'[: ]' '{s += $(NF-1)} END {print s + 0}'; }
passed=$(count passed)
failed=$(( $(count failed) + $(count error) ))
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
