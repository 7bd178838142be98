#!/usr/bin/env bash
# Runs a campaign against the real stack on loopback in three server
# variants: unguarded and guarded-strict (one server, guard=false/true per
# request) and guarded lag-1 (a second server with --guard_lag 1).
#   loadtest/run_campaign.sh [campaign.json] [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
CAMPAIGN="${1:-loadtest/campaigns/concurrency.json}"
OUT="${2:-reports/loadtest}"
MODEL="${KVG_MODEL:-models/arith-lm}"
BIN=build/bin
LOG=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
start() {  # start NAME BINARY ARGS... -> prints host:port
  local name=$1; shift
  "$@" >"$LOG/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q "listening on" "$LOG/$name.log" && break; sleep 0.1; done
  grep -o 'listening on [0-9.]*:[0-9]*' "$LOG/$name.log" | head -1 | awk '{print $3}'
}
GUARD=$(start guard "$BIN/kvguard-guard" --listen 127.0.0.1:0 --metrics_listen "" \
  --model models/hazard/hazard.json --config models/hazard/controller.json)
STRICT=$(start strict "$BIN/kvguard-server" --model "$MODEL" --listen 127.0.0.1:0 --metrics_listen "" \
  --guard "$GUARD" --guard_lag 0 --max_concurrent 16)
LAG=$(start lag1 "$BIN/kvguard-server" --model "$MODEL" --listen 127.0.0.1:0 --metrics_listen "" \
  --guard "$GUARD" --guard_lag 1 --max_concurrent 16)
echo "guard $GUARD, strict server $STRICT, lag-1 server $LAG"
"$BIN/kvguard-loadtest" --campaign "$CAMPAIGN" --target "$STRICT" --out "$OUT/strict"
# Lag 1 only matters for guarded requests: rewrite the sweep to guard=true.
python3 - "$CAMPAIGN" "$LOG/lag1.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["name"] += " (lag 1)"
c.setdefault("sweep", {})["guard"] = ["true"]
json.dump(c, open(sys.argv[2], "w"))
PY
"$BIN/kvguard-loadtest" --campaign "$LOG/lag1.json" --target "$LAG" --out "$OUT/lag1"
echo "reports: $OUT/strict/summary.md (guard=false: unguarded, guard=true: strict), $OUT/lag1/summary.md"
