"""Test configs: ``configs/*.yaml`` loaded into frozen dataclasses.

Everything is checked here, before anything boots. Every mistake is a
:class:`~framework.errors.ConfigError` that renders as one line naming the
file, the line and the fix, e.g.
``configs/boot.yaml:7: unknown key 'outcom' in expect (did you mean 'outcome'?)``.

Schema (every key is optional)::

    name: boot-native        # [A-Za-z0-9._-]+, at most 100 characters; default: the file's stem
    kernel: debian-6.1       # a kernel reference (resolved elsewhere); default debian-6.1
    mode: native             # native | xen-pv, or a list of them without repeats;
                             # default: both, [native, xen-pv] (a config runs in every mode unless it pins one)
    hypervisor: xen-4.17     # the Xen for xen-pv mode: a recipe name or path:<xen image>; default xen-4.17
    cmdline: [nokaslr, debug]   # extra kernel arguments: a list, or one string split on whitespace
    xen_cmdline: [loglvl=all]   # extra Xen arguments (xen-pv mode), same forms as cmdline
    dom0_memory: 512         # MiB for dom0 in xen-pv mode: 512, "512M" or "1G"; default 256
    qemu:
      cpu: max               # QEMU -cpu model; default: the mode's default
      memory: 1G             # MiB: 512, "512M" or "1G"; default: the mode's default
      smp: 1                 # number of CPUs, >= 1; default 1
      extra: [-device, foo]  # more QEMU arguments, verbatim (a string is split on whitespace)
    initramfs: default       # default (patchscope's own /init) | none | a file; relative paths
                             # are taken from the config file's directory
    init_commands:           # a list of shell commands patchscope's /init runs after boot,
      - cat /proc/interrupts #   in order
    timeout: 120             # seconds for the whole run; default 120
    silence: 60              # seconds without console output that count as a hang;
                             # default 60, or the timeout if that is shorter
    expect:
      outcome: boots         # boots | panics | hangs; default boots
      crash: "VFS: Unable"   # regex searched in the primary crash title (outcome panics only)
      allow_crashes: ["WARNING in foo"]   # regexes: crashes with a matching title are tolerated
      console:
        contains: [regex]    # every regex must match some console line
        excludes: [regex]    # no console line may match any of them
      stops:                 # checks on the scenario's stops (needs scenario:)
        - at: text_poke_early   # a rule's on/at exactly as written there
          count: 1           #   N or [min, max]; default: at least once
          caller: "^apply_paravirt"   # regex every stop's return address ("symbol+0xoff") must match
      nmi: delivered         # delivered | ignored | early | arrived (not lost) | lost: every injected NMI's
                             # fate, or a list with one per NMI in injection order ([delivered, ignored]);
                             # needs an inject-nmi action; default delivered when the scenario injects one
    scenario:                # at a breakpoint, when conditions hold, do actions (framework/scenario/)
      max_stops: 1000        # at most this many stops at the rules' breakpoints (matched or not),
                             # 1..1000000; default 1000; then the breakpoints go and the run fails
      rules:
        - on: text_poke_bp_batch          # where to stop: symbol, symbol+0x10 (or +16), or 0xffffffff81000000
          do: [inject-nmi]
        - on:
            at: text_poke_early
            hit: 200                      # only the 200th matching stop (>= 1); default every one
            when:                         # all must hold
              caller: "^apply_paravirt[+]"   # regex on the return address *(u64 *)rsp as "symbol+0xoff"
              addr_in: native_flush_tlb_local  # the "addr" argument lies in this symbol
              pv_op: irq.save_fl          # paravirt_patch: the op of its "type"; else of the pv site at "addr"
              len: 6                      # the "len" argument equals (an EXPR)
              regs: {rdi: 0xffffffff81000000}   # registers equal (EXPRs)
          do:                             # in order; a rule always continues after its last action
            - skip                        # return at once: rip = *(u64 *)rsp, rsp += 8 (a function entry only)
            - skip: {return: 0}           #   ... with rax = EXPR
            - write: {at: "rdi + 9", bytes: "02"}   # hex pairs, spaces allowed; or u8/u16/u32/u64: EXPR
            - set: {rdx: "len - 1"}       # registers = EXPRs
            - dump: {at: addr, len: 16}   # memory into the artefacts; len 1..1048576
            - record: [addr, len, rsp]    # EXPRs into the log; bare "record": the function's arguments
            - inject-nmi                  # QMP inject-nmi
            - continue                    # only last

EXPR: integers (decimal, 0x hex), registers (rax … r15, rip, rsp, eflags), the
function's arguments, and kernel symbols (their address), with ``+ - *`` and
parentheses, in 64-bit unsigned arithmetic. Arguments come from
``scenario.SIGNATURES`` (Linux 6.1 prototypes, rdi, rsi, rdx, rcx, r8, r9) and
exist only when ``on`` is exactly a function's entry; ``addr_in``, ``len`` and
``pv_op`` need a function with that argument. Symbols are checked once the
kernel is known (``scenario.resolve``), before it boots.

An empty value (``cmdline:`` with nothing after it) means the default for
lists and sections, and for ``qemu.cpu``, ``qemu.memory`` and ``expect.crash``;
anywhere else it is an error. Values of string keys are taken as written, so
``kernel: 6.10`` is the string ``"6.10"``, not a number. Regex lists also
accept a single string. Numbers of seconds may be fractional.

Impossible combinations, each reported at the line of the offending key:

* ``expect.crash`` unless ``expect.outcome`` is ``panics``;
* ``expect.allow_crashes`` with outcome ``hangs``;
* ``init_commands`` or outcome ``boots`` with ``initramfs: none`` (without
  patchscope's /init nothing runs the commands or prints the success marker);
* ``silence`` longer than ``timeout``;
* a regex that does not compile, or an empty one (it would match anything);
* ``expect.stops`` without a scenario, or at a place no rule stops at; ``expect.nmi``
  without an ``inject-nmi`` action; a scenario without rules, a rule without
  actions, ``skip`` where ``on`` is not a function's entry, an argument or an
  argument condition the rule's function does not have;
* an ``initramfs`` file that does not exist (the message gives the resolved path);
* a mode other than native and xen-pv, or the same mode twice;
* a ``cmdline``/``xen_cmdline`` entry containing a newline or other control character;
* ``qemu.extra`` options that patchscope controls itself: ``-kernel``, ``-initrd``,
  ``-append``, ``-m``, ``-smp``, ``-cpu``, ``-serial``, ``-chardev``, ``-monitor``,
  ``-mon``, ``-qmp``, ``-nographic``, ``-daemonize``, ``-readconfig``, ``-S``, and
  ``-gdb``/``-s`` (the gdbstub must never listen on TCP).

Unknown keys, duplicate keys, merge keys (``<<``), YAML syntax errors (tabs
included), an empty file (write ``{}`` for every default), files over 256 KiB
and text that is not UTF-8 are errors too. Keys and values are read from the YAML node
tree (``yaml.compose``), never through ``yaml.safe_load``, so every error can
name its line; :attr:`Config.lines` keeps those lines for later messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast

import yaml

from ..domain import CAPTURE_POINTS, DEFAULT_HYPERVISOR, DEFAULT_KERNEL, MODES, OUTCOMES, TABLES, Outcome
from ..domain import SITE_STATES as STATES
from ..errors import ConfigError
from ..scenario import (
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

__all__ = [
    "MODES",
    "OUTCOMES",
    "Config",
    "ConsoleExpect",
    "Expect",
    "Mode",
    "Outcome",
    "QemuOptions",
    "default_config",
    "load_config",
    "parse_config",
    "to_yaml_dict",
    "with_overrides",
]

Mode = Literal["native", "xen-pv"]


DEFAULT_TIMEOUT = 120.0
DEFAULT_SILENCE = 60.0
DEFAULT_DOM0_MEMORY_MIB = 256
MAX_CONFIG_BYTES = 256 * 1024
MAX_NAME_LENGTH = 100

# Where errors about values that did not come from a file point.
_COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class QemuOptions:
    """The ``qemu:`` section; ``None`` means the mode's default."""

    cpu: str | None = None
    memory_mib: int | None = None
    smp: int = 1
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsoleExpect:
    """``expect.console``: regexes over console lines."""

    contains: tuple[re.Pattern[str], ...] = ()
    excludes: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Expect:
    """The ``expect:`` section."""

    outcome: Outcome = "boots"
    crash: re.Pattern[str] | None = None
    allow_crashes: tuple[re.Pattern[str], ...] = ()
    console: ConsoleExpect = ConsoleExpect()
    sites: tuple[SiteAssertion, ...] = ()
    oversized: int | None = None          # at most this many over-sized patches
    unknown_changes: int | None = None    # at most this many text changes outside every known site
    pv_indirect: int | None = None        # at most this many pv sites left as "call *pv_ops+…"
    stops: tuple[StopExpect, ...] = ()    # checks on the scenario's stops
    nmi: str | tuple[str, ...] | None = None   # every NMI's fate, or each one's in injection order;
                                               # see scenario.effective_nmi




@dataclass(frozen=True)
class Inspect:
    """What GDB captures of the guest's text, and which patch-site tables are compared."""

    captures: tuple[str, ...] = ("after-patching",)   # capture points or kernel symbols, in boot order
    tables: tuple[str, ...] = TABLES
    trace: bool = False     # record every text write of the boot (trace.py), with its self-check


@dataclass(frozen=True)
class SiteAssertion:
    """One assertion on patch sites: selectors, then exactly one check."""

    table: str | None = None
    op: str | None = None                      # paravirt: "irq.save_fl"
    feature: str | None = None                 # alternatives: "X86_FEATURE_XENPV" or "!X86_FEATURE_XENPV"
    symbol: re.Pattern[str] | None = None      # regex on "function+0xoff"
    at: str | None = None                      # capture point (default: the last)
    insns: str | None = None                   # every selected site's live instructions, NOPs left out
    insns_regex: re.Pattern[str] | None = None
    state: tuple[str, ...] | None = None       # every selected site is in one of these states
    count: tuple[int, int] | None = None       # number of selected sites, inclusive bounds
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        sel = [f"{k}={v}" for k, v in (("table", self.table), ("op", self.op), ("feature", self.feature),
                                       ("symbol", self.symbol.pattern if self.symbol else None)) if v]
        return " ".join(sel) or "all sites"


@dataclass(frozen=True)
class Config:
    """One validated test config."""

    name: str
    path: Path | None = None
    kernel: str = DEFAULT_KERNEL
    modes: tuple[str, ...] = MODES
    hypervisor: str = DEFAULT_HYPERVISOR
    cmdline: tuple[str, ...] = ()
    xen_cmdline: tuple[str, ...] = ()
    dom0_memory_mib: int = DEFAULT_DOM0_MEMORY_MIB
    qemu: QemuOptions = QemuOptions()
    initramfs: str = "default"
    init_commands: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    silence: float = DEFAULT_SILENCE
    expect: Expect = Expect()
    inspect: Inspect | None = None
    scenario: Scenario | None = None
    # Dotted key -> 1-based line ("expect.outcome", "cmdline[2]"); read-only by convention.
    # Not part of equality: the same settings laid out differently are the same config.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------- YAML nodes

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR = (_TAG + t for t in ("null", "bool", "int", "float", "str"))
_MAP, _SEQ, _MERGE, _TIMESTAMP = (_TAG + t for t in ("map", "seq", "merge", "timestamp"))
# Scalars whose text may be used as a string value ("kernel: 6.10" is the text "6.10").
_TEXT_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _TIMESTAMP})
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _line(node: yaml.Node) -> int | None:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else None


def _quote(text: str) -> str:
    """A user's text for a one-line message: quoted, escaped, not too long."""
    if len(text) > 60:
        return repr(text[:57]) + "..."
    return repr(text)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping" if node.tag == _MAP else f"a mapping tagged {_quote(node.tag)}"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.tag == _SEQ else f"a list tagged {_quote(node.tag)}"
    if node.tag == _NULL:
        return "empty" if node.value == "" else "null"
    return _quote(str(node.value))


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Ctx:
    """Where values come from: error source, base directory and the lines seen."""

    def __init__(self, source: Path | str | None, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.lines: dict[str, int] = {}

    def fail(self, where: yaml.Node | int | None, reason: str) -> ConfigError:
        line = _line(where) if isinstance(where, yaml.Node) else where
        return ConfigError(self.source, line, " ".join(reason.splitlines()))

    def note(self, key: str, node: yaml.Node) -> None:
        line = _line(node)
        if line is not None:
            self.lines[key] = line


# --------------------------------------------------------------------------- value parsers
#
# A parser turns the node under one key into a Python value or raises ConfigError
# at that node's line. ``key`` is the dotted name used in messages.

Parser = Callable[[_Ctx, yaml.Node, str], object]


def _scalar_text(ctx: _Ctx, node: yaml.Node, key: str, what: str) -> str:
    """The text of a non-null scalar, whatever YAML type it resolved to."""
    if isinstance(node, yaml.ScalarNode) and node.tag not in _TEXT_TAGS and node.tag != _NULL:
        raise ctx.fail(node, f"{key}: unsupported YAML tag {_quote(node.tag)}")
    if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
        raise ctx.fail(node, f"{key} must be {what}, not {_describe(node)}")
    text = str(node.value)
    if "\0" in text:
        raise ctx.fail(node, f"{key} contains a NUL character")
    return text


def _text(what: str, *, pattern: str | None = None, optional: bool = False) -> Parser:
    """One line of text, non-empty, matching ``pattern`` if given."""
    def parse(ctx: _Ctx, node: yaml.Node, key: str) -> str | None:
        if optional and _is_null(node):
            return None
        text = _scalar_text(ctx, node, key, what)
        if "\n" in text or "\r" in text:
            raise ctx.fail(node, f"{key} must be a single line, not {_quote(text)}")
        if text == "" or (pattern is not None and re.fullmatch(pattern, text) is None):
            raise ctx.fail(node, f"{key} must be {what}, not {_quote(text)}")
        return text
    return parse


def _choice(options: Sequence[str]) -> Parser:
    def parse(ctx: _Ctx, node: yaml.Node, key: str) -> str:
        what = "one of " + ", ".join(options)
        text = _scalar_text(ctx, node, key, what)
        if text not in options:
            raise ctx.fail(node, f"{key} must be {what}, not {_quote(text)}"
                                 + _suggest(text, options))
        return text
    return parse


def _number(node: yaml.Node) -> float | None:
    """A finite number from an int or float scalar (or plain text like 1e3), else None."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        if node.tag == _INT:
            value = float(_CONSTRUCTOR.construct_yaml_int(node))
        elif node.tag == _FLOAT:
            value = float(_CONSTRUCTOR.construct_yaml_float(node))
        elif node.tag == _STR and node.style is None:
            value = float(str(node.value).replace("_", ""))
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _seconds(ctx: _Ctx, node: yaml.Node, key: str) -> float:
    value = _number(node)
    if value is None or value <= 0:
        raise ctx.fail(node, f"{key} must be a positive number of seconds, not {_describe(node)}")
    return value


def _whole(node: yaml.Node) -> int | None:
    """A whole number from an int scalar or plain digits, else None."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        if node.tag == _INT:
            return int(_CONSTRUCTOR.construct_yaml_int(node))
        if node.tag == _STR and node.style is None and re.fullmatch(r"[0-9]+", str(node.value)):
            return int(str(node.value))
    except ValueError:
        pass
    return None


def _flag(ctx: _Ctx, node: yaml.Node, key: str) -> bool:
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))
    raise ctx.fail(node, f"{key} must be true or false, not {_describe(node)}")


def _count(ctx: _Ctx, node: yaml.Node, key: str) -> int:
    value = _whole(node)
    if value is None or value < 1:
        raise ctx.fail(node, f"{key} must be a whole number >= 1, not {_describe(node)}")
    return value


_MIB_RE = re.compile(r"\s*([0-9]+)\s*(?:([MG])(?:i?B)?)?\s*", re.IGNORECASE)


def _mib(*, optional: bool = False) -> Parser:
    def parse(ctx: _Ctx, node: yaml.Node, key: str) -> int | None:
        if optional and _is_null(node):
            return None
        value = _whole(node)
        if value is None and isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            match = _MIB_RE.fullmatch(str(node.value))
            if match is not None and len(match.group(1)) < 12:
                scale = 1024 if (match.group(2) or "M").upper() == "G" else 1
                value = int(match.group(1)) * scale
        if value is None or value < 1:
            raise ctx.fail(node, f"{key} must be a positive size in MiB like 512, '512M' or '1G', "
                                 f"not {_describe(node)}")
        return value
    return parse


def _items(ctx: _Ctx, node: yaml.Node, key: str, what: str,
           split: bool) -> list[tuple[str, yaml.Node, str]]:
    """(key of item, node, text) for a list of strings; a single string when ``split``."""
    if _is_null(node):
        return []
    if isinstance(node, yaml.ScalarNode) and split:
        text = _scalar_text(ctx, node, key, what)
        return [(key, node, word) for word in text.split()]
    if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ:
        raise ctx.fail(node, f"{key} must be {what}, not {_describe(node)}")
    out = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        text = _scalar_text(ctx, item, item_key, "a string")
        if text == "":
            raise ctx.fail(item, f"{item_key} is empty")
        out.append((item_key, item, text))
    return out


def _one_line(ctx: _Ctx, node: yaml.Node, key: str, text: str) -> None:
    if "\n" in text or "\r" in text:
        raise ctx.fail(node, f"{key}: {_quote(text)} contains a newline; the command line is one line")
    bad = [c for c in text if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise ctx.fail(node, f"{key}: {_quote(text)} contains control character U+{ord(bad[0]):04X}")


def _words(what: str, *, split: bool, check: Callable[[_Ctx, yaml.Node, str, str], None] | None
           = None) -> Parser:
    def parse(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
        items = _items(ctx, node, key, what, split)
        if check is not None:
            for item_key, item, text in items:
                check(ctx, item, item_key, text)
        return tuple(text for _, _, text in items)
    return parse


def _compile(ctx: _Ctx, node: yaml.Node, key: str, text: str) -> re.Pattern[str]:
    if text == "":
        raise ctx.fail(node, f"{key}: the regex is empty, so it matches anything; "
                             "write '.*' if that is what you mean")
    try:
        with warnings.catch_warnings():  # FutureWarnings about set syntax are not errors here
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(text)
    except re.error as err:
        raise ctx.fail(node, f"{key}: bad regex {_quote(text)}: {err}") from None
    except (RecursionError, OverflowError, ValueError) as err:  # absurdly nested or large
        raise ctx.fail(node, f"{key}: bad regex {_quote(text)}: {type(err).__name__}") from None


def _regexes(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[re.Pattern[str], ...]:
    if isinstance(node, yaml.ScalarNode) and not _is_null(node):
        return (_compile(ctx, node, key, _scalar_text(ctx, node, key, "a regex")),)
    items = _items(ctx, node, key, "a list of regexes", split=False)
    return tuple(_compile(ctx, item, item_key, text) for item_key, item, text in items)


def _regex(ctx: _Ctx, node: yaml.Node, key: str) -> re.Pattern[str]:
    return _compile(ctx, node, key, _scalar_text(ctx, node, key, "a regex"))


def _optional_regex(ctx: _Ctx, node: yaml.Node, key: str) -> re.Pattern[str] | None:
    if _is_null(node):
        return None
    return _compile(ctx, node, key, _scalar_text(ctx, node, key, "a regex"))


_SYMBOL = r"[A-Za-z_][A-Za-z0-9_.$]*"


def _names(what: str, check: Callable[[str], str | None]) -> Parser:
    """A name or a list of names, without repeats; ``check`` returns a reason to refuse one."""
    def parse(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
        out: list[str] = []
        for item_key, item, text in _items(ctx, node, key, what, split=True):
            reason = check(text)
            if reason is not None:
                raise ctx.fail(item, f"{item_key}: {reason}")
            if text in out:
                raise ctx.fail(item, f"{item_key}: {_quote(text)} is listed twice")
            out.append(text)
        if not out:
            raise ctx.fail(node, f"{key} must be {what}, not {_describe(node)}")
        return tuple(out)
    return parse


def _capture_name(text: str) -> str | None:
    if text in CAPTURE_POINTS or re.fullmatch(_SYMBOL, text):
        return None
    return (f"{_quote(text)} is not a capture point: use {', '.join(CAPTURE_POINTS)} "
            "or a kernel symbol to stop at")


def _table_name(text: str) -> str | None:
    return None if text in TABLES else (f"{_quote(text)} is not a patch-site table (one of "
                                        f"{', '.join(TABLES)}){_suggest(text, TABLES)}")


def _state_name(text: str) -> str | None:
    return None if text in STATES else (f"{_quote(text)} is not a site state (one of "
                                        f"{', '.join(STATES)}){_suggest(text, STATES)}")


def _at_most(ctx: _Ctx, node: yaml.Node, key: str) -> int | None:
    if _is_null(node):
        return None
    value = _whole(node)
    if value is None or value < 0:
        raise ctx.fail(node, f"{key} must be a whole number >= 0 (the most allowed), not {_describe(node)}")
    return value


def _count_range(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[int, int]:
    """A count: N, or [min, max]."""
    value = _whole(node)
    if value is not None and value >= 0:
        return value, value
    if isinstance(node, yaml.SequenceNode) and len(node.value) == 2:
        low, high = (_whole(n) for n in node.value)
        if low is not None and high is not None and 0 <= low <= high:
            return low, high
    raise ctx.fail(node, f"{key} must be a number of sites or [min, max] with min <= max, not {_describe(node)}")


def _insns(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    """Instructions: "pushf; pop %rax", or a list of them; [] means only NOPs."""
    if isinstance(node, yaml.SequenceNode):
        return "; ".join(text for _, _, text in _items(ctx, node, key, "a list of instructions", split=False))
    text = _scalar_text(ctx, node, key, "instructions such as 'pushf; pop %rax', or [] for only NOPs")
    if not text.strip():
        raise ctx.fail(node, f"{key}: write [] for a site that holds only NOPs")
    return text


_SITE_CHECKS = ("insns", "insns_regex", "state", "count")
_SITE_RULE: _Section  # defined below, after _Section


def _mappings(ctx: _Ctx, node: yaml.Node, key: str, listing: str, example: str) -> Iterator[tuple[str, yaml.Node]]:
    """``(key[i], item)`` of a list of mappings; the errors name the list or the item."""
    if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ:
        raise ctx.fail(node, f"{key} must be a list {listing}, not {_describe(node)}")
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        if not isinstance(item, yaml.MappingNode) or item.tag != _MAP:
            raise ctx.fail(item, f"{item_key} must be a mapping such as {example}, not {_describe(item)}")
        yield item_key, item


def _site_assertions(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[SiteAssertion, ...]:
    if _is_null(node):
        return ()
    out: list[SiteAssertion] = []
    for item_key, item in _mappings(ctx, node, key, "of site assertions, e.g. [{table: paravirt, state: patched}]",
                                    "{op: irq.save_fl, insns: 'pushf; pop %rax'}"):
        values = _read(ctx, item, _SITE_RULE, item_key + ".")
        checks = [c for c in _SITE_CHECKS if values.get(c) is not None]
        if len(checks) != 1:
            raise ctx.fail(item, f"{item_key} needs exactly one of {', '.join(_SITE_CHECKS)}"
                                 + (f" (it has {', '.join(checks)})" if checks else ""))
        out.append(SiteAssertion(
            table=cast(str | None, values.get("table")), op=cast(str | None, values.get("op")),
            feature=cast(str | None, values.get("feature")),
            symbol=cast(re.Pattern[str] | None, values.get("symbol")), at=cast(str | None, values.get("at")),
            insns=cast(str | None, values.get("insns")),
            insns_regex=cast(re.Pattern[str] | None, values.get("insns_regex")),
            state=cast(tuple[str, ...] | None, values.get("state")),
            count=cast(tuple[int, int] | None, values.get("count")), line=_line(item)))
    return tuple(out)


def _modes(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[str, ...]:
    valid = ", ".join(MODES)
    items: list[tuple[str, yaml.Node, str]]
    if isinstance(node, yaml.ScalarNode):
        items = [(key, node, _scalar_text(ctx, node, key, f"one of {valid} or a list of them"))]
    else:
        items = _items(ctx, node, key, f"one of {valid} or a list of them", split=False)
        if not items:
            raise ctx.fail(node, f"{key} must name at least one of {valid}")
    seen: list[str] = []
    for item_key, item, text in items:
        if text not in MODES:
            close = difflib.get_close_matches(text, MODES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ctx.fail(item, f"{item_key}: unknown mode {_quote(text)} "
                                 f"({hint}valid modes: {valid})")
        if text in seen:
            raise ctx.fail(item, f"{item_key}: mode {_quote(text)} is listed twice")
        seen.append(text)
    return tuple(seen)


def _initramfs(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    text = _text("'default', 'none' or the path of an initramfs file")(ctx, node, key)
    assert isinstance(text, str)
    if text in ("default", "none"):
        return text
    resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(text)))
    try:
        mode = os.stat(resolved).st_mode
    except (OSError, ValueError) as err:
        if isinstance(err, OSError) and err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ctx.fail(node, f"{key}: cannot use {resolved} ({err.strerror or err})") from None
        close = difflib.get_close_matches(text, ("default", "none"), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.fail(node, f"{key}: file {resolved} not found{hint}") from None
    if not stat.S_ISREG(mode):
        raise ctx.fail(node, f"{key}: {resolved} is not a regular file")
    return resolved


# Options of qemu.extra that patchscope sets itself, with the reason shown to the user.
_RESERVED_QEMU_OPTIONS: Mapping[str, str] = {
    "kernel": "patchscope sets -kernel itself; use the kernel: key",
    "initrd": "patchscope sets -initrd itself; use the initramfs: key",
    "append": "patchscope sets -append itself; use the cmdline: key (xen_cmdline: for Xen)",
    "m": "patchscope sets -m itself; use qemu.memory (dom0_memory for xen-pv dom0)",
    "smp": "patchscope sets -smp itself; use qemu.smp",
    "cpu": "patchscope sets -cpu itself; use qemu.cpu",
    "serial": "patchscope owns the serial console it reads; remove -serial",
    "chardev": "patchscope owns QEMU's character devices (console, monitor, gdb); remove -chardev",
    "monitor": "patchscope owns the QEMU monitor; remove -monitor",
    "mon": "patchscope owns the QEMU monitor; remove -mon",
    "qmp": "patchscope owns the QMP socket; remove -qmp",
    "qmp-pretty": "patchscope owns the QMP socket; remove -qmp-pretty",
    "nographic": "patchscope sets up the display and console itself; remove -nographic",
    "daemonize": "patchscope needs QEMU in the foreground; remove -daemonize",
    "readconfig": "patchscope cannot check options inside a QEMU config file; "
                  "put them in qemu.extra instead",
    "S": "patchscope starts the guest CPUs itself; remove -S",
    "gdb": "the gdbstub must never listen on TCP and patchscope attaches gdb itself; remove -gdb",
    "s": "-s opens a gdbstub on TCP port 1234, which is never allowed; "
         "patchscope attaches gdb itself; remove -s",
}


def _qemu_arg(ctx: _Ctx, node: yaml.Node, key: str, text: str) -> None:
    if text.startswith("-"):
        words = text.lstrip("-").split("=", 1)[0].split()
        option = words[0] if words else ""
        if option in _RESERVED_QEMU_OPTIONS:
            raise ctx.fail(node, f"{key}: {_RESERVED_QEMU_OPTIONS[option]}")


# --------------------------------------------------------------------------- scenario


def _keep(ctx: _Ctx, node: yaml.Node, key: str) -> yaml.Node:
    """The node itself, for values whose checks depend on other keys."""
    return node


def _nodes(values: Mapping[str, object], key: str) -> yaml.Node | None:
    return cast(yaml.Node | None, values.get(key))


def _expression(ctx: _Ctx, node: yaml.Node, key: str, function: str | None) -> str:
    """An expression's text, checked for syntax and names; constants in their normal spelling."""
    what = "an expression such as 'rdi + 9', 'len - 1' or 0xffffffff81000000"
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        try:
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
        except ValueError:
            raise ctx.fail(node, f"{key} must be {what}, not {_describe(node)}") from None
        if abs(value) > (1 << 64) - 1:
            raise ctx.fail(node, f"{key}: {value:#x} does not fit in 64 bits")
        return literal_text(value)
    if isinstance(node, yaml.ScalarNode) and node.tag in (_BOOL, _FLOAT, _TIMESTAMP):
        raise ctx.fail(node, f"{key} must be {what}, not {_describe(node)}")
    text = _scalar_text(ctx, node, key, what)
    if "\n" in text or "\r" in text:
        raise ctx.fail(node, f"{key} must be a single line, not {_quote(text)}")
    try:
        parsed = parse_expression(text)
    except ValueError as err:
        raise ctx.fail(node, f"{key}: {err}") from None
    for name in sorted(parsed.names):
        reason = name_problem(name, function)
        if reason is not None:
            raise ctx.fail(node, f"{key}: {reason}")
    return literal_text(parsed.literal) if parsed.literal is not None else text.strip()


def _location(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    text = _scalar_text(ctx, node, key, "a kernel symbol, symbol+0x10 or an address")
    try:
        parse_location(text)
    except ValueError as err:
        raise ctx.fail(node, f"{key}: {err}") from None
    return text.strip()


def _need_argument(ctx: _Ctx, node: yaml.Node, key: str, trigger: Trigger, argument: str) -> None:
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


def _register(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    name = _scalar_text(ctx, node, key, "a register")
    if name not in REGISTERS:
        reason = name_problem(name, None)
        hint = f": {reason}" if reason is not None and "register" in reason else _suggest(name, REGISTERS)
        raise ctx.fail(node, f"{key}: {_quote(name)} is not a register (one of {', '.join(REGISTERS)}){hint}")
    return name


def _register_values(ctx: _Ctx, node: yaml.Node, key: str, function: str | None) -> tuple[tuple[str, str], ...]:
    """{register: expression, …}, at least one."""
    if not isinstance(node, yaml.MappingNode) or node.tag != _MAP or not node.value:
        raise ctx.fail(node, f"{key} must be a mapping of registers to values such as {{rdx: 'len - 1'}}, "
                             f"not {_describe(node)}")
    out: list[tuple[str, str]] = []
    for key_node, value_node in node.value:
        name = _register(ctx, key_node, key)
        if any(name == seen for seen, _ in out):
            raise ctx.fail(key_node, f"duplicate key {_quote(f'{key}.{name}')}")
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


def _conditions(ctx: _Ctx, node: yaml.Node, key: str, trigger: Trigger) -> tuple[Condition, ...]:
    values = _read(ctx, node, _WHEN, key + ".", _WHEN_HINTS)
    function = function_of(trigger)
    out: list[Condition] = []
    for kind in _CONDITIONS:     # one order, whatever the file's, so equal rules compare equal
        item = _nodes(values, kind)
        if item is None:
            continue
        item_key = f"{key}.{kind}"
        if kind == "caller":
            out.append(Condition("caller", pattern=_regex(ctx, item, item_key), line=_line(item)))
        elif kind == "addr_in":
            _need_argument(ctx, item, item_key, trigger, "addr")
            name = _text("a kernel symbol such as native_flush_tlb_local", pattern=_SYMBOL)(ctx, item, item_key)
            out.append(Condition("addr_in", name=str(name), line=_line(item)))
        elif kind == "pv_op":
            _need_argument(ctx, item, item_key, trigger, "type" if function in PV_TYPE_FUNCTIONS else "addr")
            name = _text("a pv_ops member such as 'irq.save_fl'", pattern=r"[a-z_]+(\.[a-z0-9_]+)+")(
                ctx, item, item_key)
            out.append(Condition("pv_op", name=str(name), line=_line(item)))
        elif kind == "len":
            _need_argument(ctx, item, item_key, trigger, "len")
            out.append(Condition("len", value=_expression(ctx, item, item_key, function), line=_line(item)))
        else:
            out.extend(Condition("reg", name=name, value=expr, line=_line(item))
                       for name, expr in _register_values(ctx, item, item_key, function))
    return tuple(out)


def _trigger(ctx: _Ctx, node: yaml.Node, key: str) -> Trigger:
    """``on:``: a location, or {at, hit, when}."""
    if isinstance(node, yaml.ScalarNode) and not _is_null(node):
        return Trigger(_location(ctx, node, key), line=_line(node))
    if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
        raise ctx.fail(node, f"{key} must be a location such as text_poke_early, or a mapping "
                             f"{{at: …, hit: …, when: …}}, not {_describe(node)}")
    values = _read(ctx, node, _TRIGGER, key + ".", _TRIGGER_HINTS)
    if "at" not in values:
        raise ctx.fail(node, f"{key} needs at: (where to stop), e.g. {{at: text_poke_early}}")
    trigger = Trigger(at=str(values["at"]), hit=cast(int | None, values.get("hit")), line=_line(node))
    when = _nodes(values, "when")
    if when is None or _is_null(when):
        return trigger
    return dataclasses.replace(trigger, when=_conditions(ctx, when, key + ".when", trigger))


def _hex_bytes(ctx: _Ctx, node: yaml.Node, key: str) -> bytes:
    text = _scalar_text(ctx, node, key, "hex bytes such as '0f 1f 44 00 00'")
    groups = text.split()
    if not groups or not all(re.fullmatch(r"(?:[0-9a-fA-F]{2})+", g) for g in groups):
        raise ctx.fail(node, f"{key} must be hex byte pairs such as '0f 1f 44 00 00' or '0f1f440000', "
                             f"not {_quote(text)}")
    data = bytes.fromhex("".join(groups))
    if len(data) > MAX_WRITE:
        raise ctx.fail(node, f"{key}: {len(data)} bytes; at most {MAX_WRITE} can be written at once")
    return data


_WIDTHS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def _action_options(ctx: _Ctx, node: yaml.Node | None, item: yaml.Node, key: str, section: _Section,
                    example: str) -> tuple[dict[str, object], yaml.Node]:
    if node is None or not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
        raise ctx.fail(node if node is not None else item,
                       f"{key} must be a mapping such as {example}, not "
                       + (_describe(node) if node is not None else "nothing"))
    return _read(ctx, node, section, key + "."), node


def _require(ctx: _Ctx, values: Mapping[str, object], node: yaml.Node, key: str, name: str,
             example: str) -> yaml.Node:
    item = _nodes(values, name)
    if item is None:
        raise ctx.fail(node, f"{key} needs {name}: (e.g. {example})")
    return item


def _action(ctx: _Ctx, item: yaml.Node, key: str, trigger: Trigger) -> Action:
    function = function_of(trigger)
    arg: yaml.Node | None = None
    if isinstance(item, yaml.MappingNode) and item.tag == _MAP:
        if len(item.value) != 1:
            found = ", ".join(str(k.value) for k, _ in item.value if isinstance(k, yaml.ScalarNode))
            raise ctx.fail(item, f"{key} must be one action, such as skip or write: {{at: rdi, bytes: '90'}} "
                                 f"(it has {len(item.value)} keys: {found}); give each action its own '- ' item")
        name_node, arg = item.value[0]
        if _is_null(arg):
            arg = None
    else:
        name_node = item
    name = _scalar_text(ctx, name_node, key, "an action (" + ", ".join(ACTIONS) + ")")
    if name not in ACTIONS:
        raise ctx.fail(name_node, f"{key}: unknown action {_quote(name)} (one of {', '.join(ACTIONS)})"
                                  + _suggest(name, ACTIONS))
    key = f"{key}.{name}" if arg is not None else key
    line = _line(item)
    if name == "skip":
        if function is None:
            raise ctx.fail(item, f"{key}: skip returns from a function at its entry, and {trigger.at!r} is not "
                                 "a function's entry; stop at the function itself (no +offset, not an address)")
        if arg is None:
            return Action("skip", line=line)
        values, _ = _action_options(ctx, arg, item, key, _SKIP, "{return: 0}")
        ret = _nodes(values, "return")
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
        length = _whole(len_node)
        if length is None or not 1 <= length <= MAX_DUMP:
            raise ctx.fail(len_node, f"{key}.len must be a number of bytes from 1 to {MAX_DUMP} (1 MiB), "
                                     f"not {_describe(len_node)}")
        return Action("dump", at=at, length=length, line=line)
    if name == "record":
        names: list[str] = []
        if arg is not None:
            items = [(key, arg)] if isinstance(arg, yaml.ScalarNode) else []
            if isinstance(arg, yaml.SequenceNode) and arg.tag == _SEQ:
                items = [(f"{key}[{i}]", n) for i, n in enumerate(arg.value)]
            elif not isinstance(arg, yaml.ScalarNode):
                raise ctx.fail(arg, f"{key} must be a list of expressions such as [addr, len, rsp], "
                                    f"not {_describe(arg)}")
            for item_key, node in items:
                ctx.note(item_key, node)
                text = _expression(ctx, node, item_key, function)
                if text in names:
                    raise ctx.fail(node, f"{item_key}: {_quote(text)} is listed twice")
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


def _actions(ctx: _Ctx, node: yaml.Node | None, key: str, trigger: Trigger, rule: yaml.Node) -> tuple[Action, ...]:
    """``do:``: a list of actions (or one); never empty."""
    if node is None or _is_null(node) or (isinstance(node, yaml.SequenceNode) and not node.value):
        raise ctx.fail(node if node is not None and not _is_null(node) else rule,
                       f"{key}: nothing to do: add record or continue (e.g. do: [record])")
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        items = [(f"{key}[{i}]", item) for i, item in enumerate(node.value)]
    elif isinstance(node, yaml.ScalarNode) or (isinstance(node, yaml.MappingNode) and node.tag == _MAP):
        items = [(key, node)]
    else:
        raise ctx.fail(node, f"{key} must be a list of actions such as [inject-nmi], not {_describe(node)}")
    out: list[Action] = []
    for item_key, item in items:
        ctx.note(item_key, item)
        if out and out[-1].kind == "continue":
            raise ctx.fail(item, f"{item_key}: continue ends the rule's actions; move it last or remove it")
        out.append(_action(ctx, item, item_key, trigger))
    return tuple(out)


def _rules(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[Rule, ...]:
    if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ or not node.value:
        raise ctx.fail(node, f"{key} must be a list of rules such as [{{on: text_poke_bp_batch, do: [inject-nmi]}}], "
                             f"not {_describe(node)}")
    out: list[Rule] = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        ctx.note(item_key, item)
        if not isinstance(item, yaml.MappingNode) or item.tag != _MAP:
            raise ctx.fail(item, f"{item_key} must be a mapping such as {{on: text_poke_bp_batch, do: [inject-nmi]}}, "
                                 f"not {_describe(item)}")
        values = _read(ctx, item, _RULE, item_key + ".", _RULE_HINTS)
        on = _nodes(values, "on")
        if on is None:
            raise ctx.fail(item, f"{item_key} needs on: (where to stop), e.g. on: text_poke_early")
        trigger = _trigger(ctx, on, item_key + ".on")
        out.append(Rule(trigger, _actions(ctx, _nodes(values, "do"), item_key + ".do", trigger, item),
                        line=_line(item)))
    return tuple(out)


def _nmi(ctx: _Ctx, node: yaml.Node, key: str) -> str | tuple[str, ...]:
    """What must become of injected NMIs: one state for all, or a list with one per NMI in injection order."""
    choice = _choice(NMI_STATES)
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        if not node.value:
            raise ctx.fail(node, f"{key} must list at least one of {', '.join(NMI_STATES)} (one per injected NMI)")
        out = []
        for index, item in enumerate(node.value):
            ctx.note(f"{key}[{index}]", item)
            out.append(str(choice(ctx, item, f"{key}[{index}]")))
        return tuple(out)
    return str(choice(ctx, node, key))


def _max_stops(ctx: _Ctx, node: yaml.Node, key: str) -> int:
    value = _whole(node)
    if value is None or not 1 <= value <= MAX_STOPS:
        raise ctx.fail(node, f"{key} must be a whole number from 1 to {MAX_STOPS}, not {_describe(node)}")
    return value


def _stop_count(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[int, int]:
    """A number of stops: N, or [min, max]."""
    value = _whole(node)
    if value is not None and 0 <= value <= MAX_STOPS:
        return value, value
    if isinstance(node, yaml.SequenceNode) and len(node.value) == 2:
        low, high = (_whole(n) for n in node.value)
        if low is not None and high is not None and 0 <= low <= high <= MAX_STOPS:
            return low, high
    raise ctx.fail(node, f"{key} must be a number of stops or [min, max] with min <= max, not {_describe(node)}")


def _stop_expects(ctx: _Ctx, node: yaml.Node, key: str) -> tuple[StopExpect, ...]:
    if _is_null(node):
        return ()
    out: list[StopExpect] = []
    for item_key, item in _mappings(ctx, node, key, "such as [{at: int3_magic, count: 1}]",
                                    "{at: int3_magic, count: 1}"):
        values = _read(ctx, item, _STOP_EXPECT, item_key + ".")
        if "at" not in values:
            raise ctx.fail(item, f"{item_key} needs at: (a rule's on, as written there)")
        out.append(StopExpect(at=str(values["at"]), count=_get(values, "count", (1, MAX_STOPS)),
                              caller=cast(re.Pattern[str] | None, values.get("caller")), line=_line(item)))
    return tuple(out)


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class _Section:
    """A mapping with known keys; each value is a parser or a nested section."""

    keys: Mapping[str, Parser | _Section]


_SITE_RULE = _Section({
    "table": _choice(TABLES),
    "op": _text("a pv_ops member such as 'irq.save_fl'", pattern=r"[a-z_]+(\.[a-z0-9_]+)+"),
    "feature": _text("a CPU feature such as 'X86_FEATURE_XENPV' or '!X86_FEATURE_XENPV'",
                     pattern=r"!?X86_FEATURE_\S+"),
    "symbol": _optional_regex,
    "at": _text("a capture point", pattern=r"\S+"),
    "insns": _insns,
    "insns_regex": _regex,
    "state": _names("a site state or a list of them", _state_name),
    "count": _count_range,
})

_TRIGGER = _Section({"at": _location, "hit": _count, "when": _keep})
_WHEN = _Section({key: _keep for key in _CONDITIONS})
_RULE = _Section({"on": _keep, "do": _keep})
_SKIP = _Section({"return": _keep})
_WRITE = _Section({"at": _keep, "bytes": _keep, **{key: _keep for key in _WIDTHS}})
_DUMP = _Section({"at": _keep, "len": _keep})
_STOP_EXPECT = _Section({"at": _location, "count": _stop_count, "caller": _regex})

_NAME_PATTERN = rf"(?![.]+$)[A-Za-z0-9._-]{{1,{MAX_NAME_LENGTH}}}"
_NAME_WHAT = f"1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' (not only dots)"

_SCHEMA = _Section({
    "name": _text(_NAME_WHAT, pattern=_NAME_PATTERN),
    "kernel": _text("a kernel reference such as 'debian-6.1'"),
    "mode": _modes,
    "hypervisor": _text("a hypervisor reference such as 'xen-4.17' or 'path:/boot/xen'"),
    "cmdline": _words("a list of kernel arguments", split=True, check=_one_line),
    "xen_cmdline": _words("a list of Xen arguments", split=True, check=_one_line),
    "dom0_memory": _mib(),
    "qemu": _Section({
        "cpu": _text("a QEMU CPU model such as 'max' (no spaces)", pattern=r"\S+", optional=True),
        "memory": _mib(optional=True),
        "smp": _count,
        "extra": _words("a list of QEMU arguments", split=True, check=_qemu_arg),
    }),
    "initramfs": _initramfs,
    "init_commands": _words("a list of shell commands, e.g. ['cat /proc/interrupts']",
                            split=False),
    "timeout": _seconds,
    "silence": _seconds,
    "inspect": _Section({
        "capture": _names("a capture point or a list of them", _capture_name),
        "tables": _names("a table name or a list of them", _table_name),
        "trace": _flag,
    }),
    "scenario": _Section({
        "max_stops": _max_stops,
        "rules": _rules,
    }),
    "expect": _Section({
        "stops": _stop_expects,
        "nmi": _nmi,
        "sites": _site_assertions,
        "oversized": _at_most,
        "unknown_changes": _at_most,
        "pv_indirect": _at_most,
        "outcome": _choice(OUTCOMES),
        "crash": _optional_regex,
        "allow_crashes": _regexes,
        "console": _Section({
            "contains": _regexes,
            "excludes": _regexes,
        }),
    }),
})


def _all_keys(section: _Section, prefix: str = "") -> list[str]:
    out = []
    for key, rule in section.keys.items():
        out.append(prefix + key)
        if isinstance(rule, _Section):
            out.extend(_all_keys(rule, f"{prefix}{key}."))
    return out


_ALL_KEYS = _all_keys(_SCHEMA)


def _unknown_key(key: str, section: _Section, prefix: str, hints: Mapping[str, str] | None = None) -> str:
    where = f" in {prefix[:-1]}" if prefix else ""
    message = f"unknown key {_quote(key)}{where}"
    if hints is not None and key in hints:
        return f"{message} ({hints[key]})"
    elsewhere = [path for path in _ALL_KEYS if path.rsplit(".", 1)[-1] == key]
    if elsewhere:
        parent = elsewhere[0].rsplit(".", 1)[0] if "." in elsewhere[0] else "the top level"
        return f"{message} (did you mean {elsewhere[0]!r}? it belongs under {parent})"
    close = difflib.get_close_matches(key, list(section.keys), n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    return f"{message} (valid keys: {', '.join(section.keys)})"


def _read(ctx: _Ctx, node: yaml.Node, section: _Section, prefix: str,
          hints: Mapping[str, str] | None = None) -> dict[str, object]:
    """Parse a mapping node against a section; returns {key: value} for the keys present.

    ``hints`` says where keys that are not in the section belong instead.
    """
    if _is_null(node):
        return {}
    if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
        if not prefix:
            raise ctx.fail(node, f"a config must be a mapping of keys (like 'timeout: 60'), "
                                 f"not {_describe(node)}")
        raise ctx.fail(node, f"{prefix[:-1]} must be a mapping of keys, not {_describe(node)}")
    values: dict[str, object] = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
            raise ctx.fail(key_node, "YAML merge keys (<<) are not supported; write the keys out")
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
            raise ctx.fail(key_node, f"keys must be plain names, not {_describe(key_node)}")
        key = str(key_node.value)
        dotted = prefix + key
        if key in values:
            first = ctx.lines.get(dotted)
            again = f" (first at line {first})" if first is not None else ""
            raise ctx.fail(key_node, f"duplicate key {_quote(dotted)}{again}")
        rule = section.keys.get(key)
        if rule is None:
            raise ctx.fail(key_node, _unknown_key(key, section, prefix, hints))
        ctx.note(dotted, key_node)
        if isinstance(rule, _Section):
            values[key] = _read(ctx, value_node, rule, dotted + ".")
        else:
            values[key] = rule(ctx, value_node, dotted)
    return values


# --------------------------------------------------------------------------- building

T = TypeVar("T")


def _get(values: Mapping[str, object], key: str, default: T) -> T:
    return cast(T, values.get(key, default))


def _build(ctx: _Ctx, values: Mapping[str, object], name: str, path: Path | None) -> Config:
    """Dataclasses from parsed values, after the checks that involve several keys."""
    qemu = _get(values, "qemu", cast(Mapping[str, object], {}))
    expect = _get(values, "expect", cast(Mapping[str, object], {}))
    console = _get(expect, "console", cast(Mapping[str, object], {}))
    lines = ctx.lines

    outcome = _get(expect, "outcome", "boots")
    crash = _get(expect, "crash", cast(re.Pattern[str] | None, None))
    allow_crashes = _get(expect, "allow_crashes", cast(tuple[re.Pattern[str], ...], ()))
    initramfs = _get(values, "initramfs", "default")
    init_commands = _get(values, "init_commands", cast(tuple[str, ...], ()))
    timeout = _get(values, "timeout", DEFAULT_TIMEOUT)
    silence = _get(values, "silence", min(DEFAULT_SILENCE, timeout))

    if crash is not None and outcome != "panics":
        raise ctx.fail(lines.get("expect.crash"),
                       f"expect.crash only applies to outcome 'panics' (outcome is {outcome!r}); "
                       "remove it or set expect.outcome: panics")
    if allow_crashes and outcome == "hangs":
        raise ctx.fail(lines.get("expect.allow_crashes"),
                       "expect.allow_crashes cannot be used with outcome 'hangs' (a run that "
                       "crashes did not hang); remove it or change expect.outcome")
    if init_commands and initramfs == "none":
        raise ctx.fail(lines.get("init_commands"),
                       "init_commands need patchscope's /init, but initramfs is 'none'; "
                       "remove them or use initramfs: default")
    if outcome == "boots" and initramfs == "none":
        raise ctx.fail(lines.get("initramfs", lines.get("expect.outcome")),
                       "initramfs: none cannot go with outcome 'boots': without patchscope's /init "
                       "nothing prints the success marker; use initramfs: default or set "
                       "expect.outcome to panics or hangs")
    if silence > timeout:
        raise ctx.fail(lines.get("silence"),
                       f"silence ({silence:g}s) must not be longer than timeout ({timeout:g}s)")
    inspect_values = cast(Mapping[str, object] | None, values.get("inspect"))
    inspect = None
    if inspect_values is not None:
        inspect = Inspect(captures=_get(inspect_values, "capture", Inspect.captures),
                          tables=_get(inspect_values, "tables", Inspect.tables),
                          trace=_get(inspect_values, "trace", False))
    sites = _get(expect, "sites", cast(tuple[SiteAssertion, ...], ()))
    for key in ("sites", "oversized", "unknown_changes", "pv_indirect"):
        if expect.get(key) not in (None, ()) and inspect is None:
            raise ctx.fail(lines.get(f"expect.{key}"),
                           f"expect.{key} needs an inspect: section saying what to capture, "
                           "e.g. inspect: {capture: after-patching}")
    for index, assertion in enumerate(sites):
        assert inspect is not None
        if assertion.at is not None and assertion.at not in inspect.captures:
            raise ctx.fail(lines.get(f"expect.sites[{index}].at"),
                           f"expect.sites[{index}].at: {assertion.at!r} is not captured; "
                           f"inspect.capture has {', '.join(inspect.captures)}")
        if assertion.table is not None and assertion.table not in inspect.tables:
            raise ctx.fail(lines.get(f"expect.sites[{index}].table"),
                           f"expect.sites[{index}].table: {assertion.table!r} is not in inspect.tables")

    scenario = _scenario(ctx, values)
    stops = _get(expect, "stops", cast(tuple[StopExpect, ...], ()))
    nmi = cast(str | tuple[str, ...] | None, expect.get("nmi"))
    if stops and scenario is None:
        raise ctx.fail(lines.get("expect.stops"),
                       "expect.stops needs a scenario: section whose rules stop there, "
                       "e.g. scenario: {rules: [{on: int3_magic, do: [record]}]}")
    rule_ats = [rule.on.at for rule in scenario.rules] if scenario is not None else []
    for index, stop in enumerate(stops):
        if stop.at not in rule_ats:
            raise ctx.fail(lines.get(f"expect.stops[{index}].at"),
                           f"expect.stops[{index}].at: no scenario rule stops at {stop.at!r}"
                           f"{_suggest(stop.at, rule_ats)}; write a rule's on: exactly as it is written "
                           f"({', '.join(dict.fromkeys(rule_ats))})")
    if nmi is not None and (scenario is None or not scenario.injects_nmi()):
        raise ctx.fail(lines.get("expect.nmi"),
                       "expect.nmi needs a scenario rule that injects an NMI (do: [inject-nmi]); "
                       "add one or remove expect.nmi")

    return Config(
        name=_get(values, "name", name),
        path=path,
        kernel=_get(values, "kernel", DEFAULT_KERNEL),
        modes=_get(values, "mode", MODES),
        hypervisor=_get(values, "hypervisor", DEFAULT_HYPERVISOR),
        cmdline=_get(values, "cmdline", ()),
        xen_cmdline=_get(values, "xen_cmdline", ()),
        dom0_memory_mib=_get(values, "dom0_memory", DEFAULT_DOM0_MEMORY_MIB),
        qemu=QemuOptions(
            cpu=_get(qemu, "cpu", None),
            memory_mib=_get(qemu, "memory", None),
            smp=_get(qemu, "smp", 1),
            extra=_get(qemu, "extra", ()),
        ),
        initramfs=initramfs,
        init_commands=init_commands,
        timeout=float(timeout),
        silence=float(silence),
        expect=Expect(
            outcome=cast(Outcome, outcome),
            crash=crash,
            allow_crashes=allow_crashes,
            console=ConsoleExpect(
                contains=_get(console, "contains", ()),
                excludes=_get(console, "excludes", ()),
            ),
            sites=sites,
            oversized=cast(int | None, expect.get("oversized")),
            unknown_changes=cast(int | None, expect.get("unknown_changes")),
            pv_indirect=cast(int | None, expect.get("pv_indirect")),
            stops=stops,
            nmi=nmi,
        ),
        inspect=inspect,
        scenario=scenario,
        lines=dict(lines),
    )


def _scenario(ctx: _Ctx, values: Mapping[str, object]) -> Scenario | None:
    section = cast(Mapping[str, object] | None, values.get("scenario"))
    if not section:
        return None   # absent, or empty like every other section
    rules = cast(tuple[Rule, ...] | None, section.get("rules"))
    if not rules:
        raise ctx.fail(ctx.lines.get("scenario"), "scenario needs rules:, e.g. "
                                                  "rules: [{on: text_poke_bp_batch, do: [inject-nmi]}]")
    return Scenario(rules=rules, max_stops=_get(section, "max_stops", DEFAULT_MAX_STOPS))


def _default_name(path: Path | None) -> str:
    if path is None:
        return "adhoc"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)[:MAX_NAME_LENGTH]
    return name if name.strip(".") else "adhoc"


# --------------------------------------------------------------------------- parsing text


def _yaml_error(ctx: _Ctx, text: str, err: yaml.YAMLError) -> ConfigError:
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        column = err.position - text.rfind("\n", 0, err.position)
        return ctx.fail(line, f"not valid YAML: character U+{err.character:04X} is not allowed "
                              f"(line {line}, column {column})")
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        reason = f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
        if err.context:
            cmark = err.context_mark
            where = f" (line {cmark.line + 1}, column {cmark.column + 1})" if cmark else ""
            reason = f"{err.context}{where}: {reason}"
        if "'\\t'" in str(err.problem):
            reason += "; indent with spaces, not tabs"
        return ctx.fail(mark.line + 1, f"not valid YAML: {reason}")
    return ctx.fail(1, f"not valid YAML: {' '.join(str(err).split())}")


def _parse(text: str, ctx: _Ctx, path: Path | None) -> Config:
    if len(text) > MAX_CONFIG_BYTES:
        raise ctx.fail(None, f"config is {len(text)} characters long; the limit is "
                             f"{MAX_CONFIG_BYTES // 1024} KiB (is this the right file?)")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(ctx, text, err) from None
    except RecursionError:
        raise ctx.fail(1, "not valid YAML for a config: nested too deeply") from None
    if root is None:
        raise ctx.fail(1, "config is empty; write '{}' to take every default")
    values = _read(ctx, root, _SCHEMA, "")
    return _build(ctx, values, _default_name(path), path)


def parse_config(text: str, path: Path | None = None) -> Config:
    """Parse and validate config text; ``path`` names it in errors and anchors relative paths."""
    base = Path(os.path.abspath(path.parent)) if path is not None else Path.cwd()
    return _parse(text, _Ctx(path, base), path)


def load_config(path: Path) -> Config:
    """Read and parse the config file at ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(path, None, f"cannot read: {err.strerror or err}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"cannot read: the file is larger than the "
                                      f"{MAX_CONFIG_BYTES // 1024} KiB limit (is this the right file?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ConfigError(path, line, f"not UTF-8 text: byte 0x{data[err.start]:02x} "
                                      f"(line {line}, column {column})") from None
    return parse_config(text, path)


# --------------------------------------------------------------------------- Python values


def _qemu_dict(qemu: QemuOptions) -> dict[str, object]:
    return {"cpu": qemu.cpu, "memory": qemu.memory_mib, "smp": qemu.smp, "extra": list(qemu.extra)}


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
        # Scenario checks too appear only when used: they need a scenario: section.
        **({"stops": [_stop_dict(s) for s in expect.stops]} if expect.stops else {}),
        **({"nmi": expect.nmi if isinstance(expect.nmi, str) else list(expect.nmi)}
           if expect.nmi is not None else {}),
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
        "table": a.table, "op": a.op, "feature": a.feature,
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
        "timeout": config.timeout,
        "silence": config.silence,
        "expect": _expect_dict(config.expect),
        **({"inspect": {"capture": list(config.inspect.captures), "tables": list(config.inspect.tables),
                        **({"trace": True} if config.inspect.trace else {})}}
           if config.inspect else {}),
        **({"scenario": _scenario_dict(config.scenario)} if config.scenario is not None else {}),
    }


# Python keyword spellings of YAML keys, accepted by default_config().
_ALIASES = {"modes": "mode", "dom0_memory_mib": "dom0_memory", "memory_mib": "memory"}


def _node(ctx: _Ctx, value: object, depth: int = 0) -> yaml.Node:
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
    elif isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        value = value.pattern
    elif isinstance(value, Path):
        value = str(value)
    if value is None:
        return yaml.ScalarNode(_NULL, "null")
    if isinstance(value, bool):
        return yaml.ScalarNode(_BOOL, "true" if value else "false")
    if isinstance(value, int):
        return yaml.ScalarNode(_INT, str(value))
    if isinstance(value, float):
        return yaml.ScalarNode(_FLOAT, repr(value))
    if isinstance(value, str):
        return yaml.ScalarNode(_STR, value)
    if isinstance(value, Mapping):
        pairs = [(yaml.ScalarNode(_STR, _ALIASES.get(str(k), str(k))), _node(ctx, v, depth + 1))
                 for k, v in value.items()]
        return yaml.MappingNode(_MAP, pairs)
    if isinstance(value, (list, tuple)):
        return yaml.SequenceNode(_SEQ, [_node(ctx, v, depth + 1) for v in value])
    raise ctx.fail(None, f"unsupported value of type {type(value).__name__}")


def default_config(name: str = "adhoc", **overrides: object) -> Config:
    """A config without a file: the defaults, plus ``overrides`` checked like YAML keys.

    Keys are the YAML keys (``mode``, ``dom0_memory``, ``qemu={"memory": 512}`` …);
    the field names ``modes``, ``dom0_memory_mib`` and ``memory_mib`` work too, and
    ``qemu``/``expect`` may also be given as :class:`QemuOptions`/:class:`Expect`.
    An override of ``None`` means the default (handy for unset command-line flags).
    Errors name ``<command line>``; relative initramfs paths are taken from the cwd.
    """
    ctx = _Ctx(_COMMAND_LINE, Path.cwd())
    given = {key: value for key, value in overrides.items() if value is not None}
    root = _node(ctx, {"name": name, **given})
    values = _read(ctx, root, _SCHEMA, "")
    return _build(ctx, values, name, None)


def with_overrides(config: Config, *, modes: Sequence[str] | str | None = None,
                   timeout: float | None = None, extra_cmdline: Sequence[str] | str = (),
                   kernel: str | None = None) -> Config:
    """``config`` changed by command-line flags, each checked like the YAML key.

    ``extra_cmdline`` is appended to ``cmdline``. A silence the file did not set follows
    the new timeout (60 s, or the timeout if shorter); one it did set must still fit.
    The ``lines`` of overridden keys are dropped: those values no longer come from the file.
    """
    ctx = _Ctx(_COMMAND_LINE, Path.cwd())
    lines = dict(config.lines)

    def forget(key: str) -> None:
        for dotted in [k for k in lines if k == key or k.startswith(key + "[")]:
            del lines[dotted]

    new = config
    if modes is not None:
        new = dataclasses.replace(new, modes=_modes(ctx, _node(ctx, modes), "mode"))
        forget("mode")
    if kernel is not None:
        parsed = _SCHEMA.keys["kernel"]
        assert not isinstance(parsed, _Section)
        new = dataclasses.replace(new, kernel=str(parsed(ctx, _node(ctx, kernel), "kernel")))
        forget("kernel")
    if extra_cmdline:
        parse_words = _SCHEMA.keys["cmdline"]
        assert not isinstance(parse_words, _Section)
        extra = cast(tuple[str, ...], parse_words(ctx, _node(ctx, extra_cmdline), "cmdline"))
        new = dataclasses.replace(new, cmdline=new.cmdline + extra)
    if timeout is not None:
        seconds = _seconds(ctx, _node(ctx, timeout), "timeout")
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
