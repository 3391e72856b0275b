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

Instructions are spelled as objdump spells them (``pushf``, ``pop %rax``,
``call xen_save_fl_direct``, ``mov %cr2,%rax``) so assertions read like the
listings kernel developers know.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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


_cs: capstone.Cs | None = None


def _capstone() -> capstone.Cs:
    global _cs
    if _cs is None:
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.syntax = capstone.CS_OPT_SYNTAX_ATT
    return _cs


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
            for insn in _capstone().disasm(code[offset:], offset):
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
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


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

    @staticmethod
    def from_json(data: Mapping[str, object]) -> SiteState:
        live = data.get("live")
        state = str(data["state"])
        if state not in STATES:
            raise ValueError(f"unknown site state {state!r}")
        return SiteState(Site.from_json(data), state,
                         None if live is None else bytes.fromhex(str(live)),
                         _strings(data.get("live_insns")), str(data.get("symbol") or ""))


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
        return {table: {"sites": len(states), **{s: sum(st.state == s for st in states) for s in STATES}}
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
    def from_json(data: Mapping[str, object], sites: Iterable[Mapping[str, object]]) -> Comparison:
        """A comparison back from ``to_json(with_sites=False)`` and its sites (one ``SiteState.to_json()`` each)."""
        counts = data.get("counts")
        tables: dict[str, list[SiteState]] = {str(t): [] for t in counts} if isinstance(counts, dict) else {}
        for row in sites:
            st = SiteState.from_json(row)
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
    symbol = symbols.format(site.address) if symbols else hex(site.address)
    if capture.is_freed(site.address):
        return SiteState(site, "freed", None, (), symbol)
    live = capture.read(site.address, site.length)
    if live is None:
        return SiteState(site, "unread", None, (), symbol)
    state: State = "unchanged" if live == site.original else "patched"
    return SiteState(site, state, live, tuple(i.text for i in disassemble(live, site.address, symbols)), symbol)


class _Intervals:
    """Sorted, merged [start, end) ranges with a fast membership test."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def covers(self, address: int) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and address < self.ends[i]


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


def compare(tables: Mapping[str, Sequence[Site]], capture: Capture, elf_read: Mapping[int, bytes],
            symbols: Symbols | None, pv_targets: Mapping[int, int] | None = None,
            extra_known: Sequence[tuple[int, int]] = (), gap: int = 8) -> Comparison:
    """Compare every site, and the whole captured text, with the ELF.

    ``elf_read`` maps each captured region's start to the ELF's bytes for it;
    ``pv_targets`` maps a paravirt site's address to ``pv_ops + 8*slot`` (for the
    indirect-call check); ``extra_known`` adds ranges that may change without
    being table sites (static-call trampolines).
    """
    states = {table: tuple(site_state(s, capture, symbols) for s in sites) for table, sites in tables.items()}
    known = _Intervals([(s.address, s.address + s.length) for sites in tables.values() for s in sites]
                       + list(extra_known))
    changes: list[TextChange] = []
    changed_bytes: set[int] = set()
    for start, live in capture.regions.items():
        elf = elf_read.get(start)
        if elf is None or len(elf) != len(live):
            continue
        unknown: list[int] = []
        for lo, hi in changed_ranges(elf, live, start):
            changed_bytes.update(range(lo, hi))
            unknown.extend(a for a in range(lo, hi) if not known.covers(a) and not capture.is_freed(a))
        # One write whose middle bytes kept their value is one change; a known site splits changes.
        for run_lo, run_hi in _runs(unknown, gap, lambda a, b: not any(known.covers(x) for x in range(a, b))):
            changes.append(TextChange(run_lo, run_hi, symbols.format(run_lo) if symbols else hex(run_lo),
                                      elf[run_lo - start:run_hi - start], live[run_lo - start:run_hi - start]))
    oversized: list[Oversize] = []
    for table_states in states.values():
        for st in table_states:
            end = st.site.address + st.site.length
            extra = 0
            while end + extra in changed_bytes and not known.covers(end + extra):
                extra += 1
            if extra:
                oversized.append(Oversize(st, extra))
    pv_indirect: list[SiteState] = []
    for st in states.get("paravirt", ()):
        target = (pv_targets or {}).get(st.site.address)
        if st.live is not None and target is not None and _is_pv_call(st.live, st.site.address, target):
            pv_indirect.append(st)
    changes.sort(key=lambda c: c.start)
    return Comparison(capture.name, states, tuple(changes), tuple(oversized), tuple(pv_indirect))


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

