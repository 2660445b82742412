# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Envoy bootstrap rendering: structured role variables in, an Envoy v3 bootstrap dict out.

Documented in envoy_bootstrap.yml beside this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError

HCM = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
ROUTER = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router'
HEALTH = 'type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck'
DOWNSTREAM_TLS = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext'
UPSTREAM_TLS = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext'
HTTP_OPTIONS = 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions'


def _fail(where, value, allowed):
    raise AnsibleFilterError('%s: %r is not allowed; allowed: %s' % (where, value, allowed))


def _port(where, value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if isinstance(value, bool) or not 1 <= port <= 65535:
        _fail(where, value, 'integer 1-65535')
    return port


def _is_ip(address):
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def _socket(address, port):
    return {'socket_address': {'address': address, 'port_value': port}}


def _common_tls(tls):
    cert_dir = tls.get('cert_dir', '/etc/certs').rstrip('/')
    context = {
        'tls_certificates': [{
            'certificate_chain': {'filename': cert_dir + '/cert-chain.pem'},
            'private_key': {'filename': cert_dir + '/key.pem'},
        }],
        'validation_context': {'trusted_ca': {'filename': cert_dir + '/root-cert.pem'}},
    }
    sans = tls.get('spiffe_ids') or []
    if sans:
        context['validation_context']['match_typed_subject_alt_names'] = [
            {'san_type': 'URI', 'matcher': {'exact': san}} for san in sans]
    return context


def _route(where, route, clusters):
    match = {}
    if 'path' in route:
        match['path'] = route['path']
    else:
        match['prefix'] = route.get('prefix', '/')
    out = {'match': match}
    if 'direct_response' in route:
        resp = route['direct_response'] or {}
        status = resp.get('status', 200)
        if not isinstance(status, int) or not 200 <= status <= 599:
            _fail(where + '.direct_response.status', status, 'an HTTP status 200-599')
        out['direct_response'] = {'status': status}
        if 'body' in resp:
            out['direct_response']['body'] = {'inline_string': str(resp['body'])}
        return out
    cluster = route.get('cluster')
    if cluster not in clusters:
        _fail(where + '.cluster', cluster, 'the name of a cluster in envoy_clusters: %s' % ', '.join(sorted(clusters)))
    action = {'cluster': cluster}
    if 'timeout' in route:
        action['timeout'] = route['timeout']
    if 'prefix_rewrite' in route:
        action['prefix_rewrite'] = route['prefix_rewrite']
    out['route'] = action
    return out


def _listener(i, spec, clusters, health_path):
    where = 'envoy_listeners[%d]' % i
    name = spec.get('name') or _fail(where + '.name', spec.get('name'), 'a non-empty name')
    port = _port(where + '.port', spec.get('port'))
    routes = [_route('%s.routes[%d]' % (where, j), r, clusters) for j, r in enumerate(spec.get('routes') or [])]
    if not routes:
        _fail(where + '.routes', spec.get('routes'), 'a non-empty list of routes')
    http_filters = []
    if spec.get('health_check', True):
        http_filters.append({'name': 'envoy.filters.http.health_check', 'typed_config': {
            '@type': HEALTH, 'pass_through_mode': False,
            'headers': [{'name': ':path', 'string_match': {'exact': spec.get('health_path', health_path)}}]}})
    for j, extra in enumerate(spec.get('http_filters') or []):
        if not isinstance(extra, dict) or not extra.get('name'):
            _fail('%s.http_filters[%d]' % (where, j), extra, 'a dict with name and typed_config')
        http_filters.append(extra)
    http_filters.append({'name': 'envoy.filters.http.router', 'typed_config': {'@type': ROUTER}})
    hcm = {
        '@type': HCM,
        'stat_prefix': name,
        'codec_type': 'AUTO',
        'route_config': {'name': name, 'virtual_hosts': [{'name': name, 'domains': spec.get('domains', ['*']), 'routes': routes}]},
        'http_filters': http_filters,
    }
    if spec.get('tls'):
        hcm['forward_client_cert_details'] = 'SANITIZE_SET'
        hcm['set_current_client_cert_details'] = {'uri': True}
    chain = {'filters': [{'name': 'envoy.filters.network.http_connection_manager', 'typed_config': hcm}]}
    tls = spec.get('tls')
    if tls:
        chain['transport_socket'] = {'name': 'envoy.transport_sockets.tls', 'typed_config': {
            '@type': DOWNSTREAM_TLS,
            'require_client_certificate': bool(tls.get('require_client_cert', True)),
            'common_tls_context': _common_tls(tls)}}
    return {'name': name, 'address': _socket(spec.get('address', '0.0.0.0'), port), 'filter_chains': [chain]}


def _cluster(i, spec):
    where = 'envoy_clusters[%d]' % i
    name = spec.get('name') or _fail(where + '.name', spec.get('name'), 'a non-empty name')
    endpoints = spec.get('endpoints') or _fail(where + '.endpoints', spec.get('endpoints'), 'a non-empty list of {address, port}')
    lb = []
    all_ip = True
    for j, ep in enumerate(endpoints):
        address = ep.get('address')
        if not address:
            _fail('%s.endpoints[%d].address' % (where, j), address, 'an IP address or DNS name')
        all_ip = all_ip and _is_ip(address)
        lb.append({'endpoint': {'address': _socket(address, _port('%s.endpoints[%d].port' % (where, j), ep.get('port')))}})
    out = {
        'name': name,
        'type': 'STATIC' if all_ip else 'STRICT_DNS',
        'connect_timeout': spec.get('connect_timeout', '2s'),
        'load_assignment': {'cluster_name': name, 'endpoints': [{'lb_endpoints': lb}]},
    }
    if spec.get('http2'):
        out['typed_extension_protocol_options'] = {'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
            '@type': HTTP_OPTIONS, 'explicit_http_config': {'http2_protocol_options': {}}}}
    tls = spec.get('tls')
    if tls:
        ctx = {'@type': UPSTREAM_TLS, 'common_tls_context': _common_tls(tls)}
        if tls.get('sni'):
            ctx['sni'] = tls['sni']
        out['transport_socket'] = {'name': 'envoy.transport_sockets.tls', 'typed_config': ctx}
    return out


STATS_LISTENER = 'fleetmesh_stats'
STATS_CLUSTER = 'fleetmesh_admin_stats'
STATS_PATH = '/stats/prometheus'


def _stats(spec, admin_address, admin_port, listeners):
    """The Prometheus listener (as Istio's 15090): only GET /stats/prometheus, proxied to the loopback admin."""
    stats = spec.get('stats') or {}
    enabled = stats.get('enabled', False)
    if not isinstance(enabled, bool):
        _fail('envoy_stats_enabled', enabled, 'true or false')
    if not enabled:
        return None, None
    address = stats.get('address', '0.0.0.0')
    if not isinstance(address, str) or not _is_ip(address) or ':' in address:
        _fail('envoy_stats_address', address, 'an IPv4 address (0.0.0.0 for every address)')
    port = _port('envoy_stats_port', stats.get('port', 15090))
    if port == admin_port:
        _fail('envoy_stats_port', port, 'a port other than envoy_admin_port (%d)' % admin_port)
    for name, (l_address, l_port) in listeners:
        if l_port == port and (l_address == address or '0.0.0.0' in (l_address, address)):
            _fail('envoy_stats_port', port, 'a port no listener of envoy_listeners uses (listener %s is on %s:%d)'
                  % (name, l_address, l_port))
        if name == STATS_LISTENER:
            _fail('envoy_listeners', name, 'a listener name other than %s (the stats listener)' % STATS_LISTENER)
    # The admin interface stays where it is (loopback unless opted in); the stats listener reaches it there.
    target = '127.0.0.1' if admin_address in ('0.0.0.0', '') else admin_address
    routes = [
        {'match': {'path': STATS_PATH, 'headers': [{'name': ':method', 'string_match': {'exact': 'GET'}}]},
         'route': {'cluster': STATS_CLUSTER, 'timeout': '10s'}},
        {'match': {'prefix': '/'}, 'direct_response': {'status': 404, 'body': {'inline_string': 'not found\n'}}},
    ]
    hcm = {
        '@type': HCM,
        'stat_prefix': STATS_LISTENER,
        'codec_type': 'AUTO',
        'normalize_path': True,
        'route_config': {'name': STATS_LISTENER, 'virtual_hosts': [{'name': STATS_LISTENER, 'domains': ['*'], 'routes': routes}]},
        'http_filters': [{'name': 'envoy.filters.http.router', 'typed_config': {'@type': ROUTER}}],
    }
    listener = {'name': STATS_LISTENER, 'address': _socket(address, port),
                'filter_chains': [{'filters': [{'name': 'envoy.filters.network.http_connection_manager', 'typed_config': hcm}]}]}
    cluster = {'name': STATS_CLUSTER, 'type': 'STATIC', 'connect_timeout': '1s',
               'load_assignment': {'cluster_name': STATS_CLUSTER,
                                   'endpoints': [{'lb_endpoints': [{'endpoint': {'address': _socket(target, admin_port)}}]}]}}
    return listener, cluster


def envoy_bootstrap(spec):
    """Render an Envoy v3 bootstrap from the role's structured variables (see envoy_bootstrap.yml)."""
    if not isinstance(spec, dict):
        _fail('envoy_bootstrap', spec, 'a dict')
    admin = spec.get('admin') or {}
    node = spec.get('node') or {}
    boot = {
        'node': {'id': node.get('id', 'envoy'), 'cluster': node.get('cluster', 'envoy')},
        'admin': {'address': _socket(admin.get('address', '127.0.0.1'), _port('envoy_admin_port', admin.get('port', 9901)))},
    }
    admin_address = boot['admin']['address']['socket_address']['address']
    admin_port = boot['admin']['address']['socket_address']['port_value']
    if node.get('locality'):
        region, _sep, zone = str(node['locality']).partition('/')
        boot['node']['locality'] = {'region': region, 'zone': zone}
    mode = spec.get('mode', 'static')
    if mode not in ('static', 'xds'):
        _fail('envoy_config_mode', mode, 'static or xds')
    clusters = [_cluster(i, c) for i, c in enumerate(spec.get('clusters') or [])]
    names = [c['name'] for c in clusters]
    if len(set(names)) != len(names):
        _fail('envoy_clusters', names, 'unique cluster names')
    if STATS_CLUSTER in names:
        _fail('envoy_clusters', STATS_CLUSTER, 'a cluster name other than %s (the stats listener\'s)' % STATS_CLUSTER)
    if mode == 'xds':
        xds = spec.get('xds') or {}
        xds_cluster = {'name': 'xds', 'endpoints': [{'address': xds.get('address'), 'port': xds.get('port', 15012)}],
                       'http2': True, 'tls': xds.get('tls')}
        if not xds.get('address'):
            _fail('envoy_xds_address', xds.get('address'), 'the address of the xDS control plane')
        clusters.append(_cluster(len(clusters), xds_cluster))
        boot['dynamic_resources'] = {
            'ads_config': {'api_type': 'GRPC', 'transport_api_version': 'V3', 'set_node_on_first_message_only': True,
                           'grpc_services': [{'envoy_grpc': {'cluster_name': 'xds'}}]},
            'cds_config': {'ads': {}, 'resource_api_version': 'V3'},
            'lds_config': {'ads': {}, 'resource_api_version': 'V3'},
        }
        stats_listener, stats_cluster = _stats(spec, admin_address, admin_port, [])
        boot['static_resources'] = {'clusters': clusters + ([stats_cluster] if stats_cluster else [])}
        if stats_listener:
            boot['static_resources']['listeners'] = [stats_listener]
        return boot
    listeners = [_listener(i, spec_l, set(names), spec.get('health_path', '/healthz'))
                 for i, spec_l in enumerate(spec.get('listeners') or [])]
    ports = [(entry['address']['socket_address']['address'], entry['address']['socket_address']['port_value']) for entry in listeners]
    if len(set(ports)) != len(ports):
        _fail('envoy_listeners', ports, 'distinct address:port pairs')
    stats_listener, stats_cluster = _stats(spec, admin_address, admin_port,
                                           [(entry['name'], port) for entry, port in zip(listeners, ports, strict=True)])
    if stats_listener:
        listeners.append(stats_listener)
        clusters.append(stats_cluster)
    boot['static_resources'] = {'listeners': listeners, 'clusters': clusters}
    return boot


class FilterModule(object):
    def filters(self):
        return {'envoy_bootstrap': envoy_bootstrap}
