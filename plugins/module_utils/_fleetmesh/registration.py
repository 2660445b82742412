# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The registration model: inventory desired set -> Kubernetes objects. Pure functions, no I/O.

``normalize(params)`` checks every input (all errors at once, before any API call) and returns a
``Config``. ``plan(config, live)`` turns it, with the live objects this registration set owns, into
a ``Plan``: the objects to apply and the owned objects to delete.

Shapes (``Config.shapes``):

* ``workloadentry``: an Istio WorkloadEntry per VM, a Service selecting them (by the ``app`` label),
  and with ``workload_group`` a WorkloadGroup per service;
* ``serviceentry``: an Istio ServiceEntry per service, MESH_INTERNAL, resolution STATIC, VMs as endpoints;
* ``endpointslice``: a selector-less Service plus EndpointSlices (at most ``max_endpoints_per_slice``
  endpoints each, one address family per slice), optionally legacy Endpoints;
* ``httpproxy``: Contour HTTPProxies routing a host and path prefixes to VM and Kubernetes Services.

Every object carries the ownership labels (``app.kubernetes.io/managed-by: fleetmesh.envoy`` and
``fleetmesh.envoy/registration: <set>``); per-service and per-host objects also carry
``fleetmesh.envoy/service``. Which host an entry belongs to is recorded in annotations
(``fleetmesh.envoy/host`` on WorkloadEntries, ``fleetmesh.envoy/hosts`` = JSON host -> address on
ServiceEntries, EndpointSlices and Endpoints), so that a partial run (``prune=false``, or
``state=absent``) can replace or remove exactly the given hosts' entries and keep every other host's.

How to reach a host and which Envoy it runs (an endpoint's ``host_info``: ``ansible_host``,
``ansible_port``, ``ansible_user``, ``envoy_version``, never secrets) is recorded in the annotation
``fleetmesh.envoy/host-info``: one JSON object on a WorkloadEntry, a JSON object of them by host on
ServiceEntries and EndpointSlices. The ``fleetmesh.envoy.workloads`` inventory reads it back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import validation as v
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.model import host_label, workload_entry_name

FIELD_MANAGER = 'fleetmesh.envoy'
MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by'
MANAGED_BY = 'fleetmesh.envoy'
SET_LABEL = 'fleetmesh.envoy/registration'
SERVICE_LABEL = 'fleetmesh.envoy/service'
HOST_ANNOTATION = 'fleetmesh.envoy/host'
HOSTS_ANNOTATION = 'fleetmesh.envoy/hosts'
HOST_INFO_ANNOTATION = 'fleetmesh.envoy/host-info'
# Kubernetes refuses an object whose annotations total more than 256 KiB; host-info is left off an
# aggregate object before that, keeping room for annotations of other managers.
HOST_INFO_ANNOTATION_BUDGET = 192 * 1024
SLICE_SERVICE_LABEL = 'kubernetes.io/service-name'
SLICE_MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by'
SKIP_MIRROR_LABEL = 'endpointslice.kubernetes.io/skip-mirror'

SHAPES = ('workloadentry', 'serviceentry', 'endpointslice', 'httpproxy')
STATES = ('present', 'absent')
SE_MAX_ENDPOINTS = 4096        # ServiceEntry.spec.endpoints maxItems in Istio's CRD
SLICE_MAX_ENDPOINTS = 1000     # EndpointSlice.endpoints maxItems

# kind -> (group, preferred versions, plural). Istio kinds use the version discovery finds.
KINDS = OrderedDict([
    ('Service', ('', ('v1',), 'services')),
    ('Endpoints', ('', ('v1',), 'endpoints')),
    ('EndpointSlice', ('discovery.k8s.io', ('v1',), 'endpointslices')),
    ('WorkloadGroup', ('networking.istio.io', ('v1', 'v1beta1'), 'workloadgroups')),
    ('WorkloadEntry', ('networking.istio.io', ('v1', 'v1beta1'), 'workloadentries')),
    ('ServiceEntry', ('networking.istio.io', ('v1', 'v1beta1'), 'serviceentries')),
    ('HTTPProxy', ('projectcontour.io', ('v1',), 'httpproxies')),
])
SHAPE_KINDS = {
    'workloadentry': ('Service', 'WorkloadEntry'),
    'serviceentry': ('ServiceEntry',),
    'endpointslice': ('Service', 'EndpointSlice'),
    'httpproxy': ('HTTPProxy',),
}
# Kinds built per service (deleted with the service's last host in a partial run).
PER_SERVICE_KINDS = ('Service', 'WorkloadGroup', 'ServiceEntry', 'EndpointSlice', 'Endpoints')

# Inventory model variable of each endpoint field, for messages.
MODEL_VARS = {
    'host': 'inventory_hostname',
    'address': 'fleetmesh_address',
    'service': 'fleetmesh_service',
    'namespace': 'fleetmesh_namespace',
    'ports': 'fleetmesh_ports',
    'labels': 'fleetmesh_labels',
    'weight': 'fleetmesh_weight',
    'locality': 'fleetmesh_locality',
    'network': 'fleetmesh_network',
    'service_account': 'fleetmesh_service_account',
    'healthy': 'mesh_registration_healthy',
    'endpoint_ports': 'mesh_registration_endpoint_ports',
    'auto_register': 'istio_sidecar_auto_register',
    'host_info': 'ansible_host, ansible_port, ansible_user and envoy_version',
}
# The keys of an endpoint's host_info: connection details and the Envoy version, never secrets.
HOST_INFO_KEYS = ('ansible_host', 'ansible_port', 'ansible_user', 'envoy_version')
ALLOWED_CONNECTION_STRING = 'a non-empty string without spaces or control characters, at most 253 characters'
# Kubernetes appProtocol of a Service/EndpointSlice port, from the Istio protocol prefix of its name (Contour reads
# http, kubernetes.io/h2c and https; https makes Contour's Envoy originate TLS to the endpoint).
APP_PROTOCOLS = {'http': 'http', 'http2': 'kubernetes.io/h2c', 'grpc': 'kubernetes.io/h2c', 'https': 'https',
                 'tls': 'https'}
# HTTPProxy definitions (mesh_registration_httpproxies): the keys accepted at each level.
HTTPPROXY_VAR = 'mesh_registration_httpproxies'
HTTPPROXY_KEYS = ('name', 'namespace', 'fqdn', 'ingress_class_name', 'tls_secret_name', 'routes')
ROUTE_KEYS = ('prefix', 'services', 'health_check', 'retry_policy')
RETRY_KEYS = ('count', 'per_try_timeout', 'retry_on')
# Contour's retryOn values (HTTPProxy spec.routes[].retryPolicy.retryOn).
RETRY_ON = ('5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-4xx', 'refused-stream',
            'retriable-status-codes', 'retriable-headers', 'cancelled', 'deadline-exceeded', 'internal',
            'resource-exhausted', 'unavailable')
ROUTE_SERVICE_KEYS = ('name', 'port', 'weight', 'protocol', 'validation')
UPSTREAM_PROTOCOLS = ('h2c', 'h2', 'tls')
VALIDATION_KEYS = ('caSecret', 'subjectName', 'subjectNames')
HEALTH_CHECK_VAR = 'mesh_registration_httpproxy_health_check'
# Contour healthCheckPolicy from these keys (module option httpproxy_health_check, per route health_check).
HEALTH_CHECK_KEYS = OrderedDict([
    ('enabled', None), ('path', 'path'), ('host', 'host'), ('interval_seconds', 'intervalSeconds'),
    ('timeout_seconds', 'timeoutSeconds'), ('unhealthy_threshold', 'unhealthyThresholdCount'),
    ('healthy_threshold', 'healthyThresholdCount'),
])
HEALTH_CHECK_DEFAULTS = OrderedDict([
    ('enabled', True), ('path', '/healthz'), ('host', None), ('interval_seconds', 2), ('timeout_seconds', 1),
    ('unhealthy_threshold', 2), ('healthy_threshold', 1),
])
# Annotation on an HTTPProxy: the VM services of this registration set its routes name (JSON list), so that a
# service whose last host left is recognised as one and left out of the routes on every later run.
VM_SERVICES_ANNOTATION = 'fleetmesh.envoy/vm-services'
ISTIO_PROTOCOLS = {
    'http': 'HTTP', 'http2': 'HTTP2', 'https': 'HTTPS', 'grpc': 'GRPC', 'tcp': 'TCP', 'tls': 'TLS',
    'mongo': 'MONGO', 'redis': 'REDIS', 'mysql': 'MYSQL',
}

Endpoint = namedtuple('Endpoint', ['host', 'address', 'family', 'service', 'namespace', 'ports', 'labels',
                                   'weight', 'locality', 'network', 'service_account', 'healthy', 'host_info',
                                   'endpoint_ports', 'auto_register'])
Endpoint.__new__.__defaults__ = (None, False)
Config = namedtuple('Config', ['endpoints', 'state', 'prune', 'registration', 'shapes', 'workload_group',
                               'max_endpoints_per_slice', 'legacy_endpoints', 'httpproxies', 'cluster_domain',
                               'workload_group_probe'])
Config.__new__.__defaults__ = (None,)
Plan = namedtuple('Plan', ['desired', 'delete', 'prune_all', 'mode', 'notes', 'errors'])
Plan.__new__.__defaults__ = ((), ())


def obj_key(obj: Mapping) -> Tuple[str, str, str]:
    meta = obj.get('metadata') or {}
    return obj.get('kind', ''), meta.get('namespace') or '', meta.get('name', '')


def obj_ref(obj: Mapping) -> str:
    kind, namespace, name = obj_key(obj)
    return '%s %s/%s' % (kind, namespace, name) if namespace else '%s %s' % (kind, name)


def required_kinds(shapes: Iterable[str], legacy_endpoints: bool = False, workload_group: bool = False) -> List[str]:
    kinds = []
    for shape in shapes:
        for kind in SHAPE_KINDS.get(shape, ()):
            if kind not in kinds:
                kinds.append(kind)
    if legacy_endpoints and 'endpointslice' in shapes:
        kinds.append('Endpoints')
    if workload_group and 'workloadentry' in shapes:
        kinds.append('WorkloadGroup')
    return kinds


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

def slice_name(service: str, family: str, index: int) -> str:
    return '%s-%s-%d' % (service, family.lower(), index)


# --------------------------------------------------------------------------------------------
# Validation: every input, all errors at once
# --------------------------------------------------------------------------------------------

def _ep_var(index: int, host: Any, field: str) -> str:
    who = ' of host %s' % host if isinstance(host, str) and host else ''
    return 'endpoints[%d].%s (%s%s)' % (index, field, MODEL_VARS[field], who)


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _normalize_endpoint(index: int, raw: Any, state: str, service_shapes: bool, errors: List[str]) -> Optional[Endpoint]:
    if not isinstance(raw, Mapping):
        errors.append(v._error('endpoints[%d]' % index, raw, 'is not a mapping', 'a mapping with host, address, service, ...'))
        return None
    host = raw.get('host')
    start = len(errors)
    for field in raw:
        if field not in MODEL_VARS:
            errors.append(v._error('endpoints[%d] (host %s)' % (index, host), field, 'is not a known field',
                                   'one of ' + ', '.join(MODEL_VARS)))
    if not isinstance(host, str) or not host.strip():
        errors.append(v._error('endpoints[%d].host (inventory_hostname)' % index, host, 'is not a host name',
                               'a non-empty string naming the inventory host'))
    if state == 'absent':
        # Removal needs the host only; anything else given is checked when present.
        for field, check in (('service', v.check_dns_label), ('namespace', v.check_dns_label)):
            if raw.get(field) is not None:
                errors.extend(check(_ep_var(index, host, field), raw.get(field)))
        if len(errors) > start:
            return None
        return Endpoint(host, None, None, raw.get('service'), raw.get('namespace'), OrderedDict(), {}, None, None,
                        None, None, True, None)

    def need(field: str, check) -> Any:
        value = raw.get(field)
        if value is None or value == '':
            errors.append('%s: is not set; allowed: %s' % (_ep_var(index, host, field), _ALLOWED[field]))
            return None
        found = check(_ep_var(index, host, field), value)
        errors.extend(found)
        return None if found else value

    def maybe(field: str, check) -> Any:
        value = raw.get(field)
        if value is None or value == '':
            return None
        found = check(_ep_var(index, host, field), value)
        errors.extend(found)
        return None if found else value

    address = need('address', v.check_ip_address)
    service = need('service', v.check_dns1035_label if service_shapes else v.check_dns_label)
    namespace = need('namespace', v.check_dns_label)
    ports = need('ports', v.check_istio_ports)
    labels = maybe('labels', v.check_labels)
    weight = maybe('weight', v.check_weight)
    locality = maybe('locality', v.check_locality)
    network = maybe('network', v.check_label_value)
    service_account = maybe('service_account', v.check_dns_subdomain)
    healthy = raw.get('healthy', True)
    if healthy is None:
        healthy = True
    errors.extend(v.check_bool(_ep_var(index, host, 'healthy'), healthy))
    auto_register = raw.get('auto_register', False)
    if auto_register is None:
        auto_register = False
    errors.extend(v.check_bool(_ep_var(index, host, 'auto_register'), auto_register))
    host_info = _normalize_host_info(index, host, raw.get('host_info'), errors)
    endpoint_ports = _normalize_endpoint_ports(index, host, raw.get('endpoint_ports'), ports, errors)
    if len(errors) > start:
        return None
    parsed = ipaddress.ip_address(address)
    port_map = OrderedDict(sorted(((str(name), int(_as_int(port))) for name, port in ports.items()),
                                  key=lambda item: (item[1], item[0])))
    # The port each service port reaches on the VM: the given one, else the app port itself.
    target_map = OrderedDict((name, (endpoint_ports or {}).get(name, port)) for name, port in port_map.items())
    return Endpoint(host=host, address=str(parsed), family='IPv%d' % parsed.version, service=service,
                    namespace=namespace, ports=port_map,
                    labels=OrderedDict(sorted((str(k), str(val)) for k, val in (labels or {}).items())),
                    weight=_as_int(weight) if weight is not None else None, locality=locality,
                    network=network, service_account=service_account, healthy=healthy, host_info=host_info,
                    endpoint_ports=target_map, auto_register=auto_register is True)


def _normalize_endpoint_ports(index: int, host: Any, raw: Any, ports: Any, errors: List[str]) -> Optional[Dict[str, int]]:
    """Port name -> the port that answers on the VM for it (the Envoy listener in front of the app)."""
    if raw is None or raw == {} or raw == '':
        return None
    var = _ep_var(index, host, 'endpoint_ports')
    names = list(ports) if isinstance(ports, Mapping) else []
    allowed = ('a mapping of port names of fleetmesh_ports (%s) to the port that answers on the VM, e.g. the Envoy '
               'listener {http: 10000}' % (', '.join(str(n) for n in names) or '-'))
    if not isinstance(raw, Mapping):
        errors.append(v._error(var, raw, 'is not a mapping', allowed))
        return None
    out = {}
    for name, port in raw.items():
        if names and name not in names:
            errors.append(v._error('%s.%s' % (var, name), port, 'names no port of fleetmesh_ports', allowed))
            continue
        found = v.check_port('%s.%s' % (var, name), port)
        errors.extend(found)
        if not found:
            out[str(name)] = _as_int(port)
    return out


def _check_connection_string(var: str, value: Any) -> List[str]:
    if isinstance(value, str) and 0 < len(value) <= 253 and not re.search(r'[\s\x00-\x1f\x7f]', value):
        return []
    return [v._error(var, value, 'is not allowed', ALLOWED_CONNECTION_STRING)]


def _normalize_host_info(index: int, host: Any, raw: Any, errors: List[str]) -> Optional['OrderedDict[str, Any]']:
    """An endpoint's host_info: the keys that are set, checked, ports as integers; None when empty."""
    if raw is None or raw == {}:
        return None
    who = ' of host %s' % host if isinstance(host, str) and host else ''
    if not isinstance(raw, Mapping):
        errors.append(v._error(_ep_var(index, host, 'host_info'), raw, 'is not a mapping',
                               'a mapping with ' + ', '.join(HOST_INFO_KEYS)))
        return None
    start = len(errors)
    for key in raw:
        if key not in HOST_INFO_KEYS:
            # Shown by name only: a misplaced password or key must not end up in a message.
            errors.append('endpoints[%d].host_info%s: %s is not a known field; allowed: one of %s (connection '
                          'details and the Envoy version, never passwords, keys or tokens)'
                          % (index, who, v.show(str(key)), ', '.join(HOST_INFO_KEYS)))
    checks = (('ansible_host', _check_connection_string), ('ansible_port', v.check_port),
              ('ansible_user', _check_connection_string), ('envoy_version', v.check_semver))
    out = OrderedDict()  # type: OrderedDict[str, Any]
    for key, check in checks:
        value = raw.get(key)
        if value is None or value == '':
            continue
        found = check('endpoints[%d].host_info.%s (%s%s)' % (index, key, key, who), value)
        errors.extend(found)
        if not found:
            out[key] = _as_int(value) if key == 'ansible_port' else value
    if len(errors) > start or not out:
        return None
    return out


_ALLOWED = {
    'address': v.ALLOWED_IP + ' (set fleetmesh_address, or gather facts so that ansible_default_ipv4 is known)',
    'service': v.ALLOWED_DNS_LABEL,
    'namespace': v.ALLOWED_DNS_LABEL,
    'ports': v.ALLOWED_ISTIO_PORTS,
}


def _check_services(endpoints: List[Endpoint], shapes: List[str], workload_group: bool,
                    max_per_slice: int, errors: List[str]) -> None:
    by_service = OrderedDict()  # type: Dict[Tuple[str, str], List[Endpoint]]
    for ep in endpoints:
        by_service.setdefault((ep.namespace, ep.service), []).append(ep)
    for (namespace, service), eps in by_service.items():
        what = 'service %s/%s' % (namespace, service)
        errors.extend(v.check_unique_addresses('fleetmesh_address (hosts of %s)' % what,
                                               OrderedDict((ep.host, ep.address) for ep in eps)))
        port_sets = OrderedDict()  # type: Dict[str, List[str]]
        for ep in eps:
            port_sets.setdefault(json.dumps(ep.ports), []).append(ep.host)
        if len(port_sets) > 1:
            errors.append('fleetmesh_ports (hosts of %s): %s differ between hosts; allowed: the same ports for every '
                          'host of a service' % (what, '; '.join('%s for %s' % (ports, ', '.join(hosts))
                                                                 for ports, hosts in port_sets.items())))
        target_sets = OrderedDict()  # type: Dict[str, List[str]]
        for ep in eps:
            target_sets.setdefault(json.dumps(ep.endpoint_ports), []).append(ep.host)
        if len(port_sets) == 1 and len(target_sets) > 1:
            errors.append('mesh_registration_endpoint_ports (hosts of %s): the ports that answer on the VMs, %s, differ '
                          'between hosts; allowed: the same endpoint ports for every host of a service (run the same '
                          'Envoy listener, or the Istio sidecar, on all of them)'
                          % (what, '; '.join('%s for %s' % (ports, ', '.join(hosts))
                                             for ports, hosts in target_sets.items())))
        if 'workloadentry' in shapes:
            apps = OrderedDict()  # type: Dict[str, List[str]]
            for ep in eps:
                apps.setdefault(ep.labels.get('app', service), []).append(ep.host)
            if len(apps) > 1:
                errors.append("fleetmesh_labels.app (hosts of %s): %s differ between hosts; allowed: one 'app' label "
                              "per service (the Service selects its WorkloadEntries by it)"
                              % (what, '; '.join('%s for %s' % (v.show(app), ', '.join(hosts))
                                                 for app, hosts in apps.items())))
        if 'workloadentry' in shapes and workload_group:
            accounts = OrderedDict()  # type: Dict[str, List[str]]
            for ep in eps:
                accounts.setdefault(ep.service_account or '', []).append(ep.host)
            if len(accounts) > 1:
                errors.append('fleetmesh_service_account (hosts of %s): %s differ between hosts; allowed: one service '
                              'account per service when a WorkloadGroup is built'
                              % (what, '; '.join('%s for %s' % (v.show(sa), ', '.join(hosts))
                                                 for sa, hosts in accounts.items())))
        if 'serviceentry' in shapes and len(eps) > SE_MAX_ENDPOINTS:
            errors.append('fleetmesh_service (%s): %d hosts; allowed: at most %d endpoints in one ServiceEntry '
                          '(use the endpointslice shape for larger services)' % (what, len(eps), SE_MAX_ENDPOINTS))


def _unknown_keys(var: str, raw: Mapping, allowed: Tuple[str, ...], errors: List[str]) -> None:
    for key in raw:
        if key not in allowed:
            errors.append('%s (%s): key %s is not known; allowed keys: %s'
                          % (var, HTTPPROXY_VAR, v.show(str(key)), ', '.join(allowed)))


def _positive_int(value: Any, low: int, high: int) -> Optional[int]:
    number = _as_int(value)
    return number if number is not None and low <= number <= high else None


def check_health_check(var: str, raw: Any, base: Optional[Mapping], errors: List[str]) -> Optional['OrderedDict[str, Any]']:
    """A health check setting (HEALTH_CHECK_KEYS) over ``base``; None when disabled. ``raw`` may be a bool."""
    out = OrderedDict(base or HEALTH_CHECK_DEFAULTS)  # type: OrderedDict[str, Any]
    if raw is None:
        return out if out.get('enabled') else None
    if isinstance(raw, bool):
        out['enabled'] = raw
        return out if raw else None
    if not isinstance(raw, Mapping):
        errors.append(v._error(var, raw, 'is not a mapping or a boolean',
                               'true, false, or a mapping with ' + ', '.join(HEALTH_CHECK_KEYS)))
        return None
    for key in raw:
        if key not in HEALTH_CHECK_KEYS:
            errors.append('%s: key %s is not known; allowed keys: %s' % (var, v.show(str(key)), ', '.join(HEALTH_CHECK_KEYS)))
    for key, value in raw.items():
        if key not in HEALTH_CHECK_KEYS or value is None:
            continue
        kvar = '%s.%s' % (var, key)
        if key == 'enabled':
            errors.extend(v.check_bool(kvar, value))
            out[key] = value
        elif key == 'path':
            if not isinstance(value, str) or not value.startswith('/') or re.search(r'[\s\x00-\x1f\x7f]', value):
                errors.append(v._error(kvar, value, 'is not a path', "a path starting with '/', without spaces"))
            out[key] = value
        elif key == 'host':
            errors.extend(v.check_dns_subdomain(kvar, value))
            out[key] = value
        else:
            low = 0 if key == 'healthy_threshold' else 1
            number = _positive_int(value, low, 3600)
            if number is None:
                errors.append(v._error(kvar, value, 'is not allowed', 'integer %d-3600' % low))
            out[key] = number
    if out.get('enabled') and out.get('timeout_seconds') and out.get('interval_seconds') and \
            out['timeout_seconds'] > out['interval_seconds']:
        errors.append('%s: timeout_seconds %s is longer than interval_seconds %s; allowed: timeout_seconds <= '
                      'interval_seconds' % (var, out['timeout_seconds'], out['interval_seconds']))
    return out if out.get('enabled') else None


def _check_retry(var: str, raw: Any, errors: List[str]) -> Optional['OrderedDict[str, Any]']:
    """A route's retry_policy -> Contour's retryPolicy (count, perTryTimeout, retryOn)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors.append(v._error(var, raw, 'is not a mapping', 'a mapping with ' + ', '.join(RETRY_KEYS)))
        return None
    start = len(errors)
    for key in raw:
        if key not in RETRY_KEYS:
            errors.append('%s (%s): key %s is not known; allowed keys: %s'
                          % (var, HTTPPROXY_VAR, v.show(str(key)), ', '.join(RETRY_KEYS)))
    out = OrderedDict()  # type: OrderedDict[str, Any]
    count = raw.get('count', 1)
    if _positive_int(count, 1, 10) is None:
        errors.append(v._error(var + '.count', count, 'is not allowed', 'integer 1-10'))
    out['count'] = _as_int(count)
    timeout = raw.get('per_try_timeout')
    if timeout is not None:
        if not isinstance(timeout, str) or not re.match(r'^(\d+(\.\d+)?(ms|s|m|h))+$', timeout):
            errors.append(v._error(var + '.per_try_timeout', timeout, 'is not a duration', "e.g. '500ms', '2s'"))
        out['perTryTimeout'] = timeout
    retry_on = raw.get('retry_on')
    if retry_on is not None:
        if not isinstance(retry_on, list) or not retry_on or any(r not in RETRY_ON for r in retry_on):
            errors.append(v._error(var + '.retry_on', retry_on, 'is not allowed',
                                   'a non-empty list of ' + ', '.join(RETRY_ON)))
        out['retryOn'] = list(retry_on) if isinstance(retry_on, list) else retry_on
    return out if len(errors) == start else None


def _check_route_service(svar: str, svc: Any, namespace: Any, service_ports: Mapping, has_service_objects: bool,
                         errors: List[str]) -> Optional['OrderedDict[str, Any]']:
    if not isinstance(svc, Mapping):
        errors.append(v._error(svar, svc, 'is not a mapping', 'a mapping with ' + ', '.join(ROUTE_SERVICE_KEYS)))
        return None
    start = len(errors)
    _unknown_keys(svar, svc, ROUTE_SERVICE_KEYS, errors)
    sname = svc.get('name')
    name_errors = v.check_dns1035_label(svar + '.name', sname)
    errors.extend(name_errors)
    port = svc.get('port')
    vm_ports = service_ports.get((namespace, sname)) if not name_errors else None
    if vm_ports is not None and not has_service_objects:
        errors.append(v._error(svar + '.name', sname, 'is a VM service, but no Kubernetes Service is built '
                               'for it', "shapes including 'endpointslice' or 'workloadentry'"))
    port_errors = []  # type: List[str]
    if port is None or port == '':
        if vm_ports is not None and len(vm_ports) == 1:
            port = list(vm_ports.values())[0]
        elif vm_ports is not None or name_errors:
            errors.append('%s.port: is not set; allowed: %s (may be left out only for a VM service with '
                          'one port)' % (svar, v.ALLOWED_PORT))
            return None
        else:
            # Not a VM service of this run: maybe one whose last host left (plan() knows); else an error there.
            port = None
    else:
        port_errors = v.check_port(svar + '.port', port)
    errors.extend(port_errors)
    if not port_errors and vm_ports is not None and _as_int(port) not in vm_ports.values():
        errors.append(v._error(svar + '.port', port, 'is not a port of VM service %s/%s' % (namespace, sname),
                               'one of ' + ', '.join(str(p) for p in vm_ports.values())))
    weight = svc.get('weight')
    if weight is not None and _positive_int(weight, 0, 4294967295) is None:
        errors.append(v._error(svar + '.weight', weight, 'is not a valid route weight', 'integer 0-4294967295'))
    protocol = svc.get('protocol')
    if protocol is not None and protocol not in UPSTREAM_PROTOCOLS:
        errors.append(v._error(svar + '.protocol', protocol, 'is not an upstream protocol of Contour',
                               'one of %s (HTTP/2 cleartext, HTTP/2 over TLS, TLS); leave it out for HTTP/1.1 '
                               "or to use the Service port's appProtocol" % ', '.join(UPSTREAM_PROTOCOLS)))
    validation = svc.get('validation')
    if validation is not None:
        vvar = svar + '.validation'
        if not isinstance(validation, Mapping):
            errors.append(v._error(vvar, validation, 'is not a mapping', 'a mapping with caSecret and subjectName'))
        else:
            for key in validation:
                if key not in VALIDATION_KEYS:
                    errors.append('%s (%s): key %s is not known; allowed keys: %s'
                                  % (vvar, HTTPPROXY_VAR, v.show(str(key)), ', '.join(VALIDATION_KEYS)))
            ca = validation.get('caSecret')
            if not isinstance(ca, str) or not ca or v.check_dns_subdomain(vvar, ca.split('/')[-1]) or \
                    ca.count('/') > 1:
                errors.append(v._error(vvar + '.caSecret', ca, 'is not a Secret name',
                                       'the name (or namespace/name) of a Secret with the CA certificate in ca.crt'))
            names = ([validation['subjectName']] if validation.get('subjectName') is not None else []) + \
                list(validation.get('subjectNames') or [])
            if not names or not all(isinstance(n, str) and n and not re.search(r'[\s\x00-\x1f]', n) for n in names):
                errors.append(v._error(vvar + '.subjectName', validation.get('subjectName'), 'is not set or not valid',
                                       "the name the endpoint's certificate must carry (DNS or URI SAN, e.g. "
                                       'spiffe://cluster.local/ns/NS/sa/SA)'))
        if protocol not in ('tls', 'h2'):
            errors.append(v._error(svar + '.validation', validation, 'is given without a TLS protocol',
                                   "protocol 'tls' or 'h2' with validation"))
    if len(errors) > start:
        return None
    entry = OrderedDict([('name', sname), ('port', _as_int(port) if port is not None else None)])  # type: OrderedDict[str, Any]
    if weight is not None:
        entry['weight'] = _as_int(weight)
    if protocol is not None:
        entry['protocol'] = protocol
    if validation is not None:
        out_validation = OrderedDict([('caSecret', validation['caSecret'])])
        if validation.get('subjectName') is not None:
            out_validation['subjectName'] = validation['subjectName']
        if validation.get('subjectNames'):
            out_validation['subjectNames'] = list(validation['subjectNames'])
        entry['validation'] = out_validation
    return entry


def _check_httpproxies(raw_list: Any, service_ports: Dict[Tuple[str, str], 'OrderedDict[str, int]'],
                       shapes: List[str], health_check: Optional[Mapping], errors: List[str]) -> List[Dict[str, Any]]:
    if raw_list is None:
        raw_list = []
    if not isinstance(raw_list, list):
        errors.append(v._error('httpproxies (%s)' % HTTPPROXY_VAR, raw_list, 'is not a list',
                               'a list of HTTPProxy definitions'))
        return []
    proxies = []
    has_service_objects = 'endpointslice' in shapes or 'workloadentry' in shapes
    seen = set()  # type: Set[Tuple[str, str]]
    for i, raw in enumerate(raw_list):
        var = 'httpproxies[%d]' % i
        if not isinstance(raw, Mapping):
            errors.append(v._error(var, raw, 'is not a mapping', 'a mapping with name, namespace, fqdn and routes'))
            continue
        start = len(errors)
        _unknown_keys(var, raw, HTTPPROXY_KEYS, errors)
        name, namespace, fqdn = raw.get('name'), raw.get('namespace'), raw.get('fqdn')
        errors.extend(v.check_dns_subdomain(var + '.name', name))
        errors.extend(v.check_dns_label(var + '.namespace', namespace))
        errors.extend(v.check_dns_subdomain(var + '.fqdn', fqdn))
        for opt in ('ingress_class_name', 'tls_secret_name'):
            if raw.get(opt) is not None:
                errors.extend(v.check_dns_subdomain('%s.%s' % (var, opt), raw.get(opt)))
        if (namespace, name) in seen:
            errors.append(v._error(var + '.name', name, 'is defined twice in namespace %s' % namespace,
                                   'one HTTPProxy definition per name and namespace'))
        seen.add((namespace, name))
        routes = raw.get('routes')
        if not isinstance(routes, list) or not routes:
            errors.append(v._error(var + '.routes', routes, 'is not a non-empty list', 'a list of routes'))
            continue
        out_routes = []
        for j, route in enumerate(routes):
            rvar = '%s.routes[%d]' % (var, j)
            if not isinstance(route, Mapping):
                errors.append(v._error(rvar, route, 'is not a mapping', 'a mapping with ' + ', '.join(ROUTE_KEYS)))
                continue
            _unknown_keys(rvar, route, ROUTE_KEYS, errors)
            prefix = route.get('prefix') or '/'
            if not isinstance(prefix, str) or not prefix.startswith('/') or ' ' in prefix:
                errors.append(v._error(rvar + '.prefix', prefix, 'is not a path prefix', "a path starting with '/'"))
            check = check_health_check(rvar + '.health_check', route.get('health_check'), health_check, errors)
            retry = _check_retry(rvar + '.retry_policy', route.get('retry_policy'), errors)
            services = route.get('services')
            if not isinstance(services, list) or not services:
                errors.append(v._error(rvar + '.services', services, 'is not a non-empty list',
                                       'a list of services (%s)' % ', '.join(ROUTE_SERVICE_KEYS)))
                continue
            out_services = []
            for k, svc in enumerate(services):
                entry = _check_route_service('%s.services[%d]' % (rvar, k), svc, namespace, service_ports,
                                             has_service_objects, errors)
                if entry is not None:
                    out_services.append(entry)
            out_routes.append(OrderedDict([('prefix', prefix), ('services', out_services), ('health_check', check),
                                           ('retry_policy', retry)]))
        if len(errors) == start:
            proxies.append(OrderedDict([('name', name), ('namespace', namespace), ('fqdn', fqdn),
                                        ('ingress_class_name', raw.get('ingress_class_name')),
                                        ('tls_secret_name', raw.get('tls_secret_name')),
                                        ('routes', out_routes)]))
    return proxies


def normalize(params: Mapping) -> Tuple[Optional[Config], List[str]]:
    """Check every input of the module and return (Config, []) or (None, errors)."""
    errors = []  # type: List[str]
    state = params.get('state') or 'present'
    errors.extend(v.check_choice('state', state, STATES))
    shapes = params.get('shapes')
    if shapes is None:
        shapes = ['workloadentry']
    if not isinstance(shapes, list) or not shapes:
        errors.append(v._error('shapes', shapes, 'is not a non-empty list', 'a list of ' + ', '.join(SHAPES)))
        shapes = []
    for i, shape in enumerate(shapes):
        errors.extend(v.check_choice('shapes[%d]' % i, shape, SHAPES))
    shapes = [s for s in SHAPES if s in shapes]
    if 'workloadentry' in shapes and 'endpointslice' in shapes:
        errors.append("shapes: %s combines 'workloadentry' and 'endpointslice', which would both own the Service of "
                      "each VM service (one with a selector, one without); allowed: one of them" % v.show(shapes))
    registration = params.get('registration') or 'default'
    errors.extend(v.check_dns_label('registration (the registration set, mesh_registration_set)', registration))
    cluster_domain = params.get('cluster_domain') or 'cluster.local'
    errors.extend(v.check_dns_subdomain('cluster_domain', cluster_domain))
    max_per_slice = params.get('max_endpoints_per_slice')
    if max_per_slice is None:
        max_per_slice = 100
    number = _as_int(max_per_slice)
    if number is None or not 1 <= number <= SLICE_MAX_ENDPOINTS:
        errors.append(v._error('max_endpoints_per_slice', max_per_slice, 'is not allowed',
                               'integer 1-%d' % SLICE_MAX_ENDPOINTS))
    else:
        max_per_slice = number
    raw_endpoints = params.get('endpoints')
    if params.get('endpoints_json') is not None:
        if raw_endpoints:
            errors.append('endpoints_json: given together with endpoints; allowed: one of them')
        try:
            raw_endpoints = json.loads(params['endpoints_json'])
        except ValueError as exc:
            errors.append('endpoints_json: is not valid JSON (%s); allowed: a JSON list of endpoint mappings' % exc)
            raw_endpoints = []
    if raw_endpoints is None:
        raw_endpoints = []
    if not isinstance(raw_endpoints, list):
        errors.append(v._error('endpoints', raw_endpoints, 'is not a list', 'a list of endpoint mappings'))
        raw_endpoints = []
    service_shapes = 'workloadentry' in shapes or 'endpointslice' in shapes
    endpoints = []
    hosts = OrderedDict()  # type: Dict[str, int]
    for index, raw in enumerate(raw_endpoints):
        ep = _normalize_endpoint(index, raw, state, service_shapes, errors)
        if ep is None:
            continue
        if ep.host in hosts:
            errors.append(v._error('endpoints[%d].host (inventory_hostname)' % index, ep.host,
                                   'is listed twice (also endpoints[%d])' % hosts[ep.host], 'each host once'))
            continue
        hosts[ep.host] = index
        endpoints.append(ep)
    workload_group = bool(params.get('workload_group'))
    probe = params.get('workload_group_probe')
    if probe not in (None, {}):
        errors.extend(v.check_readiness_probe('workload_group_probe (mesh_registration_workload_group_probe)', probe))
        if not (workload_group and 'workloadentry' in shapes):
            errors.append("workload_group_probe (mesh_registration_workload_group_probe): given but no WorkloadGroup "
                          "is built (workload_group %s, shapes %s); allowed: workload_group true "
                          "(mesh_registration_workload_group) with the 'workloadentry' shape, or no probe"
                          % (v.show(workload_group), v.show(shapes)))
    if state == 'present':
        for ep in endpoints:
            if ep.auto_register and not (workload_group and 'workloadentry' in shapes):
                errors.append("endpoints[%d].auto_register (istio_sidecar_auto_register of host %s): true, but no "
                              "WorkloadGroup is built for istiod to register the VM from (workload_group %s, shapes "
                              "%s); allowed: workload_group true (mesh_registration_workload_group) with the "
                              "'workloadentry' shape, or auto_register false"
                              % (hosts[ep.host], ep.host, v.show(workload_group), v.show(shapes)))
        _check_services(endpoints, shapes, workload_group, max_per_slice, errors)
    service_ports = OrderedDict(((ep.namespace, ep.service), ep.ports) for ep in endpoints)
    health_check = check_health_check('httpproxy_health_check (%s)' % HEALTH_CHECK_VAR,
                                      params.get('httpproxy_health_check'), HEALTH_CHECK_DEFAULTS, errors)
    httpproxies = _check_httpproxies(params.get('httpproxies'), service_ports, shapes,
                                     health_check or OrderedDict(HEALTH_CHECK_DEFAULTS, enabled=False), errors)
    if 'httpproxy' in shapes and not params.get('httpproxies') and state == 'present':
        errors.append("httpproxies: is not set; allowed: a list of HTTPProxy definitions (the 'httpproxy' shape "
                      "needs at least one)")
    if params.get('httpproxies') and 'httpproxy' not in shapes:
        errors.append("httpproxies: %d definition(s) given but 'httpproxy' is not in shapes %s; allowed: add "
                      "'httpproxy' to shapes" % (len(params.get('httpproxies')), v.show(shapes)))
    if errors:
        return None, errors
    return Config(endpoints=endpoints, state=state, prune=bool(params.get('prune', True)), registration=registration,
                  shapes=shapes, workload_group=workload_group, max_endpoints_per_slice=max_per_slice,
                  legacy_endpoints=bool(params.get('legacy_endpoints')), httpproxies=httpproxies,
                  cluster_domain=cluster_domain, workload_group_probe=probe or None), []


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _hosts_json(hosts: Mapping) -> str:
    return json.dumps(OrderedDict(sorted(hosts.items())), separators=(',', ':'))


def _info_json(info: Mapping) -> str:
    return json.dumps(info, sort_keys=True, separators=(',', ':'))


def _aggregate_annotations(hosts: Mapping, infos: Optional[Mapping]) -> 'OrderedDict[str, str]':
    """fleetmesh.envoy/hosts, and fleetmesh.envoy/host-info for the hosts of the object that have it."""
    annotations = OrderedDict([(HOSTS_ANNOTATION, _hosts_json(hosts))])
    recorded = dict((host, (infos or {})[host]) for host in hosts if (infos or {}).get(host))
    if recorded:
        text = _info_json(recorded)
        size = sum(len(k) + len(val) for k, val in annotations.items()) + len(HOST_INFO_ANNOTATION) + len(text)
        if size <= HOST_INFO_ANNOTATION_BUDGET:
            annotations[HOST_INFO_ANNOTATION] = text
    return annotations


def host_infos_of(obj: Mapping) -> Dict[str, Dict[str, Any]]:
    """host -> host_info recorded on an object (empty when the annotation is missing or broken)."""
    annotations = (obj.get('metadata') or {}).get('annotations') or {}
    try:
        infos = json.loads(annotations.get(HOST_INFO_ANNOTATION) or '{}')
    except ValueError:
        return {}
    if not isinstance(infos, Mapping):
        return {}
    if obj.get('kind') == 'WorkloadEntry':
        host = annotations.get(HOST_ANNOTATION)
        return {host: dict(infos)} if host and infos else {}
    return dict((str(h), dict(i)) for h, i in infos.items() if isinstance(i, Mapping) and i)


def _infos(eps: Iterable[Endpoint]) -> Dict[str, Mapping]:
    return dict((ep.host, ep.host_info) for ep in eps if ep.host_info)


def _meta(cfg: Config, name: str, namespace: str, service: Optional[str] = None, labels: Optional[Mapping] = None,
          annotations: Optional[Mapping] = None) -> Dict[str, Any]:
    all_labels = OrderedDict([(MANAGED_BY_LABEL, MANAGED_BY), (SET_LABEL, cfg.registration)])
    if service:
        all_labels[SERVICE_LABEL] = service
    all_labels.update(labels or {})
    meta = OrderedDict([('name', name), ('namespace', namespace), ('labels', all_labels)])
    if annotations:
        meta['annotations'] = OrderedDict(annotations)
    return meta


def _obj(api_versions: Mapping, kind: str, meta: Mapping, **fields: Any) -> Dict[str, Any]:
    obj = OrderedDict([('apiVersion', api_versions[kind]), ('kind', kind), ('metadata', meta)])
    obj.update(fields)
    return obj


def effective_labels(ep: Endpoint) -> 'OrderedDict[str, str]':
    labels = OrderedDict([('app', ep.service)])
    labels.update(ep.labels)
    return OrderedDict(sorted(labels.items()))


def _workload_spec(ep: Endpoint, with_address: bool = True) -> Dict[str, Any]:
    spec = OrderedDict()  # type: Dict[str, Any]
    if with_address:
        spec['address'] = ep.address
    # Service port name -> the port that answers on the VM (docs/data-path.md).
    spec['ports'] = OrderedDict(ep.endpoint_ports or ep.ports)
    spec['labels'] = effective_labels(ep)
    if ep.network:
        spec['network'] = ep.network
    if ep.locality:
        spec['locality'] = ep.locality
    if ep.weight is not None:
        spec['weight'] = ep.weight
    if ep.service_account:
        spec['serviceAccount'] = ep.service_account
    return spec


def render_workload_entry(cfg: Config, api: Mapping, ep: Endpoint) -> Dict[str, Any]:
    annotations = OrderedDict([(HOST_ANNOTATION, ep.host)])
    if ep.host_info:
        annotations[HOST_INFO_ANNOTATION] = _info_json(ep.host_info)
    meta = _meta(cfg, workload_entry_name(ep.service, ep.host), ep.namespace, ep.service, annotations=annotations)
    return _obj(api, 'WorkloadEntry', meta, spec=_workload_spec(ep))


def render_workload_group(cfg: Config, api: Mapping, eps: List[Endpoint],
                          kept_hosts: Optional[Mapping] = None) -> Dict[str, Any]:
    """The service's WorkloadGroup. Its fleetmesh.envoy/hosts annotation records the hosts istiod registers from it
    (auto_register: no WorkloadEntry of this module records them), so that a partial run counts them."""
    first = eps[0]
    template = _workload_spec(first, with_address=False)
    # Per-host details (locality, weight) stay on the WorkloadEntries; the template keeps what is shared.
    template.pop('locality', None)
    template.pop('weight', None)
    template['labels'] = OrderedDict([('app', effective_labels(first)['app'])])
    spec = OrderedDict([('metadata', OrderedDict([('labels', OrderedDict(template['labels']))])),
                        ('template', template)])
    if cfg.workload_group_probe:
        # What `istioctl x workload entry configure` copies into the VM's mesh config as readinessProbe; the VM's
        # pilot-agent runs it and istiod sets the Healthy condition of the WorkloadEntries it auto-registers.
        spec['probe'] = json.loads(json.dumps(cfg.workload_group_probe))
    auto = OrderedDict(kept_hosts or {})
    auto.update((ep.host, ep.address) for ep in eps if ep.auto_register)
    annotations = OrderedDict([(HOSTS_ANNOTATION, _hosts_json(auto))]) if auto else None
    return _obj(api, 'WorkloadGroup', _meta(cfg, first.service, first.namespace, first.service,
                                            annotations=annotations), spec=spec)


def app_protocol(name: str) -> Optional[str]:
    """The Kubernetes appProtocol of a port, from the Istio protocol prefix of its name (None: no claim)."""
    return APP_PROTOCOLS.get(str(name).split('-', 1)[0])


def _service_ports(ports: Mapping, targets: Optional[Mapping] = None) -> List[Dict[str, Any]]:
    """The Service keeps the app's port names and numbers; targetPort is the port that answers on the VM."""
    out = []
    for name, port in ports.items():
        entry = OrderedDict([('name', name), ('protocol', 'TCP')])  # type: Dict[str, Any]
        if app_protocol(name):
            entry['appProtocol'] = app_protocol(name)
        entry['port'] = port
        entry['targetPort'] = (targets or {}).get(name, port)
        out.append(entry)
    return out


def render_service(cfg: Config, api: Mapping, eps: List[Endpoint], selector: bool) -> Dict[str, Any]:
    first = eps[0]
    spec = OrderedDict([('ports', _service_ports(first.ports, first.endpoint_ports))])  # type: Dict[str, Any]
    if selector:
        spec['selector'] = OrderedDict([('app', effective_labels(first)['app'])])
    return _obj(api, 'Service', _meta(cfg, first.service, first.namespace, first.service), spec=spec)


def se_entry(ep: Endpoint) -> Dict[str, Any]:
    return _workload_spec(ep)


def render_service_entry(cfg: Config, api: Mapping, namespace: str, service: str, base: Mapping,
                         entries: List[Mapping], hosts: Mapping, infos: Optional[Mapping] = None) -> Dict[str, Any]:
    spec = OrderedDict([('hosts', list(base['hosts'])), ('location', 'MESH_INTERNAL'), ('resolution', 'STATIC'),
                        ('ports', [dict(p) for p in base['ports']])])
    if entries:
        spec['endpoints'] = sorted((dict(e) for e in entries), key=_address_sort_key)
    meta = _meta(cfg, service, namespace, service, annotations=_aggregate_annotations(hosts, infos))
    return _obj(api, 'ServiceEntry', meta, spec=spec)


def se_base(cfg: Config, ep: Endpoint) -> Dict[str, Any]:
    return {
        'hosts': ['%s.%s.svc.%s' % (ep.service, ep.namespace, cfg.cluster_domain)],
        'ports': [OrderedDict([('number', port), ('protocol', ISTIO_PROTOCOLS[name.split('-', 1)[0]]), ('name', name)])
                  for name, port in ep.ports.items()],
    }


def slice_entry(ep: Endpoint) -> Dict[str, Any]:
    entry = OrderedDict([('addresses', [ep.address]),
                         ('conditions', OrderedDict([('ready', ep.healthy), ('serving', ep.healthy),
                                                     ('terminating', False)])),
                         ('hostname', host_label(ep.host))])  # type: Dict[str, Any]
    if ep.locality and '/' in ep.locality:
        entry['zone'] = ep.locality.split('/')[1]
    return entry


def _address_sort_key(entry: Mapping) -> Tuple[int, Any]:
    address = entry.get('address') or (entry.get('addresses') or [''])[0]
    try:
        parsed = ipaddress.ip_address(address)
        return parsed.version, parsed.packed
    except ValueError:
        return 9, address.encode('utf-8')


def _slice_family(entry: Mapping) -> str:
    try:
        return 'IPv%d' % ipaddress.ip_address(entry['addresses'][0]).version
    except (ValueError, KeyError, IndexError, TypeError):
        return 'IPv4'


def render_slices(cfg: Config, api: Mapping, namespace: str, service: str, ports: List[Mapping],
                  entries: List[Tuple[str, Mapping]], infos: Optional[Mapping] = None) -> List[Dict[str, Any]]:
    """EndpointSlices of one service: entries are (host, endpoint) pairs, split per family and size."""
    out = []
    by_family = OrderedDict()  # type: Dict[str, List[Tuple[str, Mapping]]]
    for host, entry in sorted(entries, key=lambda item: _address_sort_key(item[1])):
        by_family.setdefault(_slice_family(entry), []).append((host, entry))
    for family, items in by_family.items():
        for index in range(0, len(items), cfg.max_endpoints_per_slice):
            chunk = items[index:index + cfg.max_endpoints_per_slice]
            hosts = OrderedDict((host, entry['addresses'][0]) for host, entry in chunk if host)
            labels = OrderedDict([(SLICE_SERVICE_LABEL, service), (SLICE_MANAGED_BY_LABEL, MANAGED_BY)])
            meta = _meta(cfg, slice_name(service, family, index // cfg.max_endpoints_per_slice), namespace, service,
                         labels=labels, annotations=_aggregate_annotations(hosts, infos))
            out.append(_obj(api, 'EndpointSlice', meta, addressType=family,
                            endpoints=[dict(entry) for _host, entry in chunk],
                            ports=[dict(p) for p in ports]))
    return out


def slice_ports(ports: Mapping, targets: Optional[Mapping] = None) -> List[Dict[str, Any]]:
    """EndpointSlice ports: the Service port's name, the port that answers on the VM."""
    out = []
    for name, port in ports.items():
        entry = OrderedDict([('name', name), ('port', (targets or {}).get(name, port)), ('protocol', 'TCP')])
        if app_protocol(name):
            entry['appProtocol'] = app_protocol(name)
        out.append(entry)
    return out


def render_endpoints(cfg: Config, api: Mapping, namespace: str, service: str, ports: List[Mapping],
                     entries: List[Tuple[str, Mapping]]) -> Dict[str, Any]:
    """Legacy v1 Endpoints mirroring the slices (skip-mirror keeps the mirroring controller off it)."""
    ready, not_ready, hosts = [], [], OrderedDict()
    for host, entry in sorted(entries, key=lambda item: _address_sort_key(item[1])):
        address = OrderedDict([('ip', entry['addresses'][0])])
        if entry.get('hostname'):
            address['hostname'] = entry['hostname']
        (ready if (entry.get('conditions') or {}).get('ready', True) else not_ready).append(address)
        if host:
            hosts[host] = entry['addresses'][0]
    subset = OrderedDict()  # type: Dict[str, Any]
    if ready:
        subset['addresses'] = ready
    if not_ready:
        subset['notReadyAddresses'] = not_ready
    subset['ports'] = [OrderedDict([('name', p['name']), ('port', p['port']), ('protocol', p.get('protocol', 'TCP'))])
                       for p in ports]
    meta = _meta(cfg, service, namespace, service, labels={SKIP_MIRROR_LABEL: 'true'},
                 annotations={HOSTS_ANNOTATION: _hosts_json(hosts)})
    fields = {'subsets': [subset]} if ready or not_ready else {}
    return _obj(api, 'Endpoints', meta, **fields)


def health_check_policy(check: Mapping) -> 'OrderedDict[str, Any]':
    policy = OrderedDict()  # type: OrderedDict[str, Any]
    for key, field in HEALTH_CHECK_KEYS.items():
        if field and check.get(key) is not None:
            policy[field] = check[key]
    return policy


def render_httpproxy(cfg: Config, api: Mapping, proxy: Mapping, vm_services: Iterable[str] = ()) -> Dict[str, Any]:
    virtualhost = OrderedDict([('fqdn', proxy['fqdn'])])  # type: Dict[str, Any]
    if proxy.get('tls_secret_name'):
        virtualhost['tls'] = OrderedDict([('secretName', proxy['tls_secret_name'])])
    spec = OrderedDict([('virtualhost', virtualhost)])  # type: Dict[str, Any]
    if proxy.get('ingress_class_name'):
        spec['ingressClassName'] = proxy['ingress_class_name']
    routes = []
    for route in proxy['routes']:
        out = OrderedDict([('conditions', [OrderedDict([('prefix', route['prefix'])])]),
                           ('services', [OrderedDict(s) for s in route['services']])])
        if route.get('health_check'):
            out['healthCheckPolicy'] = health_check_policy(route['health_check'])
        if route.get('retry_policy'):
            out['retryPolicy'] = OrderedDict(route['retry_policy'])
        routes.append(out)
    spec['routes'] = routes
    vm_services = sorted(set(vm_services))
    annotations = {VM_SERVICES_ANNOTATION: json.dumps(vm_services, separators=(',', ':'))} if vm_services else None
    return _obj(api, 'HTTPProxy', _meta(cfg, proxy['name'], proxy['namespace'], annotations=annotations), spec=spec)


def vm_services_of(obj: Mapping) -> List[str]:
    """The VM services an HTTPProxy of this collection was written with (annotation; [] when missing or broken)."""
    annotations = (obj.get('metadata') or {}).get('annotations') or {}
    try:
        names = json.loads(annotations.get(VM_SERVICES_ANNOTATION) or '[]')
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def _without_gone(obj: Dict[str, Any], gone: Set[str], notes: List[str]) -> Optional[Dict[str, Any]]:
    """The HTTPProxy with every route service in ``gone`` (VM services without hosts) removed; None when no route
    is left. Says what it did in ``notes``."""
    ref = obj_ref(obj)
    spec = obj.get('spec') or {}
    routes = []
    for route in spec.get('routes') or []:
        prefixes = ', '.join(c.get('prefix', '') for c in route.get('conditions') or [] if 'prefix' in c) or '/'
        kept = [svc for svc in route.get('services') or [] if svc.get('name') not in gone]
        removed = [svc.get('name') for svc in route.get('services') or [] if svc.get('name') in gone]
        if removed and kept:
            notes.append('%s: route %s no longer sends to %s (no host left); it keeps %s'
                         % (ref, prefixes, ', '.join(removed), ', '.join(svc.get('name') for svc in kept)))
        elif removed:
            notes.append('%s: route %s removed: its only services %s have no host left'
                         % (ref, prefixes, ', '.join(removed)))
        if kept:
            routes.append(dict(route, services=kept))
    if not routes:
        notes.append('%s: no route left, so the HTTPProxy is deleted (not created)' % ref)
        return None
    before = [len(route.get('services') or []) for route in spec.get('routes') or []]
    if before == [len(route.get('services') or []) for route in routes]:
        return obj
    out = dict(obj, spec=dict(spec, routes=routes))
    return out


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------

def _by_service(endpoints: Iterable[Endpoint]) -> 'OrderedDict[Tuple[str, str], List[Endpoint]]':
    out = OrderedDict()  # type: OrderedDict[Tuple[str, str], List[Endpoint]]
    for ep in sorted(endpoints, key=lambda e: (e.namespace, e.service, e.host)):
        out.setdefault((ep.namespace, ep.service), []).append(ep)
    return out


def _render_service_objects(cfg: Config, api: Mapping, eps: List[Endpoint]) -> List[Dict[str, Any]]:
    """Everything one service's desired endpoints give, in every configured shape."""
    objs = []
    first = eps[0]
    healthy = [ep for ep in eps if ep.healthy]
    if 'workloadentry' in cfg.shapes:
        objs.append(render_service(cfg, api, eps, selector=True))
        if cfg.workload_group:
            objs.append(render_workload_group(cfg, api, eps))
        # A VM that istiod auto-registers from the WorkloadGroup gets its WorkloadEntry from istiod, not from here.
        objs.extend(render_workload_entry(cfg, api, ep) for ep in healthy if not ep.auto_register)
    if 'serviceentry' in cfg.shapes:
        objs.append(render_service_entry(cfg, api, first.namespace, first.service, se_base(cfg, first),
                                         [se_entry(ep) for ep in healthy],
                                         OrderedDict((ep.host, ep.address) for ep in healthy), _infos(healthy)))
    if 'endpointslice' in cfg.shapes:
        objs.append(render_service(cfg, api, eps, selector=False))
        entries = [(ep.host, slice_entry(ep)) for ep in eps]
        ports = slice_ports(first.ports, first.endpoint_ports)
        objs.extend(render_slices(cfg, api, first.namespace, first.service, ports, entries, _infos(eps)))
        if cfg.legacy_endpoints:
            objs.append(render_endpoints(cfg, api, first.namespace, first.service, ports, entries))
    return objs


def build_full(cfg: Config, api: Mapping, with_proxies: bool = True) -> List[Dict[str, Any]]:
    """The whole desired state of the registration set (a complete run)."""
    objs = []
    for eps in _by_service(cfg.endpoints).values():
        objs.extend(_render_service_objects(cfg, api, eps))
    if with_proxies and 'httpproxy' in cfg.shapes:
        objs.extend(render_httpproxy(cfg, api, proxy) for proxy in cfg.httpproxies)
    return objs


def owned(obj: Mapping, registration: str) -> bool:
    labels = (obj.get('metadata') or {}).get('labels') or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SET_LABEL) == registration


def hosts_of(obj: Mapping) -> 'OrderedDict[str, str]':
    """host -> address recorded on an object (empty when the annotation is missing or broken)."""
    annotations = (obj.get('metadata') or {}).get('annotations') or {}
    if obj.get('kind') == 'WorkloadEntry':
        host = annotations.get(HOST_ANNOTATION)
        return OrderedDict([(host, (obj.get('spec') or {}).get('address'))]) if host else OrderedDict()
    try:
        hosts = json.loads(annotations.get(HOSTS_ANNOTATION) or '{}')
    except ValueError:
        return OrderedDict()
    return OrderedDict((str(h), str(a)) for h, a in hosts.items()) if isinstance(hosts, Mapping) else OrderedDict()


def _service_of(obj: Mapping) -> Optional[str]:
    return ((obj.get('metadata') or {}).get('labels') or {}).get(SERVICE_LABEL)


def build_partial(cfg: Config, api: Mapping, live: Iterable[Mapping]) -> Tuple[List[Dict[str, Any]], List[Mapping]]:
    """Upsert (state=present, prune=false) or remove (state=absent) exactly the given hosts.

    Every other host's entries in the live objects are kept as they are. A service whose last host
    goes is deleted with all its objects. Returns (objects to apply, live objects to delete).
    """
    touched = set(ep.host for ep in cfg.endpoints)
    desired_eps = _by_service(cfg.endpoints) if cfg.state == 'present' else OrderedDict()
    live_by_service = OrderedDict()  # type: OrderedDict[Tuple[str, str], List[Mapping]]
    for obj in live:
        service = _service_of(obj)
        if service and obj.get('kind') in PER_SERVICE_KINDS + ('WorkloadEntry',):
            live_by_service.setdefault((obj_key(obj)[1], service), []).append(obj)
    affected = list(desired_eps)
    for key, objs in live_by_service.items():
        if key not in desired_eps and any(touched.intersection(hosts_of(o)) for o in objs):
            affected.append(key)

    apply, delete = [], []
    for key in affected:
        namespace, service = key
        eps = desired_eps.get(key, [])
        objs = live_by_service.get(key, [])
        by_kind = OrderedDict()  # type: Dict[str, List[Mapping]]
        for obj in objs:
            by_kind.setdefault(obj['kind'], []).append(obj)
        remaining = set(ep.host for ep in eps)
        for obj in objs:
            remaining.update(h for h in hosts_of(obj) if h not in touched)
        if not remaining:
            delete.extend(objs)
            continue
        rendered = _render_service_objects(cfg, api, eps) if eps else []
        # The WorkloadGroup keeps the auto-registered hosts that this run does not touch.
        live_groups = by_kind.get('WorkloadGroup', [])
        kept_auto = OrderedDict((h, a) for g in live_groups for h, a in hosts_of(g).items() if h not in touched)
        if any(o['kind'] == 'WorkloadGroup' for o in rendered):
            rendered = [render_workload_group(cfg, api, eps, kept_auto) if o['kind'] == 'WorkloadGroup' else o
                        for o in rendered]
        elif live_groups and touched.intersection(hosts_of(live_groups[0])):
            group = live_groups[0]
            rendered.append(_obj(api, 'WorkloadGroup', _meta(
                cfg, group['metadata']['name'], namespace, service,
                annotations=OrderedDict([(HOSTS_ANNOTATION, _hosts_json(kept_auto))]) if kept_auto else None),
                spec=group.get('spec') or {}))
        rendered_keys = set(obj_key(o) for o in rendered)
        # Aggregates are rebuilt from the kept entries of other hosts plus the given hosts' entries.
        rendered = [o for o in rendered if o['kind'] not in ('ServiceEntry', 'EndpointSlice', 'Endpoints')]
        if 'ServiceEntry' in by_kind or (eps and 'serviceentry' in cfg.shapes):
            kept, hosts = _kept_se_entries(by_kind.get('ServiceEntry', []), touched)
            healthy = [ep for ep in eps if ep.healthy] if 'serviceentry' in cfg.shapes else []
            base = se_base(cfg, eps[0]) if eps and 'serviceentry' in cfg.shapes else \
                _live_se_base(by_kind['ServiceEntry'][0])
            hosts.update((ep.host, ep.address) for ep in healthy)
            infos = _kept_infos(by_kind.get('ServiceEntry', []), touched)
            infos.update(_infos(healthy))
            rendered.append(render_service_entry(cfg, api, namespace, service, base,
                                                 kept + [se_entry(ep) for ep in healthy], hosts, infos))
        if 'EndpointSlice' in by_kind or 'Endpoints' in by_kind or (eps and 'endpointslice' in cfg.shapes):
            kept_entries = _kept_slice_entries(by_kind.get('EndpointSlice', []), touched)
            new = [(ep.host, slice_entry(ep)) for ep in eps] if 'endpointslice' in cfg.shapes else []
            if eps and 'endpointslice' in cfg.shapes:
                ports = slice_ports(eps[0].ports, eps[0].endpoint_ports)
            else:
                source = (by_kind.get('EndpointSlice') or [{}])[0]
                ports = [dict(p) for p in source.get('ports') or []]
            entries = kept_entries + new
            if 'EndpointSlice' in by_kind or (eps and 'endpointslice' in cfg.shapes):
                infos = _kept_infos(by_kind.get('EndpointSlice', []), touched)
                if 'endpointslice' in cfg.shapes:
                    infos.update(_infos(eps))
                rendered.extend(render_slices(cfg, api, namespace, service, ports, entries, infos))
            if 'Endpoints' in by_kind or (eps and 'endpointslice' in cfg.shapes and cfg.legacy_endpoints):
                rendered.append(render_endpoints(cfg, api, namespace, service, ports, entries))
        apply.extend(rendered)
        new_keys = set(obj_key(o) for o in rendered) | rendered_keys
        for obj in objs:
            if obj_key(obj) in new_keys:
                continue
            # Gone: slices no longer needed, and the given hosts' WorkloadEntries under an old name.
            if obj['kind'] == 'EndpointSlice' or (obj['kind'] == 'WorkloadEntry' and touched.intersection(hosts_of(obj))):
                delete.append(obj)
    return apply, delete


def _kept_se_entries(objs: List[Mapping], touched: Set[str]) -> Tuple[List[Dict[str, Any]], 'OrderedDict[str, str]']:
    kept, hosts = [], OrderedDict()
    for obj in objs:
        recorded = hosts_of(obj)
        by_address = dict((a, h) for h, a in recorded.items())
        for entry in (obj.get('spec') or {}).get('endpoints') or []:
            host = by_address.get(entry.get('address'))
            if host in touched:
                continue
            kept.append(dict(entry))
            if host:
                hosts[host] = entry.get('address')
    return kept, hosts


def _kept_infos(objs: List[Mapping], touched: Set[str]) -> Dict[str, Mapping]:
    """host_info recorded on live aggregates for the hosts a partial run does not touch."""
    kept = {}  # type: Dict[str, Mapping]
    for obj in objs:
        for host, info in host_infos_of(obj).items():
            if host not in touched:
                kept[host] = info
    return kept


def _live_se_base(obj: Mapping) -> Dict[str, Any]:
    spec = obj.get('spec') or {}
    return {'hosts': list(spec.get('hosts') or []), 'ports': [dict(p) for p in spec.get('ports') or []]}


def _kept_slice_entries(objs: List[Mapping], touched: Set[str]) -> List[Tuple[str, Dict[str, Any]]]:
    kept = []
    for obj in objs:
        by_address = dict((a, h) for h, a in hosts_of(obj).items())
        for entry in obj.get('endpoints') or []:
            host = by_address.get((entry.get('addresses') or [''])[0], '')
            if host in touched:
                continue
            kept.append((host, dict(entry)))
    return kept


def plan(cfg: Config, api: Mapping, live: List[Mapping]) -> Plan:
    """What to apply and what to delete, given the live objects of this registration set."""
    owned_live = [o for o in live if owned(o, cfg.registration)]
    registered = OrderedDict()  # type: OrderedDict[Tuple[str, str], List[Mapping]]
    for obj in owned_live:
        if _service_of(obj) and obj.get('kind') in PER_SERVICE_KINDS + ('WorkloadEntry',):
            registered.setdefault((obj_key(obj)[1], _service_of(obj)), []).append(obj)
    now = set((ep.namespace, ep.service) for ep in cfg.endpoints) if cfg.state == 'present' else set()
    if cfg.state == 'present' and cfg.prune:
        desired, delete, mode = build_full(cfg, api, with_proxies=False), [], 'full'
        after = now
    else:
        desired, delete = build_partial(cfg, api, owned_live)
        mode = 'absent' if cfg.state == 'absent' else 'merge'
        deleted = set(obj_key(o) for o in delete)
        after = now | set(key for key, objs in registered.items() if any(obj_key(o) not in deleted for o in objs))
    notes = []  # type: List[str]
    proxies, proxy_delete = _plan_httpproxies(cfg, api, owned_live, set(registered), after, notes,
                                              fix_live=mode != 'full')
    desired.extend(proxies)
    if mode != 'full':
        delete.extend(proxy_delete)
    errors = ['%s route %s service %s (%s): port is not set; allowed: %s (may be left out only for a VM service '
              'with one port)' % (obj_ref(obj), ', '.join(c.get('prefix', '') for c in route.get('conditions') or []),
                                  svc.get('name'), HTTPPROXY_VAR, v.ALLOWED_PORT)
              for obj in proxies for route in (obj.get('spec') or {}).get('routes') or []
              for svc in route.get('services') or [] if svc.get('port') is None]
    return Plan(desired=desired, delete=delete, prune_all=mode == 'full', mode=mode, notes=notes, errors=errors)


def _plan_httpproxies(cfg: Config, api: Mapping, owned_live: List[Mapping], registered: Set[Tuple[str, str]],
                      after: Set[Tuple[str, str]], notes: List[str],
                      fix_live: bool = True) -> Tuple[List[Dict[str, Any]], List[Mapping]]:
    """HTTPProxies to apply and to delete. A route never names a VM service of this set that has no host left:
    such a service is taken out of its routes, a route left without a service is removed, an HTTPProxy left
    without a route is deleted. Live HTTPProxies of the set that this run does not define are fixed up the
    same way (a decommission run passes none)."""
    live_proxies = OrderedDict((obj_key(o), o) for o in owned_live if o.get('kind') == 'HTTPProxy')
    apply, delete = [], []  # type: Tuple[List[Dict[str, Any]], List[Mapping]]
    defined = set()
    proxies = cfg.httpproxies if cfg.state == 'present' and 'httpproxy' in cfg.shapes else []
    for proxy in proxies:
        key = ('HTTPProxy', proxy['namespace'], proxy['name'])
        defined.add(key)
        namespace = proxy['namespace']
        known = set(name for ns, name in registered | after if ns == namespace)
        known.update(vm_services_of(live_proxies.get(key) or {}))
        names = set(svc['name'] for route in proxy['routes'] for svc in route['services'])
        vm_names = names & known
        gone = set(name for name in vm_names if (namespace, name) not in after)
        obj = render_httpproxy(cfg, api, proxy, vm_names)
        kept = _without_gone(obj, gone, notes) if gone else obj
        if kept is not None:
            apply.append(kept)
        elif key in live_proxies:
            delete.append(live_proxies[key])
            notes[-1] = notes[-1].replace('deleted (not created)', 'deleted')
        else:
            notes[-1] = notes[-1].replace('deleted (not created)', 'not created')
    for key, live in live_proxies.items():
        if key in defined or not fix_live:  # a complete run prunes the HTTPProxies it does not define
            continue
        namespace = key[1]
        names = set(svc.get('name') for route in (live.get('spec') or {}).get('routes') or []
                    for svc in route.get('services') or [])
        known = set(name for ns, name in registered if ns == namespace) | set(vm_services_of(live))
        gone = set(name for name in names & known if (namespace, name) not in after)
        if not gone:
            continue
        current = OrderedDict((k, live[k]) for k in ('apiVersion', 'kind') if k in live)
        meta = live.get('metadata') or {}
        current['metadata'] = OrderedDict((k, meta[k]) for k in ('name', 'namespace', 'labels', 'annotations')
                                          if meta.get(k))
        current['spec'] = live.get('spec') or {}
        kept = _without_gone(current, gone, notes)
        if kept is None:
            delete.append(live)
            notes[-1] = notes[-1].replace('deleted (not created)', 'deleted')
        else:
            apply.append(kept)
    return apply, delete


def duplicate_names(objs: Iterable[Mapping]) -> List[str]:
    """Two desired objects with one kind, namespace and name (e.g. WorkloadEntry names of two hosts)."""
    seen = OrderedDict()  # type: Dict[Tuple[str, str, str], Mapping]
    errors = []
    for obj in objs:
        key = obj_key(obj)
        if key in seen:
            first, second = hosts_of(seen[key]), hosts_of(obj)
            errors.append('%s: built twice (hosts %s and %s); allowed: host and service names that give distinct '
                          'object names' % (obj_ref(obj), ', '.join(first) or '-', ', '.join(second) or '-'))
        seen[key] = obj
    return errors


def host_info_warnings(cfg: Config, objs: Iterable[Mapping]) -> List[str]:
    """Objects that list hosts with host_info but had to be written without the host-info annotation."""
    given = _infos(cfg.endpoints)
    out = []
    for obj in objs:
        if obj.get('kind') not in ('ServiceEntry', 'EndpointSlice'):
            continue
        annotations = (obj.get('metadata') or {}).get('annotations') or {}
        hosts = [h for h in hosts_of(obj) if h in given]
        if hosts and HOST_INFO_ANNOTATION not in annotations:
            out.append('%s: the %s annotation of its %d hosts would pass %d bytes and was left off, so the '
                       'fleetmesh.envoy.workloads inventory reads no connection details or Envoy version from it; '
                       'use the workloadentry shape (one object per host), or the endpointslice shape with a '
                       'smaller max_endpoints_per_slice' % (obj_ref(obj), HOST_INFO_ANNOTATION,
                                                            len(hosts_of(obj)), HOST_INFO_ANNOTATION_BUDGET))
    return out
