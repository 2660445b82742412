# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""fleetmesh.envoy.mesh_registration: the registration in the controller's worker process when the task runs on the
controller (as the role runs it: ``delegate_to: localhost``), else the module of the same name.

Documented in plugins/modules/mesh_registration.py. Both run ``execute`` of that module on the same validated
arguments, so the result is the module's; in the worker there is no module process to start (a new Python, the
module payload built and unpacked, ``ansible.module_utils.basic`` imported): about a quarter of a registration
run. The module runs instead when the task would give it anything the worker does not have: another host (a
``delegate_to`` other than the controller), ``become``, ``async``, an ``environment``, or a controller Python without
the client libraries; and for arguments that do not validate or warn, so that the module reports them as before.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible_collections.fleetmesh.envoy.plugins.modules import mesh_registration
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
from ansible_collections.fleetmesh.envoy.plugins.plugin_utils.action import ControllerAction

MODULE = 'fleetmesh.envoy.mesh_registration'


class ActionModule(ControllerAction):
    """Run the registration here when the task runs on the controller, else on its host through the module."""

    _requires_connection = True  # to know where the task runs (the local connection costs nothing)

    def run(self, tmp=None, task_vars=None):
        result = super(ControllerAction, self).run(tmp, task_vars)  # ActionBase.run: checks, no validation yet
        del tmp  # unused
        validation = ArgumentSpecValidator(mesh_registration.argument_spec(),
                                           mutually_exclusive=mesh_registration.MUTUALLY_EXCLUSIVE)
        checked = validation.validate(self._task.args)
        # pylint: disable=protected-access
        if checked.error_messages or checked._warnings or checked._deprecations or not self._on_the_controller():
            result.update(self._execute_module(module_name=MODULE, module_args=self._task.args, task_vars=task_vars))
            return result
        out = mesh_registration.execute(checked.validated_parameters, check_mode=bool(self._task.check_mode),
                                        want_diff=bool(self._task.diff))
        if not out['warnings']:
            del out['warnings']
        # As a module's exit scrubs them: no value of a no_log option anywhere in the result.
        result.update(remove_values(out, checked._no_log_values) if checked._no_log_values else out)
        return result

    def _on_the_controller(self):
        """Whether the module would run right here: local connection, as this user, in the foreground, in this
        environment, with the client libraries in this Python."""
        environment = self._task.environment
        return (getattr(self._connection, 'transport', None) == 'local' and not self._play_context.become
                and not self._task.async_val and not any(environment or []) and kube.HAS_KUBERNETES)
