"""One Kubernetes layer: the cluster is contacted from plugins/module_utils/_fleetmesh/kube/ only.

Greps plugins/, roles/ and playbooks/ for every other client path: imports of the kubernetes package, urllib3,
requests and other HTTP clients outside the layer (the Envoy admin clients, which talk to Envoy on the host and
never to the cluster, are named below), kubernetes.core (and other Kubernetes collections') modules in tasks,
kubectl/helm/oc commands, uri tasks aimed at the API, and a second kubeconfig reader. Also checks that every module
that talks to the cluster is in the action group kube of meta/runtime.yml (module_defaults set its kubeconfig)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

LAYER = ROOT / "plugins" / "module_utils" / "_fleetmesh" / "kube"
PACKAGE = "ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh"
# Python modules that are clients of some API: only the layer may import them.
CLIENT_MODULES = ("kubernetes", "urllib3", "requests", "httpx", "aiohttp", "http.client", "httplib", "urllib.request",
                  "pycurl", "openshift", "kr8s", "lightkube", "pykube")
# Calls that open a connection or read a kubeconfig, and the keys of a kubeconfig read by hand.
CLIENT_CALLS = {"open_url", "fetch_url", "urlopen", "load_kube_config", "load_incluster_config",
                "new_client_from_config", "create_connection", "HTTPConnection", "HTTPSConnection"}
KUBECONFIG_KEYS = ("current-context", "client-key-data", "certificate-authority-data", "tokenFile")
# Talk to Envoy's admin API on loopback of the host, never to the cluster (checked: no Kubernetes in them).
ENVOY_ADMIN_CLIENTS = {
    ROOT / "plugins" / "module_utils" / "_fleetmesh" / "envoy.py": "the envoy_admin module's admin API client",
    ROOT / "roles" / "envoy" / "files" / "fleetmesh-envoy-run": "the Envoy unit's hot-restart wrapper",
}
KUBE_COLLECTIONS = re.compile(r"^(kubernetes\.core|community\.kubernetes|community\.okd|redhat\.openshift|"
                              r"kubernetes\.kubernetes)\.")
SHORT_K8S_MODULES = re.compile(r"^k8s(_[a-z_]+)?$|^helm(_[a-z_]+)?$")
CLI = re.compile(r"(^|[\s/;|&(])(kubectl|helm|oc|istioctl)(\s|$)")


def python_files() -> list[Path]:
    """The plugins, and every script or template a role installs (read as text)."""
    roles = sorted(p for p in (ROOT / "roles").glob("*/files/*") if p.suffix not in (".yml", ".yaml"))
    return sorted((ROOT / "plugins").rglob("*.py")) + roles + sorted((ROOT / "roles").glob("*/templates/*"))


def imported(path: Path) -> set[str]:
    """Every module name a Python file imports (from x import y counts as x and x.y)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def calls(path: Path) -> set[str]:
    """Client calls and kubeconfig keys in a Python file (code and strings, not comments)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in CLIENT_CALLS:
                found.add(name + "()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(key for key in KUBECONFIG_KEYS if key in node.value and "\n" not in node.value)
    return found


def is_client(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CLIENT_MODULES)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_layer_is_where_the_clients_are():
    assert {"kubernetes.config", "kubernetes.client.rest", "urllib3"} <= imported(LAYER / "client.py")


@pytest.mark.parametrize("path", [p for p in python_files() if LAYER not in p.parents], ids=rel)
def test_no_client_outside_the_layer(path: Path):
    if path.suffix == ".py":
        clients, found = sorted(n for n in imported(path) if is_client(n)), sorted(calls(path))
    else:  # a script or template a role installs: Python, shell or configuration
        text = path.read_text(errors="replace")
        clients = sorted(set(re.findall(r"^\s*(?:import|from)\s+([\w.]+)", text, re.M)) & set(CLIENT_MODULES))
        found = sorted(set(re.findall(rf"\b({'|'.join(CLIENT_CALLS)})\(", text)))
        found += [m.group(2) for m in CLI.finditer(text)] + re.findall(r"\bcurl\b[^\n]*/apis?/", text)
    if path in ENVOY_ADMIN_CLIENTS:
        text = path.read_text()
        assert not re.search(r"kube|/apis?/|serviceaccount", text, re.I), \
            f"{rel(path)} ({ENVOY_ADMIN_CLIENTS[path]}) may speak HTTP to Envoy only, but mentions Kubernetes"
        assert not any(n.startswith(("kubernetes", "urllib3", "requests")) for n in clients), clients
        return
    assert not clients and not found, (
        f"{rel(path)} is a client path of its own ({', '.join(clients + found)}); talk to the cluster through "
        f"plugins/module_utils/_fleetmesh/kube/ (kube.client.client_from_params)")


def test_only_the_layer_and_plugins_built_on_it_reach_the_cluster():
    """A module_utils file that imports the layer is one concern on top of it (reconcile); nothing else is."""
    users = sorted(rel(p) for p in python_files() if LAYER not in p.parents and p.suffix == ".py"
                   and any(n.startswith(f"{PACKAGE}.kube") for n in imported(p)))
    utils = [u for u in users if u.startswith("plugins/module_utils/")]
    assert utils == ["plugins/module_utils/_fleetmesh/reconcile.py"], utils
    for path in sorted(LAYER.glob("*.py")):
        assert not any(n.startswith(PACKAGE) and not n.startswith(f"{PACKAGE}.kube")
                       for n in imported(path)), f"the layer's {path.name} imports the collection's other code"


def yaml_files() -> list[Path]:
    return sorted(p for base in ("roles", "playbooks") for p in (ROOT / base).rglob("*.y*ml")
                  if p.suffix in (".yml", ".yaml") and "templates" not in p.parts)


def tasks_of(data):
    """Every mapping of a YAML document that has a task or play shape (recursively)."""
    if isinstance(data, list):
        for item in data:
            yield from tasks_of(item)
    elif isinstance(data, dict):
        yield data
        for value in data.values():
            if isinstance(value, (list, dict)):
                yield from tasks_of(value)


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_no_other_kubernetes_client_in_tasks(path: Path):
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        pytest.fail(f"{rel(path)} is not YAML: a file this test cannot read could hide a client")
    problems = []
    for task in tasks_of(data):
        for key, value in task.items():
            key = str(key)
            if KUBE_COLLECTIONS.match(key) or SHORT_K8S_MODULES.match(key):
                problems.append(f"module {key} (use fleetmesh.envoy.kube_info / kube_apply / mesh_registration)")
            if key == "collections" and any(KUBE_COLLECTIONS.match(f"{c}.") for c in value or []):
                problems.append(f"collections: {value}")
            if key in ("ansible.builtin.command", "ansible.builtin.shell", "ansible.builtin.raw", "command", "shell"):
                text = " ".join(value.get("argv") or [value.get("cmd", "")]) if isinstance(value, dict) else str(value)
                if CLI.search(text):
                    problems.append(f"{key}: {text[:80]}")
            if key in ("ansible.builtin.uri", "uri") and isinstance(value, dict):
                url = str(value.get("url", ""))
                if re.search(r"/apis?/|kube|:6443", url):
                    problems.append(f"{key} to the API server: {url}")
    assert not problems, f"{rel(path)} reaches the cluster without the collection's layer: {problems}"


def test_every_module_that_talks_to_the_cluster_is_in_the_action_group():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    group = set(runtime["action_groups"]["kube"])
    talking = set()
    for kind in ("modules", "action"):
        for path in (ROOT / "plugins" / kind).glob("*.py"):
            source = path.read_text()
            if any(n.startswith((f"{PACKAGE}.kube", f"{PACKAGE}.reconcile")) for n in imported(path)) or \
                    "._fleetmesh.kube import" in source:
                talking.add(path.stem)
    assert talking == group, f"action group kube {sorted(group)} but these talk to the cluster: {sorted(talking)}"
    for name in group:
        doc = yaml.safe_load(re.search(r'DOCUMENTATION = r"""(.*?)"""',
                                       (ROOT / "plugins" / "modules" / f"{name}.py").read_text(), re.S).group(1))
        assert "fleetmesh.envoy.k8s_auth.action_group" in doc["extends_documentation_fragment"], name


def test_nothing_needs_kubernetes_core_any_more():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert "kubernetes.core" not in (galaxy.get("dependencies") or {})


def test_the_host_half_of_istio_token_takes_the_options_without_the_client():
    """istio_token's module runs on the hosts: it ships kube/args.py (no imports), never the client."""
    names = imported(ROOT / "plugins" / "modules" / "istio_token.py")
    assert f"{PACKAGE}.kube.args" in names
    assert not any(n.startswith((f"{PACKAGE}.kube.client", f"{PACKAGE}.kube.apply", "kubernetes")) for n in names)
    assert not [n for n in imported(LAYER / "args.py") if n.startswith((PACKAGE, "kubernetes", "urllib3"))]
