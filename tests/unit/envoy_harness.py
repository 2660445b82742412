"""A real Envoy for tests: find the binary, start it on loopback with free ports, stop it.

Used by tests/unit (through conftest.py) and tests/integration/test_envoy_modules.py.

The binary of version V is looked up at, in order:
  ${FLEETMESH_ENVOY_BIN_DIR:-${FLEETMESH_CACHE:-/var/cache/fleetmesh}/artifacts/envoy}/V/envoy
  /tmp/boot/envoy/V/envoy
When none exists the test fails under CI=true (naming the files and `make setup`) and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

import pytest

DEFAULT_VERSION = '1.40.0'
STARTUP_TIMEOUT = 30.0


def envoy_candidates(version: str) -> list[Path]:
    cache = os.environ.get('FLEETMESH_CACHE') or '/var/cache/fleetmesh'
    bin_dir = os.environ.get('FLEETMESH_ENVOY_BIN_DIR') or os.path.join(cache, 'artifacts', 'envoy')
    return [Path(bin_dir) / version / 'envoy', Path('/tmp/boot/envoy') / version / 'envoy']


def find_envoy(version: str = DEFAULT_VERSION) -> Path:
    """The Envoy binary of ``version``; pytest.fail under CI=true when missing, pytest.skip otherwise."""
    candidates = envoy_candidates(version)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    message = (f'Envoy {version} binary not found; looked for: {", ".join(str(p) for p in candidates)}. '
               'Run `make setup` to fetch it.')
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(message)
    pytest.skip(message)


def bootstrap_yaml(admin_port: int = 0, listener_port: int = 0, body: str = 'ok') -> str:
    """A minimal bootstrap: admin on 127.0.0.1, one listener answering 200 with ``body`` to every request."""
    return f"""\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def unknown_filter_bootstrap() -> str:
    """The minimal bootstrap with an HTTP filter name no Envoy knows."""
    good = bootstrap_yaml()
    bad = good.replace('''          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
''', '''          - name: envoy.filters.http.fleetmesh_no_such_filter
''')
    assert bad != good
    return bad


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Envoy:
    """One Envoy process on loopback; admin_port and listener_port are the ports it bound."""

    def __init__(self, binary: Path, workdir: Path, config: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config_path = workdir / 'envoy.yaml'
        self.config_path.write_text(config if config is not None else bootstrap_yaml())
        self.admin_path = workdir / 'admin-address'
        self.log_path = workdir / 'envoy.log'
        self.process: subprocess.Popen | None = None
        self.admin_port = 0
        self.listener_port = 0

    def start(self) -> Self:
        self.process = subprocess.Popen(
            [str(self.binary), '-c', str(self.config_path), '--admin-address-path', str(self.admin_path),
             '--use-dynamic-base-id', '--base-id-path', str(self.workdir / 'base-id'), '--concurrency', '1',
             '--log-level', 'warning', '--log-path', str(self.log_path),
             '--drain-time-s', '2', '--parent-shutdown-time-s', '3'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'envoy exited with {self.process.returncode}: {self.log()}')
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                self.admin_port = int(self.admin_path.read_text().strip().rsplit(':', 1)[1])
                try:
                    status, _body = _get(f'http://127.0.0.1:{self.admin_port}/ready')
                except OSError:
                    status = 0
                if status == 200:
                    self.listener_port = self._listener_port()
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f'envoy not ready after {STARTUP_TIMEOUT}s: {self.log()}')

    def _listener_port(self) -> int:
        _status, body = _get(f'http://127.0.0.1:{self.admin_port}/listeners?format=json')
        for listener in json.loads(body)['listener_statuses']:
            if listener['name'] == 'ingress':
                return int(listener['local_address']['socket_address']['port_value'])
        raise RuntimeError(f'no ingress listener in {body}')

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def get(self, path: str) -> tuple[int, str]:
        return _get(f'http://127.0.0.1:{self.listener_port}{path}')

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
