"""status.yml and cert_report.yml end to end without the lab: the hosts are on loopback ports where nothing answers
(unreachable), so nothing is contacted but 127.0.0.1. status.yml runs through ansible-runner, as AWX runs it: its
report is the job's artifact fleetmesh_status (set_stats), the same as report.json, valid against the schema.
The lab runs (tests/integration/test_fault_matrix.py, 7 VMs) show the other problems."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import yaml

from tests.conftest import need
from tests.unit.report_fixtures import ROOT, SCHEMA, parse_page

GHOSTS = {'ghost-1': 1, 'ghost-2': 9}  # closed loopback ports: refused at once


def inventory(path: Path) -> Path:
    hosts = {h: {'ansible_host': '127.0.0.1', 'ansible_port': port, 'fleetmesh_service': 'web',
                 'fleetmesh_namespace': 'fleet-lab'} for h, port in GHOSTS.items()}
    path.write_text(yaml.safe_dump({'all': {'hosts': hosts}}))
    return path


def test_status_through_ansible_runner_hands_the_report_to_awx(tmp_path):
    runner = need('ansible-runner', "run 'make setup' (ansible-runner is in requirements.lock)")
    root = tmp_path / 'runner'
    (root / 'env').mkdir(parents=True)
    (root / 'inventory').mkdir()
    inventory(root / 'inventory' / 'hosts.yml')
    (root / 'project').symlink_to(ROOT)
    out = tmp_path / 'status'
    (root / 'env' / 'extravars').write_text(json.dumps({'status_report_dir': str(out)}))
    run_env = {k: v for k, v in os.environ.items() if k not in ('ANSIBLE_CONFIG', 'ANSIBLE_INVENTORY')}
    run_env['ANSIBLE_COLLECTIONS_PATH'] = str(ROOT / '.build' / 'collections')
    proc = subprocess.run([runner, 'run', str(root), '-p', 'playbooks/status.yml', '--ident', 'status'],
                          env=run_env, capture_output=True, text=True, timeout=300, check=False)
    artifacts = root / 'artifacts' / 'status'
    stdout = (artifacts / 'stdout').read_text() if (artifacts / 'stdout').exists() else proc.stdout + proc.stderr
    assert (artifacts / 'rc').read_text().strip() == '0', stdout[-4000:]
    events = [json.loads(p.read_text()) for p in sorted((artifacts / 'job_events').glob('*.json'))]
    stats = next(e['event_data'] for e in events if e.get('event') == 'playbook_on_stats')
    artifact = stats['artifact_data']['fleetmesh_status']
    report = json.loads((out / 'report.json').read_text())
    assert artifact == report
    jsonschema.validate(report, SCHEMA)
    assert report['summary']['problems']['unreachable'] == len(GHOSTS) == report['summary']['problem_hosts']
    assert [r['host'] for r in report['hosts']] == sorted(GHOSTS)
    assert json.loads((out / 'status.json').read_text()) == report['hosts']
    page = parse_page((out / 'status.html').read_text())
    assert page.counts['unreachable'] == len(GHOSTS) and page.external == [] and page.scripts == 0
    assert '| ghost-1 |' in (out / 'status.md').read_text()
    assert '2 hosts in 1 service(s): 2 with problems, 0 ok' in stdout


def test_cert_report_rows_for_hosts_that_do_not_answer(tmp_path):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'))
    report = tmp_path / 'certs.json'
    proc = subprocess.run([need('ansible-playbook'), '-i', str(inventory(tmp_path / 'hosts.yml')),
                           str(ROOT / 'playbooks' / 'cert_report.yml'), '-e', f'cert_report_json={report}'],
                          env=env, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(report.read_text())
    assert [(r['host'], r['status'], r['serial']) for r in rows] == [(h, 'unreachable', None) for h in sorted(GHOSTS)]
    assert 'HOST     STATUS       SUBJECT' in proc.stdout
