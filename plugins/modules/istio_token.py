# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# The host half of fleetmesh.envoy.istio_token. The action plugin of the same name
# (plugins/action/istio_token.py) runs on the controller: it does O(state=request) itself and
# passes the other states to this module on the host.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: istio_token
short_description: Keep a VM's Istio bootstrap token (istio-token) fresh, requested on the controller
version_added: 0.1.0
description:
  - The istio-token lets pilot-agent on a VM authenticate to istiod's CA as the VM's Kubernetes service account.
    It is a Kubernetes TokenRequest token with audience C(istio-ca) and a bounded expiry.
  - O(state=inspect) runs on the host and reads the token file's claims (subject, audiences, expiry) without
    verifying or printing it, and says whether it must be replaced (RV(refresh), RV(reason)).
  - O(state=request) runs once on the controller (C(run_once=true)), never on the hosts. It reads the O(inspect_var)
    result of every host in O(hosts) through C(hostvars), and makes one TokenRequest per service account that has
    at least one host needing a new token, with one API client. The result carries the tokens, so it is always
    marked no_log; only RV(requested) is meant for display.
  - O(state=present) writes the token the O(state=request) task obtained for this host (read on the controller from
    O(tokens_var), never passed as a task argument) atomically, with O(owner), O(group) and O(mode). The content is
    never shown, not in diffs and not in results.
  - O(state=absent) removes the token file.
  - The token goes to a path that survives a reboot (default C(/var/lib/istio/token/istio-token)); the role links
    C(/var/run/secrets/tokens/istio-token), which pilot-agent reads and which is lost at reboot, to it.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  state:
    description:
      - What to do; see the description.
    type: str
    choices: [inspect, request, present, absent]
    default: inspect
  path:
    description:
      - The token file on the host. Required with O(state=inspect), O(state=present) and O(state=absent).
    type: path
  namespace:
    description:
      - Namespace of the service account (C(fleetmesh_namespace)). Required with O(state=inspect).
    type: str
  service_account:
    description:
      - Service account the token is for (C(fleetmesh_service_account)). Required with O(state=inspect).
    type: str
  audience:
    description:
      - Audience the token must carry and is requested for.
    type: str
    default: istio-ca
  expiration:
    description:
      - Requested lifetime of new tokens in seconds, 600 (10 minutes) to 604800 (7 days). The API server may
        shorten it; the expiry that counts is the token's own.
    type: int
    default: 86400
  refresh_before:
    description:
      - A token that expires within this many seconds is replaced. Must be less than O(expiration).
    type: int
    default: 43200
  hosts:
    description:
      - With O(state=request), the hosts to get tokens for. Default C(ansible_play_batch).
    type: list
    elements: str
  inspect_var:
    description:
      - With O(state=request), the variable each host registered from O(state=inspect).
    type: str
    default: __istio_sidecar_token_state
  tokens_var:
    description:
      - With O(state=present), the variable registered from the O(state=request) task.
    type: str
    default: __istio_sidecar_tokens
  token:
    description:
      - With O(state=request), a token to hand to every host instead of asking the API (for example one made
        with C(kubectl create token --audience istio-ca)). It must be for each host's service account and
        O(audience) and not expire within O(refresh_before). Never logged or returned.
    type: str
  owner:
    description:
      - Owner of the token file with O(state=present).
    type: str
    default: istio-proxy
  group:
    description:
      - Group of the token file with O(state=present).
    type: str
    default: istio-proxy
  mode:
    description:
      - Mode of the token file with O(state=present), V(0400) or V(0600).
    type: str
    default: "0400"
    choices: ["0400", "0600"]
extends_documentation_fragment:
  - fleetmesh.envoy.k8s_auth
  - fleetmesh.envoy.k8s_auth.action_group
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
    details: With O(state=request) use C(run_once=true); the task covers every host in O(hosts).
  check_mode:
    support: full
    details: In check mode O(state=request) makes no TokenRequest and O(state=present) reports the change it would make.
  diff_mode:
    support: partial
    details: The diff names the file and the old and new expiry, never the token.
  platform:
    platforms: posix
notes:
  - The Kubernetes options (O(kubeconfig) and the rest) are used with O(state=request) only, on the controller.
  - The identity of the kubeconfig needs C(create) on C(serviceaccounts/token) in the namespaces of the hosts,
    as the ClusterRole in C(roles/mesh_registration/files/rbac.yml) grants.
seealso:
  - name: istio#42603, /var/run/secrets lost at reboot on VMs
    description: Why the token lives outside /var/run.
    link: https://github.com/istio/istio/issues/42603
"""

EXAMPLES = r"""
- name: Read the expiry of the current istio-token (never its value)
  fleetmesh.envoy.istio_token:
    state: inspect
    path: /var/lib/istio/token/istio-token
    namespace: "{{ fleetmesh_namespace }}"
    service_account: "{{ fleetmesh_service_account }}"
  register: __istio_sidecar_token_state

- name: Request new tokens, one TokenRequest per service account, on the controller
  fleetmesh.envoy.istio_token:
    state: request
    kubeconfig: "{{ fleetmesh_kubeconfig }}"
  run_once: true
  no_log: true
  register: __istio_sidecar_tokens

- name: Write the new token where it survives a reboot
  fleetmesh.envoy.istio_token:
    state: present
    path: /var/lib/istio/token/istio-token
  when: __istio_sidecar_token_state.refresh
  no_log: true
"""

RETURN = r"""
exists:
  description: Whether the token file exists (O(state=inspect)).
  returned: state is inspect
  type: bool
subject:
  description: The token's C(sub) claim, C(system:serviceaccount:<namespace>:<service account>).
  returned: state is inspect or present and a token is there
  type: str
  sample: system:serviceaccount:bookinfo:reviews
audiences:
  description: The token's audiences.
  returned: state is inspect or present and a token is there
  type: list
  elements: str
  sample: [istio-ca]
expires_at:
  description: Expiry of the token, seconds since the epoch.
  returned: state is inspect or present and a token is there
  type: int
expires_in:
  description: Seconds until the token expires (negative when expired).
  returned: state is inspect or present and a token is there
  type: int
refresh:
  description: Whether the token must be replaced.
  returned: state is inspect
  type: bool
reason:
  description: Why the token must be replaced, or null.
  returned: state is inspect
  type: str
request:
  description: The service account and audience this host needs a token for (read by O(state=request)).
  returned: state is inspect
  type: dict
requested:
  description: Per service account, the hosts that got a new token and its expiry. Never a token.
  returned: state is request
  type: list
  elements: dict
tokens:
  description: Host name to token. The result is marked no_log.
  returned: state is request
  type: dict
"""

import copy
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import istio
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import atomic_write
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC


def _read(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def inspect(module, now):
    params = module.params
    raw = _read(params['path'])
    want = istio.subject(params['namespace'], params['service_account'])
    result = {'changed': False, 'exists': raw is not None,
              'request': {'namespace': params['namespace'], 'service_account': params['service_account'],
                          'audience': params['audience']}}
    facts = None
    if raw is not None:
        try:
            facts = istio.token_facts(istio.jwt_claims(raw), now)
            result.update(facts)
        except istio.TokenError as err:
            result['unreadable'] = str(err)
    if result.get('unreadable'):
        reason = 'the token file holds no usable token: %s' % result.pop('unreadable')
    else:
        reason = istio.refresh_reason(facts, want, params['audience'], params['refresh_before'], now)
    result.update(refresh=reason is not None, reason=reason)
    return result


def _ids(module):
    import grp
    import pwd
    try:
        uid = pwd.getpwnam(module.params['owner']).pw_uid
        gid = grp.getgrnam(module.params['group']).gr_gid
    except KeyError as err:
        module.fail_json(msg='owner or group of the token does not exist on the host: %s' % err)
    return uid, gid


def present(module, now):
    params = module.params
    token = params['token']
    if not token:
        # Check mode: the controller made no TokenRequest, so there is nothing to compare with.
        if module.check_mode:
            return {'changed': True, 'msg': 'would write a new istio-token (check mode: no TokenRequest was made)'}
        module.fail_json(msg='no token for this host in %s; run the state=request task first' % params['tokens_var'])
    data = token.strip().encode('ascii') + b'\n'
    old = _read(params['path'])
    mode = int(params['mode'], 8)
    uid, gid = _ids(module)
    st = os.stat(params['path']) if old is not None else None
    content_changed = old != data
    attrs_changed = st is not None and (st.st_uid != uid or st.st_gid != gid or (st.st_mode & 0o7777) != mode)
    facts = istio.token_facts(istio.jwt_claims(token), now)
    result = dict(facts)
    result['changed'] = content_changed or attrs_changed
    if module._diff and result['changed']:
        before = 'absent' if old is None else 'token expiring at %s' % _exp_text(old, now)
        result['diff'] = {'before_header': params['path'], 'after_header': params['path'],
                          'before': '<%s>\n' % before, 'after': '<token expiring at %s>\n' % facts['expires_at']}
    if module.check_mode or not result['changed']:
        return result
    if content_changed:
        atomic_write(params['path'], data, uid, gid, mode, module=module)
    else:
        os.chown(params['path'], uid, gid)
        os.chmod(params['path'], mode)
    return result


def _exp_text(raw, now):
    try:
        return str(istio.token_facts(istio.jwt_claims(raw), now)['expires_at'])
    except istio.TokenError:
        return 'unknown (unreadable token)'


def absent(module):
    path = module.params['path']
    exists = os.path.lexists(path)
    result = {'changed': exists}
    if module._diff and exists:
        result['diff'] = {'before_header': path, 'after_header': path, 'before': '<token>\n', 'after': ''}
    if exists and not module.check_mode:
        os.unlink(path)
    return result


def argument_spec():
    """Every option of the module and of its action plugin (the action does state=request itself)."""
    spec = dict(
        state=dict(type='str', choices=['inspect', 'request', 'present', 'absent'], default='inspect'),
        path=dict(type='path'),
        namespace=dict(type='str'),
        service_account=dict(type='str'),
        audience=dict(type='str', default=istio.DEFAULT_AUDIENCE),
        expiration=dict(type='int', default=86400),
        refresh_before=dict(type='int', default=43200),
        hosts=dict(type='list', elements='str'),
        inspect_var=dict(type='str', default='__istio_sidecar_token_state'),
        tokens_var=dict(type='str', default='__istio_sidecar_tokens', no_log=False),
        token=dict(type='str', no_log=True),
        owner=dict(type='str', default='istio-proxy'),
        group=dict(type='str', default='istio-proxy'),
        mode=dict(type='str', default='0400', choices=['0400', '0600']),
    )
    spec.update(copy.deepcopy(AUTH_ARGUMENT_SPEC))
    return spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[('state', 'inspect', ('path', 'namespace', 'service_account')),
                     ('state', 'present', ('path',)), ('state', 'absent', ('path',))],
        supports_check_mode=True,
    )
    if module.params['state'] == 'request':
        module.fail_json(msg='state=request runs on the controller in the fleetmesh.envoy.istio_token action plugin; '
                             'call the module by that name, not through a different action')
    now = time.time()
    try:
        if module.params['state'] == 'inspect':
            result = inspect(module, now)
        elif module.params['state'] == 'present':
            result = present(module, now)
        else:
            result = absent(module)
    except istio.TokenError as err:
        module.fail_json(msg=str(err))
    except OSError as err:
        module.fail_json(msg='%s: %s' % (module.params['path'], err.strerror or err))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
