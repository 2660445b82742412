# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.istio_token: state=request on the controller (one TokenRequest per service account for the
whole play), the other states on the host through the module of the same name.

Documented in plugins/modules/istio_token.py. Tokens never appear in task arguments: state=present reads the
host's token from the registered result of the request task on the controller and hands it to the module as a
no_log option. Every result that carries tokens is marked no_log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time
from collections.abc import Mapping

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import istio
from ansible_collections.fleetmesh.envoy.plugins.modules.istio_token import argument_spec
from ansible_collections.fleetmesh.envoy.plugins.plugin_utils.action import ControllerAction

MODULE = 'fleetmesh.envoy.istio_token'
HOST_OPTIONS = ('path', 'namespace', 'service_account', 'audience', 'refresh_before', 'owner', 'group', 'mode',
                'tokens_var')


class ActionModule(ControllerAction):
    """Request istio-tokens on the controller; inspect, write and remove them on the host."""

    _requires_connection = True  # the states other than request run the module on the host

    def argument_spec(self):
        return argument_spec()

    def act(self, result, args, task_vars):
        if args['state'] == 'request':
            result.update(self._request(args, task_vars))
            return result
        module_args = dict((name, args[name]) for name in HOST_OPTIONS if args.get(name) is not None)
        module_args['state'] = args['state']
        if args['state'] == 'present':
            token = self._token_for(args['tokens_var'], task_vars)
            if token:
                module_args['token'] = token
        result.update(self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars))
        if args['state'] == 'present':
            result['_ansible_no_log'] = True  # the invocation carried the token (masked as no_log anyway)
        return result

    # -- state=present ---------------------------------------------------------------------------

    def _token_for(self, tokens_var, task_vars):
        registered = task_vars.get(tokens_var)
        if not isinstance(registered, Mapping):
            hostvars = task_vars.get('hostvars', {}).get(task_vars.get('inventory_hostname')) or {}
            registered = hostvars.get(tokens_var)
        tokens = registered.get('tokens') if isinstance(registered, Mapping) else None
        if not isinstance(tokens, Mapping):
            return None
        return tokens.get(task_vars.get('inventory_hostname'))

    # -- state=request ---------------------------------------------------------------------------

    def _request(self, args, task_vars):
        now = time.time()
        audience = args['audience']
        errors = istio.check_expiration(args['expiration'], args['refresh_before'])
        if errors:
            return self._fail('; '.join(errors))
        hosts = args['hosts'] or task_vars.get('ansible_play_batch') or [task_vars.get('inventory_hostname')]
        all_hostvars = task_vars.get('hostvars', {})
        wanted = {}
        not_inspected = []
        for host in hosts:
            hostvars = all_hostvars.get(host) or {}
            inspected = hostvars.get(args['inspect_var'])
            if not isinstance(inspected, Mapping) or inspected.get('failed') or inspected.get('skipped') \
                    or not isinstance(inspected.get('request'), Mapping):
                not_inspected.append(host)
                continue
            if inspected.get('refresh'):
                request = inspected['request']
                wanted[host] = (str(request.get('namespace')), str(request.get('service_account')))
        groups = istio.group_requests(wanted)
        out = {'changed': False, 'requested': [], 'tokens': {}, 'error': None}
        if not_inspected:
            out['skipped_hosts'] = not_inspected
        if not groups:
            out['msg'] = 'every istio-token is valid for more than %d s; no TokenRequest made' % args['refresh_before']
            return out
        try:
            if args.get('token'):
                by_key = {}
                for key in groups:
                    istio.check_token_for(args['token'], key[0], key[1], audience, now, args['refresh_before'])
                    by_key[key] = args['token']
                source = 'the token given in the token option'
            elif self._task.check_mode:
                out['requested'] = [{'namespace': k[0], 'service_account': k[1], 'hosts': h, 'check_mode': True}
                                    for k, h in groups.items()]
                out['msg'] = 'check mode: would request istio-tokens for %s' % istio.describe(groups.items())
                return out
            else:
                by_key = self._token_requests(args, list(groups), audience)
                source = 'TokenRequest'
            for key, key_hosts in groups.items():
                facts = istio.check_token_for(by_key[key], key[0], key[1], audience, now)
                if facts['expires_in'] is not None and facts['expires_in'] <= args['refresh_before']:
                    out.setdefault('warnings', []).append(
                        'the istio-token for %s/%s is valid for %d s only, not more than refresh_before (%d s), so '
                        'every run will replace it: lower istio_sidecar_token_refresh_before (the API server may cap '
                        'token lifetimes with --service-account-max-token-expiration)'
                        % (key[0], key[1], facts['expires_in'], args['refresh_before']))
                out['requested'].append({'namespace': key[0], 'service_account': key[1], 'hosts': key_hosts,
                                         'audience': audience, 'expires_at': facts['expires_at'],
                                         'expires_in': facts['expires_in']})
                for host in key_hosts:
                    out['tokens'][host] = by_key[key]
        except istio.TokenError as err:
            return self._fail(str(err))
        out['msg'] = 'istio-tokens from %s for %s' % (source, istio.describe(groups.items()))
        out['_ansible_no_log'] = True  # carries tokens
        return out

    def _token_requests(self, args, keys, audience):
        # One client for the play; the Kubernetes layer is imported here so the host module stays small.
        from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
        resource = kube.Resource(*istio.TOKEN_RESOURCE)
        try:
            client = kube.client_from_params(args, parallel=min(len(keys), 8))

            def make_error(resp, verb, namespace, name):
                return client.error(resp, verb, resource, namespace, name)

            return istio.request_tokens(client, keys, audience, args['expiration'], make_error)
        except kube.KubeError as err:
            raise istio.TokenError(err.message) from None

    @staticmethod
    def _fail(msg):
        return {'failed': True, 'changed': False, 'msg': msg, 'error': msg, 'tokens': {}}
