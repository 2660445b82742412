"""Runs ON the instance (python3 -c): one JSON snapshot of everything test_sidecar.py checks, so that the tests
cost one remote call instead of one per check. Never includes the token's value."""

import grp
import hashlib
import json
import os
import pwd
import subprocess

PATHS = [
    "/usr/local/bin/envoy", "/usr/local/bin/pilot-agent", "/usr/local/bin/istio-start.sh",
    "/lib/systemd/system/istio.service", "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json",
    "/var/lib/istio/envoy/sidecar.env", "/var/lib/istio/envoy/cluster.env", "/var/lib/istio/config/mesh",
    "/etc/istio", "/etc/certs", "/etc/certs/root-cert.pem", "/etc/certs/cert-chain.pem", "/etc/certs/key.pem",
    "/var/lib/istio/token", "/var/lib/istio/token/istio-token", "/var/run/secrets/tokens/istio-token",
    "/etc/tmpfiles.d/fleetmesh-istio-token.conf", "/run/fleetmesh-molecule-boot-marker",
]
SRC = os.environ.get("CERTS_SRC", "/etc/fleetmesh/workload-certs")


def run(*argv, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}


def describe(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
    item = {"kind": kind, "user": pwd.getpwuid(st.st_uid).pw_name, "group": grp.getgrgid(st.st_gid).gr_name,
            "mode": st.st_mode & 0o7777, "size": st.st_size}
    if kind == "link":
        item["target"] = os.readlink(path)
    if kind == "file" and path.startswith("/etc/certs/"):
        with open(path, "rb") as handle:
            item["sha256"] = hashlib.sha256(handle.read()).hexdigest()
    return item


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# cluster.env exactly as istio-start.sh reads it: bash, set -a, sourced, in an empty environment.
PRINT_ENV = 'exec python3 -c "import json,os; print(json.dumps(dict(os.environ)))"'
sourced = run("env", "-i", "/bin/bash", "--norc", "--noprofile", "-c",
              "set -a; . /var/lib/istio/envoy/cluster.env; " + PRINT_ENV)
baseline = run("env", "-i", "/bin/bash", "--norc", "--noprofile", "-c", PRINT_ENV)
env = {}
if sourced["rc"] == 0 and baseline["rc"] == 0:
    base = json.loads(baseline["out"])
    env = {k: v for k, v in json.loads(sourced["out"]).items() if k != "_" and (k not in base or base[k] != v)}

snapshot = {
    "files": {path: describe(path) for path in PATHS},
    "src_sha256": {name: sha256(os.path.join(SRC, name)) for name in ("root-cert.pem", "cert-chain.pem", "key.pem")},
    "src_files": {name: describe(os.path.join(SRC, name)) for name in ("root-cert.pem", "cert-chain.pem", "key.pem")},
    "cluster_env": env,
    "cluster_env_text": open("/var/lib/istio/envoy/cluster.env", encoding="utf-8").read(),
    "sourced_err": sourced["err"],
    "mesh": open("/etc/istio/config/mesh", encoding="utf-8").read(),
    "hosts": open("/etc/hosts", encoding="utf-8").read(),
    "getent": run("getent", "hosts", "istiod.istio-system.svc")["out"],
    "enabled": run("systemctl", "is-enabled", "istio.service")["out"].strip(),
    "active": run("systemctl", "is-active", "istio.service")["out"].strip(),
    "agent_users": run("ps", "-o", "user=", "-C", "pilot-agent")["out"].split(),
    "package": run("sh", "-c", "dpkg-query -W -f '${Version}' istio-sidecar 2>/dev/null || "
                               "rpm -q --qf '%{VERSION}-%{RELEASE}' istio-sidecar")["out"].strip(),
    "token_read_by_istio_proxy": run("runuser", "-u", "istio-proxy", "--", "test", "-r",
                                     "/var/run/secrets/tokens/istio-token")["rc"] == 0,
    "token_read_by_nobody": run("runuser", "-u", "nobody", "--", "test", "-r",
                                "/var/run/secrets/tokens/istio-token")["rc"] == 0,
}
print(json.dumps(snapshot))
