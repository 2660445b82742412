"""The one resolved model (module_utils/_fleetmesh/model.py): derivations, and refusals naming variable and host."""

from __future__ import annotations

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import model, registration
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import validation as v

GOOD = {
    'fleetmesh_service': 'reviews',
    'fleetmesh_namespace': 'bookinfo',
    'fleetmesh_service_account': 'reviews',
    'fleetmesh_ports': {'http': '9080', 'grpc-api': 9090},
    'fleetmesh_labels': {'app': 'reviews', 'version': 'v1'},
    'fleetmesh_trust_domain': 'example.org',
    'fleetmesh_address': '192.0.2.10',
}


def resolve(**changes):
    values = dict(GOOD)
    values.update(changes)
    return model.resolve('vm1', {k: val for k, val in values.items() if val is not None})


def test_derived_values_come_from_the_model():
    workload, errors = resolve(fleetmesh_cluster_domain='corp.internal')
    assert errors == []
    assert workload.spiffe_id == 'spiffe://example.org/ns/bookinfo/sa/reviews'
    assert workload.dns_names == ['reviews.bookinfo', 'reviews.bookinfo.svc', 'reviews.bookinfo.svc.corp.internal']
    assert list(workload.ports.items()) == [('http', 9080), ('grpc-api', 9090)]
    assert workload.workload_entry_name == registration.workload_entry_name('reviews', 'vm1') == 'reviews-vm1'
    assert model.resolve('vm1', GOOD)[0].service_fqdn == 'reviews.bookinfo.svc.cluster.local'


BAD = [
    ('fleetmesh_ports', {}, 'is empty'),
    ('fleetmesh_ports', {'http': 0}, 'integer 1-65535'),
    ('fleetmesh_ports', {'http': 65536}, 'integer 1-65535'),
    ('fleetmesh_ports', {'http': 'http'}, 'integer 1-65535'),
    ('fleetmesh_ports', {'foo': 8080}, "Istio port name"),
    ('fleetmesh_labels', {'app': 'has space'}, 'label value'),
    ('fleetmesh_labels', {'-bad': 'x'}, 'label key'),
    ('fleetmesh_namespace', 'n' * 64, 'DNS-1123 label'),
    ('fleetmesh_service', '1web', 'DNS-1035'),
    ('fleetmesh_service', 'web\nExecStart=/bin/sh', 'control character'),
    ('fleetmesh_namespace', 'ns\r', 'control character'),
    ('fleetmesh_labels', {'app': 'a\x00b'}, 'control character'),
    ('fleetmesh_address', '2001:db8::10', 'IPv6'),
    ('fleetmesh_address', 'vm1.example.org', 'IPv4 address'),
    ('fleetmesh_trust_domain', None, 'is not set'),
]


@pytest.mark.parametrize('var,value,words', BAD, ids=[f'{b[0]}={b[1]!r}'[:60] for b in BAD])
def test_bad_values_are_refused_naming_variable_host_and_value(var, value, words):
    workload, errors = resolve(**{var: value})
    assert workload is None
    assert len(errors) == 1, errors
    assert errors[0].startswith(f'host vm1: {var}'), errors
    assert words in errors[0]
    assert 'allowed: ' in errors[0]
    if value is not None:  # the value (or the offending key or item of a mapping) is shown
        items = [x for item in value.items() for x in item] if isinstance(value, dict) else []
        shown = [v.show(value)] + [v.show(x) for x in items]
        assert any(text in errors[0] for text in shown), errors


def test_collection_vars_refuse_control_characters_and_hide_secrets():
    errors = model.check_collection_vars('vm1', {
        'envoy_log_level': 'info\nExecStartPre=/bin/sh',
        'istio_sidecar_token': 'secret-token\n',
        'istio_sidecar_cluster_env_extra': {'A': 'ok', 'B': 'x\ny'},
        'envoy_admin_port': 9901,
        'unrelated': 'a\nb',
        'istio_sidecar_proxy_metadata_extra': {'T': 'a tab\there cannot start a line'},
    })
    assert len(errors) == 3, errors
    assert any(e.startswith('host vm1: envoy_log_level: ') for e in errors)
    assert any(e.startswith('host vm1: istio_sidecar_cluster_env_extra.B: ') for e in errors)
    token = [e for e in errors if 'istio_sidecar_token' in e]
    assert token and 'secret-token' not in token[0] and '<hidden>' in token[0]


def test_fleet_checks_duplicate_addresses_and_service_accounts():
    one = model.resolve('vm1', GOOD)[0]
    two = model.resolve('vm2', dict(GOOD, fleetmesh_service_account='other'))[0]
    errors = model.check_fleet([one, two])
    assert any('host vm2: fleetmesh_address' in e and 'also the address of host vm1' in e for e in errors), errors
    assert any('different service accounts (other, reviews)' in e for e in errors), errors
    three = model.resolve('vm3', dict(GOOD, fleetmesh_address='192.0.2.11'))[0]
    assert model.check_fleet([one, three]) == []


def test_a_tab_is_refused_in_the_model_only():
    assert model.resolve('vm1', dict(GOOD, fleetmesh_service='web\t'))[1]
    assert model.check_collection_vars('vm1', {'fleetmesh_kubeconfig': 'a\tb'})
    assert model.check_collection_vars('vm1', {'envoy_log_level': 'a\tb'}) == []


def test_validate_model_refuses_control_characters_too():
    errors = v.validate_model({'envoy_version': '1.40.0', 'envoy_instance': 'main\nX=1'}, ['envoy'])
    assert errors and 'envoy_instance' in errors[0] and 'control character' in errors[0]
