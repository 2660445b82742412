"""Registration of VM endpoints in Kubernetes: fleetmesh.envoy.mesh_registration against kubernetes.core.k8s.

Starts a real kube-apiserver + etcd on loopback (tests/harness/kubeapi.py). Registers 200 VM endpoints
across 20 services (a WorkloadEntry per VM + a Service per service: 220 objects, server-side apply),
then re-runs as a no-op, three ways against the same API server, each in its own namespace, each as
one `ansible-playbook` run (wall time, Ansible's start-up included for all), each reading its data
with a file lookup:

* ours: one `fleetmesh.envoy.mesh_registration` task;
* loop: `kubernetes.core.k8s` (apply, server-side) looping one object per item;
* list: `kubernetes.core.k8s` given the 220 objects as one list definition.

Ours and the list run ROUNDS times, interleaved (a fresh namespace for each registration), and the best
time of each counts, so that load from other processes on the machine hits both alike; the loop, which
takes minutes, runs once. CPU seconds (Ansible and its modules, plus the API server and etcd) are
printed next to the wall times.

Prints the times and the ratios (targets: ours >= 10x faster than the loop, >= 2x faster than the
list), then scales ours alone to 1,000, 5,000 and 10,000 endpoints and prints how the time grows (targets:
the no-op re-run at 1,000 endpoints under 5 s, at 10,000 under 10 s). All runs use the least-privilege
registrar kubeconfig.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".build" / "collections"
SERVICES = 20


def _registration():
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration

    return registration


def endpoints(count: int, namespace: str) -> list[dict]:
    out = []
    for i in range(count):
        service = f"svc-{i % SERVICES:02d}"
        out.append({
            "host": f"vm-{i:05d}", "address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "service": service, "namespace": namespace, "ports": {"http": 8080, "grpc": 9090},
            "labels": {"app": service, "version": "v1"}, "service_account": service, "network": "vm-network",
            "locality": f"eu-west/zone-{i % 3}", "weight": 1 + i % 3,
        })
    return out


def objects(eps: list[dict]) -> list[dict]:
    """The same objects the module builds (WorkloadEntry per VM + Service per service), for the baselines."""
    reg = _registration()
    cfg, errors = reg.normalize({"endpoints": eps, "shapes": ["workloadentry"], "registration": "bench-k8s"})
    assert not errors, errors
    api = {k: (f"{g}/{v[0]}" if g else v[0]) for k, (g, v, _p) in reg.KINDS.items()}
    return json.loads(json.dumps(reg.build_full(cfg, api)))


def playbook(workdir: Path, name: str, task: dict, data: object) -> Path:
    """One play with one task; the task reads its data from data.json with a file lookup (same for everyone)."""
    data_file = workdir / f"{name}.data.json"
    data_file.write_text(json.dumps(data))
    task = json.loads(json.dumps(task).replace("DATA_FILE", str(data_file)))
    play = [{"name": name, "hosts": "localhost", "gather_facts": False, "tasks": [task]}]
    path = workdir / f"{name}.yml"
    path.write_text(json.dumps(play))  # JSON is YAML
    return path


CPU = {"client": 0.0, "server": 0.0}  # CPU seconds of the last run_playbook, for the report


def _server_cpu(api) -> float:
    """CPU seconds used so far by the harness's kube-apiserver and etcd."""
    total = 0.0
    for proc in api._procs.values():
        try:
            fields = Path(f"/proc/{proc['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_playbook(path: Path, api=None) -> float:
    # Pipelining (one process per module run instead of five commands) for every contender alike.
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_NOCOLOR="1", ANSIBLE_PIPELINING="True")
    cmd = ["ansible-playbook", str(path), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=" + sys.executable]
    r0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), _server_cpu(api) if api else 0.0
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["client"] = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    CPU["server"] = (_server_cpu(api) - s0) if api else 0.0
    if proc.returncode:
        raise SystemExit(f"bench: {path.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def count_objects(api, namespace: str) -> int:
    total = 0
    for version, kind in (("networking.istio.io/v1", "WorkloadEntry"), ("v1", "Service")):
        status, body = api.request("GET", api.resource_path(version, kind, None, namespace))
        assert status == 200, body
        total += len(body["items"])
    return total


LOOKUP = "lookup('ansible.builtin.file', 'DATA_FILE')"
DATA = "{{ " + LOOKUP + " }}"


def ours_task(kubeconfig: Path, registration: str) -> dict:
    """The desired set as JSON text (endpoints_json), as the role passes it."""
    return {"name": "register", "fleetmesh.envoy.mesh_registration": {
        "kubeconfig": str(kubeconfig), "shapes": ["workloadentry"], "registration": registration,
        "endpoints_json": DATA}}


def k8s_task(kubeconfig: Path, loop: bool) -> dict:
    """The objects as one v1 List in JSON text (list), or parsed and looped over one per item (loop)."""
    args = {"kubeconfig": str(kubeconfig), "state": "present", "apply": True,
            "server_side_apply": {"field_manager": "bench-k8s", "force_conflicts": True},
            "definition": "{{ item }}" if loop else DATA}
    task = {"name": "k8s", "kubernetes.core.k8s": args}
    if loop:
        task["loop"] = "{{ (" + LOOKUP + " | from_json)['items'] }}"
        task["loop_control"] = {"label": "{{ item.kind }}/{{ item.metadata.name }}"}
    return task


def as_list(objs: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": objs}


ROUNDS = 5
SCALES = (1000, 5000, 10000)
NOOP_TARGETS = {1000: 5.0, 10000: 10.0}  # seconds, no-op re-run (best of ROUNDS)


def run() -> bool:
    """Time ours against kubernetes.core.k8s (loop, list) at 200 endpoints, then ours at 1,000, 5,000 and 10,000."""
    from tests.harness import kubeapi

    missing = kubeapi.missing_binaries()
    if missing:
        print(kubeapi.missing_message(missing))
        return False
    print("benchmark: registration, 200 VM endpoints across 20 services (220 objects), real kube-apiserver "
          f"{kubeapi.pinned_versions()['kubernetes']} on loopback; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="fm-bench-reg-") as tmp:
        workdir = Path(tmp)
        with kubeapi.KubeAPI(workdir / "kube") as api:
            kubeconfig = api.registrar_kubeconfig
            names = [f"bench-{n}-{r}" for n in ("ours", "list") for r in range(ROUNDS)] + ["bench-loop"]
            names += [f"bench-scale-{n}" for n in SCALES]
            api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names])

            def measure(book: Path) -> tuple[float, float]:
                wall = run_playbook(book, api)
                return wall, CPU["client"] + CPU["server"]

            def book_for(name: str, namespace: str) -> Path:
                if name == "ours":
                    return playbook(workdir, namespace, ours_task(kubeconfig, namespace), endpoints(200, namespace))
                return playbook(workdir, namespace, k8s_task(kubeconfig, name == "loop"),
                                as_list(objects(endpoints(200, namespace))))

            runs: dict[str, dict[str, list[tuple[float, float]]]] = {
                n: {"register": [], "no-op": []} for n in ("ours", "list", "loop")}
            for r in range(ROUNDS):
                for name in (("ours", "list") if r % 2 == 0 else ("list", "ours")):
                    namespace = f"bench-{name}-{r}"
                    book = book_for(name, namespace)
                    runs[name]["register"].append(measure(book))
                    runs[name]["no-op"].append(measure(book))
                    if count_objects(api, namespace) != 220:
                        print(f"  {name}: {count_objects(api, namespace)} objects registered, expected 220")
                        return False
            book = book_for("loop", "bench-loop")
            runs["loop"]["register"].append(measure(book))
            runs["loop"]["no-op"].append(measure(book))
            if count_objects(api, "bench-loop") != 220:
                print(f"  loop: {count_objects(api, 'bench-loop')} objects registered, expected 220")
                return False

            best = {n: {k: min(v) for k, v in phases.items()} for n, phases in runs.items()}
            print(f"  best of {ROUNDS} (loop: 1 run); wall time (CPU s: Ansible + API server)   "
                  f"{'register':>17s} {'no-op re-run':>17s}")
            for name, label in (("ours", "ours: mesh_registration, one task"), ("list", "kubernetes.core.k8s, list"),
                                ("loop", "kubernetes.core.k8s, loop")):
                (w1, c1), (w2, c2) = best[name]["register"], best[name]["no-op"]
                print(f"  {label:64s} {w1:7.2f}s ({c1:6.1f}) {w2:7.2f}s ({c2:6.1f})")
            for name in ("ours", "list"):
                every = "  ".join(f"{w:.1f}/{n:.1f}" for (w, _c), (n, _d) in
                                  zip(runs[name]["register"], runs[name]["no-op"], strict=True))
                print(f"    every round of {name} (register/no-op s): {every}")
            ours = [best["ours"]["register"][0], best["ours"]["no-op"][0]]
            ratios = {n: [best[n]["register"][0] / ours[0], best[n]["no-op"][0] / ours[1]] for n in ("loop", "list")}
            ok_loop = min(ratios["loop"]) >= 10
            ok_list = min(ratios["list"]) >= 2
            print(f"  ours vs loop: {ratios['loop'][0]:5.1f}x register, {ratios['loop'][1]:5.1f}x no-op   "
                  f"target >= 10x: {'PASS' if ok_loop else 'FAIL'}")
            print(f"  ours vs list: {ratios['list'][0]:5.1f}x register, {ratios['list'][1]:5.1f}x no-op   "
                  f"target >= 2x: {'PASS' if ok_list else 'FAIL'}")

            print(f"  scaling ours alone (a WorkloadEntry per VM + a Service per service, 20 services; no-op best of "
                  f"{ROUNDS}):")
            print(f"  {'endpoints':>10s} {'objects':>8s} {'register':>9s} {'no-op':>8s} {'register/200':>13s} "
                  f"{'no-op/200':>10s}")
            print(f"  {200:10d} {220:8d} {ours[0]:8.2f}s {ours[1]:7.2f}s {1.0:12.1f}x {1.0:9.1f}x")
            noop = {}
            for count in SCALES:
                namespace = f"bench-scale-{count}"
                book = playbook(workdir, namespace, ours_task(kubeconfig, namespace), endpoints(count, namespace))
                first = run_playbook(book, api)
                noop[count] = min(run_playbook(book, api) for _round in range(ROUNDS))
                found = count_objects(api, namespace)
                print(f"  {count:10d} {found:8d} {first:8.2f}s {noop[count]:7.2f}s {first / ours[0]:12.1f}x "
                      f"{noop[count] / ours[1]:9.1f}x")
            ok_noop = True
            for count, target in NOOP_TARGETS.items():
                ok = noop[count] < target
                ok_noop = ok_noop and ok
                print(f"  no-op re-run at {count:,} endpoints: {noop[count]:.2f}s   target < {target:.0f} s: "
                      f"{'PASS' if ok else 'FAIL'}")
    print(f"  load average at end {os.getloadavg()[0]:.1f}")
    return ok_loop and ok_list and ok_noop
