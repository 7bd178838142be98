#!/usr/bin/env python3
"""Soak: the real stack under steady load for a long time, the guard killed and
restarted on a schedule. Writes reports/soak/ (README.md, summary.json,
samples.csv, rss.svg) and exits non-zero when a goal is missed.

  scripts/soak.py [--minutes 60] [--streams 16] [--kill-every-s 300]
                  [--model models/arith-lm] [--out reports/soak] [--bin build/bin]

kvguard-guard + kvguard-server (KV pool, guarded compressed requests,
temperature 0.7) on loopback; kvguard-loadtest keeps --streams closed-loop
streams going for --minutes. Every --kill-every-s the guard gets SIGKILL and
a new one starts on the same port 2 s later (the server reconnects; steps in
between run fail-safe). Every 5 s: the RSS of both processes and the server's
KV and queue gauges. Goals (the issue's): server RSS flat within 5% (median
of the last tenth of the run against the median of the second tenth; the
first tenth is warm-up), KV bytes and pool use back to 0 when the load stops,
0 failed requests. Fail-safe events are counted and reported.
"""
import argparse
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(text, name, labels=""):
    """Sum of the samples of `name` whose labels contain `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name and labels in (m.group(2) or ""):
            total += float(m.group(3))
            found = True
    return total if found else None


def wait_listening(proc, log_path, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        with open(log_path) as f:
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", f.read())
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit(f"soak: {log_path} shows no 'listening on' line")


def start(args, log_path):
    log = open(log_path, "a")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def svg_plot(path, samples, minutes):
    """RSS of server and guard over time (MiB), guard restarts as ticks."""
    w, h, pad = 900, 360, 50
    t_max = max(minutes * 60, max((s["t_s"] for s in samples), default=1))
    ys = [s["server_rss_kib"] / 1024 for s in samples] + [s["guard_rss_kib"] / 1024 for s in samples]
    y_max = max(ys + [1]) * 1.1

    def xy(t, v):
        return pad + (w - 2 * pad) * t / t_max, h - pad - (h - 2 * pad) * v / y_max

    def line(key, color):
        pts = " ".join("%.1f,%.1f" % xy(s["t_s"], s[key] / 1024) for s in samples)
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>'

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle">RSS over the soak (MiB); grey ticks: guard killed</text>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>']
    for i in range(5):
        v = y_max * i / 4
        _, y = xy(0, v)
        out.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    for i in range(7):
        t = t_max * i / 6
        x, _ = xy(t, 0)
        out.append(f'<text x="{x:.1f}" y="{h - pad + 16}" text-anchor="middle">{t / 60:.0f} min</text>')
    for s in samples:
        if s["event"] == "guard_killed":
            x, _ = xy(s["t_s"], 0)
            out.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{h - pad}" stroke="#ccc"/>')
    out += [line("server_rss_kib", "#1f77b4"), line("guard_rss_kib", "#d62728"),
            f'<text x="{w - pad}" y="{pad + 12}" text-anchor="end" fill="#1f77b4">kvguard-server</text>',
            f'<text x="{w - pad}" y="{pad + 28}" text-anchor="end" fill="#d62728">kvguard-guard</text>', "</svg>"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--kill-every-s", type=float, default=300)
    ap.add_argument("--model", default="models/arith-lm")
    ap.add_argument("--kv-cache-bytes", type=int, default=0,
                    help="server KV pool (0 = the bytes of 16 uncompressed 512-token sequences)")
    ap.add_argument("--out", default="reports/soak")
    ap.add_argument("--bin", default="build/bin")
    a = ap.parse_args()
    os.chdir(ROOT)
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="kvg-soak-")
    guard_port, guard_metrics, server_metrics = free_port(), free_port(), free_port()
    guard_args = [f"{a.bin}/kvguard-guard", "--listen", f"127.0.0.1:{guard_port}",
                  "--metrics_listen", f"127.0.0.1:{guard_metrics}"]
    guard = start(guard_args, f"{tmp}/guard.log")
    wait_listening(guard, f"{tmp}/guard.log")
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    per_token = 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * 4
    pool = a.kv_cache_bytes or 16 * 512 * per_token
    server = start([f"{a.bin}/kvguard-server", "--model", a.model, "--listen", "127.0.0.1:0",
                    "--metrics_listen", f"127.0.0.1:{server_metrics}", "--guard", f"127.0.0.1:{guard_port}",
                    "--max_concurrent", str(a.streams), "--kv_cache_bytes", str(pool),
                    "--max_queue", str(4 * a.streams)], f"{tmp}/server.log")
    target = wait_listening(server, f"{tmp}/server.log")
    campaign = {
        "name": "soak", "target": target,
        "base": {"mode": "closed", "concurrency": a.streams, "requests": 1000000,
                 "max_seconds": a.minutes * 60, "drain_seconds": 120, "max_new_tokens": 96, "temperature": 0.7,
                 "compressor": "snapkv", "ratio": 0.75, "guard": "true"},
        "slo": {"ttft_ms": 10000, "tpot_ms": 1000, "e2e_ms": 120000},
        "prompts": {"source": "problems", "count": 64, "split": "test",
                    "options": {"seed": 7, "min_steps": 2, "max_steps": 4, "num_padding": 2}}}
    with open(f"{tmp}/campaign.json", "w") as f:
        json.dump(campaign, f)
    load = subprocess.Popen([f"{a.bin}/kvguard-loadtest", "--campaign", f"{tmp}/campaign.json",
                             "--out", f"{a.out}/loadtest", "--server_metrics_port", str(server_metrics)],
                            stdout=open(f"{tmp}/loadtest.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    samples, restarts = [], 0
    start_t = time.time()
    next_kill = start_t + a.kill_every_s
    total = a.minutes * 60
    try:
        while load.poll() is None:
            now = time.time()
            event = ""
            if now >= next_kill and now - start_t < total - 5:
                guard.send_signal(signal.SIGKILL)
                guard.wait()
                time.sleep(2)
                guard = start(guard_args, f"{tmp}/guard.log")
                restarts += 1
                next_kill += a.kill_every_s
                event = "guard_killed"
            m = metrics(server_metrics)
            samples.append({"t_s": round(now - start_t, 1), "server_rss_kib": rss_kib(server.pid),
                            "guard_rss_kib": rss_kib(guard.pid), "kv_bytes": metric(m, "kvguard_kv_bytes") or 0,
                            "pool_used_bytes": metric(m, "kvguard_kv_pool_used_bytes") or 0,
                            "active": metric(m, "kvguard_active_sequences") or 0,
                            "guard_connected": metric(m, "kvguard_guard_connected") or 0, "event": event})
            el = now - start_t
            print(f"\rsoak {el / 60:5.1f}/{a.minutes:.0f} min ({100 * el / total:4.1f}%), ETA {max(0, total - el) / 60:4.1f} min,"
                  f" server RSS {samples[-1]['server_rss_kib'] / 1024:6.1f} MiB, guard restarts {restarts}   ",
                  end="", file=sys.stderr, flush=True)
            time.sleep(5)
        print(file=sys.stderr)
        time.sleep(3)  # the last streams' completions
        m = metrics(server_metrics)
        end_state = {"kv_bytes": metric(m, "kvguard_kv_bytes"),
                     "pool_used_bytes": metric(m, "kvguard_kv_pool_used_bytes"),
                     "active_sequences": metric(m, "kvguard_active_sequences"),
                     "preempted_sequences": metric(m, "kvguard_preempted_sequences"),
                     "fail_safe_total": {r: metric(m, "kvguard_guard_fail_safe_total", f'reason="{r}"')
                                         for r in ("deadline", "disconnected")},
                     "admission_restarts": metric(m, "kvguard_guard_restarts_total"),
                     "preemptions": metric(m, "kvguard_preemptions_total"),
                     "requests_by_status": {s: metric(m, "kvguard_requests_total", f'status="{s}"')
                                            for s in ("ok", "error", "cancelled")}}
    finally:
        for p in (load, server, guard):
            if p.poll() is None:
                p.terminate()
        for p in (load, server, guard):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    if load.returncode != 0:
        sys.exit(f"soak: kvguard-loadtest failed, log {tmp}/loadtest.log")
    with open(f"{a.out}/loadtest/summary.json") as f:
        run = json.load(f)[0]
    report(a, samples, end_state, run, restarts, pool, tmp)


def report(a, samples, end_state, run, restarts, pool, tmp):
    with open(f"{a.out}/samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0].keys()))
        w.writeheader()
        w.writerows(samples)
    svg_plot(f"{a.out}/rss.svg", samples, a.minutes)
    n = len(samples)
    base = statistics.median(s["server_rss_kib"] for s in samples[n // 10: max(n // 10 + 1, n // 5)])
    last = statistics.median(s["server_rss_kib"] for s in samples[-max(1, n // 10):])
    drift = last / base - 1
    # The guard restarts every few minutes: compare each incarnation's last sample.
    guard_ends, prev = [], None
    for s in samples:
        if s["event"] == "guard_killed" and prev:
            guard_ends.append(prev["guard_rss_kib"])
        prev = s
    failed = run.get("requests", 0) - run.get("ok", run.get("requests", 0))
    reconnects = sum(1 for p, s in zip(samples, samples[1:]) if p["guard_connected"] == 0 and s["guard_connected"] == 1)
    goals = {
        "server_rss_flat_within_5pct": abs(drift) <= 0.05,
        "kv_bytes_zero_at_end": end_state["kv_bytes"] == 0 and end_state["pool_used_bytes"] in (0, None),
        "zero_failed_requests": failed == 0 and not run.get("errors"),
    }
    summary = {"date": time.strftime("%Y-%m-%d", time.gmtime()),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, cwd=ROOT).stdout.strip(),
               "minutes": a.minutes, "streams": a.streams, "kill_every_s": a.kill_every_s,
               "model": a.model, "kv_cache_bytes": pool, "guard_restarts": restarts,
               "guard_reconnects": reconnects,
               "server_rss_mib": {"baseline_median": base / 1024, "last_tenth_median": last / 1024,
                                  "max": max(s["server_rss_kib"] for s in samples) / 1024, "drift": drift},
               "guard_rss_mib_at_each_kill": [g / 1024 for g in guard_ends],
               "end_state": end_state, "loadtest": run, "failed_requests": failed, "goals": goals}
    with open(f"{a.out}/summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    ok = all(goals.values())
    lines = [
        "# Soak: the real stack for %.0f minutes, guard killed every %.0f s" % (a.minutes, a.kill_every_s), "",
        f"`scripts/soak.py --minutes {a.minutes:g} --streams {a.streams} --kill-every-s {a.kill_every_s:g}` on "
        f"{summary['date']}, commit {summary['commit']}, {os.cpu_count()} cores. Model `{a.model}`, KV pool {pool} bytes, "
        f"{a.streams} closed-loop streams (snapkv 0.75, guarded, temperature 0.7, 96 new tokens).", "",
        "| goal | measured | met |", "| --- | --- | --- |",
        f"| server RSS flat within 5% | {base / 1024:.1f} MiB (second tenth) -> {last / 1024:.1f} MiB (last tenth): "
        f"{100 * drift:+.2f}%; max {summary['server_rss_mib']['max']:.1f} MiB | {'yes' if goals['server_rss_flat_within_5pct'] else 'NO'} |",
        f"| KV bytes back to 0 | kv_bytes {end_state['kv_bytes']}, pool used {end_state['pool_used_bytes']}, "
        f"active {end_state['active_sequences']} | {'yes' if goals['kv_bytes_zero_at_end'] else 'NO'} |",
        f"| 0 failed requests | {run.get('requests')} requests, {failed} failed, errors: {run.get('errors') or 'none'} "
        f"| {'yes' if goals['zero_failed_requests'] else 'NO'} |", "",
        f"Guard killed {restarts} times; the server's link reconnected {reconnects} times (samples where "
        f"`kvguard_guard_connected` went back to 1). Fail-safe decode steps (batched, server counter by reason): "
        f"{end_state['fail_safe_total']}; per-request fail-safe step events reported to clients: "
        f"{run.get('fail_safe_events')}. Preemptions: {end_state['preemptions']}; admission restarts: "
        f"{end_state['admission_restarts']}. Guard RSS at each kill (MiB): "
        + ", ".join(f"{g / 1024:.1f}" for g in guard_ends) + ".", "",
        "![RSS over time](rss.svg)", "",
        "Files: `summary.json` (everything above), `samples.csv` (every 5 s: RSS, KV, active, guard connected, "
        "events), `loadtest/` (the load generator's report and per-request records).", ""]
    with open(f"{a.out}/README.md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[4:9]))
    print(f"soak: {'all goals met' if ok else 'GOAL MISSED'}; report {a.out}/README.md (logs {tmp})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
