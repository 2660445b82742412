"""fleetmesh.envoy filters; cluster.env output is read back by a real bash."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.envoy.plugins.filter import fleetmesh as f

NASTY = {
    'SPACES': 'a value  with   spaces ',
    'SINGLE': "it's 'quoted'",
    'DOUBLE': 'say "hi"',
    'DOLLAR': '$HOME ${PATH} $(id) `id`',
    'BACKSLASH': 'C:\\path\\n\\\\end\\',
    'NEWLINES': 'line one\nline two\n\nlast\n',
    'MIXED': "'\"$\\\n\t*?[a]~ #;&|<>!",
    'EMPTY': '',
    'UNICODE': 'héllo wörld ✓',
    'ONLY_QUOTE': "'",
}


def bash_source_file(path, names: list[str]) -> dict[str, str]:
    """`source` the file in a clean bash and read back each variable exactly (NUL separated)."""
    if shutil.which('bash') is None:
        pytest.fail('bash is needed to check cluster.env quoting')
    script = f'source {path}\n' + ''.join(f'printf "%s\\0" "${{{name}}}"\n' for name in names)
    proc = subprocess.run(['bash', '--noprofile', '--norc', '-c', script], capture_output=True,
                          env={'PATH': '/usr/bin:/bin'}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return dict(zip(names, proc.stdout.decode().split('\0')[:-1], strict=True))


def test_cluster_env_round_trips_through_bash(tmp_path):
    text = f.cluster_env(NASTY)
    path = tmp_path / 'cluster.env'
    path.write_text(text)
    assert bash_source_file(path, list(NASTY)) == NASTY


@pytest.mark.parametrize('value', list(NASTY.values()), ids=list(NASTY))
def test_cluster_env_quote_each_value(tmp_path, value):
    path = tmp_path / 'one.env'
    path.write_text(f'X={f.cluster_env_quote(value)}\n')
    assert bash_source_file(path, ['X']) == {'X': value}


def test_cluster_env_is_sorted_and_types_are_rendered():
    text = f.cluster_env({'ZED': 1, 'ALPHA': True, 'MID': [9080, 'grpc'], 'BETA': False})
    assert text == "ALPHA='true'\nBETA='false'\nMID='9080,grpc'\nZED='1'\n"
    assert f.cluster_env({}) == ''


def test_cluster_env_quote_escapes_single_quotes_posix_style():
    assert f.cluster_env_quote("it's") == "'it'\\''s'"
    assert f.cluster_env_quote('$x') == "'$x'"


@pytest.mark.parametrize('name', ['lower', '1ABC', 'A-B', 'A B', ''])
def test_cluster_env_rejects_bad_names(name):
    with pytest.raises(AnsibleFilterError) as err:
        f.cluster_env({name: 'x'})
    message = str(err.value)
    assert message.startswith(f'cluster_env: {json.dumps(name)} is not a valid environment variable name; allowed: ')
    assert '[A-Z_][A-Z0-9_]*' in message


def test_cluster_env_rejects_values_a_shell_cannot_hold():
    with pytest.raises(AnsibleFilterError, match='contains a NUL byte'):
        f.cluster_env({'X': 'a\x00b'})
    with pytest.raises(AnsibleFilterError, match=r'^cluster_env: X: null is not a valid cluster.env value'):
        f.cluster_env({'X': None})
    with pytest.raises(AnsibleFilterError, match='is not a mapping'):
        f.cluster_env(['X=1'])


def test_spiffe_id():
    assert f.spiffe_id('cluster.local', 'bookinfo', 'reviews') == 'spiffe://cluster.local/ns/bookinfo/sa/reviews'
    with pytest.raises(AnsibleFilterError) as err:
        f.spiffe_id('Cluster.Local', 'bookinfo', 'reviews')
    assert str(err.value).startswith('spiffe_id: trust_domain: "Cluster.Local" is not a valid trust domain; allowed: ')
    with pytest.raises(AnsibleFilterError, match=r'^spiffe_id: namespace: "Book Info" is not a valid DNS-1123 label'):
        f.spiffe_id('cluster.local', 'Book Info', 'reviews')
    with pytest.raises(AnsibleFilterError, match=r'^spiffe_id: service_account: "a/b" is not a valid'):
        f.spiffe_id('cluster.local', 'bookinfo', 'a/b')


def test_envoy_semver():
    assert f.envoy_semver('9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL') == '1.40.0'
    assert f.envoy_semver('\n/tmp/envoy  version: 6eb0d2d9/1.39.3/Clean/RELEASE/BoringSSL\n\n') == '1.39.3'
    assert f.envoy_semver('abc/1.41.0-dev/Modified/DEBUG/BoringSSL') == '1.41.0'
    assert f.envoy_semver('1.36.2') == '1.36.2'
    with pytest.raises(AnsibleFilterError, match='holds no Envoy version'):
        f.envoy_semver('envoy')


def test_filter_module_lists_every_filter_with_its_doc(request):
    names = set(f.FilterModule().filters())
    assert names == {'spiffe_id', 'cluster_env_quote', 'cluster_env', 'envoy_semver'}
    docs = request.path.parents[2] / 'plugins' / 'filter'
    assert {p.stem for p in docs.glob('*.yml')} >= names
