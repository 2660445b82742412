"""Zero-downtime upgrade: roll the 3-VM lab fleet from Envoy 1.39.3 to 1.40.0 with upgrade.yml while
a bounded client on the controller sends requests round-robin through every VM's Envoy; then, in
the same run, do what people do by hand (switch the binary, systemctl restart, on the same hosts) under the same client.

Prints requests, failures, p50 and p99 latency for both."""

from __future__ import annotations

import time

from tests.integration.labutil import LAB_HOSTS, ROOT, Traffic, extra, lab_up, on_hosts, playbook

URLS = [f"http://{ip}:10000/" for ip in LAB_HOSTS.values()]


def _ok(run, what):
    if run.rc != 0:
        raise SystemExit(f"bench upgrade: {what} failed:\n{run.out[-4000:]}")
    return run


def _line(name, t, seconds):
    return (f"  {name:<34} {seconds:6.1f} s  requests={t.ok + t.failed:6d}  failed={t.failed:4d}  "
            f"p50={t.percentile(0.5) * 1000:6.1f} ms  p99={t.percentile(0.99) * 1000:7.1f} ms")


def run() -> bool:
    lab_up(3)
    _ok(playbook("lab_app.yml"), "lab app")
    _ok(playbook("envoy.yml", *extra(envoy_version="1.39.3")), "install 1.39.3")
    report = str(ROOT / ".build" / "bench-upgrade-report.json")
    with Traffic(URLS, max_seconds=600) as ours:
        args = extra(upgrade_to="1.40.0", target="lab", upgrade_register=False, upgrade_report=report)
        up = _ok(playbook("upgrade.yml", *args), "upgrade.yml")
    # What people do by hand: point the binary at the other version and restart the unit, on every host at once.
    t0 = time.monotonic()
    with Traffic(URLS, max_seconds=120) as naive:
        on_hosts("ln -sfn 1.39.3 /opt/fleetmesh/envoy/current && systemctl restart fleetmesh-envoy@main; sleep 2")
    naive_seconds = time.monotonic() - t0
    _ok(playbook("envoy.yml"), "restore")
    print("benchmark: fleet upgrade 1.39.3 -> 1.40.0 on 3 lab VMs under continuous requests")
    print(_line("upgrade.yml (drain, hot restart)", ours, up.seconds))
    print(_line("naive (switch binary, restart)", naive, naive_seconds))
    ratio = "n/a" if naive.failed == 0 else f"{ours.failed / naive.failed:.2f}"
    verdict = "PASS" if ours.failed == 0 else "FAIL"
    print(f"  failed-request ratio ours/naive: {ratio}   target: ours drops 0: {verdict}")
    return ours.failed == 0
