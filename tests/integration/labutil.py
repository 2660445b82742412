"""Helpers for tests and benchmarks that drive the embedded lab over SSH with ansible-playbook."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB_HOSTS = {"fm-deb-1": "10.213.77.11", "fm-deb-2": "10.213.77.12", "fm-el-1": "10.213.77.51"}


def env() -> dict:
    e = dict(os.environ)
    e.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        CONTAINERS_CONF=str(ROOT / "tools" / "lab" / "containers.conf"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    )
    return e


def lab_up(n: int = 3) -> None:
    proc = subprocess.run([str(ROOT / "tools/lab/lab.sh"), "up", str(n)], env=env(), capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, f"lab.sh up {n} failed:\n{proc.stdout}\n{proc.stderr}"


@dataclass
class Run:
    rc: int
    out: str
    recap: dict = field(default_factory=dict)
    seconds: float = 0.0

    def changed(self, host: str | None = None) -> int:
        hosts = [host] if host else list(self.recap)
        return sum(self.recap[h]["changed"] for h in hosts if h in self.recap)


RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


def playbook(name: str, *args: str, inventory: str = "inventories/lab", timeout: int = 900) -> Run:
    path = name if "/" in name else f"playbooks/{name}"
    t0 = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", inventory, path, *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, check=False, timeout=timeout)
    seconds = time.monotonic() - t0
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4]),
                    "skipped": int(m[5])} for m in RECAP.findall(proc.stdout)}
    return Run(proc.returncode, proc.stdout + proc.stderr, recap, seconds)


def extra(**kw) -> list[str]:
    return ["-e", json.dumps(kw)]


def on_hosts(command: str, pattern: str = "lab") -> dict[str, str]:
    """Run a shell command as root on lab hosts; return host -> stdout."""
    cmd = ["ansible", "-i", "inventories/lab", pattern, "-o", "-m", "ansible.builtin.shell", "-a", command]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, check=False, timeout=300)
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\S+) \| (\w+).*?\|.*?\(stdout\) (.*)$", line)
        if m:
            out[m[1]] = m[3].replace("\\n", "\n")
        else:
            m = re.match(r"^(\S+) \| (\w+)", line)
            if m:
                out.setdefault(m[1], "")
    return out


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception as e:  # connection refused/reset count as failures
        return 0, str(e)


class Traffic:
    """A bounded client loop on the controller against lab addresses only; counts failures and latencies."""

    def __init__(self, urls: list[str], max_seconds: float = 300, max_requests: int = 200000, pause: float = 0.005):
        self.urls, self.max_seconds, self.max_requests, self.pause = urls, max_seconds, max_requests, pause
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        end = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < end and i < self.max_requests:
            url = self.urls[i % len(self.urls)]
            t0 = time.monotonic()
            status, body = get(url)
            self.latencies.append(time.monotonic() - t0)
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{url}: {status} {body[:120]}")
            i += 1
            time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def percentile(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else 0.0


def lab_vms_used_later(request) -> bool:
    """Whether a test after this module, in this session, uses the lab VMs as lab modules leave them: an
    integration lab module that does not take the lab network down (molecule and the lab_network_down modules,
    which run last in `make test`, make their own). Lets a module skip putting the lab back when nothing reads it."""
    from tests.conftest import needs_lab  # noqa: PLC0415 (conftest imports nothing of this module; no cycle)

    items = request.session.items
    last = max((i for i, item in enumerate(items) if Path(str(item.path)) == Path(str(request.path))), default=-1)
    return any(needs_lab(item.path) and "integration" in Path(str(item.path)).parts
               and item.get_closest_marker("lab_network_down") is None for item in items[last + 1:])
