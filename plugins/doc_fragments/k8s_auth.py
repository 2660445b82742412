# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:

    # Options of every module that talks to the Kubernetes API (module_utils k8s.AUTH_ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path of the kubeconfig file on the controller, as C(fleetmesh_kubeconfig) in the inventory model.
      - When not set, C($KUBECONFIG) or C(~/.kube/config), then the in-cluster service account when running in a pod.
      - Tokens and keys in the file are never returned.
    type: path
  context:
    description:
      - Context of the kubeconfig to use. The current context when not set.
    type: str
  host:
    description:
      - URL of the API server, overriding the kubeconfig's, for example V(https://127.0.0.1:6443).
      - With O(api_key) or O(client_cert) and no O(kubeconfig), no kubeconfig is read.
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
  request_timeout:
    description:
      - Seconds to wait for one answer of the API server.
    type: int
    default: 30
requirements:
  - kubernetes (Python library) >= 24.2.0 on the controller
notes:
  - The module talks to the API server from the controller; it does not use the managed hosts.
"""
