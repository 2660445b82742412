# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure data transforms of fleetmesh.envoy; each filter is documented in <name>.yml beside this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import parse_envoy_version
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    ValidationError,
    check_dns_label,
    check_dns_subdomain,
    check_env_name,
    check_trust_domain,
    ensure,
    show,
)


def spiffe_id(trust_domain, namespace, service_account):
    """spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the identity Istio gives a workload."""
    try:
        ensure(check_trust_domain, 'spiffe_id: trust_domain', trust_domain)
        ensure(check_dns_label, 'spiffe_id: namespace', namespace)
        ensure(check_dns_subdomain, 'spiffe_id: service_account', service_account)
    except ValidationError as err:
        raise AnsibleFilterError(str(err)) from err
    return f'spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}'


def _env_text(name, value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(item, (str, int)) and not isinstance(item, bool)
                                                for item in value):
        return ','.join(str(item) for item in value)
    raise AnsibleFilterError(f'{name}: {show(value)} is not a valid cluster.env value; '
                             'allowed: a string, number, boolean or list of strings and numbers (joined with ",")')


def cluster_env_quote(value):
    """POSIX single-quote ``value`` so that the shell reads back exactly ``value``.

    Inside single quotes nothing is special but the single quote itself, which becomes '\\''.
    """
    text = _env_text('cluster_env_quote', value)
    if '\x00' in text:
        raise AnsibleFilterError(f'cluster_env_quote: {show(text)} contains a NUL byte; '
                                 'allowed: text without NUL, which no shell variable can hold')
    return "'" + text.replace("'", "'\\''") + "'"


def cluster_env(data):
    """A cluster.env file: one NAME='value' line per key, sorted by name."""
    if not isinstance(data, Mapping):
        raise AnsibleFilterError(f'cluster_env: {show(data)} is not a mapping; allowed: a mapping of variable names to values')
    lines = []
    for name in sorted(data, key=str):
        try:
            ensure(check_env_name, 'cluster_env', name)
        except ValidationError as err:
            raise AnsibleFilterError(str(err)) from err
        lines.append(f'{name}={cluster_env_quote(_env_text(f"cluster_env: {name}", data[name]))}\n')
    return ''.join(lines)


def envoy_semver(value):
    """X.Y.Z out of an Envoy build string, `envoy --version` output or server_info version."""
    version = parse_envoy_version(value)
    if version is None:
        raise AnsibleFilterError(f'envoy_semver: {show(value)} holds no Envoy version; '
                                 'allowed: text with X.Y.Z such as .../1.40.0/Clean/RELEASE/BoringSSL')
    return version


class FilterModule:
    """fleetmesh.envoy filters."""

    def filters(self):
        return {
            'spiffe_id': spiffe_id,
            'cluster_env_quote': cluster_env_quote,
            'cluster_env': cluster_env,
            'envoy_semver': envoy_semver,
        }
