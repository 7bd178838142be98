#!/usr/bin/env python3
"""Renders scripts/bench_engine.sh's raw JSON lines as reports/bench/engine.{json,csv,md,svg}.

Medians over rounds per (case, system); ratios are kvguard over its peer in the same run.
The batch-1 roofline is the machine's measured read bandwidth over the bytes one decode step
reads (all weights; the KV cache of ~200 positions is under 0.3% of them).
usage: engine_report.py RAW.jsonl OUT_DIR
"""
import csv
import json
import statistics
import sys
from collections import defaultdict

raw_path, out = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(raw_path) if line.strip()]
values = defaultdict(lambda: defaultdict(list))
weight_bytes = None
for r in rows:
    res = r["result"]
    if res is None:
        continue
    if r["case"] == "weights":
        weight_bytes = res["bf16_bytes"]
        continue
    for k, v in res.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[(r["case"], r["system"])][k].append(v)

def med(case, system, key):
    xs = values.get((case, system), {}).get(key, [])
    return statistics.median(xs) if xs else None


def spread(case, system, key="decode_tokens_per_s"):
    """[min, max] over rounds: single rounds on this machine vary by 10-30%."""
    xs = values.get((case, system), {}).get(key, [])
    return [min(xs), max(xs)] if xs else None

bw = med("bandwidth", "bw", "gb_per_s")
cases = []
for case, peer in [("bf16 b1", "llama.cpp"), ("f32 b1", "llama.cpp"), ("int8 b1", "llama.cpp"),
                   ("bf16 b8", "llama.cpp"),
                   ("bf16 b32", "llama.cpp"), ("stories260K b1", "run.c")]:
    ours = med(case, "kvguard", "decode_tokens_per_s")
    theirs = med(case, peer, "decode_tokens_per_s")
    if ours is None and theirs is None:
        continue
    item = {"case": case, "peer": peer, "kvguard_decode_tokens_per_s": ours,
            "peer_decode_tokens_per_s": theirs,
            "kvguard_decode_range": spread(case, "kvguard"),
            "peer_decode_range": spread(case, peer),
            "decode_ratio": ours / theirs if ours and theirs else None,
            "kvguard_prefill_tokens_per_s": med(case, "kvguard", "prefill_tokens_per_s"),
            "peer_prefill_tokens_per_s": med(case, peer, "prefill_tokens_per_s"),
            "rounds": len(values.get((case, "kvguard"), {}).get("decode_tokens_per_s", [])),
            # The same build with its decode steps on libtorch ops (--cpu-decode libtorch).
            "kvguard_libtorch_decode_tokens_per_s": med(case, "kvguard-libtorch",
                                                        "decode_tokens_per_s")}
    if item["kvguard_prefill_tokens_per_s"] and item["peer_prefill_tokens_per_s"]:
        item["prefill_ratio"] = item["kvguard_prefill_tokens_per_s"] / item["peer_prefill_tokens_per_s"]
    if case.endswith("b1") and weight_bytes and bw and not case.startswith("stories"):
        step_bytes = weight_bytes * {"int8": 0.5, "f32": 2.0}.get(case.split()[0], 1.0)
        roof = bw * 1e9 / step_bytes
        item["roofline_tokens_per_s"] = roof
        item["kvguard_roofline_fraction"] = ours / roof if ours else None
        item["peer_roofline_fraction"] = theirs / roof if theirs else None
    for key in ("logit_rel_rms_error", "top1_agreement"):
        v = med(case, "kvguard", key)
        if v is not None and case.startswith("int8"):
            item["kvguard_" + key] = v
    cases.append(item)

summary = {"bandwidth_gb_per_s": bw, "weight_bytes_bf16": weight_bytes, "cases": cases}
json.dump(summary, open(f"{out}/engine.json", "w"), indent=2)
with open(f"{out}/engine.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["round", "case", "system", "decode_tokens_per_s", "prefill_tokens_per_s"])
    for r in rows:
        res = r["result"] or {}
        w.writerow([r["round"], r["case"], r["system"], res.get("decode_tokens_per_s", ""),
                    res.get("prefill_tokens_per_s", "")])

def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def rng(r):
    return "–" if r is None else f"{fmt(r[0])}–{fmt(r[1])}"

lines = ["| case | peer | kvguard decode tok/s | peer decode tok/s | decode ratio | "
         "roofline tok/s (kvguard / peer share) | kvguard prefill tok/s | peer prefill tok/s | "
         "decode range over rounds (kvguard; peer) |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for c in cases:
    roof = "–"
    if c.get("roofline_tokens_per_s"):
        roof = (f"{c['roofline_tokens_per_s']:.1f} ({100 * c['kvguard_roofline_fraction']:.0f}% / "
                f"{100 * c['peer_roofline_fraction']:.0f}%)")
    lines.append(f"| {c['case']} | {c['peer']} | {fmt(c['kvguard_decode_tokens_per_s'])} | "
                 f"{fmt(c['peer_decode_tokens_per_s'])} | **{fmt(c['decode_ratio'], 2)}x** | {roof} | "
                 f"{fmt(c['kvguard_prefill_tokens_per_s'])} | {fmt(c['peer_prefill_tokens_per_s'])} | "
                 f"{rng(c['kvguard_decode_range'])}; {rng(c['peer_decode_range'])} |")
md = [f"Read bandwidth (2 threads, `bw`, median of rounds): {fmt(bw)} GB/s. "
      f"bf16 weights: {weight_bytes / 1e9 if weight_bytes else 0:.3f} GB.", ""] + lines
loops = [c for c in cases if c["kvguard_libtorch_decode_tokens_per_s"]]
if loops:
    md += ["", "kvguard's decode step as plain loops (`llama_decode_cpu.cc`, the default) against the "
               "same build on libtorch ops (`--cpu-decode libtorch`):", "",
           "| case | loops tok/s | libtorch ops tok/s | speed-up |", "| --- | --- | --- | --- |"]
    for c in loops:
        a, b = c["kvguard_decode_tokens_per_s"], c["kvguard_libtorch_decode_tokens_per_s"]
        md.append(f"| {c['case']} | {fmt(a)} | {fmt(b)} | {a / b:.2f}x |")
for c in cases:
    if "kvguard_logit_rel_rms_error" in c:
        md += ["", f"int8 weights against bf16 on the same greedy trajectory: relative RMS logit error "
                   f"{100 * c['kvguard_logit_rel_rms_error']:.2f}%, top-1 agreement "
                   f"{100 * c['kvguard_top1_agreement']:.1f}%."]
open(f"{out}/engine_table.md", "w").write("\n".join(md) + "\n")

# One bar pair per case, decode tokens/s relative to the peer (peer = 1).
W, left, top, bar = 640, 150, 30, 18
H = top + 10 + len(cases) * (bar * 2 + 10) + 30
scale_max = max([c["decode_ratio"] or 0 for c in cases] + [1.2]) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<text x="{W/2}" y="18" text-anchor="middle">decode tokens/s, kvguard relative to its peer (peer = 1.0)</text>']
plot_w = W - left - 30
x1 = left + plot_w / scale_max
svg.append(f'<line x1="{x1:.1f}" y1="{top}" x2="{x1:.1f}" y2="{H - 30}" stroke="#888" stroke-dasharray="4"/>')
for i, c in enumerate(cases):
    y = top + 10 + i * (bar * 2 + 10)
    ratio = c["decode_ratio"] or 0
    svg.append(f'<text x="{left - 6}" y="{y + bar}" text-anchor="end">{c["case"]} vs {c["peer"]}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{plot_w * ratio / scale_max:.1f}" height="{bar}" fill="#3a7"/>')
    svg.append(f'<text x="{left + plot_w * ratio / scale_max + 4:.1f}" y="{y + bar - 4}">{ratio:.2f}x</text>')
    if c.get("kvguard_roofline_fraction"):
        svg.append(f'<rect x="{left}" y="{y + bar + 2}" width="{plot_w * c["kvguard_roofline_fraction"] / scale_max:.1f}" '
                   f'height="{bar / 2}" fill="#aaa"/>')
        svg.append(f'<text x="{left + plot_w * c["kvguard_roofline_fraction"] / scale_max + 4:.1f}" y="{y + bar * 1.5 + 2}" '
                   f'font-size="10">{100 * c["kvguard_roofline_fraction"]:.0f}% of roofline</text>')
svg.append(f'<text x="{x1:.1f}" y="{H - 14}" text-anchor="middle">1.0 = peer</text></svg>')
open(f"{out}/engine.svg", "w").write("\n".join(svg) + "\n")
print("\n".join(md))
