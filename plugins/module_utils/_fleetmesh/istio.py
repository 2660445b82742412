# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The istio-token of a VM: what the host holds (decoded without verifying, never printed) and
how the controller asks the Kubernetes TokenRequest API for new ones, one request per service account.

Nothing here imports the Kubernetes layer: ``request_tokens`` takes a client object with
``request(method, path, body=...)`` and ``map(fn, items)`` (``kube.client.KubeClient``) so that the host
side module that decodes tokens stays small.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

DEFAULT_AUDIENCE = 'istio-ca'
MIN_EXPIRATION = 600            # the API server refuses less than 10 minutes
MAX_EXPIRATION = 7 * 24 * 3600  # bounded: the role refuses longer-lived tokens


class TokenError(Exception):
    """A problem to report as is; the message never contains a token."""


def subject(namespace: str, service_account: str) -> str:
    """The username Kubernetes gives a service account token: system:serviceaccount:<ns>:<sa>."""
    return 'system:serviceaccount:%s:%s' % (namespace, service_account)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + '=' * (-len(segment) % 4))


def jwt_claims(token: Any) -> Dict[str, Any]:
    """The claims of a JWT, decoded WITHOUT verifying the signature (only the API server can verify it).

    Raises TokenError naming what is wrong, never quoting the token.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode('ascii')
        except UnicodeDecodeError:
            raise TokenError('the token is not ASCII text, so not a JWT') from None
    if not isinstance(token, str):
        raise TokenError('the token is not text, so not a JWT')
    parts = token.strip().split('.')
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenError('the token is not a JWT (%d dot-separated parts, a JWT has 3)' % len(parts))
    try:
        claims = json.loads(_b64url(parts[1]).decode('utf-8'))
    except (ValueError, UnicodeDecodeError):
        raise TokenError('the JWT payload is not base64url-encoded JSON') from None
    if not isinstance(claims, Mapping):
        raise TokenError('the JWT payload is not a JSON object')
    return dict(claims)


def audiences(claims: Mapping) -> List[str]:
    aud = claims.get('aud')
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, (list, tuple)):
        return [str(item) for item in aud]
    return []


def token_facts(claims: Mapping, now: float) -> Dict[str, Any]:
    """What may be said about a token: its subject, audiences and times; never the token."""
    exp = claims.get('exp')
    exp = int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
    iat = claims.get('iat')
    iat = int(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None
    return OrderedDict([
        ('subject', claims.get('sub') if isinstance(claims.get('sub'), str) else None),
        ('audiences', audiences(claims)),
        ('issued_at', iat),
        ('expires_at', exp),
        ('expires_in', None if exp is None else int(exp - now)),
        ('lifetime', None if exp is None or iat is None else exp - iat),
    ])


def refresh_reason(facts: Optional[Mapping], want_subject: str, audience: str, refresh_before: int,
                   now: float) -> Optional[str]:
    """Why the token must be replaced, or None when it is good for more than ``refresh_before`` seconds.

    A token is replaced when it is missing or unreadable (``facts`` None), is for another service account or
    audience, has no expiry, or expires within ``refresh_before`` seconds.
    """
    if facts is None:
        return 'no readable token'
    if facts.get('subject') != want_subject:
        return 'the token is for %s, not %s' % (facts.get('subject') or 'no subject', want_subject)
    if audience not in (facts.get('audiences') or []):
        have = ', '.join(facts.get('audiences') or []) or 'none'
        return 'the token is not for audience %s (it has %s)' % (audience, have)
    exp = facts.get('expires_at')
    if exp is None:
        return 'the token has no expiry'
    left = int(exp - now)
    if left <= 0:
        return 'the token expired %d s ago' % -left
    if left <= refresh_before:
        return 'the token expires in %d s, within the refresh window of %d s' % (left, refresh_before)
    return None


def check_expiration(expiration: Any, refresh_before: Any) -> List[str]:
    """Errors for the token lifetime and refresh window (seconds)."""
    errors = []
    if not isinstance(expiration, int) or isinstance(expiration, bool) \
            or not MIN_EXPIRATION <= expiration <= MAX_EXPIRATION:
        errors.append('expiration: %r is not allowed; allowed: integer seconds %d-%d (10 minutes to 7 days)'
                      % (expiration, MIN_EXPIRATION, MAX_EXPIRATION))
    elif not isinstance(refresh_before, int) or isinstance(refresh_before, bool) \
            or not 0 <= refresh_before < expiration:
        errors.append('refresh_before: %r is not allowed; allowed: integer seconds from 0 to less than the '
                      'expiration (%d)' % (refresh_before, expiration))
    return errors


# --------------------------------------------------------------------------------------------
# TokenRequest, on the controller
# --------------------------------------------------------------------------------------------

# Resource of TokenRequest, in the shape kube.client.KubeClient.error() takes (group, version, kind, plural, namespaced).
TOKEN_RESOURCE = ('', 'v1', 'TokenRequest', 'serviceaccounts/token', True)


def token_request_path(namespace: str, service_account: str) -> str:
    return '/api/v1/namespaces/%s/serviceaccounts/%s/token' % (namespace, service_account)


def token_request_body(audience: str, expiration: int) -> Dict[str, Any]:
    return {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'TokenRequest',
            'spec': {'audiences': [audience], 'expirationSeconds': int(expiration)}}


def group_requests(wanted: Mapping[str, Tuple[str, str]]) -> 'OrderedDict[Tuple[str, str], List[str]]':
    """host -> (namespace, service account) into (namespace, service account) -> hosts, in first-seen order."""
    groups = OrderedDict()  # type: OrderedDict[Tuple[str, str], List[str]]
    for host, key in wanted.items():
        groups.setdefault(tuple(key), []).append(host)
    return groups


def request_tokens(client: Any, keys: Sequence[Tuple[str, str]], audience: str, expiration: int,
                   make_error: Optional[Callable[..., Exception]] = None) -> Dict[Tuple[str, str], str]:
    """One TokenRequest per (namespace, service account), in parallel on the client's pool.

    Returns (namespace, service account) -> token. Raises TokenError with every failure, each naming the
    service account and the reason (missing account, 403 with the verb and resource, API unreachable).
    """
    body = token_request_body(audience, expiration)

    def one(key):
        """(token, None) or (None, why); exceptions (API unreachable) are turned into errors by client.map."""
        namespace, name = key
        resp = client.request('POST', token_request_path(namespace, name), body=body)
        data = resp.data if isinstance(resp.data, Mapping) else {}
        if resp.status in (200, 201):
            token = (data.get('status') or {}).get('token')
            if not isinstance(token, str) or not token:
                return None, 'the API answered the TokenRequest without a token'
            return token, None
        if resp.status == 404:
            what = ('namespace %s does not exist' % namespace
                    if 'namespaces "%s" not found' % namespace in str(data.get('message') or '')
                    else 'ServiceAccount %s/%s does not exist' % (namespace, name))
            return None, ('%s: create it (kubectl -n %s create serviceaccount %s) before onboarding the VM, '
                          'or fix fleetmesh_namespace / fleetmesh_service_account' % (what, namespace, name))
        if make_error is not None:
            error = make_error(resp, 'create', namespace, name)
            return None, getattr(error, 'message', None) or str(error)
        return None, 'HTTP %s %s' % (resp.status, data.get('message') or '')

    tokens = {}
    failures = []
    for key, answer, error in client.map(one, list(keys)):
        token, why = answer if error is None else (None, getattr(error, 'message', None) or str(error))
        if why is not None:
            failures.append('%s/%s: %s' % (key[0], key[1], why))
        else:
            tokens[tuple(key)] = token
    if failures:
        raise TokenError('TokenRequest failed for %d service account%s:\n%s'
                         % (len(failures), '' if len(failures) == 1 else 's', '\n'.join(failures)))
    return tokens


def check_token_for(token: str, namespace: str, service_account: str, audience: str, now: float,
                    min_left: int = 0) -> Dict[str, Any]:
    """Facts of a token that must be for this service account and audience; TokenError otherwise."""
    facts = token_facts(jwt_claims(token), now)
    reason = refresh_reason(facts, subject(namespace, service_account), audience, min_left, now)
    if reason is not None:
        raise TokenError('the token for %s/%s is not usable: %s' % (namespace, service_account, reason))
    return facts


def describe(groups: Iterable[Tuple[Tuple[str, str], List[str]]]) -> str:
    return ', '.join('%s/%s (%s)' % (key[0], key[1], ', '.join(hosts)) for key, hosts in groups)
