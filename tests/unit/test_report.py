"""The fleet report (plugins/filter/report.py): rows from what status.yml and cert_report.yml read, problems first,
the terminal table within 100 columns, the JSON against docs/fleet-report.schema.json, the self-contained page
(also opened in headless Chromium: a screenshot under .build/ and the DOM checked against the JSON), and upgrade.yml's
per-batch progress."""

from __future__ import annotations

import json

import jsonschema
import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.envoy.plugins.filter import report as r

from tests.conftest import need
from tests.unit.report_fixtures import (
    EXPECTED_PROBLEMS,
    OBJECTS,
    READS,
    ROOT,
    SCHEMA,
    check_page_against_json,
    chromium,
    parse_page,
    read,
)

NOW = '2026-12-05T20:00:00Z'


@pytest.fixture
def report() -> dict:
    return r.fleet_status(READS, OBJECTS, 14, generated_at=NOW)


def test_rows_keep_status_json_columns(report):
    rows = {row['host']: row for row in report['hosts']}
    assert rows['fm-deb-1'] == {
        'host': 'fm-deb-1', 'address': '10.213.77.11', 'service': 'web', 'namespace': 'fleet-lab', 'os': 'Debian 12',
        'envoy_version': '1.40.0', 'state': 'LIVE', 'uptime_s': 120, 'epoch': 0, 'cert_days_left': 29.5,
        'cert_not_after': '2027-01-04T10:00:00Z', 'registration': 'EndpointSlice ready', 'health': 'healthy',
        'problems': []}
    assert rows['fm-deb-4']['state'] == 'unreachable' and rows['fm-deb-4']['health'] == 'unreachable'
    assert rows['fm-deb-4']['cert_days_left'] is None and rows['fm-deb-4']['envoy_version'] == ''
    assert rows['fm-deb-5']['state'] == 'Envoy down' and rows['fm-deb-5']['health'] == 'down'
    assert rows['fm-el-2']['registration'] == 'not registered'


def test_each_problem_found_and_problem_hosts_first(report):
    kinds = {row['host']: [p['kind'] for p in row['problems']] for row in report['hosts']}
    for host, kind in EXPECTED_PROBLEMS.items():
        assert kind in kinds[host], (host, kinds[host])
    assert kinds['fm-deb-1'] == [] and kinds['fm-el-1'] == []
    order = [row['host'] for row in report['hosts']]
    # most severe first: unreachable, Envoy down, not registered, certificate, drift; then the healthy ones
    assert order == ['fm-deb-4', 'fm-deb-5', 'fm-el-2', 'fm-deb-3', 'fm-deb-2', 'fm-deb-1', 'fm-el-1']
    assert report['summary'] == {
        'hosts': 7, 'problem_hosts': 5, 'healthy_hosts': 2,
        'problems': {'unreachable': 1, 'envoy_down': 1, 'not_registered': 1, 'cert_expiring': 1, 'version_drift': 1},
        'versions': {'1.39.3': 1, '1.40.0': 4, 'unknown': 2}, 'services': 1}
    assert [p['host'] for p in report['problems']] == order[:5]
    drift = next(p for p in report['problems'] if p['kind'] == 'version_drift')
    assert drift['detail'] == 'runs 1.39.3; web.fleet-lab mostly runs 1.40.0'
    assert report['services'] == [{
        'service': 'web', 'namespace': 'fleet-lab', 'hosts': order,
        'versions': {'1.39.3': 1, '1.40.0': 4, 'unknown': 2},
        'health': {'down': 1, 'healthy': 5, 'unreachable': 1}, 'problem_hosts': 5, 'version_drift': True}]


def test_registration_shapes_and_not_read():
    we = {'kind': 'WorkloadEntry', 'metadata': {'namespace': 'ns', 'name': 'vm-a',
                                                'annotations': {'fleetmesh.envoy/host': 'a'}}, 'spec': {}}
    rows = r.fleet_status_rows([read('a', '10.0.0.1'), read('b', '10.0.0.2'), read('c', '10.0.0.3')],
                               [we, {'kind': 'EndpointSlice', 'endpoints': [
                                   {'addresses': ['10.0.0.2'], 'conditions': {'ready': False}}]}])
    assert [row['registration'] for row in rows] == ['WorkloadEntry ns/vm-a', 'EndpointSlice not ready',
                                                     'not registered']
    data = r.fleet_report_data(rows)
    assert [p['detail'] for p in data['problems'] if p['kind'] == 'not_registered'] == [
        'registered, but its EndpointSlice endpoint is not ready',
        'no WorkloadEntry or EndpointSlice endpoint in Kubernetes']
    # not read (no kubeconfig): n/a, and nobody counts as not registered
    unread = r.fleet_status([read('a', '10.0.0.1')], None, registration_error=None)
    assert unread['hosts'][0]['registration'] == 'n/a' and unread['summary']['problem_hosts'] == 0


def test_no_cert_and_expired():
    expired = {'exists': True, 'days_left': -2.5}
    data = r.fleet_status([read('a', '1.1.1.1', cert={'exists': False}), read('b', '1.1.1.2', cert=expired)])
    rows = {row['host']: row for row in data['hosts']}
    assert rows['a']['cert_days_left'] == 'no cert' and rows['a']['problems'] == []
    assert rows['b']['problems'] == [{'kind': 'cert_expiring', 'detail': 'expired 2.5 days ago'}]


@pytest.mark.parametrize('bad', ['soon', -1, True, None])
def test_bad_cert_warn_days_is_refused_naming_the_variable(bad):
    with pytest.raises(AnsibleFilterError, match=r"status_cert_warn_days: .* is not allowed; allowed: a number"):
        r.fleet_status(READS, OBJECTS, bad)


def test_bad_input_is_refused():
    with pytest.raises(AnsibleFilterError, match='one per host, each with at least host'):
        r.fleet_status([{'address': 'x'}])
    with pytest.raises(AnsibleFilterError, match="fleet_render: format: 'pdf' is not allowed; allowed: table, html"):
        r.fleet_render(r.fleet_status(READS), 'pdf')
    with pytest.raises(AnsibleFilterError, match='the output of fleetmesh.envoy.fleet_status'):
        r.fleet_render([{'host': 'a'}], 'table')


def test_json_matches_the_documented_schema(report):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(json.loads(json.dumps(report)), SCHEMA)
    jsonschema.validate(r.fleet_status([], None), SCHEMA)
    broken = json.loads(json.dumps(report))
    broken['hosts'][0]['problems'][0]['kind'] = 'sad'
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_table_fits_100_columns_with_long_values():
    long = [read('a-host-with-a-really-long-inventory-name.example.com', '10.0.0.1',
                 service='payments-settlement-batch', namespace='team-finance-production',
                 envoy=envoy_info('1.40.0-dev-with-a-very-long-build-suffix')),
            read('b', '10.0.0.2', cert={'exists': True, 'days_left': 1.2, 'not_after': 'x'}, unreachable=False)]
    table = r.fleet_render(r.fleet_status(long, []), 'table')
    lines = table.splitlines()
    assert all(len(line) <= 92 for line in lines), [len(line) for line in lines]  # + 8 of debug's indent <= 100
    assert '\u2026' in table  # shortened; the JSON keeps the whole value
    we = {'kind': 'WorkloadEntry', 'metadata': {'namespace': 'fleet-lab', 'name': 'web-fm-deb-1',
                                                'annotations': {'fleetmesh.envoy/host': 'fm-deb-1'}}}
    short = r.fleet_render(r.fleet_status([read('fm-deb-1', '10.0.0.1')], [we]), 'table').splitlines()
    assert short[-1].split() == ['fm-deb-1', 'web.fleet-lab', '1.40.0', 'LIVE', 'healthy', '29d', 'WE',
                                 'fleet-lab/web-fm-deb-1', 'ok'], short
    assert lines[1].split()[:3] == ['HOST', 'SERVICE', 'ENVOY'] or lines[2].split()[:3] == ['HOST', 'SERVICE', 'ENVOY']


def envoy_info(version):
    return {'server_info': {'version': version, 'state': 'LIVE', 'uptime_seconds': 5, 'hot_restart_epoch': 1}}


def test_table_shows_each_problem(report):
    table = r.fleet_render(report, 'table')
    assert table.splitlines()[:2] == ['7 hosts in 1 service(s): 5 with problems, 2 ok',
                                      'problems: unreachable 1, Envoy down 1, unregistered 1, cert expiring 1, drift 1']
    lines = {line.split()[0]: line for line in table.splitlines()[3:]}
    assert list(lines) == [row['host'] for row in report['hosts']]
    assert 'unreachable' in lines['fm-deb-4'] and 'Envoy down' in lines['fm-deb-5']
    assert 'unregistered' in lines['fm-el-2'] and 'cert 0d' in lines['fm-deb-3'] and 'drift' in lines['fm-deb-2']
    assert lines['fm-deb-1'].endswith(' ok')


def test_page_is_self_contained_with_problems_first(report):
    page = r.fleet_render(report, 'html')
    check_page_against_json(page, report)
    assert '<script' not in page and 'http://' not in page.replace('http://www.w3.org/2000/svg', '')
    parsed = parse_page(page)
    assert [h for h, _k in parsed.rows['problems']] == ['fm-deb-4', 'fm-deb-5', 'fm-el-2', 'fm-deb-3', 'fm-deb-2']
    assert 'data-version="1.39.3" data-count="1"' in page and 'data-host="fm-deb-3" data-days="0.08"' in page


def test_page_without_problems_or_certificates():
    page = r.fleet_render(r.fleet_status([read('a', '1.1.1.1', cert={'exists': False})], None), 'html')
    assert 'No problems' in page and 'no certificate was read' in page


def test_markdown_has_every_host(report):
    md = r.fleet_render(report, 'markdown')
    assert md.count('\n') == 2 + 7 and '| fm-deb-4 |' in md


def test_report_page_in_headless_chromium(report, tmp_path):
    """The acceptance check of the page: a real browser renders it offline; the DOM it built (not the source) has
    the problem hosts first and the JSON's counts. The screenshot is kept in .build/fleet-report.png."""
    binary = need('chromium-headless-shell', "run 'make setup' (apt-get install chromium-headless-shell)")
    page = ROOT / '.build' / 'fleet-report' / 'status.html'
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(r.fleet_render(report, 'html'))
    (page.parent / 'report.json').write_text(json.dumps(report, indent=2))
    dom = chromium(binary, page, ROOT / '.build' / 'fleet-report.png')
    check_page_against_json(dom, json.loads((page.parent / 'report.json').read_text()))


# --------------------------------------------------------------------------------------------------------------
# cert_report.yml
# --------------------------------------------------------------------------------------------------------------

def test_cert_report_rows_and_table():
    ok = {'exists': True, 'subject': 'CN=b', 'sans': ['b', '10.0.0.2'], 'spiffe_id': 'spiffe://x/ns/a/sa/b',
          'issuer': 'CN=ca', 'serial': 'ab12', 'not_after': '2027-01-01T00:00:00Z', 'days_left': 29.9}
    out = r.cert_report({'c': {'unreachable': True, 'msg': 'ssh'}, 'b': ok, 'a': {'exists': False},
                         'd': {'failed': True, 'msg': 'permission denied'}, 'e': dict(ok, days_left=-1),
                         'f': {'changed': False, 'skipped': True}})
    assert [(row['host'], row['status']) for row in out['rows']] == [
        ('a', 'missing'), ('b', 'ok'), ('c', 'unreachable'), ('d', 'error: permission denied'), ('e', 'expired'),
        ('f', 'error: ?')]
    assert out['rows'][1] == {'host': 'b', 'status': 'ok', 'subject': 'CN=b', 'sans': ['b', '10.0.0.2'],
                              'spiffe_id': 'spiffe://x/ns/a/sa/b', 'issuer': 'CN=ca', 'serial': 'ab12',
                              'not_after': '2027-01-01T00:00:00Z', 'days_left': 29.9}
    assert out['rows'][0]['sans'] == [] and out['rows'][0]['serial'] is None
    lines = out['table'].splitlines()
    assert lines[0].split() == ['HOST', 'STATUS', 'SUBJECT', 'ISSUER', 'SANS', 'SERIAL', 'NOT_AFTER', 'DAYS_LEFT']
    assert lines[2].split() == ['b', 'ok', 'CN=b', 'CN=ca', 'b,10.0.0.2', 'ab12', '2027-01-01T00:00:00Z', '29.9']
    assert lines[1].split() == ['a', 'missing', '-', '-', '-', '-', '-', '-']
    with pytest.raises(AnsibleFilterError, match='host -> fleetmesh.envoy.cert_info result'):
        r.cert_report([ok])


# --------------------------------------------------------------------------------------------------------------
# upgrade.yml's progress
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(('serial', 'total', 'sizes'), [
    ([1, '34%', '100%'], 5, [1, 1, 3]), ([1, '34%', '100%'], 3, [1, 1, 1]), ([1, '34%', '100%'], 7, [1, 2, 4]),
    (2, 5, [2, 2, 1]), ('50%', 4, [2, 2]), (0, 3, [3]), ([1, '10%'], 4, [1, 1, 1, 1]),
])
def test_batches_as_ansible_makes_them(serial, total, sizes):
    assert r.rollout_batches(serial, total) == sizes


def test_progress_one_line_per_batch():
    p = r.rollout_progress({'started': '1000.0'}, ['a'], ['a'], [], 5, [1, '34%', '100%'], 1012.4, '1.40.0')
    assert p['line'] == 'Rollout to 1.40.0: batch 1 of 3 done (a): 1/5 hosts done, 0 failed, 12s elapsed'
    p = r.rollout_progress(p, ['b'], ['b'], [], 5, [1, '34%', '100%'], 1030, '1.40.0')
    p = r.rollout_progress(p, ['c', 'd', 'e'], ['c', 'e', 'd'], ['d'], 5, [1, '34%', '100%'], 1075, '1.40.0')
    assert p['line'] == 'Rollout to 1.40.0: batch 3 of 3 done (c, d, e): 4/5 hosts done, 1 failed, 75s elapsed'
    assert p['done_hosts'] == ['a', 'b', 'c', 'e'] and p['failed_hosts'] == ['d']
    assert (p['batch'], p['batches'], p['hosts_total'], p['hosts_done'], p['hosts_failed']) == (3, 3, 5, 4, 1)
    with pytest.raises(AnsibleFilterError, match="upgrade_serial: 'x%' is not allowed"):
        r.rollout_batches('x%', 3)
