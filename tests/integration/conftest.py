"""Shared fixtures for the integration tests: a real kube-apiserver (tests/harness/kubeapi.py)."""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
_kubeapi_fixtures = importlib.import_module("kubeapi_pytest")

kube_api = _kubeapi_fixtures.kube_api
require_kube_binaries = _kubeapi_fixtures.require_kube_binaries
