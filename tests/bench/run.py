"""Benchmarks, one command: `make bench` (all) or `python tests/bench/run.py NAME...`.

Each benchmark measures ours and a baseline or peer in the same run and prints the ratio,
so numbers stay comparable across machines. Benchmarks talk only to loopback and lab VMs."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BENCHES = {}


def bench(fn):
    BENCHES[fn.__name__.removeprefix("bench_")] = fn
    return fn


def sh(cmd: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, check=check, text=True, capture_output=True, shell=isinstance(cmd, str), **kw)


def timed(cmd: list[str] | str, **kw) -> float:
    t0 = time.monotonic()
    proc = sh(cmd, check=False, **kw)
    if proc.returncode:
        raise SystemExit(f"bench: {cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


def lab_was_up() -> bool:
    return bool(sh(["podman", "ps", "-q", "--filter", "label=fleetmesh-lab"], check=False).stdout.strip())


@bench
def bench_lab():
    """Bring up the 3-VM lab with images already built (target < 60 s), against a baseline of
    starting three plain containers of the same image without systemd or sshd."""
    was_up = lab_was_up()
    timed(["tools/lab/build-images.sh"])
    # as the Makefile and lab.sh name it: the tag is the hash of the image build script
    tag = hashlib.sha256((ROOT / "tools" / "lab" / "build-images.sh").read_bytes()).hexdigest()[:12]
    image = os.environ.get("FLEETMESH_DEBIAN_IMAGE") or f"localhost/fleetmesh-lab-debian12:{tag}"
    timed(["tools/lab/lab.sh", "down"])
    t_lab = timed(["tools/lab/lab.sh", "up", "3"])
    timed(["tools/lab/lab.sh", "down"])
    names = [f"fm-bench-baseline-{i}" for i in range(3)]
    t0 = time.monotonic()
    for n in names:
        sh(["podman", "run", "-d", "--rm", "--name", n, image, "sleep", "60"])
    t_base = time.monotonic() - t0
    sh(["podman", "rm", "-f", "-t", "0", *names], check=False)
    if was_up:
        timed(["tools/lab/lab.sh", "up", "3"])
    print("benchmark: lab bring-up, 3 VMs, images built")
    verdict = "PASS" if t_lab < 60 else "FAIL"
    print(f"  lab.sh up 3 (systemd + sshd, SSH answered): {t_lab:6.2f} s   target < 60 s: {verdict}")
    print(f"  baseline: 3 plain 'podman run' containers:  {t_base:6.2f} s")
    print(f"  ratio ours/baseline: {t_lab / t_base:5.2f}x")
    return t_lab < 60


def discover() -> None:
    """Each tests/bench/bench_*.py module exposes `run() -> bool` and a docstring."""
    import importlib

    for f in sorted(Path(__file__).parent.glob("bench_*.py")):
        mod = importlib.import_module(f"tests.bench.{f.stem}")
        BENCHES[f.stem.removeprefix("bench_")] = mod.run


def main() -> int:
    # what the Makefile exports, for a bench run without make
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tools" / "lab" / "containers.conf"))
    discover()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHES)}")
    args = ap.parse_args()
    names = args.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    ok = True
    for n in names:
        ok = BENCHES[n]() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
