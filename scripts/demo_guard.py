#!/usr/bin/env python3
"""The guard at work, for scripts/demo.sh: held-out problems through a running kvguard-server,
each once with static compression and once guarded at the same ratio. Prints the problems where
static compression fails and the guard changes the outcome (with the guard's mode timeline),
then a static-vs-guarded table over every problem tried.

  demo_guard.py --bin build/bin --server ADDR --model models/arith-lm --compressor snapkv --ratio 0.875
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys


def problems(args):
    opts = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "problem_opts.py"), args.model],
                          check=True, capture_output=True, text=True).stdout.split()
    out = subprocess.run([os.path.join(args.bin, "kvguard"), "problems", "--split", "test", "--start",
                          str(args.start), "--count", str(args.count), "--json", *opts],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def generate(args, prompt, guard):
    cmd = [os.path.join(args.bin, "kvguard-client"), f"--server={args.server}", f"--prompt={prompt}",
           f"--max_new_tokens={args.max_new_tokens}", f"--compressor={args.compressor}", f"--ratio={args.ratio}",
           f"--guard={'true' if guard else 'false'}", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    return json.loads(r.stdout)


def outcome(run, gold):
    if run["looping"]:
        return "LOOP"
    if run["non_termination"]:
        return "NON-TERMINATION"
    return "correct" if run.get("answer") == gold else f"wrong ({run.get('answer')})"


def saved_share(run):
    total = run["kv_bytes"] + run["kv_bytes_saved"]
    return run["kv_bytes_saved"] / total if total else 0.0


def timeline(run, args):
    steps = " -> ".join(f"{t['mode'].upper()}@{t['step']}" for t in run.get("mode_timeline", [])) or "(no steps)"
    if run.get("mode_steps", {}).get("restart"):
        # The guard restarted the request within its probe: the client saw only the new run.
        return f"probe at {args.ratio}: hazard high -> RESTART at a lower ratio -> {steps}"
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--compressor", default="snapkv")
    ap.add_argument("--ratio", type=float, default=0.875)
    ap.add_argument("--start", type=int, default=5000, help="first test problem (past the sweep's prompts)")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    items = problems(args)
    print(f"== {len(items)} held-out problems, {args.compressor} at ratio {args.ratio}: static vs guarded ==",
          flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        static = list(pool.map(lambda p: generate(args, p["prompt"], False), items))
        guarded = list(pool.map(lambda p: generate(args, p["prompt"], True), items))

    shown = 0
    for p, s, g in zip(items, static, guarded):
        so, go = outcome(s, p["answer"]), outcome(g, p["answer"])
        if so == "correct" or so == go or shown >= args.show:
            continue
        shown += 1
        question = p["prompt"][p["question_begin_char"]:].splitlines()[0]
        story = p["prompt"][:p["question_begin_char"]].strip().splitlines()[-1]
        print(f"\n---- {p['id']} (gold answer {p['answer']}) ----")
        print(f"story:    {story}\n          {question}")
        print(f"static:   {so:16s} saved {saved_share(s):.0%} of the KV | {s['text'][:110]!r}")
        print(f"guarded:  {go:16s} saved {saved_share(g):.0%} of the KV | {g['text'][:110]!r}")
        print(f"          guard modes: {timeline(g, args)}")
    if shown == 0:
        print("\n(in this sample the guard changed no failing outcome)")

    def row(name, runs):
        n = len(runs)
        cfr = sum(r["looping"] or r["non_termination"] for r in runs) / n
        acc = sum(r.get("answer") == p["answer"] for r, p in zip(runs, items)) / n
        saved = sum(saved_share(r) for r in runs) / n
        return f"| {name:8s} | {cfr:5.3f} | {acc:8.3f} | {saved:8.1%} |"

    print(f"\n| {args.compressor}@{args.ratio} ({len(items)} problems) | CFR | accuracy | KV saved |")
    print("| --- | --- | --- | --- |")
    print(row("static", static))
    print(row("guarded", guarded))


if __name__ == "__main__":
    main()
