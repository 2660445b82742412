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

import grp
import http.client
import json
import os
import pwd
import re
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.urls import open_url
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    check_admin_address,
    check_port,
    show,
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
STATE_LIVE = 'LIVE'
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

    def wait_connections_drained(self, timeout: float, interval: float = 0.5) -> int:
        """Poll until no downstream connection is open or ``timeout`` passes; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.active_connections()
            if active == 0 or time.monotonic() >= deadline:
                return active
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


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

def _uid(owner: Any) -> int:
    if owner is None:
        return -1
    if isinstance(owner, int) or str(owner).isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError as err:
        raise ValueError(f'owner: {show(owner)} is not a known user; allowed: a user name or uid') from err


def _gid(group: Any) -> int:
    if group is None:
        return -1
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise ValueError(f'group: {show(group)} is not a known group; allowed: a group name or gid') from err


def attributes_differ(path: str, owner: Any = None, group: Any = None, mode: Optional[int] = None) -> bool:
    """Whether an existing file's owner, group or mode differ from the wanted ones (None: any)."""
    st = os.stat(path)
    uid, gid = _uid(owner), _gid(group)
    return ((uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid)
            or (mode is not None and (st.st_mode & 0o7777) != mode))


def set_attributes(path: str, owner: Any = None, group: Any = None, mode: Optional[int] = None) -> None:
    uid, gid = _uid(owner), _gid(group)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def _write_temp(directory: str, name: str, content: bytes) -> str:
    """A new file beside ``name`` in ``directory``, with the same suffix so Envoy reads it the same way."""
    suffix = os.path.splitext(name)[1]
    fd, path = tempfile.mkstemp(dir=directory, prefix=f'.{name}.', suffix=suffix)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return path


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
    path = _write_temp(directory, os.path.basename(dest), _as_bytes(content))
    try:
        ok, text = validate(binary, path)
    finally:
        os.unlink(path)
    return ok, text.replace(path, dest)


def atomic_write_validated(dest: str, content: Any, binary: Optional[str], owner: Any = None, group: Any = None,
                           mode: Optional[int] = None) -> Tuple[bool, str]:
    """Replace ``dest`` with ``content`` only if Envoy accepts it: (ok, Envoy's error text or '').

    A temporary file is written in dest's directory, given its owner, group and mode (by default
    those of the existing dest), validated with ``binary`` (skipped when binary is None), fsynced
    and renamed over dest; the directory is fsynced after. On any failure dest is left untouched.
    """
    dest_dir = os.path.dirname(os.path.abspath(dest))
    path = _write_temp(dest_dir, os.path.basename(dest), _as_bytes(content))
    try:
        if os.path.exists(dest):
            st = os.stat(dest)
            if owner is None and group is None and os.geteuid() == 0:
                owner, group = st.st_uid, st.st_gid
            if mode is None:
                mode = st.st_mode & 0o7777
        elif mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        set_attributes(path, owner, group, mode)
        if binary is not None:
            ok, text = validate(binary, path)
            if not ok:
                return False, text.replace(path, dest)
        os.rename(path, dest)
        path = ''
        dir_fd = os.open(dest_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True, ''
    finally:
        if path:
            os.unlink(path)
