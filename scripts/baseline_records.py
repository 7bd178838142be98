#!/usr/bin/env python3
"""Decode-time loop breakers as policies against the static hull (issue 11, "cheap baselines the
guard must also beat"): a repetition penalty (HF's rule over prompt + generated tokens) and
no-repeat n-gram blocking (over the generated tokens), each on top of a static compressor.

A baseline's sweep (`kvguard sweep ... --repetition-penalty R` or `--no-repeat-ngram N`) gives
static records per prompt (`kvguard frontier --traces B --prompts val|test`). This script renames
their arms from static@RATIO to LABEL@RATIO so that `kvguard frontier --traces HULL --records ...`
scores them against the plain static hull of the same prompts, like a guard policy. With --pick it
instead reads several baselines' validation frontier reports and names, per compressor and ratio,
the setting with the largest CFR gap (the tuning step: the test records are scored once).

  scripts/baseline_records.py --label ng16 --records B/val/records.jsonl --out DIR/ng16_val.jsonl
  scripts/baseline_records.py --pick DIR/val_frontier.json
"""
import argparse
import json
import sys


def rename(label, path, out):
    n = 0
    with open(path) as f, open(out, "w") as w:
        for line in f:
            r = json.loads(line)
            if not r["arm"].startswith("static@"):
                continue  # "none": the hull has its own
            r["arm"] = label + "@" + r["arm"][len("static@"):]
            w.write(json.dumps(r, sort_keys=True) + "\n")
            n += 1
    print(f"{n} records -> {out}")


def pick(path):
    guard = json.load(open(path))["guard"]
    best = {}
    for r in guard:
        label, ratio = r["arm"].rsplit("@", 1)
        key = (r["compressor"], ratio, label.rstrip("0123456789."))
        gap = r["cfr_gap"][0]  # point estimate; [1], [2] are the interval
        if key not in best or gap > best[key][1]:
            best[key] = (r["arm"], gap)
    for (comp, ratio, kind), (arm, gap) in sorted(best.items()):
        print(f"{comp:14s} {ratio:7s} {kind:5s} best on validation: {arm} (CFR gap {gap:+.3f})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label")
    p.add_argument("--records")
    p.add_argument("--out")
    p.add_argument("--pick")
    a = p.parse_args()
    if a.pick:
        pick(a.pick)
    elif a.label and a.records and a.out:
        rename(a.label, a.records, a.out)
    else:
        p.error("give --label, --records and --out, or --pick")


if __name__ == "__main__":
    sys.exit(main())
