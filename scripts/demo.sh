#!/usr/bin/env bash
# The main job on the bundled default model: install, build, then run the
# guarded service on loopback and stream a few held-out word problems
# through it, uncompressed, compressed, and compressed with the guard.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
MODEL="${KVG_MODEL:-models/arith-lm}"
BIN=build/bin
LOG=$(mktemp -d)
cleanup() { kill "${SERVER_PID:-}" "${GUARD_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

GUARD_ARGS=(--listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0)
[ -f models/hazard/hazard.json ] && GUARD_ARGS+=(--model models/hazard/hazard.json)
"$BIN/kvguard-guard" "${GUARD_ARGS[@]}" >"$LOG/guard.log" 2>&1 &
GUARD_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$LOG/guard.log" && break; sleep 0.1; done
GUARD_ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$LOG/guard.log" | head -1 | awk '{print $3}')

"$BIN/kvguard-server" --model "$MODEL" --listen 127.0.0.1:0 --metrics_listen "" --guard "$GUARD_ADDR" \
  >"$LOG/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do grep -q "listening on" "$LOG/server.log" && break; sleep 0.1; done
SERVER_ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$LOG/server.log" | head -1 | awk '{print $3}')
echo "== kvguard-server on $SERVER_ADDR (model $MODEL), kvguard-guard on $GUARD_ADDR =="

# Held-out problems of the model's own task (the options in its training.json).
mapfile -t OPTS < <(python3 scripts/problem_opts.py "$MODEL")
"$BIN/kvguard" problems --split test --count 3 --json "${OPTS[@]}" | while read -r line; do
  # $(...) strips trailing newlines; the prompt ends with "Solution:\n", which the model expects.
  PROMPT="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prompt"])' "$line")"$'\n'
  ANSWER=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["answer"])' "$line")
  echo
  echo "---- problem (gold answer $ANSWER) ----"
  echo "$PROMPT"
  for MODE in "none:0:false" "streaming_llm:0.8:false" "streaming_llm:0.8:true"; do
    IFS=: read -r C R G <<<"$MODE"
    echo "-- compressor=$C ratio=$R guard=$G"
    if [ "$C" = none ]; then
      "$BIN/kvguard-client" --server "$SERVER_ADDR" --prompt "$PROMPT" --max_new_tokens 160 --guard "$G"
    else
      "$BIN/kvguard-client" --server "$SERVER_ADDR" --prompt "$PROMPT" --max_new_tokens 160 \
        --compressor "$C" --ratio "$R" --guard "$G"
    fi
  done
done
