"""Configs without a file, or changed by command-line flags, and back to plain data.

Python values are turned into YAML nodes and checked by :mod:`framework.config.schema`
exactly like file content; :func:`to_yaml_dict` is the inverse of parsing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import yaml

from .. import yamlnode as yn
from ..errors import ConfigError
from ..scenario import Action, Scenario, StopExpect, Trigger, parse_expression
from .model import (
    DEFAULT_SILENCE,
    Config,
    ConsoleExpect,
    Expect,
    ExpectOverlay,
    ModuleSpec,
    QemuOptions,
    SiteAssertion,
)
from .schema import SCHEMA, build_config, parse_modes

__all__ = ["default_config", "to_yaml_dict", "with_overrides"]

# Where errors about values that did not come from a file point.
_COMMAND_LINE = "<command line>"


def _qemu_dict(qemu: QemuOptions) -> dict[str, object]:
    return {"cpu": qemu.cpu, "memory": qemu.memory_mib, "smp": qemu.smp, "extra": list(qemu.extra)}


def _module_value(spec: ModuleSpec) -> object:
    """A ``modules:`` entry: the name, or the file's absolute path; a mapping when insmod must refuse it."""
    module = spec.name if spec.path is None else str(spec.path)
    return module if spec.load == "ok" else {"module": module, "load": spec.load}


def _console_dict(console: ConsoleExpect) -> dict[str, object]:
    return {"contains": [p.pattern for p in console.contains],
            "excludes": [p.pattern for p in console.excludes]}


def _expect_dict(expect: Expect) -> dict[str, object]:
    return {
        "outcome": expect.outcome,
        "crash": expect.crash.pattern if expect.crash is not None else None,
        "allow_crashes": [p.pattern for p in expect.allow_crashes],
        "console": _console_dict(expect.console),
        # Site checks appear only when used: they need an inspect: section.
        **({"sites": [_site_dict(a) for a in expect.sites]} if expect.sites else {}),
        **{k: v for k, v in (("oversized", expect.oversized), ("unknown_changes", expect.unknown_changes),
                             ("pv_indirect", expect.pv_indirect)) if v is not None},
        **({"relocation_overlaps": list(expect.relocation_overlaps)}
           if expect.relocation_overlaps is not None else {}),
        **({"orc_known": [p.pattern for p in expect.orc_known]} if expect.orc_known else {}),
        **{k: v for k, v in (("orc_disagreements", expect.orc_disagreements),
                             ("unwind_disagreements", expect.unwind_disagreements)) if v is not None},
        # Scenario checks too appear only when used: they need a scenario: section.
        **({"stops": [_stop_dict(s) for s in expect.stops]} if expect.stops else {}),
        **({"nmi": expect.nmi if isinstance(expect.nmi, str) else list(expect.nmi)}
           if expect.nmi is not None else {}),
    }


def _overlays_dict(config: Config) -> dict[str, object]:
    return {mode: _overlay_dict(overlay) for mode, overlay in config.expect_modes.items()}


def _overlay_dict(overlay: ExpectOverlay) -> dict[str, object]:
    """``expect.<mode>``: only what the section gives."""
    console = {k: v for k, v in _console_dict(overlay.console).items() if v}
    return {
        **({"outcome": overlay.outcome} if overlay.outcome is not None else {}),
        **({"crash": overlay.crash.pattern} if overlay.crash is not None else {}),
        **({"allow_crashes": [p.pattern for p in overlay.allow_crashes]} if overlay.allow_crashes else {}),
        **({"console": console} if console else {}),
        **({"sites": [_site_dict(a) for a in overlay.sites]} if overlay.sites else {}),
        **{k: v for k, v in (("oversized", overlay.oversized), ("unknown_changes", overlay.unknown_changes),
                             ("pv_indirect", overlay.pv_indirect)) if v is not None},
        **({"relocation_overlaps": list(overlay.relocation_overlaps)}
           if overlay.relocation_overlaps is not None else {}),
        **({"orc_known": [p.pattern for p in overlay.orc_known]} if overlay.orc_known else {}),
        **{k: v for k, v in (("orc_disagreements", overlay.orc_disagreements),
                             ("unwind_disagreements", overlay.unwind_disagreements)) if v is not None},
        **({"stops": [_stop_dict(s) for s in overlay.stops]} if overlay.stops else {}),
        **({"nmi": overlay.nmi if isinstance(overlay.nmi, str) else list(overlay.nmi)}
           if overlay.nmi is not None else {}),
    }


def _stop_dict(stop: StopExpect) -> dict[str, object]:
    return {"at": stop.at, "count": list(stop.count),
            **({"caller": stop.caller.pattern} if stop.caller is not None else {})}


def _expression_value(text: str) -> object:
    """An expression for YAML: small constants as numbers, the rest (addresses included) as text."""
    literal = parse_expression(text).literal
    return literal if literal is not None and -4096 < literal < 4096 else text


def _trigger_dict(trigger: Trigger) -> object:
    if trigger.hit is None and not trigger.when:
        return trigger.at
    when: dict[str, object] = {}
    for c in trigger.when:
        if c.kind == "caller":
            assert c.pattern is not None
            when["caller"] = c.pattern.pattern
        elif c.kind in ("addr_in", "pv_op"):
            when[c.kind] = c.name
        elif c.kind == "len":
            when["len"] = _expression_value(c.value)
        else:
            regs = cast(dict[str, object], when.setdefault("regs", {}))
            regs[c.name] = _expression_value(c.value)
    return {"at": trigger.at, **({"hit": trigger.hit} if trigger.hit is not None else {}),
            **({"when": when} if when else {})}


def _action_value(a: Action) -> object:
    if a.kind == "skip" and a.value is not None:
        return {"skip": {"return": _expression_value(a.value)}}
    if a.kind == "write":
        assert a.at is not None
        if a.data is not None:
            return {"write": {"at": _expression_value(a.at), "bytes": a.data.hex(" ")}}
        assert a.value is not None
        return {"write": {"at": _expression_value(a.at), f"u{8 * (a.width or 8)}": _expression_value(a.value)}}
    if a.kind == "set":
        return {"set": {name: _expression_value(expr) for name, expr in a.registers}}
    if a.kind == "dump":
        assert a.at is not None
        return {"dump": {"at": _expression_value(a.at), "len": a.length}}
    if a.kind == "record" and a.names:
        return {"record": [_expression_value(n) for n in a.names]}
    return a.kind


def _scenario_dict(scenario: Scenario) -> dict[str, object]:
    return {"max_stops": scenario.max_stops,
            "rules": [{"on": _trigger_dict(r.on), "do": [_action_value(a) for a in r.do]} for r in scenario.rules]}


def _site_dict(a: SiteAssertion) -> dict[str, object]:
    data: dict[str, object] = {
        "table": a.table, "op": a.op, "feature": a.feature, "module": a.module,
        "symbol": a.symbol.pattern if a.symbol else None, "at": a.at,
        "insns": ([] if a.insns == "" else a.insns) if a.insns is not None else None,
        "insns_regex": a.insns_regex.pattern if a.insns_regex else None,
        "state": list(a.state) if a.state else None, "count": list(a.count) if a.count else None,
    }
    return {k: v for k, v in data.items() if v is not None}


def to_yaml_dict(config: Config) -> dict[str, object]:
    """The config as plain data (regexes as pattern strings); parses back to an equal Config."""
    return {
        "name": config.name,
        "kernel": config.kernel,
        "mode": list(config.modes),
        "hypervisor": config.hypervisor,
        "cmdline": list(config.cmdline),
        "xen_cmdline": list(config.xen_cmdline),
        "dom0_memory": config.dom0_memory_mib,
        "qemu": _qemu_dict(config.qemu),
        "initramfs": config.initramfs,
        "init_commands": list(config.init_commands),
        "modules": [_module_value(spec) for spec in config.modules],
        "timeout": config.timeout,
        "silence": config.silence,
        "expect": _expect_dict(config.expect) | _overlays_dict(config),
        **({"inspect": {"capture": list(config.inspect.captures), "tables": list(config.inspect.tables),
                        **({"trace": True} if config.inspect.trace else
                           {"trace": "modules"} if config.inspect.trace_modules else {}),
                        **({"orc": True} if config.inspect.orc else {}),
                        **({"reader": config.inspect.reader} if config.inspect.reader != "qmp" else {}),
                        **({"unwind": {"table": config.inspect.unwind.table, "sites": config.inspect.unwind.sites,
                                       **({"op": config.inspect.unwind.op} if config.inspect.unwind.op else {}),
                                       **({"symbol": config.inspect.unwind.symbol.pattern}
                                          if config.inspect.unwind.symbol else {})}}
                           if config.inspect.unwind else {})}}
           if config.inspect else {}),
        **({"scenario": _scenario_dict(config.scenario)} if config.scenario is not None else {}),
        **({"requires": {k: v for k, v in (("kernel", config.requires.describe_kernel()),
                                           ("symbols", list(config.requires.symbols)),
                                           ("tables", list(config.requires.tables))) if v}}
           if config.requires else {}),
    }


# Python keyword spellings of YAML keys, accepted by default_config().
_ALIASES = {"modes": "mode", "dom0_memory_mib": "dom0_memory", "memory_mib": "memory"}


def _node(ctx: yn.Ctx, value: object, depth: int = 0) -> yaml.Node:
    """A YAML node (without a line) for a Python value, so it is checked like file content."""
    if depth > 20:
        raise ctx.fail(None, "value nested too deeply")
    if isinstance(value, QemuOptions):
        value = _qemu_dict(value)
    elif isinstance(value, Expect):
        value = _expect_dict(value)
    elif isinstance(value, ConsoleExpect):
        value = _console_dict(value)
    elif isinstance(value, Scenario):
        value = _scenario_dict(value)
    elif isinstance(value, ModuleSpec):
        value = _module_value(value)
    elif isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        value = value.pattern
    elif isinstance(value, Path):
        value = str(value)
    if value is None:
        return yaml.ScalarNode(yn.TAG_NULL, "null")
    if isinstance(value, bool):
        return yaml.ScalarNode(yn.TAG_BOOL, "true" if value else "false")
    if isinstance(value, int):
        return yaml.ScalarNode(yn.TAG_INT, str(value))
    if isinstance(value, float):
        return yaml.ScalarNode(yn.TAG_FLOAT, repr(value))
    if isinstance(value, str):
        return yaml.ScalarNode(yn.TAG_STR, value)
    if isinstance(value, Mapping):
        pairs = [(yaml.ScalarNode(yn.TAG_STR, _ALIASES.get(str(k), str(k))), _node(ctx, v, depth + 1))
                 for k, v in value.items()]
        return yaml.MappingNode(yn.TAG_MAP, pairs)
    if isinstance(value, (list, tuple)):
        return yaml.SequenceNode(yn.TAG_SEQ, [_node(ctx, v, depth + 1) for v in value])
    raise ctx.fail(None, f"unsupported value of type {type(value).__name__}")


def default_config(name: str = "adhoc", **overrides: object) -> Config:
    """A config without a file: the defaults, plus ``overrides`` checked like YAML keys.

    Keys are the YAML keys (``mode``, ``dom0_memory``, ``qemu={"memory": 512}`` …);
    the field names ``modes``, ``dom0_memory_mib`` and ``memory_mib`` work too, and
    ``qemu``/``expect`` may also be given as :class:`QemuOptions`/:class:`Expect`.
    An override of ``None`` means the default (handy for unset command-line flags).
    Errors name ``<command line>``; relative initramfs paths are taken from the cwd.
    """
    ctx = yn.Ctx(_COMMAND_LINE, Path.cwd(), SCHEMA)
    given = {key: value for key, value in overrides.items() if value is not None}
    root = _node(ctx, {"name": name, **given})
    values = yn.read_section(ctx, root, SCHEMA)
    return build_config(ctx, values, name, None)


def with_overrides(config: Config, *, modes: Sequence[str] | str | None = None,
                   timeout: float | None = None, extra_cmdline: Sequence[str] | str = (),
                   kernel: str | None = None) -> Config:
    """``config`` changed by command-line flags, each checked like the YAML key.

    ``extra_cmdline`` is appended to ``cmdline``. A silence the file did not set follows
    the new timeout (60 s, or the timeout if shorter); one it did set must still fit.
    The ``lines`` of overridden keys are dropped: those values no longer come from the file.
    """
    ctx = yn.Ctx(_COMMAND_LINE, Path.cwd(), SCHEMA)
    lines = dict(config.lines)

    def forget(key: str) -> None:
        for dotted in [k for k in lines if k == key or k.startswith(key + "[")]:
            del lines[dotted]

    new = config
    if modes is not None:
        new = dataclasses.replace(new, modes=parse_modes(ctx, _node(ctx, modes), "mode"))
        forget("mode")
    if kernel is not None:
        parsed = SCHEMA.keys["kernel"]
        assert not isinstance(parsed, yn.Section)
        new = dataclasses.replace(new, kernel=str(parsed(ctx, _node(ctx, kernel), "kernel")))
        forget("kernel")
    if extra_cmdline:
        parse_words = SCHEMA.keys["cmdline"]
        assert not isinstance(parse_words, yn.Section)
        extra = cast(tuple[str, ...], parse_words(ctx, _node(ctx, extra_cmdline), "cmdline"))
        new = dataclasses.replace(new, cmdline=new.cmdline + extra)
    if timeout is not None:
        seconds = yn.seconds(ctx, _node(ctx, timeout), "timeout")
        silence_set = ("silence" in config.lines
                       or config.silence != min(DEFAULT_SILENCE, config.timeout))
        if not silence_set:
            silence = min(DEFAULT_SILENCE, seconds)
        elif config.silence > seconds:
            raise ConfigError(config.path if config.path is not None else _COMMAND_LINE,
                              config.lines.get("silence"),
                              f"silence ({config.silence:g}s) must not be longer than the timeout "
                              f"({seconds:g}s) given on the command line; lower silence or "
                              "raise the timeout")
        else:
            silence = config.silence
        new = dataclasses.replace(new, timeout=seconds, silence=silence)
        forget("timeout")
    return dataclasses.replace(new, lines=lines)
