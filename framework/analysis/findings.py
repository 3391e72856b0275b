"""What a run's debugger found, as the verdict reads it and the artefacts keep it. Pure.

An :class:`Analysis` is made once at the end of a live run (from the
session's captures, trace and scenario log) and again, by ``patchscope
check``, from the files that run wrote (``report/artefacts.py``). Both are the
same value, so a saved run is judged exactly as the live one was. It holds:

- ``comparisons``: capture name -> :class:`~framework.analysis.sites.Comparison`,
  in the order the captures were taken;
- ``trace``: the patch-event trace's counts and self-check (traced runs);
- ``scenario``: every scenario stop as logged, each injected NMI's fate, and
  whether ``max_stops`` cut the scenario short (runs with a scenario);
- ``error``: why the debugger session fell short (a capture never reached, the
  guest gone mid-session), or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..scenario import NMI_RECORD_STATES, NmiRecord
from .orccheck import OrcReport
from .relocorder import Overlap
from .sites import Comparison
from .trace import CheckResult
from .unwind import UnwindCheck

MAX_FIRST = 20   # findings result.json keeps per kind; the artefacts keep them all


@dataclass(frozen=True)
class LoggedStop:
    """One scenario stop as scenario.jsonl keeps it (``StopRecord.to_json``): effects as logged."""

    n: int
    rule: int
    at: str
    address: int
    caller: int | None
    caller_symbol: str | None
    hit: int
    effects: tuple[Mapping[str, object], ...]
    t: float

    def to_json(self) -> dict[str, object]:
        return {"stop": self.n, "rule": self.rule, "at": self.at, "address": hex(self.address),
                "caller": hex(self.caller) if self.caller is not None else None,
                "caller_symbol": self.caller_symbol, "hit": self.hit,
                "effects": [dict(e) for e in self.effects], "t": self.t}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> LoggedStop:
        caller = data.get("caller")
        effects = data.get("effects")
        symbol = data.get("caller_symbol")
        return LoggedStop(int(str(data["stop"])), int(str(data["rule"])), str(data["at"]),
                          int(str(data["address"]), 16), None if caller is None else int(str(caller), 16),
                          None if symbol is None else str(symbol), int(str(data["hit"])),
                          tuple(e for e in effects if isinstance(e, dict)) if isinstance(effects, list) else (),
                          float(str(data["t"])))


def nmi_from_json(data: Mapping[str, object]) -> NmiRecord:
    state = str(data["nmi"])
    if state not in NMI_RECORD_STATES:
        raise ValueError(f"unknown NMI state {state!r}")
    where = data.get("where")
    return NmiRecord(int(str(data["stop"])), state, None if where is None else str(where))


@dataclass(frozen=True)
class ScenarioLog:
    stops: tuple[LoggedStop, ...] = ()
    nmis: tuple[NmiRecord, ...] = ()
    bound_reached: bool = False      # max_stops ended the scenario

    def lines(self) -> list[dict[str, object]]:
        """scenario.jsonl: every stop, then every NMI's fate."""
        return [s.to_json() for s in self.stops] + [n.to_json() for n in self.nmis]

    @staticmethod
    def from_lines(rows: Sequence[Mapping[str, object]], bound_reached: bool) -> ScenarioLog:
        return ScenarioLog(tuple(LoggedStop.from_json(r) for r in rows if "stop" in r and "nmi" not in r),
                           tuple(nmi_from_json(r) for r in rows if "nmi" in r), bound_reached)

    def summary_json(self) -> dict[str, object]:
        return {"stops": len(self.stops), "bound_reached": self.bound_reached,
                "nmis": [n.to_json() for n in self.nmis], "first": [s.to_json() for s in self.stops[:MAX_FIRST]]}


@dataclass(frozen=True)
class TraceSummary:
    """trace.json: how many writes and stops, why the session ended, counts per window and stage, the self-check."""

    events: int
    stops: int
    ended: str
    counts: Mapping[str, Mapping[str, int]]
    check: CheckResult | None
    relocations: tuple[Mapping[str, object], ...] = ()   # apply_relocate_add() calls, as Relocation.to_json()
    overlaps: tuple[Overlap, ...] = ()                    # seed 002: writes under a later relocation
    tracer: str = "breakpoints"                           # what recorded the writes: breakpoints or the plugin
    plugin: Mapping[str, object] | None = None            # the plugin's log, as textwrites.Stats.to_json()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "tracer": self.tracer, "events": self.events, "stops": self.stops, "ended": self.ended,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "self_check": self.check.to_json() if self.check is not None else None}
        if self.relocations:
            out["relocations"] = [dict(r) for r in self.relocations]
            out["overlaps"] = [o.to_json() for o in self.overlaps]
        if self.plugin is not None:
            out["plugin"] = dict(self.plugin)
        return out

    @staticmethod
    def from_json(data: Mapping[str, object]) -> TraceSummary:
        counts = data.get("counts")
        check = data.get("self_check")
        return TraceSummary(int(str(data["events"])), int(str(data["stops"])), str(data.get("ended") or ""),
                            {str(w): {str(s): int(n) for s, n in v.items()} for w, v in counts.items()
                             if isinstance(v, dict)} if isinstance(counts, dict) else {},
                            CheckResult.from_json(check) if isinstance(check, dict) else None,
                            tuple(r for r in relocations if isinstance(r, dict))
                            if isinstance(relocations := data.get("relocations"), list) else (),
                            tuple(Overlap.from_json(o) for o in overlaps if isinstance(o, dict))
                            if isinstance(overlaps := data.get("overlaps"), list) else (),
                            str(data.get("tracer") or "breakpoints"),
                            plugin if isinstance(plugin := data.get("plugin"), dict) else None)


@dataclass(frozen=True)
class Analysis:
    comparisons: Mapping[str, Comparison] = field(default_factory=dict)
    trace: TraceSummary | None = None
    scenario: ScenarioLog | None = None
    error: str | None = None
    orc: Mapping[str, OrcReport] = field(default_factory=dict)      # inspect.orc: per capture
    unwinds: tuple[UnwindCheck, ...] = ()                           # inspect.unwind: every stop, in order

    def summary_json(self) -> dict[str, object]:
        """What result.json keeps: per capture, counts and the first findings; the trace and scenario summaries."""
        out: dict[str, object] = {"error": self.error, "captures": list(self.comparisons)}
        if self.trace is not None:
            out["trace"] = self.trace.to_json()
        if self.scenario is not None:
            out["scenario"] = self.scenario.summary_json()
        if self.orc:
            out["orc"] = {where: {"total": r.total().to_json(), "first": [d.to_json() for d in
                                                                          r.disagreements[:MAX_FIRST]]}
                          for where, r in self.orc.items()}
        if self.unwinds:
            out["unwind"] = {"stops": len(self.unwinds), "checked": sum(u.agrees is not None for u in self.unwinds),
                             "disagree": sum(u.agrees is False for u in self.unwinds)}
        for name, comparison in self.comparisons.items():
            data = comparison.to_json(with_sites=False)
            for key in ("unknown_changes", "oversized", "pv_indirect"):
                items = data[key]
                assert isinstance(items, list)
                data[key] = {"count": len(items), "first": items[:MAX_FIRST]}
            out[name] = data
        return out
