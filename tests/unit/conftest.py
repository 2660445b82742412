"""Make `ansible_collections.fleetmesh.envoy` importable and provide a real Envoy to tests."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # envoy_harness, also under --import-mode=importlib
    sys.path.insert(0, str(HERE))


def collections_root() -> Path:
    """A directory holding ansible_collections/fleetmesh/envoy -> this work tree.

    .build/collections when it is set up that way (the Makefile does), else a new temporary one.
    """
    build = REPO / '.build' / 'collections'
    link = build / 'ansible_collections' / 'fleetmesh' / 'envoy'
    if link.exists() and link.resolve() == REPO:
        return build
    root = Path(tempfile.mkdtemp(prefix='fleetmesh-collections-'))
    (root / 'ansible_collections' / 'fleetmesh').mkdir(parents=True)
    (root / 'ansible_collections' / 'fleetmesh' / 'envoy').symlink_to(REPO)
    return root


COLLECTIONS_ROOT = collections_root()
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))


@pytest.fixture(scope='session')
def envoy_bin() -> Path:
    from envoy_harness import find_envoy

    return find_envoy()


@pytest.fixture(scope='module')
def running_envoy(envoy_bin, tmp_path_factory):
    """One Envoy on loopback (free ports) for a test module; tests leave its health check passing."""
    from envoy_harness import Envoy

    with Envoy(envoy_bin, tmp_path_factory.mktemp('envoy')) as envoy:
        yield envoy
