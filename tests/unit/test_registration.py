"""Unit tests of plugins/module_utils/_fleetmesh/registration.py: input checks and object building (no API)."""

from __future__ import annotations

import copy
import json

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg

API = {
    "Service": "v1",
    "Endpoints": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "WorkloadEntry": "networking.istio.io/v1",
    "WorkloadGroup": "networking.istio.io/v1",
    "ServiceEntry": "networking.istio.io/v1",
    "HTTPProxy": "projectcontour.io/v1",
}


def ep(host, address, service="reviews", namespace="bookinfo", **extra):
    out = {"host": host, "address": address, "service": service, "namespace": namespace, "ports": {"http": 9080}}
    out.update(extra)
    return out


def cfg(endpoints, **params):
    params.setdefault("shapes", ["workloadentry"])
    config, errors = reg.normalize(dict(params, endpoints=endpoints))
    assert errors == []
    return config


def errors_of(endpoints, **params):
    params.setdefault("shapes", ["workloadentry"])
    config, errors = reg.normalize(dict(params, endpoints=endpoints))
    assert config is None
    return errors


def by_key(objs):
    return {reg.obj_key(o): o for o in objs}


# -- input checks ------------------------------------------------------------------------------


def test_valid_input_normalizes_addresses_ports_and_labels():
    config = cfg([ep("vm-1", "2001:DB8:0::1", ports={"grpc": "9090", "http": 9080}, labels={"version": "v1"})])
    (one,) = config.endpoints
    assert one.address == "2001:db8::1" and one.family == "IPv6"
    assert list(one.ports.items()) == [("http", 9080), ("grpc", 9090)]  # sorted by port
    assert reg.effective_labels(one) == {"app": "reviews", "version": "v1"}


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (ep("vm-1", "192.0.2.1", service="Reviews"),
         'endpoints[0].service (fleetmesh_service of host vm-1): "Reviews" is not a valid DNS-1035 label'),
        (ep("vm-1", "192.0.2.1", namespace="book_info"),
         'endpoints[0].namespace (fleetmesh_namespace of host vm-1): "book_info" is not a valid DNS-1123 label'),
        (ep("vm-1", "192.0.2.300"),
         'endpoints[0].address (fleetmesh_address of host vm-1): "192.0.2.300" is not a valid IP address'),
        (ep("vm-1", None), "endpoints[0].address (fleetmesh_address of host vm-1): is not set; allowed: "),
        (ep("vm-1", "192.0.2.1", ports={"http": 70000}),
         "fleetmesh_ports of host vm-1).http: 70000 is not a valid port; allowed: integer 1-65535"),
        (ep("vm-1", "192.0.2.1", ports={"web": 80}), "is not a valid Istio port name"),
        (ep("vm-1", "192.0.2.1", weight=0), "0 is not a valid endpoint weight"),
        (ep("vm-1", "192.0.2.1", locality="a/b/c/d"), '"a/b/c/d" is not a valid locality'),
        (ep("vm-1", "192.0.2.1", labels={"bad key!": "x"}), "is not a valid label key"),
        (ep("vm-1", "192.0.2.1", healthy="yes"), '"yes" is not a boolean'),
    ],
)
def test_bad_input_names_variable_host_value_and_what_is_allowed(endpoint, expected):
    errors = errors_of([endpoint])
    assert any(expected in e for e in errors), errors
    assert all("; allowed: " in e for e in errors), errors


def test_service_name_may_start_with_a_digit_only_without_a_kubernetes_service():
    assert errors_of([ep("vm-1", "192.0.2.1", service="1st")], shapes=["endpointslice"])
    assert cfg([ep("vm-1", "192.0.2.1", service="1st")], shapes=["serviceentry"])


def test_duplicate_addresses_in_one_service_name_both_hosts():
    errors = errors_of([ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.1"), ep("vm-3", "192.0.2.1", service="other")])
    assert len(errors) == 1
    assert "service bookinfo/reviews" in errors[0] and "(vm-1, vm-2)" in errors[0] and "192.0.2.1" in errors[0]


def test_every_error_is_reported_at_once():
    errors = errors_of([ep("vm-1", "bad", service="Bad"), ep("vm-2", "192.0.2.2", ports={"http": 0})])
    assert len(errors) == 3


def test_hosts_listed_twice_and_inconsistent_service_settings_are_refused():
    assert any("is listed twice" in e for e in errors_of([ep("vm-1", "192.0.2.1"), ep("vm-1", "192.0.2.2")]))
    errors = errors_of([ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.2", ports={"http": 8080})])
    assert any("fleetmesh_ports (hosts of service bookinfo/reviews)" in e and "differ between hosts" in e
               for e in errors)
    errors = errors_of([ep("vm-1", "192.0.2.1", labels={"app": "a"}), ep("vm-2", "192.0.2.2", labels={"app": "b"})])
    assert any("fleetmesh_labels.app" in e for e in errors)


def test_option_checks():
    assert any("combines 'workloadentry' and 'endpointslice'" in e
               for e in errors_of([], shapes=["workloadentry", "endpointslice"]))
    assert any("max_endpoints_per_slice: 0" in e for e in errors_of([], max_endpoints_per_slice=0))
    assert any("registration (the registration set" in e for e in errors_of([], registration="Not_A_Label"))
    assert any("httpproxies: is not set" in e for e in errors_of([], shapes=["httpproxy"]))
    assert any("shapes[0]" in e for e in errors_of([], shapes=["nope"]))


def test_absent_needs_hosts_only():
    config = cfg([{"host": "vm-1"}], state="absent")
    assert [e.host for e in config.endpoints] == ["vm-1"]
    assert errors_of([{"host": ""}], state="absent")


def test_host_labels_are_dns_labels_and_distinct():
    assert reg.host_label("vm-1") == "vm-1"
    odd = [reg.host_label(h) for h in ("VM_1.example.com", "vm_1.example.com", "x" * 80)]
    assert len(set(odd)) == 3
    for label in odd:
        assert len(label) <= 63 and label == label.lower() and not label.startswith("-")


def test_duplicate_object_names_are_refused():
    config = cfg([ep("b-c", "192.0.2.1", service="a"), ep("c", "192.0.2.2", service="a-b")])
    errors = reg.duplicate_names(reg.build_full(config, API))
    assert errors and "WorkloadEntry bookinfo/a-b-c: built twice (hosts b-c and c)" in errors[0]


# -- shapes ------------------------------------------------------------------------------------


def test_workloadentry_shape():
    config = cfg([ep("vm-1", "192.0.2.1", labels={"version": "v1"}, network="net", locality="us/z1", weight=3,
                     service_account="reviews"),
                  ep("vm-2", "192.0.2.2", healthy=False, service_account="reviews")],
                 workload_group=True, registration="set-a")
    objs = by_key(reg.build_full(config, API))
    assert set(objs) == {("Service", "bookinfo", "reviews"), ("WorkloadGroup", "bookinfo", "reviews"),
                         ("WorkloadEntry", "bookinfo", "reviews-vm-1")}  # unhealthy vm-2 left out
    we = objs[("WorkloadEntry", "bookinfo", "reviews-vm-1")]
    assert we["apiVersion"] == "networking.istio.io/v1"
    assert we["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "fleetmesh.envoy",
                                        "fleetmesh.envoy/registration": "set-a", "fleetmesh.envoy/service": "reviews"}
    assert we["metadata"]["annotations"] == {"fleetmesh.envoy/host": "vm-1"}
    assert we["spec"] == {"address": "192.0.2.1", "ports": {"http": 9080},
                          "labels": {"app": "reviews", "version": "v1"}, "network": "net", "locality": "us/z1",
                          "weight": 3, "serviceAccount": "reviews"}
    svc = objs[("Service", "bookinfo", "reviews")]
    assert svc["spec"] == {"ports": [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 9080,
                                      "targetPort": 9080}],
                           "selector": {"app": "reviews"}}
    wg = objs[("WorkloadGroup", "bookinfo", "reviews")]
    assert wg["spec"]["template"] == {"ports": {"http": 9080}, "labels": {"app": "reviews"},
                                      "network": "net", "serviceAccount": "reviews"}


PROBE = {"httpGet": {"path": "/ready", "port": 9080, "host": "127.0.0.1"}, "periodSeconds": 2,
         "failureThreshold": 1}


def test_auto_registered_hosts_get_no_workload_entry_and_the_group_carries_the_probe():
    """istiod writes the WorkloadEntry of a VM whose sidecar auto-registers; the VM stays in the Service's hosts."""
    config = cfg([ep("vm-1", "192.0.2.1", service_account="reviews", auto_register=True),
                  ep("vm-2", "192.0.2.2", service_account="reviews")],
                 workload_group=True, workload_group_probe=PROBE)
    objs = by_key(reg.build_full(config, API))
    assert set(objs) == {("Service", "bookinfo", "reviews"), ("WorkloadGroup", "bookinfo", "reviews"),
                         ("WorkloadEntry", "bookinfo", "reviews-vm-2")}
    assert objs[("WorkloadGroup", "bookinfo", "reviews")]["spec"]["probe"] == PROBE
    group_hosts = "fleetmesh.envoy/hosts"  # the hosts istiod registers from the group, for partial runs
    assert json.loads(objs[("WorkloadGroup", "bookinfo", "reviews")]["metadata"]["annotations"][group_hosts]) == {
        "vm-1": "192.0.2.1"}
    # A partial run that switches vm-2 over removes the WorkloadEntry this module wrote for it, keeps vm-1.
    live = _live(reg.build_full(config, API))
    switched = cfg([ep("vm-2", "192.0.2.2", service_account="reviews", auto_register=True)], workload_group=True,
                   workload_group_probe=PROBE, prune=False)
    plan = reg.plan(switched, API, live)
    assert [reg.obj_key(o) for o in plan.delete] == [("WorkloadEntry", "bookinfo", "reviews-vm-2")]
    group = by_key(plan.desired)[("WorkloadGroup", "bookinfo", "reviews")]
    assert json.loads(group["metadata"]["annotations"][group_hosts]) == {"vm-1": "192.0.2.1", "vm-2": "192.0.2.2"}

    def after(live, plan):
        gone = {reg.obj_key(o) for o in plan.delete} | {reg.obj_key(o) for o in plan.desired}
        return _live([o for o in live if reg.obj_key(o) not in gone] + list(plan.desired))

    # Removing vm-2 keeps the service (vm-1 is still registered, by istiod) and takes vm-2 off the group.
    live = after(live, plan)
    plan = reg.plan(cfg([{"host": "vm-2"}], state="absent"), API, live)
    assert plan.delete == []
    group = by_key(plan.desired)[("WorkloadGroup", "bookinfo", "reviews")]
    assert json.loads(group["metadata"]["annotations"][group_hosts]) == {"vm-1": "192.0.2.1"}
    assert group["spec"]["probe"] == PROBE
    # The last one: the service goes with its group.
    plan = reg.plan(cfg([{"host": "vm-1"}], state="absent"), API, after(live, plan))
    assert sorted(reg.obj_key(o) for o in plan.delete) == [("Service", "bookinfo", "reviews"),
                                                           ("WorkloadGroup", "bookinfo", "reviews")]
    # No probe: none in the group.
    plain = by_key(reg.build_full(cfg([ep("vm-1", "192.0.2.1", auto_register=True)], workload_group=True), API))
    assert "probe" not in plain[("WorkloadGroup", "bookinfo", "reviews")]["spec"]


def test_auto_register_and_probe_need_a_workload_group_and_a_valid_probe():
    errors = errors_of([ep("vm-1", "192.0.2.1", auto_register=True)], workload_group_probe=PROBE)
    assert any(e.startswith("endpoints[0].auto_register (istio_sidecar_auto_register of host vm-1): true, but no "
                            "WorkloadGroup") and "allowed: workload_group true (mesh_registration_workload_group)" in e
               for e in errors), errors
    assert any(e.startswith("workload_group_probe (mesh_registration_workload_group_probe): given but no "
                            "WorkloadGroup") for e in errors), errors
    errors = errors_of([ep("vm-1", "192.0.2.1", auto_register="yes")], workload_group=True,
                       workload_group_probe={"httpGet": {"port": 70000}, "tcpSocket": {"port": 1},
                                             "periodSeconds": 0, "bogus": 1})
    text = "; ".join(errors)
    for part in ('endpoints[0].auto_register (istio_sidecar_auto_register of host vm-1): "yes" is not a boolean',
                 "workload_group_probe (mesh_registration_workload_group_probe).bogus: 1 is not a known field",
                 "has 2 handlers (httpGet, tcpSocket)",
                 "workload_group_probe (mesh_registration_workload_group_probe).periodSeconds: 0 is not allowed; "
                 "allowed: integer 1-2147483647",
                 "workload_group_probe (mesh_registration_workload_group_probe).httpGet.port: 70000 is not a valid "
                 "port"):
        assert part in text, text


def test_serviceentry_shape_matches_the_seed():
    config = cfg([ep("vm-1", "192.168.99.129", service="vmhttp", namespace="default", ports={"http": 8080},
                     labels={"app": "vmhttp", "version": "v1"})], shapes=["serviceentry"])
    (se,) = reg.build_full(config, API)
    assert se["kind"] == "ServiceEntry" and se["metadata"]["name"] == "vmhttp"
    assert se["spec"] == {
        "hosts": ["vmhttp.default.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 8080, "protocol": "HTTP", "name": "http"}],
        "endpoints": [{"address": "192.168.99.129", "ports": {"http": 8080},
                       "labels": {"app": "vmhttp", "version": "v1"}}],
    }
    assert json.loads(se["metadata"]["annotations"]["fleetmesh.envoy/hosts"]) == {"vm-1": "192.168.99.129"}


def test_endpointslice_shape_splits_per_family_and_size_and_marks_unhealthy_not_ready():
    eps = [ep(f"vm-{i}", f"192.0.2.{i}", healthy=i != 3, locality=f"r/zone-{i}") for i in range(1, 8)]
    eps.append(ep("vm-v6", "2001:db8::1"))
    config = cfg(eps, shapes=["endpointslice"], max_endpoints_per_slice=3, legacy_endpoints=True)
    objs = by_key(reg.build_full(config, API))
    slices = sorted(k[2] for k in objs if k[0] == "EndpointSlice")
    assert slices == ["reviews-ipv4-0", "reviews-ipv4-1", "reviews-ipv4-2", "reviews-ipv6-0"]
    first = objs[("EndpointSlice", "bookinfo", "reviews-ipv4-0")]
    assert first["addressType"] == "IPv4"
    assert first["metadata"]["labels"]["kubernetes.io/service-name"] == "reviews"
    assert first["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "fleetmesh.envoy"
    assert [e["addresses"] for e in first["endpoints"]] == [["192.0.2.1"], ["192.0.2.2"], ["192.0.2.3"]]
    assert first["endpoints"][2]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert first["endpoints"][0]["zone"] == "zone-1" and first["endpoints"][0]["hostname"] == "vm-1"
    assert first["ports"] == [{"name": "http", "port": 9080, "protocol": "TCP", "appProtocol": "http"}]
    assert len(objs[("EndpointSlice", "bookinfo", "reviews-ipv4-2")]["endpoints"]) == 1
    svc = objs[("Service", "bookinfo", "reviews")]
    assert "selector" not in svc["spec"]
    legacy = objs[("Endpoints", "bookinfo", "reviews")]
    assert legacy["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    (subset,) = legacy["subsets"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["192.0.2.3"]
    assert len(subset["addresses"]) == 7


def test_httpproxy_mixes_vm_and_kubernetes_backends():
    proxies = [{"name": "reviews", "namespace": "bookinfo", "fqdn": "reviews.example.com",
                "routes": [{"prefix": "/api", "services": [{"name": "reviews", "weight": 80},
                                                           {"name": "reviews-k8s", "port": 9080, "weight": 20}]}]}]
    config = cfg([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"], httpproxies=proxies)
    proxy = by_key(reg.build_full(config, API))[("HTTPProxy", "bookinfo", "reviews")]
    assert proxy["spec"] == {"virtualhost": {"fqdn": "reviews.example.com"},
                             "routes": [{"conditions": [{"prefix": "/api"}],
                                         "services": [{"name": "reviews", "port": 9080, "weight": 80},
                                                      {"name": "reviews-k8s", "port": 9080, "weight": 20}],
                                         "healthCheckPolicy": {"path": "/healthz", "intervalSeconds": 2,
                                                               "timeoutSeconds": 1, "unhealthyThresholdCount": 2,
                                                               "healthyThresholdCount": 1}}]}


def test_httpproxy_checks():
    base = {"name": "p", "namespace": "bookinfo", "fqdn": "x.example.com"}
    bad_port = dict(base, routes=[{"services": [{"name": "reviews", "port": 1234}]}])
    assert any("is not a port of VM service bookinfo/reviews" in e
               for e in errors_of([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"],
                                  httpproxies=[bad_port]))
    no_port = dict(base, routes=[{"services": [{"name": "k8s-only"}]}])
    plan = reg.plan(cfg([], shapes=["httpproxy"], httpproxies=[no_port]), API, [])
    assert plan.errors == ["HTTPProxy bookinfo/p route / service k8s-only (mesh_registration_httpproxies): port is "
                           "not set; allowed: integer 1-65535 (may be left out only for a VM service with one port)"]
    vm_without_service = dict(base, routes=[{"services": [{"name": "reviews"}]}])
    assert any("no Kubernetes Service is built" in e
               for e in errors_of([ep("vm-1", "192.0.2.1")], shapes=["serviceentry", "httpproxy"],
                                  httpproxies=[vm_without_service]))


# -- partial runs ------------------------------------------------------------------------------


def _live(objs):
    """What the API server would return: the built objects plus server fields."""
    out = copy.deepcopy(objs)
    for i, obj in enumerate(out):
        obj["metadata"]["uid"] = f"uid-{i}"
    return out


def test_full_plan_prunes_everything_not_desired():
    config = cfg([ep("vm-1", "192.0.2.1")])
    plan = reg.plan(config, API, [])
    assert plan.mode == "full" and plan.prune_all and plan.delete == []


def test_partial_upsert_keeps_other_hosts_entries():
    everyone = [ep(f"vm-{i}", f"192.0.2.{i}") for i in range(1, 6)]
    shapes = ["serviceentry", "endpointslice"]
    live = _live(reg.build_full(cfg(everyone, shapes=shapes, max_endpoints_per_slice=2), API))
    changed = [ep("vm-2", "192.0.2.22"), ep("vm-9", "192.0.2.9")]
    plan = reg.plan(cfg(changed, shapes=shapes, prune=False, max_endpoints_per_slice=2), API, live)
    assert plan.mode == "merge" and not plan.prune_all
    objs = by_key(plan.desired)
    se = objs[("ServiceEntry", "bookinfo", "reviews")]
    assert [e["address"] for e in se["spec"]["endpoints"]] == [
        "192.0.2.1", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.9", "192.0.2.22"]
    hosts = json.loads(se["metadata"]["annotations"]["fleetmesh.envoy/hosts"])
    assert hosts == {"vm-1": "192.0.2.1", "vm-2": "192.0.2.22", "vm-3": "192.0.2.3", "vm-4": "192.0.2.4",
                     "vm-5": "192.0.2.5", "vm-9": "192.0.2.9"}
    slices = [o for o in plan.desired if o["kind"] == "EndpointSlice"]
    assert sum(len(s["endpoints"]) for s in slices) == 6 and len(slices) == 3
    assert plan.delete == []


def test_absent_removes_exactly_the_given_hosts_and_a_service_with_its_last_host():
    eps = [ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.2"), ep("solo", "192.0.2.9", service="ratings")]
    live = _live(reg.build_full(cfg(eps, workload_group=True), API)
                 + reg.build_full(cfg(eps, shapes=["serviceentry"]), API))
    plan = reg.plan(cfg([{"host": "vm-2"}, {"host": "solo"}], state="absent"), API, live)
    deleted = sorted(reg.obj_key(o) for o in plan.delete)
    assert deleted == [("Service", "bookinfo", "ratings"), ("ServiceEntry", "bookinfo", "ratings"),
                       ("WorkloadEntry", "bookinfo", "ratings-solo"), ("WorkloadEntry", "bookinfo", "reviews-vm-2"),
                       ("WorkloadGroup", "bookinfo", "ratings")]
    (se,) = plan.desired
    assert [e["address"] for e in se["spec"]["endpoints"]] == ["192.0.2.1"]


def test_absent_removes_the_last_slice_entries_and_shrinks_slices():
    eps = [ep(f"vm-{i}", f"192.0.2.{i}") for i in range(1, 5)]
    live = _live(reg.build_full(cfg(eps, shapes=["endpointslice"], max_endpoints_per_slice=2), API))
    plan = reg.plan(cfg([{"host": "vm-3"}, {"host": "vm-4"}], state="absent", shapes=["endpointslice"],
                        max_endpoints_per_slice=2), API, live)
    assert [reg.obj_key(o)[2] for o in plan.delete] == ["reviews-ipv4-1"]
    (kept,) = [o for o in plan.desired if o["kind"] == "EndpointSlice"]
    assert [e["addresses"][0] for e in kept["endpoints"]] == ["192.0.2.1", "192.0.2.2"]


def test_a_host_moving_service_in_a_partial_run_leaves_its_old_service():
    live = _live(reg.build_full(cfg([ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.2")], shapes=["serviceentry"]),
                                API))
    plan = reg.plan(cfg([ep("vm-2", "192.0.2.2", service="ratings")], shapes=["serviceentry"], prune=False),
                    API, live)
    objs = by_key(plan.desired)
    assert [e["address"] for e in objs[("ServiceEntry", "bookinfo", "reviews")]["spec"]["endpoints"]] == ["192.0.2.1"]
    assert [e["address"] for e in objs[("ServiceEntry", "bookinfo", "ratings")]["spec"]["endpoints"]] == ["192.0.2.2"]


def test_objects_of_other_sets_are_not_owned():
    obj = reg.build_full(cfg([ep("vm-1", "192.0.2.1")], registration="a"), API)[0]
    assert reg.owned(obj, "a") and not reg.owned(obj, "b")
    plan = reg.plan(cfg([{"host": "vm-1"}], state="absent", registration="b"), API, [obj])
    assert plan.delete == [] and plan.desired == []


def test_endpoints_as_json_text_are_checked_the_same_way():
    text = json.dumps([ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.2")])
    config, errors = reg.normalize({"endpoints_json": text, "shapes": ["workloadentry"]})
    assert errors == [] and [e.host for e in config.endpoints] == ["vm-1", "vm-2"]
    _config, errors = reg.normalize({"endpoints_json": "[{", "shapes": ["workloadentry"]})
    assert errors and errors[0].startswith("endpoints_json: is not valid JSON")
    _config, errors = reg.normalize({"endpoints_json": json.dumps([ep("vm-1", "192.0.2.1", adress="x")])})
    assert any('endpoints[0] (host vm-1): "adress" is not a known field' in e for e in errors), errors


# -- host-info: connection details and Envoy version for the workloads inventory ---------------

INFO = {"ansible_host": "vm-1.example.com", "ansible_port": "2222", "ansible_user": "fleetadmin",
        "envoy_version": "1.40.0"}


def test_host_info_is_recorded_on_workload_entries_with_only_the_keys_set():
    config = cfg([ep("vm-1", "192.0.2.1", host_info=INFO),
                  ep("vm-2", "192.0.2.2", host_info={"ansible_host": "192.0.2.2", "ansible_port": None,
                                                     "ansible_user": "", "envoy_version": "1.39.3"}),
                  ep("vm-3", "192.0.2.3"), ep("vm-4", "192.0.2.4", host_info={})])
    objs = by_key(reg.build_full(config, API))
    annotations = {k[2]: o["metadata"]["annotations"] for k, o in objs.items() if k[0] == "WorkloadEntry"}
    assert annotations["reviews-vm-1"] == {
        "fleetmesh.envoy/host": "vm-1",
        "fleetmesh.envoy/host-info": '{"ansible_host":"vm-1.example.com","ansible_port":2222,'
                                     '"ansible_user":"fleetadmin","envoy_version":"1.40.0"}'}
    assert json.loads(annotations["reviews-vm-2"]["fleetmesh.envoy/host-info"]) == {
        "ansible_host": "192.0.2.2", "envoy_version": "1.39.3"}
    assert annotations["reviews-vm-3"] == {"fleetmesh.envoy/host": "vm-3"}
    assert annotations["reviews-vm-4"] == {"fleetmesh.envoy/host": "vm-4"}


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"ansible_port": 70000},
         "endpoints[0].host_info.ansible_port (ansible_port of host vm-1): 70000 is not a valid port; "
         "allowed: integer 1-65535"),
        ({"ansible_port": True}, "host_info.ansible_port (ansible_port of host vm-1): true is not a valid port"),
        ({"envoy_version": "1.40"},
         'endpoints[0].host_info.envoy_version (envoy_version of host vm-1): "1.40" is not a valid version; '
         "allowed: version X.Y.Z"),
        ({"envoy_version": 1.4}, "host_info.envoy_version (envoy_version of host vm-1): 1.4 is not a valid version"),
        ({"ansible_user": "fleet admin"},
         'endpoints[0].host_info.ansible_user (ansible_user of host vm-1): "fleet admin" is not allowed; '
         "allowed: a non-empty string without spaces"),
        ({"ansible_host": ["a"]}, 'host_info.ansible_host (ansible_host of host vm-1): ["a"] is not allowed'),
        ("vm-1:22", 'endpoints[0].host_info (ansible_host, ansible_port, ansible_user and envoy_version of host '
                    'vm-1): "vm-1:22" is not a mapping'),
    ],
)
def test_bad_host_info_names_variable_host_value_and_what_is_allowed(info, expected):
    errors = errors_of([ep("vm-1", "192.0.2.1", host_info=info)])
    assert any(expected in e for e in errors), errors
    assert all("; allowed: " in e for e in errors), errors


def test_host_info_refuses_secrets_without_showing_them():
    errors = errors_of([ep("vm-1", "192.0.2.1", host_info={"ansible_password": "s3cret", "ansible_user": "u"})])
    assert len(errors) == 1, errors
    assert 'endpoints[0].host_info of host vm-1: "ansible_password" is not a known field' in errors[0]
    assert "s3cret" not in errors[0] and "never passwords" in errors[0]


def test_host_info_on_service_entries_and_slices_by_host_for_the_hosts_of_each_object():
    eps = [ep(f"vm-{i}", f"192.0.2.{i}", host_info={"ansible_host": f"192.0.2.{i}", "envoy_version": "1.40.0"})
           for i in range(1, 4)]
    eps[1] = dict(eps[1], healthy=False)
    eps.append(ep("vm-4", "192.0.2.4"))  # no host_info: not in the annotation
    se = by_key(reg.build_full(cfg(eps, shapes=["serviceentry"]), API))[("ServiceEntry", "bookinfo", "reviews")]
    infos = json.loads(se["metadata"]["annotations"]["fleetmesh.envoy/host-info"])
    assert infos == {"vm-1": {"ansible_host": "192.0.2.1", "envoy_version": "1.40.0"},
                     "vm-3": {"ansible_host": "192.0.2.3", "envoy_version": "1.40.0"}}  # vm-2 not ready: left out
    slices = by_key(reg.build_full(cfg(eps, shapes=["endpointslice"], max_endpoints_per_slice=2), API))
    first = json.loads(slices[("EndpointSlice", "bookinfo", "reviews-ipv4-0")]["metadata"]["annotations"]
                       ["fleetmesh.envoy/host-info"])
    assert set(first) == {"vm-1", "vm-2"}  # not-ready hosts stay in slices, with their host-info
    second = slices[("EndpointSlice", "bookinfo", "reviews-ipv4-1")]["metadata"]["annotations"]
    assert json.loads(second["fleetmesh.envoy/hosts"]) == {"vm-3": "192.0.2.3", "vm-4": "192.0.2.4"}
    assert set(json.loads(second["fleetmesh.envoy/host-info"])) == {"vm-3"}


@pytest.mark.parametrize("shapes", [["serviceentry"], ["endpointslice"]])
def test_partial_run_keeps_other_hosts_host_info_and_replaces_the_given_hosts(shapes):
    def info(version):
        return {"ansible_host": "h", "ansible_user": "fleetadmin", "envoy_version": version}

    everyone = [ep(f"vm-{i}", f"192.0.2.{i}", host_info=info("1.39.3")) for i in range(1, 4)]
    live = _live(reg.build_full(cfg(everyone, shapes=shapes), API))
    upgraded = [ep("vm-2", "192.0.2.2", host_info=info("1.40.0"))]
    plan = reg.plan(cfg(upgraded, shapes=shapes, prune=False), API, live)
    (agg,) = [o for o in plan.desired if o["kind"] in ("ServiceEntry", "EndpointSlice")]
    infos = json.loads(agg["metadata"]["annotations"]["fleetmesh.envoy/host-info"])
    assert {h: i["envoy_version"] for h, i in infos.items()} == {"vm-1": "1.39.3", "vm-2": "1.40.0", "vm-3": "1.39.3"}
    # The same desired state gives the same object, in a partial run as in a complete one (no flapping).
    full = by_key(reg.build_full(cfg([everyone[0], upgraded[0], everyone[2]], shapes=shapes), API))
    assert agg == full[reg.obj_key(agg)]
    # Removing a host removes its host-info; the others' stays.
    plan = reg.plan(cfg([{"host": "vm-3"}], shapes=shapes, state="absent"), API, live)
    (agg,) = [o for o in plan.desired if o["kind"] in ("ServiceEntry", "EndpointSlice")]
    assert set(json.loads(agg["metadata"]["annotations"]["fleetmesh.envoy/host-info"])) == {"vm-1", "vm-2"}


def test_host_infos_read_back_and_broken_annotations_are_ignored():
    config = cfg([ep("vm-1", "192.0.2.1", host_info=INFO)], shapes=["workloadentry", "serviceentry"])
    for obj in reg.build_full(config, API):
        if obj["kind"] in ("WorkloadEntry", "ServiceEntry"):
            assert reg.host_infos_of(obj) == {"vm-1": dict(INFO, ansible_port=2222)}
    broken = {"kind": "ServiceEntry", "metadata": {"annotations": {"fleetmesh.envoy/host-info": "{"}}}
    assert reg.host_infos_of(broken) == {}


def test_host_info_too_large_for_one_object_is_left_off_with_a_warning():
    info = {"ansible_host": "x" * 200, "ansible_user": "fleetadmin", "envoy_version": "1.40.0"}
    eps = [ep(f"vm-{i:04d}", f"10.0.{i >> 8}.{i & 255}", host_info=info) for i in range(1200)]
    config = cfg(eps, shapes=["serviceentry"])
    (se,) = reg.build_full(config, API)
    assert "fleetmesh.envoy/host-info" not in se["metadata"]["annotations"]
    assert len(json.loads(se["metadata"]["annotations"]["fleetmesh.envoy/hosts"])) == 1200
    (warning,) = reg.host_info_warnings(config, [se])
    assert warning.startswith("ServiceEntry bookinfo/reviews: the fleetmesh.envoy/host-info annotation")
    small = cfg(eps[:10], shapes=["serviceentry"])
    assert reg.host_info_warnings(small, reg.build_full(small, API)) == []


@pytest.mark.parametrize("shapes", [["workloadentry"], ["serviceentry"], ["endpointslice"]])
def test_host_info_reads_back_through_the_workloads_inventory(shapes):
    from ansible_collections.fleetmesh.envoy.plugins.inventory import workloads

    eps = [ep("vm-1", "192.0.2.1", host_info=INFO),
           ep("vm-2", "192.0.2.2", host_info={"ansible_host": "192.0.2.2", "envoy_version": "1.39.3"}),
           ep("vm-3", "192.0.2.3")]
    records = [r for obj in reg.build_full(cfg(eps, shapes=shapes), API) for r in workloads.records_from(obj)]
    hosts, warnings = workloads.merge_records(records)
    hostvars = {r["host"]: workloads.host_vars(r) for r in hosts}
    assert warnings == [] and set(hostvars) == {"vm-1", "vm-2", "vm-3"}
    keys = ("ansible_host", "ansible_port", "ansible_user", "fleetmesh_envoy_version")
    assert {k: hostvars["vm-1"][k] for k in keys} == {
        "ansible_host": "vm-1.example.com", "ansible_port": 2222, "ansible_user": "fleetadmin",
        "fleetmesh_envoy_version": "1.40.0"}
    assert hostvars["vm-2"]["fleetmesh_envoy_version"] == "1.39.3" and "ansible_user" not in hostvars["vm-2"]
    assert hostvars["vm-3"]["ansible_host"] == "192.0.2.3" and "fleetmesh_envoy_version" not in hostvars["vm-3"]


# -- data path: the port that answers on the VM (docs/data-path.md) ------------------------------------


def test_endpoint_ports_are_the_target_the_service_keeps_the_app_port():
    eps = [ep(f"vm-{i}", f"192.0.2.{i}", ports={"http": 8080, "grpc-api": 9090},
              endpoint_ports={"http": 10000, "grpc-api": 10001}) for i in (1, 2)]
    objs = by_key(reg.build_full(cfg(eps, shapes=["endpointslice"]), API))
    svc = objs[("Service", "bookinfo", "reviews")]
    assert svc["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 8080, "targetPort": 10000},
        {"name": "grpc-api", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c", "port": 9090, "targetPort": 10001}]
    (slice_,) = [o for k, o in objs.items() if k[0] == "EndpointSlice"]
    assert slice_["ports"] == [{"name": "http", "port": 10000, "protocol": "TCP", "appProtocol": "http"},
                               {"name": "grpc-api", "port": 10001, "protocol": "TCP",
                                "appProtocol": "kubernetes.io/h2c"}]
    objs = by_key(reg.build_full(cfg(eps, shapes=["workloadentry", "serviceentry"]), API))
    assert objs[("WorkloadEntry", "bookinfo", "reviews-vm-1")]["spec"]["ports"] == {"http": 10000, "grpc-api": 10001}
    se = objs[("ServiceEntry", "bookinfo", "reviews")]["spec"]
    assert [p["number"] for p in se["ports"]] == [8080, 9090]
    assert se["endpoints"][0]["ports"] == {"http": 10000, "grpc-api": 10001}


def test_endpoint_ports_default_to_the_app_port_and_are_checked():
    objs = by_key(reg.build_full(cfg([ep("vm-1", "192.0.2.1", ports={"https": 8443, "tls-db": 5000})],
                                     shapes=["endpointslice"]), API))
    ports = objs[("Service", "bookinfo", "reviews")]["spec"]["ports"]
    want = [(5000, 5000, "https"), (8443, 8443, "https")]
    assert [(p["port"], p["targetPort"], p["appProtocol"]) for p in ports] == want
    errors = errors_of([ep("vm-1", "192.0.2.1", endpoint_ports={"grpc": 10000}),
                        ep("vm-2", "192.0.2.2", endpoint_ports={"http": 0})])
    assert any("endpoints[0].endpoint_ports (mesh_registration_endpoint_ports of host vm-1).grpc: 10000 names no port "
               "of fleetmesh_ports" in e for e in errors), errors
    assert any("endpoint_ports (mesh_registration_endpoint_ports of host vm-2).http: 0 is not a valid port" in e
               for e in errors), errors
    errors = errors_of([ep("vm-1", "192.0.2.1", endpoint_ports={"http": 10000}), ep("vm-2", "192.0.2.2")])
    assert any("mesh_registration_endpoint_ports (hosts of service bookinfo/reviews)" in e and "differ" in e
               for e in errors), errors


# -- HTTPProxy: protocols, unknown keys, health checks, the last host leaving ---------------------------


def _proxy(services, **route):
    return [{"name": "web", "namespace": "bookinfo", "fqdn": "web.example.com",
             "routes": [dict(route, prefix="/", services=services)]}]


def test_httpproxy_protocol_validation_and_health_check():
    proxies = _proxy([{"name": "reviews", "protocol": "tls",
                       "validation": {"caSecret": "mesh-ca", "subjectName": "spiffe://cluster.local/ns/bookinfo/sa/r"}},
                      {"name": "grpc-k8s", "port": 9090, "protocol": "h2c", "weight": 0}],
                     health_check={"path": "/ready", "interval_seconds": 5})
    config = cfg([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"], httpproxies=proxies,
                 httpproxy_health_check={"unhealthy_threshold": 3})
    plan = reg.plan(config, API, [])
    proxy = by_key(plan.desired)[("HTTPProxy", "bookinfo", "web")]
    (route,) = proxy["spec"]["routes"]
    assert route["services"] == [
        {"name": "reviews", "port": 9080, "protocol": "tls",
         "validation": {"caSecret": "mesh-ca", "subjectName": "spiffe://cluster.local/ns/bookinfo/sa/r"}},
        {"name": "grpc-k8s", "port": 9090, "weight": 0, "protocol": "h2c"}]
    assert route["healthCheckPolicy"] == {"path": "/ready", "intervalSeconds": 5, "timeoutSeconds": 1,
                                          "unhealthyThresholdCount": 3, "healthyThresholdCount": 1}
    assert proxy["metadata"]["annotations"] == {"fleetmesh.envoy/vm-services": '["reviews"]'}
    off = cfg([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"],
              httpproxies=_proxy([{"name": "reviews"}]), httpproxy_health_check=False)
    route = by_key(reg.plan(off, API, []).desired)[("HTTPProxy", "bookinfo", "web")]["spec"]["routes"][0]
    assert "healthCheckPolicy" not in route


def test_httpproxy_unknown_keys_and_bad_protocols_are_refused_naming_the_variable():
    proxies = [{"name": "web", "namespace": "bookinfo", "fqdn": "web.example.com", "tls": True,
                "routes": [{"prefix": "/", "timeout": 3,
                            "services": [{"name": "reviews", "protocl": "h2c"},
                                         {"name": "k8s", "port": 80, "protocol": "grpc"},
                                         {"name": "k8s2", "port": 80,
                                          "validation": {"caSecret": "ca", "subjectName": "x"}}],
                            "health_check": {"path": "healthz", "every": 3}}]}]
    errors = errors_of([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"], httpproxies=proxies)
    text = "\n".join(errors)
    assert ('httpproxies[0] (mesh_registration_httpproxies): key "tls" is not known; allowed keys: name, namespace, '
            'fqdn, ingress_class_name, tls_secret_name, routes') in text
    assert ('httpproxies[0].routes[0] (mesh_registration_httpproxies): key "timeout" is not known; allowed keys: '
            'prefix, services, health_check') in text
    assert ('httpproxies[0].routes[0].services[0] (mesh_registration_httpproxies): key "protocl" is not known; '
            'allowed keys: name, port, weight, protocol, validation') in text
    assert 'httpproxies[0].routes[0].services[1].protocol: "grpc" is not an upstream protocol of Contour' in text
    assert "httpproxies[0].routes[0].services[2].validation" in text and "without a TLS protocol" in text
    assert 'health_check.path: "healthz" is not a path' in text and 'key "every" is not known' in text


def _registered(config):
    return _live(reg.plan(config, API, []).desired)


def test_last_host_leaving_takes_the_service_out_of_routes_and_keeps_the_split():
    proxies = _proxy([{"name": "reviews", "weight": 80}, {"name": "reviews-k8s", "port": 9080, "weight": 20}])
    full = dict(shapes=["endpointslice", "httpproxy"], httpproxies=proxies)
    live = _registered(cfg([ep("vm-1", "192.0.2.1"), ep("vm-2", "192.0.2.2")], **full))
    # Decommission (state=absent, no httpproxies given): vm-1 leaves, vm-2 stays: no change to the proxy.
    plan = reg.plan(cfg([{"host": "vm-1"}], state="absent", shapes=["endpointslice"]), API, live)
    assert not any(o["kind"] == "HTTPProxy" for o in plan.desired + plan.delete) and plan.notes == []
    # Both leave: the Service goes, the route keeps only the Kubernetes Service.
    plan = reg.plan(cfg([{"host": "vm-1"}, {"host": "vm-2"}], state="absent", shapes=["endpointslice"]), API, live)
    assert ("Service", "bookinfo", "reviews") in by_key(plan.delete)
    proxy = by_key(plan.desired)[("HTTPProxy", "bookinfo", "web")]
    assert proxy["spec"]["routes"][0]["services"] == [{"name": "reviews-k8s", "port": 9080, "weight": 20}]
    assert plan.notes == ["HTTPProxy bookinfo/web: route / no longer sends to reviews (no host left); it keeps "
                          "reviews-k8s"]
    # A complete run with no host of the service: same result, and it stays so on the next run.
    plan = reg.plan(cfg([ep("vm-9", "192.0.2.9", service="other")], **full), API, live)
    proxy = by_key(plan.desired)[("HTTPProxy", "bookinfo", "web")]
    assert [s["name"] for s in proxy["spec"]["routes"][0]["services"]] == ["reviews-k8s"]
    assert proxy["metadata"]["annotations"]["fleetmesh.envoy/vm-services"] == '["reviews"]'
    later = _live(plan.desired)
    plan = reg.plan(cfg([ep("vm-9", "192.0.2.9", service="other")], **full), API, later)
    route = by_key(plan.desired)[("HTTPProxy", "bookinfo", "web")]["spec"]["routes"][0]
    assert [s["name"] for s in route["services"]] == ["reviews-k8s"]
    # A host comes back: so does the route.
    plan = reg.plan(cfg([ep("vm-1", "192.0.2.1")], **full), API, later)
    route = by_key(plan.desired)[("HTTPProxy", "bookinfo", "web")]["spec"]["routes"][0]
    assert [s["name"] for s in route["services"]] == ["reviews", "reviews-k8s"]


def test_last_host_leaving_deletes_a_proxy_left_without_routes():
    full = dict(shapes=["endpointslice", "httpproxy"], httpproxies=_proxy([{"name": "reviews"}]))
    live = _registered(cfg([ep("vm-1", "192.0.2.1")], **full))
    plan = reg.plan(cfg([{"host": "vm-1"}], state="absent", shapes=["endpointslice"]), API, live)
    assert ("HTTPProxy", "bookinfo", "web") in by_key(plan.delete)
    assert not any(o["kind"] == "HTTPProxy" for o in plan.desired)
    assert plan.notes == ["HTTPProxy bookinfo/web: route / removed: its only services reviews have no host left",
                          "HTTPProxy bookinfo/web: no route left, so the HTTPProxy is deleted"]


def test_httpproxy_retry_policy():
    config = cfg([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"],
                 httpproxies=_proxy([{"name": "reviews"}], retry_policy={"count": 3, "per_try_timeout": "2s",
                                                                         "retry_on": ["connect-failure", "reset"]}))
    route = by_key(reg.plan(config, API, []).desired)[("HTTPProxy", "bookinfo", "web")]["spec"]["routes"][0]
    assert route["retryPolicy"] == {"count": 3, "perTryTimeout": "2s", "retryOn": ["connect-failure", "reset"]}
    errors = errors_of([ep("vm-1", "192.0.2.1")], shapes=["endpointslice", "httpproxy"],
                       httpproxies=_proxy([{"name": "reviews"}], retry_policy={"count": 0, "retry_on": ["oops"],
                                                                               "budget": 1}))
    assert any('retry_policy (mesh_registration_httpproxies): key "budget" is not known' in e for e in errors)
    assert any("retry_policy.count: 0 is not allowed" in e for e in errors)
    assert any("retry_policy.retry_on" in e for e in errors)
