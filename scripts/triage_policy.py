#!/usr/bin/env python3
"""Admission-time ratio choice per request, simulated exactly from a sweep's traces (issue 11,
"admission-time risk"). Two signals:

--signal confidence: a request starts at the LOW ratio and decodes PROBE tokens. If the model is
  unsure of its own answer there (mean chosen-token logprob below TAU), it is restarted at the
  HIGH ratio: an answer the model is unsure of at the low ratio is likely lost anyway, so it gives
  its memory back. The probe's KV is counted: integrated savings are blended over the probe steps
  at the low ratio's savings.
--signal evicted: a request is prefilled at the HIGH ratio. If what that compression evicted had
  received much attention from the prompt (the trace's prefill_evicted_attention at or above
  TAU), it is prefilled again at the LOW ratio before its first token.
--signal question: as evicted, but the score is the attention of the prompt's final question
  that the HIGH ratio's prefill evicts (`kvguard prefill-risk`, passed as --scores FILE).

Unlike a loop-hazard guard, both aim at the prompts whose answer the ratio decides, which is what
a policy needs to lie above the static accuracy hull (reports/research/README.md). Per prompt the
outcome is exactly the LOW trace's or the HIGH trace's.

The policy is tuned on the validation prompts and applied once to the test prompts. This script
writes the policy's records; the paired-bootstrap gaps against the hull come from
`kvguard frontier`:

  build/bin/kvguard frontier --traces T --prompts val  --out V     # static records, validation
  build/bin/kvguard frontier --traces T --prompts test --out S     # static records, test
  scripts/triage_policy.py --signal evicted --traces T --val V/records.jsonl \
      --test S/records.jsonl --out DIR
  build/bin/kvguard frontier --traces T --records DIR/evicted_records.jsonl --out DIR
"""
import argparse
import array
import json
import os
import sys

from signal_auroc import read_prefill_risk


def load_evicted_attention(traces_dir):
    """(prompt, compressor, ratio) -> the trace's prefill_evicted_attention."""
    scores = {}
    for entry in sorted(os.listdir(traces_dir)):
        if not entry.endswith(".jsonl"):
            continue
        for line in open(os.path.join(traces_dir, entry)):
            t = json.loads(line)
            scores[(t["prompt_id"], t["compressor"], round(t["ratio"], 6))] = t.get(
                "prefill_evicted_attention", 0.0)
    return scores


def load_question_scores(path):
    """(prompt, compressor, ratio) -> evicted question attention (`kvguard prefill-risk`)."""
    return {k: r["evicted_question_attention"] for k, r in read_prefill_risk(path).items()}


def load_probe_scores(traces_dir, probe):
    """(prompt, compressor, ratio) -> mean chosen-token logprob over the first `probe` tokens."""
    manifest = json.load(open(os.path.join(traces_dir, "manifest.json")))
    names = manifest["feature_names"]
    nf = len(names)
    col = names.index("chosen_logprob")
    scores = {}
    for entry in sorted(os.listdir(traces_dir)):
        if not entry.endswith(".jsonl"):
            continue
        base = entry[:-len(".jsonl")]
        values = array.array("f")
        with open(os.path.join(traces_dir, base + ".f32"), "rb") as f:
            values.frombytes(f.read())
        for line in open(os.path.join(traces_dir, entry)):
            t = json.loads(line)
            n = min(probe, t["tokens"])
            lp = [values[(t["row_offset"] + i) * nf + col] for i in range(n)]
            scores[(t["prompt_id"], t["compressor"], round(t["ratio"], 6))] = (
                sum(lp) / n if n > 0 else 0.0)
    return scores


def read_records(path):
    return [json.loads(line) for line in open(path)]


def static_table(records):
    """compressor -> ratio -> prompt -> record; plus the uncompressed records."""
    table, none = {}, {}
    for r in records:
        if r["arm"] == "none":
            none[r["prompt_id"]] = r
            continue
        table.setdefault(r["compressor"], {}).setdefault(round(r["requested_ratio"], 6), {})[
            r["prompt_id"]] = r
    return table, none


def hull_value(points, x, lower):
    """Lower (CFR) or upper (accuracy) convex hull of (savings, value) points, at savings x."""
    best = None
    for x0, y0 in points:
        for x1, y1 in points:
            if not (x0 <= x <= x1):
                continue
            y = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            if best is None or (y < best if lower else y > best):
                best = y
    return best


def policy_records(table, scores, compressor, low, high, tau, probe, signal):
    out = []
    lows, highs = table[compressor][low], table[compressor][high]
    for p, lo in lows.items():
        hi = highs.get(p)
        if hi is None:
            continue
        if signal == "confidence":  # start low; unsure -> high
            to_high = scores[(p, compressor, low)] < tau
            r = dict(hi if to_high else lo)
            if to_high:  # the probe held the low ratio's KV for `probe` steps
                steps = max(1, hi["tokens"])
                r["savings_integrated"] = (probe * lo["savings_integrated"] + steps *
                                           hi["savings_integrated"]) / (probe + steps)
            r["arm"] = f"triage{probe}@{low:g}<{high:g}"
            r["mode_steps"] = {"restarted" if to_high else "kept": 1}
        else:  # start high; much attention evicted -> low, before the first token
            to_low = scores[(p, compressor, high)] >= tau
            r = dict(lo if to_low else hi)
            r["arm"] = f"{signal}@{high:g}>{low:g}"
            r["mode_steps"] = {"restarted" if to_low else "kept": 1}
        r["requested_ratio"] = high
        out.append(r)
    return out


def summary(records):
    n = len(records)
    return (sum(r["savings_integrated"] for r in records) / n,
            sum(r["catastrophic"] for r in records) / n,
            sum(r["correct"] for r in records) / n)


def tune(table, none, scores, compressor, probe, min_savings, signal):
    """Largest validation accuracy gap above the hull, with CFR not above the hull, among policies
    saving at least `min_savings`."""
    statics = [summary(list(by_prompt.values())) for by_prompt in table[compressor].values()]
    statics.append(summary(list(none.values())))
    cfr_pts = [(s, c) for s, c, _ in statics]
    acc_pts = [(s, a) for s, _, a in statics]
    ratios = sorted(table[compressor])
    best = None
    for low in ratios:
        for high in ratios:
            if high <= low:
                continue
            scored = low if signal == "confidence" else high
            values = sorted(scores[(p, compressor, scored)] for p in table[compressor][scored])
            taus = sorted(set(values[int(q * (len(values) - 1))]
                              for q in [0.05 * i for i in range(1, 20)]))
            for tau in taus:
                recs = policy_records(table, scores, compressor, low, high, tau, probe, signal)
                sav, cfr, acc = summary(recs)
                if sav < min_savings:
                    continue
                cfr_gap = hull_value(cfr_pts, sav, True) - cfr
                acc_gap = acc - hull_value(acc_pts, sav, False)
                if cfr_gap < 0:
                    continue
                if best is None or acc_gap > best["val_accuracy_gap"]:
                    best = {"signal": signal, "compressor": compressor, "low_ratio": low, "high_ratio": high,
                            "threshold": tau, "probe_tokens": probe, "val_savings": sav,
                            "val_cfr": cfr, "val_accuracy": acc, "val_cfr_gap": cfr_gap,
                            "val_accuracy_gap": acc_gap}
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True)
    ap.add_argument("--val", required=True, help="static records of the validation prompts")
    ap.add_argument("--test", required=True, help="static records of the test prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--signal", choices=["confidence", "evicted", "question"], default="confidence")
    ap.add_argument("--scores", help="question: the JSONL of `kvguard prefill-risk`")
    ap.add_argument("--probe", type=int, default=16, help="confidence: tokens decoded at the low ratio")
    ap.add_argument("--min-savings", type=float, default=0.75,
                    help="tune only policies saving at least this much (the high-savings end)")
    a = ap.parse_args()
    if a.signal == "confidence":
        scores = load_probe_scores(a.traces, a.probe)
    elif a.signal == "question":
        if not a.scores:
            ap.error("--signal question needs --scores")
        scores = load_question_scores(a.scores)
    else:
        scores = load_evicted_attention(a.traces)
    val_table, val_none = static_table(read_records(a.val))
    test_table, _ = static_table(read_records(a.test))
    os.makedirs(a.out, exist_ok=True)
    tuned, records = [], []
    for compressor in sorted(val_table):
        best = tune(val_table, val_none, scores, compressor, a.probe, a.min_savings, a.signal)
        if best is None:
            print(f"{compressor}: no policy at or below the validation CFR hull", file=sys.stderr)
            continue
        tuned.append(best)
        records += policy_records(test_table, scores, compressor, best["low_ratio"],
                                  best["high_ratio"], best["threshold"], a.probe, a.signal)
        print(f"{compressor}: {a.signal} {best['low_ratio']:g} / {best['high_ratio']:g} at "
              f"{best['threshold']:.3f}; validation savings {best['val_savings']:.3f}, CFR gap "
              f"{best['val_cfr_gap']:+.3f}, accuracy gap {best['val_accuracy_gap']:+.3f}",
              file=sys.stderr)
    with open(os.path.join(a.out, f"{a.signal}_policies.json"), "w") as f:
        json.dump(tuned, f, indent=2)
    with open(os.path.join(a.out, f"{a.signal}_records.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
