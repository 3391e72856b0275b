"""Debian version order, as dpkg compares versions (Debian policy 5.6.12). Pure.

Used to pick the newest of a line's kernels and to order a bisect's range of packages:
``linux-image-6.1.0-50-amd64`` 6.1.176-1 comes after ``-49-`` 6.1.173-1 by version, not by name.
"""

from __future__ import annotations

import re


def compare_debian_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as dpkg orders the versions ``a`` and ``b`` (epoch, upstream, revision; ~ sorts first)."""
    def split(version: str) -> tuple[int, str, str]:
        epoch, colon, rest = version.partition(":")
        if not colon:
            epoch, rest = "0", version
        upstream, dash, revision = rest.rpartition("-")
        if not dash:
            upstream, revision = rest, "0"
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _dpkg_compare(ua, ub) or _dpkg_compare(ra, rb)


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _dpkg_compare(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # the non-digit parts, character by character; the end of a part sorts after '~' only
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            i += 1
            j += 1
        da = re.match(r"\d*", a[i:])
        db = re.match(r"\d*", b[j:])
        na = int(da.group() or 0) if da else 0
        nb = int(db.group() or 0) if db else 0
        if na != nb:
            return -1 if na < nb else 1
        i += len(da.group()) if da else 0
        j += len(db.group()) if db else 0
    return 0
