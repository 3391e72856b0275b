"""Live text against the vmlinux it came from: per-site state, disassembly, whole-text checks. Pure.

Input: the patch-site tables read from the ELF (elf/vmlinux.py) and a *capture*,
the guest's text as GDB read it at one moment (before patching, after
patching, once booted, or at any symbol). Output: a ``Comparison``:

- every site's ``state``: ``unchanged`` (live bytes equal the ELF's),
  ``patched`` (they differ), ``freed`` (the site is in init text and the
  capture was taken after ``free_initmem``), or ``unread`` (not captured);
  its live bytes and their disassembly, with call/jump targets named;
- ``unknown_changes``: text that changed outside every known site;
- ``oversized``: bytes just past a site's end that changed and belong to no
  other site (seed 000: a patch longer than its site);
- ``pv_indirect``: paravirt sites still holding ``call *pv_ops+8*slot`` (000:
  "not patched").

A run compares each capture through one ``Baseline`` (the sites, the ranges
that may change, and the names of places, prepared once): only text outside
every site is scanned byte by byte, a site unchanged since the last capture
keeps its state, and each site's line of the site file is made once
(``SiteState.json_line``).

Instructions are spelled as objdump spells them (``pushf``, ``pop %rax``,
``call xen_save_fl_direct``, ``mov %cr2,%rax``) so assertions read like the
listings kernel developers know.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from json.encoder import encode_basestring_ascii

import capstone

from ..domain import SITE_STATES, SiteStateName
from ..elf.vmlinux import Site, Symbols

State = SiteStateName
STATES = SITE_STATES

# --- disassembly ------------------------------------------------------------------


@dataclass(frozen=True)
class Insn:
    address: int
    length: int
    text: str             # objdump-style, targets named: "call xen_save_fl_direct"
    target: int | None    # direct call/jmp target

    @property
    def is_nop(self) -> bool:
        return is_nop(self.text)


def is_nop(text: str) -> bool:
    """An instruction (as objdump spells it) that only pads."""
    return _NOP.match(text) is not None


_NOP = re.compile(r"^(nop[wlq]?\b|xchg %ax,%ax$|data16\b|cs nop)")
# capstone's AT&T mnemonics where objdump prints no size suffix.
_PLAIN = {"pushfq": "pushf", "popfq": "popf", "retq": "ret", "callq": "call", "jmpq": "jmp",
          "leaveq": "leave"}
_SUFFIXED = re.compile(r"^(mov|pop|push|add|sub|and|or|xor|cmp|test|lea|inc|dec)[bwlq]$")
_MEMORY = re.compile(r"\([^)]*\)")
_DECIMAL = re.compile(r"(^|[$,\s])(-)?(\d+)(?=$|[,(\s])")
_RIP = re.compile(r"(-?0x[0-9a-f]+|-?[0-9]+)?(?=\(%rip\))")


def _objdump_style(mnemonic: str, operands: str) -> str:
    mnemonic = _PLAIN.get(mnemonic, mnemonic)
    # A register operand (outside a memory reference) fixes the size, and objdump then prints no suffix.
    if _SUFFIXED.match(mnemonic) and "%" in _MEMORY.sub("", operands):
        mnemonic = mnemonic[:-1]
    operands = operands.replace(", ", ",")
    # objdump prints immediates and displacements in hex: $0x1, 0x8(%rax), -0x8(%rbp).
    operands = _DECIMAL.sub(lambda m: f"{m.group(1)}{'-' if m.group(2) else ''}{int(m.group(3)):#x}", operands)
    return f"{mnemonic} {operands}".strip()


# Free capstone handles. A handle is not to be used by two threads at once, and captures are compared in a
# thread of their own (observe/inspection.py) while the session may decode (unwinding): each decoding takes
# one from the list while it decodes (list.pop and append are atomic): threads decoding at once hold two.
_handles: list[capstone.Cs] = []


def _disasm(code: bytes, offset: int) -> list[capstone.CsInsn]:
    try:
        cs = _handles.pop()
    except IndexError:
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        cs.syntax = capstone.CS_OPT_SYNTAX_ATT
    try:
        return list(cs.disasm(code, offset))
    finally:
        _handles.append(cs)


# Decoded byte strings, at address 0: (offset, size, text, relative address or None).
# With a relative address, the text is a template whose "{}" takes the named
# absolute address: "call {}" (a direct branch) or "call *{}(%rip)".
# Patch sites repeat the same bytes thousands of times (NOP5 at every ftrace
# site, "ret; int3" at return sites), so decoding once per distinct string keeps
# a whole-kernel comparison to about a second.
_Decoded = tuple[tuple[int, int, str, int | None], ...]
_decoded: dict[bytes, _Decoded] = {}
_MASK = (1 << 64) - 1


def _is_branch(mnemonic: str) -> bool:
    """Direct branches whose operand is a target address: call, jmp, jcc, jrcxz, loop*."""
    return mnemonic == "call" or mnemonic.startswith(("j", "loop"))


def _decode(code: bytes) -> _Decoded:
    cached = _decoded.get(code)
    if cached is not None:
        return cached
    out: list[tuple[int, int, str, int | None]] = []
    if len(code) == 5 and code[0] in (0xE8, 0xE9):     # call/jmp rel32: most sites
        out.append((0, 5, "call {}" if code[0] == 0xE8 else "jmp {}",
                    (5 + int.from_bytes(code[1:], "little", signed=True)) & _MASK))
    else:
        offset = 0
        while offset < len(code):
            for insn in _disasm(code[offset:], offset):
                text = _objdump_style(insn.mnemonic, insn.op_str)
                name = text.split(" ", 1)[0]
                rip = _RIP.search(text)
                if _is_branch(name) and re.fullmatch(r"0x[0-9a-f]+|[0-9]+", insn.op_str):
                    out.append((insn.address, insn.size, name + " {}", int(insn.op_str, 0)))
                elif rip is not None:
                    disp = int(rip.group(1), 0) if rip.group(1) else 0
                    template = text[:rip.start()].replace("{", "{{").replace("}", "}}") + "{}" \
                        + text[rip.end():].replace("{", "{{").replace("}", "}}")
                    out.append((insn.address, insn.size, template, (insn.address + insn.size + disp) & _MASK))
                else:
                    out.append((insn.address, insn.size, text, None))
                offset = insn.address + insn.size
            if offset < len(code):   # capstone stops at a byte it cannot decode
                out.append((offset, 1, "(bad)", None))
                offset += 1
    result = tuple(out)
    if len(_decoded) < 200_000:
        _decoded[code] = result
    return result


# Public: the stack simulator (spdelta) and the ORC check decode through the same cache.
decode = _decode


def disassemble(code: bytes, address: int, symbols: Symbols | None = None) -> list[Insn]:
    """Instructions in ``code`` at ``address``; undecodable bytes become ``(bad)``, one byte each."""
    out: list[Insn] = []
    for offset, size, text, relative in _decode(code):
        if relative is None:
            out.append(Insn(address + offset, size, text, None))
        else:
            target = (address + relative) & _MASK
            named = text.format(symbols.format(target) if symbols else hex(target))
            out.append(Insn(address + offset, size, named, target))
    return out


def insns_text(insns: Iterable[Insn | str], drop_nops: bool = True) -> str:
    """"pushf; pop %rax" — the instructions (or their texts) joined, NOP padding left out."""
    texts = (i if isinstance(i, str) else i.text for i in insns)
    return "; ".join(text for text in texts if not (drop_nops and is_nop(text)))


def normalize_insns(text: str) -> str:
    """A user's expected instructions in the same spelling as insns_text()."""
    parts = [p.strip() for p in re.split(r"[;\n]", text) if p.strip()]
    return "; ".join(re.sub(r"\s*,\s*", ",", re.sub(r"\s+", " ", p)) for p in parts)


# --- captures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    """The guest's text at one moment: regions GDB read, and ranges no longer text."""

    name: str                                  # "before-patching", "after-patching", "booted", or a symbol
    regions: Mapping[int, bytes]               # start address -> bytes
    freed: tuple[tuple[int, int], ...] = ()    # [start, end) ranges freed before the capture (init text)

    def read(self, address: int, length: int) -> bytes | None:
        for start, data in self.regions.items():
            if start <= address and address + length <= start + len(data):
                return data[address - start:address - start + length]
        return None

    def is_freed(self, address: int) -> bool:
        return any(start <= address < end for start, end in self.freed)


# --- comparison -----------------------------------------------------------------------


def table_key(table: str, module: str | None) -> str:
    """The key of a table in :attr:`Comparison.sites`: ``paravirt`` for vmlinux, ``kvm:paravirt`` for a module."""
    return table if module is None else f"{module}:{table}"


def _strings(value: object) -> tuple[str, ...]:
    return tuple(map(str, value)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class SiteState:
    site: Site
    state: State
    live: bytes | None
    insns: tuple[str, ...] = ()    # the live bytes disassembled, objdump's spelling, targets named
    symbol: str = ""

    def to_json(self) -> dict[str, object]:
        data = self.site.to_json()
        data.update(symbol=self.symbol, state=self.state)
        if self.live is not None:
            data["live"] = self.live.hex()
            data["live_insns"] = list(self.insns)
        return data

    @cached_property
    def json_line(self) -> str:
        """``json.dumps(self.to_json())`` and a newline, spelled by hand: a site file holds 130k of them, and
        json.dumps of a dict built for each costs 7 µs. ``Baseline.encode`` makes them with each site's
        own part shared between captures."""
        return state_line(self, site_head(self.site, self.symbol))

    @staticmethod
    def from_json(data: Mapping[str, object], site: Site | None = None) -> SiteState:
        """A state back from ``to_json()``; ``site``: its site, when already read (from another capture's line)."""
        live = data.get("live")
        state = str(data["state"])
        if state not in STATES:
            raise ValueError(f"unknown site state {state!r}")
        return SiteState(Site.from_json(data) if site is None else site, state,
                         None if live is None else bytes.fromhex(str(live)),
                         _strings(data.get("live_insns")), str(data.get("symbol") or ""))


_str = encode_basestring_ascii     # a string as json.dumps (ensure_ascii) spells it, quotes included


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _opt_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def _opt_hex(value: int | None) -> str:
    return "null" if value is None else f'"{value:#x}"'


def site_head(site: Site, symbol: str) -> str:
    """The start of a ``SiteState.json_line``: ``site.to_json()`` and the symbol, as json.dumps spells them."""
    module = f'"module": {_str(site.module)}, ' if site.module is not None else ""
    replacement = "null" if site.replacement is None else f'"{site.replacement.hex()}"'
    return (f'{{{module}"table": {_str(site.table)}, "index": {site.index}, "address": "{site.address:#x}", '
            f'"length": {site.length}, "original": "{site.original.hex()}", "section": {_str(site.section)}, '
            f'"op": {_opt_str(site.op)}, "slot": {_opt_int(site.slot)}, "feature": {_opt_str(site.feature)}, '
            f'"replacement": {replacement}, "replacement_address": {_opt_hex(site.replacement_address)}, '
            f'"target": {_opt_hex(site.target)}, "flags": {_opt_int(site.flags)}, "key": {_opt_hex(site.key)}, '
            f'"symbol": {_str(symbol)}')


_insns_json: dict[tuple[str, ...], str] = {}     # the few thousand distinct instruction lists, spelled once


def state_line(st: SiteState, head: str) -> str:
    """``st.json_line`` from its ``site_head``."""
    if st.live is None:
        return f'{head}, "state": "{st.state}"}}\n'
    insns = _insns_json.get(st.insns)
    if insns is None:
        insns = "[" + ", ".join(map(_str, st.insns)) + "]"
        if len(_insns_json) < 200_000:
            _insns_json[st.insns] = insns
    return f'{head}, "state": "{st.state}", "live": "{st.live.hex()}", "live_insns": {insns}}}\n'


@dataclass(frozen=True)
class TextChange:
    start: int
    end: int
    symbol: str
    before: bytes
    after: bytes

    def to_json(self) -> dict[str, object]:
        return {"address": hex(self.start), "length": self.end - self.start, "symbol": self.symbol,
                "before": self.before.hex(), "after": self.after.hex()}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> TextChange:
        start = int(str(data["address"]), 16)
        return TextChange(start, start + int(str(data["length"])), str(data["symbol"]),
                          bytes.fromhex(str(data["before"])), bytes.fromhex(str(data["after"])))


@dataclass(frozen=True)
class Oversize:
    state: SiteState
    extra: int             # changed bytes just past the site's end, belonging to no other site

    def to_json(self) -> dict[str, object]:
        return {**self.state.to_json(), "extra_bytes": self.extra}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Oversize:
        return Oversize(SiteState.from_json(data), int(str(data["extra_bytes"])))


@dataclass(frozen=True)
class Comparison:
    capture: str
    sites: Mapping[str, tuple[SiteState, ...]]
    unknown_changes: tuple[TextChange, ...]
    oversized: tuple[Oversize, ...]
    pv_indirect: tuple[SiteState, ...]
    notes: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, dict[str, int]]:
        return {table: {"sites": len(states), **{s: 0 for s in STATES}, **Counter(st.state for st in states)}
                for table, states in self.sites.items()}

    def to_json(self, with_sites: bool = True) -> dict[str, object]:
        data: dict[str, object] = {
            "capture": self.capture, "counts": self.counts(), "notes": list(self.notes),
            "unknown_changes": [c.to_json() for c in self.unknown_changes],
            "oversized": [o.to_json() for o in self.oversized],
            "pv_indirect": [s.to_json() for s in self.pv_indirect],
        }
        if with_sites:
            data["sites"] = [st.to_json() for states in self.sites.values() for st in states]
        return data

    @staticmethod
    def from_json(data: Mapping[str, object], sites: Iterable[Mapping[str, object] | SiteState]) -> Comparison:
        """A comparison back from ``to_json(with_sites=False)`` and its sites (one ``SiteState.to_json()`` each,
        or the states already read)."""
        counts = data.get("counts")
        tables: dict[str, list[SiteState]] = {str(t): [] for t in counts} if isinstance(counts, dict) else {}
        for row in sites:
            st = row if isinstance(row, SiteState) else SiteState.from_json(row)
            tables.setdefault(table_key(st.site.table, st.site.module), []).append(st)

        def rows(key: str) -> list[Mapping[str, object]]:
            value = data.get(key)
            return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []

        return Comparison(str(data["capture"]), {t: tuple(states) for t, states in tables.items()},
                          tuple(TextChange.from_json(r) for r in rows("unknown_changes")),
                          tuple(Oversize.from_json(r) for r in rows("oversized")),
                          tuple(SiteState.from_json(r) for r in rows("pv_indirect")),
                          _strings(data.get("notes")))


def site_state(site: Site, capture: Capture, symbols: Symbols | None) -> SiteState:
    """One site's state, the plain way (``Baseline.compare`` does the same for a whole table at once)."""
    symbol = symbols.format(site.address) if symbols else hex(site.address)
    if capture.is_freed(site.address):
        return SiteState(site, "freed", None, (), symbol)
    live = capture.read(site.address, site.length)
    if live is None:
        return SiteState(site, "unread", None, (), symbol)
    state: State = "unchanged" if live == site.original else "patched"
    return SiteState(site, state, live, tuple(i.text for i in disassemble(live, site.address, symbols)), symbol)


class _Intervals:
    """Sorted, merged [start, end) ranges with a fast membership test (empty ranges cover nothing and are dropped)."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(r for r in ranges if r[0] < r[1]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def covers(self, address: int) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and address < self.ends[i]

    def meets(self, start: int, end: int) -> bool:
        """Whether any range holds a byte of [start, end)."""
        i = bisect.bisect_left(self.starts, end) - 1
        return start < end and i >= 0 and self.ends[i] > start

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) no range covers, in order."""
        out: list[tuple[int, int]] = []
        starts, ends = self.starts, self.ends
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        at = start
        while i < len(starts) and starts[i] < end:
            if ends[i] > at:
                if starts[i] > at:
                    out.append((at, starts[i]))
                at = ends[i]
            i += 1
        if at < end:
            out.append((at, end))
        return out


def changed_ranges(before: bytes, after: bytes, base: int) -> list[tuple[int, int]]:
    """[start, end) address ranges where two byte strings differ (over their common length).

    Equal halves are skipped by C-speed comparison, so the cost follows the
    number of changes, not the 14 MB of text.
    """
    n = min(len(before), len(after))
    positions: list[int] = []
    a, b = memoryview(before)[:n], memoryview(after)[:n]

    def scan(lo: int, hi: int) -> None:
        if a[lo:hi] == b[lo:hi]:
            return
        if hi - lo <= 32:
            positions.extend(i for i in range(lo, hi) if a[i] != b[i])
            return
        mid = (lo + hi) // 2
        scan(lo, mid)
        scan(mid, hi)

    for off in range(0, n, 1 << 16):
        scan(off, min(off + (1 << 16), n))
    return [(base + lo, base + hi) for lo, hi in _runs(positions, 1)]


_UNDECODED: tuple[str, ...] = ("",)          # "not decoded yet": no decoding gives one empty text
# Live bytes -> their instructions' texts when no operand names an address (NOPs, "ret; int3", "pushf; pop
# %rax"): the same at every site, so spelled once; None: an operand does (a call, a jmp, a %rip operand).
_texts: dict[bytes, tuple[str, ...] | None] = {}


def _fixed_texts(code: bytes) -> tuple[str, ...] | None:
    texts = _texts.get(code, _UNDECODED)
    if texts is _UNDECODED:
        decoded = _decode(code)
        texts = None if any(rel is not None for _, _, _, rel in decoded) else tuple(d[2] for d in decoded)
        if len(_texts) < 200_000:
            _texts[code] = texts
    return texts


def _site_state(site: Site, state: State, live: bytes | None, insns: tuple[str, ...], symbol: str) -> SiteState:
    """``SiteState(site, state, live, insns, symbol)`` with its fields set directly: the frozen dataclass's
    __init__ costs twice as much, and a comparison makes one for each of 130k sites (as elf/vmlinux.py's _site)."""
    st: SiteState = object.__new__(SiteState)
    object.__setattr__(st, "__dict__", {"site": site, "state": state, "live": live, "insns": insns,
                                        "symbol": symbol})
    return st


class Baseline:
    """The ELF's side of a run's comparisons, prepared once and compared with each capture.

    The sites by table, the ranges that may change (every site, and ``extra_known``), and the names of
    places: a kernel has 130k sites and a run takes two or three captures. ``compare()`` gives what
    ``site_state()`` for every site and a byte-by-byte scan of the whole text would, at a fraction of the cost:

    - only the text outside every known range is scanned for changes (inside one, its site's state says it);
    - instructions whose operands name no address (NOPs, ``ret; int3``) are spelled once per byte string,
      and each address is named once;
    - a site whose state equals its state in the previous capture keeps that object (most sites keep
      their bytes from one capture to the next), which also lets the artefact writer encode it once.
    """

    def __init__(self, tables: Mapping[str, Sequence[Site]], symbols: Symbols | None,
                 pv_targets: Mapping[int, int] | None = None, extra_known: Sequence[tuple[int, int]] = (),
                 gap: int = 8) -> None:
        self.tables = {table: tuple(sites) for table, sites in tables.items()}
        self.symbols = symbols
        self.pv_targets: Mapping[int, int] = pv_targets or {}
        self.gap = gap
        self.known = _Intervals([(s.address, s.address + s.length) for sites in self.tables.values() for s in sites]
                                + list(extra_known))
        self._names: dict[int, str] = {}
        self._last: dict[str, list[SiteState | None]] = {}     # by table: each site's state in the last capture
        # id(site) -> (symbol, site_head()): the sites are self.tables', alive as long as the ids are used
        self._heads: dict[int, tuple[str, str]] = {}

    def prepare(self) -> None:
        """Name every site ahead of the first capture (inspection.py does it while the guest boots)."""
        for sites in self.tables.values():
            for site in sites:
                self.name(site.address)

    def encode(self, comparison: Comparison) -> None:
        """Make every state's ``json_line`` ahead of writing the site file, each site's part once for every
        capture (inspection.py does it while the guest boots)."""
        heads = self._heads
        for states in comparison.sites.values():
            for st in states:
                if "json_line" not in st.__dict__:      # where cached_property keeps it
                    symbol, head = heads.get(id(st.site), (None, ""))
                    if symbol != st.symbol:
                        head = site_head(st.site, st.symbol)
                        heads[id(st.site)] = (st.symbol, head)
                    st.__dict__["json_line"] = state_line(st, head)

    def name(self, address: int) -> str:
        """``symbols.format(address)`` (its hex without symbols), once per address."""
        name = self._names.get(address)
        if name is None:
            name = self.symbols.format(address) if self.symbols else hex(address)
            self._names[address] = name
        return name

    def insns(self, live: bytes, address: int) -> tuple[str, ...]:
        """The texts of ``disassemble(live, address, symbols)``."""
        # Sites whose bytes are their own (an operand names an address), spelled as _decode() spells them:
        if len(live) == 5 and live[0] in (0xE8, 0xE9):    # call/jmp rel32: returns, retpolines, static calls
            target = (address + 5 + int.from_bytes(live[1:], "little", signed=True)) & _MASK
            return (("call " if live[0] == 0xE8 else "jmp ") + self.name(target),)
        if len(live) == 6 and live[:2] == b"\xff\x15":     # call *disp32(%rip): pv sites left indirect
            target = (address + 6 + int.from_bytes(live[2:], "little", signed=True)) & _MASK
            return (f"call *{self.name(target)}(%rip)",)
        texts = _fixed_texts(live)
        if texts is not None:
            return texts
        return tuple(text if rel is None else text.format(self.name((address + rel) & _MASK))
                     for _, _, text, rel in _decode(live))

    def compare(self, capture: Capture, elf_read: Mapping[int, bytes]) -> Comparison:
        """Every site of every table, and the whole captured text, against the ELF (see ``compare``)."""
        states = {table: self._states(table, sites, capture) for table, sites in self.tables.items()}
        changes, outside = self._outside_sites(capture, elf_read)
        oversized: list[Oversize] = []
        if outside:
            for table_states in states.values():
                for st in table_states:
                    end = st.site.address + st.site.length
                    extra = 0
                    while end + extra in outside:
                        extra += 1
                    if extra:
                        oversized.append(Oversize(st, extra))
        pv_indirect: list[SiteState] = []
        for st in states.get("paravirt", ()):
            target = self.pv_targets.get(st.site.address)
            if st.live is not None and target is not None and _is_pv_call(st.live, st.site.address, target):
                pv_indirect.append(st)
        changes.sort(key=lambda c: c.start)
        return Comparison(capture.name, states, tuple(changes), tuple(oversized), tuple(pv_indirect))

    def _states(self, table: str, sites: tuple[Site, ...], capture: Capture) -> tuple[SiteState, ...]:
        regions = sorted((start, start + len(data), data) for start, data in capture.regions.items())
        starts = [r[0] for r in regions]
        # Capture.read() takes the first region holding the bytes; bisection finds that one when none overlap.
        disjoint = all(a[1] <= b[0] for a, b in pairwise(regions))
        freed = _Intervals(capture.freed)
        freed_starts, freed_ends = freed.starts, freed.ends
        last = self._last.get(table) or [None] * len(sites)
        names = self._names
        out: list[SiteState] = []
        for i, site in enumerate(sites):
            address, length = site.address, site.length
            live: bytes | None = None
            state: State
            if freed_starts and (k := bisect.bisect_right(freed_starts, address) - 1) >= 0 \
                    and address < freed_ends[k]:
                state = "freed"
            else:
                if disjoint:
                    j = bisect.bisect_right(starts, address) - 1
                    if j >= 0 and address + length <= regions[j][1]:
                        offset = address - starts[j]
                        live = regions[j][2][offset:offset + length]
                else:
                    live = capture.read(address, length)
                state = "unread" if live is None else "unchanged" if live == site.original else "patched"
            st = last[i]
            if st is None or st.live != live or st.state != state:
                st = _site_state(site, state, live, () if live is None else self.insns(live, address),
                                 names.get(address) or self.name(address))
                last[i] = st
            out.append(st)
        self._last[table] = last
        return tuple(out)

    def _outside_sites(self, capture: Capture, elf_read: Mapping[int, bytes]) -> tuple[list[TextChange], set[int]]:
        """Text changes outside every known range (freed text left out), and every changed byte outside them."""
        changes: list[TextChange] = []
        outside: set[int] = set()
        known = self.known
        for start, live in capture.regions.items():
            elf = elf_read.get(start)
            if elf is None or len(elf) != len(live):
                continue
            unknown: list[int] = []
            for lo, hi in known.gaps(start, start + len(live)):
                before, after = elf[lo - start:hi - start], live[lo - start:hi - start]
                if before == after:
                    continue
                for changed_lo, changed_hi in changed_ranges(before, after, lo):
                    outside.update(range(changed_lo, changed_hi))
                    unknown.extend(a for a in range(changed_lo, changed_hi) if not capture.is_freed(a))
            # One write whose middle bytes kept their value is one change; a known site splits changes.
            for run_lo, run_hi in _runs(unknown, self.gap, lambda a, b: not known.meets(a, b)):
                changes.append(TextChange(run_lo, run_hi, self.name(run_lo),
                                          elf[run_lo - start:run_hi - start], live[run_lo - start:run_hi - start]))
        return changes, outside


def compare(tables: Mapping[str, Sequence[Site]], capture: Capture, elf_read: Mapping[int, bytes],
            symbols: Symbols | None, pv_targets: Mapping[int, int] | None = None,
            extra_known: Sequence[tuple[int, int]] = (), gap: int = 8) -> Comparison:
    """Compare every site, and the whole captured text, with the ELF.

    ``elf_read`` maps each captured region's start to the ELF's bytes for it;
    ``pv_targets`` maps a paravirt site's address to ``pv_ops + 8*slot`` (for the
    indirect-call check); ``extra_known`` adds ranges that may change without
    being table sites (static-call trampolines). The captures of one run are
    compared through one ``Baseline``.
    """
    return Baseline(tables, symbols, pv_targets, extra_known, gap).compare(capture, elf_read)


def _is_pv_call(live: bytes, address: int, target: int) -> bool:
    """``call *disp32(%rip)`` (ff 15) whose memory operand is ``target``."""
    if len(live) < 6 or live[:2] != b"\xff\x15":
        return False
    disp = int.from_bytes(live[2:6], "little", signed=True)
    return (address + 6 + disp) & 0xFFFFFFFFFFFFFFFF == target


def _runs(addresses: Sequence[int], gap: int,
          joinable: Callable[[int, int], bool] | None = None) -> list[tuple[int, int]]:
    """Sorted addresses as [start, end) runs; a hole shorter than ``gap`` is joined when ``joinable(hole)``."""
    out: list[tuple[int, int]] = []
    for a in addresses:
        if out and a - out[-1][1] < gap and (joinable is None or joinable(out[-1][1], a)):
            out[-1] = (out[-1][0], a + 1)
        else:
            out.append((a, a + 1))
    return out

