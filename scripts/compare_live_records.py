#!/usr/bin/env python3
"""Two live evaluations of the same prompts, compared arm by arm and prompt by prompt.

    scripts/compare_live_records.py BEFORE.jsonl[.gz] AFTER.jsonl[.gz] [--arms guarded@0.875,...]

Each file is a `kvguard frontier` records.jsonl (one record per compressor, arm and prompt). For
every (compressor, arm) in both, prints AFTER - BEFORE for CFR and accuracy with a 95% paired
bootstrap interval over prompts (2,000 resamples), how many prompts changed, and the change in
integrated KV savings. Arms whose records are identical show +0.000 and 0 changed: the runs
differ only where the code under test acts.
"""
import argparse
import gzip
import json

from paired_bootstrap import mean_ci


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return {(r["compressor"], r["arm"], r["prompt_id"]): r for r in map(json.loads, f)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--arms", default="", help="comma-separated arms (default: every arm)")
    a = p.parse_args()
    before, after = load(a.before), load(a.after)
    wanted = set(filter(None, a.arms.split(",")))
    groups = sorted({k[:2] for k in after if k in before and (not wanted or k[1] in wanted)})
    print("| compressor | arm | prompts | CFR after - before | changed | accuracy after - before | "
          "changed | savings (integrated) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for comp, arm in groups:
        keys = [k for k in after if k[:2] == (comp, arm) and k in before]
        row = [comp, arm, str(len(keys))]
        for field in ("catastrophic", "correct"):
            d = [float(after[k][field]) - float(before[k][field]) for k in keys]
            m, lo, hi = mean_ci(d, seed=1)
            row += [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]", str(sum(1 for x in d if x))]
        s = sum(after[k]["savings_integrated"] - before[k]["savings_integrated"] for k in keys)
        row.append(f"{s / len(keys):+.3f}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
