"""fleetmesh.envoy.prometheus_file_sd: Prometheus file_sd target groups from the inventory."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.envoy.plugins.filter.prometheus import prometheus_file_sd


def _host(name, address, **kw):
    host = {'host': name, 'address': address, 'port': 15090, 'service': 'web', 'namespace': 'lab',
            'envoy_version': '1.40.0', 'os_family': 'Debian'}
    host.update(kw)
    return host


def test_one_group_per_host_sorted_with_the_labels():
    groups = prometheus_file_sd([_host('vm2', '10.0.0.12', os_family='RedHat', envoy_version='1.39.3'),
                                 _host('vm1', 'vm1.example.com', port='15091')])
    assert groups == [
        {'targets': ['vm1.example.com:15091'],
         'labels': {'instance': 'vm1', 'service': 'web', 'namespace': 'lab', 'envoy_version': '1.40.0',
                    'os_family': 'Debian'}},
        {'targets': ['10.0.0.12:15090'],
         'labels': {'instance': 'vm2', 'service': 'web', 'namespace': 'lab', 'envoy_version': '1.39.3',
                    'os_family': 'RedHat'}},
    ]


def test_ipv6_target_is_bracketed():
    assert prometheus_file_sd([_host('vm1', '2001:db8::1')])[0]['targets'] == ['[2001:db8::1]:15090']


def test_empty_inventory():
    assert prometheus_file_sd([]) == []


@pytest.mark.parametrize('hosts, match', [
    ([_host('vm1', 'bad address')], "host vm1: address: 'bad address' is not allowed"),
    ([_host('vm1', None)], 'host vm1: address: None is not allowed'),
    ([_host('vm1', '10.0.0.1', port=0)], 'host vm1: envoy_stats_port: 0 is not allowed; allowed: integer 1-65535'),
    ([_host('vm1', '10.0.0.1', port=True)], 'host vm1: envoy_stats_port: True'),
    ([_host('vm1', '10.0.0.1'), _host('vm2', '10.0.0.1')], "host vm2: target: '10.0.0.1:15090' .*vm1 has it"),
    ('vm1', 'prometheus_file_sd'),
    ([{'address': '10.0.0.1'}], r'prometheus_file_sd\[0\].host'),
])
def test_bad_input(hosts, match):
    with pytest.raises(AnsibleFilterError, match=match):
        prometheus_file_sd(hosts)
