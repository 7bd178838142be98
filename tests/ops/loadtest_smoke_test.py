#!/usr/bin/env python3
"""ops_loadtest_smoke: a short kvguard-loadtest campaign (closed and open loop,
guard off and on, streaming_llm at ratio 0.5) against a real kvguard-server
(tiny-qwen2) with a real kvguard-guard on loopback. The report must hold every
metric of summary.json for every run with sane values (all requests OK, TTFT /
ITL / TPOT / E2E percentiles, throughput, goodput, CFR with its 95% interval,
KV savings), plus summary.md, requests.csv and the SVG plots; the server's own
request counter must agree with the report. Needs kvguard-server, kvguard-guard
and kvguard-loadtest. Prints one line."""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

REQUESTS = 6
DIST_KEYS = ("mean", "p50", "p90", "p99", "n")
FIELDS = {
    "name": str, "mode": str, "concurrency": int, "rate": (int, float), "compressor": str, "ratio": (int, float),
    "guard": str, "requests": int, "ok": int, "errors": dict, "duration_s": (int, float),
    "request_throughput": (int, float), "token_throughput": (int, float), "goodput": (int, float),
    "ttft_ms": dict, "itl_ms": dict, "tpot_ms": dict, "e2e_ms": dict, "cfr": (int, float), "cfr_ci95": list,
    "accuracy": (int, float), "wrong_answer_rate": (int, float), "kv_saved_fraction": (int, float),
    "fail_safe_events": int,
}


def metric_value(text, name, labels):
    rx = re.compile(r"^" + re.escape(name) + r"\{([^}]*)\}\s+(\S+)$", re.M)
    for m in rx.finditer(text):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def check_run(r, problems):
    name = r.get("name", "?")
    for k, t in FIELDS.items():
        if k not in r:
            problems.append(f"{name}: field {k} missing")
        elif not isinstance(r[k], t) or isinstance(r[k], bool):
            problems.append(f"{name}: field {k} has type {type(r[k]).__name__}")
    if problems:
        return
    for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        d = r[k]
        missing = [x for x in DIST_KEYS if x not in d]
        if missing:
            problems.append(f"{name}: {k} lacks {missing}")
            continue
        if not all(isinstance(d[x], (int, float)) and math.isfinite(d[x]) and d[x] >= 0 for x in DIST_KEYS):
            problems.append(f"{name}: {k} has invalid values {d}")
        elif d["n"] <= 0 or not d["p50"] <= d["p90"] <= d["p99"]:
            problems.append(f"{name}: {k} empty or unordered {d}")
    if r["requests"] != REQUESTS or r["ok"] != REQUESTS or r["errors"]:
        problems.append(f"{name}: {r['ok']}/{r['requests']} OK, errors {r['errors']}")
    if r["ttft_ms"]["n"] != r["ok"] or r["e2e_ms"]["n"] != r["ok"]:
        problems.append(f"{name}: TTFT/E2E sample counts differ from ok requests")
    for k in ("duration_s", "request_throughput", "token_throughput"):
        if not r[k] > 0:
            problems.append(f"{name}: {k} = {r[k]}")
    if not 0 <= r["goodput"] <= r["request_throughput"] + 1e-9:
        problems.append(f"{name}: goodput {r['goodput']} outside [0, request_throughput]")
    lo, hi = r["cfr_ci95"]
    eps = 1e-9  # the Wilson bounds are computed in floating point (hi can be 1 - 1e-16 at CFR 1)
    if not (-eps <= lo <= r["cfr"] + eps and r["cfr"] <= hi + eps and hi <= 1 + eps):
        problems.append(f"{name}: CFR {r['cfr']} not inside its interval [{lo}, {hi}]")
    for k in ("accuracy", "wrong_answer_rate"):
        if not 0 <= r[k] <= 1:
            problems.append(f"{name}: {k} = {r[k]}")
    # Unguarded runs compress at 0.5. A guarded run may give every saving back: on this random
    # model the guard sends requests to RECOVERY, which rebuilds the whole cache, and 24 tokens
    # end before eviction resumes.
    lowest_saved = 0 if r["guard"] == "true" else 1e-9
    if not lowest_saved <= r["kv_saved_fraction"] < 1:
        problems.append(f"{name}: kv_saved_fraction {r['kv_saved_fraction']} (compressed at 0.5, expected in (0,1))")
    if r["fail_safe_events"] < 0:
        problems.append(f"{name}: fail_safe_events {r['fail_safe_events']}")
    if r["compressor"] != "streaming_llm" or abs(r["ratio"] - 0.5) > 1e-9:
        problems.append(f"{name}: compressor/ratio not taken from the campaign")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()

    def body():
        opslib.require_binaries(a.bin_dir, ["kvguard-server", "kvguard-guard", "kvguard-loadtest"])
        with opslib.tmpdir("kvg-load-") as tmp:
            _, guard_addr, _ = opslib.start_guard(a.bin_dir, a.root, tmp)
            # A KV pool, so the report's server-side table has something to say.
            server, server_addr, server_mport = opslib.start_server(a.bin_dir, a.model, tmp, guard_addr,
                                                                    extra=["--kv_cache_bytes=8388608"])
            campaign = {
                "name": "ops smoke",
                "target": server_addr,
                "base": {"requests": REQUESTS, "max_seconds": 30, "max_new_tokens": 24, "concurrency": 2, "rate": 20,
                         "compressor": "streaming_llm", "ratio": 0.5, "temperature": 0.8},
                "sweep": {"mode": ["closed", "open"], "guard": ["false", "true"]},
                "slo": {"ttft_ms": 5000, "tpot_ms": 1000, "e2e_ms": 30000},
                "prompts": {"source": "problems", "count": REQUESTS, "split": "test"},
            }
            cpath = os.path.join(tmp, "campaign.json")
            with open(cpath, "w") as f:
                json.dump(campaign, f)
            out = os.path.join(tmp, "report")
            r = subprocess.run([os.path.join(a.bin_dir, "kvguard-loadtest"), f"--campaign={cpath}",
                                f"--target={server_addr}", f"--out={out}", f"--server_metrics_port={server_mport}"],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise opslib.OpsError(f"kvguard-loadtest exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
            with open(os.path.join(out, "summary.json")) as f:
                runs = json.load(f)
            problems = []
            if not isinstance(runs, list) or len(runs) != 4:
                raise opslib.OpsError(f"summary.json holds {len(runs) if isinstance(runs, list) else runs!r} runs, expected 4")
            for run in runs:
                check_run(run, problems)
                srv = run.get("server") or {}
                if not srv or srv.get("kv_pool_bytes", 0) < 8_000_000 or srv.get("admitted") != REQUESTS \
                        or srv.get("preemptions", -1) < 0 or srv.get("queue_time_mean_s", -1) < 0:
                    problems.append(f"run {run['name']}: the server-side stats from /metrics are missing or "
                                    f"wrong: {srv}")
            if sorted((x["mode"], x["guard"]) for x in runs) != sorted(
                    (m, g) for m in ("closed", "open") for g in ("false", "true")):
                problems.append("runs do not cover closed/open x guard false/true")
            for name in ("summary.md", "requests.csv", "latency_e2e.svg", "latency_itl_p99.svg", "throughput.svg",
                         "cfr_under_load.svg"):
                p = os.path.join(out, name)
                if not os.path.exists(p) or os.path.getsize(p) == 0:
                    problems.append(f"report file {name} missing or empty")
            with open(os.path.join(out, "requests.csv")) as f:
                rows = list(csv.DictReader(f))
            if len(rows) != 4 * REQUESTS or any(row["status"] != "OK" or None in row for row in rows):
                problems.append(f"requests.csv: {len(rows)} rows, statuses {sorted({row['status'] for row in rows})} "
                                "(a run name with a comma, unquoted, shifts the columns)")
            metrics = opslib.http_get(f"http://127.0.0.1:{server_mport}/metrics")
            served = metric_value(metrics, "kvguard_requests_total", {"status": "OK"})
            guarded = metric_value(metrics, "kvguard_generations_total", {"compressor": "streaming_llm", "guarded": "true"})
            if served != 4 * REQUESTS:
                problems.append(f"server counted {served:.0f} OK requests, the report {4 * REQUESTS}")
            if guarded != 2 * REQUESTS:
                problems.append(f"server counted {guarded:.0f} guarded generations, expected {2 * REQUESTS}")
            if problems:
                raise opslib.OpsError(f"{len(problems)} problem(s) in the load report\n" + "\n".join(problems))
            worst = max(x["e2e_ms"]["p99"] for x in runs)
            cfrs = ", ".join("%.2f" % x["cfr"] for x in runs)
            return (f"4 runs x {REQUESTS} requests, every summary.json metric present and sane "
                    f"(CFR {cfrs}; E2E p99 <= {worst:.0f} ms)")

    return opslib.main_wrapper("ops_loadtest_smoke", body)


if __name__ == "__main__":
    sys.exit(main())
