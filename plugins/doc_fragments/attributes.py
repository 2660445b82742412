# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """The attributes of the collection's modules, as community.crypto and kubernetes.core keep theirs.

    A module names one of these fragments and writes under C(attributes) only what differs (a C(details) text,
    another C(support)); its own keys win over the fragment's.
    """

    # A module that runs on the managed host: check mode and diff mode supported, POSIX hosts.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
"""

    # An action that runs on the controller only (plugins/action), never connecting to the host.
    CONTROLLER = r"""
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  become:
    description: Is usable alongside become keywords.
    support: none
  bypass_host_loop:
    description: Forces a 'global' task that does not execute per host.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    platforms: all
    support: N/A
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  connection:
    description: Uses the target's configured connection information to execute code on it.
    support: none
  delegation:
    description: Can be used in conjunction with delegate_to and related keywords.
    support: none
    details: Runs on the controller in any case.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""
