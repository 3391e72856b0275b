"""Bisection over an ordered list of candidates, with skips. Pure.

``candidates[0]`` is the good end and ``candidates[-1]`` the bad end. A step
tests the untested candidate nearest the middle of the range still open (good,
bad); a skipped candidate is never tried again, and the one nearest the middle
among the rest is taken instead. When nothing is left to test in the range,
the first bad candidate is the bad end of the range, or, when skipped candidates
lie in it, any one of them or it (the bisect says which).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal


def expected_steps(untested: int) -> int:
    """Steps a bisect over ``untested`` candidates between its ends needs without skips: ⌈log2(untested + 1)⌉."""
    return math.ceil(math.log2(untested + 1)) if untested > 0 else 0


@dataclass
class ListBisection:
    size: int                       # candidates, both ends included (at least 2)
    good: int = 0
    bad: int = -1
    skipped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError("a bisection needs a good and a bad end")
        if self.bad < 0:
            self.bad = self.size - 1

    def open(self) -> list[int]:
        """The candidates still to test, in order."""
        return [i for i in range(self.good + 1, self.bad) if i not in self.skipped]

    def next(self) -> int | None:
        """The candidate to test next; None when the bisection is over."""
        left = self.open()
        if not left:
            return None
        middle = (self.good + self.bad) / 2
        return min(left, key=lambda i: (abs(i - middle), i))

    def mark(self, index: int, decision: Literal["good", "bad", "skip"]) -> None:
        if not self.good < index < self.bad:
            raise ValueError(f"candidate {index} is outside the open range ({self.good}, {self.bad})")
        if decision == "good":
            self.good = index
        elif decision == "bad":
            self.bad = index
        else:
            self.skipped.add(index)

    def first_bad(self) -> list[int]:
        """When over: the candidates the first bad one may be (one, unless skipped ones are in the way)."""
        return [i for i in range(self.good + 1, self.bad) if i in self.skipped] + [self.bad]

    def steps_left(self) -> int:
        return expected_steps(len(self.open()))

    @property
    def state(self) -> Literal["running", "found", "ambiguous"]:
        if self.open():
            return "running"
        return "found" if len(self.first_bad()) == 1 else "ambiguous"


_FOUND = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.MULTILINE)
_LEFT = re.compile(r"^Bisecting: (\d+) revisions? left to test after this", re.MULTILINE)
_ANY_OF = re.compile(r"The first bad commit could be any of:\n((?:[0-9a-f]{40}\n?)+)")


def git_bisect_said(text: str) -> tuple[str, object]:
    """What ``git bisect start|good|bad|skip`` printed, as ("next", revisions left), ("found", commit)
    or ("ambiguous", [commits])."""
    m = _FOUND.search(text)
    if m:
        return "found", m.group(1)
    m = _ANY_OF.search(text)
    if m:
        return "ambiguous", m.group(1).split()
    m = _LEFT.search(text)
    if m:
        return "next", int(m.group(1))
    raise ValueError(f"git bisect said something patchscope does not know: {text.strip()[:200]!r}")
