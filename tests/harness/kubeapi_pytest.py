"""pytest fixtures around :mod:`kubeapi`; a conftest.py re-exports them (``from kubeapi_pytest import *``).

``kube_api`` starts one real kube-apiserver + etcd per test session. Without built binaries the tests that use
it are skipped with the reason, or fail when ``CI=true`` (CI must build them: ``make kube-build``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

try:  # imported as tests.harness.kubeapi_pytest
    from . import istiod, kubeapi
except ImportError:  # tests/harness itself is on sys.path
    import istiod
    import kubeapi

__all__ = ["kube_api", "not_built", "own_kube_api", "require_istiod", "require_kube_binaries"]


def not_built(message: str) -> None:
    """Skip the calling test naming what is not built, or fail it when CI=true (CI must build everything)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_kube_binaries() -> None:
    """Skip (or, when CI=true, fail) the calling test if kube-apiserver/etcd are not built."""
    missing = kubeapi.missing_binaries()
    if missing:
        not_built(kubeapi.missing_message(missing))


def require_istiod() -> None:
    """Skip (or, when CI=true, fail) the calling test if istiod (pilot-discovery) is not built."""
    missing = istiod.missing_binaries()
    if missing:
        not_built(istiod.missing_message(missing))


@contextlib.contextmanager
def own_kube_api(tmp_path_factory: pytest.TempPathFactory, *namespaces: str) -> Iterator[kubeapi.KubeAPI]:
    """A kube-apiserver + etcd of the calling test module's own (its registrations do not mix with other modules'),
    with ``namespaces`` created; stopped on exit."""
    require_kube_binaries()
    api = kubeapi.KubeAPI(tmp_path_factory.mktemp("kube"))
    api.start()
    try:
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces])
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubeapi.KubeAPI]:
    require_kube_binaries()
    api = kubeapi.KubeAPI(tmp_path_factory.mktemp("kubeapi"))
    try:
        api.start()
        yield api
    finally:
        api.stop()
