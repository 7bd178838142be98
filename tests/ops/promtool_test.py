#!/usr/bin/env python3
"""ops_promtool: `promtool check config` on deploy/prometheus/prometheus.yml (which
loads alerts.yml), `promtool check rules` on deploy/prometheus/alerts.yml, and the
PromQL of every Grafana dashboard target parsed by promtool too (as recording
rules in a scratch rule file). Prints one line."""
import argparse
import os
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
                f"{len(exprs)} dashboard expressions parse")

    return opslib.main_wrapper("ops_promtool", body)


if __name__ == "__main__":
    sys.exit(main())
