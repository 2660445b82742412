# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Prometheus file_sd target groups from the inventory. Documented in prometheus_file_sd.yml beside this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

from ansible.errors import AnsibleFilterError

_DNS_RE = re.compile(r'^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$')
LABELS = ('service', 'namespace', 'envoy_version', 'os_family')


def _fail(where, value, allowed):
    raise AnsibleFilterError('%s: %r is not allowed; allowed: %s' % (where, value, allowed))


def prometheus_file_sd(hosts):
    """One file_sd target group per host: [{targets: [address:port], labels: {instance, service, ...}}]."""
    if not isinstance(hosts, list):
        _fail('prometheus_file_sd', hosts,
              'a list of dicts with host, address, port, service, namespace, envoy_version and os_family')
    groups = []
    seen = {}
    for i, host in enumerate(hosts):
        where = 'prometheus_file_sd[%d]' % i
        if not isinstance(host, dict) or not host.get('host'):
            _fail(where + '.host', host.get('host') if isinstance(host, dict) else host, 'an inventory hostname')
        name = str(host['host'])
        address = host.get('address')
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            ip = None
        if ip is None and not (isinstance(address, str) and _DNS_RE.match(address)):
            _fail('host %s: address' % name, address,
                  'the IP address or DNS name Prometheus scrapes (fleetmesh_address, else ansible_host, else the hostname)')
        try:
            port = int(host.get('port'))
        except (TypeError, ValueError):
            port = 0
        if isinstance(host.get('port'), bool) or not 1 <= port <= 65535:
            _fail('host %s: envoy_stats_port' % name, host.get('port'), 'integer 1-65535')
        target = '%s:%d' % ('[%s]' % address if ip is not None and ip.version == 6 else address, port)
        if target in seen:
            _fail('host %s: target' % name, target, 'a target no other host has (%s has it)' % seen[target])
        seen[target] = name
        labels = {'instance': name}
        for key in LABELS:
            value = host.get(key)
            labels[key] = '' if value is None else str(value)
        groups.append({'targets': [target], 'labels': labels})
    return sorted(groups, key=lambda group: group['labels']['instance'])


class FilterModule(object):
    def filters(self):
        return {'prometheus_file_sd': prometheus_file_sd}
