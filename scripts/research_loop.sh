#!/usr/bin/env bash
# The research loop on a bundled model, end to end:
#   sweep (traces) -> train-predictor (hazard model + report) -> evaluate (offline + live)
#   -> frontier (static hull vs guard and admission policies, test prompts)
# Reports land in $KVG_OUT (default reports/research/); with KVG_INSTALL=1 the hazard model and its
# tuned controller config are copied to models/hazard/ (the guard's defaults). Long-running: not a test.
#   [KVG_MODEL=models/arith-fewshot] [KVG_RATIOS=0.5,...] [KVG_COMPRESSORS=snapkv,...] \
#     scripts/research_loop.sh [PROMPTS] [extra sweep flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS="${1:-400}"; shift || true
MODEL="${KVG_MODEL:-models/arith-lm}"
OUT="${KVG_OUT:-reports/research}"
RATIOS="${KVG_RATIOS:-0.5,0.625,0.75,0.8125,0.875,0.9375}"
COMPRESSORS="${KVG_COMPRESSORS:-snapkv,tova,streaming_llm}"
THREADS="${KVG_THREADS:-2}"
TRACES="${KVG_TRACES:-$OUT/traces}"
BIN=build/bin
mkdir -p "$OUT" models/hazard
# The problem options the model was trained with (training.json), so prompts match its task.
mapfile -t OPTS < <(python3 scripts/problem_opts.py "$MODEL")
echo "== sweep: $PROMPTS held-out prompts x (none + compressors x ratios) =="
"$BIN/kvguard" sweep --model "$MODEL" --out "$TRACES" --prompts "$PROMPTS" --split test \
  --compressors "$COMPRESSORS" --ratios "$RATIOS" \
  --compressor-opt snapkv:window_size=16 --max-new-tokens 256 --batch 16 --threads "$THREADS" "${OPTS[@]}" "$@"
echo "== train-predictor =="
"$BIN/kvguard" train-predictor --traces "$TRACES" --out "$OUT/predictor" --horizon 32 --rounds 300
for SCOPE in ${KVG_FPR_SCOPES:-per-config pooled}; do
  # per-config: FPR <= 5% in every configuration; pooled: over all of them (the prototype's reading).
  DIR="$OUT/evaluation"; [ "$SCOPE" = pooled ] && DIR="$OUT/evaluation_pooled"
  echo "== evaluate (offline + live), FPR scope $SCOPE =="
  "$BIN/kvguard" evaluate --model "$MODEL" --traces "$TRACES" --predictor "$OUT/predictor" \
    --out "$DIR" --config guard_sidecar/config/controller_research.json --live --concurrency 8 \
    --max-new-tokens 256 --fpr-scope "$SCOPE"
done
echo "== frontier: static hull vs the guard (live) and the admission policies (offline), test prompts =="
"$BIN/kvguard" frontier --traces "$TRACES" --records "$OUT/evaluation_pooled/records.jsonl" --out "$OUT/frontier"
"$BIN/kvguard" frontier --records "$OUT/evaluation_pooled/admission_records.jsonl" --out "$OUT/frontier_admission"
if [ "${KVG_INSTALL:-0}" = 1 ]; then
  cp "$OUT/predictor/hazard.json" models/hazard/hazard.json
  # The guard ships the pooled-FPR controller: more protection at high ratios, where
  # failures concentrate; its false alarms cost savings, never correctness.
  cp "$OUT/evaluation_pooled/controller.json" models/hazard/controller.json
fi
echo "reports: $OUT/predictor/report.md, $OUT/evaluation{,_pooled}/evaluation.md, $OUT/frontier{,_admission}/frontier.md"
