# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:

    # Options of every plugin that talks to the Kubernetes API (module_utils kube/args.py AUTH_ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path of the kubeconfig file on the controller, as C(fleetmesh_kubeconfig) in the inventory model.
      - When not set, C($KUBECONFIG) (several files are merged, as kubectl merges them) or C(~/.kube/config), then
        the in-cluster service account when running in a pod.
      - Every credential of a kubeconfig works, read by the C(kubernetes) Python library (as in
        kubernetes.core) - tokens and token files, client certificates, exec credential plugins (cloud CLIs,
        kubelogin), OIDC and the other auth providers, C(proxy-url) and C(tls-server-name).
      - Tokens and keys in the file are never returned.
    type: path
  context:
    description:
      - Context of the kubeconfig to use. The current context when not set.
    type: str
    aliases: [kube_context]
  host:
    description:
      - URL of the API server, overriding the kubeconfig's, for example V(https://127.0.0.1:6443).
      - With O(api_key), or O(client_cert) and O(client_key), and no O(kubeconfig) or O(context), no kubeconfig is
        read.
    type: str
  api_key:
    description:
      - Bearer token to authenticate with, overriding the kubeconfig's credentials. Never logged or returned.
    type: str
  ca_cert:
    description:
      - Path of the CA bundle that signed the API server's certificate, overriding the kubeconfig's.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path of a client certificate to authenticate with, overriding the kubeconfig's.
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path of the private key of O(client_cert). Never logged or returned.
    type: path
    aliases: [key_file]
  validate_certs:
    description:
      - Verify the API server's certificate. The kubeconfig's setting when not set (verification on by default).
    type: bool
    aliases: [verify_ssl]
  proxy:
    description:
      - URL of an HTTP or SOCKS proxy to reach the API server through, overriding the kubeconfig's C(proxy-url).
    type: str
  no_proxy:
    description:
      - Comma-separated hosts, domains and CIDRs reached without O(proxy), for example V(localhost,.svc,10.0.0.0/8).
    type: str
  proxy_headers:
    description:
      - Headers for the proxy.
    type: dict
    suboptions:
      proxy_basic_auth:
        description:
          - C(user:password) for the proxy's basic authentication. Never logged or returned.
        type: str
      basic_auth:
        description:
          - C(user:password) for basic authentication. Never logged or returned.
        type: str
      user_agent:
        description:
          - User-Agent sent to the proxy.
        type: str
  impersonate_user:
    description:
      - User to act as (the C(Impersonate-User) header); the kubeconfig's identity needs C(impersonate) on it.
    type: str
  impersonate_groups:
    description:
      - Groups to act as (C(Impersonate-Group) headers), with O(impersonate_user).
    type: list
    elements: str
  persist_config:
    description:
      - Write credentials the C(kubernetes) library refreshed (OIDC, GCP tokens) back to the kubeconfig file.
    type: bool
  request_timeout:
    description:
      - Seconds to wait for one answer of the API server.
    type: int
    default: 30
requirements:
  - kubernetes (Python library) >= 24.2.0 on the controller
notes:
  - The API server is reached from the controller (module tasks run on C(localhost) or with
    C(delegate_to=localhost)); the managed hosts are not used.
  - Every option that is not set is read from the environment variable C(K8S_AUTH_<OPTION>) when it is set, as
    kubernetes.core reads them (E(K8S_AUTH_KUBECONFIG), E(K8S_AUTH_CONTEXT), E(K8S_AUTH_HOST),
    E(K8S_AUTH_API_KEY), E(K8S_AUTH_VERIFY_SSL), E(K8S_AUTH_PROXY), E(K8S_AUTH_PROXY_HEADERS_PROXY_BASIC_AUTH), ...).
  - Every module that talks to the cluster is in the action group C(fleetmesh.envoy.kube), so a play can set the
    kubeconfig once for all of them with C(module_defaults) and C(group/fleetmesh.envoy.kube).
"""

    # The action_group attribute of the modules of meta/runtime.yml's action group kube.
    ACTION_GROUP = r"""
attributes:
  action_group:
    description: Use C(group/fleetmesh.envoy.kube) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - fleetmesh.envoy.kube
"""
