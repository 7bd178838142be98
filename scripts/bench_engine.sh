#!/usr/bin/env bash
# Engine speed against its peers, side by side in one run, rounds interleaved (these machines are
# noisy; the report takes medians):
#   - Qwen2.5-0.5B shape, random bf16 weights, 2 threads: kvguard bench against llama.cpp (the
#     prebuilt CPU libraries the peer tool installs from npm) at batch 1, 8 and 32, and kvguard's
#     int8 weights against llama.cpp's Q8_0 and f32 compute against its F32 file of the same
#     checkpoint at batch 1; kvguard's decode loops also against its own libtorch-ops path;
#   - stories260K, 1 thread: kvguard against llama2.c's run.c -Ofast (given with --runc);
#   - the read bandwidth of this machine (the batch-1 roofline: weight bytes / bandwidth).
# Writes reports/bench/engine.{json,csv,svg}, engine_table.md and engine_raw.jsonl (every run's
# output line; --report-only re-renders from it).
#
#   scripts/bench_engine.sh --peer DIR [--peer-tools ../shared/tools/peer-llamacpp]
#                           [--runc DIR_WITH_run_AND_tok512.bin] [--rounds 3] [--work DIR]
#                           [--out reports/bench] [--report-only]
# --peer DIR is set up by the peer tool's setup.sh when it has no llbench yet.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3 WORK=/tmp/kvguard-bench-engine OUT=reports/bench REPORT_ONLY=0 PEER="" RUNC=""
TOOLS=../shared/tools/peer-llamacpp
while [ $# -gt 0 ]; do
  case "$1" in
  --peer) PEER="$2"; shift 2 ;;
  --peer-tools) TOOLS="$2"; shift 2 ;;
  --runc) RUNC="$2"; shift 2 ;;
  --rounds) ROUNDS="$2"; shift 2 ;;
  --work) WORK="$2"; shift 2 ;;
  --out) OUT="$2"; shift 2 ;;
  --report-only) REPORT_ONLY=1; shift ;;
  *) echo "bench_engine: unknown option $1" >&2; exit 2 ;;
  esac
done
KVG=$PWD/build/bin/kvguard
RAW=$WORK/raw.jsonl
mkdir -p "$WORK" "$OUT"

if [ "$REPORT_ONLY" = 0 ]; then
  [ -x "$KVG" ] || { echo "bench_engine: build first (scripts/build.sh)" >&2; exit 1; }
  [ -n "$PEER" ] || { echo "bench_engine: --peer DIR is required" >&2; exit 2; }
  PEER=$(mkdir -p "$PEER" && cd "$PEER" && pwd)
  [ -x "$PEER/llbench" ] || bash "$TOOLS/setup.sh" "$PEER"
  LIBDIR=$PEER/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
  export LLAMA_LIBDIR=$LIBDIR
  if [ ! -x "$PEER/llama_peer" ] || [ bench/peer/llama_peer.cc -nt "$PEER/llama_peer" ]; then
    g++ -O2 -std=c++17 -I "$PEER/llama.cpp-src/include" -I "$PEER/llama.cpp-src/ggml/include" \
      bench/peer/llama_peer.cc -o "$PEER/llama_peer" -L"$LIBDIR" -l:libllama.v0.5.0.so \
      -l:libggml.v0.5.0.so -l:libggml-base.so -Wl,-rpath,"$LIBDIR"
  fi
  CKPT=$PEER/q05-bf16
  if [ ! -f "$CKPT/config.json" ]; then
    /usr/bin/python3 "$TOOLS/make_random_checkpoint.py" "$CKPT" qwen2.5-0.5b bf16
  fi
  [ -f "$PEER/q05-bf16.gguf" ] || /usr/bin/python3 "$TOOLS/hf_to_gguf.py" "$CKPT" "$PEER/q05-bf16.gguf" bf16
  [ -f "$PEER/q05-f32.gguf" ] || /usr/bin/python3 "$TOOLS/hf_to_gguf.py" "$CKPT" "$PEER/q05-f32.gguf" f32
  [ -f "$PEER/q05-q8_0.gguf" ] || "$PEER/llama_peer" quantize "$PEER/q05-bf16.gguf" "$PEER/q05-q8_0.gguf" q8_0
  : > "$RAW"
  wbytes=$(du -cb "$CKPT"/*.safetensors | tail -1 | cut -f1)
  echo "{\"round\":0,\"case\":\"weights\",\"system\":\"checkpoint\",\"result\":{\"bf16_bytes\":$wbytes}}" >>"$RAW"
  # case | system | command (prints one JSON object on its last line)
  CASES=(
    "bf16 b1|kvguard|$KVG bench --model $CKPT --threads 2 --batch 1 --prompt-tokens 128 --decode-tokens 64 --warmup 8 --json"
    "bf16 b1|llama.cpp|$PEER/llbench $PEER/q05-bf16.gguf 2 128 64 8 none auto"
    "bf16 b1|kvguard-libtorch|$KVG bench --model $CKPT --threads 2 --batch 1 --prompt-tokens 128 --decode-tokens 64 --warmup 8 --cpu-decode libtorch --json"
    "f32 b1|kvguard|$KVG bench --model $CKPT --dtype f32 --threads 2 --batch 1 --prompt-tokens 128 --decode-tokens 32 --warmup 4 --json"
    "f32 b1|llama.cpp|$PEER/llbench $PEER/q05-f32.gguf 2 128 32 4 none auto"
    "int8 b1|kvguard|$KVG bench --model $CKPT --weights int8 --threads 2 --batch 1 --prompt-tokens 128 --decode-tokens 64 --warmup 8 --json"
    "int8 b1|llama.cpp|$PEER/llbench $PEER/q05-q8_0.gguf 2 128 64 8 none auto"
    "bf16 b8|kvguard|$KVG bench --model $CKPT --threads 2 --batch 8 --prompt-tokens 128 --decode-tokens 32 --warmup 4 --json"
    "bf16 b8|llama.cpp|$PEER/llama_peer decode $PEER/q05-bf16.gguf 2 8 128 32 4"
    "bf16 b32|kvguard|$KVG bench --model $CKPT --threads 2 --batch 32 --prompt-tokens 128 --decode-tokens 16 --warmup 2 --json"
    "bf16 b32|llama.cpp|$PEER/llama_peer decode $PEER/q05-bf16.gguf 2 32 128 16 2"
  )
  if [ -n "$RUNC" ]; then
    CASES+=(
      "stories260K b1|kvguard|$KVG bench --model models/stories260K/stories260K.bin --threads 1 --batch 1 --prompt-tokens 1 --decode-tokens 500 --warmup 8 --json"
      "stories260K b1|kvguard-libtorch|$KVG bench --model models/stories260K/stories260K.bin --threads 1 --batch 1 --prompt-tokens 1 --decode-tokens 500 --warmup 8 --cpu-decode libtorch --json"
      "stories260K b1|run.c|$RUNC/run models/stories260K/stories260K.bin -z $RUNC/tok512.bin -t 0 -n 512 -i ''"
    )
  fi
  total=$((ROUNDS * (${#CASES[@]} + 1))) done=0 start=$(date +%s)
  for r in $(seq 1 "$ROUNDS"); do
    for c in "${CASES[@]}"; do
      IFS='|' read -r name system cmd <<<"$c"
      if [ "$system" = run.c ]; then
        line=$(eval "$cmd" 2>&1 >/dev/null | sed -n 's/^achieved tok\/s: \(.*\)$/{"decode_tokens_per_s":\1}/p')
      else
        line=$(eval "$cmd" 2>/dev/null | tail -1)
      fi
      echo "{\"round\":$r,\"case\":\"$name\",\"system\":\"$system\",\"result\":${line:-null}}" >>"$RAW"
      done=$((done + 1)) el=$(($(date +%s) - start))
      printf '\rbench_engine: %d/%d runs, %ds elapsed, ETA %ds   ' $done $total $el $((el * (total - done) / done)) >&2
    done
    bw=$("$PEER/bw" | sed -n 's/.*best=\([0-9.]*\) GB\/s.*/\1/p')
    echo "{\"round\":$r,\"case\":\"bandwidth\",\"system\":\"bw\",\"result\":{\"gb_per_s\":${bw:-null}}}" >>"$RAW"
    done=$((done + 1))
  done
  echo >&2
  cp "$RAW" "$OUT/engine_raw.jsonl" # every run's record, so the report can be recomputed
fi
/usr/bin/python3 scripts/engine_report.py "$OUT/engine_raw.jsonl" "$OUT"
