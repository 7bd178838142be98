"""Helpers shared by the tests in tests/ops: child processes that die with the
test, free loopback ports, readiness waits, the helmrender build and PromQL
extraction from the dashboard and the alert rules."""
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

_PR_SET_PDEATHSIG = 1
_children = []


class OpsError(Exception):
    """A check failed; the message is the one-line reason."""


def _die_with_parent():
    # The child gets SIGKILL when the test process dies, even if ctest kills it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    os.setpgrp()


def spawn(args, log_path, env=None):
    """Starts a long-running child with stdout+stderr to log_path."""
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent, env=env)
    proc.log_path = log_path
    proc.log_file = log
    _children.append(proc)
    return proc


def stop_all():
    """SIGTERM every child started by spawn(), SIGKILL what is left after 5 s."""
    for p in _children:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.time() + 5
    for p in _children:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.log_file.close()
    _children.clear()


def log_tail(proc, n=15):
    try:
        with open(proc.log_path, errors="replace") as f:
            lines = f.read().splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(proc, port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise OpsError(f"{what} exited with {proc.returncode}:\n{log_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise OpsError(f"{what} did not open 127.0.0.1:{port} within {timeout}s:\n{log_tail(proc)}")


def wait_log(proc, pattern, what, timeout=30):
    """Waits for a line matching pattern in the child's log; returns the match."""
    rx = re.compile(pattern)
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(proc.log_path, errors="replace") as f:
            m = rx.search(f.read())
        if m:
            return m
        if proc.poll() is not None:
            raise OpsError(f"{what} exited with {proc.returncode}:\n{log_tail(proc)}")
        time.sleep(0.1)
    raise OpsError(f"{what} printed no /{pattern}/ within {timeout}s:\n{log_tail(proc)}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_http(proc, url, what, timeout=30):
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise OpsError(f"{what} exited with {proc.returncode}:\n{log_tail(proc)}")
        try:
            return http_get(url, timeout=2)
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
            time.sleep(0.2)
    raise OpsError(f"{what}: {url} not answering within {timeout}s ({last})")


def require_binaries(bin_dir, names):
    missing = [n for n in names if not os.access(os.path.join(bin_dir, n), os.X_OK)]
    if missing:
        raise OpsError(f"missing binaries in {bin_dir}: {', '.join(missing)} (build them first; "
                       "kvguard-guard is target kvguard-guard)")


def start_guard(bin_dir, root, tmp, threads=1, config=None):
    """kvguard-guard on loopback (ports picked by the guard); returns (proc, grpc_addr, metrics_port)."""
    cfg = config or os.path.join(root, "guard_sidecar", "config", "controller.json")
    args = [os.path.join(bin_dir, "kvguard-guard"), "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
            f"--config={cfg}", "--model=none", f"--threads={threads}"]
    proc = spawn(args, os.path.join(tmp, "guard.log"))
    m = wait_log(proc, r"listening on (127\.0\.0\.1:\d+) \(metrics 127\.0\.0\.1:(\d+)", "kvguard-guard")
    mport = int(m.group(2))
    wait_http(proc, f"http://127.0.0.1:{mport}/metrics", "kvguard-guard metrics")
    return proc, m.group(1), mport


def start_server(bin_dir, model, tmp, guard_addr, extra=()):
    """kvguard-server on loopback; returns (proc, grpc_addr, metrics_port)."""
    mport = free_port()
    args = [os.path.join(bin_dir, "kvguard-server"), f"--model={model}", "--listen=127.0.0.1:0",
            f"--metrics_listen=127.0.0.1:{mport}", "--threads=1"]
    if guard_addr:
        args.append(f"--guard={guard_addr}")
    args += list(extra)
    proc = spawn(args, os.path.join(tmp, "server.log"))
    m = wait_log(proc, r"listening on (127\.0\.0\.1:\d+)", "kvguard-server", timeout=60)
    wait_http(proc, f"http://127.0.0.1:{mport}/metrics", "kvguard-server metrics")
    return proc, m.group(1), mport


# ------------------------------------------------------------------ helmrender

def build_helmrender(root, out_dir):
    """Builds tests/ops/helmrender offline (GOPATH mode over Debian's Go packages)."""
    exe = os.path.join(out_dir, "helmrender")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
               GOCACHE=os.path.join(out_dir, "gocache"), GOTOOLCHAIN="local", CGO_ENABLED="0")
    go = "/usr/bin/go" if os.path.exists("/usr/bin/go") else "go"
    r = subprocess.run([go, "build", "-o", exe, "."], cwd=os.path.join(root, "tests", "ops", "helmrender"),
                       env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise OpsError("go build of tests/ops/helmrender failed (needs golang-go, "
                       "golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev):\n" + r.stderr)
    return exe


SCENARIOS = {
    # name: (override files, extra helmrender args)
    "default": ([], ["--expect-kind", "Deployment", "--expect-kind", "Service", "--expect-kind", "ConfigMap",
                     "--expect-kind", "PodDisruptionBudget", "--expect-kind", "ServiceAccount",
                     "--expect-kind", "NetworkPolicy",
                     "--expect-absent", "HorizontalPodAutoscaler", "--expect-absent", "ServiceMonitor",
                     "--expect-absent", "PrometheusRule"]),
    "gpu": (["values-gpu.yaml"], ["--expect-gpu", "--expect-kind", "Deployment"]),
    "full": (["values-full.yaml"], ["--expect-kind", "HorizontalPodAutoscaler", "--expect-kind", "ServiceMonitor",
                                    "--expect-kind", "PodDisruptionBudget", "--expect-kind", "ConfigMap",
                                    "--expect-kind", "PrometheusRule", "--expect-kind", "NetworkPolicy"]),
    "noguard": (["values-noguard.yaml"], ["--expect-absent", "ConfigMap", "--expect-absent", "PodDisruptionBudget",
                                          "--expect-absent", "ServiceAccount"]),
    "tls": (["values-tls.yaml"], ["--expect-kind", "Deployment", "--expect-kind", "Service"]),
}


def render_chart(exe, root, scenario, out_dir):
    files, extra = SCENARIOS[scenario]
    args = [exe, "--chart", os.path.join(root, "helm", "kvguard"), "--out", out_dir]
    for f in files:
        args += ["-f", os.path.join(root, "tests", "ops", f)]
    r = subprocess.run(args + extra, capture_output=True, text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


# ------------------------------------------------------------------ PromQL

RATE_INTERVAL = "2m"  # $__rate_interval for instant queries in tests (covers a whole test run)


def dashboard_exprs(root):
    """(panel title, expr) for every target of deploy/grafana/dashboards/*.json."""
    out = []
    ddir = os.path.join(root, "deploy", "grafana", "dashboards")
    for name in sorted(os.listdir(ddir)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(ddir, name)) as f:
            dash = json.load(f)

        def walk(panels):
            for p in panels:
                for t in p.get("targets", []):
                    if t.get("expr"):
                        out.append((f"{name}: {p.get('title', '?')}", t["expr"]))
                walk(p.get("panels", []))
        walk(dash.get("panels", []))
    return out


def substitute_grafana(expr):
    for var in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(var, RATE_INTERVAL)
    if "$" in expr:
        raise OpsError(f"unsupported Grafana variable in {expr!r}")
    return expr


_CMP = re.compile(r"^(?P<lhs>.*\S)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<num>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$", re.S)
_MATCHING = re.compile(r"^\s*(?:on|ignoring)\s*\([^)]*\)\s*", re.S)


def split_top_level_and(expr):
    """The operands of the top-level `and` operators of a PromQL expression (outside
    parentheses, braces, brackets and strings); one element when there is none."""
    parts, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif (depth == 0 and expr.startswith("and", i) and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_"))
              and (i + 3 == len(expr) or not (expr[i + 3].isalnum() or expr[i + 3] == "_"))):
            parts.append(expr[start:i])
            start = i + 3
            i += 3
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def alert_rules(root):
    """(alert name, full expr, [measure exprs]) from deploy/prometheus/alerts.yml. An
    expression is `<measure> <op> <number>`, optionally followed by traffic floors
    `and on (...) <measure> <op> <number>`; the measures are the operands without
    their `<op> <number>` thresholds (and without the `on (...)` matching)."""
    import yaml  # python3-yaml
    with open(os.path.join(root, "deploy", "prometheus", "alerts.yml")) as f:
        doc = yaml.safe_load(f)
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            expr = r["expr"].strip()
            measures = []
            for k, part in enumerate(split_top_level_and(expr)):
                if k > 0:
                    part = _MATCHING.sub("", part, count=1)
                m = _CMP.match(part)
                if not m:
                    raise OpsError(f"alert {name}: expression is not '<measure> <op> <number>' "
                                   f"[and on (...) '<measure> <op> <number>']: {expr!r}")
                measures.append(m.group("lhs").strip())
            out.append((name, expr, measures))
    return out


def one_line(result_ok, name, detail):
    print(f"{name}: {'PASS' if result_ok else 'FAIL'} {detail}")
    sys.stdout.flush()


def main_wrapper(name, fn):
    """Runs fn(); prints the one-line result; exit code 0/1."""
    try:
        detail = fn()
        one_line(True, name, detail)
        return 0
    except OpsError as e:
        msg = str(e)
        first, _, rest = msg.partition("\n")
        if rest:
            print(rest)
        one_line(False, name, first)
        return 1
    except Exception as e:  # noqa: BLE001 - any crash is a loud failure
        import traceback
        traceback.print_exc()
        one_line(False, name, f"{type(e).__name__}: {e}")
        return 1
    finally:
        stop_all()


def tmpdir(prefix):
    return tempfile.TemporaryDirectory(prefix=prefix)
