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
            render = lambda override: render_override(exe, a.root, override, tmp)  # noqa: E731
            problems = check_guard_lifecycle(a.root, rendered, render)
            problems += check_headless_service(a.root, rendered, render)
            problems += check_strategy(a.root, rendered, render)
            problems += check_threads(a.root, rendered)
            problems += check_tls_auth(a.root, rendered, render)
        problems += check_values_documented(a.root) + check_controller_mirrors_shipped(a.root)
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
                "keeps other pods off the guard; default image tags are the README's; guard outlives the "
                "server's drain (native sidecar / preStop), terminationGracePeriodSeconds covers it; headless "
                "Service + max connection age; rollout strategy fits one GPU; threads from the CPU limit; "
                "TLS/auth Secrets, flags and probes")

    return opslib.main_wrapper("ops_helm_render", body)


def load_rendered(out_dir):
    """The documents helmrender wrote to out_dir/all.yaml."""
    import yaml
    with open(os.path.join(out_dir, "all.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render_override(exe, root, override, tmp):
    """Renders the chart with values.yaml + one override (a dict); returns (rc, output, documents)."""
    import subprocess
    import tempfile
    import yaml
    d = tempfile.mkdtemp(dir=tmp)
    path = os.path.join(d, "override.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(override, f)
    r = subprocess.run([exe, "--chart", os.path.join(root, "helm", "kvguard"), "-f", path, "--out", d],
                       capture_output=True, text=True, timeout=60)
    docs = load_rendered(d) if r.returncode == 0 else []
    return r.returncode, (r.stdout + r.stderr).strip(), docs


def pod_spec(docs):
    return [d for d in docs if d.get("kind") == "Deployment"][0]["spec"]["template"]["spec"]


def all_containers(pod):
    """{name: container} over containers and initContainers."""
    return {c["name"]: c for c in pod.get("containers", []) + pod.get("initContainers", [])}


def arg_values(container, flag):
    """Values of --flag=... in the container's args."""
    return [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"--{flag}=")]


def ceil_s(ms):
    return (int(ms) + 999) // 1000


def shutdown_budget(values):
    """Seconds from pod deletion until the last container may exit (what the chart must leave
    before SIGKILL): server preStop + drain, then the guard's drain (native sidecar: SIGTERM once the
    server has exited) or its preStop sleep + drain (plain container)."""
    srv = values["server"]
    server = int(srv["preStopSleepSeconds"]) + ceil_s(srv["drainGraceMs"])
    if not values["guard"]["enabled"]:
        return server
    g = values["guard"]
    drain_ms = int(g["drainWaitMs"]) or int(srv["drainGraceMs"]) + 5000
    if g["nativeSidecar"]:
        return server + ceil_s(drain_ms)
    return server + 5 + ceil_s(drain_ms)


def check_guard_lifecycle(root, rendered, render):
    """Native sidecar (default): the guard is an init container with restartPolicy Always and keeps
    its startup/readiness probes, and is not among the containers. guard.nativeSidecar=false: a plain
    container whose preStop sleep (server preStop + drain grace + 5 s) outlives the server's. Both: the
    guard gets --drain_wait_ms (guard.drainWaitMs, default drainGraceMs + 5000), listens on 127.0.0.1
    only, and terminationGracePeriodSeconds covers the whole shutdown; a shorter one fails rendering,
    and so does a native sidecar on Kubernetes before 1.29."""
    problems = []
    seen_native = seen_plain = False
    for name, docs in rendered.items():
        values = merged_values(root, opslib.SCENARIOS[name][0])
        pod = pod_spec(docs)
        grace = pod.get("terminationGracePeriodSeconds")
        budget = shutdown_budget(values)
        if not isinstance(grace, int) or grace < budget:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} < the shutdown's {budget} s")
        if not values["guard"]["enabled"]:
            if "guard" in all_containers(pod) or pod.get("initContainers"):
                problems.append(f"{name}: guard rendered although guard.enabled is false")
            continue
        srv, g = values["server"], values["guard"]
        inits = {c["name"]: c for c in pod.get("initContainers", [])}
        mains = {c["name"]: c for c in pod.get("containers", [])}
        if g["nativeSidecar"]:
            seen_native = True
            guard = inits.get("guard")
            if guard is None or "guard" in mains:
                problems.append(f"{name}: guard.nativeSidecar but the guard is not (only) an init container")
                continue
            if guard.get("restartPolicy") != "Always":
                problems.append(f"{name}: native sidecar guard without restartPolicy: Always")
            for probe in ("startupProbe", "readinessProbe"):
                if not guard.get(probe):
                    problems.append(f"{name}: native sidecar guard lost its {probe}")
            if guard.get("lifecycle", {}).get("preStop"):
                problems.append(f"{name}: native sidecar guard has a preStop (it is stopped after the server)")
        else:
            seen_plain = True
            guard = mains.get("guard")
            if guard is None or "guard" in inits:
                problems.append(f"{name}: guard.nativeSidecar=false but the guard is not a plain container")
                continue
            if "restartPolicy" in guard:
                problems.append(f"{name}: plain guard container carries restartPolicy")
            cmd = guard.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            server_stop = int(srv["preStopSleepSeconds"]) + ceil_s(srv["drainGraceMs"])
            want = server_stop + 5
            if cmd != ["sleep", str(want)]:
                problems.append(f"{name}: plain guard container preStop {cmd}, want ['sleep', '{want}'] "
                                f"(server preStop + drain grace = {server_stop} s, + 5 s)")
        want_drain = str(int(g["drainWaitMs"]) or int(srv["drainGraceMs"]) + 5000)
        if arg_values(guard, "drain_wait_ms") != [want_drain]:
            problems.append(f"{name}: guard --drain_wait_ms {arg_values(guard, 'drain_wait_ms')}, want [{want_drain}]")
        if arg_values(guard, "listen") != [f"127.0.0.1:{g['port']}"]:
            problems.append(f"{name}: guard --listen {arg_values(guard, 'listen')}, want 127.0.0.1:{g['port']} only")
        if arg_values(mains["server"], "guard") != [f"127.0.0.1:{g['port']}"]:
            problems.append(f"{name}: server --guard {arg_values(mains['server'], 'guard')} is not the guard's 127.0.0.1 port")
    if not (seen_native and seen_plain):
        problems.append(f"scenarios cover native sidecar {seen_native}, plain guard container {seen_plain}; want both")
    rc, out, _ = render({"terminationGracePeriodSeconds": 29})
    if rc == 0 or "terminationGracePeriodSeconds" not in out:
        problems.append(f"terminationGracePeriodSeconds 29 (< 5 + 10 + 15 s) renders: {out}")
    rc, out, _ = render({"terminationGracePeriodSeconds": 34, "guard": {"nativeSidecar": False}})
    if rc == 0:
        problems.append(f"terminationGracePeriodSeconds 34 with a plain guard container (< 20 + 15 s) renders: {out}")
    rc, out, docs = render({"terminationGracePeriodSeconds": 30, "guard": {"drainWaitMs": 1000}})
    if rc != 0 or arg_values(all_containers(pod_spec(docs))["guard"], "drain_wait_ms") != ["1000"]:
        problems.append(f"guard.drainWaitMs 1000 does not render --drain_wait_ms=1000 with a 30 s grace period: {out}")
    return problems


def check_headless_service(root, rendered, render):
    """service.headless.enabled (default): <fullname>-headless with clusterIP None, ready pods only,
    the gRPC port only, selecting the pods; off: absent. The server gets --max_connection_age_ms."""
    problems = []
    for name, docs in rendered.items():
        values = merged_values(root, opslib.SCENARIOS[name][0])
        dep = [d for d in docs if d.get("kind") == "Deployment"][0]
        services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
        hl = services.get(dep["metadata"]["name"] + "-headless")
        server = all_containers(pod_spec(docs))["server"]
        want_age = [str(values["server"]["maxConnectionAgeMs"])]
        if arg_values(server, "max_connection_age_ms") != want_age:
            problems.append(f"{name}: server --max_connection_age_ms {arg_values(server, 'max_connection_age_ms')}, want {want_age}")
        if not values["service"]["headless"]["enabled"]:
            if hl is not None or len(services) != 1:
                problems.append(f"{name}: service.headless.enabled is false but Services {sorted(services)} render")
            continue
        if hl is None:
            problems.append(f"{name}: no Service {dep['metadata']['name']}-headless")
            continue
        spec = hl["spec"]
        if spec.get("clusterIP") != "None" or spec.get("publishNotReadyAddresses") is not False:
            problems.append(f"{name}: headless Service clusterIP {spec.get('clusterIP')!r}, "
                            f"publishNotReadyAddresses {spec.get('publishNotReadyAddresses')!r}; want 'None', False")
        if spec.get("selector") != dep["spec"]["selector"]["matchLabels"]:
            problems.append(f"{name}: headless Service does not select the Deployment's pods")
        ports = [(p.get("name"), p.get("port"), p.get("targetPort")) for p in spec.get("ports", [])]
        if ports != [("grpc", values["service"]["port"], "grpc")]:
            problems.append(f"{name}: headless Service ports {ports}, want the gRPC port only")
    if "default" in rendered and not merged_values(root, [])["service"]["headless"]["enabled"]:
        problems.append("service.headless.enabled is not on by default")
    return problems


def check_strategy(root, rendered, render):
    """A GPU server rolls with maxSurge 0 / maxUnavailable 1 (a surge pod never gets the one GPU), a
    CPU one with maxSurge 1 / maxUnavailable 0; the strategy value overrides both."""
    problems = []
    surge_first = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    in_place = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    cases = [(name, docs, merged_values(root, opslib.SCENARIOS[name][0])) for name, docs in rendered.items()]
    rc, out, docs = render({"server": {"device": "cuda:0"}})
    if rc == 0:
        cases.append(("device cuda:0 without server.gpu", docs, None))
    else:
        problems.append(f"server.device cuda:0 does not render: {out}")
    for name, docs, values in cases:
        got = [d for d in docs if d.get("kind") == "Deployment"][0]["spec"].get("strategy")
        if values is None:
            want = in_place
        elif values.get("strategy"):
            want = values["strategy"]
        else:
            want = in_place if values["server"]["gpu"]["enabled"] else surge_first
        if got != want:
            problems.append(f"{name}: Deployment strategy {got}, want {want}")
    if "gpu" not in rendered or not any(merged_values(root, opslib.SCENARIOS[n][0]).get("strategy") for n in rendered):
        problems.append("no scenario covers both the GPU strategy and a strategy override")
    return problems


def check_threads(root, rendered):
    """server.threads 0 passes --threads=$(KVG_CPU_LIMIT), KVG_CPU_LIMIT coming from the downward API
    (the server container's limits.cpu in whole CPUs); a positive value is passed as is."""
    problems = []
    want_env = {"name": "KVG_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {
        "containerName": "server", "resource": "limits.cpu", "divisor": "1"}}}
    seen = set()
    for name, docs in rendered.items():
        values = merged_values(root, opslib.SCENARIOS[name][0])
        server = all_containers(pod_spec(docs))["server"]
        env = [e for e in server.get("env", []) if e.get("name") == "KVG_CPU_LIMIT"]
        threads = int(values["server"]["threads"])
        seen.add(threads > 0)
        if threads > 0:
            if arg_values(server, "threads") != [str(threads)] or env:
                problems.append(f"{name}: server.threads {threads} renders --threads {arg_values(server, 'threads')}, env {env}")
        elif arg_values(server, "threads") != ["$(KVG_CPU_LIMIT)"] or env != [want_env]:
            problems.append(f"{name}: server.threads 0 renders --threads {arg_values(server, 'threads')} and "
                            f"KVG_CPU_LIMIT {env}; want $(KVG_CPU_LIMIT) from {want_env}")
    if seen != {True, False}:
        problems.append("scenarios do not cover both server.threads 0 and a positive value")
    return problems


def check_tls_auth(root, rendered, render):
    """server.tls / server.auth / guard.tls mount their Secrets read-only and pass the files to the
    flags; off (default) nothing of it renders. Probes: gRPC on a plaintext server port (token auth
    does not cover grpc.health.v1), tcpSocket once TLS guards it (Kubernetes' gRPC probe cannot do
    TLS); the guard's probes use its /metrics port (its gRPC port is on 127.0.0.1);
    server.probes.type=grpc with TLS fails rendering, tcpSocket forces tcpSocket."""
    problems = []
    tls_flags = {"tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file", "guard_tls_ca_file",
                 "guard_tls_cert_file", "guard_tls_key_file", "guard_tls_server_name"}
    seen = False
    for name, docs in rendered.items():
        values = merged_values(root, opslib.SCENARIOS[name][0])
        pod = pod_spec(docs)
        cs = all_containers(pod)
        server, guard = cs["server"], cs.get("guard")
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        srv, g = values["server"], values["guard"]
        want = {}
        want_vols = {}
        if srv["tls"]["secretName"]:
            want.update({"tls_cert_file": "/etc/kvguard-tls/server/tls.crt",
                         "tls_key_file": "/etc/kvguard-tls/server/tls.key"})
            if srv["tls"]["clientCaKey"]:
                want["tls_client_ca_file"] = "/etc/kvguard-tls/server/" + srv["tls"]["clientCaKey"]
            want_vols["server-tls"] = ({"secretName": srv["tls"]["secretName"]}, "/etc/kvguard-tls/server", ["server"])
        if srv["auth"]["secretName"]:
            want["auth_tokens_file"] = "/etc/kvguard-auth/tokens"
            want_vols["server-auth"] = ({"secretName": srv["auth"]["secretName"],
                                         "items": [{"key": "tokens", "path": "tokens"}]}, "/etc/kvguard-auth", ["server"])
        guard_want = {}
        if g["enabled"] and g["tls"]["secretName"]:
            d = "/etc/kvguard-tls/guard"
            want.update({"guard_tls_ca_file": f"{d}/ca.crt", "guard_tls_cert_file": f"{d}/tls.crt",
                         "guard_tls_key_file": f"{d}/tls.key", "guard_tls_server_name": g["tls"]["serverName"]})
            guard_want = {"tls_cert_file": f"{d}/tls.crt", "tls_key_file": f"{d}/tls.key",
                          "tls_client_ca_file": f"{d}/ca.crt"}
            want_vols["guard-tls"] = ({"secretName": g["tls"]["secretName"]}, d, ["server", "guard"])
        seen |= bool(want)
        got = {f: arg_values(server, f) for f in tls_flags if arg_values(server, f)}
        if got != {f: [v] for f, v in want.items()}:
            problems.append(f"{name}: server TLS/auth flags {got}, want {want}")
        if guard is not None:
            gg = {f: arg_values(guard, f) for f in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
                  if arg_values(guard, f)}
            if gg != {f: [v] for f, v in guard_want.items()}:
                problems.append(f"{name}: guard TLS flags {gg}, want {guard_want}")
        for vname, (secret, mount, users) in want_vols.items():
            if vols.get(vname, {}).get("secret") != secret:
                problems.append(f"{name}: volume {vname} is {vols.get(vname)}, want secret {secret}")
            for cname in users:
                m = [x for x in cs[cname].get("volumeMounts", []) if x["name"] == vname]
                if m != [{"name": vname, "mountPath": mount, "readOnly": True}]:
                    problems.append(f"{name}: container {cname} mounts {vname} as {m}, want read-only at {mount}")
        extra = {v for v in vols if v in ("server-tls", "server-auth", "guard-tls")} - set(want_vols)
        if extra:
            problems.append(f"{name}: volumes {sorted(extra)} rendered although their values are off")
        secured = bool(srv["tls"]["secretName"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = server.get(probe, {})
            ok = (p.get("tcpSocket") == {"port": "grpc"} and "grpc" not in p) if secured else                 (p.get("grpc") == {"port": srv["port"]})
            if not ok:
                problems.append(f"{name}: server {probe} {p} (TLS {'on' if secured else 'off'})")
            if guard is not None and guard.get(probe, {}).get("httpGet") != {"path": "/metrics", "port": "guard-metrics"}:
                problems.append(f"{name}: guard {probe} {guard.get(probe)} is not an HTTP probe of its /metrics")
    if not seen:
        problems.append("no scenario turns TLS/auth on")
    rc, out, _ = render({"server": {"tls": {"secretName": "x"}, "probes": {"type": "grpc"}}})
    if rc == 0:
        problems.append("server.probes.type=grpc with server.tls renders (a gRPC probe cannot do TLS)")
    rc, out, docs = render({"server": {"auth": {"secretName": "x"}}})
    if rc != 0 or "grpc" not in all_containers(pod_spec(docs))["server"]["readinessProbe"]:
        problems.append(f"token auth alone does not keep gRPC probes: {out}")
    rc, out, docs = render({"server": {"probes": {"type": "tcpSocket"}}})
    if rc != 0 or all_containers(pod_spec(docs))["server"]["livenessProbe"].get("tcpSocket") != {"port": "grpc"}:
        problems.append(f"server.probes.type=tcpSocket does not give tcpSocket probes: {out}")
    return problems


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
    services = [d for d in docs if d.get("kind") == "Service" and d["spec"].get("clusterIP") != "None"]
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
    ("guard interval", {"server": {"guardInterval": 0}}),
    ("guard overlap", {"server": {"guardOverlap": "yes"}}),
    ("native sidecar as a string", {"guard": {"nativeSidecar": "yes"}}),
    ("probe type", {"server": {"probes": {"type": "exec"}}}),
    ("strategy type", {"strategy": {"type": "BlueGreen"}}),
    ("headless flag as a string", {"service": {"headless": {"enabled": "true"}}}),
    ("negative connection age", {"server": {"maxConnectionAgeMs": -1}}),
    ("TLS key misspelt", {"server": {"tls": {"secret": "x"}}}),
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
    for name in ("default", "full", "noguard", "tls"):
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
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            for p in c.get("ports", []):
                ports[p["name"]] = (c["name"], p["containerPort"])
        by_number = {num: n for n, (_, num) in ports.items()}
        # A port by number counts as the container port of that number (the guard's metrics port
        # is given by number: a native sidecar's named ports are not resolved by every CNI).
        admitted = [by_number.get(p["port"], p["port"]) for rule in pol.get("ingress", []) for p in rule.get("ports", [])]
        if any(not rule.get("ports") for rule in pol.get("ingress", [])):
            problems.append(f"{name}: a NetworkPolicy ingress rule admits every port")
        unknown = [p for p in admitted if p not in ports]
        if unknown:
            problems.append(f"{name}: NetworkPolicy admits ports {unknown} that no container declares")
        values_guard_port = [int(a.rsplit(":", 1)[1]) for c in pod["containers"] + pod.get("initContainers", [])
                             if c["name"] == "guard" for a in c.get("args", []) if a.startswith("--listen=")]
        guard_grpc = [n for n, (c, _) in ports.items() if c == "guard" and "metrics" not in n]
        guard_port_numbers = [num for n, (c, num) in ports.items() if c == "guard" and "metrics" not in n]
        if any(p in guard_grpc or p in guard_port_numbers or p in values_guard_port for p in admitted):
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
