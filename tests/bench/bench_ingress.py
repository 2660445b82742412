"""Upgrade of the lab fleet under load, measured through a real Contour ingress (issue 13).

A real kube-apiserver and a real Contour (``contour serve`` + Envoy, tests/harness) on loopback; the 3 lab VMs run
Envoy 1.39.3 in front of the lab app and are registered for the ingress (EndpointSlice + HTTPProxy). A bounded client
on the controller sends requests through Contour's Envoy (Host header), then, in the same run:

1. steady state: the same client for STEADY_SECONDS, nothing else happening (the baseline);
2. steady state with the controller busy: the same client while a no-op envoy.yml runs (ansible's CPU on the
   controller, which here is also the ingress's machine, without any change on the VMs), for context;
3. the rollout: upgrade.yml 1.39.3 -> 1.40.0 with registration (each host marked not ready, drained, hot-restarted,
   health-gated, marked ready), under the same client.

Prints requests, failures, p50 and p99 of each, and p99(rollout) / p99(steady). Targets: 0 failed requests through
the ingress, and p99 during the rollout <= 1.5 x p99 in steady state.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tests.integration import ingressutil
from tests.integration.labutil import LAB_HOSTS, ROOT, extra, lab_up, on_hosts, playbook

sys.path.insert(0, str(ROOT / "tests" / "harness"))
import contour  # noqa: E402  (tests/harness)
import kubeapi  # noqa: E402

NS, FQDN = "fleet-bench", "bench.fleet.example"
STEADY_SECONDS = 45
TARGET_RATIO = 1.5


def _ok(run, what):
    if run.rc != 0:
        raise SystemExit(f"bench ingress: {what} failed:\n{run.out[-4000:]}")
    return run


def _line(name: str, load: ingressutil.Load, seconds: float) -> str:
    return (f"  {name:<44} {seconds:6.1f} s  requests={load.ok + load.failed:6d}  failed={load.failed:4d}  "
            f"p50={load.percentile(0.5) * 1000:6.1f} ms  p99={load.percentile(0.99) * 1000:7.1f} ms")


def _versions() -> set[str]:
    out = on_hosts("curl -s http://127.0.0.1:9901/server_info")
    return {json.loads(text)["version"].split("/")[1] for text in out.values()}


def run() -> bool:
    missing = kubeapi.missing_binaries() + contour.missing_binaries()
    if missing:
        raise SystemExit(f"bench ingress: missing {missing}; run make kube-build")
    with tempfile.TemporaryDirectory(prefix="fm-bench-ingress-") as tmp:
        api = kubeapi.KubeAPI(Path(tmp) / "kube")
        api.start()
        ingress = contour.Contour(api, Path(tmp) / "contour")
        try:
            ingress.start()
            api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
            return _measure(api, ingress)
        finally:
            ingress.stop()
            api.stop()


def _measure(api: kubeapi.KubeAPI, ingress: contour.Contour) -> bool:
    lab_up(3)
    _ok(playbook("lab_app.yml"), "lab app")
    _ok(playbook("envoy.yml", *extra(envoy_version="1.39.3")), "install 1.39.3")
    registration = ingressutil.ingress_registration(api, NS, FQDN, "bench")
    _ok(playbook("register.yml", *extra(**registration)), "register.yml")
    ingress.wait_proxy_status(NS, "web", "valid")
    ingress.wait_route("/", FQDN)
    time.sleep(3)  # Contour's first active health checks

    t0 = time.monotonic()
    with ingressutil.Load(ingress, FQDN, max_seconds=STEADY_SECONDS + 10) as steady:
        time.sleep(STEADY_SECONDS)
    steady_seconds = time.monotonic() - t0
    with ingressutil.Load(ingress, FQDN, max_seconds=300) as busy:
        noop = _ok(playbook("envoy.yml", *extra(envoy_version="1.39.3")), "no-op envoy.yml")
    report = str(ROOT / ".build" / "bench-ingress-upgrade-report.json")
    upgrade = extra(upgrade_to="1.40.0", target="lab", upgrade_register=True, upgrade_report=report, **registration)
    with ingressutil.Load(ingress, FQDN, max_seconds=600) as rollout:
        up = _ok(playbook("upgrade.yml", *upgrade), "upgrade.yml")
    versions = _versions()
    _ok(playbook("envoy.yml"), "restore")

    p99_steady, p99_busy, p99_rollout = (x.percentile(0.99) for x in (steady, busy, rollout))
    ratio = p99_rollout / p99_steady if p99_steady else float("inf")
    print("benchmark: lab fleet upgrade 1.39.3 -> 1.40.0 under load, through a real Contour ingress")
    print(_line("steady state (baseline)", steady, steady_seconds))
    print(_line("steady, controller busy (no-op envoy.yml)", busy, noop.seconds))
    print(_line("rollout (upgrade.yml, register + drain)", rollout, up.seconds))
    print(f"  VMs reached during the rollout: {dict(sorted(rollout.by_vm.items()))}; "
          f"versions after: {sorted(versions)}")
    if rollout.errors:
        print(f"  first failures: {rollout.errors[:5]}")
    failed_ok = rollout.failed == 0 and versions == {"1.40.0"} and set(rollout.by_vm) == set(LAB_HOSTS)
    ratio_ok = ratio <= TARGET_RATIO
    print(f"  failed requests through the ingress: {rollout.failed}   target 0: {'PASS' if failed_ok else 'FAIL'}")
    print(f"  p99 rollout / p99 steady: {ratio:5.2f}x   target <= {TARGET_RATIO}: {'PASS' if ratio_ok else 'FAIL'}")
    print(f"  (p99 rollout / p99 steady with the controller busy: {p99_rollout / p99_busy if p99_busy else 0:5.2f}x)")
    return failed_ok and ratio_ok
