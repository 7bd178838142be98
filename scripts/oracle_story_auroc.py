#!/usr/bin/env python3
"""An upper-bound check for admission-time selection on the few-shot test bed: AUROC, for a wrong
answer under static streaming_llm, of the share of the final problem's story that streaming_llm's
recent window leaves out (sinks ignored). The server cannot know where the story starts; this reads
it from the problem text, so it bounds what a signal of "facts evicted" could tell.

  kvguard problems --split test --count 600 --json $(problem opts) > problems.jsonl
  scripts/oracle_story_auroc.py --problems problems.jsonl --records STATIC/records.jsonl
"""
import argparse
import json

from signal_auroc import auroc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", required=True)
    ap.add_argument("--records", required=True)
    a = ap.parse_args()
    layout = {}
    for line in open(a.problems):
        p = json.loads(line)
        text = p["prompt"]
        question = text.rfind("Question:")
        story = text.rfind("\n\n", 0, question) + 2
        layout[p["id"]] = (len(text) + 1, story + 1, question + 1)  # byte tokens after BOS
    cells = {}
    for line in open(a.records):
        r = json.loads(line)
        if r["compressor"] != "streaming_llm" or not r["arm"].startswith("static"):
            continue
        n, story, question = layout[r["prompt_id"]]
        first_kept = n - int(n * (1 - r["requested_ratio"]))
        evicted = max(0, min(first_kept, question) - story) / (question - story)
        cells.setdefault(r["requested_ratio"], []).append((evicted, r["correct"]))
    print("| ratio | prompts | accuracy | mean story share evicted | AUROC |")
    print("| --- | --- | --- | --- | --- |")
    for ratio, rows in sorted(cells.items()):
        acc = sum(c for _, c in rows) / len(rows)
        mean = sum(e for e, _ in rows) / len(rows)
        auc = auroc([e for e, c in rows if not c], [e for e, c in rows if c])
        print(f"| {ratio:g} | {len(rows)} | {acc:.3f} | {mean:.2f} | {auc:.2f} |")


if __name__ == "__main__":
    main()
