"""Workload certificates: issue and install for every lab VM (3, then 12), per-host cost.

Each size runs playbooks/rotate_certs.yml twice from an empty certificate directory: the first run makes keys
and CSRs on the hosts, signs everything in one controller task and installs; the second changes
nothing. The baseline is one ansible.builtin.ping per host in a playbook of the same shape (SSH,
Python start-up, forks), so the ratio says how many "pings" a certificate costs. The bench also
checks that signing stayed one task with one result line, whatever the number of hosts.
Leaves the lab at 3 VMs (or down, if it was down)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIGN_TASK = "Sign the CSRs of all hosts of the play"
BENCH_DIR = "/var/lib/fleetmesh-bench/certs"


def _env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_DEPRECATION_WARNINGS="0", CONTAINERS_CONF=str(ROOT / "tools" / "lab" / "containers.conf"))


def _run(cmd: list[str], check: bool = True) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    elapsed = time.monotonic() - started
    if proc.returncode and check:
        raise SystemExit(f"bench certs: {' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}")
    return elapsed, proc.stdout


def _names(n: int) -> list[tuple[str, str, str]]:
    """(name, address, family) of the VMs lab.sh up N makes: two thirds Debian from .11, the rest EL from .51."""
    deb = (2 * n + 2) // 3
    return ([(f"fm-deb-{i}", f"10.213.77.{10 + i}", "debian") for i in range(1, deb + 1)]
            + [(f"fm-el-{i}", f"10.213.77.{50 + i}", "el") for i in range(1, n - deb + 1)])


def _lab(n: int | None, work: Path | None = None) -> list[str]:
    """Bring the lab to n VMs (down with None) and return the inventory arguments that name all of them.

    The inventory is written here too: lab.sh writes generated_hosts.yml, but its write_inventory stops early
    under set -e for N > 3 (the Debian loop ends on a failed test), so the bench does not rely on that file."""
    lab_sh = str(ROOT / "tools" / "lab" / "lab.sh")
    if not n:
        _run([lab_sh, "down"])
        return []
    _run([lab_sh, "up", str(n)], check=False)
    if _lab_size() != n:
        _run([lab_sh, "up", str(n)])  # reports the failure
    # group_vars/lab.yml finds the SSH key relative to inventory_dir, which is this file's directory here
    key = str(ROOT / ".lab" / "ssh" / "id_ed25519")
    hosts = {"lab": {"children": {f"lab_{fam}": {"hosts": {
        name: {"ansible_host": ip, "ansible_ssh_private_key_file": key} for name, ip, f in _names(n) if f == fam}}
        for fam in ("debian", "el")}}}
    inventory = (work or Path(tempfile.mkdtemp())) / f"hosts-{n}.yml"
    inventory.write_text(json.dumps(hosts))
    return ["-i", str(ROOT / "inventories" / "lab"), "-i", str(inventory)]


def _lab_size() -> int:
    out = subprocess.run(["podman", "ps", "-q", "--filter", "label=fleetmesh-lab"], env=_env(), text=True,
                         capture_output=True, check=False).stdout.split()
    return len(out)


def _sign_results(out: str) -> list[str]:
    match = re.search(r"TASK \[[^\]]*" + re.escape(SIGN_TASK) + r"\] \*+\n(.*?)(?=\n(?:TASK|RUNNING HANDLER|PLAY) )",
                      out, re.S)
    return re.findall(r"^(?:ok|changed|failed|fatal|skipping): \[[^\]]+\]", match.group(1), re.M) if match else []


def _changed(out: str) -> dict[str, int]:
    return {host: int(changed) for host, changed in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.M)}


def measure(n: int, work: Path) -> dict:
    inventory = _lab(n, work)
    baseline_play = work / "ping.yml"
    baseline_play.write_text(json.dumps([{"name": "baseline", "hosts": "lab", "gather_facts": False,
                                          "tasks": [{"name": "ping", "ansible.builtin.ping": {}}]}]))
    # every VM answers (new lab VMs can refuse the key for a few seconds after lab.sh returns), and SSH control
    # sockets are warm, as they are for the measured runs
    deadline = time.monotonic() + 120
    while True:
        out = _run(["ansible-playbook", *inventory, str(baseline_play)], check=False)[1]
        if len(re.findall(r"^\S+\s+: ok=1\s+changed=0\s+unreachable=0\s+failed=0", out, re.M)) == n:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bench certs: not all {n} lab VMs answer:\n{out[-3000:]}")
        time.sleep(5)
    t_ping = _run(["ansible-playbook", *inventory, str(baseline_play)])[0]
    _run(["ansible", *inventory, "lab", "-m", "ansible.builtin.file", "-a", f"path={BENCH_DIR} state=absent"])
    # Only the certificates, in a directory of the bench's own: no reload of Envoy instances and no change to the
    # /etc/certs that other work on the lab may use. The work per host is the same as with /etc/certs.
    extra = ["-e", "rotate_certs_hosts=lab", "-e", f"workload_certs_lab_ca_dir={work / 'lab-ca'}",
             "-e", "workload_certs_reload_detect=false", "-e", f"workload_certs_dir={BENCH_DIR}"]
    t_issue, out_issue = _run(["ansible-playbook", *inventory, str(ROOT / "playbooks" / "rotate_certs.yml"), *extra])
    t_noop, out_noop = _run(["ansible-playbook", *inventory, str(ROOT / "playbooks" / "rotate_certs.yml"), *extra])
    hosts = _changed(out_issue)
    return {
        "n": n, "hosts": len(hosts), "issue": t_issue, "noop": t_noop, "ping": t_ping,
        "sign_results": _sign_results(out_issue), "all_changed": all(v > 0 for v in hosts.values()),
        "noop_changed": sum(_changed(out_noop).values()),
    }


def run() -> bool:
    was = _lab_size()
    work = Path(tempfile.mkdtemp(prefix="fleetmesh-bench-certs-"))
    try:
        rows = [measure(3, work), measure(12, work)]
    finally:
        _lab(3 if was else None, work)
    print(f"benchmark: workload certificates, issue + install from an empty {BENCH_DIR} (rotate_certs.yml)")
    print(f"  {'VMs':>4} {'issue':>8} {'per host':>9} {'no-op':>8} {'ping':>7} {'issue/ping':>11}  signing task")
    ok = True
    for row in rows:
        single = len(row["sign_results"]) == 1
        ok = ok and single and row["all_changed"] and row["noop_changed"] == 0 and row["hosts"] == row["n"]
        print(f"  {row['n']:>4} {row['issue']:7.2f}s {row['issue'] / row['n']:8.2f}s {row['noop']:7.2f}s "
              f"{row['ping']:6.2f}s {row['issue'] / row['ping']:10.2f}x  "
              f"{'1 task, 1 result' if single else row['sign_results']}")
    three, twelve = rows
    marginal = (twelve["issue"] - three["issue"]) / (twelve["n"] - three["n"])
    marginal_ping = (twelve["ping"] - three["ping"]) / (twelve["n"] - three["n"])
    print(f"  marginal cost per extra host: issue {marginal:.2f}s, ping baseline {marginal_ping:.2f}s")
    print(f"  no-op re-run changed: {three['noop_changed']} (3 VMs), {twelve['noop_changed']} (12 VMs); "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
