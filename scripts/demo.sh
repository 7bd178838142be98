#!/usr/bin/env bash
# The main job on the bundled default model: install, build, then run the
# guarded service on loopback and send held-out word problems through it,
# each with static compression and guarded at the same ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
MODEL="${KVG_MODEL:-models/arith-fewshot}"
BIN=build/bin
LOG=$(mktemp -d)
cleanup() { kill "${SERVER_PID:-}" "${GUARD_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

source scripts/lib/guard.sh
start_guard "$LOG/guard.log" --metrics_listen 127.0.0.1:0
GUARD_ADDR=$GUARD

"$BIN/kvguard-server" --model "$MODEL" --listen 127.0.0.1:0 --metrics_listen "" --guard "$GUARD_ADDR" \
  >"$LOG/server.log" 2>&1 &
SERVER_PID=$!
SERVER_ADDR=$(listen_address "$LOG/server.log" 300)
echo "== kvguard-server on $SERVER_ADDR (model $MODEL), kvguard-guard on $GUARD_ADDR =="

# Held-out problems of the model's own task (the options in its training.json), each once with
# static compression and once guarded at the same ratio: the problems where static compression
# fails and the guard changes the outcome, with the guard's mode timeline, then a small table.
python3 scripts/demo_guard.py --bin "$BIN" --server "$SERVER_ADDR" --model "$MODEL" \
  --compressor "${KVG_DEMO_COMPRESSOR:-streaming_llm}" --ratio "${KVG_DEMO_RATIO:-0.875}" --count "${KVG_DEMO_COUNT:-24}"
