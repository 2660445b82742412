"""The one Kubernetes layer (plugins/module_utils/_fleetmesh/kube/ and reconcile.py) without an API server:
kubeconfig loading and every kind of credential through the kubernetes package (token files, client certificates,
exec plugins with refresh, OIDC, proxies, K8S_AUTH_* environment), managed-field comparison, error messages, and
reconcile against a fake client. tests/integration/test_kube_layer_apiserver.py runs it against the real
kube-apiserver."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import reconcile
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import apply as kube_apply
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube

MANAGER = reg.FIELD_MANAGER
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "reviews", "namespace": "probe", "labels": {"a": "b"}},
    "spec": {"ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}],
             "selector": {"app": "reviews"}},
}
# managedFields exactly as kube-apiserver 1.36 recorded them for SERVICE.
SERVICE_FIELDS = {
    "f:metadata": {"f:labels": {"f:a": {}}},
    "f:spec": {"f:ports": {'k:{"port":9080,"protocol":"TCP"}': {
        ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
        "f:selector": {}},
}


def live_of(obj, fields, manager=MANAGER, **spec_defaults):
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="u1", resourceVersion="7", managedFields=[
        {"manager": manager, "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields}])
    live["spec"].update(spec_defaults)
    return live


# -- the no-op check on managedFields --------------------------------------------------------------


def test_fields_of_desired_object_match_what_the_server_records():
    assert kube_apply.fields_match(SERVICE, SERVICE_FIELDS)
    reordered = {"f:spec": {"f:selector": {}, "f:ports": {'k:{"protocol":"TCP","port":9080}': {
        "f:targetPort": {}, "f:protocol": {}, "f:port": {}, "f:name": {}, ".": {}}}},
        "f:metadata": {"f:labels": {"f:a": {}}}}
    assert kube_apply.fields_match(SERVICE, reordered)
    extra_label = {"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": SERVICE_FIELDS["f:spec"]}
    assert not kube_apply.fields_match(SERVICE, extra_label)


def test_unchanged_despite_server_defaults():
    live = live_of(SERVICE, SERVICE_FIELDS, type="ClusterIP", clusterIP="10.96.0.7", sessionAffinity="None")
    assert kube_apply.unchanged(SERVICE, live, MANAGER)
    assert kube_apply.outcome(live, live, dry_run=False) == "unchanged"


def test_changed_value_removed_field_other_manager_and_missing_entry_are_not_unchanged():
    live = live_of(SERVICE, SERVICE_FIELDS)
    changed = copy.deepcopy(SERVICE)
    changed["spec"]["ports"][0]["targetPort"] = 9999
    assert not kube_apply.unchanged(changed, live, MANAGER)
    fewer = copy.deepcopy(SERVICE)
    del fewer["metadata"]["labels"]
    assert not kube_apply.unchanged(fewer, live, MANAGER)  # the label must be released: an apply is needed
    assert not kube_apply.unchanged(SERVICE, live_of(SERVICE, SERVICE_FIELDS, manager="kubectl"), MANAGER)
    assert not kube_apply.unchanged(SERVICE, live, "another-manager")


def test_atomic_lists_compare_whole():
    es = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "s", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
          "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"], "conditions": {"ready": True}}],
          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    fields = {"f:addressType": {}, "f:endpoints": {}, "f:ports": {},
              "f:metadata": {"f:labels": {"f:kubernetes.io/service-name": {}}}}
    live = copy.deepcopy(es)
    live["metadata"]["managedFields"] = [{"manager": MANAGER, "operation": "Apply", "fieldsV1": fields}]
    assert kube_apply.unchanged(es, live, MANAGER)
    live["endpoints"][0]["conditions"]["ready"] = False
    assert not kube_apply.unchanged(es, live, MANAGER)


def test_outcome_of_an_apply():
    live = {"metadata": {"resourceVersion": "1"}, "spec": {"a": 1}}
    assert kube_apply.outcome(None, {"metadata": {}}, dry_run=True) == "created"
    assert kube_apply.outcome(live, {"metadata": {"resourceVersion": "2"}, "spec": {"a": 1}}, dry_run=False) == \
        "updated"
    assert kube_apply.outcome(live, {"metadata": {"resourceVersion": "1"}, "spec": {"a": 2}}, dry_run=True) == \
        "updated"
    assert kube_apply.outcome(live, {"metadata": {"resourceVersion": "9"}, "spec": {"a": 1}}, dry_run=True) == \
        "unchanged"


# -- messages ----------------------------------------------------------------------------------------


def test_conflict_message_names_manager_fields_and_the_variable():
    status = {"kind": "Status", "code": 409, "reason": "Conflict",
              "message": 'Apply failed with 1 conflict: conflict with "other-team": .spec.ports',
              "details": {"causes": [{"reason": "FieldManagerConflict", "message": 'conflict with "other-team"',
                                      "field": '.spec.ports[port=9080,protocol="TCP"].targetPort'}]}}
    err = kube_apply.conflict_error("Service bookinfo/reviews", status, MANAGER, reconcile.FORCE_HINT)
    assert 'field manager "other-team" owns .spec.ports[port=9080,protocol="TCP"].targetPort' in err.message
    assert "Set mesh_registration_force: true" in err.message and "Service bookinfo/reviews" in err.message


def test_tokens_are_redacted():
    assert "abc.def" not in kube.redact("header Authorization: Bearer abc.def failed")


RES = kube.Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True)


def test_forbidden_message_names_verb_resource_and_the_users_variable_never_a_role_file():
    client = kube.KubeClient.__new__(kube.KubeClient)
    client.url = "https://127.0.0.1:1"
    msg = ('endpointslices.discovery.k8s.io "x" is forbidden: User "system:serviceaccount:ns:sa" cannot delete '
           'resource "endpointslices" in API group "discovery.k8s.io" in the namespace "bookinfo"')
    err = client.error(kube.Response(403, {"message": msg}, ()), "delete", RES, "bookinfo", "x")
    assert ("forbidden: the kubeconfig's identity cannot 'delete' 'endpointslices.discovery.k8s.io' in namespace "
            'bookinfo (it is User "system:serviceaccount:ns:sa"; needed for EndpointSlice bookinfo/x)') in err.message
    assert "fleetmesh_kubeconfig" in err.message and "roles/" not in err.message and ".yml" not in err.message


# -- reconcile against a fake API ---------------------------------------------------------------------


class FakeClient(kube.KubeClient):
    """Answers requests like an API server that accepts everything (unless a verb is denied); records writes."""

    def __init__(self, resources, existing=(), denied=()):  # pylint: disable=super-init-not-called
        self.url = "https://fake"
        self.parallel = 1
        self.requests = 0
        self.by_plural = {r.plural: r for r in resources.values()}
        self.existing = {reg.obj_key(o): o for o in existing}
        self.denied = set(denied)
        self.writes = []
        self.reviews = []

    def request(self, method, path, query=None, body=None, content_type=None, accept="application/json"):
        self.requests += 1
        query = dict(query or [])
        if path.endswith("/selfsubjectaccessreviews"):
            attrs = body["spec"]["resourceAttributes"]
            self.reviews.append((attrs["verb"], attrs["resource"], attrs.get("namespace")))
            return kube.Response(201, {"status": {"allowed": attrs["verb"] not in self.denied}}, ())
        parts = path.strip("/").split("/")
        namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts else None
        if parts[-1] in self.by_plural:
            resource, name = self.by_plural[parts[-1]], None
        else:
            resource, name = self.by_plural[parts[-2]], parts[-1]
        key = (resource.kind, namespace, name)
        if method == "GET" and name is None:
            items = [o for k, o in self.existing.items() if k[0] == resource.kind and k[1] == namespace]
            return kube.Response(200, {"items": items, "metadata": {}}, ())
        if method == "GET":
            found = self.existing.get(key)
            return kube.Response(200 if found else 404, found or {}, ())
        dry = query.get("dryRun") == "All" or (body or {}).get("dryRun") == ["All"]
        self.writes.append(("apply" if method == "PATCH" else "delete", key, dry))
        out = copy.deepcopy(body) if method == "PATCH" else {}
        if method == "PATCH":
            out["metadata"]["resourceVersion"] = "new"
        return kube.Response(200, out, ())


RESOURCES = {"Service": kube.Resource("", "v1", "Service", "services", True)}


def _svc(name, registration="default"):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {reg.MANAGED_BY_LABEL: reg.MANAGED_BY, reg.SET_LABEL: registration}},
            "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}]}}


def test_reconcile_reviews_and_dry_runs_everything_before_writing_and_prunes_only_owned():
    stale = dict(_svc("stale"), metadata=dict(_svc("stale")["metadata"], uid="u", resourceVersion="1"))
    client = FakeClient(RESOURCES)
    out = reconcile.reconcile(client, RESOURCES, [_svc("new")], [stale], [], True, "default")
    assert out["counts"] == {"created": 1, "updated": 0, "unchanged": 0, "deleted": 1}
    assert [w[2] for w in client.writes] == [True, True, False, False]  # dry runs first
    assert sorted(client.reviews) == [("create", "services", "ns"), ("delete", "services", "ns"),
                                      ("get", "services", "ns"), ("patch", "services", "ns")]


def test_a_denied_verb_fails_before_anything_is_written():
    stale = dict(_svc("stale"), metadata=dict(_svc("stale")["metadata"], uid="u", resourceVersion="1"))
    client = FakeClient(RESOURCES, denied=["delete"])
    with pytest.raises(kube.KubeError) as err:
        reconcile.reconcile(client, RESOURCES, [_svc("new")], [stale], [], True, "default")
    assert "forbidden: the kubeconfig's identity cannot 'delete' 'services' in namespace ns" in err.value.message
    assert "needed for Service ns/stale" in err.value.message and "Nothing was changed." in err.value.message
    assert [w for w in client.writes if not w[2]] == []


def test_reconcile_check_mode_writes_nothing_for_real():
    client = FakeClient(RESOURCES)
    out = reconcile.reconcile(client, RESOURCES, [_svc("new")], [], [], True, "default", check_mode=True,
                              want_diff=True)
    assert out["changed"] and all(w[2] for w in client.writes)
    assert out["diff"][0]["before"] == {} and out["diff"][0]["after"]["metadata"]["name"] == "new"


def test_reconcile_refuses_names_taken_by_unowned_objects_or_other_sets():
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "new", "namespace": "ns", "labels": {}}}
    with pytest.raises(kube.KubeError, match="is not managed by fleetmesh.envoy.*mesh_registration_adopt: true"):
        reconcile.reconcile(FakeClient(RESOURCES, [foreign]), RESOURCES, [_svc("new")], [], [], True, "default")
    client = FakeClient(RESOURCES, [_svc("new", registration="other")])
    with pytest.raises(kube.KubeError, match='belongs to registration set "other"'):
        reconcile.reconcile(client, RESOURCES, [_svc("new")], [], [], True, "default")
    assert [w for w in client.writes if not w[2]] == []  # dry runs only
    out = reconcile.reconcile(FakeClient(RESOURCES, [foreign]), RESOURCES, [_svc("new")], [], [], True, "default",
                              adopt=True)
    assert out["counts"]["updated"] == 1


def test_a_noop_sends_no_request():
    labels = {"f:" + reg.MANAGED_BY_LABEL: {}, "f:" + reg.SET_LABEL: {}}
    port = {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}
    live = live_of(_svc("same"), {"f:metadata": {"f:labels": labels},
                                  "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': port}}})
    client = FakeClient(RESOURCES, [live])
    out = reconcile.reconcile(client, RESOURCES, [_svc("same")], [live], [], True, "default")
    assert out["counts"]["unchanged"] == 1 and not out["changed"] and client.requests == 0


class ServedClient(kube.KubeClient):
    """An API server that serves these (group, version, plural) and lists nothing; records each request path."""

    def __init__(self, served):  # pylint: disable=super-init-not-called
        self.url, self.parallel, self.requests, self.paths = "https://fake", 1, 0, []
        self.served = served

    def request(self, method, path, query=None, body=None, content_type=None, accept="application/json"):
        self.requests += 1
        self.paths.append(path)
        parts = path.strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        if len(parts) == (2 if parts[0] == "api" else 3):  # discovery
            found = [{"name": p, "kind": k, "namespaced": True} for (g, v, p), k in self.served.items()
                     if (g, v) == (group, version)]
            return kube.Response(200 if found else 404, {"resources": found}, ())
        if (group, version, parts[-1]) in self.served:
            return kube.Response(200, {"items": [], "metadata": {}}, ())
        return kube.Response(404, {"message": "not found"}, ())


def test_kinds_served_where_expected_need_no_discovery_the_others_are_discovered():
    wanted = [(k, g, v, k in ("Service", "WorkloadEntry")) for k, (g, v, _p) in reg.KINDS.items()]
    served = {("", "v1", "services"): "Service", ("", "v1", "endpoints"): "Endpoints",
              ("discovery.k8s.io", "v1", "endpointslices"): "EndpointSlice",
              ("networking.istio.io", "v1beta1", "workloadentries"): "WorkloadEntry",
              ("networking.istio.io", "v1", "serviceentries"): "ServiceEntry"}
    client = ServedClient(served)
    resources, objects, warnings = reconcile.discover_and_list_owned(client, wanted, "default")
    assert resources == client.discover(wanted) and objects == [] and warnings == []
    assert resources["WorkloadEntry"].version == "v1beta1" and list(resources) == [
        "Service", "Endpoints", "EndpointSlice", "WorkloadEntry", "ServiceEntry"]
    client = ServedClient({k: v for k, v in served.items() if v != "WorkloadEntry"})
    with pytest.raises(kube.KubeError, match="does not serve WorkloadEntry"):
        reconcile.discover_and_list_owned(client, wanted, "default")
    client = ServedClient({("", "v1", "services"): "Service"})
    reconcile.discover_and_list_owned(client, [("Service", "", ["v1"], True)], "default")
    assert client.paths == ["/api/v1/services"]  # one list, no discovery


# -- kubeconfigs and credentials, through the kubernetes package ----------------------------------------


def _write_kubeconfig(path, user, server="https://127.0.0.1:6443", context="ctx", extra_cluster=None):
    cluster = {"server": server}
    if server.startswith("https"):
        cluster["certificate-authority-data"] = base64.b64encode(b"CA PEM").decode()
    cluster.update(extra_cluster or {})
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": f"c-{context}", "cluster": cluster}],
        "users": [{"name": f"u-{context}", "user": user}],
        "contexts": [{"name": context, "context": {"cluster": f"c-{context}", "user": f"u-{context}"}}],
    }))
    return path


def _bearer(cfg):
    return cfg.auth_settings()["BearerToken"]["value"]


def test_kubeconfig_token_file_client_certificate_and_insecure(tmp_path):
    (tmp_path / "token").write_text("tok-from-file\n")
    path = _write_kubeconfig(tmp_path / "a", {"tokenFile": "token"})
    cfg = kube.load_configuration(kube.auth_options({"kubeconfig": str(path)}, environ={}))
    assert cfg.host == "https://127.0.0.1:6443" and _bearer(cfg) == "Bearer tok-from-file"
    assert _bearer(cfg) == _bearer(cfg) == "Bearer tok-from-file"  # also after the package's refresh hook ran
    assert Path(cfg.ssl_ca_cert).read_text() == "CA PEM"
    data = {"client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}
    cfg = kube.load_configuration({"kubeconfig": str(_write_kubeconfig(tmp_path / "b", data))})
    assert Path(cfg.cert_file).read_text() == "CERT" and Path(cfg.key_file).read_text() == "KEY"
    cfg = kube.load_configuration({"kubeconfig": str(_write_kubeconfig(
        tmp_path / "c", {"token": "t"}, extra_cluster={"insecure-skip-tls-verify": True,
                                                       "proxy-url": "http://proxy.invalid:3128"}))})
    assert cfg.verify_ssl is False and cfg.proxy == "http://proxy.invalid:3128"


def test_kubeconfig_env_is_merged_and_contexts_and_files_are_checked(tmp_path, monkeypatch):
    first = _write_kubeconfig(tmp_path / "first", {"token": "one"}, context="one")
    second = _write_kubeconfig(tmp_path / "second", {"token": "two"}, server="https://127.0.0.2:6443", context="two")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}:{tmp_path / 'missing'}")
    assert _bearer(kube.load_configuration({})) == "Bearer one"  # current-context of the first file
    assert kube.load_configuration({"context": "two"}).host == "https://127.0.0.2:6443"
    with pytest.raises(kube.KubeError, match='context "nope" not found \\(contexts: one, two\\)'):
        kube.load_configuration({"context": "nope"})
    with pytest.raises(kube.KubeError, match="no such file"):
        kube.load_configuration({"kubeconfig": str(tmp_path / "absent")})
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube.KubeError, match="no such file, and not running in a cluster"):
        kube.load_configuration({})


def test_options_override_the_kubeconfig_and_a_host_with_a_token_needs_none(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    cfg = kube.load_configuration({"host": "https://10.0.0.1:6443", "api_key": "abc", "validate_certs": False,
                                   "proxy": "socks5h://127.0.0.1:1080", "no_proxy": "10.0.0.0/8"})
    assert cfg.host == "https://10.0.0.1:6443" and _bearer(cfg) == "Bearer abc" and cfg.verify_ssl is False
    assert (cfg.proxy, cfg.no_proxy) == ("socks5h://127.0.0.1:1080", "10.0.0.0/8")
    path = _write_kubeconfig(tmp_path / "k", {"token": "from-file"})
    cfg = kube.load_configuration({"kubeconfig": str(path), "api_key": "explicit"})
    assert _bearer(cfg) == "Bearer explicit"  # and no refresh hook puts the file's token back
    assert _bearer(cfg) == "Bearer explicit"


def test_k8s_auth_environment_like_kubernetes_core(tmp_path):
    path = _write_kubeconfig(tmp_path / "k", {"token": "env-file"})
    env = {"K8S_AUTH_KUBECONFIG": str(path), "K8S_AUTH_VERIFY_SSL": "no", "K8S_AUTH_IMPERSONATE_GROUPS": "a,b",
           "K8S_AUTH_PROXY_HEADERS_PROXY_BASIC_AUTH": "u:p", "K8S_AUTH_REQUEST_TIMEOUT": "5"}
    auth = kube.auth_options({"context": None, "request_timeout": None}, environ=env)
    assert auth["kubeconfig"] == str(path) and auth["validate_certs"] is False
    assert auth["impersonate_groups"] == ["a", "b"] and auth["proxy_headers"] == {"proxy_basic_auth": "u:p"}
    assert auth["request_timeout"] == 5
    assert kube.auth_options({"kubeconfig": "/given"}, environ=env)["kubeconfig"] == "/given"  # options win
    cfg = kube.load_configuration(auth)
    assert _bearer(cfg) == "Bearer env-file" and cfg.verify_ssl is False
    assert cfg.proxy_headers["proxy-authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


def _settings_of_package(auth):
    """What the package's Configuration holds for these options, in PlainSettings' terms (file contents)."""
    cfg = kube.load_configuration(auth)
    bearer = cfg.auth_settings().get("BearerToken", {}).get("value")

    def read(name):
        return Path(name).read_text() if name else None
    return {"host": cfg.host, "verify_ssl": cfg.verify_ssl, "tls_server_name": cfg.tls_server_name,
            "authorization": bearer or None, "ca": read(cfg.ssl_ca_cert) or cfg.ca_cert_data,
            "cert": read(cfg.cert_file), "key": read(cfg.key_file)}


def _plain(auth):
    settings = kube.plain_settings(auth)
    assert settings is not None, auth

    def read(name):
        return Path(name).read_text() if name else None
    return {"host": settings.host, "verify_ssl": settings.verify_ssl, "tls_server_name": settings.tls_server_name,
            "authorization": settings.authorization, "ca": read(settings.ssl_ca_cert) or settings.ca_cert_data,
            "cert": read(settings.cert_file), "key": read(settings.key_file)}


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def test_static_credentials_are_read_without_the_package_to_the_same_settings(tmp_path, monkeypatch):
    """Tokens and client certificates (files or data) are read by the layer itself, exactly as the package reads
    them (importing the package is a quarter of a no-op run)."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "token").write_text("tok-from-file\n")
    (tmp_path / "ca.pem").write_text("CA FILE")
    (tmp_path / "c.pem").write_text("CERT FILE")
    (tmp_path / "k.pem").write_text("KEY FILE")
    data = {"client-certificate-data": _b64("CERT"), "client-key-data": _b64("KEY")}
    files = {"client-certificate": "c.pem", "client-key": "k.pem"}
    kubeconfigs = [
        _write_kubeconfig(tmp_path / "a", {"token": "t1"}),
        _write_kubeconfig(tmp_path / "b", {"tokenFile": "token"}, extra_cluster={"certificate-authority": "ca.pem"}),
        _write_kubeconfig(tmp_path / "c", data),
        _write_kubeconfig(tmp_path / "d", dict(files, token="t2"), extra_cluster={
            "insecure-skip-tls-verify": True, "tls-server-name": "kubernetes.default"}),
        _write_kubeconfig(tmp_path / "e", {"token": "t3"}, server="http://127.0.0.1:8080"),
        _write_kubeconfig(tmp_path / "f", {"token": "", "tokenFile": "token"}),  # the token key wins, empty
        _write_kubeconfig(tmp_path / "g", {}),
    ]
    for path in kubeconfigs:
        for extra in ({}, {"api_key": "explicit", "validate_certs": False},
                      {"host": "https://10.0.0.1:6443", "ca_cert": str(tmp_path / "ca.pem"),
                       "client_cert": str(tmp_path / "c.pem"), "client_key": str(tmp_path / "k.pem")}):
            auth = dict(extra, kubeconfig=str(path))
            assert _plain(auth) == _settings_of_package(auth), (path.name, extra)
    second = _write_kubeconfig(tmp_path / "two", {"token": "t4"}, context="two")
    text = yaml.safe_load(second.read_text())
    first = yaml.safe_load(kubeconfigs[0].read_text())
    merged = dict(first, contexts=first["contexts"] + text["contexts"], clusters=first["clusters"] + text["clusters"],
                  users=first["users"] + text["users"])
    (tmp_path / "merged").write_text(json.dumps(merged))  # JSON is YAML
    auth = {"kubeconfig": str(tmp_path / "merged"), "context": "two"}
    assert _plain(auth) == _settings_of_package(auth) and _plain(auth)["authorization"] == "Bearer t4"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfigs[2]))
    assert _plain({}) == _settings_of_package({})
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    direct = {"host": "https://10.0.0.1:6443", "api_key": "abc", "validate_certs": False}
    assert _plain(direct) == _settings_of_package(direct)


def test_every_other_kubeconfig_goes_to_the_package(tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    plain = _write_kubeconfig(tmp_path / "plain", {"token": "t"})
    noca = _write_kubeconfig(tmp_path / "noca", {"token": "t"})
    config = yaml.safe_load(noca.read_text())
    config["clusters"][0]["cluster"] = {"server": "https://127.0.0.1:6443", "certificate-authority": "missing.pem"}
    noca.write_text(yaml.safe_dump(config))
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n  - {name: x\n")
    others = [
        {"kubeconfig": str(_write_kubeconfig(tmp_path / "exec", {"exec": {"command": "x"}}))},
        {"kubeconfig": str(_write_kubeconfig(tmp_path / "oidc", {"auth-provider": {"name": "oidc"}}))},
        {"kubeconfig": str(_write_kubeconfig(tmp_path / "basic", {"username": "u", "password": "p"}))},
        {"kubeconfig": str(_write_kubeconfig(tmp_path / "proxy", {"token": "t"},
                                             extra_cluster={"proxy-url": "http://proxy.invalid:3128"}))},
        {"kubeconfig": str(noca)},
        {"kubeconfig": str(plain), "proxy": "http://proxy.invalid:3128"},
        {"kubeconfig": str(plain), "persist_config": True},
        {"kubeconfig": str(plain), "context": "nope"},
        {"kubeconfig": str(tmp_path / "absent")},
        {"kubeconfig": str(broken)},
    ]
    for auth in others:
        assert kube.plain_settings(auth) is None, auth
    monkeypatch.setenv("KUBECONFIG", f"{plain}:{plain}")
    assert kube.plain_settings({}) is None  # several files: merged by the package
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert kube.plain_settings({"kubeconfig": str(plain)}) is None


def test_a_plain_kubeconfig_does_not_import_the_package(tmp_path):
    path = _write_kubeconfig(tmp_path / "k", {"token": "t"})
    code = ("import sys; from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client; "
            f"c = client.client_from_params({{'kubeconfig': {str(path)!r}}}, environ={{}}); "
            "print(type(c._cfg).__name__, 'kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["PlainSettings", "False"], out


class FakeAPI:
    """Plain-HTTP stand-in API server on loopback that records each request's authorization, impersonation
    and request line (a proxy receives the absolute URL)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                api.seen.append({"line": self.requestline, "authorization": self.headers.get("Authorization"),
                                 "groups": self.headers.get_all("Impersonate-Group"),
                                 "user": self.headers.get("Impersonate-User"),
                                 "proxy": self.headers.get("Proxy-Authorization")})
                body = json.dumps({"kind": "APIResourceList", "resources": [
                    {"name": "services", "kind": "Service", "namespaced": True}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    api.thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def test_exec_plugin_token_is_sent_and_refreshed_when_it_expires(tmp_path, fake_api):
    counter = tmp_path / "runs"
    plugin = tmp_path / "get-token.py"
    plugin.write_text(
        "import datetime, json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60))\n"
        "json.dump({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "           'status': {'token': 'exec-%d' % n, 'expirationTimestamp': soon.strftime('%Y-%m-%dT%H:%M:%SZ')}},"
        " sys.stdout)\n")
    path = _write_kubeconfig(tmp_path / "k", {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                       "command": sys.executable, "args": [str(plugin)],
                                                       "interactiveMode": "Never"}}, server=fake_api.url)
    client = kube.client_from_params({"kubeconfig": str(path)}, parallel=1, environ={})
    client.request("GET", "/api/v1")
    client.request("GET", "/api/v1")
    tokens = [s["authorization"] for s in fake_api.seen]
    # expiring within the library's 5-minute skew: the plugin runs again for every request
    assert tokens[0].startswith("Bearer exec-") and tokens[0] != tokens[1], tokens


def _jwt(claims: dict[str, Any]) -> str:
    def seg(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{seg({'alg': 'none'})}.{seg(claims)}.c2ln"


def test_oidc_auth_provider_token_is_sent(tmp_path, fake_api):
    token = _jwt({"iss": "https://issuer.invalid", "exp": int(time.time()) + 3600, "sub": "alice"})
    path = _write_kubeconfig(tmp_path / "k", {"auth-provider": {"name": "oidc", "config": {
        "client-id": "kubectl", "id-token": token, "idp-issuer-url": "https://issuer.invalid"}}}, server=fake_api.url)
    kube.client_from_params({"kubeconfig": str(path)}, environ={}).request("GET", "/api/v1")
    assert fake_api.seen[-1]["authorization"] == f"Bearer {token}"


def test_impersonation_headers(tmp_path, fake_api):
    path = _write_kubeconfig(tmp_path / "k", {"token": "t"}, server=fake_api.url)
    client = kube.client_from_params({"kubeconfig": str(path), "impersonate_user": "bob",
                                      "impersonate_groups": ["g1", "g2"]}, environ={})
    client.discover([("Service", "", ["v1"], True)])
    assert fake_api.seen[-1]["user"] == "bob" and fake_api.seen[-1]["groups"] == ["g1", "g2"]


def test_requests_go_through_the_proxy_unless_no_proxy(tmp_path, fake_api):
    path = _write_kubeconfig(tmp_path / "k", {"token": "t"}, server="http://api.fleetmesh.invalid:6443",
                             extra_cluster={"proxy-url": fake_api.url})
    client = kube.client_from_params({"kubeconfig": str(path), "proxy_headers": {"proxy_basic_auth": "u:p"}},
                                     environ={})
    client.request("GET", "/api/v1")
    assert fake_api.seen[-1]["line"] == "GET http://api.fleetmesh.invalid:6443/api/v1 HTTP/1.1"
    assert fake_api.seen[-1]["proxy"] == "Basic " + base64.b64encode(b"u:p").decode()
    path = _write_kubeconfig(tmp_path / "direct", {"token": "t"}, server=fake_api.url,
                             extra_cluster={"proxy-url": "http://127.0.0.1:9"})
    kube.client_from_params({"kubeconfig": str(path), "no_proxy": "127.0.0.0/8"}, environ={}).request("GET", "/api/v1")
    assert fake_api.seen[-1]["line"] == "GET /api/v1 HTTP/1.1"


def test_missing_library_is_said_like_every_collection_says_it(monkeypatch):
    monkeypatch.setattr(kube, "HAS_KUBERNETES", False)
    monkeypatch.setattr(kube, "KUBERNETES_IMPORT_ERROR", "Traceback ... No module named 'kubernetes'")
    with pytest.raises(kube.KubeError) as err:
        kube.client_from_params({})
    assert "Failed to import the required Python library (kubernetes)" in err.value.message
    assert "No module named" in err.value.details["exception"]


def test_unreachable_api_names_the_url(tmp_path):
    path = _write_kubeconfig(tmp_path / "k", {"token": "secret-token"}, server="http://127.0.0.1:9")
    with pytest.raises(kube.KubeError) as err:
        kube.client_from_params({"kubeconfig": str(path)}, environ={}).request("GET", "/api/v1")
    assert err.value.message == "cannot reach the Kubernetes API at http://127.0.0.1:9: connection refused"
