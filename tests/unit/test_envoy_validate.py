"""`envoy --mode validate` and validated atomic writes, with the real Envoy binary."""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    EnvoyValidateError,
    atomic_write_validated,
    envoy_error_text,
    validate,
    validate_content,
)
from envoy_harness import bootstrap_yaml, unknown_filter_bootstrap

UNKNOWN_FILTER_MESSAGE = "Didn't find a registered implementation for 'envoy.filters.http.fleetmesh_no_such_filter'"


def test_validate_good_config(envoy_bin, tmp_path):
    path = tmp_path / 'envoy.yaml'
    path.write_text(bootstrap_yaml(admin_port=9901, listener_port=8080))
    assert validate(str(envoy_bin), str(path)) == (True, '')


def test_validate_unknown_filter_gives_envoys_message(envoy_bin, tmp_path):
    path = tmp_path / 'envoy.yaml'
    path.write_text(unknown_filter_bootstrap())
    ok, text = validate(str(envoy_bin), str(path))
    assert ok is False
    assert UNKNOWN_FILTER_MESSAGE in text
    assert text.startswith(f"error initializing configuration '{path}': ")
    assert '[critical]' not in text and '][main]' not in text  # log prefix trimmed
    assert 'loading 1 listener' not in text  # info lines dropped


def test_validate_yaml_syntax_error(envoy_bin, tmp_path):
    path = tmp_path / 'envoy.yaml'
    path.write_text('admin: [unclosed\n')
    ok, text = validate(str(envoy_bin), str(path))
    assert ok is False and 'yaml-cpp' in text


def test_validate_proto_error_omits_the_config_dump(envoy_bin, tmp_path):
    path = tmp_path / 'envoy.yaml'
    secret = 'do-not-echo-this-secret'
    config = bootstrap_yaml().replace('stat_prefix: ingress', f'stat_prefix: ingress\n          bogus_field: {secret}')
    path.write_text(config)
    ok, text = validate(str(envoy_bin), str(path))
    assert ok is False
    assert 'bogus_field' in text
    assert secret not in text


def test_validate_binary_missing(tmp_path):
    with pytest.raises(EnvoyValidateError, match='cannot run /nonexistent/envoy'):
        validate('/nonexistent/envoy', str(tmp_path / 'x.yaml'))


def test_envoy_error_text_parsing():
    output = (
        '[2026-11-23 03:14:20.589][5397][info][config] [source/server/configuration_impl.cc:148] loading 1 listener\n'
        "[2026-11-23 03:14:20.592][5397][critical][main] [source/server/config_validation/server.cc:76] error "
        "initializing configuration 'x.yaml': Unable to parse JSON as proto (INVALID_ARGUMENT: bad (nested) thing): "
        '{"admin":\n'
        '  {"secret": 1}}\n'
    )
    # the configuration Envoy echoes after the parse error (continuation lines included) is dropped
    assert envoy_error_text(output) == (
        "error initializing configuration 'x.yaml': Unable to parse JSON as proto "
        '(INVALID_ARGUMENT: bad (nested) thing)')
    continued = '[2026-11-23 03:14:20.592][1][error][main] [a.cc:1] first line\nsecond line\n'
    assert envoy_error_text(continued) == 'first line\nsecond line'
    assert envoy_error_text('plain failure\n') == 'plain failure'
    assert envoy_error_text('[2026-11-23 03:14:20.589][1][info][main] [a.cc:1] only info\n') == (
        '[2026-11-23 03:14:20.589][1][info][main] [a.cc:1] only info')


def test_validate_content_names_dest_not_the_temp_file(envoy_bin, tmp_path):
    dest = tmp_path / 'envoy.yaml'
    ok, text = validate_content(str(envoy_bin), unknown_filter_bootstrap(), str(dest))
    assert ok is False
    assert f"'{dest}'" in text and UNKNOWN_FILTER_MESSAGE in text
    assert os.listdir(tmp_path) == []  # no temporary file left, dest not created


def test_validate_content_uses_dest_suffix(envoy_bin, tmp_path):
    # YAML in a .json file is what Envoy would read at start: it must be rejected the same way
    ok, text = validate_content(str(envoy_bin), bootstrap_yaml(), str(tmp_path / 'envoy.json'))
    assert ok is False and 'invalid JSON' in text
    assert validate_content(str(envoy_bin), bootstrap_yaml(), str(tmp_path / 'envoy.yaml')) == (True, '')


def test_validate_content_without_dest_directory(envoy_bin, tmp_path):
    assert validate_content(str(envoy_bin), bootstrap_yaml(), str(tmp_path / 'missing' / 'envoy.yaml')) == (True, '')


def test_atomic_write_validated_good_then_bad(envoy_bin, tmp_path):
    dest = tmp_path / 'envoy.yaml'
    good = bootstrap_yaml(body='one')
    assert atomic_write_validated(str(dest), good, str(envoy_bin), mode=0o640) == (True, '')
    assert dest.read_text() == good
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    before = dest.read_bytes()
    inode = dest.stat().st_ino

    ok, text = atomic_write_validated(str(dest), unknown_filter_bootstrap(), str(envoy_bin))
    assert ok is False and UNKNOWN_FILTER_MESSAGE in text and f"'{dest}'" in text
    assert dest.read_bytes() == before and dest.stat().st_ino == inode  # untouched
    assert sorted(os.listdir(tmp_path)) == ['envoy.yaml']

    second = bootstrap_yaml(body='two')
    assert atomic_write_validated(str(dest), second, str(envoy_bin)) == (True, '')
    assert dest.read_text() == second
    assert dest.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # mode of the file it replaced


def test_atomic_write_without_validation_and_ownership(tmp_path):
    dest = tmp_path / 'plain.yaml'
    uid, gid = os.getuid(), os.getgid()
    assert atomic_write_validated(str(dest), 'anything: [', None, owner=str(uid), group=gid, mode=0o600) == (True, '')
    assert dest.read_text() == 'anything: ['
    st = dest.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o600)
    with pytest.raises(ValueError, match=r'owner: "no-such-user-fleetmesh" is not a known user'):
        atomic_write_validated(str(dest), 'x', None, owner='no-such-user-fleetmesh')
    assert dest.read_text() == 'anything: ['
    assert sorted(os.listdir(tmp_path)) == ['plain.yaml']
