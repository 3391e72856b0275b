"""Kernel .config text: config fragments merged as scripts/kconfig/merge_config.sh merges them. Pure.

A fragment is .config syntax: ``CONFIG_FOO=y``, ``CONFIG_BAR="text"``, ``CONFIG_N=0x10``,
``# CONFIG_BAZ is not set``, comments and blank lines. Fragments are laid over a base
config in order; a later value replaces an earlier one, and where a fragment replaces
another fragment's value the merge says so, as merge_config.sh does (replacing the
base's values is what fragments are for). After ``make olddefconfig`` resolves dependencies, every value a
fragment asked for is checked in the final .config: Kconfig silently drops an option
whose dependencies are not met, and a kernel built without the patching mechanism a
config tests is a surprise found far too late. An option that did not survive is an
error naming the option, the fragment and its line.

Nothing here runs make; the build (an edge) feeds the texts in and out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

_SET = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")


@dataclass(frozen=True)
class Setting:
    """One option's value as a file gives it; ``value`` None is "is not set"."""

    name: str
    value: str | None
    source: str                 # the file it came from ("base", or a fragment's path)
    line: int

    def render(self) -> str:
        return f"# {self.name} is not set" if self.value is None else f"{self.name}={self.value}"

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def parse(text: str, source: str, *, strict: bool = True) -> list[Setting]:
    """The settings of .config text. ``strict``: any other non-comment line is an error at its line."""
    out: list[Setting] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET.fullmatch(line)
        if m is not None:
            out.append(Setting(m.group(1), m.group(2), source, number))
            continue
        m = _UNSET.fullmatch(line)
        if m is not None:
            out.append(Setting(m.group(1), None, source, number))
            continue
        if strict and line and not line.startswith("#"):
            raise ConfigError(Path(source), number,
                              f"{line[:60]!r} is not a Kconfig line; write CONFIG_NAME=value or "
                              "'# CONFIG_NAME is not set'")
    return out


@dataclass(frozen=True)
class Merged:
    text: str                                   # the base with every fragment laid over it
    requested: Mapping[str, Setting]            # the value each fragment option ended up asking for
    redefined: tuple[tuple[Setting, Setting], ...]   # (earlier, later) pairs with different values

    def notes(self) -> list[str]:
        return [f"{new.where()}: {new.name} redefined from {old.render()!r} ({old.where()}) to {new.render()!r}"
                for old, new in self.redefined]


def merge(base: str, fragments: Sequence[tuple[str, str]]) -> Merged:
    """``base`` .config text with ``(source, text)`` fragments laid over it, in order."""
    values: dict[str, Setting] = {s.name: s for s in parse(base, "base", strict=False)}
    requested: dict[str, Setting] = {}
    redefined: list[tuple[Setting, Setting]] = []
    for source, text in fragments:
        for setting in parse(text, source):
            old = values.get(setting.name)
            if old is not None and old.value != setting.value and old.source != "base":
                redefined.append((old, setting))
            values[setting.name] = setting
            requested[setting.name] = setting
    body = "\n".join(s.render() for s in values.values())
    return Merged(body + "\n" if body else "", requested, tuple(redefined))


@dataclass(frozen=True)
class Lost:
    """A requested value the final .config does not hold."""

    wanted: Setting
    actual: str | None          # the final value; None when the option is unset or absent
    unknown: bool = False       # no Kconfig file of the tree defines the option

    def message(self) -> str:
        if self.unknown:
            return (f"{self.wanted.where()}: {self.wanted.render()}: this tree has no option "
                    f"{self.wanted.name.removeprefix('CONFIG_')} (no Kconfig file defines it); fix the name for "
                    "this kernel version, or drop the line")
        got = "absent (its dependencies are not met)" if self.actual is None else f"{self.actual!r}"
        return (f"{self.wanted.where()}: {self.wanted.render()} did not survive olddefconfig: the final .config has "
                f"{self.wanted.name} {got}; add what it depends on to the fragment, or drop the line")


def lost(requested: Iterable[Setting], final: str, known: AbstractSet[str] | None = None) -> list[Lost]:
    """The requested values missing from the final .config (``is not set`` is met by an absent option).

    ``known``: the symbols the tree's Kconfig files define, when the caller has them; a
    requested option outside it is reported as unknown rather than as unmet dependencies.
    """
    have = {s.name: s.value for s in parse(final, "final", strict=False)}
    out: list[Lost] = []
    for want in requested:
        actual = have.get(want.name)
        if want.value is None:
            if actual not in (None, "n"):
                out.append(Lost(want, actual))
        elif actual != want.value:
            unknown = known is not None and want.name.removeprefix("CONFIG_") not in known
            out.append(Lost(want, actual, unknown=unknown))
    return out
