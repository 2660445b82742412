"""A real Kubernetes API server (kube-apiserver + etcd, built by build-kube.sh) for tests and the demo.

Library use::

    from kubeapi import KubeAPI          # tests/harness on sys.path, or: from tests.harness.kubeapi import KubeAPI

    with KubeAPI(tmp_path / "kube") as api:
        api.admin_kubeconfig        # system:masters client certificate
        api.registrar_kubeconfig    # TokenRequest token of fleetmesh-system/fleetmesh-registrar (RBAC-limited)
        api.kubeconfig_for_service_account("team-a", "limited", create=True)

CLI (for ``make demo``; the servers keep running after the command returns)::

    python tests/harness/kubeapi.py start  --state-dir DIR   # idempotent; prints shell-style KEY=VALUE lines
    python tests/harness/kubeapi.py status --state-dir DIR   # exit 0 running and ready, 3 not running
    python tests/harness/kubeapi.py stop   --state-dir DIR   # idempotent
    python tests/harness/kubeapi.py check                    # exit 0 if the binaries are built

Only loopback addresses are used. Needs ``cryptography`` and ``PyYAML``; nothing else outside the stdlib.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HARNESS_DIR = Path(__file__).resolve().parent
REPO_ROOT = HARNESS_DIR.parent.parent
CRD_DIR = HARNESS_DIR / "crds"
RBAC_MANIFEST = REPO_ROOT / "roles" / "mesh_registration" / "files" / "rbac.yml"
BUILD_SCRIPT = HARNESS_DIR / "build-kube.sh"

REGISTRAR_NAMESPACE = "fleetmesh-system"
REGISTRAR_NAME = "fleetmesh-registrar"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (SA_ISSUER, "istio-ca")
SERVICE_CIDR = "10.96.0.0/16"
FIELD_MANAGER = "fleetmesh-harness"
TOKEN_SECONDS = 2 * 3600
# The harness's stand-in CRDs that Istio's own CRDs replace (KubeAPI(istio_crds=...)).
ISTIO_STANDIN_PREFIXES = ("networking.istio.io_", "security.istio.io_")

_LOCALHOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc
    _LIBC = None


class KubeAPIError(RuntimeError):
    """The API server could not be started, or a request to it failed."""


class KubeBinariesMissing(KubeAPIError):
    """kube-apiserver or etcd has not been built yet (run ``make kube-build``)."""


# --------------------------------------------------------------------------------------------------
# Versions and binaries
# --------------------------------------------------------------------------------------------------


def _mod_version(go_mod: Path, module: str) -> str:
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", re.MULTILINE)
    match = pattern.search(go_mod.read_text())
    if not match:
        raise KubeAPIError(f"{module} is not pinned in {go_mod}")
    return match.group(1)


def pinned_versions() -> dict[str, str]:
    """Versions pinned by tests/harness/{kube-apiserver,etcd}/go.mod (the single source of truth)."""
    return {
        "kubernetes": _mod_version(HARNESS_DIR / "kube-apiserver" / "go.mod", "k8s.io/kubernetes"),
        "etcd": _mod_version(HARNESS_DIR / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3"),
    }


def cache_dir() -> Path:
    return Path(os.environ.get("FLEETMESH_CACHE") or "/var/cache/fleetmesh")


def default_bin_dir(version: str | None = None) -> Path:
    return cache_dir() / "kube" / (version or pinned_versions()["kubernetes"])


def missing_binaries(bin_dir: Path | None = None) -> list[Path]:
    bin_dir = bin_dir or default_bin_dir()
    return [p for p in (bin_dir / "kube-apiserver", bin_dir / "etcd") if not os.access(p, os.X_OK)]


def missing_message(missing: Iterable[Path]) -> str:
    names = ", ".join(str(p) for p in missing)
    return (
        f"kube-apiserver/etcd test binaries are not built (missing: {names}). "
        f"Run `make kube-build` (= {BUILD_SCRIPT.relative_to(REPO_ROOT)}; needs Go and the Go module proxy; "
        "a cold build takes several minutes, later runs reuse ${FLEETMESH_CACHE:-/var/cache/fleetmesh})."
    )


# --------------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------------

_PKI_FILES = ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt", "admin.key", "sa.key", "sa.pub")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    days: int,
    *,
    ca: bool = False,
    usages: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_pki(pki_dir: Path) -> None:
    """Create the CA, serving cert, admin client cert and service-account keypair unless all exist."""
    if all((pki_dir / name).is_file() for name in _PKI_FILES):
        return
    pki_dir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetmesh-test-kube-ca")])
    ca_cert = _cert(ca_name, ca_key, ca_name, ca_key, 3650, ca=True)

    srv_key = ec.generate_private_key(ec.SECP256R1())
    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(_LOCALHOST)), x509.IPAddress(service_ip)]
    srv_cert = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        srv_key,
        ca_name,
        ca_key,
        365,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=sans,
    )

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fleetmesh-admin"),
        ]
    )
    admin_cert = _cert(admin_name, admin_key, ca_name, ca_key, 365, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    for name, key, cert in (
        ("ca", ca_key, ca_cert),
        ("apiserver", srv_key, srv_cert),
        ("admin", admin_key, admin_cert),
    ):
        _write_private(pki_dir / f"{name}.key", _key_pem(key))
        (pki_dir / f"{name}.crt").write_bytes(cert.public_bytes(pem))
    _write_private(pki_dir / "sa.key", _key_pem(sa_key))
    (pki_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        return int(sock.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports (all bound at once, so none is handed out twice)."""
    socks = []
    try:
        for _index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOCALHOST, 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # SIGKILL, not SIGTERM: both servers get it at once, and kube-apiserver's graceful shutdown stalls for a
    # long time once etcd is gone. Orderly shutdown is stop()'s job; this only prevents orphans.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (guards against PID reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)  # reap our own children so the group can vanish
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


class _Http:
    """Tiny HTTPS client for the API server (client certificate or bearer token)."""

    def __init__(self, port: int, ca_file: Path, cert: tuple[Path, Path] | None = None, token: str | None = None):
        self.port = port
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_file))
        if cert:
            self.context.load_cert_chain(str(cert[0]), str(cert[1]))

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", timeout: float = 30.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(_LOCALHOST, self.port, context=self.context, timeout=timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload


def _wait(what: str, probe: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = probe()
        except (OSError, http.client.HTTPException) as exc:
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise KubeAPIError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# The API server
# --------------------------------------------------------------------------------------------------


class KubeAPI:
    """etcd + kube-apiserver on loopback, with CRDs, the registrar RBAC and kubeconfigs written to state_dir.

    ``detach=True`` (used by the CLI) leaves the servers running when this Python process exits; otherwise
    they are stopped by :meth:`stop`, by ``atexit``, and by the kernel if the starting thread dies.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        version: str | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        detach: bool = False,
        startup_timeout: float = 120.0,
        istio_crds: str | os.PathLike[str] | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        # Istio's own CRDs (crd-all.gen.yaml of the pinned istio.io/istio module, see istiod.py) instead of the
        # harness's stand-ins for networking.istio.io; needed when a real istiod runs against this server.
        # FLEETMESH_HARNESS_ISTIO_CRDS=<file> makes that the default, to run any test against Istio's own CRDs.
        istio_crds = istio_crds or os.environ.get("FLEETMESH_HARNESS_ISTIO_CRDS") or None
        self.istio_crds = Path(istio_crds) if istio_crds else None
        self.version = version or pinned_versions()["kubernetes"]
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir(self.version)
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.pki_dir = self.state_dir / "pki"
        self.ca_file = self.pki_dir / "ca.crt"
        self.admin_kubeconfig = self.state_dir / "admin.kubeconfig"
        self.registrar_kubeconfig = self.state_dir / "registrar.kubeconfig"
        self.state_file = self.state_dir / "state.json"
        self.port: int | None = None
        self.etcd_port: int | None = None
        self.timings: dict[str, float] = {}
        self._procs: dict[str, dict[str, Any]] = {}
        self._popen: list[subprocess.Popen[bytes]] = []
        self._http: _Http | None = None
        self._discovery: dict[str, dict[str, tuple[str, bool]]] = {}
        self._apiserver_argv: list[str] = []
        self._atexit = False

    # -- public attributes -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise KubeAPIError("the API server is not started")
        return f"https://{_LOCALHOST}:{self.port}"

    @property
    def admin(self) -> _Http:
        if self._http is None:
            if self.port is None:
                raise KubeAPIError("the API server is not started")
            self._http = _Http(self.port, self.ca_file, cert=(self.pki_dir / "admin.crt", self.pki_dir / "admin.key"))
        return self._http

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise KubeBinariesMissing(missing_message(missing))
        if self._procs:
            return self
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ensure_pki(self.pki_dir)
        self.timings["pki"] = time.monotonic() - t0
        if not self.detach and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            for attempt in range(3):
                try:
                    self._start_processes()
                    break
                except KubeAPIError as exc:
                    self._stop_processes()
                    if "address already in use" not in str(exc) or attempt == 2:
                        raise
            t1 = time.monotonic()
            self.apply_files(self.crd_files())
            self.timings["crds"] = time.monotonic() - t1
            self.apply_files([RBAC_MANIFEST])
            self._write_kubeconfig(
                self.admin_kubeconfig,
                user={
                    "client-certificate-data": _b64(self.pki_dir / "admin.crt"),
                    "client-key-data": _b64(self.pki_dir / "admin.key"),
                },
                name="admin",
            )
            self.refresh_registrar_kubeconfig()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def crd_files(self) -> list[Path]:
        """The CRD files start() applies: the harness's, with Istio's own in place of the Istio stand-ins when
        ``istio_crds`` is set."""
        files = sorted(CRD_DIR.glob("*.yaml"))
        if self.istio_crds is None:
            return files
        return [f for f in files if not f.name.startswith(ISTIO_STANDIN_PREFIXES)] + [self.istio_crds]

    def _start_processes(self) -> None:
        self.etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self._http = None
        self._discovery = {}
        etcd_dir = self.state_dir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)  # every start is a fresh cluster
        peer = f"http://{_LOCALHOST}:{peer_port}"
        client = f"http://{_LOCALHOST}:{self.etcd_port}"
        t0 = time.monotonic()
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=harness",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=harness={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # test data only: much faster on slow disks
                "--log-level=warn",
            ],
        )
        _wait("etcd /health", lambda: self._check_alive("etcd") and self._etcd_healthy(), 30)
        self.timings["etcd"] = time.monotonic() - t0
        t1 = time.monotonic()
        pki = self.pki_dir
        self._apiserver_argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={client}",
            f"--bind-address={_LOCALHOST}",
            f"--advertise-address={_LOCALHOST}",
            f"--secure-port={self.port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--anonymous-auth=false",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--api-audiences={','.join(API_AUDIENCES)}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ]
        self._spawn("kube-apiserver", self._apiserver_argv)
        _wait(
            "kube-apiserver /readyz",
            lambda: self._check_alive("kube-apiserver") and self._ready(),
            self.startup_timeout,
            interval=0.2,
        )
        self.timings["apiserver"] = time.monotonic() - t1

    # -- an outage -----------------------------------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Take kube-apiserver away, as an outage would: etcd, the data and the port stay."""
        info = self._procs.pop("kube-apiserver", None)
        if info:
            _kill_group(int(info["pgid"]))

    def start_apiserver(self) -> None:
        """Bring kube-apiserver back on the same port, over the same etcd (after :meth:`stop_apiserver`)."""
        if "kube-apiserver" in self._procs:
            return
        self._http = None
        self._spawn("kube-apiserver", self._apiserver_argv)
        _wait("kube-apiserver /readyz", lambda: self._check_alive("kube-apiserver") and self._ready_quietly(),
              self.startup_timeout, interval=0.2)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.state_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"\n==== {datetime.datetime.now().isoformat()} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                close_fds=True,
                preexec_fn=None if self.detach else _die_with_parent,  # noqa: PLW1509 - only prctl()
            )
        self._popen.append(proc)
        self._procs[name] = {
            "pid": proc.pid,
            "pgid": proc.pid,
            "start": _proc_start_time(proc.pid),
            "log": str(log_path),
        }

    def _check_alive(self, name: str) -> bool:
        info = self._procs[name]
        for proc in self._popen:
            if proc.pid == info["pid"] and proc.poll() is not None:
                raise KubeAPIError(
                    f"{name} exited with status {proc.returncode}; {info['log']}:\n{_tail(Path(info['log']))}"
                )
        return True

    def _etcd_healthy(self) -> bool:
        conn = http.client.HTTPConnection(_LOCALHOST, self.etcd_port, timeout=2)
        try:
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read()).get("health") == "true"
        finally:
            conn.close()

    def _ready(self) -> bool:
        return self.admin.request("GET", "/readyz", timeout=5)[0] == 200

    def _ready_quietly(self) -> bool:
        try:
            return self._ready()
        except (OSError, http.client.HTTPException):
            return False

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; leaves the state directory (certs, logs) in place."""
        self._stop_processes()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False

    def _stop_processes(self) -> None:
        for name in ("kube-apiserver", "etcd"):
            info = self._procs.pop(name, None)
            if not info:
                continue
            if info.get("start") is not None and _proc_start_time(info["pid"]) not in (None, info["start"]):
                continue  # the PID now belongs to someone else; the group is long gone
            _kill_group(int(info["pgid"]))
        for proc in self._popen:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._popen = []

    # -- state file (CLI) --------------------------------------------------------------------------

    def _write_state(self) -> None:
        state = {
            "version": self.version,
            "url": self.url,
            "port": self.port,
            "etcd_port": self.etcd_port,
            "ca_file": str(self.ca_file),
            "admin_kubeconfig": str(self.admin_kubeconfig),
            "registrar_kubeconfig": str(self.registrar_kubeconfig),
            "processes": self._procs,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def attach(cls, state_dir: str | os.PathLike[str]) -> KubeAPI | None:
        """A handle on servers started earlier (e.g. by the CLI) in ``state_dir``, or None."""
        api = cls(state_dir, detach=True)
        try:
            state = json.loads(api.state_file.read_text())
        except (OSError, ValueError):
            return None
        api.version, api.port, api.etcd_port = state["version"], state["port"], state["etcd_port"]
        api._procs = state["processes"]
        api.timings = state.get("timings", {})
        return api

    def processes_alive(self) -> bool:
        return bool(self._procs) and all(
            _proc_start_time(p["pid"]) == p.get("start") and _group_alive(int(p["pgid"])) for p in self._procs.values()
        )

    # -- API helpers -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """Raw request as the admin (or with ``token``); returns (status, decoded JSON)."""
        client = self.admin if token is None else _Http(self.port or 0, self.ca_file, token=token)
        return client.request(method, path, body, content_type=content_type)

    def _resources(self, api_version: str, refresh: bool = False) -> dict[str, tuple[str, bool]]:
        if refresh or api_version not in self._discovery:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, body = self.request("GET", base)
            if status != 200:
                return {}
            self._discovery[api_version] = {
                r["kind"]: (r["name"], r["namespaced"]) for r in body["resources"] if "/" not in r["name"]
            }
        return self._discovery[api_version]

    def resource_path(self, api_version: str, kind: str, name: str | None = None, namespace: str | None = None) -> str:
        found = self._resources(api_version).get(kind) or self._resources(api_version, refresh=True).get(kind)
        if not found:
            raise KubeAPIError(f"the API server does not serve {kind} in {api_version}")
        plural, namespaced = found
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            base += f"/namespaces/{namespace or 'default'}"
        return f"{base}/{plural}" + (f"/{name}" if name else "")

    def apply(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Server-side apply each manifest (as the admin), expanding ``kind: *List``.

        CRDs are waited on until Established and served.
        """
        applied = []
        for doc in docs:
            if not doc:
                continue
            if doc["kind"].endswith("List") and "items" in doc:
                applied += self.apply(doc["items"] or [])
                continue
            meta = doc["metadata"]
            path = self.resource_path(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))
            query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
            status, body = self.request("PATCH", f"{path}?{query}", doc, content_type="application/apply-patch+yaml")
            if status not in (200, 201):
                raise KubeAPIError(f"apply {doc['kind']}/{meta['name']} failed ({status}): {body}")
            applied.append(body)
            if doc["kind"] == "CustomResourceDefinition":
                self.wait_crd_established(meta["name"])
        return applied

    def apply_files(self, paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for path in paths:
            docs += [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        return self.apply(docs)

    def wait_crd_established(self, name: str, timeout: float = 30.0) -> None:
        """Wait for Established=True and for every served version to show up in discovery."""
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"

        def established() -> dict[str, Any] | None:
            status, body = self.request("GET", path)
            conds = ((body or {}).get("status") or {}).get("conditions") or [] if status == 200 else []
            ok = any(c["type"] == "Established" and c["status"] == "True" for c in conds)
            return body if ok else None

        crd = _wait(f"CRD {name} Established", established, timeout)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in (v["name"] for v in crd["spec"]["versions"] if v["served"]):
            _wait(
                f"{group}/{version} discovery",
                lambda gv=f"{group}/{version}": kind in self._resources(gv, refresh=True),
                timeout,
            )

    def token(
        self, namespace: str, name: str, audiences: Iterable[str] = (), expiration_seconds: int = TOKEN_SECONDS
    ) -> str:
        """A TokenRequest token for ServiceAccount namespace/name (default audiences: the API server's)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        status, resp = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        if status != 201:
            raise KubeAPIError(f"TokenRequest for {namespace}/{name} failed ({status}): {resp}")
        return str(resp["status"]["token"])

    def kubeconfig_for_service_account(
        self,
        namespace: str,
        name: str,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        expiration_seconds: int = TOKEN_SECONDS,
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount namespace/name with a bounded token.

        The token's only audience is the API server's issuer, so it cannot pass as an ``istio-ca`` token.

        With ``create=True`` the namespace and ServiceAccount are created if missing (no RBAC is granted).
        """
        if create:
            self.apply(
                [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
                ]
            )
        target = Path(path) if path else self.state_dir / f"sa-{namespace}-{name}.kubeconfig"
        token = self.token(namespace, name, audiences=[SA_ISSUER], expiration_seconds=expiration_seconds)
        self._write_kubeconfig(target, user={"token": token}, name=f"{namespace}-{name}", namespace=namespace)
        return target

    def refresh_registrar_kubeconfig(self) -> Path:
        return self.kubeconfig_for_service_account(REGISTRAR_NAMESPACE, REGISTRAR_NAME, self.registrar_kubeconfig)

    def _write_kubeconfig(self, path: Path, user: dict[str, str], name: str, namespace: str = "default") -> None:
        cluster = "fleetmesh-kubeapi"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster, "cluster": {"server": self.url, "certificate-authority-data": _b64(self.ca_file)}}
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [
                {"name": f"{cluster}-{name}", "context": {"cluster": cluster, "user": name, "namespace": namespace}}
            ],
            "current-context": f"{cluster}-{name}",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _print_env(api: KubeAPI) -> None:
    print(f"KUBE_API_URL={api.url}")
    print(f"KUBE_API_CA={api.ca_file}")
    print(f"ADMIN_KUBECONFIG={api.admin_kubeconfig}")
    print(f"REGISTRAR_KUBECONFIG={api.registrar_kubeconfig}")


def _namespaces(api: KubeAPI, names: list[str]) -> None:
    api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names])


def _cli_start(args: argparse.Namespace) -> int:
    running = KubeAPI.attach(args.state_dir)
    if running is not None:
        if running.processes_alive() and running._ready_quietly():
            running.refresh_registrar_kubeconfig()  # a fresh 2 h token on every start
            _namespaces(running, args.namespace)
            print(f"# kube-apiserver {running.version} already running", file=sys.stderr)
            _print_env(running)
            return 0
        running.stop()  # stale state: clean up leftovers before starting again
    api = KubeAPI(args.state_dir, args.version, detach=True, startup_timeout=args.timeout)
    try:
        api.start()
    except KubeBinariesMissing as exc:
        print(f"kubeapi: {exc}", file=sys.stderr)
        return 2
    _namespaces(api, args.namespace)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in api.timings.items())
    print(f"# kube-apiserver {api.version} ready at {api.url} ({timings}); logs in {api.state_dir}", file=sys.stderr)
    _print_env(api)
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    api = KubeAPI.attach(args.state_dir)
    if api is None:
        print(f"kubeapi: not running (no {Path(args.state_dir) / 'state.json'})", file=sys.stderr)
        return 0
    api.stop()
    print(f"kubeapi: stopped kube-apiserver and etcd of {api.state_dir}", file=sys.stderr)
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    api = KubeAPI.attach(args.state_dir)
    if api is None:
        print(json.dumps({"running": False, "state_dir": str(Path(args.state_dir).resolve())}))
        return 3
    alive = api.processes_alive()
    ready = alive and api._ready_quietly()
    state = json.loads(api.state_file.read_text())
    print(json.dumps({"running": alive, "ready": ready, **state}, indent=2))
    return 0 if ready else 3


def _cli_check(args: argparse.Namespace) -> int:
    missing = missing_binaries(default_bin_dir(args.version))
    if missing:
        print(f"kubeapi: {missing_message(missing)}", file=sys.stderr)
        return 1
    print(default_bin_dir(args.version))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeapi.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default_state = os.environ.get("FLEETMESH_KUBE_STATE_DIR", "/tmp/fleetmesh-kubeapi")
    for name, func in (("start", _cli_start), ("stop", _cli_stop), ("status", _cli_status), ("check", _cli_check)):
        cmd = sub.add_parser(name)
        cmd.set_defaults(func=func)
        cmd.add_argument("--state-dir", default=default_state, help=f"default: {default_state}")
        cmd.add_argument("--version", default=None, help="Kubernetes version (default: pinned in go.mod)")
        cmd.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /readyz")
        if name == "start":
            cmd.add_argument("--namespace", action="append", default=[], metavar="NAME",
                             help="create this namespace (repeatable); the registration never creates namespaces")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KubeAPIError as exc:
        print(f"kubeapi: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
