#!/usr/bin/env python3
"""The guard-timing table: CFR, accuracy and throughput of each exchange timing.

    scripts/guard_timing_table.py DIR TIMING [TIMING ...]

DIR/TIMING/ holds what kvguard-bench-capacity wrote for one timing (capacity.json,
requests.csv) and guard_cpu_s.txt. CFR differences are paired by prompt (the
arms share the held-out prompts) with a 95% bootstrap interval over prompts;
the first timing is the reference the others are compared with. Writes
DIR/timing.{md,json,csv,svg}.
"""
import csv
import json
import os
import sys

from paired_bootstrap import mean_ci


def outcomes(path, arm, column):
    with open(path) as f:
        return {r["prompt_id"]: int(r[column]) for r in csv.DictReader(f)
                if r["arm"] == arm and r["status"] == "OK"}


def paired(a, b):
    """mean(a - b) over shared prompts and its 95% paired bootstrap interval."""
    ids = sorted(set(a) & set(b))
    return mean_ci([a[i] - b[i] for i in ids], seed=2026)


def arm_of(rows, guarded):
    return next(r for r in rows if r["guarded"] == guarded)


def load(root, timing):
    d = os.path.join(root, timing)
    with open(os.path.join(d, "capacity.json")) as f:
        arms = json.load(f)
    static, guarded = arm_of(arms, False), arm_of(arms, True)
    requests = os.path.join(d, "requests.csv")
    with open(os.path.join(d, "guard_cpu_s.txt")) as f:
        guard_cpu = float(f.read())
    return {
        "timing": timing,
        "static": static,
        "guarded": guarded,
        "cfr_static": outcomes(requests, static["arm"], "catastrophic"),
        "cfr_guarded": outcomes(requests, guarded["arm"], "catastrophic"),
        "guard_cpu_s": guard_cpu,
    }


def svg(rows, path):
    """CFR of each timing against its guarded/static tokens/s, static CFR as a line."""
    w, h, m = 560, 360, 60
    xs = [r["tokens_vs_static"] for r in rows]
    x0, x1 = min(xs + [0.5]) - 0.05, max(xs + [1.0]) + 0.05
    ys = [r["cfr_guarded"] for r in rows] + [r["cfr_static"] for r in rows]
    y1 = max(ys) * 1.25
    px = lambda x: m + (x - x0) / (x1 - x0) * (w - 2 * m)
    py = lambda y: h - m - y / y1 * (h - 2 * m)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">guarded / static tokens/s</text>',
           f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" '
           'text-anchor="middle">CFR (guarded, 95% CI)</text>']
    for t in range(5):
        x = x0 + (x1 - x0) * t / 4
        y = y1 * t / 4
        out.append(f'<text x="{px(x)}" y="{h - m + 15}" text-anchor="middle">{x:.2f}</text>')
        out.append(f'<text x="{m - 5}" y="{py(y) + 4}" text-anchor="end">{y:.2f}</text>')
    static = sum(r["cfr_static"] for r in rows) / len(rows)
    out.append(f'<line x1="{m}" y1="{py(static)}" x2="{w - m}" y2="{py(static)}" '
               'stroke="gray" stroke-dasharray="4"/>')
    out.append(f'<text x="{w - m}" y="{py(static) - 4}" text-anchor="end" fill="gray">'
               f'static 0.875</text>')
    for r in rows:
        x, y = px(r["tokens_vs_static"]), py(r["cfr_guarded"])
        lo, hi = py(r["cfr_guarded_lo"]), py(r["cfr_guarded_hi"])
        out.append(f'<line x1="{x}" y1="{lo}" x2="{x}" y2="{hi}" stroke="steelblue"/>')
        out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="steelblue"/>')
        out.append(f'<text x="{x + 6}" y="{y - 6}">{r["timing"]}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    root, timings = sys.argv[1], sys.argv[2:]
    runs = [load(root, t) for t in timings]
    ref = runs[0]
    rows = []
    for run in runs:
        g, s = run["guarded"], run["static"]
        n = len(run["cfr_guarded"])
        gain = paired(run["cfr_static"], run["cfr_guarded"])
        late = paired(run["cfr_guarded"], ref["cfr_guarded"])
        zero = {k: 0 for k in run["cfr_guarded"]}
        cfr = paired(run["cfr_guarded"], zero)
        rows.append({
            "timing": run["timing"], "prompts": n,
            "cfr_static": s["cfr"], "cfr_guarded": g["cfr"],
            "cfr_guarded_lo": cfr[1], "cfr_guarded_hi": cfr[2],
            "static_minus_guarded": gain[0], "static_minus_guarded_lo": gain[1],
            "static_minus_guarded_hi": gain[2],
            "guarded_minus_reference": late[0], "guarded_minus_reference_lo": late[1],
            "guarded_minus_reference_hi": late[2],
            "accuracy_static": s["accuracy"], "accuracy_guarded": g["accuracy"],
            "tokens_vs_static": g["tokens_per_s"] / s["tokens_per_s"],
            "decode_tokens_vs_static": g["decode_tokens_per_s"] / s["decode_tokens_per_s"],
            "kv_saved_static": s["kv_saved"], "kv_saved_guarded": g["kv_saved"],
            "guard_share": g["guard_share"], "guard_cpu_s": run["guard_cpu_s"],
        })
    with open(os.path.join(root, "timing.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(root, "timing.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ci = lambda r, k: f'{r[k]:+.3f} [{r[k + "_lo"]:+.3f}, {r[k + "_hi"]:+.3f}]'
    md = ["| timing | CFR static | CFR guarded | static - guarded | guarded - "
          f"{ref['timing']} | accuracy guarded | tokens/s vs static | decode vs static | "
          "KV saved guarded | guard share of step | guard CPU s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f'| {r["timing"]} | {r["cfr_static"]:.3f} | {r["cfr_guarded"]:.3f} | '
                  f'{ci(r, "static_minus_guarded")} | {ci(r, "guarded_minus_reference")} | '
                  f'{r["accuracy_guarded"]:.3f} | {r["tokens_vs_static"]:.2f}x | '
                  f'{r["decode_tokens_vs_static"]:.2f}x | {r["kv_saved_guarded"]:.2f} | '
                  f'{100 * r["guard_share"]:.1f}% | {r["guard_cpu_s"]:.2f} |')
    with open(os.path.join(root, "timing.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    svg(rows, os.path.join(root, "timing.svg"))
    print("\n".join(md))
    print(f"written to {root}/timing.{{md,json,csv,svg}}")


if __name__ == "__main__":
    main()
