"""Traffic through the real Contour ingress (tests/harness/contour.py) to the lab VMs, for tests and benchmarks.

``Load`` sends requests through Contour's Envoy in a bounded loop (Host header, path prefix), counting the answers
of each VM, the failures and the latencies. ``ingress_registration`` is the registration of the lab VMs that the
ingress routes on: an EndpointSlice (the VMs' Envoy listeners) and an HTTPProxy, in a namespace and registration
set of the caller's (tests that share the session's API server keep out of each other's way). ``grpc_calls`` is a
real gRPC client (tools/lab/grpc_hello.py with Debian's python3-grpcio, run by the system Python) over h2c.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRPC_APP = ROOT / "tools" / "lab" / "grpc_hello.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-grpcio is a Debian package (tools/setup.sh), not in the venv
# Contour retries what a hot restart or a drain may cut (a reset, a refused connection or stream).
RETRY = {"count": 3, "retry_on": ["5xx", "reset", "connect-failure", "refused-stream"]}
GRPC_RETRY = {"count": 3, "retry_on": ["5xx", "reset", "connect-failure", "refused-stream", "unavailable"]}


class Load:
    """Requests through the ingress in a loop (Host header); counts answers per VM, failures and latencies."""

    def __init__(self, ingress, host: str, path: str = "/", pause: float = 0.01, max_seconds: float = 300):
        self.ingress, self.host, self.path, self.pause, self.max_seconds = ingress, host, path, pause, max_seconds
        self.by_vm: Counter[str] = Counter()
        self.failed = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def _run(self):
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            status, body, _h = self.ingress.get(self.path, host=self.host)
            with self._lock:
                self.latencies.append(time.monotonic() - t0)
                if status == 200 and body.startswith("hello from "):
                    self.by_vm[body.split()[-1]] += 1
                else:
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"{status} {body[:160]}")
            time.sleep(self.pause)

    @property
    def ok(self) -> int:
        return sum(self.by_vm.values())

    def mark(self) -> Counter[str]:
        with self._lock:
            return Counter(self.by_vm)

    def percentile(self, p: float, since: int = 0) -> float:
        with self._lock:
            xs = sorted(self.latencies[since:])
        return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else 0.0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Loop:
    """A bounded loop of probe(i) -> (ok, detail) in a thread: counts, failures, latencies (for direct traffic)."""

    def __init__(self, probe, pause: float = 0.01, max_seconds: float = 300):
        self.probe, self.pause, self.max_seconds = probe, pause, max_seconds
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        end = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            good, detail = self.probe(i)
            self.latencies.append(time.monotonic() - t0)
            if good:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(detail)
            i += 1
            time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ingress_registration(api, namespace: str, fqdn: str, registration_set: str, **more) -> dict:
    """Extra vars that register the lab VMs (service web) for the ingress: EndpointSlice + HTTPProxy."""
    return dict({"fleetmesh_kubeconfig": str(api.registrar_kubeconfig), "fleetmesh_namespace": namespace,
                 "mesh_registration_set": registration_set,
                 "mesh_registration_shapes": ["endpointslice", "httpproxy"],
                 "mesh_registration_httpproxies": [
                     {"name": "web", "namespace": namespace, "fqdn": fqdn,
                      "routes": [{"prefix": "/", "services": [{"name": "web"}], "retry_policy": RETRY}]}]}, **more)


def grpc_calls(ingress, authority: str, count: int = 30, name: str = "ingress", wait: float = 30.0,
               timeout: float = 60.0) -> tuple[Counter[str], list[dict]]:
    """``count`` gRPC calls (h2c) through the ingress: (replies per VM, the calls that failed)."""
    proc = subprocess.run([SYSTEM_PYTHON, str(GRPC_APP), "call", "--target", f"127.0.0.1:{ingress.http_port}",
                           "--authority", authority, "--name", name, "--count", str(count), "--wait", str(wait)],
                          capture_output=True, text=True, timeout=timeout + wait, check=False)
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert replies or proc.returncode == 0, proc.stderr[-2000:]
    by_vm: Counter[str] = Counter()
    failed = []
    for reply in replies:
        if reply["code"] == "OK" and reply["message"].startswith(f"hello {name} from "):
            by_vm[reply["message"].split()[-1]] += 1
        else:
            failed.append(reply)
    return by_vm, failed
