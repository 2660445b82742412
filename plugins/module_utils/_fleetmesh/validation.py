# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Every input check of the collection, written once.

Each ``check_*`` function takes the name of the variable being checked and its value and
returns a list of error messages (empty when the value is fine). Every message names the
variable, shows the value and says what is allowed::

    fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535

``validate_model(variables, checks)`` runs named groups of checks (see ``CHECKS``) over a dict
of variables and returns every error found; the ``fleetmesh.envoy.validate`` action calls it.
``ensure(check, var, value)`` raises ``ValidationError`` instead, for modules and filters.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
from collections import namedtuple
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.duration import parse_duration


class ValidationError(ValueError):
    """Raised by ``ensure`` with every message of a failed check."""

    def __init__(self, errors: List[str]) -> None:
        self.errors = list(errors)
        super().__init__('; '.join(self.errors))


# --------------------------------------------------------------------------------------------
# What is allowed, said once and used by the checks and by the "is not set" messages.
# --------------------------------------------------------------------------------------------

ALLOWED_DNS_LABEL = ("lowercase letters, digits and '-', starting and ending with a letter or digit, "
                     "at most 63 characters (DNS-1123 label)")
ALLOWED_DNS1035_LABEL = ("lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, "
                         "at most 63 characters (DNS-1035 label, as Kubernetes Service names)")
ALLOWED_DNS_SUBDOMAIN = ("DNS-1123 labels joined by '.', lowercase letters, digits, '-' and '.', "
                         "at most 253 characters (DNS-1123 subdomain)")
ALLOWED_PORT = 'integer 1-65535'
ALLOWED_SEMVER = 'version X.Y.Z of digits without leading zeros, e.g. 1.40.0'
ALLOWED_IP = 'an IPv4 or IPv6 address, e.g. 192.0.2.10 or 2001:db8::10'
ALLOWED_CIDR = ("IPv4 or IPv6 networks in CIDR notation, e.g. 10.96.0.0/12, as a list or a comma separated string, "
                "or '*' alone for every address")
ALLOWED_TRUST_DOMAIN = ("lowercase DNS-like name: labels of a-z, 0-9, '-' and '_' joined by '.', "
                        "at most 255 characters, e.g. cluster.local")
ALLOWED_SPIFFE_ID = ("spiffe://<trust domain>/<path>, path segments of letters, digits, '.', '-' and '_' "
                     "(not '.' or '..'), no trailing '/', at most 2048 characters")
ALLOWED_SAN = ("a DNS name (optionally starting with '*.'), an IP address or a spiffe:// URI, "
               "optionally prefixed with DNS:, IP: or URI:")
ALLOWED_ADMIN_ADDRESS = ('a loopback address (127.0.0.0/8, ::1 or localhost), '
                         'or set envoy_admin_allow_non_loopback: true to expose the Envoy admin API')
ISTIO_PORT_PROTOCOLS = ('http', 'http2', 'https', 'grpc', 'tcp', 'tls', 'mongo', 'redis', 'mysql')
ALLOWED_ISTIO_PORT_NAME = (f"'<protocol>' or '<protocol>-<suffix>' with protocol one of {', '.join(ISTIO_PORT_PROTOCOLS)}, "
                           "and the whole name a DNS-1123 label")
ALLOWED_ISTIO_PORTS = 'a mapping of Istio port names to ports, e.g. {http: 9080}'
ALLOWED_LABEL_KEY = ("[prefix/]name: name of letters, digits, '-', '_' and '.', starting and ending with a letter "
                     "or digit, at most 63 characters; optional prefix a DNS-1123 subdomain")
ALLOWED_LABEL_VALUE = ("a string, empty or of letters, digits, '-', '_' and '.', starting and ending with a letter "
                       "or digit, at most 63 characters")
ALLOWED_LABELS = 'a mapping of Kubernetes label keys to label values, e.g. {app: reviews, version: v1}'
ALLOWED_LOCALITY = "region[/zone[/subzone]], each part of letters, digits, '-', '_' and '.', e.g. us-east/zone-a"
ALLOWED_WEIGHT = 'integer 1-4294967295'
ALLOWED_BOOL = 'true or false'
ALLOWED_ADDRESSES = 'a mapping of host name to address (or a list of addresses), each address used by one host only'
ALLOWED_ENV_NAME = 'a name matching [A-Z_][A-Z0-9_]* (upper case letters, digits and _, not starting with a digit)'
ALLOWED_MODE = "an octal mode string such as '0644' or '0640'"
ENVOY_INSTALL_METHODS = ('artifact', 'url', 'package')

_DNS_LABEL_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
_DNS1035_LABEL_RE = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_LABEL_NAME_RE = re.compile(r'^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')
_SEMVER_RE = re.compile(r'^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$')
_TRUST_DOMAIN_LABEL_RE = re.compile(r'^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$')
_SPIFFE_SEGMENT_RE = re.compile(r'^[A-Za-z0-9._-]+$')
_LOCALITY_PART_RE = re.compile(r'^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')
_ENV_NAME_RE = re.compile(r'^[A-Z_][A-Z0-9_]*$')
_MODE_RE = re.compile(r'^0?[0-7]{3,4}$')


def show(value: Any) -> str:
    """Render a value for a message: strings quoted (so spaces and empty strings show), the rest as JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(int(value))
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _error(var: str, value: Any, what: str, allowed: str) -> str:
    return f'{var}: {show(value)} {what}; allowed: {allowed}'


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _string_check(accept: Callable[[str], Any], problem: str, allowed: str) -> Callable[[str, Any], List[str]]:
    """A check of a string value: no error when ``accept(value)`` holds, else ``problem`` and ``allowed``."""
    def check(var: str, value: Any) -> List[str]:
        if _is_str(value) and accept(value):
            return []
        return [_error(var, value, problem, allowed)]
    return check


def _list_check(item_check: Callable[[str, Any], List[str]], items: str,
                allowed: str) -> Callable[[str, Any], List[str]]:
    """A check of a list whose every item passes ``item_check`` (errors name the item as ``var[index]``)."""
    def check(var: str, value: Any) -> List[str]:
        if not isinstance(value, (list, tuple)):
            return [_error(var, value, 'is not a list of ' + items, 'a list of ' + allowed)]
        errors = []
        for index, item in enumerate(value):
            errors.extend(item_check(f'{var}[{index}]', item))
        return errors
    return check


def _as_int(value: Any) -> Optional[int]:
    """Integers, and strings of digits (templating may give either); never booleans."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if _is_str(value) and re.match(r'^[0-9]+$', value.strip()):
        return int(value.strip())
    return None


# --------------------------------------------------------------------------------------------
# Text that ends up in files
# --------------------------------------------------------------------------------------------

ALLOWED_NO_CONTROL = 'text without newlines or other control characters'
# Variables never shown in a message (their value is a secret).
SECRET_VARS = ('istio_sidecar_token',)
_CONTROL_RE = re.compile('[\\x00-\\x1f\\x7f\\x85\\u2028\\u2029]')
# A tab cannot start a line: role variables may hold one (cluster.env quotes it); model values may not.
_CONTROL_BUT_TAB_RE = re.compile('[\\x00-\\x08\\x0a-\\x1f\\x7f\\x85\\u2028\\u2029]')


def _hidden(var: str, value: Any) -> Any:
    return '<hidden>' if var.startswith(SECRET_VARS) else value


def check_no_control(var: str, value: Any, allow_tab: bool = False) -> List[str]:
    """Refuse a control character anywhere in a value (strings, keys and items of mappings and lists): a newline
    would add a line to the file the value ends up in. ``allow_tab`` lets a tab through (it cannot start a line)."""
    errors: List[str] = []
    pattern = _CONTROL_BUT_TAB_RE if allow_tab else _CONTROL_RE

    def walk(path: str, item: Any) -> None:
        if isinstance(item, str):
            if pattern.search(item):
                errors.append(_error(path, _hidden(var, item), 'holds a newline or another control character',
                                     ALLOWED_NO_CONTROL))
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if isinstance(key, str):
                    walk(path, key)
                walk('%s.%s' % (path, key), sub)
        elif isinstance(item, (list, tuple)):
            for index, sub in enumerate(item):
                walk('%s[%d]' % (path, index), sub)

    walk(var, value)
    return errors


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

check_dns_label = _string_check(
    lambda value: len(value) <= 63 and _DNS_LABEL_RE.match(value),
    'is not a valid DNS-1123 label', ALLOWED_DNS_LABEL)


# Names Kubernetes requires to start with a letter, such as Service names.
check_dns1035_label = _string_check(
    lambda value: len(value) <= 63 and _DNS1035_LABEL_RE.match(value),
    'is not a valid DNS-1035 label', ALLOWED_DNS1035_LABEL)


check_dns_subdomain = _string_check(
    lambda value: 0 < len(value) <= 253 and all(
        len(part) <= 63 and _DNS_LABEL_RE.match(part) for part in value.split('.')),
    'is not a valid DNS-1123 subdomain', ALLOWED_DNS_SUBDOMAIN)


check_semver = _string_check(_SEMVER_RE.match, 'is not a valid version', ALLOWED_SEMVER)


def semver_tuple(value: str) -> Tuple[int, int, int]:
    """(major, minor, patch) of a version that passed check_semver."""
    ensure(check_semver, 'version', value)
    return tuple(int(part) for part in value.split('.'))


def check_choice(var: str, value: Any, choices: Iterable[str]) -> List[str]:
    choices = tuple(choices)
    if _is_str(value) and value in choices:
        return []
    return [_error(var, value, 'is not a valid choice', 'one of ' + ', '.join(choices))]


def check_install_method(var: str, value: Any) -> List[str]:
    return check_choice(var, value, ENVOY_INSTALL_METHODS)


def check_bool(var: str, value: Any) -> List[str]:
    if isinstance(value, bool):
        return []
    return [_error(var, value, 'is not a boolean', ALLOWED_BOOL)]


check_env_name = _string_check(_ENV_NAME_RE.match, 'is not a valid environment variable name', ALLOWED_ENV_NAME)


def check_file_mode(var: str, value: Any) -> List[str]:
    if _is_str(value) and _MODE_RE.match(value):
        return []
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return []
    return [_error(var, value, 'is not a valid file mode', ALLOWED_MODE)]


def file_mode(value: Any) -> Optional[int]:
    """The integer of a mode that passed check_file_mode (None stays None)."""
    if value is None:
        return None
    ensure(check_file_mode, 'mode', value)
    if isinstance(value, int):
        return value
    return int(value, 8)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

def check_port(var: str, value: Any) -> List[str]:
    number = _as_int(value)
    if number is not None and 1 <= number <= 65535:
        return []
    return [_error(var, value, 'is not a valid port', ALLOWED_PORT)]


def check_weight(var: str, value: Any) -> List[str]:
    number = _as_int(value)
    if number is not None and 1 <= number <= 4294967295:
        return []
    return [_error(var, value, 'is not a valid endpoint weight', ALLOWED_WEIGHT)]


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

def _ip(value: Any) -> Optional[Any]:
    if not _is_str(value):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def check_ip_address(var: str, value: Any) -> List[str]:
    if _ip(value) is not None:
        return []
    return [_error(var, value, 'is not a valid IP address', ALLOWED_IP)]


def check_cidr_list(var: str, value: Any) -> List[str]:
    """CIDRs as a list or a comma separated string (as Istio's ISTIO_SERVICE_CIDR takes them)."""
    if _is_str(value):
        items = [item.strip() for item in value.split(',')]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return [_error(var, value, 'is not a list of CIDRs', ALLOWED_CIDR)]
    if items == ['*']:
        return []
    if not items or items == ['']:
        return [_error(var, value, 'is an empty list of CIDRs', ALLOWED_CIDR)]
    errors = []
    for index, item in enumerate(items):
        item_var = f'{var}[{index}]'
        if not _is_str(item) or '/' not in item:
            errors.append(_error(item_var, item, 'is not a CIDR', ALLOWED_CIDR))
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            errors.append(_error(item_var, item, 'is not a CIDR', ALLOWED_CIDR))
            continue
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError:
            network = ipaddress.ip_network(item, strict=False)
            errors.append(_error(item_var, item, f'has host bits set (did you mean {network}?)', ALLOWED_CIDR))
    return errors


def is_loopback(address: Any) -> bool:
    if address == 'localhost':
        return True
    parsed = _ip(address)
    return parsed is not None and parsed.is_loopback


def check_admin_address(var: str, value: Any, allow_non_loopback: Any = False) -> List[str]:
    """The Envoy admin API stays on loopback unless the operator opted in."""
    if is_loopback(value):
        return []
    if allow_non_loopback is True:
        return check_ip_address(var, value)
    if value != 'localhost' and _ip(value) is None:
        return [_error(var, value, 'is not a valid IP address', ALLOWED_ADMIN_ADDRESS)]
    return [_error(var, value, 'is not a loopback address', ALLOWED_ADMIN_ADDRESS)]


def check_unique_addresses(var: str, value: Any) -> List[str]:
    """No address is used by two hosts of one service.

    ``value`` maps each host of the service to its address (a list works too, without host names).
    """
    if isinstance(value, Mapping):
        pairs = [(str(host), address) for host, address in value.items()]
    elif isinstance(value, (list, tuple)):
        pairs = [(str(index), address) for index, address in enumerate(value)]
    else:
        return [_error(var, value, 'is not a mapping of hosts to addresses', ALLOWED_ADDRESSES)]
    errors = []
    users: Dict[str, List[str]] = {}
    for host, address in pairs:
        item_var = f'{var}.{host}' if isinstance(value, Mapping) else f'{var}[{host}]'
        problems = check_ip_address(item_var, address)
        if problems:
            errors.extend(problems)
            continue
        users.setdefault(str(ipaddress.ip_address(address)), []).append(host)
    for address, hosts in sorted(users.items()):
        if len(hosts) > 1:
            errors.append(_error(var, address, f"is used by more than one host of the service ({', '.join(hosts)})",
                                 ALLOWED_ADDRESSES))
    return errors


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------

def check_trust_domain(var: str, value: Any) -> List[str]:
    if (_is_str(value) and 0 < len(value) <= 255
            and all(_TRUST_DOMAIN_LABEL_RE.match(part) for part in value.split('.'))):
        return []
    return [_error(var, value, 'is not a valid trust domain', ALLOWED_TRUST_DOMAIN)]


def check_spiffe_id(var: str, value: Any, trust_domain: Optional[str] = None) -> List[str]:
    invalid = [_error(var, value, 'is not a valid SPIFFE ID', ALLOWED_SPIFFE_ID)]
    if not _is_str(value) or not value.startswith('spiffe://') or len(value) > 2048:
        return invalid
    domain, _sep, path = value[len('spiffe://'):].partition('/')
    if check_trust_domain(var, domain) or not path:
        return invalid
    for segment in path.split('/'):
        if segment in ('', '.', '..') or not _SPIFFE_SEGMENT_RE.match(segment):
            return invalid
    if trust_domain is not None and domain != trust_domain:
        return [_error(var, value, f'is not in trust domain {show(trust_domain)}',
                       f'a SPIFFE ID starting with spiffe://{trust_domain}/')]
    return []


def check_san(var: str, value: Any) -> List[str]:
    """One subjectAltName entry: DNS name (wildcard allowed as the first label), IP, or spiffe:// URI."""
    invalid = [_error(var, value, 'is not a valid subjectAltName', ALLOWED_SAN)]
    if not _is_str(value) or not value:
        return invalid
    kind, sep, rest = value.partition(':')
    if sep and kind in ('DNS', 'IP', 'URI'):
        if kind == 'IP':
            return [] if _ip(rest) is not None else invalid
        if kind == 'URI':
            return [] if not check_spiffe_id(var, rest) else invalid
        value = rest
    elif value.startswith('spiffe://'):
        return [] if not check_spiffe_id(var, value) else invalid
    elif _ip(value) is not None:
        return []
    name = value[2:] if value.startswith('*.') else value
    if check_dns_subdomain(var, name):
        return invalid
    return []


check_san_list = _list_check(check_san, 'subjectAltNames', ALLOWED_SAN)


# --------------------------------------------------------------------------------------------
# Workload certificates
# --------------------------------------------------------------------------------------------

ALLOWED_DURATION = "a duration such as 30d, 12h, 1h30m or 90s (d, h, m, s in that order), or a number of seconds"
ALLOWED_ABSOLUTE_PATH = 'an absolute path, e.g. /etc/certs'
ALLOWED_POSIX_NAME = ("a user or group name: lowercase letters, digits, '_' and '-', starting with a letter or '_', "
                      "at most 32 characters")
WORKLOAD_CERTS_SOURCES = ('lab_ca', 'files', 'kubernetes', 'legacy_secret')
WORKLOAD_CERTS_KEY_TYPES = ('ec', 'rsa')
WORKLOAD_CERTS_RSA_KEY_SIZES = (2048, 3072, 4096)
_POSIX_NAME_RE = re.compile(r'^[a-z_][a-z0-9_-]{0,31}$')


def check_duration(var: str, value: Any) -> List[str]:
    try:
        parse_duration(value)
    except (TypeError, ValueError):
        return [_error(var, value, 'is not a valid duration', ALLOWED_DURATION)]
    return []


check_absolute_path = _string_check(
    lambda value: value.startswith('/') and '\x00' not in value,
    'is not an absolute path', ALLOWED_ABSOLUTE_PATH)


check_posix_name = _string_check(_POSIX_NAME_RE.match, 'is not a valid user or group name', ALLOWED_POSIX_NAME)


def _workload_service_names(variables: Mapping) -> List[str]:
    """<service>.<namespace>[.svc[.<fleetmesh_cluster_domain>]] when fleetmesh_service and fleetmesh_namespace are valid."""
    service, namespace = variables.get('fleetmesh_service'), variables.get('fleetmesh_namespace')
    domain = variables.get('fleetmesh_cluster_domain') or 'cluster.local'
    if check_dns_label('', service) or check_dns_label('', namespace):
        return []
    return [f'{service}.{namespace}', f'{service}.{namespace}.svc', f'{service}.{namespace}.svc.{domain}']


def workload_allowed_sans(variables: Mapping) -> Tuple[List[str], List[str]]:
    """(DNS names, IP addresses) a host may have in its workload certificate, from its inventory only, never
    from what the host reports: inventory_hostname, ansible_host, fleetmesh_address, and the service's
    Kubernetes names <fleetmesh_service>.<fleetmesh_namespace>[.svc[.cluster.local]]."""
    dns: List[str] = []
    ips: List[str] = []
    for name in ('inventory_hostname', 'ansible_host', 'fleetmesh_address', 'service names'):
        value = variables.get(name)
        if name == 'service names':
            dns.extend(item for item in _workload_service_names(variables) if item not in dns)
            continue
        if not _is_str(value) or not value:
            continue
        address = _ip(value)
        if address is not None:
            if str(address) not in ips:
                ips.append(str(address))
        elif not check_dns_subdomain(name, value.lower().rstrip('.')) and value.lower().rstrip('.') not in dns:
            dns.append(value.lower().rstrip('.'))
    return dns, ips


def check_workload_sans(var: str, value: Any, variables: Mapping) -> List[str]:
    """Extra DNS/IP SANs of a workload certificate: valid, and each one from the host's inventory.

    The URI SAN is always the SPIFFE ID computed from the inventory, so no URI may be listed here.
    """
    errors = check_san_list(var, value)
    if errors:
        return errors
    dns, ips = workload_allowed_sans(variables)
    # A missing or invalid service or namespace is reported by its own rule; the names it feeds are not judged.
    judge_dns = not (check_dns_label('', variables.get('fleetmesh_namespace'))
                     or (variables.get('fleetmesh_service') is not None
                         and check_dns_label('', variables.get('fleetmesh_service'))))
    allowed = ('names of this host from the inventory (inventory_hostname, ansible_host, fleetmesh_address, '
               '<fleetmesh_service>.<fleetmesh_namespace>[.svc[.cluster.local]]): ' + (', '.join(dns + ips) or 'none'))
    for index, item in enumerate(value):
        kind, sep, rest = item.partition(':')
        if not (sep and kind in ('DNS', 'IP', 'URI')):
            kind, rest = ('URI' if item.startswith('spiffe://') else 'IP' if _ip(item) is not None else 'DNS'), item
        if kind == 'URI':
            errors.append(_error(f'{var}[{index}]', item, 'is a URI SAN',
                                 'no URI: the only URI SAN is the SPIFFE ID computed from the inventory'))
        elif kind == 'IP' and str(_ip(rest)) not in ips:
            errors.append(_error(f'{var}[{index}]', item, 'is outside the allowed SAN pattern', allowed))
        elif kind == 'DNS' and judge_dns and rest.lower().rstrip('.') not in dns:
            errors.append(_error(f'{var}[{index}]', item, 'is outside the allowed SAN pattern', allowed))
    return errors


def _workload_renew_before_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    if value == '':
        return []  # one third of the lifetime
    errors = check_duration(var, value)
    if errors:
        return errors
    try:
        lifetime = parse_duration(variables.get('workload_certs_lifetime'))
    except (TypeError, ValueError):
        return []
    if parse_duration(value) >= lifetime:
        return [_error(var, value, f'is not shorter than workload_certs_lifetime ({show(variables.get("workload_certs_lifetime"))})',
                       'a duration shorter than the lifetime, or empty for one third of it')]
    return []


def _workload_source_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    errors = check_choice(var, value, WORKLOAD_CERTS_SOURCES)
    if not errors and value == 'files':
        for name in ('workload_certs_ca_cert', 'workload_certs_ca_key'):
            if not variables.get(name):
                errors.append(f'{name}: is not set; allowed: the path of a PEM file on the controller '
                              f'(needed with {var}: files)')
    return errors


def _workload_rsa_key_size_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    if _as_int(value) in WORKLOAD_CERTS_RSA_KEY_SIZES:
        return []
    return [_error(var, value, 'is not an allowed RSA key size', 'one of 2048, 3072, 4096')]


# --------------------------------------------------------------------------------------------
# Istio and Kubernetes objects
# --------------------------------------------------------------------------------------------

def check_istio_port_name(var: str, value: Any) -> List[str]:
    invalid = [_error(var, value, 'is not a valid Istio port name', ALLOWED_ISTIO_PORT_NAME)]
    if not _is_str(value) or check_dns_label(var, value):
        return invalid
    protocol = value.split('-', 1)[0]
    if protocol not in ISTIO_PORT_PROTOCOLS:
        return invalid
    return []


def check_istio_ports(var: str, value: Any) -> List[str]:
    """Port name -> port; names follow Istio's protocol prefixes; each port used once."""
    if not isinstance(value, Mapping) or not value:
        return [_error(var, value, 'is not a mapping of port names to ports', ALLOWED_ISTIO_PORTS)]
    errors = []
    names_by_port: Dict[int, List[str]] = {}
    for name, port in value.items():
        item_var = f'{var}.{name}'
        name_errors = check_istio_port_name(f'{item_var} (port name)', name)
        port_errors = check_port(item_var, port)
        errors.extend(name_errors + port_errors)
        if not port_errors:
            names_by_port.setdefault(_as_int(port), []).append(str(name))
    for port, names in sorted(names_by_port.items()):
        if len(names) > 1:
            errors.append(_error(var, port, f"is used by more than one port name ({', '.join(names)})",
                                 'each port under one name'))
    return errors


check_label_value = _string_check(
    lambda value: value == '' or (len(value) <= 63 and _LABEL_NAME_RE.match(value)),
    'is not a valid label value', ALLOWED_LABEL_VALUE)


def check_label_key(var: str, value: Any) -> List[str]:
    invalid = [_error(var, value, 'is not a valid label key', ALLOWED_LABEL_KEY)]
    if not _is_str(value):
        return invalid
    prefix, sep, name = value.rpartition('/')
    if sep and (not prefix or check_dns_subdomain(var, prefix)):
        return invalid
    if not name or len(name) > 63 or not _LABEL_NAME_RE.match(name):
        return invalid
    return []


def check_labels(var: str, value: Any) -> List[str]:
    if not isinstance(value, Mapping):
        return [_error(var, value, 'is not a mapping of labels', ALLOWED_LABELS)]
    return [error for key, label_value in value.items()
            for error in check_label_key(f'{var} (label key)', key) + check_label_value(f'{var}.{key}', label_value)]


def check_locality(var: str, value: Any) -> List[str]:
    if _is_str(value):
        parts = value.split('/')
        if 1 <= len(parts) <= 3 and all(_LOCALITY_PART_RE.match(part) for part in parts):
            return []
    return [_error(var, value, 'is not a valid locality', ALLOWED_LOCALITY)]


# --------------------------------------------------------------------------------------------
# Groups of checks, by the name a role passes in `checks`
# --------------------------------------------------------------------------------------------

# check(var, value, variables) -> errors; `allowed` is what a missing required variable is told.
Rule = namedtuple('Rule', ['var', 'check', 'required', 'allowed'])


# Istio's ReadinessProbe (WorkloadGroup spec.probe; readinessProbe of a proxy's mesh config), as Istio's API has it.
PROBE_HANDLERS = ('httpGet', 'tcpSocket', 'exec', 'grpc')
PROBE_NUMBERS = ('initialDelaySeconds', 'timeoutSeconds', 'periodSeconds', 'successThreshold', 'failureThreshold')
_PROBE_HANDLER_KEYS = {
    'httpGet': ('path', 'port', 'host', 'scheme', 'httpHeaders'),
    'tcpSocket': ('host', 'port'),
    'exec': ('command',),
    'grpc': ('port', 'service'),
}
ALLOWED_PROBE = ('a mapping with exactly one of httpGet {port, path, host, scheme, httpHeaders}, tcpSocket {port, host}, '
                 'exec {command}, grpc {port, service}, and optionally %s (integers 0-2147483647; thresholds '
                 'and periodSeconds at least 1), as Istio\'s ReadinessProbe' % ', '.join(PROBE_NUMBERS))


def check_readiness_probe(var: str, value: Any, allow_empty: bool = False) -> List[str]:
    """An Istio ReadinessProbe: one handler (its port a valid port), known keys only, whole-number timings."""
    if allow_empty and value in ({}, None):
        return []
    if not isinstance(value, Mapping) or not value:
        return [_error(var, value, 'is not a probe mapping', ALLOWED_PROBE)]
    errors = []  # type: List[str]
    for key in value:
        if key not in PROBE_HANDLERS + PROBE_NUMBERS:
            errors.append(_error('%s.%s' % (var, key), value[key], 'is not a known field', ALLOWED_PROBE))
    handlers = [key for key in PROBE_HANDLERS if key in value]
    if len(handlers) != 1:
        errors.append(_error(var, value, 'has %d handlers (%s)' % (len(handlers), ', '.join(handlers) or 'none'),
                             ALLOWED_PROBE))
    for key in PROBE_NUMBERS:
        if key not in value:
            continue
        number = _as_int(value[key])
        low = 1 if key in ('periodSeconds', 'successThreshold', 'failureThreshold') else 0
        if number is None or isinstance(value[key], bool) or not low <= number <= 2147483647:
            errors.append(_error('%s.%s' % (var, key), value[key], 'is not allowed', 'integer %d-2147483647' % low))
    for handler in handlers:
        body = value[handler]
        where = '%s.%s' % (var, handler)
        if not isinstance(body, Mapping):
            errors.append(_error(where, body, 'is not a mapping', ALLOWED_PROBE))
            continue
        for key in body:
            if key not in _PROBE_HANDLER_KEYS[handler]:
                errors.append(_error('%s.%s' % (where, key), body[key], 'is not a known field',
                                     'one of ' + ', '.join(_PROBE_HANDLER_KEYS[handler])))
        if handler == 'exec':
            command = body.get('command')
            if not isinstance(command, list) or not command or not all(_is_str(c) and c for c in command):
                errors.append(_error(where + '.command', command, 'is not a command',
                                     'a non-empty list of non-empty strings'))
            continue
        errors.extend(check_port(where + '.port', body.get('port')))
        host = body.get('host')
        if host not in (None, '') and check_ip_address(where + '.host', host) and check_dns_subdomain(where, host):
            errors.append(_error(where + '.host', host, 'is not an address or a host name',
                                 'an IP address (such as 127.0.0.1 for an app on loopback) or a DNS name'))
        if handler == 'httpGet':
            if body.get('path') not in (None, '') and not (_is_str(body['path']) and body['path'].startswith('/')):
                errors.append(_error(where + '.path', body['path'], 'is not a path', "a string starting with '/'"))
            if body.get('scheme') not in (None, '', 'HTTP', 'HTTPS'):
                errors.append(_error(where + '.scheme', body['scheme'], 'is not allowed', 'HTTP or HTTPS'))
    return errors


def _simple(check: Callable[[str, Any], List[str]]) -> Callable[[str, Any, Mapping], List[str]]:
    return lambda var, value, variables: check(var, value)


def _admin_address_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    return check_admin_address(var, value, variables.get('envoy_admin_allow_non_loopback') is True)


def _spiffe_id_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    trust_domain = variables.get('fleetmesh_trust_domain')
    return check_spiffe_id(var, value, trust_domain if not check_trust_domain('', trust_domain) else None)


FLEETMESH_MODEL_RULES = [  # who the workload is
    Rule('fleetmesh_service', _simple(check_dns_label), True, ALLOWED_DNS_LABEL),
    Rule('fleetmesh_namespace', _simple(check_dns_label), True, ALLOWED_DNS_LABEL),
    Rule('fleetmesh_service_account', _simple(check_dns_subdomain), True, ALLOWED_DNS_SUBDOMAIN),
    Rule('fleetmesh_ports', _simple(check_istio_ports), True, ALLOWED_ISTIO_PORTS),
] + [  # where and how the workload is reached, and in which mesh
    Rule('fleetmesh_labels', _simple(check_labels), False, ALLOWED_LABELS),
    Rule('fleetmesh_network', _simple(check_label_value), False, ALLOWED_LABEL_VALUE),
    Rule('fleetmesh_locality', _simple(check_locality), False, ALLOWED_LOCALITY),
    Rule('fleetmesh_weight', _simple(check_weight), False, ALLOWED_WEIGHT),
    Rule('fleetmesh_address', _simple(check_ip_address), False, ALLOWED_IP),
    Rule('fleetmesh_service_addresses', _simple(check_unique_addresses), False, ALLOWED_ADDRESSES),
    Rule('fleetmesh_trust_domain', _simple(check_trust_domain), True, ALLOWED_TRUST_DOMAIN),
    Rule('fleetmesh_cluster_id', _simple(check_label_value), False, ALLOWED_LABEL_VALUE),
    Rule('fleetmesh_mesh_id', _simple(check_label_value), False, ALLOWED_LABEL_VALUE),
]


def _int_range_rule(low, high):
    def rule(var, value, variables):
        number = _as_int(value)
        if number is None or not low <= number <= high:
            return [_error(var, value, 'is not allowed', 'integer %d-%d' % (low, high))]
        return []
    return rule


def _endpoints_ports_rule(key):
    # Ports inside envoy_listeners[*].port and envoy_clusters[*].endpoints[*].port.
    def rule(var, value, variables):
        errors = []
        if not isinstance(value, list):
            return [_error(var, value, 'is not a list', 'a list of dicts')]
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                errors.append(_error('%s[%d]' % (var, i), item, 'is not a dict', 'a dict'))
                continue
            if key == 'listeners':
                errors.extend(check_port('%s[%d].port' % (var, i), item.get('port')))
            else:
                for j, ep in enumerate(item.get('endpoints') or []):
                    port = ep.get('port') if isinstance(ep, Mapping) else None
                    errors.extend(check_port('%s[%d].endpoints[%d].port' % (var, i, j), port))
        return errors
    return rule


ALLOWED_STATS_ADDRESS = 'an IPv4 address, 0.0.0.0 for every address of the host'
ALLOWED_STATS_PORT = ('integer 1-65535, not envoy_admin_port and not the port of a listener in envoy_listeners on the '
                      'same (or every) address')
ISTIO_SIDECAR_STATS_PORT = 15090


def _stats_address_rule(var, value, variables):
    address = _ip(value)
    if address is None or address.version != 4:
        return [_error(var, value, 'is not a valid stats listener address', ALLOWED_STATS_ADDRESS)]
    return []


def _stats_port_rule(var, value, variables):
    """The Prometheus stats listener's port: a port, not the admin port, no listener's, not the Istio sidecar's."""
    if variables.get('envoy_stats_enabled', True) is False:
        return check_port(var, value)
    errors = check_port(var, value)
    if errors:
        return errors
    port = _as_int(value)
    address = variables.get('envoy_stats_address', '0.0.0.0')
    if _as_int(variables.get('envoy_admin_port', 9901)) == port:
        return [_error(var, value, 'is the port of the admin interface (envoy_admin_port)', ALLOWED_STATS_PORT)]
    listeners = variables.get('envoy_listeners')
    for i, listener in enumerate(listeners if isinstance(listeners, list) else []):
        if not isinstance(listener, Mapping) or _as_int(listener.get('port')) != port:
            continue
        l_address = listener.get('address', '0.0.0.0')
        if l_address == address or '0.0.0.0' in (l_address, address):
            return [_error(var, value, 'is the port of envoy_listeners[%d] (%s on %s)' % (i, listener.get('name'), l_address),
                           ALLOWED_STATS_PORT)]
    if (port == ISTIO_SIDECAR_STATS_PORT and variables.get('fleetmesh_istio_sidecar') is True
            and variables.get('fleetmesh_envoy', True) is not False):
        return [_error(var, value, "is the Istio sidecar's own Prometheus port, and this host runs the sidecar "
                       '(fleetmesh_istio_sidecar: true)', 'another port, e.g. 15091, or envoy_stats_enabled: false')]
    return []


ENVOY_RULES = [
    Rule('envoy_instance', _simple(check_dns_label), False, ALLOWED_DNS_LABEL),
    Rule('envoy_base_id', _int_range_rule(0, 65535), False, 'integer 0-65535'),
    Rule('envoy_keep_versions', _int_range_rule(1, 20), False, 'integer 1-20'),
    Rule('envoy_listeners', _endpoints_ports_rule('listeners'), False, 'a list of listeners'),
    Rule('envoy_clusters', _endpoints_ports_rule('clusters'), False, 'a list of clusters'),
    Rule('envoy_version', _simple(check_semver), True, ALLOWED_SEMVER),
    Rule('envoy_install_method', _simple(check_install_method), False, 'one of ' + ', '.join(ENVOY_INSTALL_METHODS)),
    Rule('envoy_admin_allow_non_loopback', _simple(check_bool), False, ALLOWED_BOOL),
    Rule('envoy_admin_address', _admin_address_rule, False, ALLOWED_ADMIN_ADDRESS),
    Rule('envoy_admin_port', _simple(check_port), False, ALLOWED_PORT),
    Rule('envoy_stats_enabled', _simple(check_bool), False, ALLOWED_BOOL),
    Rule('envoy_stats_address', _stats_address_rule, False, ALLOWED_STATS_ADDRESS),
    Rule('envoy_stats_port', _stats_port_rule, False, ALLOWED_STATS_PORT),
]

WORKLOAD_CERTS_RULES = [
    Rule('fleetmesh_trust_domain', _simple(check_trust_domain), True, ALLOWED_TRUST_DOMAIN),
    Rule('fleetmesh_namespace', _simple(check_dns_label), True, ALLOWED_DNS_LABEL),
    Rule('fleetmesh_service_account', _simple(check_dns_subdomain), True, ALLOWED_DNS_SUBDOMAIN),
    Rule('workload_certs_spiffe_id', _spiffe_id_rule, False, ALLOWED_SPIFFE_ID),
    Rule('workload_certs_sans', check_workload_sans, False, 'a list of ' + ALLOWED_SAN),
    Rule('workload_certs_source', _workload_source_rule, False, 'one of ' + ', '.join(WORKLOAD_CERTS_SOURCES)),
    Rule('workload_certs_key_type', lambda var, value, variables: check_choice(var, value, WORKLOAD_CERTS_KEY_TYPES),
         False, 'one of ' + ', '.join(WORKLOAD_CERTS_KEY_TYPES)),
    Rule('workload_certs_rsa_key_size', _workload_rsa_key_size_rule, False, 'one of 2048, 3072, 4096'),
    Rule('workload_certs_lifetime', _simple(check_duration), False, ALLOWED_DURATION),
    Rule('workload_certs_renew_before', _workload_renew_before_rule, False, ALLOWED_DURATION),
    Rule('workload_certs_dir', _simple(check_absolute_path), False, ALLOWED_ABSOLUTE_PATH),
    Rule('workload_certs_owner', _simple(check_posix_name), False, ALLOWED_POSIX_NAME),
    Rule('workload_certs_group', _simple(check_posix_name), False, ALLOWED_POSIX_NAME),
]

ISTIO_SIDECAR_RULES = FLEETMESH_MODEL_RULES + [
    Rule('istio_sidecar_version', _simple(check_semver), False, ALLOWED_SEMVER),
    Rule('istio_sidecar_service_cidr', _simple(check_cidr_list), False, ALLOWED_CIDR),
]

# --- istio_sidecar: the role's own variables (the model rules above come first) ---------------

ISTIO_SIDECAR_STATES = ('present', 'absent')
ISTIO_SIDECAR_PACKAGE_SOURCES = ('file', 'url', 'repository')
ALLOWED_PORT_LIST = 'a list of ports 1-65535, or a comma separated string of them'
ALLOWED_INBOUND_PORTS = ALLOWED_PORT_LIST + ", '*' for every port, or [] for the ports of fleetmesh_ports"
ALLOWED_HOST_PORT = 'host:port with a DNS name or IP address and a port 1-65535, e.g. istiod.istio-system.svc:15012'
ALLOWED_SHA256 = 'a sha256 of 64 hexadecimal digits'
ALLOWED_PACKAGE_SHA256 = "a mapping with the key deb (Debian hosts) and/or rpm (RedHat hosts), each " + ALLOWED_SHA256
ALLOWED_ENV_MAPPING = ('a mapping of environment variable names ([A-Z_][A-Z0-9_]*) to strings, numbers, booleans '
                       'or lists of them')
ALLOWED_URL = 'an http://, https:// or file:// URL'
ALLOWED_AUDIENCE = 'a non-empty audience without spaces, e.g. istio-ca'
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_URL_RE = re.compile(r'^(https?|file)://[^\s]+$')


def check_port_list(var: str, value: Any, allow_star: bool = False) -> List[str]:
    """Ports as a list or a comma separated string (as cluster.env holds them); '*' when allowed."""
    if allow_star and value == '*':
        return []
    if _is_str(value):
        items = [item.strip() for item in value.split(',')] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return [_error(var, value, 'is not a list of ports', ALLOWED_INBOUND_PORTS if allow_star else ALLOWED_PORT_LIST)]
    errors = []
    for index, item in enumerate(items):
        errors.extend(check_port(f'{var}[{index}]', item))
    return errors


def check_host_port(var: str, value: Any) -> List[str]:
    invalid = [_error(var, value, 'is not a valid host:port', ALLOWED_HOST_PORT)]
    if not _is_str(value):
        return invalid
    host, sep, port = value.rpartition(':')
    host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    if not sep or not host or check_port(var, port):
        return invalid
    if _ip(host) is None and check_dns_subdomain(var, host):
        return invalid
    return []


check_sha256 = _string_check(_SHA256_RE.match, 'is not a valid sha256', ALLOWED_SHA256)


check_dns_name_list = _list_check(check_dns_subdomain, 'DNS names', ALLOWED_DNS_SUBDOMAIN)


def check_env_mapping(var: str, value: Any) -> List[str]:
    """Extra cluster.env or proxyMetadata entries: valid names, scalar values (lists are joined with ',')."""
    if not isinstance(value, Mapping):
        return [_error(var, value, 'is not a mapping', ALLOWED_ENV_MAPPING)]
    errors = []
    for name, item in value.items():
        errors.extend(check_env_name(f'{var} (name)', name))
        scalar = (str, int, float)
        if not (isinstance(item, scalar) or (isinstance(item, (list, tuple))
                                             and all(isinstance(part, scalar) for part in item))):
            errors.append(_error(f'{var}.{name}', item, 'is not a valid value', ALLOWED_ENV_MAPPING))
        elif _is_str(item) and '\x00' in item:
            errors.append(_error(f'{var}.{name}', item, 'contains a NUL byte', ALLOWED_ENV_MAPPING))
    return errors


def _sidecar_source_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    errors = check_choice(var, value, ISTIO_SIDECAR_PACKAGE_SOURCES)
    if errors:
        return errors
    if value == 'url':
        url = variables.get('istio_sidecar_package_base_url')
        if not _is_str(url) or not _URL_RE.match(url):
            errors.append(_error('istio_sidecar_package_base_url', url, 'is not a valid URL', ALLOWED_URL
                                 + ' under which deb/istio-sidecar.deb and rpm/istio-sidecar.rpm are found '
                                 f'(needed with {var}: url)'))
        sums = variables.get('istio_sidecar_package_sha256')
        family = variables.get('ansible_os_family')
        kind = {'Debian': 'deb', 'RedHat': 'rpm'}.get(family)
        if not isinstance(sums, Mapping):
            errors.append(_error('istio_sidecar_package_sha256', sums, 'is not a mapping', ALLOWED_PACKAGE_SHA256))
        elif kind and not sums.get(kind):
            errors.append(f'istio_sidecar_package_sha256.{kind}: is not set; allowed: {ALLOWED_SHA256} '
                          f'(needed with {var}: url on a {family} host)')
        else:
            for key, item in sums.items():
                if key not in ('deb', 'rpm'):
                    errors.append(_error(f'istio_sidecar_package_sha256 (key {key})', key, 'is not a package type',
                                         ALLOWED_PACKAGE_SHA256))
                elif item:
                    errors.extend(check_sha256(f'istio_sidecar_package_sha256.{key}', item))
    if value == 'repository':
        url = variables.get('istio_sidecar_package_repo_url')
        if not _is_str(url) or not _URL_RE.match(url):
            errors.append(_error('istio_sidecar_package_repo_url', url, 'is not a valid URL', ALLOWED_URL
                                 + f' of a repository with deb/ and rpm/ below it (needed with {var}: repository)'))
    return errors


def _sidecar_eastwest_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    return [] if value == '' else check_ip_address(var, value)


def _sidecar_refresh_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    expiration = _as_int(variables.get('istio_sidecar_token_expiration'))
    number = _as_int(value)
    if number is None or number < 0 or (expiration is not None and number >= expiration):
        return [_error(var, value, 'is not allowed',
                       'integer seconds from 0 to less than istio_sidecar_token_expiration'
                       + (f' ({expiration})' if expiration is not None else ''))]
    return []


def _sidecar_audience_rule(var: str, value: Any, variables: Mapping) -> List[str]:
    if _is_str(value) and value and not re.search(r'\s', value):
        return []
    return [_error(var, value, 'is not a valid audience', ALLOWED_AUDIENCE)]


_ISTIO_SIDECAR_PATH_RULES = [
    Rule(name, _simple(check_absolute_path), False, ALLOWED_ABSOLUTE_PATH)
    for name in ('istio_sidecar_certs_src_dir', 'istio_sidecar_certs_dir', 'istio_sidecar_token_path',
                 'istio_sidecar_token_link')
]

_ISTIO_SIDECAR_STATE_RULE = Rule('istio_sidecar_state',
                                 lambda var, value, variables: check_choice(var, value, ISTIO_SIDECAR_STATES),
                                 False, 'one of ' + ', '.join(ISTIO_SIDECAR_STATES))

ISTIO_SIDECAR_RULES += [
    _ISTIO_SIDECAR_STATE_RULE,
    Rule('istio_sidecar_package_source', _sidecar_source_rule, False, 'one of ' + ', '.join(ISTIO_SIDECAR_PACKAGE_SOURCES)),
    Rule('istio_sidecar_inbound_ports', lambda var, value, variables: check_port_list(var, value, allow_star=True),
         False, ALLOWED_INBOUND_PORTS),
    Rule('istio_sidecar_local_exclude_ports', _simple(check_port_list), False, ALLOWED_PORT_LIST),
    Rule('istio_sidecar_discovery_address', _simple(check_host_port), False, ALLOWED_HOST_PORT),
    Rule('istio_sidecar_eastwest_address', _sidecar_eastwest_rule, False, ALLOWED_IP + ", or '' for no hosts entry"),
    Rule('istio_sidecar_hosts_extra_names', _simple(check_dns_name_list), False, 'a list of ' + ALLOWED_DNS_SUBDOMAIN),
    Rule('istio_sidecar_cluster_env_extra', _simple(check_env_mapping), False, ALLOWED_ENV_MAPPING),
    Rule('istio_sidecar_proxy_metadata_extra', _simple(check_env_mapping), False, ALLOWED_ENV_MAPPING),
    Rule('istio_sidecar_token_expiration', _int_range_rule(600, 604800), False, 'integer seconds 600-604800'),
    Rule('istio_sidecar_token_refresh_before', _sidecar_refresh_rule, False, 'integer seconds below the expiration'),
    Rule('istio_sidecar_token_audience', _sidecar_audience_rule, False, ALLOWED_AUDIENCE),
    Rule('istio_sidecar_ready_timeout', _int_range_rule(1, 3600), False, 'integer seconds 1-3600'),
    Rule('istio_sidecar_readiness_probe', lambda var, value, variables: check_readiness_probe(var, value, True),
         False, ALLOWED_PROBE + ", or {} for tcpSocket on the lowest port of fleetmesh_ports"),
] + [Rule(name, _simple(check_bool), False, ALLOWED_BOOL)
     for name in ('istio_sidecar_dns_capture', 'istio_sidecar_auto_register', 'istio_sidecar_intercept',
                  'istio_sidecar_require_ready')] + _ISTIO_SIDECAR_PATH_RULES

# Offboarding needs no inventory model: only where the files are.
ISTIO_SIDECAR_ABSENT_RULES = [_ISTIO_SIDECAR_STATE_RULE] + _ISTIO_SIDECAR_PATH_RULES

CHECKS: Dict[str, List[Rule]] = {
    'fleetmesh_model': FLEETMESH_MODEL_RULES,
    'envoy': ENVOY_RULES,
    'workload_certs': WORKLOAD_CERTS_RULES,
    'istio_sidecar': ISTIO_SIDECAR_RULES,
    'istio_sidecar_absent': ISTIO_SIDECAR_ABSENT_RULES,
    'mesh_registration': FLEETMESH_MODEL_RULES,
}


def validate_model(variables: Mapping, checks: Iterable[str]) -> List[str]:
    """Run the named groups of checks over ``variables`` and return every error.

    A variable named by several groups is checked once. A variable that is absent or None
    counts as not set: an error when its rule is required, skipped otherwise.
    """
    if not isinstance(variables, Mapping):
        return [_error('vars', variables, 'is not a mapping', 'a mapping of variable names to values')]
    errors: List[str] = []
    seen = set()
    for name in checks:
        rules = CHECKS.get(name) if _is_str(name) else None
        if rules is None:
            errors.append(_error('checks', name, 'is not a known check', 'one of ' + ', '.join(sorted(CHECKS))))
            continue
        for rule in rules:
            if rule.var in seen:
                continue
            seen.add(rule.var)
            value = variables.get(rule.var)
            if value is None:
                if rule.required:
                    errors.append(f'{rule.var}: is not set; allowed: {rule.allowed}')
                continue
            errors.extend(check_no_control(rule.var, value, allow_tab=not rule.var.startswith('fleetmesh_'))
                          or rule.check(rule.var, value, variables))
    return errors


def ensure(check: Callable[..., List[str]], var: str, value: Any, *args: Any) -> Any:
    """Run one check and raise ValidationError with its messages; return the value when fine."""
    errors = check(var, value, *args)
    if errors:
        raise ValidationError(errors)
    return value
