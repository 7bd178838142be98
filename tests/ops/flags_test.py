#!/usr/bin/env python3
"""ops_flag_consistency: every --flag that deploy/Dockerfile, deploy/Dockerfile.cuda,
deploy/docker-compose.yml and the rendered Helm chart (all override sets of
tests/ops) pass to kvguard-server / kvguard-guard (and kvguard-client in the
chart's NOTES.txt) exists in that binary's --helpfull output, and the real
kvguard-guard starts with the controller config the chart renders. Prints one line."""
import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

BINARIES = ("kvguard-server", "kvguard-guard", "kvguard-client")


def help_flags(bin_dir, name):
    exe = os.path.join(bin_dir, name)
    r = subprocess.run([exe, "--helpfull"], capture_output=True, text=True, timeout=60)
    text = r.stdout + r.stderr
    flags = set(re.findall(r"^\s+--([A-Za-z0-9_]+)\b", text, re.M))
    if not flags:
        raise opslib.OpsError(f"{name} --helpfull listed no flags:\n{text[:2000]}")
    return flags


def flag_names(args):
    out = []
    for a in args:
        if not isinstance(a, str) or not a.startswith("--") or a == "--":
            continue
        out.append(a[2:].split("=", 1)[0])
    return out


def dockerfile_invocations(path):
    """(binary, args) of every exec-form CMD/ENTRYPOINT of a Dockerfile."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line)
        if m:
            argv = json.loads(m.group(2))
            out.append((os.path.basename(argv[0]), argv[1:]))
        elif re.match(r"\s*(CMD|ENTRYPOINT)\s", line):
            raise opslib.OpsError(f"{path}: shell-form {line.split()[0]} is not checked; use the exec form")
    return out


def compose_invocations(path):
    import yaml  # python3-yaml
    with open(path) as f:
        doc = yaml.safe_load(f)
    out = []
    for name, svc in (doc.get("services") or {}).items():
        cmd = svc.get("command")
        if cmd is None:
            continue
        if isinstance(cmd, str):
            cmd = cmd.split()
        ep = svc.get("entrypoint")
        argv = (ep if isinstance(ep, list) else ([ep] if ep else [])) + cmd
        out.append((os.path.basename(argv[0]), argv[1:], f"service {name}"))
    return out


def chart_invocations(manifest):
    import yaml
    out = []
    with open(manifest) as f:
        for d in yaml.safe_load_all(f):
            if not d or d.get("kind") != "Deployment":
                continue
            pod = d["spec"]["template"]["spec"]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                argv = (c.get("command") or []) + (c.get("args") or [])
                if argv:
                    out.append((os.path.basename(argv[0]), argv[1:], f"container {c['name']}"))
    return out


def controller_configs(manifest, scenario, tmp):
    import yaml
    out = []
    with open(manifest) as f:
        for d in yaml.safe_load_all(f):
            if d and d.get("kind") == "ConfigMap" and "controller.json" in (d.get("data") or {}):
                path = os.path.join(tmp, f"controller-{scenario}.json")
                with open(path, "w") as g:
                    g.write(d["data"]["controller.json"])
                out.append((f"helm [{scenario}]", path))
    return out


def notes_invocations(path):
    out = []
    with open(path) as f:
        for line in f:
            toks = line.split()
            for i, t in enumerate(toks):
                if os.path.basename(t) in BINARIES:
                    out.append((os.path.basename(t), toks[i + 1:], "NOTES.txt"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin-dir", required=True)
    a = ap.parse_args()

    def body():
        opslib.require_binaries(a.bin_dir, BINARIES)
        known = {b: help_flags(a.bin_dir, b) for b in BINARIES}
        invocations = []  # (where, binary, args)
        configs = []  # (where, rendered controller.json path)
        for df in ("Dockerfile", "Dockerfile.cuda"):
            for b, args in dockerfile_invocations(os.path.join(a.root, "deploy", df)):
                invocations.append((f"deploy/{df}", b, args))
        for b, args, where in compose_invocations(os.path.join(a.root, "deploy", "docker-compose.yml")):
            invocations.append((f"deploy/docker-compose.yml {where}", b, args))
        with opslib.tmpdir("kvg-flags-") as tmp:
            exe = opslib.build_helmrender(a.root, tmp)
            for scenario in opslib.SCENARIOS:
                out = os.path.join(tmp, scenario)
                rc, msg = opslib.render_chart(exe, a.root, scenario, out)
                if rc != 0:
                    raise opslib.OpsError(f"chart [{scenario}] does not render: {msg}")
                for b, args, where in chart_invocations(os.path.join(out, "all.yaml")):
                    invocations.append((f"helm [{scenario}] {where}", b, args))
                for b, args, where in notes_invocations(os.path.join(out, "NOTES.txt")):
                    invocations.append((f"helm [{scenario}] {where}", b, args))
                configs += controller_configs(os.path.join(out, "all.yaml"), scenario, tmp)
            # The controller config the chart renders must be accepted by the real guard.
            for where, path in configs:
                proc = opslib.spawn([os.path.join(a.bin_dir, "kvguard-guard"), f"--config={path}",
                                     "--model=none", "--listen=127.0.0.1:0", "--metrics_listen="], path + ".log")
                try:
                    opslib.wait_log(proc, r"listening on", f"kvguard-guard with the {where} controller config",
                                    timeout=20)
                finally:
                    opslib.stop_all()
        bad, checked, seen = [], 0, set()
        for where, b, args in invocations:
            if b not in known:
                continue
            seen.add(b)
            for name in flag_names(args):
                checked += 1
                if name not in known[b] and not (name.startswith("no") and name[2:] in known[b]):
                    bad.append(f"{where}: {b} has no flag --{name}")
        for b in ("kvguard-server", "kvguard-guard"):
            if b not in seen:
                bad.append(f"no invocation of {b} found in the Dockerfiles, compose file or chart")
        if bad:
            raise opslib.OpsError(f"{len(bad)} unknown flag(s)\n" + "\n".join(bad))
        return (f"{checked} flags in {len(invocations)} invocations exist in the binaries' --helpfull; "
                f"kvguard-guard accepts the chart's controller config ({len(configs)} renderings)")

    return opslib.main_wrapper("ops_flag_consistency", body)


if __name__ == "__main__":
    sys.exit(main())
