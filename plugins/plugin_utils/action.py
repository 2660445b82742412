# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one skeleton of the collection's action plugins (controller side only, never shipped to a host)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase


class ControllerAction(ActionBase):
    """An action that runs on the controller: it validates its arguments against ``argument_spec()`` and hands
    them to ``act``. It never connects to the host unless a subclass sets ``_requires_connection = True``."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    ARGUMENT_SPEC = {}

    def argument_spec(self):
        return self.ARGUMENT_SPEC

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused
        _validation, args = self.validate_argument_spec(argument_spec=self.argument_spec())
        return self.act(result, args, task_vars or {})

    def act(self, result, args, task_vars):
        """Update and return ``result`` for the validated ``args``."""
        raise NotImplementedError


def errors_result(result, errors, failed_headline, passed_msg):
    """Fail ``result`` with every error, one a line under ``failed_headline`` (which may hold ``{count}``, as
    "3 problems"), or set ``passed_msg``; nothing is changed either way."""
    result.update(changed=False, errors=errors)
    if errors:
        count = '%d problem%s' % (len(errors), 's' if len(errors) > 1 else '')
        result.update(failed=True, msg=failed_headline.replace('{count}', count) + '\n' + '\n'.join(errors))
    else:
        result['msg'] = passed_msg
    return result
