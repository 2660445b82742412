"""Phase tags through the runbooks (README: Tags), without the lab: `ansible-playbook <runbook> --list-tasks
--tags <phase>` against a generated inventory (no host is contacted), and the same listing with the dynamic
includes expanded by Ansible's own loader and tag filter (tests/unit/runbook_tasks.py), since `--list-tasks`
shows an `include_role` task but not the tasks it includes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

HOSTS = """\
all:
  vars:
    fleetmesh_trust_domain: cluster.local
    fleetmesh_service: web
    fleetmesh_namespace: fleet
    fleetmesh_service_account: web
    fleetmesh_ports: {http: 8080}
  children:
    lab:
      hosts:
        vm-1: {ansible_host: 192.0.2.1}
    web:
      hosts:
        vm-1:
"""
PHASES = ['install', 'configure', 'run']
# the runbooks that run roles, and the roles each one includes or lists
RUNBOOK_ROLES = {
    'onboard': ['workload_certs', 'envoy', 'istio_sidecar', 'mesh_registration'],
    'envoy': ['envoy'],
    'sidecar': ['istio_sidecar'],
    'rotate_certs': ['workload_certs'],
    'register': ['mesh_registration'],
    'deregister': ['mesh_registration'],
    'envoy_repo': ['envoy_repo'],
}
PREFLIGHT = 'Check the whole model of every targeted host before any change'
TARGET_CHECK = 'Fail when the host pattern matches no host'
LINE = re.compile(r'^ {6}(?P<name>.*?)\tTAGS: \[(?P<tags>[^\]]*)\]$')
ROLE = re.compile(r'^fleetmesh\.envoy\.(?P<role>\w+) : (?P<task>.*)$')


def _env(tmp: Path) -> dict:
    inv = tmp / 'hosts.yml'
    if not inv.exists():
        inv.write_text(HOSTS)
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'), ANSIBLE_INVENTORY=str(inv))


HELPER = str(ROOT / 'tests' / 'unit' / 'runbook_tasks.py')
ALL_RUNBOOKS = sorted(RUNBOOK_ROLES) + ['upgrade', 'decommission', 'sidecar_offboard', 'status', 'cert_report',
                                        'prometheus_targets']
PHASE_ARGS = [('--tags', p) for p in PHASES] + [('--skip-tags', p) for p in PHASES]


def _jobs() -> set[tuple[str, tuple[str, ...], bool]]:
    """Every listing the tests below read, made in one process (a few hundred CLI runs: seconds, not minutes)."""
    jobs = set()
    for runbook in ALL_RUNBOOKS:
        for args in [(), *PHASE_ARGS]:
            jobs |= {(runbook, args, True), (runbook, args, False)}
        for role in RUNBOOK_ROLES.get(runbook, []):
            jobs |= {(runbook, ('--tags', f'{role}_{p}'), True) for p in PHASES}
    jobs |= {('onboard', args, True) for args in ONBOARD}
    jobs.add(('onboard', ('--skip-tags', 'always'), False))
    return jobs


def _parse(runbook, args, proc_rc, stdout) -> list[tuple[str, frozenset]]:
    assert proc_rc == 0, f'{runbook} {args}: rc={proc_rc}\n{stdout[-3000:]}'
    out = []
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            out.append((m['name'], frozenset(t.strip() for t in m['tags'].split(',') if t.strip())))
    return out


@pytest.fixture(scope='module')
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('runbook-tags')


@pytest.fixture(scope='module')
def listings(tmp) -> dict:
    need('ansible-playbook')
    jobs = sorted(_jobs())
    payload = [{'args': [f'playbooks/{rb}.yml', '--list-tasks', *args], 'expand': ex} for rb, args, ex in jobs]
    proc = subprocess.run([sys.executable, HELPER, '--batch'], input=json.dumps(payload), cwd=ROOT, env=_env(tmp),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f'{HELPER} --batch: rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    results = json.loads(proc.stdout)
    return {job: (r['rc'], r['stdout']) for job, r in zip(jobs, results, strict=True)}


@pytest.fixture(scope='module')
def listed(listings):
    def get(runbook, *args, expand=True):
        return _parse(runbook, args, *listings[(runbook, tuple(args), expand)])
    return get


def test_the_batch_lists_what_separate_runs_list(tmp, listings):
    """The batch runs many CLI runs in one process: each one lists what its own `ansible-playbook` run lists."""
    for runbook, args in [('onboard', ('--tags', 'run')), ('envoy', ('--skip-tags', 'install'))]:
        for expand in (True, False):
            cmd = [sys.executable, HELPER] if expand else [need('ansible-playbook')]
            proc = subprocess.run([*cmd, f'playbooks/{runbook}.yml', '--list-tasks', *args], cwd=ROOT, env=_env(tmp),
                                  capture_output=True, text=True, timeout=120, check=False)
            assert (proc.returncode, proc.stdout) == listings[(runbook, args, expand)], (runbook, args, expand)


def names(tasks) -> list[str]:
    return [task[0] for task in tasks]


def role_tasks(tasks, role=None) -> list[tuple[str, frozenset]]:
    out = []
    for name, tags in tasks:
        m = ROLE.match(name)
        if m and (role is None or m['role'] == role):
            out.append((m['task'], tags))
    return out


@pytest.mark.parametrize('runbook', ALL_RUNBOOKS)
@pytest.mark.parametrize('args', PHASE_ARGS, ids=' '.join)
def test_the_checks_run_under_every_tag(listed, runbook, args):
    """The real `--list-tasks`: the host-pattern check and the model check of every runbook are listed under every
    phase tag and every --skip-tags of a phase; the role includes are listed (the include happens, its tasks are
    chosen by their own tags); and the expanded listing keeps every task `--list-tasks` lists, in its order."""
    plain = names(listed(runbook, *args, expand=False))
    if runbook == 'envoy_repo':  # on the controller: its checks are the role's own
        assert 'fleetmesh.envoy.envoy_repo : Check the requested versions and formats' in plain, plain
    else:
        assert TARGET_CHECK in plain and PREFLIGHT in plain, f'{runbook} {args}: {plain}'
    expanded = names(listed(runbook, *args))
    it = iter(expanded)
    assert all(n in it for n in plain), f'{runbook} {args}: the expansion lost tasks:\n{plain}\n{expanded}'
    if runbook in ('onboard', 'register', 'deregister'):
        includes = [n for n, t in listed(runbook, expand=False) if 'always' in t and not ROLE.match(n)]
        for n in includes:
            assert n in plain


@pytest.mark.parametrize('runbook', sorted(RUNBOOK_ROLES))
@pytest.mark.parametrize('phase', PHASES)
def test_a_phase_tag_runs_exactly_that_phase_of_each_role(listed, runbook, phase):
    """`--tags <phase>`: every role task listed carries the phase (or is a check, fact or vars include tagged
    always), and every role task of that phase that the untagged run lists is listed."""
    everything = listed(runbook)
    selected = listed(runbook, '--tags', phase)
    for role in RUNBOOK_ROLES[runbook]:
        got = role_tasks(selected, role)
        wrong = [n for n, tags in got if phase not in tags and 'always' not in tags]
        assert not wrong, f'{runbook} --tags {phase} lists {role} tasks of other phases: {wrong}'
        want = [n for n, tags in role_tasks(everything, role) if phase in tags or f'{role}_{phase}' in tags]
        missing = [n for n in want if n not in names(got)]
        assert not missing, f'{runbook} --tags {phase} misses {role} tasks of that phase: {missing}'
        # the role's name tag and its own phase tag select the same tasks of it
        own = role_tasks(listed(runbook, '--tags', f'{role}_{phase}'), role)
        assert names(own) == names(got), f'{runbook}: --tags {role}_{phase} and --tags {phase} differ for {role}'
        checks = [n for n, tags in got if 'always' in tags]
        assert checks, f'{runbook} --tags {phase}: no input check of {role} is listed'


@pytest.mark.parametrize('runbook', sorted(RUNBOOK_ROLES))
@pytest.mark.parametrize('phase', PHASES)
def test_skip_tags_leaves_out_that_phase_only(listed, runbook, phase):
    everything = listed(runbook)
    kept = listed(runbook, '--skip-tags', phase)
    assert not [n for n, tags in kept if phase in tags], f'{runbook} --skip-tags {phase} lists tasks of {phase}'
    for role in RUNBOOK_ROLES[runbook]:
        want = [n for n, tags in role_tasks(everything, role) if phase not in tags and f'{role}_{phase}' not in tags]
        missing = [n for n in want if n not in names(role_tasks(kept, role))]
        assert not missing, f'{runbook} --skip-tags {phase} drops {role} tasks of other phases: {missing}'
        checks = [n for n, tags in role_tasks(kept, role) if 'always' in tags]
        assert checks, f'{runbook} --skip-tags {phase}: the input checks of {role} no longer run'


E = 'fleetmesh.envoy.envoy : '
W = 'fleetmesh.envoy.workload_certs : '
S = 'fleetmesh.envoy.istio_sidecar : '
R = 'fleetmesh.envoy.mesh_registration : '
ONBOARD_ALWAYS = [
    TARGET_CHECK, PREFLIGHT, 'Note which hosts answer', 'Read the Envoy each host runs (none on a first onboard)',
    'Note the Envoy version each host is to run',
    'Refuse to change the version of a running Envoy (that is upgrade.yml)',
    'Issue and install the workload certificates', 'Install and run Envoy', 'Install and start the Istio sidecar',
    'Register the VMs in Kubernetes',
    E + 'Validate the envoy variables before touching the host',
    W + 'Check the inventory model and the role variables',
    S + 'Check the inventory model and the role variables before touching the host',
    S + 'Gather the OS family',
    S + "Load the values of the host's OS",
]
ENVOY_INSTALL = E + 'Install Envoy (a version that is not on the host yet, or the native package)'
ENVOY_PUSH = E + 'Push the compressed binary from the controller cache (artifact)'
ENVOY_BINARY = E + 'Verify the checksum and install the binary side by side'
ENVOY_CONVERGE = (E + 'Activate the installed Envoy version and converge the instance (user, wrapper, unit, env, '
                  'validated bootstrap)')
ENVOY_STATE = E + "Read the instance's state (the run phase without the install and configure phases)"
ENVOY_START = E + 'Start or hot-restart Envoy'
CERTS_KEY = W + 'Keep the private key on the host and build the CSR'
CERTS_SIGN = W + 'Sign the CSRs of all hosts of the play'
SIDECAR_PACKAGE = S + 'Read the installed istio-sidecar version'
SIDECAR_ENV = S + 'Write cluster.env (shell-quoted, read by istio-start.sh)'
SIDECAR_START = S + 'Enable and start istio.service'
REG_NOTE = R + 'Note how to reach each host and which Envoy it runs'
REG = R + "Register the play's VMs in Kubernetes"
# onboard.yml: (args) -> (listed, not listed), besides ONBOARD_ALWAYS
ONBOARD = {
    ('--tags', 'install'): ([ENVOY_INSTALL, ENVOY_PUSH, ENVOY_BINARY, CERTS_KEY, SIDECAR_PACKAGE],
                            [ENVOY_START, SIDECAR_ENV, SIDECAR_START, REG]),
    ('--tags', 'configure'): ([ENVOY_CONVERGE, SIDECAR_ENV, CERTS_SIGN, REG],
                              [ENVOY_INSTALL, ENVOY_START, SIDECAR_PACKAGE, SIDECAR_START]),
    ('--tags', 'run'): ([ENVOY_START, ENVOY_STATE, SIDECAR_START],
                        [ENVOY_CONVERGE, CERTS_SIGN, SIDECAR_ENV, REG]),
    ('--skip-tags', 'run'): ([ENVOY_INSTALL, ENVOY_CONVERGE, CERTS_SIGN, REG],
                             [ENVOY_START, SIDECAR_START]),
    ('--tags', 'envoy'): ([ENVOY_INSTALL, ENVOY_CONVERGE, ENVOY_START],
                          [CERTS_SIGN, SIDECAR_ENV, REG]),
    ('--tags', 'register'): ([REG, REG_NOTE],
                             [ENVOY_START, CERTS_SIGN, SIDECAR_ENV]),
    ('--skip-tags', 'register'): ([ENVOY_START, CERTS_SIGN],
                                  [REG]),
}


@pytest.mark.parametrize('args', list(ONBOARD), ids=' '.join)
def test_onboard_lists_what_a_platform_engineer_expects(listed, args):
    got = names(listed('onboard', *args))
    want, unwanted = ONBOARD[args]
    always = [n for n in ONBOARD_ALWAYS if not (args == ('--tags', 'register') and n.startswith((E, W, S)))
              and not (args == ('--tags', 'envoy') and n.startswith((W, S)))]
    missing = [n for n in always + want if n not in got]
    assert not missing, f'onboard.yml {" ".join(args)} does not list {missing}:\n' + '\n'.join(got)
    extra = [n for n in unwanted if n in got]
    assert not extra, f'onboard.yml {" ".join(args)} lists {extra}:\n' + '\n'.join(got)


def test_skip_tags_always_skips_the_checks_and_the_role_includes(listed):
    """Documented (README: Tags): --skip-tags always also skips the input checks and every role include."""
    assert listed('onboard', '--skip-tags', 'always', expand=False) == []


@pytest.mark.parametrize('runbook', ['upgrade', 'decommission'])
@pytest.mark.parametrize('args', [('--tags', 'install'), ('--skip-tags', 'run'), ('--tags', 'configure,run')])
def test_one_procedure_refuses_tags_before_any_change(tmp, runbook, args):
    """upgrade.yml and decommission.yml run whole: a tag fails the run on the controller, naming the tags and what
    is allowed, before any host is contacted (the generated host's address is TEST-NET, never reached)."""
    proc = subprocess.run([need('ansible-playbook'), f'playbooks/{runbook}.yml', '-e', 'upgrade_to=1.40.0', *args],
                          cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f'{runbook}.yml is one procedure' in out and 'allowed: no --tags and no --skip-tags' in out, out
    assert re.search(r'vm-1\s*: ok=\d+\s+changed=0\s+unreachable=0\s+failed=1', out), out
