# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.preflight: the whole model of every targeted host, checked once on the controller.

The first task of every runbook (docs/model.md). It reads each host's variables from hostvars, resolves
the ``fleetmesh_*`` model (module_utils/_fleetmesh/model.py), refuses control characters in every variable
of the collection, runs the role checks a runbook's later steps will run (validation.py) on what the user
set, and the registration module's own checks on the endpoints it would register. Nothing is contacted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import ipaddress
import json
import os
from collections.abc import Mapping

import yaml
from ansible.errors import AnsibleUndefinedVariable
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import model
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import validate_model
from ansible_collections.fleetmesh.envoy.plugins.plugin_utils.action import ControllerAction, errors_result

# Role check groups a runbook may ask for, and the role whose defaults fill what the user did not set.
ROLE_CHECKS = {
    'workload_certs': 'workload_certs',
    'envoy': 'envoy',
    'istio_sidecar': 'istio_sidecar',
    'istio_sidecar_absent': 'istio_sidecar',
    'mesh_registration': 'mesh_registration',
}
# onboard.yml includes a role on a host only when the host's flag says so; its checks follow the same flags.
ONBOARD_FLAGS = {
    'envoy': ('fleetmesh_envoy', True),
    'istio_sidecar': ('fleetmesh_istio_sidecar', False),
    'workload_certs': ('fleetmesh_workload_certs', True),
}
# Read per host through hostvars (this action, the mesh_registration role): a play's own variables (its vars:,
# vars_files, include_vars) are not in hostvars, so the model would silently go without them. (envoy_listeners is
# the envoy role's, which reads it as any role does; registration takes the endpoint port from it only when
# mesh_registration_endpoint_ports is not set.)
HOSTVARS_READ = model.MODEL_VARS + ('fleetmesh_envoy', 'fleetmesh_istio_sidecar', 'fleetmesh_workload_certs',
                                    'mesh_registration_endpoint_ports', 'mesh_registration_healthy')
_ROLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'roles')
_NOT_SET = object()
_LATER = object()  # a template that needs what is not known yet (facts): judged by the role's own check later


@functools.lru_cache(maxsize=None)
def _written_defaults(role):
    """A role's defaults as written (templates unresolved), read once per process."""
    path = os.path.join(_ROLES_DIR, role, 'defaults', 'main.yml')
    if not os.path.isfile(path):
        return {}
    with open(path, encoding='utf-8') as handle:
        return yaml.safe_load(handle) or {}


def role_defaults(role):
    """A role's defaults that are plain values; templated ones derive from the model, checked by itself."""
    return {key: value for key, value in _written_defaults(role).items() if '{{' not in json.dumps(value, default=str)}


def _is_role_default(var, value):
    """Whether a play's value of var is a role's default, which a play that lists the role under roles: carries."""
    return any(var in defaults and defaults[var] == value
               for defaults in map(_written_defaults, sorted(os.listdir(_ROLES_DIR))))


def _get(hostvars, var):
    """A host variable, templated; _NOT_SET when undefined, _LATER when its template needs a fact not gathered yet,
    the exception when its template fails otherwise."""
    try:
        value = hostvars[var]
    except KeyError:
        return _NOT_SET
    except AnsibleUndefinedVariable as exc:
        # A fact (ansible_*) is known once the play gathers it; any other undefined name is a mistake now.
        return _LATER if "'ansible_" in str(exc) else exc
    except Exception as exc:  # pylint: disable=broad-except  # reported as an error of that variable
        return exc
    return _NOT_SET if value is None else value


def _flag(hostvars, var, default):
    value = _get(hostvars, var)
    if value is _NOT_SET or value is _LATER or isinstance(value, Exception):
        return default
    return value if isinstance(value, bool) else str(value).lower() in ('1', 'true', 'yes', 'on')


class ActionModule(ControllerAction):
    """Resolve and check the model of every targeted host; never connects to a host."""

    ARGUMENT_SPEC = {
        'runbook': {'type': 'str', 'required': True},
        'checks': {'type': 'list', 'elements': 'str', 'default': []},
        'hosts': {'type': 'list', 'elements': 'str'},
        'model_required': {'type': 'bool', 'default': True},
    }

    def act(self, result, args, task_vars):
        hosts = args['hosts'] if args['hosts'] is not None else task_vars.get('ansible_play_hosts_all', [])
        all_hostvars = task_vars.get('hostvars', {})
        errors = []
        unknown = [name for name in args['checks'] if name not in ROLE_CHECKS]
        if unknown:
            errors.append('checks: %s are not known; allowed: %s' % (', '.join(unknown), ', '.join(sorted(ROLE_CHECKS))))
        defaults = {role: role_defaults(role) for role in set(ROLE_CHECKS[c] for c in args['checks'] if c in ROLE_CHECKS)}
        workloads = {}
        endpoints = []
        for host in sorted(hosts):
            hostvars = all_hostvars[host]
            gated = args['runbook'] == 'onboard'
            host_errors, workload = self._check_host(host, hostvars, args['checks'], defaults, gated,
                                                     args['model_required'])
            errors.extend(host_errors)
            if workload is not None:
                workloads[host] = workload
                endpoints.append(self._endpoint(workload, hostvars, len(endpoints)))
        errors.extend(model.check_fleet(workloads.values()))
        errors.extend(self._play_level_errors(task_vars, all_hostvars))
        if not errors and 'mesh_registration' in args['checks'] and endpoints:
            errors.extend(self._registration_errors(endpoints, all_hostvars[sorted(workloads)[0]], defaults))
        result.update(runbook=args['runbook'], hosts=sorted(hosts),
                      workloads={host: w.as_dict() for host, w in workloads.items()})
        return errors_result(result, errors,
                             '{count} in the inventory model of %s (checked before any change: nothing was changed '
                             'on any host or in the cluster):' % args['runbook'],
                             'fleetmesh.envoy.preflight: the model of %d host(s) is valid for %s' % (
                                 len(hosts), args['runbook']))

    @staticmethod
    def _check_host(host, hostvars, checks, defaults, gated, model_required):
        errors = []
        values = {}  # every collection variable set for the host, templated
        later = set()
        for var in sorted(k for k in hostvars if isinstance(k, str) and k.startswith(model.COLLECTION_PREFIXES)):
            value = _get(hostvars, var)
            if value is _LATER:
                later.add(var)
            elif isinstance(value, Exception):
                errors.append('host %s: %s: cannot be resolved (%s); allowed: a value whose templates resolve'
                              % (host, var, (str(value).splitlines() or [type(value).__name__])[0][:300]))
            elif value is not _NOT_SET:
                values[var] = value
        errors.extend(model.check_collection_vars(host, values))
        if errors or later & (set(model.MODEL_VARS) - {'fleetmesh_address'}):
            return errors, None
        workload, found = model.resolve(host, dict((k, values[k]) for k in model.MODEL_VARS if k in values),
                                        required=model_required)
        errors.extend(found)
        if found:
            return errors, None
        for check in checks:
            role = ROLE_CHECKS.get(check)
            if role is None or (workload is None and check != 'istio_sidecar_absent'):
                continue  # without the whole model (model_required=false) only what needs none is checked
            if gated and not _flag(hostvars, *ONBOARD_FLAGS.get(check, ('', True))):
                continue
            variables = dict(defaults.get(role, {}))
            variables.update(values)
            for name in ('inventory_hostname', 'ansible_host'):
                value = _get(hostvars, name)
                if isinstance(value, str):
                    variables[name] = value
            errors.extend('host %s: %s' % (host, error) for error in validate_model(variables, [check])
                          if not error.startswith(tuple(later)))
        return errors, workload

    def _play_level_errors(self, task_vars, all_hostvars):
        """Model variables the play sets for itself, which the per-host model (hostvars) never sees."""
        host = task_vars.get('inventory_hostname')
        if host not in all_hostvars:
            return []
        hostvars = all_hostvars[host]
        errors = []
        for var in HOSTVARS_READ:
            if var not in task_vars or _is_role_default(var, task_vars[var]):
                continue  # a play that lists a role under roles: carries the role's defaults
            if var in hostvars:
                try:
                    same = self._templar.template(task_vars[var]) == hostvars[var]
                except Exception:  # pylint: disable=broad-except  # judged by the host's own checks instead
                    same = True
                if same:
                    continue
            errors.append('%s: set for the play (its vars:, vars_files or include_vars), which the model does not '
                          'read: every runbook reads the model per host (hostvars), so the value would be ignored; '
                          'allowed: set it in the inventory (group_vars, host_vars), as an extra var (-e) or with '
                          'ansible.builtin.set_fact' % var)
        return errors

    @staticmethod
    def _endpoint(workload, hostvars, index):
        address = workload.address
        if address is None:
            facts = _get(hostvars, 'ansible_default_ipv4')
            address = facts.get('address') if isinstance(facts, Mapping) else None
        if address is None:
            # Not known before facts are gathered: a distinct stand-in (198.18.0.0/15, benchmarking) so that
            # registration's other checks still judge this host; the real address is checked when registering.
            address = str(ipaddress.ip_address('198.18.0.1') + index)
        return {'host': workload.host, 'address': address, 'service': workload.service,
                'namespace': workload.namespace, 'ports': dict(workload.ports), 'labels': dict(workload.labels),
                'weight': workload.weight, 'locality': workload.locality, 'network': workload.network,
                'service_account': workload.service_account}

    @staticmethod
    def _registration_errors(endpoints, hostvars, defaults):
        params = dict((key[len('mesh_registration_'):], value) for key, value in defaults['mesh_registration'].items())
        for var in hostvars:
            if isinstance(var, str) and var.startswith('mesh_registration_'):
                value = _get(hostvars, var)
                if value is not _NOT_SET and value is not _LATER and not isinstance(value, Exception):
                    params[var[len('mesh_registration_'):]] = value
        params['endpoints'] = endpoints
        params['registration'] = params.get('set') or str(params.get('group', 'all')).lower().replace('_', '-')
        _config, errors = registration.normalize(params)
        return ['registration (mesh_registration_*): ' + error for error in errors]
