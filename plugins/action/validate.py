# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.validate: run the collection's checks over role variables, on the controller only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import validate_model
from ansible_collections.fleetmesh.envoy.plugins.plugin_utils.action import ControllerAction, errors_result


class ActionModule(ControllerAction):
    """Validate variables with validation.validate_model; never connects to the host."""

    ARGUMENT_SPEC = {
        'checks': {'type': 'list', 'elements': 'str', 'required': True},
        'vars': {'type': 'dict', 'required': True},
    }

    def act(self, result, args, task_vars):
        result['checks'] = args['checks']
        return errors_result(result, validate_model(args['vars'], args['checks']),
                             '{count} found by fleetmesh.envoy.validate:',
                             'fleetmesh.envoy.validate: no problems found by %s' % ', '.join(args['checks']))
