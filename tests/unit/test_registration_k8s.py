"""Unit tests of the request-free parts of plugins/module_utils/_fleetmesh/k8s.py: managed-field comparison,
error messages, and reconcile against a fake client."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import k8s
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg

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


def live_of(obj, fields, manager=k8s.FIELD_MANAGER, **spec_defaults):
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="u1", resourceVersion="7", managedFields=[
        {"manager": manager, "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields}])
    live["spec"].update(spec_defaults)
    return live


def test_fields_of_desired_object_match_what_the_server_records():
    assert k8s.fields_match(SERVICE, SERVICE_FIELDS)
    reordered = {"f:spec": {"f:selector": {}, "f:ports": {'k:{"protocol":"TCP","port":9080}': {
        "f:targetPort": {}, "f:protocol": {}, "f:port": {}, "f:name": {}, ".": {}}}},
        "f:metadata": {"f:labels": {"f:a": {}}}}
    assert k8s.fields_match(SERVICE, reordered)
    extra_label = {"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": SERVICE_FIELDS["f:spec"]}
    assert not k8s.fields_match(SERVICE, extra_label)


def test_unchanged_despite_server_defaults():
    live = live_of(SERVICE, SERVICE_FIELDS, type="ClusterIP", clusterIP="10.96.0.7", sessionAffinity="None")
    assert k8s.unchanged(SERVICE, live)


def test_changed_value_removed_field_other_manager_and_missing_entry_are_not_unchanged():
    live = live_of(SERVICE, SERVICE_FIELDS)
    changed = copy.deepcopy(SERVICE)
    changed["spec"]["ports"][0]["targetPort"] = 9999
    assert not k8s.unchanged(changed, live)
    fewer = copy.deepcopy(SERVICE)
    del fewer["metadata"]["labels"]
    assert not k8s.unchanged(fewer, live)  # the label must be released: an apply is needed
    assert not k8s.unchanged(SERVICE, live_of(SERVICE, SERVICE_FIELDS, manager="kubectl"))


def test_atomic_lists_compare_whole():
    es = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "s", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
          "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"], "conditions": {"ready": True}}],
          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    fields = {"f:addressType": {}, "f:endpoints": {}, "f:ports": {},
              "f:metadata": {"f:labels": {"f:kubernetes.io/service-name": {}}}}
    live = copy.deepcopy(es)
    live["metadata"]["managedFields"] = [{"manager": k8s.FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields}]
    assert k8s.unchanged(es, live)
    live["endpoints"][0]["conditions"]["ready"] = False
    assert not k8s.unchanged(es, live)


def test_conflict_message_names_manager_fields_and_force():
    status = {"kind": "Status", "code": 409, "reason": "Conflict",
              "message": 'Apply failed with 1 conflict: conflict with "other-team": .spec.ports',
              "details": {"causes": [{"reason": "FieldManagerConflict", "message": 'conflict with "other-team"',
                                      "field": '.spec.ports[port=9080,protocol="TCP"].targetPort'}]}}
    err = k8s.conflict_error("Service bookinfo/reviews", status)
    assert 'field manager "other-team" owns .spec.ports[port=9080,protocol="TCP"].targetPort' in err.message
    assert "force: true" in err.message and "Service bookinfo/reviews" in err.message


def test_tokens_are_redacted():
    assert "abc.def" not in k8s._redact("header Authorization: Bearer abc.def failed")


RES = k8s.Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True)


def test_forbidden_message_names_verb_and_resource():
    client = k8s.KubeClient.__new__(k8s.KubeClient)
    client.url = "https://127.0.0.1:1"
    msg = ('endpointslices.discovery.k8s.io "x" is forbidden: User "system:serviceaccount:ns:sa" cannot delete '
           'resource "endpointslices" in API group "discovery.k8s.io" in the namespace "bookinfo"')
    err = client.error(k8s.Response(403, {"message": msg}, ()), "delete", RES, "bookinfo", "x")
    assert ("forbidden: the kubeconfig's identity cannot 'delete' 'endpointslices.discovery.k8s.io' in namespace "
            'bookinfo (it is User "system:serviceaccount:ns:sa"; needed for EndpointSlice bookinfo/x)') in err.message


class FakeClient:
    """Records writes; answers like an API server that accepts everything."""

    def __init__(self, existing=()):
        self.existing = {reg.obj_key(o): o for o in existing}
        self.writes = []
        self.url = "https://fake"

    def map(self, fn, items):
        out = []
        for item in items:
            try:
                out.append((item, fn(item), None))
            except k8s.KubeError as exc:
                out.append((item, None, exc))
        return out

    def get(self, resource, namespace, name):
        return self.existing.get((resource.kind, namespace, name))

    def list(self, resource, namespace=None, metadata_only=False, label_selector=None):
        return [o for k, o in self.existing.items() if k[0] == resource.kind and k[1] == namespace]

    def apply(self, resource, obj, force=False, dry_run=False):
        self.writes.append(("apply", reg.obj_key(obj), dry_run))
        out = copy.deepcopy(obj)
        out["metadata"]["resourceVersion"] = "new"
        return out

    def delete(self, resource, obj, dry_run=False):
        self.writes.append(("delete", reg.obj_key(obj), dry_run))
        return {}


RESOURCES = {"Service": k8s.Resource("", "v1", "Service", "services", True)}


def _svc(name, registration="default"):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {reg.MANAGED_BY_LABEL: reg.MANAGED_BY, reg.SET_LABEL: registration}},
            "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}]}}


def test_reconcile_dry_runs_everything_before_writing_and_prunes_only_owned():
    stale = dict(_svc("stale"), metadata=dict(_svc("stale")["metadata"], uid="u", resourceVersion="1"))
    client = FakeClient()
    out = k8s.reconcile(client, RESOURCES, [_svc("new")], [stale], [], True, "default")
    assert out["counts"] == {"created": 1, "updated": 0, "unchanged": 0, "deleted": 1}
    assert [w[2] for w in client.writes] == [True, True, False, False]  # dry runs first


def test_reconcile_check_mode_writes_nothing_for_real():
    client = FakeClient()
    out = k8s.reconcile(client, RESOURCES, [_svc("new")], [], [], True, "default", check_mode=True, want_diff=True)
    assert out["changed"] and all(w[2] for w in client.writes)
    assert out["diff"][0]["before"] == {} and out["diff"][0]["after"]["metadata"]["name"] == "new"


def test_reconcile_refuses_names_taken_by_unowned_objects_or_other_sets():
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "new", "namespace": "ns", "labels": {}}}
    with pytest.raises(k8s.KubeError, match="is not managed by fleetmesh.envoy.*adopt: true"):
        k8s.reconcile(FakeClient([foreign]), RESOURCES, [_svc("new")], [], [], True, "default")
    other = _svc("new", registration="other")
    client = FakeClient([other])
    with pytest.raises(k8s.KubeError, match='belongs to registration set "other"'):
        k8s.reconcile(client, RESOURCES, [_svc("new")], [], [], True, "default")
    assert [w for w in client.writes if not w[2]] == []  # dry runs only
    out = k8s.reconcile(FakeClient([foreign]), RESOURCES, [_svc("new")], [], [], True, "default", adopt=True)
    assert out["counts"]["updated"] == 1


# -- kubeconfig loading ------------------------------------------------------------------------


def _write_kubeconfig(path, user, server="https://127.0.0.1:6443", context="ctx", extra_cluster=None):
    import base64

    import yaml

    cluster = {"server": server, "certificate-authority-data": base64.b64encode(b"CA PEM").decode()}
    cluster.update(extra_cluster or {})
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def test_kubeconfig_with_static_credentials_is_read_without_the_kubernetes_library(tmp_path, monkeypatch):
    import base64
    import os

    monkeypatch.setattr(k8s, "_library_settings", lambda *a, **k: pytest.fail("library used"))
    (tmp_path / "token").write_text("tok-from-file\n")
    cfg = k8s.load_kubeconfig(str(_write_kubeconfig(tmp_path / "a", {"tokenFile": "token"})), None)
    assert cfg.host == "https://127.0.0.1:6443" and cfg.token == "tok-from-file" and cfg.ca_cert_data == "CA PEM"
    data = {"client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}
    cfg = k8s.load_kubeconfig(str(_write_kubeconfig(tmp_path / "b", data)), None)
    assert open(cfg.cert_file).read() == "CERT" and open(cfg.key_file).read() == "KEY"
    assert os.stat(cfg.key_file).st_mode & 0o077 == 0
    cfg = k8s.load_kubeconfig(str(_write_kubeconfig(tmp_path / "c", {"token": "t"},
                                                    extra_cluster={"insecure-skip-tls-verify": True})), None)
    assert cfg.verify_ssl is False


def test_kubeconfig_env_is_merged_and_contexts_are_checked(tmp_path, monkeypatch):
    first = _write_kubeconfig(tmp_path / "first", {"token": "one"}, context="one")
    second = _write_kubeconfig(tmp_path / "second", {"token": "two"}, server="https://127.0.0.2:6443", context="two")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}:{tmp_path / 'missing'}")
    assert k8s.load_kubeconfig(None, None).token == "one"  # current-context of the first file
    with pytest.raises(k8s.KubeError, match='context "nope" not found'):
        k8s.load_kubeconfig(None, "nope")
    with pytest.raises(k8s.KubeError, match="no such file"):
        k8s.load_kubeconfig(str(tmp_path / "absent"), None)


def test_exec_credentials_go_to_the_kubernetes_library(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(k8s, "_library_settings", lambda path, context, **kw: seen.append((path, context)) or "lib")
    path = str(_write_kubeconfig(tmp_path / "x", {"exec": {"command": "get-token", "apiVersion": "v1"}}))
    assert k8s.load_kubeconfig(path, "ctx") == "lib" and seen == [(path, "ctx")]
