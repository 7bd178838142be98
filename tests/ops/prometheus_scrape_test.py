#!/usr/bin/env python3
"""ops_prometheus_scrape: a real Prometheus on loopback scrapes a real
kvguard-server (tiny-qwen2) and kvguard-guard every second while kvguard-client
drives guarded and unguarded generations (streaming_llm at ratio 0.5 and no
compression; tiny-qwen2's random text never terminates, so non_termination
catastrophes are counted) plus a burst beyond --max_queue (queue_full
rejections). Then every PromQL expression of deploy/grafana/dashboards/*.json
and every alert of deploy/prometheus/alerts.yml (its measure, without the
threshold) is queried through /api/v1/query and must return a non-empty result
of finite numbers; the alert rules, loaded by that Prometheus, must all
evaluate with health "ok". Needs kvguard-server, kvguard-guard, kvguard-client
and prometheus. Whole run bounded to ~150 s. Prints one line."""
import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

BUDGET_S = 150
PROMPTS = ["Once upon a time", "The capital of France is", "def fib(n):", "Question: what is 12 * 7? Answer:",
           "In a small village", "List three colors:"]


def client(bin_dir, server, i, guarded, compressor, max_new_tokens, extra=()):
    args = [os.path.join(bin_dir, "kvguard-client"), f"--server={server}", f"--prompt={PROMPTS[i % len(PROMPTS)]}",
            f"--max_new_tokens={max_new_tokens}", "--temperature=0.8", f"--seed={i + 1}",
            f"--guard={'true' if guarded else 'false'}", "--deadline_ms=60000"]
    if compressor:
        args += [f"--compressor={compressor}", "--ratio=0.5"]
    args += list(extra)
    r = subprocess.run(args, capture_output=True, text=True, timeout=90)
    return r.returncode, (r.stdout + r.stderr)[-400:]


def prom_query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{time.time():.3f}"})
    try:
        body = json.loads(opslib.http_get(url, timeout=10))
    except Exception as e:  # HTTP 400 carries the parse error
        detail = getattr(e, "read", lambda: b"")().decode(errors="replace") if hasattr(e, "read") else str(e)
        return None, f"query error: {detail or e}"
    if body.get("status") != "success":
        return None, f"status {body.get('status')}: {body.get('error')}"
    return body["data"], ""


def finite_values(data):
    """The sample values of a query result, or None when the result is empty."""
    rt, res = data["resultType"], data["result"]
    if rt == "scalar":
        return [float(res[1])]
    if rt == "vector":
        return [float(s["value"][1]) for s in res] or None
    if rt == "matrix":
        vals = [float(v[1]) for s in res for v in s["values"]]
        return vals or None
    return None


def check_expr(port, expr):
    data, err = prom_query(port, expr)
    if data is None:
        return False, err
    vals = finite_values(data)
    if not vals:
        return False, "empty result"
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        return False, f"non-finite values {bad[:3]} in {len(vals)} samples"
    return True, f"{len(vals)} series"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    t_start = time.time()

    def remaining():
        return BUDGET_S - (time.time() - t_start)

    def body():
        opslib.require_binaries(a.bin_dir, ["kvguard-server", "kvguard-guard", "kvguard-client"])
        prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.path.exists(prometheus):
            raise opslib.OpsError("prometheus not found (Debian package prometheus; scripts/install_deps.sh)")
        dash = opslib.dashboard_exprs(a.root)
        alerts = opslib.alert_rules(a.root)
        with opslib.tmpdir("kvg-prom-") as tmp:
            guard, guard_addr, guard_mport = opslib.start_guard(a.bin_dir, a.root, tmp)
            # A small admission limit so a burst gets queue_full rejections.
            server, server_addr, server_mport = opslib.start_server(
                a.bin_dir, a.model, tmp, guard_addr, extra=["--max_concurrent=3", "--max_queue=2"])
            pport = opslib.free_port()
            cfg = os.path.join(tmp, "prometheus.yml")
            with open(cfg, "w") as f:
                f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - {os.path.join(a.root, 'deploy', 'prometheus', 'alerts.yml')}
scrape_configs:
  - job_name: kvguard-server
    static_configs: [{{targets: ["127.0.0.1:{server_mport}"]}}]
  - job_name: kvguard-guard
    static_configs: [{{targets: ["127.0.0.1:{guard_mport}"]}}]
""")
            prom = opslib.spawn([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(tmp, 'tsdb')}",
                                 f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn",
                                 "--storage.tsdb.retention.time=1h"], os.path.join(tmp, "prometheus.log"))
            opslib.wait_http(prom, f"http://127.0.0.1:{pport}/-/ready", "prometheus", timeout=60)
            time.sleep(2)  # first scrapes see every series at its starting value

            # Traffic: rounds of guarded / unguarded, compressed / uncompressed generations.
            mixes = [(True, "streaming_llm"), (False, "streaming_llm"), (True, ""), (False, "")]
            errors, n_ok = [], 0
            t_traffic = time.time()
            i = 0
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                while time.time() - t_traffic < 8 or i < 24:
                    if remaining() < 70:
                        break
                    futs = []
                    for _ in range(2):
                        guarded, comp = mixes[i % len(mixes)]
                        futs.append(pool.submit(client, a.bin_dir, server_addr, i, guarded, comp, 48))
                        i += 1
                    for fu in futs:
                        rc, out = fu.result()
                        if rc == 0:
                            n_ok += 1
                        else:
                            errors.append(out)
            if errors:
                raise opslib.OpsError(f"{len(errors)} of {i} client runs failed; last:\n{errors[-1]}")
            # Burst past --max_concurrent + --max_queue: some get RESOURCE_EXHAUSTED.
            with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
                burst = list(pool.map(lambda k: client(a.bin_dir, server_addr, 100 + k, k % 2 == 0, "streaming_llm", 256,
                                                       ["--ignore_eos"]), range(10)))
            rejected = sum(1 for rc, out in burst if rc != 0 and "RESOURCE_EXHAUSTED" in out)
            other = [out for rc, out in burst if rc != 0 and "RESOURCE_EXHAUSTED" not in out]
            if other:
                raise opslib.OpsError(f"burst client failed unexpectedly:\n{other[0]}")
            if rejected == 0:
                raise opslib.OpsError("the burst of 10 requests (max_concurrent 3, max_queue 2) got no rejection")
            # More traffic after the burst so every counter moves inside the scraped window.
            for k in range(4):
                guarded, comp = mixes[k]
                rc, out = client(a.bin_dir, server_addr, 200 + k, guarded, comp, 48)
                if rc != 0:
                    raise opslib.OpsError(f"client failed after the burst:\n{out}")
            time.sleep(3)  # a few more scrapes and rule evaluations

            targets = json.loads(opslib.http_get(f"http://127.0.0.1:{pport}/api/v1/targets"))["data"]["activeTargets"]
            down = [f"{t['labels'].get('job')}: {t.get('lastError')}" for t in targets if t["health"] != "up"]
            if down or len(targets) != 2:
                raise opslib.OpsError(f"scrape targets not up: {down or targets}")

            queries = [(f"dashboard {where}", opslib.substitute_grafana(e)) for where, e in dash]
            queries += [(f"alert {name}" + (f" (operand {k + 1})" if len(measures) > 1 else ""), measure)
                        for name, _, measures in alerts for k, measure in enumerate(measures)]
            pending = list(queries)
            failures = {}
            retry_until = time.time() + min(25, max(0, remaining() - 5))  # counters that just appeared need scrapes
            first = True
            while pending and (first or time.time() < retry_until):
                first = False
                still = []
                for where, expr in pending:
                    ok, detail = check_expr(pport, expr)
                    if not ok:
                        failures[(where, expr)] = detail
                        still.append((where, expr))
                    else:
                        failures.pop((where, expr), None)
                pending = still
                if pending and time.time() < retry_until:
                    time.sleep(2)
            if pending:
                lines = [f"  {w}: {e}\n    -> {failures[(w, e)]}" for w, e in pending]
                raise opslib.OpsError(f"{len(pending)} of {len(queries)} expressions returned no defined result\n" +
                                      "\n".join(lines))

            # Sanity of a few values: traffic really was seen.
            checks = {
                "sum(increase(kvguard_generated_tokens_total[2m])) > 0": "generated tokens",
                "sum(increase(kvguard_guard_steps_total[2m])) > 0": "guard steps",
                'sum(increase(kvguard_generations_total{compressor="streaming_llm",guarded="true"}[2m])) > 0':
                    "guarded streaming_llm generations",
                'sum(kvguard_catastrophes_total{kind="non_termination"}) > 0': "non_termination catastrophes",
                'sum(kvguard_requests_rejected_total{reason="queue_full"}) > 0': "queue_full rejections",
                "sum(increase(kvguard_guard_round_trip_seconds_count[2m])) > 0": "guard round trips",
            }
            for expr, what in checks.items():
                data, err = prom_query(pport, expr)
                if data is None or not finite_values(data):
                    raise opslib.OpsError(f"no {what} seen by Prometheus ({expr}) {err}")

            rules = json.loads(opslib.http_get(f"http://127.0.0.1:{pport}/api/v1/rules"))["data"]["groups"]
            n_rules, unhealthy = 0, []
            for g in rules:
                for r in g["rules"]:
                    n_rules += 1
                    if r.get("health") != "ok":
                        unhealthy.append(f"{r['name']}: {r.get('health')} {r.get('lastError', '')}")
            if n_rules != len(alerts) or unhealthy:
                raise opslib.OpsError(f"alert rules: {n_rules} loaded of {len(alerts)}, unhealthy: {unhealthy}")
            firing = sorted({r["name"] for g in rules for r in g["rules"] if r.get("state") == "firing"})
            return (f"{len(dash)} dashboard + {len(alerts)} alert expressions defined over {n_ok + len(burst) + 4} "
                    f"requests ({rejected} rejected) in {time.time() - t_start:.0f}s; rules healthy"
                    f"{'; firing: ' + ','.join(firing) if firing else ''}")

    return opslib.main_wrapper("ops_prometheus_scrape", body)


if __name__ == "__main__":
    sys.exit(main())
