# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.workload_sign: sign the CSRs of every host of the play in one controller task.

Documented in plugins/modules/workload_sign.py. The CA private key is read on the controller and
never returned; results hold certificates only, except with source=legacy_secret, where the
result carries each host's key.pem and is marked no_log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os

from ansible.errors import AnsibleError
from ansible.utils.display import Display
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib, model, pki
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.duration import parse_duration
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube_client
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    ALLOWED_DURATION,
    WORKLOAD_CERTS_SOURCES,
    workload_allowed_sans,
)
from ansible_collections.fleetmesh.envoy.plugins.plugin_utils.action import ControllerAction

display = Display()

LEGACY_WARNING = ('workload_certs_source=legacy_secret: the private key key.pem is read from the Kubernetes Secret '
                  '%s and passes through the controller to the hosts (and every host of a namespace gets the same '
                  'key). Prefer a source that keeps keys on the hosts (lab_ca, files or kubernetes).')

ARGUMENT_SPEC = {
    'operation': {'type': 'str', 'choices': ['sign', 'inspect'], 'default': 'sign'},
    'source': {'type': 'str', 'choices': list(WORKLOAD_CERTS_SOURCES), 'default': 'lab_ca'},
    'csr_var': {'type': 'str'},
    'hosts': {'type': 'list', 'elements': 'str'},
    'lifetime': {'type': 'str', 'default': '30d'},
    'ca_cert': {'type': 'path'},
    'ca_key': {'type': 'path', 'no_log': False},
    'ca_chain': {'type': 'path'},
    'lab_ca_dir': {'type': 'path', 'default': '~/.fleetmesh/lab-ca'},
    'secret_namespace': {'type': 'str', 'default': 'istio-system'},
    'secret_name': {'type': 'str', 'default': 'cacerts', 'no_log': False},
    'legacy_secret_name': {'type': 'str', 'default': 'istio.default', 'no_log': False},
}
# The Kubernetes options of the action group, but ca_cert is the signing CA here: the API server's is ssl_ca_cert.
ARGUMENT_SPEC.update((name, spec) for name, spec in AUTH_ARGUMENT_SPEC.items() if name != 'ca_cert')
ARGUMENT_SPEC['ssl_ca_cert'] = {'type': 'path'}
SECRET = kube_client.Resource('', 'v1', 'Secret', 'secrets', True)


class SignError(AnsibleError):
    """A problem the operator must fix; its message is the task's msg."""


def _text(value):
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return value


class KubeSecrets:
    """Reads Secrets through the collection's Kubernetes layer, one client per task."""

    def __init__(self, args):
        try:
            self._client = kube_client.client_from_params(dict(args, ca_cert=args.get('ssl_ca_cert')), parallel=1)
        except kube_client.KubeError as err:
            raise SignError(err.message) from None
        self._cache = {}

    def read(self, namespace, name):
        key = (namespace, name)
        if key not in self._cache:
            try:
                secret = self._client.get(SECRET, namespace, name)
            except kube_client.KubeError as err:
                raise SignError('cannot read Secret %s/%s: %s' % (namespace, name, err.message)) from None
            if secret is None:
                raise SignError('cannot read Secret %s/%s: it does not exist' % (namespace, name))
            self._cache[key] = dict((item, base64.b64decode(value)) for item, value in (secret.get('data') or {}).items())
        return self._cache[key]

    def close(self):
        self._client.close()


class ActionModule(ControllerAction):
    """Sign (or, with operation=inspect, only load and check the CA) on the controller; never connects to hosts."""

    ARGUMENT_SPEC = ARGUMENT_SPEC

    def act(self, result, args, task_vars):
        check_mode = bool(self._task.check_mode)
        kube = None
        try:
            if args['operation'] == 'sign' and not self._task.run_once and len(self._hosts(args, task_vars)) > 1:
                raise SignError('workload_sign signs the CSRs of all hosts of the play in one task; '
                                'add run_once: true to the task')
            if args['source'] == 'legacy_secret':
                kube = KubeSecrets(args)
                result.update(self._legacy(args, task_vars, kube))
                return result
            ca, created = self._load_ca(args, check_mode)
            result.update(ca=ca.public(), changed=created and not check_mode)
            if created:
                result.setdefault('warnings', []).append(
                    'created a new lab CA in %s%s' % (args['lab_ca_dir'], ' (in memory only: check mode)' if check_mode
                                                      else ''))
            if args['operation'] == 'inspect':
                result['msg'] = 'CA %s (root %s) is usable until %s' % (
                    result['ca']['issuer'], result['ca']['root_subject'], result['ca']['not_after'])
                return result
            result.update(self._sign(ca, args, task_vars))
            # One task signs for the whole play, but Ansible counts its change for the host it runs as only: it is
            # changed for that host when that host's certificate was issued (each host's install task reports its
            # own), or when a lab CA was created.
            result['changed'] = result['changed'] or str(task_vars.get('inventory_hostname')) in result['signed']
        except (SignError, pki.PKIError) as err:
            result.update(failed=True, msg='workload_sign: %s' % err)
        finally:
            if kube is not None:
                kube.close()
        return result

    # ---------------------------------------------------------------------------------------
    def _hosts(self, args, task_vars):
        hosts = args['hosts']
        if hosts is None:
            hosts = task_vars.get('ansible_play_batch') or [task_vars.get('inventory_hostname')]
        return [str(host) for host in hosts]

    def _load_ca(self, args, check_mode):
        source = args['source']
        if source == 'lab_ca':
            return ca_lib.lab_ca(args['lab_ca_dir'], persist=not check_mode)
        if source == 'files':
            missing = [name for name in ('ca_cert', 'ca_key') if not args[name]]
            if missing:
                raise SignError('source=files needs %s' % ' and '.join(missing))
            texts = {}
            for name in ('ca_cert', 'ca_key', 'ca_chain'):
                path = args[name]
                if not path:
                    continue
                path = os.path.expanduser(path)
                try:
                    with open(path, 'rb') as handle:
                        texts[name] = handle.read()
                except (IOError, OSError) as err:
                    raise SignError('cannot read %s %s on the controller: %s' % (name, path, err.strerror)) from None
            return ca_lib.CA(texts['ca_cert'], texts['ca_key'], texts.get('ca_chain'), None,
                             'CA files %s' % args['ca_cert']), False
        kube = KubeSecrets(args)
        try:
            data = kube.read(args['secret_namespace'], args['secret_name'])
        finally:
            kube.close()
        return ca_lib.ca_from_istio_cacerts(data, 'Secret %s/%s' % (args['secret_namespace'], args['secret_name'])), False

    def _identity(self, host, task_vars):
        """(SPIFFE ID, allowed DNS names, allowed IPs) of a host, from its inventory variables only."""
        hostvars = task_vars.get('hostvars', {}).get(host)
        if hostvars is None:
            raise SignError('%s: no such host in the inventory' % host)
        # The SPIFFE ID and the service's names come from the one resolved model (docs/model.md).
        workload, errors = model.resolve(host, {var: hostvars.get(var) for var in model.MODEL_VARS})
        if workload is None:
            raise SignError('; '.join(errors))
        spiffe = workload.spiffe_id
        dns, ips = workload_allowed_sans({
            'inventory_hostname': host, 'ansible_host': hostvars.get('ansible_host'),
            'fleetmesh_address': workload.address, 'fleetmesh_service': workload.service,
            'fleetmesh_namespace': workload.namespace, 'fleetmesh_cluster_domain': workload.cluster_domain})
        return spiffe, dns, ips, hostvars

    def _sign(self, ca, args, task_vars):
        if not args['csr_var']:
            raise SignError('csr_var is required with operation=sign: the name of the variable each host registered '
                            'from fleetmesh.envoy.workload_csr')
        try:
            lifetime = parse_duration(args['lifetime'])
        except ValueError:
            raise SignError('lifetime: %r is not a valid duration; allowed: %s' % (
                args['lifetime'], ALLOWED_DURATION)) from None
        certs, refused, not_signed, warnings = {}, {}, {}, []
        for host in self._hosts(args, task_vars):
            try:
                spiffe, dns, ips, hostvars = self._identity(host, task_vars)
            except AnsibleError as err:
                refused[host] = str(err.message if hasattr(err, 'message') else err)
                continue
            registered = hostvars.get(args['csr_var'])
            if not isinstance(registered, dict) or registered.get('failed') or registered.get('skipped'):
                not_signed[host] = 'no successful %s result registered' % args['csr_var']
                continue
            if not registered.get('needs_issue'):
                not_signed[host] = 'the installed certificate is current'
                continue
            errors, requested = ca_lib.check_csr(registered.get('csr'), spiffe, dns, ips)
            if errors:
                refused[host] = '; '.join(errors)
                continue
            issued = ca.sign(registered['csr'], spiffe, requested['dns'], requested['ips'], lifetime,
                             subject_cn=host, organization=spiffe[len('spiffe://'):].split('/', 1)[0])
            warnings.extend('%s: %s' % (host, warning) for warning in issued.pop('warnings'))
            issued['reasons'] = list(registered.get('reasons') or [])
            certs[host] = issued
        if refused:
            raise SignError('refused to sign for %d host(s); nothing was signed:\n%s' % (
                len(refused), '\n'.join('%s: %s' % item for item in sorted(refused.items()))))
        out = {'certs': certs, 'signed': sorted(certs), 'not_signed': not_signed,
               'msg': 'signed %d certificate(s) with %s' % (len(certs), ca.public()['issuer'])}
        if warnings:
            out['warnings'] = sorted(set(warnings))
        return out

    def _legacy(self, args, task_vars, kube):
        display.warning(LEGACY_WARNING % args['legacy_secret_name'])
        certs, refused = {}, {}
        now = pki.utcnow()
        for host in self._hosts(args, task_vars):
            try:
                spiffe, _dns, _ips, hostvars = self._identity(host, task_vars)
                namespace = hostvars.get('fleetmesh_namespace')
                data = kube.read(namespace, args['legacy_secret_name'])
                missing = [name for name in ('root-cert.pem', 'cert-chain.pem', 'key.pem') if not data.get(name)]
                if missing:
                    raise SignError('Secret %s/%s lacks %s' % (namespace, args['legacy_secret_name'], ', '.join(missing)))
                chain, root, key = (_text(data[name]) for name in ('cert-chain.pem', 'root-cert.pem', 'key.pem'))
                errors = ca_lib.verify_chain(chain, root, now)
                leaf = pki.load_certs(chain, 'cert-chain.pem')[0]
                if leaf.spki != ca_lib.private_key_spki(key):
                    errors.append('key.pem does not match cert-chain.pem')
                if leaf.uris != [spiffe]:
                    errors.append('the certificate is for %s; allowed: exactly %s (computed from the inventory)' % (
                        ', '.join(leaf.uris) or 'no URI', spiffe))
                if errors:
                    raise SignError('; '.join(errors))
            except (AnsibleError, pki.PKIError) as err:
                refused[host] = str(getattr(err, 'message', err))
                continue
            info = leaf.info(now)
            certs[host] = {'cert_chain': chain, 'root_cert': root, 'serial': info['serial'],
                           'not_after': info['not_after'], 'sans': info['sans'], 'spiffe_id': spiffe}
            if args['operation'] == 'sign':
                certs[host]['key'] = key
        if refused:
            raise SignError('cannot use the legacy Secret %s for %d host(s):\n%s' % (
                args['legacy_secret_name'], len(refused),
                '\n'.join('%s: %s' % item for item in sorted(refused.items()))))
        out = {'changed': False, 'certs': certs, 'signed': [], 'not_signed': {},
               'msg': 'read %d certificate(s) and key(s) from Secret %s' % (len(certs), args['legacy_secret_name'])}
        if args['operation'] == 'sign':
            out['_ansible_no_log'] = True  # the result carries private keys
        return out
