#!/usr/bin/env python3
"""ops_k8s_schema: renders helm/kvguard with every value set of tests/ops (opslib.SCENARIOS:
default, GPU, HPA + monitoring (values-full), no guard, TLS) and validates every rendered
object against the Kubernetes OpenAPI schemas (npm kubernetes-models, Kubernetes >= 1.29
models: native sidecar init containers) and the prometheus-operator CRD schemas
(@kubernetes-models/prometheus-operator) with tests/ops/k8s-schema/validate.js. Then checks
that the validator rejects broken copies of the rendered objects (a wrong type, a bad enum,
a missing required field, an unknown kind), so a schema break cannot pass unnoticed.
Needs node and `npm ci` in tests/ops/k8s-schema (scripts/install_deps.sh). Prints one line."""
import argparse
import copy
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402


def find_node():
    for c in ("/usr/bin/node", "/usr/bin/nodejs", shutil.which("node") or ""):
        if c and os.access(c, os.X_OK):
            return c
    raise opslib.OpsError("node not found (Debian packages nodejs npm; scripts/install_deps.sh)")


def run_validator(node, schema_dir, files):
    r = subprocess.run([node, os.path.join(schema_dir, "validate.js")] + files, capture_output=True,
                       text=True, timeout=120, cwd=schema_dir)
    return r.returncode, r.stdout, r.stderr


def load_docs(path):
    import yaml
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def deployment(docs):
    return [d for d in docs if d.get("kind") == "Deployment"][0]


def service(docs):
    return [d for d in docs if d.get("kind") == "Service"][0]


def _set_port_string(docs):
    deployment(docs)["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "50051"


def _set_replicas_string(docs):
    deployment(docs)["spec"]["replicas"] = "two"


def _sidecar_restart_policy(docs):
    deployment(docs)["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] = 1


def _drop_container_name(docs):
    del deployment(docs)["spec"]["template"]["spec"]["containers"][0]["name"]


def _probe_port_list(docs):
    deployment(docs)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = [50051]


def _service_ports_map(docs):
    service(docs)["spec"]["ports"] = {"grpc": 50051}


def _unknown_kind(docs):
    docs.append({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})


def _servicemonitor_endpoints(docs):
    sm = [d for d in docs if d.get("kind") == "ServiceMonitor"][0]
    sm["spec"]["endpoints"] = "metrics"


# (scenario whose rendering is broken, what, mutation, JSON path the error must name)
BROKEN = [
    ("default", "containerPort as a string", _set_port_string, "/spec/template/spec/containers/0/ports/0/containerPort"),
    ("default", "replicas as a string", _set_replicas_string, "/spec/replicas"),
    ("default", "sidecar restartPolicy as a number", _sidecar_restart_policy, "/spec/template/spec/initContainers/0/restartPolicy"),
    ("default", "container without a name", _drop_container_name, "/spec/template/spec/containers/0"),
    ("default", "gRPC probe port as a list", _probe_port_list, "/spec/template/spec/containers/0/readinessProbe/grpc/port"),
    ("default", "Service ports as a map", _service_ports_map, "/spec/ports"),
    ("default", "misspelt kind", _unknown_kind, "no schema for kind Deploymnet"),
    ("full", "ServiceMonitor endpoints as a string", _servicemonitor_endpoints, "/spec/endpoints"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    schema_dir = os.path.join(a.root, "tests", "ops", "k8s-schema")

    def body():
        import yaml
        node = find_node()
        for mod in ("kubernetes-models", "@kubernetes-models/prometheus-operator", "yaml"):
            if not os.path.isdir(os.path.join(schema_dir, "node_modules", mod)):
                raise opslib.OpsError(f"{mod} missing in tests/ops/k8s-schema/node_modules: run "
                                      "`npm ci --prefix tests/ops/k8s-schema` (scripts/install_deps.sh does)")
        with opslib.tmpdir("kvg-k8s-schema-") as tmp:
            exe = opslib.build_helmrender(a.root, tmp)
            manifests = {}
            for name in opslib.SCENARIOS:
                out = os.path.join(tmp, name)
                rc, msg = opslib.render_chart(exe, a.root, name, out)
                if rc != 0:
                    raise opslib.OpsError(f"chart [{name}] does not render: {msg}")
                manifests[name] = os.path.join(out, "all.yaml")
            rc, out, err = run_validator(node, schema_dir, list(manifests.values()))
            summary = (out.strip().splitlines() or ["(no output)"])[-1]
            bad = [line for line in out.splitlines() if line.startswith("error")]
            if rc != 0 or bad:
                raise opslib.OpsError(f"rendered manifests do not match the schemas: {summary}\n"
                                      + "\n".join(bad) + ("\n" + err if err.strip() else ""))
            m = re.search(r"(\d+)/(\d+) documents valid", summary)
            kinds = sorted({d["kind"] for p in manifests.values() for d in load_docs(p)})
            if not m or int(m.group(2)) == 0:
                raise opslib.OpsError(f"validator summary unexpected: {summary}")
            if not {"Deployment", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"} <= set(kinds):
                raise opslib.OpsError(f"renderings hold only {kinds}: the Deployment and the operator kinds must be validated")
            # Each broken copy must be rejected, with the error at the broken field.
            missed = []
            for scenario, what, mutate, where in BROKEN:
                docs = copy.deepcopy(load_docs(manifests[scenario]))
                mutate(docs)
                path = os.path.join(tmp, f"broken-{len(missed)}-{mutate.__name__}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump_all(docs, f)
                brc, bout, berr = run_validator(node, schema_dir, [path])
                errors = [line for line in bout.splitlines() if line.startswith("error")]
                if brc == 0 or not any(where in line for line in errors):
                    missed.append(f"{what} ({scenario}): rc {brc}, errors {errors or bout.strip() or berr.strip()}")
            if missed:
                raise opslib.OpsError(f"the validator accepts {len(missed)} broken manifest(s)\n" + "\n".join(missed))
        return (f"{m.group(1)}/{m.group(2)} rendered objects of {len(manifests)} value sets "
                f"({', '.join(manifests)}) match the Kubernetes and prometheus-operator schemas "
                f"({', '.join(kinds)}); {len(BROKEN)} broken copies rejected; {summary.split('(', 1)[-1].rstrip(')')}")

    return opslib.main_wrapper("ops_k8s_schema", body)


if __name__ == "__main__":
    sys.exit(main())
