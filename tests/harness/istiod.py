"""A real istiod (``pilot-discovery discovery``) against the harness kube-apiserver, for tests (issue 14).

istiod is built from the same pinned ``istio.io/istio`` module as pilot-agent by
``tools/pkg/istio-sidecar/build-istiod.sh``, which also copies Istio's own CRDs
(``manifests/charts/base/files/crd-all.gen.yaml``) next to the binary. The API server must serve those CRDs
instead of the harness's stand-ins: start it as ``KubeAPI(..., istio_crds=istiod.crds_file())``.

Every listener is on 127.0.0.1 on a free-picked port: HTTP (debug, ``/ready``), plain xDS gRPC (15010), secure
gRPC (15012: xDS and the CA, TLS with ``istiod.istio-system.svc`` SANs), the webhook HTTPS port (15017),
monitoring (15014) and ControlZ.

CA modes:

* plug-in CA (``cacerts=``): Istio's ``cacerts`` layout (ca-cert.pem, ca-key.pem, root-cert.pem,
  cert-chain.pem) is written as the ``cacerts`` Secret in istio-system, and istiod loads it from there
  (``USE_REMOTE_CERTS=true``; ``ROOT_CA_DIR`` is an empty directory of the state dir, which istiod fills from
  the Secret). The workload_certs role reads the same Secret, so both sign under one root.
* self-signed (``cacerts=None``): istiod makes its own root (the ``istio-ca-secret`` Secret); its root is
  published in the ``istio-ca-root-cert`` ConfigMap of each namespace.

Library use::

    with KubeAPI(tmp / "kube", istio_crds=istiod.crds_file()) as api, Istiod(api, tmp / "istiod") as pilot:
        pilot.secure_grpc_port                     # 15012-equivalent on 127.0.0.1
        pilot.root_cert("team-a")                  # root-cert.pem of the istio-ca-root-cert ConfigMap
        pilot.create_certificate(csr_pem, token)   # CA call over the secure gRPC port: the chain, leaf first
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

HARNESS_DIR = Path(__file__).resolve().parent
REPO_ROOT = HARNESS_DIR.parent.parent
sys.path.insert(0, str(HARNESS_DIR))

import kubeapi  # noqa: E402  (tests/harness on sys.path)

BUILD_SCRIPT = REPO_ROOT / "tools" / "pkg" / "istio-sidecar" / "build-istiod.sh"
PIN_SCRIPT = REPO_ROOT / "tools" / "pkg" / "istio-sidecar" / "build-pilot-agent.sh"
CA_CLIENT = HARNESS_DIR / "istio_ca_client.py"
NAMESPACE = "istio-system"
SERVER_NAME = f"istiod.{NAMESPACE}.svc"
CLUSTER_ID = "Kubernetes"
DOMAIN = "cluster.local"
# The CA client needs grpcio, which the test virtualenv lacks: Debian's python3-grpcio (make setup) is used.
SYSTEM_PYTHON = os.environ.get("FLEETMESH_GRPC_PYTHON", "/usr/bin/python3")
_LOCALHOST = "127.0.0.1"


class IstiodError(RuntimeError):
    """istiod could not be started, or did not do what was expected."""


class IstiodMissing(IstiodError):
    """pilot-discovery or Istio's CRDs are not built yet (run build-istiod.sh)."""


def pinned_version() -> str:
    """The istio.io/istio module version pilot-agent and istiod are built from (build-pilot-agent.sh)."""
    env = os.environ.get("ISTIO_GO_MODULE_VERSION")
    if env:
        return env
    match = re.search(r'^ISTIO_GO_MODULE_VERSION="\$\{ISTIO_GO_MODULE_VERSION:-([^}]+)\}"', PIN_SCRIPT.read_text(),
                      re.MULTILINE)
    if not match:
        raise IstiodError(f"cannot read the pinned istio.io/istio version from {PIN_SCRIPT}")
    return match.group(1)


def bin_dir(version: str | None = None) -> Path:
    return kubeapi.cache_dir() / "istio-sidecar" / "istiod" / (version or pinned_version())


def binary() -> Path:
    return bin_dir() / "pilot-discovery"


def crds_file() -> Path:
    """Istio's own CRDs (crd-all.gen.yaml of the pinned module, copied next to the binary by build-istiod.sh)."""
    return bin_dir() / "crd-all.gen.yaml"


def module_dir(version: str | None = None) -> Path:
    """The pinned istio.io/istio module source in the Go module cache (downloaded by the builds)."""
    return kubeapi.cache_dir() / "go" / "mod" / "istio.io" / f"istio@{version or pinned_version()}"


def pilot_agent_binary(version: str | None = None) -> Path:
    """The real pilot-agent of the istio-sidecar package (build-pilot-agent.sh), same pin as istiod."""
    return kubeapi.cache_dir() / "istio-sidecar" / "pilot-agent" / (version or pinned_version()) / "pilot-agent"


def missing_binaries() -> list[Path]:
    missing = [p for p in (binary(),) if not os.access(p, os.X_OK)]
    missing += [p for p in (crds_file(),) if not p.is_file()]
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        missing.append(Path(SYSTEM_PYTHON))
    return missing


def missing_message(missing: list[Path]) -> str:
    return (f"istiod test binaries are missing: {', '.join(str(p) for p in missing)}. Run "
            f"`{BUILD_SCRIPT.relative_to(REPO_ROOT)}` (istiod from istio.io/istio@{pinned_version()}, about 4.5 min "
            "on a build cache warmed by pilot-agent; or `tools/setup.sh istiod`); the CA client runs on "
            f"{SYSTEM_PYTHON} with python3-grpcio (make setup).")


def mesh_config(trust_domain: str = DOMAIN) -> dict[str, Any]:
    return {
        "trustDomain": trust_domain,
        "rootNamespace": NAMESPACE,
        "enableAutoMtls": True,
        "defaultConfig": {"discoveryAddress": f"{SERVER_NAME}:15012"},
    }


class Istiod:
    """``pilot-discovery discovery`` on loopback with the harness admin kubeconfig."""

    def __init__(self, api: kubeapi.KubeAPI, state_dir: str | os.PathLike[str], *,
                 cacerts: dict[str, bytes] | None = None, trust_domain: str = DOMAIN,
                 extra_env: dict[str, str] | None = None, startup_timeout: float = 90.0,
                 secure_grpc_address: tuple[str, int] | None = None):
        """``secure_grpc_address``: (host, port) for the secure gRPC port (xDS and CA) instead of a free port on
        127.0.0.1, e.g. the lab network's host-side address and 15012 so the lab VMs reach it (every other
        listener stays on loopback)."""
        self.api = api
        self.secure_grpc_address = secure_grpc_address
        self.secure_grpc_host = _LOCALHOST
        self.state_dir = Path(state_dir).resolve()
        self.cacerts = cacerts
        self.trust_domain = trust_domain
        self.extra_env = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_time: int | None = None
        self.log = self.state_dir / "istiod.log"

    @property
    def secure_grpc_port(self) -> int:
        return self.ports["secure_grpc"]

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        missing = missing_binaries()
        if missing:
            raise IstiodMissing(missing_message(missing))
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        names = ("http", "https", "grpc", "secure_grpc", "monitoring", "ctrlz")
        self.ports = dict(zip(names, kubeapi.distinct_free_ports(len(names)), strict=True))
        self.secure_grpc_host = _LOCALHOST
        if self.secure_grpc_address is not None:
            self.secure_grpc_host, self.ports["secure_grpc"] = self.secure_grpc_address
        self.api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        if self.cacerts is not None:
            self.api.apply([{
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "cacerts", "namespace": NAMESPACE},
                "data": {k: base64.b64encode(v).decode() for k, v in self.cacerts.items()},
            }])
        mesh = self.state_dir / "mesh.yaml"
        mesh.write_text(json.dumps(mesh_config(self.trust_domain), indent=1) + "\n")
        # istiod fills ROOT_CA_DIR from the cacerts Secret (plug-in mode) or leaves it empty (self-signed):
        # a fresh empty directory per start, so a Secret from an earlier start does not linger.
        ca_dir = self.state_dir / "cacerts"
        shutil.rmtree(ca_dir, ignore_errors=True)
        ca_dir.mkdir(mode=0o700)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "ISTIO", "PILOT_"))},
            "POD_NAMESPACE": NAMESPACE,
            "POD_NAME": "istiod-harness",
            "CLUSTER_ID": CLUSTER_ID,
            "REVISION": "default",
            # No webhooks: nothing would call them (no pods), and istiod would patch configurations that are not there.
            "VALIDATION_WEBHOOK_CONFIG_NAME": "",
            "INJECTION_WEBHOOK_CONFIG_NAME": "",
            "ROOT_CA_DIR": str(ca_dir),
            "USE_REMOTE_CERTS": "true" if self.cacerts is not None else "false",
            # The proxies here are upstream Envoy (the istio-sidecar package's, tools/fetch-envoy.sh), not Istio's
            # proxy build: it has no istio.metadata_exchange filter and NACKs every cluster and listener that uses it.
            "PILOT_ENABLE_METADATA_EXCHANGE": "false",
            # Nor Istio's istio.alpn HTTP filter, which istiod puts in every outbound HTTP listener (the lab VMs'
            # 0.0.0.0_8080 once the web service has endpoints): upstream Envoy NACKs the listener without this.
            "PILOT_ENABLE_ALPN_FILTER": "false",
            **self.extra_env,
        }
        argv = [
            str(binary()), "discovery",
            f"--kubeconfig={self.api.admin_kubeconfig}",
            f"--meshConfig={mesh}",
            f"--networksConfig={self.state_dir / 'meshNetworks'}",
            f"--clusterID={CLUSTER_ID}",
            f"--domain={DOMAIN}",
            f"--httpAddr={_LOCALHOST}:{self.ports['http']}",
            f"--httpsAddr={_LOCALHOST}:{self.ports['https']}",
            f"--grpcAddr={_LOCALHOST}:{self.ports['grpc']}",
            f"--secureGRPCAddr={self.secure_grpc_host}:{self.ports['secure_grpc']}",
            f"--monitoringAddr={_LOCALHOST}:{self.ports['monitoring']}",
            f"--ctrlz_address={_LOCALHOST}", f"--ctrlz_port={self.ports['ctrlz']}",
            "--profile=false",
            "--shutdownDuration=1s",
            "--log_output_level=default:info",
        ]
        with open(self.log, "ab") as log:
            log.write(f"\n==== {datetime.datetime.now().isoformat()} {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, cwd=self.state_dir, start_new_session=True, close_fds=True,
                                          preexec_fn=kubeapi._die_with_parent)  # noqa: PLW1509 - only prctl()
        self._start_time = kubeapi._proc_start_time(self._proc.pid)
        try:
            kubeapi._wait("istiod /ready", lambda: self._check_alive() and self._http_ok("/ready"),
                          self.startup_timeout, interval=0.1)
        except BaseException:
            self.stop()
            raise
        self.timings["ready"] = time.monotonic() - t0
        return self

    def _check_alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise IstiodError(f"istiod exited with status {self._proc.returncode}; {self.log}:\n"
                              f"{kubeapi._tail(self.log, 40)}")
        return True

    def _http_ok(self, path: str) -> bool:
        try:
            return self.debug(path)[0] == 200
        except OSError:
            return False

    def debug(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET on istiod's HTTP port (``/ready``, ``/debug/...``): (status, body)."""
        conn = http.client.HTTPConnection(_LOCALHOST, self.ports["http"], timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and kubeapi._proc_start_time(proc.pid) == self._start_time:
            kubeapi._kill_group(proc.pid, timeout=10.0)
        proc.wait(timeout=5)

    # -- the CA ------------------------------------------------------------------------------------

    def root_cert(self, namespace: str, timeout: float = 30.0) -> str:
        """root-cert.pem of the ``istio-ca-root-cert`` ConfigMap istiod writes into ``namespace``."""

        def probe() -> str | None:
            status, body = self.api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert")
            return (body.get("data") or {}).get("root-cert.pem") if status == 200 else None

        return str(kubeapi._wait(f"ConfigMap {namespace}/istio-ca-root-cert", probe, timeout, interval=0.2))

    def create_certificate(self, csr_pem: str, token: str, root_pem: str, *, validity_seconds: int = 3600,
                           timeout: float = 60.0) -> list[str]:
        """CreateCertificate over the secure gRPC port (TLS verified against ``root_pem`` with istiod's service
        name): the chain, leaf first. Raises IstiodError with the gRPC status on refusal."""
        work = self.state_dir / "ca-client"
        work.mkdir(exist_ok=True)
        (work / "root.pem").write_text(root_pem)
        (work / "csr.pem").write_text(csr_pem)
        kubeapi._write_private(work / "token", token.encode())
        proc = subprocess.run(
            [SYSTEM_PYTHON, str(CA_CLIENT), "--target", f"{self.secure_grpc_host}:{self.secure_grpc_port}",
             "--root", str(work / "root.pem"), "--csr", str(work / "csr.pem"), "--token-file", str(work / "token"),
             "--server-name", SERVER_NAME, "--validity", str(validity_seconds)],
            capture_output=True, text=True, check=False, timeout=timeout,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")})
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise IstiodError(f"CA client failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}") from exc
        if result.get("code") != "OK":
            raise IstiodError(f"istiod's CA refused: {result.get('code')}: {result.get('details')}")
        return list(result["chain"])


def start_pilot_agent(pilot: Istiod, work_dir: Path, namespace: str, service_account: str, token: str,
                      root_pem: str, envoy: Path, *, mode: str = "sidecar",
                      extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """The real pilot-agent (``proxy sidecar``, or ``proxy router`` for a gateway) with ``envoy``, as on a VM but on
    loopback: discovery and CA at istiod's secure gRPC port on 127.0.0.1, verified as ``istiod.istio-system.svc``
    (ISTIOD_SAN), the istio-token and root in ``work_dir``, the workload certificate also written to
    ``work_dir/out`` (OUTPUT_CERTS). No traffic capture (interception mode NONE); the agent's and Envoy's own ports
    are free-picked; ``extra_env`` is added to the agent's environment (e.g. ISTIO_METAJSON_LABELS).
    Returns the process (its own process group) and its ports; the caller stops it with kubeapi._kill_group."""
    tokens = work_dir / "var" / "run" / "secrets" / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    kubeapi._write_private(tokens / "istio-token", token.encode())  # ./var/run/secrets/tokens: the agent's path
    (work_dir / "root-cert.pem").write_text(root_pem)
    for sub in ("out", "etc/istio/proxy"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    names = ("admin", "status", "envoy_status", "envoy_prometheus")
    ports = dict(zip(names, kubeapi.distinct_free_ports(len(names)), strict=True))
    proxy_config = {
        "discoveryAddress": f"{pilot.secure_grpc_host}:{pilot.secure_grpc_port}",
        "binaryPath": str(envoy),
        "configPath": str(work_dir / "etc" / "istio" / "proxy"),
        "proxyAdminPort": ports["admin"],
        "statusPort": ports["status"],
    }
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(work_dir),
        "PROXY_CONFIG": json.dumps(proxy_config),
        "ISTIOD_SAN": SERVER_NAME,
        "CA_ROOT_CA": str(work_dir / "root-cert.pem"), "XDS_ROOT_CA": str(work_dir / "root-cert.pem"),
        "OUTPUT_CERTS": str(work_dir / "out"),
        "POD_NAMESPACE": namespace, "SERVICE_ACCOUNT": service_account,
        "ISTIO_META_CLUSTER_ID": CLUSTER_ID, "TRUST_DOMAIN": DOMAIN, "JWT_POLICY": "third-party-jwt",
        "ISTIO_META_INTERCEPTION_MODE": "NONE",
        "ENVOY_STATUS_PORT": str(ports["envoy_status"]), "ENVOY_PROMETHEUS_PORT": str(ports["envoy_prometheus"]),
        **(extra_env or {}),
    }
    template = module_dir() / "tools" / "packaging" / "common" / "envoy_bootstrap.json"
    log = work_dir / "pilot-agent.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(pilot_agent_binary()), "proxy", mode, f"--templateFile={template}",
             f"--serviceCluster={service_account}.{namespace}", "--concurrency=1"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work_dir,
            start_new_session=True, close_fds=True, preexec_fn=kubeapi._die_with_parent)  # noqa: PLW1509
    return proc, ports
