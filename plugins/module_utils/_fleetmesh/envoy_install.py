# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Envoy versions side by side on a host: <root>/<version>/envoy, a verified-checksum stamp, a
``current`` link, pruning. Shared by the envoy_binary and envoy_instance modules (host side)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import hashlib
import os
import re
import shutil
import subprocess

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import atomic_write

SEMVER = re.compile(r'^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$')


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def run_out(args):
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 1, str(err)
    return proc.returncode, proc.stdout.decode('utf-8', 'replace')


def hot_restart_version(binary):
    if not binary or not os.path.exists(binary):
        return ''
    code, out = run_out([binary, '--hot-restart-version'])
    return out.strip().splitlines()[-1] if code == 0 and out.strip() else ''


def active_version(root):
    link = os.path.join(root, 'current')
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip('/'))


def stamp_ok(version_dir, sha256):
    """The stamp records size and mtime of a binary whose sha256 was verified, so a no-op run does not re-hash."""
    binary = os.path.join(version_dir, 'envoy')
    stamp = os.path.join(version_dir, '.sha256')
    if not os.path.isfile(binary):
        return False
    st = os.stat(binary)
    expected = '%s %d %d' % (sha256, st.st_size, int(st.st_mtime))
    try:
        with open(stamp) as handle:
            if handle.read().strip() == expected:
                return True
    except OSError:
        pass
    if sha256_file(binary) != sha256:
        return False
    with open(stamp, 'w') as handle:
        handle.write(expected + '\n')
    return True


def write_stamp(version_dir, sha256):
    st = os.stat(os.path.join(version_dir, 'envoy'))
    with open(os.path.join(version_dir, '.sha256'), 'w') as handle:
        handle.write('%s %d %d\n' % (sha256, st.st_size, int(st.st_mtime)))


def install(module, src, version_dir, version, sha256):
    """Unpack ``src`` into <version_dir>/envoy with files.atomic_write: checked (sha256, --version) before it is
    moved into place; a failure leaves no binary and no empty version directory."""
    os.makedirs(version_dir, mode=0o755, exist_ok=True)
    opener = gzip.open if src.endswith('.gz') else open
    digest = hashlib.sha256()

    def unpack(tmp):
        with opener(src, 'rb') as fin, open(tmp, 'wb') as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b''):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())

    def check(tmp):
        got = digest.hexdigest()
        if got != sha256:
            return False, ('sha256: %s unpacks to a binary with sha256 %s, expected %s; nothing was replaced '
                           'and the active version keeps running' % (src, got, sha256))
        code, out = run_out([tmp, '--version'])
        # "<path>  version: <commit>/<X.Y.Z>/...": only after "version:" (the path itself names the version dir)
        if code != 0 or '/%s/' % version not in out.partition('version:')[2]:
            return False, ('version: the binary in %s does not report Envoy %s (it said: %s); nothing was replaced'
                           % (src, version, out.strip()[-300:]))
        return True, ''

    try:
        ok, text = atomic_write(os.path.join(version_dir, 'envoy'), None, mode=0o755, module=module, writer=unpack,
                                validate=check)
    except (OSError, EOFError) as err:
        _cleanup(version_dir)
        module.fail_json(msg='src: cannot read %s: %s; nothing was replaced' % (src, err))
    if not ok:
        _cleanup(version_dir)
        module.fail_json(msg=text)
    write_stamp(version_dir, sha256)


def _cleanup(version_dir):
    if os.path.isdir(version_dir) and not os.listdir(version_dir):
        os.rmdir(version_dir)


def switch(root, version):
    tmp = os.path.join(root, '.current.tmp')
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(version, tmp)
    os.rename(tmp, os.path.join(root, 'current'))


def prunable(root, keep, protect):
    versions = [d for d in os.listdir(root) if SEMVER.match(d) and os.path.isdir(os.path.join(root, d))]
    versions.sort(key=lambda v: tuple(int(x) for x in v.split('.')), reverse=True)
    kept, removed = [], []
    for v in versions:
        if v in protect or len(kept) < keep:
            kept.append(v)
        else:
            removed.append(v)
    return removed


def activate(module, root, version, sha256, keep, src=None, remove_src=False, do_activate=True, pending=False):
    """Install ``src`` when given and the version is missing, switch ``current``, prune to ``keep``.

    Returns the result fields of envoy_binary. Without ``src`` and with the version missing, only
    reports ``needs_artifact``, unless ``pending`` (check mode: an earlier task would have installed
    it), which reports the switch. Honours check mode.
    """
    version_dir = os.path.join(root, version)
    binary = os.path.join(version_dir, 'envoy')
    previous = active_version(root)
    result = {'changed': False, 'needs_artifact': False, 'installed': False, 'path': binary,
              'previous_version': previous, 'active_version': previous, 'removed_versions': []}

    if not stamp_ok(version_dir, sha256) and not (pending and module.check_mode):
        if not src:
            result['needs_artifact'] = True
            result.update(hot_restart_version='', previous_hot_restart_version='', hot_restart_compatible=False)
            return result
        if not os.path.exists(src) and not module.check_mode:
            module.fail_json(msg='src: %s does not exist on the host' % src)
        result['changed'] = result['installed'] = True
        if not module.check_mode:
            os.makedirs(root, mode=0o755, exist_ok=True)
            install(module, src, version_dir, version, sha256)

    if do_activate and previous != version:
        result['changed'] = True
        result['active_version'] = version
        if not module.check_mode:
            switch(root, version)
    if src and remove_src and os.path.exists(src) and not module.check_mode:
        os.unlink(src)

    protect = {v for v in (version, previous, result['active_version']) if v}
    if os.path.isdir(root):
        result['removed_versions'] = prunable(root, keep, protect)
    if result['removed_versions']:
        result['changed'] = True
        if not module.check_mode:
            for v in result['removed_versions']:
                shutil.rmtree(os.path.join(root, v))

    if result['active_version'] != previous:
        # Only a switch needs to know whether the running epoch can hand over to the new binary.
        new_hrv = hot_restart_version(binary)
        old_hrv = hot_restart_version(os.path.join(root, previous, 'envoy')) if previous else ''
        compatible = bool(new_hrv) and (not old_hrv or new_hrv == old_hrv)
        if not os.path.exists(binary):  # check mode, not installed yet: unknown, assume the usual case
            compatible = True
    else:
        new_hrv = old_hrv = ''
        compatible = True
    result.update(hot_restart_version=new_hrv, previous_hot_restart_version=old_hrv,
                  hot_restart_compatible=compatible)
    return result


def check_input(module, version, sha256, keep, prefix=''):
    """Fail naming the option, the value and what is allowed."""
    if not SEMVER.match(version):
        module.fail_json(msg='%sversion: %r is not a valid Envoy version; allowed: X.Y.Z, e.g. 1.40.0' % (prefix, version))
    if not re.match(r'^[0-9a-f]{64}$', sha256):
        module.fail_json(msg='%ssha256: %r is not a sha256; allowed: 64 hexadecimal characters' % (prefix, sha256))
    if keep < 1:
        module.fail_json(msg='%skeep: %r is not allowed; allowed: an integer of at least 1' % (prefix, keep))
