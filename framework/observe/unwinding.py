"""inspect.unwind (seed 004): stop inside patched sites, unwind one frame with ORC, compare with the truth. An edge.

At the end of boot-time patching the session calls :meth:`UnwindProbe.arm`
with the capture just taken: every patched site of the chosen table (and pv
op) outside init text gets a breakpoint at each instruction boundary of its
live bytes (between ``pushf`` and ``pop %rax``; before and after ``call
xen_save_fl_direct``), and its function's entry one more. At an entry the
probe records rsp and the return address at [rsp] (the truth for that call);
at a boundary it unwinds with patchscope's ORC unwinder
(:mod:`framework.analysis.unwind`) from the live registers and compares frame 1
with the innermost live call's record. A boundary is disarmed once compared;
everything is disarmed once ``sites`` sites have been compared at all their
boundaries, or after :data:`MAX_STOPS` stops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..analysis.sites import Capture
from ..analysis.spdelta import boundaries
from ..analysis.unwind import EntryRecord, ReadU64, UnwindCheck, check_stop, prune
from ..config import UnwindSpec
from ..elf.orc import OrcTable
from ..elf.vmlinux import Site, Symbols

MAX_SITES = 256          # sites armed at once (each: its boundaries and its function's entry)
MAX_STOPS = 20_000       # stops at the probe's breakpoints before it gives up (hot functions' entries)
MAX_UNCOMPARED = 50      # stops without a truth kept in the log, besides every compared one


def unwind_candidates(sites: Mapping[str, Sequence[Site]], spec: UnwindSpec, is_init: Callable[[int], bool],
                      symbols: Symbols) -> list[Site]:
    """The sites the probe may stop in: the spec's table (and op, and symbol), in vmlinux's text that stays."""
    return [s for s in sites.get(spec.table, []) if s.module is None and (spec.op is None or s.op == spec.op)
            and not is_init(s.address) and s.length > 0
            and (spec.symbol is None or spec.symbol.search(symbols.format(s.address)))]


def stop_offsets(live: bytes) -> list[int]:
    """The instruction boundaries inside a site's live bytes where the stack is known: its start, then each
    boundary before its end that falling through reaches (NOP padding included)."""
    return [0] + [b.offset for b in boundaries(live) if b.offset < len(live) and b.delta is not None]


@dataclass
class _Armed:
    site: Site
    label: str                 # "paravirt#12 irq.save_fl lock_is_held_type+0x2a"
    function: str
    entry: int
    pending: set[int]          # boundary addresses not compared yet


@dataclass
class UnwindProbe:
    spec: UnwindSpec
    table: OrcTable
    symbols: Symbols
    sites: list[Site]
    checks: list[UnwindCheck] = field(default_factory=list)
    stops: int = 0
    done: bool = False
    armed: dict[int, _Armed] = field(default_factory=dict)       # boundary address -> its site
    entries: dict[int, str] = field(default_factory=dict)        # function entry -> name
    records: list[EntryRecord] = field(default_factory=list)
    compared: set[int] = field(default_factory=set)              # sites (addresses) compared at every boundary
    uncompared: int = 0
    note_text: str = ""

    def plan(self, capture: Capture) -> tuple[list[int], list[int]]:
        """(boundary addresses, entry addresses) to arm: the patched candidates, as ``capture`` holds them."""
        armed_sites = 0
        for site in self.sites:
            if armed_sites >= MAX_SITES:
                break
            live = capture.read(site.address, site.length)
            if live is None or live == site.original:
                continue
            found = self.symbols.resolve(site.address)
            if found is None:
                continue
            name, offset = found
            what = f" {site.op}" if site.op else f" {site.feature}" if site.feature else ""
            armed = _Armed(site, f"{site.table}#{site.index}{what} {name}+{offset:#x}", name, site.address - offset,
                           {site.address + o for o in stop_offsets(live)})
            for address in armed.pending:
                self.armed.setdefault(address, armed)
            self.entries[armed.entry] = name
            armed_sites += 1
        patched = armed_sites
        self.note_text = (f"unwind: {patched} patched {self.spec.table} sites"
                          f"{f' of {self.spec.op}' if self.spec.op else ''} armed at {len(self.armed)} "
                          f"boundaries, {len(self.entries)} function entries")
        return sorted(self.armed), sorted(self.entries)

    def at_entry(self, address: int, regs: Mapping[str, int], read_u64: ReadU64) -> None:
        self.stops += 1
        rsp = regs["rsp"]
        ret = read_u64(rsp)
        if ret is not None:
            self.records.append(EntryRecord(self.entries[address], rsp, ret))
            prune(self.records, rsp)

    def at_boundary(self, address: int, regs: Mapping[str, int], read_u64: ReadU64) -> bool:
        """Compare here; True when this boundary is done (compared with a truth)."""
        self.stops += 1
        armed = self.armed[address]
        offset = address - armed.site.address
        check = check_stop(self.table, f"{armed.label} (+{offset})", armed.function, regs, self.records, read_u64)
        if check.agrees is None:
            self.uncompared += 1
            if self.uncompared <= MAX_UNCOMPARED:
                self.checks.append(check)
            return False
        self.checks.append(check)
        armed.pending.discard(address)
        if not armed.pending:
            self.compared.add(armed.site.address)
        return True

    def finished(self) -> bool:
        return len(self.compared) >= self.spec.sites or self.stops >= MAX_STOPS

    def summary(self) -> str:
        checked = [c for c in self.checks if c.agrees is not None]
        wrong = sum(1 for c in checked if not c.agrees)
        return (f"unwind: {len(checked)} stops inside {len(self.compared)} patched sites compared with the true "
                f"frame, {wrong} disagree ({self.stops} probe stops)")
