"""Bad input is refused before anything changes (issue 12): every runbook, every bad value, on the lab.

Each runbook runs against the lab VMs (fresh from lab.sh) and a real kube-apiserver with each bad value of the
inventory model given as an extra var (so it applies to every host). The bad values go in GROUPS: the checks before
any change report every error of a kind they find (the preflight module lists them all), so one run can carry
several bad values of different variables. A group never holds two values of one variable, and keeps apart what one
check stops at before the next looks: control characters in the collection's other variables (checked first), the
model of each host (its own control characters included), and the fleet (two hosts with one address, checked only
once every host's model resolves). For each run the test asserts a non-zero exit, for each bad value of the group a
line of the error naming its variable with its words, "nothing was changed", and no task reporting a change. Around
all the runs (every runbook with every group, RUNS_AT_ONCE at a time) it takes a snapshot of every VM (contents,
modes and owners of every file under /etc, /opt, /usr/local, /var/lib, /srv and /home; users; groups; systemd
units; the processes the collection could start) and of every object in the cluster's namespaces, and asserts they
are byte-for-byte the same afterwards: one snapshot pair instead of one per runbook (a change shows in the diff,
which names the files; rerun with FLEETMESH_BAD_INPUT_RUNBOOKS=<runbook>,... to find which runbook made it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
from kubeapi_pytest import own_kube_api

from tests.integration.labutil import LAB_HOSTS, ROOT, env, extra, lab_up, playbook

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]
NS = "fleet-lab"  # inventories/lab/group_vars/web.yml

# (variable, bad value, words the message must hold besides the variable's name)
BAD_VALUES = [
    ("fleetmesh_ports", {}, "is empty"),
    ("fleetmesh_ports", {"http": 0}, "integer 1-65535"),
    ("fleetmesh_ports", {"http": 65536}, "integer 1-65535"),
    ("fleetmesh_ports", {"http": "http"}, "integer 1-65535"),
    ("fleetmesh_ports", {"web": 8080}, "Istio port name"),
    ("fleetmesh_address", "10.213.77.11", "also the address of host"),  # every host the same address
    ("fleetmesh_address", "fd00::11", "IPv6"),
    ("fleetmesh_labels", {"app": "not ok!"}, "label value"),
    ("fleetmesh_labels", {"-app": "web"}, "label key"),
    ("fleetmesh_namespace", "n" * 64, "DNS-1123 label"),
    ("fleetmesh_service", "9web", "DNS-1035"),
    ("fleetmesh_service", "web\nExecStart=/bin/false", "control character"),
    ("fleetmesh_service_account", "web\n", "control character"),
    ("envoy_log_level", "info\nExecStartPre=/bin/false", "control character"),
]

# Runbook -> extra vars it needs besides the bad value (the good inventory is the lab's).
RUNBOOKS = {
    "onboard.yml": {"target": "lab"},
    "upgrade.yml": {"target": "lab", "upgrade_to": "1.40.0"},
    "rotate_certs.yml": {"rotate_certs_hosts": "lab"},
    "decommission.yml": {"target": "lab"},
    "status.yml": {"target": "lab"},
    "cert_report.yml": {"cert_report_hosts": "lab"},
    "register.yml": {"mesh_registration_group": "lab"},
    "deregister.yml": {"mesh_registration_group": "lab", "deregister_all": True},
    "envoy.yml": {"target": "lab"},
    "sidecar.yml": {"target": "lab"},
    "sidecar_offboard.yml": {"target": "lab"},
}

SNAPSHOT = r"""
set -u
for d in /etc /opt /usr/local /var/lib /srv /home /root; do
  [ -d "$d" ] || continue
  find "$d" -xdev \( -name .ansible -o -path /var/lib/apt/lists -o -path /var/lib/systemd/timers \
       -o -path /var/lib/systemd/random-seed \) -prune -o -printf '%p %y %m %u %g %s %l\n'
  find "$d" -xdev \( -name .ansible -o -path /var/lib/apt/lists \) -prune -o -type f -exec sha256sum {} +
done | sort
echo '--- users'; getent passwd; echo '--- groups'; getent group
echo '--- units'; systemctl list-units --all --no-legend --plain | awk '{print $1, $3, $4}' \
  | grep -v -e '^session-' -e '^user' | sort
echo '--- processes'; ps -eo user:20,args --no-headers | grep -E 'envoy|pilot-agent|istio|fleetmesh' \
  | grep -v -e grep -e sha256sum | sort
"""


def snapshot_hosts() -> dict[str, str]:
    """host -> sha256 of its snapshot (the snapshot itself is kept for a readable diff on failure)."""
    out = {}

    def one(host_ip):
        host, ip = host_ip
        proc = subprocess.run(
            ["ssh", "-i", str(ROOT / ".lab/ssh/id_ed25519"), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"fleetadmin@{ip}", "sudo", "bash", "-s"],
            input=SNAPSHOT, capture_output=True, text=True, check=False, timeout=120, env=env())
        assert proc.returncode == 0 and not proc.stderr, f"snapshot of {host} failed: {proc.stderr[-2000:]}"
        return host, proc.stdout

    with ThreadPoolExecutor(len(LAB_HOSTS)) as pool:
        for host, text in pool.map(one, LAB_HOSTS.items()):
            out[host] = text
    return out


def snapshot_cluster(api: kubeapi.KubeAPI) -> str:
    kinds = [("v1", "Service"), ("v1", "ServiceAccount"), ("v1", "Secret"), ("v1", "ConfigMap"),
             ("discovery.k8s.io/v1", "EndpointSlice"), ("networking.istio.io/v1", "WorkloadEntry"),
             ("networking.istio.io/v1", "ServiceEntry"), ("networking.istio.io/v1", "WorkloadGroup"),
             ("projectcontour.io/v1", "HTTPProxy")]
    lines = []
    for api_version, kind in kinds:
        for _attempt in range(50):  # 429 while a just-created CRD's storage warms up
            status, body = api.request("GET", api.resource_path(api_version, kind, None, NS))
            if status != 429:
                break
            time.sleep(0.2)
        assert status == 200, (kind, body)
        for item in body["items"]:
            meta = item["metadata"]
            lines.append(f"{kind} {meta.get('namespace')}/{meta['name']} {meta['resourceVersion']}")
    return "\n".join(sorted(lines))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with own_kube_api(tmp_path_factory, NS) as server:
        yield server


@pytest.fixture(scope="module")
def fresh_lab():
    # Fresh VMs: nothing of the collection on them yet, so any change would show. Only the VMs are removed (lab.sh
    # up makes them again): the lab network stays, with fm-repo and the molecule instances that may be running on it.
    ids = subprocess.run(["podman", "ps", "-aq", "--filter", "label=fleetmesh-lab"], env=env(), capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    if ids:
        proc = subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], env=env(), capture_output=True, text=True,
                              check=False, timeout=300)
        assert proc.returncode == 0, proc.stderr
    lab_up(3)


# Indexes into BAD_VALUES, one ansible-playbook run per group and runbook (7 x 11 runs instead of 14 x 11): the
# model's errors, the fleet's (one address for every host), a control character outside the model.
GROUPS = [(0, 7, 9, 10, 12), (1, 6, 8, 11), (2,), (3,), (4,), (5,), (13,)]


def test_bad_value_list_covers_the_issue():
    names = {name for name, _value, _words in BAD_VALUES}
    assert {"fleetmesh_ports", "fleetmesh_address", "fleetmesh_labels", "fleetmesh_namespace",
            "fleetmesh_service"} <= names


def test_groups_hold_every_bad_value_once_and_keep_the_messages_apart():
    assert sorted(i for group in GROUPS for i in group) == list(range(len(BAD_VALUES)))
    for group in GROUPS:
        names = [BAD_VALUES[i][0] for i in group]
        assert len(set(names)) == len(names), (group, names)


def named(out: str, var: str, words: str) -> bool:
    """Whether a line of the output names the variable (not a longer one it begins: fleetmesh_service is not
    fleetmesh_service_account) and says the words."""
    pattern = re.compile(rf"\b{re.escape(var)}\b")
    return any(words in line and pattern.search(line) for line in out.splitlines())


RUNS_AT_ONCE = 4
SELECTED = [r for r in os.environ.get("FLEETMESH_BAD_INPUT_RUNBOOKS", "").split(",") if r] or sorted(RUNBOOKS)


@pytest.fixture(scope="module")
def attempts(api, fresh_lab, tmp_path_factory):
    """Every selected runbook with every bad value, between two snapshots of the VMs and the cluster:
    {runbook: [(variable, value, words, Run)]}, (hosts before, cluster before), (hosts after, cluster after)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    before = snapshot_hosts(), snapshot_cluster(api)

    def attempt(job):
        runbook, group = job
        bad = [BAD_VALUES[i] for i in group]
        base = dict(RUNBOOKS[runbook], fleetmesh_kubeconfig=str(api.registrar_kubeconfig),
                    workload_certs_lab_ca_dir=str(tmp / "ca"), upgrade_report=str(tmp / "r.json"),
                    status_report_dir=str(tmp / "status"), cert_report_json=str(tmp / "c.json"))
        return runbook, (bad, playbook(runbook, *extra(**dict(base, **{var: value for var, value, _w in bad}))))

    runs: dict[str, list] = {runbook: [] for runbook in SELECTED}
    with ThreadPoolExecutor(RUNS_AT_ONCE) as pool:
        for runbook, result in pool.map(attempt, [(r, group) for r in SELECTED for group in GROUPS]):
            runs[runbook].append(result)
    after = snapshot_hosts(), snapshot_cluster(api)
    return runs, before, after, tmp


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_bad_input_is_refused_naming_the_variable(runbook, attempts):
    runs = attempts[0]
    assert runbook in runs, f"{runbook} was not selected (FLEETMESH_BAD_INPUT_RUNBOOKS)"
    problems = []
    for bad, run in runs[runbook]:
        what = f"{runbook} with " + ", ".join(f"{var}={json.dumps(value)}" for var, value, _w in bad)
        unnamed = [f"{var} / {words!r}" for var, _value, words in bad if not named(run.out, var, words)]
        if run.rc == 0:
            problems.append(f"{what}: exit 0\n{run.out[-1500:]}")
        elif unnamed or "nothing was changed" not in run.out:
            problems.append(f"{what}: the error does not name {unnamed} (or say nothing was changed):\n"
                            f"{run.out[-2500:]}")
        elif any(r["changed"] for r in run.recap.values()):
            problems.append(f"{what}: a task reported changed: {run.recap}")
    assert not problems, "\n\n".join(problems)


def test_bad_input_changes_nothing_on_the_vms_or_in_the_cluster(attempts):
    _runs, (hosts_before, cluster_before), (hosts_after, cluster_after), tmp = attempts
    assert not (tmp / "ca").exists(), "the lab CA was created on the controller"
    for host in LAB_HOSTS:
        if hosts_before[host] != hosts_after[host]:
            before, after = set(hosts_before[host].splitlines()), set(hosts_after[host].splitlines())
            pytest.fail(f"a bad-input run changed {host}:\n- " + "\n- ".join(sorted(before - after)[:30])
                        + "\n+ " + "\n+ ".join(sorted(after - before)[:30]))
    assert cluster_before == cluster_after, "a bad-input run changed the cluster"


def test_the_snapshot_sees_a_one_byte_change(fresh_lab):
    """The snapshot the test above relies on does show a change: one byte in a file under /etc."""
    host, ip = next(iter(LAB_HOSTS.items()))
    ssh = ["ssh", "-i", str(ROOT / ".lab/ssh/id_ed25519"), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"fleetadmin@{ip}", "sudo"]
    before = snapshot_hosts()[host]
    subprocess.run([*ssh, "sh", "-s"], input="printf a >> /etc/fleetmesh-snapshot-probe", text=True, check=True,
                   timeout=60)
    try:
        after = snapshot_hosts()[host]
    finally:
        subprocess.run([*ssh, "rm", "-f", "/etc/fleetmesh-snapshot-probe"], check=True, timeout=60)
    assert before != after
    assert "/etc/fleetmesh-snapshot-probe" in after
