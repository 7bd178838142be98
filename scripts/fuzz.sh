#!/usr/bin/env bash
# libFuzzer runs of the parsers the service exposes (tests/fuzz): builds the
# fuzz targets with clang, AddressSanitizer and UndefinedBehaviorSanitizer in
# build-fuzz/, runs each from its seed corpus for a time or a number of
# executions, and writes reports/fuzz/README.md (executions, crashes, time).
#   scripts/fuzz.sh [--seconds S] [--runs N] [TARGET...]
#   targets: safetensors model_config tokenizer llama2c guard_batch (default: all)
# Crashing inputs are kept in build-fuzz/crashes/<target>/ (none means none).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=60 RUNS=-1
while [ $# -gt 0 ]; do
  case "$1" in
  --seconds) SECONDS_EACH="$2"; shift 2 ;;
  --runs) RUNS="$2"; shift 2 ;;
  *) break ;;
  esac
done
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors model_config tokenizer llama2c guard_batch)
command -v clang++ >/dev/null || { echo "fuzz: needs clang (apt-get install clang)" >&2; exit 2; }
SAN="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -g -O1"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DKVG_LIBFUZZER=ON -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-fuzz -j2 --target "${TARGETS[@]/#/fuzz_}"
mkdir -p reports/fuzz
OUT=reports/fuzz/README.md
{
  echo "# Fuzzing the parsers (libFuzzer, clang, ASan + UBSan)"
  echo
  echo "\`scripts/fuzz.sh --seconds $SECONDS_EACH --runs $RUNS\` on $(date -u +%Y-%m-%d), $(nproc) cores, commit $(git rev-parse --short HEAD)."
  echo "Seeds: \`tests/fuzz/corpus/<target>/\`; every build also replays them with mutations (ctest \`fuzz_smoke_*\`)."
  echo
  echo "| target | executions | exec/s | crashes | seconds |"
  echo "| --- | --- | --- | --- | --- |"
} >"$OUT"
for t in "${TARGETS[@]}"; do
  work=build-fuzz/corpus/$t crashes=build-fuzz/crashes/$t
  mkdir -p "$work" "$crashes"
  log=build-fuzz/$t.log
  start=$(date +%s)
  set +e
  build-fuzz/bin/fuzz_$t "$work" "tests/fuzz/corpus/$t" -max_total_time="$SECONDS_EACH" -runs="$RUNS" \
    -artifact_prefix="$crashes/" -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{print $2}' | tail -1 || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | awk '{print $2}' | tail -1 || true)
  found=$(find "$crashes" -type f | wc -l)
  echo "| $t | ${runs:-?} | ${rate:-?} | $found | $(( $(date +%s) - start )) |" >>"$OUT"
  echo "fuzz $t: exit $rc, ${runs:-?} executions, $found crashing inputs (log $log)"
done
echo "wrote $OUT"
