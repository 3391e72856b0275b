"""The patch-event trace: every write the kernel makes to its own text, in order, and its self-check. Pure.

Two sources make the trace:

- **calls**: each call of a text-writing function seen at a breakpoint on its
  entry: ``text_poke_early(addr, opcode, len)`` for boot-time patching, and
  ``__text_poke(func, addr, src, len)``, where every ``text_poke()`` ends (a
  tail call, so the caller seen is text_poke's), from the end of boot-time
  patching on: the int3-protected live patching of ``text_poke_bp_batch``. An event has the address, the new
  bytes, the bytes there before the write, and the caller (``*(u64 *)rsp``),
  which names the stage (``apply_paravirt`` → paravirt, ``ftrace_*`` → ftrace, …);
- **bypass writes**: text changed without any such call: ``optimize_nops``
  rewriting NOP runs in place, ``alternatives_smp_unlock`` turning lock
  prefixes into ``ds`` on one CPU (through ``__text_poke``, not traced then),
  Xen PV's ``xen_start_kernel`` patching before ``start_kernel``. They are
  found where the live text differs from the model (the vmlinux plus every
  event so far): in the old bytes read at a call, and at each *snapshot* (the
  entry of ``start_kernel``, the entry of ``alternative_instructions``, its return).

The self-check replays the trace over the vmlinux text and holds it against
the live text, independently of how the events were found:

- every difference between the model and the live text (a call's old bytes,
  a snapshot) must be a bypass write by a mechanism known to write text
  without a call, byte by byte: ``optimize_nops`` (a 0x90 in an alternatives
  site rewritten), a lock prefix in an SMP-locks site turned into ``ds`` (or
  back), a static-call site or trampoline, anything before ``start_kernel``;
- what is left is reported, address by address: at a call as a *mismatch*
  (the model is then set to the live bytes, so one miss is reported once), at
  a snapshot as *unexplained*.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO

from ..elf.vmlinux import Site, Symbols


@dataclass(frozen=True)
class Writer:
    """A traced text-writing function and where its arguments are (x86-64 SysV registers)."""

    name: str
    addr: str
    src: str
    len: str
    memset_with: str | None = None   # a register holding a function that means "fill with *src"
    live_only: bool = False          # traced from the return of alternative_instructions() on


# __text_poke(func, addr, src, len): func is text_poke_memcpy, or text_poke_memset (text_poke_set).
# During boot its only caller is alternatives_smp_unlock() (lock -> ds, 8k one-byte writes, found
# as bypass writes instead): under Xen PV each of its calls costs ~11 ms stopped at, ~90 s a boot.
TRACED = (Writer("text_poke_early", "rdi", "rsi", "rdx"),
          Writer("__text_poke", "rsi", "rdx", "rcx", memset_with="rdi", live_only=True))
MEMSET = "text_poke_memset"
# Snapshot points: the trace's model is compared with the live text at each.
SNAPSHOT_START = "start_kernel"
SNAPSHOT_PATCHING = "alternative_instructions"
MAX_EVENT_LEN = 256   # a text write longer than this is reported, not recorded in full
# Module loading, marked in the trace (no bytes of their own): module_finalize(hdr, sechdrs, me) starts
# the patching of a module's own tables; apply_relocate_add(sechdrs, strtab, symindex, relsec, me) applies
# one relocation section (the loader's, before module_finalize; livepatch's .klp.rela ones, later).
MODULE_FINALIZE = "module_finalize"
APPLY_RELOCATE_ADD = "apply_relocate_add"
MODULE_EVENTS = (MODULE_FINALIZE, APPLY_RELOCATE_ADD)

# The stage a write belongs to, from the function that called the writer.
_STAGE_BY_CALLER = (
    ("apply_paravirt", "paravirt"),
    ("apply_retpolines", "retpolines"),
    ("apply_returns", "returns"),
    ("apply_alternatives", "alternatives"),
    ("apply_ibt_endbr", "ibt"),
    ("alternatives_smp", "smp_locks"),
    ("ftrace_", "ftrace"),
    ("__static_call", "static_calls"),
    ("arch_static_call", "static_calls"),
    ("static_call", "static_calls"),
    ("__jump_label", "jump_labels"),
    ("arch_jump_label", "jump_labels"),
    ("jump_label", "jump_labels"),
    ("text_poke_bp", "text_poke_bp"),   # int3-protected live patching: text_poke_bp_batch and friends
    ("int3_", "int3"),
    ("klp_", "livepatch"),
    ("load_module", "relocations"),
)


# Every function whose name starts so is a stage's (the plugin tracer follows their entries and returns).
STAGE_PREFIXES = tuple(prefix for prefix, _ in _STAGE_BY_CALLER)


def stage_of(caller_function: str | None) -> str:
    """``apply_paravirt`` → ``paravirt``; an unknown caller is its own stage."""
    if not caller_function:
        return "unknown"
    for prefix, stage in _STAGE_BY_CALLER:
        if caller_function.startswith(prefix):
            return stage
    return caller_function


@dataclass(frozen=True)
class Event:
    """One write to kernel text."""

    seq: int                 # 1-based, in the order the writes happened (the Model numbers them)
    t: float                 # seconds since QEMU started
    source: str              # "text_poke_early" | "__text_poke" | "bypass"
    stage: str               # paravirt, alternatives, ftrace, …; for bypass writes the mechanism
    address: int
    old: bytes               # the bytes there before (calls: read live at the call; bypass: the model's)
    new: bytes
    caller: int | None = None
    caller_symbol: str | None = None
    symbol: str | None = None        # the written address as "function+0xoff"
    window: str = ""                 # the snapshot interval it fell in: "early", "setup", "patching", "live"
    skipped: bool = False            # a scenario returned from the writer before it wrote
    module: str | None = None        # the module whose text it writes (or whose load it marks)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "seq": self.seq, "t": round(self.t, 4), "source": self.source, "stage": self.stage,
            "window": self.window, "address": f"{self.address:#x}", "symbol": self.symbol,
            "len": len(self.new), "old": self.old.hex(), "new": self.new.hex(),
        }
        if self.caller is not None:
            out["caller"] = f"{self.caller:#x}"
            out["caller_symbol"] = self.caller_symbol
        if self.skipped:
            out["skipped"] = True
        if self.module is not None:
            out["module"] = self.module
        return out

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Event:
        caller = data.get("caller")
        return Event(seq=int(str(data["seq"])), t=float(str(data["t"])), source=str(data["source"]),
                     stage=str(data["stage"]), address=int(str(data["address"]), 16),
                     old=bytes.fromhex(str(data["old"])), new=bytes.fromhex(str(data["new"])),
                     caller=int(str(caller), 16) if caller else None,
                     caller_symbol=str(data["caller_symbol"]) if data.get("caller_symbol") else None,
                     symbol=str(data["symbol"]) if data.get("symbol") else None,
                     window=str(data.get("window") or ""), skipped=bool(data.get("skipped")),
                     module=str(data["module"]) if data.get("module") else None)

    def describe(self, width: int = 16) -> str:
        """One line for a terminal."""
        old, new = self.old[:width].hex(" "), self.new[:width].hex(" ")
        more = "…" if len(self.new) > width else ""
        who = f"  ({self.caller_symbol})" if self.caller_symbol else ""
        skipped = "  [skipped]" if self.skipped else ""
        module = f" [{self.module}]" if self.module else ""
        if self.source in MODULE_EVENTS:       # a marker: the load step, not a write
            return (f"#{self.seq:<6} {self.t:8.3f} s  {self.stage:<13} {self.address:#x} "
                    f"<{self.symbol or '?'}>{module}  {self.source}{who}")
        return (f"#{self.seq:<6} {self.t:8.3f} s  {self.stage:<13} {self.address:#x} "
                f"<{self.symbol or '?'}>{module}  {len(self.new):>2}  {old}{more} -> {new}{more}{who}{skipped}")


@dataclass
class Mismatch:
    """A call whose live old bytes differ from the model: something wrote there unseen."""

    seq: int
    address: int
    expected: bytes   # the model's
    live: bytes

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "address": f"{self.address:#x}", "model": self.expected.hex(),
                "live": self.live.hex()}


@dataclass
class SelfCheck:
    """The trace replayed over the vmlinux, against the live text at each snapshot."""

    snapshots: list[str] = field(default_factory=list)
    calls: int = 0                      # call events checked against the model
    outside: int = 0                    # call events outside every modelled region (not checked)
    mismatches: list[Mismatch] = field(default_factory=list)
    bypass: dict[str, int] = field(default_factory=dict)        # mechanism -> bytes explained
    unexplained: list[Event] = field(default_factory=list)
    every_write: bool = False           # the plugin tracer: every write was seen, none is a call to check

    @property
    def passed(self) -> bool:
        return self.result().passed

    def summary(self) -> str:
        return self.result().summary()

    def result(self) -> CheckResult:
        """What the check found, as the run keeps it (the first 50 mismatches and unexplained writes)."""
        return CheckResult(tuple(self.snapshots), self.calls, self.outside,
                           tuple(m.to_json() for m in self.mismatches[:MAX_KEPT]), len(self.mismatches),
                           dict(sorted(self.bypass.items())),
                           tuple(e.to_json() for e in self.unexplained[:MAX_KEPT]), len(self.unexplained),
                           self.every_write)


MAX_KEPT = 50


@dataclass(frozen=True)
class CheckResult:
    """The self-check's findings as trace.json keeps them, and as the verdict reads them."""

    snapshots: tuple[str, ...]
    calls: int
    outside: int
    mismatches: tuple[Mapping[str, object], ...]      # the first MAX_KEPT, as Mismatch.to_json()
    mismatch_count: int
    bypass: Mapping[str, int]                          # mechanism -> bytes explained
    unexplained: tuple[Mapping[str, object], ...]      # the first MAX_KEPT, as Event.to_json()
    unexplained_count: int
    every_write: bool = False                          # the plugin tracer's: writes seen, not calls

    @property
    def passed(self) -> bool:
        return bool(self.snapshots) and not self.mismatch_count and not self.unexplained_count

    def summary(self) -> str:
        if not self.snapshots:
            return "no snapshot was taken, so the trace could not be checked"
        verdict = "passed" if self.passed else "FAILED"
        if self.every_write:
            return (f"self-check {verdict}: {self.calls} writes replayed over the vmlinux give the live text at "
                    f"{self.snapshots[-1]} but for {self.unexplained_count} unexplained differences")
        bypass = ", ".join(f"{k} {v} B" for k, v in sorted(self.bypass.items())) or "none"
        return (f"self-check {verdict}: {self.calls} calls replayed over the vmlinux up to "
                f"{self.snapshots[-1]}; {self.mismatch_count} with old bytes the model did not hold; "
                f"bypass writes explained: {bypass}; {self.unexplained_count} unexplained")

    def to_json(self) -> dict[str, object]:
        return {"passed": self.passed, "snapshots": list(self.snapshots), "calls": self.calls,
                "outside": self.outside, "mismatches": [dict(m) for m in self.mismatches],
                "mismatch_count": self.mismatch_count, "bypass": dict(self.bypass),
                "unexplained": [dict(e) for e in self.unexplained],
                "unexplained_count": self.unexplained_count, "every_write": self.every_write,
                "summary": self.summary()}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> CheckResult:
        def rows(key: str) -> tuple[Mapping[str, object], ...]:
            value = data.get(key)
            return tuple(r for r in value if isinstance(r, dict)) if isinstance(value, list) else ()

        snapshots = data.get("snapshots")
        bypass = data.get("bypass")
        return CheckResult(tuple(str(s) for s in snapshots) if isinstance(snapshots, list) else (),
                           int(str(data.get("calls") or 0)), int(str(data.get("outside") or 0)),
                           rows("mismatches"), int(str(data.get("mismatch_count") or 0)),
                           {str(k): int(v) for k, v in bypass.items()} if isinstance(bypass, dict) else {},
                           rows("unexplained"), int(str(data.get("unexplained_count") or 0)),
                           data.get("every_write") is True)


# --- the model --------------------------------------------------------------------------------

_NOP_BYTE = 0x90
_LOCK = 0xF0
_DS = 0x3E      # the prefix alternatives_smp_unlock() puts in place of lock on one CPU


class Explainer:
    """Which known mechanism can have written a byte without a call."""

    strict = False      # True: nothing explains a difference (the plugin tracer sees every write)

    def __init__(self, sites: Mapping[str, Sequence[Site]], symbols: Symbols) -> None:
        def covered(table: str) -> set[int]:
            return {a for s in sites.get(table, ()) for a in range(s.address, s.address + max(s.length, 1))}
        self.alternatives = covered("alternatives")
        self.locks = {s.address for s in sites.get("smp_locks", ())}
        # static_call_update() rewrites trampolines (__SCT__*, 5 bytes) as well as call sites
        self.static_calls = covered("static_calls") | {
            a + i for _, a in symbols.with_prefix("__SCT__") for i in range(5)}

    def byte(self, address: int, old: int, new: int, window: str) -> str | None:
        if self.strict:
            return None
        if window == "early":
            return "before start_kernel"
        if address in self.locks and old in (_LOCK, _DS) and new in (_LOCK, _DS):
            return "smp_locks"
        if address in self.alternatives and old == _NOP_BYTE:
            return "optimize_nops"
        if address in self.static_calls:
            return "static_call"
        return None

    def split(self, start: int, old: bytes, new: bytes, window: str) -> list[tuple[int, int, str | None]]:
        """``[start, start+len)`` cut into ``(offset, length, mechanism or None)`` runs."""
        out: list[tuple[int, int, str | None]] = []
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            how = self.byte(start + i, o, n, window)
            if out and out[-1][2] == how and out[-1][0] + out[-1][1] == i:
                out[-1] = (out[-1][0], out[-1][1] + 1, how)
            else:
                out.append((i, 1, how))
        return out


def diff_runs(model: bytes | bytearray, live: bytes, base: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` addresses of the runs of bytes where ``model`` and ``live`` differ."""
    n = min(len(model), len(live))
    i = 0
    block = 4096    # identical stretches cost one slice comparison
    while i < n:
        j = min(i + block, n)
        if model[i:j] == live[i:j]:
            i = j
            continue
        k = i
        while k < j:
            if model[k] != live[k]:
                e = k + 1
                while e < n and model[e] != live[e]:
                    e += 1
                yield base + k, base + e
                k = e
            else:
                k += 1
        i = max(j, k)


class Model:
    """The text as the trace says it is: the vmlinux's bytes with every event applied in order.

    It numbers the events: a call, and the bypass writes its old bytes reveal, come out in order.
    """

    def __init__(self, regions: Mapping[int, bytes], explainer: Explainer, symbols: Symbols) -> None:
        self.regions = {start: bytearray(data) for start, data in regions.items()}
        self._starts = sorted(self.regions)
        self.explainer = explainer
        self.symbols = symbols
        self.check = SelfCheck()
        self.seq = 0

    def _locate(self, address: int, length: int) -> tuple[bytearray, int] | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start = self._starts[i]
        data = self.regions[start]
        off = address - start
        if off + length > len(data):
            return None
        return data, off

    def _number(self, event: Event) -> Event:
        self.seq += 1
        return replace(event, seq=self.seq)

    def _bypass(self, address: int, old: bytes, new: bytes, window: str, t: float) -> tuple[list[Event], bool]:
        """The bypass writes that turn ``old`` into ``new`` at ``address``, and whether all are explained."""
        events: list[Event] = []
        explained = True
        for a, b in diff_runs(old, new, address):
            o, n = old[a - address:b - address], new[a - address:b - address]
            for off, length, how in self.explainer.split(a, o, n, window):
                event = Event(0, t, "bypass", how or "unexplained", a + off, o[off:off + length],
                              n[off:off + length], symbol=self.symbols.format(a + off), window=window)
                events.append(event)
                if how is None:
                    explained = False
                else:
                    self.check.bypass[how] = self.check.bypass.get(how, 0) + length
        return events, explained

    def call(self, event: Event) -> list[Event]:
        """A call's write, numbered, after the bypass writes its old bytes reveal; then applied."""
        got = self._locate(event.address, len(event.new))
        if got is None:
            self.check.outside += 1
            return [self._number(event)]
        data, off = got
        self.check.calls += 1
        expected = bytes(data[off:off + len(event.old)])
        found: list[Event] = []
        if expected != event.old:
            found, explained = self._bypass(event.address, expected, event.old, event.window, event.t)
            found = [self._number(e) for e in found if e.stage != "unexplained"]
            if not explained:
                self.check.mismatches.append(Mismatch(self.seq + 1, event.address, expected, event.old))
            data[off:off + len(event.old)] = event.old     # the live bytes: one miss is reported once
        event = self._number(event)
        if not event.skipped:
            data[off:off + len(event.new)] = event.new
        return [*found, event]

    def write(self, event: Event) -> Event:
        """A write seen as it happened (the plugin tracer): numbered, its old bytes the model's, then applied."""
        got = self._locate(event.address, len(event.new))
        if got is None:
            self.check.outside += 1
            return self._number(event)
        data, off = got
        self.check.calls += 1
        self.seq += 1
        event = replace(event, seq=self.seq, old=bytes(data[off:off + len(event.new)]))
        data[off:off + len(event.new)] = event.new
        return event

    def snapshot(self, name: str, live: Mapping[int, bytes], window: str, t: float) -> list[Event]:
        """Compare with the live text; the differences become bypass events (then the model is the live text)."""
        events: list[Event] = []
        for start, data in sorted(live.items()):
            model = self.regions.get(start)
            if model is None or len(model) != len(data):
                continue
            if model != data:
                found, _ = self._bypass(start, bytes(model), data, window, t)
                found = [self._number(e) for e in found]
                events += found
                self.check.unexplained += [e for e in found if e.stage == "unexplained"]
            self.regions[start] = bytearray(data)
        self.check.snapshots.append(name)
        return events


def write_jsonl(events: Iterable[Event], fh: IO[str]) -> int:
    """One event a line; returns the count."""
    n = 0
    for event in events:
        fh.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        n += 1
    return n


def counts(events: Iterable[Event]) -> dict[str, dict[str, int]]:
    """Per window, per stage: how many writes."""
    out: dict[str, dict[str, int]] = {}
    for event in events:
        per = out.setdefault(event.window or "?", {})
        per[event.stage] = per.get(event.stage, 0) + 1
    return out
