"""A step's runs, decided; and how far the whole bisect can be trusted. Pure.

A step runs its kernel ``runs`` times. When every run that could be judged agrees,
that is the step's answer. When they disagree the step is flaky: it runs again,
up to ``max_runs`` in all, to measure how often each answer comes, and then

- one run with the bad end's signature makes the step **bad**: the failure is there,
  only not every time (an intermittent bug is still the bug);
- otherwise one pass makes it **good**, flaky (it failed only in other ways);
- runs that all failed in other ways make it **skip** (cannot test), as do runs
  that all could not run (a build that failed, a kernel that could not be fetched).

A kernel known to fail (the bad end; the culprit when it is verified) runs on,
up to ``max_runs``, until its failure shows once.

The confidence is the chance that no step called good was in truth bad and
merely did not show the bug: with the bug seen in ``b`` of ``n`` runs of bad
kernels, a good step that passed ``k`` runs hid it with probability
``(1 - b/n) ** k``. It is 1 when the bug reproduced every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .signature import RunClass

Decision = Literal["good", "bad", "skip"]


@dataclass(frozen=True)
class Decided:
    decision: Decision
    flaky: bool
    why: str


def needs_more(classes: Sequence[RunClass], runs: int, max_runs: int, *, expect_bad: bool = False) -> bool:
    """Should the step run again? Until ``runs`` are done, and on to ``max_runs`` while they disagree.

    ``expect_bad``: a kernel known to fail (the bad end, the culprit being verified) runs on to ``max_runs``
    until the failure shows once: an intermittent failure is still the failure.
    """
    if len(classes) < runs:
        return True
    judged = {c for c in classes if c != "error"}
    if expect_bad and "bad" not in judged and len(classes) < max_runs:
        return True
    if not judged and len(classes) < max_runs and len(classes) < runs + 1:
        return True                       # every run failed to run: one more try before giving up
    return len(judged) > 1 and len(classes) < max_runs


def _count(classes: Sequence[RunClass], which: RunClass) -> int:
    return sum(c == which for c in classes)


def tally(classes: Sequence[RunClass]) -> str:
    """'2 bad, 1 good of 3 runs'."""
    parts = [f"{_count(classes, c)} {c}" for c in ("bad", "good", "other", "error") if _count(classes, c)]
    return f"{', '.join(parts)} of {len(classes)} run{'s' if len(classes) != 1 else ''}"


def decide(classes: Sequence[RunClass]) -> Decided:
    """The step's answer from its runs' classes (at least one)."""
    judged = [c for c in classes if c != "error"]
    flaky = len(set(judged)) > 1
    if "bad" in judged:
        why = "the same failure as the bad end"
        return Decided("bad", flaky, why + (f", in {tally(classes)}: flaky" if flaky else ""))
    if "good" in judged:
        why = "passed"
        return Decided("good", flaky, why + (f" in {tally(classes)}; the other runs failed another way: flaky"
                                             if flaky else ""))
    if judged:
        return Decided("skip", False, "failed another way than the bad end (not the bug bisected): cannot test")
    return Decided("skip", False, "could not run: cannot test")


@dataclass(frozen=True)
class Confidence:
    value: float          # 0..1
    why: str


def confidence(bad_runs: Sequence[Sequence[RunClass]], good_runs: Sequence[Sequence[RunClass]]) -> Confidence:
    """How far the good steps can be trusted, from how often the bug showed on the bad kernels.

    ``bad_runs``: the classes of each step decided bad (the bad end included);
    ``good_runs``: those of each step decided good (the good end included).
    """
    seen = sum(_count(c, "bad") for c in bad_runs)
    tried = sum(_count(c, "bad") + _count(c, "good") for c in bad_runs)
    if tried == 0:
        return Confidence(0.0, "no bad kernel was judged")
    rate = seen / tried
    value = 1.0
    for classes in good_runs:
        value *= 1.0 - (1.0 - rate) ** _count(classes, "good")
    if rate == 1.0:
        return Confidence(value, f"the failure showed in every run of a bad kernel ({seen} of {tried})")
    return Confidence(value, f"the failure showed in {seen} of {tried} runs of bad kernels ({rate:.0%}): a good "
                             f"step may have hidden it; more --runs raise the confidence")
