#!/usr/bin/env python3
"""How well an admission-time score separates wrong answers from right ones, per compressor and
ratio: AUROC of the score for a wrong answer among the static records of that (compressor,
ratio). 0.5 = no information; the per-layer columns read `per_layer` of `kvguard prefill-risk`.

  scripts/signal_auroc.py --scores prefill_risk.jsonl[.gz] --records STATIC/records.jsonl
"""
import argparse
import gzip
import json


def read_prefill_risk(path):
    """(prompt, compressor, ratio) -> the `kvguard prefill-risk` line (plain or .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return {(r["prompt_id"], r["compressor"], round(r["ratio"], 6)): r
                for r in map(json.loads, f)}


def auroc(pos, neg):
    """P(a positive's score > a negative's), ties counting half; nan when a side is empty."""
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scores", required=True)
    ap.add_argument("--records", required=True, help="static records (kvguard frontier)")
    a = ap.parse_args()
    scores = {k: [r["evicted_question_attention"]] + r["per_layer"]
              for k, r in read_prefill_risk(a.scores).items()}
    cells = {}
    for line in open(a.records):
        r = json.loads(line)
        key = (r["prompt_id"], r["compressor"], round(r["requested_ratio"], 6))
        if not r["arm"].startswith("static") or key not in scores:
            continue
        cells.setdefault(key[1:], []).append((scores[key], r["correct"]))
    layers = max(len(v[0][0]) for v in cells.values()) - 1
    print("| compressor | ratio | prompts | accuracy | AUROC (mean) | " +
          " | ".join(f"layer {i}" for i in range(layers)) + " |")
    print("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in range(layers)) + " |")
    for (compressor, ratio), rows in sorted(cells.items()):
        acc = sum(c for _, c in rows) / len(rows)
        aucs = [auroc([s[i] for s, c in rows if not c], [s[i] for s, c in rows if c])
                for i in range(layers + 1)]
        print(f"| {compressor} | {ratio:g} | {len(rows)} | {acc:.3f} | " +
              " | ".join(f"{x:.2f}" for x in aucs) + " |")


if __name__ == "__main__":
    main()
