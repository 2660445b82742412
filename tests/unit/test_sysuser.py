"""One way to create a service user: sysuser.ensure_system_user on hosts, the package scriptlet at install time.

The scriptlet (roles/envoy_repo/templates/create-user.sh.j2, in the .deb postinst and the .rpm %pre) cannot call
Python, so it runs the same commands; this keeps the two in step (docs/model.md).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import sysuser

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / 'roles' / 'envoy_repo' / 'templates'


class FakeModule:
    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.commands = []

    def run_command(self, cmd):
        self.commands.append(cmd)
        return 0, '', ''

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs['msg'])


def _missing(name):
    raise KeyError(name)


def _options(argv):
    """{option: value or True} and the positional name of a groupadd/useradd command."""
    options, rest = {}, list(argv[1:])
    while rest:
        word = rest.pop(0)
        if word.startswith('--'):
            options[word] = rest.pop(0) if word in ('--gid', '--shell', '--home-dir', '--comment') else True
        else:
            name = word
    return options, name


def _scriptlet_commands():
    text = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES))).get_template('create-user.sh.j2').render(
        __envoy_repo_user='envoy', __envoy_repo_group='envoy')
    text = text.replace('\\\n', ' ')
    return [shlex.split(line.strip()) for line in text.splitlines()
            if line.strip().startswith(('groupadd', 'useradd'))]


@pytest.fixture
def nobody_exists(monkeypatch):
    monkeypatch.setattr(sysuser.grp, 'getgrnam', _missing)
    monkeypatch.setattr(sysuser.pwd, 'getpwnam', _missing)


def test_module_and_package_scriptlet_create_the_user_the_same_way(nobody_exists):
    module = FakeModule()
    assert sysuser.ensure_system_user(module, 'envoy', 'envoy') is True
    (groupadd, useradd), (script_groupadd, script_useradd) = module.commands, _scriptlet_commands()
    assert _options(groupadd) == _options(script_groupadd) == ({'--system': True}, 'envoy')
    ours, name = _options(useradd)
    theirs, script_name = _options(script_useradd)
    assert name == script_name == 'envoy'
    assert ours.pop('--shell').endswith('nologin') and theirs.pop('--shell') == '$nologin'
    theirs.pop('--comment')  # the package names itself in the user's comment
    assert ours == theirs == {'--system': True, '--gid': 'envoy', '--home-dir': '/nonexistent',
                              '--no-create-home': True}


def test_check_mode_reports_and_runs_nothing(nobody_exists):
    module = FakeModule(check_mode=True)
    assert sysuser.ensure_system_user(module, 'envoy', 'envoy') is True
    assert module.commands == []


def test_existing_user_and_group_are_left_alone():
    module = FakeModule()
    assert sysuser.ensure_system_user(module, 'root', 'root') is False
    assert module.commands == []
