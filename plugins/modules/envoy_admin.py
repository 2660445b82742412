# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: envoy_admin
short_description: Read and steer a running Envoy through its admin API
version_added: 0.1.0
description:
  - Reads server information and stats from a running Envoy, waits for it to be ready, fails or restores its
    health checks, and drains its listeners, through the admin API on loopback.
  - Every run returns RV(server_info), read after the action.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  action:
    description:
      - V(server_info) reads the version, state, uptime and hot restart epoch.
      - V(wait_ready) waits up to O(timeout) seconds until C(GET /ready) answers C(200) (state C(LIVE)).
      - V(healthcheck_fail) makes Envoy fail health checks (state C(DRAINING)) so load balancers stop sending
        new traffic. Changed when the state was not C(DRAINING) before.
      - V(healthcheck_ok) makes Envoy pass health checks again. Changed when the state was C(DRAINING) before.
      - V(drain_listeners) drains the listeners (C(POST /drain_listeners)), then waits up to O(drain_wait)
        seconds for open downstream connections to close. Changed unless a non-graceful drain already stopped
        the listeners; a graceful drain in progress cannot be seen through the admin API, so repeating one
        reports changed again.
      - V(stats) returns counters, gauges and text readouts matching O(stats_filter).
    type: str
    choices: [server_info, wait_ready, healthcheck_fail, healthcheck_ok, drain_listeners, stats]
    default: server_info
  stats_filter:
    description:
      - RE2 regular expression on stat names for O(action=stats), for example C(^server[.]).
      - All stats when not set.
    type: str
  drain_graceful:
    description:
      - For O(action=drain_listeners), enter Envoy's graceful drain period (C(--drain-time-s)) before the
        listeners close, instead of closing them at once.
    type: bool
    default: true
  drain_inbound_only:
    description:
      - For O(action=drain_listeners), drain only inbound listeners (C(traffic_direction=INBOUND)).
    type: bool
    default: false
  drain_wait:
    description:
      - For O(action=drain_listeners), seconds to wait for open downstream connections to reach zero,
        polling the listeners' C(downstream_cx_active) gauges. V(0) does not wait.
      - The task does not fail when connections remain; see RV(active_connections) and RV(drained).
    type: int
    default: 0
extends_documentation_fragment:
  - fleetmesh.envoy.envoy_admin
  - fleetmesh.envoy.attributes
attributes:
  check_mode:
    details: Reading actions run; V(healthcheck_fail), V(healthcheck_ok) and V(drain_listeners) only report whether they would change the state.
  diff_mode:
    support: none
seealso:
  - module: fleetmesh.envoy.envoy_instance
  - name: Envoy administration interface
    description: The admin API endpoints this module calls.
    link: https://www.envoyproxy.io/docs/envoy/latest/operations/admin
"""

EXAMPLES = r"""
- name: Read the running Envoy's version and hot restart epoch
  fleetmesh.envoy.envoy_admin:
    action: server_info
  register: envoy_info

- name: Wait until Envoy serves
  fleetmesh.envoy.envoy_admin:
    action: wait_ready
    timeout: 60

- name: Take the host out of the load balancer before an upgrade
  fleetmesh.envoy.envoy_admin:
    action: healthcheck_fail

- name: Drain listeners and wait up to 30 seconds for connections to close
  fleetmesh.envoy.envoy_admin:
    action: drain_listeners
    drain_wait: 30

- name: Read the server stats
  fleetmesh.envoy.envoy_admin:
    action: stats
    stats_filter: '^server\.'
  register: envoy_stats
"""

RETURN = r"""
server_info:
  description: The server as read after the action.
  returned: success
  type: dict
  contains:
    version:
      description: Envoy's version, X.Y.Z.
      type: str
      sample: 1.40.0
    build:
      description: Envoy's full build string.
      type: str
      sample: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL
    state:
      description: C(LIVE), C(DRAINING), C(PRE_INITIALIZING) or C(INITIALIZING).
      type: str
      sample: LIVE
    uptime_seconds:
      description: Seconds since this process (this hot restart epoch) started.
      type: int
      sample: 42
    hot_restart_epoch:
      description: The C(--restart-epoch) this process was started with.
      type: int
      sample: 0
ready:
  description: Whether Envoy answered C(/ready) with C(200), for O(action=wait_ready).
  returned: when O(action=wait_ready)
  type: bool
  sample: true
stats:
  description: Stat name to value, for O(action=stats). Histograms are not included.
  returned: when O(action=stats)
  type: dict
  sample: {"server.live": 1, "server.state": 0}
active_connections:
  description: Open downstream connections on all listeners but the admin one, after the drain wait.
  returned: when O(action=drain_listeners) and not in check mode
  type: int
  sample: 0
drained:
  description: Whether no downstream connection was open at the end of the drain wait.
  returned: when O(action=drain_listeners) and not in check mode
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    ADMIN_ARGUMENT_SPEC,
    STATE_DRAINING,
    AdminClient,
    EnvoyAdminError,
)

ACTIONS = ['server_info', 'wait_ready', 'healthcheck_fail', 'healthcheck_ok', 'drain_listeners', 'stats']


def run(module, client):
    action = module.params['action']
    check_mode = module.check_mode
    result = {'changed': False}

    if action == 'wait_ready':
        client.wait_ready(module.params['timeout'])
        result['ready'] = True
    elif action == 'stats':
        result['stats'] = client.stats(module.params['stats_filter'])
    elif action in ('healthcheck_fail', 'healthcheck_ok'):
        draining = client.server_info()['state'] == STATE_DRAINING
        result['changed'] = not draining if action == 'healthcheck_fail' else draining
        if not check_mode:
            # Posting again when nothing changes is harmless and settles states that server_info cannot show
            # (health checks failed while Envoy is still initializing).
            (client.healthcheck_fail if action == 'healthcheck_fail' else client.healthcheck_ok)()
    elif action == 'drain_listeners':
        result['changed'] = not client.listeners_stopped()
        if not check_mode:
            if result['changed']:
                client.drain_listeners(graceful=module.params['drain_graceful'],
                                       inbound_only=module.params['drain_inbound_only'])
            active = client.wait_connections_drained(module.params['drain_wait'])
            result.update(active_connections=active, drained=active == 0)
    result['server_info'] = client.server_info()
    return result


def main():
    argument_spec = dict(ADMIN_ARGUMENT_SPEC)
    argument_spec.update({
        'action': {'type': 'str', 'default': 'server_info', 'choices': ACTIONS},
        'stats_filter': {'type': 'str'},
        'drain_graceful': {'type': 'bool', 'default': True},
        'drain_inbound_only': {'type': 'bool', 'default': False},
        'drain_wait': {'type': 'int', 'default': 0},
    })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params['drain_wait'] < 0:
        module.fail_json(msg=f"drain_wait: {module.params['drain_wait']} is not a valid wait; allowed: seconds, 0 or more")
    try:
        client = AdminClient(module.params['address'], module.params['port'], module.params['timeout'],
                             module.params['allow_non_loopback'])
        module.exit_json(**run(module, client))
    except EnvoyAdminError as err:
        module.fail_json(msg=str(err))


if __name__ == '__main__':
    main()
