# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The service user of a proxy: a system group and a system user without home or login shell (host side).
Shared by envoy_instance and workload_csr, so both create the same user the same way."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd


def exists(lookup, name):
    """Whether ``lookup`` (grp.getgrnam, pwd.getpwnam) finds ``name``."""
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def ensure_system_user(module, user, group, shell=None):
    """Create ``group`` and ``user`` (primary group ``group``) when missing; True when something was, or in
    check mode would be, created. Fails the module naming the command and its error."""
    def run(cmd):
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(msg='%s failed: %s' % (' '.join(cmd), (err or out).strip()))

    created = False
    if not exists(grp.getgrnam, group):
        created = True
        if not module.check_mode:
            run(['groupadd', '--system', group])
    if not exists(pwd.getpwnam, user):
        created = True
        shell = shell or next((s for s in ('/usr/sbin/nologin', '/sbin/nologin') if os.path.exists(s)), '/bin/false')
        if not module.check_mode:
            run(['useradd', '--system', '--gid', group, '--shell', shell, '--home-dir', '/nonexistent',
                 '--no-create-home', user])
    return created
