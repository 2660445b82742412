"""fleetmesh.envoy.envoy_instance (the validated bootstrap), envoy_admin and validate, run by ansible-playbook
against a real Envoy.

Each scenario runs one task in a playbook (connection local) and reads back the registered result,
which the playbook writes to a file whether the task succeeded or failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load_harness():
    """tests/unit/envoy_harness.py, shared with the unit tests (already loaded when both run together)."""
    if 'envoy_harness' in sys.modules:
        return sys.modules['envoy_harness']
    spec = importlib.util.spec_from_file_location('envoy_harness', REPO / 'tests' / 'unit' / 'envoy_harness.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['envoy_harness'] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
Envoy = harness.Envoy
bootstrap_yaml = harness.bootstrap_yaml
unknown_filter_bootstrap = harness.unknown_filter_bootstrap

UNKNOWN_FILTER_MESSAGE = "Didn't find a registered implementation for 'envoy.filters.http.fleetmesh_no_such_filter'"
PLAYBOOK_TIMEOUT = 180


@pytest.fixture(scope='session')
def envoy_bin() -> Path:
    return harness.find_envoy('1.40.0')


@pytest.fixture(scope='session')
def collections_path(tmp_path_factory) -> Path:
    """ansible_collections/fleetmesh/envoy -> this work tree, in a fresh directory."""
    root = tmp_path_factory.mktemp('collections')
    (root / 'ansible_collections' / 'fleetmesh').mkdir(parents=True)
    (root / 'ansible_collections' / 'fleetmesh' / 'envoy').symlink_to(REPO)
    return root


@pytest.fixture(scope='module')
def envoy(envoy_bin, tmp_path_factory):
    with Envoy(envoy_bin, tmp_path_factory.mktemp('envoy-admin')) as running:
        yield running


@pytest.fixture
def play(collections_path, tmp_path):
    """play(task, check=False, diff=False) -> the task's registered result (failed ones too)."""
    playbook_bin = shutil.which('ansible-playbook', path=os.path.dirname(sys.executable)) or shutil.which(
        'ansible-playbook')
    if playbook_bin is None:
        pytest.fail('ansible-playbook not found next to the Python running pytest nor on PATH')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path), ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'ansible-local'), ANSIBLE_RETRY_FILES_ENABLED='0',
               ANSIBLE_HOME=str(tmp_path / 'ansible-home'), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop('ANSIBLE_CONFIG', None)
    counter = {'n': 0}

    def run(task: dict, check: bool = False, diff: bool = False) -> dict:
        counter['n'] += 1
        results = tmp_path / f'result-{counter["n"]}.json'
        playbook = tmp_path / f'play-{counter["n"]}.yml'
        playbook.write_text(json.dumps([{
            'hosts': 'localhost',
            'connection': 'local',
            'gather_facts': False,
            'tasks': [{
                'block': [dict(task, register='fm_result')],
                'rescue': [{'ansible.builtin.set_fact': {'fm_result': '{{ ansible_failed_result }}'}}],
                'always': [{
                    'ansible.builtin.copy': {'content': '{{ fm_result | to_json }}', 'dest': str(results)},
                    'check_mode': False,
                    'diff': False,
                }],
            }],
        }]))
        command = [playbook_bin, '-i', 'localhost,', str(playbook)]
        command += ['--check'] if check else []
        command += ['--diff'] if diff else []
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=PLAYBOOK_TIMEOUT, check=False)
        assert results.exists(), f'playbook did not finish (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}'
        return json.loads(results.read_text())

    return run


def temp_leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in keep)


# -- envoy_instance: the validated bootstrap write the envoy role uses ---------------------------------

def as_json(yaml_text: str) -> str:
    return json.dumps(yaml.safe_load(yaml_text), indent=2)


def instance_task(conf_dir: Path, content: str, envoy_bin: Path, **extra) -> dict:
    return {'fleetmesh.envoy.envoy_instance': dict({
        'name': 'test', 'conf_dir': str(conf_dir), 'env_content': 'ENVOY_TEST=1\n', 'config_content': content,
        'envoy_binary': str(envoy_bin), 'manage_user': False, 'user': 'root', 'group': 'root'}, **extra)}


def test_envoy_instance_writes_then_second_run_unchanged(play, envoy_bin, tmp_path):
    conf_dir = tmp_path / 'etc' / 'test'
    good = as_json(bootstrap_yaml(admin_port=9901, listener_port=8080))

    first = play(instance_task(conf_dir, good, envoy_bin))
    assert first.get('failed') is not True, first
    assert first['changed'] is True and first['restart_needed'] is True
    config = conf_dir / 'envoy.json'
    assert first['config'] == str(config) and config.read_text() == good
    assert oct(config.stat().st_mode & 0o7777) == '0o640'

    second = play(instance_task(conf_dir, good, envoy_bin))
    assert second.get('failed') is not True, second
    assert second['changed'] is False and second['changed_files'] == []
    assert temp_leftovers(conf_dir, {'envoy.json', 'instance.env'}) == []

    config.chmod(0o644)
    mode_only = play(instance_task(conf_dir, good, envoy_bin))
    assert mode_only['changed'] is True and mode_only['changed_files'] == [str(config)]
    assert oct(config.stat().st_mode & 0o7777) == '0o640'


def test_envoy_instance_rejected_bootstrap_leaves_old_file_byte_identical(play, envoy_bin, tmp_path):
    conf_dir = tmp_path / 'test'
    assert play(instance_task(conf_dir, as_json(bootstrap_yaml()), envoy_bin))['changed'] is True
    config = conf_dir / 'envoy.json'
    before = config.read_bytes()
    inode = config.stat().st_ino

    result = play(instance_task(conf_dir, as_json(unknown_filter_bootstrap()), envoy_bin, env_content='CHANGED=1\n'))
    assert result['failed'] is True
    assert result.get('changed') is not True
    assert result['msg'].startswith('Envoy rejected the configuration: ')
    assert UNKNOWN_FILTER_MESSAGE in result['msg']
    assert '/tmp/' not in result['msg'].replace(str(tmp_path), '')  # Envoy's text names envoy.json, not a temp file
    assert config.read_bytes() == before and config.stat().st_ino == inode
    assert (conf_dir / 'instance.env').read_text() == 'ENVOY_TEST=1\n'  # no file of the instance changed
    assert temp_leftovers(conf_dir, {'envoy.json', 'instance.env'}) == []


def test_envoy_instance_check_mode_validates_but_does_not_write(play, envoy_bin, tmp_path):
    conf_dir = tmp_path / 'new'
    result = play(instance_task(conf_dir, as_json(bootstrap_yaml()), envoy_bin), check=True)
    assert result.get('failed') is not True, result
    assert result['changed'] is True and str(conf_dir / 'envoy.json') in result['changed_files']
    assert not conf_dir.exists()

    rejected = play(instance_task(conf_dir, as_json(unknown_filter_bootstrap()), envoy_bin), check=True)
    assert rejected['failed'] is True and UNKNOWN_FILTER_MESSAGE in rejected['msg']
    assert not conf_dir.exists()


def test_envoy_instance_diff_mode_shows_before_and_after(play, envoy_bin, tmp_path):
    conf_dir = tmp_path / 'test'
    old, new = as_json(bootstrap_yaml(body='old')), as_json(bootstrap_yaml(body='new'))
    assert play(instance_task(conf_dir, old, envoy_bin))['changed'] is True
    result = play(instance_task(conf_dir, new, envoy_bin), check=True, diff=True)
    assert result['changed'] is True
    (config_diff,) = [d for d in result['diff'] if d['after_header'] == str(conf_dir / 'envoy.json')]
    assert config_diff['before'] == old and config_diff['after'] == new
    assert (conf_dir / 'envoy.json').read_text() == old


def test_envoy_instance_missing_binary(play, tmp_path):
    conf_dir = tmp_path / 'test'
    broken = play(instance_task(conf_dir, '{}', tmp_path / 'no-envoy'))
    assert broken['failed'] is True
    assert broken['msg'] == f'envoy_binary: {tmp_path / "no-envoy"} does not exist on the host'
    assert not (conf_dir / 'envoy.json').exists()


# -- envoy_admin -------------------------------------------------------------------------------------

def admin_task(envoy: Envoy, action: str, **extra) -> dict:
    return {'fleetmesh.envoy.envoy_admin': dict({'port': envoy.admin_port, 'action': action}, **extra)}


def test_envoy_admin_server_info(play, envoy):
    result = play(admin_task(envoy, 'server_info'))
    assert result.get('failed') is not True, result
    assert result['changed'] is False
    info = result['server_info']
    assert info['version'] == '1.40.0'
    assert info['state'] == 'LIVE'
    assert info['hot_restart_epoch'] == 0
    assert isinstance(info['uptime_seconds'], int)


def test_envoy_admin_healthcheck_fail_then_ok(play, envoy):
    check_only = play(admin_task(envoy, 'healthcheck_fail'), check=True)
    assert check_only['changed'] is True and check_only['server_info']['state'] == 'LIVE'

    failed = play(admin_task(envoy, 'healthcheck_fail'))
    assert failed['changed'] is True and failed['server_info']['state'] == 'DRAINING'
    again = play(admin_task(envoy, 'healthcheck_fail'))
    assert again['changed'] is False and again['server_info']['state'] == 'DRAINING'

    ok = play(admin_task(envoy, 'healthcheck_ok'))
    assert ok['changed'] is True and ok['server_info']['state'] == 'LIVE'
    ok_again = play(admin_task(envoy, 'healthcheck_ok'))
    assert ok_again['changed'] is False and ok_again['server_info']['state'] == 'LIVE'


def test_envoy_admin_drain_wait_then_gate_before_healthcheck_ok(play, envoy):
    """upgrade.yml's drain and health gate, each one task: healthcheck_fail waits for the requests in flight to end;
    healthcheck_ok with expect_* and probe_urls re-enables the health check only when they all hold."""
    url = f'http://127.0.0.1:{envoy.listener_port}/'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        closed = f'http://127.0.0.1:{sock.getsockname()[1]}/'
    drained = play(admin_task(envoy, 'healthcheck_fail', wait_requests_drained=3))
    assert drained.get('failed') is not True, drained
    assert drained['active_requests'] == 0 and drained['server_info']['state'] == 'DRAINING'
    for gate, words in (({'expect_version': '1.39.3'}, 'Envoy serves version 1.40.0, expected 1.39.3'),
                        ({'expect_state': 'LIVE'}, 'Envoy is DRAINING, expected LIVE'),
                        ({'probe_urls': [url, closed]}, f'GET {closed} answered no answer')):
        refused = play(admin_task(envoy, 'healthcheck_ok', **gate))
        assert refused['failed'] is True and words in refused['msg'] and 'nothing was done' in refused['msg'], refused
        assert play(admin_task(envoy, 'server_info'))['server_info']['state'] == 'DRAINING', 'the action was done'
    passed = play(admin_task(envoy, 'healthcheck_ok', expect_version='1.40.0', expect_state='DRAINING',
                             probe_urls=[url]))
    assert passed.get('failed') is not True and passed['changed'] is True, passed
    assert passed['server_info']['state'] == 'LIVE'
    wrong = play(admin_task(envoy, 'healthcheck_ok', wait_requests_drained=3))
    assert wrong['failed'] is True
    assert wrong['msg'].startswith('wait_requests_drained: 3 is set for action healthcheck_ok; allowed: only with')


def test_envoy_admin_wait_ready_and_stats(play, envoy):
    ready = play(admin_task(envoy, 'wait_ready', timeout=5))
    assert ready['ready'] is True and ready['changed'] is False
    stats = play(admin_task(envoy, 'stats', stats_filter=r'^server\.(live|state)$'))
    assert stats['stats'] == {'server.live': 1, 'server.state': 0}


def test_envoy_admin_unreachable_and_non_loopback(play):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        closed_port = sock.getsockname()[1]
    unreachable = play({'fleetmesh.envoy.envoy_admin': {'port': closed_port, 'timeout': 2}})
    assert unreachable['failed'] is True
    assert unreachable['msg'].startswith(f'cannot reach the Envoy admin API at http://127.0.0.1:{closed_port}')
    # refused before any connection is attempted
    refused = play({'fleetmesh.envoy.envoy_admin': {'address': '192.0.2.1'}})
    assert refused['failed'] is True
    assert refused['msg'].startswith('address: "192.0.2.1" is not a loopback address; allowed: ')


def test_envoy_admin_drain_listeners(play, envoy_bin, tmp_path):
    workdir = tmp_path / 'drain-envoy'
    workdir.mkdir()
    with Envoy(envoy_bin, workdir) as own:
        check_only = play(admin_task(own, 'drain_listeners', drain_graceful=False), check=True)
        assert check_only['changed'] is True and own.get('/')[0] == 200

        drained = play(admin_task(own, 'drain_listeners', drain_graceful=False, drain_wait=5))
        assert drained['changed'] is True and drained['drained'] is True and drained['active_connections'] == 0
        with pytest.raises(OSError):
            own.get('/')
        again = play(admin_task(own, 'drain_listeners', drain_graceful=False))
        assert again['changed'] is False


# -- validate ----------------------------------------------------------------------------------------

def test_validate_action_reports_every_error(play):
    result = play({'fleetmesh.envoy.validate': {
        'checks': ['fleetmesh_model', 'envoy'],
        'vars': {'fleetmesh_service': 'Reviews', 'fleetmesh_namespace': 'bookinfo',
                 'fleetmesh_service_account': 'reviews', 'fleetmesh_ports': {'http': 70000},
                 'fleetmesh_trust_domain': 'cluster.local', 'envoy_version': '1.40',
                 'envoy_admin_address': '0.0.0.0', 'fleetmesh_locality': '{{ undefined_locality | default(omit) }}'},
    }})
    assert result['failed'] is True and result['changed'] is False
    assert len(result['errors']) == 4
    assert 'fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535' in result['msg']
    assert 'fleetmesh_service: "Reviews" is not a valid DNS-1123 label' in result['msg']
    assert 'envoy_version: "1.40" is not a valid version' in result['msg']
    assert 'envoy_admin_address: "0.0.0.0" is not a loopback address' in result['msg']


def test_validate_action_passes_in_check_mode_without_a_connection(play):
    task = {'fleetmesh.envoy.validate': {'checks': ['envoy'], 'vars': {'envoy_version': '1.40.0'}}}
    # ssh to a closed loopback port fails any task that connects to the host; validate never does
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        closed_port = sock.getsockname()[1]
    task['vars'] = {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_port': closed_port}
    result = play(task, check=True)
    assert result.get('failed') is not True, result
    assert result['changed'] is False and result['errors'] == []
