# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""One Kubernetes client per run: one discovery, server-side apply, pruning by ownership labels.

``KubeClient`` reads a kubeconfig (static credentials directly; exec plugins, auth providers and
in-cluster config through the ``kubernetes`` library) and then speaks plain REST over one ``urllib3``
pool (thread-safe, sized to the parallelism). ``discover`` resolves only the kinds a run
needs (one request per API group version, in parallel). ``reconcile`` compares the desired objects with
the live ones this registration set owns, applies what differs and deletes what is no longer desired:

* unchanged objects are recognised without a request: the fields this field manager owns (from
  ``metadata.managedFields``) equal the fields of the desired object, and every desired value is
  what the server holds;
* names that a desired object would take but that belong to objects without the ownership labels
  are refused (never touched) unless ``adopt``;
* RBAC is checked first with SelfSubjectAccessReviews for exactly the verbs the changes need, then
  the changes are tried with ``dryRun=All`` (every update and delete, one create per kind and
  namespace; check mode: everything, and stops there); only when all of that passes is anything
  written;
* errors name the URL (API unreachable), the verb and resource (403), the other field manager and
  its fields (409 conflict, with ``force``), or the object and the server's reason.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import atexit
import base64
import copy
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
import traceback
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg

try:
    from urllib.parse import quote, urlencode
except ImportError:  # pragma: no cover - Python 2 is not supported
    quote = urlencode = None

try:
    import urllib3
    from urllib3.exceptions import HTTPError as Urllib3HTTPError
    # The kubernetes library is imported only for kubeconfigs that need it (exec and auth-provider
    # credentials, in-cluster config): importing it costs more than a whole no-op run otherwise.
    HAS_KUBERNETES = importlib.util.find_spec('kubernetes') is not None
    KUBERNETES_IMPORT_ERROR = None if HAS_KUBERNETES else 'No module named kubernetes'
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()
    Urllib3HTTPError = Exception

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    yaml = None

FIELD_MANAGER = reg.FIELD_MANAGER
DEFAULT_PARALLEL = 8
MAX_PARALLEL = 64
LIST_CHUNK = 500
ADOPT_LIST_THRESHOLD = 8      # more candidate names than this in one namespace: list instead of get

# The options of plugins/doc_fragments/k8s_auth.py.
AUTH_ARGUMENT_SPEC = dict(
    kubeconfig=dict(type='path'),
    context=dict(type='str'),
    host=dict(type='str'),
    api_key=dict(type='str', no_log=True),
    ca_cert=dict(type='path', aliases=['ssl_ca_cert']),
    client_cert=dict(type='path', aliases=['cert_file']),
    client_key=dict(type='path', aliases=['key_file'], no_log=True),
    validate_certs=dict(type='bool', aliases=['verify_ssl']),
    request_timeout=dict(type='int', default=30),
)

Resource = namedtuple('Resource', ['group', 'version', 'kind', 'plural', 'namespaced'])


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


class KubeError(Exception):
    """A failure to report to the user as is (the message says what and why)."""

    def __init__(self, message: str, details: Optional[Dict[str, Any]] = None, key: Any = None) -> None:
        super(KubeError, self).__init__(message)
        self.message = message
        self.details = details or {}
        self.key = key or message  # errors with one key are reported once


Response = namedtuple('Response', ['status', 'data', 'warnings'])

_FORBIDDEN_RE = re.compile(r'(?P<user>User "[^"]*")? ?cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)" '
                           r'in API group "(?P<group>[^"]*)"(?: in the namespace "(?P<namespace>[^"]+)")?')
_CONFLICT_RE = re.compile(r'conflict with "(?P<manager>[^"]+)"(?: using (?P<version>\S+))?')


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------

class KubeClient:
    """Talk to one API server with the credentials of a kubeconfig (or explicit host/token/certificates)."""

    def __init__(self, kubeconfig: Optional[str] = None, context: Optional[str] = None, host: Optional[str] = None,
                 api_key: Optional[str] = None, ca_cert: Optional[str] = None, client_cert: Optional[str] = None,
                 client_key: Optional[str] = None, validate_certs: Optional[bool] = None,
                 request_timeout: int = 30, parallel: int = DEFAULT_PARALLEL) -> None:
        if not HAS_KUBERNETES:
            raise ImportError(KUBERNETES_IMPORT_ERROR)
        self.parallel = max(1, min(int(parallel or DEFAULT_PARALLEL), MAX_PARALLEL))
        cfg = Settings()
        if host is None or kubeconfig or context:
            cfg = load_kubeconfig(kubeconfig, context, allow_in_cluster=host is None)
        if host:
            cfg.host = host
        if api_key:
            cfg.token = api_key[len('Bearer '):] if api_key.startswith('Bearer ') else api_key
            cfg.library = None
        if ca_cert:
            cfg.ssl_ca_cert, cfg.ca_cert_data = ca_cert, None
        if client_cert:
            cfg.cert_file = client_cert
        if client_key:
            cfg.key_file = client_key
        if validate_certs is not None:
            cfg.verify_ssl = bool(validate_certs)
        self.url = (cfg.host or '').rstrip('/')
        if not self.url:
            raise KubeError('no API server URL: the kubeconfig names no server and no host was given')
        self._cfg = cfg
        self._timeout = urllib3.Timeout(connect=min(10, request_timeout), read=request_timeout)
        pool_args = {
            'num_pools': 2,
            'maxsize': self.parallel,
            'block': True,
            'cert_reqs': 'CERT_REQUIRED' if cfg.verify_ssl else 'CERT_NONE',
            'ca_certs': cfg.ssl_ca_cert,
            'cert_file': cfg.cert_file,
            'key_file': cfg.key_file,
            'retries': urllib3.Retry(total=3, connect=2, read=0, status=2, backoff_factor=0.2,
                                     status_forcelist=(429, 503), allowed_methods=None, raise_on_status=False,
                                     respect_retry_after_header=True),
        }
        ca_data = getattr(cfg, 'ca_cert_data', None)
        if ca_data:
            pool_args['ca_cert_data'] = ca_data
        if getattr(cfg, 'assert_hostname', None) is not None:
            pool_args['assert_hostname'] = cfg.assert_hostname
        if getattr(cfg, 'tls_server_name', None):
            pool_args['server_hostname'] = cfg.tls_server_name
        if not cfg.verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        proxy = getattr(cfg, 'proxy', None)
        if proxy:
            self._pool = urllib3.ProxyManager(proxy, proxy_headers=getattr(cfg, 'proxy_headers', None), **pool_args)
        else:
            self._pool = urllib3.PoolManager(**pool_args)
        self._warnings = OrderedDict()  # type: Dict[str, None]
        self._lock = threading.Lock()
        self.requests = 0

    # -- plumbing ------------------------------------------------------------------------------

    def _headers(self, content_type: Optional[str], accept: str) -> Dict[str, str]:
        headers = {'Accept': accept, 'User-Agent': 'fleetmesh.envoy/mesh_registration'}
        if content_type:
            headers['Content-Type'] = content_type
        if self._cfg.library is not None:  # credentials the kubernetes library refreshes (exec, auth-provider)
            for auth in self._cfg.library.auth_settings().values():
                if auth.get('in') == 'header' and auth.get('value'):
                    headers[auth['key']] = auth['value']
        elif self._cfg.token:
            headers['authorization'] = 'Bearer %s' % self._cfg.token
        if self._cfg.username and self._cfg.password and 'authorization' not in headers:
            headers.update(urllib3.util.make_headers(basic_auth='%s:%s' % (self._cfg.username, self._cfg.password)))
        return headers

    def request(self, method: str, path: str, query: Optional[Sequence[Tuple[str, str]]] = None, body: Any = None,
                content_type: Optional[str] = None, accept: str = 'application/json') -> Response:
        url = self.url + path + ('?' + urlencode(list(query)) if query else '')
        data = None
        if body is not None:
            data = json.dumps(body, separators=(',', ':')).encode('utf-8')
            content_type = content_type or 'application/json'
        try:
            resp = self._pool.request(method, url, body=data, headers=self._headers(content_type, accept),
                                      timeout=self._timeout, preload_content=True, redirect=False)
        except Urllib3HTTPError as exc:
            raise KubeError('cannot reach the Kubernetes API at %s: %s' % (self.url, _reason(exc))) from None
        with self._lock:
            self.requests += 1
            for warning in resp.headers.getlist('Warning') if hasattr(resp.headers, 'getlist') else []:
                self._warnings[_warning_text(warning)] = None
        try:
            decoded = json.loads(resp.data.decode('utf-8')) if resp.data else None
        except ValueError:
            decoded = {'message': resp.data.decode('utf-8', 'replace')[:500]}
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
                return item, None, KubeError('%s: %s' % (type(exc).__name__, exc))
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
        message = _redact(str(data.get('message') or ''))
        where = ' in namespace %s' % namespace if namespace else (' in all namespaces' if resource.namespaced else '')
        target = '%s %s%s' % (resource.kind, '%s/' % namespace if namespace else '', name) if name else None
        if resp.status == 401:
            return KubeError('unauthorized: the Kubernetes API at %s rejected the credentials of the kubeconfig '
                             '(expired or wrong token or certificate?)' % self.url)
        if resp.status == 403:
            found = _FORBIDDEN_RE.search(message)
            who = found.group('user') if found and found.group('user') else None
            if found:
                verb = found.group('verb')
            return KubeError("forbidden: the kubeconfig's identity cannot '%s' '%s'%s (%sneeded for %s). Grant it "
                             "with the ClusterRole in roles/mesh_registration/files/rbac.yml"
                             % (verb, resource_name(resource), where, 'it is %s; ' % who if who else '',
                                target or 'this run'),
                             {'verb': verb, 'resource': resource_name(resource), 'namespace': namespace},
                             key=('forbidden', verb, resource_name(resource), namespace))
        if resp.status == 404 and namespace and 'namespaces "%s" not found' % namespace in message:
            return KubeError('namespace %s does not exist (needed for %s); create it first: the registration does '
                             'not create namespaces' % (namespace, target or resource_name(resource)))
        if resp.status == 409 and verb == 'patch' and target:
            return conflict_error(target, data)
        if resp.status == 422 and target:
            return KubeError('%s was rejected by the API server: %s' % (target, message))
        detail = (': ' + message) if message else ''
        return KubeError('%s %s%s failed: HTTP %d %s%s'
                         % (verb, resource_name(resource), where, resp.status, data.get('reason') or '', detail))

    # -- discovery -------------------------------------------------------------------------------

    def discover(self, wanted: Sequence[Tuple[str, str, Sequence[str], bool]]) -> Dict[str, Resource]:
        """Resolve (kind, group, versions, required) to Resources with one request per group version.

        The first served version of each kind wins. A required kind that is not served is an error
        naming the group and the likely cause; optional kinds are left out.
        """
        group_versions = []
        for _kind, group, versions, _required in wanted:
            for version in versions:
                if (group, version) not in group_versions:
                    group_versions.append((group, version))

        def fetch(gv):
            group, version = gv
            path = '/apis/%s/%s' % (group, version) if group else '/api/%s' % version
            resp = self.request('GET', path)
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
            raise KubeError('the Kubernetes API at %s does not serve %s: install the CRDs of the shapes you use '
                            '(Istio for WorkloadEntry/WorkloadGroup/ServiceEntry, Contour for HTTPProxy)'
                            % (self.url, ', '.join(missing)))
        return found

    # -- reads -----------------------------------------------------------------------------------

    def list(self, resource: Resource, label_selector: Optional[str] = None, namespace: Optional[str] = None,
             metadata_only: bool = False) -> List[Dict[str, Any]]:
        """Every object (all pages), optionally in one namespace and matching a label selector."""
        accept = ('application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json'
                  if metadata_only else 'application/json')
        items = []  # type: List[Dict[str, Any]]
        cont = None
        while True:
            query = [('limit', str(LIST_CHUNK))]
            if label_selector:
                query.append(('labelSelector', label_selector))
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

    def can_i(self, verb: str, resource: Resource, namespace: Optional[str]) -> Optional[bool]:
        """SelfSubjectAccessReview; None when the review itself is not allowed or fails."""
        attrs = {'verb': verb, 'group': resource.group, 'resource': resource.plural}
        if namespace:
            attrs['namespace'] = namespace
        body = {'apiVersion': 'authorization.k8s.io/v1', 'kind': 'SelfSubjectAccessReview',
                'spec': {'resourceAttributes': attrs}}
        resp = self.request('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', body=body)
        if resp.status not in (200, 201) or not isinstance(resp.data, Mapping):
            return None
        return bool((resp.data.get('status') or {}).get('allowed'))

    # -- writes ----------------------------------------------------------------------------------

    def apply(self, resource: Resource, obj: Mapping, force: bool = False, dry_run: bool = False) -> Dict[str, Any]:
        meta = obj['metadata']
        query = [('fieldManager', FIELD_MANAGER)]
        if force:
            query.append(('force', 'true'))
        if dry_run:
            query.append(('dryRun', 'All'))
        resp = self.request('PATCH', resource_path(resource, meta.get('namespace'), meta['name']), query, body=obj,
                            content_type='application/apply-patch+yaml')
        return self.check_response(resp, 'patch', resource, meta.get('namespace'), meta['name'])

    def delete(self, resource: Resource, obj: Mapping, dry_run: bool = False) -> Optional[Dict[str, Any]]:
        meta = obj['metadata']
        body = {'apiVersion': 'v1', 'kind': 'DeleteOptions', 'propagationPolicy': 'Background'}
        if meta.get('uid'):
            body['preconditions'] = {'uid': meta['uid']}
        if dry_run:
            body['dryRun'] = ['All']
        resp = self.request('DELETE', resource_path(resource, meta.get('namespace'), meta['name']), body=body)
        if resp.status == 404:
            return None
        return self.check_response(resp, 'delete', resource, meta.get('namespace'), meta['name'],
                                   expect=(200, 202))


class Settings:
    """Where the API server is and how to authenticate, from a kubeconfig or from options."""

    def __init__(self) -> None:
        self.host = None  # type: Optional[str]
        self.ssl_ca_cert = None  # type: Optional[str]
        self.ca_cert_data = None  # type: Optional[str]
        self.cert_file = None  # type: Optional[str]
        self.key_file = None  # type: Optional[str]
        self.verify_ssl = True
        self.assert_hostname = None
        self.tls_server_name = None  # type: Optional[str]
        self.proxy = None  # type: Optional[str]
        self.proxy_headers = None
        self.token = None  # type: Optional[str]
        self.username = None  # type: Optional[str]
        self.password = None  # type: Optional[str]
        self.library = None  # a kubernetes.client.Configuration, for credentials it refreshes


_STATIC_USER_KEYS = frozenset(['token', 'tokenFile', 'client-certificate', 'client-certificate-data', 'client-key',
                               'client-key-data', 'username', 'password'])


def _kubeconfig_paths(path: Optional[str]) -> Tuple[List[str], bool]:
    if path:
        return [os.path.expanduser(path)], True
    env = os.environ.get('KUBECONFIG')
    if env:
        return [p for p in env.split(os.pathsep) if p], False
    return [os.path.expanduser('~/.kube/config')], False


def load_kubeconfig(path: Optional[str], context: Optional[str], allow_in_cluster: bool = True) -> Settings:
    """Settings of a kubeconfig (merged like kubectl merges $KUBECONFIG), in-cluster config as the last resort.

    Static credentials (token, token file, client certificate, basic auth) are read here; anything else
    (exec plugins, auth providers, impersonation) is handed to the kubernetes library.
    """
    paths, explicit = _kubeconfig_paths(path)
    where = path or '(default: $KUBECONFIG or ~/.kube/config)'
    existing = [p for p in paths if os.path.isfile(p)]
    if explicit and not existing:
        raise KubeError('cannot load the kubeconfig %s: no such file' % where)
    if not existing:
        if allow_in_cluster and os.environ.get('KUBERNETES_SERVICE_HOST'):
            return _library_settings(None, None, in_cluster=True)
        raise KubeError('cannot load the kubeconfig %s: no such file, and not running in a cluster' % where)
    if yaml is None:
        return _library_settings(path, context)
    merged = {'clusters': OrderedDict(), 'users': OrderedDict(), 'contexts': OrderedDict()}
    current = None
    for file_path in existing:
        try:
            with open(file_path) as handle:
                doc = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeError('cannot load the kubeconfig %s: %s' % (file_path, _redact(str(exc)))) from None
        if not isinstance(doc, Mapping):
            raise KubeError('cannot load the kubeconfig %s: not a kubeconfig mapping' % file_path)
        base = os.path.dirname(os.path.abspath(file_path))
        for section, key in (('clusters', 'cluster'), ('users', 'user'), ('contexts', 'context')):
            for entry in doc.get(section) or []:
                if isinstance(entry, Mapping) and entry.get('name') not in merged[section]:
                    merged[section][entry.get('name')] = (dict(entry.get(key) or {}), base)
        current = current or doc.get('current-context')
    name = context or current
    if name not in merged['contexts']:
        raise KubeError('cannot load the kubeconfig %s: context %s not found (contexts: %s)'
                        % (where, json.dumps(name), ', '.join(str(c) for c in merged['contexts']) or 'none'))
    ctx = merged['contexts'][name][0]
    cluster, cluster_base = merged['clusters'].get(ctx.get('cluster'), ({}, ''))
    user, user_base = merged['users'].get(ctx.get('user'), ({}, ''))
    if not cluster.get('server'):
        raise KubeError('cannot load the kubeconfig %s: context %s names no cluster with a server' % (where, name))
    if set(user) - _STATIC_USER_KEYS:
        return _library_settings(path, context)
    cfg = Settings()
    cfg.host = cluster['server']
    cfg.verify_ssl = not cluster.get('insecure-skip-tls-verify', False)
    cfg.tls_server_name = cluster.get('tls-server-name')
    cfg.proxy = cluster.get('proxy-url')
    if cluster.get('certificate-authority-data'):
        cfg.ca_cert_data = _b64_text(cluster['certificate-authority-data'], 'certificate-authority-data', where)
    elif cluster.get('certificate-authority'):
        cfg.ssl_ca_cert = os.path.join(cluster_base, cluster['certificate-authority'])
    cfg.cert_file = _pem_file(user, 'client-certificate', user_base, where)
    cfg.key_file = _pem_file(user, 'client-key', user_base, where)
    if user.get('token'):
        cfg.token = str(user['token'])
    elif user.get('tokenFile'):
        try:
            with open(os.path.join(user_base, user['tokenFile'])) as handle:
                cfg.token = handle.read().strip()
        except OSError as exc:
            raise KubeError('cannot read the token file of the kubeconfig %s: %s' % (where, exc)) from None
    cfg.username, cfg.password = user.get('username'), user.get('password')
    return cfg


def _b64_text(value: str, what: str, where: str) -> str:
    try:
        return base64.b64decode(value).decode('ascii')
    except (ValueError, TypeError, UnicodeDecodeError):
        raise KubeError('cannot load the kubeconfig %s: %s is not base64 PEM' % (where, what)) from None


_TEMP_DIRS = []  # type: List[str]


def _pem_file(user: Mapping, key: str, base: str, where: str) -> Optional[str]:
    """A path for the client certificate or key: as given, or the -data written to a private temporary file."""
    if user.get(key + '-data'):
        if not _TEMP_DIRS:
            _TEMP_DIRS.append(tempfile.mkdtemp(prefix='fleetmesh-kube-'))
            atexit.register(shutil.rmtree, _TEMP_DIRS[0], True)
        target = os.path.join(_TEMP_DIRS[0], key + '.pem')
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as handle:
            handle.write(_b64_text(user[key + '-data'], key + '-data', where))
        return target
    if user.get(key):
        return os.path.join(base, user[key])
    return None


def _library_settings(path: Optional[str], context: Optional[str], in_cluster: bool = False) -> Settings:
    """Settings through the kubernetes library, for credentials it knows how to obtain and refresh."""
    try:
        from kubernetes import config as kube_config
        from kubernetes.client import Configuration
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise KubeError('the kubeconfig needs the kubernetes Python library, which cannot be imported: %s'
                        % traceback.format_exc().splitlines()[-1]) from None
    lib = Configuration()
    try:
        if in_cluster:
            kube_config.load_incluster_config(client_configuration=lib)
        else:
            kube_config.load_kube_config(config_file=path, context=context, client_configuration=lib,
                                         persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise KubeError('cannot load the kubeconfig %s%s: %s'
                        % ('(in-cluster)' if in_cluster else path or '(default: $KUBECONFIG or ~/.kube/config)',
                           ' (context %s)' % context if context else '', _redact(str(exc)))) from None
    cfg = Settings()
    cfg.library = lib
    cfg.host = lib.host
    cfg.ssl_ca_cert = lib.ssl_ca_cert
    cfg.ca_cert_data = getattr(lib, 'ca_cert_data', None)
    cfg.cert_file, cfg.key_file = lib.cert_file, lib.key_file
    cfg.verify_ssl = lib.verify_ssl
    cfg.assert_hostname = getattr(lib, 'assert_hostname', None)
    cfg.tls_server_name = getattr(lib, 'tls_server_name', None)
    cfg.proxy, cfg.proxy_headers = getattr(lib, 'proxy', None), getattr(lib, 'proxy_headers', None)
    cfg.username, cfg.password = lib.username, lib.password
    return cfg


def client_from_params(params: Mapping, parallel: int = DEFAULT_PARALLEL) -> KubeClient:
    return KubeClient(kubeconfig=params.get('kubeconfig'), context=params.get('context'), host=params.get('host'),
                      api_key=params.get('api_key'), ca_cert=params.get('ca_cert'),
                      client_cert=params.get('client_cert'), client_key=params.get('client_key'),
                      validate_certs=params.get('validate_certs'), request_timeout=params.get('request_timeout') or 30,
                      parallel=parallel)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, 'reason', None) or exc
    text = str(reason)
    for marker in ('Connection refused', 'timed out', 'Name or service not known', 'certificate verify failed',
                   'No route to host'):
        if marker in text:
            found = re.search(r"(\[SSL: [A-Z_]+\][^'\")]*)", text) if 'certificate' in marker else None
            return marker.lower() if not found else found.group(1).strip()
    return _redact(text)


def _warning_text(header: str) -> str:
    # RFC 7234: 299 - "text"
    found = re.match(r'^\s*\d{3}\s+\S+\s+"(.*)"\s*$', header)
    return found.group(1).replace('\\"', '"') if found else header


def _redact(text: str) -> str:
    """Never echo a bearer token, even when a library puts one in an exception."""
    return re.sub(r'(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+', r'\1<redacted>', text)


def conflict_error(target: str, status: Mapping) -> KubeError:
    causes = ((status.get('details') or {}).get('causes') or [])
    by_manager = OrderedDict()  # type: Dict[str, List[str]]
    for cause in causes:
        found = _CONFLICT_RE.search(str(cause.get('message') or ''))
        manager = found.group('manager') if found else 'another field manager'
        by_manager.setdefault(manager, []).append(str(cause.get('field') or '?'))
    if not by_manager:
        by_manager['another field manager'] = [str(status.get('message') or 'conflict')]
    parts = ['field manager "%s" owns %s' % (manager, ', '.join(fields)) for manager, fields in by_manager.items()]
    return KubeError('conflict: %s: %s, which this run would change. Set force: true (role: mesh_registration_force: '
                     'true) to take these fields over as field manager "%s", or stop the other manager from setting '
                     'them.' % (target, '; '.join(parts), FIELD_MANAGER),
                     {'conflicts': [{'manager': m, 'fields': f} for m, f in by_manager.items()]})


# --------------------------------------------------------------------------------------------
# Comparing desired and live objects without a request
# --------------------------------------------------------------------------------------------

# Lists the API server merges by key (associative lists) and maps it treats as one value (atomic),
# for the objects registration builds. Every other list is atomic, every other map granular.
ASSOCIATIVE_LISTS = {
    ('Service', ('spec', 'ports')): ('port', 'protocol'),
    ('ServiceEntry', ('spec', 'ports')): ('name',),
}
ATOMIC_MAPS = {
    ('Service', ('spec', 'selector')),
}
_IGNORED_TOP = ('apiVersion', 'kind', 'status')


def _key_json(values: Mapping) -> str:
    return 'k:' + json.dumps(values, sort_keys=True, separators=(',', ':'))


def fields_match(desired: Mapping, fields_v1: Mapping) -> bool:
    """Whether the fields an apply of desired would own are exactly those in fields_v1 (its managedFields entry)."""
    kind = desired.get('kind')
    top = dict((k, v) for k, v in desired.items() if k not in _IGNORED_TOP and k != 'metadata')
    meta = desired.get('metadata') or {}
    meta_fields = dict((k, meta[k]) for k in ('labels', 'annotations') if meta.get(k))
    if meta_fields:
        top['metadata'] = meta_fields
    return _node_match(top, fields_v1 or {}, kind, ())


def _children(node: Mapping) -> int:
    return len(node) - (1 if '.' in node else 0)


def _node_match(value: Any, node: Any, kind: Any, path: Tuple[str, ...]) -> bool:
    if not isinstance(node, Mapping):
        return False
    if isinstance(value, Mapping) and (kind, path) not in ATOMIC_MAPS:
        if _children(node) != len(value):
            return False
        for key, sub in value.items():
            child = node.get('f:' + key)
            if child is None or not _node_match(sub, child, kind, path + (key,)):
                return False
        return True
    if isinstance(value, list) and (kind, path) in ASSOCIATIVE_LISTS:
        keys = ASSOCIATIVE_LISTS[(kind, path)]
        if _children(node) != len(value):
            return False
        normalized = None
        for item in value:
            key = _key_json(dict((k, item.get(k)) for k in keys if k in item))
            child = node.get(key)
            if child is None:  # the server may serialize a key differently: compare parsed
                if normalized is None:
                    normalized = {}
                    for raw, sub in node.items():
                        if raw.startswith('k:'):
                            try:
                                normalized[_key_json(json.loads(raw[2:]))] = sub
                            except ValueError:
                                pass
                child = normalized.get(key)
            if child is None or not isinstance(item, Mapping) or not _node_match(item, child, kind, path):
                return False
        return True
    return _children(node) == 0


def _subset(desired: Any, live: Any) -> bool:
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and _subset(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            _subset(desired[i], live[i]) for i in range(len(desired)))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    return desired == live


def our_managed_entry(live: Mapping) -> Optional[Mapping]:
    for entry in (live.get('metadata') or {}).get('managedFields') or []:
        if entry.get('manager') == FIELD_MANAGER and entry.get('operation') == 'Apply':
            return entry
    return None


def unchanged(desired: Mapping, live: Mapping) -> bool:
    """True when applying desired would change nothing: same owned fields, same values."""
    entry = our_managed_entry(live)
    if entry is None:
        return False
    if not fields_match(desired, entry.get('fieldsV1') or {}):
        return False
    meta_d, meta_l = desired.get('metadata') or {}, live.get('metadata') or {}
    for mkey in ('labels', 'annotations'):
        if not _subset(meta_d.get(mkey) or {}, meta_l.get(mkey) or {}):
            return False
    return all(key in ('apiVersion', 'kind', 'metadata') or _subset(value, live.get(key))
               for key, value in desired.items())


def trimmed(obj: Optional[Mapping]) -> Dict[str, Any]:
    """An object as a user wants to read it in a diff: no managedFields, versions, uids or status."""
    if not obj:
        return {}
    out = copy.deepcopy(dict(obj))
    meta = out.get('metadata') or {}
    for key in ('managedFields', 'resourceVersion', 'uid', 'creationTimestamp', 'generation', 'selfLink'):
        meta.pop(key, None)
    out.pop('status', None)
    return out


# --------------------------------------------------------------------------------------------
# Reconciling
# --------------------------------------------------------------------------------------------

Action = namedtuple('Action', ['action', 'resource', 'desired', 'live'])


def ownership_selector(registration: str) -> str:
    return '%s=%s,%s=%s' % (reg.MANAGED_BY_LABEL, reg.MANAGED_BY, reg.SET_LABEL, registration)


def list_owned(client: KubeClient, resources: Mapping[str, Resource], registration: str,
               namespaces: Optional[Sequence[str]] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every object of the registration set, in all namespaces (one list request per kind, in parallel).

    Where listing in all namespaces is forbidden, lists in ``namespaces`` instead and says so.
    Returns (objects, warnings).
    """
    selector = ownership_selector(registration)
    results = client.map(lambda res: client.list(res, selector), list(resources.values()))
    objects, warnings, fallback = [], [], []
    for res, items, error in results:
        if error is None:
            objects.extend(items)
        elif error.details.get('verb') == 'list' and namespaces:
            fallback.append(res)
        else:
            raise error
    if fallback:
        warnings.append('listing %s in all namespaces is forbidden; looked for managed objects only in namespaces %s, '
                        'so objects of this registration set elsewhere are not pruned'
                        % (', '.join(resource_name(r) for r in fallback), ', '.join(namespaces)))
        pairs = [(res, ns) for res in fallback for ns in namespaces]
        for _pair, items, error in client.map(lambda p: client.list(p[0], selector, p[1]), pairs):
            if error is not None:
                raise error
            objects.extend(items)
    return objects, warnings


def reconcile(client: KubeClient, resources: Mapping[str, Resource], desired: Sequence[Mapping],
              live_owned: Sequence[Mapping], delete: Sequence[Mapping], prune_all: bool, registration: str,
              force: bool = False, adopt: bool = False, check_mode: bool = False,
              want_diff: bool = False) -> Dict[str, Any]:
    """Make the cluster hold ``desired``; delete ``delete`` (or, with prune_all, every owned object not desired)."""
    live_by_key = OrderedDict((reg.obj_key(o), o) for o in live_owned)
    actions = []  # type: List[Action]
    creates = []
    desired_keys = set()
    for obj in desired:
        key = reg.obj_key(obj)
        desired_keys.add(key)
        res = resources[obj['kind']]
        live = live_by_key.get(key)
        if live is None:
            creates.append(obj)
        elif unchanged(obj, live):
            actions.append(Action('unchanged', res, obj, live))
        else:
            actions.append(Action('update', res, obj, live))
    to_delete = list(delete)
    if prune_all:
        to_delete = [o for k, o in live_by_key.items() if k not in desired_keys]
    for obj in to_delete:
        if obj['kind'] in resources and reg.owned(obj, registration):  # never anything without our labels
            actions.append(Action('delete', resources[obj['kind']], None, obj))
    actions.extend(Action('create', resources[obj['kind']], obj, None) for obj in creates)

    results_by_id = {}  # type: Dict[int, Any]
    changes = [a for a in actions if a.action != 'unchanged']
    if changes:
        # One round before anything is written: are the names of new objects free, and does the API server
        # accept the changes (dryRun=All)? Check mode tries everything. Otherwise every update and delete
        # (where conflicts, RBAC and admission bite) and one create per kind and namespace (RBAC, a missing
        # namespace, a schema the server rejects): new objects have no other field manager to conflict
        # with, and their values passed the input checks.
        sample = changes if check_mode else _dry_run_sample(changes)
        dry, adopted = _names_and_dry_run(client, resources, creates, sample, registration, adopt, force)
        if adopted:  # taken over: they are updates now, with a live object to diff and conflicts to find
            actions = [a for a in actions if not (a.action == 'create' and id(a.desired) in adopted)]
            actions.extend(adopted.values())
            changes = [a for a in actions if a.action != 'unchanged']
            dry = [r for r in dry if id(r[0].desired) not in adopted or r[0].action != 'create']
            dry += _execute(client, list(adopted.values()), force, dry_run=True)
        failed = [(a, e) for a, _r, e in dry if e is not None]
        if failed:
            raise _combined(failed, applied_nothing=True)
        results = dry
        if not check_mode:
            results = _execute(client, [a for a in changes if a.action != 'delete'], force, dry_run=False)
            results += _execute(client, [a for a in changes if a.action == 'delete'], force, dry_run=False)
            failed = [(a, e) for a, _r, e in results if e is not None]
            if failed:
                raise _combined(failed, applied_nothing=False, done=[a for a, _r, e in results if e is None])
        results_by_id = dict((id(a), r) for a, r, _e in results)

    counts = OrderedDict([('created', 0), ('updated', 0), ('unchanged', 0), ('deleted', 0)])
    objects, diffs = [], []
    for act in actions:
        after = results_by_id.get(id(act))
        if act.action == 'unchanged':
            outcome = 'unchanged'
        elif act.action == 'create':
            outcome = 'created'
        elif act.action == 'delete':
            outcome = 'deleted'
        elif check_mode:
            outcome = 'updated' if trimmed(after) != trimmed(act.live) else 'unchanged'
        else:
            same_version = (after or {}).get('metadata', {}).get('resourceVersion') == \
                act.live['metadata'].get('resourceVersion')
            outcome = 'unchanged' if same_version else 'updated'
        counts[outcome] += 1
        if outcome == 'unchanged':
            continue
        source = act.desired or act.live
        meta = source['metadata']
        objects.append(OrderedDict([('kind', source['kind']), ('api_version', api_version(act.resource)),
                                    ('namespace', meta.get('namespace')), ('name', meta['name']),
                                    ('action', outcome)]))
        if want_diff:
            before = trimmed(act.live) if act.action != 'create' else {}
            diffs.append({'before_header': reg.obj_ref(source) + (' (absent)' if act.action == 'create' else ''),
                          'after_header': reg.obj_ref(source) + (' (deleted)' if outcome == 'deleted' else ''),
                          'before': before, 'after': trimmed(after) if outcome != 'deleted' else {}})
    return {'counts': counts, 'objects': objects, 'diff': diffs,
            'changed': any(counts[k] for k in ('created', 'updated', 'deleted'))}


def _names_and_dry_run(client: KubeClient, resources: Mapping[str, Resource], creates: Sequence[Mapping],
                       sample: Sequence[Action], registration: str, adopt: bool, force: bool):
    """Look up the names new objects would take and dry-run ``sample``, in one parallel round.

    Names held by objects without the ownership labels are refused (never touched) unless ``adopt``;
    names held by another registration set always. Returns (dry-run results, {id(desired): Action} of
    adopted objects).
    """
    groups = OrderedDict()  # type: Dict[Tuple[str, str], List[Mapping]]
    for obj in creates:
        groups.setdefault((obj['kind'], obj['metadata']['namespace']), []).append(obj)

    def existing(group):
        kind, namespace = group
        objs = groups[group]
        if len(objs) > ADOPT_LIST_THRESHOLD:
            names = set(o['metadata']['name'] for o in objs)
            listed = client.list(resources[kind], namespace=namespace, metadata_only=True)
            return dict((o['metadata']['name'], o) for o in listed if o['metadata']['name'] in names)
        found = {}
        for obj in objs:
            live = client.get(resources[kind], namespace, obj['metadata']['name'])
            if live is not None:
                found[obj['metadata']['name']] = live
        return found

    def task(item):
        what, arg = item
        if what == 'names':
            return existing(arg)
        if arg.action == 'delete':
            return client.delete(arg.resource, arg.live, dry_run=True)
        return client.apply(arg.resource, arg.desired, force=force, dry_run=True)

    results = client.map(task, [('names', g) for g in groups] + [('dry', a) for a in sample])
    dry = [(item[1], result, error) for item, result, error in results if item[0] == 'dry']
    adopted, errors = OrderedDict(), []  # type: Dict[int, Action], List[str]
    for (what, group), found, error in results:
        if what != 'names':
            continue
        if error is not None:
            raise error
        for obj in groups[group]:
            live = found.get(obj['metadata']['name'])
            if live is None:
                continue
            labels = (live.get('metadata') or {}).get('labels') or {}
            if labels.get(reg.MANAGED_BY_LABEL) == reg.MANAGED_BY and labels.get(reg.SET_LABEL) != registration:
                errors.append('%s already exists and belongs to registration set %s, not %s; allowed: one registration '
                              'set per object (use distinct services or namespaces per set)'
                              % (reg.obj_ref(obj), v_show(labels.get(reg.SET_LABEL)), v_show(registration)))
            elif not adopt:
                managers = sorted(set(e.get('manager', '?') for e in (live.get('metadata') or {}).get('managedFields')
                                      or []))
                errors.append('%s already exists and is not managed by fleetmesh.envoy (no %s=%s label%s); it is left '
                              'alone. Delete it, rename the service, or set adopt: true to take it over'
                              % (reg.obj_ref(obj), reg.MANAGED_BY_LABEL, reg.MANAGED_BY,
                                 '; field managers: %s' % ', '.join(managers) if managers else ''))
            else:
                res = resources[obj['kind']]
                live = client.get(res, group[1], obj['metadata']['name']) or live
                adopted[id(obj)] = Action('update', res, obj, live)
    if errors:
        raise KubeError('; '.join(errors) + '. Nothing was changed.')
    return dry, adopted


def v_show(value: Any) -> str:
    return json.dumps(value)


def _dry_run_sample(changes: Sequence[Action]) -> List[Action]:
    sample, seen = [], set()
    for act in changes:
        if act.action == 'create':
            key = (act.desired['kind'], act.desired['metadata'].get('namespace'))
            if key in seen:
                continue
            seen.add(key)
        sample.append(act)
    return sample


def _execute(client: KubeClient, actions: Sequence[Action], force: bool, dry_run: bool):
    def run(act):
        if act.action == 'delete':
            return client.delete(act.resource, act.live, dry_run=dry_run)
        return client.apply(act.resource, act.desired, force=force, dry_run=dry_run)
    return client.map(run, actions)


def _combined(failed, applied_nothing: bool, done: Sequence[Action] = ()) -> KubeError:
    messages, keys = [], set()
    for _act, error in failed:
        if error.key not in keys:
            keys.add(error.key)
            messages.append(error.message)
    shown = messages[:10]
    more = len(messages) - len(shown)
    text = '; '.join(shown) + (' (and %d more errors)' % more if more else '')
    if applied_nothing:
        text += '. Nothing was changed.'
    else:
        text += '. %d change(s) were made before the failure.' % len(done)
    details = {}
    for _act, error in failed:
        details.update(error.details)
    return KubeError(text, details)
