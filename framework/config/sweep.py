"""``fork:`` and ``sweep:``: one boot to a snapshot, then one experiment per sweep point from it. Pure.

A config with ``fork: {at: alternative_instructions}`` boots once, stops at the
``hit``-th arrival at ``at``, saves the machine there, and then runs each point
from that state, each judged as a run of its own (:mod:`framework.observe.fork`).

``sweep:`` names the parameters the points differ in, each with its values
(a list, or a range ``"1..20"``, ``"1..2000 step 100"``); the points are every
combination, the first parameter varying slowest. A parameter is used as
``${name}`` in the ``scenario:`` and ``expect:`` sections, and each point's
sections are those of the config text with the point's values written in
(so that every point is checked, and fails, at the config's own lines)::

    fork: {at: alternative_instructions}
    sweep: {hit: 1..20}
    scenario:
      rules:
        - on: {at: text_poke_early, hit: ${hit}}
          do: [inject-nmi]
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import yaml

from .. import yamlnode as yn
from ..errors import ConfigError

__all__ = ["MAX_POINTS", "PLACEHOLDER", "SWEPT_SECTIONS", "Fork", "Sweep", "label", "parse_sweep", "placeholders",
           "probe_sweep", "substitute"]

MAX_POINTS = 1000
PLACEHOLDER = re.compile(r"\$\{([^}\n]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RANGE = re.compile(r"\s*(-?[0-9]+)\s*\.\.\s*(-?[0-9]+)\s*(?:step\s+([0-9]+)\s*)?")
# The sections a point's values may be written into: what one experiment does and what it must show.
SWEPT_SECTIONS = ("scenario", "expect")

Value = int | str


@dataclass(frozen=True)
class Fork:
    """``fork:``: where the snapshot every point starts from is taken."""

    at: str                  # a kernel symbol, symbol+offset or address (scenario.parse_location)
    hit: int = 1             # its hit-th arrival
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        return self.at + (f" (hit {self.hit})" if self.hit != 1 else "")


@dataclass(frozen=True)
class Sweep:
    """``sweep:``: the parameters, every point's values, and the config text they are written into."""

    names: tuple[str, ...]
    points: tuple[tuple[Value, ...], ...]
    template: str = field(default="", repr=False, compare=False)
    line: int | None = field(default=None, compare=False)

    def values(self, index: int) -> dict[str, Value]:
        return dict(zip(self.names, self.points[index]))

    def text(self, index: int) -> str:
        """The config text of point ``index`` (0-based)."""
        return substitute(self.template, self.values(index))


def label(values: Mapping[str, Value]) -> str:
    """A point's name in messages and directories: ``hit=3``, ``op=irq.save_fl,hit=2``."""
    return ",".join(f"{name}={value}" for name, value in values.items())


def substitute(text: str, values: Mapping[str, Value]) -> str:
    """``text`` with every ``${name}`` replaced by its value (the caller checked every name exists)."""
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1).strip()]), text)


def placeholders(text: str) -> Iterator[tuple[str, int]]:
    """(name as written, 1-based line) of every ``${…}`` in ``text``."""
    for match in PLACEHOLDER.finditer(text):
        yield match.group(1), text.count("\n", 0, match.start()) + 1


def _values(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[Value, ...]:
    what = "a list of values such as [1, 2, 5] or a range such as '1..20' or '1..2000 step 100'"
    if isinstance(node, yaml.ScalarNode) and node.tag == yn.TAG_STR:
        match = _RANGE.fullmatch(str(node.value))
        if match is None:
            raise ctx.fail(node, f"{key} must be {what}, not {yn.describe(node)}")
        low, high, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or "1")
        if high < low or step < 1:
            raise ctx.fail(node, f"{key}: the range {node.value!r} is empty; write the low end first, "
                                 "and a step of 1 or more")
        if (high - low) // step + 1 > MAX_POINTS:
            raise ctx.fail(node, f"{key}: the range {node.value!r} has more than {MAX_POINTS} values")
        return tuple(range(low, high + 1, step))
    if not yn.is_list(node) or not node.value:
        raise ctx.fail(node, f"{key} must be {what}, not {yn.describe(node)}")
    out: list[Value] = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        if isinstance(item, yaml.ScalarNode) and item.tag == yn.TAG_INT:
            out.append(yn.int_value(item))
            continue
        text = yn.scalar_text(ctx, item, item_key, "a number or a word")
        if text == "" or "\n" in text or "\r" in text or PLACEHOLDER.search(text) or "#" in text:
            raise ctx.fail(item, f"{item_key} must be a number or a one-line word, not {yn.describe(item)}")
        out.append(text)
    if len(set(out)) != len(out):
        twice = next(v for v in out if out.count(v) > 1)
        raise ctx.fail(node, f"{key} lists {twice!r} twice")
    return tuple(out)


def parse_sweep(ctx: yn.Ctx, node: yaml.Node, key: str) -> Sweep:
    """The ``sweep:`` mapping: parameter names and their values; the points (not yet the template)."""
    if not yn.is_mapping(node) or not node.value:
        raise ctx.fail(node, f"{key} must be a mapping of parameters to values, such as {{hit: 1..20}}, "
                             f"not {yn.describe(node)}")
    names: list[str] = []
    lists: list[tuple[Value, ...]] = []
    for key_node, value_node in node.value:
        name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        if _NAME.fullmatch(name) is None:
            raise ctx.fail(key_node, f"{key}: a parameter is a name such as hit or op, not {yn.describe(key_node)}")
        if name in names:
            raise ctx.fail(key_node, f"{key}: parameter {name!r} is given twice")
        ctx.note(f"{key}.{name}", key_node)
        names.append(name)
        lists.append(_values(ctx, value_node, f"{key}.{name}"))
    total = 1
    for values in lists:
        total *= len(values)
    if total > MAX_POINTS:
        raise ctx.fail(node, f"{key} makes {total} points (every combination); at most {MAX_POINTS}")
    return Sweep(tuple(names), tuple(itertools.product(*lists)), line=yn.line_of(node))


def _top_level(root: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not yn.is_mapping(root):
        return {}
    return {str(k.value): (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}


def _section_at(sections: Mapping[str, tuple[yaml.Node, yaml.Node]], line: int) -> str | None:
    for name, (key, value) in sections.items():
        if key.start_mark.line + 1 <= line <= max(value.end_mark.line + 1, key.start_mark.line + 1):
            return name
    return None


def probe_sweep(ctx: yn.Ctx, text: str, parse: yaml.Node | None) -> Sweep | None:
    """The config's sweep, read before the rest: ``parse`` is the document parsed with every ``${…}`` as 0.

    Checks that every ``${name}`` is a parameter of ``sweep:`` written in a swept section, and that every
    parameter is used; ConfigError at the line otherwise. None when the config has neither.
    """
    uses = list(placeholders(text))
    sections = _top_level(parse) if parse is not None else {}
    sweep_node = sections.get("sweep")
    sweep = parse_sweep(ctx, sweep_node[1], "sweep") if sweep_node is not None else None
    for name, line in uses:
        if sweep is None:
            raise ConfigError(ctx.source, line, f"${{{name}}} is a sweep parameter, and the config has no sweep: "
                                                f"add sweep: {{{name.strip() or 'hit'}: [1, 2, 3]}} and fork:")
        if name.strip() not in sweep.names:
            hint = yn.suggest(name.strip(), list(sweep.names))
            raise ConfigError(ctx.source, line, f"${{{name}}}: sweep has no parameter {name.strip()!r}{hint} "
                                                f"(it has {', '.join(sweep.names)})")
        where = _section_at(sections, line)
        if where not in SWEPT_SECTIONS:
            raise ConfigError(ctx.source, line, f"${{{name}}}: sweep parameters are written into "
                                                f"{' and '.join(s + ':' for s in SWEPT_SECTIONS)} only, "
                                                f"not {where + ':' if where else 'here'}")
    if sweep is not None:
        used = {name.strip() for name, _ in uses}
        unused = [name for name in sweep.names if name not in used]
        if unused:
            raise ConfigError(ctx.source, ctx.lines.get(f"sweep.{unused[0]}", sweep.line),
                              f"sweep.{unused[0]} is never used: write ${{{unused[0]}}} where its value goes "
                              "in scenario: or expect:")
        sweep = Sweep(sweep.names, sweep.points, text, sweep.line)
    return sweep

