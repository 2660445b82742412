# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: envoy_config
short_description: Write an Envoy bootstrap file only after Envoy itself accepted it
version_added: 0.1.0
description:
  - Writes O(content) to O(dest) when it differs, after C(envoy --mode validate) accepted it.
  - The new text is written to a temporary file in the directory of O(dest) (with the same suffix, so Envoy
    reads it as YAML or JSON the same way), given its owner, group and mode, validated, synced to disk and
    renamed over O(dest). When Envoy rejects it, O(dest) is not touched and the task fails with Envoy's own message.
  - When the content is unchanged, it is validated again (with O(validate=true)), so a new Envoy binary that
    no longer accepts an existing configuration is caught before it is started.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  dest:
    description:
      - Path of the Envoy bootstrap file. Its suffix decides how Envoy parses it
        (V(.yaml) or V(.yml) as YAML, V(.json) as JSON).
      - A symbolic link is followed; the file it points to is replaced.
    type: path
    required: true
  content:
    description:
      - The bootstrap configuration, as YAML or JSON text.
    type: str
    required: true
  envoy_binary:
    description:
      - Path of the Envoy binary that validates the configuration.
      - Default is C(envoy) from E(PATH) or C(/usr/local/bin).
      - Use the binary that will run this configuration, so that an upgrade is validated with the new version.
    type: path
  validate:
    description:
      - Run C(envoy --mode validate) before writing. With V(false) the file is written without validation.
    type: bool
    default: true
  owner:
    description:
      - User name or uid that should own the file. Default is the owner of the existing file, or the user running the module.
    type: str
  group:
    description:
      - Group name or gid of the file. Default is the group of the existing file, or the group of the user running the module.
    type: str
  mode:
    description:
      - Octal permissions of the file, as a quoted string such as V('0640').
      - Default is the mode of the existing file, or V(0666) less the umask for a new one.
    type: raw
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Check mode still validates the content with Envoy, in a temporary file, and reports whether O(dest) would change.
  diff_mode:
    support: full
  platform:
    platforms: posix
seealso:
  - module: fleetmesh.envoy.envoy_admin
  - name: Envoy command line options (--mode validate)
    description: How Envoy validates a configuration without serving.
    link: https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-mode
"""

EXAMPLES = r"""
- name: Write the Envoy bootstrap, validated by the Envoy that will run it
  fleetmesh.envoy.envoy_config:
    dest: /etc/envoy/envoy.yaml
    content: "{{ lookup('ansible.builtin.template', 'envoy.yaml.j2') }}"
    envoy_binary: /opt/envoy/1.40.0/envoy
    owner: root
    group: envoy
    mode: "0640"
  register: envoy_bootstrap

- name: Restart Envoy only when the file changed
  ansible.builtin.debug:
    msg: "bootstrap changed, sha256 {{ envoy_bootstrap.sha256 }}"
  when: envoy_bootstrap is changed
"""

RETURN = r"""
dest:
  description: The file written (the target of a symbolic link O(dest)).
  returned: always
  type: str
  sample: /etc/envoy/envoy.yaml
sha256:
  description: SHA-256 of O(content).
  returned: always
  type: str
  sample: 5f1ebbb1a1d1d5f1c2a8e7d9e4b3a2f1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5
validated:
  description: Whether Envoy validated the content in this run.
  returned: always
  type: bool
  sample: true
"""

import hashlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    EnvoyValidateError,
    atomic_write_validated,
    attributes_differ,
    set_attributes,
    validate_content,
)
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    ValidationError,
    file_mode,
)

REJECTED = 'Envoy rejected the configuration: '


def main():
    module = AnsibleModule(
        argument_spec={
            'dest': {'type': 'path', 'required': True},
            'content': {'type': 'str', 'required': True},
            'envoy_binary': {'type': 'path'},
            'validate': {'type': 'bool', 'default': True},
            'owner': {'type': 'str'},
            'group': {'type': 'str'},
            'mode': {'type': 'raw'},
        },
        supports_check_mode=True,
    )
    params = module.params
    dest = os.path.realpath(params['dest']) if os.path.islink(params['dest']) else params['dest']
    content = params['content'].encode('utf-8')
    owner, group = params['owner'], params['group']
    try:
        mode = file_mode(params['mode'])
    except ValidationError as err:
        module.fail_json(msg=str(err))

    if os.path.isdir(dest):
        module.fail_json(msg=f'dest: {dest} is a directory; allowed: a file path')
    if not module.check_mode and not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        module.fail_json(msg=f'dest: the directory of {dest} does not exist')

    before = None
    if os.path.exists(dest):
        with open(dest, 'rb') as handle:
            before = handle.read()
    content_changed = before != content
    try:
        attrs_changed = before is not None and attributes_differ(dest, owner, group, mode)
    except ValueError as err:
        module.fail_json(msg=str(err))

    binary = None
    if params['validate']:
        binary = params['envoy_binary'] or module.get_bin_path('envoy', required=True, opt_dirs=['/usr/local/bin'])

    result = {
        'changed': content_changed or attrs_changed,
        'dest': dest,
        'validated': binary is not None,
        'sha256': hashlib.sha256(content).hexdigest(),
    }
    if module._diff:
        result['diff'] = {
            'before_header': dest,
            'after_header': dest,
            'before': '' if before is None else before.decode('utf-8', 'replace'),
            'after': params['content'],
        }

    try:
        if content_changed and not module.check_mode:
            ok, text = atomic_write_validated(dest, content, binary, owner, group, mode)
        elif binary is not None:
            ok, text = validate_content(binary, content, dest)
        else:
            ok, text = True, ''
    except (EnvoyValidateError, ValueError) as err:
        module.fail_json(msg=str(err), **result)
    except OSError as err:
        module.fail_json(msg=f'cannot write {dest}: {err}', **result)
    if not ok:
        result['changed'] = False
        module.fail_json(msg=REJECTED + text, **result)

    if attrs_changed and not content_changed and not module.check_mode:
        set_attributes(dest, owner, group, mode)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
