#!/usr/bin/env bash
# End-to-end tests: the release binary driven by real Kafka clients.
# Creates its virtualenvs under target/ on first use (--setup-only does just
# that), builds the binary if it is missing, and passes other arguments to
# pytest. Prints one summary line:
#   e2e: N passed, M failed
set -uo pipefail
cd "$(dirname "$0")/../.."
here=tests/e2e
venv=target/e2e-venv
venv2=target/e2e-venv-kafka-python-2

command -v kcat >/dev/null || { echo "e2e: kcat is missing (apt-get install -y kcat)"; exit 1; }
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
"$venv/bin/python" -c 'import confluent_kafka, kafka, pytest' \
  || { echo "e2e: the clients do not import in $venv"; exit 1; }
"$venv2/bin/python" -c 'import kafka, pytest' \
  || { echo "e2e: kafka-python 2 does not import in $venv2 (it needs Python 3.11 or older)"; exit 1; }
# .ci/run installs the clients early, before the long cargo steps.
if [ "${1:-}" = "--setup-only" ]; then
  echo "e2e: clients installed in $venv and $venv2"
  exit 0
fi

# The binary under test, wherever cargo puts it.
RUNNEL_BIN="$(pwd)/${CARGO_TARGET_DIR:-target}/release/runnel"
case "${CARGO_TARGET_DIR:-}" in /*) RUNNEL_BIN="$CARGO_TARGET_DIR/release/runnel" ;; esac
export RUNNEL_BIN
[ -x "$RUNNEL_BIN" ] || cargo build --release --bin runnel || exit 1

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
started=$(date +%s)
# kafka-python 3 warns about importlib.resources on every import: noise here.
pytest_args=(-q -p no:cacheprovider -W ignore::DeprecationWarning)
echo "== e2e: everything, with confluent-kafka, kcat and kafka-python 3"
"$venv/bin/python" -m pytest "${pytest_args[@]}" "$here" "$@" 2>&1 | tee "$log_dir/main.log"
main_rc=${PIPESTATUS[0]}
echo "== e2e: the kafka-python tests again with kafka-python 2"
"$venv2/bin/python" -m pytest "${pytest_args[@]}" "$here/test_kafka_python.py" "$@" 2>&1 | tee "$log_dir/kp2.log"
kp2_rc=${PIPESTATUS[0]}

# Counts from each run's closing line ("3 failed, 40 passed, 1 skipped in 9.1s").
count() {
  local log total=0 n
  for log in "$log_dir"/*.log; do
    n=$(grep -E ' in [0-9.]+s' "$log" | tail -1 | grep -Eo "[0-9]+ $1" | awk '{s += $1} END {print s + 0}')
    total=$((total + n))
  done
  echo "$total"
}
passed=$(count passed)
failed=$(( $(count failed) + $(count error) ))
# A run that crashed or found nothing to run fails too (5: no tests, when -k
# filters everything out of one run, is fine).
for rc in "$main_rc" "$kp2_rc"; do
  case "$rc" in 0|1|5) ;; *) failed=$((failed + 1)) ;; esac
done
echo "e2e took $(( $(date +%s) - started ))s"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
