"""tools/lab/lab.sh on real podman (issue 12, section 3): `up` fails, naming the VM, when a VM does not answer
SSH; it replaces VMs that another checkout made (they hold that checkout's SSH key) instead of reusing them;
`down` removes every lab container, whichever checkout made it. Each test leaves the default lab up."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.integration.labutil import LAB_HOSTS, env, lab_up

pytestmark = [pytest.mark.lab, pytest.mark.lab_network_down]


def lab(*args: str, script: Path = ROOT / "tools/lab/lab.sh", **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], env=dict(env(), **extra), capture_output=True, text=True,
                          timeout=300, check=False)


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env(), capture_output=True, text=True, timeout=120, check=False)


def label(name: str, key: str) -> str:
    proc = podman("inspect", "-f", f'{{{{index .Config.Labels "{key}"}}}}', name)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def checkout_id(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def ssh_ok(ip: str, key: Path) -> bool:
    proc = subprocess.run(["ssh", "-q", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3", f"fleetadmin@{ip}", "true"],
                          capture_output=True, timeout=30, check=False)
    return proc.returncode == 0


@pytest.fixture(autouse=True)
def default_lab():
    need("podman", "run 'make setup' (apt-get install podman runc)")
    need("ssh", "run 'make setup' (apt-get install openssh-client)")
    lab_up(3)
    yield
    lab_up(3)


def test_up_fails_naming_the_vm_that_does_not_answer_ssh():
    stop = podman("exec", "fm-deb-2", "systemctl", "stop", "ssh.service")
    assert stop.returncode == 0, stop.stderr
    try:
        proc = lab("up", "3", FLEETMESH_LAB_SSH_TIMEOUT="5")
        assert proc.returncode != 0, f"lab.sh up succeeded with sshd stopped on fm-deb-2:\n{proc.stdout}{proc.stderr}"
        failed = [line for line in proc.stderr.splitlines() if "FAILED" in line]
        assert failed and "fm-deb-2 (10.213.77.12)" in failed[0], proc.stderr
        assert "fm-deb-1" not in failed[0] and "fm-el-1" not in failed[0], proc.stderr
        assert "VMs up" not in proc.stdout, proc.stdout
    finally:
        podman("exec", "fm-deb-2", "systemctl", "start", "ssh.service")
    proc = lab("up", "3")
    assert proc.returncode == 0, proc.stderr


def test_up_replaces_vms_another_checkout_made(tmp_path):
    # Another checkout (a CI clone in /var/tmp, say): its own lab.sh with its own key and state.
    clone = tmp_path / "clone"
    (clone / "tools" / "lab").mkdir(parents=True)
    (clone / "inventories" / "lab").mkdir(parents=True)
    for f in ("lab.sh", "build-images.sh", "containers.conf"):
        shutil.copy2(ROOT / "tools" / "lab" / f, clone / "tools" / "lab" / f)
    theirs = lab("up", "3", script=clone / "tools/lab/lab.sh")
    assert theirs.returncode == 0, theirs.stderr
    for name in LAB_HOSTS:
        assert label(name, "fleetmesh-lab-checkout") == checkout_id(clone)
    our_key = ROOT / ".lab" / "ssh" / "id_ed25519"
    assert not ssh_ok(LAB_HOSTS["fm-deb-1"], our_key), "the other checkout's VM let our key in: the test shows nothing"

    ours = lab("up", "3")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    for name, ip in LAB_HOSTS.items():
        assert f"replacing {name}: another checkout made it ({clone})" in ours.stderr, ours.stderr
        assert label(name, "fleetmesh-lab-checkout") == checkout_id(ROOT)
        assert label(name, "fleetmesh-lab-root") == str(ROOT)
        assert ssh_ok(ip, our_key), f"{name} does not take this checkout's key after lab.sh up"
    assert "(3 new)" in ours.stdout, ours.stdout
    again = lab("up", "3")
    assert again.returncode == 0 and "(0 new)" in again.stdout and "replacing" not in again.stderr, again


def test_down_removes_every_lab_container_and_up_refuses_a_stranger_of_the_same_name():
    image = podman("inspect", "-f", "{{.ImageName}}", "fm-deb-1").stdout.strip()
    assert image, "fm-deb-1 is not there after lab.sh up"
    foreign = podman("create", "--name", "fm-deb-9", "--label", "fleetmesh-lab=1",
                     "--label", "fleetmesh-lab-checkout=0123456789abcdef", image, "/sbin/init")
    assert foreign.returncode == 0, foreign.stderr
    down = lab("down")
    assert down.returncode == 0, down.stderr
    left = podman("ps", "-a", "--filter", "label=fleetmesh-lab", "--format", "{{.Names}}")
    assert left.returncode == 0 and left.stdout.strip() == "", left.stdout
    assert podman("network", "exists", "fleetmesh-lab").returncode != 0

    # A container that is not a lab VM but has a VM's name is not removed: up stops and names it.
    stranger = podman("create", "--name", "fm-deb-1", image, "/sbin/init")
    assert stranger.returncode == 0, stranger.stderr
    try:
        proc = lab("up", "3")
        assert proc.returncode != 0, proc.stdout
        assert "fm-deb-1 exists that is not a lab VM" in proc.stderr and "podman rm -f fm-deb-1" in proc.stderr, \
            proc.stderr
        assert podman("container", "exists", "fm-deb-1").returncode == 0, "up removed a container that is not its own"
    finally:
        podman("rm", "-f", "fm-deb-1")


def doctor(**extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "tools/doctor.sh")], env=dict(env(), **extra), capture_output=True, text=True,
                          timeout=120, check=False)


def test_doctor_starts_a_throwaway_container_on_the_lab_network_and_removes_it():
    t0 = time.monotonic()
    proc = doctor()
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started on fleetmesh-lab (10.213.77.254) and was removed" in proc.stdout, proc.stdout
    assert "podman reads" in proc.stdout and "all checks passed" in proc.stdout
    assert seconds < 30, f"the doctor took {seconds:.0f} s"
    left = podman("ps", "-a", "--filter", "label=fleetmesh-doctor", "--format", "{{.Names}}")
    assert left.stdout.strip() == "", left.stdout


def test_doctor_says_when_podman_does_not_read_the_projects_containers_conf(tmp_path):
    empty = tmp_path / "containers.conf"
    empty.write_text("# not the project's settings\n")
    proc = doctor(CONTAINERS_CONF=str(empty))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"CONTAINERS_CONF={empty} lacks default_ulimits" in proc.stderr, proc.stderr
    assert "tools/lab/containers.conf" in proc.stderr, proc.stderr
