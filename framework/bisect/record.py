"""The whole bisect as data: every step and run, the signature, the culprit and how far it holds. Pure.

``Record.to_json()`` is ``bisect.json`` (and ``--json``); ``table()`` and
``summary()`` are the text a terminal shows; ``html.render`` the page.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .signature import RunClass
from .steps import Decision

KIND = "patchscope-bisect"
SCHEMA = 1

Role = Literal["bad-end", "good-end", "step", "verify-culprit", "verify-predecessor", "verify-revert"]
State = Literal["running", "found", "ambiguous", "stopped", "interrupted"]
ROLE_WORDS: Mapping[str, str] = {"bad-end": "bad end", "good-end": "good end", "step": "step",
                                 "verify-culprit": "verify culprit", "verify-predecessor": "verify predecessor",
                                 "verify-revert": "verify revert"}


@dataclass(frozen=True)
class Run:
    cls: RunClass
    verdict: str                  # pass, fail, error (the run's own verdict)
    facets: tuple[str, ...]
    summary: str
    duration_s: float
    artifacts: str

    def to_json(self) -> dict[str, object]:
        return {"class": self.cls, "verdict": self.verdict, "facets": list(self.facets), "summary": self.summary,
                "duration_s": round(self.duration_s, 1), "artifacts": self.artifacts}


@dataclass(frozen=True)
class Step:
    role: Role
    label: str                    # "linux-image-6.1.0-52-amd64 6.1.180-1", or "1a2b3c4d5e6f subject"
    ref: str                      # what was run: debian:<package>=<version>, or a commit
    decision: Decision
    flaky: bool
    why: str
    runs: tuple[Run, ...] = ()
    prepare_s: float = 0.0        # fetching or building the kernel
    prepared: str = ""            # "cached", "downloaded", "built (312 kbuild steps)", …
    duration_s: float = 0.0       # the whole step

    @property
    def classes(self) -> tuple[RunClass, ...]:
        return tuple(r.cls for r in self.runs)

    @property
    def other_failures(self) -> tuple[str, ...]:
        """What the runs that failed another way showed (reported, never blamed)."""
        seen: dict[str, None] = {}
        for r in self.runs:
            if r.cls in ("other", "error"):
                seen.setdefault("; ".join(r.facets) or r.summary, None)
        return tuple(seen)

    def to_json(self) -> dict[str, object]:
        return {"role": self.role, "label": self.label, "ref": self.ref, "decision": self.decision,
                "flaky": self.flaky, "why": self.why, "runs": [r.to_json() for r in self.runs],
                "prepare_s": round(self.prepare_s, 1), "prepared": self.prepared,
                "duration_s": round(self.duration_s, 1)}


@dataclass
class Record:
    over: Literal["debian", "git"]
    config: str
    mode: str
    good: str                     # labels of the ends
    bad: str
    runs: int
    max_runs: int
    untested: int                 # candidates strictly between the ends
    expected_steps: int           # ⌈log2(untested + 1)⌉
    tree: str | None = None
    recipe: str | None = None
    candidates: tuple[str, ...] = ()     # a Debian bisect's whole list, ends included
    signature: tuple[str, ...] = ()
    steps: list[Step] = field(default_factory=list)
    state: State = "running"
    why: str = ""                 # why it stopped, or what the result means
    culprit: str | None = None    # its label
    culprit_ref: str | None = None
    culprit_note: str = ""        # the package's changelog entry, or the commit's subject and body
    possible: tuple[str, ...] = ()       # ambiguous: the first bad is one of these
    verified: bool | None = None
    verification: str = ""
    confidence: float | None = None
    confidence_why: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def bisect_steps(self) -> list[Step]:
        return [s for s in self.steps if s.role == "step"]

    @property
    def flaky(self) -> list[Step]:
        return [s for s in self.steps if s.flaky]

    def boots(self) -> int:
        return sum(len(s.runs) for s in self.steps)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": KIND, "schema": SCHEMA, "over": self.over, "config": self.config, "mode": self.mode,
            "good": self.good, "bad": self.bad, "tree": self.tree, "recipe": self.recipe,
            "candidates": list(self.candidates), "untested": self.untested, "expected_steps": self.expected_steps,
            "runs": self.runs, "max_runs": self.max_runs, "signature": list(self.signature),
            "steps": [s.to_json() for s in self.steps],
            "result": {
                "state": self.state, "why": self.why, "culprit": self.culprit, "culprit_ref": self.culprit_ref,
                "culprit_note": self.culprit_note, "possible": list(self.possible), "verified": self.verified,
                "verification": self.verification,
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "confidence_why": self.confidence_why,
                "bisect_steps": len(self.bisect_steps), "boots": self.boots(),
                "flaky_steps": [s.label for s in self.flaky],
            },
            "meta": self.meta,
        }


def decision_word(step: Step) -> str:
    word = {"good": "good", "bad": "BAD", "skip": "skip"}[step.decision]
    return f"{word} (flaky)" if step.flaky else word


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def step_signature(step: Step) -> str:
    """What a step's failing runs showed: 'same' for the bad end's signature, else the other failure."""
    if step.decision == "bad":
        return "same as the bad end"
    others = step.other_failures
    return _short(others[0], 70) if others else ""


def table(record: Record) -> Iterator[str]:
    """Every step as a row: role, kernel or commit, verdict, signature, runs, time, artefacts."""
    rows = [("#", "what", "kernel" if record.over == "debian" else "commit", "verdict", "failure", "runs", "time",
             "artefacts")]
    for i, s in enumerate(record.steps, 1):
        artefacts = s.runs[0].artifacts if s.runs else ""
        rows.append((str(i), ROLE_WORDS[s.role], _short(s.label, 60), decision_word(s), step_signature(s),
                     f"{sum(c == 'bad' for c in s.classes)}/{len(s.runs)} bad" if s.runs else "-",
                     f"{s.duration_s:.0f} s", artefacts))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]


def summary(record: Record) -> Iterator[str]:
    """The result in a few lines."""
    steps = record.bisect_steps
    yield (f"{len(steps)} bisect step{'s' if len(steps) != 1 else ''} for {record.untested} candidates "
           f"(⌈log2 {record.untested + 1}⌉ = {record.expected_steps}), {record.boots()} boots in all")
    if record.signature:
        yield "signature: " + "; ".join(record.signature)
    if record.state == "found" and record.culprit:
        yield f"first bad: {record.culprit}"
        for line in record.culprit_note.splitlines()[:12]:
            yield f"    {line}"
    elif record.state == "ambiguous":
        yield "first bad: one of " + ", ".join(record.possible) + " (the others could not be tested)"
    elif record.state in ("stopped", "interrupted"):
        yield f"{record.state}: {record.why}"
    if record.verified is not None:
        yield ("verified: " if record.verified else "NOT verified: ") + record.verification
    if record.flaky:
        yield "flaky: " + ", ".join(f"{s.label} ({s.why})" for s in record.flaky)
    if record.confidence is not None:
        yield f"confidence {record.confidence:.0%}: {record.confidence_why}"
