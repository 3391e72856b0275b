"""A failure's signature: what exactly failed, without what varies from kernel to kernel. Pure.

A run that fails is reduced to facets, one per reason the verdict gave, each with
the numbers, addresses and site listings taken out: ``crash: kernel BUG in
apply_paravirt``, ``sites: expect.sites (line 21)
table=paravirt: count``, ``console: no line matches /…/``, ``module: kvm failed to load:
insmod: can't insert '/lib/modules/kvm.ko': Unknown symbol in module``. The bisect records the
bad end's facets as *the* signature; a later run is bad only when its facets hold
every one of them. A run that fails otherwise failed for another reason: it is
reported, and the step cannot be tested (skipped), so an unrelated breakage is
never blamed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..report.result import RunResult

# One run against the signature: it passed, failed the same way, failed another way, or could not run.
RunClass = Literal["good", "bad", "other", "error"]
RUN_CLASSES: tuple[RunClass, ...] = ("good", "bad", "other", "error")

_HEX = re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", re.IGNORECASE)
_NUM = re.compile(r"\b\d+\b")
_SPACE = re.compile(r"\s+")
_SITES = re.compile(r"^(expect\.sites(?: \(line \d+\))? [^:]*?)(?: at (\S+))?: (.*)$")
_LIMIT = re.compile(r"^\d+ (over-sized patches|pv sites not patched|text changes outside every known site) at (\S+)")
_OUTCOME = re.compile(r"^expected outcome '(\w+)', got '(\w+)'")


def normalize(text: str) -> str:
    """``text`` with hex, numbers and runs of blanks made uniform: equal across kernel versions."""
    text = _HEX.sub("X", text)
    text = _NUM.sub("N", text)
    return _SPACE.sub(" ", text).strip()


def _site_check(rest: str) -> str:
    """The kind of a site assertion's failure (count, state, insns …), from the text after its description."""
    if re.match(r"\d+ sites, expected", rest):
        return "count"
    m = re.match(r"\d+ of \d+ sites not (.*?): ", rest)
    if m:
        return "insns" if m.group(1).startswith(("'", "matching")) else "state"
    for kind in ("selects no site", "no capture", "nothing to disassemble"):
        if kind in rest:
            return kind
    return normalize(rest)[:80]


# Reason -> facet, for every reason but the outcome's (which needs the crash title): first match wins.
_FACETS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^expected a crash matching /(.*)/, got '(.*)'$"), lambda m: f"crash: {normalize(m.group(2))}"),
    (re.compile(r"^crash at console line \d+: (.*?)(?: \(fatal\))?(?:; allow it with .*)?$"),
     lambda m: f"crash: {normalize(m.group(1))}"),
    (re.compile(r"^no console line matches (/.*/)$"), lambda m: f"console: no line matches {m.group(1)}"),
    (re.compile(r"^console line \d+ matches excluded (/.*?/):"),
     lambda m: f"console: a line matches excluded {m.group(1)}"),
    (_LIMIT, lambda m: f"sites: {m.group(1)} at {m.group(2)}"),
    (_SITES, lambda m: f"sites: {m.group(1)}" + (f" at {m.group(2)}" if m.group(2) else "")
     + f": {_site_check(m.group(3))}"),
    (re.compile(r"^inspection: (.*)$"), lambda m: "inspection: " + normalize(m.group(1))[:100]),
    # verdict.judge_module_loads / judge_modules_missing: the module's name and insmod's message
    (re.compile(r"^module (\w+) failed to load: (.*)$"),
     lambda m: f"module: {m.group(1)} failed to load: {normalize(m.group(2))[:100]}"),
    (re.compile(r"^module (\w+) loaded, but "), lambda m: f"module: {m.group(1)} loaded (expected to fail)"),
    (re.compile(r"^module (\w+)(?: was never loaded|: insmod never returned)"),
     lambda m: f"module: {m.group(1)} never loaded"),
)


def facet(reason: str, title: str | None = None, last_stage: str | None = None) -> str:
    """One reason of a verdict, as a facet of a signature."""
    m = _OUTCOME.match(reason)
    if m:
        expected, got = m.groups()
        if got == "panics" and title:
            return f"crash: {normalize(title)}"
        if got == "hangs":
            return f"hang: after '{normalize(last_stage or '?')}'"
        return f"outcome: {got} (expected {expected})"
    for pattern, shown in _FACETS:
        m = pattern.match(reason)
        if m:
            return shown(m)
    return normalize(reason)[:120]


def facets(result: RunResult) -> tuple[str, ...]:
    """The signature of one failed run: its reasons' facets, sorted, each once ("" for none)."""
    obs = result.observation
    title = obs.title if obs is not None else None
    last = obs.last_stage if obs is not None else None
    return tuple(sorted({facet(r, title, last) for r in result.reasons if not r.startswith("… and ")}))


@dataclass(frozen=True)
class Signature:
    """The bad end's failure: every facet a run must show to count as the same failure."""

    facets: tuple[str, ...]

    def matched_by(self, found: Iterable[str]) -> bool:
        return bool(self.facets) and set(self.facets) <= set(found)

    def text(self) -> str:
        return "; ".join(self.facets)

    @staticmethod
    def common(runs: Sequence[Sequence[str]]) -> Signature:
        """What every failing run of the bad end showed (a facet seen in only some runs is not part of it)."""
        if not runs:
            return Signature(())
        shared = set(runs[0])
        for found in runs[1:]:
            shared &= set(found)
        return Signature(tuple(sorted(shared)))


def classify(verdict: str, found: Sequence[str], signature: Signature | None) -> RunClass:
    """One run against the signature (None: any failure is the failure, as before the bad end is known)."""
    if verdict == "pass":
        return "good"
    if verdict != "fail":
        return "error"
    if signature is None or signature.matched_by(found):
        return "bad"
    return "other"
