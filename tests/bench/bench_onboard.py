"""Onboard 3, 6 and 12 lab VMs over SSH (workload certs, Envoy, registration in a real
kube-apiserver): wall time at each size, per-host marginal time, and the no-op re-run time.

Target: a 12-VM no-op re-run under 3x the 3-VM no-op re-run (forks and pipelining keep it flat)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.harness.kubeapi import KubeAPI
from tests.integration.labutil import extra, lab_up, playbook


def _ok(run, what):
    if run.rc != 0:
        raise SystemExit(f"bench onboard: {what} failed:\n{run.out[-4000:]}")
    return run


def run() -> bool:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fm-bench-onboard-") as tmp, KubeAPI(Path(tmp) / "kube") as api:
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fleet-lab"}}])  # group_vars/web.yml
        args = extra(fleetmesh_kubeconfig=str(api.registrar_kubeconfig), workload_certs_lab_ca_dir=f"{tmp}/ca",
                     target="lab")
        for n in (3, 6, 12):
            lab_up(n)
            _ok(playbook("tests/integration/playbooks/wipe_envoy.yml"), "wipe")
            _ok(playbook("lab_app.yml"), "lab app")
            first = _ok(playbook("onboard.yml", *args), f"onboard {n}")
            noop = _ok(playbook("onboard.yml", *args), f"no-op onboard {n}")
            rows.append((n, first.seconds, noop.seconds, noop.changed()))
    lab_up(3)
    print("benchmark: onboard N lab VMs over SSH (certs + Envoy + registration)")
    print("     N   first run   no-op run   changed(no-op)")
    for n, first, noop, changed in rows:
        print(f"  {n:4d}   {first:7.1f} s   {noop:7.1f} s   {changed}")
    marginal = (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])
    ratio = rows[-1][2] / rows[0][2]
    print(f"  per-host marginal time (3 -> 12, first run): {marginal:5.2f} s/host")
    print(f"  no-op 12 VMs / no-op 3 VMs: {ratio:4.2f}x  (target < 3x: {'PASS' if ratio < 3 else 'FAIL'})")
    return ratio < 3 and all(r[3] == 0 for r in rows)
