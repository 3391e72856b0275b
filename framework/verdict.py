"""The judge: a run's observation and analysis against its config, pass or fail, with reasons a user can act on. Pure.

``judge`` is the one place a verdict is made (``could_not_run`` makes the
"error" verdict of a run that never got that far); the run pipeline and
``patchscope check`` both call it. Helpers below turn each part of the
expectation into reasons: the outcome and console, the module loads, the
patch sites, the trace's self-check, the scenario's stops and NMIs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .analysis.crashes import clean_line
from .analysis.findings import Analysis, TraceSummary
from .analysis.observation import Observation
from .analysis.relocorder import Overlap
from .analysis.sites import Comparison, SiteState, insns_text, normalize_insns
from .config import Config, Expect, SiteAssertion
from .domain import Mode, VerdictName
from .guest.markers import MODULE_MARKER
from .scenario import MAX_STOPS, NmiRecord, Scenario

MAX_REASONS = 30


class StopLike(Protocol):
    """A scenario stop as the judge reads it: live (``scenario.StopRecord``) or logged (``LoggedStop``)."""

    @property
    def n(self) -> int: ...
    @property
    def rule(self) -> int: ...
    @property
    def at(self) -> str: ...
    @property
    def caller_symbol(self) -> str | None: ...


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictName
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def judge(config: Config, observation: Observation, analysis: Analysis | None = None,
          mode: Mode | None = None) -> Verdict:
    """The verdict of one run, and the reasons for it: the only place a verdict is made.

    ``config`` is what the run is held against (its ``expect``, with the
    ``expect.<mode>`` section of the run's ``mode`` laid over it; its ``scenario``;
    whether it asks for a trace); ``analysis`` is what the debugger found (None
    when no debugger looked). A live run and ``patchscope check`` of its
    artefacts call this with equal arguments, so they get the same verdict.
    """
    expect = config.expect_for(mode)
    if observation.outcome == "unknown":
        return Verdict("error", (observation.summary,))
    reasons: list[str] = []
    if analysis is not None and analysis.error:
        reasons.append(f"inspection: {analysis.error}")
    reasons += _judge_observation(expect, observation)
    loads = module_loads(observation.lines)
    reasons += judge_module_loads(config, loads)
    reasons += judge_sites(analysis.comparisons if analysis is not None else {}, expect)
    reasons += _judge_trace(config, analysis)
    reasons += judge_relocation_order(expect, analysis.trace if analysis is not None else None)
    reasons += judge_orc(config, expect, analysis)
    if config.scenario is not None:
        log = analysis.scenario if analysis is not None else None
        if log is None:
            reasons.append("the config has a scenario, but the run logged none (no scenario.jsonl): "
                           "it ran without this scenario")
        else:
            reasons += judge_scenario(expect, config.scenario, log.stops, log.nmis, log.bound_reached)
    reasons += judge_modules_missing(config, observation, loads, explained=bool(reasons))
    if len(reasons) > MAX_REASONS:
        reasons = reasons[:MAX_REASONS] + [f"… and {len(reasons) - MAX_REASONS} more"]
    return Verdict("fail" if reasons else "pass", tuple(reasons))


def judge_sweep(points: Sequence[tuple[int, str, Verdict]], total: int, failure: str | None) -> Verdict:
    """A forked run's verdict from its points' ((number, label, verdict), each judged by :func:`judge`): fail when
    one failed (or ``failure``: the guest never reached the fork point), error when one could not be judged or
    did not run, else pass."""
    if failure is not None:
        return Verdict("fail", (failure,))
    reasons = [f"point {n} ({label}): {v.reasons[0] if v.reasons else v.verdict}"
               + (f" (and {len(v.reasons) - 1} more)" if len(v.reasons) > 1 else "")
               for n, label, v in points if not v.passed]
    if len(points) < total:
        reasons.append(f"{total - len(points)} of {total} points did not run")
    if len(reasons) > MAX_REASONS:
        reasons = reasons[:MAX_REASONS] + [f"… and {len(reasons) - MAX_REASONS} more"]
    if any(v.verdict == "fail" for _, _, v in points):
        return Verdict("fail", tuple(reasons))
    return Verdict("error", tuple(reasons)) if reasons else Verdict("pass", ())


def could_not_run(why: str) -> Verdict:
    """The verdict of a run that could not be judged: bad input, or the machine failed."""
    return Verdict("error", (why,))


def _judge_trace(config: Config, analysis: Analysis | None) -> list[str]:
    trace = analysis.trace if analysis is not None else None
    if trace is None:
        if config.inspect is not None and (config.inspect.trace or config.inspect.trace_modules):
            return ["the config asks for a trace (inspect.trace), but the run recorded none (no trace.json)"]
        return []
    check = trace.check
    if check is not None and check.snapshots and not check.passed:
        return [f"trace {check.summary()}"]
    return []


def judge_orc(config: Config, expect: Expect, analysis: Analysis | None) -> list[str]:
    """inspect.orc and inspect.unwind (seed 004): ORC against the live text at every capture, and the unwinds
    from inside patched sites against the frames the guest really had. Neither passes on nothing checked."""
    inspect, reasons = config.inspect, []
    if inspect is not None and inspect.orc:
        reports = analysis.orc if analysis is not None else {}
        allowed = expect.orc_disagreements or 0
        if not reports:
            reasons.append("inspect.orc: the run checked no ORC data (no orc.json): no capture was taken")
        for where, report in reports.items():
            total = report.total()
            unknown = [d for d in report.disagreements if not any(p.search(d.symbol) for p in expect.orc_known)]
            unknown_count = total.disagree - (len(report.disagreements) - len(unknown))
            if total.boundaries == 0:
                reasons.append(f"ORC at {where}: no instruction boundary inside a site was checked")
            elif unknown_count > allowed:
                first = unknown[0].describe() if unknown else ""
                known = f", {total.disagree - unknown_count} more known (expect.orc_known)" \
                    if total.disagree > unknown_count else ""
                reasons.append(f"ORC at {where}: {unknown_count} of {total.boundaries} boundaries disagree "
                               f"(at most {allowed} allowed{known}): {first}")
    if inspect is not None and inspect.unwind is not None:
        unwinds = analysis.unwinds if analysis is not None else ()
        checked = [u for u in unwinds if u.agrees is not None]
        wrong = [u for u in checked if not u.agrees]
        allowed = expect.unwind_disagreements or 0
        if not checked:
            reasons.append(f"inspect.unwind: no stop inside a patched {inspect.unwind.table} site"
                           f"{f' of {inspect.unwind.op}' if inspect.unwind.op else ''} could be compared with its "
                           f"true frame ({len(unwinds)} stops)")
        elif len(wrong) > allowed:
            reasons.append(f"unwind: {len(wrong)} of {len(checked)} unwinds from inside patched sites miss the "
                           f"true frame (at most {allowed} allowed): {wrong[0].site}: {wrong[0].detail}")
    return reasons


def judge_relocation_order(expect: Expect, trace: TraceSummary | None) -> list[str]:
    """expect.relocation_overlaps: exactly these modules' relocations land on bytes patched first (seed 002)."""
    if expect.relocation_overlaps is None:
        return []
    if trace is None or not trace.relocations:
        return [("expect.relocation_overlaps: the trace saw no relocation applied (trace module loads with "
                 "inspect.trace: modules or true)")]
    found: dict[str, list[Overlap]] = {}
    for o in trace.overlaps:
        found.setdefault(o.module, []).append(o)
    wanted = set(expect.relocation_overlaps)
    reasons = [f"relocation order: {found[m][0].describe()}" + (f" (and {len(found[m]) - 1} more)"
                                                                if len(found[m]) > 1 else "")
               for m in sorted(set(found) - wanted)]
    reasons += [f"relocation order: no relocation of {m} met bytes patched before it, as expected"
                for m in sorted(wanted - set(found))]
    return reasons


def _judge_observation(expect: Expect, obs: Observation) -> list[str]:
    reasons: list[str] = []
    if obs.outcome != expect.outcome:
        reasons.append(f"expected outcome '{expect.outcome}', got '{obs.outcome}': {obs.summary}")
    if expect.outcome == "panics" and expect.crash is not None and obs.outcome == "panics":
        title = obs.title or ""
        if not expect.crash.search(title):
            reasons.append(f"expected a crash matching /{expect.crash.pattern}/, got '{title}'")
    if expect.outcome != "panics":
        for crash in obs.crashes:
            if crash.fatal and obs.outcome != "boots":
                continue  # already the outcome's reason
            if not any(p.search(crash.title) for p in expect.allow_crashes):
                reasons.append(f"crash at console line {crash.line}: {crash.title}"
                               + (" (fatal)" if crash.fatal else "")
                               + "; allow it with expect.allow_crashes if it is expected")
    # Lines are cleaned as each pattern reads them: a 200 MB console is not copied whole.
    for pattern in expect.console.contains:
        if _first(pattern, obs.lines) is None:
            reasons.append(f"no console line matches /{pattern.pattern}/")
    for pattern in expect.console.excludes:
        hit = _first(pattern, obs.lines)
        if hit is not None:
            reasons.append(f"console line {hit + 1} matches excluded /{pattern.pattern}/: "
                           f"{clean_line(obs.lines[hit])[:160]}")
    return reasons


def _first(pattern: re.Pattern[str], lines: Sequence[str]) -> int | None:
    return next((i for i, ln in enumerate(lines) if pattern.search(clean_line(ln))), None)


# --- module loads -----------------------------------------------------------------

@dataclass(frozen=True)
class ModuleResult:
    """One module /init tried to load, from its markers: ``result`` None while insmod had not returned."""

    n: int
    name: str
    result: str | None = None     # "loaded" or "failed"
    message: str = ""             # insmod's output, when it failed


def module_loads(lines: Sequence[str]) -> dict[str, ModuleResult]:
    """The module loads /init reported on the console, by module name, in load order."""
    loads: dict[str, ModuleResult] = {}
    for line in lines:
        m = MODULE_MARKER.search(line)
        if m is None:
            continue
        name, result = m.group("name"), m.group("result")
        if result is None:
            loads.setdefault(name, ModuleResult(int(m.group("n")), name))
        else:
            loads[name] = ModuleResult(int(m.group("n")), name, result, (m.group("message") or "").strip())
    return loads


def judge_module_loads(config: Config, loads: Mapping[str, ModuleResult]) -> list[str]:
    """Reasons the module loads differ from the config: insmod refused one it must take (a dependency
    included), or took one marked ``load: fails``; [] when they agree."""
    reasons: list[str] = []
    for load in loads.values():
        wanted = config.module_load(load.name)
        if load.result == "failed" and wanted == "ok":
            reasons.append(f"module {load.name} failed to load: {load.message or 'insmod failed'}")
        elif load.result == "loaded" and wanted == "fails":
            reasons.append(f"module {load.name} loaded, but the config expects insmod to refuse it (load: fails)")
    return reasons


def judge_modules_missing(config: Config, obs: Observation, loads: Mapping[str, ModuleResult],
                          explained: bool) -> list[str]:
    """Modules of the config /init never tried (or never finished), when nothing else explains it:
    not when the run already failed for another reason (``explained``), nor when the boot died inside
    an insmod (a module that crashes the kernel on purpose, say)."""
    if explained:
        return []
    unfinished = [load for load in loads.values() if load.result is None]
    if unfinished and obs.outcome != "boots":
        return []
    reasons = [f"module {load.name}: insmod never returned, yet the boot went on" for load in unfinished]
    for spec in config.modules:
        if spec.name in loads:
            continue
        if obs.outcome == "boots":
            reasons.append(f"module {spec.name} was never loaded: /init finished without trying it "
                           "(was the run made with this config?)")
        else:
            reasons.append(f"module {spec.name} was never loaded: the boot ended after '{obs.last_stage}' first")
    return reasons


# --- patch sites ------------------------------------------------------------------

MAX_SITES_NAMED = 20


def _selected(a: SiteAssertion, comparison: Comparison) -> list[SiteState]:
    out: list[SiteState] = []
    for states in comparison.sites.values():
        for st in states:
            if a.table is not None and st.site.table != a.table:
                continue
            if st.site.module != a.module and not (a.module == "*" and st.site.module is not None):
                continue
            if a.op is not None and st.site.op != a.op:
                continue
            if a.feature is not None and st.site.feature != a.feature:
                continue
            if a.symbol is not None and not a.symbol.search(st.symbol):
                continue
            out.append(st)
    return out


def _name(st: SiteState) -> str:
    what = st.site.op or st.site.feature or st.site.table
    module = f" [{st.site.module}]" if st.site.module else ""
    return f"{what} at {st.symbol}{module} ({st.site.address:#x})"


def _listing(bad: list[tuple[SiteState, str]], total: int, what: str) -> str:
    shown = "; ".join(f"{_name(st)}: {found}" for st, found in bad[:MAX_SITES_NAMED])
    more = f"; … {len(bad) - MAX_SITES_NAMED} more" if len(bad) > MAX_SITES_NAMED else ""
    return f"{len(bad)} of {total} sites {what}: {shown}{more}"


def judge_sites(comparisons: Mapping[str, Comparison], expect: Expect) -> list[str]:
    """Reasons the site assertions and whole-text limits fail; [] when they hold.

    An assertion without ``at`` applies to the last capture; the whole-text
    limits (oversized, unknown_changes, pv_indirect) apply to the last capture.
    """
    if not comparisons:
        if expect.sites or any(v is not None for v in (expect.oversized, expect.unknown_changes,
                                                         expect.pv_indirect)):
            return ["no text was captured, so no site assertion could be checked"]
        return []
    last = list(comparisons)[-1]
    reasons: list[str] = []
    for a in expect.sites:
        where = f"expect.sites (line {a.line}) {a.describe()}" if a.line else f"expect.sites {a.describe()}"
        comparison = comparisons.get(a.at or last)
        if comparison is None:
            reasons.append(f"{where}: no capture {a.at or last!r} was taken")
            continue
        selected = _selected(a, comparison)
        if a.count is not None:
            low, high = a.count
            if not low <= len(selected) <= high:
                bounds = f"{low}" if low == high else f"{low}..{high}"
                reasons.append(f"{where}: {len(selected)} sites, expected {bounds}")
            continue
        if not selected:
            reasons.append(f"{where}: selects no site at {comparison.capture}")
            continue
        bad: list[tuple[SiteState, str]] = []
        if a.state is not None:
            bad = [(st, st.state) for st in selected if st.state not in a.state]
            expected = f"not {' or '.join(a.state)}"
        else:
            readable = [st for st in selected if st.live is not None]
            if not readable:
                reasons.append(f"{where}: all {len(selected)} selected sites are {selected[0].state}; "
                               "nothing to disassemble")
                continue
            if a.insns is not None:
                want = normalize_insns(a.insns)
                bad = [(st, f"'{insns_text(st.insns) or 'only NOPs'}'") for st in readable
                       if insns_text(st.insns) != want]
                expected = f"not '{want or 'only NOPs'}'"
            else:
                assert a.insns_regex is not None
                bad = [(st, f"'{insns_text(st.insns)}'") for st in readable
                       if not a.insns_regex.search(insns_text(st.insns))]
                expected = f"not matching /{a.insns_regex.pattern}/"
        if bad:
            reasons.append(f"{where} at {comparison.capture}: " + _listing(bad, len(selected), expected))
    final = comparisons[last]
    for limit, found, what in (
        (expect.oversized, [(o.state, f"{o.extra} bytes past the end changed") for o in final.oversized],
         "over-sized patches"),
        (expect.pv_indirect, [(st, "still call *pv_ops") for st in final.pv_indirect], "pv sites not patched"),
    ):
        if limit is not None and len(found) > limit:
            reasons.append(f"{len(found)} {what} at {final.capture} (at most {limit} allowed): "
                           + "; ".join(f"{_name(st)}: {why}" for st, why in found[:MAX_SITES_NAMED])
                           + (f"; … {len(found) - MAX_SITES_NAMED} more" if len(found) > MAX_SITES_NAMED else ""))
    if expect.unknown_changes is not None and len(final.unknown_changes) > expect.unknown_changes:
        changes = final.unknown_changes
        reasons.append(f"{len(changes)} text changes outside every known site at {final.capture} "
                       f"(at most {expect.unknown_changes} allowed): "
                       + "; ".join(f"{c.symbol} ({c.start:#x}, {c.end - c.start} bytes)"
                                   for c in changes[:MAX_SITES_NAMED])
                       + (f"; … {len(changes) - MAX_SITES_NAMED} more" if len(changes) > MAX_SITES_NAMED else ""))
    return reasons


# --- scenario stops and NMIs ------------------------------------------------------------

def effective_nmi(expect: Expect, scenario: Scenario | None) -> str | tuple[str, ...] | None:
    """``expect.nmi``, or ``delivered`` when the scenario injects an NMI and the config does not say.

    A string applies to every injected NMI; a tuple names each one, in the order they were injected.
    """
    if expect.nmi is not None:
        return expect.nmi
    return "delivered" if scenario is not None and scenario.injects_nmi() else None


def _nmi_meets(state: str, wanted: str) -> bool:
    return state == wanted or (wanted == "arrived" and state != "lost")


def _nmi_fate(nmi: NmiRecord) -> str:
    where = nmi.where or "an unknown place"
    if nmi.state == "lost":
        return "lost: nothing reached exc_nmi"
    if nmi.state == "ignored":
        return f"ignored: it reached exc_nmi in {where} while NMIs were ignored"
    if nmi.state == "early":
        return f"early: it arrived in {where} before trap_init(), and the early exception handler dropped it"
    return f"{nmi.state}: it interrupted {where}"


MAX_NAMED = 20


def _names(items: Sequence[str]) -> str:
    more = f", … {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return ", ".join(items[:MAX_NAMED]) + more


def _stops(n: int) -> str:
    return f"{n} stop" if n == 1 else f"{n} stops"


def _bounds(count: tuple[int, int]) -> str:
    low, high = count
    if low == high:
        return str(low)
    return f"at least {low}" if high >= MAX_STOPS else f"{low}..{high}"


def judge_scenario(expect: Expect, scenario: Scenario, stops: Sequence[StopLike], nmis: Sequence[NmiRecord],
                   bound_reached: bool) -> list[str]:
    """Reasons the scenario's log does not meet ``expect`` (stops, NMIs) or is incomplete; [] when it does."""
    reasons: list[str] = []
    for se in expect.stops:
        where = f"expect.stops (line {se.line}) at {se.at}" if se.line is not None else f"expect.stops at {se.at}"
        there: dict[int, StopLike] = {}
        for s in stops:
            if s.at == se.at:
                there.setdefault(s.n, s)     # several rules firing at one stop count once
        low, high = se.count
        if not low <= len(there) <= high:
            seen = "; ".join(f"stop {s.n} from {s.caller_symbol or 'an unknown caller'}"
                             for s in list(there.values())[:MAX_NAMED])
            more = f"; … {len(there) - MAX_NAMED} more" if len(there) > MAX_NAMED else ""
            reasons.append(f"{where}: {_stops(len(there))}, expected {_bounds(se.count)}"
                           + (f": {seen}{more}" if there else ""))
        if se.caller is not None:
            bad = [s for s in there.values() if s.caller_symbol is None or not se.caller.search(s.caller_symbol)]
            if bad:
                reasons.append(f"{where}: {len(bad)} of {_stops(len(there))} from a caller not matching "
                               f"/{se.caller.pattern}/: "
                               + _names([f"stop {s.n} from {s.caller_symbol or 'an unknown caller'}" for s in bad]))
    reasons += _judge_nmis(expect, scenario, nmis)
    if bound_reached:
        reasons.append(f"the scenario stopped after max_stops={scenario.max_stops} stops; raise scenario.max_stops")
    fired = {s.rule for s in stops}
    for index, rule in enumerate(scenario.rules):
        if rule.on.hit is not None and index not in fired:
            reasons.append(f"{rule.describe(index)} never fired")
    return reasons


def _judge_nmis(expect: Expect, scenario: Scenario, nmis: Sequence[NmiRecord]) -> list[str]:
    wanted = effective_nmi(expect, scenario)
    if wanted is None:
        return []
    reasons: list[str] = []
    ordered = sorted(nmis, key=lambda nmi: nmi.stop)      # injection order (stable for one stop)
    never = [r.describe(i) for i, r in enumerate(scenario.rules) if any(a.kind == "inject-nmi" for a in r.do)]
    if isinstance(wanted, tuple):
        if len(wanted) != len(ordered):
            at = f" (at stops {', '.join(str(n.stop) for n in ordered)})" if ordered else \
                f": {_names(never)} never fired"
            reasons.append(f"expect.nmi lists {len(wanted)} NMIs ({', '.join(wanted)}), but "
                           f"{len(ordered)} {'was' if len(ordered) == 1 else 'were'} injected{at}")
        for i, (nmi, want) in enumerate(zip(ordered, wanted)):
            if not _nmi_meets(nmi.state, want):
                reasons.append(f"NMI {i + 1} (injected at stop {nmi.stop}) was {_nmi_fate(nmi)}; expected {want}")
        return reasons
    default = "" if expect.nmi is not None else " (the default when a scenario injects one; set expect.nmi)"
    for nmi in ordered:
        if not _nmi_meets(nmi.state, wanted):
            reasons.append(f"NMI injected at stop {nmi.stop} was {_nmi_fate(nmi)}; expected {wanted}{default}")
    if expect.nmi is not None and not ordered:
        reasons.append(f"expect.nmi is {expect.nmi}, but no NMI was injected: {_names(never)} never fired")
    return reasons
