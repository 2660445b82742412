"""The envoy role on the embedded lab (2 Debian 12 VMs, 1 EL 9 emulation), over SSH.

Covers issue 4's lab acceptance: version and process, admin on loopback only, a request
through the listener, hot restart on a route change with zero failed requests, a config
Envoy rejects, a checksum mismatch, and bad input that changes nothing on the host."""

from __future__ import annotations

import json

import pytest

from tests.conftest import need
from tests.integration.labutil import LAB_HOSTS, Traffic, extra, get, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab]

SNAPSHOT = ("find /opt/fleetmesh /etc/fleetmesh /etc/systemd/system/fleetmesh-envoy@.service "
            "/usr/libexec/fleetmesh-envoy-run \\( -type f -o -type l \\) -printf '%p %s %m %u %T@\\n' "
            "2>/dev/null | sort | sha256sum; "
            "readlink /opt/fleetmesh/envoy/current")


def server_info(host: str | None = None) -> dict[str, dict]:
    cmd = "curl -s http://127.0.0.1:9901/server_info"
    out = on_hosts(cmd, host or "lab")
    infos = {}
    for h, text in out.items():
        d = json.loads(text)
        infos[h] = {"version": d["version"].split("/")[1], "state": d["state"],
                    "epoch": int(d["command_line_options"]["restart_epoch"])}
    return infos


@pytest.fixture(scope="module")
def envoy_lab():
    need("podman", "run 'make setup' (apt-get install podman runc)")
    lab_up(3)
    app = playbook("lab_app.yml")
    assert app.rc == 0, app.out[-3000:]
    first = playbook("envoy.yml")
    assert first.rc == 0, first.out[-5000:]
    return first


def test_second_run_changes_nothing(envoy_lab):
    again = playbook("envoy.yml")
    assert again.rc == 0, again.out[-3000:]
    assert set(again.recap) - {"localhost"} == set(LAB_HOSTS)  # localhost: the host-pattern check play
    assert again.changed() == 0, again.out[-3000:]


def test_version_process_admin_and_listener(envoy_lab):
    infos = server_info()
    assert set(infos) == set(LAB_HOSTS)
    for host, info in infos.items():
        assert info["version"] == "1.40.0" and info["state"] == "LIVE", (host, info)
    out = on_hosts("/opt/fleetmesh/envoy/current/envoy --version | grep -o '/1[.][0-9]*[.][0-9]*/'; "
                   "systemctl is-active fleetmesh-envoy@main; ps -o user= -C envoy | sort -u; "
                   "ss -Hltn '( sport = :9901 )' | awk '{print $4}' | sort -u")
    for host, text in out.items():
        lines = text.split()
        assert lines == ["/1.40.0/", "active", "envoy", "127.0.0.1:9901"], (host, text)
    for host, ip in LAB_HOSTS.items():
        status, body = get(f"http://{ip}:10000/")
        assert status == 200 and body.strip() == f"hello from {host}", (host, status, body)
        # The admin interface is not reachable from outside the VM.
        assert get(f"http://{ip}:9901/server_info")[0] == 0


def test_route_change_hot_restarts_with_zero_failures(envoy_lab):
    before = server_info()
    routes = [{"prefix": "/extra", "direct_response": {"status": 200, "body": "extra route"}},
              {"prefix": "/", "cluster": "local_app"}]
    listeners = [{"name": "ingress", "address": "0.0.0.0", "port": 10000, "routes": routes}]
    urls = [f"http://{ip}:10000/" for ip in LAB_HOSTS.values()]
    with Traffic(urls, max_seconds=120) as traffic:
        run = playbook("envoy.yml", *extra(envoy_listeners=listeners))
    assert run.rc == 0, run.out[-4000:]
    assert traffic.failed == 0 and traffic.ok > 50, (traffic.ok, traffic.failed, traffic.errors)
    after = server_info()
    for host in LAB_HOSTS:
        assert after[host]["epoch"] == before[host]["epoch"] + 1, (host, before[host], after[host])
    for ip in LAB_HOSTS.values():
        assert get(f"http://{ip}:10000/extra") == (200, "extra route")
    # Back to the defaults: one more hot restart, and then nothing to do.
    back = playbook("envoy.yml")
    assert back.rc == 0 and playbook("envoy.yml").changed() == 0


def test_config_envoy_rejects_keeps_the_old_one_serving(envoy_lab):
    snap = on_hosts(SNAPSHOT)
    epochs = server_info()
    bad = [{"name": "ingress", "address": "0.0.0.0", "port": 10000,
            "routes": [{"prefix": "/", "cluster": "local_app"}],
            "http_filters": [{"name": "envoy.filters.http.no_such_filter",
                              "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"}}]}]
    run = playbook("envoy.yml", *extra(envoy_listeners=bad))
    assert run.rc != 0
    assert "Envoy rejected the configuration" in run.out
    assert "no_such_filter" in run.out or "Didn't find a registered implementation" in run.out, run.out[-3000:]
    assert on_hosts(SNAPSHOT) == snap
    assert server_info() == epochs
    for ip in LAB_HOSTS.values():
        assert get(f"http://{ip}:10000/")[0] == 200


def test_checksum_mismatch_replaces_nothing(envoy_lab):
    on_hosts("rm -rf /opt/fleetmesh/envoy/1.39.3")
    snap = on_hosts(SNAPSHOT)
    run = playbook("envoy.yml", *extra(envoy_version="1.39.3", envoy_sha256="0" * 64))
    assert run.rc != 0
    assert "sha256" in run.out and "nothing was replaced" in run.out, run.out[-3000:]
    assert on_hosts(SNAPSHOT) == snap
    assert all(i["version"] == "1.40.0" and i["state"] == "LIVE" for i in server_info().values())


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"envoy_version": "1.40"}, ["envoy_version", "1.40", "X.Y.Z"]),
        ({"envoy_listeners": [{"name": "ingress", "port": 0, "routes": [{"prefix": "/", "cluster": "local_app"}]}]},
         ["envoy_listeners[0].port", "0", "1-65535"]),
        ({"envoy_listeners": [{"name": "ingress", "port": 70000, "routes": [{"prefix": "/", "cluster": "local_app"}]}]},
         ["envoy_listeners[0].port", "70000", "1-65535"]),
        ({"envoy_admin_port": 70000}, ["envoy_admin_port", "70000", "1-65535"]),
        ({"envoy_install_method": "docker"}, ["envoy_install_method", "docker", "artifact", "url", "package"]),
        ({"envoy_admin_address": "0.0.0.0"}, ["envoy_admin_address", "0.0.0.0", "envoy_admin_allow_non_loopback"]),
    ],
    ids=["bad-version", "port-0", "port-70000", "admin-port-70000", "unknown-method", "admin-not-loopback"],
)
def test_bad_input_fails_clearly_and_changes_nothing(envoy_lab, override, needles):
    snap = on_hosts(SNAPSHOT)
    run = playbook("envoy.yml", *extra(**override))
    assert run.rc != 0
    for needle in needles:
        assert needle in run.out, (needle, run.out[-3000:])
    assert on_hosts(SNAPSHOT) == snap
    # The runbook's first task checks every host at once (run once): the hosts it did not run as have no recap row.
    assert run.recap and set(run.recap) <= {"localhost", *LAB_HOSTS}, run.recap
    assert all(row["changed"] == 0 for row in run.recap.values()), run.recap
