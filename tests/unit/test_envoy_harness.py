"""Where the tests look for Envoy, and what they say when it is missing."""

from __future__ import annotations

import pytest
from envoy_harness import envoy_candidates, find_envoy


def test_candidates_follow_the_cache_layout(monkeypatch, tmp_path):
    monkeypatch.delenv('FLEETMESH_ENVOY_BIN_DIR', raising=False)
    monkeypatch.setenv('FLEETMESH_CACHE', str(tmp_path))
    assert [str(p) for p in envoy_candidates('1.40.0')] == [
        f'{tmp_path}/artifacts/envoy/1.40.0/envoy', '/tmp/boot/envoy/1.40.0/envoy']
    monkeypatch.setenv('FLEETMESH_ENVOY_BIN_DIR', '/opt/envoys')
    assert str(envoy_candidates('1.39.3')[0]) == '/opt/envoys/1.39.3/envoy'


def test_bin_dir_override_is_used(monkeypatch, tmp_path):
    binary = tmp_path / '9.9.9' / 'envoy'
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\n')
    binary.chmod(0o755)
    monkeypatch.setenv('FLEETMESH_ENVOY_BIN_DIR', str(tmp_path))
    assert find_envoy('9.9.9') == binary


def test_missing_binary_fails_in_ci_naming_the_file_and_make_setup(monkeypatch, tmp_path):
    monkeypatch.setenv('FLEETMESH_ENVOY_BIN_DIR', str(tmp_path))
    monkeypatch.setenv('CI', 'true')
    with pytest.raises(pytest.fail.Exception) as err:
        find_envoy('0.0.1')
    message = str(err.value)
    assert f'{tmp_path}/0.0.1/envoy' in message and '`make setup`' in message


def test_missing_binary_skips_outside_ci(monkeypatch, tmp_path):
    monkeypatch.setenv('FLEETMESH_ENVOY_BIN_DIR', str(tmp_path))
    monkeypatch.delenv('CI', raising=False)
    with pytest.raises(pytest.skip.Exception, match='Envoy 0.0.1 binary not found'):
        find_envoy('0.0.1')
