#!/usr/bin/env bash
# How late may the guard's directives land? Guarded ratio-0.875 runs on the
# held-out test prompts, once per exchange timing (strict, overlapped, lag 1,
# each every step and every 4 steps; overlapped with the guard's quiet leave
# of 4, 8 and 16 steps), each with a fresh kvguard-guard on loopback and its
# static arm beside it; then a table pairing every timing's CFR with the first
# timing's and static's by prompt. Writes reports/capacity/guard_timing/.
#   scripts/guard_timing.sh [--requests 480] [--out DIR] [--timings "a b ..."]
#                           [extra kvguard-bench-capacity flags, e.g. --split val]
# A timing is "name:server flags[ @controller_key=value ...]": the @ keys go
# into a copy of the shipped controller (models/hazard/controller.json, which
# ships quiet_steps 16); every timing names its quiet_steps.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
OUT=reports/capacity/guard_timing
REQUESTS=480
PICK=""
while [[ $# -gt 0 ]]; do
  case "$1" in
  --requests) REQUESTS=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --timings) PICK=$2; shift 2 ;;
  *) break ;;
  esac
done
ALL_TIMINGS=(
  "strict:--guard_overlap=false @quiet_steps=1"
  "overlapped:--guard_overlap=true @quiet_steps=1"
  "lag1:--guard_lag=1 @quiet_steps=1"
  "strict_every4:--guard_overlap=false --guard_interval=4 @quiet_steps=1"
  "overlapped_every4:--guard_overlap=true --guard_interval=4 @quiet_steps=1"
  "lag1_every4:--guard_lag=1 --guard_interval=4 @quiet_steps=1"
  "overlapped_quiet4:--guard_overlap=true @quiet_steps=4"
  "overlapped_quiet8:--guard_overlap=true @quiet_steps=8"
  "overlapped_quiet16:--guard_overlap=true @quiet_steps=16"
)
TIMINGS=()
for timing in "${ALL_TIMINGS[@]}"; do
  if [[ -z "$PICK" || " $PICK " == *" ${timing%%:*} "* ]]; then TIMINGS+=("$timing"); fi
done
[[ ${#TIMINGS[@]} -gt 0 ]] || { echo "guard_timing: no timing matches '$PICK'" >&2; exit 2; }
source scripts/lib/guard.sh
GUARD_PID=
cleanup() { [[ -n "$GUARD_PID" ]] && kill "$GUARD_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
start=$(date +%s)
i=0
for timing in "${TIMINGS[@]}"; do
  name=${timing%%:*}
  read -r -a words <<<"${timing#*:}"
  flags=() keys=()
  for w in "${words[@]}"; do
    if [[ $w == @* ]]; then keys+=("${w#@}"); else flags+=("$w"); fi
  done
  dir=$OUT/$name
  mkdir -p "$dir"
  python3 - "$dir/controller.json" "${keys[@]}" <<'PY'
import json, sys
config = json.load(open("models/hazard/controller.json"))
for kv in sys.argv[2:]:
    key, value = kv.split("=", 1)
    config[key] = json.loads(value)
json.dump(config, open(sys.argv[1], "w"), indent=2, sort_keys=True)
PY
  start_guard "$dir/guard.log" --config "$dir/controller.json"
  "$BIN/kvguard-bench-capacity" --model models/arith-fewshot --guard "$GUARD" --ratios 0.875 \
    --requests "$REQUESTS" --repeats 1 --noburst --out "$dir" "${flags[@]}" "$@" >"$dir/bench.log" 2>&1
  # The guard process's CPU seconds (utime + stime) over the run.
  awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$GUARD_PID/stat" >"$dir/guard_cpu_s.txt"
  kill "$GUARD_PID"
  wait "$GUARD_PID" 2>/dev/null || true
  GUARD_PID=
  rm -f "$dir/guard.log"
  i=$((i + 1))
  now=$(date +%s)
  echo "[$i/${#TIMINGS[@]}] $name done; $((now - start)) s elapsed, ETA $(((now - start) * (${#TIMINGS[@]} - i) / i)) s"
done
python3 scripts/guard_timing_table.py "$OUT" "${TIMINGS[@]%%:*}"
