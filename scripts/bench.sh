#!/usr/bin/env bash
# The figures of docs/performance.md: `runnel bench` against a local
# three-node cluster (replication factor 3, acks=all) and against a single
# node, each run measuring the machine's limits (the disk's fdatasync
# ceiling, loopback TCP) first, with the brokers' CPU time watched.
# Reports (JSON and the printed summary) go to target/bench/.
#
#   bash scripts/bench.sh                 # both, 30 s of load each
#   DURATION=10 bash scripts/bench.sh single
#   PROFILE=1 bash scripts/bench.sh       # also perf-sample the brokers
#   TAG=window bash scripts/bench.sh cluster --buffer-bytes 262144   # files cluster-window.*
#   KEEP_DATA=1 bash scripts/bench.sh single   # keep the brokers' data and logs afterwards
#
# Extra `runnel bench` flags can follow the run's name:
#   bash scripts/bench.sh cluster --buffer-bytes 262144
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-30}"
PROFILE="${PROFILE:-0}"
out=target/bench
mkdir -p "$out"
cargo build --release --bin runnel >/dev/null
bin=target/release/runnel

# Ports below Linux's ephemeral range, away from the defaults a developer's
# own broker may hold (override with KAFKA_PORT and RPC_PORT).
kafka_port="${KAFKA_PORT:-30592}"
rpc_port="${RPC_PORT:-30692}"

# run NAME NODES [runnel bench flags...]
run() {
  local name=$1${TAG:+-$TAG} nodes=$2
  shift 2
  local data="$out/$name-data"
  rm -rf "$data"
  mkdir -p "$data"
  "$bin" dev --nodes "$nodes" --data-dir "$data" --kafka-port "$kafka_port" \
    --rpc-port "$rpc_port" >"$out/$name-dev.log" 2>&1 &
  local dev=$!
  for _ in $(seq 1 300); do
    grep -q "is up" "$out/$name-dev.log" && break
    kill -0 "$dev" 2>/dev/null || { cat "$out/$name-dev.log"; return 1; }
    sleep 0.1
  done
  local pids watch=()
  pids=$(pgrep -P "$dev" || true)
  for pid in $pids; do watch+=(--watch-pid "$pid"); done
  local perf_pid="" stat_pid=""
  if [ "$PROFILE" = 1 ]; then
    # cpu-clock: a software event, for virtual machines without hardware
    # counters. Sampling covers the middle half of the load, past the
    # baseline (about 6 s) and topic creation.
    (sleep $((6 + DURATION / 4)) && perf record -e cpu-clock -F 499 --call-graph dwarf,16384 \
      -o "$out/$name.perf.data" -p "$(echo "$pids" | paste -sd, -)" \
      -- sleep $((DURATION / 2))) >"$out/$name.perf.log" 2>&1 &
    perf_pid=$!
    # System calls per second over the same window: how many fdatasyncs
    # the disk does, and how many writes, reads and wake-ups carry them.
    (sleep $((6 + DURATION / 4)) && perf stat -x, -o "$out/$name.syscalls.csv" \
      -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64 \
      -e syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto \
      -e syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait \
      -p "$(echo "$pids" | paste -sd, -)" -- sleep $((DURATION / 2))) >/dev/null 2>&1 &
    stat_pid=$!
  fi
  local code=0
  # Runnel holds every partition's batches in memory until retention drops
  # them (docs/performance.md): without a bound, a fast run of a few
  # minutes fills this machine's memory. The flags given override it.
  "$bin" bench -b "127.0.0.1:$kafka_port" --baseline-dir "$data" -d "$DURATION" \
    --report "$out/$name.json" --topic-config retention.bytes=536870912 "${watch[@]}" "$@" \
    | tee "$out/$name.txt" || code=${PIPESTATUS[0]}
  if [ -n "$perf_pid" ]; then wait "$perf_pid" "$stat_pid"; fi
  kill -TERM "$dev"
  wait "$dev" || true
  # The brokers' data is gigabytes after a run; KEEP_DATA=1 keeps it.
  [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$data"
  if [ "$PROFILE" = 1 ]; then
    {
      for sort in comm dso dso,symbol; do
        echo "== by $sort"
        perf report -i "$out/$name.perf.data" --stdio --no-children -g none \
          --percent-limit 0.7 --sort "$sort" 2>/dev/null \
          | grep -E '^ +[0-9.]+%' | sed 's/ *$//' | head -40
      done
      # Inclusive time (a function and what it calls), from the DWARF call
      # chains: which parts of Runnel the time goes to.
      echo "== inclusive, by function"
      perf report -i "$out/$name.perf.data" --stdio --children -g none \
        --percent-limit 2 --sort symbol 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed 's/ *$//' | head -60
    } >"$out/$name.profile.txt" || true
    echo "profile: $out/$name.profile.txt"
  fi
  return "$code"
}

which="${1:-all}"
[ $# -gt 0 ] && shift
case "$which" in
  cluster) run cluster 3 -r 3 --acks all "$@" ;;
  single) run single 1 -r 1 --acks all "$@" ;;
  all)
    run cluster 3 -r 3 --acks all "$@"
    run single 1 -r 1 --acks all "$@"
    ;;
  *) echo "usage: scripts/bench.sh [cluster|single|all] [runnel bench flags]" >&2; exit 2 ;;
esac
