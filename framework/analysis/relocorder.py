"""Seed 002's invariant over a traced boot: no text write lands in bytes a relocation applied later writes. Pure.

A module's text is written by two mechanisms, and their order matters per
byte (``../shared/seeds/002_*``): relocations (the loader's
``apply_relocations()`` before ``module_finalize()``; livepatch's
``.klp.rela.<object>.*`` sections only once the patched object is there, by
``klp_apply_section_relocs()`` through the same ``apply_relocate_add()``) and
patching (``module_finalize()``: paravirt, retpolines, returns, alternatives,
SMP locks; then ftrace, jump labels, static calls). A relocation applied
after a patch wrote the same bytes computes its value for the original
instruction and writes it into the patched one.

Each ``apply_relocate_add()`` call seen in the trace is a
:class:`Relocation`: the bytes its section's entries write, read from the
entries themselves in guest memory at the call. :func:`check_order` holds each one
against every earlier write (a traced call or a bypass write) and reports
each overlap as an :class:`Overlap`. Whether the kernel then wrote the bytes
or refused (6.1's ``apply_relocate_add()`` refuses a location that is not
zero) is for the console and the final site states to tell.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..elf.ko import RELOCATIONS
from .trace import MODULE_EVENTS, MODULE_FINALIZE, Event

_RELA = struct.Struct("<QQq")


@dataclass(frozen=True)
class Relocation:
    """One ``apply_relocate_add()`` call: its trace event's number and the bytes its entries write."""

    seq: int
    module: str
    section: str                        # ".rela.text", ".klp.rela.psm_target..text"
    target: int                         # run-time address of the section relocated
    livepatch: bool                     # SHF_RELA_LIVEPATCH
    ranges: tuple[tuple[int, int], ...]  # [start, end), sorted and merged
    size: int = 0                       # the relocated section's size

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "module": self.module, "section": self.section, "target": hex(self.target),
                "size": self.size, "livepatch": self.livepatch, "bytes": sum(e - s for s, e in self.ranges),
                "entries": len(self.ranges)}


def written_ranges(entries: bytes, target: int) -> tuple[tuple[int, int], ...]:
    """[start, end) of the bytes a section of ``Elf64_Rela`` entries writes in a section at ``target``."""
    spans: list[tuple[int, int]] = []
    for offset, info, _addend in _RELA.iter_unpack(entries[:len(entries) - len(entries) % _RELA.size]):
        kind = RELOCATIONS.get(info & 0xFFFFFFFF)
        if kind is not None:
            spans.append((target + offset, target + offset + kind[0]))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


@dataclass(frozen=True)
class Overlap:
    """A write (``write_seq``) into bytes that a later relocation (``relocation_seq``) writes too."""

    relocation_seq: int
    write_seq: int
    address: int
    size: int
    module: str
    section: str
    livepatch: bool
    stage: str                           # the write's: paravirt, alternatives, …
    symbol: str | None

    def to_json(self) -> dict[str, object]:
        return {"relocation_seq": self.relocation_seq, "write_seq": self.write_seq, "address": hex(self.address),
                "size": self.size, "module": self.module, "section": self.section, "livepatch": self.livepatch,
                "stage": self.stage, "symbol": self.symbol}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Overlap:
        symbol = data.get("symbol")
        return Overlap(int(str(data["relocation_seq"])), int(str(data["write_seq"])), int(str(data["address"]), 16),
                       int(str(data["size"])), str(data["module"]), str(data["section"]), bool(data["livepatch"]),
                       str(data["stage"]), None if symbol is None else str(symbol))

    def describe(self) -> str:
        kind = "livepatch relocation" if self.livepatch else "relocation"
        return (f"{self.stage} write #{self.write_seq} at {self.symbol or hex(self.address)} [{self.module}] "
                f"({self.size} bytes) lies under the {kind} {self.section} applied later (#{self.relocation_seq})")


def check_order(events: Sequence[Event], relocations: Iterable[Relocation]) -> list[Overlap]:
    """Every (earlier write, later relocation) pair that shares bytes, in relocation order.

    Module memory is reused (init text freed after each init, a refused module's
    memory at once), so an earlier write counts only if it was made to the same
    module: when it happened, the last section the loader relocated at that
    address (its *claim*) was the relocation's module's.
    """
    relocations = sorted(relocations, key=lambda r: r.seq)
    finalized: dict[str, list[int]] = {}     # module -> seq of each of its module_finalize() calls
    for e in events:
        if e.source == MODULE_FINALIZE and e.module is not None:
            finalized.setdefault(e.module, []).append(e.seq)

    def instance(rel: Relocation) -> tuple[str, int]:
        """Which load of its module a relocation belongs to: the loader's come before that load's
        module_finalize(), livepatch's after it (a refused insmod is retried: a module loads twice)."""
        done = bisect.bisect_left(finalized.get(rel.module, []), rel.seq)
        return rel.module, done - 1 if rel.livepatch else done

    claims = [(r.seq, r.target, r.target + r.size, instance(r)) for r in relocations if not r.livepatch and r.size]

    def owner(address: int, seq: int) -> tuple[str, int] | None:
        last = None
        for c_seq, lo, hi, load in claims:
            if c_seq > seq:
                break
            if lo <= address < hi:
                last = load
        return last

    writes = sorted((e for e in events if e.source not in MODULE_EVENTS and e.new and not e.skipped),
                    key=lambda e: e.address)
    starts = [e.address for e in writes]
    longest = max((len(e.new) for e in writes), default=0)
    out: list[Overlap] = []
    for rel in relocations:
        if not rel.ranges:
            continue
        load = instance(rel)
        lo, hi = rel.ranges[0][0], rel.ranges[-1][1]
        range_starts = [r[0] for r in rel.ranges]
        for w in writes[bisect.bisect_left(starts, lo - longest):bisect.bisect_left(starts, hi)]:
            if w.seq >= rel.seq or owner(w.address, w.seq) != load:
                continue
            w_lo, w_hi = w.address, w.address + len(w.new)
            i = bisect.bisect_right(range_starts, w_hi - 1) - 1
            shared = 0
            while i >= 0 and rel.ranges[i][1] > w_lo:
                r_lo, r_hi = rel.ranges[i]
                shared += max(0, min(r_hi, w_hi) - max(r_lo, w_lo))
                i -= 1
            if shared:
                out.append(Overlap(rel.seq, w.seq, w.address, shared, rel.module, rel.section, rel.livepatch,
                                   w.stage, w.symbol))
    return out
