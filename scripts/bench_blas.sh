#!/usr/bin/env bash
# Which libblas.so.3 libtorch runs on, measured side by side in one run: `kvguard bench` on a
# random-weight Qwen2.5-0.5B-shaped checkpoint (f32 and bf16) and on the bundled default model,
# once per BLAS library installed here, rounds interleaved (these machines are noisy; medians).
# Each process gets one library through LD_LIBRARY_PATH, and `kvguard bench` reports the one it
# really loaded. Writes reports/bench/blas.{json,csv,md,svg}.
#
#   scripts/bench_blas.sh [--rounds 2] [--threads 2] [--work DIR] [--out reports/bench] [--report-only]
# --report-only renders the report again from WORK's raw results.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=2 THREADS=2 WORK=/tmp/kvguard-bench-blas OUT=reports/bench REPORT_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
  --rounds) ROUNDS="$2"; shift 2 ;;
  --threads) THREADS="$2"; shift 2 ;;
  --work) WORK="$2"; shift 2 ;;
  --out) OUT="$2"; shift 2 ;;
  --report-only) REPORT_ONLY=1; shift ;;
  *) echo "bench_blas: unknown option $1" >&2; exit 2 ;;
  esac
done
KVG=build/bin/kvguard
[ -x "$KVG" ] || { echo "bench_blas: build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$WORK" "$OUT"

# Libraries: Debian puts each libblas.so.3 in its own directory.
declare -A LIBS=()
for d in /usr/lib/*-linux-gnu/blas /usr/lib/*-linux-gnu/blis-openmp /usr/lib/*-linux-gnu/blis-pthread \
  /usr/lib/*-linux-gnu/openblas-openmp /usr/lib/*-linux-gnu/openblas-pthread; do
  [ -f "$d/libblas.so.3" ] && LIBS[$(basename "$d")]="$d"
done
echo "bench_blas: libraries: ${!LIBS[*]}" >&2

if [ "$REPORT_ONLY" = 0 ]; then
for dt in f32 bf16; do
  [ -f "$WORK/qwen0.5b-$dt/model.safetensors" ] ||
    "$KVG" random-checkpoint --shape qwen2.5-0.5b --dtype "$dt" --out "$WORK/qwen0.5b-$dt" >&2
done

# (label, model, extra bench args)
CASES=(
  "qwen2.5-0.5b f32|$WORK/qwen0.5b-f32|--prompt-tokens 128 --decode-tokens 64 --warmup 8"
  "qwen2.5-0.5b bf16|$WORK/qwen0.5b-bf16|--prompt-tokens 128 --decode-tokens 64 --warmup 8"
  "arith-lm (default model) f32|models/arith-lm|--prompt-tokens 170 --decode-tokens 128 --warmup 8"
)
RAW="$WORK/raw.jsonl"
: >"$RAW"
total=$((ROUNDS * ${#CASES[@]} * ${#LIBS[@]}))
done_n=0
start=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r label model extra <<<"$c"
    for lib in "${!LIBS[@]}"; do
      # shellcheck disable=SC2086
      line=$(LD_LIBRARY_PATH="${LIBS[$lib]}" "$KVG" bench --model "$model" --threads "$THREADS" --batch 1 \
        $extra --json)
      echo "{\"round\":$r,\"case\":\"$label\",\"library\":\"$lib\",\"result\":$line}" >>"$RAW"
      done_n=$((done_n + 1))
      el=$(($(date +%s) - start))
      echo "bench_blas: $done_n/$total done, ${el}s elapsed, ETA $((el * (total - done_n) / done_n))s" \
        "($label, $lib)" >&2
    done
  done
done

# Correctness: batched decode that crashed the server with BLIS 0.9.0 (sgemm reads past its
# operands; valgrind shows the invalid reads). Exit code per library.
CRASH="$WORK/crash.jsonl"
: >"$CRASH"
for lib in "${!LIBS[@]}"; do
  set +e
  LD_LIBRARY_PATH="${LIBS[$lib]}" "$KVG" bench --model models/stories260K/stories260K.bin --threads 1 --batch 4 \
    --prompt-tokens 1 --decode-tokens 480 --warmup 0 --json >/dev/null 2>&1
  rc=$?
  set -e
  echo "{\"library\":\"$lib\",\"exit_code\":$rc}" >>"$CRASH"
  echo "bench_blas: batched-decode check on $lib: exit code $rc" >&2
done
fi
RAW="$WORK/raw.jsonl"
CRASH="$WORK/crash.jsonl"

python3 - "$RAW" "$OUT" "$THREADS" "$CRASH" <<'EOF'
import csv, json, statistics, sys
raw, out, threads = sys.argv[1], sys.argv[2], sys.argv[3]
crash = {c["library"]: c["exit_code"] for c in map(json.loads, open(sys.argv[4]))}
rows = [json.loads(l) for l in open(raw)]
NAMES = {"blas": "reference BLAS", "blis-openmp": "BLIS (OpenMP)", "blis-pthread": "BLIS (pthreads)",
         "openblas-openmp": "OpenBLAS (OpenMP)", "openblas-pthread": "OpenBLAS (pthreads)"}
groups = {}
for r in rows:
    groups.setdefault((r["case"], r["library"]), []).append(r["result"])
table = []
for (case, lib), rs in groups.items():
    pre = [x["prefill_tokens_per_s"] for x in rs]
    dec = [x["decode_tokens_per_s"] for x in rs]
    # The library directory names the sgemm that ran (LD_LIBRARY_PATH puts it first); bf16 uses oneDNN.
    path = rs[0]["blas"].split("(")[-1].rstrip(")")
    matmul = f"sgemm: {NAMES.get(lib, lib)}" if rs[0]["dtype"] == "f32" else rs[0].get("matmul", "")
    table.append({"case": case, "library": lib, "blas_loaded": f"{NAMES.get(lib, lib)} ({path})",
                  "dtype": rs[0]["dtype"], "matmul": matmul,
                  "prompt_tokens": rs[0]["prompt_tokens"], "runs": len(rs),
                  "prefill_tok_s_median": statistics.median(pre), "prefill_tok_s_min": min(pre),
                  "prefill_tok_s_max": max(pre), "decode_tok_s_median": statistics.median(dec),
                  "decode_tok_s_min": min(dec), "decode_tok_s_max": max(dec),
                  "ttft_ms_median": 1000 * rs[0]["prompt_tokens"] / statistics.median(pre)})
order = {"blas": 0, "blis-openmp": 1, "blis-pthread": 2, "openblas-openmp": 3, "openblas-pthread": 4}
table.sort(key=lambda t: (t["case"], order.get(t["library"], 9)))
ref = {t["case"]: t for t in table if t["library"] == "blas"}
for t in table:
    base = ref.get(t["case"])
    t["prefill_vs_reference"] = t["prefill_tok_s_median"] / base["prefill_tok_s_median"] if base else None
    t["decode_vs_reference"] = t["decode_tok_s_median"] / base["decode_tok_s_median"] if base else None
for t in table:
    t["batched_decode_exit_code"] = crash.get(t["library"])
json.dump({"threads": int(threads), "rows": table, "raw": rows, "batched_decode_check": crash},
          open(f"{out}/blas.json", "w"), indent=1)
with open(f"{out}/blas.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(table[0].keys()))
    w.writeheader()
    w.writerows(table)
md = [f"# libblas.so.3 under libtorch: side by side in one run ({threads} threads, batch 1)", "",
      "`scripts/bench_blas.sh`: `kvguard bench` per library via LD_LIBRARY_PATH, rounds interleaved, medians "
      "(min-max). `blas` is Debian's reference BLAS (what libtorch used before `install_deps.sh` selected OpenBLAS "
      "(OpenMP), which it installs now). "
      "TTFT = prompt tokens / prefill rate.", "",
      "| model, dtype | libblas.so.3 | GEMM path | prefill tok/s | decode tok/s | TTFT ms | prefill vs reference | decode vs reference |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for t in table:
    md.append(f"| {t['case']} | {t['library']} | {t['matmul']} | {t['prefill_tok_s_median']:.1f} ({t['prefill_tok_s_min']:.1f}-"
              f"{t['prefill_tok_s_max']:.1f}) | {t['decode_tok_s_median']:.1f} ({t['decode_tok_s_min']:.1f}-"
              f"{t['decode_tok_s_max']:.1f}) | {t['ttft_ms_median']:.1f} | {t['prefill_vs_reference']:.2f}x | "
              f"{t['decode_vs_reference']:.2f}x |")
md += ["", "Batched-decode check (`kvguard bench --model models/stories260K/stories260K.bin --threads 1 --batch 4 "
       "--prompt-tokens 1 --decode-tokens 480 --warmup 0`; exit code 139 = segmentation fault):", ""]
md += [f"- {lib}: exit code {rc}" + (" (crash)" if rc else "") for lib, rc in sorted(crash.items())]
md += ["", "BLIS is fastest on tiny-model prefill and 0.5B f32 decode but reads past its operands in sgemm "
       "(valgrind: invalid reads inside BLIS, none in kvguard) and crashed batched decode; OpenBLAS (OpenMP) is the "
       "fastest library that passes, and the one `scripts/install_deps.sh` selects.", "",
       "Libraries loaded:", ""]
md += sorted({f"- {t['library']}: {t['blas_loaded']}" for t in table})
open(f"{out}/blas.md", "w").write("\n".join(md) + "\n")
# A grouped bar chart of decode and prefill speed-up over the reference BLAS (log-free, plain SVG).
bars = [t for t in table if t["library"] != "blas"]
W, H, pad = max(720, 130 * len(bars) + 120), 320, 60
SHORT_LIB = {"blis-openmp": "BLIS", "blis-pthread": "BLIS pth", "openblas-openmp": "OpenBLAS",
             "openblas-pthread": "OpenBLAS pth"}
def short_case(c):
    return c.replace("qwen2.5-0.5b", "0.5B").replace(" (default model)", "")
mx = max(max(t["prefill_vs_reference"], t["decode_vs_reference"]) for t in bars) * 1.1
bw = (W - 2 * pad) / (len(bars) * 2.5)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 90}" font-family="sans-serif" font-size="11">',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">Speed-up over the reference BLAS ({threads} threads)</text>',
       f'<line x1="{pad}" y1="{H}" x2="{W-pad}" y2="{H}" stroke="black"/>']
y1 = H - (H - 40) * 1 / mx
svg.append(f'<line x1="{pad}" y1="{y1:.1f}" x2="{W-pad}" y2="{y1:.1f}" stroke="#999" stroke-dasharray="4"/>'
           f'<text x="{pad-5}" y="{y1+4:.1f}" text-anchor="end">1x</text>')
for i, t in enumerate(bars):
    x = pad + i * 2.5 * bw + bw * 0.25
    for j, (key, color) in enumerate((("prefill_vs_reference", "#4878d0"), ("decode_vs_reference", "#ee854a"))):
        v = t[key]
        h = (H - 40) * v / mx
        svg.append(f'<rect x="{x + j*bw:.1f}" y="{H-h:.1f}" width="{bw*0.95:.1f}" height="{h:.1f}" fill="{color}"/>'
                   f'<text x="{x + j*bw + bw/2:.1f}" y="{H-h-3:.1f}" text-anchor="middle">{v:.1f}x</text>')
    svg.append(f'<text x="{x+bw:.1f}" y="{H+14}" text-anchor="middle">{SHORT_LIB.get(t["library"], t["library"])}</text>'
               f'<text x="{x+bw:.1f}" y="{H+28}" text-anchor="middle">{short_case(t["case"])}</text>')
svg.append(f'<rect x="{pad}" y="{H+50}" width="10" height="10" fill="#4878d0"/><text x="{pad+14}" y="{H+59}">prefill</text>'
           f'<rect x="{pad+80}" y="{H+50}" width="10" height="10" fill="#ee854a"/><text x="{pad+94}" y="{H+59}">decode</text>')
svg.append("</svg>")
open(f"{out}/blas.svg", "w").write("\n".join(svg))
print("\n".join(md))
EOF
echo "written to $OUT/blas.{json,csv,md,svg}" >&2
