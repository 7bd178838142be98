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
source scripts/lib/guard.sh
start_guard "$LOG/guard.log"
"$BIN/kvguard-bench-capacity" --model models/arith-fewshot --guard "$GUARD" \
  --ratios 0,0.5,0.75,0.875 --requests 96 --repeats 3 --out reports/capacity "$@"
