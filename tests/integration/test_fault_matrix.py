"""Fault matrix of upgrade.yml (issue 12, section 2): one lab of 5 VMs (Debian and EL), a real kube-apiserver with the
EndpointSlice shape, traffic running throughout, one row per fault:

  kill9        kill -9 of the canary's new Envoy while its health gate runs
  vm_stopped   a VM of the last batch stopped (podman stop) in the middle of its batch
  api_*        the API server down at mark-not-ready, during the switch, at mark-ready
  unavailable  an upgrade_to that is not in the artifact cache
  unreachable  a host of the inventory that does not answer

For each row: the run fails and its summary and report say what happened (never "complete"); every reachable host
ends LIVE on exactly one version with its health check on and registered ready (EndpointSlice endpoint ready) - for
the API rows once the API server is back; 0 failed requests to the healthy hosts; a plain re-run (the fault gone)
converges, and (once, in the IDEMPOTENCE_ROW) one more run reports changed=0. upgrade.yml prints one progress line
per batch.

The rows share the fleet: a row that converged leaves every VM LIVE on one version and registered ready, and the next
row rolls out the other version from there (1.40.0 -> 1.39.3 is a rollout through upgrade.yml like any other: it
compares versions for equality only). A row resets the fleet (envoy.yml to 1.39.3, register.yml) only when it does not
find it so, so each row, run alone (-k) or after a failed one, starts from a uniform fleet all the same.

The same module ends with the fleet report on 7 VMs (issue 16): the lab grows to 7 (the 5 above, already up and
registered, and 2 more), and status.yml shows each problem - a stopped VM, Envoy down, a VM not registered, a short
certificate lifetime, version drift - in the table, the page (opened in headless Chromium) and the JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
from kubeapi_pytest import own_kube_api

from tests.conftest import need
from tests.integration.labutil import RECAP, ROOT, Run, Traffic, env, extra, lab_up, lab_vms_used_later, playbook
from tests.unit.report_fixtures import SCHEMA, check_page_against_json, chromium

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]
NS = "fleet-lab"  # inventories/lab/group_vars/web.yml
OWNED = "app.kubernetes.io/managed-by=fleetmesh.envoy"
HOSTS = {"fm-deb-1": "10.213.77.11", "fm-deb-2": "10.213.77.12", "fm-deb-3": "10.213.77.13",
         "fm-deb-4": "10.213.77.14", "fm-el-1": "10.213.77.51"}
CANARY = "fm-deb-1"  # the first host of the inventory: the canary batch of upgrade.yml
GHOST = ("fm-ghost", "10.213.77.99")  # on the lab network, but no VM answers there
OLD, NEW = "1.39.3", "1.40.0"
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "tools" / "lab" / "containers.conf"))


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, check=check, timeout=120)


def envoy_state(hosts=None, strict: bool = True) -> dict[str, tuple[str, str, str] | None]:
    """host -> (version served, server state, version behind the current link), read inside each VM (one exec per VM,
    the VMs at once). strict=False: None for a VM whose Envoy does not answer, instead of an error."""

    def read(host):
        proc = podman("exec", host, "sh", "-c", "readlink /opt/fleetmesh/envoy/current || echo; "
                      "curl -s http://127.0.0.1:9901/server_info", check=strict)
        link, _nl, info = proc.stdout.partition("\n")
        try:
            data = json.loads(info)
        except ValueError:
            if strict:
                raise
            return None
        return data["version"].split("/")[1], data["state"], link.strip()

    hosts = list(hosts or HOSTS)
    with ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(read, hosts), strict=True))


def slice_ready(api: kubeapi.KubeAPI) -> dict[str, bool]:
    """address -> conditions.ready over the owned EndpointSlices of the namespace."""
    path = api.resource_path("discovery.k8s.io/v1", "EndpointSlice", None, NS) + f"?labelSelector={OWNED}"
    status, body = api.request("GET", path)
    assert status == 200, body
    return {ep["addresses"][0]: ep.get("conditions", {}).get("ready", True)
            for item in body["items"] for ep in item.get("endpoints") or []}


def watched_playbook(args: list[str], on_line) -> Run:
    """ansible-playbook with its output read line by line, so that a fault can be injected at a given task."""
    cmd = ["ansible-playbook", "-i", "inventories/lab", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env(), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        on_line(line)
    rc = proc.wait(timeout=900)
    out = "".join(lines)
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4]),
                    "skipped": int(m[5])} for m in RECAP.findall(out)}
    return Run(rc, out, recap, time.monotonic() - t0)


class Trigger:
    """Calls action once, in a thread, when the n-th line matching pattern is printed."""

    def __init__(self, pattern: str, action, nth: int = 1):
        self.pattern, self.action, self.nth = re.compile(pattern), action, nth
        self.seen = 0
        self.thread: threading.Thread | None = None

    def __call__(self, line: str):
        if self.thread is None and self.pattern.search(line):
            self.seen += 1
            if self.seen == self.nth:
                self.thread = threading.Thread(target=self.action, daemon=True)
                self.thread.start()

    def join(self):
        if self.thread:
            self.thread.join(timeout=120)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    with own_kube_api(tmp_path_factory, NS) as api:
        try:
            lab_up(5)
            run = playbook("lab_app.yml")
            assert run.rc == 0, run.out[-3000:]
            registration = {"fleetmesh_kubeconfig": str(api.registrar_kubeconfig),
                            "mesh_registration_shapes": ["endpointslice"]}
            yield api, registration
        finally:
            # leave the lab as the other tests expect it: 3 VMs on the default version (when one comes after this
            # module: in `make test` only molecule and the modules that take the lab down do, which make their own)
            if lab_vms_used_later(request):
                lab_up(3)
                playbook("envoy.yml")


def uniform_version(api) -> str | None:
    """The version every VM serves, LIVE, linked, and registered ready (nothing else in the EndpointSlices), or None."""
    found = set(envoy_state(strict=False).values())
    for version in (OLD, NEW):
        if found == {(version, "LIVE", version)}:
            return version if slice_ready(api) == dict.fromkeys(HOSTS.values(), True) else None
    return None


def reset(api, registration) -> str:
    """Every VM on one version, LIVE, registered ready; returns that version. A fleet already so (what a row that
    converged leaves) is kept as it is; otherwise every VM goes to the old version (envoy.yml) and is registered (a
    complete registration run prunes leftovers, such as the unreachable row's ghost)."""
    version = uniform_version(api)
    if version is not None:
        return version
    run = playbook("envoy.yml", *extra(envoy_version=OLD))
    assert run.rc == 0, run.out[-4000:]
    run = playbook("register.yml", *extra(**registration))
    assert run.rc == 0, run.out[-4000:]
    assert envoy_state() == {h: (OLD, "LIVE", OLD) for h in HOSTS}
    assert slice_ready(api) == dict.fromkeys(HOSTS.values(), True)
    return OLD


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_serving(hosts, api=None):
    """Each host LIVE (health check on, not draining) on exactly one version: the served one is the linked one."""
    state = envoy_state(hosts)
    for served, status, linked in state.values():
        assert status == "LIVE", state
        assert served == linked and served in (OLD, NEW), state
    if api is not None:
        ready = slice_ready(api)
        assert {HOSTS[h]: ready.get(HOSTS[h]) for h in hosts} == {HOSTS[h]: True for h in hosts}, ready
    return state


ROWS = ["kill9", "vm_stopped", "api_mark_not_ready", "api_switch", "api_mark_ready", "unavailable", "unreachable"]
# Where the idempotence of upgrade.yml is proven (one more run after the converging one reports changed=0 on every
# host): once, in this row, whose converging run starts from the most leftovers of a fault - a VM that rebooted in the
# middle of its batch, left not ready in Kubernetes, in one batch with hosts already on the target. The other rows'
# converging runs assert the same end state (every VM LIVE on the target, linked, registered ready, no failed request).
IDEMPOTENCE_ROW = "vm_stopped"


@pytest.mark.parametrize("row", ROWS)
def test_fault_row(lab, row, tmp_path):
    api, registration = lab
    t0 = time.monotonic()
    frm = reset(api, registration)  # the version the fleet runs; this row rolls out the other one
    to = NEW if frm == OLD else OLD
    timings = [f"# reset (fleet on {frm}): {time.monotonic() - t0:.1f} s"]
    report = tmp_path / "report.json"
    args = ["playbooks/upgrade.yml", *extra(upgrade_to=to, target="lab", upgrade_register=True,
                                            upgrade_report=str(report), **registration)]
    healthy = dict(HOSTS)
    trigger = Trigger(r"^\Z", lambda: None)
    version = to
    restore = []

    if row == "kill9":
        del healthy[CANARY]
        rescued = threading.Event()

        def keep_killing():  # the canary's new epoch dies, and stays dead until the gate has judged it
            end = time.monotonic() + 60
            while not rescued.is_set() and time.monotonic() < end:
                podman("exec", CANARY, "pkill", "-9", "-f", f"^/opt/fleetmesh/envoy/{to}/envoy", check=False)
                time.sleep(0.2)

        trigger = Trigger(r"^TASK \[Step health-gate\]", keep_killing)

        def on_line(line, _t=trigger):  # the rescue (rollback) stops the killing
            if "TASK [Read the hot-restart wrapper's account of the last reload]" in line:
                rescued.set()
            _t(line)
    elif row == "vm_stopped":
        victim = "fm-deb-4"  # in the last batch (fm-deb-3, fm-deb-4, fm-el-1)
        del healthy[victim]
        trigger = Trigger(r"^TASK \[Step drain\]", lambda: podman("stop", "-t", "0", victim), nth=3)
        restore.append(lambda: (podman("start", victim), lab_up(5)))
        on_line = trigger
    elif row.startswith("api_"):
        pattern, nth = {"api_mark_not_ready": (r"^TASK \[Note in the report that the rollout is under way\]", 1),
                        "api_switch": (r"^TASK \[Step switch-validate-restart\]", 1),
                        "api_mark_ready": (r"^TASK \[Step health-gate\]", 1)}[row]
        trigger = Trigger(pattern, api.stop_apiserver, nth=nth)
        restore.append(api.start_apiserver)
        on_line = trigger
    elif row == "unavailable":
        version = "1.41.0"  # valid, but not in the artifact cache
        args = ["playbooks/upgrade.yml", *extra(upgrade_to=version, target="lab", upgrade_register=True,
                                                upgrade_report=str(report), **registration)]
        on_line = trigger
    else:  # unreachable
        ghost = tmp_path / "ghost.yml"
        ghost.write_text(f"lab:\n  children:\n    lab_el:\n      hosts:\n        {GHOST[0]}:\n"
                         f"          ansible_host: {GHOST[1]}\n")
        args = [*args, "-i", str(ghost)]
        on_line = trigger

    urls = [f"http://{ip}:10000/" for ip in healthy.values()]
    with Traffic(urls, max_seconds=600) as traffic:
        run = watched_playbook(args, on_line)
        trigger.join()
    log = ROOT / ".build" / f"test-fault-matrix-{row}.log"
    log.parent.mkdir(exist_ok=True)
    timings.append(f"# faulty run {frm} -> {version}: {run.seconds:.1f} s")
    log.write_text(run.out + "\n".join(timings) + "\n")
    try:
        # The run failed and says so, in the summary and in the report.
        assert run.rc != 0, f"the rollout went through '{row}' without failing; see {log}"
        data = report_of(report)
        assert data["result"] != "complete" and "complete" not in data.get("summary", ""), data
        assert f"Rollout to {version} complete" not in run.out
        failure = data["failure"]
        assert failure, data
        if row == "kill9":
            assert failure["host"] == CANARY and failure["step"] == "health-gate", failure
            assert failure["rolled_back_to"] == frm
            assert f"Upgrade of {CANARY} to {to} failed at step 'health-gate'" in run.out
            assert f"rolled back to {frm}" in run.out, (failure, f"see {log}")
            assert {r["host"]: r["result"] for r in data["hosts"]}[CANARY] == "rolled back"
            assert {r["host"]: r["registered_ready"] for r in data["hosts"]}[CANARY] is True
            # the canary batch's progress line, as it went
            assert f"Rollout to {to}: batch 1 of 3 done ({CANARY}): 0/5 hosts done, 1 failed, " in run.out
        elif row == "vm_stopped":
            rows = {r["host"]: r for r in data["hosts"]}
            assert rows["fm-deb-4"]["result"] == "unreachable", rows
            assert failure["host"] == "fm-deb-4" and "unreachable" in failure["reason"], failure
            assert f"Upgrade of fm-deb-4 to {to} failed at step '" in run.out, "the summary names the lost host"
            assert run.recap["fm-deb-4"]["unreachable"] >= 1
            # lost after mark-not-ready: Kubernetes keeps it not ready, truthfully
            assert slice_ready(api)[HOSTS["fm-deb-4"]] is False
        elif row.startswith("api_"):
            step = "mark-not-ready" if row == "api_mark_not_ready" else "mark-ready"
            assert failure["host"] == CANARY and failure["step"] == step, failure
            assert "cannot reach the Kubernetes API" in failure["reason"], failure
            assert f"Upgrade of {CANARY} to {to} failed at step '{step}'" in run.out
        elif row == "unavailable":
            assert data["result"] == "refused" and failure["step"] == "check-version", data
            assert "is not available" in failure["reason"] and "1.41.0" in failure["reason"], failure
            assert "No host was marked not ready, drained or changed" in run.out
            assert set(run.recap) <= {"localhost", *HOSTS} and sum(r["changed"] for r in run.recap.values()) == 0
        else:
            rows = {r["host"]: r for r in data["hosts"]}
            assert rows[GHOST[0]]["result"] == "unreachable" and rows[GHOST[0]]["step"] == "connect", rows
            assert f"Upgrade of {GHOST[0]} to {to} failed at step 'connect'" in run.out
            # registered VMs found unreachable are marked not ready
            assert slice_ready(api).get(GHOST[1]) is False

        # Every reachable host serves, LIVE, on exactly one version; no failed request to a healthy host.
        state = assert_serving(healthy, None if row.startswith("api_") else api)
        if row in ("unavailable", "api_mark_not_ready"):
            assert {v for v, _s, _l in state.values()} == {frm}, state
        if row in ("api_switch", "api_mark_ready"):
            assert state[CANARY][0] == to, "the canary passed its gate and keeps the target version"
        assert traffic.ok > 50
        assert traffic.failed == 0, traffic.errors
    finally:
        t1 = time.monotonic()
        for fix in restore:
            fix()
        if restore:
            with log.open("a") as f:
                f.write(f"# fault undone: {time.monotonic() - t1:.1f} s\n")

    if row == "unavailable":
        # The same command refuses the same way, and still touches nothing.
        again = playbook(*args)
        assert again.rc != 0 and report_of(report)["result"] == "refused"
        assert sum(r["changed"] for r in again.recap.values()) == 0
        assert_serving(HOSTS, api)
        return

    # The fault is gone: a plain re-run converges (and leaves the fleet uniform on `to` for the next row).
    args = [a for a in args if a != "-i" and not a.endswith("ghost.yml")]
    with Traffic([f"http://{ip}:10000/" for ip in HOSTS.values()], max_seconds=600) as traffic:
        again = playbook(*args)
    with log.open("a") as f:
        f.write(f"{again.out}\n# converging run {frm} -> {to}: {again.seconds:.1f} s\n")
    assert again.rc == 0, again.out[-6000:]
    assert report_of(report)["result"] == "complete"
    assert f"Rollout to {to} complete on {len(HOSTS)} hosts" in again.out
    # one progress line per batch (serial 1, 34%, 100% of 5 hosts: 1, 1, 3), before the summary
    progress = re.findall(rf"Rollout to {re.escape(to)}: batch (\d) of (\d) done \(.*?\): (\d)/5 hosts done, "
                          r"(\d) failed, \d+s elapsed", again.out)
    assert progress == [("1", "3", "1", "0"), ("2", "3", "2", "0"), ("3", "3", "5", "0")], progress
    assert again.out.index("batch 3 of 3 done") < again.out.index(f"Rollout to {to} complete")
    assert envoy_state() == {h: (to, "LIVE", to) for h in HOSTS}
    ready = slice_ready(api)
    assert {HOSTS[h]: ready[HOSTS[h]] for h in HOSTS} == dict.fromkeys(HOSTS.values(), True), ready
    assert traffic.failed == 0, traffic.errors
    if row != IDEMPOTENCE_ROW:
        return
    # One more run changes nothing (proven here only: see IDEMPOTENCE_ROW).
    third = playbook(*args)
    with log.open("a") as f:
        f.write(f"# idempotence run: {third.seconds:.1f} s\n")
    assert third.rc == 0, third.out[-4000:]
    assert {h: r["changed"] for h, r in third.recap.items()} == {h: 0 for h in third.recap}, third.out[-4000:]


# --------------------------------------------------------------------------------------------------------------
# the fleet report on 7 VMs: each problem in the table, the page and the JSON
# --------------------------------------------------------------------------------------------------------------

SEVEN = {**HOSTS, "fm-deb-5": "10.213.77.15", "fm-el-2": "10.213.77.52"}
PROBLEM_OF = {"fm-deb-4": "unreachable", "fm-deb-5": "envoy_down", "fm-el-2": "not_registered",
              "fm-deb-3": "cert_expiring", "fm-deb-2": "version_drift"}


def test_fleet_report_on_seven_vms(lab, tmp_path):
    api, registration = lab
    lab_up(7)  # the five of this module stay; fm-deb-5 and fm-el-2 join
    new = "fm-deb-5,fm-el-2"
    run = playbook("lab_app.yml", *extra(target=new))
    assert run.rc == 0, run.out[-3000:]
    # every VM on NEW but fm-deb-2 (a canary left on OLD: version drift), in one run
    drift = f"{{{{ '{OLD}' if inventory_hostname == 'fm-deb-2' else '{NEW}' }}}}"
    run = playbook("envoy.yml", *extra(envoy_version=drift))
    assert run.rc == 0, run.out[-4000:]
    # registered: all but fm-el-2
    run = playbook("register.yml", "--limit", "lab:!fm-el-2", *extra(**registration))
    assert run.rc == 0, run.out[-4000:]
    # certificates: a 2 h one on fm-deb-3, none elsewhere (what other modules left is removed)
    with ThreadPoolExecutor(len(SEVEN)) as pool:  # inside each VM at once: no ad-hoc Ansible run for one rm
        list(pool.map(lambda host: podman("exec", host, "rm", "-f", "/etc/certs/cert-chain.pem"), SEVEN))
    ca = tmp_path / "ca"
    run = playbook("rotate_certs.yml", *extra(rotate_certs_hosts="fm-deb-3", workload_certs_lab_ca_dir=str(ca),
                                              workload_certs_lifetime="2h", workload_certs_reload_detect=False,
                                              workload_certs_sans=["{{ inventory_hostname }}"]))
    assert run.rc == 0, run.out[-4000:]
    # Envoy down on fm-deb-5, fm-deb-4 stopped
    podman("exec", "fm-deb-5", "systemctl", "stop", "fleetmesh-envoy@main.service")
    podman("stop", "-t", "0", "fm-deb-4")
    try:
        out = tmp_path / "status"
        run = playbook("status.yml", *extra(target="lab", status_report_dir=str(out), **registration))
    finally:
        podman("start", "fm-deb-4")
    log = ROOT / ".build" / "test-fleet-report-7vm.log"
    log.write_text(run.out)
    assert run.rc == 0, run.out[-5000:]

    # the JSON: valid against the schema, each problem on its host, problem hosts first
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    rows = {r["host"]: r for r in report["hosts"]}
    assert set(rows) == set(SEVEN), sorted(rows)
    kinds = {h: [p["kind"] for p in r["problems"]] for h, r in rows.items()}
    for host, kind in PROBLEM_OF.items():
        assert kinds[host] == [kind], (host, kinds[host], rows[host])
    assert kinds["fm-deb-1"] == [] and kinds["fm-el-1"] == [], kinds
    assert report["summary"]["problems"] == dict.fromkeys(
        ["unreachable", "envoy_down", "not_registered", "cert_expiring", "version_drift"], 1), report["summary"]
    assert [r["host"] for r in report["hosts"]][:5] == ["fm-deb-4", "fm-deb-5", "fm-el-2", "fm-deb-3", "fm-deb-2"]
    assert rows["fm-deb-3"]["cert_days_left"] < 0.1 and rows["fm-deb-2"]["envoy_version"] == OLD
    assert rows["fm-el-2"]["registration"] == "not registered"
    assert rows["fm-deb-1"]["registration"] == "EndpointSlice ready"
    assert json.loads((out / "status.json").read_text()) == report["hosts"]

    # the table: within 100 columns (8 of the debug indent + 92), one line per host, each problem named
    table = run.out[run.out.index("7 hosts in 1 service(s): 5 with problems, 2 ok"):].split("\n\n")[0]
    lines = [line[8:] if line.startswith(" " * 8) else line for line in table.splitlines()]
    assert all(len(" " * 8 + line) <= 100 for line in lines), [len(line) for line in lines]
    by_host = {line.split()[0]: line for line in lines[3:3 + 7]}
    assert list(by_host) == [r["host"] for r in report["hosts"]], lines
    expect = {"fm-deb-4": "unreachable", "fm-deb-5": "Envoy down", "fm-el-2": "unregistered",
              "fm-deb-3": "cert 0d", "fm-deb-2": "drift"}
    for host, word in expect.items():
        assert by_host[host].endswith(word), (host, by_host[host])

    # the page, rendered by a real browser: problem hosts first, the counts of the JSON
    binary = need("chromium-headless-shell", "run 'make setup' (apt-get install chromium-headless-shell)")
    dom = chromium(binary, out / "status.html", ROOT / ".build" / "fleet-report-7vm.png")
    page = check_page_against_json(dom, report)
    assert [h for h, _k in page.rows["problems"]] == list(PROBLEM_OF)
