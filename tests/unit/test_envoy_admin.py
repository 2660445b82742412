"""The admin client against a real Envoy on loopback."""

from __future__ import annotations

import socket
import time

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.envoy import (
    AdminClient,
    EnvoyAdminError,
    parse_duration_seconds,
)


@pytest.fixture
def client(running_envoy):
    admin = AdminClient('127.0.0.1', running_envoy.admin_port, timeout=5)
    yield admin
    admin.healthcheck_ok()  # leave the shared Envoy passing health checks


def test_listener_answers(running_envoy):
    assert running_envoy.get('/anything') == (200, 'ok')


def test_server_info(client, envoy_bin):
    info = client.server_info()
    assert info['version'] == envoy_bin.parent.name == '1.40.0'
    assert info['build'].split('/')[1] == '1.40.0'
    assert info['state'] == 'LIVE'
    assert isinstance(info['uptime_seconds'], int) and info['uptime_seconds'] >= 0
    assert info['hot_restart_epoch'] == 0


def test_ready_and_wait_ready(client):
    assert client.ready() == (True, 'LIVE')
    assert client.wait_ready(timeout=5) == 'LIVE'


def test_healthcheck_fail_then_ok(client, running_envoy):
    client.healthcheck_fail()
    assert client.server_info()['state'] == 'DRAINING'
    assert client.ready() == (False, 'DRAINING')
    with pytest.raises(EnvoyAdminError, match=r'not ready after 0.5s \(state DRAINING\)'):
        client.wait_ready(timeout=0.5, interval=0.1)
    assert client.stats(r'^server\.live$') == {'server.live': 0}
    # failing health checks does not stop traffic: load balancers are meant to notice and stop sending it
    assert running_envoy.get('/')[0] == 200
    client.healthcheck_ok()
    assert client.server_info()['state'] == 'LIVE'


def test_stats_filter_and_json(client, running_envoy):
    running_envoy.get('/count-me')
    stats = client.stats(r'^http\.ingress\.downstream_rq_total$')
    assert list(stats) == ['http.ingress.downstream_rq_total']
    assert stats['http.ingress.downstream_rq_total'] >= 1
    everything = client.stats()
    assert 'server.live' in everything and len(everything) > 100
    assert all(not isinstance(value, dict) for value in everything.values())


def test_active_connections_counts_open_listener_connections(client, running_envoy):
    assert client.active_connections() == 0
    with socket.create_connection(('127.0.0.1', running_envoy.listener_port), timeout=5) as conn:
        conn.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        assert conn.recv(100).startswith(b'HTTP/1.1 200')
        assert client.active_connections() == 1  # a kept-alive connection, the admin one not counted
    deadline = time.monotonic() + 5
    while client.active_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.active_connections() == 0
    assert client.wait_connections_drained(timeout=1) == 0


def test_drain_listeners_on_a_private_envoy(envoy_bin, tmp_path):
    from envoy_harness import Envoy

    with Envoy(envoy_bin, tmp_path) as envoy:
        admin = AdminClient('127.0.0.1', envoy.admin_port, timeout=5)
        assert admin.listeners_stopped() is False
        admin.drain_listeners(graceful=False)
        deadline = time.monotonic() + 5
        while not admin.listeners_stopped() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admin.listeners_stopped() is True
        with pytest.raises(OSError):
            envoy.get('/')
        assert admin.server_info()['state'] == 'LIVE'  # the admin API keeps serving


def test_unreachable_admin_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    client = AdminClient('127.0.0.1', port, timeout=2)
    with pytest.raises(EnvoyAdminError, match=rf'cannot reach the Envoy admin API at http://127.0.0.1:{port}'):
        client.server_info()
    with pytest.raises(EnvoyAdminError, match='not ready after 0.3s'):
        client.wait_ready(timeout=0.3, interval=0.1)


def test_admin_address_must_be_loopback_unless_allowed():
    with pytest.raises(EnvoyAdminError, match=r'address: "192.0.2.1" is not a loopback address'):
        AdminClient('192.0.2.1', 9901)
    with pytest.raises(EnvoyAdminError, match=r'port: 0 is not a valid port'):
        AdminClient('127.0.0.1', 0)
    assert AdminClient('::1', 9901).base_url == 'http://[::1]:9901'
    assert AdminClient('192.0.2.1', 9901, allow_non_loopback=True).base_url == 'http://192.0.2.1:9901'


def test_parse_duration_seconds():
    assert parse_duration_seconds('12s') == 12
    assert parse_duration_seconds('1.900s') == 1
    assert parse_duration_seconds(3) == 3
    assert parse_duration_seconds('soon') is None
