# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: envoy_instance
short_description: Lay down everything one Envoy instance needs on a host, in one call
version_added: 0.1.0
description:
  - Converges, in one module call (one SSH round trip), the system user and group, the hot-restart wrapper,
    the systemd template unit, the instance directory and environment file, and the bootstrap configuration
    of one named Envoy instance.
  - The bootstrap is written only after C(envoy --mode validate) with O(envoy_binary) accepted it, in a temporary
    file beside it that is then moved over it; when Envoy rejects it the task fails with Envoy's message and no
    file of the instance is changed.
  - It does not start or reload the service; RV(unit_changed) and RV(restart_needed) tell the caller what to do.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  name:
    description: Instance name; the unit is C(fleetmesh-envoy@<name>.service).
    type: str
    required: true
  user:
    description: System user the instance runs as; created when missing.
    type: str
    default: envoy
  group:
    description: Group of O(user); created when missing.
    type: str
    default: envoy
  shell:
    description: Login shell of a created user. Default is the host's C(nologin) (C(/usr/sbin/nologin) or C(/sbin/nologin)).
    type: path
  manage_user:
    description: Create O(user) and O(group) when they are missing.
    type: bool
    default: true
  conf_dir:
    description: Directory of the instance (environment file and bootstrap).
    type: path
    required: true
  env_content:
    description: Content of C(instance.env) in O(conf_dir).
    type: str
    required: true
  config_content:
    description: The bootstrap (JSON or YAML text), written to C(envoy.json) in O(conf_dir).
    type: str
    required: true
  envoy_binary:
    description:
      - The Envoy binary that will run the config and validates it.
      - Required unless O(install) is given, which names the binary C(<root>/<version>/envoy).
    type: path
  install:
    description:
      - Also make an installed Envoy version the active one, in the same call (the no-op path of the role
        is one round trip per host). The checksum stamp of C(<root>/<version>/envoy) is checked, the
        bootstrap is validated with that binary, and only then is C(current) switched and are old
        versions pruned, as M(fleetmesh.envoy.envoy_binary) does.
      - When the version is not installed, nothing at all is changed and RV(needs_artifact) is true; the
        caller installs it with M(fleetmesh.envoy.envoy_binary) and calls this module again.
    type: dict
    suboptions:
      version:
        description: Envoy version, C(X.Y.Z).
        type: str
        required: true
      sha256:
        description: sha256 of the binary.
        type: str
        required: true
      root:
        description: Directory of the side-by-side versions.
        type: path
        default: /opt/fleetmesh/envoy
      keep:
        description: How many versions to keep (the active and previous ones are always kept).
        type: int
        default: 2
      assume_installed:
        description:
          - In check mode only, act as if the version were installed (an earlier task of the same check-mode
            run would have installed it), and report the switch and the files without validating the bootstrap.
          - Ignored outside check mode.
        type: bool
        default: false
  wrapper_path:
    description: Where the hot-restart wrapper goes. Skipped when O(wrapper_content) is empty.
    type: path
    default: /usr/libexec/fleetmesh-envoy-run
  wrapper_content:
    description: Content of the wrapper.
    type: str
    default: ""
  unit_path:
    description: Where the systemd template unit goes. Skipped when O(unit_content) is empty.
    type: path
    default: /etc/systemd/system/fleetmesh-envoy@.service
  unit_content:
    description: Content of the systemd template unit.
    type: str
    default: ""
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
attributes:
  check_mode:
    details: The bootstrap is still validated, in a temporary file, so check mode catches a config Envoy rejects.
"""

EXAMPLES = r"""
- name: Converge the files of the instance
  fleetmesh.envoy.envoy_instance:
    name: main
    conf_dir: /etc/fleetmesh/envoy/main
    env_content: "{{ lookup('ansible.builtin.template', 'instance.env.j2') }}"
    config_content: "{{ bootstrap | ansible.builtin.to_nice_json }}"
    envoy_binary: /opt/fleetmesh/envoy/1.40.0/envoy
    wrapper_content: "{{ lookup('ansible.builtin.file', 'fleetmesh-envoy-run') }}"
    unit_content: "{{ lookup('ansible.builtin.template', 'fleetmesh-envoy@.service.j2') }}"
  register: instance
"""

RETURN = r"""
changed_files:
  description: Files written (or that would be written in check mode).
  returned: always
  type: list
  elements: str
user_created:
  description: Whether the user or group was created.
  returned: always
  type: bool
unit_changed:
  description: The unit file changed; systemd needs a daemon-reload.
  returned: always
  type: bool
restart_needed:
  description: The environment or the bootstrap changed; a running instance needs a hot restart.
  returned: always
  type: bool
service_running:
  description: Whether C(fleetmesh-envoy@<name>.service) is enabled and active (read with C(systemctl), not changed).
  returned: always
  type: bool
config:
  description: Path of the bootstrap.
  returned: always
  type: str
needs_artifact:
  description: With O(install), the version is not installed; nothing was changed.
  returned: when O(install) is given
  type: bool
active_version:
  description: With O(install), the active version after the call (see M(fleetmesh.envoy.envoy_binary)).
  returned: when O(install) is given and RV(needs_artifact) is false
  type: str
previous_version:
  description: With O(install), the version that was active before the call.
  returned: when O(install) is given
  type: str
hot_restart_compatible:
  description: With O(install), whether the running epoch can hot-restart into the active binary.
  returned: when O(install) is given
  type: bool
path:
  description: With O(install), the binary of the version.
  returned: when O(install) is given
  type: str
removed_versions:
  description: With O(install), versions pruned.
  returned: when O(install) is given
  type: list
  elements: str
"""

import grp
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.sysuser import ensure_system_user, exists
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy_install import (
    activate,
    active_version,
    check_input,
    stamp_ok,
)
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    EnvoyValidateError,
    atomic_write_validated,
    validate_content,
)
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import attributes_differ, set_attributes

REJECTED = 'Envoy rejected the configuration: '


def _read(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except (IOError, OSError):
        return None


class Instance(object):
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.changed_files = []
        self.diffs = []
        self.prevalidated = False

    def ensure_user(self):
        p = self.p
        return bool(p['manage_user']) and ensure_system_user(self.module, p['user'], p['group'], p['shell'])

    def want_group(self):
        # In check mode a group that would be created does not exist yet: compare with root.
        return self.p['group'] if exists(grp.getgrnam, self.p['group']) else None

    def plain_file(self, path, content, mode, group='root'):
        """Write a text file atomically when its content, owner or mode differ."""
        data = content.encode('utf-8')
        before = _read(path)
        if before == data and not attributes_differ(path, 'root', group, mode):
            return False
        self.changed_files.append(path)
        self.diffs.append({'before_header': path, 'after_header': path,
                           'before': (before or b'').decode('utf-8', 'replace'), 'after': content})
        if not self.module.check_mode:
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            ok, text = atomic_write_validated(path, data, None, 'root', group, mode, module=self.module)
            if not ok:
                self.module.fail_json(msg='cannot write %s: %s' % (path, text))
        return True

    def conf_dir(self):
        path, group = self.p['conf_dir'], self.want_group()
        if os.path.isdir(path) and not attributes_differ(path, 'root', group, 0o750):
            return
        self.changed_files.append(path + '/')
        if not self.module.check_mode:
            if not os.path.isdir(path):
                os.makedirs(path, 0o750)
            set_attributes(path, 'root', group, 0o750)

    def config(self):
        path = os.path.join(self.p['conf_dir'], 'envoy.json')
        content = self.p['config_content']
        data = content.encode('utf-8')
        before = _read(path)
        group = self.want_group()
        binary = self.p['envoy_binary']
        if not os.path.exists(binary):
            if not self.module.check_mode:
                self.module.fail_json(msg='envoy_binary: %s does not exist on the host' % binary)
            self.module.warn('check mode: %s is not installed yet, so the bootstrap was not validated' % binary)
            self.changed_files.append(path)
            return before != data
        try:
            if before == data:
                if attributes_differ(path, 'root', group, 0o640):
                    self.changed_files.append(path)
                    if not self.module.check_mode:
                        set_attributes(path, 'root', group, 0o640)
                    return True
                return False
            if self.module.check_mode or not os.path.isdir(self.p['conf_dir']):
                ok, text = validate_content(binary, data, path, directory='/tmp')
            else:
                ok, text = atomic_write_validated(path, data, None if self.prevalidated else binary, 'root', group, 0o640,
                                                  module=self.module)
        except (EnvoyValidateError, ValueError) as err:
            self.module.fail_json(msg=str(err))
        if not ok:
            self.module.fail_json(msg=REJECTED + text, config=path)
        self.changed_files.append(path)
        self.diffs.append({'before_header': path, 'after_header': path,
                           'before': (before or b'').decode('utf-8', 'replace'), 'after': content})
        return True


def main():
    module = AnsibleModule(
        argument_spec={
            'name': {'type': 'str', 'required': True},
            'user': {'type': 'str', 'default': 'envoy'},
            'group': {'type': 'str', 'default': 'envoy'},
            'shell': {'type': 'path'},
            'manage_user': {'type': 'bool', 'default': True},
            'conf_dir': {'type': 'path', 'required': True},
            'env_content': {'type': 'str', 'required': True},
            'config_content': {'type': 'str', 'required': True},
            'envoy_binary': {'type': 'path'},
            'install': {'type': 'dict', 'options': {
                'version': {'type': 'str', 'required': True},
                'sha256': {'type': 'str', 'required': True},
                'root': {'type': 'path', 'default': '/opt/fleetmesh/envoy'},
                'keep': {'type': 'int', 'default': 2},
                'assume_installed': {'type': 'bool', 'default': False},
            }},
            'wrapper_path': {'type': 'path', 'default': '/usr/libexec/fleetmesh-envoy-run'},
            'wrapper_content': {'type': 'str', 'default': ''},
            'unit_path': {'type': 'path', 'default': '/etc/systemd/system/fleetmesh-envoy@.service'},
            'unit_content': {'type': 'str', 'default': ''},
        },
        required_one_of=[('envoy_binary', 'install')],
        supports_check_mode=True,
    )
    p = module.params
    inst = Instance(module)
    wanted = p['install']
    if wanted:
        wanted['sha256'] = wanted['sha256'].lower()
        check_input(module, wanted['version'], wanted['sha256'], wanted['keep'], prefix='install.')
        version_dir = os.path.join(wanted['root'], wanted['version'])
        p['envoy_binary'] = os.path.join(version_dir, 'envoy')
        pending = module.check_mode and wanted['assume_installed']
        if not stamp_ok(version_dir, wanted['sha256']) and not pending:
            module.exit_json(changed=False, needs_artifact=True, path=p['envoy_binary'],
                             previous_version=active_version(wanted['root']), hot_restart_compatible=False, changed_files=[],
                             user_created=False, unit_changed=False, restart_needed=False, service_running=False,
                             config=os.path.join(p['conf_dir'], 'envoy.json'))
    # Validate the bootstrap first: a config Envoy rejects must change nothing at all.
    binary = p['envoy_binary']
    if os.path.exists(binary) and _read(os.path.join(p['conf_dir'], 'envoy.json')) != p['config_content'].encode('utf-8'):
        try:
            ok, text = validate_content(binary, p['config_content'].encode('utf-8'),
                                        os.path.join(p['conf_dir'], 'envoy.json'), directory='/tmp')
        except (EnvoyValidateError, ValueError) as err:
            module.fail_json(msg=str(err))
        if not ok:
            module.fail_json(msg=REJECTED + text, config=os.path.join(p['conf_dir'], 'envoy.json'))
        inst.prevalidated = True

    # The version switch comes after the bootstrap passed its binary, and before the files.
    switched = activate(module, wanted['root'], wanted['version'], wanted['sha256'], wanted['keep'],
                        pending=wanted['assume_installed']) if wanted else {}

    user_created = inst.ensure_user()
    wrapper_changed = bool(p['wrapper_content']) and inst.plain_file(p['wrapper_path'], p['wrapper_content'], 0o644)
    unit_changed = bool(p['unit_content']) and inst.plain_file(p['unit_path'], p['unit_content'], 0o644)
    inst.conf_dir()
    env_changed = inst.plain_file(os.path.join(p['conf_dir'], 'instance.env'), p['env_content'], 0o640,
                                  group=inst.want_group())
    config_changed = inst.config()

    unit = 'fleetmesh-envoy@%s.service' % p['name']
    systemctl = module.get_bin_path('systemctl')
    running = False
    if systemctl:
        rc_active, _out, _err = module.run_command([systemctl, 'is-active', '--quiet', unit])
        rc_enabled, _out, _err = module.run_command([systemctl, 'is-enabled', '--quiet', unit])
        running = rc_active == 0 and rc_enabled == 0
    result = {
        'service_running': running,
        'changed': bool(user_created or inst.changed_files),
        'changed_files': inst.changed_files,
        'user_created': user_created,
        'unit_changed': unit_changed,
        'restart_needed': bool(env_changed or config_changed or wrapper_changed),
        'config': os.path.join(p['conf_dir'], 'envoy.json'),
    }
    if wanted:
        result.update((k, v) for k, v in switched.items() if k != 'changed')
        result['changed'] = result['changed'] or switched['changed']
        if switched['active_version'] != switched['previous_version'] or switched['removed_versions']:
            after = 'active: %s\nremoved: %s\n' % (switched['active_version'], ', '.join(switched['removed_versions']))
            inst.diffs.insert(0, {'before_header': 'Envoy versions', 'after_header': 'Envoy versions',
                                  'before': 'active: %s\n' % switched['previous_version'], 'after': after})
    if module._diff and inst.diffs:
        result['diff'] = inst.diffs
    module.exit_json(**result)


if __name__ == '__main__':
    main()
