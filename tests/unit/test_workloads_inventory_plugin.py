"""The fleetmesh.envoy.workloads inventory plugin: host records from each kind, merging, host variables, and
the plugin run by ansible-inventory against a stand-in API server on loopback (groups, compose, keyed groups,
label selectors, namespaces, cache). tests/integration/test_workloads_inventory.py runs it against the real
kube-apiserver with objects the registration wrote."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.fleetmesh.envoy.plugins.inventory import workloads as w

REPO = Path(__file__).resolve().parents[2]
OWNED = {"app.kubernetes.io/managed-by": "fleetmesh.envoy", "fleetmesh.envoy/registration": "prod"}


def we(host: str, address: str, service: str = "reviews", namespace: str = "bookinfo", **extra: Any) -> dict[str, Any]:
    labels = dict(OWNED, **{"fleetmesh.envoy/service": service}, **extra.pop("labels", {}))
    annotations = {"fleetmesh.envoy/host": host, **extra.pop("annotations", {})}
    spec = {"address": address, "ports": {"http": 9080}, "labels": {"app": service, "version": "v1"},
            "network": "vm-net", "serviceAccount": service, **extra}
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": f"{service}-{host}", "namespace": namespace, "labels": labels,
                         "annotations": annotations}, "spec": spec}


def se(hosts: dict[str, str], service: str = "ratings", namespace: str = "bookinfo", **annotations: str):
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": service, "namespace": namespace,
                         "labels": dict(OWNED, **{"fleetmesh.envoy/service": service}),
                         "annotations": {"fleetmesh.envoy/hosts": json.dumps(hosts), **annotations}},
            "spec": {"hosts": [f"{service}.{namespace}.svc.cluster.local"], "location": "MESH_INTERNAL",
                     "resolution": "STATIC", "ports": [{"number": 9080, "protocol": "HTTP", "name": "http"}],
                     "endpoints": [{"address": a, "labels": {"app": service}, "network": "dc-net",
                                    "locality": "eu/zone-1", "weight": 2} for a in hosts.values()]}}


def eps(hosts: dict[str, str], ready: dict[str, bool], service: str = "details", namespace: str = "shop"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-ipv4-0", "namespace": namespace,
                         "labels": dict(OWNED, **{"fleetmesh.envoy/service": service,
                                                  "kubernetes.io/service-name": service}),
                         "annotations": {"fleetmesh.envoy/hosts": json.dumps(hosts)}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready[h], "serving": ready[h]}}
                          for h, a in hosts.items()]}


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------

def test_workload_entry_record_with_connection_and_version():
    obj = we("vm-1", "192.0.2.1", labels={"fleetmesh.envoy/envoy-version": "1.39.3"},
             annotations={"fleetmesh.envoy/host-info": json.dumps({"ansible_host": "vm-1.mgmt", "ansible_port": 2222,
                                                                   "ansible_user": "ops"})})
    (record,) = w.records_from(obj)
    assert record["host"] == "vm-1" and record["address"] == "192.0.2.1" and record["service"] == "reviews"
    assert record["envoy_version"] == "1.39.3" and record["ansible_port"] == 2222
    hv = w.host_vars(record)
    assert hv["ansible_host"] == "vm-1.mgmt" and hv["ansible_user"] == "ops" and hv["ansible_port"] == 2222
    assert hv["fleetmesh_address"] == "192.0.2.1" and hv["fleetmesh_envoy_version"] == "1.39.3"
    assert hv["fleetmesh_ports"] == {"http": 9080} and hv["fleetmesh_network"] == "vm-net"
    assert hv["fleetmesh_registered_objects"] == ["WorkloadEntry bookinfo/reviews-vm-1"]
    assert "ansible_host" not in w.host_vars(record, set_ansible_host=False)


def test_objects_without_ownership_or_host_are_ignored():
    foreign = we("vm-1", "192.0.2.1")
    del foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert w.records_from(foreign) == []
    no_set = we("vm-1", "192.0.2.1")
    del no_set["metadata"]["labels"]["fleetmesh.envoy/registration"]
    assert w.records_from(no_set) == []
    anonymous = we("vm-1", "192.0.2.1")
    del anonymous["metadata"]["annotations"]["fleetmesh.envoy/host"]
    assert w.records_from(anonymous) == []


def test_service_entry_and_slice_records():
    records = w.records_from(se({"db-1": "198.51.100.1", "db-2": "198.51.100.2"},
                                **{"fleetmesh.envoy/host-info": json.dumps({"db-2": {"envoy_version": "1.40.0"}})}))
    assert [(r["host"], r["address"], r["weight"], r["locality"]) for r in records] == [
        ("db-1", "198.51.100.1", 2, "eu/zone-1"), ("db-2", "198.51.100.2", 2, "eu/zone-1")]
    assert records[1]["envoy_version"] == "1.40.0" and "envoy_version" not in records[0]
    slices = w.records_from(eps({"web-1": "203.0.113.1", "web-2": "203.0.113.2"}, {"web-1": True, "web-2": False}))
    assert [(r["host"], r["ready"], r["ports"]) for r in slices] == [
        ("web-1", True, {"http": 8080}), ("web-2", False, {"http": 8080})]
    broken = se({"x": "1"})
    broken["metadata"]["annotations"]["fleetmesh.envoy/hosts"] = "{not json"
    assert w.records_from(broken) == []


def test_merge_prefers_workload_entries_and_ands_readiness():
    records = (w.records_from(eps({"vm-1": "192.0.2.1"}, {"vm-1": False}, service="reviews", namespace="bookinfo"))
               + w.records_from(we("vm-1", "192.0.2.1")))
    (merged,), warnings = w.merge_records(records)
    assert warnings == []
    assert merged["network"] == "vm-net" and merged["ready"] is False
    assert merged["objects"] == ["WorkloadEntry bookinfo/reviews-vm-1", "EndpointSlice bookinfo/reviews-ipv4-0"]
    (merged,), warnings = w.merge_records(w.records_from(we("vm-1", "192.0.2.1"))
                                          + w.records_from(we("vm-1", "192.0.2.9", service="other")))
    assert merged["service"] == "other" and merged["address"] == "192.0.2.9"  # first by kind, then object name
    assert len(warnings) == 1 and "vm-1 is registered for" in warnings[0]


def test_safe_group_names():
    assert w.safe_group("envoy", "1.40.0") == "envoy_1_40_0"
    assert w.safe_group("namespace", "fleet-lab") == "namespace_fleet_lab"


# ---------------------------------------------------------------------------------------------
# The plugin through ansible-inventory, against a stand-in API server
# ---------------------------------------------------------------------------------------------

RESOURCES = {
    "/apis/networking.istio.io/v1": [("workloadentries", "WorkloadEntry"), ("serviceentries", "ServiceEntry")],
    "/apis/discovery.k8s.io/v1": [("endpointslices", "EndpointSlice")],
}


class FakeAPI:
    """Serves discovery and list requests from a dict of objects; records every request."""

    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                api.requests.append((url.path, query))
                body: Any = None
                if url.path in RESOURCES:
                    body = {"kind": "APIResourceList", "groupVersion": url.path[6:],
                            "resources": [{"name": n, "kind": k, "namespaced": True, "verbs": ["list"]}
                                          for n, k in RESOURCES[url.path]]}
                else:
                    for prefix, resources in RESOURCES.items():
                        for plural, kind in resources:
                            parts = url.path[len(prefix):].strip("/").split("/")
                            if url.path.startswith(prefix + "/") and parts[-1] == plural:
                                ns = parts[1] if len(parts) == 3 and parts[0] == "namespaces" else None
                                items = [o for o in api.objects if o["kind"] == kind
                                         and (ns is None or o["metadata"]["namespace"] == ns)]
                                body = {"kind": kind + "List", "metadata": {}, "items": items}
                if body is None:
                    self.send_response(404)
                    body = {"kind": "Status", "code": 404}
                else:
                    self.send_response(200)
                data = json.dumps(body).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def list_selectors(self) -> list[str]:
        return [q["labelSelector"][0] for _p, q in self.requests if "labelSelector" in q]


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    api.thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    return path


def inventory(tmp_path: Path, config: dict[str, Any], *args: str, name: str = "test.workloads.yml",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict({"plugin": "fleetmesh.envoy.workloads"}, **config)))
    full_env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                    ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
                    ANSIBLE_INVENTORY_UNPARSED_FAILED="1", **(env or {}))
    full_env.pop("FLEETMESH_KUBECONFIG", None)
    full_env.update(env or {})
    return subprocess.run(["ansible-inventory", "-i", str(path), *args], env=full_env, capture_output=True, text=True,
                          timeout=120, check=False)


def listed(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def members(data: dict[str, Any], group: str) -> list[str]:
    return sorted(data.get(group, {}).get("hosts", []))


def fleet(api: FakeAPI) -> None:
    foreign = we("stranger", "192.0.2.99")
    foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone-else"
    api.objects = [
        we("vm-1", "192.0.2.1", labels={"fleetmesh.envoy/envoy-version": "1.40.0"}),
        we("vm-2", "192.0.2.2", labels={"fleetmesh.envoy/envoy-version": "1.39.3"}),
        se({"db-1": "198.51.100.1"}),
        eps({"web-1": "203.0.113.1", "web-2": "203.0.113.2"}, {"web-1": True, "web-2": False}),
        foreign,
    ]


def test_plugin_lists_hosts_with_builtin_and_constructed_groups(fake_api, tmp_path):
    fleet(fake_api)
    config = {
        "kubeconfig": str(kubeconfig(tmp_path, fake_api.url)),
        "keyed_groups": [{"key": "fleetmesh_service", "prefix": "", "separator": ""},
                         {"key": "fleetmesh_labels.version | default('none')", "prefix": "version"}],
        "groups": {"not_ready": "not fleetmesh_ready"},
        "compose": {"ansible_user": "'ops'", "mesh_registration_set": "fleetmesh_registration"},
    }
    data = listed(inventory(tmp_path, config, "--list"))
    hostvars = data["_meta"]["hostvars"]
    assert sorted(hostvars) == ["db-1", "vm-1", "vm-2", "web-1", "web-2"]  # not the foreign object
    assert members(data, "service_reviews") == ["vm-1", "vm-2"] == members(data, "reviews")
    assert members(data, "namespace_bookinfo") == ["db-1", "vm-1", "vm-2"]
    assert members(data, "namespace_shop") == ["web-1", "web-2"]
    assert members(data, "network_vm_net") == ["vm-1", "vm-2"] and members(data, "network_dc_net") == ["db-1"]
    assert members(data, "envoy_1_40_0") == ["vm-1"] and members(data, "envoy_1_39_3") == ["vm-2"]
    assert members(data, "version_v1") == ["vm-1", "vm-2"] and members(data, "not_ready") == ["web-2"]
    assert hostvars["vm-1"]["ansible_host"] == "192.0.2.1" and hostvars["vm-1"]["ansible_user"] == "ops"
    assert hostvars["web-2"]["mesh_registration_set"] == "prod" and hostvars["web-2"]["fleetmesh_ready"] is False
    assert set(fake_api.list_selectors()) == {"app.kubernetes.io/managed-by=fleetmesh.envoy"}


def test_values_from_kubernetes_are_never_templated(fake_api, tmp_path):
    marker = tmp_path / "templated"
    evil = "{{ lookup('ansible.builtin.pipe', 'touch " + str(marker) + "') }}"
    fake_api.objects = [we("vm-1", "192.0.2.1", labels={"evil": evil})]
    fake_api.objects[0]["spec"]["labels"]["evil"] = evil
    config = {"kubeconfig": str(kubeconfig(tmp_path, fake_api.url))}
    data = listed(inventory(tmp_path, config, "--list"))
    labels = data["_meta"]["hostvars"]["vm-1"]["fleetmesh_labels"]
    assert labels["evil"] == {"__ansible_unsafe": evil} and labels["app"] == "reviews"  # plain when harmless
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"))
    proc = subprocess.run(["ansible", "-i", str(tmp_path / "test.workloads.yml"), "vm-1", "-m", "ansible.builtin.debug",
                           "-a", "msg={{ fleetmesh_labels.evil }}"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lookup(" in proc.stdout and not marker.exists()


def test_plugin_scopes_sets_namespaces_kinds_and_group_by(fake_api, tmp_path):
    fleet(fake_api)
    config = {"kubeconfig": str(kubeconfig(tmp_path, fake_api.url)), "registration_sets": ["prod", "stage"],
              "namespaces": ["bookinfo"], "kinds": ["WorkloadEntry"], "group_by": ["registration"],
              "set_ansible_host": False}
    data = listed(inventory(tmp_path, config, "--list"))
    assert sorted(data["_meta"]["hostvars"]) == ["vm-1", "vm-2"]
    assert members(data, "registration_prod") == ["vm-1", "vm-2"] and "service_reviews" not in data
    assert "ansible_host" not in data["_meta"]["hostvars"]["vm-1"]
    paths = [p for p, q in fake_api.requests if "labelSelector" in q]
    assert paths == ["/apis/networking.istio.io/v1/namespaces/bookinfo/workloadentries"]
    assert fake_api.list_selectors() == [
        "app.kubernetes.io/managed-by=fleetmesh.envoy,fleetmesh.envoy/registration in (prod,stage)"]


def test_plugin_kubeconfig_from_the_credential_environment(fake_api, tmp_path):
    fleet(fake_api)
    env = {"FLEETMESH_KUBECONFIG": str(kubeconfig(tmp_path, fake_api.url))}
    data = listed(inventory(tmp_path, {"kinds": ["ServiceEntry"]}, "--list", env=env))
    assert sorted(data["_meta"]["hostvars"]) == ["db-1"]


def test_plugin_cache(fake_api, tmp_path):
    fleet(fake_api)
    config = {"kubeconfig": str(kubeconfig(tmp_path, fake_api.url)), "cache": True,
              "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(tmp_path / "cache"),
              "cache_timeout": 600}
    assert sorted(listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"]) == \
        ["db-1", "vm-1", "vm-2", "web-1", "web-2"]
    assert list((tmp_path / "cache").iterdir()), "nothing was cached"
    first = len(fake_api.requests)
    fake_api.objects = [we("vm-1", "192.0.2.1")]
    # Served from the cache: no request, the old hosts.
    assert sorted(listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"]) == \
        ["db-1", "vm-1", "vm-2", "web-1", "web-2"]
    assert len(fake_api.requests) == first
    # --flush-cache reads the API again and refreshes the cache.
    assert sorted(listed(inventory(tmp_path, config, "--list", "--flush-cache"))["_meta"]["hostvars"]) == ["vm-1"]
    assert sorted(listed(inventory(tmp_path, config, "--list"))["_meta"]["hostvars"]) == ["vm-1"]


def test_plugin_errors_name_the_problem(fake_api, tmp_path):
    proc = inventory(tmp_path, {"kubeconfig": str(tmp_path / "missing")}, "--list")
    assert proc.returncode != 0 and "cannot load the kubeconfig" in proc.stderr
    proc = inventory(tmp_path, {"kubeconfig": str(kubeconfig(tmp_path, "http://127.0.0.1:9"))}, "--list")
    assert proc.returncode != 0 and "cannot reach the Kubernetes API" in proc.stderr


def test_plugin_only_claims_its_own_file_names(fake_api, tmp_path):
    fleet(fake_api)
    proc = inventory(tmp_path, {"kubeconfig": str(kubeconfig(tmp_path, fake_api.url))}, "--list", name="other.yml")
    assert proc.returncode != 0  # not parsed (ANSIBLE_INVENTORY_UNPARSED_FAILED)
    assert fake_api.requests == []
