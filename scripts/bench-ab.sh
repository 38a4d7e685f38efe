#!/usr/bin/env bash
# Two brokers side by side under the same `runnel bench` client, alternated,
# one node each, fresh data directories: the ratio of one run is what to
# read on a shared machine (docs/performance.md).
#   scripts/bench-ab.sh OLD_RUNNEL NEW_RUNNEL [ROUNDS] [SECONDS]
set -u
old=${1:?usage: scripts/bench-ab.sh OLD_RUNNEL NEW_RUNNEL [ROUNDS] [SECONDS]}
new=${2:?usage: scripts/bench-ab.sh OLD_RUNNEL NEW_RUNNEL [ROUNDS] [SECONDS]}
rounds=${3:-2}
seconds=${4:-15}
client=$new
out=$(mktemp -d)
run() {
  local name=$1 bin=$2 round=$3 data="$out/data"
  rm -rf "$data" && mkdir -p "$data"
  "$bin" serve --data-dir "$data" --kafka-addr 127.0.0.1:19092 --rpc-addr 127.0.0.1:19093 \
    --log-level warn >"$out/$name-$round.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.1; done
  sleep 1
  "$client" bench -b 127.0.0.1:19092 -d "$seconds" --skip-baseline -q --watch-pid "$pid" \
    --report "$out/$name-$round.json" >"$out/$name-$round.out" 2>&1
  kill -TERM "$pid"
  wait "$pid"
  echo "$name round $round:"
  grep -E "produce:|latency|delivery" "$out/$name-$round.out" | sed 's/^/  /'
}
for round in $(seq "$rounds"); do
  run old "$old" "$round"
  run new "$new" "$round"
done
echo "reports in $out"
