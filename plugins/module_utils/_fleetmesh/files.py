# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's one atomic file write (host side, standard library and AnsibleModule only).

Every file a module writes (bootstrap, unit, wrapper, environment, keys, certificates, istio-token) and the
lab CA the controller keeps goes through ``atomic_write``: a temporary file in the destination's directory
gets the content, its owner, group and mode, is fsynced, optionally validated, and is moved over the
destination with ``AnsibleModule.atomic_move`` (SELinux context, cross-device and busy-file fallbacks), then the
directory is fsynced. On any failure the destination is left untouched and no temporary file stays behind.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import json
import os
import pwd
import tempfile

_ID_KINDS = {
    'owner': (pwd.getpwnam, 'pw_uid', 'user', 'uid'),
    'group': (grp.getgrnam, 'gr_gid', 'group', 'gid'),
}


def numeric_id(kind, value):
    """The uid (``kind='owner'``) or gid (``kind='group'``) of a name or number; -1 for None (leave as is)."""
    lookup, field, what, number = _ID_KINDS[kind]
    if value is None:
        return -1
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    try:
        return getattr(lookup(value), field)
    except KeyError as err:
        raise ValueError('%s: %s is not a known %s; allowed: a %s name or %s'
                         % (kind, json.dumps(value), what, what, number)) from err


def attributes_differ(path, owner=None, group=None, mode=None):
    """Whether an existing file's owner, group or mode differ from the wanted ones (None: any)."""
    st = os.stat(path)
    uid, gid = numeric_id('owner', owner), numeric_id('group', group)
    return ((uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid)
            or (mode is not None and (st.st_mode & 0o7777) != mode))


def set_attributes(path, owner=None, group=None, mode=None):
    uid, gid = numeric_id('owner', owner), numeric_id('group', group)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def fsync_dir(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path, content=None, owner=None, group=None, mode=None, module=None, writer=None, validate=None):
    """Replace ``path`` with ``content`` (bytes or text), or with what ``writer(tmp_path)`` writes into the
    temporary file (a key generator): (ok, '') or (False, the validator's text naming ``path``).

    Owner, group and mode default to those of the existing file (owner and group only as root), else the
    umask's. ``validate(tmp_path)`` -> (ok, text) runs on the finished temporary file. The move is
    ``module.atomic_move``; on the controller, where there is no AnsibleModule (the lab CA), ``os.replace``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % name, suffix=os.path.splitext(name)[1])
    try:
        with os.fdopen(fd, 'wb') as handle:
            if content is not None:
                handle.write(content if isinstance(content, bytes) else str(content).encode('utf-8'))
            handle.flush()
            os.fsync(handle.fileno())
        if writer is not None:
            writer(tmp)
        if os.path.exists(path):
            st = os.stat(path)
            if owner is None and group is None and os.geteuid() == 0:
                owner, group = st.st_uid, st.st_gid
            if mode is None:
                mode = st.st_mode & 0o7777
        elif mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        set_attributes(tmp, owner, group, mode)
        if validate is not None:
            ok, text = validate(tmp)
            if not ok:
                return False, text.replace(tmp, path)
        if module is None:
            os.replace(tmp, path)
        else:
            # atomic_move gives a file it creates the umask's mode and the caller's ids: a strict umask keeps a
            # new key private until its own attributes are set again.
            umask = os.umask(0o077)
            try:
                module.atomic_move(tmp, path, keep_dest_attrs=False)
            finally:
                os.umask(umask)
            set_attributes(path, owner, group, mode)
        tmp = ''
        fsync_dir(directory)
        return True, ''
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
