# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Reconciling a registration set: ownership, no-op detection and prune (the objects come from registration.py).

``list_owned`` reads what a registration set owns (one list request per kind, by the ownership labels);
``discover_and_list_owned`` does it in the same round as discovery.
``reconcile`` compares the desired objects with them, applies what differs and deletes what is no longer
desired:

* unchanged objects are recognised without a request (``kube.apply.unchanged``);
* names that a desired object would take but that belong to objects without the ownership labels are
  refused (never touched) unless ``adopt``; names of another registration set always;
* before anything is written, one parallel round checks the verbs the changes need with
  SelfSubjectAccessReviews, looks up the names new objects take, and tries the changes with ``dryRun=All``
  (every update and delete, one create per kind and namespace; in check mode everything, and stops there);
  only when all of that passes is anything written;
* errors name the verb and resource (403), the other field manager and its fields (409 conflict, with the
  variable that takes them over), or the object and the server's reason, and say what was changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import registration as reg
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import apply as kube_apply
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.client import (
    KubeClient,
    KubeError,
    Resource,
    api_version,
    resource_name,
)

ADOPT_LIST_THRESHOLD = 8      # more candidate names than this in one namespace: list instead of get
FORCE_HINT = 'mesh_registration_force: true (the force option)'
# The verbs each change needs (server-side apply of a new object creates it).
VERBS = {'create': ('patch', 'create'), 'update': ('patch',), 'delete': ('delete',)}

Action = namedtuple('Action', ['action', 'resource', 'desired', 'live'])


def ownership_selector(registration: str) -> str:
    return '%s=%s,%s=%s' % (reg.MANAGED_BY_LABEL, reg.MANAGED_BY, reg.SET_LABEL, registration)


def list_owned(client: KubeClient, resources: Mapping[str, Resource], registration: str,
               namespaces: Optional[Sequence[str]] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every object of the registration set, in all namespaces (one list request per kind, in parallel).

    Where listing in all namespaces is forbidden, lists in ``namespaces`` instead and says so.
    Returns (objects, warnings).
    """
    selector = ownership_selector(registration)
    results = client.map(lambda res: client.list(res, selector), list(resources.values()))
    objects, warnings, fallback = [], [], []
    for res, items, error in results:
        if error is None:
            objects.extend(items)
        elif error.details.get('verb') == 'list' and namespaces:
            fallback.append(res)
        else:
            raise error
    if fallback:
        warnings.append('listing %s in all namespaces is forbidden; looked for managed objects only in namespaces %s, '
                        'so objects of this registration set elsewhere are not pruned'
                        % (', '.join(resource_name(r) for r in fallback), ', '.join(namespaces)))
        pairs = [(res, ns) for res in fallback for ns in namespaces]
        for _pair, items, error in client.map(lambda p: client.list(p[0], selector, p[1]), pairs):
            if error is not None:
                raise error
            objects.extend(items)
    return objects, warnings


def discover_and_list_owned(client: KubeClient, wanted: Sequence[Tuple[str, str, Sequence[str], bool]],
                            registration: str, namespaces: Optional[Sequence[str]] = None,
                            hint: str = '') -> Tuple[Dict[str, Resource], List[Dict[str, Any]], List[str]]:
    """``KubeClient.discover(wanted)`` and ``list_owned`` in one round when the API server serves each kind at its
    first version under its usual plural (the kinds of a registration set are all namespaced): a list that
    answers 200 there is what discovery would find. Kinds whose list does not answer 200 are discovered and
    listed as before (missing kinds, other versions, a list forbidden in all namespaces).

    Returns (resources, objects, warnings).
    """
    selector = ownership_selector(registration)
    guesses = [Resource(group, versions[0], kind, reg.KINDS[kind][2], True)
               for kind, group, versions, _required in wanted]
    resources, objects, unsure = OrderedDict(), [], set()  # type: Dict[str, Resource], List[Dict[str, Any]], set
    for res, items, error in client.map(lambda r: client.list(r, selector), guesses):
        if error is None:
            resources[res.kind] = res
            objects.extend(items)
        else:
            unsure.add(res.kind)
    warnings = []  # type: List[str]
    if unsure:
        found = client.discover([w for w in wanted if w[0] in unsure], hint=hint)
        more, warnings = list_owned(client, found, registration, namespaces)
        resources.update(found)
        objects.extend(more)
    return OrderedDict((w[0], resources[w[0]]) for w in wanted if w[0] in resources), objects, warnings


def reconcile(client: KubeClient, resources: Mapping[str, Resource], desired: Sequence[Mapping],
              live_owned: Sequence[Mapping], delete: Sequence[Mapping], prune_all: bool, registration: str,
              force: bool = False, adopt: bool = False, check_mode: bool = False,
              want_diff: bool = False) -> Dict[str, Any]:
    """Make the cluster hold ``desired``; delete ``delete`` (or, with prune_all, every owned object not desired)."""
    live_by_key = OrderedDict((reg.obj_key(o), o) for o in live_owned)
    actions = []  # type: List[Action]
    creates = []
    desired_keys = set()
    for obj in desired:
        key = reg.obj_key(obj)
        desired_keys.add(key)
        res = resources[obj['kind']]
        live = live_by_key.get(key)
        if live is None:
            creates.append(obj)
        elif kube_apply.unchanged(obj, live, reg.FIELD_MANAGER):
            actions.append(Action('unchanged', res, obj, live))
        else:
            actions.append(Action('update', res, obj, live))
    to_delete = list(delete)
    if prune_all:
        to_delete = [o for k, o in live_by_key.items() if k not in desired_keys]
    for obj in to_delete:
        if obj['kind'] in resources and reg.owned(obj, registration):  # never anything without our labels
            actions.append(Action('delete', resources[obj['kind']], None, obj))
    actions.extend(Action('create', resources[obj['kind']], obj, None) for obj in creates)

    results_by_id = {}  # type: Dict[int, Any]
    changes = [a for a in actions if a.action != 'unchanged']
    if changes:
        # One round before anything is written: may the identity use the verbs, are the names of new objects free,
        # and does the API server accept the changes (dryRun=All)? Check mode tries everything. Otherwise every
        # update and delete (where conflicts, RBAC and admission bite) and one create per kind and namespace (a
        # missing namespace, a schema the server rejects): new objects have no other field manager to conflict
        # with, and their values passed the input checks.
        sample = changes if check_mode else _dry_run_sample(changes)
        dry, adopted = _checks_and_dry_run(client, resources, creates, changes, sample, registration, adopt, force)
        if adopted:  # taken over: they are updates now, with a live object to diff and conflicts to find
            actions = [a for a in actions if not (a.action == 'create' and id(a.desired) in adopted)]
            actions.extend(adopted.values())
            changes = [a for a in actions if a.action != 'unchanged']
            dry = [r for r in dry if id(r[0].desired) not in adopted or r[0].action != 'create']
            dry += _execute(client, list(adopted.values()), force, dry_run=True)
        failed = [(a, e) for a, _r, e in dry if e is not None]
        if failed:
            raise _combined(failed, applied_nothing=True)
        results = dry
        if not check_mode:
            results = _execute(client, [a for a in changes if a.action != 'delete'], force, dry_run=False)
            results += _execute(client, [a for a in changes if a.action == 'delete'], force, dry_run=False)
            failed = [(a, e) for a, _r, e in results if e is not None]
            if failed:
                raise _combined(failed, applied_nothing=False, done=[a for a, _r, e in results if e is None])
        results_by_id = dict((id(a), r) for a, r, _e in results)
    return _outcome(actions, results_by_id, check_mode, want_diff)


def _outcome(actions: Sequence[Action], results_by_id: Mapping[int, Any], check_mode: bool,
             want_diff: bool) -> Dict[str, Any]:
    counts = OrderedDict([('created', 0), ('updated', 0), ('unchanged', 0), ('deleted', 0)])
    objects, diffs = [], []
    for act in actions:
        after = results_by_id.get(id(act))
        if act.action in ('unchanged', 'delete'):
            outcome = 'deleted' if act.action == 'delete' else 'unchanged'
        else:
            outcome = kube_apply.outcome(act.live, after, check_mode)
        counts[outcome] += 1
        if outcome == 'unchanged':
            continue
        source = act.desired or act.live
        meta = source['metadata']
        objects.append(OrderedDict([('kind', source['kind']), ('api_version', api_version(act.resource)),
                                    ('namespace', meta.get('namespace')), ('name', meta['name']),
                                    ('action', outcome)]))
        if want_diff:
            before = kube_apply.trimmed(act.live) if act.action != 'create' else {}
            diffs.append({'before_header': reg.obj_ref(source) + (' (absent)' if act.action == 'create' else ''),
                          'after_header': reg.obj_ref(source) + (' (deleted)' if outcome == 'deleted' else ''),
                          'before': before, 'after': kube_apply.trimmed(after) if outcome != 'deleted' else {}})
    return {'counts': counts, 'objects': objects, 'diff': diffs,
            'changed': any(counts[k] for k in ('created', 'updated', 'deleted'))}


def _needs(changes: Sequence[Action], name_lookups: Mapping[Tuple[str, str], List[Mapping]],
           resources: Mapping[str, Resource]) -> 'OrderedDict[Tuple[str, Resource, Optional[str]], str]':
    """(verb, resource, namespace) the changes need -> what needs it, for the access reviews."""
    firsts = OrderedDict()  # type: Dict[Tuple[str, Resource, Optional[str]], List[str]]
    for act in changes:
        obj = act.desired or act.live
        for verb in VERBS[act.action]:
            key = (verb, act.resource, obj['metadata'].get('namespace'))
            firsts.setdefault(key, []).append(reg.obj_ref(obj))
    for (kind, namespace), objs in name_lookups.items():
        verb = 'list' if len(objs) > ADOPT_LIST_THRESHOLD else 'get'
        firsts.setdefault((verb, resources[kind], namespace), []).extend(reg.obj_ref(o) for o in objs)
    return OrderedDict((key, refs[0] + (' and %d more' % (len(refs) - 1) if len(refs) > 1 else ''))
                       for key, refs in firsts.items())


def _checks_and_dry_run(client: KubeClient, resources: Mapping[str, Resource], creates: Sequence[Mapping],
                        changes: Sequence[Action], sample: Sequence[Action], registration: str, adopt: bool,
                        force: bool):
    """Review the verbs, look up the names new objects would take and dry-run ``sample``, in one parallel round.

    A verb the identity may not use fails the run. Names held by objects without the ownership labels are
    refused (never touched) unless ``adopt``; names held by another registration set always. Returns
    (dry-run results, {id(desired): Action} of adopted objects).
    """
    groups = OrderedDict()  # type: Dict[Tuple[str, str], List[Mapping]]
    for obj in creates:
        groups.setdefault((obj['kind'], obj['metadata']['namespace']), []).append(obj)
    needs = _needs(changes, groups, resources)

    def existing(group):
        kind, namespace = group
        objs = groups[group]
        if len(objs) > ADOPT_LIST_THRESHOLD:
            names = set(o['metadata']['name'] for o in objs)
            listed = client.list(resources[kind], namespace=namespace, metadata_only=True)
            return dict((o['metadata']['name'], o) for o in listed if o['metadata']['name'] in names)
        found = {}
        for obj in objs:
            live = client.get(resources[kind], namespace, obj['metadata']['name'])
            if live is not None:
                found[obj['metadata']['name']] = live
        return found

    def task(item):
        what, arg = item
        if what == 'review':
            return kube_apply.access_review(client, *arg)
        if what == 'names':
            return existing(arg)
        if arg.action == 'delete':
            return kube_apply.delete(client, arg.resource, arg.live, dry_run=True)
        return kube_apply.server_side_apply(client, arg.resource, arg.desired, reg.FIELD_MANAGER, force=force,
                                            dry_run=True, force_hint=FORCE_HINT)

    results = client.map(task, [('review', n) for n in needs] + [('names', g) for g in groups] +
                         [('dry', a) for a in sample])
    forbidden = kube_apply.denied([(item[1], result, error) for item, result, error in results
                                   if item[0] == 'review'], needs)
    if forbidden:
        raise _combined([(None, error) for error in forbidden], applied_nothing=True)
    dry = [(item[1], result, error) for item, result, error in results if item[0] == 'dry']
    adopted, errors = OrderedDict(), []  # type: Dict[int, Action], List[str]
    for (what, group), found, error in results:
        if what != 'names':
            continue
        if error is not None:
            raise error
        for obj in groups[group]:
            live = found.get(obj['metadata']['name'])
            if live is None:
                continue
            labels = (live.get('metadata') or {}).get('labels') or {}
            if labels.get(reg.MANAGED_BY_LABEL) == reg.MANAGED_BY and labels.get(reg.SET_LABEL) != registration:
                errors.append('%s already exists and belongs to registration set %s, not %s; allowed: one registration '
                              'set per object (use distinct services or namespaces per set)'
                              % (reg.obj_ref(obj), json.dumps(labels.get(reg.SET_LABEL)), json.dumps(registration)))
            elif not adopt:
                managers = sorted(set(e.get('manager', '?') for e in (live.get('metadata') or {}).get('managedFields')
                                      or []))
                errors.append('%s already exists and is not managed by fleetmesh.envoy (no %s=%s label%s); it is left '
                              'alone. Delete it, rename the service, or set mesh_registration_adopt: true (the adopt '
                              'option) to take it over'
                              % (reg.obj_ref(obj), reg.MANAGED_BY_LABEL, reg.MANAGED_BY,
                                 '; field managers: %s' % ', '.join(managers) if managers else ''))
            else:
                res = resources[obj['kind']]
                live = client.get(res, group[1], obj['metadata']['name']) or live
                adopted[id(obj)] = Action('update', res, obj, live)
    if errors:
        raise KubeError('; '.join(errors) + '. Nothing was changed.')
    return dry, adopted


def _dry_run_sample(changes: Sequence[Action]) -> List[Action]:
    sample, seen = [], set()
    for act in changes:
        if act.action == 'create':
            key = (act.desired['kind'], act.desired['metadata'].get('namespace'))
            if key in seen:
                continue
            seen.add(key)
        sample.append(act)
    return sample


def _execute(client: KubeClient, actions: Sequence[Action], force: bool, dry_run: bool):
    def run(act):
        if act.action == 'delete':
            return kube_apply.delete(client, act.resource, act.live, dry_run=dry_run)
        return kube_apply.server_side_apply(client, act.resource, act.desired, reg.FIELD_MANAGER, force=force,
                                            dry_run=dry_run, force_hint=FORCE_HINT)
    return client.map(run, actions)


def _combined(failed, applied_nothing: bool, done: Sequence[Action] = ()) -> KubeError:
    messages, keys = [], set()
    for _act, error in failed:
        if error.key not in keys:
            keys.add(error.key)
            messages.append(error.message)
    shown = messages[:10]
    more = len(messages) - len(shown)
    text = '; '.join(shown) + (' (and %d more errors)' % more if more else '')
    if applied_nothing:
        text += '. Nothing was changed.'
    else:
        text += '. %d change(s) were made before the failure.' % len(done)
    details = {}
    for _act, error in failed:
        details.update(error.details)
    return KubeError(text, details)
