# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: workloads
short_description: The VMs fleetmesh.envoy registered in Kubernetes, as an inventory
version_added: 0.1.0
description:
  - Lists the VMs that M(fleetmesh.envoy.mesh_registration) (the C(fleetmesh.envoy.mesh_registration) role) registered in
    Kubernetes, for day-2 runbooks such as C(upgrade.yml), C(rotate_certs.yml) and C(status.yml) across everything
    registered, without keeping a second inventory.
  - Reads only objects with the ownership labels C(app.kubernetes.io/managed-by=fleetmesh.envoy) and
    C(fleetmesh.envoy/registration) (optionally limited to O(registration_sets)), one list request per kind.
    Every other object is ignored.
  - A host is named as it was in the inventory that registered it (the C(fleetmesh.envoy/host) annotation of
    WorkloadEntries, the C(fleetmesh.envoy/hosts) annotation of ServiceEntries and EndpointSlices), so the same
    C(host_vars) and C(--limit) patterns work with both inventories.
  - "Each host gets the registered data back as the collection's inventory model: C(fleetmesh_address),
    C(fleetmesh_service), C(fleetmesh_namespace), C(fleetmesh_ports), C(fleetmesh_labels), C(fleetmesh_network),
    C(fleetmesh_locality), C(fleetmesh_weight), C(fleetmesh_service_account), plus C(fleetmesh_registration) (the
    registration set), C(fleetmesh_ready) and C(fleetmesh_registered_objects). C(ansible_host) is the registered address."
  - "Connection details and the Envoy version are read when the registration recorded them, in the annotation
    C(fleetmesh.envoy/host-info): a JSON object with C(ansible_host), C(ansible_port), C(ansible_user) and
    C(envoy_version) on a WorkloadEntry, or a JSON object of such objects by host on ServiceEntries and
    EndpointSlices. A C(fleetmesh.envoy/envoy-version) label or annotation on a WorkloadEntry gives the version too.
    The version becomes C(fleetmesh_envoy_version)."
  - WorkloadEntries and ServiceEntries leave out hosts marked not ready (C(mesh_registration_healthy=false)); with
    the EndpointSlice shape such hosts are listed with C(fleetmesh_ready=false).
  - Built-in groups by service, namespace, network, Envoy version and registration set (O(group_by)); O(compose),
    O(groups) and O(keyed_groups) work as in P(ansible.builtin.constructed#inventory); O(cache) keeps the listed hosts
    in an inventory cache plugin.
  - The configuration file name must end in C(workloads.yml) or C(workloads.yaml).
author:
  - fleetmesh maintainers (@fleetmesh)
extends_documentation_fragment:
  - fleetmesh.envoy.k8s_auth
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; it marks the file as this plugin's configuration.
    type: str
    required: true
    choices: [fleetmesh.envoy.workloads]
  kubeconfig:
    description:
      - Path of the kubeconfig file on the controller. In AWX the fleetmesh kubeconfig credential type injects it
        as E(FLEETMESH_KUBECONFIG).
      - When not set, E(KUBECONFIG) or C(~/.kube/config), then the in-cluster service account when running in a pod.
    type: path
    env:
      - name: FLEETMESH_KUBECONFIG
  context:
    description:
      - Context of the kubeconfig to use. The current context when not set.
    type: str
    env:
      - name: FLEETMESH_KUBE_CONTEXT
  registration_sets:
    description:
      - Registration sets (values of the C(fleetmesh.envoy/registration) label) to list. Empty lists every set.
    type: list
    elements: str
    default: []
  namespaces:
    description:
      - Namespaces to look in. Empty lists in all namespaces (one request per kind); otherwise one request per
        kind and namespace, for identities allowed to list only there.
    type: list
    elements: str
    default: []
  kinds:
    description:
      - Kinds of registration objects to read hosts from. Kinds the API server does not serve (Istio not installed)
        are skipped.
    type: list
    elements: str
    choices: [WorkloadEntry, ServiceEntry, EndpointSlice]
    default: [WorkloadEntry, ServiceEntry, EndpointSlice]
  group_by:
    description:
      - Built-in groups to put every host in, made before O(groups) and O(keyed_groups).
      - V(service) C(service_<fleetmesh_service>), V(namespace) C(namespace_<fleetmesh_namespace>), V(network)
        C(network_<fleetmesh_network>), V(envoy_version) C(envoy_<fleetmesh_envoy_version>) and V(registration)
        C(registration_<fleetmesh_registration>). Characters other than letters, digits and C(_) become C(_), as in
        C(envoy_1_40_0). Hosts without the value (no network, no recorded version) are not put in that group.
    type: list
    elements: str
    choices: [service, namespace, network, envoy_version, registration]
    default: [service, namespace, network, envoy_version]
  set_ansible_host:
    description:
      - Set C(ansible_host) to the registered address (or to C(ansible_host) of C(fleetmesh.envoy/host-info)).
      - V(false) leaves connection variables to other inventory sources, group_vars or O(compose).
    type: bool
    default: true
requirements:
  - kubernetes (Python library) >= 24.2.0 on the controller
notes:
  - Values read from Kubernetes are never templated; O(compose), O(groups) and O(keyed_groups) expressions are.
seealso:
  - module: fleetmesh.envoy.mesh_registration
  - plugin: ansible.builtin.constructed
    plugin_type: inventory
"""

EXAMPLES = r"""
# Each item is the content of one configuration file (without the "name" line); the file name must
# end in workloads.yml or workloads.yaml. Then, for example:
#   ansible-inventory -i prod.workloads.yml --graph
#   ansible-playbook -i inventories/prod -i prod.workloads.yml fleetmesh.envoy.upgrade -e upgrade_to=1.40.0 -e target=envoy_1_39_3

- name: "fleet.workloads.yml: every VM registered by fleetmesh.envoy, default groups (service_web, envoy_1_40_0, ...)"
  plugin: fleetmesh.envoy.workloads
  kubeconfig: ~/.kube/fleetmesh-registrar.kubeconfig

- name: "prod.workloads.yml: one registration set in two namespaces, a group per service as in the onboarding inventory"
  plugin: fleetmesh.envoy.workloads
  registration_sets: [prod]
  namespaces: [bookinfo, payments]
  group_by: [namespace, envoy_version]
  keyed_groups:
    # group "reviews", "ratings", ...: the same --limit and target patterns as the onboarding inventory
    - key: fleetmesh_service
      prefix: ""
      separator: ""
    - key: fleetmesh_labels.version | default('')
      prefix: version
  groups:
    canary: fleetmesh_labels.track | default('') == 'canary'
    not_ready: not fleetmesh_ready
  compose:
    ansible_user: "'fleetadmin'"
    # re-register into the same set on day-2 runs (upgrade.yml marking hosts not ready)
    mesh_registration_set: fleetmesh_registration
  cache: true
  cache_plugin: ansible.builtin.jsonfile
  cache_connection: ~/.cache/fleetmesh-inventory
  cache_timeout: 3600
"""

import json
import re

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

try:  # ansible-core 2.19+: values from plugins are untrusted (never templated) unless marked
    from ansible.template import trust_as_template
    wrap_var = None
except ImportError:  # older ansible-core: plain values are not templated either; wrap what looks like a template
    trust_as_template = None
    from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC

HOST_INFO_ANNOTATION = 'fleetmesh.envoy/host-info'
ENVOY_VERSION_KEY = 'fleetmesh.envoy/envoy-version'
KIND_ORDER = ('WorkloadEntry', 'ServiceEntry', 'EndpointSlice')  # richest data first
GROUP_PREFIXES = {
    'service': ('service', 'fleetmesh_service'),
    'namespace': ('namespace', 'fleetmesh_namespace'),
    'network': ('network', 'fleetmesh_network'),
    'envoy_version': ('envoy', 'fleetmesh_envoy_version'),
    'registration': ('registration', 'fleetmesh_registration'),
}
_UNSAFE_GROUP_CHARS = re.compile(r'[^A-Za-z0-9_]')


_TEMPLATE_MARKERS = ('{{', '{%', '{#')


def inventory_value(value):
    """A value read from Kubernetes, as an inventory variable: never templated.

    Strings without template syntax are marked trusted, so that ansible-inventory --list (and AWX's
    inventory import, which reads it) shows them as plain strings; strings with template syntax stay
    untrusted (ansible-core 2.19+) or are wrapped as unsafe (older ansible-core).
    """
    if isinstance(value, dict):
        return dict((inventory_value(k), inventory_value(v)) for k, v in value.items())
    if isinstance(value, list):
        return [inventory_value(v) for v in value]
    if isinstance(value, str):
        if any(marker in value for marker in _TEMPLATE_MARKERS):
            return value if trust_as_template is not None else wrap_var(value)
        return trust_as_template(value) if trust_as_template is not None else value
    return value


def safe_group(prefix, value):
    return _UNSAFE_GROUP_CHARS.sub('_', '%s_%s' % (prefix, value))


def _json_annotation(annotations, key):
    try:
        value = json.loads(annotations.get(key) or '{}')
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _ports(value):
    """name -> port from a WorkloadEntry ports map, or from ServiceEntry/EndpointSlice port lists."""
    if isinstance(value, dict):
        return dict((str(k), v) for k, v in value.items())
    out = {}
    for port in value or []:
        if isinstance(port, dict) and port.get('name'):
            out[str(port['name'])] = port.get('number', port.get('port'))
    return out


def _connection(info):
    out = {}
    for key in ('ansible_host', 'ansible_port', 'ansible_user', 'envoy_version'):
        if info.get(key) not in (None, ''):
            out[key] = info[key]
    return out


def records_from(obj):
    """Host records of one owned object: dicts with host, service, namespace, address and what the kind holds."""
    meta = obj.get('metadata') or {}
    labels = meta.get('labels') or {}
    annotations = meta.get('annotations') or {}
    kind = obj.get('kind')
    if labels.get(reg.MANAGED_BY_LABEL) != reg.MANAGED_BY or not labels.get(reg.SET_LABEL):
        return []  # not the collection's (the label selector already asks the server for owned objects only)
    base = {
        'namespace': meta.get('namespace'),
        'service': labels.get(reg.SERVICE_LABEL) or labels.get(reg.SLICE_SERVICE_LABEL),
        'registration': labels.get(reg.SET_LABEL),
        'objects': ['%s %s/%s' % (kind, meta.get('namespace'), meta.get('name'))],
    }
    out = []
    if kind == 'WorkloadEntry':
        host = annotations.get(reg.HOST_ANNOTATION)
        if not host:
            return []
        spec = obj.get('spec') or {}
        record = dict(base, host=host, address=spec.get('address'), ports=_ports(spec.get('ports')),
                      labels=dict(spec.get('labels') or {}), network=spec.get('network'),
                      locality=spec.get('locality'), weight=spec.get('weight'),
                      service_account=spec.get('serviceAccount'), ready=True)
        info = _connection(_json_annotation(annotations, HOST_INFO_ANNOTATION))
        version = labels.get(ENVOY_VERSION_KEY) or annotations.get(ENVOY_VERSION_KEY)
        if version and 'envoy_version' not in info:
            info['envoy_version'] = version
        record.update(info)
        if not record['service']:
            record['service'] = record['labels'].get('app')
        out.append(record)
    elif kind in ('ServiceEntry', 'EndpointSlice'):
        infos = _json_annotation(annotations, HOST_INFO_ANNOTATION)
        if kind == 'ServiceEntry':
            spec = obj.get('spec') or {}
            entries = dict((e.get('address'), e) for e in spec.get('endpoints') or [] if isinstance(e, dict))
            default_ports = _ports(spec.get('ports'))
        else:
            entries = dict(((e.get('addresses') or [None])[0], e) for e in obj.get('endpoints') or []
                           if isinstance(e, dict))
            default_ports = _ports(obj.get('ports'))
        for host, address in reg.hosts_of(obj).items():
            entry = entries.get(address)
            if entry is None:
                continue
            record = dict(base, host=host, address=address, ports=default_ports)
            if kind == 'ServiceEntry':
                # The ServiceEntry's port numbers are the service's (the app's, fleetmesh_ports); an entry's ports
                # are where the VM answers (its Envoy listener, docs/data-path.md), so they are not the model's.
                record.update(labels=dict(entry.get('labels') or {}), network=entry.get('network'),
                              locality=entry.get('locality'), weight=entry.get('weight'),
                              service_account=entry.get('serviceAccount'), ready=True, service_ports=True)
            else:
                conditions = entry.get('conditions') or {}
                record['ready'] = conditions.get('ready') is not False
            info = infos.get(host)
            if isinstance(info, dict):
                record.update(_connection(info))
            out.append(record)
    return out


def merge_records(records):
    """One record per host: the first kind that has a field gives it (WorkloadEntry, ServiceEntry, EndpointSlice).

    Returns (hosts sorted by name, warnings).
    """
    hosts = {}
    warnings = []
    rank = dict((kind, i) for i, kind in enumerate(KIND_ORDER))
    for record in sorted(records, key=lambda r: (rank.get(r['objects'][0].split(' ', 1)[0], 9), r['objects'][0])):
        host = record['host']
        current = hosts.get(host)
        if current is None:
            hosts[host] = dict(record, objects=list(record['objects']))
            continue
        if (current.get('namespace'), current.get('service')) != (record.get('namespace'), record.get('service')):
            warnings.append('host %s is registered for %s/%s and for %s/%s; its variables come from %s'
                            % (host, current.get('namespace'), current.get('service'), record.get('namespace'),
                               record.get('service'), current['objects'][0]))
        for key, value in record.items():
            if key == 'objects':
                current['objects'].extend(value)
            elif key == 'ports' and record.get('service_ports') and not current.get('service_ports') and value:
                # a WorkloadEntry holds the endpoint ports; the ServiceEntry the service's own
                current['ports'], current['service_ports'] = value, True
            elif key == 'ready':
                current['ready'] = bool(current.get('ready', True)) and bool(value)
            elif current.get(key) in (None, '', {}, []) and value not in (None, '', {}, []):
                current[key] = value
    return [hosts[name] for name in sorted(hosts)], warnings


def host_vars(record, set_ansible_host=True):
    """The inventory model variables of one merged host record."""
    out = {
        'fleetmesh_address': record.get('address'),
        'fleetmesh_service': record.get('service'),
        'fleetmesh_namespace': record.get('namespace'),
        'fleetmesh_ports': record.get('ports') or {},
        'fleetmesh_labels': record.get('labels') or {},
        'fleetmesh_registration': record.get('registration'),
        'fleetmesh_ready': bool(record.get('ready', True)),
        'fleetmesh_registered_objects': list(record.get('objects') or []),
    }
    for key in ('network', 'locality', 'weight', 'service_account', 'envoy_version'):
        if record.get(key) not in (None, ''):
            out['fleetmesh_' + key] = record[key]
    if set_ansible_host:
        out['ansible_host'] = record.get('ansible_host') or record.get('address')
        for key in ('ansible_port', 'ansible_user'):
            if record.get(key) not in (None, ''):
                out[key] = record[key]
    return out


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):

    NAME = 'fleetmesh.envoy.workloads'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(('workloads.yml', 'workloads.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        update_cache = self.get_option('cache') and not cache
        records = None
        if use_cache:
            try:
                records = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if records is None:
            records = self.fetch()
        if update_cache:
            self._cache[cache_key] = records
        self.populate(records)

    def fetch(self):
        """Every host record of the owned objects (one list request per kind, or per kind and namespace)."""
        try:
            client = kube.client_from_params(dict((name, self.get_option(name)) for name in AUTH_ARGUMENT_SPEC))
            wanted = [(kind, reg.KINDS[kind][0], reg.KINDS[kind][1], False) for kind in self.get_option('kinds')]
            resources = client.discover(wanted)
            selector = '%s=%s' % (reg.MANAGED_BY_LABEL, reg.MANAGED_BY)
            sets = self.get_option('registration_sets')
            if sets:
                selector += ',%s in (%s)' % (reg.SET_LABEL, ','.join(sets))
            namespaces = self.get_option('namespaces') or [None]
            pairs = [(resources[kind], ns) for kind in self.get_option('kinds') if kind in resources for ns in namespaces]
            records = []
            for _pair, items, error in client.map(lambda p: client.list(p[0], selector, p[1]), pairs):
                if error is not None:
                    raise error
                for obj in items:
                    records.extend(records_from(obj))
        except kube.KubeError as exc:
            raise AnsibleParserError('fleetmesh.envoy.workloads: %s' % exc.message) from None
        missing = [kind for kind in self.get_option('kinds') if kind not in resources]
        if missing:
            self.display.vvv('fleetmesh.envoy.workloads: %s not served by %s, skipped' % (', '.join(missing), client.url))
        merged, warnings = merge_records(records)
        for warning in warnings:
            self.display.warning('fleetmesh.envoy.workloads: %s' % warning)
        return merged

    def populate(self, records):
        strict = self.get_option('strict')
        group_by = self.get_option('group_by')
        for record in records:
            host = self.inventory.add_host(record['host'])
            variables = host_vars(record, self.get_option('set_ansible_host'))
            for key, value in variables.items():
                self.inventory.set_variable(host, key, inventory_value(value))
            for name in group_by:
                prefix, var = GROUP_PREFIXES[name]
                if variables.get(var) not in (None, ''):
                    group = self.inventory.add_group(safe_group(prefix, variables[var]))
                    self.inventory.add_child(group, host)
            try:
                self._compose_vars(host, strict)
                hostvars = self.inventory.get_host(host).get_vars()
                self._add_host_to_composed_groups(self.get_option('groups'), hostvars, host, strict=strict,
                                                  fetch_hostvars=False)
                self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, host, strict=strict,
                                               fetch_hostvars=False)
            except AnsibleError as exc:
                raise AnsibleParserError('fleetmesh.envoy.workloads: host %s: %s' % (host, to_native(exc))) from exc

    def _compose_vars(self, host, strict):
        """compose, as Constructable._set_composite_vars does, with results shown plain (see inventory_value)."""
        compose = self.get_option('compose') or {}
        hostvars = self.inventory.get_host(host).get_vars()
        for name, expression in compose.items():
            try:
                value = self._compose(expression, hostvars)
            except Exception as exc:  # pylint: disable=broad-except
                if strict:
                    raise AnsibleError('Could not set %s for host %s: %s' % (name, host, to_native(exc))) from exc
                continue
            self.inventory.set_variable(host, name, inventory_value(value))
