"""The Contour ingress harness (tests/harness/contour.py) on its own: pinned build, Contour's own CRDs, free ports.

No lab VM is needed; the lab tests are in test_ingress_contour.py.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import contour  # tests/harness is put on sys.path by conftest.py
import pytest

pytestmark = pytest.mark.kube
contour_ingress = importlib.import_module("contour_pytest").contour_ingress  # the fixture (tests/harness)
HARNESS = Path(__file__).resolve().parents[1] / "harness"


def test_committed_crds_are_contours_own_from_the_pinned_module():
    importlib.import_module("contour_pytest").require_contour_binaries()
    assert contour.pinned_version() == "v1.33.8"
    assert contour.check_crds() == []
    proc = subprocess.run([sys.executable, str(HARNESS / "contour.py"), "crds"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    build = subprocess.run([str(HARNESS / "build-contour.sh"), "--check"], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr


def test_contour_serves_on_free_loopback_ports_and_judges_httpproxies(kube_api, contour_ingress):
    ports = contour_ingress.ports
    assert len(set(ports.values())) == len(ports) and 9001 not in ports.values() and 8080 not in ports.values()
    ns = f"ct-{uuid.uuid4().hex[:8]}"
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    # Fields the old stand-in CRD pruned (tcpproxy) are kept by Contour's own CRD.
    kube_api.apply([{"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy",
                     "metadata": {"name": "tcp", "namespace": ns},
                     "spec": {"virtualhost": {"fqdn": "tcp.example", "tls": {"passthrough": True}},
                              "tcpproxy": {"services": [{"name": "db", "port": 5432}]}}}])
    status, body = kube_api.request("GET", kube_api.resource_path("projectcontour.io/v1", "HTTPProxy", "tcp", ns))
    assert status == 200 and body["spec"]["tcpproxy"] == {"services": [{"name": "db", "port": 5432}]}, body
    # A route to a Service that does not exist makes the whole HTTPProxy invalid: what registration must avoid.
    kube_api.apply([{"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy",
                     "metadata": {"name": "p", "namespace": ns},
                     "spec": {"virtualhost": {"fqdn": "p.example"},
                              "routes": [{"services": [{"name": "gone", "port": 80}]}]}}])
    status = contour_ingress.wait_proxy_status(ns, "p", "invalid")
    assert "not found" in json.dumps(status)
