"""A config's ``scenario:`` rules and ``expect.stops``/``expect.nmi``, from YAML nodes to the scenario language.

The parsers :mod:`framework.config.schema` puts in its schema; each error names the
file and line (:mod:`framework.yamlnode`). The language itself is :mod:`framework.scenario`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import cast

import yaml

from .. import yamlnode as yn
from . import (
    ACTIONS,
    DEFAULT_MAX_STOPS,
    MAX_DUMP,
    MAX_STOPS,
    MAX_WRITE,
    NMI_STATES,
    PV_TYPE_FUNCTIONS,
    REGISTERS,
    SIGNATURES,
    Action,
    Condition,
    Rule,
    Scenario,
    StopExpect,
    Trigger,
    function_of,
    literal_text,
    name_problem,
    parse_expression,
    parse_location,
)

__all__ = ["SCENARIO", "SYMBOL", "build_scenario", "nmi", "stop_expects"]

# A kernel symbol's name.
SYMBOL = r"[A-Za-z_][A-Za-z0-9_.$]*"


def _expression(ctx: yn.Ctx, node: yaml.Node, key: str, function: str | None) -> str:
    """An expression's text, checked for syntax and names; constants in their normal spelling."""
    what = "an expression such as 'rdi + 9', 'len - 1' or 0xffffffff81000000"
    if isinstance(node, yaml.ScalarNode) and node.tag == yn.TAG_INT:
        try:
            value = yn.int_value(node)
        except ValueError:
            raise ctx.fail(node, f"{key} must be {what}, not {yn.describe(node)}") from None
        if abs(value) > (1 << 64) - 1:
            raise ctx.fail(node, f"{key}: {value:#x} does not fit in 64 bits")
        return literal_text(value)
    if isinstance(node, yaml.ScalarNode) and node.tag in (yn.TAG_BOOL, yn.TAG_FLOAT, yn.TAG_TIMESTAMP):
        raise ctx.fail(node, f"{key} must be {what}, not {yn.describe(node)}")
    text = yn.scalar_text(ctx, node, key, what)
    if "\n" in text or "\r" in text:
        raise ctx.fail(node, f"{key} must be a single line, not {yn.quote(text)}")
    try:
        parsed = parse_expression(text)
    except ValueError as err:
        raise ctx.fail(node, f"{key}: {err}") from None
    for name in sorted(parsed.names):
        reason = name_problem(name, function)
        if reason is not None:
            raise ctx.fail(node, f"{key}: {reason}")
    return literal_text(parsed.literal) if parsed.literal is not None else text.strip()


def _location(ctx: yn.Ctx, node: yaml.Node, key: str) -> str:
    text = yn.scalar_text(ctx, node, key, "a kernel symbol, symbol+0x10 or an address")
    try:
        parse_location(text)
    except ValueError as err:
        raise ctx.fail(node, f"{key}: {err}") from None
    return text.strip()


def _need_argument(ctx: yn.Ctx, node: yaml.Node, key: str, trigger: Trigger, argument: str) -> None:
    """Refuse ``key`` unless the trigger stops at the entry of a function with ``argument``."""
    function = function_of(trigger)
    having = sorted(f for f, args in SIGNATURES.items() if argument in args
                    and (argument != "type" or f in PV_TYPE_FUNCTIONS))
    if function is None:
        symbol = parse_location(trigger.at)[0]
        fix = f"on: {symbol}" if symbol in having else f"on: one of {', '.join(having)}"
        raise ctx.fail(node, f"{key} needs the function's {argument!r} argument, and arguments exist only at "
                             f"a function's entry; {trigger.at!r} is not one ({fix})")
    if function not in having:
        raise ctx.fail(node, f"{key} needs the function's {argument!r} argument, and {function} has none "
                             f"(functions with one: {', '.join(having)})")


def _register(ctx: yn.Ctx, node: yaml.Node, key: str) -> str:
    name = yn.scalar_text(ctx, node, key, "a register")
    if name not in REGISTERS:
        reason = name_problem(name, None)
        hint = f": {reason}" if reason is not None and "register" in reason else yn.suggest(name, REGISTERS)
        raise ctx.fail(node, f"{key}: {yn.quote(name)} is not a register (one of {', '.join(REGISTERS)}){hint}")
    return name


def _register_values(ctx: yn.Ctx, node: yaml.Node, key: str, function: str | None) -> tuple[tuple[str, str], ...]:
    """{register: expression, …}, at least one."""
    if not yn.is_mapping(node) or not node.value:
        raise ctx.fail(node, f"{key} must be a mapping of registers to values such as {{rdx: 'len - 1'}}, "
                             f"not {yn.describe(node)}")
    out: list[tuple[str, str]] = []
    for key_node, value_node in node.value:
        name = _register(ctx, key_node, key)
        if any(name == seen for seen, _ in out):
            raise ctx.fail(key_node, f"duplicate key {yn.quote(f'{key}.{name}')}")
        ctx.note(f"{key}.{name}", key_node)
        out.append((name, _expression(ctx, value_node, f"{key}.{name}", function)))
    # One order, whatever the file's: the values are all computed before any is set.
    return tuple(sorted(out, key=lambda pair: REGISTERS.index(pair[0])))


_CONDITIONS = ("caller", "addr_in", "pv_op", "len", "regs")
_ACTION_HINT = "it is an action: put it in the rule's do, e.g. do: [skip]"
_CONDITION_HINT = "it is a condition: put it under on.when"
_RULE_HINTS = {**{k: "it belongs under on, e.g. on: {at: text_poke_early, hit: 2}" for k in ("at", "hit", "when")},
               **{k: _CONDITION_HINT for k in _CONDITIONS}, **{k: _ACTION_HINT for k in ACTIONS}}
_TRIGGER_HINTS = {**{k: "it is a condition: put it under when" for k in _CONDITIONS},
                  **{k: _ACTION_HINT for k in ACTIONS}}
_WHEN_HINTS = {**{k: "it belongs under on, next to when" for k in ("at", "hit")},
               **{k: _ACTION_HINT for k in ACTIONS}}

_WIDTHS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}

_TRIGGER = yn.Section({"at": _location, "hit": yn.count, "when": yn.keep})
_WHEN = yn.Section({key: yn.keep for key in _CONDITIONS})
_RULE = yn.Section({"on": yn.keep, "do": yn.keep})
_SKIP = yn.Section({"return": yn.keep})
_WRITE = yn.Section({"at": yn.keep, "bytes": yn.keep, **{key: yn.keep for key in _WIDTHS}})
_DUMP = yn.Section({"at": yn.keep, "len": yn.keep})


def _conditions(ctx: yn.Ctx, node: yaml.Node, key: str, trigger: Trigger) -> tuple[Condition, ...]:
    values = yn.read_section(ctx, node, _WHEN, key + ".", _WHEN_HINTS)
    function = function_of(trigger)
    out: list[Condition] = []
    for kind in _CONDITIONS:     # one order, whatever the file's, so equal rules compare equal
        item = yn.node_at(values, kind)
        if item is None:
            continue
        item_key = f"{key}.{kind}"
        if kind == "caller":
            out.append(Condition("caller", pattern=yn.regex(ctx, item, item_key), line=yn.line_of(item)))
        elif kind == "addr_in":
            _need_argument(ctx, item, item_key, trigger, "addr")
            name = yn.text("a kernel symbol such as native_flush_tlb_local", pattern=SYMBOL)(ctx, item, item_key)
            out.append(Condition("addr_in", name=str(name), line=yn.line_of(item)))
        elif kind == "pv_op":
            _need_argument(ctx, item, item_key, trigger, "type" if function in PV_TYPE_FUNCTIONS else "addr")
            name = yn.text("a pv_ops member such as 'irq.save_fl'", pattern=r"[a-z_]+(\.[a-z0-9_]+)+")(
                ctx, item, item_key)
            out.append(Condition("pv_op", name=str(name), line=yn.line_of(item)))
        elif kind == "len":
            _need_argument(ctx, item, item_key, trigger, "len")
            out.append(Condition("len", value=_expression(ctx, item, item_key, function), line=yn.line_of(item)))
        else:
            out.extend(Condition("reg", name=name, value=expr, line=yn.line_of(item))
                       for name, expr in _register_values(ctx, item, item_key, function))
    return tuple(out)


def _trigger(ctx: yn.Ctx, node: yaml.Node, key: str) -> Trigger:
    """``on:``: a location, or {at, hit, when}."""
    if isinstance(node, yaml.ScalarNode) and not yn.is_null(node):
        return Trigger(_location(ctx, node, key), line=yn.line_of(node))
    if not yn.is_mapping(node):
        raise ctx.fail(node, f"{key} must be a location such as text_poke_early, or a mapping "
                             f"{{at: …, hit: …, when: …}}, not {yn.describe(node)}")
    values = yn.read_section(ctx, node, _TRIGGER, key + ".", _TRIGGER_HINTS)
    if "at" not in values:
        raise ctx.fail(node, f"{key} needs at: (where to stop), e.g. {{at: text_poke_early}}")
    trigger = Trigger(at=str(values["at"]), hit=cast(int | None, values.get("hit")), line=yn.line_of(node))
    when = yn.node_at(values, "when")
    if when is None or yn.is_null(when):
        return trigger
    return dataclasses.replace(trigger, when=_conditions(ctx, when, key + ".when", trigger))


def _hex_bytes(ctx: yn.Ctx, node: yaml.Node, key: str) -> bytes:
    text = yn.scalar_text(ctx, node, key, "hex bytes such as '0f 1f 44 00 00'")
    groups = text.split()
    if not groups or not all(re.fullmatch(r"(?:[0-9a-fA-F]{2})+", g) for g in groups):
        raise ctx.fail(node, f"{key} must be hex byte pairs such as '0f 1f 44 00 00' or '0f1f440000', "
                             f"not {yn.quote(text)}")
    data = bytes.fromhex("".join(groups))
    if len(data) > MAX_WRITE:
        raise ctx.fail(node, f"{key}: {len(data)} bytes; at most {MAX_WRITE} can be written at once")
    return data


def _action_options(ctx: yn.Ctx, node: yaml.Node | None, item: yaml.Node, key: str, section: yn.Section,
                    example: str) -> tuple[dict[str, object], yaml.Node]:
    if node is None or not yn.is_mapping(node):
        raise ctx.fail(node if node is not None else item,
                       f"{key} must be a mapping such as {example}, not "
                       + (yn.describe(node) if node is not None else "nothing"))
    return yn.read_section(ctx, node, section, key + "."), node


def _require(ctx: yn.Ctx, values: Mapping[str, object], node: yaml.Node, key: str, name: str,
             example: str) -> yaml.Node:
    item = yn.node_at(values, name)
    if item is None:
        raise ctx.fail(node, f"{key} needs {name}: (e.g. {example})")
    return item


def _action(ctx: yn.Ctx, item: yaml.Node, key: str, trigger: Trigger) -> Action:
    function = function_of(trigger)
    arg: yaml.Node | None = None
    if yn.is_mapping(item):
        if len(item.value) != 1:
            found = ", ".join(str(k.value) for k, _ in item.value if isinstance(k, yaml.ScalarNode))
            raise ctx.fail(item, f"{key} must be one action, such as skip or write: {{at: rdi, bytes: '90'}} "
                                 f"(it has {len(item.value)} keys: {found}); give each action its own '- ' item")
        name_node, arg = item.value[0]
        if yn.is_null(arg):
            arg = None
    else:
        name_node = item
    name = yn.scalar_text(ctx, name_node, key, "an action (" + ", ".join(ACTIONS) + ")")
    if name not in ACTIONS:
        raise ctx.fail(name_node, f"{key}: unknown action {yn.quote(name)} (one of {', '.join(ACTIONS)})"
                                  + yn.suggest(name, ACTIONS))
    key = f"{key}.{name}" if arg is not None else key
    line = yn.line_of(item)
    if name == "skip":
        if function is None:
            raise ctx.fail(item, f"{key}: skip returns from a function at its entry, and {trigger.at!r} is not "
                                 "a function's entry; stop at the function itself (no +offset, not an address)")
        if arg is None:
            return Action("skip", line=line)
        values, _ = _action_options(ctx, arg, item, key, _SKIP, "{return: 0}")
        ret = yn.node_at(values, "return")
        return Action("skip", value=_expression(ctx, ret, key + ".return", function) if ret is not None else None,
                      line=line)
    if name == "write":
        example = "{at: 'rdi + 9', bytes: '02'}"
        values, arg = _action_options(ctx, arg, item, key, _WRITE, example)
        at = _expression(ctx, _require(ctx, values, arg, key, "at", example), key + ".at", function)
        given = [k for k in ("bytes", *_WIDTHS) if k in values]
        if len(given) != 1:
            raise ctx.fail(arg, f"{key} needs exactly one of bytes, u8, u16, u32, u64"
                                + (f" (it has {', '.join(given)})" if given else f", e.g. {example}"))
        what = given[0]
        value_node = _require(ctx, values, arg, key, what, example)
        if what == "bytes":
            return Action("write", at=at, data=_hex_bytes(ctx, value_node, key + ".bytes"), line=line)
        width = _WIDTHS[what]
        value = _expression(ctx, value_node, f"{key}.{what}", function)
        literal = parse_expression(value).literal
        if literal is not None and not -(1 << (8 * width - 1)) <= literal < (1 << (8 * width)):
            raise ctx.fail(value_node, f"{key}.{what}: {value} does not fit in {8 * width} bits")
        return Action("write", at=at, value=value, width=width, line=line)
    if name == "set":
        if arg is None:
            raise ctx.fail(item, f"{key} needs registers and values, e.g. set: {{rdx: 'len - 1'}}")
        return Action("set", registers=_register_values(ctx, arg, key, function), line=line)
    if name == "dump":
        example = "{at: addr, len: 16}"
        values, arg = _action_options(ctx, arg, item, key, _DUMP, example)
        at = _expression(ctx, _require(ctx, values, arg, key, "at", example), key + ".at", function)
        len_node = _require(ctx, values, arg, key, "len", example)
        length = yn.whole(len_node)
        if length is None or not 1 <= length <= MAX_DUMP:
            raise ctx.fail(len_node, f"{key}.len must be a number of bytes from 1 to {MAX_DUMP} (1 MiB), "
                                     f"not {yn.describe(len_node)}")
        return Action("dump", at=at, length=length, line=line)
    if name == "record":
        names: list[str] = []
        if arg is not None:
            items = [(key, arg)] if isinstance(arg, yaml.ScalarNode) else []
            if yn.is_list(arg):
                items = [(f"{key}[{i}]", n) for i, n in enumerate(arg.value)]
            elif not isinstance(arg, yaml.ScalarNode):
                raise ctx.fail(arg, f"{key} must be a list of expressions such as [addr, len, rsp], "
                                    f"not {yn.describe(arg)}")
            for item_key, node in items:
                ctx.note(item_key, node)
                text = _expression(ctx, node, item_key, function)
                if text in names:
                    raise ctx.fail(node, f"{item_key}: {yn.quote(text)} is listed twice")
                names.append(text)
        if not names and (function is None or not SIGNATURES.get(function)):
            where = f"{trigger.at!r} is not a function's entry" if function is None else \
                f"patchscope knows no arguments of {function}"
            raise ctx.fail(item, f"{key}: record without a list records the function's arguments, but {where}; "
                                 "list what to record, e.g. record: [rdi, rsi, rsp]")
        return Action("record", names=tuple(names), line=line)
    if arg is not None:
        raise ctx.fail(arg, f"{key}: {name} takes no options; write just '- {name}'")
    return Action(name, line=line)


def _actions(ctx: yn.Ctx, node: yaml.Node | None, key: str, trigger: Trigger,
             rule: yaml.Node) -> tuple[Action, ...]:
    """``do:``: a list of actions (or one); never empty."""
    if node is None or yn.is_null(node) or (isinstance(node, yaml.SequenceNode) and not node.value):
        raise ctx.fail(node if node is not None and not yn.is_null(node) else rule,
                       f"{key}: nothing to do: add record or continue (e.g. do: [record])")
    if yn.is_list(node):
        items = [(f"{key}[{i}]", item) for i, item in enumerate(node.value)]
    elif isinstance(node, yaml.ScalarNode) or yn.is_mapping(node):
        items = [(key, node)]
    else:
        raise ctx.fail(node, f"{key} must be a list of actions such as [inject-nmi], not {yn.describe(node)}")
    out: list[Action] = []
    for item_key, item in items:
        ctx.note(item_key, item)
        if out and out[-1].kind == "continue":
            raise ctx.fail(item, f"{item_key}: continue ends the rule's actions; move it last or remove it")
        out.append(_action(ctx, item, item_key, trigger))
    return tuple(out)


def _rules(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[Rule, ...]:
    if not yn.is_list(node) or not node.value:
        raise ctx.fail(node, f"{key} must be a list of rules such as [{{on: text_poke_bp_batch, do: [inject-nmi]}}], "
                             f"not {yn.describe(node)}")
    out: list[Rule] = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        if not yn.is_mapping(item):
            raise ctx.fail(item, f"{item_key} must be a mapping such as {{on: text_poke_bp_batch, do: [inject-nmi]}}, "
                                 f"not {yn.describe(item)}")
        values = yn.read_section(ctx, item, _RULE, item_key + ".", _RULE_HINTS)
        on = yn.node_at(values, "on")
        if on is None:
            raise ctx.fail(item, f"{item_key} needs on: (where to stop), e.g. on: text_poke_early")
        trigger = _trigger(ctx, on, item_key + ".on")
        out.append(Rule(trigger, _actions(ctx, yn.node_at(values, "do"), item_key + ".do", trigger, item),
                        line=yn.line_of(item)))
    return tuple(out)


def _max_stops(ctx: yn.Ctx, node: yaml.Node, key: str) -> int:
    value = yn.whole(node)
    if value is None or not 1 <= value <= MAX_STOPS:
        raise ctx.fail(node, f"{key} must be a whole number from 1 to {MAX_STOPS}, not {yn.describe(node)}")
    return value


def _stop_count(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[int, int]:
    """A number of stops: N, or [min, max]."""
    value = yn.whole(node)
    if value is not None and 0 <= value <= MAX_STOPS:
        return value, value
    if isinstance(node, yaml.SequenceNode) and len(node.value) == 2:
        low, high = (yn.whole(n) for n in node.value)
        if low is not None and high is not None and 0 <= low <= high <= MAX_STOPS:
            return low, high
    raise ctx.fail(node, f"{key} must be a number of stops or [min, max] with min <= max, not {yn.describe(node)}")


_STOP_EXPECT = yn.Section({"at": _location, "count": _stop_count, "caller": yn.regex})

# The config's scenario: section; build_scenario() makes the Scenario of its values.
SCENARIO = yn.Section({
    "max_stops": _max_stops,
    "rules": _rules,
})


def stop_expects(ctx: yn.Ctx, node: yaml.Node, key: str) -> tuple[StopExpect, ...]:
    """``expect.stops``: a list of {at, count, caller}."""
    if yn.is_null(node):
        return ()
    out: list[StopExpect] = []
    for item_key, item in yn.mappings(ctx, node, key, "such as [{at: int3_magic, count: 1}]",
                                      "{at: int3_magic, count: 1}"):
        values = yn.read_section(ctx, item, _STOP_EXPECT, item_key + ".")
        if "at" not in values:
            raise ctx.fail(item, f"{item_key} needs at: (a rule's on, as written there)")
        out.append(StopExpect(at=str(values["at"]), count=yn.get(values, "count", (1, MAX_STOPS)),
                              caller=cast(re.Pattern[str] | None, values.get("caller")), line=yn.line_of(item)))
    return tuple(out)


def nmi(ctx: yn.Ctx, node: yaml.Node, key: str) -> str | tuple[str, ...]:
    """``expect.nmi``: one state for all injected NMIs, or a list with one per NMI in injection order."""
    choice = yn.choice(NMI_STATES)
    if yn.is_list(node):
        if not node.value:
            raise ctx.fail(node, f"{key} must list at least one of {', '.join(NMI_STATES)} (one per injected NMI)")
        out = []
        for index, item in enumerate(node.value):
            ctx.note(f"{key}[{index}]", item)
            out.append(str(choice(ctx, item, f"{key}[{index}]")))
        return tuple(out)
    return str(choice(ctx, node, key))


def build_scenario(ctx: yn.Ctx, values: Mapping[str, object]) -> Scenario | None:
    """The Scenario of a config's read values (``values["scenario"]``, read against :data:`SCENARIO`)."""
    section = cast(Mapping[str, object] | None, values.get("scenario"))
    if section is None:
        return None   # absent, or a null "scenario:"
    rules = cast(tuple[Rule, ...] | None, section.get("rules"))
    if not rules:
        raise ctx.fail(ctx.lines.get("scenario"), "scenario needs rules:, e.g. "
                                                  "rules: [{on: text_poke_bp_batch, do: [inject-nmi]}]")
    return Scenario(rules=rules, max_stops=yn.get(section, "max_stops", DEFAULT_MAX_STOPS))
