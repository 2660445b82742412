# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Envoy: the admin API client, `envoy --mode validate`, and validated atomic config writes.

The admin client talks plain HTTP to Envoy's admin listener, which must be on loopback unless
the caller opted in (see validation.check_admin_address). Proxies from the environment are
never used: the admin API is local.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.urls import open_url
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import atomic_write
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    check_admin_address,
    check_port,
)

# Shared by every module that talks to the admin API; documented by the
# fleetmesh.envoy.envoy_admin doc fragment.
ADMIN_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    'address': {'type': 'str', 'default': '127.0.0.1'},
    'port': {'type': 'int', 'default': 9901},
    'timeout': {'type': 'int', 'default': 10},
    'allow_non_loopback': {'type': 'bool', 'default': False},
}

# server_info "state" values (envoy.admin.v3.ServerInfo.State)
STATE_DRAINING = 'DRAINING'

_VERSION_IN_BUILD_RE = re.compile(r'(?:^|/)(\d+\.\d+\.\d+)(?:-[0-9A-Za-z.-]+)?(?:/|$)')
_LOG_LINE_RE = re.compile(
    r'^\[\d{4}-\d\d-\d\d[ T][\d:.]+\]\[\d+\]\[(?P<level>[a-z]+)\]\[[^\]]*\] (?:\[[^\]]*:\d+\] )?(?P<msg>.*)$')
_PROTO_DUMP_MARKER = 'Unable to parse JSON as proto ('
_MAX_MESSAGE = 4000


class EnvoyAdminError(Exception):
    """The admin API could not be reached or answered unexpectedly."""


class EnvoyValidateError(Exception):
    """The Envoy binary could not be run at all (as opposed to rejecting a configuration)."""


def parse_envoy_version(text: Any) -> Optional[str]:
    """X.Y.Z from an Envoy build string: server_info "version", `envoy --version` output, or X.Y.Z itself.

    ``.../1.40.0/Clean/RELEASE/BoringSSL`` and ``envoy  version: <sha>/1.40.0/Clean/...`` give ``1.40.0``.
    """
    if not isinstance(text, str):
        return None
    for word in text.split():
        match = _VERSION_IN_BUILD_RE.search(word)
        if match:
            return match.group(1)
    return None


def parse_duration_seconds(value: Any) -> Optional[int]:
    """Whole seconds of a protobuf JSON duration such as "12s" or "1.500s"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and re.match(r'^\d+(\.\d+)?s$', value):
        return int(float(value[:-1]))
    return None


class AdminClient:
    """A small client for Envoy's admin API on loopback."""

    def __init__(self, address: str = '127.0.0.1', port: int = 9901, timeout: float = 10,
                 allow_non_loopback: bool = False) -> None:
        errors = check_admin_address('address', address, allow_non_loopback) + check_port('port', port)
        if errors:
            raise EnvoyAdminError('; '.join(errors))
        host = f'[{address}]' if ':' in address else address
        self.base_url = f'http://{host}:{int(port)}'
        self.timeout = timeout

    # -- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, params: Optional[Sequence[Tuple[str, Optional[str]]]] = None,
                timeout: Optional[float] = None) -> Tuple[int, str]:
        """(HTTP status, body). Flags in ``params`` have value None (``?graceful&inboundonly``)."""
        url = self.base_url + path
        if params:
            url += '?' + '&'.join(key if value is None else f'{key}={quote(value, safe="")}' for key, value in params)
        try:
            response = open_url(url, method=method, timeout=self.timeout if timeout is None else timeout,
                                use_proxy=False, follow_redirects='none', http_agent='fleetmesh.envoy')
            return response.getcode(), response.read().decode('utf-8', 'replace')
        except HTTPError as err:
            body = err.read().decode('utf-8', 'replace') if err.fp is not None else ''
            return err.code, body
        except (URLError, OSError, socket.timeout, http.client.HTTPException) as err:
            reason = getattr(err, 'reason', err)
            raise EnvoyAdminError(f'cannot reach the Envoy admin API at {self.base_url}: {reason}') from err

    def _expect_ok(self, method: str, path: str,
                   params: Optional[Sequence[Tuple[str, Optional[str]]]] = None) -> str:
        status, body = self.request(method, path, params)
        if status != 200:
            raise EnvoyAdminError(f'{method} {self.base_url}{path} answered HTTP {status}: {body.strip()[:500]}')
        return body

    def _json(self, path: str, params: Optional[Sequence[Tuple[str, Optional[str]]]] = None) -> Any:
        body = self._expect_ok('GET', path, params)
        try:
            return json.loads(body)
        except ValueError as err:
            raise EnvoyAdminError(f'GET {self.base_url}{path} did not answer JSON: {err}') from err

    # -- reading -----------------------------------------------------------------------------

    def server_info(self) -> Dict[str, Any]:
        """version (X.Y.Z), build, state, uptime_seconds and hot_restart_epoch."""
        data = self._json('/server_info')
        options = data.get('command_line_options') or {}
        epoch = options.get('restart_epoch', 0)
        return {
            'version': parse_envoy_version(data.get('version')),
            'build': data.get('version'),
            'state': data.get('state'),
            'uptime_seconds': parse_duration_seconds(data.get('uptime_current_epoch')),
            'hot_restart_epoch': int(epoch) if isinstance(epoch, (int, str)) and str(epoch).isdigit() else epoch,
        }

    def ready(self) -> Tuple[bool, str]:
        """(ready, state text) from GET /ready: ready only when Envoy answers 200 (LIVE)."""
        status, body = self.request('GET', '/ready')
        return status == 200, body.strip()

    def wait_ready(self, timeout: float, interval: float = 0.25) -> str:
        """Poll /ready until Envoy is LIVE; the state text, or EnvoyAdminError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = 'no answer'
        while True:
            try:
                ready, state = self.ready()
                if ready:
                    return state
                last = f'state {state or "unknown"}'
            except EnvoyAdminError as err:
                last = str(err)
            if time.monotonic() >= deadline:
                raise EnvoyAdminError(f'Envoy at {self.base_url} was not ready after {timeout}s ({last})')
            time.sleep(interval)

    def stats(self, stats_filter: Optional[str] = None) -> Dict[str, Any]:
        """Counters, gauges and text readouts as {name: value}; histograms are left out.

        ``stats_filter`` is an RE2 regular expression on stat names, applied by Envoy.
        """
        params: List[Tuple[str, Optional[str]]] = [('format', 'json')]
        if stats_filter:
            params.append(('filter', stats_filter))
        data = self._json('/stats', params)
        return {entry['name']: entry['value'] for entry in data.get('stats', [])
                if isinstance(entry, dict) and 'name' in entry and 'value' in entry}

    def active_connections(self) -> int:
        """Open downstream connections on every listener except the admin one."""
        stats = self.stats(r'^listener\..*\.downstream_cx_active$')
        return sum(int(value) for name, value in stats.items()
                   if not name.startswith('listener.admin.') and not re.search(r'\.worker_\d+\.', name))

    def active_requests(self) -> int:
        """In-flight HTTP requests on every HTTP connection manager except the admin one."""
        stats = self.stats(r'^http\..*\.downstream_rq_active$')
        return sum(int(value) for name, value in stats.items() if not name.startswith('http.admin.'))

    def listeners_stopped(self) -> bool:
        """Whether a non-graceful drain has already stopped the listeners."""
        stats = self.stats(r'^listener_manager\.(listener_stopped|total_listeners_active)$')
        stopped = int(stats.get('listener_manager.listener_stopped', 0))
        return stopped > 0 and stopped >= int(stats.get('listener_manager.total_listeners_active', 0))

    # -- changing ----------------------------------------------------------------------------

    def healthcheck_fail(self) -> None:
        self._expect_ok('POST', '/healthcheck/fail')

    def healthcheck_ok(self) -> None:
        self._expect_ok('POST', '/healthcheck/ok')

    def drain_listeners(self, graceful: bool = True, inbound_only: bool = False) -> None:
        params: List[Tuple[str, Optional[str]]] = []
        if graceful:
            params.append(('graceful', None))
        if inbound_only:
            params.append(('inboundonly', None))
        self._expect_ok('POST', '/drain_listeners', params)

    @staticmethod
    def _wait_for_zero(count: Callable[[], int], timeout: float, interval: float) -> int:
        """Poll ``count`` until it is 0 or ``timeout`` passes; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            active = count()
            if active == 0 or time.monotonic() >= deadline:
                return active
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def wait_requests_drained(self, timeout: float, interval: float = 0.25) -> int:
        """Poll until no HTTP request is in flight or ``timeout`` passes; the last count."""
        return self._wait_for_zero(self.active_requests, timeout, interval)

    def wait_connections_drained(self, timeout: float, interval: float = 0.5) -> int:
        """Poll until no downstream connection is open or ``timeout`` passes; the last count."""
        return self._wait_for_zero(self.active_connections, timeout, interval)


def probe_url(url: str, timeout: float) -> Optional[str]:
    """None when the URL answers 200 (redirects followed when safe, as ansible.builtin.uri does), else what it
    answered or why it could not: a health gate's request through Envoy's listener, from the managed host."""
    try:
        response = open_url(url, method='GET', timeout=timeout, follow_redirects='safe', http_agent='fleetmesh.envoy')
        status = response.getcode()
    except HTTPError as err:
        status = err.code
    except (URLError, OSError, ValueError, http.client.HTTPException) as err:
        return f'no answer ({getattr(err, "reason", None) or err})'
    return None if status == 200 else f'HTTP {status}'


# ------------------------------------------------------------------------------------------------
# envoy --mode validate
# ------------------------------------------------------------------------------------------------

def _strip_proto_dump(message: str) -> str:
    """Drop the configuration text Envoy appends after "Unable to parse JSON as proto (...)": it is
    the whole file again (and may hold secrets); the part in parentheses is the error."""
    start = message.find(_PROTO_DUMP_MARKER)
    if start < 0:
        return message
    depth = 0
    for index in range(start + len(_PROTO_DUMP_MARKER) - 1, len(message)):
        if message[index] == '(':
            depth += 1
        elif message[index] == ')':
            depth -= 1
            if depth == 0:
                return message[:index + 1]
    return message


def envoy_error_text(output: str) -> str:
    """Envoy's own error messages from its log output, without the log prefixes.

    Log entries at level critical or error are kept (continuation lines included); without any,
    warnings; without those, the last lines of the raw output.
    """
    entries: List[Tuple[str, str]] = []
    for line in output.splitlines():
        match = _LOG_LINE_RE.match(line)
        if match:
            entries.append((match.group('level'), match.group('msg')))
        elif entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + '\n' + line)
        elif line.strip():
            entries.append(('unknown', line))
    chosen = [msg for level, msg in entries if level in ('critical', 'error')]
    if not chosen:
        chosen = [msg for level, msg in entries if level in ('warning', 'unknown')]
    text = '\n'.join(_strip_proto_dump(msg).strip() for msg in chosen).strip()
    if not text:
        text = '\n'.join(output.strip().splitlines()[-20:])
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + ' ... (truncated)'
    return text


def validate(binary: str, config_path: str, timeout: float = 120) -> Tuple[bool, str]:
    """Run ``envoy --mode validate -c config_path``: (ok, Envoy's error text or '').

    Raises EnvoyValidateError when the binary cannot be run at all.
    """
    command = [binary, '--mode', 'validate', '-c', config_path]
    try:
        proc = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except OSError as err:
        raise EnvoyValidateError(f'cannot run {binary}: {err.strerror or err}') from err
    except subprocess.TimeoutExpired as err:
        raise EnvoyValidateError(f'{binary} --mode validate did not finish within {timeout}s') from err
    output = proc.stderr.decode('utf-8', 'replace') + proc.stdout.decode('utf-8', 'replace')
    if proc.returncode == 0:
        return True, ''
    text = envoy_error_text(output)
    return False, text or f'{binary} --mode validate exited with status {proc.returncode}'


# ------------------------------------------------------------------------------------------------
# Writing configuration files
# ------------------------------------------------------------------------------------------------

def _as_bytes(content: Any) -> bytes:
    return content if isinstance(content, bytes) else str(content).encode('utf-8')


def validate_content(binary: str, content: Any, dest: str, directory: Optional[str] = None) -> Tuple[bool, str]:
    """Validate ``content`` as if it were ``dest``, in a temporary file; dest itself is not touched.

    The temporary file goes into ``directory`` (default: dest's directory, or the system temporary
    directory when that does not exist) and keeps dest's suffix. Envoy's text names dest, not the
    temporary file.
    """
    if directory is None:
        directory = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(directory):
            directory = tempfile.gettempdir()
    name = os.path.basename(dest)
    fd, path = tempfile.mkstemp(dir=directory, prefix=f'.{name}.', suffix=os.path.splitext(name)[1])
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(_as_bytes(content))
        ok, text = validate(binary, path)
    finally:
        os.unlink(path)
    return ok, text.replace(path, dest)


def atomic_write_validated(dest: str, content: Any, binary: Optional[str], owner: Any = None, group: Any = None,
                           mode: Optional[int] = None, module: Any = None) -> Tuple[bool, str]:
    """Replace ``dest`` with ``content`` only if Envoy accepts it: (ok, Envoy's error text or '').

    files.atomic_write with ``envoy --mode validate`` of the temporary file (skipped when binary is None);
    on any failure dest is left untouched.
    """
    def check(path: str) -> Tuple[bool, str]:
        return validate(binary, path)

    return atomic_write(dest, _as_bytes(content), owner, group, mode, module=module,
                        validate=None if binary is None else check)
