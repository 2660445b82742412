# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Changing objects: server-side apply, deletes, dry runs and access reviews, and the no-op check.

Whether applying an object would change anything is decided without a request: the fields the field
manager owns (its ``Apply`` entry in ``metadata.managedFields``) must be exactly the fields of the desired
object, and every desired value must be what the server holds (``unchanged``). Errors name the other field
manager and its fields (409 conflict) and the option that takes them over.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.client import (
    KubeClient,
    KubeError,
    Resource,
    forbidden_error,
    object_ref,
    resource_path,
)

APPLY_CONTENT_TYPE = 'application/apply-patch+yaml'
REVIEW_PATH = '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews'
_CONFLICT_RE = re.compile(r'conflict with "(?P<manager>[^"]+)"(?: using (?P<version>\S+))?')


def server_side_apply(client: KubeClient, resource: Resource, obj: Mapping, field_manager: str, force: bool = False,
                      dry_run: bool = False, force_hint: str = 'force: true') -> Dict[str, Any]:
    """Apply obj as field_manager; the object the server holds (or would hold, with dry_run) after it."""
    meta = obj['metadata']
    query = [('fieldManager', field_manager)]
    if force:
        query.append(('force', 'true'))
    if dry_run:
        query.append(('dryRun', 'All'))
    resp = client.request('PATCH', resource_path(resource, meta.get('namespace'), meta['name']), query, body=obj,
                          content_type=APPLY_CONTENT_TYPE)
    if resp.status == 409:
        raise conflict_error(object_ref(resource.kind, meta.get('namespace'), meta['name']),
                             resp.data if isinstance(resp.data, Mapping) else {}, field_manager, force_hint)
    return client.check_response(resp, 'patch', resource, meta.get('namespace'), meta['name'])


def delete(client: KubeClient, resource: Resource, obj: Mapping, dry_run: bool = False) -> Optional[Dict[str, Any]]:
    """Delete obj (only the very object read: its uid is a precondition); None when it is gone already."""
    meta = obj['metadata']
    body = {'apiVersion': 'v1', 'kind': 'DeleteOptions', 'propagationPolicy': 'Background'}
    if meta.get('uid'):
        body['preconditions'] = {'uid': meta['uid']}
    if dry_run:
        body['dryRun'] = ['All']
    resp = client.request('DELETE', resource_path(resource, meta.get('namespace'), meta['name']), body=body)
    if resp.status == 404:
        return None
    return client.check_response(resp, 'delete', resource, meta.get('namespace'), meta['name'], expect=(200, 202))


def access_review(client: KubeClient, verb: str, resource: Resource, namespace: Optional[str]) -> Optional[bool]:
    """May the kubeconfig's identity use verb (SelfSubjectAccessReview)? None when the review itself fails."""
    attrs = {'verb': verb, 'group': resource.group, 'resource': resource.plural}
    if namespace:
        attrs['namespace'] = namespace
    body = {'apiVersion': 'authorization.k8s.io/v1', 'kind': 'SelfSubjectAccessReview',
            'spec': {'resourceAttributes': attrs}}
    resp = client.request('POST', REVIEW_PATH, body=body)
    if resp.status not in (200, 201) or not isinstance(resp.data, Mapping):
        return None
    return bool((resp.data.get('status') or {}).get('allowed'))


def denied(reviews: Iterable[Tuple[Tuple[str, Resource, Optional[str]], Optional[bool], Any]],
           needed_for: Mapping[Tuple[str, Resource, Optional[str]], str]) -> List[KubeError]:
    """The forbidden errors of access reviews that said no; ``reviews`` as ``KubeClient.map`` returns them."""
    return [forbidden_error(need[0], need[1], need[2], needed_for.get(need, 'this run'))
            for need, allowed, error in reviews if error is None and allowed is False]


def conflict_error(target: str, status: Mapping, field_manager: str, force_hint: str = 'force: true') -> KubeError:
    causes = ((status.get('details') or {}).get('causes') or [])
    by_manager = OrderedDict()  # type: Dict[str, List[str]]
    for cause in causes:
        found = _CONFLICT_RE.search(str(cause.get('message') or ''))
        manager = found.group('manager') if found else 'another field manager'
        by_manager.setdefault(manager, []).append(str(cause.get('field') or '?'))
    if not by_manager:
        by_manager['another field manager'] = [str(status.get('message') or 'conflict')]
    parts = ['field manager "%s" owns %s' % (manager, ', '.join(fields)) for manager, fields in by_manager.items()]
    return KubeError('conflict: %s: %s, which this run would change. Set %s to take these fields over as field '
                     'manager "%s", or stop the other manager from setting them.'
                     % (target, '; '.join(parts), force_hint, field_manager),
                     {'conflicts': [{'manager': m, 'fields': f} for m, f in by_manager.items()]})


# --------------------------------------------------------------------------------------------
# Comparing desired and live objects without a request
# --------------------------------------------------------------------------------------------

# Lists the API server merges by key (associative lists) and maps it treats as one value (atomic),
# for the kinds the collection writes. Every other list is atomic, every other map granular.
ASSOCIATIVE_LISTS = {
    ('Service', ('spec', 'ports')): ('port', 'protocol'),
    ('ServiceEntry', ('spec', 'ports')): ('name',),
}
ATOMIC_MAPS = {
    ('Service', ('spec', 'selector')),
}
_IGNORED_TOP = ('apiVersion', 'kind', 'status')


def _key_json(values: Mapping) -> str:
    return 'k:' + json.dumps(values, sort_keys=True, separators=(',', ':'))


def fields_match(desired: Mapping, fields_v1: Mapping) -> bool:
    """Whether the fields an apply of desired would own are exactly those in fields_v1 (its managedFields entry)."""
    kind = desired.get('kind')
    top = dict((k, v) for k, v in desired.items() if k not in _IGNORED_TOP and k != 'metadata')
    meta = desired.get('metadata') or {}
    meta_fields = dict((k, meta[k]) for k in ('labels', 'annotations') if meta.get(k))
    if meta_fields:
        top['metadata'] = meta_fields
    return _node_match(top, fields_v1 or {}, kind, ())


def _children(node: Mapping) -> int:
    return len(node) - (1 if '.' in node else 0)


def _node_match(value: Any, node: Any, kind: Any, path: Tuple[str, ...]) -> bool:
    if not isinstance(node, Mapping):
        return False
    if isinstance(value, Mapping) and (kind, path) not in ATOMIC_MAPS:
        if _children(node) != len(value):
            return False
        for key, sub in value.items():
            child = node.get('f:' + key)
            if child is None or not _node_match(sub, child, kind, path + (key,)):
                return False
        return True
    if isinstance(value, list) and (kind, path) in ASSOCIATIVE_LISTS:
        return _list_match(value, node, kind, path)
    return _children(node) == 0


def _list_match(value: List[Any], node: Mapping, kind: Any, path: Tuple[str, ...]) -> bool:
    keys = ASSOCIATIVE_LISTS[(kind, path)]
    if _children(node) != len(value):
        return False
    normalized = None
    for item in value:
        key = _key_json(dict((k, item.get(k)) for k in keys if k in item))
        child = node.get(key)
        if child is None:  # the server may serialize a key differently: compare parsed
            if normalized is None:
                normalized = {}
                for raw, sub in node.items():
                    if raw.startswith('k:'):
                        try:
                            normalized[_key_json(json.loads(raw[2:]))] = sub
                        except ValueError:
                            pass
            child = normalized.get(key)
        if child is None or not isinstance(item, Mapping) or not _node_match(item, child, kind, path):
            return False
    return True


def _subset(desired: Any, live: Any) -> bool:
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and _subset(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(
            _subset(desired[i], live[i]) for i in range(len(desired)))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    return desired == live


def managed_entry(live: Mapping, field_manager: str) -> Optional[Mapping]:
    """The field manager's Apply entry of metadata.managedFields."""
    for entry in (live.get('metadata') or {}).get('managedFields') or []:
        if entry.get('manager') == field_manager and entry.get('operation') == 'Apply':
            return entry
    return None


def unchanged(desired: Mapping, live: Mapping, field_manager: str) -> bool:
    """True when applying desired as field_manager would change nothing: same owned fields, same values."""
    entry = managed_entry(live, field_manager)
    if entry is None:
        return False
    if not fields_match(desired, entry.get('fieldsV1') or {}):
        return False
    meta_d, meta_l = desired.get('metadata') or {}, live.get('metadata') or {}
    for mkey in ('labels', 'annotations'):
        if not _subset(meta_d.get(mkey) or {}, meta_l.get(mkey) or {}):
            return False
    return all(key in ('apiVersion', 'kind', 'metadata') or _subset(value, live.get(key))
               for key, value in desired.items())


def outcome(live: Optional[Mapping], after: Optional[Mapping], dry_run: bool) -> str:
    """What an apply did to live (or, with dry_run, would do): 'created', 'updated' or 'unchanged'."""
    if live is None:
        return 'created'
    if dry_run:
        return 'updated' if trimmed(after) != trimmed(live) else 'unchanged'
    same_version = (after or {}).get('metadata', {}).get('resourceVersion') == \
        (live.get('metadata') or {}).get('resourceVersion')
    return 'unchanged' if same_version else 'updated'


def trimmed(obj: Optional[Mapping]) -> Dict[str, Any]:
    """An object as a user wants to read it in a diff: no managedFields, versions, uids or status."""
    if not obj:
        return {}
    out = copy.deepcopy(dict(obj))
    meta = out.get('metadata') or {}
    for key in ('managedFields', 'resourceVersion', 'uid', 'creationTimestamp', 'generation', 'selfLink'):
        meta.pop(key, None)
    out.pop('status', None)
    return out
