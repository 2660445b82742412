"""The Prometheus stats listener (envoy_stats_*): the bootstrap filter, the role's checks, and a real Envoy."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.envoy.plugins.filter.envoy import envoy_bootstrap
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import validate
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import validate_model
from envoy_harness import Envoy


def _spec(stats=None, **extra):
    spec = {
        'admin': {'address': '127.0.0.1', 'port': 9901},
        'listeners': [{'name': 'ingress', 'address': '0.0.0.0', 'port': 10000,
                       'routes': [{'prefix': '/', 'cluster': 'local_app'}]}],
        'clusters': [{'name': 'local_app', 'endpoints': [{'address': '127.0.0.1', 'port': 8080}]}],
        'stats': {'enabled': True, 'address': '0.0.0.0', 'port': 15090} if stats is None else stats,
    }
    spec.update(extra)
    return spec


def _listener(boot, name):
    return next(entry for entry in boot['static_resources']['listeners'] if entry['name'] == name)


def test_stats_listener_serves_only_the_prometheus_path_from_the_loopback_admin():
    boot = envoy_bootstrap(_spec())
    stats = _listener(boot, 'fleetmesh_stats')
    assert stats['address'] == {'socket_address': {'address': '0.0.0.0', 'port_value': 15090}}
    hcm = stats['filter_chains'][0]['filters'][0]['typed_config']
    routes = hcm['route_config']['virtual_hosts'][0]['routes']
    assert [r['match'].get('path', r['match'].get('prefix')) for r in routes] == ['/stats/prometheus', '/']
    assert routes[0]['route']['cluster'] == 'fleetmesh_admin_stats'
    assert routes[1]['direct_response']['status'] == 404
    cluster = next(c for c in boot['static_resources']['clusters'] if c['name'] == 'fleetmesh_admin_stats')
    endpoint = cluster['load_assignment']['endpoints'][0]['lb_endpoints'][0]['endpoint']['address']
    assert endpoint == {'socket_address': {'address': '127.0.0.1', 'port_value': 9901}}
    # the admin interface itself stays on loopback
    assert boot['admin']['address']['socket_address']['address'] == '127.0.0.1'


def test_stats_listener_off():
    boot = envoy_bootstrap(_spec(stats={'enabled': False, 'address': '0.0.0.0', 'port': 15090}))
    assert [entry['name'] for entry in boot['static_resources']['listeners']] == ['ingress']
    assert [c['name'] for c in boot['static_resources']['clusters']] == ['local_app']


def test_stats_listener_in_xds_mode():
    boot = envoy_bootstrap(_spec(mode='xds', xds={'address': '10.0.0.1', 'port': 15012, 'tls': {}}))
    assert [entry['name'] for entry in boot['static_resources']['listeners']] == ['fleetmesh_stats']
    assert 'fleetmesh_admin_stats' in [c['name'] for c in boot['static_resources']['clusters']]


@pytest.mark.parametrize('stats, match', [
    ({'enabled': True, 'address': '0.0.0.0', 'port': 10000},
     r'envoy_stats_port: 10000 .*listener ingress is on 0.0.0.0:10000'),
    ({'enabled': True, 'address': '127.0.0.1', 'port': 10000}, r'envoy_stats_port: 10000 .*listener ingress'),
    ({'enabled': True, 'address': '0.0.0.0', 'port': 9901}, r'envoy_stats_port: 9901 .*envoy_admin_port \(9901\)'),
    ({'enabled': True, 'address': '0.0.0.0', 'port': 0}, r'envoy_stats_port: 0 .*integer 1-65535'),
    ({'enabled': True, 'address': 'all', 'port': 15090}, r"envoy_stats_address: 'all' .*IPv4"),
    ({'enabled': 'yes', 'address': '0.0.0.0', 'port': 15090}, r"envoy_stats_enabled: 'yes' .*true or false"),
])
def test_stats_listener_bad_input(stats, match):
    with pytest.raises(AnsibleFilterError, match=match):
        envoy_bootstrap(_spec(stats=stats))


def test_stats_listener_port_of_a_listener_on_another_address_is_fine():
    spec = _spec(stats={'enabled': True, 'address': '127.0.0.2', 'port': 10000})
    spec['listeners'][0]['address'] = '127.0.0.1'
    assert _listener(envoy_bootstrap(spec), 'fleetmesh_stats')


def test_reserved_names_refused():
    spec = _spec()
    spec['clusters'].append({'name': 'fleetmesh_admin_stats', 'endpoints': [{'address': '127.0.0.1', 'port': 1}]})
    with pytest.raises(AnsibleFilterError, match='fleetmesh_admin_stats'):
        envoy_bootstrap(spec)
    spec = _spec()
    spec['listeners'].append({'name': 'fleetmesh_stats', 'port': 10001,
                              'routes': [{'prefix': '/', 'cluster': 'local_app'}]})
    with pytest.raises(AnsibleFilterError, match='fleetmesh_stats'):
        envoy_bootstrap(spec)


LISTENERS = [{'name': 'ingress', 'address': '0.0.0.0', 'port': 10000, 'routes': [{'prefix': '/', 'cluster': 'a'}]}]


@pytest.mark.parametrize('variables, message', [
    ({'envoy_stats_port': 10000, 'envoy_listeners': LISTENERS},
     'envoy_stats_port: 10000 is the port of envoy_listeners[0] (ingress on 0.0.0.0)'),
    ({'envoy_stats_port': 9901, 'envoy_admin_port': 9901}, 'envoy_stats_port: 9901 is the port of the admin interface'),
    ({'envoy_stats_port': 70000}, 'envoy_stats_port: 70000 is not a valid port'),
    ({'envoy_stats_address': '::'}, 'envoy_stats_address: "::" is not a valid stats listener address'),
    ({'envoy_stats_enabled': 'yes'}, 'envoy_stats_enabled: "yes" is not a boolean'),
    ({'envoy_stats_port': 15090, 'fleetmesh_istio_sidecar': True},
     "envoy_stats_port: 15090 is the Istio sidecar's own Prometheus port"),
])
def test_role_checks_refuse(variables, message):
    errors = validate_model(dict({'envoy_version': '1.40.0'}, **variables), ['envoy'])
    assert any(error.startswith(message) for error in errors), errors


@pytest.mark.parametrize('variables', [
    {'envoy_stats_port': 15090, 'envoy_stats_address': '0.0.0.0', 'envoy_stats_enabled': True,
     'envoy_listeners': LISTENERS},
    {'envoy_stats_port': 10000, 'envoy_stats_enabled': False, 'envoy_listeners': LISTENERS},
    {'envoy_stats_port': 15090, 'fleetmesh_istio_sidecar': True, 'fleetmesh_envoy': False},
    {'envoy_stats_port': 15091, 'fleetmesh_istio_sidecar': True},
])
def test_role_checks_accept(variables):
    assert validate_model(dict({'envoy_version': '1.40.0'}, **variables), ['envoy']) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _get(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.headers.get('content-type', ''), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get('content-type', ''), err.read().decode()


def _real_bootstrap(admin_port, stats_port, listener_port):
    return envoy_bootstrap({
        'admin': {'address': '127.0.0.1', 'port': admin_port},
        'listeners': [{'name': 'ingress', 'address': '127.0.0.1', 'port': listener_port,
                       'routes': [{'prefix': '/', 'direct_response': {'status': 200, 'body': 'app'}}]}],
        'clusters': [],
        'stats': {'enabled': True, 'address': '127.0.0.1', 'port': stats_port},
    })


def test_real_envoy_validates_the_bootstrap(envoy_bin, tmp_path):
    path = tmp_path / 'envoy.json'
    path.write_text(json.dumps(_real_bootstrap(9901, 15090, 10000)))
    assert validate(str(envoy_bin), str(path)) == (True, '')


def test_real_envoy_serves_prometheus_text_and_nothing_else(envoy_bin, tmp_path):
    admin_port, stats_port, listener_port = _free_port(), _free_port(), _free_port()
    assert len({admin_port, stats_port, listener_port}) == 3
    config = json.dumps(_real_bootstrap(admin_port, stats_port, listener_port))
    with Envoy(envoy_bin, tmp_path, config=config) as envoy:
        assert envoy.admin_port == admin_port
        status, ctype, body = _get(f'http://127.0.0.1:{stats_port}/stats/prometheus')
        assert status == 200, body
        assert ctype.startswith('text/plain')
        assert '# TYPE envoy_server_live gauge' in body
        assert 'envoy_server_live{} 1' in body
        assert 'envoy_server_hot_restart_epoch' in body
        for path in ('/config_dump', '/quitquitquit', '/stats', '/', '/stats/prometheus/../config_dump',
                     '/stats/prometheus/', '/certs', '/healthcheck/fail'):
            status, _ctype, body = _get(f'http://127.0.0.1:{stats_port}{path}')
            assert status == 404, (path, status, body)
        request = urllib.request.Request(f'http://127.0.0.1:{stats_port}/quitquitquit', method='POST')
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5)
            raise AssertionError('POST /quitquitquit answered 2xx')
        except urllib.error.HTTPError as err:
            assert err.code == 404
        # Envoy still runs, and the admin interface is on loopback as before
        assert envoy.process.poll() is None
        assert _get(f'http://127.0.0.1:{admin_port}/ready')[0] == 200
