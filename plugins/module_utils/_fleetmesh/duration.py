# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Durations such as 30d, 12h or 1h30m: standard library only, so host modules can ship it alone."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from typing import Any

_DURATION_RE = re.compile(r'^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$')


def parse_duration(value: Any) -> int:
    """Seconds in a duration (30d, 12h, 1h30m, 90s, or a number of seconds); ValueError when not positive."""
    if isinstance(value, bool):
        raise ValueError('not a duration')
    if isinstance(value, int):
        seconds = value
    else:
        text = str(value).strip().replace(' ', '')
        if text.isdigit():
            seconds = int(text)
        else:
            match = _DURATION_RE.match(text)
            if not text or not match or not any(match.groups()):
                raise ValueError('not a duration')
            days, hours, minutes, secs = (int(part or 0) for part in match.groups())
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds <= 0:
        raise ValueError('not a positive duration')
    return seconds
