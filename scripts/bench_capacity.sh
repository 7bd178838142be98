#!/usr/bin/env bash
# The capacity benchmark: what KV compression buys at one fixed KV pool, static
# and guarded (a real kvguard-guard on loopback with the shipped hazard model
# and controller), plus a 2x-overload burst. Writes reports/capacity/.
#   scripts/bench_capacity.sh [extra kvguard-bench-capacity flags]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
LOG=$(mktemp -d)
cleanup() { kill "${GUARD_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BIN/kvguard-guard" --listen 127.0.0.1:0 --metrics_listen "" --model models/hazard/hazard.json \
  --config models/hazard/controller.json >"$LOG/guard.log" 2>&1 &
GUARD_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$LOG/guard.log" && break; sleep 0.1; done
GUARD=$(grep -o 'listening on [0-9.]*:[0-9]*' "$LOG/guard.log" | head -1 | awk '{print $3}')
"$BIN/kvguard-bench-capacity" --model models/arith-fewshot --guard "$GUARD" \
  --ratios 0,0.5,0.75,0.875 --requests 96 --repeats 3 --out reports/capacity "$@"
