#!/usr/bin/env bash
# The research loop on the bundled model, end to end:
#   sweep (traces) -> train-predictor (hazard model + report) -> evaluate (offline + live)
# Reports land in reports/research/; the hazard model and its tuned controller
# config in models/hazard/ (the guard's defaults). Long-running: not a test.
#   scripts/research_loop.sh [PROMPTS] [extra sweep flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS="${1:-400}"; shift || true
MODEL="${KVG_MODEL:-models/arith-lm}"
OUT=reports/research
TRACES="${KVG_TRACES:-$OUT/traces}"
BIN=build/bin
mkdir -p "$OUT" models/hazard
# The problem options the model was trained with (training.json), so prompts match its task.
mapfile -t OPTS < <(python3 scripts/problem_opts.py "$MODEL")
echo "== sweep: $PROMPTS held-out prompts x (none + compressors x ratios) =="
"$BIN/kvguard" sweep --model "$MODEL" --out "$TRACES" --prompts "$PROMPTS" --split test \
  --compressors streaming_llm,snapkv,tova,knorm --ratios 0.5,0.75,0.875 \
  --compressor-opt snapkv:window_size=16 --max-new-tokens 256 --batch 16 "${OPTS[@]}" "$@"
echo "== train-predictor =="
"$BIN/kvguard" train-predictor --traces "$TRACES" --out "$OUT/predictor" --horizon 32 --rounds 300
echo "== evaluate (offline + live), FPR <= 5% in every configuration =="
"$BIN/kvguard" evaluate --model "$MODEL" --traces "$TRACES" --predictor "$OUT/predictor" \
  --out "$OUT/evaluation" --config guard_sidecar/config/controller_research.json --live --concurrency 8 --max-new-tokens 256
echo "== evaluate again with the FPR bound pooled over configurations (the prototype's reading) =="
"$BIN/kvguard" evaluate --model "$MODEL" --traces "$TRACES" --predictor "$OUT/predictor" \
  --out "$OUT/evaluation_pooled" --config guard_sidecar/config/controller_research.json --live --concurrency 8 \
  --max-new-tokens 256 --fpr-scope pooled
cp "$OUT/predictor/hazard.json" models/hazard/hazard.json
# The guard ships the pooled-FPR controller: more protection at high ratios, where
# failures concentrate; its false alarms cost savings, never correctness.
cp "$OUT/evaluation_pooled/controller.json" models/hazard/controller.json
echo "reports: $OUT/predictor/report.md, $OUT/evaluation{,_pooled}/evaluation.md; guard defaults: models/hazard/"
