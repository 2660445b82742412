"""Every check: a bad value gives one message naming the variable, showing the value and saying what is allowed."""

from __future__ import annotations

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import validation as v

# (check, extra args, good values, bad values, words of the "allowed" part)
CASES = [
    (v.check_dns_label, (), ['reviews', 'a', 'a1-b2', 'x' * 63],
     ['Reviews', '-a', 'a-', 'a.b', '', 'x' * 64, 'a_b', 5, None], 'DNS-1123 label'),
    (v.check_dns_subdomain, (), ['reviews', 'a.b-c.d', 'reviews-v1'],
     ['A.b', 'a..b', '.a', 'a.', '', 'a' * 254, 'a_b', 3], 'DNS-1123 subdomain'),
    (v.check_port, (), [1, 80, 65535, '9080'],
     [0, 65536, 70000, -1, True, 'http', '80a', 1.5, None], 'integer 1-65535'),
    (v.check_semver, (), ['1.40.0', '0.0.1', '10.20.30'],
     ['1.40', 'v1.40.0', '1.40.0-dev', '01.40.0', '1.40.00', '1.4O.0', 1.4, ''], 'X.Y.Z'),
    (v.check_ip_address, (), ['192.0.2.10', '2001:db8::10', '::1'],
     ['192.0.2.256', '192.0.2', ' 192.0.2.1', '01.2.3.4', 'host', '', 12], 'IPv4 or IPv6'),
    (v.check_cidr_list, (), ['10.96.0.0/12', '10.96.0.0/12,192.0.2.0/24', '10.0.0.0/8, 2001:db8::/32',
                             ['10.96.0.0/12', 'fd00::/8'], '*'],
     ['10.96.0.0', '10.96.0.0/33', 'x/12', '', [], 12], 'CIDR notation'),
    (v.check_trust_domain, (), ['cluster.local', 'example.org', 'td_1.example'],
     ['Cluster.local', 'cluster..local', '.cluster', 'a b', '', 'spiffe://x', 'x' * 256], 'lowercase DNS-like'),
    (v.check_spiffe_id, (), ['spiffe://cluster.local/ns/bookinfo/sa/reviews', 'spiffe://td/a'],
     ['spiffe://cluster.local', 'spiffe://cluster.local/', 'spiffe://cluster.local/ns//sa',
      'spiffe://cluster.local/ns/../sa', 'spiffe://Cluster/ns', 'http://cluster.local/ns', 'spiffe://td/a b',
      'spiffe://td/a/'], 'spiffe://<trust domain>/<path>'),
    (v.check_san, (), ['reviews.bookinfo.svc', '*.example.org', '192.0.2.1', '2001:db8::1', 'DNS:example.org',
                       'IP:192.0.2.1', 'URI:spiffe://cluster.local/ns/a/sa/b', 'spiffe://cluster.local/ns/a/sa/b'],
     ['exa mple.org', '*.*.example.org', 'IP:example.org', 'URI:http://x', 'a..b', '', 7], 'a DNS name'),
    (v.check_install_method, (), ['artifact', 'url', 'package'], ['docker', 'Binary', 'binary', '', None],
     'one of artifact, url, package'),
    (v.check_istio_port_name, (), ['http', 'http-web', 'grpc-api', 'http2', 'tcp-db', 'mysql', 'grpc-web'],
     ['web', 'HTTP', 'httpx', 'http_web', 'udp-dns', '', 'http-', 8080], 'protocol one of http, http2'),
    (v.check_label_value, (), ['v1', '', 'a.b_c-d', 'A' * 63],
     ['-v1', 'v1-', 'a b', 'x' * 64, 1, True, None], 'empty or of letters'),
    (v.check_label_key, (), ['app', 'app.kubernetes.io/name', 'example.com/My_Key.x'],
     ['-app', 'Example.com/app', '/app', 'a/b/c', 'x' * 64, '', 5], '[prefix/]name'),
    (v.check_locality, (), ['us-east', 'us-east/zone-a', 'us-east/zone-a/rack1'],
     ['us-east/', 'a/b/c/d', 'us east', '', 3], 'region[/zone[/subzone]]'),
    (v.check_weight, (), [1, 100, 4294967295], [0, -1, 4294967296, 'heavy', True], 'integer 1-4294967295'),
    (v.check_env_name, (), ['ISTIO_SERVICE_CIDR', '_X', 'A1'], ['istio', '1A', 'A-B', 'A B', ''], '[A-Z_][A-Z0-9_]*'),
    (v.check_file_mode, (), ['0644', '644', '0755', '1777', 0o640],
     ['u=rw', '0888', '99', 'rw-r--r--', True, 0o17777], 'octal mode'),
    (v.check_bool, (), [True, False], ['yes', 1, None], 'true or false'),
]


def _ids():
    return [case[0].__name__ for case in CASES]


@pytest.mark.parametrize(('check', 'args', 'good', 'bad', 'allowed'), CASES, ids=_ids())
def test_good_values_pass(check, args, good, bad, allowed):
    for value in good:
        assert check('some_var', value, *args) == [], value


@pytest.mark.parametrize(('check', 'args', 'good', 'bad', 'allowed'), CASES, ids=_ids())
def test_bad_values_name_var_value_and_allowed(check, args, good, bad, allowed):
    for value in bad:
        errors = check('some_var', value, *args)
        assert errors, f'{check.__name__} accepted {value!r}'
        message = errors[0]
        assert message.startswith('some_var'), message
        assert v.show(value) in message, message
        assert '; allowed: ' in message and allowed in message.split('; allowed: ', 1)[1], message


def test_port_message_is_exactly_as_documented():
    assert v.check_port('fleetmesh_ports.http', 70000) == [
        'fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535']


def test_show_quotes_strings_so_spaces_and_empty_values_are_visible():
    assert v.check_dns_label('fleetmesh_service', '') == [
        f'fleetmesh_service: "" is not a valid DNS-1123 label; allowed: {v.ALLOWED_DNS_LABEL}']
    assert '"my service"' in v.check_dns_label('fleetmesh_service', 'my service')[0]


def test_cidr_with_host_bits_suggests_the_network():
    (message,) = v.check_cidr_list('istio_sidecar_service_cidr', '10.96.0.1/12')
    assert message.startswith(
        'istio_sidecar_service_cidr[0]: "10.96.0.1/12" has host bits set (did you mean 10.96.0.0/12?)')


def test_cidr_list_reports_every_bad_item_with_its_index():
    errors = v.check_cidr_list('cidrs', '10.0.0.0/8,bogus,192.0.2.0/33')
    assert [e.split(':')[0] for e in errors] == ['cidrs[1]', 'cidrs[2]']
    assert v.check_cidr_list('cidrs', '*,10.0.0.0/8')[0].startswith('cidrs[0]: "*" is not a CIDR; allowed: ')


def test_admin_address_must_be_loopback_unless_opted_in():
    for good in ('127.0.0.1', '127.1.2.3', '::1', 'localhost'):
        assert v.check_admin_address('envoy_admin_address', good) == []
    (message,) = v.check_admin_address('envoy_admin_address', '0.0.0.0')
    assert message.startswith('envoy_admin_address: "0.0.0.0" is not a loopback address; allowed: ')
    assert 'envoy_admin_allow_non_loopback: true' in message
    assert v.check_admin_address('envoy_admin_address', '0.0.0.0', True) == []
    assert v.check_admin_address('envoy_admin_address', 'not-an-ip', True)
    assert 'is not a valid IP address' in v.check_admin_address('envoy_admin_address', 'example.org')[0]


def test_spiffe_id_in_another_trust_domain():
    (message,) = v.check_spiffe_id('workload_certs_spiffe_id', 'spiffe://other.td/ns/a/sa/b', 'cluster.local')
    assert message.startswith('workload_certs_spiffe_id: "spiffe://other.td/ns/a/sa/b" is not in trust domain')
    assert 'spiffe://cluster.local/' in message


def test_istio_ports_checks_names_ports_and_duplicates():
    assert v.check_istio_ports('fleetmesh_ports', {'http': 9080, 'grpc-api': 9090}) == []
    errors = v.check_istio_ports('fleetmesh_ports', {'web': 9080, 'http': 70000, 'tcp': 9080, 'tcp-x': 9080})
    assert any(e.startswith('fleetmesh_ports.web (port name): "web" is not a valid Istio port name') for e in errors)
    assert 'fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535' in errors
    assert any(e.startswith('fleetmesh_ports: 9080 is used by more than one port name (web, tcp, tcp-x)')
               for e in errors)
    assert v.check_istio_ports('fleetmesh_ports', [9080])[0].startswith('fleetmesh_ports: [9080] is not a mapping')
    assert v.check_istio_ports('fleetmesh_ports', {})


def test_labels_check_keys_and_values():
    assert v.check_labels('fleetmesh_labels', {'app': 'reviews', 'version': 'v1'}) == []
    errors = v.check_labels('fleetmesh_labels', {'app': 'reviews', 'version': 1, 'Bad Key': 'x'})
    assert 'fleetmesh_labels.version: 1 is not a valid label value; allowed: ' + v.ALLOWED_LABEL_VALUE in errors
    assert any(e.startswith('fleetmesh_labels (label key): "Bad Key" is not a valid label key') for e in errors)
    assert v.check_labels('fleetmesh_labels', 'app=reviews')


def test_duplicate_addresses_within_one_service():
    assert v.check_unique_addresses('fleetmesh_service_addresses', {'vm1': '192.0.2.1', 'vm2': '192.0.2.2'}) == []
    errors = v.check_unique_addresses('fleetmesh_service_addresses',
                                      {'vm1': '192.0.2.1', 'vm2': '192.0.2.1', 'vm3': '2001:db8::1',
                                       'vm4': '2001:DB8:0::1', 'vm5': 'nope'})
    assert ('fleetmesh_service_addresses: "192.0.2.1" is used by more than one host of the service (vm1, vm2); '
            'allowed: ' + v.ALLOWED_ADDRESSES) in errors
    assert any('"2001:db8::1" is used by more than one host of the service (vm3, vm4)' in e for e in errors)
    assert any(e.startswith('fleetmesh_service_addresses.vm5: "nope" is not a valid IP address') for e in errors)
    assert v.check_unique_addresses('addrs', ['192.0.2.1', '192.0.2.1'])


def test_ensure_raises_with_all_messages_and_returns_value():
    assert v.ensure(v.check_port, 'p', 80) == 80
    with pytest.raises(v.ValidationError) as err:
        v.ensure(v.check_istio_ports, 'fleetmesh_ports', {'web': 0})
    assert len(err.value.errors) == 2
    assert str(err.value) == '; '.join(err.value.errors)


def test_file_mode_and_semver_helpers():
    assert v.file_mode('0640') == 0o640
    assert v.file_mode('755') == 0o755
    assert v.file_mode(0o600) == 0o600
    assert v.file_mode(None) is None
    assert v.semver_tuple('1.40.0') == (1, 40, 0)
    with pytest.raises(v.ValidationError):
        v.file_mode('u+rw')


# -- validate_model ----------------------------------------------------------------------------------

GOOD_MODEL = {
    'fleetmesh_service': 'reviews',
    'fleetmesh_namespace': 'bookinfo',
    'fleetmesh_service_account': 'reviews',
    'fleetmesh_ports': {'http': 9080},
    'fleetmesh_labels': {'app': 'reviews', 'version': 'v1'},
    'fleetmesh_network': 'vm-network',
    'fleetmesh_locality': 'us-east/zone-a',
    'fleetmesh_weight': 1,
    'fleetmesh_address': '192.0.2.10',
    'fleetmesh_service_addresses': {'vm1': '192.0.2.10', 'vm2': '192.0.2.11'},
    'fleetmesh_trust_domain': 'cluster.local',
    'fleetmesh_cluster_id': 'Kubernetes',
    'fleetmesh_mesh_id': 'mesh1',
    'envoy_version': '1.40.0',
    'envoy_install_method': 'artifact',
    'envoy_admin_address': '127.0.0.1',
    'envoy_admin_port': 9901,
    'workload_certs_spiffe_id': 'spiffe://cluster.local/ns/bookinfo/sa/reviews',
    'workload_certs_sans': ['reviews.bookinfo.svc', '192.0.2.10'],
    'istio_sidecar_service_cidr': '10.96.0.0/12',
}


def test_validate_model_accepts_the_design_example():
    assert v.validate_model(GOOD_MODEL, sorted(v.CHECKS)) == []


def test_validate_model_returns_every_error_once():
    bad = dict(GOOD_MODEL, fleetmesh_service='Reviews', fleetmesh_ports={'http': 70000},
               fleetmesh_trust_domain='Cluster.Local', envoy_admin_address='0.0.0.0')
    del bad['fleetmesh_namespace']
    errors = v.validate_model(bad, ['fleetmesh_model', 'envoy', 'workload_certs'])
    assert errors[0].startswith('fleetmesh_service: "Reviews" is not a valid DNS-1123 label')
    assert 'fleetmesh_namespace: is not set; allowed: ' + v.ALLOWED_DNS_LABEL in errors
    assert 'fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535' in errors
    assert sum(e.startswith('fleetmesh_trust_domain:') for e in errors) == 1  # in two groups, reported once
    assert any(e.startswith('envoy_admin_address: "0.0.0.0" is not a loopback address') for e in errors)
    assert len(errors) == 5


def test_validate_model_admin_opt_in_and_unknown_checks():
    opted = dict(GOOD_MODEL, envoy_admin_address='0.0.0.0', envoy_admin_allow_non_loopback=True)
    assert v.validate_model(opted, ['envoy']) == []
    not_bool = dict(GOOD_MODEL, envoy_admin_allow_non_loopback='yes')
    assert v.validate_model(not_bool, ['envoy'])[0].startswith('envoy_admin_allow_non_loopback: "yes" is not a boolean')
    (message,) = v.validate_model(GOOD_MODEL, ['fleetmesh_modle'])
    assert message.startswith('checks: "fleetmesh_modle" is not a known check; allowed: one of ')
    assert v.validate_model('nope', ['envoy'])[0].startswith('vars: "nope" is not a mapping')


def test_validate_model_optional_none_is_not_set():
    model = dict(GOOD_MODEL, fleetmesh_locality=None, fleetmesh_weight=None)
    assert v.validate_model(model, ['fleetmesh_model']) == []
    assert v.validate_model({'fleetmesh_service': None}, ['fleetmesh_model'])[0] == (
        'fleetmesh_service: is not set; allowed: ' + v.ALLOWED_DNS_LABEL)


def test_validate_model_spiffe_id_must_be_in_the_trust_domain():
    model = dict(GOOD_MODEL, workload_certs_spiffe_id='spiffe://elsewhere/ns/bookinfo/sa/reviews')
    (message,) = v.validate_model(model, ['workload_certs'])
    assert 'is not in trust domain "cluster.local"' in message


def test_readiness_probe_one_handler_known_keys_ports_and_timings():
    good = [{"httpGet": {"path": "/ready", "port": 8080, "host": "127.0.0.1", "scheme": "HTTP"}, "periodSeconds": 1},
            {"tcpSocket": {"port": "8080"}}, {"exec": {"command": ["/bin/true"]}},
            {"grpc": {"port": 9090, "service": "x"}, "failureThreshold": 3, "initialDelaySeconds": 0}]
    for probe in good:
        assert v.check_readiness_probe("p", probe) == [], probe
    assert v.check_readiness_probe("p", {}, allow_empty=True) == []
    assert v.check_readiness_probe("p", {})[0].startswith("p: {} is not a probe mapping; allowed: a mapping with "
                                                          "exactly one of httpGet")
    assert v.check_readiness_probe("p", {"exec": {"command": []}}) == [
        "p.exec.command: [] is not a command; allowed: a non-empty list of non-empty strings"]
    errors = v.check_readiness_probe("p", {"httpGet": {"port": 0, "path": "ready", "scheme": "FTP", "host": "a b",
                                                       "verb": "GET"}, "periodSeconds": True})
    assert errors == [
        "p.periodSeconds: true is not allowed; allowed: integer 1-2147483647",
        'p.httpGet.verb: "GET" is not a known field; allowed: one of path, port, host, scheme, httpHeaders',
        "p.httpGet.port: 0 is not a valid port; allowed: integer 1-65535",
        'p.httpGet.host: "a b" is not an address or a host name; allowed: an IP address (such as 127.0.0.1 for an '
        'app on loopback) or a DNS name',
        "p.httpGet.path: \"ready\" is not a path; allowed: a string starting with '/'",
        'p.httpGet.scheme: "FTP" is not allowed; allowed: HTTP or HTTPS',
    ]
    errors = v.validate_model({"istio_sidecar_readiness_probe": {"tcpSocket": {"port": 8080}, "exec": {}}},
                              ["istio_sidecar"])
    assert any(e.startswith("istio_sidecar_readiness_probe: ") and "has 2 handlers (tcpSocket, exec)" in e
               for e in errors), errors
