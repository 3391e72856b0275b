"""The Debian kernel packages between a good and a bad one, in Debian version order. Pure.

Debian gives every ABI a package of its own (``linux-image-6.1.0-49-amd64`` 6.1.173-1,
``linux-image-6.1.0-50-amd64`` 6.1.176-1, …; ``linux-image-6.12.113+deb12-amd64``),
so a range of kernels is a range of packages of one flavour, ordered by their
versions as dpkg compares them, never by their names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..debversion import compare_debian_versions
from ..errors import KernelRefError
from .driver import Candidate, Found
from .search import ListBisection

_IMAGE = re.compile(r"linux-image-(\d+\.\d+)\.\d+(?:-\d+|\+deb\d+(?:u\d+)?)-([a-z0-9]+(?:-[a-z0-9]+)*)")
_NOT_KERNELS = ("-dbg", "-unsigned")
_VERSION = functools.cmp_to_key(compare_debian_versions)


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def ref(self) -> str:
        return f"debian:{self.name}={self.version}"


def flavour(package: str) -> str | None:
    """``amd64`` of ``linux-image-6.1.0-50-amd64``; None for a package that is not one ABI's kernel image."""
    m = _IMAGE.fullmatch(package)
    if m is None or package.endswith(_NOT_KERNELS):
        return None
    return m.group(2)


def same_flavour(package: str, wanted: str) -> bool:
    return flavour(package) == wanted


def between(good: Package, bad: Package, carried: Mapping[str, str]) -> list[Package]:
    """``good``, the packages of its flavour with versions strictly between, and ``bad``: the bisect's candidates.

    ``carried`` is package -> version from the apt sources. Raises KernelRefError
    for ends that are not kernel images of one flavour, or out of order.
    """
    fg, fb = flavour(good.name), flavour(bad.name)
    for end, f in ((good, fg), (bad, fb)):
        if f is None:
            raise KernelRefError(f"{end.name}: not a Debian kernel image of one ABI (as linux-image-6.1.0-50-amd64); "
                                 "a Debian bisect goes between two of them")
    if fg != fb:
        raise KernelRefError(f"--good {good.name} and --bad {bad.name} are different flavours ({fg}, {fb}); "
                             "bisect between kernels of one flavour")
    order = compare_debian_versions(good.version, bad.version)
    if order == 0:
        raise KernelRefError(f"--good and --bad are the same version ({good.version}): there is nothing to bisect")
    if order > 0:
        raise KernelRefError(f"--good {good.label} is newer than --bad {bad.label}: give the older kernel as --good "
                             "(swap them)")
    inside = [Package(name, version) for name, version in carried.items()
              if same_flavour(name, fg or "") and name not in (good.name, bad.name)
              and compare_debian_versions(good.version, version) < 0 < compare_debian_versions(bad.version, version)]
    inside.sort(key=lambda p: (_VERSION(p.version), p.name))
    return [good, *inside, bad]


class DebianSubject:
    """The ``Subject`` of a bisect over Debian packages: a ``ListBisection`` over ``between()``'s list."""

    def __init__(self, packages: Sequence[Package], note_of: Callable[[Package], str] = lambda _: "") -> None:
        self.packages = list(packages)
        self.search = ListBisection(len(self.packages))
        self.note_of = note_of

    def candidate(self, index: int) -> Candidate:
        p = self.packages[index]
        return Candidate(p.label, p.ref)

    def ends(self) -> tuple[Candidate, Candidate]:
        return self.candidate(0), self.candidate(len(self.packages) - 1)

    def _index(self, c: Candidate) -> int:
        return next(i for i, p in enumerate(self.packages) if p.ref == c.ref)

    def next(self) -> Candidate | None:
        i = self.search.next()
        return None if i is None else self.candidate(i)

    def mark(self, candidate: Candidate, decision: str) -> None:
        if decision not in ("good", "bad", "skip"):
            raise ValueError(decision)
        self.search.mark(self._index(candidate), decision)  # type: ignore[arg-type]  # checked above

    def found(self) -> Found:
        first = self.search.first_bad()
        if len(first) > 1:
            return Found(None, None, tuple(self.candidate(i) for i in first))
        i = first[0]
        return Found(self.candidate(i), self.candidate(self.search.good), note=self.note_of(self.packages[i]))

    def left(self) -> int:
        return self.search.steps_left()

    def reverted(self, culprit: Candidate) -> Candidate | str:
        return "a Debian package cannot be reverted; --verify-revert is for a git tree"


def first_changelog_entry(text: str) -> str:
    """The newest entry of a Debian changelog: its header line to its `` -- `` trailer."""
    lines: list[str] = []
    for line in text.splitlines():
        if lines and line.startswith(" -- "):
            lines.append(line)
            break
        if line.strip() or lines:
            lines.append(line)
    return "\n".join(lines).strip()
