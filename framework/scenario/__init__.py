"""Scenarios: at a breakpoint, when conditions hold, do actions. The pure core.

A config's ``scenario:`` section (parsed and checked by :mod:`framework.scenario.parse`)
becomes a :class:`Scenario` of :class:`Rule` s. The debugger session (the edge)
places a breakpoint at each rule's location; at every stop there it builds a
:class:`StopContext` and asks this module whether the rule matches
(:func:`matches`) and what each action does (:func:`effects`). It applies the
primitive effects, logs them as :class:`StopRecord` s and :class:`NmiRecord` s,
and :func:`framework.verdict.judge_scenario` turns that log into verdict reasons.

Expressions (``EXPR`` in the config) are integers (decimal or ``0x`` hex),
register names (``rax`` … ``r15``, ``rip``, ``rsp``, ``eflags``), argument
names of the rule's function, and kernel symbols (their address), combined
with ``+``, ``-``, ``*`` and parentheses. They are evaluated in 64-bit unsigned
arithmetic, wrapping like C. A small hand-written parser reads them; nothing is
``eval``'d. Names are looked up as a register, then an argument, then a symbol.

Arguments come from :data:`SIGNATURES` (the x86-64 SysV argument registers
rdi, rsi, rdx, rcx, r8, r9, Linux 6.1 prototypes) and exist only when a rule
stops exactly at a function's entry (no ``+offset``, not an address). Arguments
narrower than 64 bits are masked to their C type (``paravirt_patch``'s ``u8
type`` is ``dil``).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:   # only in annotations: importing the scenario loads no ELF reader
    from ..elf.vmlinux import Symbols

__all__ = [
    "ACTIONS",
    "DEFAULT_MAX_STOPS",
    "MAX_DUMP",
    "MAX_STOPS",
    "MAX_WRITE",
    "NMI_RECORD_STATES",
    "NMI_STATES",
    "PV_TYPE_FUNCTIONS",
    "REGISTERS",
    "SIGNATURES",
    "Action",
    "Condition",
    "Dump",
    "Effect",
    "Expression",
    "InjectNmi",
    "NmiRecord",
    "Record",
    "Rule",
    "Scenario",
    "SetRegister",
    "StopContext",
    "StopExpect",
    "StopRecord",
    "Trigger",
    "WriteMemory",
    "arguments",
    "effect_json",
    "effects",
    "evaluate",
    "function_of",
    "literal_text",
    "location",
    "matches",
    "name_problem",
    "parse_expression",
    "parse_location",
    "resolve",
]

M64 = (1 << 64) - 1
DEFAULT_MAX_STOPS = 1000
MAX_STOPS = 1_000_000
MAX_DUMP = 1024 * 1024
MAX_WRITE = 4096
MAX_EXPRESSION = 256          # characters
MAX_NESTING = 32              # parentheses and unary signs
ACTIONS = ("skip", "write", "set", "dump", "record", "inject-nmi", "continue")
# What became of an injected NMI (NmiRecord.state): handled by the kernel; taken by exc_nmi() while
# ignore_nmis was set (stop_nmi() around boot-time patching); dropped by the early exception handler
# (before trap_init()); never seen by the guest.
NMI_RECORD_STATES = ("delivered", "ignored", "early", "lost")
NMI_STATES = ("delivered", "ignored", "early", "arrived", "lost")   # what expect.nmi may say; arrived: not lost
NMI_ENTRY = "exc_nmi"

REGISTERS: tuple[str, ...] = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags")

# Parts of registers, which expressions do not read: the full register is meant.
_SUBREGISTERS: Mapping[str, str] = {
    **{f"e{r[1:]}": r for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")},
    **{r[1:]: r for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")},
    "al": "rax", "bl": "rbx", "cl": "rcx", "dl": "rdx", "ah": "rax", "bh": "rbx", "ch": "rcx", "dh": "rdx",
    "sil": "rsi", "dil": "rdi", "bpl": "rbp", "spl": "rsp",
    **{f"r{n}{s}": f"r{n}" for n in range(8, 16) for s in ("d", "w", "b", "l")},
    "eip": "rip", "ip": "rip", "rflags": "eflags", "flags": "eflags",
}

# Linux 6.1 prototypes: (argument, bits of its C type) in SysV order rdi, rsi, rdx, rcx, r8, r9.
_PROTOTYPES: Mapping[str, tuple[tuple[str, int], ...]] = {
    "text_poke_early": (("addr", 64), ("opcode", 64), ("len", 64)),        # void *, const void *, size_t
    "text_poke": (("addr", 64), ("opcode", 64), ("len", 64)),
    # where every text_poke() ends; text_poke_bp_batch() calls it directly (text_poke is inlined there)
    "__text_poke": (("func", 64), ("addr", 64), ("opcode", 64), ("len", 64)),
    "text_poke_kgdb": (("addr", 64), ("opcode", 64), ("len", 64)),
    "text_poke_bp": (("addr", 64), ("opcode", 64), ("len", 64), ("emulate", 64)),
    "text_poke_bp_batch": (("tp", 64), ("nr", 32)),                         # unsigned int nr_entries
    "paravirt_patch": (("type", 8), ("buf", 64), ("addr", 64), ("len", 32)),  # u8, void *, unsigned long, unsigned int
    **{name: (("start", 64), ("end", 64)) for name in (
        "apply_paravirt", "apply_alternatives", "apply_retpolines", "apply_returns", "apply_ibt_endbr")},
    "optimize_nops": (("instr", 64), ("len", 64)),                         # u8 *, size_t
    "int3_magic": (("ptr", 64),),
    "arch_jump_label_transform": (("entry", 64), ("type", 32)),             # enum jump_label_type
    "arch_static_call_transform": (("site", 64), ("tramp", 64), ("func", 64), ("tail", 8)),  # bool tail
    "perf_event_text_poke": (("addr", 64), ("old", 64), ("old_len", 64), ("new", 64), ("new_len", 64)),
    "module_finalize": (("hdr", 64), ("sechdrs", 64), ("me", 64)),
    "exc_nmi": (("regs", 64),),
}
_ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")

SIGNATURES: Mapping[str, tuple[str, ...]] = {f: tuple(a for a, _ in args) for f, args in _PROTOTYPES.items()}
_ALL_ARGUMENTS = frozenset(a for args in SIGNATURES.values() for a in args)
# Functions whose "type" argument is a pv_ops slot (arch_jump_label_transform's is not).
PV_TYPE_FUNCTIONS = frozenset({"paravirt_patch"})


# --------------------------------------------------------------------------- the language


@dataclass(frozen=True)
class Condition:
    """One ``when`` condition; all of a trigger's must hold.

    ``kind`` is ``caller`` (``pattern`` on the formatted return address),
    ``addr_in`` (``name``: the symbol the ``addr`` argument lies in), ``pv_op``
    (``name``: a pv op such as ``irq.save_fl``), ``len`` (``value``: an
    expression the ``len`` argument equals) or ``reg`` (register ``name``
    equals the expression ``value``).
    """

    kind: str
    name: str = ""
    value: str = ""
    pattern: re.Pattern[str] | None = None
    line: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        if self.kind == "caller":
            return f"caller ~ /{self.pattern.pattern if self.pattern else ''}/"
        if self.kind == "len":
            return f"len == {self.value}"
        if self.kind == "reg":
            return f"{self.name} == {self.value}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Trigger:
    """Where a rule stops (``at`` as written) and when it fires."""

    at: str
    hit: int | None = None                 # only the hit-th matching stop (1-based); None = every one
    when: tuple[Condition, ...] = ()
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Action:
    """One action of a rule's ``do``. Fields not used by ``kind`` keep their defaults.

    skip: ``value`` = the return value expression or None. write: ``at`` and
    either ``data`` (bytes) or ``value`` with ``width`` (1, 2, 4, 8 bytes).
    set: ``registers`` = ((register, expression), …). dump: ``at`` and
    ``length``. record: ``names`` = expressions; () = the function's arguments.
    """

    kind: str
    at: str | None = None
    value: str | None = None
    data: bytes | None = None
    width: int | None = None
    length: int | None = None
    registers: tuple[tuple[str, str], ...] = ()
    names: tuple[str, ...] = ()
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Rule:
    on: Trigger
    do: tuple[Action, ...]
    line: int | None = field(default=None, compare=False)

    def describe(self, index: int) -> str:
        where = f"rule at line {self.line}" if self.line is not None else f"rule {index + 1}"
        hit = f", hit {self.on.hit}" if self.on.hit is not None else ""
        return f"{where} (on {self.on.at}{hit})"


@dataclass(frozen=True)
class Scenario:
    rules: tuple[Rule, ...]
    max_stops: int = DEFAULT_MAX_STOPS

    def injects_nmi(self) -> bool:
        return any(a.kind == "inject-nmi" for r in self.rules for a in r.do)


@dataclass(frozen=True)
class StopExpect:
    """One ``expect.stops`` entry: how often the scenario stopped at ``at``, and from where."""

    at: str
    count: tuple[int, int] = (1, MAX_STOPS)     # inclusive bounds; default: at least once
    caller: re.Pattern[str] | None = None
    line: int | None = field(default=None, compare=False)


# --------------------------------------------------------------------------- locations

_LOCATION = re.compile(r"\s*(?:(0[xX][0-9a-fA-F]{1,16})|([A-Za-z_][A-Za-z0-9_.$]*)"
                       r"\s*(?:\+\s*(0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}))?)\s*")


def parse_location(at: str) -> tuple[str | None, int]:
    """``(symbol, offset)``, or ``(None, address)``; ValueError when ``at`` is neither form."""
    match = _LOCATION.fullmatch(at)
    if match is None:
        raise ValueError(f"{at!r} is not a location: write a kernel symbol (text_poke_early), "
                         "symbol+offset (text_poke_early+0x10) or an address (0xffffffff81000000)")
    address, symbol, offset = match.groups()
    if address is not None:
        return None, int(address, 16)
    value = int(offset, 0) if offset is not None and offset[:2].lower() == "0x" else int(offset or "0")
    if value > M64:
        raise ValueError(f"{at!r}: the offset is larger than 64 bits")
    return symbol, value


def function_of(trigger: Trigger) -> str | None:
    """The function whose entry ``trigger`` stops at, or None (an offset or an address)."""
    try:
        symbol, offset = parse_location(trigger.at)
    except ValueError:
        return None
    return symbol if symbol is not None and offset == 0 else None


def _did_you_mean(name: str, symbols: Symbols, extra: Sequence[str] = ()) -> str:
    # Names sharing the first letters: cheap to search, and where typos are.
    candidates = [n for n, _ in symbols.with_prefix(name[:3])] + list(extra)
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def location(trigger: Trigger, symbols: Symbols, path: Path | None) -> int:
    """The address ``trigger.at`` names; ConfigError at the trigger's line when the kernel lacks the symbol."""
    try:
        symbol, offset = parse_location(trigger.at)
    except ValueError as err:
        raise ConfigError(path, trigger.line, f"scenario: {err}") from None
    if symbol is None:
        return offset
    address = symbols.address(symbol)
    if address is None:
        raise ConfigError(path, trigger.line, f"scenario: on {trigger.at}: the kernel has no symbol "
                                              f"{symbol!r}{_did_you_mean(symbol, symbols)}")
    return (address + offset) & M64


def arguments(function: str | None, registers: Mapping[str, int]) -> dict[str, int]:
    """The named arguments of ``function`` at its entry, from the SysV registers, masked to their C types."""
    if function is None:
        return {}
    return {name: registers[reg] & ((1 << bits) - 1)
            for (name, bits), reg in zip(_PROTOTYPES.get(function, ()), _ARGUMENT_REGISTERS)}


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class _Num:
    value: int


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass(frozen=True)
class _Neg:
    operand: _Tree


@dataclass(frozen=True)
class _Bin:
    op: str
    left: _Tree
    right: _Tree


_Tree = _Num | _Name | _Neg | _Bin

_TOKEN = re.compile(r"\s*(?:(0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_.$])|([A-Za-z_][A-Za-z0-9_.$]*)|([-+*()]))")


@dataclass(frozen=True)
class Expression:
    """A parsed expression: its text, its names, and its value when it has no names."""

    text: str
    tree: _Tree = field(repr=False)
    names: frozenset[str]
    literal: int | None            # the value (before 64-bit wrapping) of a constant expression


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []   # (kind, text, column)
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                bad = text[pos:].lstrip()
                column = len(text) - len(bad) + 1
                raise ValueError(f"cannot read {bad[:20]!r} at column {column} of {text!r}: an expression "
                                 "is numbers, registers, argument names and symbols with + - * ( )")
            number, name, op = match.groups()
            start = match.start(1 if number else 2 if name else 3) + 1
            self.tokens.append(("num", number, start) if number else ("name", name, start) if name
                               else (op, op, start))
            pos = match.end()
        self.at = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else None

    def expected(self, what: str) -> ValueError:
        if self.at < len(self.tokens):
            _, token, column = self.tokens[self.at]
            return ValueError(f"expected {what} at column {column} of {self.text!r}, found {token!r}")
        return ValueError(f"{self.text!r} ends too early: expected {what}")

    def expression(self) -> _Tree:
        tree = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.at][0]
            self.at += 1
            tree = _Bin(op, tree, self.term())
        return tree

    def term(self) -> _Tree:
        tree = self.unary()
        while self.peek() == "*":
            self.at += 1
            tree = _Bin("*", tree, self.unary())
        return tree

    def unary(self) -> _Tree:
        kind = self.peek()
        if kind in ("-", "+", "("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ValueError(f"{self.text!r} is nested too deeply")
            self.at += 1
            if kind == "(":
                tree = self.expression()
                if self.peek() != ")":
                    raise self.expected("')'")
                self.at += 1
            else:
                operand = self.unary()
                tree = _Neg(operand) if kind == "-" else operand
            self.depth -= 1
            return tree
        if kind in ("num", "name"):
            token = self.tokens[self.at][1]
            self.at += 1
            if kind == "name":
                return _Name(token)
            return _Num(int(token, 16) if token[:2].lower() == "0x" else int(token))
        raise self.expected("a number, register, argument or symbol")


def _names(tree: _Tree) -> Iterator[str]:
    if isinstance(tree, _Name):
        yield tree.name
    elif isinstance(tree, _Neg):
        yield from _names(tree.operand)
    elif isinstance(tree, _Bin):
        yield from _names(tree.left)
        yield from _names(tree.right)


def _fold(tree: _Tree) -> int | None:
    if isinstance(tree, _Num):
        return tree.value
    if isinstance(tree, _Neg):
        value = _fold(tree.operand)
        return None if value is None else -value
    if isinstance(tree, _Bin):
        left, right = _fold(tree.left), _fold(tree.right)
        if left is None or right is None:
            return None
        return left + right if tree.op == "+" else left - right if tree.op == "-" else left * right
    return None


@functools.lru_cache(maxsize=4096)
def parse_expression(text: str) -> Expression:
    """Parse ``text``; ValueError with a one-line reason when it is not an expression."""
    if len(text) > MAX_EXPRESSION:
        raise ValueError(f"the expression is {len(text)} characters long; the limit is {MAX_EXPRESSION}")
    if not text.strip():
        raise ValueError("the expression is empty")
    parser = _Parser(text)
    tree = parser.expression()
    if parser.at < len(parser.tokens):
        raise parser.expected("an operator (+ - *)")
    literal = _fold(tree)
    if literal is not None and abs(literal) > M64:
        raise ValueError(f"{text!r} does not fit in 64 bits")
    return Expression(text, tree, frozenset(_names(tree)), literal)


def literal_text(value: int) -> str:
    """The normal spelling of a constant: decimal when small, else hex (``-0x10`` for negatives)."""
    if -4096 < value < 4096:
        return str(value)
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def name_problem(name: str, function: str | None) -> str | None:
    """Why ``name`` cannot appear in an expression of a rule stopping at ``function`` (None: it can).

    Registers and the function's arguments are fine; any other identifier is
    taken for a kernel symbol, checked once the kernel is known (:func:`resolve`).
    """
    if name in REGISTERS or (function is not None and name in SIGNATURES.get(function, ())):
        return None
    if name.lower() in REGISTERS:
        return f"registers are written in lower case: {name.lower()}, not {name}"
    if name.lower() in _SUBREGISTERS:
        return (f"{name!r} is part of a register; expressions read whole registers: use "
                f"{_SUBREGISTERS[name.lower()]}")
    if name in _ALL_ARGUMENTS:
        if function is None:
            return (f"{name!r} is an argument name, and arguments exist only at a function's entry "
                    "(on: text_poke_early, not an offset or an address); use the registers rdi, rsi, rdx, …")
        if function in SIGNATURES:
            return f"{function} has no argument {name!r} (its arguments: {', '.join(SIGNATURES[function])})"
        return (f"patchscope knows no arguments of {function}; use the registers rdi, rsi, rdx, rcx, r8, r9 "
                f"(functions with named arguments: {', '.join(sorted(SIGNATURES))})")
    return None


def _lookup(name: str, ctx: StopContext) -> int:
    if name in REGISTERS:
        return ctx.registers[name] & M64
    args = arguments(ctx.function, ctx.registers)
    if name in args:
        return args[name]
    address = ctx.symbols.address(name)
    if address is None:
        raise ConfigError(ctx.path, None, f"no kernel symbol {name!r}"
                                          f"{_did_you_mean(name, ctx.symbols, list(REGISTERS) + list(args))}")
    return address


def _value(tree: _Tree, ctx: StopContext) -> int:
    if isinstance(tree, _Num):
        return tree.value & M64
    if isinstance(tree, _Name):
        return _lookup(tree.name, ctx)
    if isinstance(tree, _Neg):
        return -_value(tree.operand, ctx) & M64
    left, right = _value(tree.left, ctx), _value(tree.right, ctx)
    if tree.op == "+":
        return (left + right) & M64
    if tree.op == "-":
        return (left - right) & M64
    return (left * right) & M64


def evaluate(expr: str, ctx: StopContext) -> int:
    """The value of ``expr`` at this stop, as an unsigned 64-bit number.

    ValueError for text that is no expression; ConfigError for a symbol the kernel lacks.
    """
    return _value(parse_expression(expr).tree, ctx)


# --------------------------------------------------------------------------- at a stop


@dataclass(frozen=True)
class StopContext:
    """What the session knows at a scenario stop."""

    registers: Mapping[str, int]            # at least rip rsp rax rbx rcx rdx rsi rdi rbp r8..r15 eflags
    read: Callable[[int, int], bytes]       # guest memory: read(address, length)
    symbols: Symbols
    pv_ops: Mapping[int, str]               # pv_ops slot (type) -> op name, e.g. 0x1e -> "irq.save_fl"
    pv_sites: Mapping[int, int]             # paravirt site address -> slot
    function: str | None                    # the rule's function (function_of)
    caller: int | None                      # *(u64 *)rsp, read once by the session
    path: Path | None = None                # the config, for errors at run time


def _at_line(err: ConfigError, ctx: StopContext, line: int | None, what: str) -> ConfigError:
    return ConfigError(ctx.path if ctx.path is not None else err.path, line if line is not None else err.line,
                       f"scenario: {what}: {err.reason}")


def _check(condition: Condition, ctx: StopContext) -> bool:
    if condition.kind == "caller":
        assert condition.pattern is not None
        return ctx.caller is not None and condition.pattern.search(ctx.symbols.format(ctx.caller)) is not None
    if condition.kind == "reg":
        return ctx.registers[condition.name] & M64 == evaluate(condition.value, ctx)
    args = arguments(ctx.function, ctx.registers)
    if condition.kind == "len":
        return "len" in args and args["len"] == evaluate(condition.value, ctx)
    if condition.kind == "addr_in":
        hit = ctx.symbols.resolve(args["addr"]) if "addr" in args else None
        return hit is not None and hit[0] == condition.name
    if condition.kind == "pv_op":
        if ctx.function in PV_TYPE_FUNCTIONS and "type" in args:
            slot: int | None = args["type"]
        else:
            slot = ctx.pv_sites.get(args["addr"]) if "addr" in args else None
        return slot is not None and ctx.pv_ops.get(slot) == condition.name
    raise ValueError(f"unknown condition kind {condition.kind!r}")


def matches(trigger: Trigger, ctx: StopContext) -> bool:
    """Whether every ``when`` condition holds at this stop (``hit`` is counted by the session)."""
    for condition in trigger.when:
        try:
            if not _check(condition, ctx):
                return False
        except ConfigError as err:
            raise _at_line(err, ctx, condition.line, f"on {trigger.at}, {condition.describe()}") from None
    return True


@dataclass(frozen=True)
class SetRegister:
    name: str
    old: int
    new: int


@dataclass(frozen=True)
class WriteMemory:
    address: int
    old: bytes
    new: bytes


@dataclass(frozen=True)
class InjectNmi:
    pass


@dataclass(frozen=True)
class Dump:
    address: int
    data: bytes


@dataclass(frozen=True)
class Record:
    values: Mapping[str, int]


Effect = SetRegister | WriteMemory | InjectNmi | Dump | Record


def _effects(action: Action, ctx: StopContext) -> list[Effect]:
    regs = ctx.registers
    if action.kind == "skip":
        rsp = regs["rsp"] & M64
        ret = int.from_bytes(ctx.read(rsp, 8), "little")
        out: list[Effect] = [SetRegister("rip", regs["rip"], ret), SetRegister("rsp", rsp, (rsp + 8) & M64)]
        if action.value is not None:
            out.append(SetRegister("rax", regs["rax"], evaluate(action.value, ctx)))
        return out
    if action.kind == "write":
        assert action.at is not None
        address = evaluate(action.at, ctx)
        if action.data is not None:
            new = action.data
        else:
            assert action.value is not None and action.width is not None
            new = (evaluate(action.value, ctx) & ((1 << (8 * action.width)) - 1)).to_bytes(action.width, "little")
        return [WriteMemory(address, ctx.read(address, len(new)), new)]
    if action.kind == "set":
        return [SetRegister(name, regs[name], evaluate(expr, ctx)) for name, expr in action.registers]
    if action.kind == "dump":
        assert action.at is not None and action.length is not None
        address = evaluate(action.at, ctx)
        return [Dump(address, ctx.read(address, action.length))]
    if action.kind == "record":
        if not action.names:
            return [Record(arguments(ctx.function, regs))]
        return [Record({name: evaluate(name, ctx) for name in action.names})]
    if action.kind == "inject-nmi":
        return [InjectNmi()]
    if action.kind == "continue":
        return []
    raise ValueError(f"unknown action kind {action.kind!r}")


def effects(action: Action, ctx: StopContext) -> list[Effect]:
    """The primitive effects of ``action`` at this stop, computed from ``ctx`` (reads included); nothing is applied.

    skip: rip = ``*(u64 *)rsp``, rsp += 8 (and rax = the return value); write:
    the old bytes are read first; continue: nothing.
    """
    try:
        return _effects(action, ctx)
    except ConfigError as err:
        raise _at_line(err, ctx, action.line, action.kind) from None


def _hex_symbol(value: int, symbols: Symbols | None) -> dict[str, object]:
    hit = symbols.resolve(value) if symbols is not None else None
    return {"symbol": symbols.format(value)} if hit is not None and symbols is not None else {}


MAX_DUMP_IN_LOG = 256


def effect_json(effect: Effect, symbols: Symbols | None = None) -> dict[str, object]:
    """One effect for the action log: addresses and values in hex, bytes as hex strings.

    With ``symbols``, addresses (and rip values) also get ``symbol+0xoff``. A
    dump's bytes are in the log only up to 256 of them; the session writes the
    whole dump as an artefact.
    """
    if isinstance(effect, SetRegister):
        data: dict[str, object] = {"effect": "set", "register": effect.name,
                                   "old": hex(effect.old), "new": hex(effect.new)}
        if effect.name == "rip" and symbols is not None:
            data.update(old_symbol=symbols.format(effect.old), new_symbol=symbols.format(effect.new))
        return data
    if isinstance(effect, WriteMemory):
        return {"effect": "write", "address": hex(effect.address), **_hex_symbol(effect.address, symbols),
                "old": effect.old.hex(), "new": effect.new.hex()}
    if isinstance(effect, InjectNmi):
        return {"effect": "inject-nmi"}
    if isinstance(effect, Dump):
        return {"effect": "dump", "address": hex(effect.address), **_hex_symbol(effect.address, symbols),
                "length": len(effect.data),
                **({"data": effect.data.hex()} if len(effect.data) <= MAX_DUMP_IN_LOG else {})}
    return {"effect": "record", "values": {name: hex(value) for name, value in effect.values.items()}}


# --------------------------------------------------------------------------- checking against a kernel


def _expressions(rule: Rule) -> Iterator[tuple[str, int | None, str]]:
    """(expression, line, what) of every expression in ``rule``."""
    for c in rule.on.when:
        if c.kind in ("len", "reg"):
            yield c.value, c.line, f"on {rule.on.at}, {c.describe()}"
    for a in rule.do:
        texts = [t for t in (a.at, a.value) if t is not None] + [e for _, e in a.registers] + list(a.names)
        for text in texts:
            yield text, a.line, a.kind


def resolve(scenario: Scenario, symbols: Symbols, path: Path | None,
            pv_ops: Mapping[int, str] | None = None) -> tuple[int, ...]:
    """Check ``scenario`` against the kernel before it boots; the address of each rule's location.

    Every symbol in a location, an expression or an ``addr_in`` must exist (and
    every ``pv_op`` must be one of ``pv_ops``' names when given); otherwise a
    ConfigError at the line that names it, with a did-you-mean.
    """
    out = []
    known_ops = sorted(set(pv_ops.values())) if pv_ops is not None else None
    for rule in scenario.rules:
        out.append(location(rule.on, symbols, path))
        function = function_of(rule.on)
        args = SIGNATURES.get(function, ()) if function is not None else ()
        for text, line, what in _expressions(rule):
            for name in sorted(parse_expression(text).names):
                if name in REGISTERS or name in args or symbols.address(name) is not None:
                    continue
                raise ConfigError(path, line, f"scenario: {what}: the kernel has no symbol {name!r}"
                                              f"{_did_you_mean(name, symbols, list(REGISTERS) + list(args))}")
        for c in rule.on.when:
            if c.kind == "addr_in" and symbols.address(c.name) is None:
                raise ConfigError(path, c.line, f"scenario: on {rule.on.at}, addr_in: the kernel has no symbol "
                                                f"{c.name!r}{_did_you_mean(c.name, symbols)}")
            if c.kind == "pv_op" and known_ops is not None and c.name not in known_ops:
                close = difflib.get_close_matches(c.name, known_ops, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(path, c.line, f"scenario: on {rule.on.at}, pv_op: the kernel has no pv op "
                                                f"{c.name!r}{hint}")
    return tuple(out)


# --------------------------------------------------------------------------- the log and the verdict


@dataclass(frozen=True)
class StopRecord:
    """One scenario stop: a rule fired and its effects were applied."""

    n: int                    # 1-based scenario stop number
    rule: int                 # index into scenario.rules
    at: str                   # the rule's `at` as written
    address: int              # rip at the stop
    caller: int | None
    caller_symbol: str | None  # Symbols.format(caller)
    hit: int                  # the rule's matching count when it stopped (1-based)
    effects: tuple[Effect, ...]
    t: float                  # seconds since QEMU started

    def to_json(self, symbols: Symbols | None = None) -> dict[str, object]:
        return {"stop": self.n, "rule": self.rule, "at": self.at, "address": hex(self.address),
                "caller": hex(self.caller) if self.caller is not None else None,
                "caller_symbol": self.caller_symbol, "hit": self.hit,
                "effects": [effect_json(e, symbols) for e in self.effects], "t": round(self.t, 3)}


@dataclass(frozen=True)
class NmiRecord:
    """What became of an NMI injected at a scenario stop."""

    stop: int                 # StopRecord.n where it was injected
    state: str                # "delivered" | "ignored" | "early" | "lost" (NMI_RECORD_STATES)
    where: str | None         # "symbol+0xoff" the NMI interrupted, when it arrived

    def to_json(self) -> dict[str, object]:
        return {"nmi": self.state, "stop": self.stop, "where": self.where}
