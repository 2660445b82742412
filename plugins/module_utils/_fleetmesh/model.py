# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The one resolved inventory model of a host (docs/model.md).

A host's place in the mesh is written once, as ``fleetmesh_*`` variables. ``resolve(host, variables)``
checks them with the strictest rule any later step applies and returns a typed ``Workload`` from which
every derived value comes: the SPIFFE ID, the DNS names of the service, the Kubernetes object names and
the registered ports. ``check_fleet`` adds the checks that need every targeted host at once. The
``fleetmesh.envoy.preflight`` action runs both as the first task of every runbook, before any host or
the cluster changes; roles, the signing action and registration read the same derivations.

Errors name the variable the user wrote (``fleetmesh_ports`` on host X), the value and what is allowed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import validation as v

# The model's variables, in the order they are checked and reported.
MODEL_VARS = ('fleetmesh_service', 'fleetmesh_namespace', 'fleetmesh_service_account', 'fleetmesh_ports',
              'fleetmesh_labels', 'fleetmesh_network', 'fleetmesh_locality', 'fleetmesh_weight',
              'fleetmesh_address', 'fleetmesh_trust_domain', 'fleetmesh_cluster_id', 'fleetmesh_mesh_id',
              'fleetmesh_cluster_domain')

# Variable name prefixes of the collection: every value under them is refused when it holds a control
# character, wherever it ends up (systemd EnvironmentFile, unit, cluster.env, /etc/hosts, bootstrap).
COLLECTION_PREFIXES = ('fleetmesh_', 'envoy_', 'workload_certs_', 'istio_sidecar_', 'mesh_registration_',
                       'upgrade_')
ALLOWED_ADDRESS_V4 = ('an IPv4 address, e.g. 192.0.2.10 (IPv6 VM addresses are refused for now: the lab network '
                      'and the Envoy listener defaults are IPv4; see docs/model.md)')
DEFAULT_CLUSTER_DOMAIN = 'cluster.local'


class Workload:
    """A host's resolved mesh model; every derived value is a property, computed in one place."""

    __slots__ = ('host', 'service', 'namespace', 'service_account', 'ports', 'labels', 'network', 'locality',
                 'weight', 'address', 'trust_domain', 'cluster_id', 'mesh_id', 'cluster_domain')

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    @property
    def spiffe_id(self) -> str:
        return 'spiffe://%s/ns/%s/sa/%s' % (self.trust_domain, self.namespace, self.service_account)

    @property
    def dns_names(self) -> List[str]:
        """The service's names in Kubernetes, shortest first, with the configured cluster domain."""
        base = '%s.%s' % (self.service, self.namespace)
        return [base, base + '.svc', '%s.svc.%s' % (base, self.cluster_domain)]

    @property
    def service_fqdn(self) -> str:
        return self.dns_names[-1]

    @property
    def workload_entry_name(self) -> str:
        return workload_entry_name(self.service, self.host)

    def as_dict(self) -> Dict[str, Any]:
        out = OrderedDict((name, getattr(self, name)) for name in self.__slots__)
        out.update(spiffe_id=self.spiffe_id, dns_names=self.dns_names, workload_entry_name=self.workload_entry_name)
        return out


def host_label(host: str) -> str:
    """A DNS-1123 label for an inventory host name: itself when it is one, else sanitized + a hash."""
    if len(host) <= 63 and re.match(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', host):
        return host
    base = re.sub(r'[^a-z0-9-]+', '-', host.lower())
    base = re.sub(r'-+', '-', base).strip('-')[:45].strip('-') or 'host'
    return '%s-%s' % (base, hashlib.sha256(host.encode('utf-8')).hexdigest()[:8])


def workload_entry_name(service: str, host: str) -> str:
    """The WorkloadEntry (and registration key) of a host of a service."""
    return '%s-%s' % (service, host_label(host))


def check_model_address(var: str, value: Any) -> List[str]:
    errors = v.check_ip_address(var, value)
    if errors:
        return [v._error(var, value, 'is not a valid IP address', ALLOWED_ADDRESS_V4)]
    if ipaddress.ip_address(str(value).strip()).version != 4:
        return [v._error(var, value, 'is an IPv6 address, which the collection does not support yet',
                         ALLOWED_ADDRESS_V4)]
    return []


def _ports_rule(var: str, value: Any) -> List[str]:
    if isinstance(value, Mapping) and not value:
        return [v._error(var, value, 'is empty', v.ALLOWED_ISTIO_PORTS + ', with at least one port')]
    return v.check_istio_ports(var, value)


# (variable, check, required). The service name follows DNS-1035, as a Kubernetes Service name must:
# the strictest rule of any step (registration's Service, ServiceEntry and EndpointSlice shapes).
_RULES = (
    ('fleetmesh_service', v.check_dns1035_label, True),
    ('fleetmesh_namespace', v.check_dns_label, True),
    ('fleetmesh_service_account', v.check_dns_subdomain, True),
    ('fleetmesh_ports', _ports_rule, True),
    ('fleetmesh_labels', v.check_labels, False),
    ('fleetmesh_network', v.check_label_value, False),
    ('fleetmesh_locality', v.check_locality, False),
    ('fleetmesh_weight', v.check_weight, False),
    ('fleetmesh_address', check_model_address, False),
    ('fleetmesh_trust_domain', v.check_trust_domain, True),
    ('fleetmesh_cluster_id', v.check_label_value, False),
    ('fleetmesh_mesh_id', v.check_label_value, False),
    ('fleetmesh_cluster_domain', v.check_dns_subdomain, False),
)

_ALLOWED = {
    'fleetmesh_service': v.ALLOWED_DNS1035_LABEL,
    'fleetmesh_namespace': v.ALLOWED_DNS_LABEL,
    'fleetmesh_service_account': v.ALLOWED_DNS_SUBDOMAIN,
    'fleetmesh_ports': v.ALLOWED_ISTIO_PORTS,
    'fleetmesh_trust_domain': v.ALLOWED_TRUST_DOMAIN,
}


def _on(host: str, errors: List[str]) -> List[str]:
    """Messages of one host's variables, each starting with the host: 'host vm1: fleetmesh_ports.http: ...'."""
    return ['host %s: %s' % (host, error) for error in errors]


def resolve(host: str, variables: Mapping, required: bool = True) -> Tuple[Optional[Workload], List[str]]:
    """Check a host's ``fleetmesh_*`` variables and return (Workload, []) or (None, errors).

    Messages name the host and the variable: ``host vm1: fleetmesh_ports.http: ...``. With ``required=False``
    (runbooks that only remove, such as offboarding) a variable that is not set is no error, a bad one still is,
    and a host without the whole model gives (None, []).
    """
    errors: List[str] = []
    values: Dict[str, Any] = {}
    missing = False
    for var, check, needed in _RULES:
        value = variables.get(var)
        if value is None or (value == '' and var != 'fleetmesh_network'):
            missing = missing or needed
            if needed and required:
                errors.extend(_on(host, ['%s: is not set; allowed: %s' % (var, _ALLOWED[var])]))
            continue
        errors.extend(_on(host, v.check_no_control(var, value) or check(var, value)))
        values[var] = value
    if errors or missing:
        return None, errors
    ports = OrderedDict(sorted(((str(name), int(str(port).strip())) for name, port in values['fleetmesh_ports'].items()),
                               key=lambda item: (item[1], item[0])))
    address = values.get('fleetmesh_address')
    return Workload(
        host=host, service=values['fleetmesh_service'], namespace=values['fleetmesh_namespace'],
        service_account=values['fleetmesh_service_account'], ports=ports,
        labels=OrderedDict(sorted((str(k), str(val)) for k, val in (values.get('fleetmesh_labels') or {}).items())),
        network=values.get('fleetmesh_network'), locality=values.get('fleetmesh_locality'),
        weight=int(values['fleetmesh_weight']) if values.get('fleetmesh_weight') is not None else None,
        address=str(ipaddress.ip_address(str(address).strip())) if address is not None else None,
        trust_domain=values['fleetmesh_trust_domain'], cluster_id=values.get('fleetmesh_cluster_id'),
        mesh_id=values.get('fleetmesh_mesh_id'),
        cluster_domain=values.get('fleetmesh_cluster_domain') or DEFAULT_CLUSTER_DOMAIN), []


def check_collection_vars(host: str, variables: Mapping) -> List[str]:
    """Control characters in the variables of the collection set for a host (model vars are checked by resolve)."""
    errors: List[str] = []
    for var in sorted(k for k in variables if isinstance(k, str)):
        if var not in MODEL_VARS and var.startswith(COLLECTION_PREFIXES):
            errors.extend(_on(host, v.check_no_control(var, variables[var], allow_tab=not var.startswith('fleetmesh_'))))
    return errors


def check_fleet(workloads: Iterable[Workload]) -> List[str]:
    """Checks across hosts: one address per host within a service, one trust domain per namespace/service."""
    errors: List[str] = []
    by_service: Dict[Tuple[str, str], List[Workload]] = OrderedDict()
    for workload in workloads:
        by_service.setdefault((workload.namespace, workload.service), []).append(workload)
    for (namespace, service), members in by_service.items():
        seen: Dict[str, str] = {}
        for workload in sorted(members, key=lambda w: w.host):
            if workload.address is None:
                continue
            if workload.address in seen:
                errors.append(v._error('host %s: fleetmesh_address' % workload.host, workload.address,
                                       'is also the address of host %s in service %s/%s'
                                       % (seen[workload.address], namespace, service),
                                       'a distinct address for each host of a service'))
            else:
                seen[workload.address] = workload.host
        accounts = sorted({w.service_account for w in members})
        if len(accounts) > 1:
            errors.append('fleetmesh_service_account: service %s/%s has hosts with different service accounts (%s); '
                          'allowed: one service account per service' % (namespace, service, ', '.join(accounts)))
    return errors
