#!/usr/bin/env python3
"""ops_helm_render: builds tests/ops/helmrender (Go text/template + sprig, offline)
and renders helm/kvguard as Helm would, with the default values and with the
override files of tests/ops (GPU; HPA + ServiceMonitor + model mounts; no guard).
helmrender checks every document parses as YAML and has what Kubernetes requires.
Also: every value of values.yaml is documented in the chart's README, and the
chart's default controller config equals guard_sidecar/config/controller.json.
Prints one line."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    a = ap.parse_args()

    def body():
        with opslib.tmpdir("kvg-helm-") as tmp:
            exe = opslib.build_helmrender(a.root, tmp)
            failures, lines = [], []
            for name in opslib.SCENARIOS:
                rc, out = opslib.render_chart(exe, a.root, name, os.path.join(tmp, name))
                lines.append(f"[{name}] {out}")
                if rc != 0:
                    failures.append(name)
            print("\n".join(lines))
            if failures:
                raise opslib.OpsError(f"chart rendering failed for {', '.join(failures)}")
            rendered = {name: load_rendered(os.path.join(tmp, name)) for name in opslib.SCENARIOS}
        problems = check_values_documented(a.root) + check_controller_mirrors_shipped(a.root)
        problems += check_servicemonitor_jobs(a.root, rendered["full"])
        if problems:
            raise opslib.OpsError(f"{len(problems)} chart problem(s)\n" + "\n".join(problems))
        return (f"{len(opslib.SCENARIOS)} value sets rendered and checked ({', '.join(opslib.SCENARIOS)}); "
                "every value documented; controller config mirrors guard_sidecar/config/controller.json; "
                "ServiceMonitor jobs match the alert rules")

    return opslib.main_wrapper("ops_helm_render", body)


def load_rendered(out_dir):
    """The documents helmrender wrote to out_dir/all.yaml."""
    import yaml
    with open(os.path.join(out_dir, "all.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def relabel(labels, rules):
    """Prometheus `replace` relabelling (the only action the chart uses on job); other actions
    are skipped when they do not touch the labels followed here."""
    import re
    labels = dict(labels)
    for r in rules:
        action = r.get("action", "replace").lower()
        if action != "replace":
            if r.get("targetLabel") in labels:
                raise opslib.OpsError(f"relabeling action {action} on {r.get('targetLabel')} is not simulated")
            continue
        src = r.get("separator", ";").join(labels.get(n, "") for n in r.get("sourceLabels", []))
        m = re.fullmatch(r.get("regex", "(.*)"), src)
        if m:
            labels[r["targetLabel"]] = m.expand(r.get("replacement", "$1").replace("$", "\\"))
    return labels


def check_servicemonitor_jobs(root, docs):
    """The job label each ServiceMonitor endpoint gives its targets (the operator starts from the
    Service's name, then applies the endpoint's relabelings) is the one deploy/prometheus uses:
    kvguard-server for the server's port, kvguard-guard for the guard's; KvguardTargetDown matches
    both, prometheus.yml (compose) scrapes the same job names, and the promtool tests of
    alerts_test.yml exercise them."""
    import re
    import yaml
    problems = []
    services = [d for d in docs if d.get("kind") == "Service"]
    monitors = [d for d in docs if d.get("kind") == "ServiceMonitor"]
    if len(monitors) != 1 or len(services) != 1:
        return [f"expected one ServiceMonitor and one Service in the full render, got {len(monitors)}, {len(services)}"]
    want = {"metrics": "kvguard-server", "guard-metrics": "kvguard-guard"}
    got = {}
    for ep in monitors[0]["spec"]["endpoints"]:
        base = {"job": services[0]["metadata"]["name"], "__meta_kubernetes_pod_node_name": "node-1"}
        got[ep["port"]] = relabel(base, ep.get("relabelings", []))["job"]
    if got != want:
        problems.append(f"ServiceMonitor endpoints give job labels {got}, the alert rules expect {want}")
    with open(os.path.join(root, "deploy", "prometheus", "alerts.yml")) as f:
        rules = {r["alert"]: r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r}
    m = re.search(r'up\{job=~"([^"]+)"\}', rules["KvguardTargetDown"]["expr"])
    if not m or not all(re.fullmatch(m.group(1), j) for j in want.values()):
        problems.append(f"KvguardTargetDown does not match jobs {sorted(want.values())}: {rules['KvguardTargetDown']['expr']!r}")
    with open(os.path.join(root, "deploy", "prometheus", "prometheus.yml")) as f:
        compose_jobs = {c["job_name"] for c in yaml.safe_load(f)["scrape_configs"]}
    if not set(want.values()) <= compose_jobs:
        problems.append(f"deploy/prometheus/prometheus.yml scrapes jobs {sorted(compose_jobs)}, not {sorted(want.values())}")
    with open(os.path.join(root, "deploy", "prometheus", "alerts_test.yml")) as f:
        tests = yaml.safe_load(f)["tests"]
    up_jobs = {j for t in tests for s in t.get("input_series", [])
               for j in re.findall(r'^up\{.*\bjob="([^"]+)"', s["series"])}
    if not set(want.values()) <= up_jobs:
        problems.append(f"alerts_test.yml tests `up` only for jobs {sorted(up_jobs)}, not {sorted(want.values())}")
    return problems


def leaf_paths(v, prefix=""):
    if isinstance(v, dict) and v:
        for k, x in v.items():
            yield from leaf_paths(x, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def check_values_documented(root):
    """Every value of values.yaml (or a parent of it) is documented in the chart README."""
    import yaml
    chart = os.path.join(root, "helm", "kvguard")
    with open(os.path.join(chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(chart, "README.md")) as f:
        readme = f.read()
    missing = []
    for path in leaf_paths(values):
        parts = path.split(".")
        if path.startswith("guard.controller."):
            parts = parts[:2]
        if not any(f"`{'.'.join(parts[:i])}`" in readme for i in range(len(parts), 0, -1)):
            missing.append(f"helm/kvguard/README.md does not document `{path}`")
    return missing


def strip_comments(v):
    if isinstance(v, dict):
        return {k: strip_comments(x) for k, x in v.items() if not k.startswith("_")}
    return v


def check_controller_mirrors_shipped(root):
    import yaml
    with open(os.path.join(root, "helm", "kvguard", "values.yaml")) as f:
        chart = yaml.safe_load(f)["guard"]["controller"]
    with open(os.path.join(root, "guard_sidecar", "config", "controller.json")) as f:
        shipped = strip_comments(json.load(f))
    if strip_comments(chart) != shipped:
        return ["helm/kvguard/values.yaml guard.controller differs from guard_sidecar/config/controller.json:\n"
                f"  chart:   {json.dumps(strip_comments(chart), sort_keys=True)}\n"
                f"  shipped: {json.dumps(shipped, sort_keys=True)}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
