#!/usr/bin/env python3
"""Decode-time loop breakers as policies against the static hull (issue 11, "cheap baselines the
guard must also beat"): a repetition penalty (HF's rule over prompt + generated tokens) and
no-repeat n-gram blocking (over the generated tokens), each on top of a static compressor.

A baseline's sweep (`kvguard sweep ... --repetition-penalty R` or `--no-repeat-ngram N`) gives
static records per prompt (`kvguard frontier --traces B --prompts val|test`). This script renames
their arms from static@RATIO to LABEL@RATIO so that `kvguard frontier --traces HULL --records ...`
scores them against the plain static hull of the same prompts, like a guard policy. With --pick it
instead reads a validation frontier report of several settings and prints each setting's mean CFR
gap (the tuning step; the test records are then scored once, for the chosen settings).

  kvguard frontier --traces B --prompts all --out B_ALL      # the baseline's records, every prompt
  scripts/baseline_records.py --label ng16 --records B_ALL/records.jsonl \
      --like HULL_VAL/records.jsonl --out DIR/ng16_val.jsonl  # on the hull's validation prompts
  scripts/baseline_records.py --pick DIR/val_frontier.json
  scripts/baseline_records.py --versus LIVE/records.jsonl.gz --records DIR/ng16_test.jsonl,...
"""
import argparse
import json
import sys

from compare_live_records import load
from paired_bootstrap import mean_ci


def rename(label, path, out, like=None, from_arm="static"):
    # The prompts of the hull's records (`like`): the split is drawn from each sweep's own traces,
    # so a baseline sweep's val/test sets can differ from the hull's by a prompt or two.
    keep = None
    if like:
        keep = {json.loads(line)["prompt_id"] for line in open(like)}
    n = 0
    with open(path) as f, open(out, "w") as w:
        for line in f:
            r = json.loads(line)
            if not r["arm"].startswith(from_arm + "@"):
                continue  # "none": the hull has its own
            if keep is not None and r["prompt_id"] not in keep:
                continue
            r["arm"] = label + "@" + r["arm"][len(from_arm) + 1:]
            w.write(json.dumps(r, sort_keys=True) + "\n")
            n += 1
    print(f"{n} records -> {out}")


def pick(path):
    """Per baseline setting: its mean CFR gap over the arms inside the static range."""
    gaps = {}
    for r in json.load(open(path))["guard"]:
        label = r["arm"].rsplit("@", 1)[0]
        if r["cfr_gap"][0] is not None:
            gaps.setdefault(label, []).append(r["cfr_gap"][0])
    for label, g in sorted(gaps.items()):
        print(f"{label:10s} mean CFR gap {sum(g) / len(g):+.3f} over {len(g)} arms inside the static range")


def versus(guard_path, baseline_paths, guard_arm):
    """Guard minus baseline, prompt by prompt, at the same compressor and requested ratio."""
    guard = {(comp, arm.partition("@")[2], prompt): r
             for (comp, arm, prompt), r in load(guard_path).items()
             if arm.partition("@")[0] == guard_arm}
    print("| compressor | ratio | baseline | prompts | guard CFR | baseline CFR | CFR guard - baseline [95% CI] "
          "| guard accuracy | baseline accuracy | accuracy guard - baseline [95% CI] |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in baseline_paths:
        pairs = {}
        for (comp, arm, prompt), b in load(path).items():
            label, _, ratio = arm.partition("@")
            g = guard.get((comp, ratio, prompt))
            if ratio and label != "static" and g is not None:
                pairs.setdefault((comp, ratio, label), []).append((g, b))
        for (comp, ratio, label), ps in sorted(pairs.items()):
            cells = []
            for key in ("catastrophic", "correct"):
                gm = sum(g[key] for g, _ in ps) / len(ps)
                bm = sum(b[key] for _, b in ps) / len(ps)
                d, lo, hi = mean_ci([float(g[key]) - float(b[key]) for g, b in ps], seed=0)
                cells.append(f"{gm:.3f} | {bm:.3f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            print(f"| {comp} | {ratio} | {label} | {len(ps)} | {cells[0]} | {cells[1]} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label")
    p.add_argument("--records")
    p.add_argument("--out")
    p.add_argument("--like", help="keep the prompts of these records (the hull's val or test set)")
    p.add_argument("--from-arm", default="static",
                   help="the arm to rename (guarded: a live evaluation of the baseline's sweep)")
    p.add_argument("--pick")
    p.add_argument("--versus", help="a live guard evaluation's records (.jsonl or .gz): compare "
                   "its --guard-arm with the baseline records given as --records, prompt by prompt")
    p.add_argument("--guard-arm", default="guarded")
    a = p.parse_args()
    if a.pick:
        pick(a.pick)
    elif a.versus and a.records:
        versus(a.versus, a.records.split(","), a.guard_arm)
    elif a.label and a.records and a.out:
        rename(a.label, a.records, a.out, a.like, a.from_arm)
    else:
        p.error("give --label, --records and --out, or --pick")


if __name__ == "__main__":
    sys.exit(main())
