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
        problems = check_values_documented(a.root) + check_controller_mirrors_shipped(a.root)
        if problems:
            raise opslib.OpsError(f"{len(problems)} chart problem(s)\n" + "\n".join(problems))
        return (f"{len(opslib.SCENARIOS)} value sets rendered and checked ({', '.join(opslib.SCENARIOS)}); "
                "every value documented; controller config mirrors guard_sidecar/config/controller.json")

    return opslib.main_wrapper("ops_helm_render", body)


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
