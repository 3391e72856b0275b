"""Reading a kernel build's output: progress steps and the first error. Pure.

Kbuild prints one short line per step (``  CC      kernel/fork.o``, ``  LD      vmlinux``);
compilers and tools print errors as ``file:line:col: error: …``, and make ends a
failure with ``make[N]: *** […] Error N``. The first real error is what a user
needs to see; the rest is in the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_]{1,11})\s+(\S.*)$")
_COMPILE_STEPS = frozenset({"CC", "AS", "CPP", "HOSTCC", "HOSTCXX", "CC [M]"})
# Lines that say what went wrong, in the forms compilers, the shell, make and the linker print them.
_ERRORS = (
    re.compile(r"^[^\s:][^:]*:\d+(?::\d+)?: (?:fatal )?error: .*$"),
    re.compile(r"^[^\s:][^:]*: (?:fatal )?error: .*$"),
    re.compile(r"^/bin/sh: \d+: .*: not found$"),
    re.compile(r"^make(?:\[\d+\])?: \*\*\* No rule to make target .*$"),
    re.compile(r"^[^\s:]+: undefined reference to .*$"),
    re.compile(r"^ld(?:\.bfd)?: .*$"),
)
_MAKE_FAILED = re.compile(r"^make(?:\[\d+\])?: \*\*\* (.*)$")


@dataclass(frozen=True)
class Step:
    kind: str            # "CC", "LD", "AR", …
    target: str

    @property
    def compiles(self) -> bool:
        return self.kind in _COMPILE_STEPS


def step(line: str) -> Step | None:
    """The kbuild step a line of make's output announces, if it is one."""
    m = _STEP.match(line)
    return Step(m.group(1), m.group(2).strip()) if m else None


def first_error(lines: Iterable[str]) -> str | None:
    """The first line that says what went wrong (a compiler error before make's own "*** Error")."""
    fallback: str | None = None
    for raw in lines:
        line = raw.rstrip()
        for pattern in _ERRORS:
            m = pattern.match(line)
            if m is not None:
                return line.strip()
        if fallback is None:
            m = _MAKE_FAILED.match(line)
            if m is not None:
                fallback = line
    return fallback
