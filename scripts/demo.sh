#!/usr/bin/env bash
# The main job on the bundled default model: install, build, then generate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
MODEL="${KVG_MODEL:-models/stories260K/stories260K.bin}"
echo "== kvguard generate on $MODEL (greedy, 128 tokens, BOS prompt) =="
build/bin/kvguard generate --model "$MODEL" --ids 1 --max-new-tokens 128 --json
echo "== decode speed =="
build/bin/kvguard bench --model "$MODEL" --threads 1 --decode-tokens 256
