#!/usr/bin/env python3
"""ops_promtool: `promtool check config` on deploy/prometheus/prometheus.yml (which
loads alerts.yml), `promtool check rules` on deploy/prometheus/alerts.yml, the unit
tests of those rules (`promtool test rules deploy/prometheus/alerts_test.yml`, which
must test every alert), and the PromQL of every Grafana dashboard target parsed by
promtool too (as recording rules in a scratch rule file). Also checks that every
alert links an existing entry of docs/runbook.md and that no alert or dashboard
computes CFR from the overlapping per-kind flags (kvguard_catastrophes_total).
Prints one line."""
import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402


def run(args):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise opslib.OpsError(f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


RUNBOOK_PREFIX = "https://example.invalid/kvguard/blob/main/docs/runbook.md#"


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    a = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return a.replace(" ", "-")


def check_runbook_links(root):
    """Every alert has a runbook_url to an existing heading of docs/runbook.md."""
    import yaml  # python3-yaml
    with open(os.path.join(root, "docs", "runbook.md")) as f:
        anchors = {github_anchor(line.lstrip("#")) for line in f if line.startswith("#")}
    with open(os.path.join(root, "deploy", "prometheus", "alerts.yml")) as f:
        doc = yaml.safe_load(f)
    bad = []
    for g in doc["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            url = r.get("annotations", {}).get("runbook_url", "")
            if not url.startswith(RUNBOOK_PREFIX) or url[len(RUNBOOK_PREFIX):] not in anchors:
                bad.append(f"{r['alert']}: runbook_url {url!r}")
    if bad:
        raise opslib.OpsError("alerts without a runbook entry in docs/runbook.md:\n" + "\n".join(bad))


def check_cfr_counted_once(alerts, exprs):
    """A ratio of kvguard_catastrophes_total (one count per flag: a loop that hits the token
    limit is two) to kvguard_generations_total double-counts CFR."""
    bad = [f"{where}: {e}" for where, e in [(f"alert {n}", e) for n, e, _ in alerts] + exprs
           if "kvguard_catastrophes_total" in e and "kvguard_generations_total" in e]
    if bad:
        raise opslib.OpsError("CFR computed from kvguard_catastrophes_total (flags overlap; use "
                              "kvguard_catastrophic_generations_total):\n" + "\n".join(bad))


def check_every_alert_tested(root, alerts):
    import yaml  # python3-yaml
    with open(os.path.join(root, "deploy", "prometheus", "alerts_test.yml")) as f:
        doc = yaml.safe_load(f)
    tested = {t["alertname"] for case in doc["tests"] for t in case.get("alert_rule_test", [])}
    fired = {t["alertname"] for case in doc["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    untested = [n for n, _, _ in alerts if n not in fired]
    if untested:
        raise opslib.OpsError(f"alerts with no promtool test in which they fire: {', '.join(untested)}")
    return len(tested)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    promtool = shutil.which("promtool") or "/usr/bin/promtool"

    def body():
        if not os.path.exists(promtool):
            raise opslib.OpsError("promtool not found (Debian package prometheus; scripts/install_deps.sh)")
        pdir = os.path.join(a.root, "deploy", "prometheus")
        run([promtool, "check", "config", os.path.join(pdir, "prometheus.yml")])
        out = run([promtool, "check", "rules", os.path.join(pdir, "alerts.yml")])
        alerts = opslib.alert_rules(a.root)
        exprs = opslib.dashboard_exprs(a.root)
        # promtool resolves rule_files relative to the test file.
        unit = run([promtool, "test", "rules", os.path.join(pdir, "alerts_test.yml")])
        if "SUCCESS" not in unit:
            raise opslib.OpsError(f"promtool test rules did not report SUCCESS:\n{unit}")
        n_tested = check_every_alert_tested(a.root, alerts)
        check_runbook_links(a.root)
        check_cfr_counted_once(alerts, exprs)
        with opslib.tmpdir("kvg-promtool-") as tmp:
            path = os.path.join(tmp, "dashboard_exprs.yml")
            with open(path, "w") as f:
                f.write("groups:\n  - name: dashboard\n    rules:\n")
                for i, (_, e) in enumerate(exprs):
                    q = opslib.substitute_grafana(e).replace("'", "''")
                    f.write(f"      - record: kvguard:dashboard_expr_{i}\n        expr: '{q}'\n")
            try:
                run([promtool, "check", "rules", path])
            except opslib.OpsError as e:
                raise opslib.OpsError("a dashboard expression does not parse:\n" + str(e))
        return (f"prometheus.yml valid, {len(alerts)} alert rules valid ({out.strip().splitlines()[-1].strip()}), "
                f"promtool unit tests pass ({n_tested} alerts tested), runbook links resolve, "
                f"{len(exprs)} dashboard expressions parse")

    return opslib.main_wrapper("ops_promtool", body)


if __name__ == "__main__":
    sys.exit(main())
