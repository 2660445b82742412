"""pytest fixtures around :mod:`contour`: a real Contour + Envoy ingress on the session's kube-apiserver.

Import them into a test module (``from contour_pytest import contour_ingress``). Without the contour binary or
the Envoy artifact the tests that use them are skipped with the reason, or fail when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

try:  # imported as tests.harness.contour_pytest
    from . import contour, kubeapi
except ImportError:  # tests/harness itself is on sys.path
    import contour
    import kubeapi

__all__ = ["contour_ingress", "own_contour", "require_contour_binaries"]


def require_contour_binaries() -> None:
    missing = contour.missing_binaries()
    if not missing:
        return
    message = contour.missing_message(missing)
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def contour_ingress(kube_api: kubeapi.KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[contour.Contour]:
    require_contour_binaries()
    ingress = contour.Contour(kube_api, tmp_path_factory.mktemp("contour"))
    try:
        ingress.start()
        yield ingress
    finally:
        ingress.stop()


@contextlib.contextmanager
def own_contour(api: kubeapi.KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[contour.Contour]:
    """A Contour + Envoy of a module's own API server (kubeapi_pytest.own_kube_api); a few seconds to start."""
    require_contour_binaries()
    ingress = contour.Contour(api, tmp_path_factory.mktemp("contour"))
    try:
        ingress.start()
        yield ingress
    finally:
        ingress.stop()
