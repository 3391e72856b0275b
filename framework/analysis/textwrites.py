"""The TCG plugin's text-write log, turned into the patch-event trace. Pure.

The plugin (``framework/vm/plugin/textwrites.c``) logs every store that lands
in kernel text, by virtual address or by physical page, with the value
written and the storing instruction, and the entries and returns of a set of
watched functions. Here:

- a store's text address is its virtual address when that is in the text, or
  its physical address mapped back through the text's physical placement
  (logged by the plugin when it learns it): text_poke's temporary mapping and
  the direct map are aliases of the same pages;
- consecutive stores that continue one another, in one stage, make one
  :class:`~framework.analysis.trace.Event`;
- a write's stage is that of the innermost stage function it happens in
  (``apply_paravirt`` → paravirt, as :func:`~framework.analysis.trace.stage_of`
  names callers; the plugin follows each CPU's entries and returns of them and
  gives every store its innermost one); its window follows the entries of
  ``start_kernel`` and ``alternative_instructions`` and the return of the latter;
- the self-check is the same as the breakpoint tracer's: the writes replayed
  over the vmlinux must give the live text at the end, and here nothing may
  explain a difference away (every write is seen, so every difference is a miss).
"""

from __future__ import annotations

import bisect
import mmap
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..elf.vmlinux import Symbols
from .trace import MAX_EVENT_LEN, STAGE_PREFIXES, Event, Model, stage_of

MAGIC = b"PSTW0002"
# kind, size, id, vcpu, inside, vaddr, paddr, pc, value, CLOCK_MONOTONIC ns
RECORD = struct.Struct("<BBHHHQQQ16sQ")
Record = tuple[int, int, int, int, int, int, int, int, bytes, int]
REC_STORE, REC_ENTER, REC_RETURN, REC_ARM, REC_LEARN, REC_FREE, REC_DROPPED = range(1, 8)
NO_VALUE = 0x80                 # in a store's size: the plugin could not read the value back
# A store's "inside": flags, then the CPU's count of writer calls (two calls' stores are two writes).
INSIDE_TEXT_POKE, INSIDE_TEXT_POKE_EARLY = 1, 2
CALL_SHIFT = 2
PAGE = 4096

# The window boundaries (as the breakpoint tracer's snapshots) and where the init text is freed.
START = "start_kernel"
PATCHING = "alternative_instructions"
FREE_INIT = "free_initmem"
# Functions that only carry a write: the stage is their caller's. Every text_poke() ends in __text_poke().
WRITERS = ("text_poke_early", "__text_poke", "text_poke", "text_poke_copy", "text_poke_copy_locked",
           "text_poke_set", "text_poke_memcpy", "text_poke_memset", "text_poke_kgdb")
# Watched by name besides the stage prefixes: optimize_nops() writes in place (a bypass write for the
# breakpoint tracer, its own stage here).
EXTRA_WATCHED = ("optimize_nops", START, PATCHING)


class LogError(ValueError):
    """The log is not a text-write log (or not one this reader knows)."""


@dataclass(frozen=True)
class Watch:
    id: int
    name: str
    start: int
    end: int
    kind: str = "s"     # s a stage function, w a writer, p __text_poke, e text_poke_early, b a window boundary

    def arg(self) -> str:
        return f"watch={self.id}:{self.start:x}:{self.end:x}:{self.kind}"


def _kind(name: str) -> str:
    if name in (START, PATCHING):
        return "b"
    if name == "__text_poke":
        return "p"
    if name == "text_poke_early":
        return "e"
    return "w" if name in WRITERS else "s"


def watches(symbols: Symbols, text: Sequence[tuple[int, int]]) -> list[Watch]:
    """The functions whose entries and returns the plugin follows: every text symbol named like a stage
    (trace.STAGE_PREFIXES), the writers, and the window boundaries; each one's extent up to the next symbol
    (disjoint by construction)."""
    spans = symbols.spans()
    wanted = set(WRITERS) | set(EXTRA_WATCHED)
    starts = [lo for lo, _ in text]
    out: list[Watch] = []
    for name, lo, hi in spans:
        if not (name in wanted or name.startswith(STAGE_PREFIXES)):
            continue
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0 or not lo < text[i][1] or hi <= lo:
            continue                        # data named like a stage (static_call_initialized), or outside text
        out.append(Watch(len(out) + 1, name, lo, min(hi, text[i][1]), _kind(name)))
    return out


def records(data: bytes | memoryview | mmap.mmap) -> Iterator[Record]:
    """The log's records in order, up to the first empty one (a log cut short by a killed QEMU ends there)."""
    if len(data) < RECORD.size or bytes(data[:8]) != MAGIC:
        raise LogError(f"not a text-write log (no {MAGIC.decode()} header)")
    for off in range(RECORD.size, len(data) - RECORD.size + 1, RECORD.size):
        rec = RECORD.unpack_from(data, off)
        if rec[0] == 0:
            return
        yield rec


@dataclass
class Stats:
    """What the conversion saw besides the writes."""

    stores: int = 0                     # store records
    aliased: int = 0                    # of those, made through another mapping of the text (physical match)
    outside: int = 0                    # stores into text pages but outside the compared text regions
    no_value: int = 0                   # stores whose value the plugin could not read
    dropped: int = 0                    # records the plugin could not log (its log was full)
    placement: tuple[int, int] | None = None      # (virtual, physical) page the text was placed by
    nonlinear: list[tuple[int, int]] = field(default_factory=list)   # pages found away from that placement
    armed: bool = False                 # the kernel ran at its link-time addresses (logging started)
    freed: bool = False                 # free_initmem() was entered

    def to_json(self) -> dict[str, object]:
        return {"stores": self.stores, "aliased": self.aliased, "outside": self.outside,
                "no_value": self.no_value, "dropped": self.dropped, "armed": self.armed, "freed": self.freed,
                "placement": [f"{a:#x}" for a in self.placement] if self.placement else None,
                "nonlinear": [[f"{v:#x}", f"{p:#x}"] for v, p in self.nonlinear[:50]],
                "nonlinear_count": len(self.nonlinear)}


class _Pending:
    """A write being gathered from consecutive stores."""

    __slots__ = ("address", "call", "caller", "data", "source", "stage", "t", "vcpu", "window")

    def __init__(self, address: int, data: bytes, vcpu: int, context: tuple[str, str | None, str, int],
                 window: str, t: float) -> None:
        self.address = address
        self.data = bytearray(data)
        self.vcpu = vcpu
        self.stage, self.caller, self.source, self.call = context
        self.window = window
        self.t = t

    def continues(self, address: int, size: int, vcpu: int, context: tuple[str, str | None, str, int],
                  window: str) -> bool:
        """Whether a store of ``size`` bytes at ``address`` belongs to this write: it overlaps or touches it
        (a copy's stores may overlap, 5 bytes as 4 at +0 and 4 at +1, or go backwards), by the same CPU, in
        the same stage and writer call, and the write stays under MAX_EVENT_LEN bytes."""
        return (address + size >= self.address and address <= self.address + len(self.data)
                and max(address + size, self.address + len(self.data)) - min(address, self.address) <= MAX_EVENT_LEN
                and vcpu == self.vcpu and window == self.window
                and context == (self.stage, self.caller, self.source, self.call))

    def add(self, address: int, data: bytes) -> None:
        if address < self.address:
            self.data[:0] = bytes(self.address - address)
            self.address = address
        off = address - self.address
        self.data[off:off + len(data)] = data


def _source(inside: int) -> str:
    if inside & INSIDE_TEXT_POKE:
        return "__text_poke"
    return "text_poke_early" if inside & INSIDE_TEXT_POKE_EARLY else "store"


def convert(log: Iterable[Record], watched: Sequence[Watch], text: Sequence[tuple[int, int]], model: Model,
            symbols: Symbols, started: float = 0.0) -> tuple[list[Event], Stats]:
    """The trace the plugin's log gives, numbered and replayed over ``model`` (the vmlinux's text regions);
    ``started``: the CLOCK_MONOTONIC seconds its times count from (QEMU's start)."""
    names = {w.id: w.name for w in watched}
    entries = {w.name: w.start for w in watched}
    starts = [lo for lo, _ in text]
    stats = Stats()
    window = "early"
    delta: int | None = None
    elsewhere: dict[int, int] = {}          # physical page -> virtual page, for pages off the placement
    pending: _Pending | None = None
    events: list[Event] = []

    def in_text(address: int) -> bool:
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and address < text[i][1]

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            event = Event(0, pending.t, pending.source, pending.stage, pending.address, b"", bytes(pending.data),
                          caller=entries.get(pending.caller) if pending.caller else None,
                          caller_symbol=pending.caller, symbol=symbols.format(pending.address),
                          window=pending.window)
            events.append(model.write(event))
            pending = None

    for kind, size, ident, vcpu, inside, vaddr, paddr, _pc, value, ns in log:
        if kind == REC_STORE:
            stats.stores += 1
            if size & NO_VALUE:
                stats.no_value += 1
                continue
            if in_text(vaddr):
                address = vaddr
            else:
                page = elsewhere.get(paddr & ~(PAGE - 1))
                if page is None and delta is None:
                    stats.outside += 1
                    continue
                address = (page if page is not None else (paddr & ~(PAGE - 1)) - (delta or 0)) + (paddr & (PAGE - 1))
                stats.aliased += 1
                if not in_text(address):
                    stats.outside += 1
                    continue
            caller = names.get(ident) if ident else None
            context = (stage_of(caller) if caller else "unknown", caller, _source(inside), inside >> CALL_SHIFT)
            data = value[:size]
            if pending is not None and pending.continues(address, len(data), vcpu, context, window):
                pending.add(address, data)
            else:
                flush()
                pending = _Pending(address, data, vcpu, context, window, ns / 1e9 - started)
            continue
        flush()
        if kind == REC_ENTER:                       # the plugin logs the window boundaries' only
            name = names.get(ident, f"watch#{ident}")
            if name == START and window == "early":
                window = "setup"
            elif name == PATCHING and window in ("early", "setup"):
                window = "patching"
        elif kind == REC_RETURN:
            name = names.get(ident, f"watch#{ident}")
            if name == PATCHING and window == "patching":
                window = "live"
        elif kind == REC_ARM:
            stats.armed = True
        elif kind == REC_LEARN:
            if ident == 1 and delta is None:
                delta = paddr - vaddr
                stats.placement = (vaddr, paddr)
            else:
                elsewhere[paddr] = vaddr
                stats.nonlinear.append((vaddr, paddr))
        elif kind == REC_FREE:
            stats.freed = True
        elif kind == REC_DROPPED:
            stats.dropped += vaddr
    flush()
    return events, stats


@dataclass(frozen=True)
class Agreement:
    """Two traces of the same kernel compared byte by byte: which (address, value) writes each holds."""

    both: int
    only_first: tuple[tuple[int, int], ...]
    only_second: tuple[tuple[int, int], ...]

    @property
    def agrees(self) -> bool:
        return not self.only_first and not self.only_second

    def summary(self, first: str, second: str) -> str:
        def some(items: tuple[tuple[int, int], ...]) -> str:
            return ", ".join(f"{a:#x}={v:02x}" for a, v in items[:5]) + (" …" if len(items) > 5 else "")
        text = f"{self.both} byte writes in both"
        if self.only_first:
            text += f"; {len(self.only_first)} only in the {first} trace ({some(self.only_first)})"
        if self.only_second:
            text += f"; {len(self.only_second)} only in the {second} trace ({some(self.only_second)})"
        return text


def byte_writes(events: Iterable[Event], within: Sequence[tuple[int, int]],
                windows: Sequence[str] = ("early", "setup", "patching", "live")) -> set[tuple[int, int]]:
    """(address, value) of every byte a trace's writes changed inside the ``within`` ranges (sorted), in the
    given windows."""
    starts = [lo for lo, _ in within]
    out: set[tuple[int, int]] = set()
    for e in events:
        if e.window not in windows or e.skipped or not e.new or len(e.old) != len(e.new):
            continue
        i = bisect.bisect_right(starts, e.address) - 1
        if i < 0 or e.address >= within[i][1]:
            continue
        for k, (old, new) in enumerate(zip(e.old, e.new, strict=True)):
            if old != new and e.address + k < within[i][1]:
                out.add((e.address + k, new))
    return out


def agreement(first: Iterable[Event], second: Iterable[Event], within: Sequence[tuple[int, int]]) -> Agreement:
    """Two traces' byte changes compared inside ``within`` (the plugin follows the kernel's own text regions;
    the breakpoint tracer also sees writes into module text, the vDSO image and BPF's code)."""
    ranges = sorted(within)
    a, b = byte_writes(first, ranges), byte_writes(second, ranges)
    return Agreement(len(a & b), tuple(sorted(a - b)), tuple(sorted(b - a)))


def placement_note(stats: Stats) -> str:
    """One line on where the text was found in guest physical memory."""
    if stats.placement is None:
        return "the text's physical placement was never learned (no store through the text's own addresses)"
    v, p = stats.placement
    line = f"text at {v:#x} placed at physical {p:#x}"
    if stats.nonlinear:
        line += f"; {len(stats.nonlinear)} pages elsewhere"
    return line
