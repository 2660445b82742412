# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Transport and authentication: one client per run, with the ``kubernetes`` package's kubeconfig handling.

Where the cluster is and how to authenticate come from the ``kubernetes`` package: kubeconfig files (merged
as kubectl merges ``$KUBECONFIG``), exec credential plugins, OIDC and the other auth providers, tokens and
token files, client certificates, proxies (``proxy-url``, HTTP and SOCKS, ``no_proxy``) and, as the last
resort, the in-cluster service account. Options given to a plugin override the kubeconfig's; an option that
is not given is read from ``K8S_AUTH_<OPTION>`` in the environment, as kubernetes.core reads it. A kubeconfig
with static credentials only (a token or a client certificate, no proxy) is read here instead, to the same
settings (``plain_settings``), without importing the package (a quarter of a second).

Requests go to one urllib3 pool sized to the parallelism, thread safe: the package's REST transport's pool
(``kubernetes.client.rest``), with the package's credentials, which it refreshes when they expire; or for static
credentials a pool built the same way. Bodies are plain JSON, never the package's generated models, so that
thousands of objects cost what their JSON costs. ``KubeClient.map`` runs requests in parallel on a bounded pool.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import importlib.util
import json
import os
import re
import ssl
import tempfile
import threading
import traceback
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode
from urllib.request import getproxies

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import (
    AUTH_ARGUMENT_SPEC,
    PROXY_HEADERS_SPEC,
)

# The kubernetes package is imported when a kubeconfig needs it (see plain_settings): importing it costs about
# 0.25 s of every run (oauthlib, requests, pydantic, dateutil, PyYAML, ...).
try:
    import urllib3
    try:
        from urllib3 import HTTPHeaderDict  # one header per impersonated group
    except ImportError:  # urllib3 1.26
        from urllib3._collections import HTTPHeaderDict
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_KUBERNETES = importlib.util.find_spec('kubernetes') is not None
    KUBERNETES_IMPORT_ERROR = None if HAS_KUBERNETES else "ModuleNotFoundError: No module named 'kubernetes'"


def _kubernetes() -> Any:
    """The parts of the kubernetes package the layer uses (imported on first use)."""
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration
    from kubernetes.client.rest import RESTClientObject
    from kubernetes.config.config_exception import ConfigException
    return _Package(kube_config, Configuration, RESTClientObject, ConfigException)


_Package = namedtuple('_Package', ['kube_config', 'Configuration', 'RESTClientObject', 'ConfigException'])

DEFAULT_PARALLEL = 8
MAX_PARALLEL = 64
LIST_CHUNK = 500
ENV_PREFIX = 'K8S_AUTH_'
USER_AGENT = 'fleetmesh.envoy'
# Says which user variables set the kubeconfig, in messages about its identity.
KUBECONFIG_VARS = 'fleetmesh_kubeconfig (or kubeconfig in module_defaults for group/fleetmesh.envoy.kube)'

Resource = namedtuple('Resource', ['group', 'version', 'kind', 'plural', 'namespaced'])
Response = namedtuple('Response', ['status', 'data', 'warnings'])

_FORBIDDEN_RE = re.compile(r'(?P<user>User "[^"]*")? ?cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)" '
                           r'in API group "(?P<group>[^"]*)"(?: in the namespace "(?P<namespace>[^"]+)")?')


class KubeError(Exception):
    """A failure to report to the user as is (the message says what and why)."""

    def __init__(self, message: str, details: Optional[Dict[str, Any]] = None, key: Any = None) -> None:
        super(KubeError, self).__init__(message)
        self.message = message
        self.details = details or {}
        self.key = key or message  # errors with one key are reported once


def api_version(resource: Resource) -> str:
    return '%s/%s' % (resource.group, resource.version) if resource.group else resource.version


def resource_name(resource: Resource) -> str:
    """``endpointslices.discovery.k8s.io``, or ``services`` for the core group (as RBAC names them)."""
    return '%s.%s' % (resource.plural, resource.group) if resource.group else resource.plural


def resource_path(resource: Resource, namespace: Optional[str] = None, name: Optional[str] = None) -> str:
    base = '/apis/%s/%s' % (resource.group, resource.version) if resource.group else '/api/%s' % resource.version
    if resource.namespaced and namespace:
        base += '/namespaces/%s' % quote(namespace, safe='')
    base += '/' + resource.plural
    if name:
        base += '/' + quote(name, safe='')
    return base


def split_api_version(value: str) -> Tuple[str, str]:
    """(group, version) of an apiVersion: ``('', 'v1')`` for ``v1``."""
    group, _sep, version = value.rpartition('/')
    return group, version


def object_ref(kind: str, namespace: Optional[str], name: str) -> str:
    return '%s %s%s' % (kind, '%s/' % namespace if namespace else '', name)


def forbidden_error(verb: str, resource: Resource, namespace: Optional[str], needed_for: str,
                    who: Optional[str] = None) -> KubeError:
    """A verb the kubeconfig's identity may not use, saying for what it is needed and which variable to change."""
    where = ' in namespace %s' % namespace if namespace else (' in all namespaces' if resource.namespaced else '')
    return KubeError("forbidden: the kubeconfig's identity cannot '%s' '%s'%s (%sneeded for %s). Grant that identity "
                     "the verb (the collection's ClusterRole fleetmesh-registrar has those registration needs), or "
                     "point %s at a kubeconfig whose identity has it"
                     % (verb, resource_name(resource), where, 'it is %s; ' % who if who else '', needed_for,
                        KUBECONFIG_VARS),
                     {'verb': verb, 'resource': resource_name(resource), 'namespace': namespace},
                     key=('forbidden', verb, resource_name(resource), namespace))


# --------------------------------------------------------------------------------------------
# Options and configuration
# --------------------------------------------------------------------------------------------

def auth_options(params: Mapping, environ: Optional[Mapping] = None) -> Dict[str, Any]:
    """Every authentication option: as given, else from ``K8S_AUTH_<OPTION>`` (or an alias, as
    ``K8S_AUTH_VERIFY_SSL``) like kubernetes.core; ``K8S_AUTH_PROXY_HEADERS_<HEADER>`` for proxy_headers."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, spec in AUTH_ARGUMENT_SPEC.items():
        value = params.get(name)
        if value is None and name == 'proxy_headers':
            value = dict((key, environ[ENV_PREFIX + 'PROXY_HEADERS_' + key.upper()]) for key in PROXY_HEADERS_SPEC
                         if environ.get(ENV_PREFIX + 'PROXY_HEADERS_' + key.upper()) is not None) or None
        elif value is None:
            value = _env_option(name, spec, environ)
        out[name] = value
    return out


def _env_option(name: str, spec: Mapping, environ: Mapping) -> Any:
    for env_name in [name] + list(spec.get('aliases') or []):
        raw = environ.get(ENV_PREFIX + env_name.upper())
        if raw is None:
            continue
        kind = spec.get('type')
        if kind == 'bool':
            return raw.lower() not in ('0', 'false', 'no', 'off', '')
        if kind == 'list':
            return [item for item in raw.split(',') if item]
        if kind == 'int':
            try:
                return int(raw)
            except ValueError:
                raise KubeError('%s%s: %r is not an integer' % (ENV_PREFIX, env_name.upper(), raw)) from None
        return os.path.expanduser(raw) if kind == 'path' else raw
    return None


def load_configuration(auth: Mapping) -> Any:
    """A ``kubernetes.client.Configuration`` for the options (see ``auth_options``), never the package's global one.

    A kubeconfig is read unless a host with a token or a client certificate and key is given without one
    (or a context). Without a kubeconfig option: ``$KUBECONFIG`` (merged) or ``~/.kube/config``, then the
    in-cluster service account when running in a pod.
    """
    cfg = _kubernetes().Configuration()
    direct = auth.get('host') and (auth.get('api_key') or (auth.get('client_cert') and auth.get('client_key')))
    if auth.get('kubeconfig') or auth.get('context') or not direct:
        _load_kubeconfig(cfg, auth.get('kubeconfig'), auth.get('context'), bool(auth.get('persist_config')))
    overrides = [(attribute, auth[option]) for option, attribute in (
        ('host', 'host'), ('ca_cert', 'ssl_ca_cert'), ('client_cert', 'cert_file'), ('client_key', 'key_file'),
        ('validate_certs', 'verify_ssl'), ('proxy', 'proxy'), ('no_proxy', 'no_proxy')) if auth.get(option) is not None]
    for attribute, value in overrides:
        setattr(cfg, attribute, value)
    if auth.get('api_key'):
        token = auth['api_key']
        cfg.api_key = {'BearerToken': token if token.startswith('Bearer ') else 'Bearer ' + token}
        cfg.refresh_api_key_hook = None  # not the kubeconfig's credentials any more
    _strip_tokens(cfg, overrides)
    if auth.get('proxy_headers'):
        cfg.proxy_headers = urllib3.util.make_headers(**dict((k, v) for k, v in auth['proxy_headers'].items()
                                                             if v is not None))
    return cfg


def _strip_tokens(cfg: Any, overrides: Sequence[Tuple[str, Any]] = ()) -> None:
    """Tokens without the line end of a token file (the package keeps it; kubectl does not), also when the
    package refreshes them; and the options' overrides kept (the package's refresh sets the kubeconfig's host,
    CA and client certificate again)."""
    refresh = cfg.refresh_api_key_hook

    def strip(conf):
        if refresh is not None:
            refresh(conf)  # the package's hook sets the token again, and itself as the hook
            conf.refresh_api_key_hook = strip
            for attribute, value in overrides:
                setattr(conf, attribute, value)
        for key, value in list(conf.api_key.items()):
            if isinstance(value, str):
                conf.api_key[key] = value.strip()

    strip(cfg)
    if refresh is not None:
        cfg.refresh_api_key_hook = strip


def _load_kubeconfig(cfg: Any, path: Optional[str], context: Optional[str], persist: bool) -> None:
    where = path or '(default: $KUBECONFIG or ~/.kube/config)'
    if path:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise KubeError('cannot load the kubeconfig %s: no such file' % where)
    else:
        # Read here, not at import time as the package's default is.
        path = os.environ.get('KUBECONFIG') or '~/.kube/config'
        if not any(os.path.isfile(os.path.expanduser(p)) for p in path.split(os.pathsep) if p):
            if os.environ.get('KUBERNETES_SERVICE_HOST') and not context:
                try:
                    _kubernetes().kube_config.load_incluster_config(client_configuration=cfg)
                except (_kubernetes().ConfigException, OSError) as exc:
                    raise KubeError('cannot load the in-cluster configuration: %s' % redact(str(exc))) from None
                return
            raise KubeError('cannot load the kubeconfig %s: no such file, and not running in a cluster' % where)
    pkg = _kubernetes()
    try:
        pkg.kube_config.load_kube_config(config_file=path, context=context or _first_current_context(path),
                                         client_configuration=cfg, persist_config=persist)
    except (pkg.ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise KubeError('cannot load the kubeconfig %s%s: %s'
                        % (where, ' (context %s)' % json.dumps(context) if context else '',
                           _context_problem(path, context) or redact(str(exc)))) from None


def _first_current_context(paths: str) -> Optional[str]:
    """With several files in $KUBECONFIG, the current-context of the first file that sets one, as kubectl
    takes it (the package would take the last one)."""
    files = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
    for path in [p for p in files if os.path.isfile(p)] if len(files) > 1 else []:
        try:
            return _kubernetes().kube_config.list_kube_config_contexts(path)[1]['name']
        except Exception:  # pylint: disable=broad-except
            continue  # no current-context there
    return None


def _context_problem(path: str, context: Optional[str]) -> Optional[str]:
    """'context "x" not found (contexts: ...)' when that is why a kubeconfig did not load."""
    if not context:
        return None
    try:
        contexts, _current = _kubernetes().kube_config.list_kube_config_contexts(path)
    except Exception:  # pylint: disable=broad-except
        return None
    names = [str(c.get('name')) for c in contexts or []]
    if context in names:
        return None
    return 'context %s not found (contexts: %s)' % (json.dumps(context), ', '.join(names) or 'none')


# A kubeconfig whose user and cluster have only these keys (static credentials) is read here, to the settings the
# package gives it (tests/unit/test_kube_layer.py compares the two), without importing the package. Everything
# else goes to the package: exec plugins, auth providers, user names and passwords, proxies (proxy-url, options
# or environment), several files in $KUBECONFIG, the in-cluster account, persist_config, and any kubeconfig that
# does not read cleanly (the package then says what is wrong with it).
PLAIN_USER_KEYS = frozenset(('token', 'tokenFile', 'client-certificate', 'client-certificate-data', 'client-key',
                             'client-key-data'))
PLAIN_CLUSTER_KEYS = frozenset(('server', 'certificate-authority', 'certificate-authority-data',
                                'insecure-skip-tls-verify', 'tls-server-name'))
_TEMP_FILES = []  # type: List[str]


class PlainSettings:
    """What a ``kubernetes.client.Configuration`` holds for a kubeconfig with static credentials."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ssl_ca_cert = None  # type: Optional[str]
        self.ca_cert_data = None  # type: Optional[str]
        self.cert_file = None  # type: Optional[str]
        self.key_file = None  # type: Optional[str]
        self.verify_ssl = True
        self.tls_server_name = None  # type: Optional[str]
        self.authorization = None  # type: Optional[str]


class _NotPlain(Exception):
    """The kubeconfig needs the package."""


def plain_settings(auth: Mapping) -> Optional[PlainSettings]:
    """The settings of the options (see ``auth_options``) when they need nothing from the package, else None."""
    if auth.get('persist_config') or auth.get('proxy') or auth.get('proxy_headers') or \
            any(k != 'no' for k in getproxies()):
        return None
    try:
        direct = auth.get('host') and (auth.get('api_key') or (auth.get('client_cert') and auth.get('client_key')))
        if auth.get('kubeconfig') or auth.get('context') or not direct:
            settings = _plain_kubeconfig(auth.get('kubeconfig'), auth.get('context'))
        else:
            settings = PlainSettings('http://localhost')  # the package's default host, as a Configuration()
    except Exception:  # pylint: disable=broad-except
        return None  # _NotPlain, or a kubeconfig the package reads (or names what is wrong with)
    for option, attribute in (('host', 'host'), ('ca_cert', 'ssl_ca_cert'), ('client_cert', 'cert_file'),
                              ('client_key', 'key_file'), ('validate_certs', 'verify_ssl')):
        if auth.get(option) is not None:
            setattr(settings, attribute, auth[option])
            if option == 'ca_cert':
                settings.ca_cert_data = None
    if auth.get('api_key'):
        token = auth['api_key']
        settings.authorization = token if token.startswith('Bearer ') else 'Bearer ' + token
    if settings.authorization is not None:
        settings.authorization = settings.authorization.strip()  # as _strip_tokens
    return settings


def _plain_kubeconfig(path: Optional[str], context: Optional[str]) -> PlainSettings:
    if path:
        path = os.path.expanduser(path)
    else:
        paths = [p for p in (os.environ.get('KUBECONFIG') or '~/.kube/config').split(os.pathsep) if p]
        if len(paths) != 1:
            raise _NotPlain()  # merged as kubectl merges them: the package
        path = os.path.expanduser(paths[0])
    with open(path) as stream:
        text = stream.read()
    if text.lstrip().startswith('{'):
        config = json.loads(text)
    else:
        import yaml
        config = yaml.load(text, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
    context = context or config['current-context']
    ctx = _named(config.get('contexts'), context)['context']
    user = {}  # type: Mapping
    if ctx.get('user') and config.get('users'):
        entries = [u for u in config['users'] if u['name'] == ctx['user']]
        if len(entries) > 1:
            raise _NotPlain()
        user = entries[0]['user'] if entries else {}
    cluster = _named(config.get('clusters'), ctx['cluster'])['cluster']
    if not isinstance(user, Mapping) or not isinstance(cluster, Mapping) or set(user) - PLAIN_USER_KEYS or \
            set(cluster) - PLAIN_CLUSTER_KEYS or not cluster.get('server'):
        raise _NotPlain()
    base = os.path.abspath(os.path.dirname(path))
    settings = PlainSettings(cluster['server'].rstrip('/'))
    if settings.host.startswith('https'):
        if 'certificate-authority-data' in cluster:
            settings.ca_cert_data = _file_or_data(cluster, 'certificate-authority', base, as_file=False)
        else:
            settings.ssl_ca_cert = _file_or_data(cluster, 'certificate-authority', base)
        settings.cert_file = _file_or_data(user, 'client-certificate', base)
        settings.key_file = _file_or_data(user, 'client-key', base)
    if 'insecure-skip-tls-verify' in cluster:
        settings.verify_ssl = not cluster['insecure-skip-tls-verify']
    if 'tls-server-name' in cluster:
        settings.tls_server_name = cluster['tls-server-name']
    if 'token' in user:
        token = user['token']
    elif 'tokenFile' in user:
        with open(os.path.normpath(os.path.join(base, user['tokenFile']))) as stream:
            token = stream.read()
    else:
        token = None
    if token:
        settings.authorization = 'Bearer %s' % token
    return settings


def _named(entries: Any, name: Any) -> Mapping:
    """The one entry of a kubeconfig list with that name."""
    found = [e for e in entries if e['name'] == name]
    if len(found) != 1:
        raise _NotPlain()
    return found[0]


def _file_or_data(obj: Mapping, key: str, base: str, as_file: bool = True) -> Optional[str]:
    """As the package reads KEY-data (base64, preferred when present) or KEY (a file, relative to the kubeconfig):
    a file name, or with ``as_file=False`` the PEM text of KEY-data."""
    if key + '-data' in obj:
        data = obj[key + '-data']
        if not data:
            return None
        raw = base64.standard_b64decode(data.encode() if isinstance(data, str) else data)
        if not as_file:
            return raw.decode('ascii')
        fd, name = tempfile.mkstemp(prefix='fleetmesh-kube-')  # mode 0600, removed when the process ends
        _TEMP_FILES.append(name)
        if len(_TEMP_FILES) == 1:
            import atexit
            atexit.register(_remove_temp_files)
        with os.fdopen(fd, 'wb') as stream:
            stream.write(raw)
        return name
    if key in obj:
        name = os.path.normpath(os.path.join(base, obj[key]))
        if not os.path.isfile(name):
            raise _NotPlain()  # the package names the missing file
        return name
    return None


def _remove_temp_files() -> None:
    for name in _TEMP_FILES:
        try:
            os.remove(name)
        except OSError:
            pass


def client_from_params(params: Mapping, parallel: int = DEFAULT_PARALLEL,
                       environ: Optional[Mapping] = None) -> 'KubeClient':
    """The client of a plugin's options (AUTH_ARGUMENT_SPEC), with K8S_AUTH_* for options not given."""
    if not HAS_KUBERNETES:
        raise KubeError(missing_required_lib('kubernetes'), {'exception': KUBERNETES_IMPORT_ERROR})
    auth = auth_options(params, environ)
    headers = OrderedDict()  # type: Dict[str, Any]
    if auth.get('impersonate_user'):
        headers['Impersonate-User'] = auth['impersonate_user']
    if auth.get('impersonate_groups'):
        headers['Impersonate-Group'] = list(auth['impersonate_groups'])
    settings = plain_settings(auth) or load_configuration(auth)
    return KubeClient(settings, parallel=parallel, request_timeout=auth.get('request_timeout') or 30, headers=headers)


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------

class KubeClient:
    """Talk to one API server, in parallel: with a ``kubernetes.client.Configuration`` (credentials the package
    refreshes, proxies) or ``PlainSettings`` (static credentials)."""

    def __init__(self, configuration: Any, parallel: int = DEFAULT_PARALLEL, request_timeout: int = 30,
                 headers: Optional[Mapping[str, Any]] = None) -> None:
        self.parallel = max(1, min(int(parallel or DEFAULT_PARALLEL), MAX_PARALLEL))
        self.url = (configuration.host or '').rstrip('/')
        if not self.url:
            raise KubeError('no API server URL: the kubeconfig names no server and no host was given')
        retries = urllib3.Retry(total=3, connect=2, read=0, status=2, backoff_factor=0.2,
                                status_forcelist=(429, 503), allowed_methods=None,
                                raise_on_status=False, respect_retry_after_header=True)
        if not configuration.verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._cfg = configuration
        if isinstance(configuration, PlainSettings):
            # What the package's RESTClientObject builds for these settings: one pool, kept alive, sized to parallel.
            pool_args = dict(cert_reqs=ssl.CERT_REQUIRED if configuration.verify_ssl else ssl.CERT_NONE,
                             ca_certs=configuration.ssl_ca_cert, ca_cert_data=configuration.ca_cert_data,
                             cert_file=configuration.cert_file, key_file=configuration.key_file, retries=retries,
                             maxsize=self.parallel)
            if configuration.tls_server_name:
                pool_args['server_hostname'] = configuration.tls_server_name
            self._pool = urllib3.PoolManager(**pool_args)
            self._config_error = ()  # type: Any
        else:
            pkg = _kubernetes()
            configuration.connection_pool_maxsize = self.parallel
            configuration.retries = retries
            # Fixed now, as the transport takes it now: else the package works the proxy out of the environment
            # again whenever it sets the token again, that is on every request.
            configuration.proxy = configuration.proxy
            self._pool = pkg.RESTClientObject(configuration).pool_manager
            self._config_error = pkg.ConfigException
        self._timeout = urllib3.Timeout(connect=min(10, request_timeout), read=request_timeout)
        extra = [(name, value) for name, values in (headers or {}).items()
                 for value in (values if isinstance(values, list) else [values])]
        self._base = OrderedDict([('User-Agent', USER_AGENT)])
        self._extra = []  # type: List[Tuple[str, str]]
        for name, value in extra:
            if name in self._base:
                self._extra.append((name, value))  # a second value of a header (impersonated groups)
            else:
                self._base[name] = value
        self._warnings = OrderedDict()  # type: Dict[str, None]
        self._lock = threading.Lock()
        self.requests = 0

    def close(self) -> None:
        self._pool.clear()

    # -- plumbing ------------------------------------------------------------------------------

    def _headers(self, content_type: Optional[str], accept: str) -> Any:
        headers = (HTTPHeaderDict if self._extra else dict)(self._base)
        headers['Accept'] = accept
        if content_type:
            headers['Content-Type'] = content_type
        for name, value in self._extra:
            headers.add(name, value)
        if isinstance(self._cfg, PlainSettings):
            if self._cfg.authorization:
                headers['authorization'] = self._cfg.authorization
            return headers
        # The package's credentials: it runs exec plugins and refreshes OIDC and expiring tokens here.
        for auth in self._cfg.auth_settings().values():
            if auth.get('in') == 'header' and auth.get('value'):
                headers[auth['key']] = auth['value']
        return headers

    def request(self, method: str, path: str, query: Optional[Sequence[Tuple[str, str]]] = None, body: Any = None,
                content_type: Optional[str] = None, accept: str = 'application/json') -> Response:
        url = self.url + path + ('?' + urlencode(list(query)) if query else '')
        data = None
        if body is not None:
            content_type = content_type or 'application/json'
            # JSON is YAML: apply patches (application/apply-patch+yaml) are sent as JSON too.
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(',', ':')).encode('utf-8')
        try:
            resp = self._pool.request(method, url, body=data, headers=self._headers(content_type, accept),
                                      timeout=self._timeout)
            raw = resp.data
        except urllib3.exceptions.HTTPError as exc:  # also TLS errors
            raise KubeError('cannot reach the Kubernetes API at %s: %s' % (self.url, _reason(exc))) from None
        except self._config_error as exc:  # refreshing the credentials (exec plugin, OIDC)
            raise KubeError('cannot get credentials for the Kubernetes API at %s: %s'
                            % (self.url, redact(str(exc)))) from None
        with self._lock:
            self.requests += 1
            for warning in resp.headers.getlist('Warning') if hasattr(resp.headers, 'getlist') else []:
                self._warnings[_warning_text(warning)] = None
        try:
            decoded = json.loads(raw.decode('utf-8')) if raw else None
        except ValueError:
            decoded = {'message': raw.decode('utf-8', 'replace')[:500]}
        return Response(resp.status, decoded, ())

    @property
    def warnings(self) -> List[str]:
        return list(self._warnings)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> List[Tuple[Any, Any, Optional[BaseException]]]:
        """Run fn over items on the bounded pool; returns (item, result, error) in order, never raises."""
        def call(item):
            try:
                return item, fn(item), None
            except KubeError as exc:
                return item, None, exc
            except Exception as exc:  # pylint: disable=broad-except
                return item, None, KubeError('%s: %s' % (type(exc).__name__, redact(str(exc))))
        items = list(items)
        if len(items) <= 1 or self.parallel == 1:
            return [call(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(items))) as pool:
            return list(pool.map(call, items))

    def check_response(self, resp: Response, verb: str, resource: Resource, namespace: Optional[str] = None,
                       name: Optional[str] = None, expect: Iterable[int] = (200, 201)) -> Any:
        if resp.status in expect:
            return resp.data
        raise self.error(resp, verb, resource, namespace, name)

    def error(self, resp: Response, verb: str, resource: Resource, namespace: Optional[str] = None,
              name: Optional[str] = None) -> KubeError:
        data = resp.data if isinstance(resp.data, Mapping) else {}
        message = redact(str(data.get('message') or ''))
        where = ' in namespace %s' % namespace if namespace else (' in all namespaces' if resource.namespaced else '')
        target = object_ref(resource.kind, namespace, name) if name else None
        if resp.status == 401:
            return KubeError('unauthorized: the Kubernetes API at %s rejected the credentials of the kubeconfig '
                             '(expired or wrong token or certificate?)' % self.url)
        if resp.status == 403:
            found = _FORBIDDEN_RE.search(message)
            return forbidden_error(found.group('verb') if found else verb, resource, namespace,
                                   target or 'this run', found.group('user') if found else None)
        if resp.status == 404 and namespace and 'namespaces "%s" not found' % namespace in message:
            return KubeError('namespace %s does not exist (needed for %s); create it first'
                             % (namespace, target or resource_name(resource)))
        if resp.status == 422 and target:
            return KubeError('%s was rejected by the API server: %s' % (target, message))
        detail = (': ' + message) if message else ''
        return KubeError('%s %s%s failed: HTTP %d %s%s'
                         % (verb, resource_name(resource), where, resp.status, data.get('reason') or '', detail))

    # -- discovery -------------------------------------------------------------------------------

    def discover(self, wanted: Sequence[Tuple[str, str, Sequence[str], bool]], hint: str = '') -> Dict[str, Resource]:
        """Resolve (kind, group, versions, required) to Resources with one request per group version.

        The first served version of each kind wins. A required kind that is not served is an error naming
        the group (and ``hint``); optional kinds are left out.
        """
        group_versions = []
        for _kind, group, versions, _required in wanted:
            for version in versions:
                if (group, version) not in group_versions:
                    group_versions.append((group, version))

        def fetch(gv):
            group, version = gv
            resp = self.request('GET', '/apis/%s/%s' % (group, version) if group else '/api/%s' % version)
            if resp.status == 404:
                return {}
            if resp.status != 200:
                raise self.error(resp, 'get', Resource(group, version, 'APIResourceList', version, False))
            return dict((r['kind'], r) for r in resp.data.get('resources', []) if '/' not in r['name'])

        served = {}
        for gv, result, error in self.map(fetch, group_versions):
            if error:
                raise error
            served[gv] = result
        found = {}
        missing = []
        for kind, group, versions, required in wanted:
            for version in versions:
                entry = served.get((group, version), {}).get(kind)
                if entry:
                    found[kind] = Resource(group, version, kind, entry['name'], bool(entry['namespaced']))
                    break
            else:
                if required:
                    missing.append('%s (%s %s)' % (kind, group or 'core', '/'.join(versions)))
        if missing:
            raise KubeError('the Kubernetes API at %s does not serve %s%s' % (self.url, ', '.join(missing), hint))
        return found

    def resource_for(self, api_version_: str, kind: str, required: bool = True) -> Optional[Resource]:
        """The Resource of one kind of one apiVersion (``v1``, ``projectcontour.io/v1``); None when not served."""
        group, version = split_api_version(api_version_)
        return self.discover([(kind, group, [version], required)]).get(kind)

    # -- reads -----------------------------------------------------------------------------------

    def list(self, resource: Resource, label_selector: Optional[str] = None, namespace: Optional[str] = None,
             metadata_only: bool = False, field_selector: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every object (all pages), optionally in one namespace and matching label and field selectors."""
        accept = ('application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json'
                  if metadata_only else 'application/json')
        items = []  # type: List[Dict[str, Any]]
        cont = None
        while True:
            query = [('limit', str(LIST_CHUNK))]
            if label_selector:
                query.append(('labelSelector', label_selector))
            if field_selector:
                query.append(('fieldSelector', field_selector))
            if cont:
                query.append(('continue', cont))
            resp = self.request('GET', resource_path(resource, namespace), query, accept=accept)
            data = self.check_response(resp, 'list', resource, namespace, expect=(200,))
            for item in data.get('items') or []:
                item.setdefault('apiVersion', api_version(resource))
                item.setdefault('kind', resource.kind)
                items.append(item)
            cont = (data.get('metadata') or {}).get('continue')
            if not cont:
                return items

    def get(self, resource: Resource, namespace: Optional[str], name: str) -> Optional[Dict[str, Any]]:
        resp = self.request('GET', resource_path(resource, namespace, name))
        if resp.status == 404:
            return None
        data = self.check_response(resp, 'get', resource, namespace, name, expect=(200,))
        data.setdefault('apiVersion', api_version(resource))
        data.setdefault('kind', resource.kind)
        return data


def _reason(exc: Any) -> str:
    reason = getattr(exc, 'reason', None) or exc
    text = str(reason)
    for marker in ('Connection refused', 'timed out', 'Name or service not known', 'certificate verify failed',
                   'No route to host'):
        if marker in text:
            found = re.search(r"(\[SSL: [A-Z_]+\][^'\")]*)", text) if 'certificate' in marker else None
            return marker.lower() if not found else found.group(1).strip()
    return redact(text)


def _warning_text(header: str) -> str:
    # RFC 7234: 299 - "text"
    found = re.match(r'^\s*\d{3}\s+\S+\s+"(.*)"\s*$', header)
    return found.group(1).replace('\\"', '"') if found else header


def redact(text: str) -> str:
    """Never echo a bearer token, even when a library puts one in an exception."""
    return re.sub(r'(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+', r'\1<redacted>', text)
