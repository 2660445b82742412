# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: envoy_binary
short_description: Install Envoy versions side by side, verify their checksum and switch the active one
version_added: 0.1.0
description:
  - Keeps Envoy binaries in C(<root>/<version>/envoy) with a C(current) link to the active version, so a
    rollback is a link switch.
  - One call does the whole job on the host. Without O(src), it only reports whether the version is already
    installed (RV(needs_artifact)), so a caller pushes the artifact only when it is missing.
  - With O(src) (a binary, or a C(.gz) of one), the binary is unpacked next to its final place, its sha256 is
    compared with O(sha256) and C(envoy --version) must report O(version). Only then is it renamed into place.
    On a mismatch nothing is replaced and the running version is untouched.
  - With O(activate=true) the C(current) link is switched atomically. The last O(keep) versions are kept;
    the active and the previously active version are never removed.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  version:
    description: Envoy version, V(X.Y.Z).
    type: str
    required: true
  sha256:
    description: Expected sha256 of the uncompressed binary.
    type: str
    required: true
  src:
    description:
      - Path on the host of the pushed artifact. A name ending in C(.gz) is decompressed.
      - When omitted, the module installs nothing and reports RV(needs_artifact).
    type: path
  root:
    description: Directory that holds one sub-directory per version and the C(current) link.
    type: path
    default: /opt/fleetmesh/envoy
  activate:
    description: Point the C(current) link at O(version).
    type: bool
    default: true
  keep:
    description: Number of installed versions to keep (at least 1).
    type: int
    default: 2
  remove_src:
    description: Remove O(src) after a successful install.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the active version before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Is Envoy 1.40.0 installed already?
  fleetmesh.envoy.envoy_binary:
    version: 1.40.0
    sha256: 8aa137a7d00994ce43f613556f5a120709229f63bedb86eedde5ccbc402c2b80
  register: envoy_probe

- name: Push the compressed binary only when needed
  ansible.builtin.copy:
    src: /var/cache/fleetmesh/artifacts/envoy/1.40.0/envoy.gz
    dest: /var/cache/fleetmesh/envoy-1.40.0.gz
    mode: "0600"
  when: envoy_probe.needs_artifact

- name: Install and activate it
  fleetmesh.envoy.envoy_binary:
    version: 1.40.0
    sha256: 8aa137a7d00994ce43f613556f5a120709229f63bedb86eedde5ccbc402c2b80
    src: /var/cache/fleetmesh/envoy-1.40.0.gz
    remove_src: true
  when: envoy_probe.needs_artifact
"""

RETURN = r"""
needs_artifact:
  description: The version is not installed and O(src) was not given.
  returned: always
  type: bool
path:
  description: Path of the binary of O(version).
  returned: always
  type: str
  sample: /opt/fleetmesh/envoy/1.40.0/envoy
installed:
  description: Whether the binary was installed in this run.
  returned: always
  type: bool
active_version:
  description: The version C(current) points at after the run.
  returned: always
  type: str
previous_version:
  description: The version C(current) pointed at before the run, or null.
  returned: always
  type: str
hot_restart_version:
  description: C(--hot-restart-version) of O(version), read only when the active version changes; empty otherwise.
  returned: always
  type: str
previous_hot_restart_version:
  description: C(--hot-restart-version) of the previously active version, or empty.
  returned: always
  type: str
hot_restart_compatible:
  description: Whether the active version can be reached from the previous one by a hot restart.
  returned: always
  type: bool
removed_versions:
  description: Versions removed to keep O(keep) versions.
  returned: always
  type: list
  elements: str
"""

import gzip
import hashlib
import os
import re
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule

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
    os.makedirs(version_dir, mode=0o755, exist_ok=True)
    tmp = os.path.join(version_dir, '.envoy.tmp')
    opener = gzip.open if src.endswith('.gz') else open
    digest = hashlib.sha256()
    try:
        with opener(src, 'rb') as fin, open(tmp, 'wb') as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b''):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except (OSError, EOFError) as err:
        _cleanup(tmp, version_dir)
        module.fail_json(msg='src: cannot read %s: %s; nothing was replaced' % (src, err))
    got = digest.hexdigest()
    if got != sha256:
        _cleanup(tmp, version_dir)
        module.fail_json(msg='sha256: %s unpacks to a binary with sha256 %s, expected %s; nothing was replaced '
                             'and the active version keeps running' % (src, got, sha256))
    os.chmod(tmp, 0o755)
    code, out = run_out([tmp, '--version'])
    if code != 0 or '/%s/' % version not in out:
        _cleanup(tmp, version_dir)
        module.fail_json(msg='version: the binary in %s does not report Envoy %s (it said: %s); nothing was replaced'
                             % (src, version, out.strip()[-300:]))
    os.rename(tmp, os.path.join(version_dir, 'envoy'))
    write_stamp(version_dir, sha256)


def _cleanup(tmp, version_dir):
    if os.path.exists(tmp):
        os.unlink(tmp)
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


def main():
    module = AnsibleModule(
        argument_spec={
            'version': {'type': 'str', 'required': True},
            'sha256': {'type': 'str', 'required': True},
            'src': {'type': 'path'},
            'root': {'type': 'path', 'default': '/opt/fleetmesh/envoy'},
            'activate': {'type': 'bool', 'default': True},
            'keep': {'type': 'int', 'default': 2},
            'remove_src': {'type': 'bool', 'default': False},
        },
        supports_check_mode=True,
    )
    p = module.params
    version, sha256, root = p['version'], p['sha256'].lower(), p['root']
    if not SEMVER.match(version):
        module.fail_json(msg='version: %r is not a valid Envoy version; allowed: X.Y.Z, e.g. 1.40.0' % version)
    if not re.match(r'^[0-9a-f]{64}$', sha256):
        module.fail_json(msg='sha256: %r is not a sha256; allowed: 64 hexadecimal characters' % p['sha256'])
    if p['keep'] < 1:
        module.fail_json(msg='keep: %r is not allowed; allowed: an integer of at least 1' % p['keep'])

    version_dir = os.path.join(root, version)
    binary = os.path.join(version_dir, 'envoy')
    previous = active_version(root)
    result = {'changed': False, 'needs_artifact': False, 'installed': False, 'path': binary,
              'previous_version': previous, 'active_version': previous, 'removed_versions': []}

    present = stamp_ok(version_dir, sha256)
    if not present:
        if not p['src']:
            result['needs_artifact'] = True
            result.update(hot_restart_version='', previous_hot_restart_version='', hot_restart_compatible=False)
            module.exit_json(**result)
        if not os.path.exists(p['src']) and not module.check_mode:
            module.fail_json(msg='src: %s does not exist on the host' % p['src'])
        result['changed'] = result['installed'] = True
        if not module.check_mode:
            os.makedirs(root, mode=0o755, exist_ok=True)
            install(module, p['src'], version_dir, version, sha256)

    if p['activate'] and previous != version:
        result['changed'] = True
        result['active_version'] = version
        if not module.check_mode:
            switch(root, version)
    if p['src'] and p['remove_src'] and os.path.exists(p['src']) and not module.check_mode:
        os.unlink(p['src'])

    protect = {v for v in (version, previous, result['active_version']) if v}
    if os.path.isdir(root):
        result['removed_versions'] = prunable(root, p['keep'], protect)
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
    else:
        new_hrv = old_hrv = ''
        compatible = True
    result.update(hot_restart_version=new_hrv, previous_hot_restart_version=old_hrv,
                  hot_restart_compatible=compatible)
    if module._diff:
        result['diff'] = {'before': 'active: %s\n' % previous, 'after': 'active: %s\n' % result['active_version']}
    module.exit_json(**result)


if __name__ == '__main__':
    main()
