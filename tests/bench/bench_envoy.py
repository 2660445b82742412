"""Converge the envoy role on the 3 lab VMs over SSH: first run and no-op run, against a minimal
hand-written playbook (copy the binary, write a unit, start it) timed in the same run.

Targets: first run <= 1.5x the minimal playbook; no-op run <= 25% of our first run."""

from __future__ import annotations

from tests.integration.labutil import lab_up, playbook


def _ok(run, what):
    if run.rc != 0:
        raise SystemExit(f"bench envoy: {what} failed:\n{run.out[-4000:]}")
    return run


def run() -> bool:
    lab_up(3)
    _ok(playbook("lab_app.yml"), "lab app")
    wipe = "tests/integration/playbooks/wipe_envoy.yml"
    _ok(playbook(wipe), "wipe")
    minimal = _ok(playbook("tests/bench/minimal_envoy.yml"), "minimal playbook")
    _ok(playbook(wipe), "wipe")
    first = _ok(playbook("envoy.yml"), "first run")
    noop = _ok(playbook("envoy.yml"), "no-op run")
    tasks_first = max(r["ok"] for r in first.recap.values())
    tasks_noop = max(r["ok"] for r in noop.recap.values())
    tasks_min = max(r["ok"] for r in minimal.recap.values())
    r1 = first.seconds / minimal.seconds
    r2 = noop.seconds / first.seconds
    print("benchmark: envoy role on 3 lab VMs over SSH (wall time, tasks that ran per host)")
    print(f"  minimal playbook (copy binary, unit, start): {minimal.seconds:6.2f} s  {tasks_min:3d} tasks/host")
    print(f"  envoy role, first run:                       {first.seconds:6.2f} s  {tasks_first:3d} tasks/host")
    print(f"  envoy role, no-op run:                       {noop.seconds:6.2f} s  {tasks_noop:3d} tasks/host"
          f"  (changed={noop.changed()})")
    print(f"  ratio first/minimal: {r1:5.2f}x  (target <= 1.5x: {'PASS' if r1 <= 1.5 else 'FAIL'})")
    print(f"  ratio no-op/first:   {r2:5.2f}   (target <= 0.25: {'PASS' if r2 <= 0.25 else 'FAIL'})")
    _ok(playbook(wipe), "wipe")
    _ok(playbook("envoy.yml"), "restore")
    return r1 <= 1.5 and r2 <= 0.25 and noop.changed() == 0
