"""After offboarding (side_effect offboard.yml = playbooks/sidecar_offboard.yml): no trace of the sidecar is left,
and bad input is rejected with a clear error (variable, value, what is allowed) before any change.

The reference is what prepare.yml recorded before onboarding (traces-before-<host>.json: the files and units the
package and the role create, anything named *istio*, files of a deleted user, the whole /etc/hosts, the
istio-proxy user and group, the package databases). The bad-input runs use the clean host on purpose: a run
that got as far as installing the package would leave traces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from playbook import EPHEMERAL, PROJECT, TESTS, VARS, ansible_playbook, sidecar_vars  # noqa: E402

SIDECAR = PROJECT / "playbooks" / "sidecar.yml"
OFFBOARD = PROJECT / "playbooks" / "sidecar_offboard.yml"


@pytest.fixture(scope="module")
def before(host):
    name = host.backend.get_hostname()
    path = EPHEMERAL / f"traces-before-{name}.json"
    assert path.exists(), f"prepare.yml did not record {path}"
    return json.loads(path.read_text())


def traces(host):
    with host.sudo():
        result = host.run("python3 -c %s", (TESTS / "traces.py").read_text())
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def after(host):
    """The traces right after offboarding, read once for the checks that only look (the later tests change the host)."""
    return traces(host)


def assert_as_before(host, before, now=None):
    now = traces(host) if now is None else now
    diff = {key: {"before": before.get(key), "now": now.get(key)}
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)}
    assert not diff, json.dumps(diff, indent=1)


def test_offboarding_leaves_no_trace(before, after):
    assert_as_before(None, before, after)


def test_no_hosts_block_and_the_hosts_file_is_the_original(before, after):
    assert after["hosts_marker_lines"] == [] and after["hosts"] == before["hosts"], after["hosts"]


def test_nothing_of_the_package_or_the_role_is_left(after):
    now = after
    assert now["paths"] == [], now["paths"]
    assert (now["user"], now["group"], now["dpkg"], now["rpm"]) == ("", "", "", [])


def test_offboarding_again_changes_nothing(host, before):
    run = ansible_playbook(OFFBOARD, {"target": "all"})
    assert run.rc == 0, run.out[-3000:]
    assert run.changed == 0, run.recap
    assert_as_before(host, before)


# Each run is a whole ansible-playbook run, so the problems that the same check reports together share one run:
# the model (preflight: every model problem at once, before the role checks), the role variables (preflight: every
# value at once), the role's own directory check, and the TokenRequest on the controller.
BAD_INPUT = {
    "model: bad service port, missing service account": (
        {"fleetmesh_ports": {"http": 70000}, "fleetmesh_service_account": None},
        ["fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535",
         "fleetmesh_service_account: is not set; allowed: DNS-1123"]),
    "role variables: bad CIDR, CIDR with host bits (comma separated), bad inbound port": (
        {"istio_sidecar_service_cidr": "10.96.0.0/33,10.96.0.1/12", "istio_sidecar_inbound_ports": [8080, "ssh"]},
        ['istio_sidecar_service_cidr[0]: "10.96.0.0/33" is not a CIDR; allowed: IPv4 or IPv6 networks',
         'istio_sidecar_service_cidr[1]: "10.96.0.1/12" has host bits set',
         'istio_sidecar_inbound_ports[1]: "ssh" is not a valid port; allowed: integer 1-65535']),
    "service account not in the cluster": (
        {"fleetmesh_service_account": "ghost"},
        [f"ServiceAccount {VARS['fleetmesh_namespace']}/ghost does not exist",
         "fix fleetmesh_namespace / fleetmesh_service_account"]),
    "certificates source is the sidecar's directory": (
        {"istio_sidecar_certs_src_dir": "/etc/certs/"},
        ['istio_sidecar_certs_src_dir: "/etc/certs/" is istio_sidecar_certs_dir', "allowed: another directory"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_before_any_change(host, before, case):
    overrides, words = BAD_INPUT[case]
    run = ansible_playbook(SIDECAR, sidecar_vars(**overrides))
    assert run.rc != 0, run.out[-3000:]
    for word in words:
        assert word in run.out, run.out[-3000:]
    assert run.changed == 0, run.recap
    assert_as_before(host, before)


def test_certificates_of_another_owner_in_etc_certs_stop_before_any_change(host, before):
    """/etc/certs is istio-proxy's alone: files another role wrote there (workload_certs for Envoy, owner envoy) are
    not taken over, or the two roles would change each other's owners on every run."""
    with host.sudo():
        host.run_expect([0], "install -d -m 0755 /etc/certs && install -m 0600 /dev/null /etc/certs/key.pem && "
                             "chown nobody /etc/certs/key.pem")
    try:
        run = ansible_playbook(SIDECAR, sidecar_vars())
    finally:
        with host.sudo():
            host.run_expect([0], "rm -rf /etc/certs")
    assert run.rc != 0, run.out[-3000:]
    for word in ('istio_sidecar_certs_dir: "/etc/certs" holds key.pem owned by nobody, not istio-proxy',
                 "workload_certs_dir=/etc/fleetmesh/workload-certs", "Nothing was changed"):
        assert word in " ".join(run.out.split()), run.out[-3000:]
    assert run.changed == 0, run.recap
    assert_as_before(host, before)
