# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mesh_registration
short_description: Register VM endpoints in Kubernetes (Istio, EndpointSlices, Contour) in one reconcile
version_added: 0.1.0
description:
  - Takes the whole desired set of VM endpoints of a registration set (normally every host of an inventory group,
    built by the role C(fleetmesh.envoy.mesh_registration) from the C(fleetmesh_*) variables) and reconciles it into
    Kubernetes objects by server-side apply with the field manager C(fleetmesh.envoy).
  - Runs on the controller once per play (C(run_once) and C(delegate_to=localhost)); one client, requests in
    parallel. There its action plugin runs it in Ansible's worker process, without a module process; with another
    C(delegate_to) host, C(become), C(async) or an C(environment) the module runs as usual.
  - The kinds are found by listing them where the API server usually serves them (an API discovery only for a kind
    that is not served there).
  - Every object it writes carries the labels C(app.kubernetes.io/managed-by=fleetmesh.envoy) and
    C(fleetmesh.envoy/registration=<registration>). Objects without them are never changed or deleted; objects of
    another registration set neither.
  - Unchanged objects are recognised from their managed fields without a request, so a re-run that changes
    nothing costs one list request per kind.
  - All input is checked before the first API request. Changes are checked with SelfSubjectAccessReviews for
    exactly the verbs they need, then tried with C(dryRun=All) (every update and delete, and one create per kind
    and namespace); when anything would fail, nothing is written.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  endpoints:
    description:
      - The desired endpoints, one per VM. Every field maps to an inventory model variable, named in messages.
      - With O(state=absent) only O(endpoints[].host) is needed.
    type: list
    elements: dict
    default: []
    suboptions:
      host:
        description:
          - Inventory name of the VM (C(inventory_hostname)). Identifies the VM's entries across runs.
        type: str
        required: true
      address:
        description:
          - IPv4 or IPv6 address of the VM (C(fleetmesh_address)). Unique within a service.
        type: str
      service:
        description:
          - Service the VM serves (C(fleetmesh_service)), a DNS-1123 label; a DNS-1035 label (starting with a
            letter) when a Kubernetes Service is built for it.
        type: str
      namespace:
        description:
          - Namespace of the service (C(fleetmesh_namespace)). It must exist.
        type: str
      ports:
        description:
          - Port name to port (C(fleetmesh_ports)), names with Istio protocol prefixes such as V(http) or V(grpc-api).
          - The same for every VM of a service.
        type: dict
      labels:
        description:
          - Workload labels (C(fleetmesh_labels)). C(app) defaults to the service name; the Service selects
            WorkloadEntries by C(app).
        type: dict
      weight:
        description:
          - Load balancing weight of the VM (C(fleetmesh_weight)) in WorkloadEntries and ServiceEntries.
        type: int
      locality:
        description:
          - C(region/zone/subzone) of the VM (C(fleetmesh_locality)). EndpointSlices get the zone part.
        type: str
      network:
        description:
          - Network of the VM (C(fleetmesh_network)).
        type: str
      service_account:
        description:
          - Kubernetes service account the VM's workload runs as (C(fleetmesh_service_account)).
        type: str
      healthy:
        description:
          - Whether the VM should receive traffic (C(mesh_registration_healthy)).
          - V(false) keeps the VM in EndpointSlices with C(conditions.ready=false) (and in legacy Endpoints as
            not ready); WorkloadEntry and ServiceEntry shapes leave the VM out, since Istio reads no readiness
            from them without health checks.
        type: bool
        default: true
      auto_register:
        description:
          - Whether istiod registers the VM (C(istio_sidecar_auto_register)). Its sidecar connects with
            C(ISTIO_META_AUTO_REGISTER_GROUP) and istiod creates its WorkloadEntry (C(<service>-<address>)) from the
            service's WorkloadGroup, and deletes it a grace period (C(PILOT_WORKLOAD_ENTRY_GRACE_PERIOD), 10 s)
            after the VM disconnects.
          - V(true) writes no WorkloadEntry for the VM (and removes the one this module wrote before); the VM stays
            in the service's Service and WorkloadGroup. Needs O(workload_group) and the V(workloadentry) shape.
        type: bool
        default: false
      endpoint_ports:
        description:
          - Port name to the port that answers on the VM for it (C(mesh_registration_endpoint_ports)), that is the
            Envoy listener in front of the app. Names not given reach the app port itself (as with the Istio
            sidecar, which intercepts the app port).
          - The Service keeps the app's port names and numbers (O(endpoints[].ports)); its C(targetPort), the
            EndpointSlice port and the WorkloadEntry/ServiceEntry endpoint ports are these. See C(docs/data-path.md).
          - The same for every VM of a service.
        type: dict
      host_info:
        description:
          - How Ansible reaches the VM and which Envoy version it runs, recorded for the
            P(fleetmesh.envoy.workloads#inventory) inventory in the annotation C(fleetmesh.envoy/host-info) (a JSON
            object on the VM's WorkloadEntry; a JSON object of them by host on ServiceEntries and EndpointSlices).
            That inventory gives them back as C(ansible_host), C(ansible_port), C(ansible_user) and
            C(fleetmesh_envoy_version), and groups hosts by Envoy version (C(envoy_1_40_0)).
          - Only the keys that are set are recorded; nothing else is accepted, so passwords, keys and tokens are
            never written to Kubernetes.
          - The role C(fleetmesh.envoy.mesh_registration) fills it from each host's C(ansible_host) (default
            C(inventory_hostname)), C(ansible_port), C(ansible_user) and C(envoy_version) (else
            C(fleetmesh_envoy_version), the version that inventory read back).
          - Left off a ServiceEntry or EndpointSlice (with a warning) whose annotations would pass 192 KiB; use the
            V(workloadentry) shape, or a smaller O(max_endpoints_per_slice), for such services.
        type: dict
        suboptions:
          ansible_host:
            description:
              - Host name or address Ansible connects to (C(ansible_host)), without spaces, at most 253 characters.
            type: str
          ansible_port:
            description:
              - Port Ansible connects to (C(ansible_port)), 1-65535.
            type: int
          ansible_user:
            description:
              - User Ansible connects as (C(ansible_user)), without spaces, at most 253 characters.
            type: str
          envoy_version:
            description:
              - Envoy version the VM runs (C(envoy_version)), V(X.Y.Z) such as V(1.40.0).
            type: str
  endpoints_json:
    description:
      - O(endpoints) as JSON text, a list of the same mappings, for large fleets. Ansible templates one string far
        faster than thousands of dictionaries (the role passes its desired set this way). Checked exactly like
        O(endpoints), whose fields it takes; mutually exclusive with it.
    type: str
  state:
    description:
      - V(present) registers O(endpoints). V(absent) removes exactly the entries of the hosts in O(endpoints)
        (their WorkloadEntries, their endpoints in ServiceEntries, EndpointSlices and Endpoints) and keeps every
        other host's; a service whose last host goes is deleted with all its objects.
    type: str
    choices: [present, absent]
    default: present
  prune:
    description:
      - With O(state=present), whether O(endpoints) is the complete desired set of the registration set.
      - V(true) deletes every object of the registration set that is not desired (a host removed from the
        inventory loses exactly its entries).
      - V(false) upserts only the given hosts, keeping the entries of hosts not given; use it for runs that see
        only part of the inventory (C(--limit)). The role chooses this for you.
    type: bool
    default: true
  registration:
    description:
      - Name of the registration set, the value of the C(fleetmesh.envoy/registration) label. Runs with different
        sets never prune each other's objects, and never write objects of another set.
    type: str
    default: default
  shapes:
    description:
      - The Kubernetes objects to build.
      - V(workloadentry) an Istio WorkloadEntry per VM and a Service selecting them by C(app) (plus a
        WorkloadGroup per service with O(workload_group)).
      - V(serviceentry) an Istio ServiceEntry per service, C(MESH_INTERNAL), resolution C(STATIC), with the VMs
        as endpoints and host C(<service>.<namespace>.svc.<cluster_domain>).
      - V(endpointslice) a selector-less Service and EndpointSlices labelled C(kubernetes.io/service-name) (the
        Contour/Gimbal pattern), at most O(max_endpoints_per_slice) endpoints per slice, one address family per
        slice; with O(legacy_endpoints) also v1 Endpoints.
      - V(httpproxy) the Contour HTTPProxies of O(httpproxies).
      - V(workloadentry) and V(endpointslice) exclude each other (both own the service's Service).
    type: list
    elements: str
    choices: [workloadentry, serviceentry, endpointslice, httpproxy]
    default: [workloadentry]
  workload_group:
    description:
      - With the V(workloadentry) shape, also build an Istio WorkloadGroup per service (named after the service,
        template C(app) label and service account of its VMs), from which istiod auto-registers the VMs whose
        sidecar connects with C(ISTIO_META_AUTO_REGISTER_GROUP) (O(endpoints[].auto_register)).
    type: bool
    default: false
  workload_group_probe:
    description:
      - The WorkloadGroup's C(probe), Istio's ReadinessProbe (C(mesh_registration_workload_group_probe)), with
        exactly one of C(httpGet), C(tcpSocket), C(exec), C(grpc), and optionally C(initialDelaySeconds),
        C(timeoutSeconds), C(periodSeconds), C(successThreshold), C(failureThreshold).
      - It is what C(istioctl x workload entry configure) copies into a VM's mesh config as C(readinessProbe); the
        VM's pilot-agent runs the probe of its own mesh config (the C(fleetmesh.envoy.istio_sidecar) role writes
        C(istio_sidecar_readiness_probe) there), so give both the same value. istiod sets the C(Healthy)
        condition of each WorkloadEntry it auto-registered from what the agent reports, and sends no traffic to
        an entry that is not healthy.
      - Needs O(workload_group) and the V(workloadentry) shape.
    type: dict
  max_endpoints_per_slice:
    description:
      - Largest number of endpoints in one EndpointSlice (1-1000). Kubernetes' own controller uses 100.
    type: int
    default: 100
  legacy_endpoints:
    description:
      - With the V(endpointslice) shape, also write v1 Endpoints (labelled
        C(endpointslice.kubernetes.io/skip-mirror=true)) for consumers that still read them.
    type: bool
    default: false
  httpproxies:
    description:
      - Contour HTTPProxies for the V(httpproxy) shape, routing a host and path prefixes to Services with weights.
        A route may mix VM services (registered by this run) and Kubernetes Services.
      - "Each item: C(name), C(namespace) (of the HTTPProxy and of the Services it routes to), C(fqdn)
        (C(spec.virtualhost.fqdn)), optional C(ingress_class_name), C(tls_secret_name)
        (C(spec.virtualhost.tls.secretName)), and C(routes)."
      - "Each route: C(prefix) (default V(/)), C(services), optional C(health_check) (V(true), V(false), or keys
        of O(httpproxy_health_check) that override it for this route), and optional C(retry_policy) (Contour's
        C(retryPolicy) from C(count) 1-10, C(per_try_timeout) such as V(2s), and C(retry_on), a list of Contour's
        retry conditions such as V(5xx), V(reset), V(connect-failure))."
      - "Each route service: C(name), C(port) (may be left out for a VM service with one port), C(weight)
        (Contour's default without weights is an even split), C(protocol) (Contour's upstream protocol: V(h2c),
        V(h2) or V(tls); left out, Contour follows the Service port's C(appProtocol), which this module sets from
        the port name), and C(validation) (C(caSecret) and C(subjectName) or C(subjectNames), Contour's upstream
        certificate validation, with C(protocol) V(tls) or V(h2))."
      - Any other key at any level is refused before any change, naming the key, where it is and the keys allowed.
      - A VM service of this registration set whose last host has left is taken out of every route; a route left
        without a service is removed, and an HTTPProxy left without a route is deleted, so that no HTTPProxy points
        at a deleted Service (Contour would mark the whole HTTPProxy invalid). RV(notes) says what was done.
        Such services are remembered in the annotation C(fleetmesh.envoy/vm-services) of the HTTPProxy, and come back
        into the routes when a host of theirs is registered again.
    type: list
    elements: dict
    default: []
  httpproxy_health_check:
    description:
      - Active health checking by Contour's Envoy (the route's C(healthCheckPolicy)) for every route of
        O(httpproxies), so that Envoy stops sending to a VM that dies between plays.
      - V(true) (the default when not set) or a mapping over the defaults C(enabled=true), C(path=/healthz) (the
        health path of the collection's Envoy, 503 while it drains), C(interval_seconds=2), C(timeout_seconds=1),
        C(unhealthy_threshold=2), C(healthy_threshold=1), and optional C(host); V(false) turns it off.
      - Kubernetes Services in the same route are checked on the same path; turn it off per route (C(health_check)
        set to V(false)) when they do not answer it.
    type: raw
  cluster_domain:
    description:
      - DNS domain of the cluster, for ServiceEntry hosts.
    type: str
    default: cluster.local
  force:
    description:
      - Take over fields that another field manager owns (server-side apply C(force=true)). Without it such a
        conflict fails the run, naming the manager and the fields.
    type: bool
    default: false
  adopt:
    description:
      - Take over existing objects that have a name this run needs but not the ownership labels (for example
        written by C(kubectl) or C(istioctl register)). Without it the run fails and leaves them alone.
    type: bool
    default: false
  parallel:
    description:
      - Most requests in flight at once (1-64).
    type: int
    default: 8
extends_documentation_fragment:
  - fleetmesh.envoy.k8s_auth
  - fleetmesh.envoy.k8s_auth.action_group
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Every change is sent with C(dryRun=All), so the API server's validation and admission run and the
      result shows what would change.
  diff_mode:
    support: full
    details: Before and after of every created, updated and deleted object, without managed fields and status.
  platform:
    platforms: posix
    details: Runs on the controller (C(delegate_to=localhost)), which needs the C(kubernetes) Python library.
seealso:
  - name: Server-Side Apply
    description: How field managers own fields, and what a conflict is.
    link: https://kubernetes.io/docs/reference/using-api/server-side-apply/
  - name: Istio WorkloadEntry
    description: The Istio object for a VM.
    link: https://istio.io/latest/docs/reference/config/networking/workload-entry/
"""

EXAMPLES = r"""
- name: Register every VM of the reviews and ratings groups (normally done by the role)
  fleetmesh.envoy.mesh_registration:
    kubeconfig: ~/.kube/config
    shapes: [workloadentry]
    workload_group: true
    endpoints:
      - host: vm-1
        address: 192.0.2.10
        service: reviews
        namespace: bookinfo
        ports: {http: 9080}
        labels: {app: reviews, version: v1}
        service_account: reviews
        network: vm-network
        locality: us-east/zone-a
        host_info:
          ansible_host: vm-1.example.com
          ansible_user: fleetadmin
          envoy_version: "1.40.0"
      - host: vm-2
        address: 192.0.2.11
        service: reviews
        namespace: bookinfo
        ports: {http: 9080}
        labels: {app: reviews, version: v1}
        service_account: reviews
  run_once: true
  delegate_to: localhost

- name: Selector-less Service + EndpointSlices, and a Contour HTTPProxy sending 20% to the Kubernetes pods
  fleetmesh.envoy.mesh_registration:
    shapes: [endpointslice, httpproxy]
    max_endpoints_per_slice: 50
    endpoints: "{{ my_endpoints }}"
    httpproxies:
      - name: reviews
        namespace: bookinfo
        fqdn: reviews.example.com
        routes:
          - prefix: /
            services:
              - name: reviews          # the VMs
                weight: 80
              - name: reviews-k8s      # a Kubernetes Service
                port: 9080
                weight: 20
  run_once: true
  delegate_to: localhost

- name: Decommission vm-2 (its entries only)
  fleetmesh.envoy.mesh_registration:
    state: absent
    endpoints:
      - host: vm-2
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
counts:
  description: How many objects were created, updated, unchanged and deleted (would be, in check mode).
  returned: success
  type: dict
  sample: {"created": 3, "updated": 1, "unchanged": 40, "deleted": 1}
objects:
  description:
    - Every object the run created, updated or deleted (would have, in check mode), with what happened to it.
      Unchanged objects are only counted in RV(counts).
    - Empty when nothing changed.
  returned: success
  type: list
  elements: dict
  contains:
    kind:
      description: Kind of the object.
      type: str
      sample: WorkloadEntry
    api_version:
      description: API version it was written with.
      type: str
      sample: networking.istio.io/v1
    namespace:
      description: Namespace of the object.
      type: str
      sample: bookinfo
    name:
      description: Name of the object.
      type: str
      sample: reviews-vm-1
    action:
      description: V(created), V(updated) or V(deleted).
      type: str
      sample: created
notes:
  description:
    - What the run did to HTTPProxy routes because a VM service lost its last host (would do, in check mode).
  returned: success
  type: list
  elements: str
  sample: ["HTTPProxy shop/web: route / no longer sends to web (no host left); it keeps web-k8s"]
mode:
  description:
    - V(full) the endpoints were the complete set and objects not desired were pruned; V(merge) only the given
      hosts were upserted; V(absent) only the given hosts were removed.
  returned: success
  type: str
  sample: full
registration:
  description: The registration set.
  returned: success
  type: str
  sample: default
api_url:
  description: URL of the API server the run talked to.
  returned: when the API was reached
  type: str
  sample: https://127.0.0.1:6443
requests:
  description: Number of HTTP requests sent to the API server.
  returned: when the API was reached
  type: int
  sample: 5
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import reconcile
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC


def argument_spec():
    spec = dict(
        endpoints=dict(type='list', elements='dict', default=[], options=dict(
            host=dict(type='str', required=True),
            address=dict(type='str'),
            service=dict(type='str'),
            namespace=dict(type='str'),
            ports=dict(type='dict'),
            labels=dict(type='dict'),
            weight=dict(type='int'),
            locality=dict(type='str'),
            network=dict(type='str'),
            service_account=dict(type='str'),
            healthy=dict(type='bool', default=True),
            auto_register=dict(type='bool', default=False),
            endpoint_ports=dict(type='dict'),
            host_info=dict(type='dict', options=dict(
                ansible_host=dict(type='str'),
                ansible_port=dict(type='int'),
                ansible_user=dict(type='str'),
                envoy_version=dict(type='str'),
            )),
        )),
        endpoints_json=dict(type='str'),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        prune=dict(type='bool', default=True),
        registration=dict(type='str', default='default'),
        shapes=dict(type='list', elements='str', default=['workloadentry'], choices=list(reg.SHAPES)),
        workload_group=dict(type='bool', default=False),
        workload_group_probe=dict(type='dict'),
        max_endpoints_per_slice=dict(type='int', default=100),
        legacy_endpoints=dict(type='bool', default=False),
        # Checked by registration.normalize (every level, unknown keys named with mesh_registration_httpproxies).
        httpproxies=dict(type='list', elements='dict', default=[]),
        httpproxy_health_check=dict(type='raw'),
        cluster_domain=dict(type='str', default='cluster.local'),
        force=dict(type='bool', default=False),
        adopt=dict(type='bool', default=False),
        parallel=dict(type='int', default=kube.DEFAULT_PARALLEL),
    )
    spec.update(AUTH_ARGUMENT_SPEC)
    return spec


MUTUALLY_EXCLUSIVE = [('endpoints', 'endpoints_json')]


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE)
    result = execute(module.params, module.check_mode, module._diff)
    for warning in result.pop('warnings', []):
        module.warn(warning)
    if result.pop('failed', False):
        module.fail_json(**result)
    module.exit_json(**result)


def execute(params, check_mode=False, want_diff=False):
    """The whole run for validated ``params``: the result (``failed`` and ``msg`` when it failed, ``warnings``).

    The module runs it, and so does the action plugin of the same name, in the controller's worker process when
    the task runs on the controller (no module process to start: a quarter of a registration run)."""
    result = dict(changed=False, registration=params['registration'], invocation=invocation(params))
    warnings = []

    def failed(msg, **details):
        return dict(result, failed=True, msg=msg, warnings=warnings, **details)

    # 1. Every input, before anything else (no API request when any is wrong).
    cfg, errors = reg.normalize(params)
    if not errors and cfg.state == 'present':
        errors = reg.duplicate_names(reg.build_full(cfg, _PLACEHOLDER_VERSIONS))
    if not 1 <= params['parallel'] <= kube.MAX_PARALLEL:
        errors.append('parallel: %d is not allowed; allowed: integer 1-%d' % (params['parallel'], kube.MAX_PARALLEL))
    if errors:
        return failed('invalid input, nothing was applied: ' + '; '.join(errors), errors=errors)

    client = None
    try:
        # 2. One client.
        client = kube.client_from_params(params, parallel=params['parallel'])
        result['api_url'] = client.url
        needed = reg.required_kinds(cfg.shapes, cfg.legacy_endpoints, cfg.workload_group)
        wanted = [(kind, group, versions, kind in needed) for kind, (group, versions, _plural) in reg.KINDS.items()]
        namespaces = sorted(set(ep.namespace for ep in cfg.endpoints if ep.namespace) |
                            set(p['namespace'] for p in cfg.httpproxies))
        # 3. What this registration set owns now (in the same round as the discovery).
        resources, live, list_warnings = reconcile.discover_and_list_owned(
            client, wanted, cfg.registration, namespaces,
            hint=': install the CRDs of the shapes in mesh_registration_shapes (Istio for '
                 'WorkloadEntry/WorkloadGroup/ServiceEntry, Contour for HTTPProxy)')
        warnings.extend(list_warnings)
        api_versions = dict((kind, kube.api_version(res)) for kind, res in resources.items())
        plan = reg.plan(cfg, api_versions, live)
        result['mode'] = plan.mode
        result['notes'] = list(plan.notes)
        if plan.errors:
            return failed('invalid input, nothing was applied: ' + '; '.join(plan.errors), errors=list(plan.errors))
        warnings.extend(reg.host_info_warnings(cfg, plan.desired))
        # 4. Apply what differs, delete what is no longer desired.
        outcome = reconcile.reconcile(client, resources, plan.desired, live, plan.delete, plan.prune_all,
                                      cfg.registration, force=params['force'], adopt=params['adopt'],
                                      check_mode=check_mode, want_diff=want_diff)
    except kube.KubeError as exc:
        if client is not None:
            result['requests'] = client.requests
        return failed(exc.message, **exc.details)
    except Exception as exc:  # pylint: disable=broad-except
        return failed('%s: %s' % (type(exc).__name__, kube.redact(str(exc))),
                      exception=kube.redact(traceback.format_exc()))
    finally:
        if client is not None:
            client.close()

    for warning in client.warnings:
        # Listing Endpoints (to prune them) warns on every run; say it only when asked to write them.
        if cfg.legacy_endpoints or 'Endpoints is deprecated' not in warning:
            warnings.append('Kubernetes API: %s' % warning)
    result.update(changed=outcome['changed'], counts=outcome['counts'], objects=outcome['objects'],
                  requests=client.requests, warnings=warnings)
    if want_diff:
        result['diff'] = outcome['diff']
    return result


def invocation(params):
    """The module arguments echoed back, with a large desired set summarized (it can be thousands of hosts)."""
    args = dict(params)
    for name in ('api_key', 'client_key'):
        if args.get(name) is not None:
            args[name] = 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'
    if args.get('proxy_headers'):
        args['proxy_headers'] = dict((k, v if v is None or k == 'user_agent' else 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER')
                                     for k, v in args['proxy_headers'].items())
    endpoints = args.get('endpoints') or []
    if len(endpoints) > INVOCATION_ENDPOINTS:
        hosts = [e.get('host') for e in endpoints if isinstance(e, dict)]
        args['endpoints'] = '%d endpoints (hosts %s ... %s), not echoed' % (len(endpoints), hosts[0], hosts[-1])
    if args.get('endpoints_json') and len(args['endpoints_json']) > 4096:
        args['endpoints_json'] = '%d characters of JSON, not echoed' % len(args['endpoints_json'])
    return {'module_args': args}


INVOCATION_ENDPOINTS = 50


# Names and shapes do not depend on versions; input checks build with these before discovery.
_PLACEHOLDER_VERSIONS = dict((kind, '%s/%s' % (group, versions[0]) if group else versions[0])
                             for kind, (group, versions, _plural) in reg.KINDS.items())


if __name__ == '__main__':
    main()
