"""module_utils/_fleetmesh/istio.py, the istio_token module's host side, and the istio_sidecar checks of validation."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections import namedtuple

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import istio
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import validation as v
from ansible_collections.fleetmesh.envoy.plugins.modules import istio_token as module

NOW = 1_800_000_000


def jwt(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b'=').decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def claims(ns='bookinfo', sa='reviews', aud=('istio-ca',), iat=NOW - 100, exp=NOW + 86400 - 100):
    return {'sub': istio.subject(ns, sa), 'aud': aud if isinstance(aud, str) else list(aud), 'iat': iat, 'exp': exp}


# --------------------------------------------------------------------------------------------
# JWT claims and the refresh decision
# --------------------------------------------------------------------------------------------

def test_claims_are_decoded_without_padding():
    token = jwt(claims())
    assert istio.jwt_claims(token)['sub'] == 'system:serviceaccount:bookinfo:reviews'
    assert istio.jwt_claims(token.encode() + b'\n')['exp'] == NOW + 86300


@pytest.mark.parametrize('bad', ['', 'abc', 'a.b', 'a..c', '!!.@@.##', b'\xff.\xfe.\xfd', 17,
                                 'eyJhIjoxfQ.WzFd.x'])
def test_bad_tokens_are_named_never_quoted(bad):
    with pytest.raises(istio.TokenError) as err:
        istio.jwt_claims(bad)
    if isinstance(bad, str) and len(bad) > 3:
        assert bad not in str(err.value)


def test_facts_say_times_and_audiences():
    facts = istio.token_facts(claims(aud='istio-ca'), NOW)
    assert facts == {'subject': 'system:serviceaccount:bookinfo:reviews', 'audiences': ['istio-ca'],
                     'issued_at': NOW - 100, 'expires_at': NOW + 86300, 'expires_in': 86300, 'lifetime': 86400}


@pytest.mark.parametrize(('facts', 'reason'), [
    (None, 'no readable token'),
    (claims(sa='other'), 'is for system:serviceaccount:bookinfo:other'),
    (claims(aud=['https://kubernetes.default.svc']), 'not for audience istio-ca'),
    (dict(claims(), exp=None), 'no expiry'),
    (claims(exp=NOW - 5), 'expired 5 s ago'),
    (claims(exp=NOW + 3600), 'expires in 3600 s, within the refresh window of 43200 s'),
    (claims(exp=NOW + 43201), None),
])
def test_refresh_reason(facts, reason):
    got = istio.refresh_reason(None if facts is None else istio.token_facts(facts, NOW),
                               istio.subject('bookinfo', 'reviews'), 'istio-ca', 43200, NOW)
    if reason is None:
        assert got is None
    else:
        assert reason in got


@pytest.mark.parametrize(('expiration', 'refresh', 'ok'), [
    (86400, 43200, True), (600, 0, True), (604800, 604799, True),
    (599, 0, False), (604801, 0, False), (3600, 3600, False), (3600, -1, False), ('3600', 0, False), (True, 0, False),
])
def test_expiration_is_bounded(expiration, refresh, ok):
    assert (istio.check_expiration(expiration, refresh) == []) is ok


# --------------------------------------------------------------------------------------------
# TokenRequest batching with a fake client (the real API server: tests/integration/test_istio_mesh.py)
# --------------------------------------------------------------------------------------------

Response = namedtuple('Response', ['status', 'data', 'warnings'])


class FakeClient:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        return self.answers[path]

    def map(self, fn, items):
        out = []
        for item in items:
            try:
                out.append((item, fn(item), None))
            except Exception as exc:  # noqa: BLE001 - as kube.client.KubeClient.map
                out.append((item, None, exc))
        return out


def test_one_request_per_service_account():
    groups = istio.group_requests({'vm1': ('ns', 'a'), 'vm2': ('ns', 'a'), 'vm3': ('ns', 'b')})
    assert list(groups.items()) == [(('ns', 'a'), ['vm1', 'vm2']), (('ns', 'b'), ['vm3'])]
    client = FakeClient({istio.token_request_path('ns', sa): Response(201, {'status': {'token': f'tok-{sa}'}}, ())
                         for sa in 'ab'})
    tokens = istio.request_tokens(client, list(groups), 'istio-ca', 3600)
    assert tokens == {('ns', 'a'): 'tok-a', ('ns', 'b'): 'tok-b'}
    assert len(client.calls) == 2
    assert client.calls[0][2] == {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'TokenRequest',
                                  'spec': {'audiences': ['istio-ca'], 'expirationSeconds': 3600}}


def test_request_errors_name_the_account_and_the_cause():
    client = FakeClient({
        istio.token_request_path('ns', 'missing'): Response(404, {'message': 'serviceaccounts "missing" not found'},
                                                            ()),
        istio.token_request_path('gone', 'sa'): Response(404, {'message': 'namespaces "gone" not found'}, ()),
        istio.token_request_path('ns', 'denied'): Response(403, {'message': 'forbidden'}, ()),
    })
    with pytest.raises(istio.TokenError) as err:
        istio.request_tokens(client, [('ns', 'missing'), ('gone', 'sa'), ('ns', 'denied')], 'istio-ca', 3600,
                             make_error=lambda resp, verb, ns, name: RuntimeError(f'{verb} {ns}/{name}: 403'))
    text = str(err.value)
    assert 'failed for 3 service accounts' in text
    assert 'ServiceAccount ns/missing does not exist' in text
    assert 'namespace gone does not exist' in text
    assert 'create ns/denied: 403' in text


def test_unreachable_api_is_reported():
    class Down(FakeClient):
        def request(self, method, path, body=None):
            raise OSError('connection refused')

    with pytest.raises(istio.TokenError, match='connection refused'):
        istio.request_tokens(Down({}), [('ns', 'sa')], 'istio-ca', 3600)


def test_a_token_for_the_wrong_account_is_refused():
    token = jwt(dict(claims(sa='other'), exp=int(time.time()) + 3600))
    with pytest.raises(istio.TokenError, match='not usable'):
        istio.check_token_for(token, 'bookinfo', 'reviews', 'istio-ca', time.time())


# --------------------------------------------------------------------------------------------
# The module on the host: inspect and write, never the token in results
# --------------------------------------------------------------------------------------------

class FakeModule:
    def __init__(self, check_mode=False, diff=False, **params):
        self.check_mode, self._diff = check_mode, diff
        user = os.getuid()
        import grp
        import pwd
        self.params = dict(state='present', path=None, namespace='bookinfo', service_account='reviews',
                           audience='istio-ca', refresh_before=43200, token=None, tokens_var='t',
                           owner=pwd.getpwuid(user).pw_name, group=grp.getgrgid(os.getgid()).gr_name, mode='0400')
        self.params.update(params)

    def fail_json(self, **kw):
        raise AssertionError(kw['msg'])

    # The real AnsibleModule.atomic_move (files.atomic_write moves with it), on a host without SELinux.
    atomic_move = AnsibleModule.atomic_move

    @staticmethod
    def selinux_enabled():
        return False


def test_inspect_missing_then_fresh_then_expiring(tmp_path):
    path = tmp_path / 'istio-token'
    now = time.time()
    result = module.inspect(FakeModule(path=str(path)), now)
    assert (result['exists'], result['refresh'], result['reason']) == (False, True, 'no readable token')
    path.write_text(jwt(dict(claims(), iat=int(now), exp=int(now) + 86400)))
    result = module.inspect(FakeModule(path=str(path)), now)
    assert result['refresh'] is False and 86399 <= result['expires_in'] <= 86400
    assert result['request'] == {'namespace': 'bookinfo', 'service_account': 'reviews', 'audience': 'istio-ca'}
    result = module.inspect(FakeModule(path=str(path), refresh_before=90000), now)
    assert result['refresh'] is True and 'within the refresh window' in result['reason']
    path.write_text('garbage')
    result = module.inspect(FakeModule(path=str(path)), now)
    assert result['refresh'] is True and 'not a JWT' in result['reason']


def test_present_writes_atomically_with_mode_and_never_returns_the_token(tmp_path):
    path = tmp_path / 'istio-token'
    now = time.time()
    token = jwt(dict(claims(), iat=int(now), exp=int(now) + 86400))
    result = module.present(FakeModule(path=str(path), token=token, diff=True), now)
    assert result['changed'] is True
    assert path.read_text() == token + '\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert token not in json.dumps(result)
    assert result['diff']['before'] == '<absent>\n'
    again = module.present(FakeModule(path=str(path), token=token), now)
    assert again['changed'] is False
    checked = module.present(FakeModule(path=str(path), token=jwt(claims()), check_mode=True), now)
    assert checked['changed'] is True and path.read_text() == token + '\n'


def test_present_in_check_mode_without_a_token_says_what_it_would_do(tmp_path):
    result = module.present(FakeModule(path=str(tmp_path / 't'), check_mode=True), time.time())
    assert result['changed'] is True and 'check mode' in result['msg']


def test_absent_removes(tmp_path):
    path = tmp_path / 'istio-token'
    path.write_text('x')
    assert module.absent(FakeModule(path=str(path)))['changed'] is True
    assert not path.exists()
    assert module.absent(FakeModule(path=str(path)))['changed'] is False


def test_module_spec_hides_the_token():
    spec = module.argument_spec()
    assert spec['token']['no_log'] is True and spec['api_key']['no_log'] is True
    assert spec['state']['choices'] == ['inspect', 'request', 'present', 'absent']


# --------------------------------------------------------------------------------------------
# istio_sidecar checks: every bad value names the variable, the value and what is allowed
# --------------------------------------------------------------------------------------------

MODEL = {'fleetmesh_service': 'reviews', 'fleetmesh_namespace': 'bookinfo', 'fleetmesh_service_account': 'reviews',
         'fleetmesh_ports': {'http': 9080}, 'fleetmesh_trust_domain': 'cluster.local'}


def errors_for(**extra):
    return v.validate_model(dict(MODEL, **extra), ['istio_sidecar'])


def test_the_model_and_defaults_pass():
    assert errors_for(istio_sidecar_service_cidr='*', istio_sidecar_inbound_ports=[], istio_sidecar_state='present',
                      istio_sidecar_local_exclude_ports=[15090, 15021, 15020], istio_sidecar_package_source='file',
                      istio_sidecar_discovery_address='istiod.istio-system.svc:15012',
                      istio_sidecar_eastwest_address='', istio_sidecar_token_expiration=86400,
                      istio_sidecar_token_refresh_before=43200, istio_sidecar_token_audience='istio-ca',
                      istio_sidecar_cluster_env_extra={'A_B': 'x y', 'N': 1, 'L': ['a', 2]}) == []


@pytest.mark.parametrize(('extra', 'expected'), [
    ({'istio_sidecar_service_cidr': '10.96.0.0/33'},
     'istio_sidecar_service_cidr[0]: "10.96.0.0/33" is not a CIDR; allowed: IPv4 or IPv6 networks'),
    ({'istio_sidecar_service_cidr': ['10.96.0.1/12']}, 'has host bits set (did you mean 10.96.0.0/12?)'),
    ({'fleetmesh_ports': {'http': 70000}}, 'fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535'),
    ({'fleetmesh_ports': {'web': 80}}, 'fleetmesh_ports.web (port name): "web" is not a valid Istio port name'),
    ({'istio_sidecar_inbound_ports': [80, 0]}, 'istio_sidecar_inbound_ports[1]: 0 is not a valid port'),
    ({'istio_sidecar_inbound_ports': 'all'}, 'istio_sidecar_inbound_ports[0]: "all" is not a valid port'),
    ({'istio_sidecar_local_exclude_ports': '*'}, 'istio_sidecar_local_exclude_ports[0]: "*" is not a valid port'),
    ({'fleetmesh_service_account': None}, 'fleetmesh_service_account: is not set; allowed: DNS-1123 labels'),
    ({'istio_sidecar_discovery_address': 'istiod'}, '"istiod" is not a valid host:port'),
    ({'istio_sidecar_eastwest_address': '10.0.0.300'}, 'istio_sidecar_eastwest_address: "10.0.0.300" is not'),
    ({'istio_sidecar_hosts_extra_names': ['ok.example', 'Bad_Name']}, 'istio_sidecar_hosts_extra_names[1]'),
    ({'istio_sidecar_cluster_env_extra': {'lower': 'x'}}, 'istio_sidecar_cluster_env_extra (name): "lower"'),
    ({'istio_sidecar_proxy_metadata_extra': {'A': {'b': 1}}}, 'istio_sidecar_proxy_metadata_extra.A: {"b": 1}'),
    ({'istio_sidecar_token_expiration': 60}, 'istio_sidecar_token_expiration: 60 is not allowed; allowed: integer 600'),
    ({'istio_sidecar_token_refresh_before': 90000, 'istio_sidecar_token_expiration': 86400},
     'istio_sidecar_token_refresh_before: 90000 is not allowed'),
    ({'istio_sidecar_token_audience': 'istio ca'}, 'istio_sidecar_token_audience: "istio ca" is not a valid audience'),
    ({'istio_sidecar_state': 'gone'}, 'istio_sidecar_state: "gone" is not a valid choice; allowed: one of present'),
    ({'istio_sidecar_package_source': 'url', 'istio_sidecar_package_base_url': '', 'ansible_os_family': 'Debian',
      'istio_sidecar_package_sha256': {}}, 'istio_sidecar_package_sha256.deb: is not set'),
    ({'istio_sidecar_package_source': 'url', 'istio_sidecar_package_base_url': 'ftp://x',
      'istio_sidecar_package_sha256': {'rpm': 'abc'}}, 'istio_sidecar_package_sha256.rpm: "abc" is not a valid sha256'),
    ({'istio_sidecar_package_source': 'repository'}, 'istio_sidecar_package_repo_url: null is not a valid URL'),
    ({'istio_sidecar_intercept': 'yes'}, 'istio_sidecar_intercept: "yes" is not a boolean'),
    ({'istio_sidecar_certs_dir': 'etc/certs'}, 'istio_sidecar_certs_dir: "etc/certs" is not an absolute path'),
])
def test_bad_input_is_named(extra, expected):
    errors = errors_for(**extra)
    assert any(expected in error for error in errors), errors
    assert all('; allowed: ' in error for error in errors), errors


def test_offboarding_needs_no_model():
    assert v.validate_model({'istio_sidecar_state': 'absent', 'istio_sidecar_certs_dir': '/etc/certs'},
                            ['istio_sidecar_absent']) == []
    assert v.validate_model({'istio_sidecar_token_path': 'x'}, ['istio_sidecar_absent'])


def test_the_action_is_importable_on_the_controller():
    from ansible_collections.fleetmesh.envoy.plugins.action import istio_token as action

    assert action.MODULE == 'fleetmesh.envoy.istio_token'
