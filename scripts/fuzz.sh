#!/usr/bin/env bash
# libFuzzer runs of the parsers the service exposes (tests/fuzz): builds the
# fuzz targets with clang, AddressSanitizer and UndefinedBehaviorSanitizer in
# build-fuzz/, runs each from its seed corpus for a time or a number of
# executions, and writes reports/fuzz/latest.md (executions, crashes, time).
#   scripts/fuzz.sh [--seconds S] [--runs N] [TARGET...]
#   targets: safetensors model_config tokenizer llama2c guard_batch (default: all)
# generate_request (the server's request validation) needs libtorch's headers, which clang 14
# cannot compile here: run its gcc ASan+UBSan mutation driver instead (after scripts/sanitize.sh asan):
#   build-asan/bin/fuzz_replay_generate_request tests/fuzz/corpus/generate_request \
#     --mutations 10000000 --seconds 2700
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
# One row per target in reports/fuzz/runs.tsv (a target's newest run replaces its
# row, so targets can be run separately); reports/fuzz/latest.md is drawn from it.
ROWS=reports/fuzz/runs.tsv
touch "$ROWS"
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
  grep -v "^$t	" "$ROWS" >"$ROWS.tmp" || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${runs:-?}" "${rate:-?}" "$found" \
    "$(( $(date +%s) - start ))" "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD)" >>"$ROWS.tmp"
  sort "$ROWS.tmp" >"$ROWS" && rm -f "$ROWS.tmp"
  echo "fuzz $t: exit $rc, ${runs:-?} executions, $found crashing inputs (log $log)"
done
OUT=reports/fuzz/latest.md
{
  echo "# Newest libFuzzer run per target (scripts/fuzz.sh, $(nproc) cores)"
  echo
  echo "| target | executions | exec/s | crashes | seconds | date | commit |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$ROWS"
} >"$OUT"
echo "wrote $OUT"
