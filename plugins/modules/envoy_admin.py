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
        new traffic, then waits up to O(wait_requests_drained) seconds for the requests in flight to end.
        Changed when the state was not C(DRAINING) before.
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
  wait_requests_drained:
    description:
      - For O(action=healthcheck_fail), seconds to wait, after the health check fails, until no HTTP request is in
        flight (the C(downstream_rq_active) gauges of every HTTP connection manager but the admin one).
      - The task fails when requests are still in flight after that time (RV(active_requests) says how many).
        V(0) does not wait.
    type: int
    default: 0
  expect_version:
    description:
      - Checked before the action, which is not done when it does not hold, for example a health gate before
        V(healthcheck_ok) (the gate and the action in one connection to the host).
      - The Envoy version (X.Y.Z) the server must report; the task fails naming the version it reports.
    type: str
  expect_state:
    description:
      - Checked before the action, like O(expect_version). The server state Envoy must report.
    type: str
    choices: [LIVE, DRAINING, PRE_INITIALIZING, INITIALIZING]
  probe_urls:
    description:
      - Checked before the action, like O(expect_version), in this order. URLs requested from the managed host
        (for example a route through Envoy's own listener) that must answer C(200) within O(probe_timeout) seconds
        each (redirects are followed when safe, as M(ansible.builtin.uri) does); the task fails naming the URL and
        what it answered.
    type: list
    elements: str
    default: []
  probe_timeout:
    description:
      - Seconds to wait for the answer of each of O(probe_urls).
    type: int
    default: 5
extends_documentation_fragment:
  - fleetmesh.envoy.envoy_admin
  - fleetmesh.envoy.attributes
attributes:
  check_mode:
    details: >-
      Reading actions and the checks before the action (O(expect_version), O(expect_state), O(probe_urls)) run;
      V(healthcheck_fail), V(healthcheck_ok) and V(drain_listeners) only report whether they would change the state.
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

- name: Take the host out of the load balancer and wait up to 10 seconds for its requests in flight to end
  fleetmesh.envoy.envoy_admin:
    action: healthcheck_fail
    wait_requests_drained: 10

- name: Health gate, then back into the load balancer (one connection to the host)
  fleetmesh.envoy.envoy_admin:
    action: healthcheck_ok
    expect_version: 1.40.0
    expect_state: LIVE
    probe_urls:
      - http://127.0.0.1:10000/

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
active_requests:
  description: HTTP requests still in flight at the end of the wait, for O(wait_requests_drained).
  returned: when O(action=healthcheck_fail), O(wait_requests_drained) is more than 0 and not in check mode
  type: int
  sample: 0
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

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    ADMIN_ARGUMENT_SPEC,
    STATE_DRAINING,
    AdminClient,
    EnvoyAdminError,
    probe_url,
)

ACTIONS = ['server_info', 'wait_ready', 'healthcheck_fail', 'healthcheck_ok', 'drain_listeners', 'stats']


def gate(module, client):
    """The checks before the action: a list of what does not hold."""
    params = module.params
    problems = []
    if params['expect_version'] or params['expect_state']:
        info = client.server_info()
        if params['expect_version'] and info['version'] != params['expect_version']:
            problems.append('Envoy serves version %s, expected %s' % (info['version'], params['expect_version']))
        if params['expect_state'] and info['state'] != params['expect_state']:
            problems.append('Envoy is %s, expected %s' % (info['state'], params['expect_state']))
    if not problems:
        for url in params['probe_urls']:
            answer = probe_url(url, params['probe_timeout'])
            if answer is not None:
                problems.append('GET %s answered %s, expected HTTP 200' % (url, answer))
                break
    return problems


def run(module, client):
    action = module.params['action']
    check_mode = module.check_mode
    result = {'changed': False}
    problems = gate(module, client)
    if problems:
        module.fail_json(msg='checks before %s: %s; nothing was done' % (action, '; '.join(problems)))

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
            wait = module.params['wait_requests_drained']
            if action == 'healthcheck_fail' and wait:
                result['active_requests'] = client.wait_requests_drained(wait)
                if result['active_requests']:
                    result['server_info'] = client.server_info()
                    module.fail_json(msg='%d request(s) still in flight %ds after the health check failed'
                                     % (result['active_requests'], wait), **result)
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
        'wait_requests_drained': {'type': 'int', 'default': 0},
        'expect_version': {'type': 'str'},
        'expect_state': {'type': 'str', 'choices': ['LIVE', 'DRAINING', 'PRE_INITIALIZING', 'INITIALIZING']},
        'probe_urls': {'type': 'list', 'elements': 'str', 'default': []},
        'probe_timeout': {'type': 'int', 'default': 5},
    })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    for name, least in (('drain_wait', 0), ('wait_requests_drained', 0), ('probe_timeout', 1)):
        if module.params[name] < least:
            module.fail_json(msg=f"{name}: {module.params[name]} is not a valid wait; allowed: seconds, {least} or more")
    if module.params['expect_version'] is not None and not re.match(r'^\d+\.\d+\.\d+$', module.params['expect_version']):
        module.fail_json(msg=f"expect_version: {module.params['expect_version']!r} is not a version; allowed: X.Y.Z")
    if module.params['wait_requests_drained'] and module.params['action'] != 'healthcheck_fail':
        module.fail_json(msg=f"wait_requests_drained: {module.params['wait_requests_drained']} is set for action "
                             f"{module.params['action']}; allowed: only with action healthcheck_fail")
    try:
        client = AdminClient(module.params['address'], module.params['port'], module.params['timeout'],
                             module.params['allow_non_loopback'])
        module.exit_json(**run(module, client))
    except EnvoyAdminError as err:
        module.fail_json(msg=str(err))


if __name__ == '__main__':
    main()
