#!/usr/bin/env python3
"""ops_helm_render: builds tests/ops/helmrender (Go text/template + sprig, offline)
and renders helm/kvguard as Helm would, with the default values and with the
override files of tests/ops (GPU; HPA + ServiceMonitor + PrometheusRule + dashboard
+ model mounts; no guard). helmrender checks every document parses as YAML and has
what Kubernetes requires. Also: every value of values.yaml is documented in the
chart's README; the chart's default controller config equals
models/hazard/controller.json; values.yaml and every override file validate
against values.schema.json (python3-jsonschema; Helm does that on install) and bad
values do not; the ServiceMonitor's job labels are the ones the alert rules match;
the PrometheusRule and the dashboard ConfigMap carry deploy/prometheus/alerts.yml
and deploy/grafana/dashboards/kvguard.json; the NetworkPolicy admits no peer to the
guard's gRPC port; the default image tags are the ones the README builds.
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
        problems += check_values_schema(a.root)
        problems += check_monitoring_copies(a.root, rendered)
        problems += check_network_policy(rendered)
        problems += check_image_tags(a.root, rendered)
        if problems:
            raise opslib.OpsError(f"{len(problems)} chart problem(s)\n" + "\n".join(problems))
        return (f"{len(opslib.SCENARIOS)} value sets rendered and checked ({', '.join(opslib.SCENARIOS)}); "
                "every value documented; controller config mirrors models/hazard/controller.json; "
                "values match values.schema.json, bad values do not; ServiceMonitor jobs match the alert rules; "
                "PrometheusRule and dashboard ConfigMap carry deploy/'s rules and dashboard; NetworkPolicy "
                "keeps other pods off the guard; default image tags are the README's")

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


def merged_values(root, files):
    """values.yaml coalesced with override files as Helm does (maps merge, the rest replaces)."""
    import yaml

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
        return dst
    with open(os.path.join(root, "helm", "kvguard", "values.yaml")) as f:
        values = yaml.safe_load(f)
    for name in files:
        with open(os.path.join(root, "tests", "ops", name)) as f:
            merge(values, yaml.safe_load(f) or {})
    return values


# Overrides values.schema.json must reject: (what, override).
BAD_VALUES = [
    ("fail-safe policy", {"server": {"failSafe": "maybe"}}),
    ("guard model source", {"guard": {"model": {"source": "s3"}}}),
    ("dtype", {"server": {"dtype": "fp8"}}),
    ("device", {"server": {"device": "gpu"}}),
    ("port as a string", {"server": {"port": "50051"}}),
    ("ratio of 1", {"server": {"defaultRatio": 1}}),
    ("queue as a float", {"server": {"maxQueue": 6.5}}),
    ("misspelt key", {"server": {"maxConcurency": 8}}),
    ("unknown top-level key", {"prometheusRules": {"enabled": True}}),
    ("scrape interval", {"serviceMonitor": {"interval": 15}}),
    ("runbook url", {"prometheusRule": {"runbookUrl": "docs/runbook.md"}}),
    ("guard lag", {"server": {"guardLag": 2}}),
]


def check_values_schema(root):
    """values.yaml and every override of the scenarios validate against values.schema.json; each
    of BAD_VALUES is rejected."""
    try:
        import jsonschema  # Debian: python3-jsonschema
    except ImportError:
        return ["python3 module jsonschema missing (Debian package python3-jsonschema; scripts/install_deps.sh)"]
    with open(os.path.join(root, "helm", "kvguard", "values.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for name, (files, _) in opslib.SCENARIOS.items():
        for e in validator.iter_errors(merged_values(root, files)):
            problems.append(f"values of scenario {name} do not match values.schema.json: "
                            f"{'.'.join(map(str, e.path))}: {e.message}")
    import copy
    base = merged_values(root, [])
    for what, override in BAD_VALUES:
        v = copy.deepcopy(base)

        def merge(dst, src):
            for k, x in src.items():
                if isinstance(x, dict) and isinstance(dst.get(k), dict):
                    merge(dst[k], x)
                else:
                    dst[k] = x
        merge(v, override)
        if validator.is_valid(v):
            problems.append(f"values.schema.json accepts a bad {what}: {override}")
    return problems


def load_yaml_doc(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def check_monitoring_copies(root, rendered):
    """The chart's files/ copies equal deploy/'s rules and dashboard byte for byte; the rendered
    PrometheusRule (full values: own runbook URL) holds those rules with only the runbook links
    changed, and promtool accepts it; the dashboard
    ConfigMap holds the dashboard JSON."""
    import shutil
    import subprocess
    problems = []
    chart = os.path.join(root, "helm", "kvguard")
    pairs = [(os.path.join(root, "deploy", "prometheus", "alerts.yml"), os.path.join(chart, "files", "alerts.yml")),
             (os.path.join(root, "deploy", "grafana", "dashboards", "kvguard.json"),
              os.path.join(chart, "files", "kvguard-dashboard.json"))]
    for src, copy in pairs:
        with open(src, "rb") as f1, open(copy, "rb") as f2:
            if f1.read() != f2.read():
                problems.append(f"{os.path.relpath(copy, root)} differs from {os.path.relpath(src, root)}: "
                                f"cp {os.path.relpath(src, root)} {os.path.relpath(copy, root)}")
    values = merged_values(root, opslib.SCENARIOS["full"][0])
    docs = rendered["full"]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        return problems + [f"full values render {len(rules)} PrometheusRules, want 1"]
    text = json.dumps(load_yaml_doc(pairs[0][0]))
    if "/ kvguard_queue_capacity" not in text:
        problems.append("deploy/prometheus/alerts.yml: KvguardQueueSaturated no longer divides by the exported "
                        "kvguard_queue_capacity")
    text = text.replace("https://example.invalid/kvguard/blob/main/docs/runbook.md", values["prometheusRule"]["runbookUrl"])
    if rules[0]["spec"] != json.loads(text):
        problems.append("the rendered PrometheusRule's spec is not deploy/prometheus/alerts.yml with "
                        "prometheusRule.runbookUrl substituted")
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if os.path.exists(promtool):
        import tempfile
        import yaml
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            yaml.safe_dump(rules[0]["spec"], f)
            f.flush()
            r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                problems.append(f"promtool rejects the rendered PrometheusRule:\n{r.stdout}{r.stderr}")
    dash = [d for d in docs if d.get("kind") == "ConfigMap" and "kvguard.json" in (d.get("data") or {})]
    if len(dash) != 1:
        problems.append(f"full values render {len(dash)} dashboard ConfigMaps, want 1")
    else:
        with open(pairs[1][0]) as f:
            want = json.load(f)
        if json.loads(dash[0]["data"]["kvguard.json"]) != want:
            problems.append("the dashboard ConfigMap's kvguard.json is not deploy/grafana/dashboards/kvguard.json")
        if dash[0]["metadata"]["labels"].get("grafana_dashboard") != "1":
            problems.append("the dashboard ConfigMap lacks the label grafana_dashboard: \"1\" Grafana's sidecar selects")
    for name in ("default", "noguard"):
        if any(d.get("kind") == "PrometheusRule" or (d.get("kind") == "ConfigMap" and "kvguard.json" in (d.get("data") or {}))
               for d in rendered[name]):
            problems.append(f"{name} values render a PrometheusRule or dashboard ConfigMap (both are opt-in)")
    return problems


def check_network_policy(rendered):
    """Default and full values render one NetworkPolicy selecting the pods, admitting ingress to
    named ports of the pod that are the server's gRPC and the /metrics ports, never to the guard's
    gRPC port; full values restrict the peers."""
    problems = []
    for name in ("default", "full", "noguard"):
        docs = rendered[name]
        pols = [d for d in docs if d.get("kind") == "NetworkPolicy"]
        dep = [d for d in docs if d.get("kind") == "Deployment"][0]
        if len(pols) != 1:
            problems.append(f"{name}: {len(pols)} NetworkPolicies rendered, want 1")
            continue
        pol = pols[0]["spec"]
        if pol.get("podSelector", {}).get("matchLabels") != dep["spec"]["selector"]["matchLabels"]:
            problems.append(f"{name}: NetworkPolicy podSelector does not select the Deployment's pods")
        if pol.get("policyTypes") != ["Ingress"]:
            problems.append(f"{name}: NetworkPolicy policyTypes {pol.get('policyTypes')}, want [Ingress]")
        ports = {}
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                ports[p["name"]] = (c["name"], p["containerPort"])
        admitted = [p["port"] for rule in pol.get("ingress", []) for p in rule.get("ports", [])]
        if any(not rule.get("ports") for rule in pol.get("ingress", [])):
            problems.append(f"{name}: a NetworkPolicy ingress rule admits every port")
        unknown = [p for p in admitted if p not in ports]
        if unknown:
            problems.append(f"{name}: NetworkPolicy admits ports {unknown} that no container declares")
        guard_grpc = [n for n, (c, _) in ports.items() if c == "guard" and "metrics" not in n]
        guard_port_numbers = [num for n, (c, num) in ports.items() if c == "guard" and "metrics" not in n]
        if any(p in guard_grpc or p in guard_port_numbers for p in admitted):
            problems.append(f"{name}: NetworkPolicy admits other pods to the guard's gRPC port")
        want = {"grpc", "metrics"} | ({"guard-metrics"} if "guard-metrics" in ports else set())
        if set(admitted) != want:
            problems.append(f"{name}: NetworkPolicy admits {sorted(admitted)}, want {sorted(want)}")
        if name == "full" and not all(rule.get("from") for rule in pol.get("ingress", [])):
            problems.append("full: NetworkPolicy ignores networkPolicy.grpcFrom / metricsFrom")
        if name == "default" and any(rule.get("from") for rule in pol.get("ingress", [])):
            problems.append("default: NetworkPolicy restricts peers although grpcFrom / metricsFrom are empty")
    return problems


def check_image_tags(root, rendered):
    """The image of the default values (and the GPU override) is one the README's `docker build
    -t` commands build."""
    import re
    with open(os.path.join(root, "README.md")) as f:
        built = set(re.findall(r"docker build -f deploy/Dockerfile(?:\.cuda)? -t (\S+) \.", f.read()))
    problems = []
    if not built:
        return ["README.md has no `docker build -f deploy/Dockerfile... -t <image> .` command"]
    for name in ("default", "gpu"):
        dep = [d for d in rendered[name] if d.get("kind") == "Deployment"][0]
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if c["image"] not in built:
                problems.append(f"{name}: container {c['name']} runs image {c['image']}, the README builds {sorted(built)}")
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
    with open(os.path.join(root, "models", "hazard", "controller.json")) as f:
        shipped = strip_comments(json.load(f))
    if strip_comments(chart) != shipped:
        return ["helm/kvguard/values.yaml guard.controller differs from models/hazard/controller.json:\n"
                f"  chart:   {json.dumps(strip_comments(chart), sort_keys=True)}\n"
                f"  shipped: {json.dumps(shipped, sort_keys=True)}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
