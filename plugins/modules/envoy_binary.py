# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: envoy_binary
short_description: Install Envoy versions side by side, verify their checksum and switch the active one
version_added: 0.1.0
description:
  - Keeps Envoy binaries in C(<root>/<version>/envoy) with a C(current) link to the active version, so a
    rollback is a link switch.
  - One call does the whole job on the host. Without O(src), it only reports whether the version is already
    installed (RV(needs_artifact)), so a caller pushes the artifact only when it is missing.
  - With O(src) (a binary, or a C(.gz) of one), the binary is unpacked next to its final place, its sha256 is
    compared with O(sha256) and C(envoy --version) must report O(version). Only then is it renamed into place.
    On a mismatch nothing is replaced and the running version is untouched.
  - With O(activate=true) the C(current) link is switched atomically. The last O(keep) versions are kept;
    the active and the previously active version are never removed.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  version:
    description: Envoy version, V(X.Y.Z).
    type: str
    required: true
  sha256:
    description: Expected sha256 of the uncompressed binary.
    type: str
    required: true
  src:
    description:
      - Path on the host of the pushed artifact. A name ending in C(.gz) is decompressed.
      - When omitted, the module installs nothing and reports RV(needs_artifact).
    type: path
  root:
    description: Directory that holds one sub-directory per version and the C(current) link.
    type: path
    default: /opt/fleetmesh/envoy
  activate:
    description: Point the C(current) link at O(version).
    type: bool
    default: true
  keep:
    description: Number of installed versions to keep (at least 1).
    type: int
    default: 2
  remove_src:
    description: Remove O(src) after a successful install.
    type: bool
    default: false
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
attributes:
  diff_mode:
    details: The diff shows the active version before and after.
"""

EXAMPLES = r"""
- name: Is Envoy 1.40.0 installed already?
  fleetmesh.envoy.envoy_binary:
    version: 1.40.0
    sha256: 8aa137a7d00994ce43f613556f5a120709229f63bedb86eedde5ccbc402c2b80
  register: envoy_probe

- name: Push the compressed binary only when needed
  ansible.builtin.copy:
    src: /var/cache/fleetmesh/artifacts/envoy/1.40.0/envoy.gz
    dest: /var/cache/fleetmesh/envoy-1.40.0.gz
    mode: "0600"
  when: envoy_probe.needs_artifact

- name: Install and activate it
  fleetmesh.envoy.envoy_binary:
    version: 1.40.0
    sha256: 8aa137a7d00994ce43f613556f5a120709229f63bedb86eedde5ccbc402c2b80
    src: /var/cache/fleetmesh/envoy-1.40.0.gz
    remove_src: true
  when: envoy_probe.needs_artifact
"""

RETURN = r"""
needs_artifact:
  description: The version is not installed and O(src) was not given.
  returned: always
  type: bool
path:
  description: Path of the binary of O(version).
  returned: always
  type: str
  sample: /opt/fleetmesh/envoy/1.40.0/envoy
installed:
  description: Whether the binary was installed in this run.
  returned: always
  type: bool
active_version:
  description: The version C(current) points at after the run.
  returned: always
  type: str
previous_version:
  description: The version C(current) pointed at before the run, or null.
  returned: always
  type: str
hot_restart_version:
  description: C(--hot-restart-version) of O(version), read only when the active version changes; empty otherwise.
  returned: always
  type: str
previous_hot_restart_version:
  description: C(--hot-restart-version) of the previously active version, or empty.
  returned: always
  type: str
hot_restart_compatible:
  description: Whether the active version can be reached from the previous one by a hot restart.
  returned: always
  type: bool
removed_versions:
  description: Versions removed to keep O(keep) versions.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy_install import activate, check_input


def main():
    module = AnsibleModule(
        argument_spec={
            'version': {'type': 'str', 'required': True},
            'sha256': {'type': 'str', 'required': True},
            'src': {'type': 'path'},
            'root': {'type': 'path', 'default': '/opt/fleetmesh/envoy'},
            'activate': {'type': 'bool', 'default': True},
            'keep': {'type': 'int', 'default': 2},
            'remove_src': {'type': 'bool', 'default': False},
        },
        supports_check_mode=True,
    )
    p = module.params
    sha256 = p['sha256'].lower()
    check_input(module, p['version'], sha256, p['keep'])
    result = activate(module, p['root'], p['version'], sha256, p['keep'], src=p['src'],
                      remove_src=p['remove_src'], do_activate=p['activate'])
    if module._diff and not result['needs_artifact']:
        result['diff'] = {'before': 'active: %s\n' % result['previous_version'],
                          'after': 'active: %s\n' % result['active_version']}
    module.exit_json(**result)


if __name__ == '__main__':
    main()
