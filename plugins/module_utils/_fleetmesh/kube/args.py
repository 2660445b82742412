# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The options of every plugin that talks to the cluster (plugins/doc_fragments/k8s_auth.py).

No imports: the host half of istio_token takes these options too (its action plugin validates them), and a
host module must not need the ``kubernetes`` package.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# The action group of meta/runtime.yml: module_defaults for group/fleetmesh.envoy.kube set these once.
ACTION_GROUP = 'fleetmesh.envoy.kube'

PROXY_HEADERS_SPEC = dict(
    proxy_basic_auth=dict(type='str', no_log=True),
    basic_auth=dict(type='str', no_log=True),
    user_agent=dict(type='str'),
)

AUTH_ARGUMENT_SPEC = dict(
    kubeconfig=dict(type='path'),
    context=dict(type='str', aliases=['kube_context']),
    host=dict(type='str'),
    api_key=dict(type='str', no_log=True),
    ca_cert=dict(type='path', aliases=['ssl_ca_cert']),
    client_cert=dict(type='path', aliases=['cert_file']),
    client_key=dict(type='path', aliases=['key_file'], no_log=True),
    validate_certs=dict(type='bool', aliases=['verify_ssl']),
    proxy=dict(type='str'),
    no_proxy=dict(type='str'),
    proxy_headers=dict(type='dict', options=PROXY_HEADERS_SPEC),
    impersonate_user=dict(type='str'),
    impersonate_groups=dict(type='list', elements='str'),
    persist_config=dict(type='bool'),
    request_timeout=dict(type='int', default=30),
)
