# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.validate: run the collection's checks over role variables, on the controller only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import validate_model


class ActionModule(ActionBase):
    """Validate variables with validation.validate_model; never connects to the host."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused

        _validation, args = self.validate_argument_spec(
            argument_spec={
                'checks': {'type': 'list', 'elements': 'str', 'required': True},
                'vars': {'type': 'dict', 'required': True},
            },
        )
        errors = validate_model(args['vars'], args['checks'])
        result.update(changed=False, checks=args['checks'], errors=errors)
        if errors:
            result['failed'] = True
            count = f'{len(errors)} problem' + ('s' if len(errors) > 1 else '')
            result['msg'] = f'{count} found by fleetmesh.envoy.validate:\n' + '\n'.join(errors)
        else:
            result['msg'] = f"fleetmesh.envoy.validate: no problems found by {', '.join(args['checks'])}"
        return result
