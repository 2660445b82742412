# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:

    # Options of every module that talks to the Envoy admin API (module_utils envoy.ADMIN_ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  address:
    description:
      - Address of the Envoy admin listener, as given to Envoy's C(admin.address).
      - Must be a loopback address (V(127.0.0.0/8), V(::1) or V(localhost)) unless O(allow_non_loopback=true).
    type: str
    default: 127.0.0.1
  port:
    description:
      - Port of the Envoy admin listener.
    type: int
    default: 9901
  timeout:
    description:
      - Seconds to wait for one answer of the admin API, and for actions that wait (such as V(wait_ready)) in total.
    type: int
    default: 10
  allow_non_loopback:
    description:
      - Allow an admin O(address) that is not loopback. The admin API has no authentication; keep it on loopback.
    type: bool
    default: false
notes:
  - The admin API is reached with plain HTTP from the managed host itself; proxy environment variables are ignored.
"""
